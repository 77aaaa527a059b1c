//! The chaos-test history and its checker, without IO.
//!
//! A chaos run records every operation as JSONL [`Event`]s (invoke, then ok /
//! fail / info), every fault with its start and end, and a final read of
//! every partition after healing. [`check`] finds the anomalies Jepsen's
//! Kafka test looks for, adapted to Ferrolog's promises
//! (`../shared/briefs/reliability.md`):
//!
//! | kind | meaning |
//! |---|---|
//! | `inconsistent-offsets` | one (partition, offset) seen with two values |
//! | `duplicate` | one value at two offsets |
//! | `lost-write` | an acks=all send acknowledged at an offset the final log does not hold it at |
//! | `unseen` | an acks=all send acknowledged, never read by any poll nor the final read |
//! | `aborted-read` | a definitely failed send read by someone |
//! | `phantom-read` | a poll returned a value at an offset the final log holds differently or not at all |
//! | `poll-skip` / `nonmonotonic-poll` | within one assignment, a poll not starting at last+1, or offsets not contiguous and increasing inside a poll |
//! | `nonmonotonic-send` | one producer's later acknowledged send at a lower offset of a partition |
//! | `commit-backwards` | a group's committed offset read lower than one read or acknowledged before |
//! | `stale-commit` | a commit acknowledged for a generation older than the member's newest |
//! | `double-owner` | two members owning one partition of a group at the same time |
//! | `acks1-loss-without-fault` | an acks=1 send lost while no fault overlapped it |
//! | `acks0-reordered` | one producer's surviving acks=0 records out of order |
//! | `no-recovery` | no acknowledged send after the last fault healed |
//!
//! acks=1 losses that overlap a fault are allowed (that is the acks=1
//! promise) and counted in [`Report::acks1_lost`].

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// Whether an operation began or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Started.
    Invoke,
    /// Succeeded.
    Ok,
    /// Definitely did not happen (refused before any effect).
    Fail,
    /// Unknown outcome (timeout, crash).
    Info,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started (monotonic).
    pub time_ms: u64,
    /// The client process (or `nemesis`).
    pub process: String,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// What it was.
    pub op: Op,
}

/// Operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Run metadata: the seed replays the same schedule.
    Start {
        /// Nemesis and workload seed.
        seed: u64,
    },
    /// Produce one value.
    Send {
        /// Partition.
        partition: u32,
        /// Unique value.
        value: String,
        /// "all", "1" or "0".
        acks: String,
        /// Offset (on ok).
        offset: Option<u64>,
    },
    /// A consumer poll.
    Poll {
        /// Group and the member's generation (epoch), if in a group.
        group: Option<String>,
        /// Member epoch when it polled.
        generation: i32,
        /// `partition -> [(offset, value)]` returned (on ok).
        records: BTreeMap<u32, Vec<(u64, String)>>,
    },
    /// The member's assignment changed.
    Assign {
        /// Group.
        group: String,
        /// Generation (member epoch).
        generation: i32,
        /// Partitions it owns from now on.
        partitions: BTreeSet<u32>,
    },
    /// The client process crashed (torn down without leaving its group):
    /// it owns no partition from then on, and its open operations stay
    /// unknown.
    Crash,
    /// Offsets committed.
    Commit {
        /// Group.
        group: String,
        /// Generation used.
        generation: i32,
        /// `partition -> offset`.
        offsets: BTreeMap<u32, u64>,
    },
    /// Committed offsets read.
    FetchCommitted {
        /// Group.
        group: String,
        /// `partition -> offset` (on ok).
        offsets: BTreeMap<u32, u64>,
    },
    /// A fault (invoke = start, ok/info = end).
    Fault {
        /// What (kill, pause, partition, ...), with its targets.
        name: String,
    },
    /// After healing: every partition from its start to its high watermark.
    FinalRead {
        /// `partition -> [(offset, value)]`.
        records: BTreeMap<u32, Vec<(u64, String)>>,
    },
}

/// How long after its acknowledgement an acks=1 record may still be lost
/// to a leader change (it is on the leader only until followers copy it,
/// normally within milliseconds; generous for a loaded 2-core machine).
pub const ACKS1_EXPOSURE_MS: u64 = 5_000;

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The run's seed, if recorded.
    pub seed: Option<u64>,
    /// Completed client operations.
    pub ops: usize,
    /// Faults injected.
    pub faults: usize,
    /// Acknowledged sends per acks level.
    pub acked: BTreeMap<String, usize>,
    /// acks=1 sends lost while a fault overlapped them (allowed).
    pub acks1_lost: usize,
    /// acks=0 sends that did not survive (allowed).
    pub acks0_lost: usize,
    /// Anomalies by kind, with a description each.
    pub anomalies: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    fn flag(&mut self, kind: &str, what: String) {
        self.anomalies.entry(kind.to_string()).or_default().push(what);
    }
}

/// Parses a JSONL history.
pub fn parse(text: &str) -> Result<Vec<Event>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

/// Records by partition: `partition -> [(offset, value)]`.
type Records = BTreeMap<u32, Vec<(u64, String)>>;
/// A completed poll: process, invoke time, group, generation, records.
type PollOp = (String, u64, Option<String>, i32, Records);
/// A completed commit: invoke time, completion time, process, group, generation, offsets.
type CommitOp = (u64, u64, String, String, i32, BTreeMap<u32, u64>);

struct SendOp {
    process: String,
    partition: u32,
    value: String,
    acks: String,
    invoked: u64,
    completed: u64,
    outcome: Kind,
    offset: Option<u64>,
}

/// Checks a history (see the module docs for the anomalies).
pub fn check(history: &[Event]) -> Report {
    let mut r = Report::default();
    // Pair invocations with completions per process.
    let mut open: BTreeMap<String, (u64, Op)> = BTreeMap::new();
    let mut sends: Vec<SendOp> = Vec::new();
    let mut polls: Vec<PollOp> = Vec::new();
    let mut faults: Vec<(u64, u64)> = Vec::new();
    let mut open_faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut final_read: Option<BTreeMap<u32, Vec<(u64, String)>>> = None;
    let mut assigns: Vec<(u64, String, String, i32, BTreeSet<u32>)> = Vec::new();
    let mut commits: Vec<CommitOp> = Vec::new();
    let mut crashes: Vec<(u64, String)> = Vec::new();
    let mut fetches: Vec<(u64, u64, String, BTreeMap<u32, u64>)> = Vec::new();
    let end = history.iter().map(|e| e.time_ms).max().unwrap_or(0);
    for e in history {
        match (&e.op, e.kind) {
            (Op::Start { seed }, _) => r.seed = Some(*seed),
            (Op::Fault { name }, Kind::Invoke) => {
                open_faults.insert(format!("{}:{name}", e.process), e.time_ms);
            }
            (Op::Fault { name }, _) => {
                let start = open_faults.remove(&format!("{}:{name}", e.process)).unwrap_or(e.time_ms);
                faults.push((start, e.time_ms));
            }
            (Op::FinalRead { records }, Kind::Ok) => final_read = Some(records.clone()),
            (Op::Assign { group, generation, partitions }, Kind::Ok) => {
                assigns.push((e.time_ms, group.clone(), e.process.clone(), *generation, partitions.clone()))
            }
            (Op::Crash, _) => crashes.push((e.time_ms, e.process.clone())),
            (op, Kind::Invoke) => {
                open.insert(e.process.clone(), (e.time_ms, op.clone()));
            }
            (op, kind) => {
                let Some((invoked, inv)) = open.remove(&e.process) else { continue };
                r.ops += 1;
                match (inv, op) {
                    (Op::Send { partition, value, acks, .. }, Op::Send { offset, .. }) => sends.push(SendOp {
                        process: e.process.clone(),
                        partition,
                        value,
                        acks,
                        invoked,
                        completed: e.time_ms,
                        outcome: kind,
                        offset: *offset,
                    }),
                    (Op::Poll { .. }, Op::Poll { group, generation, records }) if kind == Kind::Ok => {
                        polls.push((e.process.clone(), invoked, group.clone(), *generation, records.clone()))
                    }
                    (Op::Commit { .. }, Op::Commit { group, generation, offsets }) if kind == Kind::Ok => commits
                        .push((invoked, e.time_ms, e.process.clone(), group.clone(), *generation, offsets.clone())),
                    (Op::FetchCommitted { .. }, Op::FetchCommitted { group, offsets }) if kind == Kind::Ok => {
                        fetches.push((invoked, e.time_ms, group.clone(), offsets.clone()))
                    }
                    _ => {}
                }
            }
        }
    }
    // Faults still open at the end last until the end.
    faults.extend(open_faults.values().map(|s| (*s, end)));
    r.faults = faults.len();
    let final_read = final_read.unwrap_or_default();

    // Every (partition, offset) -> value observation.
    let mut at: BTreeMap<(u32, u64), BTreeSet<String>> = BTreeMap::new();
    let mut where_is: BTreeMap<String, BTreeSet<(u32, u64)>> = BTreeMap::new();
    let mut observe = |p: u32, o: u64, v: &str| {
        at.entry((p, o)).or_default().insert(v.to_string());
        where_is.entry(v.to_string()).or_default().insert((p, o));
    };
    for s in &sends {
        if s.outcome == Kind::Ok
            && s.acks == "all"
            && let Some(o) = s.offset
        {
            observe(s.partition, o, &s.value);
        }
    }
    for (_, _, _, _, recs) in &polls {
        for (p, rs) in recs {
            for (o, v) in rs {
                observe(*p, *o, v);
            }
        }
    }
    for (p, rs) in &final_read {
        for (o, v) in rs {
            observe(*p, *o, v);
        }
    }
    for ((p, o), vs) in &at {
        if vs.len() > 1 {
            r.flag("inconsistent-offsets", format!("{p}/{o} holds {vs:?}"));
        }
    }
    for (v, places) in &where_is {
        if places.len() > 1 {
            r.flag("duplicate", format!("{v} at {places:?}"));
        }
    }
    let final_at: BTreeMap<(u32, u64), &String> =
        final_read.iter().flat_map(|(p, rs)| rs.iter().map(move |(o, v)| ((*p, *o), v))).collect();
    let final_values: BTreeSet<&String> = final_at.values().copied().collect();
    let polled: BTreeSet<&String> =
        polls.iter().flat_map(|(_, _, _, _, recs)| recs.values().flat_map(|rs| rs.iter().map(|(_, v)| v))).collect();
    let overlaps_fault = |a: u64, b: u64| faults.iter().any(|(s, e)| *s <= b && a <= *e);

    // Sends.
    for s in &sends {
        if s.outcome == Kind::Ok {
            *r.acked.entry(s.acks.clone()).or_default() += 1;
        }
        let in_final = s.offset.is_some_and(|o| final_at.get(&(s.partition, o)) == Some(&&s.value));
        match (s.outcome, s.acks.as_str()) {
            (Kind::Ok, "all") => {
                if !in_final {
                    r.flag(
                        "lost-write",
                        format!("{} acked at {}/{:?}, not there in the final log", s.value, s.partition, s.offset),
                    );
                }
                if !final_values.contains(&s.value) && !polled.contains(&s.value) {
                    r.flag("unseen", format!("{} acked at {}/{:?}, never read", s.value, s.partition, s.offset));
                }
            }
            (Kind::Ok, "1") if !in_final => {
                if overlaps_fault(s.invoked, s.completed + ACKS1_EXPOSURE_MS) {
                    r.acks1_lost += 1;
                } else {
                    r.flag(
                        "acks1-loss-without-fault",
                        format!("{} (acks=1) lost with no fault overlapping it", s.value),
                    );
                }
            }
            (Kind::Ok | Kind::Info, "0") if !final_values.contains(&s.value) => r.acks0_lost += 1,
            (Kind::Fail, _) if final_values.contains(&s.value) || polled.contains(&s.value) => {
                r.flag("aborted-read", format!("{} failed definitely, yet was read", s.value));
            }
            _ => {}
        }
    }
    // Polls: phantoms and order inside a poll.
    for (proc_, _, _, _, recs) in &polls {
        for (p, rs) in recs {
            for (o, v) in rs {
                if final_at.get(&(*p, *o)) != Some(&v) {
                    r.flag(
                        "phantom-read",
                        format!("{proc_} read {v} at {p}/{o}, the final log has {:?}", final_at.get(&(*p, *o))),
                    );
                }
            }
            for w in rs.windows(2) {
                if w[1].0 != w[0].0 + 1 {
                    r.flag("nonmonotonic-poll", format!("{proc_} read {p}/{} then {p}/{} in one poll", w[0].0, w[1].0));
                }
            }
        }
    }
    // Polls across an assignment: per (process, group, generation, partition).
    let mut last: BTreeMap<(String, Option<String>, i32, u32), u64> = BTreeMap::new();
    for (proc_, _, group, generation, recs) in &polls {
        for (p, rs) in recs {
            let (Some(first), Some(lastrec)) = (rs.first(), rs.last()) else { continue };
            let key = (proc_.clone(), group.clone(), *generation, *p);
            if let Some(prev) = last.get(&key) {
                if first.0 > prev + 1 {
                    r.flag("poll-skip", format!("{proc_} {p}: read up to {prev}, next poll starts at {}", first.0));
                } else if first.0 <= *prev {
                    r.flag(
                        "nonmonotonic-poll",
                        format!("{proc_} {p}: read up to {prev}, next poll starts at {}", first.0),
                    );
                }
            }
            last.insert(key, lastrec.0);
        }
    }
    // One producer's acknowledged sends keep their order per partition,
    // among those the final log holds at their acknowledged offset: an
    // acks=1 record lost to a leader change gives its offset up for reuse
    // (counted above), and a lost acks=all record is a lost write already.
    // (process, partition) -> [(invoke time, offset, value)]
    type Sent<'a> = BTreeMap<(String, u32), Vec<(u64, u64, &'a String)>>;
    let mut by_producer: Sent<'_> = BTreeMap::new();
    for s in sends.iter().filter(|s| s.outcome == Kind::Ok && s.acks != "0") {
        if let Some(o) = s.offset
            && final_at.get(&(s.partition, o)) == Some(&&s.value)
        {
            by_producer.entry((s.process.clone(), s.partition)).or_default().push((s.invoked, o, &s.value));
        }
    }
    for ((proc_, p), mut v) in by_producer {
        v.sort();
        for w in v.windows(2) {
            if w[1].1 < w[0].1 {
                r.flag(
                    "nonmonotonic-send",
                    format!("{proc_} {p}: {} at {} sent after {} at {}", w[1].2, w[1].1, w[0].2, w[0].1),
                );
            }
        }
    }
    // acks=0: surviving records of one producer in send order.
    let mut survivors: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for s in sends.iter().filter(|s| s.acks == "0") {
        if let Some(((p, o), _)) = final_at.iter().find(|(_, v)| **v == &s.value)
            && *p == s.partition
        {
            survivors.entry((s.process.clone(), *p)).or_default().push((s.invoked, *o));
        }
    }
    for ((proc_, p), mut v) in survivors {
        v.sort();
        if v.windows(2).any(|w| w[1].1 < w[0].1) {
            r.flag("acks0-reordered", format!("{proc_} {p}: surviving acks=0 records out of send order"));
        }
    }
    // Committed offsets never go backwards: a fetch returns at least what
    // an earlier fetch returned or a commit acknowledged before it began.
    let mut floor: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new(); // -> (offset, since)
    let mut seen_events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        seen_events.push((c.1, true, i));
    }
    for (i, f) in fetches.iter().enumerate() {
        seen_events.push((f.0, false, i));
    }
    seen_events.sort();
    for (_, is_commit, i) in seen_events {
        if is_commit {
            let (_, done, _, group, _, offsets) = &commits[i];
            for (p, o) in offsets {
                let e = floor.entry((group.clone(), *p)).or_insert((*o, *done));
                if *o > e.0 {
                    *e = (*o, *done);
                }
            }
        } else {
            let (_, _, group, offsets) = &fetches[i];
            for (p, o) in offsets {
                if let Some((min, _)) = floor.get(&(group.clone(), *p))
                    && o < min
                {
                    r.flag("commit-backwards", format!("{group} {p}: fetched {o} after {min} was committed or read"));
                }
                let e = floor.entry((group.clone(), *p)).or_insert((*o, 0));
                if *o > e.0 {
                    e.0 = *o;
                }
            }
        }
    }
    // A commit acknowledged for an older generation than the member's newest
    // assignment at the time the commit began.
    for (invoked, _, proc_, group, generation, _) in &commits {
        let newest = assigns
            .iter()
            .filter(|(t, g, p, _, _)| t < invoked && g == group && p == proc_)
            .map(|(_, _, _, gen_, _)| *gen_)
            .max();
        if newest.is_some_and(|n| *generation < n) {
            r.flag(
                "stale-commit",
                format!("{proc_} committed for {group} with generation {generation} after getting {newest:?}"),
            );
        }
    }
    // Two owners at once: replay assignments in time order.
    let mut owner: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut sorted = assigns.clone();
    // A crash ends every ownership of the process (an empty assignment in
    // each group it was in; generation -1 never counts as its newest).
    for (t, proc_) in &crashes {
        let groups: BTreeSet<String> = assigns.iter().filter(|a| &a.2 == proc_).map(|a| a.1.clone()).collect();
        for g in groups {
            sorted.push((*t, g, proc_.clone(), -1, BTreeSet::new()));
        }
    }
    sorted.sort_by_key(|a| a.0);
    for (t, group, proc_, _, parts) in &sorted {
        owner.retain(|(g, p), o| !(g == group && o == proc_ && !parts.contains(p)));
        for p in parts {
            match owner.get(&(group.clone(), *p)) {
                Some(o) if o != proc_ => {
                    r.flag("double-owner", format!("{group} {p}: {proc_} got it at {t} ms while {o} still owned it"));
                }
                _ => {}
            }
            owner.insert((group.clone(), *p), proc_.clone());
        }
    }
    // Recovery: something acknowledged after the last fault ended.
    if let Some(last_heal) = faults.iter().map(|(_, e)| *e).max()
        && !sends.iter().any(|s| s.outcome == Kind::Ok && s.completed > last_heal)
        && !sends.is_empty()
    {
        r.flag("no-recovery", format!("no acknowledged send after the last fault ended at {last_heal} ms"));
    }
    r
}

#[cfg(test)]
mod tests;
