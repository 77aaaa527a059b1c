//! The broker's protocol-neutral core: what a produce, a fetch, an admin
//! call or a group heartbeat *does*, written once for every front end.
//!
//! [`Core`] is the entry point; it hands out
//! - [`PartitionHandle`]: produce (the three acks paths), fetch (the long
//!   poll and the out-of-range rule), list offsets — one partition replica;
//! - [`Metadata`]: proposals to the metadata group and reads of its state,
//!   topics, producers and the cluster description;
//! - [`Coordinator`]: the consumer-group coordinator (heartbeat, leave,
//!   commit, fetch offsets, describe, reset, delete).
//!
//! Handles take and return domain types (`ferrolog_types::Batch`, the
//! structs of this module) and fail with [`BrokerError`] only. The gRPC
//! services (`crate::grpc`) and the Kafka listener convert at their edge and
//! hold no logic of their own. Handles count their requests into the
//! broker's metrics, so every front end is measured alike.

pub mod coordinator;
pub mod metadata;
pub mod partition;

use std::sync::Arc;
use std::time::Instant;

use ferrolog_metadata::Topic;
use ferrolog_proto::errors::LeaderHint;
use ferrolog_types::NodeId;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;

pub use self::coordinator::Coordinator;
pub use self::metadata::Metadata;
use self::partition::Acks;
use self::partition::FetchArgs;
use self::partition::Fetched;
pub use self::partition::PartitionHandle;
use self::partition::Produced;
use crate::error::BrokerError;
use crate::groups::Groups;
use crate::groups::Meta;
use crate::groups::Replica;
use crate::metrics::Metrics;

/// How long an answer from the metadata leader's local state waits for a
/// quorum to confirm a stale leader lease (one heartbeat round trip is
/// enough on a healthy cluster; a deposed leader fails after this long).
const LEASE_CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// One broker's core: its Raft groups, metrics and coordinator state.
/// Cheap to clone (shared pointers).
#[derive(Debug, Clone)]
pub struct Core {
    groups: Arc<Groups>,
    metrics: Arc<Metrics>,
    sessions: Arc<coordinator::Sessions>,
}

impl Core {
    /// The core over `groups`, counting into `metrics`.
    pub fn new(groups: Arc<Groups>, metrics: Arc<Metrics>) -> Self {
        Core { groups, metrics, sessions: Arc::default() }
    }

    /// The replica of `topic`/`partition` on this broker (any role: a
    /// follower serves fetches and offsets). `NOT_LEADER` pointing at the
    /// preferred leader when this broker holds none.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionHandle, BrokerError> {
        let (t, r) = self.replica(topic, partition)?;
        Ok(PartitionHandle::new(self.clone(), t, r))
    }

    /// Produces to `topic`/`partition` on this broker (its leader), counted
    /// in the broker's metrics (latency, records, bytes, errors by reason).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: ferrolog_types::Batch,
        acks: Acks,
        timeout: Option<std::time::Duration>,
    ) -> Result<Produced, BrokerError> {
        let t0 = Instant::now();
        let (records, bytes) = (u64::from(batch.header.record_count), batch.records.len() as u64);
        let r = match self.partition(topic, partition) {
            Ok(p) => p.produce(batch, acks, timeout).await,
            Err(e) => Err(e),
        };
        let m = &self.metrics;
        m.produce[acks.slot()].observe(t0.elapsed(), if r.is_ok() { records } else { 0 }, r.is_ok());
        match &r {
            Ok(_) => m.produced_bytes(topic, bytes),
            Err(e) => m.request_error("produce", e),
        }
        r
    }

    /// Fetches from this broker's replica of `topic`/`partition`, counted in
    /// the broker's metrics.
    pub async fn fetch(&self, topic: &str, partition: u32, args: FetchArgs) -> Result<Fetched, BrokerError> {
        let t0 = Instant::now();
        let r = match self.partition(topic, partition) {
            Ok(p) => p.fetch(args).await,
            Err(e) => Err(e),
        };
        let m = &self.metrics;
        let records = r.as_ref().map(|f| f.batches.iter().map(|(_, b)| u64::from(b.header.record_count)).sum());
        m.fetch.observe(t0.elapsed(), records.unwrap_or(0), r.is_ok());
        match &r {
            // Only a known topic gets a series (the label set stays bounded).
            Ok(f) => m.fetched_bytes(topic, f.batches.iter().map(|(_, b)| b.records.len() as u64).sum()),
            Err(e) => m.request_error("fetch", e),
        }
        r
    }

    /// The metadata group's handle.
    pub fn metadata(&self) -> Metadata {
        Metadata::new(self.clone())
    }

    /// The consumer-group coordinator's handle.
    pub fn coordinator(&self) -> Coordinator {
        Coordinator::new(self.clone())
    }

    /// This broker's id.
    pub fn node_id(&self) -> NodeId {
        self.groups.node_id()
    }

    /// The Raft groups of this broker.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The broker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The broker's timings.
    pub fn timings(&self) -> &crate::config::Timings {
        self.groups.timings()
    }

    pub(crate) fn meta(&self) -> Result<&Meta, BrokerError> {
        self.groups.meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))
    }

    /// The applied metadata of `name`.
    pub(crate) fn topic(&self, name: &str) -> Result<Topic, BrokerError> {
        let state = self.meta()?.state.borrow();
        if let Some(t) = state.cluster.topics.get(name) {
            return Ok(t.clone());
        }
        // A broker that lost its disk knows no topic until its metadata has
        // caught up: "unknown" would tell a client the topic is gone.
        if self.groups.transport().recovery().is_recovering(ferrolog_types::GroupId::METADATA) {
            return Err(BrokerError::Unavailable(format!(
                "broker {}: its metadata is catching up after a lost disk; cannot tell whether topic {name:?} exists",
                self.node_id()
            )));
        }
        Err(BrokerError::UnknownTopic(name.to_string()))
    }

    /// Where `leader` can be reached, as far as the metadata knows.
    pub(crate) fn hint(&self, leader: Option<NodeId>) -> LeaderHint {
        LeaderHint { leader_id: leader, leader_address: leader.and_then(|id| self.groups.address_of(id)) }
    }

    fn replica(&self, topic: &str, partition: u32) -> Result<(Topic, Arc<Replica>), BrokerError> {
        let t = self.topic(topic)?;
        let a = t.partitions.get(partition as usize).ok_or_else(|| BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            count: t.partitions.len(),
        })?;
        match self.groups.replica(a.group) {
            Some(r) => Ok((t, r)),
            None => Err(BrokerError::NotLeader {
                what: format!("broker {} holds no replica of {topic}/{partition}", self.groups.node_id()),
                hint: self.hint(a.replicas.first().copied()),
            }),
        }
    }

    /// The metadata group, if this broker leads it; `NOT_LEADER` naming the
    /// leader otherwise.
    pub(crate) async fn meta_leader(&self) -> Result<&Meta, BrokerError> {
        let meta = self.meta()?;
        let leader = meta.raft.current_leader().await;
        if leader != Some(self.groups.node_id()) {
            return Err(BrokerError::NotLeader {
                what: format!("broker {} is not the metadata leader", self.groups.node_id()),
                hint: self.hint(leader),
            });
        }
        Ok(meta)
    }

    /// The metadata group, if this broker leads it *and can show it still
    /// does*: a quorum acknowledged one of its messages within the leader
    /// lease (`election_timeout_max_ms`), during which no follower votes for
    /// another leader. For answers served from the local state without a
    /// Raft write (steady-state group heartbeats, committed offsets, group
    /// descriptions): a leader cut off in a minority still believes it leads
    /// (openraft does not step down on its own), and answering from its
    /// copy would keep members alive that the majority's coordinator has
    /// expired, and hand out offsets that are no longer current. A stale
    /// lease triggers a heartbeat round at once; the answer waits for it up
    /// to [`LEASE_CONFIRM_WAIT`], then fails UNAVAILABLE.
    pub(crate) async fn confirmed_meta_leader(&self) -> Result<&Meta, BrokerError> {
        let meta = self.meta_leader().await?;
        let option = openraft::LinearizerOption::new(None, true).with_wait_timeout(LEASE_CONFIRM_WAIT);
        match meta.raft.ensure_linearizable(option).await {
            Ok(_) => Ok(meta),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(BrokerError::NotLeader {
                    what: format!("broker {} is no longer the metadata leader", self.groups.node_id()),
                    hint: self.hint(f.leader_id),
                }),
                None => Err(BrokerError::Unavailable(format!(
                    "broker {} cannot confirm that it still leads the metadata group (no quorum answered \
                     within the leader lease): {e}",
                    self.groups.node_id()
                ))),
            },
        }
    }

    /// A failed Raft write, as the caller must see it: a discarded entry may
    /// or may not be in the log (UNAVAILABLE, retry idempotently); a
    /// follower points at the leader.
    pub(crate) fn write_error<C: openraft::RaftTypeConfig<NodeId = u64>>(
        &self,
        e: RaftError<C, ClientWriteError<C>>,
        what: &str,
    ) -> BrokerError {
        if let RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) = &e {
            return BrokerError::Unavailable(format!(
                "{what}: leader changed before the write committed; it may or may not be in the log ({f})"
            ));
        }
        if let Some(f) = e.forward_to_leader() {
            return BrokerError::NotLeader { what: format!("{what}: not the leader"), hint: self.hint(f.leader_id) };
        }
        BrokerError::Unavailable(format!("{what}: {e}"))
    }
}

/// Wall-clock time in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(-1)
}
