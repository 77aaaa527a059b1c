//! Snapshot data of both kinds of Raft group, and how a partition snapshot
//! is streamed in bounded chunks.
//!
//! A metadata snapshot is the encoded cluster state, small enough to hold in
//! memory ([`SnapshotData::Bytes`]). A partition snapshot is its applied
//! state (offsets, producer table) plus the batches it retains, which can be
//! gigabytes: the sender reads them from its store a chunk at a time
//! ([`ChunkReader`], at most [`SNAPSHOT_CHUNK_BYTES`] of batches per chunk,
//! or one batch if it is larger) and the receiver writes each chunk to its
//! `Records` CF and offset index as it arrives ([`SnapshotReceiver`]), so
//! neither side ever holds more than a chunk.
//!
//! Chunks carry committed batches, which are the same on every replica, so
//! writing them before the install is decided is harmless: an index entry
//! then points at an identical copy. The install itself
//! ([`crate::StateMachine`]) checks that the batches arrived densely from
//! the log start to the snapshot's end and only then replaces the state.

use std::io;
use std::sync::Arc;

use ferrolog_partition::BatchMeta;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::keys;
use ferrolog_types::GroupId;
use ferrolog_types::Offset;
use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::index::IndexEntry;
use crate::index::Location;
use crate::index::PartitionReader;
use crate::index::decode_batch;
use crate::state_machine::AppliedState;
use crate::state_machine::load_head;

/// Bytes of batches per snapshot chunk (a chunk holds at least one batch,
/// so a larger batch makes a chunk of its own).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// What a chunk spends on each batch besides its bytes (base, index meta,
/// encoding), counted so a chunk of many small batches stays in bounds.
const PER_BATCH_BYTES: usize = 64;

/// Largest metadata snapshot a broker accepts over the network (the cluster
/// state of 10,000s of partitions and groups is a few MiB).
pub const MAX_METADATA_SNAPSHOT_BYTES: usize = 256 << 20;

/// The data of a snapshot of either group kind.
#[derive(Debug)]
pub enum SnapshotData {
    /// A metadata snapshot, whole.
    Bytes(Vec<u8>),
    /// A partition snapshot.
    Partition(PartitionSnapshot),
}

/// A partition snapshot: the applied state, and its batches.
#[derive(Debug)]
pub struct PartitionSnapshot {
    /// The state the snapshot is of.
    pub applied: AppliedState,
    /// Where the batches are.
    pub batches: Batches,
}

/// Where a partition snapshot's batches are.
#[derive(Debug)]
pub enum Batches {
    /// In the store of the replica that built the snapshot, read when sent.
    InStore {
        /// The store.
        storage: Arc<Storage>,
        /// The partition group.
        group: GroupId,
    },
    /// Received and written to this replica's store.
    Received {
        /// The log start the sender had when it sent them.
        log_start: Offset,
        /// Base of the first batch received (none: no batch).
        first: Option<Offset>,
        /// The offset after the last batch received.
        end: Offset,
    },
}

/// What the first chunk of a snapshot stream says about the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SnapshotHeader {
    /// A metadata snapshot: the chunks are its bytes.
    Bytes,
    /// A partition snapshot of this state: the chunks are batches.
    Partition(Box<AppliedState>),
}

/// One chunk of a partition snapshot stream.
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    /// The sender's log start (the same in every chunk).
    log_start: Offset,
    /// `(base offset, index meta, encoded batch)`, densely in offset order.
    batches: Vec<(Offset, BatchMeta, Vec<u8>)>,
}

impl PartitionSnapshot {
    /// A snapshot of `applied` whose batches are read from `storage` when sent.
    pub fn in_store(applied: AppliedState, storage: Arc<Storage>, group: GroupId) -> SnapshotData {
        SnapshotData::Partition(PartitionSnapshot { applied, batches: Batches::InStore { storage, group } })
    }

    /// Reads this snapshot's batches in chunks. The batches retained now are
    /// sent (retention may have trimmed since the snapshot was built), up to
    /// the snapshot's end.
    pub fn chunks(&self) -> io::Result<ChunkReader> {
        let Batches::InStore { storage, group } = &self.batches else {
            return Err(io::Error::other("a received snapshot cannot be sent on"));
        };
        let now = load_head(storage, *group)?.partition.log_start;
        let log_start = self.applied.partition.log_start.max(now);
        let end = self.applied.partition.next_offset;
        let reader = PartitionReader::new(storage.clone(), *group);
        let next = if log_start < end {
            reader.batch_containing(log_start)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{group}: no batch holds the log start {log_start}"))
            })?
        } else {
            end
        };
        Ok(ChunkReader { reader, group: *group, log_start, next, end, sent_first: false })
    }
}

impl SnapshotData {
    /// The header that starts this snapshot's stream.
    pub fn header(&self) -> SnapshotHeader {
        match self {
            SnapshotData::Bytes(_) => SnapshotHeader::Bytes,
            SnapshotData::Partition(p) => SnapshotHeader::Partition(Box::new(p.applied.clone())),
        }
    }

    /// The stream's chunks, read one at a time.
    pub fn into_chunks(self) -> io::Result<Chunks> {
        match self {
            SnapshotData::Bytes(data) => Ok(Chunks::Bytes { data, pos: 0, sent: false }),
            SnapshotData::Partition(p) => Ok(Chunks::Partition(p.chunks()?)),
        }
    }
}

/// The chunks of a snapshot stream.
#[derive(Debug)]
pub enum Chunks {
    /// Slices of a metadata snapshot.
    Bytes {
        /// The snapshot.
        data: Vec<u8>,
        /// Bytes already sent.
        pos: usize,
        /// At least one chunk was sent (an empty snapshot is one empty chunk).
        sent: bool,
    },
    /// Batches of a partition snapshot.
    Partition(ChunkReader),
}

impl Chunks {
    /// The next chunk, or `None` after the last.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Chunks::Bytes { data, pos, sent } => {
                if *pos >= data.len() && *sent {
                    return Ok(None);
                }
                let to = (*pos + SNAPSHOT_CHUNK_BYTES).min(data.len());
                let chunk = data[*pos..to].to_vec();
                *pos = to;
                *sent = true;
                Ok(Some(chunk))
            }
            Chunks::Partition(r) => r.next_chunk(),
        }
    }
}

/// Reads a partition snapshot's batches, a chunk at a time.
#[derive(Debug)]
pub struct ChunkReader {
    reader: PartitionReader,
    group: GroupId,
    log_start: Offset,
    /// Base of the next batch to send.
    next: Offset,
    end: Offset,
    sent_first: bool,
}

impl ChunkReader {
    /// The next chunk (encoded), or `None` after the last. The first chunk
    /// is sent even when there are no batches (it carries the log start).
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.next >= self.end && self.sent_first {
            return Ok(None);
        }
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        while self.next < self.end {
            let (base, entry) = self.reader.locate(self.next)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{}: batch at offset {} is gone (trimmed while the snapshot was sent)",
                        self.group, self.next
                    ),
                )
            })?;
            if base != self.next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: index is not dense at offset {} (batch starts at {base})", self.group, self.next),
                ));
            }
            // Stop before a batch that would overflow the chunk (a chunk
            // holds at least one batch): a chunk is at most
            // SNAPSHOT_CHUNK_BYTES or one batch, plus the per-batch fields.
            let cost = entry.meta.size as usize + PER_BATCH_BYTES;
            if !batches.is_empty() && bytes + cost > SNAPSHOT_CHUNK_BYTES {
                break;
            }
            let batch = self.reader.load(base, &entry)?;
            let encoded = codec::encode(&batch)?;
            bytes += encoded.len() + PER_BATCH_BYTES;
            batches.push((base, entry.meta, encoded));
            self.next = entry.end(base);
        }
        self.sent_first = true;
        Ok(Some(codec::encode(&Chunk { log_start: self.log_start, batches })?))
    }
}

/// Writes a partition snapshot's chunks to this replica's store as they
/// arrive, checking each batch, and tells the install what arrived.
#[derive(Debug)]
pub struct SnapshotReceiver {
    storage: Arc<Storage>,
    group: GroupId,
    applied: AppliedState,
    log_start: Option<Offset>,
    first: Option<Offset>,
    next: Offset,
}

impl SnapshotReceiver {
    /// A receiver of a snapshot of `applied` for `group`.
    pub fn new(storage: Arc<Storage>, group: GroupId, applied: AppliedState) -> Self {
        SnapshotReceiver { storage, group, applied, log_start: None, first: None, next: 0 }
    }

    /// Checks and stores one chunk (buffered: the install's synced write
    /// makes them durable). An empty message (the stream's header travels
    /// alone) carries no chunk.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = codec::decode("snapshot chunk", data)?;
        if *self.log_start.get_or_insert(chunk.log_start) != chunk.log_start {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: snapshot log start changed", self.group),
            ));
        }
        let end = self.applied.partition.next_offset;
        let mut wb = self.storage.batch();
        for (base, meta, bytes) in chunk.batches {
            if self.first.is_some() && base != self.next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: snapshot batch at {base}, expected {}", self.group, self.next),
                ));
            }
            let batch = decode_batch(self.group, base, &bytes)?;
            let batch_end = base + u64::from(meta.record_count);
            if batch.header.record_count != meta.record_count || meta.record_count == 0 || batch_end > end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: snapshot batch at {base} disagrees with its index entry or the state", self.group),
                ));
            }
            self.first.get_or_insert(base);
            self.next = batch_end;
            let key = keys::indexed(self.group, base);
            self.storage.put(&mut wb, Cf::Records, &key, &bytes);
            let entry = IndexEntry { location: Location::Records, meta };
            self.storage.put(&mut wb, Cf::Index, &key, &crate::index::encode_entry(&entry)?);
        }
        self.storage.write_buffered(wb)?;
        Ok(())
    }

    /// The received snapshot, ready to install.
    pub fn finish(self) -> io::Result<PartitionSnapshot> {
        let log_start = self.log_start.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: snapshot stream without chunks", self.group))
        })?;
        let end = if self.first.is_some() { self.next } else { log_start };
        let snap = PartitionSnapshot {
            applied: self.applied,
            batches: Batches::Received { log_start, first: self.first, end },
        };
        // Checked here too, so that an incomplete stream is an error reply
        // to the sender rather than a failed install (fatal to the group).
        snap.check_complete()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.group)))?;
        Ok(snap)
    }
}

impl PartitionSnapshot {
    /// The log start the installed state will have: the snapshot's, or the
    /// sender's if retention moved it since.
    pub fn effective_log_start(&self) -> Offset {
        let next = self.applied.partition.next_offset;
        match &self.batches {
            Batches::Received { log_start, .. } => self.applied.partition.log_start.max(*log_start).min(next),
            Batches::InStore { .. } => self.applied.partition.log_start,
        }
    }

    /// For a received snapshot: every batch from the one holding the log
    /// start to the end arrived (the receiver checked density).
    pub fn check_complete(&self) -> Result<(), String> {
        let Batches::Received { first, end, .. } = &self.batches else { return Ok(()) };
        let next = self.applied.partition.next_offset;
        let log_start = self.effective_log_start();
        let complete = match first {
            Some(first) => *first <= log_start && *end == next,
            None => log_start == next,
        };
        if complete {
            Ok(())
        } else {
            Err(format!("snapshot holds batches [{first:?}, {end}) but its state needs [{log_start}, {next})"))
        }
    }
}

/// Assembles a received snapshot stream of either kind.
#[derive(Debug)]
pub enum Assembler {
    /// A metadata snapshot, collected in memory up to
    /// [`MAX_METADATA_SNAPSHOT_BYTES`].
    Bytes(Vec<u8>),
    /// A partition snapshot, written to the store as it arrives.
    Partition(Box<SnapshotReceiver>),
}

impl Assembler {
    /// An assembler for the stream that `header` starts, into `storage`.
    pub fn new(header: SnapshotHeader, storage: Arc<Storage>, group: GroupId) -> Self {
        match header {
            SnapshotHeader::Bytes => Assembler::Bytes(Vec::new()),
            SnapshotHeader::Partition(applied) => {
                Assembler::Partition(Box::new(SnapshotReceiver::new(storage, group, *applied)))
            }
        }
    }

    /// Takes one chunk.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Assembler::Bytes(buf) => {
                if buf.len() + data.len() > MAX_METADATA_SNAPSHOT_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("metadata snapshot larger than {MAX_METADATA_SNAPSHOT_BYTES} bytes"),
                    ));
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            Assembler::Partition(rx) => rx.chunk(data),
        }
    }

    /// The snapshot data, once the last chunk arrived.
    pub fn finish(self) -> io::Result<SnapshotData> {
        match self {
            Assembler::Bytes(buf) => Ok(SnapshotData::Bytes(buf)),
            Assembler::Partition(rx) => Ok(SnapshotData::Partition(rx.finish()?)),
        }
    }
}
