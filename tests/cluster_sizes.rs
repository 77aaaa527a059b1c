//! Real sizes on real clusters: a follower far behind catches up (in
//! byte-bounded AppendEntries its decode limit accepts), and a follower
//! installs a snapshot of a large retained partition with bounded memory
//! (snapshots stream from the store in chunks, never built whole).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::client::make_batch;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(30);
/// SIGSTOP / SIGCONT / SIGKILL.
const STOP: i32 = 19;
const CONT: i32 = 18;

/// A batch of 4 records of 16 KiB (64 KiB of payload), tagged `i`.
fn big_batch(i: usize) -> ferrolog_client::RecordBatch {
    let values: Vec<Vec<u8>> = (0..4).map(|r| vec![((i * 4 + r) % 251) as u8; 16 << 10]).collect();
    make_batch(&values)
}

async fn create(client: &TestClient, name: &str, config: v1::TopicConfig) -> anyhow::Result<()> {
    Ok(client.create_with_config(name, config, OP).await?)
}

/// Produces `n` 64 KiB batches with acks=all, `concurrency` at a time.
async fn produce_big(client: &TestClient, topic: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, next, topic) = (client.shared(), next.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                c.produce(&topic, 0, ferrolog_client::Acks::All, big_batch(i), OP).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn describe(client: &TestClient, topic: &str) -> Result<v1::PartitionDescription, String> {
    let req = v1::DescribeTopicRequest { name: topic.into(), local_only: false, replica_lag: true };
    let d = client
        .admin(OP, |mut c| {
            let req = req.clone();
            async move { c.describe_topic(req).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    d.partitions.into_iter().next().ok_or_else(|| "no partition described".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_and_then_carries_acks_all() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    create(&client, "big", v1::TopicConfig::default()).await?;
    let leader = client.wait_leaders("big", START).await?[0];
    let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
    let (lagging, other) = (others[0], others[1]);

    // 64 MiB in 64 KiB batches while one follower is stopped: it comes back
    // ~1,000 entries (far more than 4 MiB) behind.
    cluster.signal(lagging, STOP)?;
    let batches = 1024;
    produce_big(&client, "big", batches, 4).await?;
    let described = describe(&client, "big").await.map_err(anyhow::Error::msg)?;
    let hw = described.high_watermark;
    assert_eq!(hw, batches as i64 * 4);
    // Describe tells how far behind it is, in records and in seconds (the
    // batches are stamped 1_700_000_000_000 ms: years ago).
    let r = described.replicas.iter().find(|r| r.broker_id == lagging).expect("the stopped replica");
    eprintln!("stopped follower: {} entries, {} records, {:.0} s behind", r.lag, r.lag_records, r.lag_seconds);
    assert!(r.lag > 0 && r.lag_records > 0 && r.lag_records <= hw, "{r:?}");
    assert!(r.lag_seconds > 3600.0, "{r:?}");
    cluster.signal(lagging, CONT)?;

    // It catches up: describe shows no lag on any replica.
    let t0 = std::time::Instant::now();
    eventually("the stopped follower to catch up (lag 0)", Duration::from_secs(180), || async {
        let p = describe(&client, "big").await?;
        let lag: Vec<(u64, i64)> = p.replicas.iter().map(|r| (r.broker_id, r.lag)).collect();
        if p.replicas.len() == 3 && lag.iter().all(|(_, l)| *l == 0) { Ok(()) } else { Err(format!("{lag:?}")) }
    })
    .await?;
    eprintln!("follower {lagging} caught up on 64 MiB in {:?}", t0.elapsed());

    // It serves the tail exactly as the leader does.
    let from = hw as u64 - 8;
    let (want, _) = client.fetch_from(&cluster.node(leader).addr, "big", 0, from).await?;
    let (got, _) = client.fetch_from(&cluster.node(lagging).addr, "big", 0, from).await?;
    assert_eq!(want.len(), 8);
    assert_eq!(got, want);

    // With the other follower dead, the caught-up one is the quorum.
    cluster.kill(other)?;
    let r = client.client().produce("big", 0, ferrolog_client::Acks::All, big_batch(batches), OP).await?;
    assert_eq!(r.base_offset, Some(hw as u64));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_installs_a_large_snapshot_with_bounded_memory() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    // 448 MiB produced; retention keeps the newest 320 MiB: a snapshot
    // several times the store's memtable budget.
    let keep: i64 = 320 << 20;
    create(&client, "huge", v1::TopicConfig { retention_bytes: Some(keep), ..Default::default() }).await?;
    let leader = client.wait_leaders("huge", START).await?[0];
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower)?;
    let batches = 7168;
    produce_big(&client, "huge", batches, 4).await?;
    let hw = batches as i64 * 4;

    // The leader trims, snapshots and purges its log behind the trim.
    let p = eventually("retention to trim the partition", OP, || async {
        let p = describe(&client, "huge").await?;
        if p.log_start_offset > 0 { Ok(p) } else { Err(format!("log start {}", p.log_start_offset)) }
    })
    .await?;
    let retained = (hw - p.log_start_offset) as u64 * (16 << 10);
    eprintln!("retained {} MiB of {} MiB produced", retained >> 20, (hw as u64 * (16 << 10)) >> 20);
    assert!(retained >= 300 << 20, "retention kept {retained} bytes");
    eventually("the leader to purge its Raft log", OP, || async {
        let m = ferrolog_tests::cluster::scrape(&cluster.node(leader).metrics_addr).map_err(|e| e.to_string())?;
        let purged = ferrolog_tests::cluster::sample(&m, "ferrolog_raft_purged_entries").unwrap_or(0.0);
        if purged > 0.0 { Ok(()) } else { Err("nothing purged".into()) }
    })
    .await?;

    // The follower can only catch up by snapshot; its memory is sampled
    // while it installs one of ~320 MiB.
    cluster.restart(follower)?;
    cluster.wait_serving(START).await?;
    let base_rss = cluster.rss_bytes(follower)?;
    let mut peak = base_rss;
    let follower_addr = cluster.node(follower).addr.clone();
    let t0 = std::time::Instant::now();
    let metrics_addr = cluster.node(follower).metrics_addr.clone();
    let mut memtables_peak = 0.0f64;
    let base_anon = cluster.status_bytes(follower, "RssAnon")?;
    let mut anon_peak = base_anon;
    loop {
        // A failed read means the follower's process exited: say why.
        let died = || format!("follower {follower} exited while catching up; its log:\n{}", cluster.log_tail(follower));
        peak = peak.max(cluster.rss_bytes(follower).with_context(died)?);
        anon_peak = anon_peak.max(cluster.status_bytes(follower, "RssAnon").with_context(died)?);
        if let Ok(m) = ferrolog_tests::cluster::scrape(&metrics_addr) {
            memtables_peak = memtables_peak
                .max(ferrolog_tests::cluster::sample(&m, "ferrolog_rocksdb_memtable_bytes").unwrap_or(0.0));
        }
        let caught_up = ferrolog_tests::client::fetch_replica(&follower_addr, "huge", 0, hw - 1)
            .await
            .map(|r| r.high_watermark == hw)
            .unwrap_or(false);
        if caught_up {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "follower {follower} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "snapshot of {} MiB installed in {:?}: follower RSS {} MiB before, {} MiB peak (anonymous {} -> {} MiB); memtables {} MiB peak",
        retained >> 20,
        t0.elapsed(),
        base_rss >> 20,
        peak >> 20,
        base_anon >> 20,
        anon_peak >> 20,
        memtables_peak as u64 >> 20
    );
    assert!(cluster.log_contains(follower, "installed snapshot"), "caught up without a snapshot?");
    // Bounded by the store's memtables (a 64 MiB budget it flushes at, a
    // 128 MiB hard limit), the chunks in flight and allocator slack
    // (measured: 5-12 MiB beyond the memtables), not by the snapshot: a
    // constant well under its size.
    let (budget, limit) =
        (ferrolog_storage::MEMTABLE_BUDGET_BYTES as u64, ferrolog_storage::MEMTABLE_LIMIT_BYTES as u64);
    assert!(
        (memtables_peak as u64) <= limit,
        "memtables reached {} MiB, over the store's {} MiB limit",
        memtables_peak as u64 >> 20,
        limit >> 20
    );
    assert!(
        peak < base_rss + budget + (48 << 20) && peak < base_rss + retained / 3,
        "RSS grew from {} MiB to {} MiB installing a {} MiB snapshot",
        base_rss >> 20,
        peak >> 20,
        retained >> 20
    );
    // And it serves the retained data as the leader does.
    let (want, _) = client.fetch_from(&cluster.node(leader).addr, "huge", 0, hw as u64 - 16).await?;
    let (got, _) = client.fetch_from(&follower_addr, "huge", 0, hw as u64 - 16).await?;
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits_agree_and_are_clear_errors() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());

    // A topic may not ask for more than the broker can decode.
    let req = v1::CreateTopicRequest {
        name: "huge-messages".into(),
        partitions: 1,
        replication_factor: 3,
        config: Some(v1::TopicConfig { max_message_bytes: Some(64 << 20), ..Default::default() }),
    };
    let err = client
        .admin(OP, |mut c| {
            let req = req.clone();
            async move { c.create_topic(req).await }
        })
        .await
        .expect_err("64 MiB max.message.bytes is over the limit");
    assert_eq!(err.kind(), ferrolog_client::ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains(&(16u32 << 20).to_string()), "names the limit: {}", err.message());

    // 12 MiB batches are accepted where the topic allows them (tonic's
    // default 4 MiB decode limit refused them before), replicated to every
    // replica (one entry per AppendEntries, over the 4 MiB budget), and
    // fetched back whatever max_bytes the client asks.
    create(&client, "large", v1::TopicConfig { max_message_bytes: Some(13 << 20), ..Default::default() }).await?;
    let leader = client.wait_leaders("large", START).await?[0];
    let big = make_batch(&[vec![7u8; 12 << 20]]);
    for _ in 0..3 {
        client.client().produce("large", 0, ferrolog_client::Acks::All, big.clone(), OP).await?;
    }
    eventually("every replica to hold the three 12 MiB batches", OP, || async {
        let p = describe(&client, "large").await?;
        let lag: Vec<i64> = p.replicas.iter().map(|r| r.lag).collect();
        if p.high_watermark == 3 && lag.iter().all(|l| *l == 0) { Ok(()) } else { Err(format!("{p:?}")) }
    })
    .await?;
    for node in cluster.nodes.iter().map(|n| n.id) {
        let mut c = v1::broker_client::BrokerClient::connect(format!("http://{}", cluster.node(node).addr))
            .await?
            .max_decoding_message_size(ferrolog_types::limits::API_MESSAGE_LIMIT);
        let r = c
            .fetch(v1::FetchRequest {
                topic: "large".into(),
                partition: 0,
                offset: 0,
                max_bytes: u32::MAX,
                max_wait_ms: 0,
                min_bytes: 0,
            })
            .await?
            .into_inner();
        // The broker caps the answer (8 MiB, but always one batch).
        assert_eq!(r.batches.len(), 1, "broker {node} (leader {leader}) capped a u32::MAX fetch");
        assert_eq!(r.batches[0].records.len(), big.records.len());
    }

    // Over the topic's limit: INVALID_ARGUMENT naming it, nothing appended.
    let over = make_batch(&[vec![1u8; 14 << 20]]);
    let err = client
        .client()
        .produce("large", 0, ferrolog_client::Acks::All, over, OP)
        .await
        .expect_err("over max.message.bytes");
    assert_eq!(err.kind(), ferrolog_client::ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("max.message.bytes"), "{}", err.message());
    // Over every topic's limit: refused by the client before sending.
    let way_over = make_batch(&[vec![1u8; 17 << 20]]);
    let err = client
        .client()
        .produce("large", 0, ferrolog_client::Acks::All, way_over, OP)
        .await
        .expect_err("over the ceiling");
    assert_eq!(err.kind(), ferrolog_client::ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains(&(16u32 << 20).to_string()), "{}", err.message());
    assert_eq!(describe(&client, "large").await.map_err(anyhow::Error::msg)?.high_watermark, 3);

    // Commit metadata is bounded (it lives in the replicated metadata state).
    let commit = v1::CommitOffsetsRequest {
        group: "g".into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![v1::OffsetCommit { topic: "large".into(), partition: 0, offset: 1, metadata: "m".repeat(5000) }],
    };
    let err = client
        .client()
        .on_coordinator(OP, |ch| {
            let commit = commit.clone();
            async move { v1::groups_client::GroupsClient::new(ch).commit_offsets(commit).await }
        })
        .await
        .expect_err("5,000 bytes of commit metadata");
    assert_eq!(err.kind(), ferrolog_client::ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("4096"), "{}", err.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_the_future_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    create(&client, "clock", v1::TopicConfig::default()).await?;
    client.wait_leaders("clock", START).await?;
    // A day ahead (a client clock off, or microseconds sent as ms) would pin
    // the index's running maximum timestamp for every later batch.
    let ahead = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64 + 86_400_000;
    let b = ferrolog_client::make_batch(&[(None, b"from the future".to_vec())], ahead);
    let err = client.client().produce("clock", 0, ferrolog_client::Acks::All, b, OP).await.expect_err("a day ahead");
    assert_eq!(err.kind(), ferrolog_client::ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("ahead of the broker's clock"), "{}", err.message());
    assert_eq!(describe(&client, "clock").await.map_err(anyhow::Error::msg)?.high_watermark, 0);
    Ok(())
}
