//! The public gRPC services (`ferrolog.v1`: `Broker`, `Producers`, `Admin`,
//! `Groups`): conversions between proto messages and the handles' domain
//! types, nothing else. What a request does lives in [`crate::handles`];
//! errors become statuses in one place (`crate::error`).

use std::collections::BTreeSet;
use std::time::Duration;

use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::Tp;
use ferrolog_proto::v1;
use ferrolog_types::Batch;
use tonic::Request as TReq;
use tonic::Response as TResp;
use tonic::Status;

use crate::error::BrokerError;
use crate::handles::Core;
use crate::handles::coordinator::GroupDescription;
use crate::handles::coordinator::HeartbeatArgs;
use crate::handles::coordinator::ResetTarget;
use crate::handles::metadata::ClusterDescription;
use crate::handles::metadata::DescribeOptions;
use crate::handles::metadata::NewTopic;
use crate::handles::metadata::PartitionDescription;
use crate::handles::metadata::ReplicaState;
use crate::handles::metadata::TopicDescription;
use crate::handles::partition::Acks;
use crate::handles::partition::FetchArgs;
use crate::handles::partition::OffsetSpec;

/// The public services of one broker, over its [`Core`].
#[derive(Debug, Clone)]
pub struct GrpcServices {
    core: Core,
}

impl GrpcServices {
    /// The services over `core`.
    pub fn new(core: Core) -> Self {
        GrpcServices { core }
    }
}

type Answer<T> = Result<TResp<T>, Status>;

fn ok<T>(t: T) -> Answer<T> {
    Ok(TResp::new(t))
}

/// A produced batch, as sent (checked by the partition handle).
fn batch_from_proto(b: v1::RecordBatch) -> Result<Batch, BrokerError> {
    let (_, batch) = ferrolog_proto::batch::from_proto(b).map_err(|e| BrokerError::InvalidArgument(e.to_string()))?;
    Ok(batch)
}

fn known(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v as i64)
}

fn unknown_if_negative(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

impl From<TopicDescription> for v1::TopicDescription {
    fn from(t: TopicDescription) -> Self {
        v1::TopicDescription {
            name: t.name,
            replication_factor: t.replication_factor,
            config: Some(v1::TopicConfig {
                retention_ms: t.config.retention_ms,
                retention_bytes: t.config.retention_bytes,
                max_message_bytes: Some(t.config.max_message_bytes),
            }),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| v1::PartitionDescription {
                    partition: p.partition,
                    leader_id: p.leader.unwrap_or(0),
                    replicas: p
                        .replicas
                        .into_iter()
                        .map(|r| v1::ReplicaState {
                            broker_id: r.broker,
                            lag: known(r.lag_entries),
                            in_sync: r.in_sync,
                            lag_records: r.lag_records as i64,
                            lag_seconds: r.lag_seconds,
                        })
                        .collect(),
                    high_watermark: known(p.high_watermark),
                    log_start_offset: known(p.log_start),
                    group_id: p.group.0,
                })
                .collect(),
        }
    }
}

/// Another broker's answer to a describe (the broker-to-broker fan-out).
impl From<v1::TopicDescription> for TopicDescription {
    fn from(t: v1::TopicDescription) -> Self {
        let c = t.config.unwrap_or_default();
        TopicDescription {
            name: t.name,
            replication_factor: t.replication_factor,
            config: ferrolog_metadata::TopicConfig {
                retention_ms: c.retention_ms,
                retention_bytes: c.retention_bytes,
                max_message_bytes: c.max_message_bytes.unwrap_or(ferrolog_metadata::DEFAULT_MAX_MESSAGE_BYTES),
            },
            partitions: t
                .partitions
                .into_iter()
                .map(|p| PartitionDescription {
                    partition: p.partition,
                    leader: (p.leader_id != 0).then_some(p.leader_id),
                    replicas: p
                        .replicas
                        .into_iter()
                        .map(|r| ReplicaState {
                            broker: r.broker_id,
                            lag_entries: unknown_if_negative(r.lag),
                            in_sync: r.in_sync,
                            lag_records: r.lag_records.max(0) as u64,
                            lag_seconds: r.lag_seconds,
                        })
                        .collect(),
                    high_watermark: unknown_if_negative(p.high_watermark),
                    log_start: unknown_if_negative(p.log_start_offset),
                    group: ferrolog_types::GroupId(p.group_id),
                })
                .collect(),
        }
    }
}

impl From<ClusterDescription> for v1::DescribeClusterResponse {
    fn from(c: ClusterDescription) -> Self {
        v1::DescribeClusterResponse {
            brokers: c
                .brokers
                .into_iter()
                .map(|b| v1::BrokerDescription {
                    id: b.id,
                    address: b.address,
                    alive: b.alive,
                    metadata_voter: b.metadata_voter,
                    partitions_led: b.partitions_led,
                    replicas: b.replicas,
                })
                .collect(),
            metadata_leader_id: c.metadata_leader,
            under_replicated_partitions: c.under_replicated_partitions,
        }
    }
}

fn assignor_to_proto(a: Assignor) -> i32 {
    match a {
        Assignor::Uniform => v1::Assignor::Uniform as i32,
        Assignor::Range => v1::Assignor::Range as i32,
    }
}

impl From<GroupDescription> for v1::DescribeGroupResponse {
    fn from(g: GroupDescription) -> Self {
        v1::DescribeGroupResponse {
            group: g.group,
            state: g.state,
            group_epoch: g.group_epoch,
            assignor: assignor_to_proto(g.assignor),
            members: g
                .members
                .into_iter()
                .map(|m| v1::MemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    member_epoch: m.member_epoch,
                    assignment: Some(v1::Assignment { partitions: tps_to_proto(&m.assigned) }),
                })
                .collect(),
            offsets: g
                .offsets
                .into_iter()
                .map(|o| v1::PartitionLag {
                    topic: o.topic,
                    partition: o.partition,
                    committed_offset: o.committed,
                    high_watermark: o.high_watermark,
                    lag: o.lag,
                    lag_seconds: o.lag_seconds,
                })
                .collect(),
        }
    }
}

fn tps(list: &[v1::TopicPartitions]) -> BTreeSet<Tp> {
    ferrolog_proto::partitions::from_proto(list)
}

fn tps_to_proto(set: &BTreeSet<Tp>) -> Vec<v1::TopicPartitions> {
    ferrolog_proto::partitions::to_proto(set)
}

fn offset_commit(((topic, partition), offset, metadata): (Tp, i64, String)) -> v1::OffsetCommit {
    v1::OffsetCommit { topic, partition, offset, metadata }
}

#[tonic::async_trait]
impl v1::broker_server::Broker for GrpcServices {
    async fn produce(&self, request: TReq<v1::ProduceRequest>) -> Answer<v1::ProduceResponse> {
        let req = request.into_inner();
        let acks = match v1::Acks::try_from(req.acks) {
            Ok(v1::Acks::All) => Acks::All,
            Ok(v1::Acks::Leader) => Acks::Leader,
            Ok(v1::Acks::None) => Acks::None,
            Err(_) => return Err(BrokerError::InvalidArgument(format!("unknown acks {}", req.acks)).into()),
        };
        let batch = req.batch.ok_or_else(|| BrokerError::InvalidArgument("produce request carries no batch".into()));
        let timeout = (req.timeout_ms != 0).then(|| Duration::from_millis(req.timeout_ms.into()));
        let r = self.core.produce(&req.topic, req.partition, batch_from_proto(batch?)?, acks, timeout).await?;
        ok(v1::ProduceResponse {
            base_offset: r.offsets.map_or(-1, |(b, _)| b as i64),
            last_offset: r.offsets.map_or(-1, |(_, l)| l as i64),
            high_watermark: r.high_watermark as i64,
            duplicate: r.duplicate,
            append_time_ms: r.append_time_ms.unwrap_or(-1),
        })
    }

    async fn fetch(&self, request: TReq<v1::FetchRequest>) -> Answer<v1::FetchResponse> {
        let req = request.into_inner();
        let offset = u64::try_from(req.offset)
            .map_err(|_| BrokerError::InvalidArgument(format!("negative fetch offset {}", req.offset)))?;
        let args = FetchArgs {
            offset,
            max_wait: Duration::from_millis(req.max_wait_ms.into()),
            max_bytes: (req.max_bytes != 0).then_some(req.max_bytes as usize),
        };
        let f = self.core.fetch(&req.topic, req.partition, args).await?;
        ok(v1::FetchResponse {
            batches: f.batches.iter().map(|(base, b)| ferrolog_proto::batch::to_proto(*base, b)).collect(),
            high_watermark: f.high_watermark as i64,
            log_start_offset: f.log_start as i64,
        })
    }

    async fn list_offsets(&self, request: TReq<v1::ListOffsetsRequest>) -> Answer<v1::ListOffsetsResponse> {
        let req = request.into_inner();
        let p = self.core.partition(&req.topic, req.partition)?;
        let spec = match v1::OffsetSpec::try_from(req.spec) {
            Ok(v1::OffsetSpec::Earliest) => OffsetSpec::Earliest,
            Ok(v1::OffsetSpec::Latest) => OffsetSpec::Latest,
            Ok(v1::OffsetSpec::Timestamp) => OffsetSpec::Timestamp(req.timestamp_ms),
            Err(_) => return Err(BrokerError::InvalidArgument(format!("unknown offset spec {}", req.spec)).into()),
        };
        let offset = p.list_offsets(spec).await?;
        ok(v1::ListOffsetsResponse { offset: offset as i64, timestamp_ms: 0 })
    }
}

#[tonic::async_trait]
impl v1::producers_server::Producers for GrpcServices {
    async fn init_producer(&self, request: TReq<v1::InitProducerRequest>) -> Answer<v1::InitProducerResponse> {
        let (producer_id, producer_epoch) =
            self.core.metadata().init_producer(request.into_inner().producer_name).await?;
        ok(v1::InitProducerResponse { producer_id, producer_epoch })
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for GrpcServices {
    async fn create_topic(&self, request: TReq<v1::CreateTopicRequest>) -> Answer<v1::CreateTopicResponse> {
        let req = request.into_inner();
        let cfg = req.config.unwrap_or_default();
        let t = NewTopic {
            name: req.name,
            partitions: req.partitions,
            replication_factor: req.replication_factor,
            retention_ms: cfg.retention_ms,
            retention_bytes: cfg.retention_bytes,
            max_message_bytes: cfg.max_message_bytes,
        };
        let d = self.core.metadata().create_topic(t).await?;
        ok(v1::CreateTopicResponse { topic: Some(d.into()) })
    }

    async fn delete_topic(&self, request: TReq<v1::DeleteTopicRequest>) -> Answer<v1::DeleteTopicResponse> {
        self.core.metadata().delete_topic(&request.into_inner().name).await?;
        ok(v1::DeleteTopicResponse {})
    }

    async fn list_topics(&self, _request: TReq<v1::ListTopicsRequest>) -> Answer<v1::ListTopicsResponse> {
        let topics = self.core.metadata().list_topics().await?;
        ok(v1::ListTopicsResponse { topics: topics.into_iter().map(Into::into).collect() })
    }

    async fn describe_topic(&self, request: TReq<v1::DescribeTopicRequest>) -> Answer<v1::TopicDescription> {
        let req = request.into_inner();
        let opts = DescribeOptions { local_only: req.local_only, replica_lag: req.replica_lag };
        ok(self.core.metadata().describe_topic(&req.name, opts).await?.into())
    }

    async fn describe_cluster(
        &self,
        _request: TReq<v1::DescribeClusterRequest>,
    ) -> Answer<v1::DescribeClusterResponse> {
        ok(self.core.metadata().describe_cluster().await?.into())
    }
}

#[tonic::async_trait]
impl v1::groups_server::Groups for GrpcServices {
    async fn heartbeat(&self, request: TReq<v1::HeartbeatRequest>) -> Answer<v1::HeartbeatResponse> {
        let req = request.into_inner();
        let hb = HeartbeatArgs {
            owned: tps(&req.owned),
            group: req.group,
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            client_id: req.client_id,
            subscribed: req.subscribed_topics,
            assignor: match v1::Assignor::try_from(req.assignor) {
                Ok(v1::Assignor::Range) => Assignor::Range,
                _ => Assignor::Uniform,
            },
            session_timeout: (req.session_timeout_ms != 0)
                .then(|| Duration::from_millis(req.session_timeout_ms.into())),
        };
        let a = self.core.coordinator().heartbeat(hb).await?;
        ok(v1::HeartbeatResponse {
            member_id: a.member_id,
            member_epoch: a.member_epoch,
            heartbeat_interval_ms: a.heartbeat_interval.as_millis() as u32,
            assignment: a.assignment.map(|set| v1::Assignment { partitions: tps_to_proto(&set) }),
        })
    }

    async fn leave_group(&self, request: TReq<v1::LeaveGroupRequest>) -> Answer<v1::LeaveGroupResponse> {
        let req = request.into_inner();
        self.core.coordinator().leave(&req.group, &req.member_id).await?;
        ok(v1::LeaveGroupResponse {})
    }

    async fn commit_offsets(&self, request: TReq<v1::CommitOffsetsRequest>) -> Answer<v1::CommitOffsetsResponse> {
        let req = request.into_inner();
        let offsets = req.offsets.into_iter().map(|o| ((o.topic, o.partition), o.offset, o.metadata)).collect();
        self.core.coordinator().commit(&req.group, req.member_id, req.member_epoch, offsets).await?;
        ok(v1::CommitOffsetsResponse {})
    }

    async fn fetch_offsets(&self, request: TReq<v1::FetchOffsetsRequest>) -> Answer<v1::FetchOffsetsResponse> {
        let req = request.into_inner();
        let found = self.core.coordinator().fetch_offsets(&req.group, &tps(&req.partitions)).await?;
        let offsets = found.into_iter().map(|(tp, c)| offset_commit((tp, c.offset, c.metadata))).collect();
        ok(v1::FetchOffsetsResponse { offsets })
    }

    async fn list_groups(&self, _request: TReq<v1::ListGroupsRequest>) -> Answer<v1::ListGroupsResponse> {
        ok(v1::ListGroupsResponse { groups: self.core.coordinator().list()? })
    }

    async fn describe_group(&self, request: TReq<v1::DescribeGroupRequest>) -> Answer<v1::DescribeGroupResponse> {
        ok(self.core.coordinator().describe(&request.into_inner().group).await?.into())
    }

    async fn reset_offsets(&self, request: TReq<v1::ResetOffsetsRequest>) -> Answer<v1::ResetOffsetsResponse> {
        use v1::reset_offsets_request::Target;
        let req = request.into_inner();
        let target = match req.target {
            Some(Target::ToEarliest(_)) => ResetTarget::Earliest,
            Some(Target::ToLatest(_)) => ResetTarget::Latest,
            Some(Target::ToOffset(o)) => ResetTarget::Offset(o),
            Some(Target::ToTimestampMs(ts)) => ResetTarget::Timestamp(ts),
            None => return Err(BrokerError::InvalidArgument("no reset target given".into()).into()),
        };
        let set = self.core.coordinator().reset(&req.group, &req.topic, target).await?;
        let offsets = set.into_iter().map(|(tp, o)| offset_commit((tp, o, String::new()))).collect();
        ok(v1::ResetOffsetsResponse { offsets })
    }

    async fn delete_group(&self, request: TReq<v1::DeleteGroupRequest>) -> Answer<v1::DeleteGroupResponse> {
        self.core.coordinator().delete(&request.into_inner().group).await?;
        ok(v1::DeleteGroupResponse {})
    }
}
