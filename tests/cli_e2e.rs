//! The `ferrolog` command line against a real `ferrolog dev` cluster:
//! topic create/list/describe, produce with each acks level, consume
//! without a group, cluster status, and bad input giving a non-zero exit
//! status with a one-line reason.

use std::io::Write;
use std::net::TcpListener;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use anyhow::ensure;
use ferrolog_tests::cluster::ferrolog_bin;
use ferrolog_tests::wait_for;

/// A base port with base..base+2 and base+1000..base+1002 free.
fn free_base_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !(10_000..=60_000).contains(&base) {
            continue;
        }
        let ok = (0..3).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + 1000 + i)).is_ok()
        });
        if ok {
            return Ok(base);
        }
    }
    bail!("no free port range found")
}

struct Dev {
    child: Child,
    brokers: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let exited =
            wait_for("ferrolog dev to exit", Duration::from_secs(20), || matches!(self.child.try_wait(), Ok(Some(_))));
        if exited.is_err() {
            let _ = self.child.kill();
        }
    }
}

fn start_dev() -> anyhow::Result<Dev> {
    const READY: &str = "stop: Ctrl-C";
    let dir = tempfile::tempdir()?;
    let base = free_base_port()?;
    let out = dir.path().join("dev.out");
    let mut child = Command::new(ferrolog_bin()?)
        .args(["dev", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    // Stops once ready, exited, or try_wait fails; which one is read below.
    let waited = wait_for("ferrolog dev to be ready", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).unwrap_or_default().contains(READY) || !matches!(child.try_wait(), Ok(None))
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if !text.contains(READY) {
        if let Some(status) = child.try_wait()? {
            bail!("ferrolog dev exited early ({status}): {text}");
        }
        let e = waited.err().unwrap_or_else(|| anyhow::anyhow!("ferrolog dev neither ready nor exited"));
        return Err(e.context(format!("ferrolog dev not ready: {text}")));
    }
    let brokers = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    Ok(Dev { child, brokers, _dir: dir })
}

fn ferrolog(dev: &Dev, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
    let mut child = Command::new(ferrolog_bin()?)
        .args(args)
        .env("FERROLOG_BROKERS", &dev.brokers)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn ok(dev: &Dev, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let out = ferrolog(dev, args, stdin)?;
    ensure!(
        out.status.success(),
        "ferrolog {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a command that must fail; returns its stderr, whose last line must
/// be the one-line reason `error: ...` (diagnostics may precede it).
fn fails(dev: &Dev, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let out = ferrolog(dev, args, stdin)?;
    ensure!(!out.status.success(), "ferrolog {args:?} should fail");
    let err = String::from_utf8(out.stderr)?;
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    ensure!(last.starts_with("error: "), "a one-line reason expected last, got: {err:?}");
    Ok(err)
}

#[test]
fn every_command_s_help_shows_an_example() -> anyhow::Result<()> {
    for cmd in [
        "server",
        "dev",
        "topic",
        "topic create",
        "topic describe",
        "produce",
        "consume",
        "group",
        "group describe",
        "group reset-offsets",
        "cluster",
        "cluster status",
        "bench",
        "bench produce",
        "bench consume",
        "bench coordinator",
    ] {
        let out = Command::new(ferrolog_bin()?).args(cmd.split(' ')).arg("--help").output()?;
        ensure!(out.status.success(), "ferrolog {cmd} --help failed");
        let text = String::from_utf8(out.stdout)?;
        ensure!(
            text.contains("Example: ferrolog") || text.contains("| ferrolog"),
            "ferrolog {cmd} --help shows no example:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn cli_against_a_dev_cluster() -> anyhow::Result<()> {
    let dev = start_dev()?;
    let created = ok(&dev, &["topic", "create", "orders", "--partitions", "3"], "")?;
    ensure!(created.contains("created topic orders"), "{created}");
    let list = ok(&dev, &["topic", "list", "--output", "json"], "")?;
    let list: serde_json::Value = serde_json::from_str(&list)?;
    ensure!(list[0]["name"] == "orders" && list[0]["partitions"].as_array().map(Vec::len) == Some(3), "{list}");

    // Produce with each acks level; keys pick partitions (murmur2).
    let mut acked = Vec::new();
    for (acks, n) in [("all", 5), ("1", 5), ("0", 5)] {
        let input: String = (0..n).map(|i| format!("k{i}:acks{acks}-{i}\n")).collect();
        let out = ok(&dev, &["produce", "orders", "--acks", acks, "--key-separator", ":", "--print-offsets"], &input)?;
        if acks != "0" {
            ensure!(out.lines().count() == n, "one offset line per record with acks={acks}: {out:?}");
            acked.extend((0..n).map(|i| format!("acks{acks}-{i}")));
        }
    }
    let out = ok(&dev, &["consume", "orders", "--from-beginning", "--timeout-ms", "3000", "--format", "json"], "")?;
    let records: Vec<serde_json::Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let values: Vec<String> = records.iter().map(|r| r["value"].as_str().unwrap_or_default().to_string()).collect();
    for v in &acked {
        ensure!(values.iter().filter(|x| *x == v).count() == 1, "acknowledged {v} must be consumed once: {values:?}");
    }
    let mut unique = values.clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == values.len(), "no duplicates: {values:?}");
    // The same key lands on the same partition whatever the acks level.
    for r in &records {
        let key = r["key"].as_str().unwrap_or_default().to_string();
        let same: Vec<&serde_json::Value> = records.iter().filter(|o| o["key"] == key.as_str()).collect();
        ensure!(same.iter().all(|o| o["partition"] == r["partition"]), "key {key} on several partitions");
    }
    // --partition/--offset and --max-messages.
    let one = ok(&dev, &["consume", "orders", "--partition", "0", "--offset", "0", "--max-messages", "1"], "")?;
    ensure!(one.lines().count() == 1, "{one:?}");

    let d = ok(&dev, &["topic", "describe", "orders", "--output", "json"], "")?;
    let d: serde_json::Value = serde_json::from_str(&d)?;
    let hw: i64 =
        d["partitions"].as_array().context("partitions")?.iter().filter_map(|p| p["high_watermark"].as_i64()).sum();
    ensure!(hw as usize == values.len(), "high watermarks {hw} vs {} records consumed", values.len());

    let status = ok(&dev, &["cluster", "status", "--output", "json"], "")?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    ensure!(status["brokers"].as_array().map(Vec::len) == Some(3), "{status}");
    ensure!(status["brokers"].as_array().is_some_and(|b| b.iter().all(|b| b["alive"] == true)), "{status}");

    // Bad input: non-zero exit, one clear line.
    let e = fails(&dev, &["topic", "create", "bad name"], "")?;
    ensure!(e.contains("invalid topic name"), "{e}");
    let e = fails(&dev, &["topic", "create", "orders"], "")?;
    ensure!(e.contains("already exists"), "{e}");
    let e = fails(&dev, &["produce", "nope"], "x\n")?;
    ensure!(e.contains("unknown topic"), "{e}");
    let e = fails(&dev, &["produce", "orders", "--partition", "7"], "x\n")?;
    ensure!(e.contains("no partition 7"), "{e}");
    let e = fails(&dev, &["topic", "create", "t2", "--config", "retention.ms=abc"], "")?;
    ensure!(e.contains("not a number"), "{e}");
    let e = fails(&dev, &["topic", "create", "t3", "--replication-factor", "5"], "")?;
    ensure!(e.contains("replication factor"), "{e}");
    let big = "x".repeat(2 << 20);
    let e = fails(&dev, &["produce", "orders", "--partition", "0"], &format!("{big}\n"))?;
    ensure!(e.contains("not acknowledged") && e.contains("max.message.bytes"), "{e}");

    // A group consumes everything and commits; describe shows no lag; a
    // reset to the earliest offsets shows the whole topic as lag.
    let out = ok(&dev, &["consume", "orders", "--group", "billing", "--from-beginning", "--timeout-ms", "3000"], "")?;
    ensure!(out.lines().count() == values.len(), "the group read {} of {} records", out.lines().count(), values.len());
    let d = ok(&dev, &["group", "describe", "billing", "--output", "json"], "")?;
    let d: serde_json::Value = serde_json::from_str(&d)?;
    let lags: Vec<i64> = d["offsets"].as_array().context("offsets")?.iter().filter_map(|o| o["lag"].as_i64()).collect();
    ensure!(lags.len() == 3 && lags.iter().all(|l| *l == 0), "no lag after consuming everything: {d}");
    ensure!(d["state"] == "empty", "the consumer left: {d}");
    let text = ok(&dev, &["group", "describe", "billing"], "")?;
    ensure!(text.contains("lag"), "{text}");
    ok(&dev, &["group", "reset-offsets", "billing", "--topic", "orders", "--to-earliest"], "")?;
    let d = ok(&dev, &["group", "describe", "billing", "--output", "json"], "")?;
    let d: serde_json::Value = serde_json::from_str(&d)?;
    let lag: i64 = d["offsets"].as_array().context("offsets")?.iter().filter_map(|o| o["lag"].as_i64()).sum();
    ensure!(lag as usize == values.len(), "after a reset to earliest the lag is the whole topic: {d}");
    let groups = ok(&dev, &["group", "list"], "")?;
    ensure!(groups.lines().any(|g| g == "billing"), "{groups}");
    let e = fails(&dev, &["group", "describe", "nope"], "")?;
    ensure!(e.contains("unknown group"), "{e}");
    let e = fails(&dev, &["group", "reset-offsets", "billing", "--topic", "orders"], "")?;
    ensure!(e.contains("--to-earliest"), "{e}");
    ok(&dev, &["group", "delete", "billing"], "")?;

    ok(&dev, &["topic", "delete", "orders"], "")?;
    let e = fails(&dev, &["topic", "describe", "orders"], "")?;
    ensure!(e.contains("unknown topic"), "{e}");
    Ok(())
}

/// A broker in a StatefulSet pod derives its node id, advertised address
/// and peers from the pod name, exactly as `deploy/k8s` configures it
/// (FERROLOG_POD_NAME from the downward API, the initial broker count and
/// the headless Service's domain); a pod added by scaling out joins.
#[test]
fn statefulset_pod_derives_node_id_and_peers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let domain = "ferrolog-brokers.streaming.svc.cluster.local";
    let resolve = |pod: &str| -> anyhow::Result<serde_json::Value> {
        let out = Command::new(ferrolog_bin()?)
            .args(["server", "--print-config", "--listen", "0.0.0.0:9092"])
            .arg("--data-dir")
            .arg(dir.path().join(pod))
            .env("FERROLOG_POD_NAME", pod)
            .env("FERROLOG_STATEFULSET_INITIAL_BROKERS", "3")
            .env("FERROLOG_PEER_DOMAIN", domain)
            .output()?;
        ensure!(out.status.success(), "print-config failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let c = resolve("ferrolog-1")?;
    ensure!(c["node_id"] == 2, "{c}");
    ensure!(c["advertise"] == format!("ferrolog-1.{domain}:9092"), "{c}");
    ensure!(c["peers"]["1"] == format!("ferrolog-0.{domain}:9092"), "{c}");
    ensure!(c["peers"]["3"] == format!("ferrolog-2.{domain}:9092"), "{c}");
    ensure!(c["peers"].as_object().map(|p| p.len()) == Some(3), "{c}");
    ensure!(c["join"].as_array().is_some_and(|j| j.is_empty()), "{c}");
    let c = resolve("ferrolog-4")?;
    ensure!(c["node_id"] == 5, "{c}");
    ensure!(c["peers"].as_object().is_some_and(|p| p.is_empty()), "{c}");
    ensure!(c["join"][0] == format!("ferrolog-0.{domain}:9092"), "{c}");
    Ok(())
}

/// A background task that dies stops the broker: a clear log line naming
/// the task and a non-zero exit status (here the retention task panics as
/// it starts, by a fault hook).
#[test]
fn a_broker_whose_critical_task_panics_stops_with_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = ferrolog_tests::cluster::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(ferrolog_bin()?)
        .args(["server", "--node-id", "1", "--listen", &addr, "--peers", &format!("1={addr}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("FERROLOG_FAILPOINTS", "tasks.panic=retention")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    // Stops at an exit or at an error of try_wait (read again below).
    if let Err(e) = wait_for("the broker to exit", Duration::from_secs(30), || !matches!(child.try_wait(), Ok(None))) {
        let _ = child.kill();
        return Err(e.context("the broker kept running with a dead retention task"));
    }
    let status = child.try_wait()?.context("the broker exited but has no status")?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(!status.success(), "must exit non-zero, got {status}");
    ensure!(stderr.contains("critical task retention"), "names the task: {stderr}");
    Ok(())
}
