//! Retention: deleting the oldest data of partitions beyond `retention.ms`
//! or `retention.bytes`, and purging the Raft log consistently.
//!
//! Every `retention_check_ms` (default 60 s; Kafka: 5 minutes), for each
//! local replica:
//! - the partition leader computes the new log start from the topic's limits
//!   and proposes `TrimBefore(offset)`; every replica applies it, deleting
//!   whole batches below it and moving its log start forward;
//! - every replica whose log start moved since its last snapshot builds one
//!   (snapshots hold the retained batches) and then purges its Raft log up to
//!   that snapshot, so the log and the retained data move together. A
//!   follower that is behind the leader's purged log catches up through that
//!   snapshot (openraft sends it);
//! - the leader of a partition that remembers idempotent producers proposes
//!   the partition clock (`Command::Clock`) now and then, which expires
//!   producers idle for `--producer-expiry-ms` (default 7 days). Producer
//!   state is never dropped because data was deleted.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use ferrolog_metadata::Topic;
use ferrolog_partition::Command;
use ferrolog_raft::PartitionEntry;
use ferrolog_types::Offset;
use openraft::async_runtime::watch::WatchReceiver;
use tokio_util::sync::CancellationToken;

use crate::groups::Groups;
use crate::groups::Replica;

/// Longest interval between partition clock proposals (shorter when the
/// producer expiry is short: a quarter of it).
const MAX_CLOCK_INTERVAL: Duration = Duration::from_secs(60);

/// Runs retention every `interval` until `shutdown`.
pub async fn run(groups: Arc<Groups>, interval: Duration, producer_expiry: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for replica in groups.replicas() {
            let topic = groups.meta().and_then(|m| m.state.borrow().cluster.topics.get(&replica.topic).cloned());
            let Some(topic) = topic else { continue };
            if let Err(e) = advance_clock(&groups, &replica, producer_expiry).await {
                tracing::warn!(node = groups.node_id(), topic = replica.topic, partition = replica.partition, error = %e, "producer clock failed");
            }
            if let Err(e) = check(&groups, &replica, &topic).await {
                tracing::warn!(node = groups.node_id(), topic = replica.topic, partition = replica.partition, error = %e, "retention check failed");
            }
        }
    }
}

/// On the leader of a partition with producers: propose the clock when it
/// is older than the clock interval.
async fn advance_clock(groups: &Groups, r: &Replica, expiry: Duration) -> anyhow::Result<()> {
    let p = *r.progress.borrow();
    if p.producers == 0 || r.raft.metrics().borrow_watched().current_leader != Some(groups.node_id()) {
        return Ok(());
    }
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
    let every = MAX_CLOCK_INTERVAL.min(expiry / 4).as_millis() as i64;
    if now_ms.saturating_sub(p.clock_ms) < every {
        return Ok(());
    }
    r.wake();
    let cmd = Command::Clock { now_ms, producer_idle_ms: expiry.as_millis() as i64 };
    r.raft.client_write(PartitionEntry::new(cmd)).await?;
    Ok(())
}

async fn check(groups: &Groups, r: &Replica, topic: &Topic) -> anyhow::Result<()> {
    let metrics = r.raft.metrics().borrow_watched().clone();
    if metrics.current_leader == Some(groups.node_id())
        && let Some(trim) = trim_point(r, topic)?
    {
        tracing::info!(
            node = groups.node_id(),
            topic = r.topic,
            partition = r.partition,
            log_start = trim,
            "retention: trimming"
        );
        r.wake();
        r.raft.client_write(PartitionEntry::new(Command::TrimBefore(trim))).await?;
    }
    // Snapshot, then purge, once the log start moved past what the last
    // snapshot covers.
    let progress = *r.progress.borrow();
    if progress.log_start == 0 {
        return Ok(());
    }
    let applied = metrics.last_applied.map(|l| l.index);
    let snapshot = metrics.snapshot.map(|l| l.index);
    let purged = metrics.purged.map(|l| l.index);
    // openraft's log keeps every entry that holds a retained batch: purge
    // only below the oldest one (and never past the snapshot).
    let floor = ferrolog_raft::state_machine::log_floor(groups.storage(), r.group)?;
    let purge_to = |s: u64| match floor {
        None => Some(s),
        Some(0) => None,
        Some(f) => Some(s.min(f - 1)),
    };
    match (snapshot, applied) {
        (Some(s), _) if purge_to(s).is_some_and(|p| purged < Some(p)) => {
            if let Some(p) = purge_to(s) {
                r.raft.trigger().purge_log(p).await?;
            }
        }
        (s, Some(a)) if s < Some(a) && trimmed_since_snapshot(r, s) => {
            r.raft.trigger().snapshot().await?;
        }
        _ => {}
    }
    Ok(())
}

/// True when the applied state's log start is newer than the snapshot's
/// (approximated: any trim applied after the snapshot index).
fn trimmed_since_snapshot(r: &Replica, snapshot_index: Option<u64>) -> bool {
    let p = *r.progress.borrow();
    p.log_start > 0 && p.last_applied_index > snapshot_index
}

/// The new log start the topic's limits ask for, if it is past the current one.
fn trim_point(r: &Replica, topic: &Topic) -> anyhow::Result<Option<Offset>> {
    let p = *r.progress.borrow();
    if topic.config.retention_ms.is_none() && topic.config.retention_bytes.is_none() {
        return Ok(None);
    }
    // Both limits are bisections of the offset index (O(log n) seeks, no
    // payload read), whatever the partition's length.
    let mut trim = p.log_start;
    if let Some(limit) = topic.config.retention_bytes {
        // Drop the oldest batches until what is left fits the limit.
        let keep = r.reader.offset_keeping_bytes(p.log_start, p.next_offset, limit as u64)?;
        trim = trim.max(keep.unwrap_or(p.next_offset));
    }
    if let Some(ms) = topic.config.retention_ms {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
        // Batches whose newest record (and every older one's) is older than
        // the cutoff expire, oldest first.
        let keep = r.reader.offset_for_timestamp(p.log_start, p.next_offset, now - ms)?;
        trim = trim.max(keep.unwrap_or(p.next_offset));
    }
    Ok((trim > p.log_start).then_some(trim))
}
