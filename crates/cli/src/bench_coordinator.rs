//! `ferrolog bench coordinator`: the group coordinator's cost, measured on
//! its state machine ([`ferrolog_metadata::groups`]) exactly as the
//! coordinator runs it, without network or Raft: members join, heartbeat
//! until the group is stable, then steady-state heartbeats are timed (the
//! coordinator applies each to a copy of the group and compares, the path
//! that needs no Raft write), and one more member joins.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Context;
use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::Group;
use ferrolog_metadata::groups::GroupCommand;
use ferrolog_metadata::groups::Heartbeat;
use ferrolog_metadata::groups::Tp;
use serde::Serialize;

/// Coordinator benchmark.
///
/// Example: ferrolog bench coordinator --members 100 --partitions 1000
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Group members.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Partitions of the subscribed topic.
    #[arg(long, default_value_t = 1000)]
    partitions: u32,
    /// Steady-state heartbeats to time.
    #[arg(long, default_value_t = 10_000)]
    heartbeats: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::Output,
}

#[derive(Debug, Serialize)]
struct Report {
    members: usize,
    partitions: u32,
    join_all_ms: f64,
    rounds_to_stable: usize,
    raft_writes_to_stable: usize,
    steady_heartbeat_us: f64,
    steady_heartbeats_per_sec: f64,
    steady_raft_writes: usize,
    state_bytes: usize,
    join_one_more_moved_partitions: usize,
    join_one_more_rounds: usize,
}

fn heartbeat(id: &str, epoch: i32, owned: &BTreeSet<Tp>) -> GroupCommand {
    GroupCommand::Heartbeat(Heartbeat {
        member_id: id.into(),
        member_epoch: epoch,
        client_id: "bench".into(),
        subscribed: ["t".to_string()].into(),
        owned: owned.clone(),
        assignor: Assignor::Uniform,
        session_timeout_ms: 45_000,
    })
}

/// One coordinator step as the broker does it: apply to a copy; write (here:
/// replace the state) only when the copy differs. Returns whether it wrote.
fn step(
    g: &mut Group,
    cmd: GroupCommand,
    partitions: &dyn Fn(&str) -> Option<u32>,
    st: &mut BTreeMap<String, (i32, BTreeSet<Tp>)>,
    id: &str,
) -> anyhow::Result<bool> {
    let mut copy = g.clone();
    let r = copy.apply(cmd, partitions).map_err(|e| anyhow::anyhow!("{e}"))?.context("reply")?;
    st.insert(id.to_string(), (r.member_epoch, r.assigned));
    let wrote = copy != *g;
    *g = copy;
    Ok(wrote)
}

/// Heartbeat rounds (every member once) until a round writes nothing.
fn settle(
    g: &mut Group,
    ids: &[String],
    partitions: &dyn Fn(&str) -> Option<u32>,
    st: &mut BTreeMap<String, (i32, BTreeSet<Tp>)>,
) -> anyhow::Result<(usize, usize)> {
    let (mut rounds, mut writes) = (0, 0);
    loop {
        rounds += 1;
        let mut wrote = 0;
        for id in ids {
            let (epoch, owned) = st.get(id).cloned().context("member state")?;
            wrote += usize::from(step(g, heartbeat(id, epoch, &owned), partitions, st, id)?);
        }
        writes += wrote;
        if wrote == 0 || rounds > 50 {
            return Ok((rounds, writes));
        }
    }
}

/// Runs the benchmark and prints its report.
pub fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let n = args.partitions;
    let partitions = move |t: &str| (t == "t").then_some(n);
    let mut g = Group::default();
    let mut st: BTreeMap<String, (i32, BTreeSet<Tp>)> = BTreeMap::new();
    let ids: Vec<String> = (0..args.members).map(|i| format!("member-{i:04}")).collect();
    let t0 = Instant::now();
    for id in &ids {
        step(&mut g, heartbeat(id, 0, &BTreeSet::new()), &partitions, &mut st, id)?;
    }
    let join_all = t0.elapsed();
    let (rounds_to_stable, writes_to_stable) = settle(&mut g, &ids, &partitions, &mut st)?;
    anyhow::ensure!(g.state() == "stable", "group did not settle: {}", g.state());
    // Steady state.
    let t0 = Instant::now();
    let mut steady_writes = 0;
    for i in 0..args.heartbeats {
        let id = &ids[i % ids.len()];
        let (epoch, owned) = st.get(id).cloned().context("member state")?;
        steady_writes += usize::from(step(&mut g, heartbeat(id, epoch, &owned), &partitions, &mut st, id)?);
    }
    let steady = t0.elapsed();
    let state_bytes = postcard::to_allocvec(&g)?.len();
    // One more member.
    let before: BTreeMap<String, BTreeSet<Tp>> = st.iter().map(|(k, v)| (k.clone(), v.1.clone())).collect();
    let mut all = ids.clone();
    all.push("member-new".into());
    step(&mut g, heartbeat("member-new", 0, &BTreeSet::new()), &partitions, &mut st, "member-new")?;
    let (join_one_more_rounds, _) = settle(&mut g, &all, &partitions, &mut st)?;
    let moved = ids.iter().map(|id| before[id].difference(&st[id].1).count()).sum();
    let report = Report {
        members: args.members,
        partitions: args.partitions,
        join_all_ms: join_all.as_secs_f64() * 1e3,
        rounds_to_stable,
        raft_writes_to_stable: writes_to_stable,
        steady_heartbeat_us: steady.as_secs_f64() * 1e6 / args.heartbeats as f64,
        steady_heartbeats_per_sec: args.heartbeats as f64 / steady.as_secs_f64(),
        steady_raft_writes: steady_writes,
        state_bytes,
        join_one_more_moved_partitions: moved,
        join_one_more_rounds,
    };
    match args.output {
        crate::Output::Json => println!("{}", serde_json::to_string(&report)?),
        crate::Output::Text => println!(
            "{} members, {} partitions | all joined in {:.1} ms; stable after {} heartbeat rounds ({} Raft writes) | steady heartbeat {:.1} us ({:.0}/s on one core), {} Raft writes | group state {} bytes | one more member: {} partitions moved, stable after {} rounds",
            report.members,
            report.partitions,
            report.join_all_ms,
            report.rounds_to_stable,
            report.raft_writes_to_stable,
            report.steady_heartbeat_us,
            report.steady_heartbeats_per_sec,
            report.steady_raft_writes,
            report.state_bytes,
            report.join_one_more_moved_partitions,
            report.join_one_more_rounds
        ),
    }
    Ok(())
}
