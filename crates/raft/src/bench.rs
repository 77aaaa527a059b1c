//! The storage micro-benchmark (`ferrolog bench storage`): many Raft groups
//! appending concurrently to one store through [`LogStore::append`], exactly
//! as openraft drives it, each append waiting for its flush callback.
//!
//! It measures what group commit buys: with N groups appending at once, a
//! store that fsyncs once per append does N fsyncs per round, group commit
//! does one.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes_helper::payload;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use ferrolog_types::GroupId;
use hdrhistogram::Histogram;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use serde::Serialize;

use crate::LogStore;
use crate::PartitionEntry;
use crate::types::alias::Entry;
use crate::types::log_id;

/// One benchmark case.
#[derive(Debug, Clone)]
pub struct StorageBench {
    /// Raft groups appending concurrently (one task each).
    pub groups: usize,
    /// Group commit on or off.
    pub group_commit: bool,
    /// Bytes of record payload per append (one entry per append).
    pub entry_bytes: usize,
    /// How long to append.
    pub duration: Duration,
}

/// What one case measured.
#[derive(Debug, Clone, Serialize)]
pub struct StorageBenchReport {
    /// Groups appending concurrently.
    pub groups: usize,
    /// Group commit on or off.
    pub group_commit: bool,
    /// Payload bytes per append.
    pub entry_bytes: usize,
    /// Appends acknowledged as flushed.
    pub appends: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Flushed appends per second.
    pub appends_per_sec: f64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// WAL fsyncs done by the group-commit syncer (0 with group commit off).
    pub wal_syncs: u64,
    /// Median append-to-flushed latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Worst latency, microseconds.
    pub max_us: u64,
}

mod bytes_helper {
    /// A payload of `n` bytes that does not compress to nothing.
    pub fn payload(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

/// Runs one case in a fresh store under `dir`.
pub async fn run(dir: &Path, case: &StorageBench) -> io::Result<StorageBenchReport> {
    let mut config = StorageConfig::new(dir);
    config.group_commit = case.group_commit;
    let storage = Arc::new(Storage::open(&config)?);
    let deadline = Instant::now() + case.duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(case.groups);
    for g in 0..case.groups {
        let storage = storage.clone();
        let entry_bytes = case.entry_bytes;
        tasks.push(tokio::spawn(async move {
            let mut log = LogStore::new(storage, GroupId(g as u64 + 1));
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
            let records = bytes::Bytes::from(payload(entry_bytes, g as u64));
            let batch = Batch::seal(BatchHeader::plain(1, 0), records);
            let mut index = 1u64;
            while Instant::now() < deadline {
                let entry = Entry::new_normal(log_id(1, 1, index), PartitionEntry::append(batch.clone()));
                let (cb, flushed) = crate::flush_signal();
                let t0 = Instant::now();
                log.append([entry], cb).await?;
                flushed.await?;
                hist.record(t0.elapsed().as_micros().max(1) as u64).map_err(io::Error::other)?;
                index += 1;
            }
            Ok::<_, io::Error>(hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    for t in tasks {
        let h = t.await.map_err(io::Error::other)??;
        total.add(&h).map_err(io::Error::other)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let appends = total.len();
    Ok(StorageBenchReport {
        groups: case.groups,
        group_commit: case.group_commit,
        entry_bytes: case.entry_bytes,
        appends,
        seconds,
        appends_per_sec: appends as f64 / seconds,
        mb_per_sec: (appends as f64 * case.entry_bytes as f64) / seconds / 1e6,
        wal_syncs: storage.sync_stats().syncs.load(Ordering::Relaxed),
        p50_us: total.value_at_quantile(0.50),
        p99_us: total.value_at_quantile(0.99),
        max_us: total.max(),
    })
}
