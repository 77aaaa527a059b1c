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
//!   and outcomes (replicas agree).

use ferrolog_types::Batch;
use ferrolog_types::BatchError;
use ferrolog_types::Offset;
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
}

/// A replicated partition command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append a producer's batch.
    Append(Batch),
    /// Retention: drop every batch that ends before `offset`.
    TrimBefore(Offset),
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
    /// The log start moved to this offset.
    Trimmed(Offset),
    /// The command was refused; the state is unchanged.
    Rejected(Rejection),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The batch did not pass its checksum.
    #[error("corrupt batch: {0}")]
    Corrupt(String),
}

/// IO the caller must perform, atomically with persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store `batch` under `base_offset`.
    WriteBatch {
        /// The key of the batch: its first offset.
        base_offset: Offset,
        /// The batch as produced.
        batch: Batch,
    },
    /// Delete every stored batch whose base offset is below `before`.
    DeleteBatchesBefore {
        /// New log start.
        before: Offset,
    },
}

impl PartitionState {
    /// Applies one committed command.
    pub fn apply(&mut self, cmd: Command) -> (Outcome, Option<Effect>) {
        match cmd {
            Command::Append(batch) => {
                if let Err(e) = batch.verify() {
                    return (Outcome::Rejected(reject(e)), None);
                }
                let base_offset = self.next_offset;
                let last_offset = base_offset + u64::from(batch.header.record_count) - 1;
                self.next_offset = last_offset + 1;
                self.batches += 1;
                (Outcome::Appended { base_offset, last_offset }, Some(Effect::WriteBatch { base_offset, batch }))
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
        assert!(matches!(e1, Some(Effect::WriteBatch { base_offset: 0, .. })));
        assert_eq!(s.next_offset, 5);
        assert_eq!(s.batches, 2);
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
