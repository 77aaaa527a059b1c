//! `ferrolog dev`: a local cluster of N brokers as child processes, in one
//! command. Node i listens on base-port + i - 1 (metrics on base-port +
//! 1000 + i - 1); data persists in the data dir between runs. Ctrl-C or
//! SIGTERM stops the brokers (SIGTERM each, so they hand leadership off and
//! flush) and waits for them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tokio::process::Child;
use tokio::process::Command;

/// Start a local cluster.
///
/// Example: ferrolog dev --nodes 3 --data-dir /tmp/ferrolog-dev --base-port 9092
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the brokers keep their data (kept between runs).
    #[arg(long, default_value = "/tmp/ferrolog-dev")]
    data_dir: PathBuf,
    /// Port of broker 1; broker i listens on base-port + i - 1.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
}

/// How long the brokers get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be 1..=9, got {}", args.nodes);
    }
    let exe = std::env::current_exe().context("find the ferrolog binary")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let addr = |i: u64| format!("127.0.0.1:{}", u64::from(args.base_port) + i - 1);
    let peers: Vec<String> = (1..=args.nodes).map(|i| format!("{i}={}", addr(i))).collect();
    let peers = peers.join(",");
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log"))?;
        let metrics = format!("127.0.0.1:{}", u64::from(args.base_port) + 1000 + i - 1);
        let child = Command::new(&exe)
            .args(["server", "--node-id", &i.to_string(), "--listen", &addr(i), "--peers", &peers])
            .args(["--metrics-listen", &metrics])
            .arg("--data-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start broker {i}"))?;
        children.push(child);
    }
    let brokers: Vec<String> = (1..=args.nodes).map(addr).collect();
    let ready = wait_ready(&brokers).await;
    if let Err(e) = ready {
        stop(&mut children).await;
        return Err(e.context(format!("brokers' logs are in {}/node-*/broker.log", args.data_dir.display())));
    }
    for i in 1..=args.nodes {
        println!(
            "broker {i}: {} (metrics http://127.0.0.1:{}/metrics)",
            addr(i),
            u64::from(args.base_port) + 1000 + i - 1
        );
    }
    println!("data: {}   stop: Ctrl-C", args.data_dir.display());
    println!("try: export FERROLOG_BROKERS={}", brokers.join(","));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        (i, status) = first_exit(&mut children) => {
            stop(&mut children).await;
            bail!("broker {} exited unexpectedly ({status})", i + 1);
        }
    }
    eprintln!("stopping the brokers");
    stop(&mut children).await;
    Ok(())
}

/// Waits until every broker reports SERVING on `grpc.health.v1`.
async fn wait_ready(brokers: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for b in brokers {
        loop {
            let serving = async {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{b}")).ok()?.connect().await.ok()?;
                let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
                let r = c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()?;
                Some(r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            }
            .await
            .unwrap_or(false);
            if serving {
                break;
            }
            if Instant::now() > deadline {
                bail!("broker {b} not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn first_exit(children: &mut [Child]) -> (usize, String) {
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every broker, then wait (killing what does not stop in time).
async fn stop(children: &mut [Child]) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            // kill(2) through the `kill` command: the workspace forbids
            // unsafe code, and tokio's Child only sends SIGKILL.
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(STOP_TIMEOUT, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}
