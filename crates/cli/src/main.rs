//! `ferrolog`: the one binary. Parses the command line, sets up tracing and
//! hands over to the library crates; no logic of its own lives here.
//!
//! Subcommands: `server`, `dev`, `topic`, `produce`, `consume`, `group`,
//! `cluster status`, `bench storage|produce|consume|coordinator`.

mod bench_commit;
mod bench_consume;
mod bench_coordinator;
mod bench_fetch;
mod bench_produce;
mod commands;
mod dev;
mod progress;
mod server;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use ferrolog_raft::bench::StorageBench;
use ferrolog_raft::bench::StorageBenchReport;

/// Ferrolog: a replicated commit log.
#[derive(Debug, Parser)]
#[command(name = "ferrolog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker.
    ///
    /// Example: ferrolog server --node-id 1 --data-dir /tmp/f1 --listen 127.0.0.1:9092 --peers 1=127.0.0.1:9092,2=127.0.0.1:9093,3=127.0.0.1:9094
    Server(server::ServerArgs),
    /// Run a local cluster of brokers (child processes) until Ctrl-C.
    ///
    /// Example: ferrolog dev --nodes 3 --data-dir /tmp/ferrolog-dev --base-port 9092
    Dev(dev::DevArgs),
    /// Create, list, describe and delete topics.
    ///
    /// Example: ferrolog topic create orders --partitions 6 --replication-factor 3
    Topic {
        #[command(flatten)]
        brokers: commands::Brokers,
        /// Output format.
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: Output,
        #[command(subcommand)]
        cmd: commands::TopicCommand,
    },
    /// Produce records read from stdin, one per line.
    ///
    /// Example: printf 'alice:1\nbob:2\n' | ferrolog produce orders --key-separator : --print-offsets
    Produce {
        #[command(flatten)]
        brokers: commands::Brokers,
        #[command(flatten)]
        args: commands::ProduceArgs,
    },
    /// Consume records to stdout, one per line.
    ///
    /// Example: ferrolog consume orders --group billing --from-beginning --max-messages 10 --format json
    Consume {
        #[command(flatten)]
        brokers: commands::Brokers,
        #[command(flatten)]
        args: commands::ConsumeArgs,
    },
    /// Consumer groups: list, describe (with lag), reset offsets, delete.
    ///
    /// Example: ferrolog group describe billing
    Group {
        #[command(flatten)]
        brokers: commands::Brokers,
        /// Output format.
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: Output,
        #[command(subcommand)]
        cmd: commands::GroupCommand,
    },
    /// Cluster status.
    ///
    /// Example: ferrolog cluster status --output json
    Cluster {
        #[command(flatten)]
        brokers: commands::Brokers,
        /// Output format.
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: Output,
        #[command(subcommand)]
        cmd: commands::ClusterCommand,
    },
    /// Benchmarks.
    ///
    /// Example: ferrolog bench produce --topic bench --records 100000 --producers 4 --acks all
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Many Raft groups appending concurrently to one RocksDB store.
    ///
    /// Example: ferrolog bench storage --groups 1,16,256 --group-commit both --duration 5
    Storage(StorageArgs),
    /// Produce to a running cluster and report throughput and latency.
    ///
    /// Example: ferrolog bench produce --topic bench --records 200000 --record-size 1024 --producers 4 --acks all
    Produce(bench_produce::ProduceArgs),
    /// Read a topic from its start and report throughput.
    ///
    /// Example: ferrolog bench consume --topic bench --records 100000
    Consume(bench_consume::ConsumeArgs),
    /// Latency of single fetches at the head and tail of a partition, and of
    /// ListOffsets by timestamp (compare across partition sizes).
    ///
    /// Example: ferrolog bench fetch --topic sizes --samples 500
    Fetch(bench_fetch::FetchArgs),
    /// The consumer-group coordinator's cost per heartbeat and per rebalance.
    ///
    /// Example: ferrolog bench coordinator --members 100 --partitions 1000
    Coordinator(bench_coordinator::CoordinatorArgs),
    /// Latency of one offset commit with 1 consumer group present vs many.
    ///
    /// Example: ferrolog bench commit --groups 1,1000 --partitions 100 --commits 1000
    Commit(bench_commit::CommitArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// Output format of benchmarks.
pub enum Output {
    /// A human-readable table.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, clap::Args)]
struct StorageArgs {
    /// Comma-separated numbers of concurrently appending groups.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    groups: Vec<usize>,
    /// Group commit on, off, or both (side by side).
    #[arg(long, value_enum, default_value = "both")]
    group_commit: OnOff,
    /// Payload bytes per append.
    #[arg(long, default_value_t = 1024)]
    entry_bytes: usize,
    /// Seconds per case.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Where to put the databases (a fresh temp dir per case inside it).
    /// Default: the system temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn main() {
    // Failures end with a one-line reason on stderr and exit status 1.
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Brokers log at info; client commands only warn (their output is the
    // records). RUST_LOG overrides both.
    let default = match cli.command {
        Command::Server(_) | Command::Dev(_) | Command::Bench(_) => "info,openraft=warn",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let (format, otlp) = match &cli.command {
        Command::Server(args) => args.log_settings()?,
        _ => (server::LogFormat::Text, None),
    };
    if matches!(cli.command, Command::Server(_) | Command::Dev(_)) {
        server::tune_allocator();
    }
    let rt = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    let traces = {
        // The OTLP exporter's gRPC channel is made inside the runtime.
        let _in_runtime = rt.enter();
        init_tracing(filter, format, otlp.as_deref())?
    };
    let result = run_command(cli, &rt);
    if let Some(provider) = traces {
        // Exports the spans still buffered.
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: flushing traces failed: {e}");
        }
    }
    result
}

/// Logs to stderr as text or JSON; with `otlp`, also exports spans to that
/// OpenTelemetry collector (gRPC), batched in the background.
fn init_tracing(
    filter: tracing_subscriber::EnvFilter,
    format: server::LogFormat,
    otlp: Option<&str>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        server::LogFormat::Text => logs.boxed(),
        server::LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).boxed(),
    };
    let provider = match otlp {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("OTLP trace exporter for {endpoint}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("ferrolog").build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let traces = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ferrolog")));
    tracing_subscriber::registry().with(filter).with(logs).with(traces).init();
    Ok(provider)
}

fn run_command(cli: Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => rt.block_on(server::run(args)),
        Command::Dev(args) => rt.block_on(dev::run(args)),
        Command::Topic { brokers, output, cmd } => rt.block_on(commands::topic(&brokers, output, cmd)),
        Command::Produce { brokers, args } => rt.block_on(commands::produce(&brokers, args)),
        Command::Consume { brokers, args } => rt.block_on(commands::consume(&brokers, args)),
        Command::Group { brokers, output, cmd } => rt.block_on(commands::group(&brokers, output, cmd)),
        Command::Cluster { brokers, output, cmd } => rt.block_on(commands::cluster(&brokers, output, cmd)),
        Command::Bench(Bench::Storage(args)) => rt.block_on(bench_storage(args)),
        Command::Bench(Bench::Produce(args)) => rt.block_on(bench_produce::run(args)),
        Command::Bench(Bench::Coordinator(args)) => bench_coordinator::run(args),
        Command::Bench(Bench::Consume(args)) => rt.block_on(bench_consume::run(args)),
        Command::Bench(Bench::Fetch(args)) => rt.block_on(bench_fetch::run(args)),
        Command::Bench(Bench::Commit(args)) => rt.block_on(bench_commit::run(args)),
    }
}

async fn bench_storage(args: StorageArgs) -> anyhow::Result<()> {
    let modes: &[bool] = match args.group_commit {
        OnOff::On => &[true],
        OnOff::Off => &[false],
        OnOff::Both => &[true, false],
    };
    let base = args.dir.unwrap_or_else(std::env::temp_dir);
    let mut reports = Vec::new();
    if args.output == Output::Text {
        println!(
            "{:>6} {:>12} {:>12} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "groups", "group_commit", "appends/s", "MB/s", "wal_syncs", "p50_us", "p99_us", "max_us"
        );
    }
    for &groups in &args.groups {
        for &group_commit in modes {
            let dir =
                tempfile::tempdir_in(&base).with_context(|| format!("create a temp dir in {}", base.display()))?;
            let case = StorageBench {
                groups,
                group_commit,
                entry_bytes: args.entry_bytes,
                duration: Duration::from_secs(args.duration),
            };
            let r = ferrolog_raft::bench::run(dir.path(), &case).await.context("run the storage benchmark")?;
            if args.output == Output::Text {
                print_row(&r);
            }
            reports.push(r);
        }
    }
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

fn print_row(r: &StorageBenchReport) {
    println!(
        "{:>6} {:>12} {:>12.0} {:>9.2} {:>10} {:>9} {:>9} {:>9}",
        r.groups,
        if r.group_commit { "on" } else { "off" },
        r.appends_per_sec,
        r.mb_per_sec,
        r.wal_syncs,
        r.p50_us,
        r.p99_us,
        r.max_us
    );
}
