//! The public gRPC services (`ferrolog.v1`): `Broker` (produce, fetch, list
//! offsets) and `Admin` (topics, cluster).
//!
//! Handlers validate input, route to the local Raft group, and turn every
//! failure into a [`BrokerError`] (mapped to a status in `error.rs`).

use std::sync::Arc;
use std::time::Duration;

use ferrolog_metadata::DEFAULT_MAX_MESSAGE_BYTES;
use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::MetaOutcome;
use ferrolog_metadata::Topic;
use ferrolog_partition::Outcome;
use ferrolog_proto::errors::LeaderHint;
use ferrolog_proto::v1;
use ferrolog_raft::Request;
use ferrolog_raft::Response;
use ferrolog_raft::TypeConfig;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use ferrolog_types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::impls::ProgressResponder;
use tonic::Request as TReq;
use tonic::Response as TResp;
use tonic::Status;

use crate::error::BrokerError;
use crate::failpoints;
use crate::groups::Groups;
use crate::groups::Replica;
use crate::metrics::Metrics;

/// Longest a produce waits for its acks level when the request names no timeout.
pub const DEFAULT_PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a fetch may long-poll.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// A broker whose last heartbeat ack to the metadata leader is older than
/// this counts as not alive.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a broker waits for another to describe its partitions.
pub const REMOTE_DESCRIBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest an InitProducer waits for live brokers to learn the new epoch.
pub const FENCE_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default fetch size limit when the request names none.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 4 << 20;
/// How far ahead of the broker's clock a batch's timestamps may be.
const MAX_TIMESTAMP_AHEAD_MS: i64 = 3_600_000;
/// Most batches in one fetch answer (besides the byte cap).
const MAX_FETCH_BATCHES: usize = 4096;

/// The public services of one broker.
#[derive(Debug, Clone)]
pub struct Services {
    groups: Arc<Groups>,
    metrics: Arc<Metrics>,
    liveness: Arc<crate::coordinator::Liveness>,
}

impl Services {
    /// Services over `groups`, counting into `metrics`.
    pub fn new(groups: Arc<Groups>, metrics: Arc<Metrics>) -> Self {
        Services { groups, metrics, liveness: Arc::default() }
    }

    /// The Raft groups of this broker.
    pub(crate) fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The broker's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The consumer-lag cache behind the metrics.
    pub(crate) fn lag_cache(&self) -> &crate::lag::LagCache {
        &self.metrics.lag
    }

    /// Whether this broker holds a replica of `topic`/`partition`.
    pub(crate) fn has_replica(&self, topic: &str, partition: u32) -> bool {
        self.replica(topic, partition).is_ok()
    }

    /// A fetch served by this broker's replica (no RPC).
    pub(crate) async fn fetch_local(&self, req: v1::FetchRequest) -> Result<v1::FetchResponse, Status> {
        self.fetch_inner(req).await.map(TResp::into_inner)
    }

    /// Consumer-group member liveness (meaningful on the coordinator).
    pub(crate) fn liveness(&self) -> &crate::coordinator::Liveness {
        &self.liveness
    }

    pub(crate) fn topic(&self, name: &str) -> Result<Topic, BrokerError> {
        let meta = self.groups.meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
        let state = meta.state.borrow();
        state.cluster.topics.get(name).cloned().ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    fn hint(&self, leader: Option<NodeId>) -> LeaderHint {
        LeaderHint { leader_id: leader, leader_address: leader.and_then(|id| self.groups.address_of(id)) }
    }

    /// The local replica of `topic`/`partition`, or NOT_LEADER pointing at
    /// its preferred leader when this broker holds none.
    fn replica(&self, topic: &str, partition: u32) -> Result<(Topic, Arc<Replica>), BrokerError> {
        let t = self.topic(topic)?;
        let a = t.partitions.get(partition as usize).ok_or_else(|| BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            count: t.partitions.len(),
        })?;
        match self.groups.replica(a.group) {
            Some(r) => Ok((t, r)),
            None => Err(BrokerError::NotLeader {
                what: format!("broker {} holds no replica of {topic}/{partition}", self.groups.node_id()),
                hint: self.hint(a.replicas.first().copied()),
            }),
        }
    }

    async fn leader_replica(&self, topic: &str, partition: u32) -> Result<(Topic, Arc<Replica>), BrokerError> {
        let (t, r) = self.replica(topic, partition)?;
        let leader = r.raft.current_leader().await;
        if leader != Some(self.groups.node_id()) {
            return Err(BrokerError::NotLeader {
                what: format!("broker {} is not the leader of {topic}/{partition}", self.groups.node_id()),
                hint: self.hint(leader),
            });
        }
        Ok((t, r))
    }

    pub(crate) fn write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        what: &str,
    ) -> BrokerError {
        if let RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) = &e {
            return BrokerError::Unavailable(format!(
                "{what}: leader changed before the write committed; it may or may not be in the log ({f})"
            ));
        }
        if let Some(f) = e.forward_to_leader() {
            return BrokerError::NotLeader { what: format!("{what}: not the leader"), hint: self.hint(f.leader_id) };
        }
        BrokerError::Unavailable(format!("{what}: {e}"))
    }
}

/// Wall-clock time in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(-1)
}

/// Converts a produced batch, checking what can be checked before Raft.
fn batch_from_proto(b: v1::RecordBatch, max_bytes: u32) -> Result<Batch, BrokerError> {
    if b.record_count == 0 {
        return Err(BrokerError::InvalidArgument("record batch is empty (record_count = 0)".into()));
    }
    let header = BatchHeader {
        producer_id: b.producer_id,
        producer_epoch: b.producer_epoch,
        base_sequence: b.base_sequence,
        record_count: b.record_count,
        compression: u32::try_from(b.compression)
            .map_err(|_| BrokerError::InvalidArgument(format!("unknown compression {}", b.compression)))?,
        first_timestamp_ms: b.first_timestamp_ms,
        max_timestamp_ms: b.max_timestamp_ms,
    };
    if v1::Compression::try_from(b.compression).is_err() {
        return Err(BrokerError::InvalidArgument(format!("unknown compression {}", b.compression)));
    }
    // Kafka's log.message.timestamp.after.max.ms (1 hour): a batch from the
    // future would hold up the index's running maximum timestamp, which
    // ListOffsets by time and retention.ms bisect on, for every later batch.
    let horizon = now_ms() + MAX_TIMESTAMP_AHEAD_MS;
    if header.max_timestamp_ms > horizon {
        return Err(BrokerError::InvalidArgument(format!(
            "record batch max timestamp {} ms is more than {MAX_TIMESTAMP_AHEAD_MS} ms ahead of the broker's clock",
            header.max_timestamp_ms
        )));
    }
    let batch = Batch { header, records: b.records, crc32c: b.crc32c };
    if batch.size_bytes() > max_bytes as usize {
        return Err(BrokerError::InvalidArgument(format!(
            "record batch of {} bytes exceeds max.message.bytes ({max_bytes})",
            batch.size_bytes()
        )));
    }
    batch.verify().map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
    Ok(batch)
}

/// Converts a stored batch for a fetch response.
pub fn batch_to_proto(base_offset: u64, b: &Batch) -> v1::RecordBatch {
    v1::RecordBatch {
        base_offset: base_offset as i64,
        producer_id: b.header.producer_id,
        producer_epoch: b.header.producer_epoch,
        base_sequence: b.header.base_sequence,
        record_count: b.header.record_count,
        compression: b.header.compression as i32,
        first_timestamp_ms: b.header.first_timestamp_ms,
        max_timestamp_ms: b.header.max_timestamp_ms,
        records: b.records.clone(),
        crc32c: b.crc32c,
    }
}

#[tonic::async_trait]
impl v1::broker_server::Broker for Services {
    #[tracing::instrument(skip_all, fields(node = self.groups.node_id(), topic = %request.get_ref().topic, partition = request.get_ref().partition))]
    async fn produce(&self, request: TReq<v1::ProduceRequest>) -> Result<TResp<v1::ProduceResponse>, Status> {
        let req = request.into_inner();
        let t0 = std::time::Instant::now();
        let slot = match v1::Acks::try_from(req.acks) {
            Ok(v1::Acks::All) | Err(_) => 0,
            Ok(v1::Acks::Leader) => 1,
            Ok(v1::Acks::None) => 2,
        };
        let records = req.batch.as_ref().map(|b| u64::from(b.record_count)).unwrap_or(0);
        let bytes = req.batch.as_ref().map(|b| b.records.len() as u64).unwrap_or(0);
        let topic = req.topic.clone();
        let r = self.produce_inner(req).await;
        self.metrics.produce[slot].observe(t0.elapsed(), if r.is_ok() { records } else { 0 }, r.is_ok());
        match &r {
            Ok(_) => self.metrics.produced_bytes(&topic, bytes),
            Err(s) => self.metrics.request_error("produce", s),
        }
        r
    }

    #[tracing::instrument(skip_all, fields(node = self.groups.node_id(), topic = %request.get_ref().topic, partition = request.get_ref().partition))]
    async fn fetch(&self, request: TReq<v1::FetchRequest>) -> Result<TResp<v1::FetchResponse>, Status> {
        let t0 = std::time::Instant::now();
        let req = request.into_inner();
        let topic = req.topic.clone();
        let r = self.fetch_inner(req).await;
        let records =
            r.as_ref().map(|r| r.get_ref().batches.iter().map(|b| u64::from(b.record_count)).sum()).unwrap_or(0);
        self.metrics.fetch.observe(t0.elapsed(), records, r.is_ok());
        match &r {
            Ok(resp) => {
                let bytes = resp.get_ref().batches.iter().map(|b| b.records.len() as u64).sum();
                // Only a known topic gets a series (the label set stays bounded).
                self.metrics.fetched_bytes(&topic, bytes);
            }
            Err(s) => self.metrics.request_error("fetch", s),
        }
        r
    }

    async fn list_offsets(
        &self,
        request: TReq<v1::ListOffsetsRequest>,
    ) -> Result<TResp<v1::ListOffsetsResponse>, Status> {
        self.list_offsets_inner(request.into_inner()).await
    }
}

/// The producer's view of an applied (or projected) append: offsets and
/// whether it was a retry of a batch already appended.
fn produced(r: Response) -> Result<(u64, u64, bool), BrokerError> {
    match r {
        Response::Partition(Outcome::Appended { base_offset, last_offset }) => Ok((base_offset, last_offset, false)),
        Response::Partition(Outcome::Duplicate { base_offset, last_offset }) => Ok((base_offset, last_offset, true)),
        Response::Partition(Outcome::Rejected(r)) => Err(r.into()),
        other => Err(BrokerError::Internal(format!("unexpected apply result {other:?}"))),
    }
}

impl Services {
    async fn produce_inner(&self, req: v1::ProduceRequest) -> Result<TResp<v1::ProduceResponse>, Status> {
        let acks = v1::Acks::try_from(req.acks)
            .map_err(|_| BrokerError::InvalidArgument(format!("unknown acks {}", req.acks)))?;
        let (topic, replica) = self.leader_replica(&req.topic, req.partition).await?;
        let max = if topic.config.max_message_bytes == 0 {
            DEFAULT_MAX_MESSAGE_BYTES
        } else {
            topic.config.max_message_bytes
        };
        let batch = batch_from_proto(
            req.batch.ok_or_else(|| BrokerError::InvalidArgument("produce request carries no batch".into()))?,
            max,
        )?;
        self.check_not_fenced(&batch.header)?;
        let timeout =
            if req.timeout_ms == 0 { DEFAULT_PRODUCE_TIMEOUT } else { Duration::from_millis(req.timeout_ms.into()) };
        let hw = || replica.progress.borrow().next_offset as i64;
        replica.wake();
        let (base, last, duplicate) = match acks {
            v1::Acks::None => {
                // Fire and forget: errors after this point are not reported.
                let _ = replica.raft.client_write_ff(Request::append(batch), None).await;
                return Ok(TResp::new(v1::ProduceResponse {
                    base_offset: -1,
                    last_offset: -1,
                    high_watermark: hw(),
                    duplicate: false,
                    append_time_ms: -1,
                }));
            }
            v1::Acks::All => {
                let fut = replica.raft.client_write(Request::append(batch));
                let resp = tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(|_| BrokerError::Timeout(format!("not committed within {timeout:?}")))?
                    .map_err(|e| self.write_error(e, "produce"))?;
                produced(resp.data)?
            }
            v1::Acks::Leader => {
                let (token, acked) = replica.acks.register();
                let (responder, _commit_rx, complete_rx) = ProgressResponder::new();
                let req = Request::Partition { cmd: ferrolog_partition::Command::Append(batch), ack: token };
                if let Err(e) = replica.raft.client_write_ff(req, Some(responder)).await {
                    replica.acks.cancel(token);
                    return Err(BrokerError::Unavailable(format!("produce: {e}")).into());
                }
                let result = tokio::time::timeout(timeout, async {
                    tokio::select! {
                        a = acked => match a {
                            Ok(a) => produced(Response::Partition(a.outcome)),
                            Err(_) => Err(BrokerError::Unavailable("produce: leader log closed".into())),
                        },
                        done = complete_rx => match done {
                            Ok(Ok(resp)) => produced(resp.data),
                            Ok(Err(e)) => Err(self.write_error(RaftError::APIError(e), "produce")),
                            Err(_) => Err(BrokerError::Unavailable("produce: raft dropped the request".into())),
                        },
                    }
                })
                .await;
                replica.acks.cancel(token);
                result.map_err(|_| BrokerError::Timeout(format!("not appended within {timeout:?}")))??
            }
        };
        // The answer of both waiting acks levels, once the level is met.
        failpoints::drop_produce_response(duplicate)?;
        Ok(TResp::new(v1::ProduceResponse {
            base_offset: base as i64,
            last_offset: last as i64,
            high_watermark: hw(),
            duplicate,
            append_time_ms: now_ms(),
        }))
    }

    async fn fetch_inner(&self, req: v1::FetchRequest) -> Result<TResp<v1::FetchResponse>, Status> {
        // Any replica may serve a fetch: it only holds applied, i.e.
        // committed, batches, and serves up to what it knows is committed.
        let (_, replica) = self.replica(&req.topic, req.partition)?;
        if req.offset < 0 {
            return Err(BrokerError::InvalidArgument(format!("negative fetch offset {}", req.offset)).into());
        }
        let offset = req.offset as u64;
        let mut progress = replica.progress.clone();
        let p = *progress.borrow_and_update();
        if offset < p.log_start {
            return Err(BrokerError::OutOfRange { offset: req.offset, start: p.log_start, end: p.next_offset }.into());
        }
        if offset > p.next_offset && self.surely_caught_up(&replica) {
            return Err(BrokerError::OutOfRange { offset: req.offset, start: p.log_start, end: p.next_offset }.into());
        }
        // An offset past this replica's high watermark that it cannot rule
        // out (a follower behind, a broker replaying its log after a
        // restart, a new leader before its first commit) is *not yet
        // available*: wait like a long poll and answer with what is there
        // (possibly nothing), never with out-of-range, which would make
        // consumers reset their position.
        if offset >= p.next_offset && req.max_wait_ms > 0 {
            let wait = Duration::from_millis(req.max_wait_ms.into()).min(MAX_FETCH_WAIT);
            let _ = tokio::time::timeout(wait, progress.wait_for(|p| p.next_offset > offset)).await;
        }
        let p = *replica.progress.borrow();
        // The broker's cap holds whatever the client asks: an answer is
        // built in memory and must decode within the client's limit.
        let max_bytes = if req.max_bytes == 0 { DEFAULT_FETCH_MAX_BYTES } else { req.max_bytes as usize }
            .min(ferrolog_types::limits::MAX_FETCH_BYTES);
        // One seek finds the batch holding `offset`; the reads are blocking
        // RocksDB calls, off the async workers.
        let reader = replica.reader.clone();
        let end = p.next_offset;
        let read = tokio::task::spawn_blocking(move || reader.read(offset, end, MAX_FETCH_BATCHES, max_bytes))
            .await
            .map_err(|e| BrokerError::Internal(format!("fetch read task: {e}")))?;
        let read = match read {
            Ok(r) => r,
            // Retention trimmed the offset away after the bounds check above.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && offset < replica.progress.borrow().log_start => {
                let p = *replica.progress.borrow();
                return Err(
                    BrokerError::OutOfRange { offset: req.offset, start: p.log_start, end: p.next_offset }.into()
                );
            }
            Err(e) => return Err(BrokerError::Internal(format!("read {}/{}: {e}", req.topic, req.partition)).into()),
        };
        let batches: Vec<v1::RecordBatch> = read.iter().map(|(base, b)| batch_to_proto(*base, b)).collect();
        Ok(TResp::new(v1::FetchResponse {
            batches,
            high_watermark: p.next_offset as i64,
            log_start_offset: p.log_start as i64,
        }))
    }

    async fn list_offsets_inner(&self, req: v1::ListOffsetsRequest) -> Result<TResp<v1::ListOffsetsResponse>, Status> {
        let (_, replica) = self.replica(&req.topic, req.partition)?;
        let p = *replica.progress.borrow();
        let spec = v1::OffsetSpec::try_from(req.spec)
            .map_err(|_| BrokerError::InvalidArgument(format!("unknown offset spec {}", req.spec)))?;
        let offset = match spec {
            v1::OffsetSpec::Earliest => p.log_start,
            v1::OffsetSpec::Latest => p.next_offset,
            v1::OffsetSpec::Timestamp => {
                // The first batch whose newest record is at or after the
                // timestamp (its base offset: brokers do not decode records
                // inside a batch), found by bisecting the offset index.
                let reader = replica.reader.clone();
                let (start, end, ts) = (p.log_start, p.next_offset, req.timestamp_ms);
                tokio::task::spawn_blocking(move || reader.offset_for_timestamp(start, end, ts))
                    .await
                    .map_err(|e| BrokerError::Internal(format!("list offsets task: {e}")))?
                    .map_err(|e| BrokerError::Internal(e.to_string()))?
                    .unwrap_or(p.next_offset)
            }
        };
        Ok(TResp::new(v1::ListOffsetsResponse { offset: offset as i64, timestamp_ms: 0 }))
    }
}

impl Services {
    /// Whether `replica` knows its high watermark is the partition's: it
    /// leads, has committed an entry of its own term (openraft's blank entry
    /// on election) and applied everything committed. Only then is a fetch
    /// past the high watermark really out of range.
    fn surely_caught_up(&self, replica: &Replica) -> bool {
        let m = replica.raft.metrics().borrow_watched().clone();
        let leads = m.current_leader == Some(self.groups.node_id()) && m.state == openraft::ServerState::Leader;
        let committed = m.cluster_committed.as_ref();
        let own_term_committed = committed.is_some_and(|c| c.committed_leader_id().term == m.current_term);
        leads && own_term_committed && m.last_applied.as_ref().map(|l| l.index) >= committed.map(|c| c.index)
    }

    /// Waits (up to [`FENCE_PROPAGATION_TIMEOUT`]) until every live broker
    /// has applied metadata up to `index`, as their broker heartbeats report.
    /// A new producer epoch is then known to every partition leader before
    /// the new instance hears of it, so the old instance is fenced
    /// everywhere from then on, not only where the new one already wrote.
    async fn wait_metadata_everywhere(&self, index: u64, meta: &crate::groups::Meta) {
        let me = self.groups.node_id();
        let deadline = tokio::time::Instant::now() + FENCE_PROPAGATION_TIMEOUT;
        loop {
            let peers: Vec<NodeId> =
                meta.state.borrow().membership.membership().nodes().map(|(id, _)| *id).filter(|id| *id != me).collect();
            let t = self.groups.transport();
            let lagging: Vec<NodeId> = peers
                .into_iter()
                .filter(|p| t.is_live(*p, crate::quiesce::PEER_LIVENESS_TIMEOUT) && t.peer_meta_applied(*p) < index)
                .collect();
            if lagging.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    node = me,
                    index,
                    ?lagging,
                    "brokers have not applied the producer epoch yet; answering anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fences a zombie before it appends anything: a named producer whose
    /// epoch is older than the one the metadata group last handed out. (The
    /// partition state machine fences too, once the newer epoch wrote there;
    /// this check also covers partitions the new instance has not written.)
    fn check_not_fenced(&self, h: &BatchHeader) -> Result<(), BrokerError> {
        if h.producer_id == ferrolog_types::batch::NO_PRODUCER_ID {
            return Ok(());
        }
        let Some(meta) = self.groups.meta() else { return Ok(()) };
        let current = meta.state.borrow().cluster.producer_epochs.get(&h.producer_id).copied();
        match current {
            Some(cur) if cur > h.producer_epoch => Err(BrokerError::Fenced(format!(
                "producer {} epoch {} is fenced: a newer instance holds epoch {cur}",
                h.producer_id, h.producer_epoch
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) async fn meta_leader(&self) -> Result<&crate::groups::Meta, BrokerError> {
        let meta = self.groups.meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
        let leader = meta.raft.current_leader().await;
        if leader != Some(self.groups.node_id()) {
            return Err(BrokerError::NotLeader {
                what: format!("broker {} is not the metadata leader", self.groups.node_id()),
                hint: self.hint(leader),
            });
        }
        Ok(meta)
    }

    pub(crate) async fn describe(&self, t: &Topic) -> v1::TopicDescription {
        self.describe_with(t, false, false).await
    }

    /// Asks, for partitions without a local replica, one broker per replica
    /// set (in parallel, bounded by [`REMOTE_DESCRIBE_TIMEOUT`]); partitions
    /// whose brokers do not answer stay without a leader (0).
    async fn fill_remote(&self, t: &Topic, partitions: &mut [v1::PartitionDescription], replica_lag: bool) {
        // Replica lags are known on the leader only: ask the leader of each
        // partition this broker does not lead (or, with no leader known
        // here, its preferred replica), once per broker.
        let me = self.groups.node_id();
        let mut asks: std::collections::BTreeMap<NodeId, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, a) in t.partitions.iter().enumerate() {
            let leader = partitions.get(i).map(|d| d.leader_id).filter(|l| *l != 0);
            let ask = match leader {
                Some(l) if l == me => None,
                Some(l) => Some(l),
                None => a.replicas.first().copied(),
            };
            if let Some(b) = ask.filter(|b| *b != me) {
                asks.entry(b).or_default().push(i);
            }
        }
        let calls = asks.into_iter().filter_map(|(broker, idx)| {
            let addr = self.groups.address_of(broker)?;
            // The peer's shared channel: no new connection per describe.
            let ch = self.groups.transport().channel(&addr).ok()?;
            let name = t.name.clone();
            Some(async move {
                let mut c = v1::admin_client::AdminClient::new(ch);
                let fut = c.describe_topic(v1::DescribeTopicRequest { name, local_only: true, replica_lag });
                let d = tokio::time::timeout(REMOTE_DESCRIBE_TIMEOUT, fut).await.ok()?.ok()?.into_inner();
                Some((idx, d))
            })
        });
        for (idx, d) in futures::future::join_all(calls).await.into_iter().flatten() {
            for i in idx {
                // Keep what we know when the remote knows less (it lost
                // leadership meanwhile, or has no replica yet).
                if let Some(remote) = d.partitions.iter().find(|p| p.partition as usize == i)
                    && (remote.leader_id != 0 || partitions[i].leader_id == 0)
                    && (remote.replicas.iter().any(|r| r.lag >= 0) || partitions[i].high_watermark < 0)
                {
                    partitions[i] = remote.clone();
                }
            }
        }
    }

    /// Describes `t`: partitions this broker leads from local state, the
    /// others (unless `local_only`) from their leader, which alone knows
    /// every replica's lag.
    async fn describe_with(&self, t: &Topic, local_only: bool, replica_lag: bool) -> v1::TopicDescription {
        let mut partitions = Vec::new();
        for (i, a) in t.partitions.iter().enumerate() {
            let mut d = v1::PartitionDescription {
                partition: i as u32,
                leader_id: 0,
                replicas: a
                    .replicas
                    .iter()
                    .map(|id| v1::ReplicaState {
                        broker_id: *id,
                        lag: -1,
                        in_sync: false,
                        lag_records: 0,
                        lag_seconds: 0.0,
                    })
                    .collect(),
                high_watermark: -1,
                log_start_offset: -1,
                group_id: a.group.0,
            };
            if let Some(r) = self.groups.replica(a.group) {
                let m = r.raft.metrics().borrow_watched().clone();
                d.leader_id = m.current_leader.unwrap_or(0);
                let p = *r.progress.borrow();
                d.high_watermark = p.next_offset as i64;
                d.log_start_offset = p.log_start as i64;
                // Lag in log entries, known on the leader only.
                if let Some(repl) = &m.replication {
                    let last = m.last_log_index.unwrap_or(0);
                    let mut behind = Vec::new();
                    for (i, rs) in d.replicas.iter_mut().enumerate() {
                        if let Some(matched) = repl.get(&rs.broker_id) {
                            let idx = matched.map(|l| l.index).unwrap_or(0);
                            rs.lag = last.saturating_sub(idx) as i64;
                            rs.in_sync = rs.lag == 0;
                            if rs.lag > 0 {
                                behind.push((i, idx));
                            }
                        }
                    }
                    // In records and seconds: which committed batch each
                    // lagging replica lacks first (a bisection of the
                    // offset index and one batch read, off the workers).
                    if replica_lag && !behind.is_empty() {
                        let reader = r.reader.clone();
                        let (start, end) = (p.log_start, p.next_offset);
                        let found = tokio::task::spawn_blocking(move || {
                            behind
                                .into_iter()
                                .map(|(i, idx)| (i, reader.first_batch_after_log_index(start, end, idx)))
                                .collect::<Vec<_>>()
                        })
                        .await
                        .unwrap_or_default();
                        let now = now_ms();
                        for (i, first) in found {
                            if let Ok(Some((base, ts))) = first {
                                d.replicas[i].lag_records = (p.next_offset - base) as i64;
                                d.replicas[i].lag_seconds = ((now - ts).max(0) as f64) / 1000.0;
                            }
                        }
                    }
                }
            }
            partitions.push(d);
        }
        if !local_only {
            self.fill_remote(t, &mut partitions, replica_lag).await;
        }
        v1::TopicDescription {
            name: t.name.clone(),
            replication_factor: t.replication_factor,
            config: Some(v1::TopicConfig {
                retention_ms: t.config.retention_ms,
                retention_bytes: t.config.retention_bytes,
                max_message_bytes: Some(t.config.max_message_bytes),
            }),
            partitions,
        }
    }
}

#[tonic::async_trait]
impl v1::producers_server::Producers for Services {
    async fn init_producer(
        &self,
        request: TReq<v1::InitProducerRequest>,
    ) -> Result<TResp<v1::InitProducerResponse>, Status> {
        let name = request.into_inner().producer_name;
        let meta = self.meta_leader().await?;
        let resp = meta
            .raft
            .client_write(Request::Metadata(MetaCommand::InitProducer { name }))
            .await
            .map_err(|e| self.write_error(e, "init producer"))?;
        match resp.data {
            Response::Metadata(MetaOutcome::ProducerInitialized { id, epoch }) => {
                self.wait_metadata_everywhere(resp.log_id.index, meta).await;
                Ok(TResp::new(v1::InitProducerResponse { producer_id: id, producer_epoch: epoch }))
            }
            Response::Metadata(MetaOutcome::Rejected(e)) => Err(BrokerError::from(e).into()),
            other => Err(BrokerError::Internal(format!("unexpected metadata result {other:?}")).into()),
        }
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Services {
    #[tracing::instrument(skip_all, fields(node = self.groups.node_id(), topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: TReq<v1::CreateTopicRequest>,
    ) -> Result<TResp<v1::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        let meta = self.meta_leader().await?;
        let brokers: Vec<NodeId> = meta.state.borrow().membership.membership().nodes().map(|(id, _)| *id).collect();
        let partitions = if req.partitions == 0 { 1 } else { req.partitions };
        let rf = if req.replication_factor == 0 { brokers.len().min(3) as u32 } else { req.replication_factor };
        ferrolog_metadata::validate_create(&req.name, partitions, rf, brokers.len()).map_err(BrokerError::from)?;
        let cfg = req.config.unwrap_or_default();
        let config = ferrolog_metadata::TopicConfig {
            retention_ms: cfg.retention_ms.filter(|v| *v >= 0),
            retention_bytes: cfg.retention_bytes.filter(|v| *v >= 0),
            max_message_bytes: cfg.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        };
        if config.max_message_bytes == 0 {
            return Err(BrokerError::InvalidArgument("max.message.bytes must be positive".into()).into());
        }
        if config.max_message_bytes > ferrolog_metadata::MAX_MESSAGE_BYTES_LIMIT {
            return Err(BrokerError::InvalidArgument(format!(
                "max.message.bytes {} is over the broker's limit of {} bytes",
                config.max_message_bytes,
                ferrolog_metadata::MAX_MESSAGE_BYTES_LIMIT
            ))
            .into());
        }
        let cmd =
            MetaCommand::CreateTopic { name: req.name.clone(), partitions, replication_factor: rf, config, brokers };
        let resp =
            meta.raft.client_write(Request::Metadata(cmd)).await.map_err(|e| self.write_error(e, "create topic"))?;
        match resp.data {
            Response::Metadata(MetaOutcome::TopicCreated(t)) => {
                Ok(TResp::new(v1::CreateTopicResponse { topic: Some(self.describe(&t).await) }))
            }
            Response::Metadata(MetaOutcome::Rejected(e)) => Err(BrokerError::from(e).into()),
            other => Err(BrokerError::Internal(format!("unexpected metadata result {other:?}")).into()),
        }
    }

    async fn delete_topic(
        &self,
        request: TReq<v1::DeleteTopicRequest>,
    ) -> Result<TResp<v1::DeleteTopicResponse>, Status> {
        let req = request.into_inner();
        let meta = self.meta_leader().await?;
        let cmd = MetaCommand::DeleteTopic { name: req.name };
        let resp =
            meta.raft.client_write(Request::Metadata(cmd)).await.map_err(|e| self.write_error(e, "delete topic"))?;
        match resp.data {
            Response::Metadata(MetaOutcome::TopicDeleted(_)) => Ok(TResp::new(v1::DeleteTopicResponse {})),
            Response::Metadata(MetaOutcome::Rejected(e)) => Err(BrokerError::from(e).into()),
            other => Err(BrokerError::Internal(format!("unexpected metadata result {other:?}")).into()),
        }
    }

    async fn list_topics(
        &self,
        _request: TReq<v1::ListTopicsRequest>,
    ) -> Result<TResp<v1::ListTopicsResponse>, Status> {
        let meta = self.groups.meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
        let topics: Vec<Topic> = meta.state.borrow().cluster.topics.values().cloned().collect();
        let mut out = Vec::new();
        for t in &topics {
            out.push(self.describe(t).await);
        }
        Ok(TResp::new(v1::ListTopicsResponse { topics: out }))
    }

    async fn describe_topic(
        &self,
        request: TReq<v1::DescribeTopicRequest>,
    ) -> Result<TResp<v1::TopicDescription>, Status> {
        let req = request.into_inner();
        let t = self.topic(&req.name)?;
        let mut d = self.describe_with(&t, req.local_only, req.replica_lag).await;
        if req.local_only {
            // Only what this broker holds: the caller fills in the rest,
            // and this answer never fans out again (no recursion).
            let me = self.groups.node_id();
            d.partitions.retain(|p| t.partitions.get(p.partition as usize).is_some_and(|a| a.replicas.contains(&me)));
        }
        Ok(TResp::new(d))
    }

    async fn describe_cluster(
        &self,
        _request: TReq<v1::DescribeClusterRequest>,
    ) -> Result<TResp<v1::DescribeClusterResponse>, Status> {
        // Liveness is known on the metadata leader (last heartbeat acked by
        // each broker), so the question is answered there.
        let meta = self.meta_leader().await?;
        let metrics = meta.raft.metrics().borrow_watched().clone();
        let me = self.groups.node_id();
        let alive = |id: NodeId| {
            id == me
                || metrics
                    .heartbeat
                    .as_ref()
                    .and_then(|hb| hb.get(&id).cloned().flatten())
                    .is_some_and(|t| openraft::Instant::elapsed(&*t) < LIVENESS_TIMEOUT)
        };
        let mut led: std::collections::BTreeMap<NodeId, u32> = Default::default();
        for r in self.groups.replicas() {
            if let Some(l) = r.raft.metrics().borrow_watched().current_leader {
                *led.entry(l).or_default() += 1;
            }
        }
        // Counted under the state's read lock, without copying the state.
        let state = meta.state.borrow();
        let m = state.membership.membership();
        let voters: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
        let mut brokers = Vec::new();
        for (id, node) in m.nodes() {
            let replicas = state.cluster.groups_on(*id).count() as u32;
            brokers.push(v1::BrokerDescription {
                id: *id,
                address: node.addr.clone(),
                alive: alive(*id),
                metadata_voter: voters.contains(id),
                partitions_led: led.get(id).copied().unwrap_or(0),
                replicas,
            });
        }
        // A partition with a replica on a broker that is not alive is under-replicated.
        let under = state
            .cluster
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|a| a.replicas.iter().any(|id| !alive(*id)))
            .count() as u32;
        drop(state);
        Ok(TResp::new(v1::DescribeClusterResponse {
            brokers,
            metadata_leader_id: me,
            under_replicated_partitions: under,
        }))
    }
}
