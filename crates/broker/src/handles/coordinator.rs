//! [`Coordinator`]: the consumer-group coordinator, served by the metadata
//! group's leader (other brokers answer `NOT_LEADER` with its address).
//!
//! Group state (members, epochs, assignments, offsets) lives in the
//! replicated [`ferrolog_metadata::groups`] state machine; every change is a
//! metadata Raft entry. A heartbeat is first applied to a *copy* of the
//! group: when nothing would change (the steady state) it is answered from
//! that copy without a Raft write. Member sessions are kept here, in memory
//! ([`Sessions`]): when a member has not heartbeaten for its session
//! timeout, [`run_expiry`] proposes its removal. A new coordinator (after a
//! metadata leader change) starts every member's session afresh, so a
//! failover causes no removals and no rebalance, only a grace period.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use ferrolog_metadata::GroupAnswer;
use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::Committed;
use ferrolog_metadata::groups::Group;
use ferrolog_metadata::groups::GroupCommand;
use ferrolog_metadata::groups::Heartbeat;
use ferrolog_metadata::groups::HeartbeatReply;
use ferrolog_metadata::groups::Tp;
use ferrolog_proto::v1;
use ferrolog_types::limits::MAX_COMMIT_METADATA_BYTES;
use tokio_util::sync::CancellationToken;

use super::Core;
use super::partition::OffsetSpec;
use crate::error::BrokerError;

/// When each member was last heard from (meaningful on the coordinator).
#[derive(Debug, Default)]
pub struct Sessions {
    /// `(group, member) -> last heartbeat`.
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl Sessions {
    fn touch(&self, group: &str, member: &str) {
        self.seen.lock().expect("sessions lock").insert((group.to_string(), member.to_string()), Instant::now());
    }

    fn forget(&self, group: &str, member: &str) {
        self.seen.lock().expect("sessions lock").remove(&(group.to_string(), member.to_string()));
    }
}

/// A member's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatArgs {
    /// Group.
    pub group: String,
    /// Empty to join (the coordinator makes an id up).
    pub member_id: String,
    /// 0 to join, -1 to leave, else the member's current epoch.
    pub member_epoch: i32,
    /// Client-chosen label.
    pub client_id: String,
    /// Topics subscribed to.
    pub subscribed: Vec<String>,
    /// Partitions the member owns right now.
    pub owned: BTreeSet<Tp>,
    /// The assignor the member asks for.
    pub assignor: Assignor,
    /// Session timeout asked for; `None` for `session_timeout_default_ms`
    /// (at least `session_timeout_min_ms`).
    pub session_timeout: Option<Duration>,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member's id (made up on join).
    pub member_id: String,
    /// Its epoch now (-1 after leaving).
    pub member_epoch: i32,
    /// When to heartbeat next (zero after leaving).
    pub heartbeat_interval: Duration,
    /// What the member may own now; `None` after leaving.
    pub assignment: Option<BTreeSet<Tp>>,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// Log start of each partition.
    Earliest,
    /// High watermark of each partition.
    Latest,
    /// This offset, clamped to each partition's bounds.
    Offset(i64),
    /// The first offset at or after this time (ms).
    Timestamp(i64),
}

/// A member, described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client label.
    pub client_id: String,
    /// Epoch.
    pub member_epoch: i32,
    /// What it was last handed.
    pub assigned: BTreeSet<Tp>,
}

/// One partition's committed offset and lag.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset; -1: none.
    pub committed: i64,
    /// High watermark; -1: unknown.
    pub high_watermark: i64,
    /// Records behind; -1: unknown (no commit or no high watermark).
    pub lag: i64,
    /// Age of the oldest unconsumed record, s.
    pub lag_seconds: f64,
}

/// A group, described.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDescription {
    /// Name.
    pub group: String,
    /// `empty`, `reconciling` or `stable`.
    pub state: String,
    /// Epoch of the target assignment.
    pub group_epoch: i32,
    /// Assignor.
    pub assignor: Assignor,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Every partition of the subscribed topics and every committed one.
    pub offsets: Vec<PartitionLag>,
}

/// The session timeout a member gets for asking `asked` (`None`: none):
/// raised to the minimum; over the maximum it is refused.
fn session_of(t: &crate::config::Timings, asked: Option<Duration>) -> Result<Duration, BrokerError> {
    let session = asked.unwrap_or(t.session_timeout_default).max(t.session_timeout_min);
    if session > t.session_timeout_max {
        return Err(BrokerError::InvalidArgument(format!(
            "session timeout of {} ms is over the broker's session_timeout_max_ms ({} ms)",
            session.as_millis(),
            t.session_timeout_max.as_millis()
        )));
    }
    Ok(session)
}

/// The consumer-group coordinator of this broker.
#[derive(Debug, Clone)]
pub struct Coordinator {
    core: Core,
}

impl Coordinator {
    pub(crate) fn new(core: Core) -> Self {
        Coordinator { core }
    }

    fn sessions(&self) -> &Sessions {
        &self.core.sessions
    }

    /// Proposes a group command through the metadata group.
    async fn write(&self, group: &str, cmd: GroupCommand) -> Result<Option<HeartbeatReply>, BrokerError> {
        let cmd = MetaCommand::Group { group: group.to_string(), cmd };
        let (GroupAnswer(reply), _) = self.core.metadata().propose(cmd, "group").await?;
        Ok(reply)
    }

    /// The applied state of `group` (default when it does not exist),
    /// with its committed offsets only if `offsets`.
    fn state(&self, group: &str, offsets: bool) -> Result<Group, BrokerError> {
        self.core.metadata().read(|s| match s.cluster.groups.get(group) {
            None => Default::default(),
            Some(g) if offsets => g.clone(),
            Some(g) => g.without_offsets(),
        })
    }

    /// A member's heartbeat: joins (epoch 0), leaves (epoch -1), or reports
    /// what it owns and learns what it may own.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %hb.group))]
    pub async fn heartbeat(&self, hb: HeartbeatArgs) -> Result<HeartbeatAnswer, BrokerError> {
        // The steady state is answered from the local copy: only a leader
        // that can show it still leads may tell a member it is alive.
        self.core.confirmed_meta_leader().await?;
        if hb.member_epoch == -1 {
            self.leave(&hb.group, &hb.member_id).await?;
            return Ok(HeartbeatAnswer {
                member_id: hb.member_id,
                member_epoch: -1,
                heartbeat_interval: Duration::ZERO,
                assignment: None,
            });
        }
        let member_id = if hb.member_id.is_empty() {
            if hb.member_epoch != 0 {
                return Err(BrokerError::InvalidArgument("a member without an id must join with epoch 0".into()));
            }
            let label = if hb.client_id.is_empty() { "member" } else { &hb.client_id };
            format!("{label}-{:016x}", rand::random::<u64>())
        } else {
            hb.member_id.clone()
        };
        let session = session_of(self.core.timings(), hb.session_timeout)?;
        let cmd = Heartbeat {
            member_id: member_id.clone(),
            member_epoch: hb.member_epoch,
            client_id: hb.client_id.clone(),
            subscribed: hb.subscribed.iter().cloned().collect(),
            owned: hb.owned.clone(),
            assignor: hb.assignor,
            session_timeout_ms: session.as_millis() as u32,
        };
        // Apply to a copy first: the steady state needs no Raft write. A
        // heartbeat neither reads nor changes offsets: not copied.
        let current = self.state(&hb.group, false)?;
        let mut copy = current.clone();
        // Partition counts of just the topics this group subscribes to (not
        // a copy of every topic).
        let wanted: BTreeSet<&String> =
            current.members.values().flat_map(|m| m.subscribed.iter()).chain(cmd.subscribed.iter()).collect();
        let counts: HashMap<String, u32> = self.core.metadata().read(|s| {
            wanted
                .into_iter()
                .filter_map(|t| s.cluster.topics.get(t).map(|tt| (t.clone(), tt.partitions.len() as u32)))
                .collect()
        })?;
        let partitions = |t: &str| counts.get(t).copied();
        let reply = match copy.apply(GroupCommand::Heartbeat(cmd.clone()), &partitions) {
            Ok(Some(r)) if copy == current => r,
            Err(e) => {
                tracing::debug!(member = member_id, error = %e, "heartbeat refused");
                return Err(e.into());
            }
            _ => self
                .write(&hb.group, GroupCommand::Heartbeat(cmd))
                .await?
                .ok_or_else(|| BrokerError::Internal("heartbeat without a reply".into()))?,
        };
        self.sessions().touch(&hb.group, &member_id);
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: reply.member_epoch,
            heartbeat_interval: (session / 3).min(self.core.timings().heartbeat_interval_max),
            assignment: Some(reply.assigned),
        })
    }

    /// Removes a member at once (its partitions are reassigned).
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn leave(&self, group: &str, member_id: &str) -> Result<(), BrokerError> {
        self.write(group, GroupCommand::RemoveMembers(vec![member_id.to_string()])).await?;
        self.sessions().forget(group, member_id);
        Ok(())
    }

    /// Commits `offsets` (`(partition, offset, metadata)`) for a member that
    /// owns those partitions at `member_epoch`; an empty member id commits
    /// as a standalone consumer (the group must have no members).
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn commit(
        &self,
        group: &str,
        member_id: String,
        member_epoch: i32,
        offsets: Vec<(Tp, i64, String)>,
    ) -> Result<(), BrokerError> {
        // Every commit becomes a metadata Raft entry and lives in the
        // replicated state: its metadata strings are bounded, as Kafka's
        // offset.metadata.max.bytes does.
        if let Some(((t, p), _, m)) = offsets.iter().find(|(_, _, m)| m.len() > MAX_COMMIT_METADATA_BYTES) {
            return Err(BrokerError::InvalidArgument(format!(
                "commit metadata for {t}/{p} is {} bytes, over the limit of {MAX_COMMIT_METADATA_BYTES} bytes",
                m.len()
            )));
        }
        self.write(group, GroupCommand::Commit { member_id, member_epoch, offsets }).await?;
        Ok(())
    }

    /// Committed offsets of `group` for `partitions` (all when empty),
    /// answered by the leader, which has applied every acknowledged commit.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: &BTreeSet<Tp>,
    ) -> Result<Vec<(Tp, Committed)>, BrokerError> {
        crate::failpoints::fail_fetch_offsets()?;
        let meta = self.core.confirmed_meta_leader().await?;
        // Looked up under the read lock: no copy of the group.
        let state = meta.state.borrow();
        Ok(match state.cluster.groups.get(group) {
            None => Vec::new(),
            Some(g) if partitions.is_empty() => g.offsets.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect(),
            Some(g) => partitions
                .iter()
                .filter_map(|tp| g.offsets.get_key_value(tp))
                .map(|(tp, c)| (tp.clone(), c.clone()))
                .collect(),
        })
    }

    /// Every group's name.
    pub fn list(&self) -> Result<Vec<String>, BrokerError> {
        self.core.metadata().read(|s| s.cluster.groups.keys().cloned().collect())
    }

    /// Members, assignments, committed offsets and lag of `group`.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn describe(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        self.core.confirmed_meta_leader().await?;
        if !self.core.metadata().read(|s| s.cluster.groups.contains_key(group))? {
            return Err(BrokerError::UnknownGroup(group.to_string()));
        }
        let g = self.state(group, true)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                member_epoch: m.member_epoch,
                assigned: m.assigned.clone(),
            })
            .collect();
        // Lag for every partition of the subscribed topics and of every
        // topic with a committed offset.
        let mut topics: BTreeSet<String> = g.members.values().flat_map(|m| m.subscribed.iter().cloned()).collect();
        topics.extend(g.offsets.keys().map(|(t, _)| t.clone()));
        // Each topic described once, for the rows without a commit and for
        // the lag of those with one.
        let described = crate::lag::topic_offsets(&self.core, topics).await;
        let mut offsets = Vec::new();
        let mut committed = Vec::new();
        for (t, parts) in &described {
            for (p, (_, hw, _)) in parts.iter().enumerate() {
                match g.offsets.get(&(t.clone(), p as u32)) {
                    Some(c) => committed.push((group.to_string(), (t.clone(), p as u32), c.offset)),
                    None => offsets.push(PartitionLag {
                        topic: t.clone(),
                        partition: p as u32,
                        committed: -1,
                        high_watermark: *hw,
                        lag: -1,
                        lag_seconds: 0.0,
                    }),
                }
            }
        }
        // Lag in records and seconds as the metrics compute it.
        for row in crate::lag::lag_rows(&self.core, &described, committed).await {
            offsets.push(PartitionLag {
                topic: row.topic,
                partition: row.partition,
                committed: row.committed,
                high_watermark: row.high_watermark,
                lag: if row.high_watermark < 0 { -1 } else { row.lag_records },
                lag_seconds: row.lag_seconds,
            });
        }
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(GroupDescription {
            group: group.to_string(),
            state: g.state().to_string(),
            group_epoch: g.group_epoch,
            assignor: g.assignor,
            members,
            offsets,
        })
    }

    /// Sets the offsets of every partition of `topic` for a group without
    /// members; answers the offsets set.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn reset(&self, group: &str, topic: &str, target: ResetTarget) -> Result<Vec<(Tp, i64)>, BrokerError> {
        self.core.meta_leader().await?;
        let t = self.core.topic(topic)?;
        let parts = self.core.metadata().describe(&t, Default::default()).await.partitions;
        let mut out = Vec::new();
        for (p, d) in parts.iter().enumerate() {
            let (start, hw) = (d.log_start.map_or(-1, |v| v as i64), d.high_watermark.map_or(-1, |v| v as i64));
            let offset = match target {
                ResetTarget::Earliest => start,
                ResetTarget::Latest => hw,
                ResetTarget::Offset(o) => o.clamp(start, hw),
                ResetTarget::Timestamp(ts) => self.offset_for_time(topic, p as u32, ts).await?,
            };
            if offset < 0 {
                return Err(BrokerError::Unavailable(format!("{topic}/{p} has no leader")));
            }
            out.push(((topic.to_string(), p as u32), offset));
        }
        self.write(group, GroupCommand::ResetOffsets(out.clone())).await?;
        Ok(out)
    }

    /// Deletes a group without members, with its committed offsets.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), group = %group))]
    pub async fn delete(&self, group: &str) -> Result<(), BrokerError> {
        let _: (GroupAnswer, _) =
            self.core.metadata().propose(MetaCommand::DeleteGroup { group: group.to_string() }, "delete group").await?;
        Ok(())
    }

    /// The first offset at or after `ts` in `topic`/`partition`: from the
    /// local replica, else asked of a broker holding one.
    async fn offset_for_time(&self, topic: &str, partition: u32, ts: i64) -> Result<i64, BrokerError> {
        match self.core.partition(topic, partition) {
            Ok(h) => return h.list_offsets(OffsetSpec::Timestamp(ts)).await.map(|o| o as i64),
            Err(BrokerError::NotLeader { .. }) => {}
            Err(e) => return Err(e),
        }
        let t = self.core.topic(topic)?;
        let a = t.partitions.get(partition as usize).ok_or_else(|| BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            count: t.partitions.len(),
        })?;
        let req = v1::ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            spec: v1::OffsetSpec::Timestamp as i32,
            timestamp_ms: ts,
        };
        let groups = self.core.groups();
        for b in &a.replicas {
            let Some(addr) = groups.address_of(*b) else { continue };
            let Ok(ch) = groups.transport().channel(&addr) else { continue };
            let mut c = v1::broker_client::BrokerClient::new(ch);
            if let Ok(r) = c.list_offsets(req.clone()).await {
                return Ok(r.into_inner().offset);
            }
        }
        Err(BrokerError::Unavailable(format!("no replica of {topic}/{partition} answered")))
    }
}

/// On the metadata leader: removes members whose session expired. Members
/// not seen by this coordinator yet (it just took over) get a full session
/// from now: a coordinator failover removes nobody.
pub async fn run_expiry(core: Core, shutdown: CancellationToken) {
    let coordinator = core.coordinator();
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(core.timings().session_expiry_check) => {}
        }
        let me = core.node_id();
        let Some(meta) = core.groups().leading_meta() else {
            if was_leader {
                core.sessions.seen.lock().expect("sessions lock").clear();
            }
            was_leader = false;
            continue;
        };
        was_leader = true;
        // Every member's session, taken under the read lock (members only,
        // not the groups' offsets); the sessions lock is taken after.
        let sessions: BTreeMap<(String, String), u32> = meta
            .state
            .borrow()
            .cluster
            .groups
            .iter()
            .flat_map(|(name, g)| {
                g.members.iter().map(move |(id, m)| ((name.clone(), id.clone()), m.session_timeout_ms))
            })
            .collect();
        let now = Instant::now();
        let mut expired: BTreeMap<String, Vec<String>> = BTreeMap::new();
        {
            let mut seen = core.sessions.seen.lock().expect("sessions lock");
            seen.retain(|key, _| sessions.contains_key(key));
            for ((name, id), session_ms) in &sessions {
                let last = *seen.entry((name.clone(), id.clone())).or_insert(now);
                let asked = (*session_ms != 0).then(|| Duration::from_millis((*session_ms).into()));
                // (A member stored before the maximum existed expires at it.)
                let session = session_of(core.timings(), asked).unwrap_or(core.timings().session_timeout_max);
                if now.duration_since(last) > session {
                    expired.entry(name.clone()).or_default().push(id.clone());
                }
            }
        }
        for (group, members) in expired {
            tracing::info!(node = me, group, ?members, "session expired: removing members");
            if let Err(e) = coordinator.write(&group, GroupCommand::RemoveMembers(members.clone())).await {
                tracing::warn!(node = me, group, error = %e, "removing expired members failed");
                continue;
            }
            for m in members {
                coordinator.sessions().forget(&group, &m);
            }
        }
    }
}
