//! Consumer groups, without IO: membership, member epochs, target and
//! current assignments, committed offsets. Part of [`crate::ClusterState`],
//! so every change is a metadata Raft entry (replicated, persisted, in
//! snapshots); liveness (heartbeat times) is the coordinator's, in memory.
//!
//! The protocol follows Kafka's KIP-848 (server-side assignment):
//! - every heartbeat reports what the member owns; the coordinator answers
//!   with what it may own now;
//! - the *target* assignment is computed by the group's assignor whenever
//!   the group changes (member joins or leaves, a subscription or a
//!   subscribed topic's partition count changes), and bumps the group epoch;
//! - a member is handed a partition of its target only once no other member
//!   *holds* it, where a member holds what it was last handed plus what it
//!   last reported owning. A partition taken from A is therefore given to B
//!   only after A's next heartbeat reports it released (or A left or its
//!   session expired). **Invariant: no partition is held by two members.**
//!   Members whose partitions do not move are not disturbed.
//!
//! Committed offsets never go backwards (a lower commit keeps the higher
//! offset), except by [`GroupCommand::ResetOffsets`] on an empty group.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// A topic partition.
pub type Tp = (String, u32);

/// How a group spreads partitions over its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignor {
    /// Round-robin over all subscribed partitions, sticky: a membership
    /// change moves as few partitions as it can while keeping counts even.
    #[default]
    Uniform,
    /// Per topic, contiguous ranges of partitions in member order (Kafka's
    /// range assignor; deterministic, not sticky).
    Range,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Client-chosen label.
    pub client_id: String,
    /// Bumped whenever the member is handed a new assignment; commits must
    /// carry the current one.
    pub member_epoch: i32,
    /// Subscribed topics.
    pub subscribed: BTreeSet<String>,
    /// Session timeout the member asked for, ms.
    pub session_timeout_ms: u32,
    /// What the assignor wants it to own.
    pub target: BTreeSet<Tp>,
    /// What it was last handed (it may own these).
    pub assigned: BTreeSet<Tp>,
    /// What it last reported owning.
    pub owned: BTreeSet<Tp>,
}

impl Member {
    /// What it may be consuming right now.
    pub fn holds(&self, tp: &Tp) -> bool {
        self.assigned.contains(tp) || self.owned.contains(tp)
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    /// Client metadata.
    pub metadata: String,
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Bumped whenever the target assignment is recomputed.
    pub group_epoch: i32,
    /// The assignor.
    pub assignor: Assignor,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Partition counts of the subscribed topics when the target was last
    /// computed (a change triggers a new target).
    pub subscribed_partitions: BTreeMap<String, u32>,
    /// Committed offsets.
    pub offsets: BTreeMap<Tp, Committed>,
}

/// A heartbeat (join: `member_epoch == 0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Member id (the coordinator makes one up for a join).
    pub member_id: String,
    /// 0 to join, else the member's current epoch.
    pub member_epoch: i32,
    /// Client label.
    pub client_id: String,
    /// Subscribed topics.
    pub subscribed: BTreeSet<String>,
    /// What the member owns now.
    pub owned: BTreeSet<Tp>,
    /// Assignor (applies when the group is empty).
    pub assignor: Assignor,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
}

/// Replicated group commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// Join or heartbeat.
    Heartbeat(Heartbeat),
    /// Members left or their sessions expired.
    RemoveMembers(Vec<String>),
    /// Commit offsets (member `""` with epoch -1: a consumer outside the
    /// group's membership, allowed only while the group has no members).
    Commit {
        /// Member id.
        member_id: String,
        /// Its epoch.
        member_epoch: i32,
        /// `(tp, offset, metadata)`.
        offsets: Vec<(Tp, i64, String)>,
    },
    /// Set offsets explicitly (only while the group has no members).
    ResetOffsets(Vec<(Tp, i64)>),
}

/// Why a group command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    /// The member is not (or no longer) in the group: rejoin.
    #[error("member {0:?} is not in the group (its session may have expired): rejoin")]
    UnknownMember(String),
    /// The member's epoch is not the current one.
    #[error("member {member:?} epoch {got} is stale (current {current})")]
    StaleEpoch {
        /// Member.
        member: String,
        /// Sent.
        got: i32,
        /// Current.
        current: i32,
    },
    /// A commit for a partition the member does not hold.
    #[error("member {member:?} does not own {topic}/{partition}")]
    NotOwner {
        /// Member.
        member: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The operation needs a group without members.
    #[error("group has {0} active members: stop them first")]
    NotEmpty(usize),
    /// No group of that name.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    // New variants go last: serde formats such as postcard number variants
    // by position.
    /// A commit for a topic that does not exist (deleted, or never
    /// created) or a partition it does not have.
    #[error("cannot commit an offset of {topic}/{partition}: {}", match count {
        None => "no such topic".to_string(),
        Some(n) => format!("the topic has {n} partitions"),
    })]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The topic's partition count; `None`: no such topic.
        count: Option<u32>,
    },
}

/// What a heartbeat answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The member's id.
    pub member_id: String,
    /// Its epoch.
    pub member_epoch: i32,
    /// What it may own now.
    pub assigned: BTreeSet<Tp>,
}

impl Group {
    /// A copy of the group without its committed offsets (what heartbeats
    /// and membership need; offsets may be many).
    pub fn without_offsets(&self) -> Group {
        Group {
            group_epoch: self.group_epoch,
            assignor: self.assignor,
            members: self.members.clone(),
            subscribed_partitions: self.subscribed_partitions.clone(),
            offsets: BTreeMap::new(),
        }
    }

    /// Applies `cmd`; `partitions` gives the partition count of a topic
    /// (None: no such topic). A refused command changes nothing.
    pub fn apply(
        &mut self,
        cmd: GroupCommand,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Option<HeartbeatReply>, GroupError> {
        match cmd {
            GroupCommand::Heartbeat(hb) => self.heartbeat(hb, partitions).map(Some),
            GroupCommand::RemoveMembers(ids) => {
                let before = self.members.len();
                for id in &ids {
                    self.members.remove(id);
                }
                if self.members.len() != before {
                    self.retarget(partitions);
                }
                Ok(None)
            }
            GroupCommand::Commit { member_id, member_epoch, offsets } => {
                if member_id.is_empty() {
                    if !self.members.is_empty() {
                        return Err(GroupError::UnknownMember(String::new()));
                    }
                } else {
                    let m = self.members.get(&member_id).ok_or_else(|| GroupError::UnknownMember(member_id.clone()))?;
                    if m.member_epoch != member_epoch {
                        return Err(GroupError::StaleEpoch {
                            member: member_id,
                            got: member_epoch,
                            current: m.member_epoch,
                        });
                    }
                    if let Some((tp, _, _)) = offsets.iter().find(|(tp, _, _)| !m.holds(tp)) {
                        return Err(GroupError::NotOwner { member: member_id, topic: tp.0.clone(), partition: tp.1 });
                    }
                }
                // Checked before anything changes: a refused command
                // changes nothing. An offset of a topic that does not exist
                // (deleted meanwhile) would outlive it and apply to a topic
                // created later under the same name.
                known_partitions(offsets.iter().map(|(tp, _, _)| tp), partitions)?;
                if let Some((_, offset, _)) = offsets.iter().find(|(_, o, _)| *o < 0) {
                    return Err(GroupError::Invalid(format!("negative offset {offset}")));
                }
                for (tp, offset, metadata) in offsets {
                    let e = self.offsets.entry(tp).or_insert(Committed { offset, metadata: String::new() });
                    // Never backwards: a late commit of an older position
                    // keeps the newer one.
                    if offset >= e.offset {
                        *e = Committed { offset, metadata };
                    }
                }
                Ok(None)
            }
            GroupCommand::ResetOffsets(offsets) => {
                if !self.members.is_empty() {
                    return Err(GroupError::NotEmpty(self.members.len()));
                }
                // As for commits: no offset may outlive its topic.
                known_partitions(offsets.iter().map(|(tp, _)| tp), partitions)?;
                for (tp, offset) in offsets {
                    self.offsets.insert(tp, Committed { offset, metadata: String::new() });
                }
                Ok(None)
            }
        }
    }

    fn heartbeat(
        &mut self,
        hb: Heartbeat,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<HeartbeatReply, GroupError> {
        if hb.member_id.is_empty() {
            return Err(GroupError::Invalid("member id missing".into()));
        }
        let mut changed = false;
        if hb.member_epoch == 0 {
            if self.members.is_empty() {
                self.assignor = hb.assignor;
            }
            // A (re)join starts over: nothing held.
            self.members.insert(
                hb.member_id.clone(),
                Member {
                    client_id: hb.client_id.clone(),
                    member_epoch: 0,
                    subscribed: hb.subscribed.clone(),
                    session_timeout_ms: hb.session_timeout_ms,
                    target: BTreeSet::new(),
                    assigned: BTreeSet::new(),
                    owned: BTreeSet::new(),
                },
            );
            changed = true;
        } else {
            let m =
                self.members.get_mut(&hb.member_id).ok_or_else(|| GroupError::UnknownMember(hb.member_id.clone()))?;
            if hb.member_epoch != m.member_epoch {
                return Err(GroupError::StaleEpoch {
                    member: hb.member_id.clone(),
                    got: hb.member_epoch,
                    current: m.member_epoch,
                });
            }
            if m.subscribed != hb.subscribed {
                m.subscribed = hb.subscribed.clone();
                changed = true;
            }
            // A member can only own what it was handed; what it stopped
            // reporting it released.
            m.owned = hb.owned.iter().filter(|tp| m.holds(tp)).cloned().collect();
        }
        let counts = self.subscribed_counts(partitions);
        if changed || counts != self.subscribed_partitions {
            self.retarget(partitions);
        }
        // Hand the member its target minus what others still hold; take
        // away what is no longer in its target.
        let others_hold: BTreeSet<Tp> = self
            .members
            .iter()
            .filter(|(id, _)| **id != hb.member_id)
            .flat_map(|(_, o)| o.assigned.iter().chain(o.owned.iter()).cloned())
            .collect();
        let epoch = self.group_epoch;
        let m = self.members.get_mut(&hb.member_id).ok_or_else(|| GroupError::UnknownMember(hb.member_id.clone()))?;
        let assigned: BTreeSet<Tp> = m.target.iter().filter(|tp| !others_hold.contains(*tp)).cloned().collect();
        if assigned != m.assigned || m.member_epoch == 0 {
            m.assigned = assigned;
            m.member_epoch = epoch.max(1).max(m.member_epoch + 1);
        }
        Ok(HeartbeatReply { member_id: hb.member_id, member_epoch: m.member_epoch, assigned: m.assigned.clone() })
    }

    fn subscribed_counts(&self, partitions: &dyn Fn(&str) -> Option<u32>) -> BTreeMap<String, u32> {
        self.members
            .values()
            .flat_map(|m| m.subscribed.iter())
            .filter_map(|t| partitions(t).map(|n| (t.clone(), n)))
            .collect()
    }

    /// Recomputes every member's target and bumps the group epoch.
    fn retarget(&mut self, partitions: &dyn Fn(&str) -> Option<u32>) {
        self.subscribed_partitions = self.subscribed_counts(partitions);
        self.group_epoch += 1;
        let targets = match self.assignor {
            Assignor::Uniform => self.uniform(),
            Assignor::Range => self.range(),
        };
        for (id, m) in self.members.iter_mut() {
            m.target = targets.get(id).cloned().unwrap_or_default();
        }
    }

    /// Sticky round-robin: keep each member's current target partitions up
    /// to its quota, then hand the rest to the least-loaded subscribers.
    fn uniform(&self) -> BTreeMap<String, BTreeSet<Tp>> {
        let all: Vec<Tp> =
            self.subscribed_partitions.iter().flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p))).collect();
        let members: Vec<&String> = self.members.keys().collect();
        let mut out: BTreeMap<String, BTreeSet<Tp>> = members.iter().map(|m| ((*m).clone(), BTreeSet::new())).collect();
        if members.is_empty() {
            return out;
        }
        // Even counts: nobody above ceil(N / M) among its topic's subscribers.
        let quota = all.len().div_ceil(members.len()).max(1);
        let subscribed = |m: &str, t: &str| self.members.get(m).is_some_and(|mm| mm.subscribed.contains(t));
        let mut free = Vec::new();
        for tp in &all {
            let keeper = self
                .members
                .iter()
                .find(|(id, m)| m.target.contains(tp) && subscribed(id, &tp.0))
                .map(|(id, _)| id.clone());
            match keeper {
                Some(k) if out[&k].len() < quota => {
                    out.get_mut(&k).map(|s| s.insert(tp.clone()));
                }
                _ => free.push(tp.clone()),
            }
        }
        for tp in free {
            let best = out
                .iter()
                .filter(|(id, _)| subscribed(id, &tp.0))
                .min_by_key(|(id, s)| (s.len(), (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(b) = best {
                out.get_mut(&b).map(|s| s.insert(tp));
            }
        }
        // Keeping first can leave a newcomer short: move from the fullest
        // to the emptiest while the gap is more than one.
        while let (Some((max_id, max_n)), Some((min_id, min_n))) = (
            out.iter()
                .max_by_key(|(id, s)| (s.len(), std::cmp::Reverse((*id).clone())))
                .map(|(i, s)| (i.clone(), s.len())),
            out.iter().min_by_key(|(id, s)| (s.len(), (*id).clone())).map(|(i, s)| (i.clone(), s.len())),
        ) {
            if max_n <= min_n + 1 {
                break;
            }
            let movable = out[&max_id].iter().rev().find(|tp| subscribed(&min_id, &tp.0)).cloned();
            let Some(tp) = movable else { break };
            out.get_mut(&max_id).map(|s| s.remove(&tp));
            out.get_mut(&min_id).map(|s| s.insert(tp));
        }
        out
    }

    /// Kafka's range assignor: per topic, members in id order, the first
    /// `n % m` get one partition more.
    fn range(&self) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut out: BTreeMap<String, BTreeSet<Tp>> =
            self.members.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
        for (topic, n) in &self.subscribed_partitions {
            let subs: Vec<&String> =
                self.members.iter().filter(|(_, m)| m.subscribed.contains(topic)).map(|(id, _)| id).collect();
            if subs.is_empty() {
                continue;
            }
            let (per, extra) = (*n as usize / subs.len(), *n as usize % subs.len());
            let mut p = 0u32;
            for (i, id) in subs.iter().enumerate() {
                let k = per + usize::from(i < extra);
                for _ in 0..k {
                    out.get_mut(*id).map(|s| s.insert((topic.clone(), p)));
                    p += 1;
                }
            }
        }
        out
    }

    /// "empty", "stable" (every member holds exactly its target) or
    /// "reconciling".
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.members.values().all(|m| m.assigned == m.target && m.owned == m.target) {
            "stable"
        } else {
            "reconciling"
        }
    }
}

/// Refuses offsets of a topic or partition that does not exist (deleted
/// meanwhile): they would outlive it and apply to a topic created later
/// under the same name.
fn known_partitions<'a>(
    tps: impl Iterator<Item = &'a Tp>,
    partitions: &dyn Fn(&str) -> Option<u32>,
) -> Result<(), GroupError> {
    for (topic, partition) in tps {
        let count = partitions(topic);
        if count.is_none_or(|n| *partition >= n) {
            return Err(GroupError::UnknownPartition { topic: topic.clone(), partition: *partition, count });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn topics(name: &str) -> Option<u32> {
        match name {
            "t" => Some(3),
            "u" => Some(5),
            _ => None,
        }
    }

    fn hb(id: &str, epoch: i32, owned: &BTreeSet<Tp>) -> GroupCommand {
        GroupCommand::Heartbeat(Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            client_id: "c".into(),
            subscribed: ["t".to_string()].into(),
            owned: owned.clone(),
            assignor: Assignor::Uniform,
            session_timeout_ms: 10_000,
        })
    }

    /// Heartbeats until every member owns its assignment (members act on
    /// what they are handed immediately).
    fn settle(g: &mut Group, ids: &[&str], state: &mut BTreeMap<String, (i32, BTreeSet<Tp>)>) {
        for _ in 0..10 {
            for id in ids {
                let (epoch, owned) = state.get(*id).cloned().unwrap_or((0, BTreeSet::new()));
                let r = g.apply(hb(id, epoch, &owned), &topics).expect("heartbeat").expect("reply");
                state.insert((*id).to_string(), (r.member_epoch, r.assigned));
                assert_no_double_holding(g);
            }
        }
    }

    fn assert_no_double_holding(g: &Group) {
        let mut seen = BTreeSet::new();
        for m in g.members.values() {
            for tp in m.assigned.union(&m.owned) {
                assert!(seen.insert(tp.clone()), "{tp:?} held twice: {g:?}");
            }
        }
    }

    #[test]
    fn three_members_one_partition_each_and_a_fourth_stays_idle_until_needed() {
        let mut g = Group::default();
        let mut st = BTreeMap::new();
        settle(&mut g, &["a", "b", "c", "d"], &mut st);
        let counts: Vec<usize> = ["a", "b", "c", "d"].iter().map(|m| st[*m].1.len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 3);
        assert!(counts.iter().all(|c| *c <= 1), "{counts:?}");
        assert_eq!(g.state(), "stable");
        // The member holding partition 0 leaves; the idle one takes over.
        let leaver =
            ["a", "b", "c", "d"].into_iter().find(|m| st[*m].1.contains(&("t".to_string(), 0))).expect("owner");
        g.apply(GroupCommand::RemoveMembers(vec![leaver.to_string()]), &topics).expect("remove");
        let rest: Vec<&str> = ["a", "b", "c", "d"].into_iter().filter(|m| *m != leaver).collect();
        settle(&mut g, &rest, &mut st);
        let total: usize = rest.iter().map(|m| st[*m].1.len()).sum();
        assert_eq!(total, 3);
        assert!(rest.iter().all(|m| st[*m].1.len() == 1));
    }

    #[test]
    fn a_moved_partition_is_handed_over_only_after_release() {
        let mut g = Group::default();
        let mut st = BTreeMap::new();
        settle(&mut g, &["a"], &mut st);
        assert_eq!(st["a"].1.len(), 3);
        // b joins: its target takes partitions from a, but b gets them only
        // after a reported releasing them.
        let r = g.apply(hb("b", 0, &BTreeSet::new()), &topics).expect("join").expect("reply");
        assert!(r.assigned.is_empty(), "a still holds everything: {r:?}");
        let a_owned = st["a"].1.clone();
        let ra = g.apply(hb("a", st["a"].0, &a_owned), &topics).expect("hb").expect("reply");
        assert!(ra.assigned.len() < 3, "a is told to give some up");
        let rb = g.apply(hb("b", r.member_epoch, &BTreeSet::new()), &topics).expect("hb").expect("reply");
        assert!(rb.assigned.is_empty(), "a has not reported the release yet");
        g.apply(hb("a", ra.member_epoch, &ra.assigned), &topics).expect("release");
        let rb = g.apply(hb("b", rb.member_epoch, &BTreeSet::new()), &topics).expect("hb").expect("reply");
        assert!(!rb.assigned.is_empty(), "released partitions go to b");
        assert_no_double_holding(&g);
    }

    #[test]
    fn stale_epochs_and_unknown_members_are_refused_and_offsets_never_go_back() {
        let mut g = Group::default();
        let mut st = BTreeMap::new();
        settle(&mut g, &["a"], &mut st);
        let (epoch, _) = st["a"].clone();
        let tp = ("t".to_string(), 0);
        let commit = |e: i32, o: i64| GroupCommand::Commit {
            member_id: "a".into(),
            member_epoch: e,
            offsets: vec![(tp.clone(), o, String::new())],
        };
        assert!(matches!(g.apply(commit(epoch - 1, 5), &topics), Err(GroupError::StaleEpoch { .. })));
        g.apply(commit(epoch, 5), &topics).expect("commit");
        g.apply(commit(epoch, 3), &topics).expect("late commit");
        assert_eq!(g.offsets[&tp].offset, 5, "never backwards");
        let zombie = GroupCommand::Commit {
            member_id: "z".into(),
            member_epoch: 1,
            offsets: vec![(tp.clone(), 9, String::new())],
        };
        assert!(matches!(g.apply(zombie, &topics), Err(GroupError::UnknownMember(_))));
        assert!(matches!(
            g.apply(GroupCommand::ResetOffsets(vec![(tp.clone(), 0)]), &topics),
            Err(GroupError::NotEmpty(1))
        ));
        g.apply(GroupCommand::RemoveMembers(vec!["a".into()]), &topics).expect("leave");
        g.apply(GroupCommand::ResetOffsets(vec![(tp.clone(), 0)]), &topics).expect("reset on an empty group");
        assert_eq!(g.offsets[&tp].offset, 0);
        let gone = GroupCommand::ResetOffsets(vec![(("deleted".to_string(), 0), 3)]);
        assert!(
            matches!(g.apply(gone, &topics), Err(GroupError::UnknownPartition { count: None, .. })),
            "a reset of a topic that does not exist is refused"
        );
        assert!(!g.offsets.contains_key(&("deleted".to_string(), 0)));
    }

    #[test]
    fn a_subscribed_topic_created_later_is_picked_up() {
        let mut g = Group::default();
        let mut h = match hb("a", 0, &BTreeSet::new()) {
            GroupCommand::Heartbeat(h) => h,
            _ => unreachable!(),
        };
        h.subscribed = ["later".to_string()].into();
        let none = |_: &str| None;
        let r = g.apply(GroupCommand::Heartbeat(h.clone()), &none).expect("join").expect("reply");
        assert!(r.assigned.is_empty(), "no such topic yet");
        let created = |t: &str| (t == "later").then_some(2);
        h.member_epoch = r.member_epoch;
        let r = g.apply(GroupCommand::Heartbeat(h), &created).expect("hb").expect("reply");
        assert_eq!(r.assigned.len(), 2, "both partitions of the new topic: {r:?}");
    }

    #[test]
    fn range_assignor_splits_each_topic_in_ranges() {
        let mut g = Group { assignor: Assignor::Range, ..Group::default() };
        for id in ["a", "b"] {
            let mut h = match hb(id, 0, &BTreeSet::new()) {
                GroupCommand::Heartbeat(h) => h,
                _ => unreachable!(),
            };
            h.assignor = Assignor::Range;
            h.subscribed = ["u".to_string()].into();
            g.apply(GroupCommand::Heartbeat(h), &topics).expect("join");
        }
        let a: Vec<u32> = g.members["a"].target.iter().map(|t| t.1).collect();
        let b: Vec<u32> = g.members["b"].target.iter().map(|t| t.1).collect();
        assert_eq!((a, b), (vec![0, 1, 2], vec![3, 4]));
    }

    proptest! {
        /// Random joins, leaves and heartbeats: never two holders of a
        /// partition; after settling, every partition is owned exactly
        /// once and counts differ by at most one; a join moves at most a
        /// fair share of partitions.
        #[test]
        fn assignments_stay_exclusive_even_and_sticky(ops in proptest::collection::vec((0u8..6, any::<bool>()), 1..60)) {
            let mut g = Group::default();
            let mut st: BTreeMap<String, (i32, BTreeSet<Tp>)> = BTreeMap::new();
            let names = ["m0", "m1", "m2", "m3", "m4", "m5"];
            for (who, join) in ops {
                let id = names[who as usize];
                if join || !st.contains_key(id) {
                    let (epoch, owned) = st.get(id).cloned().unwrap_or((0, BTreeSet::new()));
                    let r = g.apply(hb(id, epoch, &owned), &topics);
                    if let Ok(Some(r)) = r { st.insert(id.to_string(), (r.member_epoch, r.assigned)); }
                } else {
                    g.apply(GroupCommand::RemoveMembers(vec![id.to_string()]), &topics).expect("remove");
                    st.remove(id);
                }
                assert_no_double_holding(&g);
            }
            let ids: Vec<String> = st.keys().cloned().collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let before: BTreeMap<String, BTreeSet<Tp>> = st.iter().map(|(k, v)| (k.clone(), v.1.clone())).collect();
            settle(&mut g, &refs, &mut st);
            if !refs.is_empty() {
                let mut all = BTreeSet::new();
                for id in &refs { for tp in &st[*id].1 { prop_assert!(all.insert(tp.clone())); } }
                prop_assert_eq!(all.len(), 3);
                let counts: Vec<usize> = refs.iter().map(|id| st[*id].1.len()).collect();
                prop_assert!(counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1);
                // A newcomer takes at most ceil(3 / members) from the others.
                let mut g2 = g.clone();
                let mut st2 = st.clone();
                let mut all_ids = refs.clone();
                all_ids.push("new");
                settle(&mut g2, &all_ids, &mut st2);
                let moved: usize = refs.iter().map(|id| st[*id].1.difference(&st2[*id].1).count()).sum();
                prop_assert!(moved <= 3usize.div_ceil(all_ids.len()), "moved {} of 3 for one join", moved);
                let _ = before;
            }
        }
    }
}
