//! `ferrolog bench commit`: what one offset commit costs as the number of
//! consumer groups grows. For each group count it makes that many groups
//! (each with committed offsets for every partition of a topic, committed
//! as a standalone consumer: member "" epoch -1), then times commits of
//! one offset in one group, one after another, on the group coordinator.
//! A commit is a metadata Raft write; if applying it cost O(cluster
//! state), the time per commit would grow with the groups present.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use ferrolog_client::Client;
use ferrolog_proto::v1;
use ferrolog_types::limits::API_MESSAGE_LIMIT;
use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Offset-commit benchmark.
///
/// Example: ferrolog bench commit --groups 1,1000 --partitions 100 --commits 1000
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Brokers to bootstrap from.
    #[arg(long, env = "FERROLOG_BROKERS", default_value = "127.0.0.1:9092", value_delimiter = ',')]
    brokers: Vec<String>,
    /// Comma-separated group counts, measured in this order (groups made
    /// for one count are kept for the next).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    groups: Vec<usize>,
    /// Partitions of the topic, so committed offsets per group.
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    /// Timed commits per group count.
    #[arg(long, default_value_t = 1000)]
    commits: usize,
    /// Topic the offsets are committed for (created if missing, RF 1).
    #[arg(long, default_value = "bench-commit")]
    topic: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::Output,
}

#[derive(Debug, Serialize)]
struct Row {
    groups: usize,
    offsets_per_group: u32,
    commits: usize,
    p50_us: u64,
    p99_us: u64,
    commits_per_sec: f64,
}

async fn commit(client: &Client, group: &str, offsets: Vec<v1::OffsetCommit>) -> anyhow::Result<()> {
    let req = v1::CommitOffsetsRequest { group: group.into(), member_id: String::new(), member_epoch: -1, offsets };
    client
        .on_coordinator(TIMEOUT, |ch| {
            let req = req.clone();
            async move {
                v1::groups_client::GroupsClient::new(ch)
                    .max_decoding_message_size(API_MESSAGE_LIMIT)
                    .commit_offsets(req)
                    .await
            }
        })
        .await
        .with_context(|| format!("commit offsets of group {group}"))?;
    Ok(())
}

/// Runs the benchmark and prints one row per group count.
pub async fn run(args: CommitArgs) -> anyhow::Result<()> {
    let client = Client::new(args.brokers.clone());
    match client.create_topic(&args.topic, args.partitions, 1).await {
        Ok(_) => {}
        Err(s) if s.kind() == ferrolog_client::ErrorKind::AlreadyExists => {}
        Err(s) => anyhow::bail!("create topic {}: {}", args.topic, s.message()),
    }
    let all = |offset: i64| -> Vec<v1::OffsetCommit> {
        (0..args.partitions)
            .map(|p| v1::OffsetCommit { topic: args.topic.clone(), partition: p, offset, metadata: String::new() })
            .collect()
    };
    let mut made = 0;
    let mut next_offset = 1i64;
    for &groups in &args.groups {
        while made < groups {
            commit(&client, &format!("bench-group-{made}"), all(0)).await?;
            made += 1;
        }
        let mut us = Vec::with_capacity(args.commits);
        let started = Instant::now();
        for i in 0..args.commits {
            let one = vec![v1::OffsetCommit {
                topic: args.topic.clone(),
                partition: (i as u32) % args.partitions,
                offset: next_offset,
                metadata: String::new(),
            }];
            next_offset += 1;
            let t0 = Instant::now();
            commit(&client, "bench-group-0", one).await?;
            us.push(t0.elapsed().as_micros() as u64);
        }
        let secs = started.elapsed().as_secs_f64();
        us.sort_unstable();
        let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
        let row = Row {
            groups,
            offsets_per_group: args.partitions,
            commits: args.commits,
            p50_us: at(0.5),
            p99_us: at(0.99),
            commits_per_sec: args.commits as f64 / secs,
        };
        match args.output {
            crate::Output::Json => println!("{}", serde_json::to_string(&row)?),
            crate::Output::Text => println!(
                "groups {:>6} x {} offsets: commit p50 {} us, p99 {} us, {:.0} commits/s",
                row.groups, row.offsets_per_group, row.p50_us, row.p99_us, row.commits_per_sec
            ),
        }
    }
    Ok(())
}
