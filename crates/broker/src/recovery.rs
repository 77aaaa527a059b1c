//! Replicas that lost their disk: they take no part in elections until
//! they have caught up again.
//!
//! A Raft voter promises two things it must remember: its vote in the
//! current term, and every entry it acknowledged. A broker that comes back
//! with an empty data dir (a replaced disk, a wiped volume) has forgotten
//! both, yet the groups' memberships still count it as a voter under its
//! old id. Left alone it grants any vote (an empty log is behind every
//! candidate), so it and one lagging replica form a majority that lacks
//! entries the old leader and the wiped replica committed together: acks=all
//! records are lost and offsets reused (openraft documents that a node id
//! must never come back with an empty log).
//!
//! This module owns the rule that closes that hole. While a group is
//! *recovering* on this broker, its replica neither grants votes (vote,
//! pre-vote and leadership hand-off requests are refused) nor asks for
//! them (its own vote requests are not sent), and the broker never calls
//! `initialize()` for it. It still accepts entries from a leader, so it
//! catches up, and it still acknowledges what it durably stored, so commits
//! can count it.
//!
//! It recovers once it knows it holds everything it may have helped commit
//! and vote for. After the restart it asks enough of the group's other
//! voters for their vote's term and last log id: with `n` voters and a
//! majority `q = n/2 + 1`, `n - q + 1` of the others. Any majority that
//! included this replica also included at least `q - 1` others, so those
//! answers include at least one member of every such majority. The target is
//! the largest vote term and the largest last log index among the answers;
//! the replica recovers when it has *applied* up to that index and its own
//! vote has reached that term. Then:
//!
//! - every entry committed before the disk was lost is in its log: such an
//!   entry is in some answering voter's log, at or below its last index,
//!   and at each index only one entry is ever committed, so the committed
//!   prefix this replica applied holds it;
//! - it cannot vote twice in a term: a candidate it voted for before had a
//!   voter among the answers, whose vote term is at least that term.
//!
//! A replica that cannot get enough answers (voters down) stays recovering:
//! without them no election could be safe anyway. The answers are asked for
//! after the restart, so a stale leader that has not heard of newer terms
//! cannot satisfy the rule alone.
//!
//! A group the broker had no part in before the restart (a topic created
//! later) needs no recovery; which groups existed is read from the metadata
//! once the metadata group itself has recovered (see [`Recovery::finish_metadata`]).
//!
//! The state and the rule here are sans-IO: the probing task
//! ([`probe_group`]) and the transport feed them; the unit tests drive them
//! directly.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ferrolog_types::GroupId;
use ferrolog_types::NodeId;

/// What one replica reports of itself to a recovering peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplicaState {
    /// The term of its vote.
    pub vote_term: u64,
    /// Its last log index (`None`: an empty log).
    pub last_log: Option<u64>,
}

/// How many of the other voters of an `n`-voter group a recovering replica
/// must hear from (see the module docs).
pub fn answers_needed(voters: usize) -> usize {
    if voters <= 1 {
        return 0;
    }
    let majority = voters / 2 + 1;
    voters - majority + 1
}

/// The target from the answers: the largest vote term and last log index.
pub fn target_of(answers: &[ReplicaState]) -> ReplicaState {
    ReplicaState {
        vote_term: answers.iter().map(|a| a.vote_term).max().unwrap_or(0),
        last_log: answers.iter().filter_map(|a| a.last_log).max(),
    }
}

/// Whether a replica that has applied up to index `applied` holds every
/// entry of `target`'s log that may have been committed.
///
/// A target whose voters hold nothing past index 0 is reached at once:
/// index 0 is the membership entry each initial replica writes itself when
/// a group is initialized, and a leader's first entry is index 1, so no
/// leader ever committed anything there. Without this rule a replica of a
/// group created while its broker caught up could wait forever: its log
/// fills only from a leader, and the group's other replica needs its vote
/// to become one.
fn log_reached(t: ReplicaState, applied: Option<u64>) -> bool {
    // `None < Some(_)`: an empty log reaches only an empty target.
    applied >= t.last_log || t.last_log <= Some(0)
}

/// Whether a replica that has applied up to index `applied` and whose vote
/// is of term `vote_term` has reached `target` (`None`: not known yet).
pub fn caught_up(target: Option<ReplicaState>, applied: Option<u64>, vote_term: u64) -> bool {
    let Some(t) = target else { return false };
    log_reached(t, applied) && vote_term >= t.vote_term
}

#[derive(Debug, Default)]
struct State {
    /// Recovering groups and, once enough voters answered, their target.
    recovering: HashMap<GroupId, Option<ReplicaState>>,
    /// The partition groups this broker held replicas of before its disk
    /// was lost, known once the metadata group has recovered.
    inherited: HashSet<GroupId>,
}

/// Which groups on this broker are recovering from a lost disk.
#[derive(Debug, Default)]
pub struct Recovery {
    state: Mutex<State>,
}

impl Recovery {
    /// No group recovering (a broker on its own, intact, data dir).
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `group` as recovering (no-op if it already is).
    pub fn start(&self, group: GroupId) {
        self.state.lock().expect("recovery lock").recovering.entry(group).or_insert(None);
    }

    /// Whether `group` is recovering.
    pub fn is_recovering(&self, group: GroupId) -> bool {
        self.state.lock().expect("recovery lock").recovering.contains_key(&group)
    }

    /// The target of `group`, once enough voters answered.
    pub fn target(&self, group: GroupId) -> Option<ReplicaState> {
        self.state.lock().expect("recovery lock").recovering.get(&group).copied().flatten()
    }

    /// Records `group`'s target (from [`target_of`]); the first one stays.
    pub fn set_target(&self, group: GroupId, target: ReplicaState) {
        if let Some(t) = self.state.lock().expect("recovery lock").recovering.get_mut(&group)
            && t.is_none()
        {
            *t = Some(target);
        }
    }

    /// Whether `group` still recovers, given what it has applied and its
    /// vote's term; a partition group that has caught up stops recovering
    /// here. The metadata group stops only through
    /// [`Recovery::finish_metadata`].
    pub fn still_recovering(&self, group: GroupId, applied: Option<u64>, vote_term: u64) -> bool {
        let mut state = self.state.lock().expect("recovery lock");
        let Some(target) = state.recovering.get(&group).copied() else { return false };
        if group != GroupId::METADATA && caught_up(target, applied, vote_term) {
            state.recovering.remove(&group);
            tracing::info!(%group, ?target, ?applied, "replica caught up after a lost disk; it votes again");
            return false;
        }
        true
    }

    /// Whether a vote (or pre-vote) request of term `request_term` may reach
    /// the replica of `group`, which has applied up to `applied` and whose
    /// vote is of term `vote_term`. A replica not recovering decides as
    /// usual. A recovering one first needs the log half of its target (it
    /// must not help elect a candidate that lacks what it helped commit);
    /// its vote may be older than the target's term, and it could have
    /// voted in any term up to that one before its disk was lost, so it
    /// answers only requests of a later term. Granting one raises its vote
    /// past the target: it has then caught up. This is what elects the
    /// first leader of a group whose only other replica waits for this
    /// replica's vote.
    pub fn admits_vote(&self, group: GroupId, applied: Option<u64>, vote_term: u64, request_term: u64) -> bool {
        if !self.still_recovering(group, applied, vote_term) {
            return true;
        }
        match self.target(group) {
            Some(t) => log_reached(t, applied) && request_term > t.vote_term,
            None => false,
        }
    }

    /// The metadata group has caught up; `held` are the partition groups
    /// the metadata places on this broker at that point. They existed
    /// before this broker's restart (or were created while it caught up,
    /// which treats them with the same caution), so their replicas recover
    /// too; later groups start normally.
    pub fn finish_metadata(&self, held: impl IntoIterator<Item = GroupId>) {
        let mut state = self.state.lock().expect("recovery lock");
        state.inherited.extend(held);
        state.recovering.remove(&GroupId::METADATA);
    }

    /// Whether a replica of `group` starting now must recover: the
    /// metadata group is still recovering (so which groups existed is not
    /// known yet), or the group was held before. Marks it recovering if so.
    pub fn start_replica(&self, group: GroupId) -> bool {
        let mut state = self.state.lock().expect("recovery lock");
        let must = state.recovering.contains_key(&GroupId::METADATA) || state.inherited.contains(&group);
        if must {
            state.recovering.entry(group).or_insert(None);
        }
        must
    }

    /// Forgets `group` (its replica was removed from this broker).
    pub fn forget(&self, group: GroupId) {
        let mut state = self.state.lock().expect("recovery lock");
        state.recovering.remove(&group);
        state.inherited.remove(&group);
    }

    /// The number of groups recovering (for metrics and logs).
    pub fn recovering_count(&self) -> usize {
        self.state.lock().expect("recovery lock").recovering.len()
    }
}

/// Pause between rounds of asking the voters while too few answer.
pub(crate) const PROBE_RETRY: Duration = Duration::from_millis(500);
/// How long one voter may take to answer (a hung one is skipped).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the other voters of recovering `group` for their state until
/// enough answered (see the module docs), then records the target. `voters`
/// gives the group's voters and their addresses when known (the metadata
/// group learns its membership from the leader's entries); it ends when the
/// group stops recovering or is not running any more (`voters` returns
/// `None`).
pub async fn probe_group<F>(transport: Arc<crate::transport::Transport>, group: GroupId, me: NodeId, mut voters: F)
where
    F: FnMut() -> Option<Vec<(NodeId, String)>> + Send,
{
    loop {
        if !transport.recovery().is_recovering(group) || transport.recovery().target(group).is_some() {
            return;
        }
        let Some(all) = voters() else { return };
        if !all.is_empty() {
            let needed = answers_needed(all.len());
            let mut answers = Vec::new();
            for (peer, addr) in all.iter().filter(|(id, _)| *id != me) {
                if let Some(a) = transport.probe_group(group, *peer, addr, PROBE_TIMEOUT).await {
                    answers.push(a);
                }
            }
            if answers.len() >= needed {
                let target = target_of(&answers);
                tracing::info!(
                    node = me,
                    %group,
                    voters = all.len(),
                    answered = answers.len(),
                    ?target,
                    "recovering replica: the voters answered; catching up to their state"
                );
                transport.recovery().set_target(group, target);
                return;
            }
            tracing::debug!(node = me, %group, answered = answers.len(), needed, "recovering replica: too few voters answered");
        }
        tokio::time::sleep(PROBE_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId(7);

    fn at(index: u64) -> Option<u64> {
        Some(index)
    }

    fn state(vote_term: u64, last_log: Option<u64>) -> ReplicaState {
        ReplicaState { vote_term, last_log }
    }

    #[test]
    fn enough_voters_to_meet_every_majority() {
        // n voters, majority n/2+1: the answers must intersect the others
        // of every majority that included the recovering replica.
        assert_eq!(answers_needed(1), 0);
        assert_eq!(answers_needed(2), 1);
        assert_eq!(answers_needed(3), 2);
        assert_eq!(answers_needed(4), 2);
        assert_eq!(answers_needed(5), 3);
        for n in 2..10usize {
            let majority = n / 2 + 1;
            let others_in_majority = majority - 1;
            let others = n - 1;
            // A set of `needed` others always meets a set of
            // `others_in_majority` others...
            assert!(answers_needed(n) + others_in_majority > others, "n = {n}");
            // ... and one fewer would not.
            assert!(answers_needed(n) - 1 + others_in_majority <= others, "n = {n}");
        }
    }

    #[test]
    fn the_target_is_the_largest_term_and_index() {
        let t = target_of(&[state(5, at(100)), state(6, at(90)), state(5, None)]);
        assert_eq!(t, state(6, at(100)));
        assert_eq!(target_of(&[]), state(0, None));
    }

    #[test]
    fn a_group_not_marked_never_recovers() {
        let r = Recovery::new();
        assert!(!r.is_recovering(G));
        assert!(!r.still_recovering(G, None, 0));
        r.set_target(G, state(3, at(10)));
        assert_eq!(r.target(G), None);
    }

    #[test]
    fn recovery_needs_the_voters_log_and_term() {
        let r = Recovery::new();
        r.start(G);
        // No answers yet: not caught up, whatever was applied.
        assert!(r.still_recovering(G, at(1_000), 9));
        r.set_target(G, state(6, at(100)));
        // A later target does not replace the first.
        r.set_target(G, state(9, at(1_000)));
        assert_eq!(r.target(G), Some(state(6, at(100))));
        // Behind the voters' logs.
        assert!(r.still_recovering(G, None, 6));
        assert!(r.still_recovering(G, at(99), 6));
        // The log, but a vote of an older term (it might vote twice).
        assert!(r.still_recovering(G, at(100), 5));
        assert!(r.is_recovering(G));
        // Both: caught up, votes again.
        assert!(!r.still_recovering(G, at(100), 6));
        assert!(!r.is_recovering(G));
    }

    #[test]
    fn a_recovering_replica_admits_only_votes_past_the_target_once_it_has_the_log() {
        let r = Recovery::new();
        r.start(G);
        // No target yet: nothing.
        assert!(!r.admits_vote(G, at(100), 0, 50));
        r.set_target(G, state(6, at(100)));
        // Behind the voters' logs: not even a later term.
        assert!(!r.admits_vote(G, at(99), 0, 7));
        // The log, a vote of an older term: a request of the target's term
        // or before could be one it already answered differently.
        assert!(!r.admits_vote(G, at(100), 0, 6));
        assert!(r.admits_vote(G, at(100), 0, 7));
        assert!(r.is_recovering(G), "admitting a vote is not catching up");
        // Its vote reached the target's term: recovered, decides as usual.
        assert!(r.admits_vote(G, at(100), 6, 1));
        assert!(!r.is_recovering(G));
    }

    #[test]
    fn a_new_group_whose_other_replica_waits_for_this_vote_elects_a_leader() {
        // The group's other replica initialized it (index 0, the membership
        // entry it wrote itself) and campaigned in term 1 with its own vote.
        let r = Recovery::new();
        r.start(G);
        r.set_target(G, state(1, at(0)));
        // This replica has nothing applied: the log half is met (nothing was
        // ever committed by a leader), the term half is not.
        assert!(!r.admits_vote(G, None, 0, 1), "term 1: it may have voted in it before");
        assert!(r.admits_vote(G, None, 0, 2), "the next campaign is admitted");
        assert!(r.still_recovering(G, None, 0));
        // Once its vote is of term 2 (granted), it has caught up.
        assert!(!r.still_recovering(G, None, 2));
    }

    #[test]
    fn empty_voters_make_an_empty_target() {
        // Every answering voter is empty too (nothing was committed).
        assert!(caught_up(Some(state(0, None)), None, 0));
        // Index 0 only (the membership entry of initialize()): nothing
        // committed either.
        assert!(caught_up(Some(state(0, at(0))), None, 0));
        assert!(!caught_up(Some(state(0, at(1))), None, 1));
        assert!(!caught_up(Some(state(0, at(1))), at(0), 1));
        assert!(!caught_up(None, at(1), 1));
    }

    #[test]
    fn the_metadata_group_recovers_only_when_told_and_decides_the_partitions() {
        let r = Recovery::new();
        r.start(GroupId::METADATA);
        r.set_target(GroupId::METADATA, state(3, at(40)));
        // Caught up, but the metadata group waits for finish_metadata
        // (which records the held groups at that point).
        assert!(r.still_recovering(GroupId::METADATA, at(50), 3));
        // Until then every replica starting recovers.
        assert!(r.start_replica(GroupId(1)));
        r.finish_metadata([GroupId(1), GroupId(2)]);
        assert!(!r.is_recovering(GroupId::METADATA));
        // Held before: recovers; created later: starts normally.
        assert!(r.start_replica(GroupId(2)));
        assert!(!r.start_replica(GroupId(3)));
        assert!(r.is_recovering(GroupId(1)) && r.is_recovering(GroupId(2)) && !r.is_recovering(GroupId(3)));
        assert_eq!(r.recovering_count(), 2);
    }

    #[test]
    fn an_intact_broker_recovers_nothing() {
        let r = Recovery::new();
        assert!(!r.start_replica(GroupId(1)));
        assert_eq!(r.recovering_count(), 0);
    }
}
