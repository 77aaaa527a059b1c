//! [`StateMachine`]: openraft's state machine for one partition group.
//!
//! Applying a committed entry runs the sans-IO partition logic
//! ([`ferrolog_partition::PartitionState::apply`]) and performs its effects:
//! the batch is stored in the `Records` CF under `group ‖ base offset`, and
//! the applied state (last applied log id, membership, partition state) in
//! the `StateMachine` CF, both in one atomic write batch.
//!
//! Applied state is written unsynced: it is derived from the log, whose
//! entries were fsynced before they could commit. After a crash the state
//! machine may be behind the log; openraft re-applies from `last_applied`
//! (up to the persisted committed index), and because the records and the
//! applied state move in one batch they are never out of step.
//!
//! Snapshots hold the applied state and every stored batch. They are built
//! in memory, which is fine for the sizes tests and the first releases use;
//! large partitions will want snapshots that reference the records CF
//! instead of copying it (noted in docs/architecture.md).

use std::io;
use std::sync::Arc;

use ferrolog_partition::Effect;
use ferrolog_partition::PartitionState;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::WriteBatch;
use ferrolog_storage::keys;
use ferrolog_types::Batch;
use ferrolog_types::GroupId;
use ferrolog_types::Offset;
use futures::Stream;
use futures::StreamExt;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;

use crate::Request;
use crate::Response;
use crate::TypeConfig;
use crate::codec;
use crate::snapshot_slot::SnapshotSlot;
use crate::types::alias::LogId;
use crate::types::alias::Snapshot;
use crate::types::alias::SnapshotMeta;
use crate::types::alias::StoredMembership;

const SM_APPLIED: u8 = 1;
const SM_SNAPSHOT: u8 = 2;

/// Everything a replica has applied, persisted after every apply round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The partition's offsets.
    pub partition: PartitionState,
}

/// The contents of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    applied: AppliedState,
    /// `(base offset, encoded batch)`, in offset order.
    batches: Vec<(Offset, Vec<u8>)>,
}

/// What readers of a partition need to know about its applied state: the
/// high watermark (everything applied is committed) and the log start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// First offset not yet applied: the high watermark.
    pub next_offset: Offset,
    /// First offset still stored.
    pub log_start: Offset,
    /// Log index of the last applied entry.
    pub last_applied_index: Option<u64>,
    /// Idempotent producers the partition remembers.
    pub producers: usize,
    /// The partition clock (ms since the epoch; 0 until first set).
    pub clock_ms: i64,
}

/// Loads the persisted applied state of `group` (default when none).
pub fn load_applied(storage: &Storage, group: GroupId) -> io::Result<AppliedState> {
    Ok(match storage.get(Cf::StateMachine, &keys::singleton(group, SM_APPLIED))? {
        Some(v) => codec::decode("applied state", &v)?,
        None => AppliedState::default(),
    })
}

/// The state machine of one partition group.
#[derive(Debug)]
pub struct StateMachine {
    group: GroupId,
    storage: Arc<Storage>,
    /// In-memory copy of what is persisted under `SM_APPLIED`.
    state: AppliedState,
    /// Published after every apply: fetch long-polls on it.
    progress: tokio::sync::watch::Sender<Progress>,
    /// Told when a snapshot replaces the log (the acks=1 projection is stale).
    acks: Option<Arc<crate::acks::AckTracker>>,
}

impl StateMachine {
    /// Opens the state machine of `group`, loading its applied state.
    pub fn open(storage: Arc<Storage>, group: GroupId) -> io::Result<Self> {
        let state = load_applied(&storage, group)?;
        let (progress, _) = tokio::sync::watch::channel(progress_of(&state));
        Ok(StateMachine { group, storage, state, progress, acks: None })
    }

    /// Also invalidates `acks`' projection when a snapshot is installed.
    pub fn with_acks(mut self, acks: Arc<crate::acks::AckTracker>) -> Self {
        self.acks = Some(acks);
        self
    }

    /// A receiver of the applied progress (high watermark).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The applied state (offsets, last applied log id).
    pub fn state(&self) -> &AppliedState {
        &self.state
    }

    fn write_effect(&self, wb: &mut WriteBatch, effect: Effect) -> io::Result<()> {
        match effect {
            Effect::WriteBatch { base_offset, batch } => {
                let key = keys::indexed(self.group, base_offset);
                self.storage.put(wb, Cf::Records, &key, &codec::encode(&batch)?);
            }
            Effect::DeleteBatchesBefore { before } => {
                // Delete whole batches only: one that straddles `before` stays
                // (its first records sit below the new log start, as in Kafka).
                let reader = PartitionReader::new(self.storage.clone(), self.group);
                if let Some(keep_from) = reader.batch_containing(before)? {
                    self.storage.delete_range(
                        wb,
                        Cf::Records,
                        &keys::indexed(self.group, 0),
                        &keys::indexed(self.group, keep_from),
                    );
                } else {
                    self.storage.delete_range(
                        wb,
                        Cf::Records,
                        &keys::indexed(self.group, 0),
                        &keys::indexed(self.group, before),
                    );
                }
            }
        }
        Ok(())
    }

    fn put_state(&self, wb: &mut WriteBatch) -> io::Result<()> {
        let key = keys::singleton(self.group, SM_APPLIED);
        self.storage.put(wb, Cf::StateMachine, &key, &codec::encode(&self.state)?);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut wb = self.storage.batch();
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(Request::Partition { cmd, .. }) => {
                    let (outcome, effect) = self.state.partition.apply(cmd);
                    if let Some(effect) = effect {
                        self.write_effect(&mut wb, effect)?;
                    }
                    Response::Partition(outcome)
                }
                EntryPayload::Normal(Request::Metadata(_)) => {
                    // Never proposed to a partition group; refusing it keeps
                    // replicas in step (every replica refuses it alike).
                    tracing::error!(group = %self.group, "metadata command in a partition group ignored");
                    Response::None
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(log_id), m);
                    Response::None
                }
            };
            self.state.last_applied = Some(log_id);
            if let Some(r) = responder {
                replies.push((r, response));
            }
        }
        self.put_state(&mut wb)?;
        // Not synced: see the module docs (the state is derived from the
        // fsynced log and replayed after a crash).
        self.storage.write_buffered(wb)?;
        self.progress.send_replace(progress_of(&self.state));
        for (r, response) in replies {
            r.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { group: self.group, storage: self.storage.clone(), applied: self.state.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        let body: SnapshotBody = codec::decode("snapshot", &snapshot)?;
        if body.applied.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: snapshot body is at {:?} but its meta says {:?}",
                    self.group, body.applied.last_applied, meta.last_log_id
                ),
            ));
        }
        let mut wb = self.storage.batch();
        self.storage.delete_range(&mut wb, Cf::Records, &keys::indexed(self.group, 0), &keys::group_end(self.group));
        for (base, bytes) in &body.batches {
            // Check every batch before it replaces our state.
            let batch: Batch = codec::decode("snapshot batch", bytes)?;
            batch.verify().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.storage.put(&mut wb, Cf::Records, &keys::indexed(self.group, *base), bytes);
        }
        let mut state = body.applied;
        state.membership = meta.last_membership.clone();
        slot(self.group).put(&self.storage, &mut wb, meta, &snapshot)?;
        let previous = std::mem::replace(&mut self.state, state);
        if let Err(e) = self.put_state(&mut wb) {
            self.state = previous;
            return Err(e);
        }
        // durability: installing a snapshot replaces the replica's state and
        // openraft purges the log behind it next; sync it so that a crash
        // cannot leave a purged log with the old state.
        if let Err(e) = self.storage.write_durable(wb).await {
            self.state = previous;
            return Err(e.into());
        }
        if let Some(acks) = &self.acks {
            acks.invalidate();
        }
        self.progress.send_replace(progress_of(&self.state));
        tracing::info!(
            group = %self.group,
            last_log_id = ?meta.last_log_id,
            log_start = self.state.partition.log_start,
            next_offset = self.state.partition.next_offset,
            "installed snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        slot(self.group).load(&self.storage)
    }
}

/// The current-snapshot slot of partition group `group`.
fn slot(group: GroupId) -> SnapshotSlot {
    SnapshotSlot { cf: Cf::StateMachine, key: keys::singleton(group, SM_SNAPSHOT) }
}

fn progress_of(s: &AppliedState) -> Progress {
    Progress {
        next_offset: s.partition.next_offset,
        log_start: s.partition.log_start,
        last_applied_index: s.last_applied.map(|l| l.index),
        producers: s.partition.producers.len(),
        clock_ms: s.partition.clock_ms,
    }
}

/// Builds a snapshot of the state captured when it was created.
#[derive(Debug)]
pub struct SnapshotBuilder {
    group: GroupId,
    storage: Arc<Storage>,
    applied: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Records only grow at the end and the applied state caps what we
        // take, so batches applied after the builder was made are left out.
        let end = self.applied.partition.next_offset;
        let mut batches = Vec::new();
        for item in self.storage.scan(Cf::Records, self.group, 0, end) {
            let (base, bytes) = item?;
            batches.push((base, bytes));
        }
        let body = SnapshotBody { applied: self.applied.clone(), batches };
        let data = codec::encode(&body)?;
        let meta =
            SnapshotMeta { last_log_id: self.applied.last_applied, last_membership: self.applied.membership.clone() };
        slot(self.group).store(&self.storage, &meta, &data).await?;
        Ok(Snapshot { meta, snapshot: data })
    }
}

/// Reads applied record batches of one partition (the fetch path).
#[derive(Debug, Clone)]
pub struct PartitionReader {
    storage: Arc<Storage>,
    group: GroupId,
}

impl PartitionReader {
    /// A reader of `group`'s records.
    pub fn new(storage: Arc<Storage>, group: GroupId) -> Self {
        PartitionReader { storage, group }
    }

    /// Base offset of the stored batch that holds `offset`, if any.
    pub fn batch_containing(&self, offset: Offset) -> io::Result<Option<Offset>> {
        // The batch holding `offset` is the last one whose base is <= offset.
        let mut found = None;
        for item in self.storage.scan(Cf::Records, self.group, 0, offset.saturating_add(1)) {
            let (base, _) = item?;
            found = Some(base);
        }
        let Some(base) = found else { return Ok(None) };
        let batch = self.read_one(base)?;
        let last = base + u64::from(batch.header.record_count) - 1;
        Ok((offset <= last).then_some(base))
    }

    fn read_one(&self, base: Offset) -> io::Result<Batch> {
        let key = keys::indexed(self.group, base);
        let bytes = self
            .storage
            .get(Cf::Records, &key)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no batch at {base}", self.group)))?;
        decode_batch(self.group, base, &bytes)
    }

    /// Up to `max_batches` batches starting with the one holding `from`, each
    /// checked against its CRC32C. A damaged batch is an error, never data.
    pub fn read(&self, from: Offset, max_batches: usize) -> io::Result<Vec<(Offset, Batch)>> {
        let start = self.batch_containing(from)?.unwrap_or(from);
        let mut out = Vec::new();
        for item in self.storage.scan(Cf::Records, self.group, start, u64::MAX) {
            if out.len() >= max_batches {
                break;
            }
            let (base, bytes) = item?;
            out.push((base, decode_batch(self.group, base, &bytes)?));
        }
        Ok(out)
    }
}

fn decode_batch(group: GroupId, base: Offset, bytes: &[u8]) -> io::Result<Batch> {
    let batch: Batch = codec::decode("record batch", bytes)?;
    batch
        .verify()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{group}: batch at offset {base}: {e}")))?;
    Ok(batch)
}
