//! [`Metadata`]: proposals to the metadata Raft group, reads of its applied
//! state, and what is built on them: topics, producer ids and epochs, the
//! description of topics and of the cluster.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use ferrolog_metadata::Answer;
use ferrolog_metadata::DEFAULT_MAX_MESSAGE_BYTES;
use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::MetaOutcome;
use ferrolog_metadata::ProducerId;
use ferrolog_metadata::Topic;
use ferrolog_metadata::TopicConfig;
use ferrolog_metadata::TopicDeleted;
use ferrolog_proto::v1;
use ferrolog_raft::MetaEntry;
use ferrolog_raft::meta_sm::AppliedMeta;
use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;

use super::Core;
use super::now_ms;
use crate::error::BrokerError;

/// A topic to create. Zero partitions means 1; a zero replication factor
/// means `min(brokers, 3)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// `retention.ms`; negative or `None`: keep forever.
    pub retention_ms: Option<i64>,
    /// `retention.bytes` per partition; negative or `None`: unbounded.
    pub retention_bytes: Option<i64>,
    /// `max.message.bytes`; `None`: the broker default.
    pub max_message_bytes: Option<u32>,
}

/// One replica of a partition, as its leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    /// Broker holding it.
    pub broker: NodeId,
    /// Raft log entries behind the leader; `None` where not known (asked
    /// of a broker that does not lead the partition).
    pub lag_entries: Option<u64>,
    /// Matched the leader's whole log.
    pub in_sync: bool,
    /// Committed records it lacks (with `replica_lag`).
    pub lag_records: u64,
    /// Age of the oldest committed record it lacks, s (with `replica_lag`).
    pub lag_seconds: f64,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionDescription {
    /// Partition number.
    pub partition: u32,
    /// Its leader, if known.
    pub leader: Option<NodeId>,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<ReplicaState>,
    /// High watermark, if a replica answered.
    pub high_watermark: Option<u64>,
    /// Log start, if a replica answered.
    pub log_start: Option<u64>,
    /// Its Raft group.
    pub group: GroupId,
}

/// A described topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Its settings.
    pub config: TopicConfig,
    /// Its partitions, in order.
    pub partitions: Vec<PartitionDescription>,
}

/// How much a topic description holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescribeOptions {
    /// Only partitions with a replica on this broker, from local state (no
    /// calls to other brokers).
    pub local_only: bool,
    /// Each lagging replica's lag in records and seconds (an index bisection
    /// and one batch read per lagging replica, on its leader).
    pub replica_lag: bool,
}

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// Broker id.
    pub id: NodeId,
    /// Client address.
    pub address: String,
    /// Heard from within the liveness timeout.
    pub alive: bool,
    /// Votes in the metadata group.
    pub metadata_voter: bool,
    /// Partitions it leads, as this broker's replicas know.
    pub partitions_led: u32,
    /// Partition replicas placed on it.
    pub replicas: u32,
}

/// The cluster, as the metadata leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// Every broker.
    pub brokers: Vec<BrokerDescription>,
    /// The metadata leader (the answering broker).
    pub metadata_leader: NodeId,
    /// Partitions with a replica on a broker that is not alive.
    pub under_replicated_partitions: u32,
}

/// The metadata group of this broker.
#[derive(Debug, Clone)]
pub struct Metadata {
    core: Core,
}

impl Metadata {
    pub(crate) fn new(core: Core) -> Self {
        Metadata { core }
    }

    /// Reads the applied metadata under its read lock (no copy). `f` must
    /// not block.
    pub fn read<T>(&self, f: impl FnOnce(&AppliedMeta) -> T) -> Result<T, BrokerError> {
        Ok(f(&self.core.meta()?.state.borrow()))
    }

    /// Proposes `cmd` on the metadata leader and waits until it is committed
    /// and applied here: its outcome (a rejection is an error) and log index.
    pub async fn propose<A: Answer>(&self, cmd: MetaCommand, what: &str) -> Result<(A, u64), BrokerError> {
        let meta = self.core.meta_leader().await?;
        let resp = meta.raft.client_write(MetaEntry(cmd)).await.map_err(|e| self.core.write_error(e, what))?;
        let index = resp.log_id.index;
        match resp.data.outcome().map_err(|e| BrokerError::Internal(format!("{what}: {e}")))? {
            MetaOutcome::Rejected(e) => Err(e.into()),
            MetaOutcome::Group(Err(e)) => Err(e.into()),
            // Impossible while apply answers each kind of command with its
            // own outcome (tested in ferrolog-metadata); reported, not
            // panicked on.
            o => match A::from_outcome(o) {
                Ok(a) => Ok((a, index)),
                Err(o) => Err(BrokerError::Internal(format!("{what}: applying it answered {o:?}"))),
            },
        }
    }

    /// The applied metadata of topic `name`.
    pub fn topic(&self, name: &str) -> Result<Topic, BrokerError> {
        self.core.topic(name)
    }

    /// Creates a topic (on the metadata leader) and describes it.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), topic = %t.name))]
    pub async fn create_topic(&self, t: NewTopic) -> Result<TopicDescription, BrokerError> {
        let meta = self.core.meta_leader().await?;
        let brokers: Vec<NodeId> = meta.state.borrow().membership.membership().nodes().map(|(id, _)| *id).collect();
        if brokers.is_empty() {
            // A leader just elected, before it applied the membership:
            // retriable, not "more replicas than brokers".
            return Err(BrokerError::Unavailable(
                "the metadata leader has not applied the cluster membership yet".into(),
            ));
        }
        let partitions = if t.partitions == 0 { 1 } else { t.partitions };
        let rf = if t.replication_factor == 0 { brokers.len().min(3) as u32 } else { t.replication_factor };
        ferrolog_metadata::validate_create(&t.name, partitions, rf, brokers.len())?;
        let config = TopicConfig {
            retention_ms: t.retention_ms.filter(|v| *v >= 0),
            retention_bytes: t.retention_bytes.filter(|v| *v >= 0),
            max_message_bytes: t.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        };
        if config.max_message_bytes == 0 {
            return Err(BrokerError::InvalidArgument("max.message.bytes must be positive".into()));
        }
        if config.max_message_bytes > ferrolog_metadata::MAX_MESSAGE_BYTES_LIMIT {
            return Err(BrokerError::InvalidArgument(format!(
                "max.message.bytes {} is over the broker's limit of {} bytes",
                config.max_message_bytes,
                ferrolog_metadata::MAX_MESSAGE_BYTES_LIMIT
            )));
        }
        let cmd = MetaCommand::CreateTopic { name: t.name, partitions, replication_factor: rf, config, brokers };
        let (t, _): (Topic, _) = self.propose(cmd, "create topic").await?;
        Ok(self.describe(&t, DescribeOptions::default()).await)
    }

    /// Deletes a topic with its data on every replica.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let _: (TopicDeleted, _) =
            self.propose(MetaCommand::DeleteTopic { name: name.to_string() }, "delete topic").await?;
        Ok(())
    }

    /// Every topic, described.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, BrokerError> {
        let topics: Vec<Topic> = self.read(|s| s.cluster.topics.values().cloned().collect())?;
        let mut out = Vec::with_capacity(topics.len());
        for t in &topics {
            out.push(self.describe(t, DescribeOptions::default()).await);
        }
        Ok(out)
    }

    /// Describes topic `name`.
    pub async fn describe_topic(&self, name: &str, opts: DescribeOptions) -> Result<TopicDescription, BrokerError> {
        let t = self.core.topic(name)?;
        let mut d = self.describe(&t, opts).await;
        if opts.local_only {
            // Only what this broker holds: the caller fills in the rest,
            // and this answer never fans out again (no recursion).
            let me = self.core.node_id();
            d.partitions.retain(|p| t.partitions.get(p.partition as usize).is_some_and(|a| a.replicas.contains(&me)));
        }
        Ok(d)
    }

    /// A new producer id (or, for a known `name`, a new epoch of its id),
    /// answered once every live broker has learned it, so that the old
    /// instance is fenced everywhere.
    pub async fn init_producer(&self, name: Option<String>) -> Result<(i64, i32), BrokerError> {
        let meta = self.core.meta_leader().await?.clone();
        let (ProducerId { id, epoch }, index) =
            self.propose(MetaCommand::InitProducer { name }, "init producer").await?;
        self.wait_metadata_everywhere(index, &meta).await;
        Ok((id, epoch))
    }

    /// The cluster's brokers and their state, answered by the metadata
    /// leader.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, BrokerError> {
        let meta = self.core.meta_leader().await?;
        let me = self.core.node_id();
        let liveness = self.core.groups().liveness();
        let alive = |id: NodeId| liveness.is_live(id);
        let mut led: BTreeMap<NodeId, u32> = BTreeMap::new();
        for r in self.core.groups().replicas() {
            if let Some(l) = r.raft.metrics().borrow_watched().current_leader {
                *led.entry(l).or_default() += 1;
            }
        }
        // Counted under the state's read lock, without copying the state.
        let state = meta.state.borrow();
        let m = state.membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let brokers = m
            .nodes()
            .map(|(id, node)| BrokerDescription {
                id: *id,
                address: node.addr.clone(),
                alive: alive(*id),
                metadata_voter: voters.contains(id),
                partitions_led: led.get(id).copied().unwrap_or(0),
                replicas: state.cluster.groups_on(*id).count() as u32,
            })
            .collect();
        // A partition with a replica on a broker that is not alive is under-replicated.
        let under = state
            .cluster
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|a| a.replicas.iter().any(|id| !alive(*id)))
            .count() as u32;
        Ok(ClusterDescription { brokers, metadata_leader: me, under_replicated_partitions: under })
    }

    /// Waits (up to `fence_propagation_timeout_ms`) until every live broker
    /// has applied metadata up to `index`, as their broker heartbeats report.
    /// A new producer epoch is then known to every partition leader before
    /// the new instance hears of it, so the old instance is fenced
    /// everywhere from then on, not only where the new one already wrote.
    async fn wait_metadata_everywhere(&self, index: u64, meta: &crate::groups::Meta) {
        let me = self.core.node_id();
        let deadline = tokio::time::Instant::now() + self.core.timings().fence_propagation_timeout;
        let liveness = self.core.groups().liveness();
        loop {
            let peers: Vec<NodeId> =
                meta.state.borrow().membership.membership().nodes().map(|(id, _)| *id).filter(|id| *id != me).collect();
            let t = self.core.groups().transport();
            let lagging: Vec<NodeId> =
                peers.into_iter().filter(|p| liveness.is_live(*p) && t.peer_meta_applied(*p) < index).collect();
            if lagging.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    node = me,
                    index,
                    ?lagging,
                    "brokers have not applied the producer epoch yet; answering anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Describes `t`: partitions this broker leads from local state, the
    /// others (unless `local_only`) from their leader, which alone knows
    /// every replica's lag.
    pub(crate) async fn describe(&self, t: &Topic, opts: DescribeOptions) -> TopicDescription {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for (i, a) in t.partitions.iter().enumerate() {
            let mut d = PartitionDescription {
                partition: i as u32,
                leader: None,
                replicas: a
                    .replicas
                    .iter()
                    .map(|id| ReplicaState {
                        broker: *id,
                        lag_entries: None,
                        in_sync: false,
                        lag_records: 0,
                        lag_seconds: 0.0,
                    })
                    .collect(),
                high_watermark: None,
                log_start: None,
                group: a.group,
            };
            if let Some(r) = self.core.groups().replica(a.group) {
                let m = r.raft.metrics().borrow_watched().clone();
                d.leader = m.current_leader;
                let p = *r.progress.borrow();
                d.high_watermark = Some(p.next_offset);
                d.log_start = Some(p.log_start);
                // Lag in log entries, known on the leader only.
                if let Some(repl) = &m.replication {
                    let last = m.last_log_index.unwrap_or(0);
                    let mut behind = Vec::new();
                    for (i, rs) in d.replicas.iter_mut().enumerate() {
                        if let Some(matched) = repl.get(&rs.broker) {
                            let idx = matched.map(|l| l.index).unwrap_or(0);
                            let lag = last.saturating_sub(idx);
                            rs.lag_entries = Some(lag);
                            rs.in_sync = lag == 0;
                            if lag > 0 {
                                behind.push((i, idx));
                            }
                        }
                    }
                    // In records and seconds: which committed batch each
                    // lagging replica lacks first (a bisection of the
                    // offset index and one batch read, off the workers).
                    if opts.replica_lag && !behind.is_empty() {
                        let reader = r.reader.clone();
                        let (start, end) = (p.log_start, p.next_offset);
                        let found = tokio::task::spawn_blocking(move || {
                            behind
                                .into_iter()
                                .map(|(i, idx)| (i, reader.first_batch_after_log_index(start, end, idx)))
                                .collect::<Vec<_>>()
                        })
                        .await
                        .unwrap_or_default();
                        let now = now_ms();
                        for (i, first) in found {
                            if let Ok(Some((base, ts))) = first {
                                d.replicas[i].lag_records = p.next_offset - base;
                                d.replicas[i].lag_seconds = ((now - ts).max(0) as f64) / 1000.0;
                            }
                        }
                    }
                }
            }
            partitions.push(d);
        }
        if !opts.local_only {
            self.fill_remote(t, &mut partitions, opts.replica_lag).await;
        }
        TopicDescription {
            name: t.name.clone(),
            replication_factor: t.replication_factor,
            config: t.config.clone(),
            partitions,
        }
    }

    /// Asks, for partitions without a local replica, one broker per replica
    /// set (in parallel, bounded by `remote_describe_timeout_ms`); partitions
    /// whose brokers do not answer stay without a leader.
    async fn fill_remote(&self, t: &Topic, partitions: &mut [PartitionDescription], replica_lag: bool) {
        // Replica lags are known on the leader only: ask the leader of each
        // partition this broker does not lead (or, with no leader known
        // here, its preferred replica), once per broker.
        let me = self.core.node_id();
        let mut asks: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (i, a) in t.partitions.iter().enumerate() {
            let ask = match partitions.get(i).and_then(|d| d.leader) {
                Some(l) if l == me => None,
                Some(l) => Some(l),
                None => a.replicas.first().copied(),
            };
            if let Some(b) = ask.filter(|b| *b != me) {
                asks.entry(b).or_default().push(i);
            }
        }
        let groups = self.core.groups();
        let timeout = self.core.timings().remote_describe_timeout;
        let calls = asks.into_iter().filter_map(|(broker, idx)| {
            let addr = groups.address_of(broker)?;
            // The peer's shared channel: no new connection per describe.
            let ch = groups.transport().channel(&addr).ok()?;
            let name = t.name.clone();
            Some(async move {
                let mut c = v1::admin_client::AdminClient::new(ch);
                let fut = c.describe_topic(v1::DescribeTopicRequest { name, local_only: true, replica_lag });
                let d = tokio::time::timeout(timeout, fut).await.ok()?.ok()?.into_inner();
                Some((idx, TopicDescription::from(d)))
            })
        });
        for (idx, d) in futures::future::join_all(calls).await.into_iter().flatten() {
            for i in idx {
                // Keep what we know when the remote knows less (it lost
                // leadership meanwhile, or has no replica yet).
                if let Some(remote) = d.partitions.iter().find(|p| p.partition as usize == i)
                    && (remote.leader.is_some() || partitions[i].leader.is_none())
                    && (remote.replicas.iter().any(|r| r.lag_entries.is_some())
                        || partitions[i].high_watermark.is_none())
                {
                    partitions[i] = remote.clone();
                }
            }
        }
    }
}
