//! Killing brokers loses nothing that acks=all acknowledged.
//!
//! 1. A producer with acks=all runs against a replication-factor-3
//!    partition; the partition leader is SIGKILLed mid-stream. A new leader
//!    is elected, production resumes, and every acknowledged record is
//!    present once, in order, at its acknowledged offset.
//! 2. Then all three brokers are SIGKILLed at once and restarted: every
//!    acknowledged record is still there.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::client::cluster_with_topic;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);

/// Produces unique values until `acks` more succeed; returns the time from
/// the call to the first success.
async fn produce_until(
    client: &TestClient,
    next: &mut u64,
    acked: &mut HashMap<Vec<u8>, u64>,
    ambiguous: &mut u64,
    acks: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut first_ok = None;
    let mut ok = 0;
    while ok < acks {
        if start.elapsed() > timeout {
            bail!("only {ok} of {acks} produces succeeded within {timeout:?}");
        }
        let v = format!("value-{next:06}").into_bytes();
        *next += 1;
        match client
            .produce("ledger", 0, ferrolog_client::Acks::All, std::slice::from_ref(&v), Duration::from_secs(10))
            .await
        {
            Ok(r) => {
                acked.insert(v, r.base_offset.context("acks=all answers with offsets")?);
                ok += 1;
                first_ok.get_or_insert(start.elapsed());
            }
            // Not acknowledged: it may or may not be in the log; never retried.
            Err(e) => {
                if *ambiguous < 3 {
                    eprintln!("ambiguous produce failure: {e:?}");
                }
                *ambiguous += 1
            }
        }
    }
    Ok(first_ok.unwrap_or_default())
}

async fn verify(client: &TestClient, cluster: &Cluster, acked: &HashMap<Vec<u8>, u64>) -> anyhow::Result<()> {
    let leaders = client.wait_leaders("ledger", START).await?;
    let addr = cluster.node(leaders[0]).addr.clone();
    let (log, hw) = client.fetch_from(&addr, "ledger", 0, 0).await?;
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    if offsets != (0..hw).collect::<Vec<_>>() {
        bail!("offsets are not dense 0..{hw}");
    }
    let mut seen = HashSet::new();
    let at: HashMap<&Vec<u8>, u64> = log.iter().map(|(o, v)| (v, *o)).collect();
    for (_, v) in &log {
        if !seen.insert(v.clone()) {
            bail!("duplicate record {}", String::from_utf8_lossy(v));
        }
    }
    for (v, o) in acked {
        match at.get(v) {
            Some(got) if got == o => {}
            Some(got) => bail!("{} acknowledged at {o} but stored at {got}", String::from_utf8_lossy(v)),
            None => bail!("acknowledged record {} (offset {o}) is lost", String::from_utf8_lossy(v)),
        }
    }
    eprintln!("verified: {} acknowledged records among {} in the log", acked.len(), log.len());
    Ok(())
}

/// Every broker's log tail: a failed phase shows what the brokers did.
fn logs(cluster: &Cluster) -> String {
    (1..=3).map(|id| format!("broker {id}'s log:\n{}\n", cluster.log_tail(id))).collect()
}

/// Three brokers and a replication-factor-3, one-partition topic "ledger";
/// returns the partition's leader.
async fn ledger_cluster() -> anyhow::Result<(Cluster, TestClient, u64)> {
    let (cluster, client, leaders) = cluster_with_topic(3, "ledger", 1, 3, START).await?;
    Ok((cluster, client, leaders[0]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leader_then_all_brokers_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let (mut cluster, client, leader) = ledger_cluster().await?;

    let (mut next, mut acked, mut ambiguous) = (0u64, HashMap::new(), 0u64);
    produce_until(&client, &mut next, &mut acked, &mut ambiguous, 200, START).await.with_context(|| logs(&cluster))?;

    // Kill the leader, keep producing: production must resume.
    cluster.kill(leader)?;
    let first = produce_until(&client, &mut next, &mut acked, &mut ambiguous, 200, START)
        .await
        .with_context(|| logs(&cluster))?;
    eprintln!("leader {leader} SIGKILLed: produce succeeded again after {:?} ({ambiguous} ambiguous failures)", first);
    let new_leader = client.wait_leaders("ledger", START).await?[0];
    assert_ne!(new_leader, leader);
    verify(&client, &cluster, &acked).await?;

    // The killed broker comes back and catches up.
    cluster.restart(leader)?;
    cluster.wait_serving(START).await?;
    produce_until(&client, &mut next, &mut acked, &mut ambiguous, 50, START).await.with_context(|| logs(&cluster))?;
    let total = acked.len();
    // A failed fetch fails the test (`Ok(Err)`), as before.
    eventually("the restarted broker to catch up", START, || async {
        let (log, _) = match client.fetch_from(&cluster.node(leader).addr, "ledger", 0, 0).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if log.len() >= total {
            Ok(Ok(()))
        } else {
            Err(format!("restarted broker has {} of {total} records", log.len()))
        }
    })
    .await??;

    // Kill every broker at once, restart them all.
    for id in 1..=3 {
        cluster.kill(id)?;
    }
    for id in 1..=3 {
        cluster.restart(id)?;
    }
    cluster.wait_serving(START).await?;
    verify(&client, &cluster, &acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_away_and_exits_cleanly() -> anyhow::Result<()> {
    let (mut cluster, client, leader) = ledger_cluster().await?;
    let (mut next, mut acked, mut ambiguous) = (0u64, HashMap::new(), 0u64);
    produce_until(&client, &mut next, &mut acked, &mut ambiguous, 100, START).await.with_context(|| logs(&cluster))?;

    let status = cluster.terminate(leader, Duration::from_secs(15))?;
    assert!(status.success(), "broker {leader} exited with {status} after SIGTERM");
    // Leadership was handed over before it stopped: a new leader is there
    // and production goes on with no ambiguous failure.
    let first = produce_until(&client, &mut next, &mut acked, &mut ambiguous, 100, START)
        .await
        .with_context(|| logs(&cluster))?;
    eprintln!("after SIGTERM of leader {leader}: produce succeeded after {first:?}, {ambiguous} ambiguous failures");
    assert_eq!(ambiguous, 0, "an orderly stop must not fail acknowledged-or-not writes ambiguously");
    let new_leader = client.wait_leaders("ledger", START).await?[0];
    assert_ne!(new_leader, leader);
    verify(&client, &cluster, &acked).await?;
    Ok(())
}
