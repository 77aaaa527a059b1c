//! The broker's handles, driven in-process against one- and three-broker
//! clusters (real RocksDB, real Raft over loopback gRPC, no processes):
//! the three acks paths, idempotence and fencing, the fetch rules (long
//! poll, not-yet-available vs out of range) and the coordinator.

use std::collections::BTreeSet;
use std::time::Duration;

use ferrolog_broker::error::BrokerError;
use ferrolog_broker::handles::coordinator::HeartbeatArgs;
use ferrolog_broker::handles::coordinator::ResetTarget;
use ferrolog_broker::handles::partition::Acks;
use ferrolog_broker::handles::partition::FetchArgs;
use ferrolog_broker::handles::partition::OffsetSpec;
use ferrolog_tests::eventually;
use ferrolog_tests::inproc::InProcCluster;
use ferrolog_tests::inproc::batch;
use ferrolog_tests::inproc::idempotent_batch;

fn now_fetch(offset: u64) -> FetchArgs {
    FetchArgs { offset, max_wait: Duration::ZERO, max_bytes: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acks_level_answers_as_promised_on_one_broker() -> anyhow::Result<()> {
    let c = InProcCluster::start(1).await?;
    c.create_topic("acks", 1, 1).await?;
    let core = c.partition_leader("acks", 0).await?;

    let all = core.produce("acks", 0, batch(&[b"a", b"b"]), Acks::All, None).await?;
    assert_eq!(all.offsets, Some((0, 1)));
    assert!(all.high_watermark >= 2, "acks=all is answered once committed and applied: {all:?}");
    assert!(!all.duplicate && all.append_time_ms.is_some());

    let one = core.produce("acks", 0, batch(&[b"c"]), Acks::Leader, None).await?;
    assert_eq!(one.offsets, Some((2, 2)), "acks=1 gets its offsets from the leader's own log");

    let zero = core.produce("acks", 0, batch(&[b"d"]), Acks::None, None).await?;
    assert_eq!((zero.offsets, zero.append_time_ms), (None, None), "acks=0 answers before any offset exists");
    // The fire-and-forget record still lands (nothing is failing here).
    let h = core.partition("acks", 0)?;
    eventually("the acks=0 record applied", Duration::from_secs(10), || async {
        if h.bounds().0 == 4 { Ok(()) } else { Err(format!("high watermark {}", h.bounds().0)) }
    })
    .await?;
    let f = h.fetch(now_fetch(0)).await?;
    let counts: Vec<(u64, u32)> = f.batches.iter().map(|(o, b)| (*o, b.header.record_count)).collect();
    assert_eq!(counts, vec![(0, 2), (2, 1), (3, 1)], "in order, each batch at its offset");
    assert_eq!((f.high_watermark, f.log_start), (4, 0));

    // Bad input: refused with its reason, nothing appended.
    let mut corrupt = batch(&[b"e"]);
    corrupt.crc32c ^= 0xff;
    let e = core.produce("acks", 0, corrupt, Acks::All, None).await.expect_err("must fail");
    assert!(matches!(e, BrokerError::CorruptBatch(_)), "{e}");
    let e = core.produce("acks", 7, batch(&[b"e"]), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(e, BrokerError::UnknownPartition { partition: 7, count: 1, .. }), "{e}");
    let e = core.produce("nope", 0, batch(&[b"e"]), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(e, BrokerError::UnknownTopic(_)), "{e}");
    assert_eq!(h.bounds().0, 4, "refused batches appended nothing");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_duplicates_and_gaps_and_zombies_are_refused() -> anyhow::Result<()> {
    let c = InProcCluster::start(1).await?;
    c.create_topic("idem", 1, 1).await?;
    let core = c.partition_leader("idem", 0).await?;
    let (pid, epoch) = core.metadata().init_producer(Some("app".into())).await?;

    let first = core.produce("idem", 0, idempotent_batch(pid, epoch, 0, 3), Acks::All, None).await?;
    assert_eq!(first.offsets, Some((0, 2)));
    let retry = core.produce("idem", 0, idempotent_batch(pid, epoch, 0, 3), Acks::All, None).await?;
    assert!(retry.duplicate, "a retry is answered as a duplicate");
    assert_eq!(retry.offsets, first.offsets, "with the offsets the batch got the first time");
    let gap =
        core.produce("idem", 0, idempotent_batch(pid, epoch, 5, 1), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(gap, BrokerError::OutOfOrderSequence(_)), "{gap}");

    // A new instance of the named producer fences the old one everywhere.
    let (pid2, epoch2) = core.metadata().init_producer(Some("app".into())).await?;
    assert_eq!((pid2, epoch2), (pid, epoch + 1));
    let zombie =
        core.produce("idem", 0, idempotent_batch(pid, epoch, 3, 1), Acks::Leader, None).await.expect_err("must fail");
    assert!(matches!(zombie, BrokerError::Fenced(_)), "{zombie}");
    let h = core.partition("idem", 0)?;
    assert_eq!(h.bounds().0, 3, "only the first batch is in the log");

    // Ids and epochs come from InitProducer: made-up ones are refused
    // (retriable: a just-issued id may not have reached this broker yet).
    let made_up =
        core.produce("idem", 0, idempotent_batch(1_000_000, 0, 0, 1), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(&made_up, BrokerError::Unavailable(m) if m.contains("not issued")), "{made_up}");
    let future_epoch =
        core.produce("idem", 0, idempotent_batch(pid, epoch2 + 1, 0, 1), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(&future_epoch, BrokerError::Unavailable(m) if m.contains("not issued")), "{future_epoch}");
    let (anon, anon_epoch) = core.metadata().init_producer(None).await?;
    assert_eq!(anon_epoch, 0);
    core.produce("idem", 0, idempotent_batch(anon, 0, 0, 1), Acks::All, None).await?;
    let anon_bumped =
        core.produce("idem", 0, idempotent_batch(anon, 1, 0, 1), Acks::All, None).await.expect_err("must fail");
    assert!(matches!(&anon_bumped, BrokerError::Unavailable(m) if m.contains("not issued")), "{anon_bumped}");
    assert_eq!(h.bounds().0, 4, "refused batches appended nothing");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_polls_and_tells_out_of_range_from_not_yet_available() -> anyhow::Result<()> {
    let c = InProcCluster::start(3).await?;
    c.create_topic("fetch", 1, 3).await?;
    let leader = c.partition_leader("fetch", 0).await?;
    let lh = leader.partition("fetch", 0)?;
    leader.produce("fetch", 0, batch(&[b"one"]), Acks::All, None).await?;

    // On the settled leader, an offset past the high watermark is out of
    // range (once its Raft metrics show the commit applied: until then it
    // cannot be sure and answers empty, as a follower would).
    let e = eventually("out of range past the high watermark", Duration::from_secs(10), || async {
        match lh.fetch(now_fetch(5)).await {
            Err(e) => Ok(e),
            Ok(f) => Err(format!("answered {} batches", f.batches.len())),
        }
    })
    .await?;
    assert!(matches!(e, BrokerError::OutOfRange { offset: 5, start: 0, end: 1 }), "{e}");
    // At the high watermark: nothing yet, answered at once without waiting...
    let f = lh.fetch(now_fetch(1)).await?;
    assert!(f.batches.is_empty() && f.high_watermark == 1);
    // ...or answered by the next append when long-polling.
    let poll = {
        let lh = lh.clone();
        tokio::spawn(async move {
            lh.fetch(FetchArgs { offset: 1, max_wait: Duration::from_secs(20), max_bytes: None }).await
        })
    };
    let t0 = std::time::Instant::now();
    leader.produce("fetch", 0, batch(&[b"two"]), Acks::All, None).await?;
    let polled = poll.await??;
    assert_eq!(polled.batches.first().map(|(o, _)| *o), Some(1), "the long poll returns the new batch");
    assert!(t0.elapsed() < Duration::from_secs(15), "it did not wait out its whole max_wait");

    // A follower is never sure it is caught up: past its high watermark it
    // answers empty (not yet available), never out of range.
    let follower_id = (1..=3).find(|id| c.core(*id).node_id() != leader.node_id()).expect("a follower");
    let fh = c.core(follower_id).partition("fetch", 0)?;
    let f = fh.fetch(now_fetch(100)).await?;
    assert!(f.batches.is_empty(), "a follower answers empty past its high watermark");
    // It serves committed batches once applied.
    eventually("the follower applied both batches", Duration::from_secs(10), || async {
        let f = fh.fetch(now_fetch(0)).await.map_err(|e| e.to_string())?;
        if f.batches.len() == 2 { Ok(()) } else { Err(format!("{} batches", f.batches.len())) }
    })
    .await?;

    // Produce on a follower points at the leader.
    let e = c.core(follower_id).produce("fetch", 0, batch(&[b"x"]), Acks::All, None).await.expect_err("must fail");
    match e {
        BrokerError::NotLeader { hint, .. } => assert_eq!(hint.leader_id, Some(leader.node_id())),
        other => panic!("expected NOT_LEADER, got {other}"),
    }

    // List offsets: earliest, latest, by time.
    assert_eq!(lh.list_offsets(OffsetSpec::Earliest).await?, 0);
    assert_eq!(lh.list_offsets(OffsetSpec::Latest).await?, 2);
    assert_eq!(lh.list_offsets(OffsetSpec::Timestamp(0)).await?, 0);
    assert_eq!(lh.list_offsets(OffsetSpec::Timestamp(i64::MAX)).await?, 2, "none that late: the end");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_assigns_fences_commits_and_describes() -> anyhow::Result<()> {
    let c = InProcCluster::start(1).await?;
    c.create_topic("orders", 4, 1).await?;
    let core = c.meta_leader().await?;
    let coord = core.coordinator();
    let join = |client: &str| HeartbeatArgs {
        group: "billing".into(),
        client_id: client.into(),
        subscribed: vec!["orders".into()],
        session_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    // A session longer than the broker allows is refused, naming the bound
    // (a dead member could otherwise hold its partitions for weeks).
    let greedy = coord
        .heartbeat(HeartbeatArgs { session_timeout: Some(Duration::from_secs(7 * 24 * 3600)), ..join("greedy") })
        .await
        .expect_err("must fail");
    assert!(matches!(&greedy, BrokerError::InvalidArgument(m) if m.contains("session_timeout_max_ms")), "{greedy}");
    let a = coord.heartbeat(join("a")).await?;
    assert!(a.member_id.starts_with("a-") && a.member_epoch > 0);
    assert_eq!(a.assignment.as_ref().map(BTreeSet::len), Some(4), "a lone member gets every partition");
    assert_eq!(a.heartbeat_interval, Duration::from_secs(3));

    let b = coord.heartbeat(join("b")).await?;
    // b waits for a to release half; a's next heartbeat hands them over.
    let a_owned = a.assignment.clone().unwrap_or_default();
    let a2 = coord
        .heartbeat(HeartbeatArgs {
            member_id: a.member_id.clone(),
            member_epoch: a.member_epoch,
            owned: a_owned,
            ..join("a")
        })
        .await?;
    let a2_set = a2.assignment.clone().unwrap_or_default();
    assert_eq!(a2_set.len(), 2, "a keeps half: {a2:?}");
    // a releases the other half (reports owning only its new assignment).
    let a3 = coord
        .heartbeat(HeartbeatArgs {
            member_id: a.member_id.clone(),
            member_epoch: a2.member_epoch,
            owned: a2_set.clone(),
            ..join("a")
        })
        .await?;
    assert_eq!(a3.assignment.as_ref(), Some(&a2_set));
    let b2 = eventually("b gets the other half", Duration::from_secs(10), || async {
        coord
            .heartbeat(HeartbeatArgs { member_id: b.member_id.clone(), member_epoch: b.member_epoch, ..join("b") })
            .await
            .map_err(|e| e.to_string())
            .and_then(
                |r| if r.assignment.as_ref().map(BTreeSet::len) == Some(2) { Ok(r) } else { Err(format!("{r:?}")) },
            )
    })
    .await?;
    let b_set = b2.assignment.clone().unwrap_or_default();
    assert!(a2_set.is_disjoint(&b_set), "at most one owner per partition");

    // Commits need the current epoch and ownership.
    let tp = a2_set.iter().next().cloned().expect("a owns one");
    coord.commit("billing", a.member_id.clone(), a3.member_epoch, vec![(tp.clone(), 42, "m".into())]).await?;
    let stale =
        coord.commit("billing", a.member_id.clone(), a3.member_epoch - 1, vec![(tp.clone(), 43, String::new())]);
    assert!(matches!(stale.await.expect_err("must fail"), BrokerError::StaleMember(_)));
    let not_owner = b_set.iter().next().cloned().expect("b owns one");
    let e = coord.commit("billing", a.member_id.clone(), a3.member_epoch, vec![(not_owner, 1, String::new())]).await;
    assert!(
        matches!(e.expect_err("must fail"), BrokerError::StaleMember(_)),
        "a commit for a partition it does not own"
    );
    let got = coord.fetch_offsets("billing", &BTreeSet::from([tp.clone()])).await?;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].1.offset, got[0].1.metadata.as_str()), (42, "m"));

    // Describe: both members, every partition, the committed one with its lag.
    let d = coord.describe("billing").await?;
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.offsets.len(), 4);
    assert_eq!(d.offsets.iter().filter(|o| o.committed == 42).count(), 1);

    // Resets and deletes need an empty group.
    let e = coord.reset("billing", "orders", ResetTarget::Earliest).await.expect_err("must fail");
    assert!(matches!(e, BrokerError::GroupNotEmpty(_)), "{e}");
    let e = coord.delete("billing").await.expect_err("must fail");
    assert!(matches!(e, BrokerError::GroupNotEmpty(_)), "{e}");
    coord.leave("billing", &a.member_id).await?;
    coord.leave("billing", &b.member_id).await?;
    let set = coord.reset("billing", "orders", ResetTarget::Latest).await?;
    assert_eq!(set.len(), 4);
    coord.delete("billing").await?;
    let e = coord.describe("billing").await.expect_err("must fail");
    assert!(matches!(e, BrokerError::UnknownGroup(_)), "{e}");
    let e = coord.delete("billing").await.expect_err("must fail");
    assert!(matches!(e, BrokerError::UnknownGroup(_)), "{e}");

    // A member that joins with an epoch but no id is bad input.
    let e = coord.heartbeat(HeartbeatArgs { member_epoch: 3, ..join("c") }).await.expect_err("must fail");
    assert!(matches!(e, BrokerError::InvalidArgument(_)), "{e}");
    c.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_not_the_coordinator_and_says_where_it_is() -> anyhow::Result<()> {
    let c = InProcCluster::start(3).await?;
    let leader = c.meta_leader().await?;
    let follower = (1..=3).map(|id| c.core(id)).find(|f| f.node_id() != leader.node_id()).expect("a follower");
    let hb = HeartbeatArgs { group: "g".into(), subscribed: vec![], ..Default::default() };
    match follower.coordinator().heartbeat(hb).await.expect_err("must fail") {
        BrokerError::NotLeader { hint, .. } => assert_eq!(hint.leader_id, Some(leader.node_id())),
        other => panic!("expected NOT_LEADER, got {other}"),
    }
    let d = eventually("every broker alive", Duration::from_secs(10), || async {
        let d = leader.metadata().describe_cluster().await.map_err(|e| e.to_string())?;
        if d.brokers.iter().all(|b| b.alive) { Ok(d) } else { Err(format!("{d:?}")) }
    })
    .await?;
    assert_eq!(d.brokers.len(), 3);
    assert_eq!(d.metadata_leader, leader.node_id());
    c.stop().await
}
