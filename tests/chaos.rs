//! A short seeded chaos run, checked by `ferrolog-checker`.
//!
//! Three brokers, one RF=3 topic with 3 partitions. Workloads: two
//! idempotent acks=all producers, one acks=1 producer, a consumer group of
//! two members and one consumer without a group. A nemesis driven by the
//! seed kills a broker, kills a partition leader, kills every broker at
//! once, and SIGSTOPs a broker past the election timeout, restarting or
//! resuming each after a while. Then everything is healed, the workloads
//! run a little longer, and a final read of every partition closes the
//! history (written as JSONL next to the cluster's data; its path and the
//! seed are printed). The test fails on any anomaly.
//!
//! `FERROLOG_CHAOS_SEED` replays a schedule; `FERROLOG_CHAOS_SECS` sets the
//! fault phase's length (default 45 s).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use ferrolog_checker::Event;
use ferrolog_checker::Kind;
use ferrolog_checker::Op;
use ferrolog_client::Client;
use ferrolog_client::Consumer;
use ferrolog_client::ConsumerConfig;
use ferrolog_client::IdempotentProducer;
use ferrolog_client::OffsetReset;
use ferrolog_proto::errors::leader_hint;
use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use rand::Rng;
use rand::SeedableRng;

const START: Duration = Duration::from_secs(60);
const TOPIC: &str = "chaos";
const PARTITIONS: u32 = 3;

/// The history, shared by every workload task.
#[derive(Clone)]
struct History {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    fn record(&self, process: &str, kind: Kind, op: Op) {
        let e = Event { time_ms: self.start.elapsed().as_millis() as u64, process: process.into(), kind, op };
        self.events.lock().expect("history lock").push(e);
    }
}

fn send_op(partition: u32, value: &str, acks: &str, offset: Option<u64>) -> Op {
    Op::Send { partition, value: value.into(), acks: acks.into(), offset }
}

/// An idempotent acks=all producer: every error is retried inside the
/// producer; what still fails is recorded `info` (unknown outcome).
async fn idempotent_producer(name: String, client: Arc<Client>, h: History, stop: Arc<AtomicBool>, seed: u64) {
    let p = loop {
        match IdempotentProducer::new(client.clone(), None, v1::Acks::All, Duration::from_secs(20)).await {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = rng.random_range(0..PARTITIONS);
        let value = format!("{name}-{n}");
        n += 1;
        h.record(&name, Kind::Invoke, send_op(partition, &value, "all", None));
        match p.send(TOPIC, partition, &[(None, value.clone().into_bytes())]).await {
            Ok(r) => h.record(&name, Kind::Ok, send_op(partition, &value, "all", Some(r.base_offset as u64))),
            Err(_) => h.record(&name, Kind::Info, send_op(partition, &value, "all", None)),
        }
    }
}

/// An acks=1 producer without idempotence and without retries of
/// ambiguous failures: refused-before-append errors are `fail`, the rest `info`.
async fn acks1_producer(name: String, client: Arc<Client>, h: History, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = (n % u64::from(PARTITIONS)) as u32;
        let value = format!("{name}-{n}");
        n += 1;
        h.record(&name, Kind::Invoke, send_op(partition, &value, "1", None));
        let batch = ferrolog_client::make_batch(&[(None, value.clone().into_bytes())], 1);
        match client.produce(TOPIC, partition, v1::Acks::Leader, batch, Duration::from_secs(10)).await {
            Ok(r) => h.record(&name, Kind::Ok, send_op(partition, &value, "1", Some(r.base_offset as u64))),
            Err(s) if leader_hint(&s).is_some() || s.code() == tonic::Code::InvalidArgument => {
                h.record(&name, Kind::Fail, send_op(partition, &value, "1", None))
            }
            Err(_) => {
                h.record(&name, Kind::Info, send_op(partition, &value, "1", None));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A consumer (group member or standalone): one poll event per record;
/// assignment changes start a new "generation" for the checker.
async fn consumer(name: String, client: Arc<Client>, group: Option<String>, h: History, stop: Arc<AtomicBool>) {
    let config = ConsumerConfig {
        client_id: name.clone(),
        session_timeout: Duration::from_secs(6),
        auto_commit: Some(Duration::from_millis(500)),
        offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut c = match &group {
        Some(g) => Consumer::subscribe(client, g, &[TOPIC], config),
        None => Consumer::assign(client, (0..PARTITIONS).map(|p| ((TOPIC.to_string(), p), Some(0))).collect(), config),
    };
    let mut generation = 0;
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let e = match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(_) => continue,
        };
        match e {
            ferrolog_client::Event::Record(r) => {
                let op = |records| Op::Poll { group: group.clone(), generation, records };
                h.record(&name, Kind::Invoke, op(BTreeMap::new()));
                let value = String::from_utf8_lossy(&r.record.value).into_owned();
                h.record(&name, Kind::Ok, op(BTreeMap::from([(r.partition, vec![(r.record.offset, value)])])));
            }
            ferrolog_client::Event::Assigned(tps) | ferrolog_client::Event::Revoked(tps) if group.is_some() => {
                generation += 1;
                for (_, p) in &tps {
                    if !owned.remove(p) {
                        owned.insert(*p);
                    }
                }
                let op = Op::Assign { group: group.clone().unwrap_or_default(), generation, partitions: owned.clone() };
                h.record(&name, Kind::Ok, op);
            }
            _ => {}
        }
    }
    let _ = c.close().await;
}

/// The leader of `partition`, if known.
async fn leader_of(client: &Client, partition: u32) -> Option<u64> {
    let d = client.wait_leaders(TOPIC, Duration::from_secs(5)).await.ok()?;
    d.partitions.get(partition as usize).map(|p| p.leader_id).filter(|l| *l != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_run_has_no_anomalies() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("FERROLOG_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261129);
    let secs: u64 = std::env::var("FERROLOG_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(45);
    eprintln!("chaos seed {seed} (FERROLOG_CHAOS_SEED replays it), {secs} s of faults");
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let tc = TestClient::new(cluster.addrs());
    tc.create_topic(TOPIC, PARTITIONS, 3).await?;
    tc.wait_leaders(TOPIC, START).await?;
    let client = Arc::new(Client::new(cluster.addrs()));
    let h = History { start: Instant::now(), events: Arc::default() };
    h.record("nemesis", Kind::Ok, Op::Start { seed });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..2 {
        tasks.push(tokio::spawn(idempotent_producer(
            format!("idem{i}"),
            client.clone(),
            h.clone(),
            stop.clone(),
            seed + i,
        )));
    }
    tasks.push(tokio::spawn(acks1_producer("ack1".into(), client.clone(), h.clone(), stop.clone())));
    for i in 0..2 {
        tasks.push(tokio::spawn(consumer(
            format!("member{i}"),
            client.clone(),
            Some("chaos-group".into()),
            h.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(consumer("reader".into(), client.clone(), None, h.clone(), stop.clone())));

    // The nemesis.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let fault = rng.random_range(0..4);
        let (name, targets): (String, Vec<u64>) = match fault {
            0 => {
                let b = rng.random_range(1..=3);
                (format!("kill broker {b}"), vec![b])
            }
            1 => {
                let p = rng.random_range(0..PARTITIONS);
                match leader_of(&client, p).await {
                    Some(l) => (format!("kill leader {l} of partition {p}"), vec![l]),
                    None => continue,
                }
            }
            2 => ("kill all brokers".into(), vec![1, 2, 3]),
            _ => {
                let p = rng.random_range(0..PARTITIONS);
                match leader_of(&client, p).await {
                    Some(l) => (format!("pause leader {l} of partition {p}"), vec![l]),
                    None => continue,
                }
            }
        };
        eprintln!("nemesis: {name}");
        h.record("nemesis", Kind::Invoke, Op::Fault { name: name.clone() });
        let pause = fault == 3;
        for b in &targets {
            if pause {
                cluster.signal(*b, libc::SIGSTOP)?;
            } else {
                cluster.kill(*b)?;
            }
        }
        // Longer than the election timeout (1-2 s).
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_500..4_000))).await;
        for b in &targets {
            if pause {
                cluster.signal(*b, libc::SIGCONT)?;
            } else {
                cluster.restart(*b)?;
            }
        }
        cluster.wait_serving(START).await?;
        h.record("nemesis", Kind::Ok, Op::Fault { name });
    }
    // Healed: let the workloads run on, then stop them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    // Final read of every partition from its leader.
    let d = client.wait_leaders(TOPIC, START).await?;
    let mut records = BTreeMap::new();
    for p in &d.partitions {
        let addr = cluster.node(p.leader_id).addr.clone();
        let (log, _) = client.fetch_all_from(&addr, TOPIC, p.partition, 0).await?;
        records.insert(
            p.partition,
            log.into_iter().map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned())).collect(),
        );
    }
    h.record("final", Kind::Ok, Op::FinalRead { records });

    let events = h.events.lock().expect("history lock").clone();
    let path = cluster.data_root().join("history.jsonl");
    let mut f = std::fs::File::create(&path)?;
    for e in &events {
        writeln!(f, "{}", serde_json::to_string(e)?)?;
    }
    let report = ferrolog_checker::check(&events);
    eprintln!(
        "chaos seed {seed}: {} ops, {} faults, acked {:?}, acks=1 lost in fault windows {}, anomalies {:?}; history {}",
        report.ops,
        report.faults,
        report.acked,
        report.acks1_lost,
        report.anomalies.keys().collect::<Vec<_>>(),
        path.display()
    );
    if !report.valid() {
        let kept = cluster.keep();
        anyhow::bail!("anomalies (seed {seed}, data kept in {}): {:#?}", kept.display(), report.anomalies);
    }
    anyhow::ensure!(report.acked.get("all").copied().unwrap_or(0) > 100, "too little acknowledged: {:?}", report.acked);
    Ok(())
}
