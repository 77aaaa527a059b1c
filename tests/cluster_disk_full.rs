//! A broker whose disk fills up halts (fail-stop), as it does on a failed
//! fsync, and the cluster carries on without it, losing nothing that was
//! acknowledged.
//!
//! Broker 3's data dir is a small tmpfs. Producers write until RocksDB
//! cannot write its WAL or flush its memtables (ENOSPC). Before, the broker
//! kept running: the Raft cores of the groups it led stopped on the storage
//! error while its broker heartbeats kept their followers parked, so those
//! partitions had no leader for good and produce to them timed out.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use anyhow::ensure;
use ferrolog_client::Acks;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;

const START: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 3;
/// Room left on the small disk beyond what the broker already uses.
const ROOM: u64 = 48 << 20;
/// One batch: 16 records of 16 KiB.
const RECORDS: usize = 16;
const RECORD_BYTES: usize = 16 << 10;
/// Exit status of a broker halted by failed storage (FAIL_STOP_EXIT_CODE).
const FAIL_STOP_EXIT_CODE: i32 = 70;
/// The producers give up when this much went by without the broker halting.
const MAX_PRODUCED: u64 = 1 << 30;

fn value(p: u32, n: u64, i: usize) -> Vec<u8> {
    let mut v = format!("p{p}-b{n}-r{i}-").into_bytes();
    v.resize(RECORD_BYTES, b'x');
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_disk_fills_up_halts_and_the_cluster_carries_on() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    cluster.kill(3)?;
    // Sized from what the broker holds already: ROOM more.
    let du = std::process::Command::new("du").arg("-sb").arg(&cluster.node(3).data_dir).output()?;
    let used: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sb of broker 3's data dir")?;
    let disk = cluster.put_on_small_disk(3, used + ROOM)?;
    eprintln!("broker 3 on a tmpfs of {} MiB ({} MiB used at the start)", (used + ROOM) >> 20, used >> 20);
    cluster.restart(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("full", PARTITIONS, 3).await?;
    let leaders = client.wait_leaders("full", START).await?;
    eprintln!("leaders {leaders:?}");

    // Acknowledged batches: (partition, base offset) -> batch number.
    let mut acked: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut produced: u64 = 0;
    let mut n = 0u64;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = cluster.wait_exit(3, Duration::ZERO).await? {
            break status;
        }
        if produced > MAX_PRODUCED {
            bail!(
                "broker 3 still runs after {} MiB were produced onto its {} MiB disk: {}",
                produced >> 20,
                (used + ROOM) >> 20,
                cluster.log_tail(3)
            );
        }
        for p in 0..PARTITIONS {
            let values: Vec<Vec<u8>> = (0..RECORDS).map(|i| value(p, n, i)).collect();
            let r = client
                .produce("full", p, Acks::All, &values, START)
                .await
                .with_context(|| format!("produce batch {n} to full/{p} ({} MiB produced)", produced >> 20))?;
            acked.insert((p, r.base_offset.context("acks=all answers with offsets")?), n);
            produced += (RECORDS * RECORD_BYTES) as u64;
        }
        n += 1;
    };
    eprintln!("broker 3 exited ({status}) after {:?}, {} MiB produced", started.elapsed(), produced >> 20);
    ensure!(
        status.code() == Some(FAIL_STOP_EXIT_CODE),
        "broker 3 exited with {status}, not the fail-stop status {FAIL_STOP_EXIT_CODE}: {}",
        cluster.log_tail(3)
    );
    ensure!(cluster.log_contains(3, "halting the broker (fail-stop)"), "no fail-stop message: {}", cluster.log_tail(3));

    // The two others carry on: every partition takes writes again.
    for p in 0..PARTITIONS {
        let values: Vec<Vec<u8>> = (0..RECORDS).map(|i| value(p, n, i)).collect();
        let r = client
            .produce("full", p, Acks::All, &values, START)
            .await
            .with_context(|| format!("produce to full/{p} after broker 3 halted"))?;
        acked.insert((p, r.base_offset.context("acks=all answers with offsets")?), n);
    }
    // Nothing acknowledged is lost.
    let leaders = client.wait_leaders("full", START).await?;
    for p in 0..PARTITIONS {
        let leader = leaders[p as usize];
        ensure!(leader != 3, "full/{p} still led by the halted broker");
        let (records, _) = client.fetch_from(&cluster.node(leader).addr, "full", p, 0).await?;
        let by_offset: BTreeMap<u64, &Vec<u8>> = records.iter().map(|(o, v)| (*o, v)).collect();
        for ((q, base), batch) in &acked {
            if *q != p {
                continue;
            }
            for i in 0..RECORDS {
                let offset = base + i as u64;
                ensure!(
                    by_offset.get(&offset).is_some_and(|v| **v == value(p, *batch, i)),
                    "acknowledged record full/{p}@{offset} (batch {batch}) missing or different on broker {leader}"
                );
            }
        }
    }
    eprintln!("{} acknowledged batches all read back; {} MiB on the full disk", acked.len(), disk.used_bytes()? >> 20);
    drop(disk);
    Ok(())
}
