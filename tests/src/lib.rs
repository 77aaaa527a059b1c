//! Helpers shared by Ferrolog's cross-crate tests: seeds that are printed
//! and replayable, deterministic payloads, real broker clusters, a minimal
//! client, and waiting for conditions.

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod inproc;
pub mod lossyfs;
pub mod netfault;
use std::time::Duration;
use std::time::Instant;

/// The seed for a randomized test: `FERROLOG_SEED` if set (to replay a
/// failure), else derived from the clock. Always printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FERROLOG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("{test}: seed {seed} (replay with FERROLOG_SEED={seed})");
    seed
}

/// The payload the crash test writes at `(group, index)`: recomputable by
/// the checker, so a value that comes back is checked byte for byte.
pub fn payload_for(group: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x = (group << 32) ^ index ^ 0xA5A5_5A5A_DEAD_BEEF;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

/// Checks `cond` every 50 ms until it returns `Some` or `timeout` passes,
/// then fails naming `what` and the last state `cond` reported.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match cond().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
