//! Group commit: one WAL fsync for every durable write queued while the
//! previous fsync ran, whatever Raft group it came from.
//!
//! A writer first writes its batch to RocksDB without syncing (it lands in
//! the memtable and in the WAL file's page cache), then queues a completion
//! here. The syncer thread takes everything queued, calls
//! `flush_wal(sync = true)` once, and completes them all. Because RocksDB
//! has a single WAL and appends to it in write order, one sync that starts
//! after a write returned makes that write durable.
//!
//! With N groups appending concurrently the cost is one fsync per round
//! instead of N; the round's latency is one fsync plus queueing.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use rocksdb::DB;
use tokio::sync::mpsc;

use crate::StorageError;

/// Completions waiting for the next WAL sync. When the queue is full,
/// writers wait (their `append` awaits) until the syncer drains it: a slow
/// disk slows producers down instead of growing memory.
pub const SYNC_QUEUE_CAPACITY: usize = 16 * 1024;

/// Most completions taken into one sync round; bounds the latency added to
/// the first waiter of a round when the queue is long.
pub const MAX_SYNC_ROUND: usize = 4096;

/// Called once the write it stands for is durable, or failed to become so.
pub type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// The WAL sync itself: `flush_wal(sync = true)` in production; tests put
/// a failing one in to check that the store fails stop.
pub(crate) type SyncFn = Box<dyn Fn() -> Result<(), String> + Send + 'static>;

/// The production sync of `db`.
pub(crate) fn wal_sync(db: Arc<DB>) -> SyncFn {
    // durability: the group-commit fsync of the one WAL (see `run`).
    Box::new(move || db.flush_wal(true).map_err(|e| e.to_string()))
}

/// Called after every group-commit fsync with its duration and the number
/// of writes it made durable (the broker feeds its metrics from it).
pub type SyncObserver = Box<dyn Fn(std::time::Duration, usize) + Send + Sync>;

/// Counters of the syncer, for benchmarks and metrics.
#[derive(Default)]
pub struct SyncStats {
    /// WAL fsyncs done.
    pub syncs: AtomicU64,
    /// Completions answered (writes made durable).
    pub completions: AtomicU64,
    /// Set once, by whoever exports the syncer's latency.
    pub observer: std::sync::OnceLock<SyncObserver>,
}

impl std::fmt::Debug for SyncStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStats")
            .field("syncs", &self.syncs)
            .field("completions", &self.completions)
            .field("observer", &self.observer.get().is_some())
            .finish()
    }
}

/// Handle to the syncer thread. Dropping it closes the queue; the thread
/// answers what is still queued, then exits, and the drop waits for that.
#[derive(Debug)]
pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<Completion>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub(crate) fn start(sync: SyncFn, failed: Arc<AtomicBool>, stats: Arc<SyncStats>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(SYNC_QUEUE_CAPACITY);
        let thread =
            std::thread::Builder::new().name("ferrolog-wal-sync".into()).spawn(move || run(sync, rx, failed, stats))?;
        Ok(Syncer { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues `done` for the next sync round. The caller must have finished
    /// its (unsynced) write before calling this.
    pub(crate) async fn enqueue(&self, done: Completion) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(done).await.map_err(|_| StorageError::Closed)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.thread.take() {
            // Never join ourselves (a completion that drops the last handle
            // runs on the syncer thread).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

fn run(sync: SyncFn, mut rx: mpsc::Receiver<Completion>, failed: Arc<AtomicBool>, stats: Arc<SyncStats>) {
    let mut round: Vec<Completion> = Vec::with_capacity(MAX_SYNC_ROUND);
    while let Some(first) = rx.blocking_recv() {
        round.push(first);
        while round.len() < MAX_SYNC_ROUND {
            match rx.try_recv() {
                Ok(c) => round.push(c),
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::Acquire) {
            Err("an earlier WAL sync failed".to_string())
        } else {
            // durability: the group-commit fsync. Every write whose completion
            // is in `round` finished before it was queued, so it is in the WAL
            // before this sync starts; after it returns Ok they are on disk.
            let started = std::time::Instant::now();
            let r = sync();
            if let Some(observe) = stats.observer.get() {
                observe(started.elapsed(), round.len());
            }
            match r {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Fail-stop: after a failed fsync the kernel may have
                    // dropped dirty pages; nothing written can be trusted as
                    // durable, so nothing more is acknowledged.
                    failed.store(true, Ordering::Release);
                    tracing::error!(error = %e, "WAL sync failed; storage stops accepting writes");
                    Err(e.to_string())
                }
            }
        };
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.completions.fetch_add(round.len() as u64, Ordering::Relaxed);
        for done in round.drain(..) {
            done(result.clone().map_err(StorageError::Stopped));
        }
    }
}
