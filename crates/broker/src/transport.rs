//! The broker-to-broker Raft transport, shared by every Raft group.
//!
//! Client side: [`NetworkFactory`] is openraft's network factory for one
//! group; every group's clients to a peer share that peer's one tonic
//! [`Channel`] (one HTTP/2 connection, requests multiplexed as streams), and
//! each message names its group. Payloads are openraft's own request and
//! response types, postcard-encoded.
//!
//! Server side: [`RaftService`] receives a message, finds the group in the
//! [`crate::groups::Groups`] registry and hands it to that group's Raft.
//! A message for a group this broker does not run (yet) is answered with an
//! error of a kind ([`ReplyError`]); the sender keeps the kind: a group not
//! running, a wrong target or a stopped Raft is unreachable (back off), an
//! undecodable payload a network error (retried at once, then backed off),
//! an RPC past its deadline a timeout.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::recovery::LogPos;
use crate::recovery::Recovery;
use crate::recovery::ReplicaState;
use ferrolog_proto::internal::RaftMessage;
use ferrolog_proto::internal::RaftReply;
use ferrolog_proto::internal::ReplyError;
use ferrolog_proto::internal::SnapshotChunk;
use ferrolog_proto::internal::raft_client::RaftClient;
use ferrolog_raft::snapshot::Assembler;
use ferrolog_raft::snapshot::SnapshotData;
use ferrolog_raft::snapshot::SnapshotHeader;
use ferrolog_raft::types::GroupConfig;
use ferrolog_raft::types::alias::Snapshot;
use ferrolog_raft::types::alias::SnapshotMeta;
use ferrolog_raft::types::alias::Vote;
use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use ferrolog_types::limits::RAFT_MESSAGE_LIMIT;
use openraft::BasicNode;
use openraft::Raft;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RPCTypes;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftStateMachine;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::net::SocketAddr;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::groups::Groups;

/// Connect timeout to a peer; past it the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Snapshot chunks buffered ahead of the network; the sender waits when full.
const SNAPSHOT_CHUNK_QUEUE: usize = 4;

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, postcard::Error> {
    postcard::to_allocvec(v).map(bytes::Bytes::from)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// One lazily connected channel per peer address, shared by all groups,
/// and what this broker last heard from each peer.
#[derive(Debug)]
pub struct Transport {
    node_id: NodeId,
    /// The address outgoing peer connections are bound to: the listen IP
    /// when the broker listens on one specific address. Brokers on
    /// 127.0.0.x then reach each other from their own address, so a network
    /// fault between two of them can be injected per (source, destination)
    /// pair (the chaos tests do, with iptables).
    local_ip: Option<IpAddr>,
    channels: Mutex<HashMap<String, Channel>>,
    /// When each peer broker last sent us anything (a broker heartbeat or any
    /// Raft message). Only the direction peer -> us counts: it is the
    /// direction a leader's heartbeats travel.
    heard: Mutex<HashMap<NodeId, Instant>>,
    /// Each peer's last applied metadata index, from its broker heartbeats.
    meta_applied: Mutex<HashMap<NodeId, u64>>,
    /// The groups recovering from a lost disk on this broker: they neither
    /// grant nor ask for votes (see [`crate::recovery`]).
    recovery: Recovery,
    /// Groups whose Raft core stopped on this broker (found by the
    /// quiescer), listed in every broker heartbeat so that followers parked
    /// on this live broker elect another leader.
    stopped: Mutex<BTreeSet<GroupId>>,
}

impl Transport {
    /// A transport for broker `node_id`.
    pub fn new(node_id: NodeId, listen: SocketAddr) -> Arc<Self> {
        let local_ip = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
        Arc::new(Transport {
            node_id,
            local_ip,
            channels: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            meta_applied: Mutex::new(HashMap::new()),
            recovery: Recovery::new(),
            stopped: Mutex::new(BTreeSet::new()),
        })
    }

    /// Records that `group`'s Raft core stopped here; `true` the first time.
    pub fn mark_stopped(&self, group: GroupId) -> bool {
        self.stopped.lock().expect("stopped lock").insert(group)
    }

    /// Forgets that `group`'s core stopped (its replica was removed here).
    pub fn clear_stopped(&self, group: GroupId) {
        self.stopped.lock().expect("stopped lock").remove(&group);
    }

    /// The groups whose Raft core stopped here.
    pub fn stopped_groups(&self) -> Vec<u64> {
        self.stopped.lock().expect("stopped lock").iter().map(|g| g.0).collect()
    }

    /// Which groups recover from a lost disk on this broker.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Records that `peer` just sent us a message.
    pub fn heard_from(&self, peer: NodeId) {
        if peer != self.node_id {
            self.heard.lock().expect("liveness lock").insert(peer, Instant::now());
        }
    }

    /// Whether `peer` sent us something within `within`. This broker counts
    /// as live to itself.
    pub fn is_live(&self, peer: NodeId, within: Duration) -> bool {
        peer == self.node_id
            || self.heard.lock().expect("liveness lock").get(&peer).is_some_and(|t| t.elapsed() <= within)
    }

    /// The last applied metadata index `peer` reported.
    pub fn peer_meta_applied(&self, peer: NodeId) -> u64 {
        self.meta_applied.lock().expect("meta applied lock").get(&peer).copied().unwrap_or(0)
    }

    /// Records a peer's applied metadata index.
    pub fn set_peer_meta_applied(&self, peer: NodeId, index: u64) {
        let mut m = self.meta_applied.lock().expect("meta applied lock");
        let e = m.entry(peer).or_insert(0);
        *e = (*e).max(index);
    }

    /// Sends one broker heartbeat to `peer` at `addr` (best effort: a failure
    /// only means the peer will not count us as live).
    pub async fn send_heartbeat(&self, peer: NodeId, addr: &str, timeout: Duration, metadata_applied: u64) {
        let Ok(channel) = self.channel(addr) else { return };
        let mut client = RaftClient::new(channel).max_decoding_message_size(RAFT_MESSAGE_LIMIT);
        let req = ferrolog_proto::internal::BrokerHeartbeat {
            from_node: self.node_id,
            to_node: peer,
            metadata_applied,
            stopped_groups: self.stopped_groups(),
        };
        if let Ok(Err(e)) = tokio::time::timeout(timeout, client.heartbeat(req)).await {
            tracing::trace!(peer, error = %e, "broker heartbeat failed");
        }
    }

    /// Asks `peer` at `addr` for its metadata log (one broker heartbeat,
    /// which also tells it we are alive); `None` if it does not answer
    /// within `timeout` or does not know (see [`MetadataProbe`]).
    pub async fn probe_metadata(&self, peer: NodeId, addr: &str, timeout: Duration) -> Option<MetadataProbe> {
        let channel = self.channel(addr).ok()?;
        let mut client = RaftClient::new(channel).max_decoding_message_size(RAFT_MESSAGE_LIMIT);
        let req = ferrolog_proto::internal::BrokerHeartbeat {
            from_node: self.node_id,
            to_node: peer,
            metadata_applied: 0,
            stopped_groups: Vec::new(),
        };
        match tokio::time::timeout(timeout, client.heartbeat(req)).await {
            Ok(Ok(reply)) => reply.into_inner().metadata_log.map(|l| match l.last_index {
                Some(i) if i > 0 => MetadataProbe::Cluster { last_index: i },
                _ => MetadataProbe::Empty,
            }),
            Ok(Err(e)) => {
                tracing::debug!(peer, error = %e, "metadata probe failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Asks `peer` at `addr` for its replica of `group`'s vote term and last
    /// log index (crate::recovery); `None` if it does not answer within
    /// `timeout` or does not run the group.
    pub async fn probe_group(
        &self,
        group: GroupId,
        peer: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Option<ReplicaState> {
        let channel = self.channel(addr).ok()?;
        let mut client = RaftClient::new(channel).max_decoding_message_size(RAFT_MESSAGE_LIMIT);
        let msg =
            RaftMessage { group_id: group.0, from_node: self.node_id, to_node: peer, payload: bytes::Bytes::new() };
        let reply = match tokio::time::timeout(timeout, client.probe(msg)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                tracing::debug!(%group, peer, error = %e, "probe failed");
                return None;
            }
            Err(_) => return None,
        };
        if !reply.error.is_empty() {
            tracing::debug!(%group, peer, error = reply.error, "probe refused");
            return None;
        }
        decode(&reply.payload).ok()
    }

    /// The channel to `addr`, created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel map lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .local_address(self.local_ip)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A network factory for one group of kind `C`.
    pub fn factory<C: GroupConfig>(self: &Arc<Self>, group: GroupId) -> NetworkFactory<C> {
        NetworkFactory { group, transport: self.clone(), _kind: std::marker::PhantomData }
    }
}

/// openraft's network factory for one group (of kind `C`).
#[derive(Debug)]
pub struct NetworkFactory<C> {
    group: GroupId,
    transport: Arc<Transport>,
    _kind: std::marker::PhantomData<fn() -> C>,
}

impl<C: GroupConfig> RaftNetworkFactory<C> for NetworkFactory<C> {
    type Network = GroupClient<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupClient<C> {
        GroupClient {
            _kind: std::marker::PhantomData,
            transport: self.transport.clone(),
            group: self.group,
            from: self.transport.node_id,
            target,
            client: self
                .transport
                .channel(&node.addr)
                .map(|ch| RaftClient::new(ch).max_decoding_message_size(RAFT_MESSAGE_LIMIT))
                .map_err(|e| e.to_string()),
        }
    }
}

/// A client of one group (of kind `C`) on one peer.
#[derive(Debug)]
pub struct GroupClient<C> {
    _kind: std::marker::PhantomData<fn() -> C>,
    transport: Arc<Transport>,
    group: GroupId,
    from: NodeId,
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
}

fn unreachable<C: GroupConfig, E: std::fmt::Display>(e: E) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

/// What a peer says of its metadata log to a broker that starts on an empty
/// data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataProbe {
    /// Nothing past index 0: no leader ever committed anything there.
    Empty,
    /// Entries past index 0: the cluster exists.
    Cluster {
        /// The peer's last metadata log index.
        last_index: u64,
    },
}

/// A failed gRPC call to a peer: a transport failure (connect refused,
/// connection lost) or an answer the peer could not give is unreachable
/// (back off); a message the peer refused to decode (over its size limit)
/// is a network error.
fn status_error<C: GroupConfig>(s: tonic::Status) -> RPCError<C> {
    match s.code() {
        tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::Internal => {
            RPCError::Network(NetworkError::from_string(format!("{}: {}", s.code(), s.message())))
        }
        _ => unreachable(format!("{}: {}", s.code(), s.message())),
    }
}

impl<C: GroupConfig> GroupClient<C> {
    fn message<T: Serialize>(&self, req: &T) -> Result<RaftMessage, RPCError<C>> {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        Ok(RaftMessage { group_id: self.group.0, from_node: self.from, to_node: self.target, payload })
    }

    fn client(&self) -> Result<RaftClient<Channel>, RPCError<C>> {
        self.client.clone().map_err(unreachable)
    }

    /// Refuses to campaign (vote, pre-vote, leadership hand-off) while this
    /// replica recovers from a lost disk: its log may lack entries the
    /// group committed, and a lagging peer could grant it a majority.
    fn may_campaign(&self) -> Result<(), RPCError<C>> {
        if self.transport.recovery.is_recovering(self.group) {
            return Err(unreachable(format!(
                "{}: this replica lost its disk and is catching up; it asks for no votes until it has",
                self.group
            )));
        }
        Ok(())
    }

    /// One unary Raft RPC: encode, send within the RPC's hard TTL, decode.
    async fn call<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        option: RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<C>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftMessage) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let msg = self.message(req)?;
        let c = self.client()?;
        let ttl = option.hard_ttl();
        let timeout = || RPCError::Timeout(Timeout { action, id: self.from, target: self.target, timeout: ttl });
        let r = tokio::time::timeout(ttl, send(c, msg)).await.map_err(|_| timeout())?.map_err(status_error)?;
        Self::reply(r.into_inner())
    }

    fn reply<T: DeserializeOwned>(reply: RaftReply) -> Result<T, RPCError<C>> {
        if !reply.error.is_empty() {
            return Err(match ReplyError::try_from(reply.error_kind).unwrap_or(ReplyError::Unspecified) {
                // A version mismatch: retried at once (openraft backs off
                // after a few network errors in a row).
                ReplyError::Undecodable => RPCError::Network(NetworkError::from_string(reply.error)),
                // The group is not there (yet, or any more): back off.
                // The peer lost its disk and grants no vote yet.
                ReplyError::Recovering
                | ReplyError::GroupNotRunning
                | ReplyError::WrongBroker
                | ReplyError::RaftStopped
                | ReplyError::Unspecified => unreachable(reply.error),
            });
        }
        decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
    }
}

impl<C: GroupConfig> RaftNetworkV2<C> for GroupClient<C> {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(RPCTypes::AppendEntries, &rpc, option, |mut c, m| async move { c.append_entries(m).await }).await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.may_campaign()?;
        self.call(RPCTypes::Vote, &rpc, option, |mut c, m| async move { c.vote(m).await }).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.may_campaign()?;
        self.call(RPCTypes::Vote, &rpc, option, |mut c, m| async move { c.pre_vote(m).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(RPCTypes::TransferLeader, &req, option, |mut c, m| async move { c.transfer_leader(m).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let to_streaming = |e: RPCError<C>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Unreachable(Unreachable::from_string(other.to_string())),
        };
        let data = snapshot.snapshot;
        let header = encode(&(vote, snapshot.meta.clone(), data.header()))
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
        let mut c = self.client().map_err(to_streaming)?;
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNK_QUEUE);
        let (group, from, to) = (self.group.0, self.from, self.target);
        // Chunks are read from RocksDB (blocking) one at a time, at most
        // SNAPSHOT_CHUNK_QUEUE ahead of the network: memory stays bounded
        // whatever the partition's size.
        tokio::task::spawn_blocking(move || {
            let mut chunks = match data.into_chunks() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot read the snapshot to send");
                    return;
                }
            };
            // The header (the partition's applied state, with its producer
            // table) travels alone, so no message exceeds a chunk plus a batch.
            let head = SnapshotChunk {
                group_id: group,
                from_node: from,
                to_node: to,
                header: header.clone(),
                data: bytes::Bytes::new(),
                done: false,
            };
            if tx.blocking_send(head).is_err() {
                return;
            }
            let mut current = chunks.next_chunk();
            loop {
                let chunk = match current {
                    Ok(Some(c)) => c,
                    // Ending the stream without `done` fails the send, which
                    // openraft retries.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(group, error = %e, "reading the snapshot to send failed");
                        break;
                    }
                };
                current = chunks.next_chunk();
                let done = matches!(current, Ok(None));
                let msg = SnapshotChunk {
                    group_id: group,
                    from_node: from,
                    to_node: to,
                    header: bytes::Bytes::new(),
                    data: bytes::Bytes::from(chunk),
                    done,
                };
                if tx.blocking_send(msg).is_err() || done {
                    break;
                }
            }
        });
        let call = c.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => {
                let reply = r.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
                Self::reply(reply.into_inner()).map_err(to_streaming)
            }
        }
    }
}

/// The server side of `ferrolog.internal.v1.Raft`.
#[derive(Debug, Clone)]
pub struct RaftService {
    groups: Arc<Groups>,
}

impl RaftService {
    /// Serves the groups in `groups`.
    pub fn new(groups: Arc<Groups>) -> Self {
        RaftService { groups }
    }
}

fn err_reply(group: u64, kind: ReplyError, error: impl Into<String>) -> RaftReply {
    RaftReply { group_id: group, payload: bytes::Bytes::new(), error: error.into(), error_kind: kind as i32 }
}

type TonicResult<T> = Result<tonic::Response<T>, tonic::Status>;

/// The unary Raft RPCs a group serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// AppendEntries (and heartbeats).
    AppendEntries,
    /// A vote request.
    Vote,
    /// A pre-vote request.
    PreVote,
    /// A leadership transfer.
    TransferLeader,
    /// A recovering peer asks for this replica's vote term and last log
    /// index (crate::recovery).
    Probe,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append-entries",
            Rpc::Vote => "vote",
            Rpc::PreVote => "pre-vote",
            Rpc::TransferLeader => "transfer-leader",
            Rpc::Probe => "probe",
        }
    }
}

/// A failed RPC: the kind the sender keeps, and a message.
pub type RpcFailure = (ReplyError, String);

/// One Raft group, whichever its kind, as the transport's server side and
/// the leadership hand-off see it: written once, generically, for
/// `Raft<C, SM>` of either kind (each decodes its own message types).
#[tonic::async_trait]
pub trait GroupRaft: Send + Sync {
    /// Serves one unary RPC whose request is `payload`; the encoded reply.
    async fn rpc(&self, rpc: Rpc, payload: &[u8]) -> Result<bytes::Bytes, RpcFailure>;

    /// This replica's vote term and last log index, as a recovering peer
    /// asks for them (crate::recovery).
    fn replica_state(&self) -> ReplicaState;

    /// The last entry this replica applied (its log id), and its vote's
    /// term.
    fn applied_and_term(&self) -> (Option<LogPos>, u64);

    /// The term a vote or pre-vote request (encoded) asks for, and the
    /// candidate's last log id.
    fn vote_request_of(&self, payload: &[u8]) -> Option<(u64, Option<LogPos>)>;

    /// On the leader: lets replication to `peer` start again from an empty
    /// log the next time it reports one (openraft treats a follower whose
    /// log went back as a fault and keeps sending from where it was). A
    /// no-op elsewhere.
    async fn allow_revert(&self, peer: NodeId);

    /// Installs a snapshot received from the leader; the encoded reply.
    async fn install(&self, vote: Vote, snapshot: Snapshot) -> Result<bytes::Bytes, RpcFailure>;

    /// Who leads, as this replica's Raft metrics last said, its last log
    /// index, and (on the leader) each follower's matched index.
    fn leadership(&self) -> Leadership;

    /// Asks the group to hand leadership to `to`; whether it accepted.
    async fn transfer_leader(&self, to: NodeId) -> bool;

    /// Waits (until `deadline`) until `me` no longer leads the group.
    async fn wait_not_led_by(&self, me: NodeId, deadline: tokio::time::Instant);
}

/// A group's leadership as its Raft metrics say.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// The last log index.
    pub last_log_index: Option<u64>,
    /// On the leader: each replica's matched log index.
    pub matched: Vec<(NodeId, Option<u64>)>,
}

async fn serve<Req, Resp, E, F, Fut>(rpc: Rpc, payload: &[u8], call: F) -> Result<bytes::Bytes, RpcFailure>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    E: std::fmt::Display,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, E>>,
{
    let req = decode::<Req>(payload)
        .map_err(|e| (ReplyError::Undecodable, format!("undecodable {} request: {e}", rpc.name())))?;
    let resp = call(req).await.map_err(|e| (ReplyError::RaftStopped, e.to_string()))?;
    encode(&resp).map_err(|e| (ReplyError::Undecodable, format!("encode {} reply: {e}", rpc.name())))
}

#[tonic::async_trait]
impl<C, SM> GroupRaft for Raft<C, SM>
where
    C: GroupConfig,
    SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
{
    async fn rpc(&self, rpc: Rpc, payload: &[u8]) -> Result<bytes::Bytes, RpcFailure> {
        match rpc {
            Rpc::AppendEntries => {
                serve(rpc, payload, |req: AppendEntriesRequest<C>| async move { self.append_entries(req).await }).await
            }
            Rpc::Vote => serve(rpc, payload, |req: VoteRequest<C>| async move { self.vote(req).await }).await,
            Rpc::PreVote => serve(rpc, payload, |req: VoteRequest<C>| async move { self.pre_vote(req).await }).await,
            Rpc::TransferLeader => {
                serve(
                    rpc,
                    payload,
                    |req: TransferLeaderRequest<C>| async move { self.handle_transfer_leader(req).await },
                )
                .await
            }
            Rpc::Probe => {
                encode(&self.replica_state()).map_err(|e| (ReplyError::Undecodable, format!("encode probe reply: {e}")))
            }
        }
    }

    fn replica_state(&self) -> ReplicaState {
        use openraft::async_runtime::watch::WatchReceiver;
        let vote_term = self.metrics().borrow_watched().current_term;
        let last_log = self.data_metrics().borrow_watched().last_log.map(|l| LogPos::new(l.leader_id.term, l.index));
        ReplicaState { vote_term, last_log }
    }

    fn applied_and_term(&self) -> (Option<LogPos>, u64) {
        use openraft::async_runtime::watch::WatchReceiver;
        let m = self.metrics().borrow_watched().clone();
        (m.last_applied.map(|l| LogPos::new(l.leader_id.term, l.index)), m.current_term)
    }

    fn vote_request_of(&self, payload: &[u8]) -> Option<(u64, Option<LogPos>)> {
        let r = decode::<VoteRequest<C>>(payload).ok()?;
        Some((r.vote.leader_id.term, r.last_log_id.map(|l| LogPos::new(l.leader_id.term, l.index))))
    }

    async fn allow_revert(&self, peer: NodeId) {
        // Refused (not the leader, peer unknown) or stopped: nothing to do.
        let _ = self.trigger().allow_next_revert(&peer, true).await;
    }

    async fn install(&self, vote: Vote, snapshot: Snapshot) -> Result<bytes::Bytes, RpcFailure> {
        let resp: SnapshotResponse<C> =
            self.install_full_snapshot(vote, snapshot).await.map_err(|e| (ReplyError::RaftStopped, e.to_string()))?;
        encode(&resp).map_err(|e| (ReplyError::Undecodable, format!("encode snapshot reply: {e}")))
    }

    fn leadership(&self) -> Leadership {
        use openraft::async_runtime::watch::WatchReceiver;
        let m = self.metrics().borrow_watched().clone();
        Leadership {
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            matched: m
                .replication
                .map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index))).collect())
                .unwrap_or_default(),
        }
    }

    async fn transfer_leader(&self, to: NodeId) -> bool {
        self.trigger().transfer_leader(to).await.is_ok()
    }

    async fn wait_not_led_by(&self, me: NodeId, deadline: tokio::time::Instant) {
        use openraft::async_runtime::watch::WatchReceiver;
        let mut rx = self.metrics();
        while rx.borrow_watched().current_leader == Some(me) {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                break;
            }
        }
    }
}

/// The term of the leader that sent an (encoded) AppendEntries request:
/// its vote is the request's first field, decoded alone (the entries of a
/// catch-up batch are not decoded twice).
fn leader_term_of_append(payload: &[u8]) -> Option<u64> {
    postcard::take_from_bytes::<Vote>(payload).ok().map(|(v, _)| v.leader_id.term)
}

impl RaftService {
    /// The refusal for entries or a snapshot from a leader of term
    /// `leader_term` reaching a replica of `group` that lost its disk and
    /// may not follow that leader (crate::recovery); `None`: admitted.
    fn refuses_leader(&self, group: GroupId, leader_term: u64) -> Option<RaftReply> {
        let recovery = self.groups.transport().recovery();
        if !recovery.is_recovering(group) {
            return None;
        }
        let raft = self.groups.raft(group)?;
        let (applied, term) = raft.applied_and_term();
        if recovery.admits_leader(group, applied, term, leader_term) {
            return None;
        }
        Some(err_reply(
            group.0,
            ReplyError::Recovering,
            format!(
                "{group} on broker {}: this replica lost its disk and takes entries only from a leader as recent as \
                 its voters' (leader term {leader_term}, target {:?})",
                self.groups.node_id(),
                recovery.target(group)
            ),
        ))
    }

    /// Checks the target, finds the group and runs the RPC on it; every
    /// failure becomes an error reply of its kind (the sender backs off or
    /// retries by kind).
    async fn dispatch(&self, msg: RaftMessage, rpc: Rpc) -> RaftReply {
        let g = msg.group_id;
        self.groups.transport().heard_from(msg.from_node);
        if msg.to_node != self.groups.node_id() {
            return err_reply(
                g,
                ReplyError::WrongBroker,
                format!("message for broker {} reached broker {}", msg.to_node, self.groups.node_id()),
            );
        }
        let Some(raft) = self.groups.raft(GroupId(g)) else {
            return err_reply(g, ReplyError::GroupNotRunning, format!("group {g} is not running on this broker"));
        };
        let recovery = self.groups.transport().recovery();
        let group = GroupId(g);
        // A replica that lost its disk follows no leader older than one it
        // may have followed before (crate::recovery): entries as snapshots.
        if rpc == Rpc::AppendEntries
            && let Some(refusal) = self.refuses_leader(group, leader_term_of_append(&msg.payload).unwrap_or(0))
        {
            return refusal;
        }
        // Nor does it grant a vote or take leadership until it has caught up.
        let refused = recovery.is_recovering(group) && {
            let (applied, term) = raft.applied_and_term();
            match rpc {
                Rpc::Vote | Rpc::PreVote => {
                    // An undecodable request is refused by openraft's own
                    // decoding below; term 0 admits nothing here.
                    let (request_term, candidate_last) = raft.vote_request_of(&msg.payload).unwrap_or((0, None));
                    !recovery.admits_vote(group, applied, term, request_term, candidate_last)
                }
                // Checked above.
                Rpc::AppendEntries => false,
                Rpc::TransferLeader => recovery.still_recovering(group, applied, term),
                Rpc::Probe => false,
            }
        };
        if refused {
            return err_reply(
                g,
                ReplyError::Recovering,
                format!(
                    "{group} on broker {}: this replica lost its disk and is catching up; it grants no {} until it has",
                    self.groups.node_id(),
                    rpc.name()
                ),
            );
        }
        if rpc == Rpc::Probe {
            // Only a replica that lost its disk probes: if this one leads,
            // replication to it must start again from its empty log; if this
            // one follows it, it follows a leader that leads nothing any
            // more (its election timer must run again: crate::quiesce).
            raft.allow_revert(msg.from_node).await;
            if raft.leadership().leader == Some(msg.from_node) {
                tracing::info!(%group, leader = msg.from_node, "the leader this replica follows lost its disk; electing another");
                recovery.leader_gone(group, msg.from_node);
            }
        }
        match raft.rpc(rpc, &msg.payload).await {
            Ok(payload) => RaftReply { group_id: g, payload, error: String::new(), error_kind: 0 },
            Err((kind, e)) => err_reply(g, kind, e),
        }
    }
}

#[tonic::async_trait]
impl ferrolog_proto::internal::raft_server::Raft for RaftService {
    async fn join(
        &self,
        request: tonic::Request<ferrolog_proto::internal::JoinRequest>,
    ) -> TonicResult<ferrolog_proto::internal::JoinReply> {
        let req = request.into_inner();
        crate::join::admit(&self.groups, req.node_id, req.address).await.map_err(tonic::Status::from)?;
        Ok(tonic::Response::new(ferrolog_proto::internal::JoinReply {}))
    }

    async fn append_entries(&self, request: tonic::Request<RaftMessage>) -> TonicResult<RaftReply> {
        Ok(tonic::Response::new(self.dispatch(request.into_inner(), Rpc::AppendEntries).await))
    }

    async fn vote(&self, request: tonic::Request<RaftMessage>) -> TonicResult<RaftReply> {
        Ok(tonic::Response::new(self.dispatch(request.into_inner(), Rpc::Vote).await))
    }

    async fn pre_vote(&self, request: tonic::Request<RaftMessage>) -> TonicResult<RaftReply> {
        Ok(tonic::Response::new(self.dispatch(request.into_inner(), Rpc::PreVote).await))
    }

    async fn transfer_leader(&self, request: tonic::Request<RaftMessage>) -> TonicResult<RaftReply> {
        Ok(tonic::Response::new(self.dispatch(request.into_inner(), Rpc::TransferLeader).await))
    }

    async fn probe(&self, request: tonic::Request<RaftMessage>) -> TonicResult<RaftReply> {
        Ok(tonic::Response::new(self.dispatch(request.into_inner(), Rpc::Probe).await))
    }

    async fn heartbeat(
        &self,
        request: tonic::Request<ferrolog_proto::internal::BrokerHeartbeat>,
    ) -> TonicResult<ferrolog_proto::internal::BrokerHeartbeatReply> {
        let req = request.into_inner();
        if req.to_node != self.groups.node_id() {
            return Err(tonic::Status::from(crate::error::BrokerError::InvalidArgument(format!(
                "heartbeat for broker {} reached broker {}",
                req.to_node,
                self.groups.node_id()
            ))));
        }
        self.groups.transport().heard_from(req.from_node);
        self.groups.transport().set_peer_meta_applied(req.from_node, req.metadata_applied);
        for g in req.stopped_groups {
            // The sender leads these groups no more, live as it is: a
            // follower here that follows it must elect (crate::quiesce).
            let group = GroupId(g);
            if let Some(raft) = self.groups.raft(group)
                && raft.leadership().leader == Some(req.from_node)
            {
                self.groups.transport().recovery().leader_gone(group, req.from_node);
            }
        }
        let meta = self.groups.raft(GroupId::METADATA);
        let metadata_applied = meta.as_ref().and_then(|r| r.applied_and_term().0).map_or(0, |l| l.index);
        let metadata_log = meta
            .map(|r| ferrolog_proto::internal::MetadataLog { last_index: r.replica_state().last_log.map(|l| l.index) });
        Ok(tonic::Response::new(ferrolog_proto::internal::BrokerHeartbeatReply { metadata_applied, metadata_log }))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<SnapshotChunk>>,
    ) -> TonicResult<RaftReply> {
        let mut stream = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut assembler: Option<Assembler> = None;
        let mut group = 0;
        let mut complete = false;
        while let Some(chunk) = stream.message().await? {
            if header.is_none() {
                group = chunk.group_id;
                self.groups.transport().heard_from(chunk.from_node);
                if chunk.to_node != self.groups.node_id() {
                    return Ok(tonic::Response::new(err_reply(
                        group,
                        ReplyError::WrongBroker,
                        "snapshot for another broker",
                    )));
                }
                // Nothing is written for a group this broker does not run.
                if self.groups.raft(GroupId(group)).is_none() {
                    return Ok(tonic::Response::new(err_reply(
                        group,
                        ReplyError::GroupNotRunning,
                        format!("group {group} is not running on this broker"),
                    )));
                }
                match decode::<(Vote, SnapshotMeta, SnapshotHeader)>(&chunk.header) {
                    Ok((vote, meta, kind)) => {
                        // A replica that lost its disk takes a snapshot only
                        // from a leader it may follow (crate::recovery).
                        if let Some(refusal) = self.refuses_leader(GroupId(group), vote.leader_id.term) {
                            return Ok(tonic::Response::new(refusal));
                        }
                        header = Some((vote, meta));
                        assembler = Some(Assembler::new(kind, self.groups.storage().clone(), GroupId(group)));
                    }
                    Err(e) => {
                        return Ok(tonic::Response::new(err_reply(
                            group,
                            ReplyError::Undecodable,
                            format!("bad snapshot header: {e}"),
                        )));
                    }
                }
            }
            if let Some(a) = assembler.as_mut() {
                // A chunk is at most ~1 MiB plus one batch: written inline.
                let r = tokio::task::block_in_place(|| a.chunk(&chunk.data));
                if let Err(e) = r {
                    return Ok(tonic::Response::new(err_reply(
                        group,
                        ReplyError::Undecodable,
                        format!("bad snapshot chunk: {e}"),
                    )));
                }
            }
            if chunk.done {
                complete = true;
                break;
            }
        }
        let (Some((vote, meta)), Some(assembler)) = (header, assembler) else {
            return Err(crate::error::BrokerError::InvalidArgument("empty snapshot stream".into()).into());
        };
        if !complete {
            return Ok(tonic::Response::new(err_reply(
                group,
                ReplyError::Undecodable,
                "snapshot stream ended before its last chunk",
            )));
        }
        let data = match assembler.finish() {
            Ok(d) => d,
            Err(e) => {
                return Ok(tonic::Response::new(err_reply(
                    group,
                    ReplyError::Undecodable,
                    format!("bad snapshot: {e}"),
                )));
            }
        };
        let reply = match self.groups.raft(GroupId(group)) {
            None => {
                err_reply(group, ReplyError::GroupNotRunning, format!("group {group} is not running on this broker"))
            }
            Some(raft) => match raft.install(vote, Snapshot { meta, snapshot: data }).await {
                Ok(payload) => RaftReply { group_id: group, payload, error: String::new(), error_kind: 0 },
                Err((kind, e)) => err_reply(group, kind, e),
            },
        };
        Ok(tonic::Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: ReplyError) -> RaftReply {
        RaftReply { group_id: 1, payload: bytes::Bytes::new(), error: "refused".into(), error_kind: kind as i32 }
    }

    /// A recovering replica reads the leader's term off an AppendEntries
    /// request without decoding its entries: the vote must stay the
    /// request's first field (a newer openraft that reorders it fails here).
    #[test]
    fn the_leader_term_is_read_off_an_append_alone() {
        use ferrolog_raft::types::alias::Entry;
        use ferrolog_raft::types::log_id;
        use openraft::entry::RaftEntry;
        let blank = |index| Entry::new_blank(log_id(6, 2, index));
        let req = AppendEntriesRequest::<ferrolog_raft::PartitionConfig> {
            vote: Vote::new_committed(7, 2),
            prev_log_id: Some(log_id(5, 1, 41)),
            entries: vec![blank(42), blank(43)],
            leader_commit: Some(log_id(5, 1, 40)),
        };
        let payload = encode(&req).expect("encode");
        assert_eq!(leader_term_of_append(&payload), Some(7));
        assert_eq!(leader_term_of_append(&[]), None);
    }

    /// The receiver's reason survives the trip: openraft backs off from an
    /// unreachable peer and retries a network error at once.
    #[test]
    fn reply_errors_keep_their_kind() {
        for kind in [
            ReplyError::GroupNotRunning,
            ReplyError::WrongBroker,
            ReplyError::RaftStopped,
            ReplyError::Recovering,
            ReplyError::Unspecified,
        ] {
            assert!(
                matches!(
                    GroupClient::<ferrolog_raft::PartitionConfig>::reply::<u64>(reply(kind)),
                    Err(RPCError::Unreachable(_))
                ),
                "{kind:?}"
            );
        }
        assert!(matches!(
            GroupClient::<ferrolog_raft::PartitionConfig>::reply::<u64>(reply(ReplyError::Undecodable)),
            Err(RPCError::Network(_))
        ));
        let ok =
            RaftReply { group_id: 1, payload: encode(&7u64).expect("encode"), error: String::new(), error_kind: 0 };
        assert_eq!(GroupClient::<ferrolog_raft::PartitionConfig>::reply::<u64>(ok).ok(), Some(7));
        assert!(matches!(
            status_error::<ferrolog_raft::PartitionConfig>(tonic::Status::unavailable("tcp connect error")),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(
            status_error::<ferrolog_raft::PartitionConfig>(tonic::Status::resource_exhausted("too large")),
            RPCError::Network(_)
        ));
    }
}
