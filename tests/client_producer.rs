//! The batching producer (`ferrolog_client::Producer`) on real brokers:
//! linger batching, LZ4 compression stored as sent and decoded by the
//! consumer, Kafka-compatible keyed partitioning, per-key order, idempotence,
//! and backpressure from a small buffer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ferrolog_client::Client;
use ferrolog_client::Producer;
use ferrolog_client::ProducerConfig;
use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;

const START: Duration = Duration::from_secs(60);

/// Every raw batch of a partition, from its leader (as stored: the raw
/// gRPC fetch, to see each batch's compression).
async fn raw_batches(
    cluster: &Cluster,
    tc: &TestClient,
    topic: &str,
    partition: u32,
) -> anyhow::Result<Vec<v1::RecordBatch>> {
    let leader = tc.wait_leaders(topic, START).await?[partition as usize];
    let addr = cluster.node(leader).addr.clone();
    let mut out = Vec::new();
    let mut offset = 0i64;
    loop {
        let r = ferrolog_tests::client::fetch_replica(&addr, topic, partition, offset).await?;
        for b in r.batches {
            offset = b.base_offset + i64::from(b.record_count);
            out.push(b);
        }
        if offset >= r.high_watermark {
            return Ok(out);
        }
    }
}

/// A stored batch as the client decodes it.
fn decode(b: &v1::RecordBatch) -> anyhow::Result<Vec<ferrolog_client::FetchedRecord>> {
    let (base, batch) = ferrolog_proto::batch::from_proto(b.clone())?;
    Ok(ferrolog_client::decode_batch(base.unwrap_or(0), &batch)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_compression_keys_order_and_backpressure() -> anyhow::Result<()> {
    // A stuck producer must fail the test, not hang it.
    tokio::time::timeout(Duration::from_secs(180), scenario()).await?
}

async fn scenario() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let tc = TestClient::new(cluster.addrs());
    tc.create_topic("batched", 4, 3).await?;
    tc.wait_leaders("batched", START).await?;
    let client = Arc::new(Client::new(cluster.addrs()));

    // Keyed, LZ4, idempotent, lingering.
    let config = ProducerConfig {
        linger: Duration::from_millis(20),
        batch_bytes: 16 << 10,
        compression: ferrolog_client::Compression::Lz4,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await?;
    let mut deliveries = Vec::new();
    for i in 0..2000u32 {
        let key = format!("k{}", i % 50).into_bytes();
        let value = format!("k{}-{i:05}-{}", i % 50, "payload ".repeat(8)).into_bytes();
        deliveries.push((key.clone(), producer.send("batched", Some(key), value, None).await?));
    }
    producer.flush().await;
    for (key, d) in deliveries {
        let d = d.wait().await?;
        ensure!(d.offset.is_some(), "acknowledged with an offset");
        ensure!(d.partition == ferrolog_client::partition_for_key(&key, 4), "murmur2 partition for the key");
    }
    let mut total = 0;
    let mut batches = 0;
    for p in 0..4 {
        let raw = raw_batches(&cluster, &tc, "batched", p).await?;
        ensure!(raw.iter().all(|b| b.compression == v1::Compression::Lz4 as i32), "stored as sent (LZ4)");
        batches += raw.len();
        let mut last_per_key: BTreeMap<String, String> = BTreeMap::new();
        for b in &raw {
            for r in decode(b)? {
                total += 1;
                let v = String::from_utf8(r.value)?;
                let key = v.split('-').next().unwrap_or_default().to_string();
                if let Some(prev) = last_per_key.insert(key.clone(), v.clone()) {
                    ensure!(prev < v, "key {key}: {prev} then {v} (order per key)");
                }
            }
        }
    }
    ensure!(total == 2000, "{total} records stored for 2000 sent (no duplicates, none lost)");
    ensure!(batches * 10 <= 2000, "{batches} batches for 2000 records: lingering must batch");
    eprintln!("2000 keyed records in {batches} LZ4 batches");

    // Backpressure: a 4 KiB buffer, 500 records of ~100 bytes, acks=1,
    // no idempotence, unkeyed (sticky partitions).
    let config = ProducerConfig {
        acks: ferrolog_client::Acks::Leader,
        idempotence: false,
        buffer_bytes: 4 << 10,
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let small = Producer::new(client.clone(), config).await?;
    let mut deliveries = Vec::new();
    for i in 0..500u32 {
        deliveries.push(small.send("batched", None, format!("bp-{i:04}-{}", "x".repeat(80)).into_bytes(), None).await?);
    }
    small.flush().await;
    let mut ok = 0;
    for d in deliveries {
        d.wait().await?;
        ok += 1;
    }
    ensure!(ok == 500, "every record acknowledged through a buffer smaller than the data");
    let big = small.send("batched", None, vec![0u8; 8 << 10], None).await;
    ensure!(big.is_err(), "a record larger than the buffer is refused, not stuck");
    Ok(())
}
