//! Test-only fault hooks, set with the `FERROLOG_FAILPOINTS` environment
//! variable when a broker starts, e.g. `produce.drop_response=2`.
//!
//! They exist only in builds with the cargo feature `failpoints`, which the
//! workspace build turns on (the `ferrolog-tests` package asks for it). The
//! image ships that same binary (deploy/docker/build.sh: what was tested is
//! what runs), so the hooks are inert unless the variable is set, and a
//! broker that finds it set says so at WARN when it starts. A broker built
//! without them (`cargo build -p ferrolog`, `cargo install`) refuses to
//! start when the variable is set ([`check_supported`]): a test never
//! silently runs without its fault.
//!
//! - `produce.drop_response=N`: the next N produces that appended a batch
//!   (and met their acks level) answer `UNAVAILABLE` instead of their
//!   offsets, as if the response was lost on the network. The append stands:
//!   a client that retries must not duplicate it. Answers to retries found
//!   to be duplicates are not dropped.
//! - `tasks.panic=NAME`: the supervised background task NAME (e.g.
//!   `retention`) panics as it starts; the broker must stop with an error
//!   naming it.
//! - `storage.fail_syncs_after=N`: every WAL fsync after the first N fails
//!   (an injected EIO, nothing synced). The store refuses every later write
//!   and the broker halts (fail-stop): what was not synced is never
//!   acknowledged.
//! - `storage.skip_syncs=1`: every WAL fsync is skipped and reported done
//!   (a disk that lies about fsync): acknowledged writes live only in the
//!   page cache. The power-loss tests use it to show that a power cut then
//!   loses acknowledged records, i.e. that the tests can fail.
//! - `raft.fail_led_log_reads_on_sigusr1=1`: on SIGUSR1, every partition
//!   group this broker leads at that moment fails each later read of its
//!   Raft log (as a corrupt value would), so its Raft core stops while the
//!   broker keeps running ([`ferrolog_raft::faults`]).
//! - `clock.skew_ms=N`: the broker's wall clock, as the partition clock
//!   proposals read it, runs N ms ahead (a clock jump on one broker).
//! - `groups.fail_fetch_offsets_ms=N`: every FetchOffsets answers
//!   `UNAVAILABLE` for N ms from the first one this broker receives (a
//!   coordinator that cannot answer for a while); other group RPCs work.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::error::BrokerError;

/// The environment variable holding the fault hooks.
pub const ENV: &str = "FERROLOG_FAILPOINTS";

fn drops_left() -> &'static AtomicU64 {
    static DROPS: OnceLock<AtomicU64> = OnceLock::new();
    DROPS.get_or_init(|| {
        AtomicU64::new(if cfg!(feature = "failpoints") { parse(&std::env::var(ENV).unwrap_or_default()) } else { 0 })
    })
}

fn parse(spec: &str) -> u64 {
    value(spec, "produce.drop_response").unwrap_or(0)
}

/// The number given to failpoint `key` in `spec` (`k=v,k=v`).
fn value(spec: &str, key: &str) -> Option<u64> {
    spec.split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `storage.fail_syncs_after`: how many WAL syncs succeed before every
/// later one fails. `None` (always, in builds without failpoints) means never.
pub fn fail_syncs_after() -> Option<u64> {
    if !cfg!(feature = "failpoints") {
        return None;
    }
    value(&std::env::var(ENV).unwrap_or_default(), "storage.fail_syncs_after")
}

/// `storage.skip_syncs`: whether WAL fsyncs are skipped (never, in
/// builds without failpoints).
pub fn skip_syncs() -> bool {
    cfg!(feature = "failpoints") && value(&std::env::var(ENV).unwrap_or_default(), "storage.skip_syncs") == Some(1)
}

/// `tasks.panic`: whether the supervised task `name` is to panic at start.
pub fn panic_task(name: &str) -> bool {
    cfg!(feature = "failpoints")
        && std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k.trim() == "tasks.panic" && v.trim() == name)
}

/// Refuses fault hooks this build cannot honour: `FERROLOG_FAILPOINTS` is
/// set but the binary was built without the `failpoints` feature.
pub fn check_supported() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(spec) if !spec.trim().is_empty() && !cfg!(feature = "failpoints") => Err(format!(
            "{ENV}={spec:?} is set, but this binary was built without fault hooks \
             (cargo feature `failpoints`: build the workspace, not `-p ferrolog` alone)"
        )),
        Ok(spec) if !spec.trim().is_empty() => {
            tracing::warn!(spec = %spec, "{ENV} is set: test fault hooks are active in this broker");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `raft.fail_led_log_reads_on_sigusr1`: waits for SIGUSR1, then makes
/// every later log read of the partition groups led here fail. Returns at
/// once when the failpoint is not set.
pub async fn fail_led_log_reads_on_sigusr1(groups: std::sync::Arc<crate::groups::Groups>) {
    if !cfg!(feature = "failpoints")
        || value(&std::env::var(ENV).unwrap_or_default(), "raft.fail_led_log_reads_on_sigusr1") != Some(1)
    {
        return;
    }
    let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) else {
        tracing::error!("failpoint raft.fail_led_log_reads_on_sigusr1: cannot listen for SIGUSR1");
        return;
    };
    while signal.recv().await.is_some() {
        use openraft::async_runtime::watch::WatchReceiver;
        let led: Vec<_> = groups
            .replicas()
            .into_iter()
            .filter(|r| r.raft.metrics().borrow_watched().state == openraft::ServerState::Leader)
            .map(|r| r.group)
            .collect();
        tracing::warn!(groups = ?led, "failpoint raft.fail_led_log_reads_on_sigusr1: log reads of these groups fail from now on");
        for g in led {
            ferrolog_raft::faults::fail_log_reads_of(g);
        }
    }
}

/// `clock.skew_ms`: how far ahead of the real one this broker's wall clock
/// runs for the partition clock (a clock jump); 0 without the failpoint.
pub fn clock_skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        if !cfg!(feature = "failpoints") {
            return 0;
        }
        value(&std::env::var(ENV).unwrap_or_default(), "clock.skew_ms").map_or(0, |v| v as i64)
    })
}

/// `groups.fail_fetch_offsets_ms`: fails FetchOffsets for that many ms
/// from the first one received.
pub fn fail_fetch_offsets() -> Result<(), BrokerError> {
    static WINDOW: OnceLock<Option<(std::time::Instant, std::time::Duration)>> = OnceLock::new();
    if !cfg!(feature = "failpoints") {
        return Ok(());
    }
    let window = WINDOW.get_or_init(|| {
        value(&std::env::var(ENV).unwrap_or_default(), "groups.fail_fetch_offsets_ms")
            .map(|ms| (std::time::Instant::now(), std::time::Duration::from_millis(ms)))
    });
    match window {
        Some((from, len)) if from.elapsed() < *len => {
            tracing::warn!("failpoint groups.fail_fetch_offsets_ms: failing FetchOffsets");
            Err(BrokerError::Unavailable("failpoint: committed offsets unavailable".into()))
        }
        _ => Ok(()),
    }
}

/// `produce.drop_response`: fails the response of a produce that appended
/// its batch (not of a retry answered as a duplicate) while drops are left.
pub fn drop_produce_response(duplicate: bool) -> Result<(), BrokerError> {
    let left = drops_left();
    if duplicate || left.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    if left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        tracing::warn!("failpoint produce.drop_response: dropping the response of an appended batch");
        return Err(BrokerError::Unavailable("failpoint: produce response dropped after the append".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_spec() {
        assert_eq!(super::parse("produce.drop_response=3"), 3);
        assert_eq!(super::parse("x=1, produce.drop_response = 2"), 2);
        assert_eq!(super::parse(""), 0);
        assert_eq!(super::parse("produce.drop_response=x"), 0);
        assert_eq!(
            super::value("produce.drop_response=1,storage.fail_syncs_after=40", "storage.fail_syncs_after"),
            Some(40)
        );
        assert_eq!(super::value("produce.drop_response=1", "storage.fail_syncs_after"), None);
    }
}
