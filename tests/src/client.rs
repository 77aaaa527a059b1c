//! A small gRPC client for tests: finds leaders by following NOT_LEADER
//! hints, builds and decodes record batches. (The product's client library
//! comes with the client issue; this one is deliberately minimal.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use ferrolog_proto::errors::leader_hint;
use ferrolog_proto::v1;
use ferrolog_proto::v1::admin_client::AdminClient;
use ferrolog_proto::v1::broker_client::BrokerClient;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use prost::Message;
use tonic::Code;
use tonic::Status;
use tonic::transport::Channel;

/// Builds a sealed, uncompressed batch of `values` (no keys).
pub fn make_batch(values: &[Vec<u8>]) -> v1::RecordBatch {
    let now = 1_700_000_000_000i64;
    let list = v1::RecordList {
        records: values
            .iter()
            .enumerate()
            .map(|(i, v)| v1::Record {
                key: None,
                value: v.clone().into(),
                headers: vec![],
                timestamp_ms: now,
                offset_delta: i as u32,
            })
            .collect(),
    };
    let records = bytes::Bytes::from(list.encode_to_vec());
    let b = Batch::seal(BatchHeader::plain(values.len() as u32, now), records);
    v1::RecordBatch {
        base_offset: 0,
        producer_id: b.header.producer_id,
        producer_epoch: b.header.producer_epoch,
        base_sequence: b.header.base_sequence,
        record_count: b.header.record_count,
        compression: 0,
        first_timestamp_ms: now,
        max_timestamp_ms: now,
        records: b.records,
        crc32c: b.crc32c,
    }
}

/// `(offset, value)` of every record in a fetched batch, after checking
/// the batch's CRC32C end to end.
pub fn decode_batch(b: &v1::RecordBatch) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let header = BatchHeader {
        producer_id: b.producer_id,
        producer_epoch: b.producer_epoch,
        base_sequence: b.base_sequence,
        record_count: b.record_count,
        compression: b.compression as u32,
        first_timestamp_ms: b.first_timestamp_ms,
        max_timestamp_ms: b.max_timestamp_ms,
    };
    Batch { header, records: b.records.clone(), crc32c: b.crc32c }.verify()?;
    let list = v1::RecordList::decode(b.records.as_ref())?;
    Ok(list.records.into_iter().map(|r| (b.base_offset as u64 + u64::from(r.offset_delta), r.value.to_vec())).collect())
}

/// Talks to a cluster through any of its brokers.
#[derive(Debug)]
pub struct TestClient {
    addrs: Vec<String>,
    leaders: Mutex<HashMap<(String, u32), String>>,
}

fn retriable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

impl TestClient {
    /// A client bootstrapping from `addrs`.
    pub fn new(addrs: Vec<String>) -> Self {
        TestClient { addrs, leaders: Mutex::new(HashMap::new()) }
    }

    async fn channel(addr: &str) -> Result<Channel, Status> {
        Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("connect {addr}: {e}")))
    }

    /// Runs an admin call on the metadata leader, following hints and
    /// retrying unavailability until `timeout`.
    pub async fn admin<T, F, Fut>(&self, timeout: Duration, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        let mut next: Option<String> = None;
        loop {
            let addr = next.take().unwrap_or_else(|| self.addrs[i % self.addrs.len()].clone());
            i += 1;
            let r = match Self::channel(&addr).await {
                Ok(ch) => call(AdminClient::new(ch)).await.map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(s) if retriable(&s) && Instant::now() < deadline => {
                    next = leader_hint(&s).and_then(|h| h.leader_address);
                    if next.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
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

    /// Waits until every partition of `topic` has a leader; returns them.
    pub async fn wait_leaders(&self, topic: &str, timeout: Duration) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self
                .admin(timeout, |mut c| {
                    let name = topic.to_string();
                    async move { c.describe_topic(v1::DescribeTopicRequest { name }).await }
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
            let leaders: Vec<u64> = d.partitions.iter().map(|p| p.leader_id).collect();
            if !leaders.is_empty() && leaders.iter().all(|l| *l != 0) {
                return Ok(leaders);
            }
            if Instant::now() > deadline {
                bail!("partitions of {topic} have no leader after {timeout:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One produce attempt per broker hop, following NOT_LEADER hints and
    /// retrying *only* errors that say nothing was written (not leader,
    /// unreachable), until `timeout`. Ambiguous failures are returned.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: v1::Acks,
        values: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<v1::ProduceResponse, Status> {
        let deadline = Instant::now() + timeout;
        let key = (topic.to_string(), partition);
        let mut i = partition as usize;
        loop {
            let cached = self.leaders.lock().expect("lock").get(&key).cloned();
            let addr = cached.unwrap_or_else(|| {
                i += 1;
                self.addrs[i % self.addrs.len()].clone()
            });
            let req = v1::ProduceRequest {
                topic: topic.into(),
                partition,
                acks: acks as i32,
                batch: Some(make_batch(values)),
                timeout_ms: 5_000,
            };
            let r = match Self::channel(&addr).await {
                Ok(ch) => BrokerClient::new(ch).produce(req).await.map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(s) => {
                    self.leaders.lock().expect("lock").remove(&key);
                    let hint = leader_hint(&s);
                    // Unknown topic right after creation: this broker's
                    // metadata replica lags; nothing was written.
                    let nothing_written =
                        hint.is_some() || s.message().starts_with("connect ") || s.code() == Code::NotFound;
                    if !nothing_written || Instant::now() > deadline {
                        return Err(s);
                    }
                    match hint.and_then(|h| h.leader_address) {
                        Some(a) if a != addr => {
                            self.leaders.lock().expect("lock").insert(key.clone(), a);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }
    }

    /// Fetches `topic`/`partition` from `from` up to the high watermark,
    /// from whichever broker answers (each broker's replica serves what it
    /// knows is committed).
    pub async fn fetch_from(
        &self,
        addr: &str,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, u64)> {
        let mut c = BrokerClient::new(Self::channel(addr).await?);
        let mut out = Vec::new();
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
                for (o, v) in decode_batch(b)? {
                    if o >= offset {
                        out.push((o, v));
                    }
                }
            }
            offset = out.last().map(|(o, _)| o + 1).unwrap_or(offset);
            if r.batches.is_empty() || offset >= hw {
                return Ok((out, hw));
            }
        }
    }
}
