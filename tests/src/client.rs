//! Test conveniences over [`ferrolog_client::Client`]: values-only batches
//! and `(offset, value)` results.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use ferrolog_client::Acks;
use ferrolog_client::Client;
use ferrolog_client::ClientError;
use ferrolog_client::IdempotentProducer;
use ferrolog_client::Produced;
use ferrolog_client::RecordBatch;
use ferrolog_client::TopicInfo;
use ferrolog_proto::v1;

/// A serving cluster of `brokers` brokers with one topic created and led:
/// the cluster, a client of every broker, and each partition's leader.
pub async fn cluster_with_topic(
    brokers: usize,
    topic: &str,
    partitions: u32,
    replication_factor: u32,
    timeout: Duration,
) -> anyhow::Result<(crate::cluster::Cluster, TestClient, Vec<u64>)> {
    let mut cluster = crate::cluster::Cluster::start(brokers)?;
    cluster.wait_serving(timeout).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic(topic, partitions, replication_factor).await?;
    let leaders = client.wait_leaders(topic, timeout).await?;
    Ok((cluster, client, leaders))
}

/// A batch of `values` without keys.
pub fn make_batch(values: &[Vec<u8>]) -> RecordBatch {
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = values.iter().map(|v| (None, v.clone())).collect();
    ferrolog_client::make_batch(&records, 1_700_000_000_000)
}

/// The same batch as the wire carries it, for tests that send raw (and
/// broken) requests.
pub fn make_proto_batch(values: &[Vec<u8>]) -> v1::RecordBatch {
    ferrolog_proto::batch::to_proto(0, &make_batch(values))
}

/// A client for tests.
#[derive(Debug)]
pub struct TestClient {
    inner: Arc<Client>,
    /// One idempotent producer per (acks level, delivery timeout), created
    /// on first use. The timeout is the producer's own (a send is not
    /// cancel-safe: cutting it short from outside would leave a sequence gap).
    producers: tokio::sync::Mutex<HashMap<(u8, Duration), Arc<IdempotentProducer>>>,
}

impl TestClient {
    /// Bootstraps from `addrs`.
    pub fn new(addrs: Vec<String>) -> Self {
        TestClient { inner: Arc::new(Client::new(addrs)), producers: Default::default() }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.inner
    }

    /// The underlying client, shared (for spawned tasks).
    pub fn shared(&self) -> Arc<Client> {
        self.inner.clone()
    }

    /// See [`Client::admin`].
    pub async fn admin<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: FnMut(v1::admin_client::AdminClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.inner.admin(timeout, call).await
    }

    /// See [`Client::create_topic`].
    pub async fn create_topic(&self, name: &str, partitions: u32, rf: u32) -> Result<TopicInfo, ClientError> {
        self.inner.create_topic(name, partitions, rf).await
    }

    /// Creates a one-partition topic with three replicas and `config`.
    pub async fn create_with_config(
        &self,
        name: &str,
        config: v1::TopicConfig,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let req =
            v1::CreateTopicRequest { name: name.into(), partitions: 1, replication_factor: 3, config: Some(config) };
        self.admin(timeout, |mut c| {
            let req = req.clone();
            async move { c.create_topic(req).await }
        })
        .await?;
        Ok(())
    }

    /// The leader of every partition, once each has one.
    pub async fn wait_leaders(&self, topic: &str, timeout: Duration) -> anyhow::Result<Vec<u64>> {
        let d = self.inner.wait_leaders(topic, timeout).await?;
        Ok(d.partitions.iter().map(|p| p.leader.unwrap_or(0)).collect())
    }

    /// Produces `values` as one batch. With acks=all or acks=1 through an
    /// idempotent producer, so that a transient transport error (the outcome
    /// unknown) is retried without risking a duplicate; with acks=0 as a
    /// plain batch (see [`Client::produce`]).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        values: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<Produced, ClientError> {
        if acks == Acks::None {
            return self.inner.produce(topic, partition, acks, make_batch(values), timeout).await;
        }
        let producer = {
            let mut map = self.producers.lock().await;
            match map.get(&(acks as u8, timeout)) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(IdempotentProducer::new(self.inner.clone(), None, acks, timeout).await?);
                    map.insert((acks as u8, timeout), p.clone());
                    p
                }
            }
        };
        let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = values.iter().map(|v| (None, v.clone())).collect();
        producer.send(topic, partition, &records).await
    }

    /// `(offset, value)` of every record from `from` to the high watermark
    /// on `addr`'s replica, and that high watermark.
    pub async fn fetch_from(
        &self,
        addr: &str,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, u64)> {
        let (records, hw) = self.inner.fetch_all_from(addr, topic, partition, from).await?;
        Ok((records.into_iter().map(|r| (r.offset, r.value)).collect(), hw))
    }
}

/// One fetch (no wait, up to 1 MiB) of `topic`/`partition` at `offset` from
/// the replica at `addr`, whatever its role.
pub async fn fetch_replica(
    addr: &str,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<v1::FetchResponse, tonic::Status> {
    let mut c = v1::broker_client::BrokerClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.fetch(v1::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
        min_bytes: 0,
    })
    .await
    .map(|r| r.into_inner())
}
