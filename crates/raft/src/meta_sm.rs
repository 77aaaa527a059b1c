//! [`MetaStateMachine`]: the metadata Raft group's state machine.
//!
//! The whole [`ClusterState`] is small (topics and placements), so it is
//! kept in memory and persisted as one value in the `Metadata` CF after every
//! apply round (unsynced: it is derived from the fsynced log, like the
//! partition state machine). Snapshots are that value. Every apply publishes
//! the new state on a watch channel, which the broker's partition manager
//! and admin RPCs read.

use std::io;
use std::sync::Arc;

use ferrolog_metadata::ClusterState;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::keys;
use ferrolog_types::GroupId;
use futures::Stream;
use futures::StreamExt;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::Request;
use crate::Response;
use crate::TypeConfig;
use crate::codec;
use crate::snapshot::SnapshotData;
use crate::snapshot_slot::SnapshotSlot;
use crate::types::alias::LogId;
use crate::types::alias::Snapshot;
use crate::types::alias::SnapshotMeta;
use crate::types::alias::StoredMembership;

const META_APPLIED: u8 = 1;
const META_SNAPSHOT: u8 = 2;
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

/// The metadata group's state machine.
#[derive(Debug)]
pub struct MetaStateMachine {
    storage: Arc<Storage>,
    state: AppliedMeta,
    published: watch::Sender<Arc<AppliedMeta>>,
}

impl MetaStateMachine {
    /// Opens the metadata state machine, loading the persisted state.
    pub fn open(storage: Arc<Storage>) -> io::Result<Self> {
        let state: AppliedMeta = match storage.get(Cf::Metadata, &keys::singleton(GroupId::METADATA, META_APPLIED))? {
            Some(v) => codec::decode("metadata state", &v)?,
            None => AppliedMeta::default(),
        };
        let (published, _) = watch::channel(Arc::new(state.clone()));
        Ok(MetaStateMachine { storage, state, published })
    }

    /// A receiver of every new applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedMeta>> {
        self.published.subscribe()
    }

    fn persist(&self, wb: &mut ferrolog_storage::WriteBatch) -> io::Result<()> {
        let key = keys::singleton(GroupId::METADATA, META_APPLIED);
        self.storage.put(wb, Cf::Metadata, &key, &codec::encode(&self.state)?);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(Request::Metadata(cmd)) => Response::Metadata(self.state.cluster.apply(cmd)),
                EntryPayload::Normal(Request::Partition { .. }) => {
                    tracing::error!("partition command in the metadata group ignored");
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
        let mut wb = self.storage.batch();
        self.persist(&mut wb)?;
        // Not synced: derived from the fsynced log, replayed after a crash.
        self.storage.write_buffered(wb)?;
        self.published.send_replace(Arc::new(self.state.clone()));
        for (r, response) in replies {
            r.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaSnapshotBuilder { storage: self.storage.clone(), state: self.state.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        let SnapshotData::Bytes(snapshot) = snapshot else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a partition snapshot cannot be installed in the metadata group",
            ));
        };
        let mut state: AppliedMeta = codec::decode("metadata snapshot", &snapshot)?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let previous = std::mem::replace(&mut self.state, state);
        let mut wb = self.storage.batch();
        self.persist(&mut wb)?;
        slot().put(&self.storage, &mut wb, meta, &snapshot)?;
        // durability: the log behind a snapshot is purged next; the snapshot
        // must be on disk first.
        if let Err(e) = self.storage.write_durable(wb).await {
            self.state = previous;
            return Err(e.into());
        }
        self.published.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(slot().load(&self.storage)?.map(|(meta, data)| Snapshot { meta, snapshot: SnapshotData::Bytes(data) }))
    }
}

/// Builds a metadata snapshot from the state captured at creation.
#[derive(Debug)]
pub struct MetaSnapshotBuilder {
    storage: Arc<Storage>,
    state: AppliedMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let data = codec::encode(&self.state)?;
        let meta =
            SnapshotMeta { last_log_id: self.state.last_applied, last_membership: self.state.membership.clone() };
        slot().store(&self.storage, &meta, &data).await?;
        Ok(Snapshot { meta, snapshot: SnapshotData::Bytes(data) })
    }
}
