//! The offset index of a partition, and [`PartitionReader`], which finds and
//! reads batches through it.
//!
//! A batch is written once: as the Raft log entry that carried it. Applying
//! the entry writes only an index entry, `Index` CF `group ‖ base offset →
//! IndexEntry`, saying where the batch lives and what the index keeps of it
//! ([`BatchMeta`]: records, size, timestamps). Batches a replica received in
//! a snapshot have no log entries; they live in the `Records` CF, and their
//! index entries say so.
//!
//! Finding the batch that holds an offset is one `seek_for_prev` in the
//! index, whatever the partition's length. Lookups by time and by size
//! bisect over offsets with such seeks: the index keeps a running maximum
//! timestamp and the bytes before each batch, both monotonic in offset.
//!
//! Reads are blocking RocksDB calls: async callers run them on the blocking
//! pool (see the broker's fetch path).

use std::io;
use std::sync::Arc;

use ferrolog_partition::BatchMeta;
use ferrolog_partition::Command;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::keys;
use ferrolog_types::Batch;
use ferrolog_types::GroupId;
use ferrolog_types::Offset;
use openraft::EntryPayload;
use serde::Deserialize;
use serde::Serialize;

use crate::PartitionEntry;
use crate::codec;
use crate::types::alias::Entry;

/// Where an indexed batch's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// In the Raft log entry at this index (`Log` CF). If that entry was
    /// purged after a snapshot install, the batch is in `Records` instead
    /// (an install writes every batch it covers there).
    Log(u64),
    /// In the `Records` CF under the batch's base offset (from a snapshot).
    Records,
}

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Where the batch is.
    pub location: Location,
    /// What the index keeps of it.
    pub meta: BatchMeta,
}

impl IndexEntry {
    /// The offset after the batch's last record, for a batch based at `base`.
    pub fn end(&self, base: Offset) -> Offset {
        base + u64::from(self.meta.record_count)
    }
}

/// Encodes an index entry for storage.
pub(crate) fn encode_entry(e: &IndexEntry) -> io::Result<Vec<u8>> {
    codec::encode(e)
}

/// Reads the batches of one partition through its index (the fetch path,
/// retention, ListOffsets, snapshots).
#[derive(Debug, Clone)]
pub struct PartitionReader {
    storage: Arc<Storage>,
    group: GroupId,
}

impl PartitionReader {
    /// A reader of `group`'s batches.
    pub fn new(storage: Arc<Storage>, group: GroupId) -> Self {
        PartitionReader { storage, group }
    }

    /// The indexed batch that holds `offset`: its base offset and entry.
    /// One seek, whatever the partition's length.
    pub fn locate(&self, offset: Offset) -> io::Result<Option<(Offset, IndexEntry)>> {
        let Some((base, bytes)) = self.storage.seek_prev(Cf::Index, self.group, offset)? else { return Ok(None) };
        let entry: IndexEntry = codec::decode("index entry", &bytes)?;
        Ok((offset < entry.end(base)).then_some((base, entry)))
    }

    /// Base offset of the stored batch that holds `offset`, if any.
    pub fn batch_containing(&self, offset: Offset) -> io::Result<Option<Offset>> {
        Ok(self.locate(offset)?.map(|(base, _)| base))
    }

    /// Index entries with base offset in `[from, to)`, in offset order
    /// (no payload is read).
    pub fn entries(&self, from: Offset, to: Offset) -> impl Iterator<Item = io::Result<(Offset, IndexEntry)>> + '_ {
        self.storage.scan(Cf::Index, self.group, from, to).map(|item| {
            let (base, bytes) = item?;
            Ok((base, codec::decode("index entry", &bytes)?))
        })
    }

    /// Up to `max_batches` batches and about `max_bytes` (always at least
    /// one batch), starting with the one holding `from` and ending before
    /// `end`, each checked against its CRC32C. A damaged or missing batch is
    /// an error, never data.
    pub fn read(
        &self,
        from: Offset,
        end: Offset,
        max_batches: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(Offset, Batch)>> {
        let start = match self.batch_containing(from)? {
            Some(base) => base,
            // Never skip ahead to the next stored batch: the caller must
            // learn that `from` is gone (a trim raced its bounds check).
            None if from < end => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no stored batch holds offset {from}", self.group),
                ));
            }
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.entries(start, end) {
            let (base, entry) = item?;
            if out.len() >= max_batches || (!out.is_empty() && bytes + entry.meta.size as usize > max_bytes) {
                break;
            }
            bytes += entry.meta.size as usize;
            out.push((base, self.load(base, &entry)?));
        }
        Ok(out)
    }

    /// The batch of index entry `entry` (based at `base`), verified.
    pub fn load(&self, base: Offset, entry: &IndexEntry) -> io::Result<Batch> {
        let batch = match entry.location {
            Location::Log(index) => match self.storage.get(Cf::Log, &keys::indexed(self.group, index))? {
                Some(bytes) => self.batch_of_entry(base, index, &bytes)?,
                // Purged after a snapshot install: the install wrote it here.
                None => self.load_record(base)?,
            },
            Location::Records => self.load_record(base)?,
        };
        if batch.header.record_count != entry.meta.record_count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: batch at offset {base} has {} records, its index entry says {}",
                    self.group, batch.header.record_count, entry.meta.record_count
                ),
            ));
        }
        Ok(batch)
    }

    fn load_record(&self, base: Offset) -> io::Result<Batch> {
        let bytes = self.storage.get(Cf::Records, &keys::indexed(self.group, base))?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: indexed batch at offset {base} is missing", self.group),
            )
        })?;
        decode_batch(self.group, base, &bytes)
    }

    fn batch_of_entry(&self, base: Offset, index: u64, bytes: &[u8]) -> io::Result<Batch> {
        let entry: Entry = codec::decode("log entry", bytes)?;
        match entry.payload {
            EntryPayload::Normal(PartitionEntry { cmd: Command::Append(batch), .. }) => {
                batch.verify().map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: batch at offset {base}: {e}", self.group))
                })?;
                Ok(batch)
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: index entry of offset {base} points at log index {index}, which holds {other:?}",
                    self.group
                ),
            )),
        }
    }

    /// The first offset whose batch's newest record is at or after `ts_ms`
    /// (Kafka's ListOffsets by timestamp), among batches in `[start, end)`:
    /// a bisection over offsets, O(log n) seeks. `None` when no batch is.
    pub fn offset_for_timestamp(&self, start: Offset, end: Offset, ts_ms: i64) -> io::Result<Option<Offset>> {
        self.bisect(start, end, |e| e.meta.running_max_timestamp_ms >= ts_ms)
    }

    /// The first batch base in `[start, end)` from which on the partition
    /// holds at most `limit` bytes (retention by size), by bisection.
    pub fn offset_keeping_bytes(&self, start: Offset, end: Offset, limit: u64) -> io::Result<Option<Offset>> {
        let Some((_, last)) = self.locate(end.saturating_sub(1))? else { return Ok(None) };
        let total_end = last.meta.bytes_before + u64::from(last.meta.size);
        self.bisect(start, end, |e| total_end - e.meta.bytes_before <= limit)
    }

    /// What a follower that matched the leader's log up to Raft index
    /// `matched` lacks of the applied batches in `[start, end)`: the base
    /// offset and first timestamp of the first such batch (by bisection:
    /// log indexes grow with offsets; batches received in a snapshot have
    /// none and precede every logged one). `None` when it lacks none.
    pub fn first_batch_after_log_index(
        &self,
        start: Offset,
        end: Offset,
        matched: u64,
    ) -> io::Result<Option<(Offset, i64)>> {
        let after = |e: &IndexEntry| matches!(e.location, Location::Log(i) if i > matched);
        let Some(base) = self.bisect(start, end, after)? else { return Ok(None) };
        let Some((base, entry)) = self.locate(base)? else { return Ok(None) };
        let batch = self.load(base, &entry)?;
        Ok(Some((base, batch.header.first_timestamp_ms)))
    }

    /// The base of the first batch in `[start, end)` whose entry satisfies
    /// `pred`, where `pred` is monotonic in offset (false, then true).
    fn bisect(&self, start: Offset, end: Offset, pred: impl Fn(&IndexEntry) -> bool) -> io::Result<Option<Offset>> {
        if start >= end {
            return Ok(None);
        }
        // Invariant: the answer, if any, is the batch holding an offset in [lo, hi).
        let (mut lo, mut hi) = (start, end);
        let mut found = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some((base, entry)) = self.locate(mid)? else {
                // A hole in the index (below the first stored batch): search above.
                lo = mid + 1;
                continue;
            };
            if pred(&entry) {
                found = Some(base.max(start));
                hi = base;
            } else {
                lo = entry.end(base);
            }
        }
        Ok(found)
    }
}

/// Decodes and verifies a batch stored in the `Records` CF.
pub(crate) fn decode_batch(group: GroupId, base: Offset, bytes: &[u8]) -> io::Result<Batch> {
    let batch: Batch = codec::decode("record batch", bytes)?;
    batch
        .verify()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{group}: batch at offset {base}: {e}")))?;
    Ok(batch)
}
