//! [`StateMachine`]: the state of one partition group, driven by the
//! generic [`crate::adapter::Applier`] (openraft's state machine).
//!
//! Applying a committed entry runs the sans-IO partition logic
//! ([`ferrolog_partition::PartitionState::apply`]) and performs its effects.
//! A batch is written once, as the Raft log entry that carried it: apply
//! only adds its offset index entry (see [`crate::index`]) and the applied
//! state (last applied log id, membership, partition state), in one atomic
//! write batch.
//!
//! Applied state is written unsynced: it is derived from the log, whose
//! entries were fsynced before they could commit. After a crash the state
//! machine may be behind the log; openraft re-applies from `last_applied`
//! (up to the persisted committed index), and because the index and the
//! applied state move in one batch they are never out of step.
//!
//! Snapshots are not copies of the partition. Building one stores only the
//! applied state; the batches are read from the store, in bounded chunks,
//! when the snapshot is sent ([`crate::snapshot`]), and a receiving replica
//! writes them to its `Records` CF chunk by chunk as they arrive. Memory
//! during build, send and install is bounded by the chunk size.
//!
//! The Raft log of a partition is its data: openraft's purge (after a
//! snapshot) deletes only entries below the oldest retained batch; retention
//! decides what goes ([`crate::LogStore`] asks [`log_floor`]).

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use ferrolog_partition::Command;
use ferrolog_partition::Effect;
use ferrolog_partition::Outcome;
use ferrolog_partition::PartitionState;
use ferrolog_partition::producers::ProducerEntry;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::WriteBatch;
use ferrolog_storage::keys;
use ferrolog_types::GroupId;
use ferrolog_types::Offset;
use ferrolog_types::batch::NO_PRODUCER_ID;
use openraft::RaftSnapshotBuilder;
use serde::Deserialize;
use serde::Serialize;

use crate::adapter::Applier;
use crate::adapter::GroupState;
use crate::codec;
use crate::index::IndexEntry;
use crate::index::Location;
pub use crate::index::PartitionReader;
use crate::snapshot::Batches;
use crate::snapshot::PartitionSnapshot;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotReceiver;
use crate::snapshot_slot::SnapshotSlot;
use crate::types::PartitionConfig;
use crate::types::PartitionEntry;
use crate::types::alias::LogId;
use crate::types::alias::Snapshot;
use crate::types::alias::SnapshotMeta;
use crate::types::alias::StoredMembership;

const SM_APPLIED: u8 = 1;
const SM_SNAPSHOT: u8 = 2;
/// `group ‖ 3 ‖ producer id`: one idempotent producer's entry. The table is
/// stored per producer so that an apply round writes only the producers it
/// touched, not the whole table.
const SM_PRODUCER: u8 = 3;

/// Everything a replica has applied, persisted after every apply round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The partition's offsets.
    pub partition: PartitionState,
    /// This replica only: batches below this offset came in a snapshot and
    /// live in the `Records` CF, not in the Raft log.
    pub installed_until: Offset,
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

/// Loads the persisted applied state of `group` (default when none), its
/// producer table included.
pub fn load_applied(storage: &Storage, group: GroupId) -> io::Result<AppliedState> {
    let mut state = load_head(storage, group)?;
    let (lo, hi) = producer_range(group);
    for item in storage.scan_keys(Cf::StateMachine, &lo, &hi) {
        let (key, bytes) = item?;
        let pid = keys::keyed_id(&key).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "producer key"))?;
        let entry: ProducerEntry = codec::decode("producer entry", &bytes)?;
        state.partition.producers.insert(pid as i64, entry);
    }
    Ok(state)
}

/// Every producer key of `group`: `[group ‖ 3 ‖ 0, group ‖ 4)`.
fn producer_range(group: GroupId) -> ([u8; 17], [u8; 9]) {
    (keys::keyed(group, SM_PRODUCER, 0), keys::singleton(group, SM_PRODUCER + 1))
}

/// The persisted applied state of `group` without its producer table (one
/// small value: offsets, membership).
pub fn load_head(storage: &Storage, group: GroupId) -> io::Result<AppliedState> {
    Ok(match storage.get(Cf::StateMachine, &keys::singleton(group, SM_APPLIED))? {
        Some(v) => codec::decode("applied state", &v)?,
        None => AppliedState::default(),
    })
}

/// The lowest Raft log index of `group` that still holds retained data:
/// a purge must leave it and everything after it in place. `None` when no
/// retained batch lives in the log (groups without an index, such as the
/// metadata group, or a partition whose batches all came by snapshot).
pub fn log_floor(storage: &Arc<Storage>, group: GroupId) -> io::Result<Option<u64>> {
    let applied = load_head(storage, group)?;
    let p = &applied.partition;
    let from = p.log_start.max(applied.installed_until);
    if from >= p.next_offset {
        return Ok(None);
    }
    match PartitionReader::new(storage.clone(), group).locate(from)? {
        Some((_, IndexEntry { location: Location::Log(index), .. })) => Ok(Some(index)),
        // Not what a finished install leaves (a snapshot stream that never
        // installed wrote here): keep the whole log rather than guess.
        Some((_, IndexEntry { location: Location::Records, .. })) | None => Ok(Some(0)),
    }
}

/// openraft's state machine of one partition group.
pub type StateMachine = Applier<PartitionGroup>;

impl Applier<PartitionGroup> {
    /// Opens the state machine of `group`, loading its applied state.
    pub fn open(storage: Arc<Storage>, group: GroupId) -> io::Result<Self> {
        Ok(Applier::new(PartitionGroup::open(storage, group)?))
    }

    /// Also invalidates `acks`' projection when a snapshot is installed.
    pub fn with_acks(self, acks: Arc<crate::acks::AckTracker>) -> Self {
        Applier::new(self.into_inner().with_acks(acks))
    }
}

/// The applied state of one partition group.
#[derive(Debug)]
pub struct PartitionGroup {
    group: GroupId,
    storage: Arc<Storage>,
    /// In-memory copy of what is persisted under `SM_APPLIED`.
    state: AppliedState,
    /// Published after every apply: fetch long-polls on it.
    progress: tokio::sync::watch::Sender<Progress>,
    /// Told when a snapshot replaces the log (the acks=1 projection is stale).
    acks: Option<Arc<crate::acks::AckTracker>>,
}

impl PartitionGroup {
    /// Opens the state machine of `group`, loading its applied state.
    pub fn open(storage: Arc<Storage>, group: GroupId) -> io::Result<Self> {
        let state = load_applied(&storage, group)?;
        let (progress, _) = tokio::sync::watch::channel(progress_of(&state));
        Ok(PartitionGroup { group, storage, state, progress, acks: None })
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

    /// Carries out `effect` of the entry at `log_index` into `wb`. `round`
    /// lists the batches indexed earlier in this apply round (not yet
    /// readable from the store).
    fn write_effect(
        &self,
        wb: &mut WriteBatch,
        effect: Effect,
        log_index: u64,
        round: &mut Vec<(Offset, Offset)>,
    ) -> io::Result<()> {
        match effect {
            Effect::IndexBatch { base_offset, meta } => {
                let key = keys::indexed(self.group, base_offset);
                let entry = IndexEntry { location: Location::Log(log_index), meta };
                self.storage.put(wb, Cf::Index, &key, &crate::index::encode_entry(&entry)?);
                round.push((base_offset, entry.end(base_offset)));
            }
            Effect::DeleteBatchesBefore { before } => {
                // Delete whole batches only: one that straddles `before` stays
                // (its first records sit below the new log start, as in Kafka).
                let straddling = match round.iter().find(|(base, end)| *base <= before && before < *end) {
                    Some((base, _)) => Some(*base),
                    None => PartitionReader::new(self.storage.clone(), self.group).batch_containing(before)?,
                };
                let keep_from = straddling.unwrap_or(before);
                let (lo, hi) = (keys::indexed(self.group, 0), keys::indexed(self.group, keep_from));
                self.storage.delete_range(wb, Cf::Index, &lo, &hi);
                self.storage.delete_range(wb, Cf::Records, &lo, &hi);
                // The log entries go when openraft purges (bounded by log_floor).
            }
        }
        Ok(())
    }

    /// Adds the applied state to `wb`: its head (offsets, membership) and
    /// the entries of the producers in `dirty` (written, or deleted when
    /// gone): O(what changed), not O(producer table).
    fn put_state(&mut self, wb: &mut WriteBatch, dirty: &BTreeSet<i64>) -> io::Result<()> {
        let key = keys::singleton(self.group, SM_APPLIED);
        let producers = std::mem::take(&mut self.state.partition.producers);
        let head = codec::encode(&self.state);
        self.state.partition.producers = producers;
        self.storage.put(wb, Cf::StateMachine, &key, &head?);
        for pid in dirty {
            let key = keys::keyed(self.group, SM_PRODUCER, *pid as u64);
            match self.state.partition.producers.get(pid) {
                Some(entry) => self.storage.put(wb, Cf::StateMachine, &key, &codec::encode(entry)?),
                None => self.storage.delete(wb, Cf::StateMachine, &key),
            }
        }
        Ok(())
    }
}

/// What one apply round of a partition accumulates.
pub struct PartitionRound {
    wb: WriteBatch,
    /// Batches indexed in this round (not yet readable from the store).
    indexed: Vec<(Offset, Offset)>,
    /// Producers whose entries changed.
    dirty: BTreeSet<i64>,
}

impl std::fmt::Debug for PartitionRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionRound").field("indexed", &self.indexed).field("dirty", &self.dirty).finish()
    }
}

impl GroupState for PartitionGroup {
    type Data = PartitionEntry;
    type Outcome = Outcome;
    type Round = PartitionRound;
    type Config = PartitionConfig;
    type Builder = SnapshotBuilder;

    fn applied_state(&self) -> (Option<LogId>, StoredMembership) {
        (self.state.last_applied, self.state.membership.clone())
    }

    fn begin(&self) -> PartitionRound {
        PartitionRound { wb: self.storage.batch(), indexed: Vec::new(), dirty: BTreeSet::new() }
    }

    fn apply(&mut self, log_id: LogId, entry: PartitionEntry, round: &mut PartitionRound) -> io::Result<Outcome> {
        // The ack token is the proposing leader's business (crate::acks).
        let cmd = entry.cmd;
        match &cmd {
            Command::Append(b) if b.header.producer_id != NO_PRODUCER_ID => {
                round.dirty.insert(b.header.producer_id);
            }
            // A clock tick may touch every producer (start idle clocks,
            // expire): rare (at most once a minute), so it rewrites the
            // table, before and after.
            Command::Clock { .. } => round.dirty.extend(self.state.partition.producers.keys().copied()),
            _ => {}
        }
        let clock = matches!(cmd, Command::Clock { .. });
        let (outcome, effect) = self.state.partition.apply(cmd);
        if clock {
            round.dirty.extend(self.state.partition.producers.keys().copied());
        }
        if let Some(effect) = effect {
            self.write_effect(&mut round.wb, effect, log_id.index, &mut round.indexed)?;
        }
        Ok(outcome)
    }

    fn set_membership(&mut self, membership: StoredMembership, _: &mut PartitionRound) {
        self.state.membership = membership;
    }

    fn set_last_applied(&mut self, log_id: LogId) {
        self.state.last_applied = Some(log_id);
    }

    fn persist(&mut self, round: PartitionRound) -> io::Result<()> {
        let PartitionRound { mut wb, dirty, .. } = round;
        self.put_state(&mut wb, &dirty)?;
        // Not synced: see the module docs (the state is derived from the
        // fsynced log and replayed after a crash).
        self.storage.write_buffered(wb)?;
        self.progress.send_replace(progress_of(&self.state));
        Ok(())
    }

    fn snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { group: self.group, storage: self.storage.clone(), applied: self.state.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        // A peer's data, checked: a metadata snapshot sent to a partition
        // group is refused, not installed.
        let SnapshotData::Partition(snap) = snapshot else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: a metadata snapshot cannot be installed in a partition group", self.group),
            ));
        };
        let snap = match snap.batches {
            // Not received over the network (a local copy, as openraft's
            // storage suite does): stream it through the same receiver.
            Batches::InStore { .. } => {
                let mut rx = SnapshotReceiver::new(self.storage.clone(), self.group, snap.applied.clone());
                let mut chunks = snap.chunks()?;
                while let Some(chunk) = chunks.next_chunk()? {
                    rx.chunk(&chunk)?;
                }
                rx.finish()?
            }
            Batches::Received { .. } => snap,
        };
        let Batches::Received { first, .. } = snap.batches else {
            return Err(io::Error::other(format!("{}: snapshot not received", self.group)));
        };
        if snap.applied.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: snapshot state is at {:?} but its meta says {:?}",
                    self.group, snap.applied.last_applied, meta.last_log_id
                ),
            ));
        }
        snap.check_complete()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.group)))?;
        let log_start_now = snap.effective_log_start();
        let mut state = snap.applied;
        let next = state.partition.next_offset;
        state.partition.log_start = log_start_now;
        state.membership = meta.last_membership.clone();
        state.installed_until = next;
        let mut wb = self.storage.batch();
        // Drop what lies below the snapshot's first batch; the index entries
        // of the batches it holds were written as they arrived.
        let keep_from = first.unwrap_or(next);
        let (lo, hi) = (keys::indexed(self.group, 0), keys::indexed(self.group, keep_from));
        self.storage.delete_range(&mut wb, Cf::Index, &lo, &hi);
        self.storage.delete_range(&mut wb, Cf::Records, &lo, &hi);
        slot(self.group).put(&self.storage, &mut wb, meta, &codec::encode(&state)?)?;
        // The producer table is replaced whole: drop ours, write theirs.
        let (plo, phi) = producer_range(self.group);
        self.storage.delete_range(&mut wb, Cf::StateMachine, &plo, &phi);
        let all: BTreeSet<i64> = state.partition.producers.keys().copied().collect();
        let previous = std::mem::replace(&mut self.state, state);
        if let Err(e) = self.put_state(&mut wb, &all) {
            self.state = previous;
            return Err(e);
        }
        // durability: installing a snapshot replaces the replica's state and
        // openraft purges the log behind it next; sync it so that a crash
        // cannot leave a purged log with the old state. (The batches written
        // while the snapshot streamed in precede this write in the WAL, so
        // this sync covers them too.)
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

    fn current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let Some((meta, bytes)) = slot(self.group).load(&self.storage)? else { return Ok(None) };
        let applied: AppliedState = codec::decode("snapshot state", &bytes)?;
        Ok(Some(Snapshot { meta, snapshot: PartitionSnapshot::in_store(applied, self.storage.clone(), self.group) }))
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

impl RaftSnapshotBuilder<PartitionConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Only the state is stored: the batches stay where they are and are
        // read when the snapshot is sent (bounded by its next offset, so
        // batches applied after the builder was made are left out).
        let meta =
            SnapshotMeta { last_log_id: self.applied.last_applied, last_membership: self.applied.membership.clone() };
        slot(self.group).store(&self.storage, &meta, &codec::encode(&self.applied)?).await?;
        Ok(Snapshot {
            meta,
            snapshot: PartitionSnapshot::in_store(self.applied.clone(), self.storage.clone(), self.group),
        })
    }
}
