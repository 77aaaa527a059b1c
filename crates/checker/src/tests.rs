//! Each anomaly planted in an otherwise clean history is flagged; the clean
//! history passes.

use super::*;

fn ev(t: u64, process: &str, kind: Kind, op: Op) -> Event {
    Event { time_ms: t, process: process.into(), kind, op }
}

fn send(partition: u32, value: &str, acks: &str, offset: Option<u64>) -> Op {
    Op::Send { partition, value: value.into(), acks: acks.into(), offset }
}

fn recs(list: &[(u64, &str)]) -> BTreeMap<u32, Vec<(u64, String)>> {
    BTreeMap::from([(0, list.iter().map(|(o, v)| (*o, v.to_string())).collect())])
}

fn poll(generation: i32, list: &[(u64, &str)]) -> Op {
    Op::Poll { group: Some("g".into()), generation, records: recs(list) }
}

fn assign(generation: i32, parts: &[u32]) -> Op {
    Op::Assign { group: "g".into(), generation, partitions: parts.iter().copied().collect() }
}

/// A clean run: sends at every acks level, a consumer in a group, a commit,
/// a fault, a send after it, and the final read.
fn clean() -> Vec<Event> {
    vec![
        ev(0, "nemesis", Kind::Ok, Op::Start { seed: 42 }),
        ev(1, "p1", Kind::Invoke, send(0, "v1", "all", None)),
        ev(2, "p1", Kind::Ok, send(0, "v1", "all", Some(0))),
        ev(3, "p1", Kind::Invoke, send(0, "v2", "all", None)),
        ev(4, "p1", Kind::Ok, send(0, "v2", "all", Some(1))),
        ev(5, "p2", Kind::Invoke, send(0, "v3", "1", None)),
        ev(6, "p2", Kind::Ok, send(0, "v3", "1", Some(2))),
        ev(7, "p3", Kind::Invoke, send(0, "v4", "0", None)),
        ev(8, "p3", Kind::Info, send(0, "v4", "0", None)),
        ev(9, "c1", Kind::Ok, assign(1, &[0])),
        ev(10, "c1", Kind::Invoke, poll(1, &[])),
        ev(11, "c1", Kind::Ok, poll(1, &[(0, "v1"), (1, "v2")])),
        ev(12, "c1", Kind::Invoke, poll(1, &[])),
        ev(13, "c1", Kind::Ok, poll(1, &[(2, "v3"), (3, "v4")])),
        ev(14, "c1", Kind::Invoke, Op::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 4)]) }),
        ev(15, "c1", Kind::Ok, Op::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 4)]) }),
        ev(16, "c1", Kind::Invoke, Op::FetchCommitted { group: "g".into(), offsets: BTreeMap::new() }),
        ev(17, "c1", Kind::Ok, Op::FetchCommitted { group: "g".into(), offsets: BTreeMap::from([(0, 4)]) }),
        ev(20, "nemesis", Kind::Invoke, Op::Fault { name: "kill 1".into() }),
        ev(30, "nemesis", Kind::Ok, Op::Fault { name: "kill 1".into() }),
        ev(31, "p1", Kind::Invoke, send(0, "v5", "all", None)),
        ev(32, "p1", Kind::Ok, send(0, "v5", "all", Some(4))),
        ev(
            40,
            "final",
            Kind::Ok,
            Op::FinalRead { records: recs(&[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4"), (4, "v5")]) },
        ),
    ]
}

#[test]
fn the_indices_the_tests_use_are_the_ones_meant() {
    let h = clean();
    assert!(matches!(h[11].op, Op::Poll { .. }) && h[11].kind == Kind::Ok);
    assert!(matches!(h[13].op, Op::Poll { .. }) && h[13].kind == Kind::Ok);
    assert!(matches!(h[17].op, Op::FetchCommitted { .. }) && h[17].kind == Kind::Ok);
    assert!(matches!(h[21].op, Op::Send { .. }) && h[21].kind == Kind::Ok);
}

fn final_read(h: &mut [Event], list: &[(u64, &str)]) {
    for e in h.iter_mut() {
        if let Op::FinalRead { records } = &mut e.op {
            *records = recs(list);
        }
    }
}

fn flagged(h: &[Event], kind: &str) {
    let r = check(h);
    assert!(r.anomalies.contains_key(kind), "{kind} not flagged: {:?}", r.anomalies);
}

#[test]
fn a_clean_history_passes() {
    let r = check(&clean());
    assert!(r.valid(), "{:?}", r.anomalies);
    assert_eq!(r.seed, Some(42));
    assert_eq!(r.faults, 1);
    assert_eq!(r.acked.get("all"), Some(&3));
    assert_eq!((r.acks1_lost, r.acks0_lost), (0, 0));
}

#[test]
fn inconsistent_offsets_and_phantoms() {
    let mut h = clean();
    h[13] = ev(13, "c1", Kind::Ok, poll(1, &[(2, "vX"), (3, "v4")]));
    flagged(&h, "inconsistent-offsets");
    flagged(&h, "phantom-read");
}

#[test]
fn duplicates() {
    let mut h = clean();
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4"), (4, "v5"), (5, "v1")]);
    flagged(&h, "duplicate");
}

#[test]
fn lost_and_unseen_writes() {
    let mut h = clean();
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4")]);
    flagged(&h, "lost-write");
    flagged(&h, "unseen");
}

#[test]
fn aborted_reads() {
    let mut h = clean();
    h.push(ev(33, "p4", Kind::Invoke, send(0, "v6", "all", None)));
    h.push(ev(34, "p4", Kind::Fail, send(0, "v6", "all", None)));
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4"), (4, "v5"), (5, "v6")]);
    flagged(&h, "aborted-read");
}

#[test]
fn poll_skips_and_nonmonotonic_polls() {
    let mut h = clean();
    h[13] = ev(13, "c1", Kind::Ok, poll(1, &[(3, "v4")]));
    flagged(&h, "poll-skip");
    let mut h = clean();
    h[13] = ev(13, "c1", Kind::Ok, poll(1, &[(1, "v2"), (2, "v3")]));
    flagged(&h, "nonmonotonic-poll");
    let mut h = clean();
    h[11] = ev(11, "c1", Kind::Ok, poll(1, &[(0, "v1"), (2, "v3")]));
    flagged(&h, "nonmonotonic-poll");
}

#[test]
fn nonmonotonic_sends() {
    let mut h = clean();
    // p1's later send (v1) acknowledged below an earlier one (v2), both in
    // the final log where acknowledged.
    h[1] = ev(1, "p1", Kind::Invoke, send(0, "v2", "all", None));
    h[2] = ev(2, "p1", Kind::Ok, send(0, "v2", "all", Some(1)));
    h[3] = ev(3, "p1", Kind::Invoke, send(0, "v1", "all", None));
    h[4] = ev(4, "p1", Kind::Ok, send(0, "v1", "all", Some(0)));
    flagged(&h, "nonmonotonic-send");
    // An acks=1 send lost to a fault gives its offset up: a later send at a
    // lower offset is not out of order (the loss is counted instead).
    let mut h = clean();
    h.insert(18, ev(18, "p2", Kind::Invoke, send(0, "lost", "1", None)));
    h.insert(19, ev(19, "p2", Kind::Ok, send(0, "lost", "1", Some(9))));
    h.insert(24, ev(33, "p2", Kind::Invoke, send(0, "v6", "1", None)));
    h.insert(25, ev(34, "p2", Kind::Ok, send(0, "v6", "1", Some(5))));
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4"), (4, "v5"), (5, "v6")]);
    let r = check(&h);
    assert!(!r.anomalies.contains_key("nonmonotonic-send"), "{:?}", r.anomalies);
    assert_eq!(r.acks1_lost, 1);
}

#[test]
fn committed_offsets_going_backwards_and_stale_commits() {
    let mut h = clean();
    h[17] = ev(17, "c1", Kind::Ok, Op::FetchCommitted { group: "g".into(), offsets: BTreeMap::from([(0, 2)]) });
    flagged(&h, "commit-backwards");
    let mut h = clean();
    h.insert(13, ev(13, "c1", Kind::Ok, assign(2, &[0])));
    flagged(&h, "stale-commit");
}

#[test]
fn two_owners_at_once() {
    let mut h = clean();
    h.insert(10, ev(10, "c2", Kind::Ok, assign(3, &[0])));
    flagged(&h, "double-owner");
    // A hand-over after the first owner released is fine.
    let mut h = clean();
    h.push(ev(41, "c1", Kind::Ok, assign(2, &[])));
    h.push(ev(42, "c2", Kind::Ok, assign(3, &[0])));
    assert!(check(&h).valid(), "{:?}", check(&h).anomalies);
    // So is one after the first owner crashed (it owns nothing any more)...
    let mut h = clean();
    h.push(ev(41, "c1", Kind::Info, Op::Crash));
    h.push(ev(42, "c2", Kind::Ok, assign(3, &[0])));
    assert!(check(&h).valid(), "{:?}", check(&h).anomalies);
    // ...but not one before the crash.
    let mut h = clean();
    h.push(ev(41, "c2", Kind::Ok, assign(3, &[0])));
    h.push(ev(42, "c1", Kind::Info, Op::Crash));
    flagged(&h, "double-owner");
}

#[test]
fn acks1_losses_are_allowed_only_around_faults() {
    // Lost while a fault overlapped it: counted, not an anomaly.
    let mut h = clean();
    h[5] = ev(19, "p2", Kind::Invoke, send(0, "v3", "1", None));
    h[6] = ev(21, "p2", Kind::Ok, send(0, "v3", "1", Some(2)));
    h[13] = ev(13, "c1", Kind::Ok, poll(1, &[]));
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (3, "v4"), (4, "v5")]);
    let r = check(&h);
    assert_eq!(r.acks1_lost, 1);
    assert!(!r.anomalies.contains_key("acks1-loss-without-fault"), "{:?}", r.anomalies);
    // Lost with no fault anywhere near: flagged.
    let mut h: Vec<Event> = clean().into_iter().filter(|e| !matches!(e.op, Op::Fault { .. })).collect();
    let poll_at = h.iter().position(|e| e.time_ms == 13).expect("second poll");
    h[poll_at] = ev(13, "c1", Kind::Ok, poll(1, &[]));
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (3, "v4"), (4, "v5")]);
    flagged(&h, "acks1-loss-without-fault");
}

#[test]
fn acks0_survivors_keep_their_order() {
    let mut h = clean();
    h.push(ev(35, "p3", Kind::Invoke, send(0, "v7", "0", None)));
    h.push(ev(36, "p3", Kind::Info, send(0, "v7", "0", None)));
    h.push(ev(37, "p3", Kind::Invoke, send(0, "v8", "0", None)));
    h.push(ev(38, "p3", Kind::Info, send(0, "v8", "0", None)));
    final_read(&mut h, &[(0, "v1"), (1, "v2"), (2, "v3"), (3, "v4"), (4, "v5"), (5, "v8"), (6, "v7")]);
    flagged(&h, "acks0-reordered");
}

#[test]
fn no_recovery_after_the_last_fault() {
    let mut h = clean();
    h.push(ev(50, "nemesis", Kind::Invoke, Op::Fault { name: "partition".into() }));
    h.push(ev(60, "nemesis", Kind::Ok, Op::Fault { name: "partition".into() }));
    flagged(&h, "no-recovery");
}

#[test]
fn histories_round_trip_as_jsonl() {
    let h = clean();
    let text: String = h.iter().map(|e| serde_json::to_string(e).expect("json") + "\n").collect();
    assert!(text.lines().next().is_some_and(|l| l.contains("\"type\":\"ok\"") && l.contains("\"start\":")));
    assert_eq!(parse(&text).expect("parse"), h);
}
