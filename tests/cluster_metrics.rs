//! What an operator scrapes: a live cluster with a consumer group behind
//! shows its lag in records and in seconds on the group coordinator's
//! `/metrics`, and `group describe` shows the same figures.

use std::time::Duration;

use ferrolog_proto::v1;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::cluster::sample;
use ferrolog_tests::cluster::scrape;
use ferrolog_tests::eventually;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(30);
/// How old the produced records are (their batch timestamp).
const AGE_MS: i64 = 120_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_in_records_and_seconds_is_scraped_from_the_coordinator() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("lagged", 2, 3).await?;
    client.wait_leaders("lagged", START).await?;
    // Partition 0: 10 batches of 3 records stamped two minutes ago.
    let stamped = now_ms() - AGE_MS;
    for i in 0..10u8 {
        let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..3).map(|r| (None, vec![i, r])).collect();
        let batch = ferrolog_client::make_batch(&records, stamped);
        client.client().produce("lagged", 0, ferrolog_client::Acks::All, batch, OP).await?;
    }
    // The group consumed 6 of partition 0's 30 records and all of
    // partition 1's (none).
    let commit = v1::CommitOffsetsRequest {
        group: "slow".into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![
            v1::OffsetCommit { topic: "lagged".into(), partition: 0, offset: 6, metadata: String::new() },
            v1::OffsetCommit { topic: "lagged".into(), partition: 1, offset: 0, metadata: String::new() },
        ],
    };
    client
        .client()
        .on_coordinator(OP, |ch| {
            let req = commit.clone();
            async move { v1::groups_client::GroupsClient::new(ch).commit_offsets(req).await }
        })
        .await?;

    let series = |p: u32, m: &str| {
        format!("ferrolog_consumer_group_lag_{m}{{group=\"slow\",topic=\"lagged\",partition=\"{p}\"}}")
    };
    let (records, seconds, caught_up) = eventually("the coordinator to export the group's lag", START, || async {
        for node in &cluster.nodes {
            let Ok(text) = scrape(&node.metrics_addr) else { continue };
            if sample(&text, "ferrolog_metadata_leader") != Some(1.0) {
                continue;
            }
            return match (sample(&text, &series(0, "records")), sample(&text, &series(0, "seconds"))) {
                (Some(r), Some(s)) => Ok((r, s, sample(&text, &series(1, "records")))),
                _ => Err(format!("broker {} leads the metadata group but exports no lag yet", node.id)),
            };
        }
        Err("no broker leads the metadata group".into())
    })
    .await?;
    eprintln!("lag scraped: {records} records, {seconds} s");
    assert_eq!(records, 24.0, "30 records, 6 consumed");
    let age = AGE_MS as f64 / 1000.0;
    assert!(seconds >= age && seconds < age + START.as_secs_f64() * 2.0, "lag of {seconds} s for records {age} s old");
    assert_eq!(caught_up, Some(0.0), "an empty partition has no lag");
    // Every broker counts its open connections: at least its two peers'.
    for node in &cluster.nodes {
        let text = scrape(&node.metrics_addr)?;
        let open = sample(&text, "ferrolog_connections").unwrap_or(0.0);
        assert!(open >= 2.0, "broker {} reports {open} open connections", node.id);
        let (capacity, free) = (
            sample(&text, "ferrolog_disk_capacity_bytes").unwrap_or(0.0),
            sample(&text, "ferrolog_disk_free_bytes").unwrap_or(-1.0),
        );
        assert!(capacity > 0.0 && (0.0..=capacity).contains(&free), "disk {free} free of {capacity}");
    }

    // `group describe` reports the same figures.
    let d = client
        .client()
        .on_coordinator(OP, |ch| async move {
            v1::groups_client::GroupsClient::new(ch)
                .describe_group(v1::DescribeGroupRequest { group: "slow".into() })
                .await
        })
        .await?;
    let p0 = d.offsets.iter().find(|o| o.topic == "lagged" && o.partition == 0).expect("partition 0 in describe");
    assert_eq!((p0.committed_offset, p0.high_watermark, p0.lag), (6, 30, 24));
    assert!(p0.lag_seconds >= age && p0.lag_seconds < age + START.as_secs_f64() * 2.0, "{}", p0.lag_seconds);
    let p1 = d.offsets.iter().find(|o| o.topic == "lagged" && o.partition == 1).expect("partition 1 in describe");
    assert_eq!((p1.lag, p1.lag_seconds), (0, 0.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_makes_its_partitions_under_replicated_until_it_catches_up() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("watched", 1, 3).await?;
    let leader = client.wait_leaders("watched", START).await?[0];
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let leader_metrics = cluster.node(leader).metrics_addr.clone();
    let under = || -> anyhow::Result<f64> {
        Ok(sample(&scrape(&leader_metrics)?, "ferrolog_under_replicated_partitions").unwrap_or(-1.0))
    };
    // Replicating normally: not under-replicated (the first scrape takes
    // the reference, later ones compare).
    client.produce("watched", 0, ferrolog_client::Acks::All, &[b"a".to_vec()], OP).await?;
    assert_eq!(under()?, 0.0);
    cluster.signal(follower, 19)?; // SIGSTOP
    client.produce("watched", 0, ferrolog_client::Acks::All, &[b"b".to_vec()], OP).await?;
    eventually("the leader to report the partition under-replicated", START, || async {
        match under() {
            Ok(v) if v >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    cluster.signal(follower, 18)?; // SIGCONT
    eventually("the partition to be fully replicated again", START, || async {
        match under() {
            Ok(v) if v < 0.5 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}
