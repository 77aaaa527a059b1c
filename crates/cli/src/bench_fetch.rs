//! `ferrolog bench fetch`: the latency of single fetches at the head (oldest
//! retained data) and at the tail of one partition, and of ListOffsets by
//! timestamp, so that their cost can be compared across partition sizes
//! (it must not grow with the partition's length).

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use ferrolog_proto::v1;
use rand::Rng;
use rand::SeedableRng;
use serde::Serialize;

/// Fetch and ListOffsets latency at the head and the tail of a partition.
///
/// Example: ferrolog bench fetch --topic sizes --samples 500
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The broker to ask (any replica serves fetches).
    #[arg(long, env = "FERROLOG_BROKERS", default_value = "127.0.0.1:9092", value_delimiter = ',')]
    brokers: Vec<String>,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Partition to read.
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// Requests per kind.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Seed of the random offsets and timestamps (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Instead: read the partition from its start to its end (4 MiB
    /// fetches, one after another) and report MB/s for each fifth of it,
    /// to show the rate does not decay with the position.
    #[arg(long)]
    sweep: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::Output,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    topic: String,
    partition: u32,
    records: u64,
    seed: u64,
    fetch_head: Latency,
    fetch_tail: Latency,
    list_offsets_by_time: Latency,
    tail_over_head_p50: f64,
}

fn latency(mut us: Vec<u64>) -> Latency {
    us.sort_unstable();
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    Latency { p50_us: at(0.5), p99_us: at(0.99), max_us: *us.last().unwrap_or(&0) }
}

/// Runs the benchmark and prints its report.
pub async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let addr = args.brokers.first().context("no broker given")?;
    let mut c = v1::broker_client::BrokerClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connect to {addr}"))?
        .max_decoding_message_size(ferrolog_types::limits::API_MESSAGE_LIMIT);
    let fetch = |offset: u64| v1::FetchRequest {
        topic: args.topic.clone(),
        partition: args.partition,
        offset: offset as i64,
        // The smallest answer: one batch.
        max_bytes: 1,
        max_wait_ms: 0,
        min_bytes: 0,
    };
    let first = c.fetch(fetch(0)).await;
    let first = match first {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::OutOfRange => {
            let probe = c.list_offsets(v1::ListOffsetsRequest {
                topic: args.topic.clone(),
                partition: args.partition,
                spec: v1::OffsetSpec::Earliest as i32,
                timestamp_ms: 0,
            });
            let start = probe.await.context("list offsets")?.into_inner().offset as u64;
            c.fetch(fetch(start)).await.context("fetch the log start")?.into_inner()
        }
        Err(s) => bail!("fetch from {addr}: {}", s.message()),
    };
    let (start, end) = (first.log_start_offset as u64, first.high_watermark as u64);
    if end <= start {
        bail!("{}/{} holds no records", args.topic, args.partition);
    }
    if args.sweep {
        return sweep(&mut c, &args, start, end).await;
    }
    let span = ((end - start) / 100).clamp(1, 10_000);
    let last = c.fetch(fetch(end - 1)).await.context("fetch the tail")?.into_inner();
    let ts_lo = first.batches.first().map(|b| b.first_timestamp_ms).unwrap_or(0);
    let ts_hi = last.batches.last().map(|b| b.max_timestamp_ms).unwrap_or(ts_lo).max(ts_lo);

    let mut head = Vec::with_capacity(args.samples);
    let mut tail = Vec::with_capacity(args.samples);
    let mut by_time = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        for (at, out) in
            [(start + rng.random_range(0..span), &mut head), (end - 1 - rng.random_range(0..span), &mut tail)]
        {
            let t0 = Instant::now();
            let r = c.fetch(fetch(at)).await.with_context(|| format!("fetch at {at}"))?.into_inner();
            out.push(t0.elapsed().as_micros() as u64);
            if r.batches.is_empty() {
                bail!("fetch at {at} returned nothing");
            }
        }
        let ts = rng.random_range(ts_lo..=ts_hi);
        let t0 = Instant::now();
        c.list_offsets(v1::ListOffsetsRequest {
            topic: args.topic.clone(),
            partition: args.partition,
            spec: v1::OffsetSpec::Timestamp as i32,
            timestamp_ms: ts,
        })
        .await
        .context("list offsets by timestamp")?;
        by_time.push(t0.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (fetch_head, fetch_tail) = (latency(head), latency(tail));
    let report = Report {
        topic: args.topic.clone(),
        partition: args.partition,
        records: end - start,
        seed,
        tail_over_head_p50: fetch_tail.p50_us as f64 / fetch_head.p50_us.max(1) as f64,
        fetch_head,
        fetch_tail,
        list_offsets_by_time: latency(by_time),
    };
    match args.output {
        crate::Output::Json => println!("{}", serde_json::to_string(&report)?),
        crate::Output::Text => {
            println!("{}/{}: {} records (seed {seed})", report.topic, report.partition, report.records);
            for (name, l) in [
                ("fetch at head", &report.fetch_head),
                ("fetch at tail", &report.fetch_tail),
                ("list offsets by time", &report.list_offsets_by_time),
            ] {
                println!("  {name:<22} p50 {:>7} us  p99 {:>7} us  max {:>7} us", l.p50_us, l.p99_us, l.max_us);
            }
            println!("  tail/head p50: {:.2}", report.tail_over_head_p50);
        }
    }
    Ok(())
}

/// Reads `[start, end)` front to back and reports the rate per fifth.
async fn sweep(
    c: &mut v1::broker_client::BrokerClient<tonic::transport::Channel>,
    args: &FetchArgs,
    start: u64,
    end: u64,
) -> anyhow::Result<()> {
    let fifth = ((end - start) / 5).max(1);
    let mut at = start;
    let mut slices = Vec::new();
    let (mut t0, mut bytes, mut slice_end) = (Instant::now(), 0u64, start + fifth);
    while at < end {
        let r = c
            .fetch(v1::FetchRequest {
                topic: args.topic.clone(),
                partition: args.partition,
                offset: at as i64,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
            })
            .await
            .with_context(|| format!("fetch at {at}"))?
            .into_inner();
        let Some(last) = r.batches.last() else { bail!("fetch at {at} returned nothing") };
        at = last.base_offset as u64 + u64::from(last.record_count);
        bytes += r.batches.iter().map(|b| b.records.len() as u64).sum::<u64>();
        if at >= slice_end || at >= end {
            let secs = t0.elapsed().as_secs_f64();
            slices.push(bytes as f64 / 1e6 / secs);
            (t0, bytes, slice_end) = (Instant::now(), 0, slice_end + fifth);
        }
    }
    let first = slices.first().copied().unwrap_or(0.0);
    let last = slices.last().copied().unwrap_or(0.0);
    match args.output {
        crate::Output::Json => println!(
            "{}",
            serde_json::json!({ "topic": args.topic, "records": end - start, "mb_per_sec_by_fifth": slices,
                "last_over_first": last / first.max(f64::MIN_POSITIVE) })
        ),
        crate::Output::Text => {
            let rates: Vec<String> = slices.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{}/{}: read {} records front to back: MB/s per fifth [{}], last/first {:.2}",
                args.topic,
                args.partition,
                end - start,
                rates.join(", "),
                last / first.max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}
