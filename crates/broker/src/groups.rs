//! [`Groups`]: every Raft group this broker runs, and the reconciler that
//! keeps the partition groups in line with the metadata group's placement.
//!
//! The metadata group runs on every broker of the initial peer list. A
//! partition group runs on a broker exactly when the metadata places a
//! replica of it there: [`Groups::reconcile`] creates missing groups
//! (initializing each new group with its replica set; every replica does so
//! with the same membership, which openraft allows) and removes groups of
//! deleted topics together with their data.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use ferrolog_raft::LogStore;
use ferrolog_raft::MetaConfig;
use ferrolog_raft::MetaStateMachine;
use ferrolog_raft::PartitionConfig;
use ferrolog_raft::StateMachine;
use ferrolog_raft::acks::AckTracker;
use ferrolog_raft::meta_sm::AppliedMeta;
use ferrolog_raft::meta_sm::MetaView;
use ferrolog_raft::state_machine::PartitionReader;
use ferrolog_raft::state_machine::Progress;
use ferrolog_storage::Storage;
use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use openraft::BasicNode;
use openraft::Config;
use openraft::Raft;
use openraft::SnapshotPolicy;
use tokio::sync::watch;

use crate::config::Timings;
use crate::liveness::Liveness;
use crate::transport::GroupRaft;
use crate::transport::Transport;

/// A partition group's Raft.
pub type PartitionRaft = Raft<PartitionConfig, StateMachine>;
/// The metadata group's Raft.
pub type MetaRaft = Raft<MetaConfig, MetaStateMachine>;

/// The Raft configuration of partition groups (heartbeats and elections
/// from `t`). No automatic snapshots: retention snapshots and purges
/// explicitly.
pub fn partition_raft_config(t: &Timings) -> Arc<Config> {
    let c = Config {
        cluster_name: "ferrolog-partition".into(),
        heartbeat_interval: t.raft_heartbeat.as_millis() as u64,
        election_timeout_min: t.election_timeout_min.as_millis() as u64,
        election_timeout_max: t.election_timeout_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::Never,
        // A partition's log is its data: openraft never purges it on its
        // own after a snapshot; retention purges up to the oldest retained
        // batch, so followers behind only by retained data catch up by
        // AppendEntries, not by a snapshot of the whole partition.
        max_in_snapshot_log_to_keep: u64::MAX,
        // A follower whose log went back (its disk was lost: see
        // crate::recovery, which keeps it out of elections) is replicated to
        // again from scratch; openraft otherwise keeps sending from where it
        // was and never catches it up.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Arc::new(c.validate().expect("valid partition raft config"))
}

/// The Raft configuration of the metadata group.
pub fn metadata_raft_config(t: &Timings) -> Arc<Config> {
    let c = Config {
        cluster_name: "ferrolog-metadata".into(),
        heartbeat_interval: t.raft_heartbeat.as_millis() as u64,
        election_timeout_min: t.election_timeout_min.as_millis() as u64,
        election_timeout_max: t.election_timeout_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        // A follower whose log went back (its disk was lost: see
        // crate::recovery, which keeps it out of elections) is replicated to
        // again from scratch; openraft otherwise keeps sending from where it
        // was and never catches it up.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Arc::new(c.validate().expect("valid metadata raft config"))
}

/// One partition replica on this broker.
#[derive(Debug)]
pub struct Replica {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Its Raft group.
    pub group: GroupId,
    /// Brokers holding its replicas.
    pub replicas: Vec<NodeId>,
    /// The group's Raft.
    pub raft: PartitionRaft,
    /// Applied progress: high watermark and log start.
    pub progress: watch::Receiver<Progress>,
    /// acks=1 waiters.
    pub acks: Arc<AckTracker>,
    /// Reads applied batches.
    pub reader: PartitionReader,
    /// Whether the group's Raft ticker runs (false: quiesced, see
    /// [`crate::quiesce`]).
    ticking: AtomicBool,
    /// Set by a produce; the quiescer takes it as activity.
    woken: AtomicBool,
}

impl Replica {
    /// Turns the group's Raft ticker on or off.
    pub fn set_ticking(&self, on: bool) {
        if self.ticking.swap(on, Ordering::Relaxed) != on {
            self.raft.runtime_config().tick(on);
        }
    }

    /// Whether the group is quiesced (ticker off).
    pub fn is_quiesced(&self) -> bool {
        !self.ticking.load(Ordering::Relaxed)
    }

    /// A write is coming: make sure the group ticks (its followers learn the
    /// new commit index from the heartbeats) and stays awake a while.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Relaxed);
        self.set_ticking(true);
    }

    /// Whether [`Replica::wake`] was called since the last call.
    pub fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::Relaxed)
    }
}

/// The metadata group as this broker sees it.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Its Raft.
    pub raft: MetaRaft,
    /// Its applied state.
    pub state: MetaView,
}

/// What the reconciler needs of the metadata state: the partition groups
/// placed on one broker and every broker's address. Taken under the
/// state's read lock, so that reconciling holds no lock.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    nodes: BTreeMap<NodeId, BasicNode>,
    wanted: HashMap<GroupId, (String, u32, Vec<NodeId>)>,
}

impl Placement {
    /// The placement of `node`'s replicas in `meta`.
    pub fn of(meta: &AppliedMeta, node: NodeId) -> Self {
        let nodes = meta.membership.membership().nodes().map(|(id, n)| (*id, n.clone())).collect();
        let wanted = meta
            .cluster
            .groups_on(node)
            .map(|(topic, partition, a)| (a.group, (topic.name.clone(), partition, a.replicas.clone())))
            .collect();
        Placement { nodes, wanted }
    }

    /// The partition groups placed on the broker.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.wanted.keys().copied()
    }
}

/// Initializes a new partition group. The preferred leader (first replica)
/// does so at once and so usually wins the first election: leaders start
/// spread as evenly as the placement. The other replicas wait for it to
/// replicate to them, and initialize themselves (with the same membership,
/// which openraft allows) only if it has not done so within `fallback`, e.g.
/// because its broker is down.
async fn initialize_new_group(
    raft: PartitionRaft,
    group: GroupId,
    members: BTreeMap<NodeId, BasicNode>,
    preferred: bool,
    fallback: std::time::Duration,
) {
    if !preferred {
        tokio::time::sleep(fallback).await;
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
    }
    if let Err(e) = raft.initialize(members).await {
        tracing::debug!(%group, error = %e, "initialize (another replica may have been first)");
    }
}

/// Registry of the Raft groups running on this broker.
#[derive(Debug)]
pub struct Groups {
    node_id: NodeId,
    storage: Arc<Storage>,
    transport: Arc<Transport>,
    meta: OnceLock<Meta>,
    partitions: RwLock<HashMap<GroupId, Arc<Replica>>>,
    liveness: Liveness,
    timings: Arc<Timings>,
}

impl Groups {
    /// An empty registry.
    pub fn new(node_id: NodeId, storage: Arc<Storage>, transport: Arc<Transport>) -> Arc<Self> {
        Self::with_timings(node_id, storage, transport, Timings::default())
    }

    /// An empty registry running its groups with `timings`.
    pub fn with_timings(
        node_id: NodeId,
        storage: Arc<Storage>,
        transport: Arc<Transport>,
        timings: Timings,
    ) -> Arc<Self> {
        let liveness = Liveness::new(transport.clone(), timings.liveness_timeout);
        Arc::new(Groups {
            node_id,
            storage,
            transport,
            meta: OnceLock::new(),
            partitions: RwLock::new(HashMap::new()),
            liveness,
            timings: Arc::new(timings),
        })
    }

    /// The broker's timings.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Whether peers are alive.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The shared per-peer channels.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// This broker's store.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// This broker's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Registers the metadata group (once, at start).
    pub fn set_meta(&self, meta: Meta) {
        let _ = self.meta.set(meta);
    }

    /// The metadata group, once started.
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.get()
    }

    /// The Raft of `group`, whichever its kind, if this broker runs it.
    pub fn raft(&self, group: GroupId) -> Option<Box<dyn GroupRaft>> {
        if group == GroupId::METADATA {
            return self.meta().map(|m| Box::new(m.raft.clone()) as Box<dyn GroupRaft>);
        }
        self.replica(group).map(|r| Box::new(r.raft.clone()) as Box<dyn GroupRaft>)
    }

    /// The local replica of `group`.
    pub fn replica(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.partitions.read().expect("partitions lock").get(&group).cloned()
    }

    /// Every local replica.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.partitions.read().expect("partitions lock").values().cloned().collect()
    }

    /// Brings the running partition groups in line with `placement`.
    pub async fn reconcile(&self, placement: &Placement) -> anyhow::Result<()> {
        let Placement { nodes, wanted } = placement;
        // Create what is missing.
        for (group, (topic, partition, replicas)) in wanted {
            if self.replica(*group).is_some() {
                continue;
            }
            let members: BTreeMap<NodeId, BasicNode> =
                replicas.iter().filter_map(|id| nodes.get(id).map(|n| (*id, n.clone()))).collect();
            if members.len() != replicas.len() {
                tracing::warn!(%group, topic, partition, "replica addresses not known yet; retrying later");
                continue;
            }
            let replica = self.start_replica(topic.clone(), *partition, *group, replicas.clone(), members).await?;
            self.partitions.write().expect("partitions lock").insert(*group, replica);
            tracing::info!(node = self.node_id, %group, topic, partition, "partition replica started");
        }
        // Remove what is no longer placed here (topic deleted).
        let gone: Vec<GroupId> = self
            .partitions
            .read()
            .expect("partitions lock")
            .keys()
            .filter(|g| !wanted.contains_key(g))
            .copied()
            .collect();
        for group in gone {
            let replica = self.partitions.write().expect("partitions lock").remove(&group);
            self.transport.recovery().forget(group);
            self.transport.clear_stopped(group);
            if let Some(r) = replica {
                if let Err(e) = r.raft.shutdown().await {
                    tracing::warn!(%group, error = %e, "raft shutdown failed");
                }
                let mut wb = self.storage.batch();
                self.storage.delete_group(&mut wb, group);
                self.storage.write_durable(wb).await?;
                tracing::info!(node = self.node_id, %group, topic = r.topic, partition = r.partition, "partition replica removed with its data");
            }
        }
        Ok(())
    }

    async fn start_replica(
        &self,
        topic: String,
        partition: u32,
        group: GroupId,
        replicas: Vec<NodeId>,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> anyhow::Result<Arc<Replica>> {
        let acks = Arc::new(AckTracker::default());
        let log = LogStore::with_acks(self.storage.clone(), group, acks.clone());
        let sm = StateMachine::open(self.storage.clone(), group)?.with_acks(acks.clone());
        let progress = sm.subscribe();
        let config = partition_raft_config(&self.timings);
        let raft = Raft::new(self.node_id, config, self.transport.factory::<PartitionConfig>(group), log, sm).await?;
        let initialized = raft.is_initialized().await?;
        // A replica this broker held before it lost its disk recovers: it
        // waits for the group's leader to replicate to it and never
        // initializes the group again (crate::recovery).
        if !initialized && self.transport.recovery().start_replica(group) {
            tracing::warn!(
                node = self.node_id,
                %group,
                topic,
                partition,
                "replica held before this broker's data dir was lost: catching up from the group's leader; it takes no \
                 part in elections until it has"
            );
            // Its own election timer stays off too: a candidate that cannot
            // win would only push the group's term up.
            raft.runtime_config().elect(false);
            if members.len() == 1 {
                // The only replica: its data is gone with the disk and no
                // one can give it back; the partition starts again empty.
                tracing::error!(node = self.node_id, %group, topic, partition, "the only replica lost its data: the partition starts again empty");
                self.transport.recovery().forget(group);
                raft.runtime_config().elect(true);
                if let Err(e) = raft.initialize(members.clone()).await {
                    tracing::warn!(%group, error = %e, "initialize a single-replica partition after a lost disk");
                }
            } else {
                let voters: Vec<(NodeId, String)> = members.iter().map(|(id, n)| (*id, n.addr.clone())).collect();
                let transport = self.transport.clone();
                let (me, raft, preferred) = (self.node_id, raft.clone(), replicas.first() == Some(&self.node_id));
                let fallback = self.timings.init_fallback;
                tokio::spawn(async move {
                    crate::recovery::probe_group(transport.clone(), group, me, move || Some(voters.clone())).await;
                    // The voters that answered hold no log at all: nobody has
                    // initialized the group, so nothing was ever committed
                    // or voted for in it (a commit or a vote needs one of
                    // them). This replica is as new as its group and starts
                    // it as on a first start; without this, a preferred
                    // leader that lost its disk before its new group
                    // started would leave it to the fallback of the others.
                    let empty = transport.recovery().target(group).is_some_and(|t| t.last_index.is_none());
                    if empty && !transport.recovery().still_recovering(group, None, 0) {
                        raft.runtime_config().elect(true);
                        initialize_new_group(raft, group, members, preferred, fallback).await;
                    }
                });
            }
        } else if !initialized {
            let preferred = replicas.first() == Some(&self.node_id);
            tokio::spawn(initialize_new_group(raft.clone(), group, members, preferred, self.timings.init_fallback));
        }
        Ok(Arc::new(Replica {
            topic,
            partition,
            group,
            replicas,
            raft,
            progress,
            acks,
            reader: PartitionReader::new(self.storage.clone(), group),
            ticking: AtomicBool::new(true),
            woken: AtomicBool::new(false),
        }))
    }

    /// Lets every partition replica recovering from a lost disk that has
    /// caught up vote again (checked here as well as on each message from
    /// its leader: an idle, quiesced group gets none). The number still
    /// recovering, the metadata group included.
    pub fn check_recovery(&self) -> usize {
        let recovery = self.transport.recovery();
        for (group, replica) in self.partitions.read().expect("partitions lock").iter() {
            let recovering = recovery.is_recovering(*group) && {
                let (applied, term) = GroupRaft::applied_and_term(&replica.raft);
                recovery.still_recovering(*group, applied, term)
            };
            // An atomic flag in openraft: cheap to set every round.
            replica.raft.runtime_config().elect(!recovering);
        }
        recovery.recovering_count()
    }

    /// Hands leadership of every group this broker leads to an up-to-date
    /// follower and waits (up to `timeout`) until it moved. Best effort: a
    /// group with no caught-up follower keeps its leader until it stops.
    pub async fn hand_off_leadership(&self, timeout: std::time::Duration) -> usize {
        let me = self.node_id;
        let mut pending: Vec<Box<dyn GroupRaft>> = Vec::new();
        let mut rafts: Vec<Box<dyn GroupRaft>> =
            self.replicas().into_iter().map(|r| Box::new(r.raft.clone()) as Box<dyn GroupRaft>).collect();
        if let Some(m) = self.meta() {
            rafts.push(Box::new(m.raft.clone()));
        }
        for raft in rafts {
            let l = raft.leadership();
            if l.leader != Some(me) {
                continue;
            }
            // The most caught-up follower (matched == last if possible).
            let target = l
                .matched
                .iter()
                .filter(|(id, _)| *id != me)
                .max_by_key(|(_, m)| *m)
                .filter(|(_, m)| *m == l.last_log_index)
                .map(|(id, _)| *id);
            if let Some(to) = target
                && raft.transfer_leader(to).await
            {
                pending.push(raft);
            }
        }
        let started = pending.len();
        let deadline = tokio::time::Instant::now() + timeout;
        for raft in pending {
            raft.wait_not_led_by(me, deadline).await;
        }
        started
    }

    /// Stops every partition group (orderly shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Replica>> =
            self.partitions.write().expect("partitions lock").drain().map(|(_, r)| r).collect();
        for r in all {
            let _ = r.raft.shutdown().await;
        }
        if let Some(m) = self.meta() {
            let _ = m.raft.shutdown().await;
        }
    }

    /// The metadata group, if this broker leads it (as its Raft metrics
    /// last said): where the coordinator's background work runs.
    pub fn leading_meta(&self) -> Option<&Meta> {
        use openraft::async_runtime::watch::WatchReceiver;
        let meta = self.meta()?;
        (meta.raft.metrics().borrow_watched().current_leader == Some(self.node_id)).then_some(meta)
    }

    /// The address of broker `id`, from the metadata group's membership.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        let meta = self.meta()?;
        let state = meta.state.borrow();
        state.membership.membership().get_node(&id).map(|n| n.addr.clone())
    }
}
