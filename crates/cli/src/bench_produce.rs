//! `ferrolog bench produce`: closed-loop producers against a real cluster,
//! in the spirit of kafka-producer-perf-test.
//!
//! Each of `--producers` tasks owns one partition (task i → partition
//! i mod P) and sends batches of `--batch-records` records of
//! `--record-size` bytes, one batch in flight at a time, waiting for the
//! acks level. Latency is per batch, from send to answer. With
//! `--idempotence` each task is an idempotent producer (its own producer
//! id; sequence numbers per batch). Both modes encode and checksum every
//! batch they send, so they compare like for like.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;
use ferrolog_client::Client;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Acks level on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum AcksArg {
    /// Committed by a quorum.
    All,
    /// Durable on the leader.
    #[value(name = "1")]
    One,
    /// Fire and forget.
    #[value(name = "0")]
    Zero,
}

impl AcksArg {
    /// The protocol's acks value.
    pub fn acks(self) -> ferrolog_client::Acks {
        match self {
            AcksArg::All => ferrolog_client::Acks::All,
            AcksArg::One => ferrolog_client::Acks::Leader,
            AcksArg::Zero => ferrolog_client::Acks::None,
        }
    }
}

/// Produce benchmark.
///
/// Example: ferrolog bench produce --topic bench --records 200000 --record-size 1024 --producers 4 --acks all
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Brokers to bootstrap from.
    #[arg(long, env = "FERROLOG_BROKERS", default_value = "127.0.0.1:9092", value_delimiter = ',')]
    brokers: Vec<String>,
    /// Topic (created with --partitions and --replication-factor if missing).
    #[arg(long)]
    topic: String,
    /// Records to send in all (ignored with --duration).
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Run for this many seconds instead of a record count.
    #[arg(long)]
    duration: Option<u64>,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per batch (one Raft entry per batch).
    #[arg(long, default_value_t = 16)]
    batch_records: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Acks level.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Partitions when creating the topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Replication factor when creating the topic.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Idempotent producers (producer id, epoch, sequence numbers).
    #[arg(long)]
    idempotence: bool,
    /// Keyed records (keys from 10,000, partitioned by murmur2) sent through
    /// the batching producer.
    #[arg(long)]
    keyed: bool,
    /// Send records through the batching producer with this linger, ms
    /// (implied by --keyed; default 5 there).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Open loop: this many records/s in all, on a fixed schedule; latency
    /// is measured from each send's scheduled time (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::Output,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct ProduceReport {
    acks: AcksArg,
    idempotence: bool,
    keyed: bool,
    rate: Option<f64>,
    producers: usize,
    partitions: usize,
    record_size: usize,
    batch_records: usize,
    records: u64,
    errors: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = Arc::new(Client::new(args.brokers.clone()));
    match client.create_topic(&args.topic, args.partitions, args.replication_factor).await {
        Ok(_) => {}
        Err(s) if s.kind() == ferrolog_client::ErrorKind::AlreadyExists => {}
        Err(s) => return Err(anyhow::anyhow!("create topic {}: {}", args.topic, s.message())),
    }
    // Leaders of a large topic take a while to be elected: allow 30 s plus
    // 10 ms per partition.
    let wait = Duration::from_secs(30) + Duration::from_millis(10 * u64::from(args.partitions));
    let desc = client.wait_leaders(&args.topic, wait).await.context("wait for partition leaders")?;
    let partitions = desc.partitions.len();
    let value = vec![b'x'; args.record_size];
    let batch: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..args.batch_records).map(|_| (None, value.clone())).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs(d));
    let progress = crate::progress::bar(args.duration.map_or(args.records, |d| d), args.duration.is_some());
    let started = Instant::now();
    if args.keyed || args.linger_ms.is_some() {
        return record_mode(args, client, partitions, progress).await;
    }
    // Open loop: each producer's k-th batch is due at start + k * interval.
    let interval =
        args.rate.map(|r| Duration::from_secs_f64(args.batch_records as f64 * args.producers as f64 / r.max(1e-3)));
    let mut tasks = Vec::new();
    for i in 0..args.producers {
        let client = client.clone();
        let topic = args.topic.clone();
        let records = batch.clone();
        let producer = if args.idempotence {
            Some(
                ferrolog_client::IdempotentProducer::new(
                    client.clone(),
                    None,
                    args.acks.acks(),
                    Duration::from_secs(30),
                )
                .await
                .context("init producer")?,
            )
        } else {
            None
        };
        let (sent, errors, progress) = (sent.clone(), errors.clone(), progress.clone());
        let (acks, total, per) = (args.acks.acks(), args.records, args.batch_records as u64);
        let partition = (i % partitions) as u32;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut k = 0u32;
            loop {
                match deadline {
                    Some(d) if Instant::now() >= d => break,
                    None if sent.fetch_add(per, Ordering::Relaxed) >= total => break,
                    _ => {}
                }
                let t0 = match interval {
                    Some(iv) => {
                        let due = started + iv * k;
                        k += 1;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let r = match &producer {
                    Some(p) => p.send(&topic, partition, &records).await,
                    None => {
                        // Stamped with the send time: `bench consume --from-latest`
                        // measures end-to-end latency from it.
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64);
                        let b = ferrolog_client::make_batch(&records, now_ms);
                        client.produce(&topic, partition, acks, b, Duration::from_secs(30)).await
                    }
                };
                match r {
                    Ok(_) => {
                        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                        if deadline.is_some() {
                            sent.fetch_add(per, Ordering::Relaxed);
                        }
                        progress.inc(if deadline.is_some() { 0 } else { per });
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "produce failed");
                    }
                }
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let ticker = progress.tick_seconds(deadline);
    for t in tasks {
        total.add(t.await??)?;
    }
    ticker.abort();
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let records = total.len() * args.batch_records as u64;
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    let report = ProduceReport {
        acks: args.acks,
        idempotence: args.idempotence,
        keyed: args.keyed,
        rate: args.rate,
        producers: args.producers,
        partitions,
        record_size: args.record_size,
        batch_records: args.batch_records,
        records,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: records as f64 * args.record_size as f64 / seconds / 1e6,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: total.max() as f64 / 1000.0,
    };
    print_report(&report, args.output)
}

fn print_report(report: &ProduceReport, output: crate::Output) -> anyhow::Result<()> {
    match output {
        crate::Output::Json => println!("{}", serde_json::to_string(report)?),
        crate::Output::Text => println!(
            "acks={:?} idempotence={} keyed={} rate={} producers={} partitions={} record={}B batch={} | {} records in {:.1}s: {:.0} records/s, {:.2} MB/s | latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms | {} errors",
            report.acks,
            report.idempotence,
            report.keyed,
            report.rate.map_or("closed-loop".to_string(), |r| format!("{r}/s")),
            report.producers,
            report.partitions,
            report.record_size,
            report.batch_records,
            report.records,
            report.seconds,
            report.records_per_sec,
            report.mb_per_sec,
            report.p50_ms,
            report.p99_ms,
            report.p999_ms,
            report.max_ms,
            report.errors
        ),
    }
    Ok(())
}

/// `--keyed` / `--linger-ms`: every record goes through the batching
/// producer (one shared producer; `--producers` tasks each keep up to
/// [`RECORDS_IN_FLIGHT`] records outstanding). Latency is per record.
async fn record_mode(
    args: ProduceArgs,
    client: Arc<Client>,
    partitions: usize,
    progress: crate::progress::Progress,
) -> anyhow::Result<()> {
    let config = ferrolog_client::ProducerConfig {
        acks: args.acks.acks(),
        idempotence: args.idempotence,
        linger: Duration::from_millis(args.linger_ms.unwrap_or(5)),
        ..ferrolog_client::ProducerConfig::default()
    };
    let producer = Arc::new(ferrolog_client::Producer::new(client, config).await.context("start the producer")?);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs(d));
    let started = Instant::now();
    let interval = args.rate.map(|r| Duration::from_secs_f64(args.producers as f64 / r.max(1e-3)));
    let mut tasks = Vec::new();
    for i in 0..args.producers {
        let (producer, sent, errors, progress) = (producer.clone(), sent.clone(), errors.clone(), progress.clone());
        let (topic, size, keyed, total) = (args.topic.clone(), args.record_size, args.keyed, args.records);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut outstanding = std::collections::VecDeque::new();
            let mut k = 0u32;
            let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
            loop {
                let done = match deadline {
                    Some(d) => Instant::now() >= d,
                    None => sent.fetch_add(1, Ordering::Relaxed) >= total,
                };
                if done {
                    break;
                }
                let t0 = match interval {
                    Some(iv) => {
                        let due = started + iv * k;
                        k += 1;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                // xorshift: cheap, deterministic per task.
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let key = keyed.then(|| format!("key-{}", rng_state % 10_000).into_bytes());
                let partition = (!keyed).then_some((i % partitions) as u32);
                let d = producer.send(&topic, key, vec![b'x'; size], partition).await?;
                outstanding.push_back((t0, d));
                while outstanding.len() >= RECORDS_IN_FLIGHT {
                    let Some((t0, d)) = outstanding.pop_front() else { break };
                    settle(&mut hist, t0, d, &errors, &progress, &sent, deadline.is_some()).await?;
                }
            }
            while let Some((t0, d)) = outstanding.pop_front() {
                settle(&mut hist, t0, d, &errors, &progress, &sent, deadline.is_some()).await?;
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let ticker = progress.tick_seconds(deadline);
    let mut total = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for t in tasks {
        total.add(t.await??)?;
    }
    producer.flush().await;
    ticker.abort();
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let records = total.len();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    let report = ProduceReport {
        acks: args.acks,
        idempotence: args.idempotence,
        keyed: args.keyed,
        rate: args.rate,
        producers: args.producers,
        partitions,
        record_size: args.record_size,
        batch_records: 0,
        records,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: records as f64 * args.record_size as f64 / seconds / 1e6,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: total.max() as f64 / 1000.0,
    };
    print_report(&report, args.output)
}

/// Records outstanding per task in record mode.
const RECORDS_IN_FLIGHT: usize = 1_000;

async fn settle(
    hist: &mut Histogram<u64>,
    t0: Instant,
    d: ferrolog_client::Delivery,
    errors: &AtomicU64,
    progress: &crate::progress::Progress,
    sent: &AtomicU64,
    timed: bool,
) -> anyhow::Result<()> {
    match d.wait().await {
        Ok(_) => {
            hist.record(t0.elapsed().as_micros().max(1) as u64)?;
            if timed {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            progress.inc(if timed { 0 } else { 1 });
        }
        Err(e) => {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "record failed");
        }
    }
    Ok(())
}
