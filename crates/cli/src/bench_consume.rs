//! `ferrolog bench consume`: reads a topic from the start (catching up) and
//! reports records/s and MB/s, with or without a consumer group.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use ferrolog_client::Client;
use ferrolog_client::Consumer;
use ferrolog_client::ConsumerConfig;
use ferrolog_client::Event;
use ferrolog_client::OffsetReset;
use serde::Serialize;

/// Consume benchmark.
///
/// Example: ferrolog bench consume --topic bench --records 100000
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Brokers to bootstrap from.
    #[arg(long, env = "FERROLOG_BROKERS", default_value = "127.0.0.1:9092", value_delimiter = ',')]
    brokers: Vec<String>,
    /// Topic to read from its start.
    #[arg(long)]
    topic: String,
    /// Read as a member of this group (default: no group, every partition).
    #[arg(long)]
    group: Option<String>,
    /// Records to read (default: everything the topic holds now).
    #[arg(long)]
    records: Option<u64>,
    /// Start at the end of every partition and read what producers write
    /// from now on (needs --records); reports end-to-end latency, from each
    /// record's timestamp (set by the producer when it sent the batch) to
    /// its delivery here, in ms.
    #[arg(long, requires = "records")]
    from_latest: bool,
    /// Give up when nothing arrives for this long, s.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::Output,
}

#[derive(Debug, Serialize)]
struct Report {
    records: u64,
    bytes: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    group: Option<String>,
    /// End-to-end latency percentiles, ms (with --from-latest).
    e2e_ms: Option<E2e>,
}

#[derive(Debug, Serialize)]
struct E2e {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Arc::new(Client::new(args.brokers.clone()));
    let d = client
        .wait_leaders(&args.topic, Duration::from_secs(30))
        .await
        .map_err(|s| anyhow::anyhow!("topic {}: {}", args.topic, s.message()))?;
    let available: u64 =
        d.partitions.iter().map(|p| p.high_watermark.unwrap_or(0).saturating_sub(p.log_start.unwrap_or(0))).sum();
    let want = args.records.unwrap_or(available);
    if want == 0 && !args.from_latest {
        bail!("topic {} holds no records to read", args.topic);
    }
    let config = ConsumerConfig {
        client_id: "ferrolog-bench".into(),
        auto_commit: args.group.as_ref().map(|_| Duration::from_secs(1)),
        offset_reset: if args.from_latest { OffsetReset::Latest } else { OffsetReset::Earliest },
        ..ConsumerConfig::default()
    };
    let started = Instant::now();
    let mut consumer = match &args.group {
        Some(g) => Consumer::subscribe(client.clone(), g, &[args.topic.as_str()], config),
        None => {
            let start = |p: &ferrolog_client::PartitionInfo| {
                if args.from_latest { Some(p.high_watermark.unwrap_or(0)) } else { None }
            };
            let parts = d.partitions.iter().map(|p| ((args.topic.clone(), p.partition), start(p))).collect();
            Consumer::assign(client.clone(), parts, config)
        }
    };
    let progress = crate::progress::bar(want, false);
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut e2e = hdrhistogram::Histogram::<u64>::new(3)?;
    while records < want {
        let e = tokio::time::timeout(Duration::from_secs(args.idle_timeout), consumer.next())
            .await
            .with_context(|| format!("nothing new for {} s after {records} records", args.idle_timeout))?;
        match e {
            Some(Event::Record(r)) => {
                records += 1;
                bytes += r.record.value.len() as u64;
                if args.from_latest {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    e2e.record((now_ms - r.record.timestamp_ms).max(0) as u64)?;
                }
                progress.inc(1);
            }
            Some(_) => {}
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    consumer.close().await.map_err(|s| anyhow::anyhow!("close: {}", s.message()))?;
    let report = Report {
        records,
        bytes,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / 1e6,
        group: args.group,
        e2e_ms: args.from_latest.then(|| E2e {
            p50: e2e.value_at_quantile(0.5),
            p99: e2e.value_at_quantile(0.99),
            p999: e2e.value_at_quantile(0.999),
            max: e2e.max(),
        }),
    };
    match args.output {
        crate::Output::Json => println!("{}", serde_json::to_string(&report)?),
        crate::Output::Text => println!(
            "consumed {} records ({:.1} MB) in {:.2}s: {:.0} records/s, {:.2} MB/s{}",
            report.records,
            report.bytes as f64 / 1e6,
            report.seconds,
            report.records_per_sec,
            report.mb_per_sec,
            report.group.as_ref().map(|g| format!(" (group {g})")).unwrap_or_default()
        ),
    }
    if let (crate::Output::Text, Some(e)) = (args.output, &report.e2e_ms) {
        println!("end-to-end latency ms: p50 {} p99 {} p99.9 {} max {}", e.p50, e.p99, e.p999, e.max);
    }
    Ok(())
}
