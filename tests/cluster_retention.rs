//! Retention: the oldest data beyond `retention.bytes` / `retention.ms` is
//! deleted, the log start moves forward on every replica, the Raft log is
//! purged behind a snapshot, and a follower that was down past the purge
//! catches up through that snapshot.

use std::time::Duration;

use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::cluster::sample;
use ferrolog_tests::cluster::scrape;
use ferrolog_tests::eventually;
use tonic::Code;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(20);

async fn create(client: &TestClient, name: &str, config: v1::TopicConfig) -> anyhow::Result<()> {
    Ok(client.create_with_config(name, config, OP).await?)
}

async fn fetch_meta(addr: &str, topic: &str, offset: i64) -> Result<v1::FetchResponse, tonic::Status> {
    ferrolog_tests::client::fetch_replica(addr, topic, 0, offset).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bytes_trims_purges_and_a_lagging_follower_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    create(
        &client,
        "logs",
        v1::TopicConfig { retention_ms: None, retention_bytes: Some(20_000), max_message_bytes: None },
    )
    .await?;
    let leader = client.wait_leaders("logs", START).await?[0];
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower)?;

    // ~100 KB into a 20 KB budget.
    for i in 0..100 {
        let v = format!("{i:04}-{}", "x".repeat(1000)).into_bytes();
        client.produce("logs", 0, ferrolog_client::Acks::All, &[v], OP).await?;
    }
    // The leader trims, snapshots and purges its Raft log.
    let leader_addr = cluster.node(leader).addr.clone();
    // A failed fetch or scrape fails the test (`Ok(Err)`), as before.
    let (log_start, hw) = eventually("the leader to trim and purge", OP, || async {
        let r = match fetch_meta(&leader_addr, "logs", 99).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        let text = match scrape(&cluster.node(leader).metrics_addr) {
            Ok(text) => text,
            Err(e) => return Ok(Err(e)),
        };
        let purged = sample(&text, "ferrolog_raft_purged_entries").unwrap_or(0.0);
        // Retention may first run while the batches are still arriving:
        // wait for a pass after the last one (about 20 KB of 100 KB kept).
        if r.log_start_offset >= 75 && purged > 0.0 {
            Ok(Ok((r.log_start_offset as u64, r.high_watermark as u64)))
        } else {
            Err(format!(
                "no trim to about 20 KB of 100 KB and purge on the leader: log start {}, purged {purged}",
                r.log_start_offset
            ))
        }
    })
    .await??;
    assert_eq!(hw, 100);
    assert!(log_start >= 75, "about 20 KB of 100 KB kept, log start {log_start}");
    let e = fetch_meta(&leader_addr, "logs", 0).await.expect_err("offset 0 was deleted");
    assert_eq!(e.code(), Code::OutOfRange);

    // The follower missed everything and the leader's log no longer has it:
    // it can only catch up through the snapshot.
    cluster.restart(follower)?;
    cluster.wait_serving(START).await?;
    let follower_addr = cluster.node(follower).addr.clone();
    let (want, _) = client.fetch_from(&leader_addr, "logs", 0, log_start).await?;
    eventually(&format!("follower {follower} to catch up"), OP, || async {
        match fetch_meta(&follower_addr, "logs", log_start as i64).await {
            Ok(r) if r.high_watermark as u64 == hw => Ok(()),
            Ok(r) => Err(format!("follower {follower} did not catch up: hw {} of {hw}", r.high_watermark)),
            Err(e) => Err(format!("follower {follower} did not catch up: {e}")),
        }
    })
    .await?;
    let (got, _) = client.fetch_from(&follower_addr, "logs", 0, log_start).await?;
    assert_eq!(got, want, "the follower serves exactly the retained records");
    let r = fetch_meta(&follower_addr, "logs", log_start as i64).await?;
    assert!(r.log_start_offset > 0, "the follower's log start moved too");
    assert!(
        cluster.log_tail(follower).contains("installed snapshot"),
        "the follower caught up without a snapshot?\n{}",
        cluster.log_tail(follower)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ms_deletes_expired_batches() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    // `make_batch` stamps records in 2023: with a one-hour retention
    // they are all expired on arrival.
    create(
        &client,
        "old",
        v1::TopicConfig { retention_ms: Some(3_600_000), retention_bytes: None, max_message_bytes: None },
    )
    .await?;
    let leader = client.wait_leaders("old", START).await?[0];
    for i in 0..5 {
        // A plain batch with the 2023 timestamp (the idempotent test producer
        // stamps records with the current time).
        let batch = ferrolog_tests::client::make_batch(&[format!("old-{i}").into_bytes()]);
        client.client().produce("old", 0, ferrolog_client::Acks::All, batch, OP).await?;
    }
    let addr = cluster.node(leader).addr.clone();
    // A failed fetch fails the test (`Ok(Err)`), as before.
    let r = eventually("the expired batches to be deleted", OP, || async {
        let r = match fetch_meta(&addr, "old", 5).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        if r.log_start_offset == 5 {
            Ok(Ok(r))
        } else {
            Err(format!("expired batches not deleted: log start {}", r.log_start_offset))
        }
    })
    .await??;
    assert!(r.batches.is_empty());
    Ok(())
}
