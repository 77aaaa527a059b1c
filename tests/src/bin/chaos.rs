//! `ferrolog-chaos`: long randomized chaos runs, or checking a saved history.
//!
//! ```text
//! ferrolog-chaos [--seeds N] [--seed S] [--secs T] [--brokers B] [--partitions P]
//!                [--no-network] [--power-loss] [--faults LIST] [--duration T] [--out DIR]
//! ferrolog-chaos --check history.jsonl
//! ```
//!
//! Runs N consecutive seeds from S (default: one seed from the clock), each
//! with T seconds of faults, writes `DIR/history-<seed>.jsonl` and prints a
//! summary per seed and a total. Exits 1 if any run found an anomaly; the
//! seed replays its schedule. `--power-loss` puts every data dir on the
//! power-loss filesystem and adds power cuts and wiped disks to the nemesis
//! (root and /dev/fuse). `--faults kill,power-cut,...` runs only those kinds
//! (power and wipe kinds turn `--power-loss` on); `--duration` is `--secs`
//! with an optional unit (`90s`, `2m`). `--check` runs the checker on a
//! history file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use ferrolog_tests::chaos::ChaosConfig;

fn usage() -> ! {
    eprintln!(
        "usage: ferrolog-chaos [--seeds N] [--seed S] [--secs T] [--brokers B] [--partitions P] [--no-network] [--power-loss] [--faults LIST] [--duration T] [--out DIR]\n       ferrolog-chaos --check HISTORY.jsonl"
    );
    std::process::exit(2)
}

/// `120`, `120s` or `2m`.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (n, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    Ok(Duration::from_secs(n.parse::<u64>().with_context(|| format!("--duration {s:?}"))? * unit))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = ChaosConfig::default();
    let mut seeds = 1u64;
    let mut seed: Option<u64> = None;
    let mut out = PathBuf::from("chaos-out");
    let mut check: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--seeds" => seeds = val().parse().context("--seeds")?,
            "--seed" => seed = Some(val().parse().context("--seed")?),
            "--secs" => cfg.fault_time = Duration::from_secs(val().parse().context("--secs")?),
            "--brokers" => cfg.brokers = val().parse().context("--brokers")?,
            "--partitions" => cfg.partitions = val().parse().context("--partitions")?,
            "--no-network" => cfg.network = false,
            "--power-loss" => cfg.power_loss = true,
            "--faults" => {
                let list: Vec<String> =
                    val().split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
                if list.iter().any(|k| k.starts_with("power-cut") || k.starts_with("wipe-disk")) {
                    cfg.power_loss = true;
                }
                cfg.faults = Some(list);
            }
            "--duration" => cfg.fault_time = parse_duration(&val())?,
            "--out" => out = PathBuf::from(val()),
            "--check" => check = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    if let Some(path) = check {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let events = ferrolog_checker::parse(&text).context("parse the history")?;
        let report = ferrolog_checker::check(&events);
        println!("{}", serde_json::to_string_pretty(&report)?);
        if !report.valid() {
            bail!("{} anomaly kinds in {}", report.anomalies.len(), path.display());
        }
        return Ok(());
    }
    let first = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut failed = Vec::new();
    let (mut ops, mut faults) = (0usize, 0usize);
    for s in first..first + seeds {
        let mut c = cfg.clone();
        c.seed = s;
        c.history = Some(out.join(format!("history-{s}.jsonl")));
        eprintln!("chaos: seed {s} ({} brokers, {:?} of faults)", c.brokers, c.fault_time);
        let outcome = rt.block_on(ferrolog_tests::chaos::run(c))?;
        println!("{}", outcome.summary());
        ops += outcome.report.ops;
        faults += outcome.faults.len();
        if !outcome.passed() {
            failed.push(s);
        }
    }
    println!("chaos: {seeds} seeds from {first}: {ops} operations, {faults} faults, failed seeds {failed:?}");
    if !failed.is_empty() {
        bail!("anomalies in seeds {failed:?}");
    }
    Ok(())
}
