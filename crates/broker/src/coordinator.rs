//! The consumer-group coordinator: the `Groups` gRPC service, served by the
//! metadata group's leader (other brokers answer `NOT_LEADER` with its
//! address).
//!
//! Group state (members, epochs, assignments, offsets) lives in the
//! replicated [`ferrolog_metadata::groups`] state machine; every change is a
//! metadata Raft entry. A heartbeat is first applied to a *copy* of the
//! group: when nothing would change (the steady state) it is answered from
//! that copy without a Raft write. Liveness is kept here, in memory: when a
//! member has not heartbeaten for its session timeout, [`run_expiry`]
//! proposes its removal. A new coordinator (after a metadata leader change)
//! starts every member's session afresh, so a failover causes no removals
//! and no rebalance, only a grace period.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::MetaOutcome;
use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::GroupCommand;
use ferrolog_metadata::groups::GroupError;
use ferrolog_metadata::groups::Heartbeat;
use ferrolog_metadata::groups::HeartbeatReply;
use ferrolog_metadata::groups::Tp;
use ferrolog_proto::errors;
use ferrolog_proto::errors::Reason;
use ferrolog_proto::v1;
use ferrolog_raft::Request;
use ferrolog_raft::Response;
use ferrolog_types::limits::MAX_COMMIT_METADATA_BYTES;
use tokio_util::sync::CancellationToken;
use tonic::Request as TReq;
use tonic::Response as TResp;
use tonic::Status;

use crate::error::BrokerError;
use crate::service::Services;

/// Session timeout when the member asks for none (Kafka's default: 45 s).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// Shortest session timeout a member may ask for.
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Longest heartbeat interval handed to members (Kafka's default: 3 s);
/// shorter for short sessions (a third of the session timeout).
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How often expired sessions are looked for.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// The coordinator's in-memory state: when each member was last heard from.
#[derive(Debug, Default)]
pub struct Liveness {
    /// `(group, member) -> last heartbeat`.
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl Liveness {
    fn touch(&self, group: &str, member: &str) {
        self.seen.lock().expect("liveness lock").insert((group.to_string(), member.to_string()), Instant::now());
    }

    fn forget(&self, group: &str, member: &str) {
        self.seen.lock().expect("liveness lock").remove(&(group.to_string(), member.to_string()));
    }
}

fn group_status(e: GroupError) -> Status {
    let msg = e.to_string();
    match e {
        GroupError::UnknownMember(_) | GroupError::StaleEpoch { .. } | GroupError::NotOwner { .. } => {
            errors::status(Reason::StaleMemberEpoch, msg, HashMap::new())
        }
        GroupError::NotEmpty(_) => Status::failed_precondition(msg),
        GroupError::Invalid(_) => Status::invalid_argument(msg),
    }
}

fn tps(list: &[v1::TopicPartitions]) -> BTreeSet<Tp> {
    list.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p))).collect()
}

fn to_proto(set: &BTreeSet<Tp>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<u32>> = std::collections::BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic.into_iter().map(|(t, ps)| v1::TopicPartitions { topic: t.to_string(), partitions: ps }).collect()
}

fn session_of(ms: u32) -> Duration {
    if ms == 0 { DEFAULT_SESSION_TIMEOUT } else { Duration::from_millis(ms.into()).max(MIN_SESSION_TIMEOUT) }
}

impl Services {
    /// Proposes a group command through the metadata group.
    async fn group_write(&self, group: &str, cmd: GroupCommand) -> Result<Option<HeartbeatReply>, Status> {
        let meta = self.meta_leader().await?;
        let resp = meta
            .raft
            .client_write(Request::Metadata(MetaCommand::Group { group: group.to_string(), cmd }))
            .await
            .map_err(|e| self.write_error(e, "group"))?;
        match resp.data {
            Response::Metadata(MetaOutcome::Group(r)) => r.map_err(group_status),
            other => Err(BrokerError::Internal(format!("unexpected metadata result {other:?}")).into()),
        }
    }

    /// The applied state of `group` (default when it does not exist),
    /// with its committed offsets only if `offsets`.
    fn group_state(&self, group: &str, offsets: bool) -> Result<ferrolog_metadata::groups::Group, BrokerError> {
        let meta = self.groups().meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
        let state = meta.state.borrow();
        Ok(match state.cluster.groups.get(group) {
            None => Default::default(),
            Some(g) if offsets => g.clone(),
            Some(g) => g.without_offsets(),
        })
    }

    /// High watermark and log start of a partition (from its leader).
    async fn partition_offsets(&self, topic: &str) -> Result<Vec<(i64, i64)>, BrokerError> {
        let t = self.topic(topic)?;
        let d = self.describe(&t).await;
        Ok(d.partitions.iter().map(|p| (p.log_start_offset, p.high_watermark)).collect())
    }

    /// The description of `topic` (leaders, offsets), `None` if unknown.
    pub(crate) async fn describe_named(&self, topic: &str) -> Option<v1::TopicDescription> {
        let t = self.topic(topic).ok()?;
        Some(self.describe(&t).await)
    }
}

#[tonic::async_trait]
impl v1::groups_server::Groups for Services {
    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn heartbeat(&self, request: TReq<v1::HeartbeatRequest>) -> Result<TResp<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.meta_leader().await?;
        if req.member_epoch == -1 {
            self.group_write(&req.group, GroupCommand::RemoveMembers(vec![req.member_id.clone()])).await?;
            self.liveness().forget(&req.group, &req.member_id);
            return Ok(TResp::new(v1::HeartbeatResponse {
                member_id: req.member_id,
                member_epoch: -1,
                heartbeat_interval_ms: 0,
                assignment: None,
            }));
        }
        let member_id = if req.member_id.is_empty() {
            if req.member_epoch != 0 {
                return Err(BrokerError::InvalidArgument("a member without an id must join with epoch 0".into()).into());
            }
            format!(
                "{}-{:016x}",
                if req.client_id.is_empty() { "member" } else { &req.client_id },
                rand::random::<u64>()
            )
        } else {
            req.member_id.clone()
        };
        let session = session_of(req.session_timeout_ms);
        let hb = Heartbeat {
            member_id: member_id.clone(),
            member_epoch: req.member_epoch,
            client_id: req.client_id.clone(),
            subscribed: req.subscribed_topics.iter().cloned().collect(),
            owned: tps(&req.owned),
            assignor: match v1::Assignor::try_from(req.assignor) {
                Ok(v1::Assignor::Range) => Assignor::Range,
                _ => Assignor::Uniform,
            },
            session_timeout_ms: session.as_millis() as u32,
        };
        // Apply to a copy first: the steady state needs no Raft write. A
        // heartbeat neither reads nor changes offsets: not copied.
        let current = self.group_state(&req.group, false)?;
        let mut copy = current.clone();
        // Partition counts of just the topics this group subscribes to (not
        // a copy of every topic).
        let wanted: BTreeSet<&String> =
            current.members.values().flat_map(|m| m.subscribed.iter()).chain(hb.subscribed.iter()).collect();
        let counts: std::collections::HashMap<String, u32> = match self.groups().meta() {
            Some(m) => {
                let state = m.state.borrow();
                wanted
                    .into_iter()
                    .filter_map(|t| state.cluster.topics.get(t).map(|tt| (t.clone(), tt.partitions.len() as u32)))
                    .collect()
            }
            None => Default::default(),
        };
        let partitions = |t: &str| counts.get(t).copied();
        let simulated = copy.apply(GroupCommand::Heartbeat(hb.clone()), &partitions);
        let reply = match simulated {
            Ok(Some(r)) if copy == current => r,
            Err(e) => {
                tracing::debug!(member = member_id, error = %e, "heartbeat refused");
                return Err(group_status(e));
            }
            _ => self
                .group_write(&req.group, GroupCommand::Heartbeat(hb))
                .await?
                .ok_or_else(|| BrokerError::Internal("heartbeat without a reply".into()))?,
        };
        self.liveness().touch(&req.group, &member_id);
        let interval = (session / 3).min(MAX_HEARTBEAT_INTERVAL);
        Ok(TResp::new(v1::HeartbeatResponse {
            member_id,
            member_epoch: reply.member_epoch,
            heartbeat_interval_ms: interval.as_millis() as u32,
            assignment: Some(v1::Assignment { partitions: to_proto(&reply.assigned) }),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn leave_group(&self, request: TReq<v1::LeaveGroupRequest>) -> Result<TResp<v1::LeaveGroupResponse>, Status> {
        let req = request.into_inner();
        self.group_write(&req.group, GroupCommand::RemoveMembers(vec![req.member_id.clone()])).await?;
        self.liveness().forget(&req.group, &req.member_id);
        Ok(TResp::new(v1::LeaveGroupResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn commit_offsets(
        &self,
        request: TReq<v1::CommitOffsetsRequest>,
    ) -> Result<TResp<v1::CommitOffsetsResponse>, Status> {
        let req = request.into_inner();
        // Every commit becomes a metadata Raft entry and lives in the
        // replicated state: its metadata strings are bounded, as Kafka's
        // offset.metadata.max.bytes does.
        if let Some(o) = req.offsets.iter().find(|o| o.metadata.len() > MAX_COMMIT_METADATA_BYTES) {
            return Err(BrokerError::InvalidArgument(format!(
                "commit metadata for {}/{} is {} bytes, over the limit of {MAX_COMMIT_METADATA_BYTES} bytes",
                o.topic,
                o.partition,
                o.metadata.len()
            ))
            .into());
        }
        let offsets = req.offsets.into_iter().map(|o| ((o.topic, o.partition), o.offset, o.metadata)).collect();
        let cmd = GroupCommand::Commit { member_id: req.member_id, member_epoch: req.member_epoch, offsets };
        self.group_write(&req.group, cmd).await?;
        Ok(TResp::new(v1::CommitOffsetsResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn fetch_offsets(
        &self,
        request: TReq<v1::FetchOffsetsRequest>,
    ) -> Result<TResp<v1::FetchOffsetsResponse>, Status> {
        let req = request.into_inner();
        // On the leader: it has applied every acknowledged commit.
        let meta = self.meta_leader().await?;
        let wanted = tps(&req.partitions);
        let offset = |((t, p), c): (&Tp, &ferrolog_metadata::groups::Committed)| v1::OffsetCommit {
            topic: t.clone(),
            partition: *p,
            offset: c.offset,
            metadata: c.metadata.clone(),
        };
        // Looked up under the read lock: no copy of the group.
        let offsets = match meta.state.borrow().cluster.groups.get(&req.group) {
            None => Vec::new(),
            Some(g) if wanted.is_empty() => g.offsets.iter().map(offset).collect(),
            Some(g) => wanted.iter().filter_map(|tp| g.offsets.get_key_value(tp)).map(offset).collect(),
        };
        Ok(TResp::new(v1::FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _request: TReq<v1::ListGroupsRequest>,
    ) -> Result<TResp<v1::ListGroupsResponse>, Status> {
        let meta = self.groups().meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
        let groups = meta.state.borrow().cluster.groups.keys().cloned().collect();
        Ok(TResp::new(v1::ListGroupsResponse { groups }))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn describe_group(
        &self,
        request: TReq<v1::DescribeGroupRequest>,
    ) -> Result<TResp<v1::DescribeGroupResponse>, Status> {
        let req = request.into_inner();
        self.meta_leader().await?;
        let exists = self.groups().meta().is_some_and(|m| m.state.borrow().cluster.groups.contains_key(&req.group));
        if !exists {
            return Err(Status::not_found(format!("unknown group {:?}", req.group)));
        }
        let g = self.group_state(&req.group, true)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| v1::MemberDescription {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                member_epoch: m.member_epoch,
                assignment: Some(v1::Assignment { partitions: to_proto(&m.assigned) }),
            })
            .collect();
        // Lag for every partition of the subscribed topics and of every
        // topic with a committed offset.
        let mut topics: BTreeSet<String> = g.members.values().flat_map(|m| m.subscribed.iter().cloned()).collect();
        topics.extend(g.offsets.keys().map(|(t, _)| t.clone()));
        // Each topic described once, for the rows without a commit and for
        // the lag of those with one.
        let described = crate::lag::topic_offsets(self, topics).await;
        let mut offsets = Vec::new();
        let mut committed = Vec::new();
        for (t, parts) in &described {
            for (p, (_, hw, _)) in parts.iter().enumerate() {
                match g.offsets.get(&(t.clone(), p as u32)) {
                    Some(c) => committed.push((req.group.clone(), (t.clone(), p as u32), c.offset)),
                    None => offsets.push(v1::PartitionLag {
                        topic: t.clone(),
                        partition: p as u32,
                        committed_offset: -1,
                        high_watermark: *hw,
                        lag: -1,
                        lag_seconds: 0.0,
                    }),
                }
            }
        }
        // Lag in records and seconds as the metrics compute it.
        for row in crate::lag::lag_rows(self, &described, committed).await {
            offsets.push(v1::PartitionLag {
                topic: row.topic,
                partition: row.partition,
                committed_offset: row.committed,
                high_watermark: row.high_watermark,
                lag: if row.high_watermark < 0 { -1 } else { row.lag_records },
                lag_seconds: row.lag_seconds,
            });
        }
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(TResp::new(v1::DescribeGroupResponse {
            group: req.group,
            state: g.state().to_string(),
            group_epoch: g.group_epoch,
            assignor: match g.assignor {
                Assignor::Uniform => v1::Assignor::Uniform as i32,
                Assignor::Range => v1::Assignor::Range as i32,
            },
            members,
            offsets,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn reset_offsets(
        &self,
        request: TReq<v1::ResetOffsetsRequest>,
    ) -> Result<TResp<v1::ResetOffsetsResponse>, Status> {
        let req = request.into_inner();
        self.meta_leader().await?;
        let parts = self.partition_offsets(&req.topic).await?;
        let mut out = Vec::new();
        for (p, (start, hw)) in parts.iter().enumerate() {
            let offset = match &req.target {
                Some(v1::reset_offsets_request::Target::ToEarliest(_)) => *start,
                Some(v1::reset_offsets_request::Target::ToLatest(_)) => *hw,
                Some(v1::reset_offsets_request::Target::ToOffset(o)) => (*o).clamp(*start, *hw),
                Some(v1::reset_offsets_request::Target::ToTimestampMs(ts)) => {
                    self.offset_for_time(&req.topic, p as u32, *ts).await?
                }
                None => return Err(BrokerError::InvalidArgument("no reset target given".into()).into()),
            };
            if offset < 0 {
                return Err(BrokerError::Unavailable(format!("{}/{p} has no leader", req.topic)).into());
            }
            out.push(((req.topic.clone(), p as u32), offset));
        }
        self.group_write(&req.group, GroupCommand::ResetOffsets(out.clone())).await?;
        Ok(TResp::new(v1::ResetOffsetsResponse {
            offsets: out
                .into_iter()
                .map(|((t, p), o)| v1::OffsetCommit { topic: t, partition: p, offset: o, metadata: String::new() })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.groups().node_id(), group = %request.get_ref().group))]
    async fn delete_group(
        &self,
        request: TReq<v1::DeleteGroupRequest>,
    ) -> Result<TResp<v1::DeleteGroupResponse>, Status> {
        let req = request.into_inner();
        let meta = self.meta_leader().await?;
        let resp = meta
            .raft
            .client_write(Request::Metadata(MetaCommand::DeleteGroup { group: req.group.clone() }))
            .await
            .map_err(|e| self.write_error(e, "delete group"))?;
        match resp.data {
            Response::Metadata(MetaOutcome::Group(Ok(_))) => Ok(TResp::new(v1::DeleteGroupResponse {})),
            Response::Metadata(MetaOutcome::Group(Err(GroupError::Invalid(m)))) => Err(Status::not_found(m)),
            Response::Metadata(MetaOutcome::Group(Err(e))) => Err(group_status(e)),
            other => Err(BrokerError::Internal(format!("unexpected metadata result {other:?}")).into()),
        }
    }
}

impl Services {
    /// The first offset at or after `ts` in `topic`/`partition`, asked of a
    /// broker holding a replica.
    async fn offset_for_time(&self, topic: &str, partition: u32, ts: i64) -> Result<i64, Status> {
        let t = self.topic(topic)?;
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
        for b in &a.replicas {
            let Some(addr) = self.groups().address_of(*b) else { continue };
            let Ok(ch) = self.groups().transport().channel(&addr) else { continue };
            let mut c = v1::broker_client::BrokerClient::new(ch);
            if let Ok(r) = c.list_offsets(req.clone()).await {
                return Ok(r.into_inner().offset);
            }
        }
        Err(BrokerError::Unavailable(format!("no replica of {topic}/{partition} answered")).into())
    }
}

/// On the metadata leader: removes members whose session expired. Members
/// not seen by this coordinator yet (it just took over) get a full session
/// from now: a coordinator failover removes nobody.
pub async fn run_expiry(services: Services, shutdown: CancellationToken) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_CHECK) => {}
        }
        let me = services.groups().node_id();
        let Some(meta) = services.groups().leading_meta() else {
            if was_leader {
                services.liveness().seen.lock().expect("liveness lock").clear();
            }
            was_leader = false;
            continue;
        };
        was_leader = true;
        // Every member's session, taken under the read lock (members only,
        // not the groups' offsets); the liveness lock is taken after.
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
            let mut seen = services.liveness().seen.lock().expect("liveness lock");
            seen.retain(|key, _| sessions.contains_key(key));
            for ((name, id), session_ms) in &sessions {
                let last = *seen.entry((name.clone(), id.clone())).or_insert(now);
                if now.duration_since(last) > session_of(*session_ms) {
                    expired.entry(name.clone()).or_default().push(id.clone());
                }
            }
        }
        for (group, members) in expired {
            tracing::info!(node = me, group, ?members, "session expired: removing members");
            if let Err(e) = services.group_write(&group, GroupCommand::RemoveMembers(members.clone())).await {
                tracing::warn!(node = me, group, error = %e, "removing expired members failed");
                continue;
            }
            for m in members {
                services.liveness().forget(&group, &m);
            }
        }
    }
}
