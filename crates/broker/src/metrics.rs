//! Prometheus metrics, served as text on `--metrics-listen` at `/metrics`.
//!
//! Request counters and latency histograms are updated by the handlers
//! (lock-free atomics). Gauges about Raft groups and RocksDB are computed
//! when scraped, from openraft's metrics and RocksDB properties, so they cost
//! nothing between scrapes.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferrolog_storage::Storage;
use openraft::async_runtime::watch::WatchReceiver;

use crate::groups::Groups;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters and a latency histogram of one kind of request.
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: AtomicU64,
    errors: AtomicU64,
    records: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

impl RequestStats {
    /// Records one request.
    pub fn observe(&self, latency: Duration, records: u64, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.records.fetch_add(records, Ordering::Relaxed);
        self.sum_micros.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        let s = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let l = |extra: &str| {
            let all: Vec<&str> = [labels, extra].into_iter().filter(|s| !s.is_empty()).collect();
            if all.is_empty() { String::new() } else { format!("{{{}}}", all.join(",")) }
        };
        let requests = self.requests.load(Ordering::Relaxed);
        let _ = writeln!(out, "ferrolog_{name}_requests_total{} {requests}", l(""));
        let _ = writeln!(out, "ferrolog_{name}_errors_total{} {}", l(""), self.errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "ferrolog_{name}_records_total{} {}", l(""), self.records.load(Ordering::Relaxed));
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "ferrolog_{name}_latency_seconds_bucket{} {cumulative}", l(&format!("le=\"{b}\"")));
        }
        let _ = writeln!(out, "ferrolog_{name}_latency_seconds_bucket{} {requests}", l("le=\"+Inf\""));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "ferrolog_{name}_latency_seconds_sum{} {sum}", l(""));
        let _ = writeln!(out, "ferrolog_{name}_latency_seconds_count{} {requests}", l(""));
    }
}

/// Every metric of a broker.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Produce, by acks level: all, 1, 0.
    pub produce: [RequestStats; 3],
    /// Fetch.
    pub fetch: RequestStats,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self, groups: &Groups, storage: &Storage) -> String {
        let mut out = String::new();
        out.push_str("# TYPE ferrolog_produce_latency_seconds histogram\n");
        for (i, acks) in ["all", "1", "0"].iter().enumerate() {
            self.produce[i].render(&mut out, "produce", &format!("acks=\"{acks}\""));
        }
        out.push_str("# TYPE ferrolog_fetch_latency_seconds histogram\n");
        self.fetch.render(&mut out, "fetch", "");

        let me = groups.node_id();
        let (mut replicas, mut led, mut under, mut terms, mut commit_lag, mut purged, mut quiesced) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for r in groups.replicas() {
            replicas += 1;
            quiesced += u64::from(r.is_quiesced());
            let m = r.raft.metrics().borrow_watched().clone();
            terms += m.current_term;
            purged += m.purged.map(|l| l.index + 1).unwrap_or(0);
            commit_lag += m.last_log_index.unwrap_or(0).saturating_sub(m.last_applied.map(|l| l.index).unwrap_or(0));
            if m.current_leader == Some(me) {
                led += 1;
                // Under-replicated: some replica has not acknowledged the leader's last entry.
                let last = m.last_log_index;
                if let Some(repl) = &m.replication
                    && repl.values().any(|matched| matched.map(|l| l.index) != last)
                {
                    under += 1;
                }
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP ferrolog_{name} {help}\n# TYPE ferrolog_{name} gauge\nferrolog_{name} {v}");
        };
        gauge(&mut out, "partition_replicas", "Partition replicas on this broker.", replicas);
        gauge(&mut out, "partitions_led", "Partitions this broker leads.", led);
        gauge(
            &mut out,
            "partitions_quiesced",
            "Local partition replicas whose Raft ticker is parked (idle).",
            quiesced,
        );
        gauge(&mut out, "under_replicated_partitions", "Led partitions whose followers lag the leader's log.", under);
        gauge(
            &mut out,
            "raft_terms_sum",
            "Sum of Raft terms of local partition groups (grows by one per election).",
            terms,
        );
        gauge(&mut out, "raft_purged_entries", "Raft log entries purged behind snapshots, over local groups.", purged);
        gauge(
            &mut out,
            "commit_lag_entries",
            "Log entries appended but not yet applied, over local groups.",
            commit_lag,
        );
        gauge(
            &mut out,
            "rocksdb_write_stopped",
            "1 while RocksDB stops writes (stall).",
            storage.property_sum("rocksdb.is-write-stopped"),
        );
        gauge(
            &mut out,
            "rocksdb_delayed_write_rate",
            "RocksDB's delayed write rate in bytes/s; non-zero while writes are slowed down.",
            storage.property_sum("rocksdb.actual-delayed-write-rate"),
        );
        gauge(
            &mut out,
            "rocksdb_memtable_bytes",
            "Bytes of RocksDB memtables (active, unflushed and pinned), over column families.",
            storage.property_sum("rocksdb.cur-size-all-mem-tables"),
        );
        out
    }
}

/// Serves `/metrics` on `listen` until `shutdown`.
pub async fn serve(
    listen: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    groups: Arc<Groups>,
    storage: Arc<Storage>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, groups, storage) = (metrics.clone(), groups.clone(), storage.clone());
            async move { metrics.render(&groups, &storage) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
