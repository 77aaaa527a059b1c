//! Consumer lag per group, topic and partition, in records (high watermark
//! minus committed offset) and in seconds (age of the oldest unconsumed
//! record). The metadata leader (the group coordinator) refreshes a cache
//! every `lag_refresh_ms`; `/metrics` reads the cache (no scan or RPC per
//! scrape) and `group describe` computes the same figures with the same
//! code ([`lag_of`]) for one group.
//!
//! Cost of a refresh: one describe per topic with committed offsets (high
//! watermarks, answered by each partition's leader) and, per lagging
//! partition, one single-batch fetch at the committed offset (local when a
//! replica is here, else from the leader) for its timestamp. The number of
//! exported partitions is bounded (`--lag-metrics-max-partitions`):
//! beyond it, partitions are left out and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use ferrolog_metadata::groups::Tp;
use ferrolog_proto::v1;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::handles::Core;
use crate::handles::partition::FetchArgs;

/// Default bound on exported (group, topic, partition) series.
pub const DEFAULT_MAX_LAG_PARTITIONS: usize = 10_000;
/// Longest wait for one batch timestamp from another broker.
const TIMESTAMP_TIMEOUT: Duration = Duration::from_secs(2);
/// Batch timestamps looked up at once during a refresh.
const TIMESTAMP_CONCURRENCY: usize = 16;
/// Longest a refresh may take; past it, the previous figures stay (their
/// age is exported) and the next refresh starts over.
const REFRESH_DEADLINE: Duration = Duration::from_secs(30);

/// The lag of one group in one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct LagRow {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The group's committed offset (next to consume).
    pub committed: i64,
    /// The partition's high watermark (-1: unknown).
    pub high_watermark: i64,
    /// Records not yet consumed (0 when unknown).
    pub lag_records: i64,
    /// Now minus the timestamp of the batch holding the first unconsumed
    /// record (a batch's first timestamp: at most the batch's span early);
    /// 0 when caught up or unknown.
    pub lag_seconds: f64,
}

/// The figures of the last refresh.
#[derive(Debug, Clone, Default)]
pub struct LagSnapshot {
    /// When they were computed (`None`: never on this broker).
    pub at: Option<Instant>,
    /// Rows, by group, topic, partition.
    pub rows: Vec<LagRow>,
    /// Partitions with a committed offset left out by the bound.
    pub dropped: u64,
}

/// The lag cache read by `/metrics`.
#[derive(Debug, Default)]
pub struct LagCache {
    inner: Mutex<Arc<LagSnapshot>>,
}

impl LagCache {
    /// The last refresh's figures.
    pub fn snapshot(&self) -> Arc<LagSnapshot> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set(&self, s: LagSnapshot) {
        *self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(s);
    }
}

/// Per topic, `(log start, high watermark, leader)` of each partition.
pub(crate) type TopicOffsets = BTreeMap<String, Vec<(i64, i64, u64)>>;

/// The offsets of `topics`, one describe each (an unknown topic has no
/// partitions).
pub(crate) async fn topic_offsets(core: &Core, topics: impl IntoIterator<Item = String> + Send) -> TopicOffsets {
    let names: std::collections::BTreeSet<String> = topics.into_iter().collect();
    let mut out = TopicOffsets::new();
    for t in names {
        let parts = match core.topic(&t) {
            Ok(topic) => core
                .metadata()
                .describe(&topic, Default::default())
                .await
                .partitions
                .iter()
                .map(|p| {
                    let known = |v: Option<u64>| v.map_or(-1, |v| v as i64);
                    (known(p.log_start), known(p.high_watermark), p.leader.unwrap_or(0))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        out.insert(t, parts);
    }
    out
}

/// The lag of `committed` offsets: `(group, (topic, partition), offset)`.
pub(crate) async fn lag_of(core: &Core, committed: Vec<(String, Tp, i64)>) -> Vec<LagRow> {
    let names: Vec<String> = committed.iter().map(|(_, (t, _), _)| t.clone()).collect();
    let topics = topic_offsets(core, names).await;
    lag_rows(core, &topics, committed).await
}

/// The lag of `committed` offsets in partitions described in `topics`.
pub(crate) async fn lag_rows(core: &Core, topics: &TopicOffsets, committed: Vec<(String, Tp, i64)>) -> Vec<LagRow> {
    let rows = committed.into_iter().map(|(group, (topic, partition), offset)| {
        let (log_start, hw, leader) =
            topics.get(&topic).and_then(|p| p.get(partition as usize)).copied().unwrap_or((-1, -1, 0));
        async move {
            let lag_records = if hw >= 0 { (hw - offset).max(0) } else { 0 };
            let lag_seconds = if lag_records > 0 {
                // A committed offset below the log start: the oldest record
                // left is the first unconsumed one.
                let at = offset.max(log_start.max(0));
                match batch_timestamp(core, &topic, partition, at, leader).await {
                    Some(ts) => ((crate::handles::now_ms() - ts).max(0) as f64) / 1000.0,
                    None => 0.0,
                }
            } else {
                0.0
            };
            LagRow { group, topic, partition, committed: offset, high_watermark: hw, lag_records, lag_seconds }
        }
    });
    // A bounded number of lookups at once, in order.
    futures::stream::iter(rows).buffered(TIMESTAMP_CONCURRENCY).collect().await
}

/// The first timestamp of the batch holding `offset`, from a local replica
/// or the partition's leader.
async fn batch_timestamp(core: &Core, topic: &str, partition: u32, offset: i64, leader: u64) -> Option<i64> {
    if let Ok(local) = core.partition(topic, partition) {
        // Not a client's fetch: not counted in the fetch metrics.
        let args = FetchArgs { offset: u64::try_from(offset).ok()?, max_wait: Duration::ZERO, max_bytes: Some(1) };
        return local.fetch(args).await.ok()?.batches.first().map(|(_, b)| b.header.first_timestamp_ms);
    }
    let req =
        v1::FetchRequest { topic: topic.to_string(), partition, offset, max_bytes: 1, max_wait_ms: 0, min_bytes: 0 };
    let leader = core.groups().address_of(leader)?;
    let ch = core.groups().transport().channel(&leader).ok()?;
    let mut c =
        v1::broker_client::BrokerClient::new(ch).max_decoding_message_size(ferrolog_types::limits::API_MESSAGE_LIMIT);
    let answer = tokio::time::timeout(TIMESTAMP_TIMEOUT, c.fetch(req)).await.ok()?.ok()?.into_inner();
    answer.batches.first().map(|b| b.first_timestamp_ms)
}

/// Refreshes the cache every `lag_refresh_ms` while this broker leads the
/// metadata group; elsewhere the cache is empty.
pub async fn run(core: Core, max_partitions: usize, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(core.timings().lag_refresh) => {}
        }
        let me = core.groups().node_id();
        let Some(meta) = core.groups().leading_meta() else {
            core.metrics().lag.set(LagSnapshot::default());
            continue;
        };
        // Every committed offset, in group/topic/partition order, bounded.
        let (committed, dropped) = {
            let state = meta.state.borrow();
            let mut all = Vec::new();
            let mut dropped = 0u64;
            for (name, g) in &state.cluster.groups {
                for (tp, c) in &g.offsets {
                    if all.len() < max_partitions {
                        all.push((name.clone(), tp.clone(), c.offset));
                    } else {
                        dropped += 1;
                    }
                }
            }
            (all, dropped)
        };
        let rows = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(REFRESH_DEADLINE, lag_of(&core, committed)) => r,
        };
        match rows {
            Ok(rows) => core.metrics().lag.set(LagSnapshot { at: Some(Instant::now()), rows, dropped }),
            Err(_) => tracing::warn!(
                node = me,
                "consumer lag refresh took over {REFRESH_DEADLINE:?}; kept the previous figures"
            ),
        }
    }
}
