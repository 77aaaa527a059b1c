//! The client fails fast on addresses that refuse connections and skips
//! brokers that hang, as Kafka clients do with their bootstrap list, and
//! reports errors as `ClientError` kinds (no gRPC types).

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::ensure;
use ferrolog_client::Client;
use ferrolog_client::ErrorKind;
use ferrolog_tests::cluster::ferrolog_bin;
use ferrolog_tests::cluster::free_port;
use ferrolog_tests::inproc::InProcCluster;

/// A port that refuses connections: bound once, then released.
fn refused_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bootstrap_list_fails_within_seconds_naming_every_address() -> anyhow::Result<()> {
    let (a, b) = (refused_addr()?, refused_addr()?);
    let client = Client::new(vec![a.clone(), b.clone()]);
    let t0 = Instant::now();
    let e = client.create_topic("t", 1, 1).await.expect_err("nothing listens");
    let took = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().contains(&a) && e.to_string().contains(&b), "names both addresses: {e}");
    assert!(e.is_retriable());
    assert!(took < Duration::from_secs(5), "failed after {took:?}, not after the 20 s request timeout");
    Ok(())
}

#[test]
fn cluster_status_on_a_refused_address_fails_fast_with_the_address() -> anyhow::Result<()> {
    let addr = refused_addr()?;
    let t0 = Instant::now();
    let out = std::process::Command::new(ferrolog_bin()?)
        .args(["cluster", "status", "--brokers", &addr])
        .output()
        .context("run ferrolog cluster status")?;
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "must fail: {stderr}");
    ensure!(stderr.contains(&addr) && stderr.contains("no broker reachable"), "names the address: {stderr}");
    ensure!(took < Duration::from_secs(5), "took {took:?}");
    Ok(())
}

/// A "broker" that accepts TCP connections and never answers (a SIGSTOPped
/// process looks like this: the kernel completes the handshake).
async fn hung_broker() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s); // never read, never written
        }
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_in_the_bootstrap_list_is_skipped_by_every_request() -> anyhow::Result<()> {
    let cluster = InProcCluster::start(1).await?;
    let (hung, _task) = hung_broker().await?;
    let real = cluster.brokers[0].core.groups().address_of(1).context("broker 1's address")?;
    let client = Client::new(vec![hung.clone(), real]);

    let t0 = Instant::now();
    client.create_topic("skip", 1, 1).await.context("create through the live broker")?;
    let first = t0.elapsed();
    assert!(first < Duration::from_secs(8), "the hung broker cost one attempt at most: {first:?}");

    // Later requests try the suspect last: no wait at all.
    let t1 = Instant::now();
    let e = client.create_topic("skip", 1, 1).await.expect_err("exists");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    client.wait_leaders("skip", Duration::from_secs(20)).await?;
    let again = t1.elapsed();
    assert!(again < Duration::from_secs(3), "the hung broker is skipped now: {again:?}");
    cluster.stop().await
}
