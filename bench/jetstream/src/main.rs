//! `ferrolog-jetstream-bench`: `ferrolog bench produce`'s closed-loop
//! workload against a NATS JetStream stream, for side-by-side runs
//! (`bench/compare.sh`).
//!
//! ```text
//! ferrolog-jetstream-bench --servers nats://127.0.0.1:4222,... [--stream S] [--replicas 3]
//!     [--producers K] [--record-size B] [--batch-records N] [--duration S] [--subjects P] [--json]
//! ```
//!
//! Creates (or recreates) a file-backed stream with `--replicas`; each
//! producer publishes `--batch-records` messages at once and waits for every
//! JetStream ack (the stream's quorum stored them) before the next batch:
//! JetStream has no batch publish, so a batch is that many pipelined
//! publishes. Producer i publishes to subject `bench.<i mod P>`. Prints
//! records/s, MB/s and batch latency percentiles.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use async_nats::jetstream;

struct Args {
    servers: String,
    stream: String,
    replicas: usize,
    producers: usize,
    record_size: usize,
    batch_records: usize,
    duration: Duration,
    subjects: usize,
    json: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        servers: "nats://127.0.0.1:4222".into(),
        stream: "BENCH".into(),
        replicas: 3,
        producers: 1,
        record_size: 1024,
        batch_records: 16,
        duration: Duration::from_secs(10),
        subjects: 1,
        json: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().context("missing value");
        match k.as_str() {
            "--servers" => a.servers = v()?.clone(),
            "--stream" => a.stream = v()?.clone(),
            "--replicas" => a.replicas = v()?.parse()?,
            "--producers" => a.producers = v()?.parse()?,
            "--record-size" => a.record_size = v()?.parse()?,
            "--batch-records" => a.batch_records = v()?.parse()?,
            "--duration" => a.duration = Duration::from_secs_f64(v()?.parse()?),
            "--subjects" => a.subjects = v()?.parse()?,
            "--json" => a.json = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let servers: Vec<async_nats::ServerAddr> =
        a.servers.split(',').map(|s| s.parse()).collect::<Result<_, _>>().context("--servers")?;
    let client = async_nats::connect(servers).await.context("connect to NATS")?;
    let js = jetstream::new(client);
    let _ = js.delete_stream(&a.stream).await;
    let subject_prefix = format!("{}.bench", a.stream.to_lowercase());
    js.create_stream(jetstream::stream::Config {
        name: a.stream.clone(),
        subjects: vec![format!("{subject_prefix}.>")],
        storage: jetstream::stream::StorageType::File,
        num_replicas: a.replicas,
        ..Default::default()
    })
    .await
    .context("create the stream")?;
    let payload = bytes::Bytes::from(vec![0x5Au8; a.record_size]);
    let deadline = Instant::now() + a.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.producers {
        let js = js.clone();
        let payload = payload.clone();
        let subject = format!("{subject_prefix}.{}", i % a.subjects.max(1));
        let n = a.batch_records;
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u64> = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push(js.publish(subject.clone(), payload.clone()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct =
        |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let records = lat.len() * a.batch_records;
    let rps = records as f64 / secs;
    let mbps = rps * a.record_size as f64 / 1e6;
    if a.json {
        println!(
            "{{\"records\":{records},\"seconds\":{secs:.3},\"records_per_sec\":{rps:.0},\"mb_per_sec\":{mbps:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
            pct(0.5) as f64 / 1e3,
            pct(0.99) as f64 / 1e3,
            pct(0.999) as f64 / 1e3,
            lat.last().copied().unwrap_or(0) as f64 / 1e3
        );
    } else {
        println!(
            "jetstream R{}: {} producers, {} B records, {} per batch: {rps:.0} records/s, {mbps:.2} MB/s; batch p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            a.replicas,
            a.producers,
            a.record_size,
            a.batch_records,
            pct(0.5),
            pct(0.99),
            pct(0.999),
            lat.last().copied().unwrap_or(0)
        );
    }
    let _ = js.delete_stream(&a.stream).await;
    Ok(())
}
