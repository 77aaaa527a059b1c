//! Power loss: brokers whose data dirs are on `lossyfs`
//! (`ferrolog_tests::lossyfs`), which forgets every write not fsynced when
//! the power is cut (SIGKILL, then the unsynced data dropped). A SIGKILL
//! alone keeps the page cache; these tests do not.
//!
//! A producer runs acks=all against a replication-factor-3 partition
//! throughout; the power is cut on the partition leader, then on a
//! majority, then on every broker at once, each followed by a restart.
//! Every acknowledged record must be present once, at its acknowledged
//! offset, with dense offsets, and the cuts must have dropped data (so the
//! run tested something a SIGKILL does not).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use ferrolog_client::Acks;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(90);
const TOPIC: &str = "ledger";

/// What the producer task saw: acknowledged value → offset, and how many
/// produces failed (outcome unknown: never counted as acknowledged).
#[derive(Default)]
struct Ledger {
    acked: Mutex<HashMap<Vec<u8>, u64>>,
    failed: AtomicU64,
}

impl Ledger {
    fn acked(&self) -> usize {
        self.acked.lock().expect("ledger lock").len()
    }
}

/// Produces unique values one at a time until `stop`.
async fn producer(client: Arc<TestClient>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let v = format!("value-{next:06}").into_bytes();
        next += 1;
        match client.produce(TOPIC, 0, Acks::All, std::slice::from_ref(&v), Duration::from_secs(10)).await {
            Ok(r) => {
                if let Some(o) = r.base_offset {
                    ledger.acked.lock().expect("ledger lock").insert(v, o);
                }
            }
            Err(_) => {
                ledger.failed.fetch_add(1, Ordering::Relaxed);
                // The cluster is (partly) down: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `more` records beyond the current count are acknowledged.
async fn acked_more(ledger: &Ledger, cluster: &Cluster, more: usize) -> anyhow::Result<()> {
    let want = ledger.acked() + more;
    eventually(&format!("{want} acknowledged records"), START, || async {
        let n = ledger.acked();
        if n >= want { Ok(()) } else { Err(format!("{n} of {want} acknowledged")) }
    })
    .await
    .with_context(|| logs(cluster))
}

fn logs(cluster: &Cluster) -> String {
    (1..=3).map(|id| format!("broker {id}'s log:\n{}\n", cluster.log_tail(id))).collect()
}

async fn verify(client: &TestClient, cluster: &Cluster, acked: &HashMap<Vec<u8>, u64>) -> anyhow::Result<()> {
    let leaders = client.wait_leaders(TOPIC, START).await?;
    let addr = cluster.node(leaders[0]).addr.clone();
    let (log, hw) = client.fetch_from(&addr, TOPIC, 0, 0).await?;
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    if offsets != (0..hw).collect::<Vec<_>>() {
        bail!("offsets are not dense 0..{hw}");
    }
    let mut seen = HashSet::new();
    for (_, v) in &log {
        if !seen.insert(v.clone()) {
            bail!("duplicate record {}", String::from_utf8_lossy(v));
        }
    }
    let at: HashMap<&Vec<u8>, u64> = log.iter().map(|(o, v)| (v, *o)).collect();
    let mut lost = Vec::new();
    for (v, o) in acked {
        match at.get(v) {
            Some(got) if got == o => {}
            Some(got) => bail!("{} acknowledged at {o} but stored at {got}", String::from_utf8_lossy(v)),
            None => lost.push(*o),
        }
    }
    if !lost.is_empty() {
        lost.sort_unstable();
        bail!("{} acknowledged records lost, at offsets {:?}...", lost.len(), &lost[..lost.len().min(10)]);
    }
    eprintln!("verified: {} acknowledged records among {} in the log", acked.len(), log.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_records_survive_power_cuts_of_the_leader_a_majority_and_every_broker() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_on_lossy_disks(3, &[], false)?;
    cluster.wait_serving(START).await?;
    let client = Arc::new(TestClient::new(cluster.addrs()));
    client.create_topic(TOPIC, 1, 3).await?;
    let leader = client.wait_leaders(TOPIC, START).await?[0];

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(producer(client.clone(), ledger.clone(), stop.clone()));
    acked_more(&ledger, &cluster, 200).await?;
    let mut dropped = 0;

    // 1. The leader loses power mid-stream; the other two carry on.
    dropped += cluster.power_cut(leader)?;
    eprintln!("power cut of leader {leader}");
    acked_more(&ledger, &cluster, 100).await?;
    cluster.restart(leader)?;
    cluster.wait_serving(START).await?;
    acked_more(&ledger, &cluster, 100).await?;

    // 2. A majority (the current leader and one more) loses power.
    let leader = client.wait_leaders(TOPIC, START).await?[0];
    let other = (1..=3).find(|b| *b != leader).context("a second broker")?;
    for b in [leader, other] {
        cluster.kill(b)?;
    }
    for b in [leader, other] {
        dropped += cluster.power_cut(b)?;
    }
    eprintln!("power cut of majority {leader}, {other}");
    for b in [leader, other] {
        cluster.restart(b)?;
    }
    cluster.wait_serving(START).await?;
    acked_more(&ledger, &cluster, 100).await?;

    // 3. Every broker at once: all killed first, then the disks cut.
    for b in 1..=3 {
        cluster.kill(b)?;
    }
    for b in 1..=3 {
        dropped += cluster.power_cut(b)?;
    }
    eprintln!("power cut of every broker");
    for b in 1..=3 {
        cluster.restart(b)?;
    }
    cluster.wait_serving(START).await?;
    acked_more(&ledger, &cluster, 100).await?;

    stop.store(true, Ordering::Relaxed);
    task.await?;
    let acked = ledger.acked.lock().expect("ledger lock").clone();
    eprintln!(
        "{} acknowledged, {} failed produces; the power cuts dropped {dropped} unsynced bytes",
        acked.len(),
        ledger.failed.load(Ordering::Relaxed)
    );
    anyhow::ensure!(dropped > 0, "the power cuts dropped nothing: the test tested nothing a SIGKILL does not");
    verify(&client, &cluster, &acked).await.with_context(|| logs(&cluster))?;
    Ok(())
}
