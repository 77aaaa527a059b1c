//! The partition storage path on a real RocksDB, without Raft or sockets:
//! write-once apply, the offset index, purge bounded by retained data,
//! streamed snapshots and byte-bounded replication reads.

use std::sync::Arc;

use ferrolog_partition::Command;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use ferrolog_types::GroupId;
use ferrolog_types::limits::MAX_APPEND_ENTRIES_BYTES;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;

use crate::LogStore;
use crate::PartitionEntry;
use crate::StateMachine;
use crate::index::Location;
use crate::index::PartitionReader;
use crate::snapshot::Assembler;
use crate::snapshot::SNAPSHOT_CHUNK_BYTES;
use crate::types::alias::Entry;
use crate::types::log_id;

const G: GroupId = GroupId(7);

fn store(dir: &tempfile::TempDir) -> Arc<Storage> {
    Arc::new(Storage::open(&StorageConfig::new(dir.path())).expect("open store"))
}

/// A batch of `records` records of `bytes` bytes, stamped `ts`.
fn batch(records: u32, bytes: usize, ts: i64) -> Batch {
    Batch::seal(BatchHeader::plain(records, ts), vec![(ts % 251) as u8; bytes].into())
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry::new_normal(log_id(1, 1, index), PartitionEntry::new(cmd))
}

/// Appends `entries` to the log (durably) and applies them.
async fn append_and_apply(log: &mut LogStore, sm: &mut StateMachine, entries: Vec<Entry>) {
    let (cb, flushed) = crate::flush_signal();
    log.append(entries.clone(), cb).await.expect("append");
    flushed.await.expect("flushed");
    sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.expect("apply");
}

/// A partition of `n` batches of 3 records, batch i stamped 1000 + i.
async fn partition(storage: &Arc<Storage>, n: u64, bytes: usize) -> (LogStore, StateMachine) {
    let mut log = LogStore::new(storage.clone(), G);
    let mut sm = StateMachine::open(storage.clone(), G).expect("sm");
    let entries = (1..=n).map(|i| entry(i, Command::Append(batch(3, bytes, 1000 + i as i64)))).collect();
    append_and_apply(&mut log, &mut sm, entries).await;
    (log, sm)
}

fn cf_keys(storage: &Storage, cf: Cf) -> usize {
    storage.scan(cf, G, 0, u64::MAX).count()
}

#[tokio::test]
async fn batches_are_written_once_and_found_by_one_seek() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let (_log, sm) = partition(&storage, 500, 100).await;
    assert_eq!(sm.state().partition.next_offset, 1500);
    // The payload lives only in the log; the index has one small entry per batch.
    assert_eq!(cf_keys(&storage, Cf::Log), 500);
    assert_eq!(cf_keys(&storage, Cf::Index), 500);
    assert_eq!(cf_keys(&storage, Cf::Records), 0, "no second copy of any batch");

    let reader = PartitionReader::new(storage.clone(), G);
    for (offset, base) in [(0, 0), (1, 0), (2, 0), (3, 3), (1000, 999), (1499, 1497)] {
        assert_eq!(reader.batch_containing(offset).expect("locate"), Some(base), "offset {offset}");
    }
    assert_eq!(reader.batch_containing(1500).expect("locate"), None, "past the end");
    let (_, e) = reader.locate(1499).expect("locate").expect("indexed");
    assert_eq!(e.location, Location::Log(500));

    // Reads stop at the byte budget (but return at least one batch) and at `end`.
    let got = reader.read(4, 1500, 1000, 1).expect("read");
    assert_eq!(got.iter().map(|(b, _)| *b).collect::<Vec<_>>(), vec![3]);
    let got = reader.read(1490, 1497, 1000, usize::MAX).expect("read");
    assert_eq!(got.iter().map(|(b, _)| *b).collect::<Vec<_>>(), vec![1488, 1491, 1494]);
    assert_eq!(got[0].1.records.len(), 100);

    // Time and size lookups bisect the index.
    assert_eq!(reader.offset_for_timestamp(0, 1500, 0).expect("ts"), Some(0));
    assert_eq!(reader.offset_for_timestamp(0, 1500, 1001).expect("ts"), Some(0));
    assert_eq!(reader.offset_for_timestamp(0, 1500, 1002).expect("ts"), Some(3));
    assert_eq!(reader.offset_for_timestamp(0, 1500, 1500).expect("ts"), Some(1497));
    assert_eq!(reader.offset_for_timestamp(0, 1500, 1501).expect("ts"), None);
    assert_eq!(reader.offset_for_timestamp(30, 1500, 0).expect("ts"), Some(30), "never below the start");
    let size = batch(3, 100, 0).size_bytes() as u64;
    assert_eq!(reader.offset_keeping_bytes(0, 1500, 10 * size).expect("size"), Some(1470));
    assert_eq!(reader.offset_keeping_bytes(0, 1500, 10 * size + 1).expect("size"), Some(1470));
    assert_eq!(reader.offset_keeping_bytes(0, 1500, 10 * size - 1).expect("size"), Some(1473));
    assert_eq!(reader.offset_keeping_bytes(0, 1500, 0).expect("size"), None);
}

#[tokio::test]
async fn a_trim_inside_a_batch_of_the_same_round_keeps_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let mut log = LogStore::new(storage.clone(), G);
    let mut sm = StateMachine::open(storage.clone(), G).expect("sm");
    let entries = vec![
        entry(1, Command::Append(batch(3, 10, 1))),
        entry(2, Command::Append(batch(3, 10, 2))),
        entry(3, Command::TrimBefore(4)),
    ];
    append_and_apply(&mut log, &mut sm, entries).await;
    let reader = PartitionReader::new(storage.clone(), G);
    assert_eq!(sm.state().partition.log_start, 4);
    assert_eq!(reader.batch_containing(0).expect("locate"), None, "the first batch is gone");
    assert_eq!(reader.batch_containing(4).expect("locate"), Some(3), "the straddling batch stays");
    assert_eq!(reader.read(4, 6, 10, usize::MAX).expect("read").len(), 1);
}

#[tokio::test]
async fn a_purge_keeps_the_log_entries_that_hold_retained_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let (mut log, mut sm) = partition(&storage, 100, 50).await;
    // Retention trims below offset 150 (batch 50, log index 51), at index 101.
    append_and_apply(&mut log, &mut sm, vec![entry(101, Command::TrimBefore(150))]).await;
    // openraft purges everything its snapshot covers...
    log.purge(log_id(1, 1, 101)).await.expect("purge");
    // ...but the entries of retained batches stay and are served.
    let reader = PartitionReader::new(storage.clone(), G);
    let all = reader.read(150, 300, 1000, usize::MAX).expect("read retained");
    assert_eq!(all.len(), 50);
    assert_eq!(all[0].0, 150);
    assert_eq!(cf_keys(&storage, Cf::Log), 51, "entries 51..=101 are kept, 1..=50 deleted");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 101)));
}

#[tokio::test]
async fn a_snapshot_streams_in_bounded_chunks_and_installs_every_retained_batch() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (leader, follower) = (store(&dir_a), store(&dir_b));
    // 60 batches of 64 KiB, the oldest 10 trimmed by retention.
    let (mut log, mut sm) = partition(&leader, 60, 64 << 10).await;
    append_and_apply(&mut log, &mut sm, vec![entry(61, Command::TrimBefore(31))]).await;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    // Building stored the state only, not the batches.
    let stored = leader.get(Cf::StateMachine, &ferrolog_storage::keys::singleton(G, 2)).expect("get").expect("slot");
    assert!(stored.len() < 4096, "snapshot slot holds {} bytes", stored.len());

    // The follower already had the first few batches (it was behind).
    let (_flog, mut fsm) = partition(&follower, 5, 64 << 10).await;
    let header = snap.snapshot.header();
    let mut chunks = snap.snapshot.into_chunks().expect("chunks");
    let mut rx = Assembler::new(header, follower.clone(), G);
    let mut sizes = Vec::new();
    while let Some(c) = chunks.next_chunk().expect("chunk") {
        sizes.push(c.len());
        rx.chunk(&c).expect("receive chunk");
    }
    let max = *sizes.iter().max().expect("chunks");
    assert!(sizes.len() > 1, "sent in several chunks: {sizes:?}");
    assert!(max <= SNAPSHOT_CHUNK_BYTES + (65 << 10) + 1024, "a chunk holds ~1 MiB plus a batch: {max}");
    let data = rx.finish().expect("finish");
    fsm.install_snapshot(&snap.meta, data).await.expect("install");

    let p = fsm.state().partition.clone();
    assert_eq!((p.log_start, p.next_offset), (31, 180));
    let (lr, fr) = (PartitionReader::new(leader.clone(), G), PartitionReader::new(follower.clone(), G));
    let want = lr.read(31, 180, 1000, usize::MAX).expect("leader read");
    let got = fr.read(31, 180, 1000, usize::MAX).expect("follower read");
    assert_eq!(want.len(), 50);
    assert_eq!(got, want, "the follower serves exactly the leader's batches");
    assert_eq!(fr.batch_containing(0).expect("locate"), None, "nothing below the snapshot's first batch");
    // Its old log entries go with the purge that follows an install; its
    // batches live in Records now.
    let mut flog = LogStore::new(follower.clone(), G);
    flog.purge(log_id(1, 1, 61)).await.expect("purge");
    assert_eq!(cf_keys(&follower, Cf::Log), 0);
    assert_eq!(fr.read(31, 180, 1000, usize::MAX).expect("read after purge"), want);
}

#[tokio::test]
async fn a_snapshot_with_a_gap_or_cut_short_is_refused() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (leader, follower) = (store(&dir_a), store(&dir_b));
    // 3,000 batches of 1 KB: about three chunks.
    let (_log, mut sm) = partition(&leader, 3000, 1000).await;

    // A stream that skips a chunk: refused at the chunk after the gap.
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let header = snap.snapshot.header();
    let mut chunks = snap.snapshot.into_chunks().expect("chunks");
    let mut rx = Assembler::new(header, follower.clone(), G);
    rx.chunk(&chunks.next_chunk().expect("chunk").expect("first")).expect("first chunk");
    let _skipped = chunks.next_chunk().expect("chunk").expect("second");
    let third = chunks.next_chunk().expect("chunk").expect("third");
    let err = rx.chunk(&third).expect_err("a gap in the batches is refused");
    assert!(err.to_string().contains("expected"), "{err}");

    // A stream that ends early: received, but not installed.
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let header = snap.snapshot.header();
    let mut chunks = snap.snapshot.into_chunks().expect("chunks");
    let mut rx = Assembler::new(header, follower.clone(), G);
    rx.chunk(&chunks.next_chunk().expect("chunk").expect("first")).expect("first chunk");
    let mut fsm = StateMachine::open(follower.clone(), G).expect("sm");
    let err = rx.finish().expect_err("a partial snapshot is refused before it reaches the install");
    assert!(err.to_string().contains("needs"), "{err}");
    // And the install refuses it too, should one get there.
    let partial = crate::snapshot::PartitionSnapshot {
        applied: sm.state().clone(),
        batches: crate::snapshot::Batches::Received { log_start: 0, first: Some(0), end: 3 },
    };
    let err = fsm
        .install_snapshot(&snap.meta, crate::snapshot::SnapshotData::Partition(partial))
        .await
        .expect_err("partial snapshot");
    assert!(err.to_string().contains("needs"), "{err}");
    assert_eq!(fsm.state().partition.next_offset, 0, "the state is unchanged");
    assert_eq!(StateMachine::open(follower.clone(), G).expect("reopen").state().partition.next_offset, 0);
}

#[tokio::test]
async fn replication_reads_are_bounded_in_bytes_but_never_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    // 40 entries of 256 KiB: 10 MiB, more than two requests' budget.
    let (mut log, _sm) = partition(&storage, 40, 256 << 10).await;
    let got = log.limited_get_log_entries(1, 41).await.expect("read");
    let bytes: usize = got.len() * (256 << 10);
    assert!(!got.is_empty() && got.len() < 40, "a prefix: {} entries", got.len());
    assert!(bytes <= MAX_APPEND_ENTRIES_BYTES, "{bytes} bytes");
    assert_eq!(got[0].log_id().index, 1);
    // One entry larger than the budget is still sent on its own.
    let (mut log2, mut sm2) =
        (LogStore::new(storage.clone(), GroupId(8)), StateMachine::open(storage.clone(), GroupId(8)).expect("sm"));
    let big =
        vec![Entry::new_normal(log_id(1, 1, 1), PartitionEntry::append(batch(1, MAX_APPEND_ENTRIES_BYTES + 1, 5)))];
    append_and_apply(&mut log2, &mut sm2, big).await;
    assert_eq!(log2.limited_get_log_entries(1, 2).await.expect("read").len(), 1);
    // The full-range reader (used outside replication) is not limited.
    assert_eq!(log.try_get_log_entries(1..41).await.expect("read").len(), 40);
    // The apply stream reads in bounded chunks but yields the whole range,
    // in order, once.
    use futures::StreamExt;
    let streamed: Vec<u64> = log.entries_stream(3..41).await.map(|e| e.expect("entry").log_id().index).collect().await;
    assert_eq!(streamed, (3..41).collect::<Vec<u64>>());
    let past_the_end: Vec<u64> =
        log.entries_stream(39..100).await.map(|e| e.expect("entry").log_id().index).collect().await;
    assert_eq!(past_the_end, vec![39, 40]);
}

fn idempotent(pid: i64, seq: i32) -> Batch {
    let mut h = BatchHeader::plain(1, 5);
    h.producer_id = pid;
    h.producer_epoch = 0;
    h.base_sequence = seq;
    Batch::seal(h, vec![1u8; 10].into())
}

fn producer_keys(storage: &Storage) -> usize {
    let (lo, hi) = (ferrolog_storage::keys::keyed(G, 3, 0), ferrolog_storage::keys::singleton(G, 4));
    storage.scan_keys(Cf::StateMachine, &lo, &hi).count()
}

#[tokio::test]
async fn the_producer_table_is_stored_per_producer_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let mut log = LogStore::new(storage.clone(), G);
    let mut sm = StateMachine::open(storage.clone(), G).expect("sm");
    // 1,000 idempotent producers, one batch each.
    let entries = (1..=1000u64).map(|i| entry(i, Command::Append(idempotent(i as i64, 0)))).collect();
    append_and_apply(&mut log, &mut sm, entries).await;
    assert_eq!(sm.state().partition.producers.len(), 1000);
    assert_eq!(producer_keys(&storage), 1000);
    // The applied-state value does not hold the table: an apply round
    // writes it plus the producers it touched, not 1,000 entries.
    let head = storage.get(Cf::StateMachine, &ferrolog_storage::keys::singleton(G, 1)).expect("get").expect("head");
    assert!(head.len() < 512, "applied state is {} bytes", head.len());

    // Reopened, the table is whole: a retry of producer 7's batch appends nothing.
    drop(sm);
    let mut sm = StateMachine::open(storage.clone(), G).expect("reopen");
    assert_eq!(sm.state().partition.producers.len(), 1000);
    append_and_apply(&mut log, &mut sm, vec![entry(1001, Command::Append(idempotent(7, 0)))]).await;
    assert_eq!(sm.state().partition.next_offset, 1000, "the retry was a duplicate");
    append_and_apply(&mut log, &mut sm, vec![entry(1002, Command::Append(idempotent(7, 1)))]).await;
    assert_eq!(sm.state().partition.next_offset, 1001, "the next sequence appends");

    // A first clock tick starts every producer's idle time (and is stored:
    // a reopened replica must expire them when its peers do)...
    let tick = |now_ms| Command::Clock { now_ms, producer_idle_ms: 1000 };
    append_and_apply(&mut log, &mut sm, vec![entry(1003, tick(1 << 40))]).await;
    assert_eq!(sm.state().partition.producers.len(), 1000);
    drop(sm);
    let mut sm = StateMachine::open(storage.clone(), G).expect("reopen");
    assert!(sm.state().partition.producers.values().all(|p| p.last_seen_ms > 0), "idle clocks were stored");
    // ...and one past the idle time expires them and deletes their entries.
    append_and_apply(&mut log, &mut sm, vec![entry(1004, tick((1 << 40) + 5000))]).await;
    assert!(sm.state().partition.producers.is_empty());
    assert_eq!(producer_keys(&storage), 0);
    assert!(StateMachine::open(storage.clone(), G).expect("reopen").state().partition.producers.is_empty());
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_producer_table() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (leader, follower) = (store(&dir_a), store(&dir_b));
    let mut log = LogStore::new(leader.clone(), G);
    let mut sm = StateMachine::open(leader.clone(), G).expect("sm");
    let entries = (1..=10u64).map(|i| entry(i, Command::Append(idempotent(100 + i as i64, 0)))).collect();
    append_and_apply(&mut log, &mut sm, entries).await;
    // The follower knew other producers (its own stale history).
    let mut flog = LogStore::new(follower.clone(), G);
    let mut fsm = StateMachine::open(follower.clone(), G).expect("sm");
    append_and_apply(&mut flog, &mut fsm, vec![entry(1, Command::Append(idempotent(5, 0)))]).await;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let header = snap.snapshot.header();
    let mut chunks = snap.snapshot.into_chunks().expect("chunks");
    let mut rx = Assembler::new(header, follower.clone(), G);
    while let Some(c) = chunks.next_chunk().expect("chunk") {
        rx.chunk(&c).expect("chunk");
    }
    fsm.install_snapshot(&snap.meta, rx.finish().expect("finish")).await.expect("install");
    let reopened = StateMachine::open(follower.clone(), G).expect("reopen");
    assert_eq!(reopened.state().partition.producers, sm.state().partition.producers);
    assert_eq!(producer_keys(&follower), 10);
}
