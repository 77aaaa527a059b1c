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
//!   state is never dropped because data was deleted. The clock never runs
//!   faster than the proposing broker's monotonic clock ([`next_clock`]): a
//!   broker whose wall clock jumps ahead cannot expire every producer of the
//!   partitions it leads (the clock is replicated: the expiry would be
//!   cluster-wide, and a retry of an expired producer's batch would be
//!   appended again, a duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use ferrolog_metadata::Topic;
use ferrolog_partition::Command;
use ferrolog_raft::PartitionEntry;
use ferrolog_types::GroupId;
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
    let mut clocks = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for replica in groups.replicas() {
            let topic = groups.meta().and_then(|m| m.state.borrow().cluster.topics.get(&replica.topic).cloned());
            let Some(topic) = topic else { continue };
            if let Err(e) = advance_clock(&groups, &replica, producer_expiry, &mut clocks).await {
                tracing::warn!(node = groups.node_id(), topic = replica.topic, partition = replica.partition, error = %e, "producer clock failed");
            }
            if let Err(e) = check(&groups, &replica, &topic).await {
                tracing::warn!(node = groups.node_id(), topic = replica.topic, partition = replica.partition, error = %e, "retention check failed");
            }
        }
    }
}

/// What this broker has seen of each local partition's clock: its value
/// and when (by this broker's monotonic clock) it first saw that value.
type ClockSeen = HashMap<GroupId, (i64, Instant)>;

/// On the leader of a partition with producers: propose the clock when it
/// is older than the clock interval (see [`next_clock`]).
async fn advance_clock(groups: &Groups, r: &Replica, expiry: Duration, seen: &mut ClockSeen) -> anyhow::Result<()> {
    let p = *r.progress.borrow();
    let now = Instant::now();
    // On every replica, leader or not: a follower that becomes leader
    // knows how long the clock has stood still by its own monotonic clock.
    let entry = seen.entry(r.group).or_insert((p.clock_ms, now));
    if entry.0 != p.clock_ms {
        *entry = (p.clock_ms, now);
    }
    let since = now.saturating_duration_since(entry.1);
    if p.producers == 0 || r.raft.metrics().borrow_watched().current_leader != Some(groups.node_id()) {
        return Ok(());
    }
    let wall_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64
        + crate::failpoints::clock_skew_ms();
    let every = MAX_CLOCK_INTERVAL.min(expiry / 4);
    let Some(now_ms) = next_clock(p.clock_ms, wall_ms, since, every) else { return Ok(()) };
    tracing::debug!(
        node = groups.node_id(),
        topic = r.topic,
        partition = r.partition,
        clock_ms = p.clock_ms,
        wall_ms,
        now_ms,
        "proposing the partition clock"
    );
    r.wake();
    let cmd = Command::Clock { now_ms, producer_idle_ms: expiry.as_millis() as i64 };
    r.raft.client_write(PartitionEntry::new(cmd)).await?;
    // The clock stands at `now_ms` from this moment, not from when a later
    // round first sees it applied: counted from then, the clock would
    // advance by only about half of the real time (a proposal every other
    // round), and producers would expire ever later.
    seen.insert(r.group, (now_ms, now));
    Ok(())
}

/// The partition clock to propose, or `None` when it is not yet due
/// (`every`). `clock_ms` is the partition clock (0: never set), `wall_ms`
/// this broker's wall clock, `since` how long this broker has seen the
/// clock at `clock_ms`, by its monotonic clock. The first clock is the wall
/// clock; later ones advance by the wall clock's progress but never by more
/// than `since`: a wall clock that jumps ahead (or a broker whose clock is
/// far ahead of the others') cannot make producers expire early, and one
/// that jumps back only holds the clock still (producers live longer).
pub fn next_clock(clock_ms: i64, wall_ms: i64, since: Duration, every: Duration) -> Option<i64> {
    if clock_ms == 0 {
        return Some(wall_ms);
    }
    let advance = wall_ms.saturating_sub(clock_ms).min(since.as_millis() as i64);
    (advance >= every.as_millis() as i64).then(|| clock_ms + advance)
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

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(60);
    const T: i64 = 1_700_000_000_000;

    #[test]
    fn the_clock_follows_the_wall_clock_when_both_agree() {
        assert_eq!(next_clock(0, T, Duration::ZERO, EVERY), Some(T), "the first clock is the wall clock");
        assert_eq!(next_clock(T, T + 30_000, Duration::from_secs(30), EVERY), None, "not yet due");
        assert_eq!(next_clock(T, T + 61_000, Duration::from_secs(61), EVERY), Some(T + 61_000));
    }

    #[test]
    fn a_wall_clock_jump_never_advances_the_clock_faster_than_real_time() {
        let month = 30 * 24 * 3_600_000;
        // Jumped a month ahead, 61 s after the clock last moved: 61 s.
        assert_eq!(next_clock(T, T + month, Duration::from_secs(61), EVERY), Some(T + 61_000));
        // Jumped back: the clock stands still.
        assert_eq!(next_clock(T, T - month, Duration::from_secs(3_600), EVERY), None);
        // A broker that just saw the value (it took over a moment ago) waits
        // a whole interval of its own, whatever its wall clock says.
        assert_eq!(next_clock(T, T + month, Duration::from_secs(1), EVERY), None);
    }
}
