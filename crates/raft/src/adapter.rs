//! [`Applier`]: the one openraft state machine, written once for both group
//! kinds over the [`GroupState`] trait.
//!
//! openraft hands a state machine a stream of committed entries, each with
//! an optional responder. What to do with the three kinds of entry is the
//! same for every group: a blank entry (a new leader's first) changes
//! nothing, a membership entry is recorded, a command is applied; every
//! entry moves "last applied"; the round's changes are persisted in one
//! write; responders are answered only after that write. [`Applier`] does
//! this; a [`GroupState`] (the partition's [`crate::StateMachine`], the
//! metadata group's [`crate::MetaStateMachine`]) only applies its own
//! command type and persists its own state.

use std::future::Future;
use std::io;
use std::ops::Deref;
use std::ops::DerefMut;

use futures::Stream;
use futures::StreamExt;
use openraft::BasicNode;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use crate::snapshot::SnapshotData;
use crate::types::GroupConfig;
use crate::types::Leader;
use crate::types::Reply;
use crate::types::alias::LogId;
use crate::types::alias::SnapshotMetaOf;
use crate::types::alias::SnapshotOf;
use crate::types::alias::StoredMembership;

/// The state of one kind of Raft group, as [`Applier`] drives it.
pub trait GroupState: Send + Sync + 'static {
    /// What the group's log holds.
    type Data: openraft::AppData;
    /// What applying a command answers.
    type Outcome: Send + 'static;
    /// What one apply round accumulates before it is persisted.
    type Round: Send;
    /// The group's openraft configuration.
    type Config: GroupConfig<
            D = Self::Data,
            R = Reply<Self::Outcome>,
            Entry = openraft::impls::Entry<Leader, EntryPayload<Self::Data, u64, BasicNode>>,
        >;
    /// Builds the group's snapshots.
    type Builder: RaftSnapshotBuilder<Self::Config, SnapshotData = SnapshotData>;

    /// The last applied log id and membership.
    fn applied_state(&self) -> (Option<LogId>, StoredMembership);

    /// Starts an apply round.
    fn begin(&self) -> Self::Round;

    /// Applies the command of the entry at `log_id` (in memory and into
    /// `round`). The same log gives the same outcomes on every replica.
    fn apply(&mut self, log_id: LogId, data: Self::Data, round: &mut Self::Round) -> io::Result<Self::Outcome>;

    /// Records a membership entry.
    fn set_membership(&mut self, membership: StoredMembership, round: &mut Self::Round);

    /// Records that every entry up to `log_id` is applied.
    fn set_last_applied(&mut self, log_id: LogId);

    /// Persists the round (one write, unsynced: the state is derived from
    /// the fsynced log) and tells this broker's readers.
    fn persist(&mut self, round: Self::Round) -> io::Result<()>;

    /// A builder of a snapshot of the state as it is now.
    fn snapshot_builder(&mut self) -> Self::Builder;

    /// Replaces the state with a snapshot's.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<Self::Config>,
        data: SnapshotData,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// The snapshot last built or installed.
    fn current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<Self::Config>>>;
}

/// openraft's state machine over a [`GroupState`].
#[derive(Debug)]
pub struct Applier<S>(S);

impl<S> Applier<S> {
    /// Drives `state`.
    pub fn new(state: S) -> Self {
        Applier(state)
    }

    /// The state it drives.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S> Deref for Applier<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> DerefMut for Applier<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<S: GroupState> RaftStateMachine<S::Config> for Applier<S> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = S::Builder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok(self.0.applied_state())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<S::Config>>> + Unpin + Send,
    {
        let mut round = self.0.begin();
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::Membership,
                EntryPayload::Normal(data) => Reply::Applied(self.0.apply(log_id, data, &mut round)?),
                EntryPayload::Membership(m) => {
                    self.0.set_membership(StoredMembership::new(Some(log_id), m), &mut round);
                    Reply::Membership
                }
            };
            self.0.set_last_applied(log_id);
            if let Some(r) = responder {
                replies.push((r, reply));
            }
        }
        self.0.persist(round)?;
        for (r, reply) in replies {
            r.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.0.snapshot_builder()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<S::Config>, snapshot: SnapshotData) -> io::Result<()> {
        self.0.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<S::Config>>> {
        self.0.current_snapshot()
    }
}
