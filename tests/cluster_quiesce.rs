//! Idle partitions are quiesced (their Raft tickers parked) and still behave:
//!
//! 1. Once idle, every replica on every broker is quiesced (metrics gauge).
//! 2. A produce to a quiesced partition is acknowledged with acks=all, and a
//!    follower learns the new commit (follower fetch serves it).
//! 3. SIGKILL a broker while its partitions are quiesced: the followers
//!    notice the missing broker heartbeats, elect new leaders, and produce
//!    succeeds on every partition; nothing acknowledged is lost.
//! 4. The killed broker restarts; leadership moves back to the preferred
//!    replicas (placement's first replica) on its own.
//! 5. A leader's Raft core for one partition stops while its broker runs
//!    on and heartbeats: the followers still elect another leader.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::client::cluster_with_topic;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::cluster::sample;
use ferrolog_tests::cluster::scrape;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 6;

/// Waits until every live broker reports all its replicas quiesced.
async fn wait_quiesced(cluster: &Cluster, live: &[u64], timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    // A failed scrape fails the wait (`Ok(Err)`), as before.
    eventually("every replica quiesced", timeout, || async {
        let mut all = true;
        let mut seen = Vec::new();
        for id in live {
            let text = match scrape(&cluster.node(*id).metrics_addr) {
                Ok(text) => text,
                Err(e) => return Ok(Err(e)),
            };
            let q = sample(&text, "ferrolog_partitions_quiesced").unwrap_or(-1.0);
            let r = sample(&text, "ferrolog_partition_replicas").unwrap_or(-2.0);
            seen.push((*id, q, r));
            all &= q == r && r == f64::from(PARTITIONS);
        }
        if all {
            Ok(Ok(()))
        } else {
            Err(format!("replicas not quiesced after {timeout:?}: (broker, quiesced, replicas) = {seen:?}"))
        }
    })
    .await??;
    Ok(start.elapsed())
}

async fn produce_all(client: &TestClient, round: u32) -> anyhow::Result<Vec<u64>> {
    let mut offsets = Vec::new();
    for p in 0..PARTITIONS {
        let v = format!("round-{round}-p{p}").into_bytes();
        let r = client.produce("idle", p, ferrolog_client::Acks::All, &[v], START).await?;
        offsets.push(r.base_offset.context("acks=all answers with offsets")?);
    }
    Ok(offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesced_partitions_serve_fail_over_and_rebalance() -> anyhow::Result<()> {
    let (mut cluster, client, _) = cluster_with_topic(3, "idle", PARTITIONS, 3, START).await?;
    assert_eq!(produce_all(&client, 0).await?, vec![0; PARTITIONS as usize]);

    let took = wait_quiesced(&cluster, &[1, 2, 3], START).await?;
    eprintln!("all {PARTITIONS} replicas on each broker quiesced {took:?} after the last produce");

    // A produce to a quiesced partition is committed; followers learn it.
    assert_eq!(produce_all(&client, 1).await?, vec![1; PARTITIONS as usize]);
    let d = client.client().wait_leaders("idle", START).await?;
    for p in &d.partitions {
        let follower = p.replicas.iter().copied().find(|b| Some(*b) != p.leader).expect("a follower");
        // A failed fetch fails the test (`Ok(Err)`), as before.
        let log = eventually(&format!("follower {follower} of partition {} at hw 2", p.partition), START, || async {
            let (log, hw) = match client.fetch_from(&cluster.node(follower).addr, "idle", p.partition, 0).await {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            if hw == 2 {
                Ok(Ok(log))
            } else {
                Err(format!("follower {follower} of partition {} still at hw {hw}", p.partition))
            }
        })
        .await??;
        let want: Vec<Vec<u8>> = (0..2).map(|r| format!("round-{r}-p{}", p.partition).into_bytes()).collect();
        assert_eq!(log.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), want);
    }

    // Kill a broker while everything is quiesced: every partition it led
    // fails over, and produce succeeds everywhere.
    wait_quiesced(&cluster, &[1, 2, 3], START).await?;
    let leaders = client.wait_leaders("idle", START).await?;
    let victim = leaders[0];
    let led = leaders.iter().filter(|l| **l == victim).count();
    cluster.kill(victim)?;
    let killed_at = Instant::now();
    assert_eq!(produce_all(&client, 2).await?, vec![2; PARTITIONS as usize]);
    eprintln!(
        "broker {victim} (leading {led} quiesced partitions) SIGKILLed: produce to all partitions done {:?} later",
        killed_at.elapsed()
    );
    let after = client.wait_leaders("idle", START).await?;
    assert!(after.iter().all(|l| *l != victim), "leaders after the kill: {after:?}");

    // Back again: it catches up and gets its preferred leaderships back.
    cluster.restart(victim)?;
    cluster.wait_serving(START).await?;
    // A failed describe fails the test (`Ok(Err)`), as before.
    eventually("every partition led by its preferred replica", START, || async {
        let d = match client.client().wait_leaders("idle", START).await {
            Ok(d) => d,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        let off: Vec<(u32, u64, u64)> = d
            .partitions
            .iter()
            .filter(|p| p.replicas.first().copied() != p.leader)
            .map(|p| (p.partition, p.leader.unwrap_or(0), p.replicas[0]))
            .collect();
        if off.is_empty() {
            Ok(Ok(()))
        } else {
            Err(format!("partitions not led by their preferred replica: (partition, leader, preferred) = {off:?}"))
        }
    })
    .await??;
    // Every record is there once, in order, on the restarted broker too.
    for p in 0..PARTITIONS {
        let want: Vec<Vec<u8>> = (0..3).map(|r| format!("round-{r}-p{p}").into_bytes()).collect();
        // A failed fetch fails the test (`Ok(Err)`), as before.
        eventually(&format!("partition {p} on broker {victim} to hold every record"), START, || async {
            let (log, _) = match client.fetch_from(&cluster.node(victim).addr, "idle", p, 0).await {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let got: Vec<Vec<u8>> = log.into_iter().map(|(_, v)| v).collect();
            if got == want {
                Ok(Ok(()))
            } else {
                Err(format!("partition {p} on broker {victim}: {} records, want {}", got.len(), want.len()))
            }
        })
        .await??;
    }
    Ok(())
}

/// The leader's Raft core for a partition stops while its broker keeps
/// running and heartbeating (failpoint: every read of the group's log fails
/// on that broker, as a corrupt value would; openraft stops the core on a
/// storage error). Before, the followers stayed parked as long as the
/// leader's broker heartbeated, and the partition had no leader for good:
/// produce failed until its timeout. Now the broker heartbeats list the
/// stopped group and the followers elect a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_leader_s_raft_core_stopped_elects_another_leader() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with_env(3, &[("FERROLOG_FAILPOINTS", "raft.fail_led_log_reads_on_sigusr1=1")])?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("core", 1, 3).await?;
    let leader = client.wait_leaders("core", START).await?[0];
    let mut acked = Vec::new();
    for i in 0..20 {
        let v = format!("before-{i}").into_bytes();
        let r = client.produce("core", 0, ferrolog_client::Acks::All, std::slice::from_ref(&v), START).await?;
        acked.push((r.base_offset.context("acks=all answers with offsets")?, v));
    }
    let mark = cluster.log_len(leader);
    cluster.signal(leader, libc::SIGUSR1)?;
    eventually("the failpoint armed on the leader", START, || async {
        if cluster.log_contains_since(leader, mark, "log reads of these groups fail from now on") {
            Ok(())
        } else {
            Err("the leader never logged the armed failpoint".to_string())
        }
    })
    .await?;
    let stopped_at = Instant::now();
    // The first produce after the fault stops the core (replication reads
    // the log); produce must then succeed on a new leader.
    for i in 0..20 {
        let v = format!("after-{i}").into_bytes();
        let r = client
            .produce("core", 0, ferrolog_client::Acks::All, std::slice::from_ref(&v), START)
            .await
            .with_context(|| format!("produce {i} after broker {leader}'s Raft core for core/0 stopped"))?;
        acked.push((r.base_offset.context("acks=all answers with offsets")?, v));
    }
    eprintln!("produce resumed {:?} after the core stopped", stopped_at.elapsed());
    ensure_log(&cluster, leader, mark)?;
    let now = client.wait_leaders("core", START).await?[0];
    anyhow::ensure!(now != leader, "broker {leader}, whose core stopped, still named leader");
    let (records, _) = client.fetch_from(&cluster.node(now).addr, "core", 0, 0).await?;
    for (offset, v) in &acked {
        anyhow::ensure!(
            records.iter().any(|(o, r)| o == offset && r == v),
            "acknowledged record at offset {offset} missing or different on the new leader {now}"
        );
    }
    Ok(())
}

/// The stopped core was noticed and told (not some other failover).
fn ensure_log(cluster: &Cluster, leader: u64, mark: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        cluster.log_contains_since(leader, mark, "this replica's Raft core stopped"),
        "broker {leader} never reported its stopped Raft core: {}",
        cluster.log_tail(leader)
    );
    Ok(())
}
