//! Idempotent-producer state of one partition: per producer id, its epoch
//! and the sequence ranges and offsets of its last [`MAX_TRACKED_BATCHES`]
//! batches.
//!
//! It is part of [`crate::PartitionState`], so it is replicated (every
//! replica applies the same commands), persisted with the applied state and
//! carried by snapshots: deduplication survives leader failover, restarts
//! and snapshot installs. It is *never* derived from the stored records, so
//! retention deleting a producer's old batches does not forget the producer
//! (Kafka's `UNKNOWN_PRODUCER_ID` problem). Entries expire only when their
//! producer has been idle for the configured time ([`crate::Command::Clock`]).
//!
//! Sequence numbers are per (producer, partition), start at 0 for a new
//! epoch, count records, and wrap from `i32::MAX` to 0 as in Kafka.

use std::collections::BTreeMap;
use std::collections::VecDeque;

use ferrolog_types::BatchHeader;
use ferrolog_types::Offset;
use serde::Deserialize;
use serde::Serialize;

use crate::Rejection;

/// Batches remembered per producer: a retry of any of them is answered from
/// memory, so a client may keep this many batches in flight per partition.
pub const MAX_TRACKED_BATCHES: usize = 5;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedBatch {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: Offset,
    /// Offset of its last record.
    pub last_offset: Offset,
}

/// What a partition knows about one producer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    /// The newest epoch seen; older epochs are fenced.
    pub epoch: i32,
    /// The partition clock when the producer last appended.
    pub last_seen_ms: i64,
    /// Its newest batches, oldest first, at most [`MAX_TRACKED_BATCHES`].
    pub batches: VecDeque<TrackedBatch>,
}

/// Every producer of one partition, by producer id.
pub type Producers = BTreeMap<i64, ProducerEntry>;

/// The sequence `n` records after `seq`, wrapping at `i32::MAX`.
pub fn seq_add(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// How an idempotent batch relates to its producer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// New and in order: append it.
    Append,
    /// A retry of a batch already appended at these offsets.
    Duplicate {
        /// Offset of its first record, as first appended.
        base_offset: Offset,
        /// Offset of its last record.
        last_offset: Offset,
    },
}

/// Checks an idempotent batch against `producers` without changing them.
pub fn check(producers: &Producers, h: &BatchHeader) -> Result<Check, Rejection> {
    let got = h.base_sequence;
    if got < 0 {
        return Err(Rejection::OutOfOrderSequence { producer_id: h.producer_id, expected: 0, got });
    }
    if h.producer_epoch < 0 {
        return Err(Rejection::Fenced { producer_id: h.producer_id, current_epoch: 0, got: h.producer_epoch });
    }
    let Some(p) = producers.get(&h.producer_id) else {
        // A producer this partition never saw (or whose state expired after
        // its idle time) must start at sequence 0.
        return if got == 0 {
            Ok(Check::Append)
        } else {
            Err(Rejection::OutOfOrderSequence { producer_id: h.producer_id, expected: 0, got })
        };
    };
    if h.producer_epoch < p.epoch {
        return Err(Rejection::Fenced { producer_id: h.producer_id, current_epoch: p.epoch, got: h.producer_epoch });
    }
    if h.producer_epoch > p.epoch {
        // A new epoch restarts its sequence at 0.
        return if got == 0 {
            Ok(Check::Append)
        } else {
            Err(Rejection::OutOfOrderSequence { producer_id: h.producer_id, expected: 0, got })
        };
    }
    let last_seq = seq_add(got, h.record_count.saturating_sub(1));
    if let Some(b) = p.batches.iter().find(|b| b.first_seq == got && b.last_seq == last_seq) {
        return Ok(Check::Duplicate { base_offset: b.base_offset, last_offset: b.last_offset });
    }
    let expected = p.batches.back().map(|b| seq_add(b.last_seq, 1)).unwrap_or(0);
    if got != expected {
        return Err(Rejection::OutOfOrderSequence { producer_id: h.producer_id, expected, got });
    }
    Ok(Check::Append)
}

/// Records an appended idempotent batch (after [`check`] said `Append`).
pub fn record(producers: &mut Producers, h: &BatchHeader, base_offset: Offset, last_offset: Offset, now_ms: i64) {
    let entry = producers.entry(h.producer_id).or_insert_with(|| ProducerEntry {
        epoch: h.producer_epoch,
        last_seen_ms: now_ms,
        batches: VecDeque::new(),
    });
    if h.producer_epoch > entry.epoch {
        entry.epoch = h.producer_epoch;
        entry.batches.clear();
    }
    entry.last_seen_ms = now_ms;
    entry.batches.push_back(TrackedBatch {
        first_seq: h.base_sequence,
        last_seq: seq_add(h.base_sequence, h.record_count.saturating_sub(1)),
        base_offset,
        last_offset,
    });
    while entry.batches.len() > MAX_TRACKED_BATCHES {
        entry.batches.pop_front();
    }
}

/// Forgets producers idle for at least `idle_ms` at time `now_ms`; returns
/// how many.
///
/// A producer last seen before the partition clock was ever set
/// (`last_seen_ms == 0`) starts its idle period now: expiry never counts
/// time the partition could not measure.
pub fn expire(producers: &mut Producers, now_ms: i64, idle_ms: i64) -> usize {
    for p in producers.values_mut() {
        if p.last_seen_ms == 0 {
            p.last_seen_ms = now_ms;
        }
    }
    let before = producers.len();
    producers.retain(|_, p| now_ms.saturating_sub(p.last_seen_ms) < idle_ms);
    before - producers.len()
}
