//! The Rust client of Ferrolog: bootstrap from any broker list, route
//! requests to partition leaders by following `NOT_LEADER` hints, build and
//! check record batches, produce, fetch, and create or describe topics.
//!
//! [`IdempotentProducer`] adds producer ids, epochs and sequence numbers:
//! retries (of any failure, ambiguous ones included) never duplicate or
//! reorder. [`Producer`] batches with linger and compression.
//! [`Consumer`] reads with a consumer group (server-side assignment) or
//! without one.
//!
//! Every error is a [`ClientError`] ([`ClientError::is_retriable`],
//! [`ClientError::leader_hint`]); the public API holds no gRPC types (the
//! `grpc` cargo feature adds raw channel access for tools).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferrolog_client::ClientError> {
//! use std::time::Duration;
//! use ferrolog_client::{Acks, Client, make_batch};
//!
//! let client = Client::new(vec!["127.0.0.1:9092".into(), "127.0.0.1:9093".into()]);
//! client.create_topic("orders", 3, 3).await?;
//! let batch = make_batch(&[(Some(b"k".to_vec()), b"hello".to_vec())], 1_700_000_000_000);
//! let p = client.produce("orders", 0, Acks::All, batch, Duration::from_secs(10)).await?;
//! let (records, info) = client.fetch("orders", 0, 0, Duration::ZERO, Duration::from_secs(10)).await?;
//! assert_eq!(records[0].value, b"hello");
//! # let _ = (p, info);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod batching;
mod consumer;
mod error;
pub mod partitioner;
mod producer;
pub use batching::Delivered;
pub use batching::Delivery;
pub use batching::Producer;
pub use batching::ProducerConfig;
pub use consumer::Assignor;
pub use consumer::ConsumedRecord;
pub use consumer::Consumer;
pub use consumer::ConsumerConfig;
pub use consumer::Event;
pub use consumer::OffsetReset;
pub use error::ClientError;
pub use error::ErrorKind;
pub use error::LeaderHint;
/// A sealed record batch (header, record bytes, CRC32C), as produced.
pub use ferrolog_types::Batch as RecordBatch;
pub use partitioner::partition_for_key;
pub use producer::IdempotentProducer;
pub use producer::MAX_IN_FLIGHT;

use ferrolog_types::limits::API_MESSAGE_LIMIT;
use ferrolog_types::limits::MAX_MESSAGE_BYTES_LIMIT;

/// A batch's fields besides its records, as the broker counts its size.
const BATCH_OVERHEAD_BYTES: usize = 64;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use ferrolog_proto::v1;
use ferrolog_proto::v1::admin_client::AdminClient;
use ferrolog_proto::v1::broker_client::BrokerClient;
use ferrolog_proto::v1::producers_client::ProducersClient;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use tonic::Status;
use tonic::transport::Channel;

/// Connect timeout to one broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Per-request timeout on the wire.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one attempt of a metadata or admin request waits for a broker
/// before trying the next (a hung broker is skipped, not waited out).
pub const ADMIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for InitProducer, whose answer may wait for the new epoch to
/// reach every live broker (the broker's `fence_propagation_timeout`, 5 s
/// by default): an attempt cut short would be run again and bump the
/// epoch again. (Two hung brokers in the bootstrap list cost 14 s of the
/// call's 30 s.)
pub const INIT_PRODUCER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(7);
/// How long a broker that refused a connection or did not answer is tried
/// only after the others.
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How durable a produce must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Fire and forget: may be lost.
    None,
    /// Synced to the partition leader's own log.
    Leader,
    /// Committed by a quorum of the partition's replicas.
    #[default]
    All,
}

impl Acks {
    fn to_proto(self) -> v1::Acks {
        match self {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            Acks::All => v1::Acks::All,
        }
    }
}

/// How a batch's records are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Not compressed.
    #[default]
    None,
    /// LZ4 (block format, uncompressed size prepended).
    Lz4,
    /// zstd (not supported by this client yet).
    Zstd,
}

impl Compression {
    fn code(self) -> u32 {
        match self {
            Compression::None => v1::Compression::None as u32,
            Compression::Lz4 => v1::Compression::Lz4 as u32,
            Compression::Zstd => v1::Compression::Zstd as u32,
        }
    }
}

/// The answer to a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the batch's first record; `None` with [`Acks::None`].
    pub base_offset: Option<u64>,
    /// Offset of its last record; `None` with [`Acks::None`].
    pub last_offset: Option<u64>,
    /// The partition's high watermark when the leader answered.
    pub high_watermark: u64,
    /// The batch was a retry of one already in the log (idempotent
    /// producers): these are the offsets it got then.
    pub duplicate: bool,
    /// The leader's clock when it answered (ms since the epoch); `None`
    /// with [`Acks::None`].
    pub append_time_ms: Option<i64>,
}

impl From<v1::ProduceResponse> for Produced {
    fn from(r: v1::ProduceResponse) -> Self {
        Produced {
            base_offset: u64::try_from(r.base_offset).ok(),
            last_offset: u64::try_from(r.last_offset).ok(),
            high_watermark: r.high_watermark.max(0) as u64,
            duplicate: r.duplicate,
            append_time_ms: (r.append_time_ms >= 0).then_some(r.append_time_ms),
        }
    }
}

/// A partition's bounds as the answering replica knew them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchInfo {
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// First offset still held.
    pub log_start: u64,
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Its leader's broker id, if it has one.
    pub leader: Option<u64>,
    /// Brokers holding its replicas (preferred leader first).
    pub replicas: Vec<u64>,
    /// High watermark, if known.
    pub high_watermark: Option<u64>,
    /// Log start, if known.
    pub log_start: Option<u64>,
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Partitions, in order.
    pub partitions: Vec<PartitionInfo>,
}

impl From<v1::TopicDescription> for TopicInfo {
    fn from(d: v1::TopicDescription) -> Self {
        TopicInfo {
            name: d.name,
            replication_factor: d.replication_factor,
            partitions: d
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    leader: (p.leader_id != 0).then_some(p.leader_id),
                    replicas: p.replicas.iter().map(|r| r.broker_id).collect(),
                    high_watermark: u64::try_from(p.high_watermark).ok(),
                    log_start: u64::try_from(p.log_start_offset).ok(),
                })
                .collect(),
        }
    }
}

/// Builds a sealed, uncompressed batch of `(key, value)` records.
pub fn make_batch(records: &[(Option<Vec<u8>>, Vec<u8>)], timestamp_ms: i64) -> RecordBatch {
    make_uncompressed(records, timestamp_ms)
}

/// Builds a sealed batch, its records compressed per `compression` (LZ4:
/// the block format with the uncompressed size prepended, `lz4_flex`).
pub fn make_batch_with(
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    timestamp_ms: i64,
    compression: Compression,
) -> Result<RecordBatch, ClientError> {
    let b = make_uncompressed(records, timestamp_ms);
    match compression {
        Compression::None => Ok(b),
        Compression::Lz4 => {
            let mut header = b.header;
            header.compression = Compression::Lz4.code();
            Ok(Batch::seal(header, bytes::Bytes::from(lz4_flex::compress_prepend_size(&b.records))))
        }
        Compression::Zstd => Err(ClientError::invalid("zstd compression is not supported by this client")),
    }
}

fn make_uncompressed(records: &[(Option<Vec<u8>>, Vec<u8>)], timestamp_ms: i64) -> RecordBatch {
    let blob = ferrolog_proto::records::encode(
        records.iter().map(|(k, v)| (k.clone().map(Into::into), v.clone().into())),
        timestamp_ms,
    );
    Batch::seal(BatchHeader::plain(records.len() as u32, timestamp_ms), blob)
}

/// Sets a batch's producer id, epoch and base sequence and recomputes its
/// checksum (which covers them).
pub fn set_producer(b: &mut RecordBatch, producer_id: i64, producer_epoch: i32, base_sequence: i32) {
    let mut header = b.header;
    header.producer_id = producer_id;
    header.producer_epoch = producer_epoch;
    header.base_sequence = base_sequence;
    *b = Batch::seal(header, b.records.clone());
}

pub(crate) fn batch_to_proto(b: &RecordBatch) -> v1::RecordBatch {
    ferrolog_proto::batch::to_proto(0, b)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A fetched record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset.
    pub offset: u64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Vec<u8>,
    /// Producer timestamp.
    pub timestamp_ms: i64,
}

/// Checks a fetched batch's CRC32C end to end and decodes its records
/// (the batch's first record is at `base_offset`). The decompressed size is
/// bounded and each record's offset is its position in the batch: a record
/// whose offset delta says otherwise makes the batch corrupt (brokers refuse
/// such batches on produce; this guards against one that did not).
pub fn decode_batch(base_offset: u64, b: &RecordBatch) -> Result<Vec<FetchedRecord>, ClientError> {
    let corrupt = |detail: String| ClientError::corrupt(base_offset as i64, detail);
    b.verify().map_err(|e| corrupt(e.to_string()))?;
    // decode checks the count and each offset delta (record i has delta i).
    let records = ferrolog_proto::records::decode(b, ferrolog_proto::records::MAX_DECOMPRESSED_BYTES)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, r)| FetchedRecord {
            offset: base_offset + i as u64,
            key: r.key.map(|k| k.to_vec()),
            value: r.value.to_vec(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect())
}

/// A fetched proto batch, checked and decoded.
pub(crate) fn decode_proto(b: &v1::RecordBatch) -> Result<Vec<FetchedRecord>, ClientError> {
    let (base, batch) =
        ferrolog_proto::batch::from_proto(b.clone()).map_err(|e| ClientError::corrupt(b.base_offset, e))?;
    let base = base.ok_or_else(|| ClientError::corrupt(b.base_offset, "negative base offset"))?;
    decode_batch(base, &batch)
}

/// Partition leaders as last learned. An entry is dropped on any error from
/// that broker (a NOT_LEADER hint replaces it) and expires after
/// [`LEADER_CACHE_TTL`], so leadership moves (preferred-leader rebalance)
/// are picked up even without errors.
#[derive(Debug, Default)]
struct LeaderCache(Mutex<HashMap<(String, u32), (String, Instant)>>);

/// How long a cached partition leader is trusted.
pub const LEADER_CACHE_TTL: Duration = Duration::from_secs(60);

impl LeaderCache {
    fn get(&self, key: &(String, u32)) -> Option<String> {
        let mut m = self.0.lock().expect("leader cache lock");
        match m.get(key) {
            Some((addr, at)) if at.elapsed() < LEADER_CACHE_TTL => Some(addr.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: (String, u32), addr: String) {
        self.0.lock().expect("leader cache lock").insert(key, (addr, Instant::now()));
    }

    fn remove(&self, key: &(String, u32)) {
        self.0.lock().expect("leader cache lock").remove(key);
    }
}

/// Retry pacing: 50 ms, doubling up to 1 s, with up to 25 % random jitter
/// so that many clients retrying after one failover do not move in step.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    async fn wait(&mut self) {
        let jitter = self.0.mul_f64(rand::random::<f64>() * 0.25);
        tokio::time::sleep(self.0 + jitter).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// Talks to a cluster through any of its brokers.
#[derive(Debug)]
pub struct Client {
    bootstrap: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leaders: LeaderCache,
    /// Brokers that recently refused a connection or did not answer in
    /// time: tried only after the others, until the instant given.
    suspects: Mutex<HashMap<String, Instant>>,
    /// Source address of every connection; `None`: the system picks.
    local_address: Option<IpAddr>,
}

/// The brokers of one request that could not be reached, and why.
///
/// `fresh` holds those that failed since the request last backed off: a
/// hint naming one of them is not followed (the broker that just refused
/// the connection is often the dead leader every follower still names, and
/// following it would spin), and a request retries at once only while a
/// bootstrap broker outside it is left.
#[derive(Debug, Default)]
struct Unreached {
    all: BTreeMap<String, String>,
    fresh: std::collections::HashSet<String>,
}

impl Unreached {
    fn insert(&mut self, addr: &str, why: String) {
        self.all.insert(addr.to_string(), why);
        self.fresh.insert(addr.to_string());
    }

    /// Whether `addr` failed since the last backoff.
    fn just_failed(&self, addr: &str) -> bool {
        self.fresh.contains(addr)
    }

    /// Whether every bootstrap broker failed since the last backoff.
    fn covers(&self, bootstrap: &[String]) -> bool {
        bootstrap.iter().all(|b| self.fresh.contains(b))
    }

    /// A backoff passed: brokers may have come back.
    fn backed_off(&mut self) {
        self.fresh.clear();
    }

    fn error(&self, what: &str) -> ClientError {
        let list: Vec<String> = self.all.iter().map(|(a, why)| format!("{a} ({why})")).collect();
        ClientError::new(ErrorKind::Unreachable, format!("{what}: no broker reachable: {}", list.join(", ")))
    }
}

/// Where a produce or fetch goes after a failure: a leader hint is followed
/// at once unless it names a broker that just failed; an unreachable broker
/// is followed by the next bootstrap broker at once while one is left that
/// has not failed; otherwise the request backs off. Retries end at
/// `deadline`, with the unreachable brokers named when every bootstrap
/// broker was among them (a bootstrap list that refuses connections is
/// retried until then: a one-broker list restarting comes back).
struct Route {
    what: &'static str,
    deadline: Instant,
    backoff: Backoff,
    unreached: Unreached,
}

impl Route {
    fn new(what: &'static str, timeout: Duration) -> Self {
        Route { what, deadline: Instant::now() + timeout, backoff: Backoff::new(), unreached: Unreached::default() }
    }

    /// After `e` from `addr` (which the caller chose to retry): records it,
    /// and returns the hint to follow, or `None` to pick again from the
    /// bootstrap list; `Err` when the deadline has passed.
    async fn after(&mut self, client: &Client, addr: &str, e: ClientError) -> Result<Option<String>, ClientError> {
        if e.kind() == ErrorKind::Unreachable {
            client.suspect(addr);
            self.unreached.insert(addr, e.to_string());
        }
        if Instant::now() >= self.deadline {
            let all_down = client.bootstrap.iter().all(|b| self.unreached.all.contains_key(b));
            return Err(if all_down && e.kind() == ErrorKind::Unreachable {
                self.unreached.error(self.what)
            } else {
                e
            });
        }
        if let Some(hint) = e.leader_hint().and_then(|h| h.leader_address.clone())
            && hint != addr
            && !self.unreached.just_failed(&hint)
        {
            return Ok(Some(hint));
        }
        if e.kind() == ErrorKind::Unreachable && !self.unreached.covers(&client.bootstrap) {
            return Ok(None);
        }
        self.backoff.wait().await;
        self.unreached.backed_off();
        Ok(None)
    }
}

impl Client {
    /// A client bootstrapping from `brokers` (`host:port`).
    pub fn new(brokers: Vec<String>) -> Self {
        Client {
            bootstrap: brokers,
            channels: Mutex::new(HashMap::new()),
            leaders: LeaderCache::default(),
            suspects: Mutex::new(HashMap::new()),
            local_address: None,
        }
    }

    /// Opens every connection from `ip` (a host with several addresses,
    /// or a test giving each client its own so that a network fault can
    /// cut one client off). Call before the first request.
    pub fn bind_to(mut self, ip: IpAddr) -> Self {
        self.local_address = Some(ip);
        self
    }

    /// The broker addresses this client bootstraps from.
    pub fn brokers(&self) -> &[String] {
        &self.bootstrap
    }

    /// A (shared, lazily connecting) channel to `addr`.
    pub(crate) fn channel_to(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self.channels.lock().expect("channel map lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::invalid(format!("bad broker address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.local_address)
            .connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn suspect(&self, addr: &str) {
        self.suspects.lock().expect("suspects lock").insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    fn clear_suspect(&self, addr: &str) {
        self.suspects.lock().expect("suspects lock").remove(addr);
    }

    /// The `i`-th bootstrap broker to try, brokers under suspicion last.
    fn bootstrap_pick(&self, i: usize) -> String {
        let now = Instant::now();
        let suspects = self.suspects.lock().expect("suspects lock");
        let (mut good, bad): (Vec<&String>, Vec<&String>) =
            self.bootstrap.iter().partition(|a| suspects.get(*a).is_none_or(|until| *until <= now));
        good.extend(bad);
        good[i % good.len()].clone()
    }

    /// Allocates an idempotent producer id and epoch (through the metadata
    /// Raft group). With a name, the same name keeps its id and gets a higher
    /// epoch, which fences the previous instance.
    pub async fn init_producer(&self, name: Option<&str>) -> Result<(i64, i32), ClientError> {
        let req = v1::InitProducerRequest { producer_name: name.map(String::from) };
        let r = self
            .on_meta_leader_with("init producer", Duration::from_secs(30), INIT_PRODUCER_ATTEMPT_TIMEOUT, |ch| {
                let req = req.clone();
                async move { ProducersClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).init_producer(req).await }
            })
            .await?;
        Ok((r.producer_id, r.producer_epoch))
    }

    /// Runs `call` on the metadata leader, following hints and retrying
    /// what is retriable until `timeout`. A broker that refuses the
    /// connection is skipped at once, one that does not answer within
    /// [`ADMIN_ATTEMPT_TIMEOUT`] after that long (both are then tried last
    /// for [`SUSPECT_FOR`]); when every bootstrap broker was unreachable the
    /// call fails, naming each.
    pub(crate) async fn on_meta_leader<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_meta_leader_with(what, timeout, ADMIN_ATTEMPT_TIMEOUT, call).await
    }

    /// [`Client::on_meta_leader`] with attempts of up to `attempt_timeout`.
    pub(crate) async fn on_meta_leader_with<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        attempt_timeout: Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        let mut next: Option<String> = None;
        let mut backoff = Backoff::new();
        let mut unreached = Unreached::default();
        loop {
            let addr = next.take().unwrap_or_else(|| {
                i += 1;
                self.bootstrap_pick(i - 1)
            });
            let left = deadline.saturating_duration_since(Instant::now());
            // The last attempt gets at least a short while, never zero.
            let attempt = attempt_timeout.min(left.max(Duration::from_millis(200)));
            let r = match self.channel_to(&addr) {
                Ok(ch) => match tokio::time::timeout(attempt, call(ch)).await {
                    Ok(r) => r.map(|r| r.into_inner()).map_err(ClientError::from),
                    Err(_) => Err(ClientError::timeout(&addr, attempt)),
                },
                Err(e) => Err(e),
            };
            let e = match r {
                Ok(v) => {
                    self.clear_suspect(&addr);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if matches!(e.kind(), ErrorKind::Unreachable | ErrorKind::Timeout) {
                // Skip it: the next broker at once, no backoff.
                self.suspect(&addr);
                let why =
                    if e.kind() == ErrorKind::Timeout { format!("no answer in {attempt:?}") } else { e.to_string() };
                unreached.insert(&addr, why);
                // Fail fast: every bootstrap broker refused or hung.
                if self.bootstrap.iter().all(|b| unreached.all.contains_key(b)) || Instant::now() >= deadline {
                    return Err(unreached.error(what));
                }
                continue;
            }
            // The metadata leader's answers are authoritative: an unknown
            // topic or group is not retried here (only routing and
            // unavailability are).
            let transient = matches!(e.kind(), ErrorKind::NotLeader | ErrorKind::Unavailable);
            if !transient || Instant::now() >= deadline {
                return Err(e);
            }
            // A hint to a broker that just failed (the dead leader the
            // followers still name) is not followed: back off instead.
            next = e.leader_hint().and_then(|h| h.leader_address.clone()).filter(|h| !unreached.just_failed(h));
            if next.is_none() {
                backoff.wait().await;
                unreached.backed_off();
            }
        }
    }

    pub(crate) async fn admin_call<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_meta_leader(what, timeout, |ch| call(AdminClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT)))
            .await
    }

    /// Creates a topic (0 partitions: 1; replication factor 0: up to 3).
    pub async fn create_topic(&self, name: &str, partitions: u32, rf: u32) -> Result<TopicInfo, ClientError> {
        let req = v1::CreateTopicRequest { name: name.into(), partitions, replication_factor: rf, config: None };
        self.admin_call("create topic", Duration::from_secs(20), |mut c| {
            let req = req.clone();
            async move { c.create_topic(req).await }
        })
        .await
        .map(|r| r.topic.unwrap_or_default().into())
    }

    /// Describes a topic: partitions, leaders, replicas, offsets.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicInfo, ClientError> {
        self.admin_call("describe topic", Duration::from_secs(20), |mut c| {
            let name = topic.to_string();
            async move { c.describe_topic(v1::DescribeTopicRequest { name, local_only: false, replica_lag: false }).await }
        })
        .await
        .map(TopicInfo::from)
    }

    /// Describes a topic, waiting up to `timeout` for every partition to
    /// have a leader (and for brokers to learn of a just-created topic).
    pub async fn wait_leaders(&self, topic: &str, timeout: Duration) -> Result<TopicInfo, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self
                .admin_call("describe topic", timeout, |mut c| {
                    let name = topic.to_string();
                    async move {
                        c.describe_topic(v1::DescribeTopicRequest { name, local_only: false, replica_lag: false }).await
                    }
                })
                .await;
            // A broker whose metadata replica has not applied the creation
            // yet does not know the topic: retriable, as in Kafka.
            let d = match d {
                Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => TopicInfo::from(other?),
            };
            if !d.partitions.is_empty() && d.partitions.iter().all(|p| p.leader.is_some()) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(ClientError::new(
                    ErrorKind::Unavailable,
                    format!("partitions of {topic} have no leader after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Produces one batch to a partition's leader, following `NOT_LEADER`
    /// hints and retrying *only* errors that say nothing was written (not
    /// leader, unreachable, topic not known yet) until `timeout`.
    /// Ambiguous failures (timeouts, leader change after append) are
    /// returned: retrying them could duplicate without idempotence.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: RecordBatch,
        timeout: Duration,
    ) -> Result<Produced, ClientError> {
        self.produce_with(topic, partition, acks, batch, timeout, false).await
    }

    /// Like [`Client::produce`]; with `retry_ambiguous`, also retries the
    /// same batch after failures that leave it unknown whether it was
    /// appended (safe only for idempotent batches, which the partition
    /// deduplicates).
    pub async fn produce_with(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: RecordBatch,
        timeout: Duration,
        retry_ambiguous: bool,
    ) -> Result<Produced, ClientError> {
        // A batch no broker can take is refused here, naming the limit,
        // rather than by the transport.
        let size = batch.records.len() + BATCH_OVERHEAD_BYTES;
        if size > MAX_MESSAGE_BYTES_LIMIT as usize {
            return Err(ClientError::invalid(format!(
                "record batch of about {size} bytes is over the largest max.message.bytes a broker accepts \
                 ({MAX_MESSAGE_BYTES_LIMIT} bytes)"
            )));
        }
        let proto = batch_to_proto(&batch);
        let key = (topic.to_string(), partition);
        let mut i = partition as usize;
        let mut route = Route::new("produce", timeout);
        loop {
            let cached = self.leaders.get(&key);
            let addr = cached.clone().unwrap_or_else(|| {
                i += 1;
                self.bootstrap_pick(i)
            });
            let req = v1::ProduceRequest {
                topic: topic.into(),
                partition,
                acks: acks.to_proto() as i32,
                batch: Some(proto.clone()),
                timeout_ms: 5_000,
            };
            let r = match self.channel_to(&addr) {
                Ok(ch) => BrokerClient::new(ch)
                    .max_decoding_message_size(API_MESSAGE_LIMIT)
                    .produce(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(ClientError::from),
                Err(e) => Err(e),
            };
            let e = match r {
                Ok(v) => {
                    if cached.is_none() {
                        self.leaders.insert(key, addr);
                    }
                    return Ok(v.into());
                }
                Err(e) => e,
            };
            self.leaders.remove(&key);
            // A refused connection sent nothing: safe to retry elsewhere.
            let may_retry = e.not_sent() || (retry_ambiguous && e.is_retriable());
            if !may_retry {
                return Err(e);
            }
            if let Some(hint) = route.after(self, &addr, e).await? {
                self.leaders.insert(key.clone(), hint);
            }
        }
    }

    /// One fetch from the partition's leader (found through the leader
    /// cache, hints and the bootstrap list), waiting up to `max_wait` for
    /// records at `offset`. Returns the records at or after `offset` and the
    /// partition's bounds.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        timeout: Duration,
    ) -> Result<(Vec<FetchedRecord>, FetchInfo), ClientError> {
        let key = (topic.to_string(), partition);
        let mut i = partition as usize;
        let mut route = Route::new("fetch", timeout);
        loop {
            let cached = self.leaders.get(&key);
            let addr = cached.clone().unwrap_or_else(|| {
                i += 1;
                self.bootstrap_pick(i)
            });
            let req = v1::FetchRequest {
                topic: topic.into(),
                partition,
                offset: offset as i64,
                max_bytes: 1 << 20,
                max_wait_ms: max_wait.as_millis() as u32,
                min_bytes: 0,
            };
            let r = match self.channel_to(&addr) {
                Ok(ch) => BrokerClient::new(ch)
                    .max_decoding_message_size(API_MESSAGE_LIMIT)
                    .fetch(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(ClientError::from),
                Err(e) => Err(e),
            };
            let e = match r {
                Ok(resp) => {
                    if cached.is_none() {
                        self.leaders.insert(key, addr);
                    }
                    let mut out = Vec::new();
                    for b in &resp.batches {
                        out.extend(decode_proto(b)?.into_iter().filter(|rec| rec.offset >= offset));
                    }
                    let info = FetchInfo {
                        high_watermark: resp.high_watermark.max(0) as u64,
                        log_start: resp.log_start_offset.max(0) as u64,
                    };
                    return Ok((out, info));
                }
                Err(e) => e,
            };
            self.leaders.remove(&key);
            if !e.is_retriable() {
                return Err(e);
            }
            if let Some(hint) = route.after(self, &addr, e).await? {
                self.leaders.insert(key.clone(), hint);
            }
        }
    }

    /// Fetches from `addr`'s replica of `topic`/`partition`, from `from` up
    /// to its high watermark. Returns the records and the high watermark.
    pub async fn fetch_all_from(
        &self,
        addr: &str,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> Result<(Vec<FetchedRecord>, u64), ClientError> {
        let mut c = BrokerClient::new(self.channel_to(addr)?).max_decoding_message_size(API_MESSAGE_LIMIT);
        let mut out: Vec<FetchedRecord> = Vec::new();
        let mut offset = from;
        loop {
            let r = c
                .fetch(v1::FetchRequest {
                    topic: topic.into(),
                    partition,
                    offset: offset as i64,
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                    min_bytes: 0,
                })
                .await?
                .into_inner();
            let hw = r.high_watermark as u64;
            for b in &r.batches {
                out.extend(decode_proto(b)?.into_iter().filter(|rec| rec.offset >= offset));
            }
            offset = out.last().map(|r| r.offset + 1).unwrap_or(offset);
            if r.batches.is_empty() || offset >= hw {
                return Ok((out, hw));
            }
        }
    }
}

/// Raw gRPC access for tools (the `ferrolog` CLI, tests): channels and
/// calls on the metadata leader with the generated clients. Not part of the
/// stable API; enabled by the `grpc` cargo feature.
#[cfg(feature = "grpc")]
impl Client {
    /// A (shared, lazily connecting) channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        self.channel_to(addr)
    }

    /// Runs an admin call on the metadata leader, following hints, skipping
    /// unreachable brokers and retrying unavailability until `timeout`.
    pub async fn admin<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.admin_call("admin", timeout, call).await
    }

    /// Runs `call` on the group coordinator (the metadata leader), as
    /// [`Client::admin`] does.
    pub async fn on_coordinator<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_meta_leader("group", timeout, call).await
    }
}
