//! acks=1: answering a producer once the leader's own log has the batch on
//! disk, before the quorum commit.
//!
//! openraft has no hook for "this entry is flushed on the leader", so the
//! log store provides it: the produce handler registers a token, proposes an
//! entry carrying it, and [`crate::LogStore::append`] completes the token's
//! waiter from the flush callback of the write that holds the entry.
//!
//! The waiter also needs the batch's offsets, which the state machine only
//! assigns at apply (after commit). Offsets are a pure function of the log
//! (each append takes the next `record_count` offsets), so the log store
//! keeps a *projection*: the next offset after its last entry. It is
//! recomputed from the applied state plus the unapplied tail of the log
//! whenever the log did not simply grow (leader change, truncation). If the
//! entry commits, apply assigns exactly the projected offsets; if it is
//! truncated by a new leader, the acknowledged batch is lost: that is the
//! acks=1 promise (see docs/architecture.md).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// What an acks=1 waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Log index of the entry.
    pub index: u64,
    /// Projected offset of the batch's first record.
    pub base_offset: u64,
    /// Projected offset of its last record.
    pub last_offset: u64,
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
    /// `(last log index, next offset after it)`, when known.
    projection: Option<(u64, u64)>,
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

    /// The projection if it ends right before `first_index`.
    pub(crate) fn projection_before(&self, first_index: u64) -> Option<u64> {
        let inner = self.inner.lock().expect("ack tracker lock");
        match inner.projection {
            Some((last, next)) if last + 1 == first_index => Some(next),
            _ => None,
        }
    }

    pub(crate) fn set_projection(&self, last_index: u64, next_offset: u64) {
        self.inner.lock().expect("ack tracker lock").projection = Some((last_index, next_offset));
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
                let _ = tx.send(*a);
            }
        }
    }
}
