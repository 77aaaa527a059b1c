//! Prometheus metrics, served on `--metrics-listen` at `/metrics` in the
//! OpenMetrics text format, encoded by the `prometheus-client` crate (the
//! Prometheus project's own Rust client: exposition format, label escaping
//! and histogram conventions are its, none rendered here).
//!
//! Request counters and latency histograms are updated by the handlers
//! (atomics). Gauges about Raft groups and RocksDB are set when scraped,
//! from openraft's metrics and RocksDB properties, so they cost nothing
//! between scrapes. Consumer lag comes from [`crate::lag`]'s cache, which
//! the metadata leader refreshes in the background (never a scan per
//! scrape). docs/metrics.md lists every metric.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ferrolog_storage::Storage;
use openraft::async_runtime::watch::WatchReceiver;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::groups::Groups;
use crate::lag::LagCache;

/// Upper bounds of the request latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the fsync latency buckets, in seconds.
const FSYNC_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
/// Upper bounds of the group-commit batch size buckets, in writes.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Label sets: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;
/// A gauge of a float value.
type FGauge = Gauge<f64, AtomicU64>;

/// Counters and a latency histogram of one kind of request.
#[derive(Debug, Clone)]
pub struct RequestStats {
    requests: Counter,
    errors: Counter,
    records: Counter,
    latency: Histogram,
}

impl RequestStats {
    /// Records one request.
    pub fn observe(&self, latency: Duration, records: u64, ok: bool) {
        self.requests.inc();
        if !ok {
            self.errors.inc();
        }
        self.records.inc_by(records);
        self.latency.observe(latency.as_secs_f64());
    }
}

/// The families of one kind of request, by label set.
#[derive(Debug)]
struct RequestFamilies {
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    records: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl RequestFamilies {
    fn new() -> Self {
        RequestFamilies {
            requests: Family::default(),
            errors: Family::default(),
            records: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    fn register(&self, registry: &mut Registry, kind: &str) {
        registry.register(format!("{kind}_requests"), format!("{kind} requests answered"), self.requests.clone());
        registry.register(
            format!("{kind}_errors"),
            format!("{kind} requests answered with an error"),
            self.errors.clone(),
        );
        registry.register(
            format!("{kind}_records"),
            format!("Records in successful {kind} requests"),
            self.records.clone(),
        );
        registry.register(
            format!("{kind}_latency_seconds"),
            format!("{kind} latency, from request to answer"),
            self.latency.clone(),
        );
    }

    fn stats(&self, labels: Labels) -> RequestStats {
        RequestStats {
            requests: self.requests.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
            records: self.records.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
        }
    }
}

/// A connection accepted on the broker's port, counted in
/// `ferrolog_connections` while open.
#[derive(Debug)]
pub struct Counted {
    inner: tokio::net::TcpStream,
    open: Gauge,
}

impl Counted {
    fn new(inner: tokio::net::TcpStream, open: Gauge) -> Self {
        open.inc();
        Counted { inner, open }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What a scrape remembers of earlier scrapes, per Raft group.
#[derive(Debug, Default)]
struct History {
    /// Last seen term (elections are counted as term increases).
    terms: std::collections::HashMap<ferrolog_types::GroupId, u64>,
    /// Per led group: when the reference was taken, the leader's last log
    /// index then, and the last verdict (under-replicated or not).
    reference: std::collections::HashMap<ferrolog_types::GroupId, (std::time::Instant, u64, bool)>,
}

/// Values set at every scrape.
#[derive(Debug, Default)]
struct Scraped {
    replicas: Gauge,
    led: Gauge,
    quiesced: Gauge,
    under_replicated: Gauge,
    leaderless: Gauge,
    terms: Gauge,
    metadata_term: Gauge,
    metadata_leader: Gauge,
    purged: Gauge,
    commit_lag: Gauge,
    metadata_apply_bytes: Counter,
    metadata_apply_bytes_seen: AtomicU64,
    write_stopped: Gauge,
    delayed_write_rate: Gauge,
    memtable_bytes: Gauge,
    pending_compaction_bytes: Gauge,
    l0_files: Gauge,
    sst_bytes: Gauge,
    disk_capacity: Gauge,
    disk_free: Gauge,
    lag_records: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, FGauge>,
    lag_partitions: Gauge,
    lag_dropped: Gauge,
    lag_age: FGauge,
}

/// Every metric of a broker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Produce, by acks level: all, 1, 0.
    pub produce: [RequestStats; 3],
    /// Fetch.
    pub fetch: RequestStats,
    produce_bytes: Family<Labels, Counter>,
    fetch_bytes: Family<Labels, Counter>,
    request_errors: Family<Labels, Counter>,
    connections: Gauge,
    connections_accepted: Counter,
    fsync: Histogram,
    group_commit: Histogram,
    scraped: Scraped,
    /// Serializes scrapes (they set shared gauges, then encode them) and
    /// holds what one scrape needs of the previous ones.
    history: std::sync::Mutex<History>,
    term_changes: Family<Labels, Counter>,
    /// Consumer lag, refreshed by the metadata leader.
    pub lag: Arc<LagCache>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrolog");
        let produce = RequestFamilies::new();
        produce.register(&mut registry, "produce");
        let fetch = RequestFamilies::new();
        fetch.register(&mut registry, "fetch");
        let produce_bytes = Family::<Labels, Counter>::default();
        registry.register("produce_bytes", "Record batch bytes appended, by topic", produce_bytes.clone());
        let fetch_bytes = Family::<Labels, Counter>::default();
        registry.register("fetch_bytes", "Record batch bytes served to consumers, by topic", fetch_bytes.clone());
        let request_errors = Family::<Labels, Counter>::default();
        registry.register(
            "request_errors",
            "Client requests answered with an error, by API, gRPC code and Ferrolog reason (\"\" when none)",
            request_errors.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open TCP connections on the broker's port (clients and peer brokers)",
            connections.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted on the broker's port",
            connections_accepted.clone(),
        );
        let fsync = Histogram::new(FSYNC_BUCKETS);
        registry.register("wal_fsync_seconds", "Duration of each group-commit WAL fsync", fsync.clone());
        let group_commit = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "wal_group_commit_writes",
            "Writes made durable by each group-commit fsync (batch size)",
            group_commit.clone(),
        );
        let term_changes = Family::<Labels, Counter>::default();
        registry.register(
            "raft_term_changes",
            "Raft term increases seen on this broker (elections), by group kind: partition, metadata",
            term_changes.clone(),
        );
        // Both series exist from the start (at 0), so rates work at once.
        for kind in ["partition", "metadata"] {
            let _ = term_changes.get_or_create(&vec![("kind", kind.to_string())]);
        }
        let s = Scraped::default();
        let gauges: [(&str, &str, &Gauge); 18] = [
            ("partition_replicas", "Partition replicas on this broker", &s.replicas),
            ("partitions_led", "Partitions this broker leads", &s.led),
            ("partitions_quiesced", "Local partition replicas whose Raft ticker is parked (idle)", &s.quiesced),
            (
                "under_replicated_partitions",
                "Led partitions with a follower that has not caught up, within 10 s, to where the leader's log was",
                &s.under_replicated,
            ),
            ("leaderless_partitions", "Local partition replicas that know no leader", &s.leaderless),
            ("raft_terms_sum", "Sum of Raft terms of local partition groups (grows by one per election)", &s.terms),
            ("metadata_raft_term", "Raft term of the metadata group (grows by one per election)", &s.metadata_term),
            (
                "metadata_leader",
                "1 on the broker leading the metadata group (the group coordinator)",
                &s.metadata_leader,
            ),
            ("raft_purged_entries", "Raft log entries purged behind snapshots, over local groups", &s.purged),
            ("commit_lag_entries", "Log entries appended but not yet applied, over local groups", &s.commit_lag),
            ("rocksdb_write_stopped", "1 while RocksDB stops writes (stall)", &s.write_stopped),
            (
                "rocksdb_delayed_write_rate",
                "RocksDB's delayed write rate in bytes/s; non-zero while writes are slowed down",
                &s.delayed_write_rate,
            ),
            (
                "rocksdb_memtable_bytes",
                "Bytes of RocksDB memtables (active, unflushed and pinned), over column families",
                &s.memtable_bytes,
            ),
            (
                "rocksdb_pending_compaction_bytes",
                "RocksDB's estimate of bytes compaction must rewrite to settle (compaction debt)",
                &s.pending_compaction_bytes,
            ),
            (
                "rocksdb_l0_files",
                "SST files in level 0, over column families (many: compaction is behind)",
                &s.l0_files,
            ),
            ("rocksdb_sst_bytes", "Bytes of the store's SST files, over column families", &s.sst_bytes),
            ("disk_capacity_bytes", "Size of the filesystem holding the data directory", &s.disk_capacity),
            (
                "disk_free_bytes",
                "Bytes available to the broker on the filesystem holding the data directory",
                &s.disk_free,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "metadata_apply_bytes",
            "Bytes the metadata state machine's apply rounds wrote (an offset commit: ~100)",
            s.metadata_apply_bytes.clone(),
        );
        registry.register(
            "consumer_group_lag_records",
            "Records between a group's committed offset and the partition's high watermark (on the coordinator)",
            s.lag_records.clone(),
        );
        registry.register(
            "consumer_group_lag_seconds",
            "Age of a group's oldest unconsumed record in a partition: now minus its batch's timestamp; 0 when caught up (on the coordinator)",
            s.lag_seconds.clone(),
        );
        registry.register(
            "consumer_group_lag_partitions",
            "Group partitions whose lag is exported (at most --lag-metrics-max-partitions)",
            s.lag_partitions.clone(),
        );
        registry.register(
            "consumer_group_lag_dropped_partitions",
            "Group partitions with a committed offset left out of the lag metrics by the cardinality bound",
            s.lag_dropped.clone(),
        );
        registry.register(
            "consumer_group_lag_age_seconds",
            "Seconds since the lag figures were computed (-1: never, e.g. not the coordinator)",
            s.lag_age.clone(),
        );
        Metrics {
            produce: ["all", "1", "0"].map(|a| produce.stats(vec![("acks", a.to_string())])),
            fetch: fetch.stats(Vec::new()),
            registry,
            produce_bytes,
            fetch_bytes,
            request_errors,
            connections,
            connections_accepted,
            fsync,
            group_commit,
            scraped: s,
            history: Default::default(),
            term_changes,
            lag: Arc::new(LagCache::default()),
        }
    }

    /// Bytes appended to `topic`.
    pub fn produced_bytes(&self, topic: &str, bytes: u64) {
        self.produce_bytes.get_or_create(&vec![("topic", topic.to_string())]).inc_by(bytes);
    }

    /// Bytes served from `topic`.
    pub fn fetched_bytes(&self, topic: &str, bytes: u64) {
        self.fetch_bytes.get_or_create(&vec![("topic", topic.to_string())]).inc_by(bytes);
    }

    /// A request of `api` that failed with `e` (labelled with its gRPC code and reason).
    pub fn request_error(&self, api: &'static str, e: &crate::error::BrokerError) {
        let reason = e.reason().map(|r| r.as_str()).unwrap_or("");
        let code = format!("{:?}", e.code());
        self.request_errors
            .get_or_create(&vec![("api", api.to_string()), ("code", code), ("reason", reason.to_string())])
            .inc();
    }

    /// `stream`, counted while open.
    pub fn count_connection(&self, stream: tokio::net::TcpStream) -> Counted {
        self.connections_accepted.inc();
        Counted::new(stream, self.connections.clone())
    }

    /// Feeds the fsync histograms from `storage`'s group-commit thread.
    pub fn observe_syncs(self: &Arc<Self>, storage: &Storage) {
        let (fsync, batch) = (self.fsync.clone(), self.group_commit.clone());
        let _ = storage.sync_stats().observer.set(Box::new(move |took, writes| {
            fsync.observe(took.as_secs_f64());
            batch.observe(writes as f64);
        }));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self, groups: &Groups, storage: &Storage) -> String {
        let mut history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.scrape(groups, storage, &mut history);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    fn scrape(&self, groups: &Groups, storage: &Storage, history: &mut History) {
        let s = &self.scraped;
        let me = groups.node_id();
        let now = std::time::Instant::now();
        let mut seen_terms = std::collections::HashMap::new();
        let mut reference = std::collections::HashMap::new();
        let mut term_seen = |group: ferrolog_types::GroupId, term: u64, kind: &str| {
            if let Some(before) = history.terms.get(&group)
                && term > *before
            {
                self.term_changes.get_or_create(&vec![("kind", kind.to_string())]).inc_by(term - before);
            }
            seen_terms.insert(group, term);
        };
        let (mut replicas, mut led, mut under, mut leaderless, mut terms, mut commit_lag, mut purged, mut quiesced) =
            (0i64, 0i64, 0i64, 0i64, 0i64, 0i64, 0i64, 0i64);
        for r in groups.replicas() {
            replicas += 1;
            quiesced += i64::from(r.is_quiesced());
            let m = r.raft.metrics().borrow_watched().clone();
            terms += m.current_term as i64;
            term_seen(r.group, m.current_term, "partition");
            purged += m.purged.map(|l| l.index as i64 + 1).unwrap_or(0);
            commit_lag +=
                m.last_log_index.unwrap_or(0).saturating_sub(m.last_applied.map(|l| l.index).unwrap_or(0)) as i64;
            match m.current_leader {
                None => leaderless += 1,
                Some(l) if l == me => {
                    led += 1;
                    let last = m.last_log_index.unwrap_or(0);
                    let verdict = match history.reference.get(&r.group) {
                        // Compared with where the log was a while ago.
                        // A led partition is under-replicated when a follower
                        // has not caught up, within `under_replicated_after_ms`,
                        // to where the leader's log was (Kafka's
                        // replica.lag.time.max.ms idea; an instant comparison
                        // with the last entry would count every partition
                        // under load).
                        Some((at, then, _)) if now.duration_since(*at) >= groups.timings().under_replicated_after => {
                            let behind = m.replication.as_ref().is_some_and(|repl| {
                                repl.values().any(|matched| matched.map(|l| l.index).unwrap_or(0) < *then)
                            });
                            reference.insert(r.group, (now, last, behind));
                            behind
                        }
                        Some(kept) => {
                            reference.insert(r.group, *kept);
                            kept.2
                        }
                        None => {
                            reference.insert(r.group, (now, last, false));
                            false
                        }
                    };
                    under += i64::from(verdict);
                }
                Some(_) => {}
            }
        }
        s.replicas.set(replicas);
        s.led.set(led);
        s.quiesced.set(quiesced);
        s.under_replicated.set(under);
        s.leaderless.set(leaderless);
        s.terms.set(terms);
        s.purged.set(purged);
        s.commit_lag.set(commit_lag);
        if let Some(meta) = groups.meta() {
            let m = meta.raft.metrics().borrow_watched().clone();
            term_seen(ferrolog_types::GroupId::METADATA, m.current_term, "metadata");
            s.metadata_term.set(m.current_term as i64);
            s.metadata_leader.set(i64::from(m.current_leader == Some(me)));
            let total = meta.state.apply_bytes();
            let seen = s.metadata_apply_bytes_seen.swap(total, std::sync::atomic::Ordering::Relaxed);
            s.metadata_apply_bytes.inc_by(total.saturating_sub(seen));
        }
        history.terms = seen_terms;
        history.reference = reference;
        let prop = |name: &str| storage.property_sum(name) as i64;
        s.write_stopped.set(prop("rocksdb.is-write-stopped"));
        s.delayed_write_rate.set(prop("rocksdb.actual-delayed-write-rate"));
        s.memtable_bytes.set(prop("rocksdb.cur-size-all-mem-tables"));
        s.pending_compaction_bytes.set(prop("rocksdb.estimate-pending-compaction-bytes"));
        s.l0_files.set(prop("rocksdb.num-files-at-level0"));
        s.sst_bytes.set(prop("rocksdb.total-sst-files-size"));
        if let Ok(fs) = rustix::fs::statvfs(storage.path()) {
            s.disk_capacity.set(fs.f_blocks.saturating_mul(fs.f_frsize) as i64);
            s.disk_free.set(fs.f_bavail.saturating_mul(fs.f_frsize) as i64);
        }

        // Lag: the series of the last refresh only (a group or partition
        // that went away disappears).
        let lag = self.lag.snapshot();
        s.lag_records.clear();
        s.lag_seconds.clear();
        for row in &lag.rows {
            let labels: Labels = vec![
                ("group", row.group.clone()),
                ("topic", row.topic.clone()),
                ("partition", row.partition.to_string()),
            ];
            s.lag_records.get_or_create(&labels).set(row.lag_records);
            s.lag_seconds.get_or_create(&labels).set(row.lag_seconds);
        }
        s.lag_partitions.set(lag.rows.len() as i64);
        s.lag_dropped.set(lag.dropped as i64);
        s.lag_age.set(lag.at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(-1.0));
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
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.render(&groups, &storage),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
