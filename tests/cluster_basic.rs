//! A real 3-broker cluster on loopback: create a replication-factor-3 topic
//! with 3 partitions, produce with every acks level, fetch everything back
//! from every replica; and every bad input gets a clear status.

use std::time::Duration;

use ferrolog_client::ErrorKind;
use ferrolog_proto::errors::Reason;
use ferrolog_proto::errors::reason_of;
use ferrolog_proto::v1;
use ferrolog_proto::v1::broker_client::BrokerClient;
use ferrolog_tests::client::TestClient;
use ferrolog_tests::client::make_proto_batch as make_batch;
use ferrolog_tests::cluster::Cluster;
use ferrolog_tests::eventually;
use tonic::Code;

const START: Duration = Duration::from_secs(60);
const OP: Duration = Duration::from_secs(20);

fn value(acks: &str, p: u32, i: usize) -> Vec<u8> {
    format!("{acks}-p{p}-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_with_each_acks_level() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    let t = client.create_topic("orders", 3, 3).await?;
    assert_eq!(t.partitions.len(), 3);
    for p in &t.partitions {
        let mut r: Vec<u64> = p.replicas.clone();
        r.sort();
        assert_eq!(r, vec![1, 2, 3]);
    }
    client.wait_leaders("orders", START).await?;

    for p in 0..3u32 {
        let mut expected = Vec::new();
        // acks=all and acks=1: each answer names the offsets, dense from 0.
        for (acks, name) in [(ferrolog_client::Acks::All, "all"), (ferrolog_client::Acks::Leader, "one")] {
            for i in 0..10 {
                let values = vec![value(name, p, i), value(name, p, i + 100)];
                let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
                let r = client.produce("orders", p, acks, &values, OP).await?;
                assert_eq!(r.base_offset, Some(expected.len() as u64), "{name} p{p} #{i}: offsets are dense");
                let at = r.append_time_ms.unwrap_or(0);
                assert!(at >= before - 1000, "append time {at} is the broker's clock");
                assert_eq!(r.last_offset, r.base_offset.map(|b| b + 1));
                expected.extend(values);
            }
        }
        // acks=0: no offsets, but the records arrive.
        for i in 0..10 {
            let values = vec![value("zero", p, i)];
            let r = client.produce("orders", p, ferrolog_client::Acks::None, &values, OP).await?;
            assert_eq!((r.base_offset, r.append_time_ms), (None, None));
            expected.extend(values);
        }
        // Every replica serves exactly the committed log, once it caught up.
        for addr in cluster.addrs() {
            // A failed fetch fails the test (`Ok(Err)`), as before.
            let (got, hw) = eventually(&format!("p{p} on {addr} to hold every record"), OP, || async {
                let (got, hw) = match client.fetch_from(&addr, "orders", p, 0).await {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                };
                if got.len() == expected.len() {
                    Ok(Ok((got, hw)))
                } else {
                    Err(format!("p{p} on {addr}: {} of {} records", got.len(), expected.len()))
                }
            })
            .await??;
            let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (0..expected.len() as u64).collect::<Vec<_>>());
            let values: Vec<Vec<u8>> = got.into_iter().map(|(_, v)| v).collect();
            assert_eq!(values, expected, "p{p} on {addr}: records in produce order");
            assert_eq!(hw, expected.len() as u64);
        }
    }

    // Metrics: every broker serves Prometheus text; the leaders counted the
    // produces per acks level (10 + 10 + 10 per partition, 3 partitions).
    let mut produced = [0.0; 3];
    let mut replicas = 0.0;
    for n in &cluster.nodes {
        let text = ferrolog_tests::cluster::scrape(&n.metrics_addr)?;
        for (i, acks) in ["all", "1", "0"].iter().enumerate() {
            produced[i] +=
                ferrolog_tests::cluster::sample(&text, &format!("ferrolog_produce_requests_total{{acks=\"{acks}\"}}"))
                    .unwrap_or(0.0);
        }
        replicas += ferrolog_tests::cluster::sample(&text, "ferrolog_partition_replicas").unwrap_or(0.0);
        assert!(text.contains("ferrolog_rocksdb_write_stopped 0"), "write-stall gauge missing");
    }
    assert!(produced.iter().all(|n| *n >= 30.0), "produce counters per acks level: {produced:?}");
    assert_eq!(replicas, 9.0, "3 partitions x 3 replicas");

    // Leaders start spread like the placement: each new partition is
    // initialized by its preferred (first) replica.
    client.create_topic("spread12", 12, 3).await?;
    let leaders = client.wait_leaders("spread12", START).await?;
    for broker in 1..=3u64 {
        let led = leaders.iter().filter(|l| **l == broker).count();
        assert!((2..=6).contains(&led), "broker {broker} leads {led} of 12 partitions: {leaders:?}");
    }

    // List offsets: earliest, latest, and by timestamp (the test client
    // stamps every record 1_700_000_000_000).
    let leaders = client.wait_leaders("orders", START).await?;
    let mut b = BrokerClient::connect(format!("http://{}", cluster.node(leaders[1]).addr)).await?;
    let list = |spec: v1::OffsetSpec, ts: i64| v1::ListOffsetsRequest {
        topic: "orders".into(),
        partition: 1,
        spec: spec as i32,
        timestamp_ms: ts,
    };
    assert_eq!(b.list_offsets(list(v1::OffsetSpec::Earliest, 0)).await?.into_inner().offset, 0);
    assert_eq!(b.list_offsets(list(v1::OffsetSpec::Latest, 0)).await?.into_inner().offset, 50);
    assert_eq!(b.list_offsets(list(v1::OffsetSpec::Timestamp, 1_600_000_000_000)).await?.into_inner().offset, 0);
    assert_eq!(
        b.list_offsets(list(v1::OffsetSpec::Timestamp, 1_800_000_000_000)).await?.into_inner().offset,
        50,
        "no record at or after the timestamp: the log end"
    );

    // Server reflection (v1) lists the public services, as grpcurl needs.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.node(1).addr))?.connect().await?;
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = refl.server_reflection_info(futures::stream::iter(vec![req])).await?.into_inner();
    let resp = stream.message().await?.expect("a reflection response");
    let Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        anyhow::bail!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["ferrolog.v1.Broker", "ferrolog.v1.Admin", "ferrolog.internal.v1.Raft", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from reflection: {names:?}");
    }

    // Long poll: a fetch at the end waits for the next record.
    let leaders = client.wait_leaders("orders", START).await?;
    let leader_addr = cluster.node(leaders[0]).addr.clone();
    let mut c = BrokerClient::connect(format!("http://{leader_addr}")).await?;
    let end = client.fetch_from(&leader_addr, "orders", 0, 0).await?.1;
    let poll = tokio::spawn(async move {
        c.fetch(v1::FetchRequest {
            topic: "orders".into(),
            partition: 0,
            offset: end as i64,
            max_bytes: 0,
            max_wait_ms: 10_000,
            min_bytes: 1,
        })
        .await
        .map(|r| r.into_inner())
    });
    client.produce("orders", 0, ferrolog_client::Acks::All, &[b"late".to_vec()], OP).await?;
    let r = poll.await??;
    assert_eq!(r.batches.len(), 1, "long poll returns the new batch");
    assert_eq!(r.batches[0].base_offset as u64, end);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("t1", 1, 3).await?;
    let leaders = client.wait_leaders("t1", START).await?;
    let ok = client.produce("t1", 0, ferrolog_client::Acks::All, &[b"kept".to_vec()], OP).await?;
    assert_eq!(ok.base_offset, Some(0));

    // Topic admin errors.
    let e = client.create_topic("t1", 1, 3).await.expect_err("duplicate");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e:?}");
    let e = client.create_topic("bad name!", 1, 1).await.expect_err("invalid name");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not allowed"), "{}", e.message());
    let e = client.create_topic("t2", 1, 4).await.expect_err("rf above brokers");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("replication factor 4"), "{}", e.message());

    let leader = cluster.node(leaders[0]).addr.clone();
    let mut c = BrokerClient::connect(format!("http://{leader}")).await?;
    let produce = |batch: Option<v1::RecordBatch>, topic: &str, partition: u32| v1::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: v1::Acks::All as i32,
        batch,
        timeout_ms: 0,
    };
    // Unknown topic and partition.
    let e = c.produce(produce(Some(make_batch(&[b"x".to_vec()])), "nope", 0)).await.expect_err("unknown topic");
    assert_eq!(e.code(), Code::NotFound);
    let e = c.produce(produce(Some(make_batch(&[b"x".to_vec()])), "t1", 7)).await.expect_err("unknown partition");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no partition 7"), "{}", e.message());
    // Missing, empty, corrupt, oversize batches.
    let e = c.produce(produce(None, "t1", 0)).await.expect_err("no batch");
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut empty = make_batch(&[b"x".to_vec()]);
    empty.record_count = 0;
    let e = c.produce(produce(Some(empty), "t1", 0)).await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut corrupt = make_batch(&[b"x".to_vec()]);
    corrupt.crc32c ^= 1;
    let e = c.produce(produce(Some(corrupt), "t1", 0)).await.expect_err("corrupt");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&e).map(|(r, _)| r), Some(Reason::CorruptBatch));
    let big = make_batch(&[vec![7u8; 2 << 20]]);
    let e = c.produce(produce(Some(big), "t1", 0)).await.expect_err("oversize");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max.message.bytes"), "{}", e.message());
    // Fetch out of range carries the log's bounds.
    let e = c
        .fetch(v1::FetchRequest {
            topic: "t1".into(),
            partition: 0,
            offset: 99,
            max_bytes: 0,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .await
        .expect_err("out of range");
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("0..1"), "{}", e.message());
    // A produce to a follower names the leader.
    let follower = cluster.nodes.iter().find(|n| n.id != leaders[0]).expect("a follower").addr.clone();
    let mut f = BrokerClient::connect(format!("http://{follower}")).await?;
    let e = f.produce(produce(Some(make_batch(&[b"x".to_vec()])), "t1", 0)).await.expect_err("not leader");
    assert_eq!(e.code(), Code::Unavailable);
    let hint = ferrolog_proto::errors::leader_hint(&e).expect("not-leader detail");
    assert_eq!(hint.leader_id, Some(leaders[0]));
    assert_eq!(hint.leader_address.as_deref(), Some(leader.as_str()));

    // Nothing acknowledged was lost, nothing rejected was written.
    let (got, hw) = client.fetch_from(&leader, "t1", 0, 0).await?;
    assert_eq!(got, vec![(0, b"kept".to_vec())]);
    assert_eq!(hw, 1);

    // Deleting the topic removes it; its name can be used again.
    client.admin(OP, |mut c| async move { c.delete_topic(v1::DeleteTopicRequest { name: "t1".into() }).await }).await?;
    // Metadata reaches followers asynchronously: every broker must stop
    // knowing the topic shortly after the delete commits.
    // One wait for all brokers, each poll asking them in order; a failed
    // connect fails the test (`Ok(Err)`), as before.
    let addrs = cluster.addrs();
    eventually("every broker to forget t1", OP, || async {
        for addr in &addrs {
            let mut a = match v1::admin_client::AdminClient::connect(format!("http://{addr}")).await {
                Ok(a) => a,
                Err(e) => return Ok(Err(anyhow::Error::from(e))),
            };
            match a
                .describe_topic(v1::DescribeTopicRequest { name: "t1".into(), local_only: false, replica_lag: false })
                .await
            {
                Err(e) if e.code() == Code::NotFound => {}
                other => return Err(format!("{addr} still describes t1: {other:?}")),
            }
        }
        Ok(Ok(()))
    })
    .await??;
    let e = client
        .admin(OP, |mut c| async move {
            c.describe_topic(v1::DescribeTopicRequest { name: "t1".into(), local_only: false, replica_lag: false })
                .await
        })
        .await
        .expect_err("deleted");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    Ok(())
}

/// `records` (offset deltas as given, every record at timestamp `ts`)
/// under `header`, sealed with a checksum that matches: a producer that
/// lies computes its CRC over the lie.
fn lying_batch(header: ferrolog_types::BatchHeader, deltas: &[u32], ts: i64, compress: bool) -> v1::RecordBatch {
    use prost::Message;
    let list = v1::RecordList {
        records: deltas
            .iter()
            .map(|d| v1::Record {
                key: None,
                value: format!("lie-{d}").into_bytes().into(),
                headers: vec![],
                timestamp_ms: ts,
                offset_delta: *d,
            })
            .collect(),
    };
    let mut bytes = list.encode_to_vec();
    if compress {
        bytes = lz4_flex::compress_prepend_size(&bytes);
    }
    ferrolog_proto::batch::to_proto(0, &ferrolog_types::Batch::seal(header, bytes.into()))
}

/// A client that lies about its batches (a record count that is not the
/// number of records, garbage or mis-numbered records under a valid CRC, a
/// max timestamp no record has, an LZ4 block that claims 4 GiB) is refused
/// with a clear corrupt-batch error, and nothing it sent moves an offset:
/// before the broker decoded batches, a count of 5 over 3 records was
/// stored, and the next producer's record landed at offset 6 instead of 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_lie_about_their_records_are_refused_and_shift_no_offset() -> anyhow::Result<()> {
    use ferrolog_types::BatchHeader;
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    client.create_topic("t1", 1, 3).await?;
    let leaders = client.wait_leaders("t1", START).await?;
    let ok = client.produce("t1", 0, ferrolog_client::Acks::All, &[b"kept".to_vec()], OP).await?;
    assert_eq!(ok.base_offset, Some(0));
    let leader = cluster.node(leaders[0]).addr.clone();
    let mut c = BrokerClient::connect(format!("http://{leader}")).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let plain = |n: u32| BatchHeader::plain(n, now);
    let mut lz4 = plain(1);
    lz4.compression = v1::Compression::Lz4 as u32;
    let mut late = plain(2);
    late.max_timestamp_ms = now + 1_000;
    let bomb = ferrolog_proto::batch::to_proto(
        0,
        &ferrolog_types::Batch::seal(lz4, vec![0xff, 0xff, 0xff, 0xff, 0x00].into()),
    );
    let garbage = ferrolog_proto::batch::to_proto(0, &ferrolog_types::Batch::seal(plain(1), vec![0xffu8; 64].into()));
    let cases: Vec<(&str, v1::RecordBatch, &str)> = vec![
        ("count above the records", lying_batch(plain(5), &[0, 1, 2], now, false), "record_count is 5"),
        ("count below the records", lying_batch(plain(2), &[0, 1, 2], now, false), "record_count is 2"),
        ("repeated offset deltas", lying_batch(plain(3), &[0, 0, 1], now, false), "offset delta"),
        ("offset deltas from 1", lying_batch(plain(3), &[1, 2, 3], now, false), "offset delta"),
        ("a max timestamp no record has", lying_batch(late, &[0, 1], now, false), "max_timestamp_ms"),
        ("a lying count, compressed", lying_batch(lz4, &[0, 1], now, true), "record_count is 1"),
        ("an LZ4 block claiming 4 GiB", bomb, "over the limit"),
        ("garbage under a valid CRC", garbage, "do not decode"),
    ];
    for (what, batch, says) in cases {
        let e = c
            .produce(v1::ProduceRequest {
                topic: "t1".into(),
                partition: 0,
                acks: v1::Acks::All as i32,
                batch: Some(batch),
                timeout_ms: 0,
            })
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(reason_of(&e).map(|(r, _)| r), Some(Reason::CorruptBatch), "{what}: {e:?}");
        assert!(e.message().contains(says), "{what}: {}", e.message());
    }
    // The next honest record lands right after the first: nothing moved.
    let next = client.produce("t1", 0, ferrolog_client::Acks::All, &[b"next".to_vec()], OP).await?;
    assert_eq!(next.base_offset, Some(1), "a refused batch moved the offsets");
    for node in &cluster.nodes {
        let got = eventually("every replica to hold both records", OP, || {
            let (client, addr) = (&client, node.addr.clone());
            async move {
                let (got, hw) = client.fetch_from(&addr, "t1", 0, 0).await.map_err(|e| e.to_string())?;
                if hw >= 2 { Ok(got) } else { Err(format!("hw {hw}")) }
            }
        })
        .await?;
        assert_eq!(got, vec![(0, b"kept".to_vec()), (1, b"next".to_vec())], "broker {}", node.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_broker_joins_and_receives_partitions() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3)?;
    cluster.wait_serving(START).await?;
    let id = cluster.add_joining_node()?;
    cluster.wait_serving(START).await?;
    let client = TestClient::new(cluster.addrs());
    // The cluster knows it (as a metadata learner) and sees it alive.
    // A failed describe fails the test (`Ok(Err)`), as before.
    let c = eventually(&format!("broker {id} listed alive"), START, || async {
        let c = match client
            .admin(OP, |mut c| async move { c.describe_cluster(v1::DescribeClusterRequest {}).await })
            .await
        {
            Ok(c) => c,
            Err(e) => return Ok(Err(anyhow::Error::from(e))),
        };
        if c.brokers.iter().any(|b| b.id == id && b.alive) {
            Ok(Ok(c))
        } else {
            Err(format!("broker {id} not listed alive: {c:?}"))
        }
    })
    .await??;
    let b = c.brokers.iter().find(|b| b.id == id).expect("listed alive above");
    assert!(!b.metadata_voter, "a joined broker is a learner of the metadata group");
    assert_eq!(b.address, cluster.node(id).addr);
    assert_eq!(c.brokers.len(), 4);
    // New topics place replicas on it, and it serves them.
    let t = client.create_topic("spread", 4, 2).await?;
    let on_new: Vec<u32> = t.partitions.iter().filter(|p| p.replicas.contains(&id)).map(|p| p.partition).collect();
    assert_eq!(on_new.len(), 2, "4 partitions x 2 replicas over 4 brokers: 2 on the new one");
    client.wait_leaders("spread", START).await?;
    for p in &on_new {
        let r = client.produce("spread", *p, ferrolog_client::Acks::All, &[b"hello".to_vec()], OP).await?;
        assert_eq!(r.base_offset, Some(0));
        // A failed fetch fails the test (`Ok(Err)`), as before.
        eventually(&format!("the new broker's replica of spread/{p}"), OP, || async {
            let (got, _) = match client.fetch_from(&cluster.node(id).addr, "spread", *p, 0).await {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            if got == vec![(0, b"hello".to_vec())] {
                Ok(Ok(()))
            } else {
                Err(format!("new broker's replica of spread/{p}: {got:?}"))
            }
        })
        .await??;
    }
    Ok(())
}
