//! openraft's own storage conformance suite against the RocksDB store.
//!
//! Run twice: each test case in a fresh database (group commit on), and
//! every case in one shared database, each in a new group beside a noisy
//! neighbour group (group commit off), which shows groups are isolated.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use ferrolog_raft::LogStore;
use ferrolog_raft::PartitionConfig as TypeConfig;
use ferrolog_raft::StateMachine;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_types::GroupId;
use openraft::StorageError;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;

struct FreshDb;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FreshDb {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = Arc::new(
            Storage::open(&StorageConfig::new(dir.path()))
                .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?,
        );
        let sm = StateMachine::open(storage.clone(), GroupId(1))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, LogStore::new(storage, GroupId(1)), sm))
    }
}

/// One database for all cases; every case gets a new group id, and a
/// neighbour group (id + 1) gets entries before the case runs.
struct SharedDb {
    storage: Arc<Storage>,
    next_group: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for SharedDb {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let g = self.next_group.fetch_add(2, Ordering::SeqCst);
        // The neighbour: 50 entries at indexes 0..50, which must never show
        // up in the group under test (it sits right after it in key order).
        let mut neighbour = LogStore::new(self.storage.clone(), GroupId(g + 1));
        let entries = (0..50).map(|i| openraft::testing::blank_ent::<TypeConfig>(1, 1, i));
        let (cb, flushed) = ferrolog_raft::flush_signal();
        neighbour.append(entries, cb).await.map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        flushed.await.map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let sm = StateMachine::open(self.storage.clone(), GroupId(g))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok(((), LogStore::new(self.storage.clone(), GroupId(g)), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_fresh_db_group_commit() -> anyhow::Result<()> {
    Suite::test_all(FreshDb).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_shared_db_many_groups_no_group_commit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = StorageConfig::new(dir.path());
    config.group_commit = false;
    let storage = Arc::new(Storage::open(&config)?);
    let builder = SharedDb { storage: storage.clone(), next_group: AtomicU64::new(100) };
    Suite::test_all(builder).await?;

    // Every neighbour kept exactly its 50 entries through all the cases.
    let used = (100..1000u64)
        .step_by(2)
        .take_while(|g| storage.last(ferrolog_storage::Cf::Log, GroupId(g + 1)).ok().flatten().is_some());
    let mut checked = 0;
    for g in used {
        let mut n = LogStore::new(storage.clone(), GroupId(g + 1));
        let got = openraft::RaftLogReader::try_get_log_entries(&mut n, 0..u64::MAX).await?;
        let idx: Vec<u64> = got.iter().map(|e| e.log_id().index).collect();
        assert_eq!(idx, (0..50).collect::<Vec<_>>(), "neighbour group {} was disturbed", g + 1);
        checked += 1;
    }
    assert!(checked > 20, "expected many suite cases, saw {checked}");
    Ok(())
}
