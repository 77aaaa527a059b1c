//! The client subcommands of `shared/cli.md`: `topic`, `produce`, `consume`,
//! `cluster`. Records go in on stdin and out on stdout, one per line;
//! diagnostics go to stderr; failures exit non-zero with a one-line reason
//! (see `main`).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::anyhow;
use anyhow::bail;
use ferrolog_client::Client;
use ferrolog_client::Consumer;
use ferrolog_client::ConsumerConfig;
use ferrolog_client::Event;
use ferrolog_client::IdempotentProducer;
use ferrolog_client::OffsetReset;
use ferrolog_proto::v1;
use tokio::sync::mpsc;

use crate::Output;
use crate::bench_produce::AcksArg;

/// Timeout of one admin call (it follows the metadata leader).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Delivery timeout of a produced batch (retries included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines read from stdin ahead of the network; reading pauses when full.
const STDIN_QUEUE: usize = 10_000;
/// Most records in one produced batch.
const MAX_BATCH_RECORDS: usize = 1_000;

/// Where the brokers are: `--brokers`, else `FERROLOG_BROKERS`, else
/// `127.0.0.1:9092`.
#[derive(Debug, Clone, clap::Args)]
pub struct Brokers {
    /// Brokers to bootstrap from (any one reachable broker is enough).
    #[arg(long, env = "FERROLOG_BROKERS", default_value = "127.0.0.1:9092", value_delimiter = ',', global = true)]
    brokers: Vec<String>,
}

impl Brokers {
    fn client(&self) -> Client {
        Client::new(self.brokers.clone())
    }
}

/// Topic administration.
#[derive(Debug, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    ///
    /// Example: ferrolog topic create orders --partitions 6 --replication-factor 3 --config retention.ms=86400000
    Create {
        /// Topic name (a-z, A-Z, 0-9, '.', '_', '-').
        name: String,
        /// Partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (default: min(3, brokers)).
        #[arg(long)]
        replication_factor: Option<u32>,
        /// Topic config KEY=VALUE: retention.ms, retention.bytes, max.message.bytes.
        #[arg(long = "config")]
        config: Vec<String>,
    },
    /// List topics.
    ///
    /// Example: ferrolog topic list --output json
    List,
    /// Describe a topic: partitions, leader, replicas, high watermark, log start.
    ///
    /// Example: ferrolog topic describe orders
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data.
    ///
    /// Example: ferrolog topic delete orders
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Cluster commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Brokers, metadata leader, partition counts, under-replicated partitions.
    ///
    /// Example: ferrolog cluster status
    Status,
}

/// Produce stdin lines as records.
///
/// Example: printf 'a\nb\n' | ferrolog produce orders --acks all --print-offsets
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic.
    topic: String,
    /// Acks level: all (quorum), 1 (leader's disk), 0 (fire and forget).
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Send every record to this partition (default: by key, else round-robin per batch).
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// Turn idempotence off (it is on by default with --acks all).
    #[arg(long)]
    no_idempotence: bool,
    /// Print "partition offset" of each record to stdout.
    #[arg(long)]
    print_offsets: bool,
}

/// Consume records and print them, one per line.
///
/// Example: ferrolog consume orders --from-beginning --max-messages 10 --format json
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic.
    topic: String,
    /// Consume as a member of this group (partitions shared with the other
    /// members; offsets committed as it goes).
    #[arg(long)]
    group: Option<String>,
    /// Start at the log start of each partition (default: the end).
    #[arg(long)]
    from_beginning: bool,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition")]
    offset: Option<u64>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop after this long with nothing new, in ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// text: the value; json: topic, partition, offset, key, value, timestamp.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Commit offsets as it goes (with --group it always does; accepted for
    /// compatibility).
    #[arg(long)]
    commit: bool,
}

/// Record output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value only.
    Text,
    /// One JSON object per record.
    Json,
}

fn print(output: Output, json: serde_json::Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{json}"),
        Output::Text => println!("{}", text()),
    }
}

fn topic_json(t: &v1::TopicDescription) -> serde_json::Value {
    let cfg = t.config.unwrap_or_default();
    serde_json::json!({
        "name": t.name,
        "replication_factor": t.replication_factor,
        "config": {
            "retention.ms": cfg.retention_ms,
            "retention.bytes": cfg.retention_bytes,
            "max.message.bytes": cfg.max_message_bytes,
        },
        "partitions": t.partitions.iter().map(|p| serde_json::json!({
            "partition": p.partition,
            "leader": p.leader_id,
            "replicas": p.replicas.iter().map(|r| r.broker_id).collect::<Vec<_>>(),
            "lag": p.replicas.iter().map(|r| r.lag).collect::<Vec<_>>(),
            "lag_records": p.replicas.iter().map(|r| r.lag_records).collect::<Vec<_>>(),
            "lag_seconds": p.replicas.iter().map(|r| r.lag_seconds).collect::<Vec<_>>(),
            "high_watermark": p.high_watermark,
            "log_start_offset": p.log_start_offset,
        })).collect::<Vec<_>>(),
    })
}

fn topic_text(t: &v1::TopicDescription) -> String {
    let mut out =
        format!("topic {}  partitions {}  replication-factor {}\n", t.name, t.partitions.len(), t.replication_factor);
    out.push_str("partition  leader  replicas      lag         log-start  high-watermark  behind (records/seconds)");
    for p in &t.partitions {
        let replicas: Vec<String> = p.replicas.iter().map(|r| r.broker_id.to_string()).collect();
        let lag: Vec<String> = p.replicas.iter().map(|r| r.lag.to_string()).collect();
        let behind: Vec<String> = p
            .replicas
            .iter()
            .filter(|r| r.lag_records > 0)
            .map(|r| format!("{}:{}/{:.1}s", r.broker_id, r.lag_records, r.lag_seconds))
            .collect();
        let leader = if p.leader_id == 0 { "none".to_string() } else { p.leader_id.to_string() };
        out.push_str(&format!(
            "\n{:<9}  {:<6}  {:<12}  {:<10}  {:<9}  {:<14}  {}",
            p.partition,
            leader,
            replicas.join(","),
            lag.join(","),
            p.log_start_offset,
            p.high_watermark,
            if behind.is_empty() { "-".to_string() } else { behind.join(" ") }
        ));
    }
    out
}

fn parse_config(items: &[String]) -> anyhow::Result<v1::TopicConfig> {
    let mut c = v1::TopicConfig::default();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| anyhow!("--config {item:?} is not KEY=VALUE"))?;
        let n: i64 = v.parse().with_context(|| format!("--config {k}: {v:?} is not a number"))?;
        match k {
            "retention.ms" => c.retention_ms = Some(n),
            "retention.bytes" => c.retention_bytes = Some(n),
            "max.message.bytes" => {
                c.max_message_bytes = Some(u32::try_from(n).map_err(|_| anyhow!("max.message.bytes out of range"))?)
            }
            other => bail!("unknown topic config {other:?} (known: retention.ms, retention.bytes, max.message.bytes)"),
        }
    }
    Ok(c)
}

/// `ferrolog topic ...`.
pub async fn topic(brokers: &Brokers, output: Output, cmd: TopicCommand) -> anyhow::Result<()> {
    let client = brokers.client();
    match cmd {
        TopicCommand::Create { name, partitions, replication_factor, config } => {
            let req = v1::CreateTopicRequest {
                name: name.clone(),
                partitions,
                replication_factor: replication_factor.unwrap_or(0),
                config: Some(parse_config(&config)?),
            };
            client
                .admin(ADMIN_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.create_topic(req).await }
                })
                .await
                .map_err(|s| anyhow!("create topic {name}: {}", s.message()))?;
            client.wait_leaders(&name, ADMIN_TIMEOUT).await.map_err(|s| anyhow!("{}", s.message()))?;
            let t = describe(&client, &name).await?;
            print(output, topic_json(&t), || format!("created topic {name}\n{}", topic_text(&t)));
        }
        TopicCommand::List => {
            let r = client
                .admin(ADMIN_TIMEOUT, |mut c| async move { c.list_topics(v1::ListTopicsRequest {}).await })
                .await
                .map_err(|s| anyhow!("list topics: {}", s.message()))?;
            match output {
                Output::Json => println!("{}", serde_json::Value::Array(r.topics.iter().map(topic_json).collect())),
                Output::Text => {
                    for t in &r.topics {
                        println!(
                            "{}\t{} partitions\treplication-factor {}",
                            t.name,
                            t.partitions.len(),
                            t.replication_factor
                        );
                    }
                }
            }
        }
        TopicCommand::Describe { name } => {
            let t = describe(&client, &name).await?;
            print(output, topic_json(&t), || topic_text(&t));
        }
        TopicCommand::Delete { name } => {
            let req = v1::DeleteTopicRequest { name: name.clone() };
            client
                .admin(ADMIN_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.delete_topic(req).await }
                })
                .await
                .map_err(|s| anyhow!("delete topic {name}: {}", s.message()))?;
            print(output, serde_json::json!({ "deleted": name }), || format!("deleted topic {name}"));
        }
    }
    Ok(())
}

async fn describe(client: &Client, name: &str) -> anyhow::Result<v1::TopicDescription> {
    let req = v1::DescribeTopicRequest { name: name.to_string(), local_only: false, replica_lag: true };
    client
        .admin(ADMIN_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.describe_topic(req).await }
        })
        .await
        .map_err(|s| anyhow!("describe topic {name}: {}", s.message()))
}

/// `ferrolog cluster status`.
pub async fn cluster(brokers: &Brokers, output: Output, cmd: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Status = cmd;
    let client = brokers.client();
    let r = client
        .admin(ADMIN_TIMEOUT, |mut c| async move { c.describe_cluster(v1::DescribeClusterRequest {}).await })
        .await
        .map_err(|s| anyhow!("cluster status: {}", s.message()))?;
    let json = serde_json::json!({
        "metadata_leader": r.metadata_leader_id,
        "under_replicated_partitions": r.under_replicated_partitions,
        "brokers": r.brokers.iter().map(|b| serde_json::json!({
            "id": b.id, "address": b.address, "alive": b.alive, "metadata_voter": b.metadata_voter,
            "partitions_led": b.partitions_led, "replicas": b.replicas,
        })).collect::<Vec<_>>(),
    });
    print(output, json, || {
        let mut out = format!(
            "metadata leader: broker {}\nunder-replicated partitions: {}\nbroker  address                alive  role     leads  replicas",
            r.metadata_leader_id, r.under_replicated_partitions
        );
        for b in &r.brokers {
            out.push_str(&format!(
                "\n{:<6}  {:<21}  {:<5}  {:<7}  {:<5}  {}",
                b.id,
                b.address,
                if b.alive { "yes" } else { "NO" },
                if b.metadata_voter { "voter" } else { "learner" },
                b.partitions_led,
                b.replicas
            ));
        }
        out
    });
    Ok(())
}

type Rec = (Option<Vec<u8>>, Vec<u8>);

/// `ferrolog produce`: stdin lines to records, batched per partition from
/// whatever is already read (so pasted input goes in large batches and
/// typed input goes at once).
pub async fn produce(brokers: &Brokers, args: ProduceArgs) -> anyhow::Result<()> {
    let client = Arc::new(brokers.client());
    let t = describe(&client, &args.topic).await?;
    let partitions = t.partitions.len() as u32;
    if let Some(p) = args.partition
        && p >= partitions
    {
        bail!("topic {} has no partition {p} (it has {partitions})", args.topic);
    }
    let idempotent = args.acks == AcksArg::All && !args.no_idempotence;
    let producer = if idempotent {
        Some(
            IdempotentProducer::new(client.clone(), None, args.acks.acks(), DELIVERY_TIMEOUT)
                .await
                .map_err(|s| anyhow!("init producer: {}", s.message()))?,
        )
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Rec>(STDIN_QUEUE);
    let sep = args.key_separator.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("read stdin")?;
            let rec = match &sep {
                Some(s) => match line.split_once(s.as_str()) {
                    Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => (None, line.into_bytes()),
                },
                None => (None, line.into_bytes()),
            };
            if tx.blocking_send(rec).is_err() {
                break;
            }
        }
        Ok(())
    });
    let (mut sent, mut failed, mut rr) = (0u64, 0u64, 0u32);
    let mut stdout = std::io::stdout().lock();
    while let Some(first) = rx.recv().await {
        let mut chunk = vec![first];
        while chunk.len() < MAX_BATCH_RECORDS {
            match rx.try_recv() {
                Ok(r) => chunk.push(r),
                Err(_) => break,
            }
        }
        // Keyed records go to their key's partition; unkeyed ones of this
        // chunk stick to one partition (sticky partitioning), rotating per chunk.
        let sticky = args.partition.unwrap_or(rr % partitions);
        rr = rr.wrapping_add(1);
        let mut by_partition: BTreeMap<u32, Vec<Rec>> = BTreeMap::new();
        for r in chunk {
            let p = match (&args.partition, &r.0) {
                (Some(p), _) => *p,
                (None, Some(k)) => ferrolog_client::partition_for_key(k, partitions),
                (None, None) => sticky,
            };
            by_partition.entry(p).or_default().push(r);
        }
        for (p, records) in by_partition {
            let n = records.len() as u64;
            let r = match &producer {
                Some(prod) => prod.send(&args.topic, p, &records).await,
                None => {
                    let b = ferrolog_client::make_batch(&records, now_ms());
                    client.produce(&args.topic, p, args.acks.acks(), b, DELIVERY_TIMEOUT).await
                }
            };
            match r {
                Ok(resp) => {
                    sent += n;
                    if args.print_offsets
                        && let Some(base) = resp.base_offset
                    {
                        for i in 0..n {
                            writeln!(stdout, "{p} {}", base + i)?;
                        }
                    }
                }
                Err(s) => {
                    failed += n;
                    eprintln!("produce: {n} records to {}/{p} failed: {}", args.topic, s.message());
                }
            }
        }
    }
    reader.await.context("stdin reader")??;
    stdout.flush()?;
    if failed > 0 {
        bail!("{failed} of {} records were not acknowledged", sent + failed);
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `ferrolog consume`: with `--group`, as a member of the group (offsets
/// committed every second and on exit); without, every partition (or one).
pub async fn consume(brokers: &Brokers, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Arc::new(brokers.client());
    let t = describe(&client, &args.topic).await?;
    if args.commit && args.group.is_none() {
        bail!("--commit needs --group");
    }
    let reset = if args.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    let mut consumer = match &args.group {
        Some(group) => {
            if args.partition.is_some() {
                bail!("--partition reads without a group; drop --group or --partition");
            }
            let config = ConsumerConfig {
                client_id: "ferrolog-cli".into(),
                session_timeout: Duration::from_secs(10),
                auto_commit: Some(Duration::from_secs(1)),
                offset_reset: reset,
                ..ConsumerConfig::default()
            };
            Consumer::subscribe(client.clone(), group, &[args.topic.as_str()], config)
        }
        None => {
            let parts: Vec<u32> = match args.partition {
                Some(p) if (p as usize) < t.partitions.len() => vec![p],
                Some(p) => bail!("topic {} has no partition {p} (it has {})", args.topic, t.partitions.len()),
                None => (0..t.partitions.len() as u32).collect(),
            };
            let start = parts.iter().map(|p| ((args.topic.clone(), *p), args.offset)).collect();
            let config = ConsumerConfig { auto_commit: None, offset_reset: reset, ..ConsumerConfig::default() };
            Consumer::assign(client.clone(), start, config)
        }
    };
    let mut count = 0u64;
    let mut stdout = std::io::stdout().lock();
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut last = Instant::now();
    loop {
        if args.max_messages.is_some_and(|m| count >= m) {
            break;
        }
        let wait = match idle {
            Some(d) => d.saturating_sub(last.elapsed()),
            None => Duration::from_secs(3600),
        };
        let got = tokio::select! {
            e = consumer.next() => e,
            _ = tokio::time::sleep(wait) => {
                if idle.is_some() { break } else { continue }
            }
            _ = tokio::signal::ctrl_c() => break,
        };
        let r = match got {
            None => break,
            Some(Event::Record(r)) => r,
            Some(Event::Assigned(tps)) => {
                tracing::info!(?tps, "assigned");
                continue;
            }
            Some(Event::Revoked(tps)) => {
                tracing::info!(?tps, "revoked");
                continue;
            }
            Some(Event::OffsetsUnavailable { partitions, error }) => {
                tracing::error!(?partitions, error, "committed offsets unavailable; still retrying");
                continue;
            }
        };
        last = Instant::now();
        count += 1;
        match args.format {
            Format::Text => {
                stdout.write_all(&r.record.value)?;
                stdout.write_all(b"\n")?;
            }
            Format::Json => {
                let json = serde_json::json!({
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.record.offset,
                    "key": r.record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "value": String::from_utf8_lossy(&r.record.value),
                    "timestamp": r.record.timestamp_ms,
                    "headers": serde_json::json!({}),
                });
                writeln!(stdout, "{json}")?;
            }
        }
        stdout.flush()?;
    }
    consumer.close().await.map_err(|s| anyhow!("commit on exit: {}", s.message()))?;
    Ok(())
}

/// Consumer-group administration.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// List groups.
    ///
    /// Example: ferrolog group list
    List,
    /// Members, assignment, epochs, committed offsets and lag per partition.
    ///
    /// Example: ferrolog group describe billing
    Describe {
        /// Group.
        group: String,
    },
    /// Set the offsets of a group with no active members.
    ///
    /// Example: ferrolog group reset-offsets billing --topic orders --to-earliest
    ResetOffsets {
        /// Group.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// To the log start.
        #[arg(long, group = "target")]
        to_earliest: bool,
        /// To the end.
        #[arg(long, group = "target")]
        to_latest: bool,
        /// To this offset (clamped to the log).
        #[arg(long, group = "target")]
        to_offset: Option<i64>,
        /// To the first offset at or after this time (ms since the epoch).
        #[arg(long, group = "target")]
        to_timestamp: Option<i64>,
    },
    /// Delete a group with no active members (and its offsets).
    ///
    /// Example: ferrolog group delete billing
    Delete {
        /// Group.
        group: String,
    },
}

async fn on_coordinator<T, F, Fut>(client: &Client, call: F) -> Result<T, ferrolog_client::ClientError>
where
    F: Fn(v1::groups_client::GroupsClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    client.on_coordinator(ADMIN_TIMEOUT, |ch| call(v1::groups_client::GroupsClient::new(ch))).await
}

/// `ferrolog group ...`.
pub async fn group(brokers: &Brokers, output: Output, cmd: GroupCommand) -> anyhow::Result<()> {
    let client = brokers.client();
    match cmd {
        GroupCommand::List => {
            let r = on_coordinator(&client, |mut c| async move { c.list_groups(v1::ListGroupsRequest {}).await })
                .await
                .map_err(|s| anyhow!("list groups: {}", s.message()))?;
            match output {
                Output::Json => println!("{}", serde_json::json!(r.groups)),
                Output::Text => r.groups.iter().for_each(|g| println!("{g}")),
            }
        }
        GroupCommand::Describe { group } => {
            let req = v1::DescribeGroupRequest { group: group.clone() };
            let d = on_coordinator(&client, |mut c| {
                let req = req.clone();
                async move { c.describe_group(req).await }
            })
            .await
            .map_err(|s| anyhow!("describe group {group}: {}", s.message()))?;
            let assignment = |m: &v1::MemberDescription| -> Vec<String> {
                m.assignment
                    .iter()
                    .flat_map(|a| a.partitions.iter())
                    .flat_map(|t| t.partitions.iter().map(move |p| format!("{}/{p}", t.topic)))
                    .collect()
            };
            let json = serde_json::json!({
                "group": d.group, "state": d.state, "group_epoch": d.group_epoch,
                "assignor": if d.assignor == v1::Assignor::Range as i32 { "range" } else { "uniform" },
                "members": d.members.iter().map(|m| serde_json::json!({
                    "member_id": m.member_id, "client_id": m.client_id, "member_epoch": m.member_epoch,
                    "assignment": assignment(m),
                })).collect::<Vec<_>>(),
                "offsets": d.offsets.iter().map(|o| serde_json::json!({
                    "topic": o.topic, "partition": o.partition, "committed": o.committed_offset,
                    "high_watermark": o.high_watermark, "lag": o.lag, "lag_seconds": o.lag_seconds,
                })).collect::<Vec<_>>(),
            });
            print(output, json, || {
                let mut out = format!(
                    "group {}  state {}  epoch {}  members {}\nmember                              epoch  assignment",
                    d.group,
                    d.state,
                    d.group_epoch,
                    d.members.len()
                );
                for m in &d.members {
                    out.push_str(&format!("\n{:<34}  {:<5}  {}", m.member_id, m.member_epoch, assignment(m).join(",")));
                }
                out.push_str("\ntopic            partition  committed  high-watermark  lag        lag-seconds");
                for o in &d.offsets {
                    out.push_str(&format!(
                        "\n{:<15}  {:<9}  {:<9}  {:<14}  {:<9}  {:.1}",
                        o.topic, o.partition, o.committed_offset, o.high_watermark, o.lag, o.lag_seconds
                    ));
                }
                out
            });
        }
        GroupCommand::ResetOffsets { group, topic, to_earliest, to_latest, to_offset, to_timestamp } => {
            use v1::reset_offsets_request::Target;
            let target = match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, _, _, _) => Target::ToEarliest(true),
                (_, true, _, _) => Target::ToLatest(true),
                (_, _, Some(o), _) => Target::ToOffset(o),
                (_, _, _, Some(t)) => Target::ToTimestampMs(t),
                _ => bail!("give one of --to-earliest, --to-latest, --to-offset O, --to-timestamp MS"),
            };
            let req = v1::ResetOffsetsRequest { group: group.clone(), topic, target: Some(target) };
            let r = on_coordinator(&client, |mut c| {
                let req = req.clone();
                async move { c.reset_offsets(req).await }
            })
            .await
            .map_err(|s| anyhow!("reset offsets of {group}: {}", s.message()))?;
            let json = serde_json::json!(
                r.offsets
                    .iter()
                    .map(|o| serde_json::json!({
                        "topic": o.topic, "partition": o.partition, "offset": o.offset,
                    }))
                    .collect::<Vec<_>>()
            );
            print(output, json, || {
                r.offsets
                    .iter()
                    .map(|o| format!("{}/{} -> {}", o.topic, o.partition, o.offset))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        GroupCommand::Delete { group } => {
            let req = v1::DeleteGroupRequest { group: group.clone() };
            on_coordinator(&client, |mut c| {
                let req = req.clone();
                async move { c.delete_group(req).await }
            })
            .await
            .map_err(|s| anyhow!("delete group {group}: {}", s.message()))?;
            print(output, serde_json::json!({ "deleted": group }), || format!("deleted group {group}"));
        }
    }
    Ok(())
}
