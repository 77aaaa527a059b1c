//! The Rust client of Ferrolog (first cut): bootstrap from any broker list,
//! route produce requests to partition leaders by following `NOT_LEADER`
//! hints, build and check record batches, fetch, and admin calls.
//!
//! [`IdempotentProducer`] adds producer ids, epochs and sequence numbers:
//! retries (of any failure, ambiguous ones included) never duplicate or
//! reorder.
//!
//! [`Consumer`] reads with a consumer group (server-side assignment) or
//! without one.
//!
//! Not here yet (see the client issue): producer batching with linger,
//! compression.

#![warn(missing_docs)]

mod batching;
mod consumer;
pub mod partitioner;
mod producer;
pub use batching::Delivered;
pub use batching::Delivery;
pub use batching::Producer;
pub use batching::ProducerConfig;
pub use consumer::ConsumedRecord;
pub use consumer::Consumer;
pub use consumer::ConsumerConfig;
pub use consumer::Event;
pub use consumer::OffsetReset;
pub use partitioner::partition_for_key;
pub use producer::IdempotentProducer;
pub use producer::MAX_IN_FLIGHT;

use ferrolog_types::limits::API_MESSAGE_LIMIT;
use ferrolog_types::limits::MAX_MESSAGE_BYTES_LIMIT;

/// A batch's fields besides its records, as the broker counts its size.
const BATCH_OVERHEAD_BYTES: usize = 64;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use ferrolog_proto::errors::leader_hint;
use ferrolog_proto::v1;
use ferrolog_proto::v1::admin_client::AdminClient;
use ferrolog_proto::v1::broker_client::BrokerClient;
use ferrolog_proto::v1::producers_client::ProducersClient;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use prost::Message;
use tonic::Code;
use tonic::Status;
use tonic::transport::Channel;

/// Connect timeout to one broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Per-request timeout on the wire.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// A fetched batch failed its checksum or could not be decoded.
    #[error("corrupt batch at offset {offset}: {detail}")]
    Corrupt {
        /// Base offset of the batch.
        offset: i64,
        /// What was wrong.
        detail: String,
    },
}

/// Builds a sealed, uncompressed batch of `(key, value)` records.
pub fn make_batch(records: &[(Option<Vec<u8>>, Vec<u8>)], timestamp_ms: i64) -> v1::RecordBatch {
    make_uncompressed(records, timestamp_ms)
}

/// Builds a sealed batch, its records compressed per `compression` (LZ4:
/// the block format with the uncompressed size prepended, `lz4_flex`).
pub fn make_batch_with(
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    timestamp_ms: i64,
    compression: v1::Compression,
) -> Result<v1::RecordBatch, ClientError> {
    let mut b = make_uncompressed(records, timestamp_ms);
    match compression {
        v1::Compression::None => Ok(b),
        v1::Compression::Lz4 => {
            b.records = bytes::Bytes::from(lz4_flex::compress_prepend_size(&b.records));
            b.compression = v1::Compression::Lz4 as i32;
            let (id, epoch, seq) = (b.producer_id, b.producer_epoch, b.base_sequence);
            set_producer(&mut b, id, epoch, seq);
            Ok(b)
        }
        v1::Compression::Zstd => {
            Err(ClientError::Corrupt { offset: -1, detail: "zstd compression is not supported by this client".into() })
        }
    }
}

fn make_uncompressed(records: &[(Option<Vec<u8>>, Vec<u8>)], timestamp_ms: i64) -> v1::RecordBatch {
    let list = v1::RecordList {
        records: records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| v1::Record {
                key: k.clone().map(Into::into),
                value: v.clone().into(),
                headers: vec![],
                timestamp_ms,
                offset_delta: i as u32,
            })
            .collect(),
    };
    let b =
        Batch::seal(BatchHeader::plain(records.len() as u32, timestamp_ms), bytes::Bytes::from(list.encode_to_vec()));
    v1::RecordBatch {
        base_offset: 0,
        producer_id: b.header.producer_id,
        producer_epoch: b.header.producer_epoch,
        base_sequence: b.header.base_sequence,
        record_count: b.header.record_count,
        compression: 0,
        first_timestamp_ms: timestamp_ms,
        max_timestamp_ms: timestamp_ms,
        records: b.records,
        crc32c: b.crc32c,
    }
}

/// Sets a batch's producer id, epoch and base sequence and recomputes its
/// checksum (which covers them).
pub fn set_producer(b: &mut v1::RecordBatch, producer_id: i64, producer_epoch: i32, base_sequence: i32) {
    let header = BatchHeader {
        producer_id,
        producer_epoch,
        base_sequence,
        record_count: b.record_count,
        compression: b.compression as u32,
        first_timestamp_ms: b.first_timestamp_ms,
        max_timestamp_ms: b.max_timestamp_ms,
    };
    let sealed = Batch::seal(header, b.records.clone());
    b.producer_id = producer_id;
    b.producer_epoch = producer_epoch;
    b.base_sequence = base_sequence;
    b.crc32c = sealed.crc32c;
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

/// Checks a fetched batch's CRC32C end to end and decodes its records.
pub fn decode_batch(b: &v1::RecordBatch) -> Result<Vec<FetchedRecord>, ClientError> {
    let header = BatchHeader {
        producer_id: b.producer_id,
        producer_epoch: b.producer_epoch,
        base_sequence: b.base_sequence,
        record_count: b.record_count,
        compression: b.compression as u32,
        first_timestamp_ms: b.first_timestamp_ms,
        max_timestamp_ms: b.max_timestamp_ms,
    };
    let corrupt = |detail: String| ClientError::Corrupt { offset: b.base_offset, detail };
    Batch { header, records: b.records.clone(), crc32c: b.crc32c }.verify().map_err(|e| corrupt(e.to_string()))?;
    let plain;
    let bytes: &[u8] = match v1::Compression::try_from(b.compression) {
        Ok(v1::Compression::None) => b.records.as_ref(),
        Ok(v1::Compression::Lz4) => {
            plain = lz4_flex::decompress_size_prepended(&b.records).map_err(|e| corrupt(format!("lz4: {e}")))?;
            &plain
        }
        _ => return Err(corrupt(format!("compression {} is not supported by this client", b.compression))),
    };
    let list = v1::RecordList::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(list
        .records
        .into_iter()
        .map(|r| FetchedRecord {
            offset: b.base_offset as u64 + u64::from(r.offset_delta),
            key: r.key.map(|k| k.to_vec()),
            value: r.value.to_vec(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect())
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
}

fn retriable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

impl Client {
    /// A client bootstrapping from `brokers` (`host:port`).
    pub fn new(brokers: Vec<String>) -> Self {
        Client { bootstrap: brokers, channels: Mutex::new(HashMap::new()), leaders: LeaderCache::default() }
    }

    /// The broker addresses this client bootstraps from.
    pub fn brokers(&self) -> &[String] {
        &self.bootstrap
    }

    /// A (shared, lazily connecting) channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().expect("channel map lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad broker address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Runs an admin call on the metadata leader, following hints and
    /// retrying unavailability until `timeout`.
    pub async fn admin<T, F, Fut>(&self, timeout: Duration, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_meta_leader(timeout, |ch| call(AdminClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT))).await
    }

    /// Allocates an idempotent producer id and epoch (through the metadata
    /// Raft group). With a name, the same name keeps its id and gets a higher
    /// epoch, which fences the previous instance.
    pub async fn init_producer(&self, name: Option<&str>) -> Result<(i64, i32), Status> {
        let req = v1::InitProducerRequest { producer_name: name.map(String::from) };
        let r = self
            .on_meta_leader(Duration::from_secs(20), |ch| {
                let req = req.clone();
                async move { ProducersClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).init_producer(req).await }
            })
            .await?;
        Ok((r.producer_id, r.producer_epoch))
    }

    /// Runs `call` on the group coordinator (the metadata leader),
    /// following hints and retrying unavailability until `timeout`.
    pub async fn on_coordinator<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_meta_leader(timeout, call).await
    }

    /// Runs `call` on the metadata leader, following hints and retrying
    /// unavailability until `timeout`.
    pub(crate) async fn on_meta_leader<T, F, Fut>(&self, timeout: Duration, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        let mut next: Option<String> = None;
        let mut backoff = Backoff::new();
        loop {
            let addr = next.take().unwrap_or_else(|| self.bootstrap[i % self.bootstrap.len()].clone());
            i += 1;
            let r = match self.channel(&addr) {
                Ok(ch) => call(ch).await.map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(s) if retriable(&s) && Instant::now() < deadline => {
                    next = leader_hint(&s).and_then(|h| h.leader_address);
                    if next.is_none() {
                        backoff.wait().await;
                    }
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// Creates a topic.
    pub async fn create_topic(&self, name: &str, partitions: u32, rf: u32) -> Result<v1::TopicDescription, Status> {
        let req = v1::CreateTopicRequest { name: name.into(), partitions, replication_factor: rf, config: None };
        self.admin(Duration::from_secs(20), |mut c| {
            let req = req.clone();
            async move { c.create_topic(req).await }
        })
        .await
        .map(|r| r.topic.unwrap_or_default())
    }

    /// Describes a topic, waiting up to `timeout` for every partition to
    /// have a leader (and for brokers to learn of a just-created topic).
    pub async fn wait_leaders(&self, topic: &str, timeout: Duration) -> Result<v1::TopicDescription, Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self
                .admin(timeout, |mut c| {
                    let name = topic.to_string();
                    async move {
                        c.describe_topic(v1::DescribeTopicRequest { name, local_only: false, replica_lag: false }).await
                    }
                })
                .await;
            // A broker whose metadata replica has not applied the creation
            // yet does not know the topic: retriable, as in Kafka.
            let d = match d {
                Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => other?,
            };
            if !d.partitions.is_empty() && d.partitions.iter().all(|p| p.leader_id != 0) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(Status::unavailable(format!("partitions of {topic} have no leader after {timeout:?}")));
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
        acks: v1::Acks,
        batch: v1::RecordBatch,
        timeout: Duration,
    ) -> Result<v1::ProduceResponse, Status> {
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
        acks: v1::Acks,
        batch: v1::RecordBatch,
        timeout: Duration,
        retry_ambiguous: bool,
    ) -> Result<v1::ProduceResponse, Status> {
        // A batch no broker can take is refused here, naming the limit,
        // rather than by the transport.
        let size = batch.records.len() + BATCH_OVERHEAD_BYTES;
        if size > MAX_MESSAGE_BYTES_LIMIT as usize {
            return Err(Status::invalid_argument(format!(
                "record batch of about {size} bytes is over the largest max.message.bytes a broker accepts \
                 ({MAX_MESSAGE_BYTES_LIMIT} bytes)"
            )));
        }
        let deadline = Instant::now() + timeout;
        let key = (topic.to_string(), partition);
        let mut i = partition as usize;
        let mut backoff = Backoff::new();
        loop {
            let cached = self.leaders.get(&key);
            let addr = cached.clone().unwrap_or_else(|| {
                i += 1;
                self.bootstrap[i % self.bootstrap.len()].clone()
            });
            let req = v1::ProduceRequest {
                topic: topic.into(),
                partition,
                acks: acks as i32,
                batch: Some(batch.clone()),
                timeout_ms: 5_000,
            };
            let r = match self.channel(&addr) {
                Ok(ch) => BrokerClient::new(ch)
                    .max_decoding_message_size(API_MESSAGE_LIMIT)
                    .produce(req)
                    .await
                    .map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => {
                    if cached.is_none() {
                        self.leaders.insert(key, addr);
                    }
                    return Ok(v);
                }
                Err(s) => {
                    self.leaders.remove(&key);
                    let hint = leader_hint(&s);
                    // A refused connection sent nothing: safe to retry elsewhere.
                    let unconnected = s.code() == Code::Unavailable && s.message().contains("connect error");
                    let nothing_written = hint.is_some() || unconnected || s.code() == Code::NotFound;
                    let may_retry = nothing_written || (retry_ambiguous && retriable(&s));
                    if !may_retry || Instant::now() > deadline {
                        return Err(s);
                    }
                    match hint.and_then(|h| h.leader_address) {
                        Some(a) if a != addr => {
                            self.leaders.insert(key.clone(), a);
                        }
                        _ => backoff.wait().await,
                    }
                }
            }
        }
    }

    /// One fetch from the partition's leader (found through the leader
    /// cache, hints and the bootstrap list), waiting up to `max_wait` for
    /// records at `offset`. Returns the records at or after `offset` and the
    /// response (high watermark, log start).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        timeout: Duration,
    ) -> Result<(Vec<FetchedRecord>, v1::FetchResponse), ClientError> {
        let deadline = Instant::now() + timeout;
        let key = (topic.to_string(), partition);
        let mut i = partition as usize;
        let mut backoff = Backoff::new();
        loop {
            let cached = self.leaders.get(&key);
            let addr = cached.clone().unwrap_or_else(|| {
                i += 1;
                self.bootstrap[i % self.bootstrap.len()].clone()
            });
            let req = v1::FetchRequest {
                topic: topic.into(),
                partition,
                offset: offset as i64,
                max_bytes: 1 << 20,
                max_wait_ms: max_wait.as_millis() as u32,
                min_bytes: 0,
            };
            let r = match self.channel(&addr) {
                Ok(ch) => BrokerClient::new(ch)
                    .max_decoding_message_size(API_MESSAGE_LIMIT)
                    .fetch(req)
                    .await
                    .map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match r {
                Ok(resp) => {
                    if cached.is_none() {
                        self.leaders.insert(key, addr);
                    }
                    let mut out = Vec::new();
                    for b in &resp.batches {
                        out.extend(decode_batch(b)?.into_iter().filter(|rec| rec.offset >= offset));
                    }
                    return Ok((out, resp));
                }
                Err(s) => {
                    self.leaders.remove(&key);
                    let hint = leader_hint(&s);
                    let again = hint.is_some() || retriable(&s) || s.code() == Code::NotFound;
                    if !again || Instant::now() > deadline {
                        return Err(s.into());
                    }
                    match hint.and_then(|h| h.leader_address) {
                        Some(a) if a != addr => {
                            self.leaders.insert(key.clone(), a);
                        }
                        _ => backoff.wait().await,
                    }
                }
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
        let mut c = BrokerClient::new(self.channel(addr)?).max_decoding_message_size(API_MESSAGE_LIMIT);
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
                out.extend(decode_batch(b)?.into_iter().filter(|rec| rec.offset >= offset));
            }
            offset = out.last().map(|r| r.offset + 1).unwrap_or(offset);
            if r.batches.is_empty() || offset >= hw {
                return Ok((out, hw));
            }
        }
    }
}
