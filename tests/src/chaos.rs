//! The chaos harness: a real broker cluster, workloads recording a history,
//! a seeded nemesis, a final read and the checker (`ferrolog-checker`).
//!
//! Used by `tests/chaos.rs` (a fixed seed in `make test`) and by the
//! `ferrolog-chaos` binary (long runs over many seeds; see
//! `docs/reliability.md`).
//!
//! - Cluster: `brokers` brokers (default 5), each on its own loopback
//!   address, one RF=3 topic. Election timeouts are the broker's own
//!   (1-2 s, sized for 2 cores).
//! - Workloads (every value unique): two idempotent `acks=all` producers,
//!   one `acks=1` and one `acks=0` producer, a consumer group whose members
//!   join, leave and crash, and a standalone consumer of every partition.
//! - Nemesis, from the seed: SIGKILL of one broker, of a partition leader,
//!   of the metadata leader, of a majority, of every broker; SIGSTOP of a
//!   leader past the election timeout; a failing WAL fsync (the broker must
//!   halt); a rolling restart (SIGTERM, one broker at a time); and with root,
//!   network partitions (majority/minority, an isolated leader, one-way, a
//!   bridge). Each fault is recorded with its start and end.
//! - With `power_loss`, every data dir is on the power-loss filesystem
//!   ([`crate::lossyfs`]) and the nemesis also cuts the power (SIGKILL,
//!   then every unsynced write dropped) of one broker, of a leader, of a
//!   majority, of every broker at once, and wipes a broker's disk (alone,
//!   or while another broker is paused).
//! - Then everything heals, the workloads run a little longer, stop, and
//!   every partition is read from its leader (the final read).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use ferrolog_checker::Event;
use ferrolog_checker::Kind;
use ferrolog_checker::Op;
use ferrolog_checker::Report;
use ferrolog_client::Client;
use ferrolog_client::Consumer;
use ferrolog_client::ConsumerConfig;
use ferrolog_client::IdempotentProducer;
use ferrolog_client::OffsetReset;
use ferrolog_proto::v1;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::task::JoinHandle;

use crate::client::TestClient;
use crate::cluster::Cluster;
use crate::netfault::NetFaults;

/// How long a cluster gets to start or recover before the run gives up.
const START: Duration = Duration::from_secs(90);
const TOPIC: &str = "chaos";
const GROUP: &str = "chaos-group";
/// Exit status of a broker halted by a failed fsync (the broker's
/// `FAIL_STOP_EXIT_CODE`).
const FAIL_STOP_EXIT_CODE: i32 = 70;
/// How long a broker with failing fsyncs gets to halt.
const FAIL_STOP_WITHIN: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Drives the nemesis schedule and the workloads' choices.
    pub seed: u64,
    /// Brokers (3 or more).
    pub brokers: usize,
    /// Partitions of the topic.
    pub partitions: u32,
    /// How long faults are injected.
    pub fault_time: Duration,
    /// Inject network partitions (needs root and iptables; skipped with a
    /// message otherwise).
    pub network: bool,
    /// Where the history goes (default: the cluster's temp dir).
    pub history: Option<PathBuf>,
    /// Run every broker's data dir on a power-loss filesystem
    /// ([`crate::lossyfs`]; needs root and `/dev/fuse`) and add the power
    /// and disk nemeses: power cut of one broker, of a leader, of a
    /// majority, of every broker; a wiped disk; a wiped disk while another
    /// broker is paused.
    pub power_loss: bool,
    /// Only these fault kinds (names as in the summary: `kill`,
    /// `kill-leader`, ..., `power-cut`, `wipe-disk`); `None`: every kind
    /// the run can do.
    pub faults: Option<Vec<String>>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            seed: 20261129,
            brokers: 5,
            partitions: 4,
            fault_time: Duration::from_secs(60),
            network: true,
            history: None,
            power_loss: false,
            faults: None,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct ChaosOutcome {
    /// The seed.
    pub seed: u64,
    /// The checker's report.
    pub report: Report,
    /// Faults injected, in order.
    pub faults: Vec<String>,
    /// Why network faults did not run, if they did not.
    pub network_skipped: Option<String>,
    /// Problems the harness itself saw (a broker that did not halt on a
    /// failed fsync, ...): like anomalies, they fail the run.
    pub harness_errors: Vec<String>,
    /// The JSONL history.
    pub history: PathBuf,
    /// The cluster's data and logs, kept when the run failed.
    pub kept: Option<PathBuf>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl ChaosOutcome {
    /// No anomaly and no harness error.
    pub fn passed(&self) -> bool {
        self.report.valid() && self.harness_errors.is_empty()
    }

    /// A human summary: operations, faults, anomalies by kind, losses per
    /// acks level, the seed.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let mut s = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        s += &format!("chaos seed {}: {verdict} in {:.0} s\n", self.seed, self.elapsed.as_secs_f64());
        s += &format!("  operations: {}; acknowledged by acks level: {:?}\n", r.ops, r.acked);
        s += &format!("  faults: {}\n", self.faults.len());
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.split(' ').next().unwrap_or("")).or_default() += 1;
        }
        for (k, n) in kinds {
            s += &format!("    {k}: {n}\n");
        }
        if let Some(why) = &self.network_skipped {
            s += &format!("  network faults skipped: {why}\n");
        }
        s += &format!(
            "  lost: acks=all 0 allowed; acks=1 {} (in fault windows, allowed); acks=0 {} (allowed)\n",
            r.acks1_lost, r.acks0_lost
        );
        if r.anomalies.is_empty() {
            s += "  anomalies: none\n";
        } else {
            s += "  anomalies:\n";
            for (k, v) in &r.anomalies {
                s += &format!("    {k}: {}\n", v.len());
                for what in v.iter().take(5) {
                    s += &format!("      {what}\n");
                }
            }
        }
        for e in &self.harness_errors {
            s += &format!("  harness error: {e}\n");
        }
        s += &format!("  history: {}\n", self.history.display());
        if let Some(k) = &self.kept {
            s += &format!("  data and broker logs kept in {}\n", k.display());
        }
        s
    }
}

/// The history, shared by every workload task.
#[derive(Clone)]
struct History {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    fn record(&self, process: &str, kind: Kind, op: Op) {
        let e = Event { time_ms: self.start.elapsed().as_millis() as u64, process: process.into(), kind, op };
        self.events.lock().expect("history lock").push(e);
    }
}

fn send_op(partition: u32, value: &str, acks: &str, offset: Option<u64>) -> Op {
    Op::Send { partition, value: value.into(), acks: acks.into(), offset }
}

/// Shared by the workload tasks.
#[derive(Clone)]
struct Ctx {
    client: Arc<Client>,
    h: History,
    stop: Arc<AtomicBool>,
    partitions: u32,
}

/// An idempotent acks=all producer: every error is retried inside the
/// producer; what still fails is recorded `info` (unknown outcome).
async fn idempotent_producer(name: String, ctx: Ctx, seed: u64) {
    let p = loop {
        match IdempotentProducer::new(ctx.client.clone(), None, ferrolog_client::Acks::All, Duration::from_secs(20))
            .await
        {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let partition = rng.random_range(0..ctx.partitions);
        let value = format!("{name}-{n}");
        n += 1;
        ctx.h.record(&name, Kind::Invoke, send_op(partition, &value, "all", None));
        match p.send(TOPIC, partition, &[(None, value.clone().into_bytes())]).await {
            Ok(r) => ctx.h.record(&name, Kind::Ok, send_op(partition, &value, "all", r.base_offset)),
            Err(_) => ctx.h.record(&name, Kind::Info, send_op(partition, &value, "all", None)),
        }
    }
}

/// A plain producer at acks=1 or acks=0, without idempotence and without
/// retries of ambiguous failures: refused-before-append errors are `fail`,
/// the rest `info`. acks=0 sends are always `info` (nothing comes back).
async fn plain_producer(name: String, ctx: Ctx, acks: ferrolog_client::Acks) {
    let level = if acks == ferrolog_client::Acks::None { "0" } else { "1" };
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let partition = (n % u64::from(ctx.partitions)) as u32;
        let value = format!("{name}-{n}");
        n += 1;
        ctx.h.record(&name, Kind::Invoke, send_op(partition, &value, level, None));
        let batch = ferrolog_client::make_batch(&[(None, value.clone().into_bytes())], 1);
        match ctx.client.produce(TOPIC, partition, acks, batch, Duration::from_secs(10)).await {
            Ok(r) if acks != ferrolog_client::Acks::None => {
                ctx.h.record(&name, Kind::Ok, send_op(partition, &value, level, r.base_offset))
            }
            Ok(_) => {
                ctx.h.record(&name, Kind::Info, send_op(partition, &value, level, None));
                // acks=0 answers at once: pace it like the others.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(s) if s.leader_hint().is_some() || s.kind() == ferrolog_client::ErrorKind::InvalidArgument => {
                ctx.h.record(&name, Kind::Fail, send_op(partition, &value, level, None))
            }
            Err(_) => {
                ctx.h.record(&name, Kind::Info, send_op(partition, &value, level, None));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A consumer (group member or standalone) until `stop` or `leave`: one
/// poll event per record; each assignment change starts a new generation
/// for the checker. On `leave` it closes (leaves the group) gracefully.
async fn consumer(name: String, ctx: Ctx, group: Option<String>, leave: Arc<AtomicBool>) {
    let config = ConsumerConfig {
        client_id: name.clone(),
        session_timeout: Duration::from_secs(6),
        auto_commit: Some(Duration::from_millis(500)),
        offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut c = match &group {
        Some(g) => Consumer::subscribe(ctx.client.clone(), g, &[TOPIC], config),
        None => Consumer::assign(
            ctx.client.clone(),
            (0..ctx.partitions).map(|p| ((TOPIC.to_string(), p), Some(0))).collect(),
            config,
        ),
    };
    let mut generation = 0;
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    while !ctx.stop.load(Ordering::Relaxed) && !leave.load(Ordering::Relaxed) {
        let e = match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(_) => continue,
        };
        match e {
            ferrolog_client::Event::Record(r) => {
                let op = |records| Op::Poll { group: group.clone(), generation, records };
                ctx.h.record(&name, Kind::Invoke, op(BTreeMap::new()));
                let value = String::from_utf8_lossy(&r.record.value).into_owned();
                ctx.h.record(&name, Kind::Ok, op(BTreeMap::from([(r.partition, vec![(r.record.offset, value)])])));
            }
            ferrolog_client::Event::Assigned(tps) | ferrolog_client::Event::Revoked(tps) if group.is_some() => {
                generation += 1;
                for (_, p) in &tps {
                    if !owned.remove(p) {
                        owned.insert(*p);
                    }
                }
                let op = Op::Assign { group: group.clone().unwrap_or_default(), generation, partitions: owned.clone() };
                ctx.h.record(&name, Kind::Ok, op);
            }
            _ => {}
        }
    }
    // Leaving: the consumer revokes (and commits) before it releases; it
    // owns nothing once close returns.
    let _ = c.close().await;
    if group.is_some() {
        ctx.h.record(
            &name,
            Kind::Ok,
            Op::Assign { group: GROUP.into(), generation: generation + 1, partitions: BTreeSet::new() },
        );
    }
}

/// The consumer group's membership over time: members join, leave
/// gracefully, and crash (torn down without leaving; the coordinator
/// notices when the session expires), keeping 1 to 4 members.
async fn group_churn(ctx: Ctx, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut members: Vec<(String, Arc<AtomicBool>, JoinHandle<()>)> = Vec::new();
    let mut next = 0;
    let join = |next: &mut usize, members: &mut Vec<(String, Arc<AtomicBool>, JoinHandle<()>)>| {
        let name = format!("member{next}");
        *next += 1;
        let leave = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consumer(name.clone(), ctx.clone(), Some(GROUP.into()), leave.clone()));
        members.push((name, leave, task));
    };
    join(&mut next, &mut members);
    join(&mut next, &mut members);
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..8_000))).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let action = match members.len() {
            0 | 1 => 0,
            4.. => rng.random_range(1..3),
            _ => rng.random_range(0..3),
        };
        match action {
            0 => join(&mut next, &mut members),
            1 => {
                let (name, leave, task) = members.remove(rng.random_range(0..members.len()));
                eprintln!("chaos: {name} leaves the group");
                leave.store(true, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
            _ => {
                let (name, _, task) = members.remove(rng.random_range(0..members.len()));
                eprintln!("chaos: {name} crashes");
                task.abort();
                let _ = task.await;
                ctx.h.record(&name, Kind::Info, Op::Crash);
            }
        }
    }
    for (_, _, task) in members {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
}

/// The leader of `partition`, if known.
async fn leader_of(client: &Client, partition: u32) -> Option<u64> {
    let d = client.wait_leaders(TOPIC, Duration::from_secs(5)).await.ok()?;
    d.partitions.get(partition as usize).and_then(|p| p.leader)
}

/// The metadata leader, if known.
async fn metadata_leader(client: &Client) -> Option<u64> {
    let d = client
        .admin(Duration::from_secs(5), |mut c| async move { c.describe_cluster(v1::DescribeClusterRequest {}).await })
        .await
        .ok()?;
    Some(d.metadata_leader_id).filter(|l| *l != 0)
}

/// The faults the nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillOne,
    KillLeader,
    KillMetadataLeader,
    KillMajority,
    KillAll,
    PauseLeader,
    FsyncFailure,
    RollingRestart,
    PartitionHalves,
    IsolateLeader,
    OneWayFromLeader,
    Bridge,
    PowerCutOne,
    PowerCutLeader,
    PowerCutMajority,
    PowerCutAll,
    WipeOne,
    WipeWhilePaused,
}

impl Fault {
    /// The kind's name, as `--faults` takes it and the summary counts it.
    fn kind(self) -> &'static str {
        match self {
            Fault::KillOne => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::KillMetadataLeader => "kill-metadata-leader",
            Fault::KillMajority => "kill-majority",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::FsyncFailure => "fsync-failure",
            Fault::RollingRestart => "rolling-restart",
            Fault::PartitionHalves => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::OneWayFromLeader => "one-way-from-leader",
            Fault::Bridge => "bridge",
            Fault::PowerCutOne => "power-cut",
            Fault::PowerCutLeader => "power-cut-leader",
            Fault::PowerCutMajority => "power-cut-majority",
            Fault::PowerCutAll => "power-cut-all",
            Fault::WipeOne => "wipe-disk",
            Fault::WipeWhilePaused => "wipe-disk-while-paused",
        }
    }
}

/// Every fault kind's name (for `--faults`).
pub fn fault_kinds() -> Vec<&'static str> {
    PROCESS_FAULTS.iter().chain(NETWORK_FAULTS).chain(POWER_FAULTS).map(|f| f.kind()).collect()
}

const PROCESS_FAULTS: &[Fault] = &[
    Fault::KillOne,
    Fault::KillLeader,
    Fault::KillMetadataLeader,
    Fault::KillMajority,
    Fault::KillAll,
    Fault::PauseLeader,
    Fault::FsyncFailure,
    Fault::RollingRestart,
];
const NETWORK_FAULTS: &[Fault] =
    &[Fault::PartitionHalves, Fault::IsolateLeader, Fault::OneWayFromLeader, Fault::Bridge];
const POWER_FAULTS: &[Fault] = &[
    Fault::PowerCutOne,
    Fault::PowerCutLeader,
    Fault::PowerCutMajority,
    Fault::PowerCutAll,
    Fault::WipeOne,
    Fault::WipeWhilePaused,
];

/// Runs one seeded chaos run and checks its history.
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosOutcome> {
    anyhow::ensure!(cfg.brokers >= 3, "chaos needs at least 3 brokers");
    if let Some(only) = &cfg.faults {
        let unknown: Vec<&String> = only.iter().filter(|k| !fault_kinds().contains(&k.as_str())).collect();
        anyhow::ensure!(unknown.is_empty(), "unknown fault kinds {unknown:?}; known: {}", fault_kinds().join(","));
    }
    let began = Instant::now();
    let seed = cfg.seed;
    let (mut net, network_skipped) = if cfg.network {
        match NetFaults::new() {
            Ok(n) => (Some(n), None),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("chaos: network partitions SKIPPED: {why}");
                (None, Some(why))
            }
        }
    } else {
        (None, Some("disabled (--no-network)".to_string()))
    };
    let mut cluster = if cfg.power_loss {
        Cluster::start_on_lossy_disks(cfg.brokers, &[], true)?
    } else {
        Cluster::start_on_own_ips(cfg.brokers, &[])?
    };
    cluster.wait_serving(START).await?;
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let tc = TestClient::new(cluster.addrs());
    tc.create_topic(TOPIC, cfg.partitions, 3).await?;
    tc.wait_leaders(TOPIC, START).await?;
    let client = Arc::new(Client::new(cluster.addrs()));
    let h = History { start: Instant::now(), events: Arc::default() };
    h.record("nemesis", Kind::Ok, Op::Start { seed });
    let ctx = Ctx {
        client: client.clone(),
        h: h.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        partitions: cfg.partitions,
    };
    let mut tasks = Vec::new();
    for i in 0..2 {
        tasks.push(tokio::spawn(idempotent_producer(format!("idem{i}"), ctx.clone(), seed.wrapping_add(i))));
    }
    tasks.push(tokio::spawn(plain_producer("ack1".into(), ctx.clone(), ferrolog_client::Acks::Leader)));
    tasks.push(tokio::spawn(plain_producer("ack0".into(), ctx.clone(), ferrolog_client::Acks::None)));
    tasks.push(tokio::spawn(group_churn(ctx.clone(), seed ^ 0x9E37_79B9_7F4A_7C15)));
    tasks.push(tokio::spawn(consumer("reader".into(), ctx.clone(), None, Arc::new(AtomicBool::new(false)))));

    // The nemesis. Its choices depend only on the seed (targets that are
    // leaders depend on where leadership happens to be).
    let mut rng = StdRng::seed_from_u64(seed);
    let mut menu: Vec<Fault> = PROCESS_FAULTS.to_vec();
    if net.is_some() {
        menu.extend_from_slice(NETWORK_FAULTS);
    }
    if cfg.power_loss {
        menu.extend_from_slice(POWER_FAULTS);
    }
    if let Some(only) = &cfg.faults {
        menu.retain(|f| only.iter().any(|k| k == f.kind()));
        anyhow::ensure!(
            !menu.is_empty(),
            "none of the fault kinds {only:?} can run here (power and wipe faults need --power-loss, network faults \
             root and iptables)"
        );
    }
    let mut faults = Vec::new();
    let mut harness_errors = Vec::new();
    // Every kind of fault once, in a seeded order, then random picks until
    // the fault time is up: a short run still covers the whole menu.
    let mut first_round = menu.clone();
    first_round.shuffle(&mut rng);
    first_round.reverse(); // popped from the back
    let until = Instant::now() + cfg.fault_time;
    while Instant::now() < until || !first_round.is_empty() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let (fault, from_first_round) = match first_round.pop() {
            Some(f) => (f, true),
            None => (menu[rng.random_range(0..menu.len())], false),
        };
        // Longer than the election timeout (1-2 s); network faults longer
        // still, past a consumer session (6 s) now and then.
        let hold = Duration::from_millis(match fault {
            Fault::PartitionHalves | Fault::IsolateLeader | Fault::OneWayFromLeader | Fault::Bridge => {
                rng.random_range(3_000..8_000)
            }
            _ => rng.random_range(2_500..4_000),
        });
        let partition = rng.random_range(0..cfg.partitions);
        let mut shuffled = ids.clone();
        shuffled.shuffle(&mut rng);
        let majority = cfg.brokers / 2 + 1;
        let fsync_after: u64 = rng.random_range(20..400);
        // The broker a leader fault targets, looked up once. With no leader
        // known right now, the fault kind is tried again later.
        let leader = match fault {
            Fault::KillLeader
            | Fault::PauseLeader
            | Fault::IsolateLeader
            | Fault::OneWayFromLeader
            | Fault::PowerCutLeader => leader_of(&client, partition).await,
            Fault::KillMetadataLeader => metadata_leader(&client).await,
            _ => Some(0),
        };
        let Some(l) = leader else {
            if from_first_round {
                first_round.push(fault);
            }
            continue;
        };
        let name = match fault {
            Fault::KillOne => format!("kill broker {}", shuffled[0]),
            Fault::KillLeader => format!("kill-leader {l} of partition {partition}"),
            Fault::KillMetadataLeader => format!("kill-metadata-leader {l}"),
            Fault::KillMajority => format!("kill-majority {:?}", sorted(&shuffled[..majority])),
            Fault::KillAll => "kill-all brokers".to_string(),
            Fault::PauseLeader => format!("pause-leader {l} of partition {partition}"),
            Fault::FsyncFailure => format!("fsync-failure on broker {} after {fsync_after} syncs", shuffled[0]),
            Fault::RollingRestart => "rolling-restart of every broker".to_string(),
            Fault::PartitionHalves => {
                let (a, b) = shuffled.split_at(majority);
                format!("partition majority {:?} | minority {:?}", sorted(a), sorted(b))
            }
            Fault::IsolateLeader => format!("isolate-leader {l} of partition {partition}"),
            Fault::OneWayFromLeader => {
                format!("one-way-from-leader {l} of partition {partition} (it cannot send to its peers)")
            }
            Fault::Bridge => format!(
                "bridge {:?} | {} | {:?}",
                sorted(&shuffled[1..majority]),
                shuffled[0],
                sorted(&shuffled[majority..])
            ),
            Fault::PowerCutOne => format!("power-cut broker {}", shuffled[0]),
            Fault::PowerCutLeader => format!("power-cut-leader {l} of partition {partition}"),
            Fault::PowerCutMajority => format!("power-cut-majority {:?}", sorted(&shuffled[..majority])),
            Fault::PowerCutAll => "power-cut-all brokers".to_string(),
            Fault::WipeOne => format!("wipe-disk of broker {}", shuffled[0]),
            Fault::WipeWhilePaused => {
                format!("wipe-disk-while-paused (broker {} wiped while {} is paused)", shuffled[0], shuffled[1])
            }
        };
        eprintln!("nemesis: {name}");
        h.record("nemesis", Kind::Invoke, Op::Fault { name: name.clone() });
        faults.push(name.clone());
        match fault {
            Fault::KillOne | Fault::KillLeader | Fault::KillMetadataLeader | Fault::KillMajority | Fault::KillAll => {
                let targets: Vec<u64> = match fault {
                    Fault::KillOne => vec![shuffled[0]],
                    Fault::KillMajority => shuffled[..majority].to_vec(),
                    Fault::KillAll => ids.clone(),
                    _ => vec![l],
                };
                for b in &targets {
                    cluster.kill(*b)?;
                }
                tokio::time::sleep(hold).await;
                for b in &targets {
                    cluster.restart(*b)?;
                }
            }
            Fault::PowerCutOne | Fault::PowerCutLeader | Fault::PowerCutMajority | Fault::PowerCutAll => {
                let targets: Vec<u64> = match fault {
                    Fault::PowerCutOne => vec![shuffled[0]],
                    Fault::PowerCutMajority => shuffled[..majority].to_vec(),
                    Fault::PowerCutAll => ids.clone(),
                    _ => vec![l],
                };
                // All down first, then every disk forgets what it did not sync.
                for b in &targets {
                    cluster.kill(*b)?;
                }
                let mut dropped = 0;
                for b in &targets {
                    dropped += cluster.power_cut(*b)?;
                }
                eprintln!("nemesis: the power cut dropped {dropped} unsynced bytes");
                tokio::time::sleep(hold).await;
                for b in &targets {
                    cluster.restart(*b)?;
                }
            }
            Fault::WipeOne => {
                let b = shuffled[0];
                cluster.wipe(b)?;
                tokio::time::sleep(hold).await;
                cluster.restart(b)?;
                // A wiped replica must catch up before the next fault: a
                // second loss of the same partitions' data meanwhile would
                // exceed what RF 3 can survive (a real loss, not a bug).
                crate::cluster::wait_ready(&cluster, b, START).await?;
            }
            Fault::WipeWhilePaused => {
                let (b, paused) = (shuffled[0], shuffled[1]);
                cluster.signal(paused, libc::SIGSTOP)?;
                cluster.wipe(b)?;
                cluster.restart(b)?;
                tokio::time::sleep(hold).await;
                cluster.signal(paused, libc::SIGCONT)?;
                crate::cluster::wait_ready(&cluster, b, START).await?;
            }
            Fault::PauseLeader => {
                cluster.signal(l, libc::SIGSTOP)?;
                tokio::time::sleep(hold).await;
                cluster.signal(l, libc::SIGCONT)?;
            }
            Fault::FsyncFailure => {
                let b = shuffled[0];
                let spec = format!("storage.fail_syncs_after={fsync_after}");
                cluster.restart_with_env(b, &[("FERROLOG_FAILPOINTS", &spec)])?;
                match cluster.wait_exit(b, FAIL_STOP_WITHIN).await? {
                    Some(status) if status.code() == Some(FAIL_STOP_EXIT_CODE) => {}
                    Some(status) => harness_errors.push(format!("{name}: broker exited with {status}, not fail-stop")),
                    None => harness_errors.push(format!("{name}: broker did not halt within {FAIL_STOP_WITHIN:?}")),
                }
                if !cluster.log_contains(b, "halting the broker (fail-stop)") {
                    harness_errors.push(format!("{name}: no fail-stop message in broker {b}'s log"));
                }
                cluster.restart(b)?;
            }
            Fault::RollingRestart => {
                for b in &ids {
                    cluster.terminate(*b, Duration::from_secs(30))?;
                    cluster.restart(*b)?;
                    cluster.wait_serving(START).await?;
                    client.wait_leaders(TOPIC, START).await?;
                }
            }
            Fault::PartitionHalves | Fault::Bridge | Fault::IsolateLeader | Fault::OneWayFromLeader => {
                let n = net.as_mut().expect("network faults only with NetFaults");
                let ip = |b: u64| cluster.ip(b).to_string();
                match fault {
                    Fault::PartitionHalves => {
                        let (a, b) = shuffled.split_at(majority);
                        n.partition(
                            &a.iter().map(|x| ip(*x)).collect::<Vec<_>>(),
                            &b.iter().map(|x| ip(*x)).collect::<Vec<_>>(),
                        )?;
                    }
                    Fault::Bridge => {
                        // The bridge (shuffled[0]) sees both sides; the sides
                        // do not see each other.
                        let a: Vec<String> = shuffled[1..majority].iter().map(|x| ip(*x)).collect();
                        let b: Vec<String> = shuffled[majority..].iter().map(|x| ip(*x)).collect();
                        n.partition(&a, &b)?;
                    }
                    Fault::IsolateLeader => {
                        let rest: Vec<String> = ids.iter().filter(|x| **x != l).map(|x| ip(*x)).collect();
                        n.partition(&[ip(l)], &rest)?;
                    }
                    _ => {
                        for x in ids.iter().filter(|x| **x != l) {
                            n.cut(&ip(l), &ip(*x))?;
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                n.heal()?;
            }
        }
        cluster.wait_serving(START).await?;
        h.record("nemesis", Kind::Ok, Op::Fault { name });
    }
    // Healed: let the workloads run on, then stop them.
    client.wait_leaders(TOPIC, START).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctx.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(60), t).await.is_err() {
            harness_errors.push("a workload did not stop within 60 s".into());
        }
    }
    // Final read of every partition from its leader.
    let d = client.wait_leaders(TOPIC, START).await?;
    let mut records = BTreeMap::new();
    for p in &d.partitions {
        let addr = cluster.node(p.leader.context("a partition without a leader")?).addr.clone();
        let (log, _) = client.fetch_all_from(&addr, TOPIC, p.partition, 0).await.context("final read")?;
        records.insert(
            p.partition,
            log.into_iter().map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned())).collect(),
        );
    }
    h.record("final", Kind::Ok, Op::FinalRead { records });
    drop(net.take());

    let events = h.events.lock().expect("history lock").clone();
    let history = cfg.history.clone().unwrap_or_else(|| cluster.data_root().join("history.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&history).context("create the history file")?);
    for e in &events {
        writeln!(f, "{}", serde_json::to_string(e)?)?;
    }
    f.flush()?;
    let report = ferrolog_checker::check(&events);
    if report.acked.get("all").copied().unwrap_or(0) < 100 {
        harness_errors.push(format!("too little acknowledged to mean anything: {:?}", report.acked));
    }
    let mut outcome = ChaosOutcome {
        seed,
        report,
        faults,
        network_skipped,
        harness_errors,
        history,
        kept: None,
        elapsed: began.elapsed(),
    };
    if !outcome.passed() {
        let kept = cluster.keep();
        if cfg.history.is_none() {
            outcome.history = kept.join("history.jsonl");
        }
        outcome.kept = Some(kept);
    }
    Ok(outcome)
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}
