//! The partition state machine, with no IO: `apply(state, command) -> outcome`.
//!
//! A partition's Raft group replicates [`Command`]s. Once a command is
//! committed, every replica applies it to its [`PartitionState`] in log
//! order and gets the same [`Outcome`] plus the [`Effect`]s to carry out
//! (write this batch at this offset). The caller (ferrolog-raft) does the IO,
//! writing effects and the new state atomically; this crate only decides.
//!
//! Invariants kept here and checked by the tests:
//! - offsets are dense: each appended batch starts at the previous batch's
//!   last offset + 1, and `next_offset` only grows;
//! - a batch whose checksum fails is never given offsets (it is rejected and
//!   the partition is unchanged);
//! - applying the same command sequence to equal states yields equal states
//!   and outcomes (replicas agree);
//! - an idempotent producer's batch is appended at most once: a retry of one
//!   of its last [`producers::MAX_TRACKED_BATCHES`] batches gets the original
//!   offsets and appends nothing; a sequence gap or a stale epoch is refused
//!   (see [`producers`]).

pub mod producers;

use ferrolog_types::Batch;
use ferrolog_types::BatchError;
use ferrolog_types::Offset;
use ferrolog_types::batch::NO_PRODUCER_ID;
use producers::Check;
use producers::Producers;
use serde::Deserialize;
use serde::Serialize;

/// What a partition replica knows after applying a prefix of its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The offset the next appended record gets (the log end offset).
    pub next_offset: Offset,
    /// The first offset still stored (raised by retention).
    pub log_start: Offset,
    /// Batches appended so far (for metrics and sanity checks).
    pub batches: u64,
    /// Bytes of every batch appended so far (retention by size, indexes).
    pub bytes: u64,
    /// The newest record timestamp appended so far (running maximum; the
    /// index keeps it per batch so time lookups can bisect).
    pub max_timestamp_ms: i64,
    /// The partition clock: the newest leader time a [`Command::Clock`]
    /// carried (ms since the epoch). Replicated, so expiry is deterministic.
    pub clock_ms: i64,
    /// Idempotent producers seen here.
    pub producers: Producers,
}

/// A replicated partition command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append a producer's batch.
    Append(Batch),
    /// Retention: drop every batch that ends before `offset`.
    TrimBefore(Offset),
    /// The leader's clock, proposed now and then: advances the partition
    /// clock and forgets producers idle for `producer_idle_ms` or more.
    Clock {
        /// The leader's wall-clock time, ms since the epoch.
        now_ms: i64,
        /// Producer state expires after this much idle time.
        producer_idle_ms: i64,
    },
}

/// What applying a command did, as reported to the producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The batch got offsets `base_offset..=last_offset`.
    Appended {
        /// Offset of the first record.
        base_offset: Offset,
        /// Offset of the last record.
        last_offset: Offset,
    },
    /// A retry of an idempotent batch already appended: nothing was
    /// appended; these are the original offsets.
    Duplicate {
        /// Offset of the first record.
        base_offset: Offset,
        /// Offset of the last record.
        last_offset: Offset,
    },
    /// The log start moved to this offset.
    Trimmed(Offset),
    /// The clock advanced; this many idle producers were forgotten.
    Clocked {
        /// Producers expired.
        expired: usize,
    },
    /// The command was refused; the state is unchanged.
    Rejected(Rejection),
}

/// What an append answers its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Offset of the last record.
    pub last_offset: Offset,
    /// A retry of a batch already appended (these are its original offsets).
    pub duplicate: bool,
}

impl Outcome {
    /// The answer of [`Command::Append`]: this is the one place an outcome is
    /// matched against the append it answers. The outcome back (`Err`) when
    /// it is of another kind of command, which applying an append never
    /// gives (only an append is ever refused;
    /// `an_append_is_answered_as_an_append` below).
    pub fn into_append(self) -> Result<Result<Appended, Rejection>, Outcome> {
        match self {
            Outcome::Appended { base_offset, last_offset } => {
                Ok(Ok(Appended { base_offset, last_offset, duplicate: false }))
            }
            Outcome::Duplicate { base_offset, last_offset } => {
                Ok(Ok(Appended { base_offset, last_offset, duplicate: true }))
            }
            Outcome::Rejected(r) => Ok(Err(r)),
            other @ (Outcome::Trimmed(_) | Outcome::Clocked { .. }) => Err(other),
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The batch did not pass its checksum.
    #[error("corrupt batch: {0}")]
    Corrupt(String),
    /// An idempotent batch does not continue its producer's sequence.
    #[error("out-of-order sequence for producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// Producer.
        producer_id: i64,
        /// The sequence the partition expects next.
        expected: i32,
        /// The batch's base sequence.
        got: i32,
    },
    /// The batch's producer epoch is older than one already seen: a newer
    /// instance of the producer exists.
    #[error("producer {producer_id} epoch {got} is fenced (current epoch {current_epoch})")]
    Fenced {
        /// Producer.
        producer_id: i64,
        /// The newest epoch.
        current_epoch: i32,
        /// The batch's epoch.
        got: i32,
    },
}

/// IO the caller must perform, atomically with persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Index the batch of the entry being applied under `base_offset`. The
    /// batch itself stays where it is (in the Raft log): nothing copies it.
    IndexBatch {
        /// The key of the batch: its first offset.
        base_offset: Offset,
        /// What the index keeps of it.
        meta: BatchMeta,
    },
    /// Delete every stored batch whose base offset is below `before`.
    DeleteBatchesBefore {
        /// New log start.
        before: Offset,
    },
}

/// What the offset index records of one batch: enough to serve ListOffsets
/// by timestamp, retention by size and time and lag in records without
/// reading a payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    /// Records in the batch.
    pub record_count: u32,
    /// Stored size of the batch (header + records).
    pub size: u32,
    /// The batch's newest record timestamp.
    pub max_timestamp_ms: i64,
    /// Bytes of every batch appended before this one (partition lifetime).
    pub bytes_before: u64,
    /// The newest timestamp of this batch and every batch before it:
    /// monotonic in offset, so a timestamp lookup can bisect.
    pub running_max_timestamp_ms: i64,
}

impl PartitionState {
    /// Applies one committed command.
    pub fn apply(&mut self, cmd: Command) -> (Outcome, Option<Effect>) {
        match cmd {
            Command::Append(batch) => {
                if let Err(e) = batch.verify() {
                    return (Outcome::Rejected(reject(e)), None);
                }
                let idempotent = batch.header.producer_id != NO_PRODUCER_ID;
                if idempotent {
                    match producers::check(&self.producers, &batch.header) {
                        Err(r) => return (Outcome::Rejected(r), None),
                        Ok(Check::Duplicate { base_offset, last_offset }) => {
                            return (Outcome::Duplicate { base_offset, last_offset }, None);
                        }
                        Ok(Check::Append) => {}
                    }
                }
                let base_offset = self.next_offset;
                let last_offset = base_offset + u64::from(batch.header.record_count) - 1;
                let size = batch.size_bytes() as u64;
                let meta = BatchMeta {
                    record_count: batch.header.record_count,
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                    max_timestamp_ms: batch.header.max_timestamp_ms,
                    bytes_before: self.bytes,
                    running_max_timestamp_ms: self.max_timestamp_ms.max(batch.header.max_timestamp_ms),
                };
                self.next_offset = last_offset + 1;
                self.batches += 1;
                self.bytes += size;
                self.max_timestamp_ms = meta.running_max_timestamp_ms;
                if idempotent {
                    producers::record(&mut self.producers, &batch.header, base_offset, last_offset, self.clock_ms);
                }
                (Outcome::Appended { base_offset, last_offset }, Some(Effect::IndexBatch { base_offset, meta }))
            }
            Command::Clock { now_ms, producer_idle_ms } => {
                self.clock_ms = self.clock_ms.max(now_ms);
                let expired = producers::expire(&mut self.producers, self.clock_ms, producer_idle_ms);
                (Outcome::Clocked { expired }, None)
            }
            Command::TrimBefore(offset) => {
                // Never trim past the end, never move the start backwards.
                let target = offset.min(self.next_offset);
                if target <= self.log_start {
                    return (Outcome::Trimmed(self.log_start), None);
                }
                self.log_start = target;
                (Outcome::Trimmed(target), Some(Effect::DeleteBatchesBefore { before: target }))
            }
        }
    }
}

fn reject(e: BatchError) -> Rejection {
    Rejection::Corrupt(e.to_string())
}

#[cfg(test)]
mod tests {
    use ferrolog_types::BatchHeader;
    use proptest::prelude::*;

    use super::*;

    fn batch(n: u32) -> Batch {
        Batch::seal(BatchHeader::plain(n, 1), bytes_of(n))
    }

    fn bytes_of(n: u32) -> ferrolog_types::batch::BytesAlias {
        ferrolog_types::batch::BytesAlias::from(vec![n as u8; n as usize])
    }

    #[test]
    fn appends_get_dense_offsets() {
        let mut s = PartitionState::default();
        let (o1, e1) = s.apply(Command::Append(batch(3)));
        let (o2, _) = s.apply(Command::Append(batch(2)));
        assert_eq!(o1, Outcome::Appended { base_offset: 0, last_offset: 2 });
        assert_eq!(o2, Outcome::Appended { base_offset: 3, last_offset: 4 });
        assert!(matches!(e1, Some(Effect::IndexBatch { base_offset: 0, .. })));
        assert_eq!(s.next_offset, 5);
        assert_eq!(s.batches, 2);
    }

    #[test]
    fn the_index_keeps_sizes_and_a_running_maximum_timestamp() {
        let mut s = PartitionState::default();
        let mut metas = Vec::new();
        for (n, ts) in [(3u32, 100i64), (2, 50), (4, 300)] {
            let b = Batch::seal(BatchHeader::plain(n, ts), bytes_of(n));
            let size = b.size_bytes() as u64;
            let (_, e) = s.apply(Command::Append(b));
            let Some(Effect::IndexBatch { meta, .. }) = e else { panic!("appended batch not indexed: {e:?}") };
            assert_eq!(u64::from(meta.size), size);
            metas.push(meta);
        }
        assert_eq!(metas.iter().map(|m| m.max_timestamp_ms).collect::<Vec<_>>(), vec![100, 50, 300]);
        // Monotonic, so lookups by time can bisect.
        assert_eq!(metas.iter().map(|m| m.running_max_timestamp_ms).collect::<Vec<_>>(), vec![100, 100, 300]);
        assert_eq!(metas[0].bytes_before, 0);
        assert_eq!(metas[1].bytes_before, u64::from(metas[0].size));
        assert_eq!(metas[2].bytes_before, u64::from(metas[0].size + metas[1].size));
        assert_eq!(s.bytes, metas.iter().map(|m| u64::from(m.size)).sum::<u64>());
        assert_eq!(s.max_timestamp_ms, 300);
    }

    #[test]
    fn corrupt_batch_is_rejected_and_changes_nothing() {
        let mut s = PartitionState::default();
        let mut b = batch(2);
        b.crc32c ^= 1;
        let before = s.clone();
        let (o, e) = s.apply(Command::Append(b));
        assert!(matches!(o, Outcome::Rejected(Rejection::Corrupt(_))));
        assert_eq!(e, None);
        assert_eq!(s, before);
    }

    #[test]
    fn trim_never_passes_the_end_nor_goes_back() {
        let mut s = PartitionState::default();
        s.apply(Command::Append(batch(10)));
        assert_eq!(s.apply(Command::TrimBefore(4)).0, Outcome::Trimmed(4));
        assert_eq!(s.apply(Command::TrimBefore(2)), (Outcome::Trimmed(4), None));
        assert_eq!(s.apply(Command::TrimBefore(99)).0, Outcome::Trimmed(10));
        assert_eq!(s.log_start, 10);
    }

    #[test]
    fn an_append_is_answered_as_an_append() {
        let mut s = PartitionState::default();
        let answer = |s: &mut PartitionState, c: Command| s.apply(c).0.into_append();
        assert_eq!(
            answer(&mut s, Command::Append(idem(7, 0, 0, 2))),
            Ok(Ok(Appended { base_offset: 0, last_offset: 1, duplicate: false }))
        );
        assert_eq!(
            answer(&mut s, Command::Append(idem(7, 0, 0, 2))),
            Ok(Ok(Appended { base_offset: 0, last_offset: 1, duplicate: true }))
        );
        assert!(matches!(
            answer(&mut s, Command::Append(idem(7, 0, 9, 1))),
            Ok(Err(Rejection::OutOfOrderSequence { .. }))
        ));
        let mut corrupt = batch(1);
        corrupt.crc32c ^= 1;
        assert!(matches!(answer(&mut s, Command::Append(corrupt)), Ok(Err(Rejection::Corrupt(_)))));
        // Trims and clocks answer no producer.
        assert_eq!(answer(&mut s, Command::TrimBefore(1)), Err(Outcome::Trimmed(1)));
        assert!(matches!(
            answer(&mut s, Command::Clock { now_ms: 10, producer_idle_ms: 1 }),
            Err(Outcome::Clocked { .. })
        ));
    }

    fn idem(pid: i64, epoch: i32, seq: i32, n: u32) -> Batch {
        let mut h = BatchHeader::plain(n, 1);
        h.producer_id = pid;
        h.producer_epoch = epoch;
        h.base_sequence = seq;
        Batch::seal(h, bytes_of(n))
    }

    #[test]
    fn a_retry_gets_the_original_offsets_and_appends_nothing() {
        let mut s = PartitionState::default();
        s.apply(Command::Append(batch(2)));
        assert_eq!(s.apply(Command::Append(idem(7, 0, 0, 3))).0, Outcome::Appended { base_offset: 2, last_offset: 4 });
        let before = s.clone();
        let (o, e) = s.apply(Command::Append(idem(7, 0, 0, 3)));
        assert_eq!(o, Outcome::Duplicate { base_offset: 2, last_offset: 4 });
        assert_eq!(e, None);
        assert_eq!(s, before, "a duplicate changes nothing");
        assert_eq!(s.apply(Command::Append(idem(7, 0, 3, 1))).0, Outcome::Appended { base_offset: 5, last_offset: 5 });
    }

    #[test]
    fn gaps_and_stale_epochs_are_refused_without_change() {
        let mut s = PartitionState::default();
        s.apply(Command::Append(idem(7, 1, 0, 2)));
        let before = s.clone();
        let o = s.apply(Command::Append(idem(7, 1, 5, 1))).0;
        assert_eq!(o, Outcome::Rejected(Rejection::OutOfOrderSequence { producer_id: 7, expected: 2, got: 5 }));
        let o = s.apply(Command::Append(idem(7, 0, 2, 1))).0;
        assert_eq!(o, Outcome::Rejected(Rejection::Fenced { producer_id: 7, current_epoch: 1, got: 0 }));
        let o = s.apply(Command::Append(idem(8, 0, 4, 1))).0;
        assert!(
            matches!(o, Outcome::Rejected(Rejection::OutOfOrderSequence { expected: 0, got: 4, .. })),
            "a new producer starts at 0"
        );
        assert_eq!(s, before);
        // A new epoch starts over at 0 and fences the old one.
        assert!(matches!(
            s.apply(Command::Append(idem(7, 2, 3, 1))).0,
            Outcome::Rejected(Rejection::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(s.apply(Command::Append(idem(7, 2, 0, 1))).0, Outcome::Appended { base_offset: 2, last_offset: 2 });
        assert!(matches!(s.apply(Command::Append(idem(7, 1, 2, 1))).0, Outcome::Rejected(Rejection::Fenced { .. })));
    }

    #[test]
    fn the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = PartitionState::default();
        for i in 0..6 {
            s.apply(Command::Append(idem(1, 0, i, 1)));
        }
        for i in 1..6 {
            assert_eq!(
                s.apply(Command::Append(idem(1, 0, i, 1))).0,
                Outcome::Duplicate { base_offset: i as u64, last_offset: i as u64 }
            );
        }
        // The sixth-newest is beyond memory: refused, never appended twice.
        assert!(matches!(s.apply(Command::Append(idem(1, 0, 0, 1))).0, Outcome::Rejected(_)));
        assert_eq!(producers::seq_add(i32::MAX, 1), 0);
        assert_eq!(producers::seq_add(i32::MAX - 1, 3), 1);
        let mut s = PartitionState::default();
        s.producers.insert(
            2,
            producers::ProducerEntry {
                epoch: 0,
                last_seen_ms: 0,
                batches: [producers::TrackedBatch {
                    first_seq: i32::MAX - 1,
                    last_seq: i32::MAX,
                    base_offset: 0,
                    last_offset: 1,
                }]
                .into(),
            },
        );
        s.next_offset = 2;
        assert_eq!(s.apply(Command::Append(idem(2, 0, 0, 1))).0, Outcome::Appended { base_offset: 2, last_offset: 2 });
    }

    #[test]
    fn a_producer_seen_before_the_first_clock_is_not_expired_by_it() {
        let mut s = PartitionState::default();
        s.apply(Command::Append(idem(1, 0, 0, 1)));
        assert_eq!(
            s.apply(Command::Clock { now_ms: 1_000_000, producer_idle_ms: 10 }).0,
            Outcome::Clocked { expired: 0 }
        );
        assert_eq!(
            s.apply(Command::Clock { now_ms: 1_000_010, producer_idle_ms: 10 }).0,
            Outcome::Clocked { expired: 1 }
        );
    }

    #[test]
    fn producers_expire_by_idle_time_never_by_retention() {
        let mut s = PartitionState::default();
        s.apply(Command::Clock { now_ms: 1_000, producer_idle_ms: 500 });
        s.apply(Command::Append(idem(1, 0, 0, 2)));
        // Retention deletes the producer's records: its state stays.
        s.apply(Command::TrimBefore(2));
        assert_eq!(s.log_start, 2);
        assert_eq!(s.apply(Command::Append(idem(1, 0, 0, 2))).0, Outcome::Duplicate { base_offset: 0, last_offset: 1 });
        assert_eq!(s.apply(Command::Clock { now_ms: 1_499, producer_idle_ms: 500 }).0, Outcome::Clocked { expired: 0 });
        // The clock never goes back.
        s.apply(Command::Clock { now_ms: 10, producer_idle_ms: 500 });
        assert_eq!(s.clock_ms, 1_499);
        assert_eq!(s.apply(Command::Clock { now_ms: 1_500, producer_idle_ms: 500 }).0, Outcome::Clocked { expired: 1 });
        assert!(s.producers.is_empty());
    }

    proptest! {
        /// A producer keeps up to five batches in flight and the network
        /// delivers, drops and repeats them in any order: the log holds each
        /// batch exactly once, in sequence order.
        #[test]
        fn in_flight_retries_never_duplicate_or_reorder(
            picks in proptest::collection::vec((0usize..5, any::<bool>()), 1..400),
            sizes in proptest::collection::vec(1u32..4, 12),
        ) {
            let mut s = PartitionState::default();
            let seqs: Vec<i32> = sizes.iter().scan(0i32, |acc, n| { let v = *acc; *acc += *n as i32; Some(v) }).collect();
            let mut acked = vec![None; sizes.len()];
            let mut oldest = 0; // first batch not yet acknowledged
            let mut log: Vec<usize> = Vec::new();
            for (pick, deliver) in picks {
                let i = oldest + pick;
                if i >= sizes.len() { continue; }
                if !deliver { continue; } // lost on the way: the client will resend
                let (o, _) = s.apply(Command::Append(idem(3, 0, seqs[i], sizes[i])));
                match o {
                    Outcome::Appended { base_offset, last_offset } => {
                        prop_assert!(acked[i].is_none(), "batch {} appended twice", i);
                        acked[i] = Some((base_offset, last_offset));
                        log.push(i);
                    }
                    Outcome::Duplicate { base_offset, last_offset } => {
                        prop_assert_eq!(acked[i], Some((base_offset, last_offset)));
                    }
                    Outcome::Rejected(Rejection::OutOfOrderSequence { .. }) => {
                        // Only a batch not yet appended can be out of order:
                        // every batch in the window is among the last five.
                        prop_assert!(acked[i].is_none(), "acknowledged batch {} refused", i);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
                while oldest < sizes.len() && acked[oldest].is_some() { oldest += 1; }
            }
            prop_assert_eq!(log.clone(), (0..log.len()).collect::<Vec<_>>(), "appended in sequence order");
        }
    }

    proptest! {
        /// Replicas that apply the same commands agree, and offsets stay dense.
        #[test]
        fn replicas_agree_and_offsets_are_dense(sizes in proptest::collection::vec(1u32..50, 1..40)) {
            let mut a = PartitionState::default();
            let mut b = PartitionState::default();
            let mut expected_next = 0;
            for n in sizes {
                let (oa, _) = a.apply(Command::Append(batch(n)));
                let (ob, _) = b.apply(Command::Append(batch(n)));
                prop_assert_eq!(&oa, &ob);
                prop_assert_eq!(oa, Outcome::Appended { base_offset: expected_next, last_offset: expected_next + u64::from(n) - 1 });
                expected_next += u64::from(n);
            }
            prop_assert_eq!(a, b);
        }
    }
}
