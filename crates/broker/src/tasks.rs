//! [`Supervisor`]: the broker's background tasks (reconciler, retention,
//! quiescer, session expiry, consumer lag, metrics server, fail-stop
//! watchdog, leadership hand-off) run under one supervisor.
//!
//! Every task is critical: a broker whose reconciler or quiescer died would
//! keep answering while no longer following placement or failing over. A
//! task that returns before shutdown began, or panics, is logged as the
//! reason (`critical task ... stopped`), the broker stops (orderly: the
//! same path as SIGTERM) and [`crate::run`] returns the error, so the
//! process exits non-zero. (A failed fsync is stricter: it halts at once,
//! see `server.rs`.)

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs and watches the broker's background tasks.
#[derive(Debug, Clone)]
pub struct Supervisor {
    node: u64,
    shutdown: CancellationToken,
    watchers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    /// A supervisor that cancels `shutdown` when a task fails.
    pub fn new(node: u64, shutdown: CancellationToken) -> Self {
        Supervisor { node, shutdown, watchers: Arc::default(), failure: Arc::default() }
    }

    /// Spawns `task` as critical: it must run until `shutdown` is cancelled.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let node = self.node;
        let handle = tokio::spawn(async move {
            // Test hook: a task that panics as soon as it starts.
            if crate::failpoints::panic_task(name) {
                panic!("failpoint tasks.panic={name}");
            }
            task.await
        });
        let (shutdown, failure) = (self.shutdown.clone(), self.failure.clone());
        let watcher = tokio::spawn(async move {
            let why = match handle.await {
                Ok(()) if shutdown.is_cancelled() => return,
                Ok(()) => "returned while the broker was running".to_string(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string panic".into());
                    format!("panicked: {msg}")
                }
                Err(_) => return, // cancelled: the runtime is going away.
            };
            tracing::error!(node, task = name, "critical task {name} stopped ({why}): stopping the broker");
            failure.lock().expect("failure lock").get_or_insert_with(|| format!("critical task {name} {why}"));
            shutdown.cancel();
        });
        self.watchers.lock().expect("watchers lock").push(watcher);
    }

    /// Spawns a task returning a result: an error is a failure too.
    pub fn spawn_fallible<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.spawn(name, async move {
            if let Err(e) = task.await {
                panic!("{e:#}");
            }
            // A clean return of a server task is only expected on shutdown.
            if !shutdown.is_cancelled() {
                shutdown.cancelled().await;
            }
        });
    }

    /// Waits for every task to end (after shutdown was cancelled).
    pub async fn join(&self) {
        let all: Vec<JoinHandle<()>> = std::mem::take(&mut *self.watchers.lock().expect("watchers lock"));
        for w in all {
            let _ = w.await;
        }
    }

    /// Why the broker stopped, if a task failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_broker_and_names_itself() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::new(1, shutdown.clone());
        let sd = shutdown.clone();
        s.spawn("steady", async move { sd.cancelled().await });
        s.spawn("reconciler", async { panic!("boom") });
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled()).await.expect("shutdown cancelled");
        s.join().await;
        let why = s.failure().expect("a failure is recorded");
        assert!(why.contains("reconciler") && why.contains("boom"), "{why}");
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_but_not_on_shutdown() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::new(1, shutdown.clone());
        s.spawn("retention", async {});
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled()).await.expect("shutdown cancelled");
        s.join().await;
        assert!(s.failure().expect("failure").contains("critical task retention returned"));

        let shutdown = CancellationToken::new();
        let s = Supervisor::new(1, shutdown.clone());
        let sd = shutdown.clone();
        s.spawn("quiescer", async move { sd.cancelled().await });
        s.spawn_fallible("metrics server", async { Ok(()) });
        shutdown.cancel();
        s.join().await;
        assert_eq!(s.failure(), None, "tasks that end on shutdown are not failures");
    }

    #[tokio::test]
    async fn a_failing_fallible_task_is_reported_with_its_error() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::new(1, shutdown.clone());
        s.spawn_fallible("metrics server", async { Err(anyhow::anyhow!("bind 127.0.0.1:1: permission denied")) });
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled()).await.expect("shutdown cancelled");
        s.join().await;
        assert!(s.failure().expect("failure").contains("permission denied"));
    }
}
