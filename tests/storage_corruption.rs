//! Corruption is detected, not served: damaged data at rest comes back as an
//! error, never as a record.
//!
//! Three layers are exercised:
//! 1. RocksDB block checksums: bytes flipped inside SST files;
//! 2. the per-value CRC32C seal of the store;
//! 3. the record batch's own CRC32C (end to end, from the producer).

use std::io;
use std::sync::Arc;

use ferrolog_raft::LogStore;
use ferrolog_raft::PartitionEntry;
use ferrolog_raft::StateMachine;
use ferrolog_raft::state_machine::PartitionReader;
use ferrolog_raft::types::log_id;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_storage::keys;
use ferrolog_tests::payload_for;
use ferrolog_tests::seed;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use ferrolog_types::GroupId;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use rand::Rng;
use rand::SeedableRng;

const ENTRIES: u64 = 400;

fn entry(index: u64) -> ferrolog_raft::types::alias::Entry {
    let batch = Batch::seal(BatchHeader::plain(1, 0), payload_for(1, index, 2000).into());
    RaftEntry::new_normal(log_id(1, 1, index), PartitionEntry::append(batch))
}

async fn fill(storage: &Arc<Storage>) -> anyhow::Result<()> {
    let mut log = LogStore::new(storage.clone(), GroupId(1));
    let (cb, flushed) = ferrolog_raft::flush_signal();
    log.append((1..=ENTRIES).map(entry), cb).await?;
    flushed.await?;
    Ok(())
}

#[tokio::test]
async fn flipped_bytes_in_sst_files_are_errors_not_data() -> anyhow::Result<()> {
    let seed = seed("flipped_bytes_in_sst_files_are_errors_not_data");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    {
        let storage = Arc::new(Storage::open(&StorageConfig::new(dir.path()))?);
        fill(&storage).await?;
        // Move everything into SST files so the WAL does not hold the data.
        storage.flush()?;
    }
    // Damage every SST file in its data region (the first half: data blocks
    // come first, index and footer last).
    let mut damaged = 0;
    for f in std::fs::read_dir(dir.path())? {
        let path = f?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sst") {
            continue;
        }
        let mut bytes = std::fs::read(&path)?;
        if bytes.len() < 4096 {
            continue; // tiny SSTs of the other column families
        }
        for _ in 0..8 {
            let at = rng.random_range(0..bytes.len() / 2);
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(&path, &bytes)?;
        damaged += 1;
    }
    assert!(damaged >= 1, "expected at least one SST file holding the log");

    let storage = match Storage::open(&StorageConfig::new(dir.path())) {
        // Refusing to open a damaged database is a correct outcome.
        Err(e) => {
            eprintln!("open refused: {e}");
            return Ok(());
        }
        Ok(s) => Arc::new(s),
    };
    let mut log = LogStore::new(storage, GroupId(1));
    let mut errors = 0;
    let mut served = 0;
    // Read entry by entry so one bad block does not hide the others.
    for i in 1..=ENTRIES {
        match log.try_get_log_entries(i..=i).await {
            Ok(got) => {
                // Whatever is returned must be exactly what was written.
                for e in got {
                    assert_eq!(e, entry(e.log_id().index), "damaged entry served as data at index {i}");
                    served += 1;
                }
            }
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "corruption must be reported as such: {e}");
                errors += 1;
            }
        }
    }
    eprintln!("{served} intact entries served, {errors} reads refused");
    assert!(errors > 0, "flipped bits in the data blocks went unnoticed");
    Ok(())
}

#[tokio::test]
async fn a_value_with_a_bad_seal_is_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let storage = Arc::new(Storage::open(&StorageConfig::new(dir.path()))?);
    fill(&storage).await?;
    // Replace entry 7 with a value whose checksum does not match.
    let key = keys::indexed(GroupId(1), 7);
    let mut raw = storage.get(Cf::Log, &key)?.expect("entry 7");
    let sealed_wrong = {
        let mut v = vec![0, 0, 0, 0];
        raw[10] ^= 0xff;
        v.append(&mut raw);
        v
    };
    let mut wb = storage.batch();
    storage.put_unsealed_for_tests(&mut wb, Cf::Log, &key, &sealed_wrong);
    storage.write_durable(wb).await?;

    let mut log = LogStore::new(storage.clone(), GroupId(1));
    let err = log.try_get_log_entries(1..=10).await.expect_err("damaged entry must not be served");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    // The intact neighbours are still readable on their own.
    assert_eq!(log.try_get_log_entries(1..7).await?.len(), 6);
    assert_eq!(log.try_get_log_entries(8..=ENTRIES).await?.len(), (ENTRIES - 7) as usize);
    Ok(())
}

#[tokio::test]
async fn a_record_batch_with_a_bad_crc_is_an_error_on_fetch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let storage = Arc::new(Storage::open(&StorageConfig::new(dir.path()))?);
    let group = GroupId(3);
    // Three good batches appended and applied as a producer's would be.
    let good = |n: u8| Batch::seal(BatchHeader::plain(2, 0), vec![n; 100].into());
    let entries: Vec<_> =
        (1..=3u64).map(|i| RaftEntry::new_normal(log_id(1, 1, i), PartitionEntry::append(good(i as u8)))).collect();
    let mut log = LogStore::new(storage.clone(), group);
    let (cb, flushed) = ferrolog_raft::flush_signal();
    log.append(entries.clone(), cb).await?;
    flushed.await?;
    let mut sm = StateMachine::open(storage.clone(), group)?;
    sm.apply(futures::stream::iter(entries.iter().cloned().map(|e| Ok((e, None))))).await?;
    assert_eq!(sm.state().partition.next_offset, 6);

    // Then the middle batch's records are damaged at rest, after sealing:
    // the store's own seal is valid, only the batch CRC can catch it.
    let mut bad = good(2);
    bad.records = vec![9u8; 100].into();
    let damaged: ferrolog_raft::types::alias::Entry =
        RaftEntry::new_normal(log_id(1, 1, 2), PartitionEntry::append(bad));
    let mut wb = storage.batch();
    storage.put(&mut wb, Cf::Log, &keys::indexed(group, 2), &ferrolog_raft::codec::encode(&damaged)?);
    storage.write_durable(wb).await?;

    let reader = PartitionReader::new(storage, group);
    assert_eq!(reader.read(0, 6, 1, usize::MAX)?.len(), 1, "the batch before the damage is served");
    let err = reader.read(0, 6, 10, usize::MAX).expect_err("the damaged batch must not be served");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let after = reader.read(4, 6, 10, usize::MAX)?;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, 4);
    Ok(())
}
