//! `ferrolog server`: flags, environment and config file become a
//! [`BrokerConfig`]; SIGTERM and Ctrl-C stop the broker in order.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use ferrolog_broker::BrokerConfig;
use ferrolog_broker::config::Timings;
use ferrolog_broker::config::node_id_from_hostname;
use ferrolog_broker::config::parse_peers;
use ferrolog_broker::config::settle_node_id;
use ferrolog_broker::config::statefulset_layout;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Default client/Raft port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";

/// Run a broker.
///
/// Example (three brokers on one machine, this is broker 1):
///   ferrolog server --node-id 1 --data-dir /tmp/f1 --listen 127.0.0.1:9092 \
///     --peers 1=127.0.0.1:9092,2=127.0.0.1:9093,3=127.0.0.1:9094
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// This broker's id (default: from a hostname ending in -N, as N+1).
    #[arg(long, env = "FERROLOG_NODE_ID")]
    node_id: Option<u64>,
    /// Data directory.
    #[arg(long, env = "FERROLOG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve the API, Raft, health and reflection on.
    #[arg(long, env = "FERROLOG_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address others reach this broker at (default: --listen).
    #[arg(long, env = "FERROLOG_ADVERTISE")]
    advertise: Option<String>,
    /// Join a running cluster through these brokers (HOST:PORT,...), for a
    /// broker that is not one of the initial --peers.
    #[arg(long, env = "FERROLOG_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Keep every partition group's Raft ticker running even when idle
    /// (quiescing off; for comparison and debugging).
    #[arg(long, env = "FERROLOG_NO_QUIESCE")]
    no_quiesce: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "FERROLOG_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Most consumer-lag series (group x topic x partition) the group
    /// coordinator exports; the rest are counted in
    /// ferrolog_consumer_group_lag_dropped_partitions.
    /// [default: 10000]
    #[arg(long, env = "FERROLOG_LAG_METRICS_MAX_PARTITIONS")]
    lag_metrics_max_partitions: Option<usize>,
    /// Initial metadata voters: ID=HOST:PORT,... (this broker included).
    #[arg(long, env = "FERROLOG_PEERS")]
    peers: Option<String>,
    /// Derive node id, advertised address and peers from a StatefulSet pod
    /// name: the number of brokers the cluster was created with (pods
    /// `0..N` bootstrap it; later pods join). Needs --peer-domain.
    #[arg(long, env = "FERROLOG_STATEFULSET_INITIAL_BROKERS")]
    statefulset_initial_brokers: Option<u64>,
    /// DNS domain of the pods (the headless Service,
    /// e.g. `ferrolog-brokers.NAMESPACE.svc.cluster.local`).
    #[arg(long, env = "FERROLOG_PEER_DOMAIN")]
    peer_domain: Option<String>,
    /// Pod name (default: the hostname), for --statefulset-initial-brokers
    /// and the node id rule.
    #[arg(long, env = "FERROLOG_POD_NAME")]
    pod_name: Option<String>,
    /// Log lines as human text or as one JSON object per line (for log
    /// shippers; the Kubernetes manifests use json).
    /// [default: text]
    #[arg(long, env = "FERROLOG_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Export trace spans (produce, fetch, group coordination, with node,
    /// topic, partition, group) to this OpenTelemetry collector over OTLP
    /// gRPC, e.g. http://otel-collector:4317. Off by default.
    #[arg(long, env = "FERROLOG_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Print the resolved configuration as JSON and exit (no data dir is
    /// created).
    #[arg(long)]
    print_config: bool,
    /// A TOML file with every setting above (the flag's name in snake_case,
    /// `quiesce = false` for --no-quiesce, timings in a `[timings]` table);
    /// flags and environment variables override it. See docs/config.md.
    #[arg(long, env = "FERROLOG_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    timings: TimingArgs,
}

/// The timing flags, one per [`Timings`] key (`--raft-heartbeat-ms`,
/// `FERROLOG_RAFT_HEARTBEAT_MS`, ...), generated from the broker's table so
/// that a new timing needs no code here.
#[derive(Debug, Clone, Default)]
struct TimingArgs {
    given: std::collections::BTreeMap<&'static str, u64>,
}

impl clap::FromArgMatches for TimingArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = Timings::KEYS.iter().filter_map(|k| m.get_one::<u64>(k.key).map(|v| (k.key, *v))).collect();
        Ok(TimingArgs { given })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for TimingArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Timings::KEYS.iter().fold(cmd, |cmd, k| {
            // clap keeps names for the life of the program: built once.
            let long: &'static str = Box::leak(k.key.replace('_', "-").into_boxed_str());
            let env: &'static str = Box::leak(format!("FERROLOG_{}", k.key.to_uppercase()).into_boxed_str());
            cmd.arg(
                clap::Arg::new(k.key)
                    .long(long)
                    .env(env)
                    .value_name("MS")
                    .value_parser(clap::value_parser!(u64))
                    .help(format!("{} [default: {}]", k.doc, k.default_ms))
                    .help_heading("Timings (milliseconds)"),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    metrics_listen: Option<SocketAddr>,
    peers: Option<String>,
    join: Option<Vec<String>>,
    quiesce: Option<bool>,
    lag_metrics_max_partitions: Option<usize>,
    statefulset_initial_brokers: Option<u64>,
    peer_domain: Option<String>,
    pod_name: Option<String>,
    log_format: Option<LogFormat>,
    otlp_endpoint: Option<String>,
    timings: Option<std::collections::BTreeMap<String, u64>>,
}

fn read_file(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parse {}", p.display()))
        }
        None => Ok(FileConfig::default()),
    }
}

impl ServerArgs {
    /// Log format and trace endpoint (needed before logging starts):
    /// flags/env over the config file over text and none.
    pub fn log_settings(&self) -> anyhow::Result<(LogFormat, Option<String>)> {
        let file = read_file(self.config.as_ref())?;
        Ok((
            self.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            self.otlp_endpoint.clone().or(file.otlp_endpoint),
        ))
    }
}

/// Resolves the configuration: flags/env over file over defaults.
pub fn resolve(args: ServerArgs) -> anyhow::Result<BrokerConfig> {
    let file = read_file(args.config.as_ref())?;
    let data_dir = args.data_dir.or(file.data_dir).context("--data-dir is required")?;
    let listen = match args.listen.or(file.listen) {
        Some(l) => l,
        None => DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    let pod_name = args
        .pod_name
        .clone()
        .or(file.pod_name.clone())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()));
    let peer_domain = args.peer_domain.clone().or(file.peer_domain.clone()).unwrap_or_default();
    // A StatefulSet pod derives id, address and peers from its name; explicit
    // flags still win.
    let layout = match args.statefulset_initial_brokers.or(file.statefulset_initial_brokers) {
        Some(n) => {
            let pod = pod_name.as_deref().context("--statefulset-initial-brokers needs a pod name or hostname")?;
            Some(statefulset_layout(pod, n, &peer_domain, listen.port())?)
        }
        None => None,
    };
    let advertise = args
        .advertise
        .or(file.advertise)
        .or_else(|| layout.as_ref().map(|l| l.advertise.clone()))
        .unwrap_or_else(|| listen.to_string());
    let configured = args
        .node_id
        .or(file.node_id)
        .or_else(|| layout.as_ref().map(|l| l.node_id))
        .or_else(|| pod_name.as_deref().and_then(node_id_from_hostname));
    let node_id = if args.print_config {
        match std::fs::read_to_string(data_dir.join("node_id")) {
            Ok(stored) => stored.trim().parse().context("stored node id")?,
            Err(_) => configured.context("no node id: give --node-id or a hostname ending in -N")?,
        }
    } else {
        settle_node_id(&data_dir, configured)?
    };
    let layout_join = layout.as_ref().map(|l| l.join.clone()).unwrap_or_default();
    let joining = !args.join.is_empty() || file.join.as_ref().is_some_and(|j| !j.is_empty()) || !layout_join.is_empty();
    let peers = match args.peers.or(file.peers) {
        Some(p) => parse_peers(&p)?,
        None if layout.as_ref().is_some_and(|l| !l.peers.is_empty()) => {
            layout.as_ref().map(|l| l.peers.clone()).unwrap_or_default()
        }
        // A joining broker has no initial peers; a lone broker is its own.
        None if joining => Default::default(),
        None => [(node_id, advertise.clone())].into_iter().collect(),
    };
    if let Some(a) = peers.get(&node_id)
        && *a != advertise
    {
        bail!("--peers gives broker {node_id} the address {a}, but it advertises {advertise}");
    }
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    let join = if !args.join.is_empty() {
        args.join
    } else if let Some(j) = file.join.filter(|j| !j.is_empty()) {
        j
    } else {
        layout_join
    };
    // Timings: defaults, then the file's [timings], then flags/env.
    let mut timings = Timings::default();
    for (key, ms) in file.timings.iter().flatten() {
        timings.set(key, *ms).with_context(|| format!("[timings] in {:?}", args.config))?;
    }
    for (key, ms) in &args.timings.given {
        timings.set(key, *ms)?;
    }
    timings.validate()?;
    Ok(BrokerConfig {
        node_id,
        data_dir,
        listen,
        advertise,
        metrics_listen,
        lag_metrics_max_partitions: args
            .lag_metrics_max_partitions
            .or(file.lag_metrics_max_partitions)
            .unwrap_or(ferrolog_broker::lag::DEFAULT_MAX_LAG_PARTITIONS),
        join,
        timings,
        quiesce: !args.no_quiesce && file.quiesce.unwrap_or(true),
        peers,
    })
}

/// How the broker writes its log lines (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line, with the span fields (node, topic,
    /// partition, group) of the line's context.
    Json,
}

/// Allocations from this size up get their own mapping, returned to the
/// OS when freed (see [`tune_allocator`]).
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Makes glibc's malloc give large buffers back to the OS when they are
/// freed. By default glibc raises its mmap threshold to the largest block
/// freed so far (up to 32 MiB), after which snapshot chunks, replication
/// requests and memtable blocks come from per-thread heaps that keep the
/// memory: measured, a follower installing a 320 MiB snapshot grew by
/// 64-89 MiB, 40 MiB of it such retained free memory; with a fixed 1 MiB
/// threshold, by 26 MiB. Honours an operator's `MALLOC_MMAP_THRESHOLD_`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes malloc's parameters; it is called
        // before the runtime starts any thread.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        if ok != 1 {
            tracing::warn!("mallopt(M_MMAP_THRESHOLD) failed; large freed buffers may stay resident");
        }
    }
}

/// Runs the broker until SIGTERM or Ctrl-C.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let print_config = args.print_config;
    let (log_format, otlp_endpoint) = args.log_settings()?;
    let config = resolve(args)?;
    if print_config {
        println!("{}", serde_json::to_string_pretty(&config_json(&config, log_format, otlp_endpoint.as_deref()))?);
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
        }
        signal.cancel();
    });
    ferrolog_broker::run(config, shutdown).await
}

/// Every setting of the resolved configuration (what `--print-config`
/// prints): each key is also a flag, a `FERROLOG_*` variable and a key of
/// the config file.
pub fn config_json(c: &BrokerConfig, log_format: LogFormat, otlp_endpoint: Option<&str>) -> serde_json::Value {
    let timings: serde_json::Map<String, serde_json::Value> =
        c.timings.entries().into_iter().map(|(k, ms)| (k.to_string(), ms.into())).collect();
    serde_json::json!({
        "node_id": c.node_id,
        "data_dir": c.data_dir,
        "listen": c.listen.to_string(),
        "advertise": c.advertise,
        "peers": c.peers,
        "join": c.join,
        "metrics_listen": c.metrics_listen.map(|a| a.to_string()),
        "quiesce": c.quiesce,
        "lag_metrics_max_partitions": c.lag_metrics_max_partitions,
        "log_format": log_format,
        "otlp_endpoint": otlp_endpoint,
        "timings": timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path) -> ServerArgs {
        ServerArgs {
            node_id: None,
            data_dir: None,
            listen: None,
            advertise: None,
            peers: None,
            join: vec![],
            no_quiesce: false,
            statefulset_initial_brokers: None,
            peer_domain: None,
            pod_name: None,
            print_config: false,
            metrics_listen: None,
            lag_metrics_max_partitions: None,
            log_format: None,
            otlp_endpoint: None,
            config: Some(dir.join("ferrolog.toml")),
            timings: TimingArgs::default(),
        }
    }

    #[test]
    fn config_file_fills_in_and_flags_override() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::write(
            dir.path().join("ferrolog.toml"),
            format!(
                "node_id = 2\ndata_dir = {:?}\nlisten = \"127.0.0.1:9300\"\npeers = \"1=127.0.0.1:9200,2=127.0.0.1:9300\"\nmetrics_listen = \"127.0.0.1:9400\"\n",
                data.display().to_string()
            ),
        )?;
        let c = resolve(args(dir.path()))?;
        assert_eq!(c.node_id, 2);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9300");
        assert_eq!(c.advertise, "127.0.0.1:9300");
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9400));

        // A flag beats the file; the node id stored in the data dir beats both.
        let mut a = args(dir.path());
        a.node_id = Some(7);
        a.listen = Some("127.0.0.1:9301".parse()?);
        a.peers = Some("2=127.0.0.1:9301".into());
        let c = resolve(a)?;
        assert_eq!(c.listen.port(), 9301);
        assert_eq!(c.node_id, 2, "stored id wins");
        Ok(())
    }

    #[test]
    fn every_setting_reads_from_the_file_and_timings_from_flags_over_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::write(
            dir.path().join("ferrolog.toml"),
            format!(
                "node_id = 3\ndata_dir = {:?}\nquiesce = false\nlag_metrics_max_partitions = 77\n\
                 log_format = \"json\"\notlp_endpoint = \"http://collector:4317\"\n\
                 [timings]\nliveness_timeout_ms = 3000\nraft_heartbeat_ms = 200\n",
                data.display().to_string()
            ),
        )?;
        let mut a = args(dir.path());
        a.timings.given.insert("raft_heartbeat_ms", 300);
        assert_eq!(a.log_settings()?, (LogFormat::Json, Some("http://collector:4317".into())));
        let c = resolve(a)?;
        assert!(!c.quiesce);
        assert_eq!(c.lag_metrics_max_partitions, 77);
        assert_eq!(c.timings.liveness_timeout, std::time::Duration::from_secs(3), "from the file");
        assert_eq!(c.timings.raft_heartbeat, std::time::Duration::from_millis(300), "the flag wins");
        // --print-config holds every timing.
        let json = config_json(&c, LogFormat::Json, None);
        for k in Timings::KEYS {
            assert!(json["timings"][k.key].is_u64(), "{} missing from {json}", k.key);
        }
        assert_eq!(json["timings"]["liveness_timeout_ms"], 3000);

        std::fs::write(
            dir.path().join("ferrolog.toml"),
            format!("node_id = 3\ndata_dir = {:?}\n[timings]\nliveness_timeout_msec = 1\n", data.display().to_string()),
        )?;
        let e = resolve(args(dir.path())).expect_err("unknown timing");
        assert!(format!("{e:#}").contains("unknown timing"), "{e:#}");
        Ok(())
    }

    /// docs/config.md documents every timing with its default.
    #[test]
    fn the_config_document_lists_every_timing() -> anyhow::Result<()> {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md"))?;
        for k in Timings::KEYS {
            let row = format!("| `{}` | {} |", k.key, k.default_ms);
            assert!(doc.contains(&row), "docs/config.md lacks the row {row:?}");
        }
        Ok(())
    }

    #[test]
    fn unknown_keys_and_inconsistent_peers_are_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ferrolog.toml"), "nodeid = 1\n")?;
        let e = resolve(args(dir.path())).expect_err("typo in a key");
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        std::fs::write(
            dir.path().join("ferrolog.toml"),
            format!(
                "node_id = 1\ndata_dir = {:?}\nlisten = \"127.0.0.1:9300\"\npeers = \"1=10.0.0.1:9300\"\n",
                dir.path().join("d").display().to_string()
            ),
        )?;
        let e = resolve(args(dir.path())).expect_err("peers disagree with the advertised address");
        assert!(e.to_string().contains("advertises"), "{e}");
        Ok(())
    }
}
