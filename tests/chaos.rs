//! A seeded chaos run in `make test`, checked by `ferrolog-checker`
//! (the harness: `ferrolog_tests::chaos`).
//!
//! Five brokers on their own loopback addresses, every fault of the
//! nemesis (network partitions too when run as root). The test fails on any
//! anomaly or harness error; the summary, with the seed and the history
//! file, is printed either way.
//!
//! `FERROLOG_CHAOS_SEED` replays a schedule; `FERROLOG_CHAOS_SECS` sets the
//! fault phase's length (default 60 s). For long runs over many seeds use
//! the `ferrolog-chaos` binary (docs/reliability.md).

use std::time::Duration;

use ferrolog_tests::chaos::ChaosConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_run_has_no_anomalies() -> anyhow::Result<()> {
    let mut cfg = ChaosConfig::default();
    if let Some(seed) = std::env::var("FERROLOG_CHAOS_SEED").ok().and_then(|s| s.parse().ok()) {
        cfg.seed = seed;
    }
    if let Some(secs) = std::env::var("FERROLOG_CHAOS_SECS").ok().and_then(|s| s.parse().ok()) {
        cfg.fault_time = Duration::from_secs(secs);
    }
    eprintln!("chaos seed {} (FERROLOG_CHAOS_SEED replays it), {:?} of faults", cfg.seed, cfg.fault_time);
    let outcome = ferrolog_tests::chaos::run(cfg).await?;
    eprintln!("{}", outcome.summary());
    anyhow::ensure!(outcome.passed(), "chaos run failed:\n{}", outcome.summary());
    // The run must have exercised what it claims to: every kind of fault
    // (the network ones only as root).
    let kinds = [
        "kill ",
        "kill-leader",
        "kill-metadata-leader",
        "kill-majority",
        "kill-all",
        "pause-leader",
        "fsync-failure",
        "rolling-restart",
    ];
    let net = ["partition ", "isolate-leader", "one-way-from-leader", "bridge"];
    let want: Vec<&str> = if outcome.network_skipped.is_none() {
        kinds.iter().chain(net.iter()).copied().collect()
    } else {
        kinds.to_vec()
    };
    for k in want {
        anyhow::ensure!(outcome.faults.iter().any(|f| f.starts_with(k)), "no {k:?} fault in {:?}", outcome.faults);
    }
    Ok(())
}

/// The power-loss run: every data dir on the power-loss filesystem, the
/// process faults plus power cuts (one broker, a leader, a majority, every
/// broker) and wiped disks; no network faults (the run above has them).
/// `FERROLOG_CHAOS_SEED` / `FERROLOG_CHAOS_SECS` as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_power_loss_chaos_run_has_no_anomalies() -> anyhow::Result<()> {
    let mut cfg = ChaosConfig { power_loss: true, network: false, seed: 20261204, ..ChaosConfig::default() };
    if let Some(seed) = std::env::var("FERROLOG_CHAOS_SEED").ok().and_then(|s| s.parse().ok()) {
        cfg.seed = seed;
    }
    cfg.fault_time =
        Duration::from_secs(std::env::var("FERROLOG_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30));
    eprintln!("power-loss chaos seed {} (FERROLOG_CHAOS_SEED replays it), {:?} of faults", cfg.seed, cfg.fault_time);
    let outcome = ferrolog_tests::chaos::run(cfg).await?;
    eprintln!("{}", outcome.summary());
    anyhow::ensure!(outcome.passed(), "chaos run failed:\n{}", outcome.summary());
    let kinds = [
        "power-cut ",
        "power-cut-leader",
        "power-cut-majority",
        "power-cut-all",
        "wipe-disk of",
        "wipe-disk-while-paused",
        "kill-all",
        "fsync-failure",
    ];
    for k in kinds {
        anyhow::ensure!(outcome.faults.iter().any(|f| f.starts_with(k)), "no {k:?} fault in {:?}", outcome.faults);
    }
    Ok(())
}
