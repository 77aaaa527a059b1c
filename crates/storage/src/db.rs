//! [`Storage`]: the broker's one RocksDB, its column families, and the
//! read/write primitives the Raft layer builds on.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use ferrolog_types::GroupId;
use rocksdb::BlockBasedOptions;
use rocksdb::ColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::DBRecoveryMode;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
pub use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use crate::StorageError;
use crate::keys;
use crate::syncer::Completion;
use crate::syncer::SyncStats;
use crate::syncer::Syncer;
use crate::value;

/// The column families, one per concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries of every group: `group ‖ index` → sealed entry.
    Log,
    /// Raft hard state per group: vote, committed, purged (`group ‖ kind`).
    RaftMeta,
    /// Partition state machines: applied state and snapshots (`group ‖ kind`).
    StateMachine,
    /// Record batches a replica received in a snapshot (it has no log
    /// entries for them): `group ‖ base offset` → sealed batch. Batches that
    /// arrive through replication are never copied here: they stay in `Log`.
    Records,
    /// The offset index of every partition: `group ‖ base offset` → where
    /// the batch lives (a `Log` index or `Records`) and its size, record
    /// count and timestamps. Small (tens of bytes per batch).
    Index,
    /// The metadata group's state machine (brokers, topics, consumer groups).
    Metadata,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 6] = [Cf::Log, Cf::RaftMeta, Cf::StateMachine, Cf::Records, Cf::Index, Cf::Metadata];

    /// The RocksDB name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::RaftMeta => "raft_meta",
            Cf::StateMachine => "sm",
            Cf::Records => "records",
            Cf::Index => "batch_index",
            Cf::Metadata => "metadata",
        }
    }
}

/// The on-disk format this build reads and writes. Format 3: batches live
/// in the Raft log with an offset index pointing at them (write-once), and
/// the metadata state is stored per key. Format 2 kept the metadata state
/// as one value (a format-2 header would decode as a format-3 one and lose
/// every topic: hence the bump); format 1 stored a second copy of every
/// batch. A store of another format is refused at open, naming both,
/// rather than misread.
pub const FORMAT_VERSION: u32 = 3;

/// Where the format version is kept (`RaftMeta` CF). No group key has this
/// shape: group keys are 9 or 16 bytes.
const FORMAT_KEY: &[u8] = b"ferrolog.format";

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The RocksDB directory.
    pub path: PathBuf,
    /// Share WAL fsyncs between concurrent durable writes (the default).
    /// Off: every durable write is its own `sync = true` write, as a naive
    /// store would do; kept for benchmarks and comparison.
    pub group_commit: bool,
    /// Fault injection: every WAL sync after this many fails with an
    /// injected EIO (without syncing). Tests use it to show fail-stop; the
    /// broker sets it only from its debug-build failpoints. `None` in
    /// production.
    pub fail_syncs_after: Option<u64>,
    /// Fault injection: every WAL "sync" only hands the WAL to the OS and
    /// reports success without an fsync (a disk or store that lies about
    /// fsync). The power-loss tests use it to show that they catch a store
    /// that acknowledges unsynced writes. With group commit only. `false`
    /// in production.
    pub skip_syncs: bool,
}

impl StorageConfig {
    /// Defaults for a data directory: group commit on.
    pub fn new(path: impl AsRef<Path>) -> Self {
        StorageConfig {
            path: path.as_ref().to_path_buf(),
            group_commit: true,
            fail_syncs_after: None,
            skip_syncs: false,
        }
    }
}

/// A broker's store. Cheap to share (`Arc<Storage>`); all methods take `&self`.
#[derive(Debug)]
pub struct Storage {
    db: Arc<DB>,
    syncer: Option<Syncer>,
    /// Set when a WAL sync failed: every later write is refused (fail-stop).
    failed: Arc<AtomicBool>,
    stats: Arc<SyncStats>,
    path: PathBuf,
}

impl Storage {
    /// Opens (creating if needed) the store at `config.path`.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        if config.skip_syncs {
            tracing::error!("fault injection: WAL syncs are skipped (acknowledged writes are not durable)");
            return Self::open_with(config, |db| {
                // Deliberately NOT durable (fault injection): flush_wal(false)
                // writes the WAL buffer to the OS without fsync.
                Box::new(move || db.flush_wal(false).map_err(|e| e.to_string()))
            });
        }
        match config.fail_syncs_after {
            None => Self::open_with(config, crate::syncer::wal_sync),
            Some(n) => Self::open_with(config, move |db| {
                let real = crate::syncer::wal_sync(db);
                let done = std::sync::atomic::AtomicU64::new(0);
                Box::new(move || {
                    if done.fetch_add(1, Ordering::Relaxed) >= n {
                        tracing::error!("fault injection: WAL sync fails (EIO) after {n} syncs");
                        return Err("EIO (injected: storage.fail_syncs_after)".into());
                    }
                    real()
                })
            }),
        }
    }

    /// Opens the store with a WAL sync of the caller's choosing (tests
    /// inject failing syncs to check fail-stop).
    pub(crate) fn open_with(
        config: &StorageConfig,
        make_sync: impl FnOnce(Arc<DB>) -> crate::syncer::SyncFn,
    ) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Check every file's checksums when it is opened and fail on any
        // inconsistency rather than silently dropping data.
        opts.set_paranoid_checks(true);
        // After a crash the WAL may end in a torn record: replay up to the
        // last intact record. Everything we acknowledged was synced, so it
        // lies before any torn tail.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        // Bound the WAL: past this, RocksDB flushes the oldest memtables.
        opts.set_max_total_wal_size(256 << 20);
        // One memtable budget for the whole store, whatever the column
        // families and however fast data arrives (a snapshot install or a
        // follower catching up writes as fast as the disk takes it): past
        // it RocksDB flushes the oldest memtables early.
        // Not stalling (allow_stall = false): with stalls, RocksDB may pick
        // a CF to flush that frees too little and then wait forever; the
        // per-CF caps below bound memory even while flushes catch up.
        let budget = rocksdb::WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET_BYTES, false);
        opts.set_write_buffer_manager(&budget);

        // One block cache for every column family (RocksDB would give each
        // its own 32 MiB), so read-cache memory is one named bound.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
        let db = Arc::new(DB::open_cf_descriptors(&opts, &config.path, cfs)?);
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SyncStats::default());
        let syncer = if config.group_commit {
            Some(
                Syncer::start(make_sync(db.clone()), failed.clone(), stats.clone())
                    .map_err(|e| StorageError::Stopped(format!("cannot start the WAL sync thread: {e}")))?,
            )
        } else {
            None
        };
        let storage = Storage { db, syncer, failed, stats, path: config.path.clone() };
        storage.check_format()?;
        Ok(storage)
    }

    /// Refuses a store written in another on-disk format; stamps a new one.
    fn check_format(&self) -> Result<(), StorageError> {
        match self.get(Cf::RaftMeta, FORMAT_KEY)? {
            Some(v) => {
                let found = v.as_slice().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != FORMAT_VERSION {
                    return Err(StorageError::Format { found, expected: FORMAT_VERSION });
                }
            }
            None => {
                let used =
                    Cf::ALL.iter().any(|cf| self.db.iterator_cf(self.cf(*cf), IteratorMode::Start).next().is_some());
                if used {
                    // Written before the format was stamped: format 1.
                    return Err(StorageError::Format { found: 1, expected: FORMAT_VERSION });
                }
                let mut wb = self.batch();
                self.put(&mut wb, Cf::RaftMeta, FORMAT_KEY, &FORMAT_VERSION.to_be_bytes());
                let mut wo = WriteOptions::default();
                // durability: the stamp of a new store; synced so that a store
                // is never found with data but without its format.
                wo.set_sync(true);
                self.db.write_opt(wb, &wo)?;
            }
        }
        Ok(())
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sync counters (group commit only).
    pub fn sync_stats(&self) -> &SyncStats {
        &self.stats
    }

    /// True once a WAL sync or a write failed, or RocksDB reported a
    /// background error (the store refuses writes from then on).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the store failed: every later write is refused.
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// A write RocksDB refused (a full disk, an I/O error: RocksDB then
    /// refuses every later write until it recovers, if ever) fails the
    /// store as a failed sync does: what reached the disk is no longer
    /// known, and a broker that kept running on it would keep leading groups
    /// it can no longer write to, their followers waiting on its heartbeats.
    fn written(&self, r: Result<(), rocksdb::Error>) -> Result<(), StorageError> {
        if let Err(e) = &r {
            tracing::error!(path = %self.path.display(), error = %e, "a RocksDB write failed: failing the store");
            self.fail();
        }
        Ok(r?)
    }

    /// Looks for an error RocksDB hit in the background (a flush or a
    /// compaction that could not write: a full disk, an I/O error) and fails
    /// the store if there is one: RocksDB stops taking writes after such an
    /// error, so, as with a failed sync, the broker must halt rather than
    /// lead groups it cannot write to. Returns whether the store has failed.
    /// Cheap (a counter read under RocksDB's mutex); the broker's fail-stop
    /// watchdog calls it on every round.
    pub fn check_background_errors(&self) -> bool {
        if let Ok(Some(n)) = self.db.property_int_value("rocksdb.background-errors")
            && n > 0
            && !self.has_failed()
        {
            tracing::error!(path = %self.path.display(), errors = n, "RocksDB reported background errors: failing the store");
            self.fail();
        }
        self.has_failed()
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every Cf is created at open (create_missing_column_families).
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    /// A new write batch, to fill with [`Storage::put`] and friends.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds `key → seal(payload)` to `wb`.
    pub fn put(&self, wb: &mut WriteBatch, cf: Cf, key: &[u8], payload: &[u8]) {
        wb.put_cf(self.cf(cf), key, value::seal(payload));
    }

    /// Adds `key → raw` to `wb` without sealing it. Only for fault-injection
    /// tests that plant damaged values; production code uses [`Storage::put`].
    #[doc(hidden)]
    pub fn put_unsealed_for_tests(&self, wb: &mut WriteBatch, cf: Cf, key: &[u8], raw: &[u8]) {
        wb.put_cf(self.cf(cf), key, raw);
    }

    /// Adds a delete of `key` to `wb`.
    pub fn delete(&self, wb: &mut WriteBatch, cf: Cf, key: &[u8]) {
        wb.delete_cf(self.cf(cf), key);
    }

    /// Adds a delete of `[from, to)` to `wb`.
    pub fn delete_range(&self, wb: &mut WriteBatch, cf: Cf, from: &[u8], to: &[u8]) {
        wb.delete_range_cf(self.cf(cf), from, to);
    }

    fn check_running(&self) -> Result<(), StorageError> {
        if self.has_failed() {
            return Err(StorageError::Stopped("an earlier WAL sync or write failed".into()));
        }
        Ok(())
    }

    /// Applies `wb` atomically without waiting for disk. It becomes durable
    /// with the next sync of any later durable write (the WAL is ordered).
    pub fn write_buffered(&self, wb: WriteBatch) -> Result<(), StorageError> {
        self.check_running()?;
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.written(self.db.write_opt(wb, &wo))
    }

    /// Applies `wb` atomically and calls `done` once it is durable.
    ///
    /// When this returns, the write is visible to reads; `done` may run
    /// later, on another thread. With group commit the fsync is shared with
    /// every other durable write queued meanwhile.
    pub async fn write_durable_then(&self, wb: WriteBatch, done: Completion) -> Result<(), StorageError> {
        self.check_running()?;
        match &self.syncer {
            Some(syncer) => {
                let mut wo = WriteOptions::default();
                wo.set_sync(false);
                self.written(self.db.write_opt(wb, &wo))?;
                syncer.enqueue(done).await
            }
            None => {
                let mut wo = WriteOptions::default();
                // durability: group commit off: this write is fsynced on its
                // own (RocksDB may still merge concurrent writers' syncs).
                wo.set_sync(true);
                let r = self.written(self.db.write_opt(wb, &wo));
                let echo = r.as_ref().map(|_| ()).map_err(|e| StorageError::Stopped(e.to_string()));
                done(echo);
                r
            }
        }
    }

    /// Applies `wb` atomically and returns once it is durable.
    pub async fn write_durable(&self, wb: WriteBatch) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write_durable_then(
            wb,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await?;
        // durability: resolved by the syncer after its fsync (or by the
        // synced write above when group commit is off).
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Reads and checks one value.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(raw) => Ok(Some(value::open(cf.name(), key, &raw)?.to_vec())),
        }
    }

    /// Checked values of `group` with index in `[from, to)`, in index order.
    /// A damaged value ends the scan with an error.
    pub fn scan(
        &self,
        cf: Cf,
        group: GroupId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StorageError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::indexed(group, from).to_vec());
        ro.set_iterate_upper_bound(if to == u64::MAX {
            keys::group_end(group)
        } else {
            keys::indexed(group, to).to_vec()
        });
        let start = keys::indexed(group, from);
        self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(&start, Direction::Forward)).map(move |item| {
            let (k, v) = item?;
            let (_, index) =
                keys::split_indexed(&k).ok_or_else(|| StorageError::corrupt(cf.name(), &k, "malformed key"))?;
            Ok((index, value::open(cf.name(), &k, &v)?.to_vec()))
        })
    }

    /// Checked `(key, value)` pairs with keys in `[from, to)`, in key order
    /// (for keys that are not `group ‖ index`).
    pub fn scan_keys(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(from, Direction::Forward)).map(move |item| {
            let (k, v) = item?;
            let payload = value::open(cf.name(), &k, &v)?.to_vec();
            Ok((k.to_vec(), payload))
        })
    }

    /// The entry of `group` with the highest index at or below `index`, if
    /// any: one seek, whatever the number of entries.
    pub fn seek_prev(&self, cf: Cf, group: GroupId, index: u64) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::group_start(group).to_vec());
        let target = keys::indexed(group, index);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek_for_prev(target);
        if !it.valid() {
            it.status()?;
            return Ok(None);
        }
        let (Some(k), Some(v)) = (it.key(), it.value()) else { return Ok(None) };
        // Only for column families of indexed keys (`group ‖ index`).
        let Some((g, found)) = keys::split_indexed(k) else {
            return Err(StorageError::corrupt(cf.name(), k, "malformed key"));
        };
        if g != group {
            return Ok(None);
        }
        Ok(Some((found, value::open(cf.name(), k, v)?.to_vec())))
    }

    /// The entry of `group` with the highest index, if any.
    pub fn last(&self, cf: Cf, group: GroupId) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::group_start(group).to_vec());
        ro.set_iterate_upper_bound(keys::indexed(group, u64::MAX).to_vec());
        let mut it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let (_, index) =
                    keys::split_indexed(&k).ok_or_else(|| StorageError::corrupt(cf.name(), &k, "malformed key"))?;
                Ok(Some((index, value::open(cf.name(), &k, &v)?.to_vec())))
            }
        }
    }

    /// Adds to `wb` the deletion of every key of `group` in every column
    /// family (a replica removed from this broker).
    pub fn delete_group(&self, wb: &mut WriteBatch, group: GroupId) {
        let (lo, hi) = (keys::group_start(group), keys::group_end(group));
        for cf in Cf::ALL {
            wb.delete_range_cf(self.cf(cf), &lo[..], &hi[..]);
        }
    }

    /// An integer RocksDB property summed over the column families
    /// (e.g. `rocksdb.is-write-stopped`, `rocksdb.actual-delayed-write-rate`).
    pub fn property_sum(&self, name: &str) -> u64 {
        Cf::ALL.iter().filter_map(|cf| self.db.property_int_value_cf(self.cf(*cf), name).ok().flatten()).sum()
    }

    /// Flushes memtables to SST files (tests and orderly shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

/// Memtable size of the `Records` CF, written only while a snapshot
/// streams in (two may be in memory at once).
const RECORDS_WRITE_BUFFER_BYTES: usize = 16 << 20;
/// Memtable size of the `Log` CF: Raft entries, i.e. every produced batch
/// (RocksDB's default is 64 MiB); two fit in the store's budget.
const LOG_WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Memtable size of the small column families (Raft metadata, applied
/// state, offset index, cluster metadata; RocksDB's default is 64 MiB).
const SMALL_WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Memtable bytes the store aims to stay under: past it RocksDB flushes
/// the oldest memtables early. A soft bound; the hard one is each CF's
/// two memtables (`log` 2 x 32, `records` 2 x 16, four small CFs 2 x 4:
/// 128 MiB), so a broker's memtable memory never grows with how fast or
/// how much it is written.
pub const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;
/// The hard bound on memtable bytes (see [`MEMTABLE_BUDGET_BYTES`]).
pub const MEMTABLE_LIMIT_BYTES: usize =
    2 * (LOG_WRITE_BUFFER_BYTES + RECORDS_WRITE_BUFFER_BYTES + 4 * SMALL_WRITE_BUFFER_BYTES);
/// The store's block cache (uncompressed SST blocks), shared by every
/// column family; when full, least recently used blocks are evicted.
/// Consumers reading old data mostly miss it and read through the OS
/// page cache, as Kafka's do.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;

fn cf_options(cf: Cf, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    // Block checksums are on by default; keep them and verify on reads
    // (ReadOptions::verify_checksums defaults to true).
    t.set_block_size(if matches!(cf, Cf::Log | Cf::Records) { 64 << 10 } else { 16 << 10 });
    o.set_block_based_table_factory(&t);
    if matches!(cf, Cf::Log | Cf::Records) {
        // Entries arrive in key order per group and are deleted in ranges.
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    }
    o.set_write_buffer_size(match cf {
        Cf::Log => LOG_WRITE_BUFFER_BYTES,
        Cf::Records => RECORDS_WRITE_BUFFER_BYTES,
        _ => SMALL_WRITE_BUFFER_BYTES,
    });
    // Two memtables at most (the active one and one flushing), RocksDB's
    // default, stated because MEMTABLE_LIMIT_BYTES counts on it.
    o.set_max_write_buffer_number(2);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir, group_commit: bool) -> Storage {
        let mut c = StorageConfig::new(dir.path());
        c.group_commit = group_commit;
        Storage::open(&c).expect("open store")
    }

    #[tokio::test]
    async fn durable_writes_are_read_back_in_order_per_group() {
        for gc in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = open(&dir, gc);
            for g in [GroupId(1), GroupId(2)] {
                for i in 0..10u64 {
                    let mut wb = s.batch();
                    s.put(&mut wb, Cf::Log, &keys::indexed(g, i), format!("{g}:{i}").as_bytes());
                    s.write_durable(wb).await.expect("durable write");
                }
            }
            let got: Vec<_> = s.scan(Cf::Log, GroupId(2), 3, 6).map(|r| r.expect("intact").0).collect();
            assert_eq!(got, vec![3, 4, 5]);
            let (i, v) = s.last(Cf::Log, GroupId(1)).expect("read").expect("non-empty");
            assert_eq!((i, v.as_slice()), (9, b"g1:9".as_slice()));
            assert_eq!(s.last(Cf::Log, GroupId(3)).expect("read"), None);
            if gc {
                assert!(s.sync_stats().syncs.load(Ordering::Relaxed) >= 1);
            }
        }
    }

    #[tokio::test]
    async fn a_failed_wal_sync_stops_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fail = Arc::new(AtomicBool::new(false));
        let f = fail.clone();
        let s = Storage::open_with(&StorageConfig::new(dir.path()), move |db| {
            Box::new(move || {
                if f.load(Ordering::SeqCst) {
                    Err("EIO (injected)".into())
                } else {
                    db.flush_wal(true).map_err(|e| e.to_string())
                }
            })
        })
        .expect("open");
        let key = keys::indexed(GroupId(1), 1);
        let mut wb = s.batch();
        s.put(&mut wb, Cf::Log, &key, b"before");
        s.write_durable(wb).await.expect("a healthy sync acknowledges");

        fail.store(true, Ordering::SeqCst);
        let mut wb = s.batch();
        s.put(&mut wb, Cf::Log, &keys::indexed(GroupId(1), 2), b"during");
        let err = s.write_durable(wb).await.expect_err("a failed sync must not acknowledge");
        assert!(err.to_string().contains("EIO"), "{err}");
        assert!(s.has_failed());

        // Fail-stop: even with a working disk again, nothing more is accepted.
        fail.store(false, Ordering::SeqCst);
        let mut wb = s.batch();
        s.put(&mut wb, Cf::Log, &keys::indexed(GroupId(1), 3), b"after");
        assert!(matches!(s.write_durable(wb).await, Err(StorageError::Stopped(_))));
        let mut wb = s.batch();
        s.put(&mut wb, Cf::Log, &keys::indexed(GroupId(1), 4), b"after");
        assert!(matches!(s.write_buffered(wb), Err(StorageError::Stopped(_))));
    }

    #[tokio::test]
    async fn delete_group_removes_only_that_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir, true);
        let mut wb = s.batch();
        for g in 1..=3 {
            s.put(&mut wb, Cf::Log, &keys::indexed(GroupId(g), 1), b"x");
            s.put(&mut wb, Cf::RaftMeta, &keys::singleton(GroupId(g), 1), b"v");
        }
        s.write_durable(wb).await.expect("write");
        let mut wb = s.batch();
        s.delete_group(&mut wb, GroupId(2));
        s.write_durable(wb).await.expect("delete");
        assert!(s.last(Cf::Log, GroupId(2)).expect("read").is_none());
        assert!(s.get(Cf::RaftMeta, &keys::singleton(GroupId(2), 1)).expect("read").is_none());
        assert!(s.last(Cf::Log, GroupId(1)).expect("read").is_some());
        assert!(s.last(Cf::Log, GroupId(3)).expect("read").is_some());
    }

    #[tokio::test]
    async fn a_value_damaged_before_rocksdb_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir, true);
        let key = keys::indexed(GroupId(1), 0);
        let mut sealed = value::seal(b"payload");
        sealed[6] ^= 0x10;
        let mut wb = s.batch();
        wb.put_cf(s.cf(Cf::Log), key, sealed);
        s.write_durable(wb).await.expect("write");
        assert!(matches!(s.get(Cf::Log, &key), Err(StorageError::Corrupt { .. })));
        let scanned: Vec<_> = s.scan(Cf::Log, GroupId(1), 0, u64::MAX).collect();
        assert!(matches!(scanned.as_slice(), [Err(StorageError::Corrupt { .. })]));
    }

    #[test]
    fn a_store_of_another_format_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An earlier build's store: format 2 kept the metadata state whole,
        // which format 3 would misread (every topic lost) rather than refuse.
        {
            let s = open(&dir, false);
            let mut wb = s.batch();
            s.put(&mut wb, Cf::RaftMeta, FORMAT_KEY, &2u32.to_be_bytes());
            s.write_buffered(wb).expect("write");
            s.flush().expect("flush");
        }
        let mut config = StorageConfig::new(dir.path());
        config.group_commit = false;
        match Storage::open(&config) {
            Err(StorageError::Format { found: 2, expected }) => assert_eq!(expected, FORMAT_VERSION),
            Err(e) => panic!("refused, but not for its format: {e}"),
            Ok(_) => panic!("a format-2 store was opened"),
        }
    }
}
