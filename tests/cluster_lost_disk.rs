//! A broker that loses its disk must not help elect a leader that lacks
//! committed records (crates/broker/src/recovery.rs).
//!
//! Three brokers, one replication-factor-3 partition. The scenario of the
//! lost-disk issue: follower B is paused while the leader A and follower W
//! commit more records; then A and W are killed, W's data dir is deleted,
//! W restarts empty and B resumes. W and B are a majority, but B lacks the
//! last records and W forgot them: before the fix W granted B its vote
//! (an empty log is behind every candidate) and B's shorter log became the
//! partition's, losing acknowledged records when A came back. Now W takes
//! no part in elections until it has caught up, so the partition waits for
//! A; once A is back every acknowledged record is there, W catches up and
//! is a full voter again (it and B elect a leader when A is killed again).

use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use ferrolog_client::Acks;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);
const TOPIC: &str = "ledger";
/// How long the test watches W and B alone for a leader that must not be
/// elected: ten of the brokers' largest election timeouts (2 s), plus the
/// 3 s a non-preferred replica waits before it would initialize a group.
const WATCH: Duration = Duration::from_secs(23);

async fn produce_n(
    client: &TestClient,
    next: &mut u64,
    acked: &mut HashMap<Vec<u8>, u64>,
    n: u64,
) -> anyhow::Result<()> {
    for _ in 0..n {
        let v = format!("record-{next:06}").into_bytes();
        *next += 1;
        let p = client
            .produce(TOPIC, 0, Acks::All, std::slice::from_ref(&v), Duration::from_secs(30))
            .await
            .with_context(|| format!("produce {}", String::from_utf8_lossy(&v)))?;
        acked.insert(v, p.base_offset.context("acks=all answers an offset")?);
    }
    Ok(())
}

/// Every acknowledged record is in `addr`'s replica at its offset, and the
/// log is dense; returns the replica's high watermark.
async fn verify_on(client: &TestClient, addr: &str, acked: &HashMap<Vec<u8>, u64>) -> anyhow::Result<u64> {
    let (log, hw) = client.fetch_from(addr, TOPIC, 0, 0).await?;
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    if offsets != (0..hw).collect::<Vec<_>>() {
        bail!("{addr}: offsets are not dense 0..{hw}");
    }
    let at: HashMap<&Vec<u8>, u64> = log.iter().map(|(o, v)| (v, *o)).collect();
    for (v, o) in acked {
        match at.get(v) {
            Some(got) if got == o => {}
            Some(got) => bail!("{addr}: {} acknowledged at {o} but stored at {got}", String::from_utf8_lossy(v)),
            None => bail!("{addr}: acknowledged record {} (offset {o}) is lost", String::from_utf8_lossy(v)),
        }
    }
    Ok(hw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_help_a_lagging_one_win_an_election() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic(TOPIC, 1, 3).await?;
    let a = client.wait_leaders(TOPIC, START).await?[0];
    let followers: Vec<u64> = (1..=3).filter(|id| *id != a).collect();
    let (w, b) = (followers[0], followers[1]);
    eprintln!("leader A = {a}, to be wiped W = {w}, to be paused B = {b}");

    let mut next = 0;
    let mut acked = HashMap::new();
    produce_n(&client, &mut next, &mut acked, 50).await?;
    // B stops; A and W commit 200 more that B lacks.
    cluster.signal(b, libc::SIGSTOP)?;
    produce_n(&client, &mut next, &mut acked, 200).await?;
    let last = acked.values().max().copied().unwrap_or(0);
    eprintln!("{} records acknowledged, the last at offset {last}; B has at most the first 50", acked.len());

    cluster.kill(a)?;
    cluster.wipe(w)?;
    let mark = cluster.log_len(w);
    cluster.restart(w)?;
    cluster.signal(b, libc::SIGCONT)?;

    // W learns from B that the cluster exists and does not bootstrap it.
    let started = Instant::now();
    eventually("W to find the running cluster", START, || {
        let found = cluster.log_contains_since(w, mark, "the peers already form a cluster");
        async move { if found { Ok(()) } else { Err("not yet".to_string()) } }
    })
    .await?;
    // W and B alone must not elect a leader (for the metadata or the
    // partition): the only replica with every committed record is A. The
    // check cannot wait for an event (the correct outcome is that nothing
    // happens), so it watches for a bounded window of election timeouts.
    let pair = TestClient::new(vec![cluster.node(w).addr.clone(), cluster.node(b).addr.clone()]);
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(1), pair.client().describe_topic(TOPIC)).await
            && let Some(leader) = info.partitions.first().and_then(|p| p.leader)
        {
            bail!(
                "broker {leader} was elected leader by W and B without A ({:?} after W restarted); W's log:\n{}",
                started.elapsed(),
                cluster.log_tail(w)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("no leader among W and B for {WATCH:?}: the partition waits for A");

    // A returns: it is elected (B votes for its longer log) and nothing
    // acknowledged is lost.
    cluster.restart(a)?;
    cluster.wait_serving(START).await?;
    let leader = client.wait_leaders(TOPIC, START).await?[0];
    let hw = verify_on(&client, &cluster.node(leader).addr, &acked).await?;
    eprintln!("leader {leader} after A returned holds all {} acknowledged records (hw {hw})", acked.len());

    // W catches up from the leader and votes again.
    produce_n(&client, &mut next, &mut acked, 20)
        .await
        .with_context(|| format!("W's log:\n{}", cluster.log_tail(w)))?;
    let w_addr = cluster.node(w).addr.clone();
    eventually("W to hold every acknowledged record", START, || {
        let (client, w_addr, acked) = (&client, &w_addr, &acked);
        async move { verify_on(client, w_addr, acked).await.map_err(|e| e.to_string()) }
    })
    .await
    .with_context(|| format!("W's log:\n{}", cluster.log_tail(w)))?;
    eventually("W to vote again", START, || {
        let done = cluster.log_contains_since(w, mark, "replica caught up after a lost disk")
            && cluster.log_contains_since(w, mark, "metadata caught up after a lost disk");
        async move { if done { Ok(()) } else { Err("not yet".to_string()) } }
    })
    .await?;

    // W is a full voter again: with the current leader killed, W and the
    // remaining broker elect a leader that has everything.
    let leader = client.wait_leaders(TOPIC, START).await?[0];
    cluster.kill(leader)?;
    let survivors: Vec<String> = (1..=3).filter(|id| *id != leader).map(|id| cluster.node(id).addr.clone()).collect();
    let rest = TestClient::new(survivors);
    let new_leader = eventually("a leader among the survivors", START, || {
        let rest = &rest;
        async move {
            match rest.wait_leaders(TOPIC, Duration::from_secs(5)).await {
                Ok(l) if l[0] != leader => Ok(l[0]),
                Ok(l) => Err(format!("still reported led by {}", l[0])),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;
    produce_n(&rest, &mut next, &mut acked, 10).await?;
    let hw = verify_on(&rest, &cluster.node(new_leader).addr, &acked).await?;
    eprintln!(
        "after killing {leader}, broker {new_leader} leads with all {} acknowledged records (hw {hw})",
        acked.len()
    );
    Ok(())
}

/// The simple case, under load: a follower's disk is wiped while a producer
/// runs; it rejoins the running cluster (it does not bootstrap the
/// metadata group again), catches up and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_under_load_and_catches_up() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic(TOPIC, 1, 3).await?;
    let a = client.wait_leaders(TOPIC, START).await?[0];
    let w = (1..=3).find(|id| *id != a).context("a follower")?;
    let mut next = 0;
    let mut acked = HashMap::new();
    produce_n(&client, &mut next, &mut acked, 100).await?;
    cluster.wipe(w)?;
    produce_n(&client, &mut next, &mut acked, 100).await?;
    let mark = cluster.log_len(w);
    cluster.restart(w)?;
    produce_n(&client, &mut next, &mut acked, 100).await?;
    let w_addr = cluster.node(w).addr.clone();
    eventually("the wiped follower to hold every acknowledged record", START, || {
        let (client, w_addr, acked) = (&client, &w_addr, &acked);
        async move { verify_on(client, w_addr, acked).await.map_err(|e| e.to_string()) }
    })
    .await
    .with_context(|| (1..=3).map(|id| format!("broker {id}'s log:\n{}\n", cluster.log_tail(id))).collect::<String>())?;
    if !cluster.log_contains_since(w, mark, "the peers already form a cluster") {
        bail!("the wiped broker did not notice it was joining a running cluster; log:\n{}", cluster.log_tail(w));
    }
    if cluster.log_contains_since(w, mark, "bootstrapping the metadata group") {
        bail!("the wiped broker bootstrapped the metadata group again; log:\n{}", cluster.log_tail(w));
    }
    Ok(())
}
