//! [`MetaStateMachine`]: the metadata Raft group's state, driven by the
//! generic [`crate::adapter::Applier`].
//!
//! The [`ClusterState`] is kept in memory and persisted per key in the
//! `Metadata` CF (unsynced: it is derived from the fsynced log, like the
//! partition state machine): one value per topic, named producer, producer
//! epoch, consumer group (members) and committed offset, plus a small
//! header (last applied, membership, id counters). An apply round writes
//! the header and the keys its commands changed ([`Changes`]), so an
//! offset commit writes a few hundred bytes whatever the number of topics,
//! groups or offsets. Snapshots encode the whole state (they are rare).
//!
//! Readers on this broker share the state through a [`MetaView`]: a read
//! lock, not a copy per apply, and two change signals: placement (topics,
//! membership: the reconciler waits on it) and groups (members, offsets).

use std::io;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use ferrolog_metadata::Changes;
use ferrolog_metadata::ClusterState;
use ferrolog_metadata::MetaOutcome;
use ferrolog_metadata::StateKey;
use ferrolog_metadata::Topic;
use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::Committed;
use ferrolog_metadata::groups::Member;
use ferrolog_metadata::groups::Tp;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::WriteBatch;
use ferrolog_storage::keys;
use ferrolog_types::GroupId;
use openraft::RaftSnapshotBuilder;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::sync::watch;

use crate::adapter::Applier;
use crate::adapter::GroupState;
use crate::codec;
use crate::snapshot::SnapshotData;
use crate::snapshot_slot::SnapshotSlot;
use crate::types::MetaConfig;
use crate::types::MetaEntry;
use crate::types::alias::LogId;
use crate::types::alias::MetaSnapshot;
use crate::types::alias::MetaSnapshotMeta;
use crate::types::alias::StoredMembership;

/// Key kinds in the `Metadata` CF, after the metadata group's id.
const META_APPLIED: u8 = 1;
const META_SNAPSHOT: u8 = 2;
const KIND_TOPIC: u8 = 3;
const KIND_NAMED_PRODUCER: u8 = 4;
const KIND_PRODUCER_EPOCH: u8 = 5;
const KIND_GROUP: u8 = 6;
const KIND_OFFSET: u8 = 7;
/// One past the last kind of a per-key value.
const KIND_END: u8 = 8;

/// The metadata group's current-snapshot slot.
fn slot() -> SnapshotSlot {
    SnapshotSlot { cf: Cf::Metadata, key: keys::singleton(GroupId::METADATA, META_SNAPSHOT) }
}

/// The persisted applied state of the metadata group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedMeta {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership: the cluster's brokers.
    pub membership: StoredMembership,
    /// Topics and placement.
    pub cluster: ClusterState,
}

/// The header value: everything that is not stored per key.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    next_group_id: u64,
    next_producer_id: i64,
}

/// A group's stored value: everything but its offsets (stored one per key).
#[derive(Debug, Serialize, Deserialize)]
struct GroupValue {
    group_epoch: i32,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    subscribed_partitions: BTreeMap<String, u32>,
}

/// `metadata ‖ kind ‖ (len ‖ bytes)*`: strings length-prefixed, so that
/// one group's offsets are one key range and no two keys collide.
fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = keys::singleton(GroupId::METADATA, kind).to_vec();
    for p in parts {
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p);
    }
    k
}

fn offset_key(group: &str, tp: &Tp) -> Vec<u8> {
    key(KIND_OFFSET, &[group.as_bytes(), tp.0.as_bytes(), &tp.1.to_be_bytes()])
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl AppliedMeta {
    fn header(&self) -> Header {
        Header {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            next_group_id: self.cluster.next_group_id,
            next_producer_id: self.cluster.next_producer_id,
        }
    }

    /// Adds the header and the values of `changes` to `wb` (a key whose part
    /// is gone is deleted; a removed group's offsets are deleted first).
    fn write_changes(&self, storage: &Storage, wb: &mut WriteBatch, changes: &Changes) -> io::Result<()> {
        let c = &self.cluster;
        storage.put(
            wb,
            Cf::Metadata,
            &keys::singleton(GroupId::METADATA, META_APPLIED),
            &codec::encode(&self.header())?,
        );
        for g in &changes.removed_groups {
            let prefix = key(KIND_OFFSET, &[g.as_bytes()]);
            storage.delete_range(wb, Cf::Metadata, &prefix, &prefix_end(&prefix));
            storage.delete(wb, Cf::Metadata, &key(KIND_GROUP, &[g.as_bytes()]));
        }
        for k in &changes.keys {
            let (key, value) = match k {
                StateKey::Counters => continue,
                StateKey::Topic(t) => (key(KIND_TOPIC, &[t.as_bytes()]), c.topics.get(t).map(codec::encode)),
                StateKey::NamedProducer(n) => (
                    key(KIND_NAMED_PRODUCER, &[n.as_bytes()]),
                    c.named_producers.get(n).map(|v| codec::encode(&(n, v))),
                ),
                StateKey::ProducerEpoch(id) => (
                    key(KIND_PRODUCER_EPOCH, &[&id.to_be_bytes()]),
                    c.producer_epochs.get(id).map(|e| codec::encode(&(id, e))),
                ),
                StateKey::Group(g) => (
                    key(KIND_GROUP, &[g.as_bytes()]),
                    c.groups.get(g).map(|group| {
                        codec::encode(&(
                            g,
                            GroupValue {
                                group_epoch: group.group_epoch,
                                assignor: group.assignor,
                                members: group.members.clone(),
                                subscribed_partitions: group.subscribed_partitions.clone(),
                            },
                        ))
                    }),
                ),
                StateKey::Offset(g, tp) => (
                    offset_key(g, tp),
                    c.groups.get(g).and_then(|group| group.offsets.get(tp)).map(|o| codec::encode(&(g, tp, o))),
                ),
            };
            match value {
                Some(v) => storage.put(wb, Cf::Metadata, &key, &v?),
                None => storage.delete(wb, Cf::Metadata, &key),
            }
        }
        Ok(())
    }

    /// Replaces every stored value with this state's (a snapshot install).
    fn write_all(&self, storage: &Storage, wb: &mut WriteBatch) -> io::Result<()> {
        storage.delete_range(
            wb,
            Cf::Metadata,
            &keys::singleton(GroupId::METADATA, KIND_TOPIC),
            &keys::singleton(GroupId::METADATA, KIND_END),
        );
        let c = &self.cluster;
        let mut all = Changes::default();
        all.keys.extend(c.topics.keys().cloned().map(StateKey::Topic));
        all.keys.extend(c.named_producers.keys().cloned().map(StateKey::NamedProducer));
        all.keys.extend(c.producer_epochs.keys().copied().map(StateKey::ProducerEpoch));
        for (name, g) in &c.groups {
            all.keys.insert(StateKey::Group(name.clone()));
            all.keys.extend(g.offsets.keys().map(|tp| StateKey::Offset(name.clone(), tp.clone())));
        }
        self.write_changes(storage, wb, &all)
    }

    /// Loads the stored state (a store without one: the empty state).
    fn load(storage: &Storage) -> io::Result<AppliedMeta> {
        let Some(h) = storage.get(Cf::Metadata, &keys::singleton(GroupId::METADATA, META_APPLIED))? else {
            return Ok(AppliedMeta::default());
        };
        let h: Header = codec::decode("metadata header", &h)?;
        let mut cluster =
            ClusterState { next_group_id: h.next_group_id, next_producer_id: h.next_producer_id, ..Default::default() };
        let from = keys::singleton(GroupId::METADATA, KIND_TOPIC);
        let to = keys::singleton(GroupId::METADATA, KIND_END);
        for item in storage.scan_keys(Cf::Metadata, &from, &to) {
            let (k, v) = item?;
            match k.get(8).copied() {
                Some(KIND_TOPIC) => {
                    let t: Topic = codec::decode("metadata topic", &v)?;
                    cluster.topics.insert(t.name.clone(), t);
                }
                Some(KIND_NAMED_PRODUCER) => {
                    let (n, p): (String, (i64, i32)) = codec::decode("metadata named producer", &v)?;
                    cluster.named_producers.insert(n, p);
                }
                Some(KIND_PRODUCER_EPOCH) => {
                    let (id, e): (i64, i32) = codec::decode("metadata producer epoch", &v)?;
                    cluster.producer_epochs.insert(id, e);
                }
                Some(KIND_GROUP) => {
                    let (name, g): (String, GroupValue) = codec::decode("metadata group", &v)?;
                    let group = cluster.groups.entry(name).or_default();
                    group.group_epoch = g.group_epoch;
                    group.assignor = g.assignor;
                    group.members = g.members;
                    group.subscribed_partitions = g.subscribed_partitions;
                }
                Some(KIND_OFFSET) => {
                    // Keys sort groups before their offsets.
                    let (name, tp, o): (String, Tp, Committed) = codec::decode("metadata offset", &v)?;
                    let Some(group) = cluster.groups.get_mut(&name) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("metadata: an offset of group {name:?}, which is not stored"),
                        ));
                    };
                    group.offsets.insert(tp, o);
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "metadata: a key of unknown kind")),
            }
        }
        Ok(AppliedMeta { last_applied: h.last_applied, membership: h.membership, cluster })
    }
}

/// What every reader of the metadata state on this broker shares.
#[derive(Debug)]
struct Shared {
    state: RwLock<AppliedMeta>,
    /// Bumped when topics, placement or membership change.
    placement: watch::Sender<u64>,
    /// Bumped when consumer groups or offsets change.
    groups: watch::Sender<u64>,
    /// Bytes of every write batch apply rounds wrote (the cost of state
    /// persistence, for metrics and tests).
    apply_bytes: AtomicU64,
}

/// A reader's view of the applied metadata state.
#[derive(Debug, Clone)]
pub struct MetaView {
    shared: Arc<Shared>,
    placement: watch::Receiver<u64>,
    groups: watch::Receiver<u64>,
}

impl MetaView {
    /// The applied state, read-locked: keep the guard short (it is not
    /// `Send`, so it cannot be held across an await; applying waits on it).
    pub fn borrow(&self) -> RwLockReadGuard<'_, AppliedMeta> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until topics, placement or membership change after the last
    /// call (or since this view was made). (The signal lives as long as
    /// any view: the error case of the watch never happens.)
    pub async fn placement_changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.placement.changed().await
    }

    /// Bytes the metadata state machine's apply rounds have written since
    /// the broker started.
    pub fn apply_bytes(&self) -> u64 {
        self.shared.apply_bytes.load(Ordering::Relaxed)
    }

    /// Waits until consumer groups or offsets change, as
    /// [`MetaView::placement_changed`].
    pub async fn groups_changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.groups.changed().await
    }
}

/// openraft's state machine of the metadata group.
pub type MetaStateMachine = Applier<MetaGroup>;

impl Applier<MetaGroup> {
    /// Opens the metadata state machine, loading the persisted state.
    pub fn open(storage: Arc<Storage>) -> io::Result<Self> {
        Ok(Applier::new(MetaGroup::open(storage)?))
    }
}

/// The metadata group's applied state.
#[derive(Debug)]
pub struct MetaGroup {
    storage: Arc<Storage>,
    shared: Arc<Shared>,
}

impl MetaGroup {
    /// Opens the metadata state machine, loading the persisted state.
    pub fn open(storage: Arc<Storage>) -> io::Result<Self> {
        let state = AppliedMeta::load(&storage)?;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            placement: watch::Sender::new(0),
            groups: watch::Sender::new(0),
            apply_bytes: AtomicU64::new(0),
        });
        Ok(MetaGroup { storage, shared })
    }

    /// A view of the applied state.
    pub fn subscribe(&self) -> MetaView {
        MetaView {
            shared: self.shared.clone(),
            placement: self.shared.placement.subscribe(),
            groups: self.shared.groups.subscribe(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppliedMeta> {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, AppliedMeta> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, changes: &Changes) {
        if changes.placement {
            self.shared.placement.send_modify(|v| *v += 1);
        }
        if changes.groups {
            self.shared.groups.send_modify(|v| *v += 1);
        }
    }
}

impl GroupState for MetaGroup {
    type Data = MetaEntry;
    type Outcome = MetaOutcome;
    type Round = Changes;
    type Config = MetaConfig;
    type Builder = MetaSnapshotBuilder;

    fn applied_state(&self) -> (Option<LogId>, StoredMembership) {
        let s = self.read();
        (s.last_applied, s.membership.clone())
    }

    fn begin(&self) -> Changes {
        Changes::default()
    }

    fn apply(&mut self, _: LogId, entry: MetaEntry, changes: &mut Changes) -> io::Result<MetaOutcome> {
        Ok(self.write().cluster.apply_tracked(entry.0, changes))
    }

    fn set_membership(&mut self, membership: StoredMembership, changes: &mut Changes) {
        self.write().membership = membership;
        changes.placement = true;
    }

    fn set_last_applied(&mut self, log_id: LogId) {
        self.write().last_applied = Some(log_id);
    }

    fn persist(&mut self, changes: Changes) -> io::Result<()> {
        let mut wb = self.storage.batch();
        self.read().write_changes(&self.storage, &mut wb, &changes)?;
        self.shared.apply_bytes.fetch_add(wb.size_in_bytes() as u64, Ordering::Relaxed);
        // Not synced: derived from the fsynced log, replayed after a crash.
        self.storage.write_buffered(wb)?;
        self.notify(&changes);
        Ok(())
    }

    fn snapshot_builder(&mut self) -> MetaSnapshotBuilder {
        // A copy of the whole state, once per snapshot (they are rare).
        MetaSnapshotBuilder { storage: self.storage.clone(), state: self.read().clone() }
    }

    async fn install_snapshot(&mut self, meta: &MetaSnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        // A peer's data, checked: a partition snapshot sent to the metadata
        // group is refused, not installed.
        let SnapshotData::Bytes(snapshot) = snapshot else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a partition snapshot cannot be installed in the metadata group",
            ));
        };
        let mut state: AppliedMeta = codec::decode("metadata snapshot", &snapshot)?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let mut wb = self.storage.batch();
        state.write_all(&self.storage, &mut wb)?;
        slot().put(&self.storage, &mut wb, meta, &snapshot)?;
        // durability: the log behind a snapshot is purged next; the snapshot
        // must be on disk first.
        self.storage.write_durable(wb).await?;
        *self.write() = state;
        self.notify(&Changes { placement: true, groups: true, ..Default::default() });
        Ok(())
    }

    fn current_snapshot(&mut self) -> io::Result<Option<MetaSnapshot>> {
        Ok(slot()
            .load(&self.storage)?
            .map(|(meta, data)| openraft::storage::Snapshot { meta, snapshot: SnapshotData::Bytes(data) }))
    }
}

#[cfg(test)]
impl MetaGroup {
    /// A copy of the applied state.
    pub(crate) fn state(&self) -> AppliedMeta {
        self.read().clone()
    }
}

/// Builds a metadata snapshot from the state captured at creation.
#[derive(Debug)]
pub struct MetaSnapshotBuilder {
    storage: Arc<Storage>,
    state: AppliedMeta,
}

impl RaftSnapshotBuilder<MetaConfig> for MetaSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<MetaSnapshot> {
        let data = codec::encode(&self.state)?;
        let meta = openraft::storage::SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
        };
        slot().store(&self.storage, &meta, &data).await?;
        Ok(openraft::storage::Snapshot { meta, snapshot: SnapshotData::Bytes(data) })
    }
}
