//! acks=1: answering a producer once the leader's own log has the batch on
//! disk, before the quorum commit.
//!
//! openraft has no hook for "this entry is flushed on the leader", so the
//! log store provides it: the produce handler registers a token, proposes an
//! entry carrying it, and [`crate::LogStore::append`] completes the token's
//! waiter from the flush callback of the write that holds the entry.
//!
//! The waiter also needs the batch's outcome (offsets, or duplicate, or a
//! sequence error), which the state machine only decides at apply (after
//! commit). Outcomes are a pure function of the log, so the log store keeps
//! a *projection*: the partition state after its last entry, obtained by
//! applying every entry to a copy of the applied state with the same
//! [`ferrolog_partition::PartitionState::apply`] the state machine uses
//! (dedup of idempotent producers included). It is recomputed from the
//! applied state plus the unapplied tail of the log whenever the log did not
//! simply grow (leader change, truncation). If the entry commits, apply
//! decides exactly the projected outcome; if it is truncated by a new
//! leader, the acknowledged batch is lost: that is the acks=1 promise (see
//! docs/architecture.md).

use std::collections::HashMap;
use std::sync::Mutex;

use ferrolog_partition::Outcome;
use ferrolog_partition::PartitionState;
use tokio::sync::oneshot;

/// What an acks=1 waiter is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Log index of the entry.
    pub index: u64,
    /// The projected outcome of applying it.
    pub outcome: Outcome,
}

/// acks=1 waiters and the offset projection of one group's log.
///
/// Waiters are bounded by the produce requests in flight, which the broker's
/// admission limit bounds; a waiter whose request gave up is cancelled.
#[derive(Debug, Default)]
pub struct AckTracker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `(last log index, partition state after it)`, when known.
    projection: Option<(u64, PartitionState)>,
    waiters: HashMap<u64, oneshot::Sender<Acked>>,
    next_token: u64,
}

impl AckTracker {
    /// Registers a waiter; returns its token (never 0) and receiver.
    pub fn register(&self) -> (u64, oneshot::Receiver<Acked>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().expect("ack tracker lock");
        inner.next_token += 1;
        let token = inner.next_token;
        inner.waiters.insert(token, tx);
        (token, rx)
    }

    /// Drops a waiter that is no longer interested.
    pub fn cancel(&self, token: u64) {
        self.inner.lock().expect("ack tracker lock").waiters.remove(&token);
    }

    /// Takes the projection if it ends right before `first_index`.
    pub(crate) fn take_projection_before(&self, first_index: u64) -> Option<PartitionState> {
        let mut inner = self.inner.lock().expect("ack tracker lock");
        match inner.projection.take() {
            Some((last, state)) if last + 1 == first_index => Some(state),
            _ => None,
        }
    }

    pub(crate) fn set_projection(&self, last_index: u64, state: PartitionState) {
        self.inner.lock().expect("ack tracker lock").projection = Some((last_index, state));
    }

    /// Forgets the projection (the log was truncated or replaced).
    pub fn invalidate(&self) {
        self.inner.lock().expect("ack tracker lock").projection = None;
    }

    /// Completes the waiters of flushed entries.
    pub(crate) fn complete(&self, acked: &[(u64, Acked)]) {
        let mut inner = self.inner.lock().expect("ack tracker lock");
        for (token, a) in acked {
            if let Some(tx) = inner.waiters.remove(token) {
                let _ = tx.send(a.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrolog_partition::Command;
    use ferrolog_storage::Storage;
    use ferrolog_storage::StorageConfig;
    use ferrolog_types::Batch;
    use ferrolog_types::BatchHeader;
    use ferrolog_types::GroupId;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftLogStorage;

    use super::*;
    use crate::LogStore;
    use crate::PartitionEntry;
    use crate::types::alias::Entry;
    use crate::types::log_id;

    fn append_entry(term: u64, index: u64, records: u32, ack: u64) -> Entry {
        let batch = Batch::seal(BatchHeader::plain(records, 0), vec![index as u8; 8].into());
        Entry::new_normal(log_id(term, 1, index), PartitionEntry { cmd: Command::Append(batch), ack })
    }

    fn acked(index: u64, base_offset: u64, last_offset: u64) -> Acked {
        Acked { index, outcome: Outcome::Appended { base_offset, last_offset } }
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        let (cb, flushed) = crate::flush_signal();
        log.append(entries, cb).await.expect("append");
        flushed.await.expect("flushed");
    }

    #[tokio::test]
    async fn acks1_offsets_follow_the_log_across_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(Storage::open(&StorageConfig::new(dir.path())).expect("open"));
        let tracker = Arc::new(AckTracker::default());
        let mut log = LogStore::with_acks(storage, GroupId(9), tracker.clone());

        // Entries 1..=3 with 2, 3 and 4 records; waiters on 1 and 3.
        let (t1, r1) = tracker.register();
        let (t3, r3) = tracker.register();
        append(&mut log, vec![append_entry(1, 1, 2, t1), append_entry(1, 2, 3, 0), append_entry(1, 3, 4, t3)]).await;
        assert_eq!(r1.await.expect("acked"), acked(1, 0, 1));
        assert_eq!(r3.await.expect("acked"), acked(3, 5, 8));

        // A new leader truncates entry 3 and writes its own: offsets are
        // recomputed from the log (nothing applied yet), not continued.
        log.truncate_after(Some(log_id(1, 1, 2))).await.expect("truncate");
        let (t, r) = tracker.register();
        append(&mut log, vec![append_entry(2, 3, 1, t)]).await;
        assert_eq!(r.await.expect("acked"), acked(3, 5, 5));

        // The log simply growing continues the projection.
        let (t, r) = tracker.register();
        append(&mut log, vec![append_entry(2, 4, 2, t)]).await;
        assert_eq!(r.await.expect("acked"), acked(4, 6, 7));

        // After an invalidation (what a snapshot install does) the next
        // append recomputes from the log: 2 + 3 + 1 + 2 records before it.
        tracker.invalidate();
        let (t, r) = tracker.register();
        append(&mut log, vec![append_entry(2, 5, 1, t)]).await;
        assert_eq!(r.await.expect("acked"), acked(5, 8, 8));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_is_forgotten() {
        let tracker = AckTracker::default();
        let (t, r) = tracker.register();
        tracker.cancel(t);
        tracker.complete(&[(t, acked(1, 0, 0))]);
        assert!(r.await.is_err(), "no answer after cancel");
    }
}
