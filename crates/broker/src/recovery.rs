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
//! *recovering* on this broker, its replica asks for no votes (its own vote
//! requests are not sent), takes no leadership hand-off, and the broker
//! never calls `initialize()` for it. It grants a vote only to a candidate
//! that holds everything it may have helped commit (below). It accepts
//! entries (and snapshots) only from a leader at least as recent as any it
//! may have followed before: an empty vote would otherwise let a stale
//! leader, cut off from a newer one, append to it and commit with it
//! entries the newer leader overwrote. Within that, it catches up as any
//! follower does and acknowledges what it durably stored, so commits can
//! count it.
//!
//! It recovers once it knows it holds everything it may have helped commit
//! and vote for. After the restart it asks enough of the group's other
//! voters for their vote's term and last log id: with `n` voters and a
//! majority `q = n/2 + 1`, `n - q + 1` of the others. Any majority that
//! included this replica also included at least `q - 1` others, so those
//! answers include at least one member of every such majority. The target is
//! the largest vote term, the largest last log index and the most
//! up-to-date last log id (by term, then index, as Raft orders logs) among
//! the answers; the replica recovers when the last entry it has *applied*
//! is at least that most up-to-date log id and its own vote has reached
//! that term. Then:
//!
//! - every entry committed before the disk was lost is in its log: such an
//!   entry is in some answering voter's log, and a log at least as up to
//!   date as that one holds it (Raft's election restriction: the log
//!   matching and leader completeness argument); the committed log this
//!   replica applied is such a log. (Not "applied up to the largest
//!   index": a stale leader's uncommitted tail may be cut later, and an
//!   idle group would never get there.)
//! - it cannot vote twice in a term, with three voters: a candidate it
//!   voted for before asked for the vote after voting for itself, and every
//!   other voter answers, so the target's vote term covers it. With four or
//!   more, a candidate that did not answer and whose election is still in
//!   flight is not covered (docs/architecture.md lists it as a limit).
//!
//! Until then, it grants a vote only for a term past the target's (it may
//! have voted in any term up to that one) and only to a candidate whose last
//! log id is at least the target's most up-to-date one, or once it has
//! applied past the target's log itself. The first is Raft's own election
//! restriction, checked on behalf of the answering voters: a candidate at
//! least as up to date as a voter holds every committed entry that voter
//! holds. It is what lets a group elect again when its leader was the
//! replica that lost its disk: with two replicas, the survivor needs this
//! replica's vote, and this replica's log can only come from a leader.
//! A follower whose leader probes it learns that its leader lost its disk
//! (it leads nothing any more) and turns its election timer back on
//! ([`Recovery::leader_gone`]), as it would had the leader's broker
//! stopped.
//!
//! It accepts entries and snapshots only once the target is known, and only
//! from a leader whose term is at least the target's vote term: before the
//! disk was lost it may have followed (or voted for) a leader of any term up
//! to that one, and as such a follower it would have refused an older one.
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

/// A log position as Raft orders logs: by the term of the last entry, then
/// by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct LogPos {
    /// The term of the leader that proposed the entry.
    pub term: u64,
    /// The entry's index.
    pub index: u64,
}

impl LogPos {
    /// The position of entry `index` of term `term`.
    pub fn new(term: u64, index: u64) -> Self {
        Self { term, index }
    }
}

/// What one replica reports of itself to a recovering peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplicaState {
    /// The term of its vote.
    pub vote_term: u64,
    /// Its last log id (`None`: an empty log).
    pub last_log: Option<LogPos>,
}

/// What a recovering replica must reach, from the voters' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Target {
    /// The largest vote term.
    pub vote_term: u64,
    /// The largest last log index (`None`: every answering log is empty).
    pub last_index: Option<u64>,
    /// The most up-to-date last log id (by term, then index).
    pub last_log: Option<LogPos>,
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

/// The target from the answers: the largest vote term, the largest last
/// log index, the most up-to-date last log id.
pub fn target_of(answers: &[ReplicaState]) -> Target {
    Target {
        vote_term: answers.iter().map(|a| a.vote_term).max().unwrap_or(0),
        last_index: answers.iter().filter_map(|a| a.last_log.map(|l| l.index)).max(),
        last_log: answers.iter().filter_map(|a| a.last_log).max(),
    }
}

/// Whether a replica whose last applied entry is `applied` holds every
/// entry of `target`'s logs that may have been committed: its applied (so
/// committed) log is at least as up to date as the most up-to-date
/// answering voter's, which holds every committed entry any answerer holds
/// (Raft's election restriction, again). Not "applied up to the largest
/// index": an answerer's uncommitted tail (a stale leader's) may be cut
/// later, and an idle group would never reach that index.
///
/// A target whose voters hold nothing past index 0 is reached at once:
/// index 0 is the membership entry each initial replica writes itself when
/// a group is initialized, and a leader's first entry is index 1, so no
/// leader ever committed anything there. Without this rule a replica of a
/// group created while its broker caught up could wait forever: its log
/// fills only from a leader, and the group's other replica needs its vote
/// to become one.
fn log_reached(t: Target, applied: Option<LogPos>) -> bool {
    // `None < Some(_)`: an empty log reaches only an empty target.
    applied >= t.last_log || t.last_index <= Some(0)
}

/// Whether a replica whose last applied entry is `applied` and whose vote
/// is of term `vote_term` has reached `target` (`None`: not known yet).
pub fn caught_up(target: Option<Target>, applied: Option<LogPos>, vote_term: u64) -> bool {
    let Some(t) = target else { return false };
    log_reached(t, applied) && vote_term >= t.vote_term
}

#[derive(Debug, Default)]
struct State {
    /// Recovering groups and, once enough voters answered, their target.
    recovering: HashMap<GroupId, Option<Target>>,
    /// Groups whose leader, as a follower here knows it, probed this
    /// broker: that leader lost its disk and leads nothing any more.
    lost_leaders: HashSet<(GroupId, NodeId)>,
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
    pub fn target(&self, group: GroupId) -> Option<Target> {
        self.state.lock().expect("recovery lock").recovering.get(&group).copied().flatten()
    }

    /// Records `group`'s target (from [`target_of`]); the first one stays.
    pub fn set_target(&self, group: GroupId, target: Target) {
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
    pub fn still_recovering(&self, group: GroupId, applied: Option<LogPos>, vote_term: u64) -> bool {
        let mut state = self.state.lock().expect("recovery lock");
        let Some(target) = state.recovering.get(&group).copied() else { return false };
        if group != GroupId::METADATA && caught_up(target, applied, vote_term) {
            state.recovering.remove(&group);
            tracing::info!(%group, ?target, ?applied, "replica caught up after a lost disk; it votes again");
            return false;
        }
        true
    }

    /// Whether a vote (or pre-vote) request of term `request_term` from a
    /// candidate whose last log id is `candidate_last` may reach the replica
    /// of `group`, which has applied up to `applied` and whose vote is of
    /// term `vote_term`. A replica not recovering decides as usual. A
    /// recovering one must not help elect a candidate that lacks what it
    /// helped commit: the candidate's log must be at least as up to date as
    /// every answering voter's (Raft's election restriction on their
    /// behalf), or this replica must hold the target's log itself (openraft
    /// then compares the candidate with it). Its vote may be older than the
    /// target's term, and it could have voted in any term up to that one
    /// before its disk was lost, so it answers only requests of a later
    /// term. Granting one raises its vote past the target; once it has the
    /// log too, it has caught up.
    pub fn admits_vote(
        &self,
        group: GroupId,
        applied: Option<LogPos>,
        vote_term: u64,
        request_term: u64,
        candidate_last: Option<LogPos>,
    ) -> bool {
        if !self.still_recovering(group, applied, vote_term) {
            return true;
        }
        match self.target(group) {
            Some(t) => (log_reached(t, applied) || candidate_last >= t.last_log) && request_term > t.vote_term,
            None => false,
        }
    }

    /// Whether entries or a snapshot from a leader of term `leader_term` may
    /// reach the replica of `group` (applied up to `applied`, vote of term
    /// `vote_term`). A recovering replica takes them only once its target
    /// is known and only from a leader of the target's vote term or later:
    /// it may have followed such a leader before its disk was lost, and
    /// would then have refused an older one.
    pub fn admits_leader(&self, group: GroupId, applied: Option<LogPos>, vote_term: u64, leader_term: u64) -> bool {
        if !self.still_recovering(group, applied, vote_term) {
            return true;
        }
        self.target(group).is_some_and(|t| leader_term >= t.vote_term)
    }

    /// A follower of `group` here learnt that `leader`, the leader it
    /// follows, leads it no more: it lost its disk (the leader probed it),
    /// or its Raft core for the group stopped (its broker heartbeat listed
    /// the group). Until the group has another leader, the follower's
    /// election timer must run even though the leader's broker is live (see
    /// [`crate::quiesce`]).
    pub fn leader_gone(&self, group: GroupId, leader: NodeId) {
        self.state.lock().expect("recovery lock").lost_leaders.insert((group, leader));
    }

    /// Whether `leader`, the leader a follower of `group` here follows, lost
    /// its disk; forgets what it knew of `group`'s other leaders (the group
    /// elected another since).
    pub fn is_lost_leader(&self, group: GroupId, leader: Option<NodeId>) -> bool {
        let mut state = self.state.lock().expect("recovery lock");
        if state.lost_leaders.is_empty() {
            return false;
        }
        state.lost_leaders.retain(|(g, l)| *g != group || Some(*l) == leader);
        leader.is_some_and(|l| state.lost_leaders.contains(&(group, l)))
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
        state.lost_leaders.retain(|(g, _)| *g != group);
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

    /// An applied position: entry `index` of term `term`.
    fn at(term: u64, index: u64) -> Option<LogPos> {
        Some(LogPos::new(term, index))
    }

    /// A target of vote term `vote_term` whose voters' logs end at `last`
    /// (term, index), the most up-to-date being the longest.
    fn target(vote_term: u64, last: Option<(u64, u64)>) -> Target {
        Target { vote_term, last_index: last.map(|(_, i)| i), last_log: last.map(|(t, i)| LogPos::new(t, i)) }
    }

    fn pos(term: u64, index: u64) -> Option<LogPos> {
        Some(LogPos::new(term, index))
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
    fn the_target_is_the_largest_term_and_index_and_the_most_up_to_date_log() {
        let answers = [
            ReplicaState { vote_term: 5, last_log: pos(5, 100) },
            ReplicaState { vote_term: 6, last_log: pos(6, 90) },
            ReplicaState { vote_term: 5, last_log: None },
        ];
        let t = target_of(&answers);
        assert_eq!(t.vote_term, 6);
        assert_eq!(t.last_index, Some(100));
        // Raft orders logs by the last entry's term first: (6, 90) is more
        // up to date than (5, 100).
        assert_eq!(t.last_log, pos(6, 90));
        assert_eq!(target_of(&[]), Target::default());
    }

    #[test]
    fn a_group_not_marked_never_recovers() {
        let r = Recovery::new();
        assert!(!r.is_recovering(G));
        assert!(!r.still_recovering(G, None, 0));
        r.set_target(G, target(3, Some((3, 10))));
        assert_eq!(r.target(G), None);
        assert!(r.admits_leader(G, None, 0, 1));
    }

    #[test]
    fn recovery_needs_the_voters_log_and_term() {
        let r = Recovery::new();
        r.start(G);
        // No answers yet: not caught up, whatever was applied.
        assert!(r.still_recovering(G, at(6, 1_000), 9));
        r.set_target(G, target(6, Some((6, 100))));
        // A later target does not replace the first.
        r.set_target(G, target(9, Some((9, 1_000))));
        assert_eq!(r.target(G), Some(target(6, Some((6, 100)))));
        // Behind the voters' logs.
        assert!(r.still_recovering(G, None, 6));
        assert!(r.still_recovering(G, at(6, 99), 6));
        // The log, but a vote of an older term (it might vote twice).
        assert!(r.still_recovering(G, at(6, 100), 5));
        assert!(r.is_recovering(G));
        // Both: caught up, votes again.
        assert!(!r.still_recovering(G, at(6, 100), 6));
        assert!(!r.is_recovering(G));
    }

    #[test]
    fn a_recovering_replica_admits_only_votes_past_the_target_once_it_has_the_log() {
        let r = Recovery::new();
        r.start(G);
        // No target yet: nothing, whatever the candidate holds.
        assert!(!r.admits_vote(G, at(6, 100), 0, 50, pos(49, 1_000)));
        r.set_target(G, target(6, Some((6, 100))));
        // Behind the voters' logs, and so is the candidate: not even a
        // later term.
        assert!(!r.admits_vote(G, at(6, 99), 0, 7, pos(6, 99)));
        assert!(!r.admits_vote(G, at(6, 99), 0, 7, None));
        // The log, a vote of an older term: a request of the target's term
        // or before could be one it already answered differently.
        assert!(!r.admits_vote(G, at(6, 100), 0, 6, pos(6, 100)));
        assert!(r.admits_vote(G, at(6, 100), 0, 7, None), "it holds the log: openraft compares");
        assert!(r.is_recovering(G), "admitting a vote is not catching up");
        // Its vote reached the target's term: recovered, decides as usual.
        assert!(r.admits_vote(G, at(6, 100), 6, 1, None));
        assert!(!r.is_recovering(G));
    }

    #[test]
    fn a_candidate_as_up_to_date_as_every_answering_voter_is_admitted_without_the_log() {
        // The leader lost its disk; the group's other replica, which has
        // the whole log, campaigns in a later term. This replica has
        // nothing, and only a leader could bring it the log.
        let r = Recovery::new();
        r.start(G);
        r.set_target(G, target(4, Some((4, 500))));
        assert!(r.admits_vote(G, None, 0, 5, pos(4, 500)));
        assert!(r.admits_vote(G, None, 0, 5, pos(5, 3)), "a later last term is more up to date");
        // Less up to date than an answering voter: it may lack a
        // committed entry.
        assert!(!r.admits_vote(G, None, 0, 5, pos(4, 499)));
        assert!(!r.admits_vote(G, None, 0, 5, pos(3, 900)));
        assert!(!r.admits_vote(G, None, 0, 5, None));
        // Up to date, but of a term it may have voted in already.
        assert!(!r.admits_vote(G, None, 0, 4, pos(4, 500)));
        assert!(r.is_recovering(G));
    }

    #[test]
    fn an_answering_voter_s_uncommitted_tail_need_not_be_reached() {
        // A stale ex-leader answered with a long uncommitted tail of term
        // 5; the term-6 leader's shorter log is the most up to date, and
        // the tail will be cut: reaching the term-6 log is enough.
        let answers = [
            ReplicaState { vote_term: 5, last_log: pos(5, 227) },
            ReplicaState { vote_term: 6, last_log: pos(6, 110) },
        ];
        let t = target_of(&answers);
        assert_eq!(t.last_index, Some(227));
        assert!(!caught_up(Some(t), at(6, 109), 6));
        assert!(caught_up(Some(t), at(6, 110), 6));
        // An entry of a later leader is past both.
        assert!(caught_up(Some(t), at(7, 100), 7));
        // Index alone is not enough: a long log of an older term may lack
        // the term-6 leader's committed entries.
        assert!(!caught_up(Some(t), at(5, 227), 6));
    }

    #[test]
    fn a_recovering_replica_takes_entries_only_from_a_leader_as_recent_as_its_target() {
        let r = Recovery::new();
        r.start(G);
        // Before the voters answered, any leader may be a stale one.
        assert!(!r.admits_leader(G, None, 0, 9));
        r.set_target(G, target(6, Some((6, 100))));
        // A leader of term 5, cut off from the term-6 one, is refused...
        assert!(!r.admits_leader(G, None, 0, 5));
        // ... the term-6 leader and later ones are not.
        assert!(r.admits_leader(G, None, 0, 6));
        assert!(r.admits_leader(G, at(6, 50), 6, 7));
        assert!(r.is_recovering(G));
        // Caught up: any leader, as Raft decides.
        assert!(r.admits_leader(G, at(6, 100), 6, 1));
        assert!(!r.is_recovering(G));
    }

    #[test]
    fn a_follower_forgets_a_lost_leader_once_the_group_elects_another() {
        let r = Recovery::new();
        assert!(!r.is_lost_leader(G, Some(3)));
        r.leader_gone(G, 3);
        assert!(r.is_lost_leader(G, Some(3)));
        assert!(!r.is_lost_leader(GroupId(8), Some(3)), "another group");
        // Another leader since: forgotten, also if 3 leads again later.
        assert!(!r.is_lost_leader(G, Some(2)));
        assert!(!r.is_lost_leader(G, Some(3)));
        r.leader_gone(G, 3);
        r.forget(G);
        assert!(!r.is_lost_leader(G, Some(3)));
    }

    #[test]
    fn a_new_group_whose_other_replica_waits_for_this_vote_elects_a_leader() {
        // The group's other replica initialized it (index 0, the membership
        // entry it wrote itself) and campaigned in term 1 with its own vote.
        let r = Recovery::new();
        r.start(G);
        r.set_target(G, target(1, Some((0, 0))));
        // This replica has nothing applied: the log half is met (nothing was
        // ever committed by a leader), the term half is not.
        assert!(!r.admits_vote(G, None, 0, 1, pos(0, 0)), "term 1: it may have voted in it before");
        assert!(r.admits_vote(G, None, 0, 2, pos(0, 0)), "the next campaign is admitted");
        assert!(r.still_recovering(G, None, 0));
        // Once its vote is of term 2 (granted), it has caught up.
        assert!(!r.still_recovering(G, None, 2));
    }

    #[test]
    fn empty_voters_make_an_empty_target() {
        // Every answering voter is empty too (nothing was committed).
        assert!(caught_up(Some(target(0, None)), None, 0));
        // Index 0 only (the membership entry of initialize()): nothing
        // committed either.
        assert!(caught_up(Some(target(0, Some((0, 0)))), None, 0));
        assert!(!caught_up(Some(target(0, Some((1, 1)))), None, 1));
        assert!(!caught_up(Some(target(0, Some((1, 1)))), at(1, 0), 1));
        assert!(!caught_up(None, at(6, 1), 1));
    }

    #[test]
    fn the_metadata_group_recovers_only_when_told_and_decides_the_partitions() {
        let r = Recovery::new();
        r.start(GroupId::METADATA);
        r.set_target(GroupId::METADATA, target(3, Some((3, 40))));
        // Caught up, but the metadata group waits for finish_metadata
        // (which records the held groups at that point).
        assert!(r.still_recovering(GroupId::METADATA, at(3, 50), 3));
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
