//! The idempotent producer on real brokers:
//!
//! 1. A produce response is dropped after the append (failpoint): the client
//!    retries and the partition holds exactly one copy, at the first offset.
//! 2. The same, with the partition leader SIGKILLed between the append and
//!    the retry: the new leader answers the retry with the original offset.
//! 3. Up to five batches in flight per partition, some responses dropped:
//!    the log holds each batch once, in sequence order.
//! 4. Out-of-order sequences and stale epochs are refused with their
//!    errors; a fenced producer cannot write, even to a partition its
//!    successor has not written yet.
//! 5. Dedup holds after every broker is SIGKILLed and restarted, and on a
//!    replica that caught up through a snapshot (retention purged the log)
//!    and then became leader.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::ensure;
use ferrolog_client::ErrorKind;
use ferrolog_client::IdempotentProducer;
use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::cluster::sample;
use ferrolog_tests::cluster::scrape;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(30);

fn kind(e: &ferrolog_client::ClientError) -> ErrorKind {
    e.kind()
}

fn rec(v: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    vec![(None, v.as_bytes().to_vec())]
}

/// Raw batches of a partition from `addr` (to see producer ids and sequences).
async fn batches(addr: &str, topic: &str, partition: u32) -> anyhow::Result<Vec<v1::RecordBatch>> {
    let mut c = v1::broker_client::BrokerClient::connect(format!("http://{addr}")).await?;
    let mut out = Vec::new();
    let mut offset = 0i64;
    loop {
        let r = c
            .fetch(v1::FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
            })
            .await?
            .into_inner();
        let hw = r.high_watermark;
        for b in r.batches {
            offset = b.base_offset + i64::from(b.record_count);
            out.push(b);
        }
        if offset >= hw {
            return Ok(out);
        }
    }
}

async fn values(client: &TestClient, cluster: &Cluster, topic: &str) -> anyhow::Result<Vec<String>> {
    let leader = client.wait_leaders(topic, START).await?[0];
    let (log, _) = client.fetch_from(&cluster.node(leader).addr, topic, 0, 0).await?;
    Ok(log.into_iter().map(|(_, v)| String::from_utf8_lossy(&v).into_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_responses_and_leader_kills_never_duplicate() -> anyhow::Result<()> {
    // Every broker drops the response of its first three appended produces.
    let mut cluster = Cluster::start_with_env(3, &[("FERROLOG_FAILPOINTS", "produce.drop_response=3")])?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("orders", 1, 3).await?;
    let leader = client.wait_leaders("orders", START).await?[0];
    let inner = Arc::new(ferrolog_client::Client::new(cluster.addrs()));

    // 1. The first response is dropped; the retry finds the batch appended.
    let producer = IdempotentProducer::new(inner.clone(), None, ferrolog_client::Acks::All, OP).await?;
    let r = producer.send("orders", 0, &rec("order-0")).await?;
    ensure!(r.duplicate && r.base_offset == Some(0), "retry after a dropped response: {r:?}");
    let r = producer.send("orders", 0, &rec("order-1")).await?;
    ensure!(r.duplicate && r.base_offset == Some(1), "second dropped response: {r:?}");
    assert_eq!(values(&client, &cluster, "orders").await?, ["order-0", "order-1"]);

    // 2. Append, lose the response (the leader's third drop), kill the
    // leader, retry the same batch on the new one.
    let (id, epoch) = inner.init_producer(None).await?;
    let mut batch = ferrolog_client::make_batch(&rec("order-2"), 1);
    ferrolog_client::set_producer(&mut batch, id, epoch, 0);
    let lost = inner.produce("orders", 0, ferrolog_client::Acks::All, batch.clone(), OP).await;
    ensure!(lost.is_err(), "the failpoint must drop this response: {lost:?}");
    cluster.kill(leader)?;
    let killed = Instant::now();
    let retry = inner.produce_with("orders", 0, ferrolog_client::Acks::All, batch.clone(), OP, true).await?;
    eprintln!("retry after SIGKILL of leader {leader} answered in {:?}: {retry:?}", killed.elapsed());
    ensure!(retry.duplicate && retry.base_offset == Some(2), "the retry must get the original offset 2: {retry:?}");
    assert_eq!(values(&client, &cluster, "orders").await?, ["order-0", "order-1", "order-2"]);

    // The new leader drops its first responses too: a fresh producer's
    // sends are retried and deduplicated there as well.
    let producer = IdempotentProducer::new(inner.clone(), None, ferrolog_client::Acks::All, OP).await?;
    for i in 3..8 {
        producer.send("orders", 0, &rec(&format!("order-{i}"))).await?;
    }
    let want: Vec<String> = (0..8).map(|i| format!("order-{i}")).collect();
    assert_eq!(values(&client, &cluster, "orders").await?, want);

    // 3. Five in flight at once, several rounds.
    cluster.restart(leader)?;
    cluster.wait_serving(START).await?;
    client.create_topic("pipelined", 1, 3).await?;
    client.wait_leaders("pipelined", START).await?;
    let producer = Arc::new(IdempotentProducer::new(inner.clone(), None, ferrolog_client::Acks::All, OP).await?);
    let mut sent = 0;
    for round in 0..8 {
        let mut tasks = Vec::new();
        for j in 0..ferrolog_client::MAX_IN_FLIGHT {
            let p = producer.clone();
            tasks.push(tokio::spawn(async move { p.send("pipelined", 0, &rec(&format!("r{round}-{j}"))).await }));
        }
        let mut failed = Vec::new();
        for t in tasks {
            match t.await? {
                Ok(_) => sent += 1,
                Err(e) => failed.push(e),
            }
        }
        ensure!(failed.is_empty(), "round {round}: {} sends failed: {failed:?}", failed.len());
    }
    let leader = client.wait_leaders("pipelined", START).await?[0];
    let log = batches(&cluster.node(leader).addr, "pipelined", 0).await?;
    ensure!(log.len() == sent, "{} batches in the log for {sent} sends", log.len());
    let seqs: Vec<i32> = log.iter().map(|b| b.base_sequence).collect();
    assert_eq!(seqs, (0..sent as i32).collect::<Vec<_>>(), "each batch once, in sequence order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_fenced_producers_are_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("fence", 2, 3).await?;
    client.wait_leaders("fence", START).await?;
    let inner = Arc::new(ferrolog_client::Client::new(cluster.addrs()));

    // A gap in the sequence.
    let (id, epoch) = inner.init_producer(None).await?;
    let mut b = ferrolog_client::make_batch(&rec("gap"), 1);
    ferrolog_client::set_producer(&mut b, id, epoch, 5);
    let e =
        inner.produce("fence", 0, ferrolog_client::Acks::All, b, OP).await.expect_err("a new producer must start at 0");
    assert_eq!(kind(&e), ErrorKind::OutOfOrderSequence, "{e:?}");
    assert!(!e.is_retriable());
    ensure!(e.message().contains("expected 0"), "clear message: {}", e.message());

    // Named producers: a second instance fences the first.
    let old = IdempotentProducer::new(inner.clone(), Some("billing"), ferrolog_client::Acks::All, OP).await?;
    old.send("fence", 0, &rec("old-0")).await?;
    let new = IdempotentProducer::new(inner.clone(), Some("billing"), ferrolog_client::Acks::All, OP).await?;
    assert_eq!(new.identity().await.0, old.identity().await.0, "same name, same id");
    assert_eq!(new.identity().await.1, old.identity().await.1 + 1, "epoch raised");
    // Partition 1: the new instance has not written there yet; the zombie is
    // fenced anyway (the leader checks the metadata's current epoch).
    let e = old.send("fence", 1, &rec("zombie")).await.expect_err("fenced");
    assert_eq!(kind(&e), ErrorKind::Fenced, "{e:?}");
    new.send("fence", 0, &rec("new-0")).await?;
    let e = old.send("fence", 0, &rec("zombie")).await.expect_err("still fenced");
    assert_eq!(kind(&e), ErrorKind::Fenced, "{e:?}");
    new.send("fence", 1, &rec("new-1")).await?;
    assert_eq!(values(&client, &cluster, "fence").await?, ["old-0", "new-0"]);
    let leader1 = client.wait_leaders("fence", START).await?[1];
    let (p1, _) = client.fetch_from(&cluster.node(leader1).addr, "fence", 1, 0).await?;
    assert_eq!(p1.len(), 1, "the zombie wrote nothing to partition 1");

    // Producer ids survive restarts of the whole cluster: never reused.
    let before = inner.init_producer(None).await?.0;
    for id in [1, 2, 3] {
        cluster.kill(id)?;
    }
    for id in [1, 2, 3] {
        cluster.restart(id)?;
    }
    cluster.wait_serving(START).await?;
    let after = inner.init_producer(None).await?.0;
    ensure!(after > before, "producer id {after} after a full restart must be above {before}");
    Ok(())
}

/// Sends batches 0..n of one producer to `topic`, returning them.
async fn send_batches(
    inner: &ferrolog_client::Client,
    topic: &str,
    id: i64,
    epoch: i32,
    n: i32,
    size: usize,
) -> anyhow::Result<Vec<(ferrolog_client::RecordBatch, u64)>> {
    let mut out = Vec::new();
    for seq in 0..n {
        let v = format!("{seq:04}-{}", "x".repeat(size));
        let mut b = ferrolog_client::make_batch(&rec(&v), 1);
        ferrolog_client::set_producer(&mut b, id, epoch, seq);
        let r = inner.produce_with(topic, 0, ferrolog_client::Acks::All, b.clone(), OP, true).await?;
        ensure!(!r.duplicate && r.base_offset == Some(seq as u64), "batch {seq}: {r:?}");
        out.push((b, seq as u64));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_a_full_restart_and_a_snapshot_install() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    let inner = Arc::new(ferrolog_client::Client::new(cluster.addrs()));

    // Full restart.
    client.create_topic("restart", 1, 3).await?;
    client.wait_leaders("restart", START).await?;
    let (id, epoch) = inner.init_producer(None).await?;
    let sent = send_batches(&inner, "restart", id, epoch, 10, 10).await?;
    for n in [1, 2, 3] {
        cluster.kill(n)?;
    }
    for n in [1, 2, 3] {
        cluster.restart(n)?;
    }
    cluster.wait_serving(START).await?;
    for (b, offset) in &sent[5..] {
        let r = inner.produce_with("restart", 0, ferrolog_client::Acks::All, b.clone(), START, true).await?;
        ensure!(r.duplicate && r.base_offset == Some(*offset), "after a full restart: {r:?}, want offset {offset}");
    }
    let leader = client.wait_leaders("restart", START).await?[0];
    ensure!(batches(&cluster.node(leader).addr, "restart", 0).await?.len() == 10, "nothing appended twice");

    // Snapshot install: the preferred replica is down while retention
    // trims and purges the log, catches up by snapshot, takes leadership
    // back (preferred-leader rebalance) and must still recognise retries.
    let req = v1::CreateTopicRequest {
        name: "snap".into(),
        partitions: 1,
        replication_factor: 3,
        config: Some(v1::TopicConfig { retention_ms: None, retention_bytes: Some(20_000), max_message_bytes: None }),
    };
    client
        .admin(OP, |mut c| {
            let req = req.clone();
            async move { c.create_topic(req).await }
        })
        .await?;
    let d = inner.wait_leaders("snap", START).await?;
    let preferred = d.partitions[0].replicas[0];
    cluster.kill(preferred)?;
    let (id, epoch) = inner.init_producer(None).await?;
    let sent = send_batches(&inner, "snap", id, epoch, 60, 1000).await?;
    // Wait for the live replicas to trim and purge their Raft logs: the
    // restarted replica cannot catch up from the log alone.
    // A failed describe or scrape fails the test (`Ok(Err)`), as before.
    let live: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != preferred).collect();
    eventually("the live replicas to trim and purge", START, || async {
        let d = match inner.wait_leaders("snap", START).await {
            Ok(d) => d,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        let mut purged = true;
        for n in &live {
            let text = match scrape(&cluster.node(*n).metrics_addr) {
                Ok(text) => text,
                Err(e) => return Ok(Err(e)),
            };
            purged &= sample(&text, "ferrolog_raft_purged_entries").unwrap_or(0.0) > 0.0;
        }
        if d.partitions[0].log_start.unwrap_or(0) > 0 && purged {
            Ok(Ok(()))
        } else {
            Err(format!("retention did not trim and purge: {d:?}"))
        }
    })
    .await??;
    cluster.restart(preferred)?;
    cluster.wait_serving(START).await?;
    // A failed describe fails the test (`Ok(Err)`), as before.
    eventually(&format!("preferred replica {preferred} to take leadership back"), Duration::from_secs(90), || async {
        let d = match inner.wait_leaders("snap", START).await {
            Ok(d) => d,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        if d.partitions[0].leader == Some(preferred) {
            Ok(Ok(()))
        } else {
            Err(format!("preferred replica {preferred} did not take leadership back: {d:?}"))
        }
    })
    .await??;
    ensure!(
        cluster.log_contains(preferred, "installed snapshot"),
        "expected a snapshot install in broker {preferred}'s log:\n{}",
        cluster.log_tail(preferred)
    );
    for (b, offset) in &sent[55..] {
        let r = inner.produce_with("snap", 0, ferrolog_client::Acks::All, b.clone(), START, true).await?;
        ensure!(
            r.duplicate && r.base_offset == Some(*offset),
            "on the snapshot-installed leader: {r:?}, want {offset}"
        );
    }
    let next = {
        let mut b = ferrolog_client::make_batch(&rec("after"), 1);
        ferrolog_client::set_producer(&mut b, id, epoch, 60);
        inner.produce_with("snap", 0, ferrolog_client::Acks::All, b, OP, true).await?
    };
    ensure!(!next.duplicate && next.base_offset == Some(60), "the sequence continues: {next:?}");
    Ok(())
}

/// A partition's clock expires idle producers. The broker leading it has a
/// wall clock 30 days ahead (failpoint `clock.skew_ms`, as after a clock
/// jump) once the partition clock was set by a correct one. Before, its
/// first clock proposal carried its own wall clock, every replica applied
/// it, and the producer was forgotten cluster-wide: the retry of its batch
/// was appended a second time. Now the clock never advances faster than the
/// proposing broker's monotonic clock, and the retry is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_clock_jumps_ahead_does_not_expire_producers() -> anyhow::Result<()> {
    const LOG: (&str, &str) = ("RUST_LOG", "info,openraft=warn,ferrolog_broker::retention=debug");
    const PROPOSAL: &str = "proposing the partition clock";
    // Expiry 120 s (a clock proposal every 30 s): far longer than the test
    // runs by the real clock, even on a loaded machine.
    let mut cluster = Cluster::start_with_env(
        3,
        &[("FERROLOG_PRODUCER_EXPIRY_MS", "120000"), ("FERROLOG_PREFERRED_LEADER_DELAY_MS", "1000"), LOG],
    )?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("clock", 1, 3).await?;
    client.wait_leaders("clock", START).await?;
    let preferred = client.client().describe_topic("clock").await?.partitions[0].replicas[0];
    eventually("the preferred replica to lead", START, || async {
        match client.wait_leaders("clock", START).await {
            Ok(l) if l[0] == preferred => Ok(()),
            other => Err(format!("leader {other:?}, preferred {preferred}")),
        }
    })
    .await?;
    let inner = client.shared();
    let (id, epoch) = inner.init_producer(None).await?;
    let mut b = ferrolog_client::make_batch(&rec("once"), 1);
    ferrolog_client::set_producer(&mut b, id, epoch, 0);
    let first = inner.produce("clock", 0, ferrolog_client::Acks::All, b.clone(), OP).await?;
    // The partition clock is set (real time) by the correct leader.
    eventually("a first clock proposal", START, || async {
        if cluster.log_contains(preferred, PROPOSAL) { Ok(()) } else { Err("none yet".to_string()) }
    })
    .await?;

    // Its wall clock jumps 30 days ahead; it leads again.
    let skew = ("FERROLOG_FAILPOINTS", "clock.skew_ms=2592000000");
    cluster.restart_with_env(preferred, &[skew, LOG])?;
    cluster.wait_serving(START).await?;
    let mark = cluster.log_len(preferred);
    eventually("a clock proposal by the skewed leader", START, || async {
        let n = cluster.log_matches_since(preferred, mark, PROPOSAL);
        if n >= 1 { Ok(()) } else { Err(format!("{n} so far (leaders {:?})", client.wait_leaders("clock", OP).await)) }
    })
    .await?;
    let retry = inner.produce("clock", 0, ferrolog_client::Acks::All, b, OP).await?;
    ensure!(
        retry.duplicate && retry.base_offset == first.base_offset,
        "the retry was appended again at {:?} (first at {:?}): the skewed clock expired the producer",
        retry.base_offset,
        first.base_offset
    );
    assert_eq!(values(&client, &cluster, "clock").await?, ["once"], "one copy in the log");
    Ok(())
}
