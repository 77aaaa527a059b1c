//! Keeping idle partitions cheap, and leaders where placement wants them.
//!
//! openraft drives every group with its own ticker (every ~50 ms at our
//! 250 ms heartbeat) and every leader heartbeats each follower on its own:
//! with 1,000 replicas per broker that is ~20,000 ticks and ~2,700 RPCs per
//! second per broker while nothing is produced. This module owns the fix:
//!
//! - **Broker heartbeats.** Every broker sends one small `Raft.Heartbeat` RPC
//!   to each peer every `raft_heartbeat_ms` ([`crate::config::Timings`]), whatever the number of
//!   groups. The transport records when each peer was last heard from (any
//!   message counts).
//! - **Quiescing.** A partition group's ticker is switched off (no Raft
//!   heartbeats, no election timer) when it is idle:
//!   - on the leader, once the log has not grown for `quiesce_after_ms` (long
//!     enough for followers to learn the final commit index from the last
//!     heartbeats) and every follower has matched the whole log and is live;
//!   - on a follower, while the broker of the leader it follows is live.
//!
//!   A produce wakes the leader's group at once ([`crate::groups::Replica::wake`]);
//!   replication itself is event driven and does not need the ticker, the
//!   ticker only carries the commit index to followers and drives elections.
//!   When a leader's broker stops sending (killed, partitioned away), its
//!   followers turn their tickers back on after the liveness timeout
//!   ([`crate::liveness`])
//!   and, their election timers long expired, elect a new leader at once.
//!
//!   Safety does not depend on any of this: timers only decide *when* Raft
//!   campaigns or heartbeats, never what it commits. A wrong decision here
//!   can delay a failover, never lose or reorder a record.
//! - **Preferred leaders.** Placement names each partition's preferred leader
//!   (its first replica) so that leaders spread evenly. After a failover the
//!   leadership stays where the election put it; once the preferred replica
//!   is live and has matched the whole log for `preferred_leader_delay_ms`,
//!   the current leader hands leadership back (as Kafka's
//!   `auto.leader.rebalance.enable` does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio_util::sync::CancellationToken;

use crate::groups::Groups;
use crate::groups::Replica;

/// Longest wait for one broker heartbeat RPC.
const HEARTBEAT_RPC_TIMEOUT: Duration = Duration::from_millis(500);

/// What the quiescer remembers about one local group between rounds.
#[derive(Debug)]
struct Seen {
    last_log: Option<u64>,
    active_at: Instant,
    leader: Option<NodeId>,
    leader_since: Instant,
}

/// The decision for one group in one round: pure, so it is unit-tested.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the group's ticker should run.
    pub tick: bool,
    /// Hand leadership to this replica.
    pub transfer_to: Option<NodeId>,
}

/// What [`decide`] looks at for one group.
pub struct View<'a> {
    /// This broker.
    pub me: NodeId,
    /// The group's Raft role here.
    pub state: ServerState,
    /// The leader this replica follows (or itself).
    pub leader: Option<NodeId>,
    /// Last log index here.
    pub last_log: Option<u64>,
    /// On a leader: each follower's matched index.
    pub matched: Vec<(NodeId, Option<u64>)>,
    /// The preferred leader (first replica of the placement).
    pub preferred: Option<NodeId>,
    /// Time since the log last grew or a produce woke the group.
    pub idle_for: Duration,
    /// Time since the current leader took over (as seen here).
    pub leader_for: Duration,
    /// Whether a peer broker is live.
    pub is_live: &'a dyn Fn(NodeId) -> bool,
    /// Whether the leader this follower follows leads nothing any more,
    /// live as its broker is: it lost its disk (it probed this replica:
    /// crate::recovery), or its Raft core for this group stopped (its
    /// broker heartbeats say so).
    pub leader_gone: bool,
    /// Idle time after which a caught-up leader stops ticking
    /// (`quiesce_after_ms`).
    pub quiesce_after: Duration,
    /// How long a preferred replica must wait before leadership moves back
    /// to it (`preferred_leader_delay_ms`).
    pub preferred_leader_delay: Duration,
}

impl std::fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("me", &self.me)
            .field("state", &self.state)
            .field("leader", &self.leader)
            .field("last_log", &self.last_log)
            .field("matched", &self.matched)
            .field("preferred", &self.preferred)
            .field("idle_for", &self.idle_for)
            .field("leader_for", &self.leader_for)
            .finish_non_exhaustive()
    }
}

/// Decides whether a group ticks and whether its leader hands leadership to
/// the preferred replica.
pub fn decide(v: &View<'_>) -> Decision {
    if v.state == ServerState::Leader {
        let caught_up = |id: NodeId| v.matched.iter().any(|(f, m)| *f == id && *m == v.last_log);
        let all_caught_up = v.matched.iter().all(|(f, m)| *m == v.last_log && (v.is_live)(*f));
        let tick = !(all_caught_up && v.idle_for >= v.quiesce_after);
        let transfer_to = v
            .preferred
            .filter(|p| *p != v.me && v.leader_for >= v.preferred_leader_delay && (v.is_live)(*p) && caught_up(*p));
        return Decision { tick, transfer_to };
    }
    // A follower needs its election timer only when the leader's broker is
    // gone or the leader is (lost its disk, its core stopped), or no leader
    // is known, or it is still itself after a restart.
    let tick = match v.leader {
        Some(l) if l != v.me => !(v.is_live)(l) || v.leader_gone,
        _ => true,
    };
    Decision { tick, transfer_to: None }
}

/// Runs until `shutdown`: broker heartbeats, quiescing (unless `quiesce` is
/// false: tickers then always run), preferred leaders.
pub async fn run(groups: Arc<Groups>, quiesce: bool, shutdown: CancellationToken) {
    let me = groups.node_id();
    let mut seen: HashMap<GroupId, Seen> = HashMap::new();
    let mut interval = tokio::time::interval(groups.timings().raft_heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        send_heartbeats(&groups);
        let now = Instant::now();
        let replicas = groups.replicas();
        seen.retain(|g, _| replicas.iter().any(|r| r.group == *g));
        for r in replicas {
            round(&groups, me, &r, &mut seen, now, quiesce).await;
        }
    }
    // Stopping: let every group tick again so a hand-off or a final
    // heartbeat is not held back by a parked ticker.
    for r in groups.replicas() {
        r.set_ticking(true);
    }
}

/// One broker heartbeat to every peer, without waiting for the answers.
fn send_heartbeats(groups: &Arc<Groups>) {
    let Some(meta) = groups.meta() else { return };
    let me = groups.node_id();
    let peers: Vec<(NodeId, String)> = {
        let state = meta.state.borrow();
        state
            .membership
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    let applied = meta.state.borrow().last_applied.map(|l| l.index).unwrap_or(0);
    for (peer, addr) in peers {
        let transport = groups.transport().clone();
        // Each task ends within HEARTBEAT_RPC_TIMEOUT (two rounds), so at
        // most two heartbeats per peer are ever in flight.
        tokio::spawn(async move { transport.send_heartbeat(peer, &addr, HEARTBEAT_RPC_TIMEOUT, applied).await });
    }
}

async fn round(
    groups: &Groups,
    me: NodeId,
    r: &Arc<Replica>,
    seen: &mut HashMap<GroupId, Seen>,
    now: Instant,
    quiesce: bool,
) {
    let m = r.raft.metrics().borrow_watched().clone();
    // A normal shutdown (`Fatal::Stopped`: the replica is being removed or
    // the broker stops) is not a failure to tell the other replicas about.
    if let Err(e) = &m.running_state
        && !matches!(e, openraft::error::Fatal::Stopped)
    {
        // This replica's Raft core stopped (a storage error on the group, a
        // corrupt value) while the broker runs on: its followers, parked
        // while this broker heartbeats, must hear that it leads no more.
        if groups.transport().mark_stopped(r.group) {
            tracing::error!(
                node = me,
                topic = r.topic,
                partition = r.partition,
                error = %e,
                "this replica's Raft core stopped: telling the other replicas to elect without it (restart the broker \
                 to bring the replica back)"
            );
        }
        return;
    }
    let s = seen.entry(r.group).or_insert(Seen {
        last_log: m.last_log_index,
        active_at: now,
        leader: m.current_leader,
        leader_since: now,
    });
    if m.last_log_index != s.last_log || r.take_woken() {
        s.last_log = m.last_log_index;
        s.active_at = now;
    }
    if m.current_leader != s.leader {
        s.leader = m.current_leader;
        s.leader_since = now;
    }
    let liveness = groups.liveness();
    let is_live = |id: NodeId| liveness.is_live(id);
    let matched = m
        .replication
        .as_ref()
        .map(|repl| {
            repl.iter().filter(|(id, _)| **id != me).map(|(id, l)| (*id, l.as_ref().map(|l| l.index))).collect()
        })
        .unwrap_or_default();
    let d = decide(&View {
        me,
        state: m.state,
        leader: m.current_leader,
        last_log: m.last_log_index,
        matched,
        preferred: r.replicas.first().copied(),
        idle_for: now.saturating_duration_since(s.active_at),
        leader_for: now.saturating_duration_since(s.leader_since),
        is_live: &is_live,
        leader_gone: m.state != ServerState::Leader
            && groups.transport().recovery().is_lost_leader(r.group, m.current_leader),
        quiesce_after: groups.timings().quiesce_after,
        preferred_leader_delay: groups.timings().preferred_leader_delay,
    });
    r.set_ticking(d.tick || !quiesce);
    if let Some(to) = d.transfer_to {
        // Throttle: at most one attempt per preferred_leader_delay.
        s.leader_since = now;
        // A transfer needs the ticker (heartbeats carry it along).
        r.set_ticking(true);
        s.active_at = now;
        match r.raft.trigger().transfer_leader(to).await {
            Ok(()) => tracing::info!(
                node = me,
                topic = r.topic,
                partition = r.partition,
                to,
                "handing leadership back to the preferred replica"
            ),
            Err(e) => {
                tracing::warn!(node = me, topic = r.topic, partition = r.partition, to, error = %e, "preferred-leader transfer failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIESCE_AFTER: Duration = Duration::from_secs(2);
    const PREFERRED_LEADER_DELAY: Duration = Duration::from_secs(10);

    fn view<'a>(live: &'a dyn Fn(NodeId) -> bool) -> View<'a> {
        View {
            me: 1,
            state: ServerState::Leader,
            leader: Some(1),
            last_log: Some(10),
            matched: vec![(2, Some(10)), (3, Some(10))],
            preferred: Some(1),
            idle_for: QUIESCE_AFTER,
            leader_for: Duration::ZERO,
            is_live: live,
            leader_gone: false,
            quiesce_after: QUIESCE_AFTER,
            preferred_leader_delay: PREFERRED_LEADER_DELAY,
        }
    }

    #[test]
    fn idle_caught_up_leader_quiesces() {
        let live = |_| true;
        assert_eq!(decide(&view(&live)), Decision { tick: false, transfer_to: None });
    }

    #[test]
    fn leader_keeps_ticking_while_active_lagging_or_a_follower_is_down() {
        let live = |_| true;
        let mut v = view(&live);
        v.idle_for = QUIESCE_AFTER - Duration::from_millis(1);
        assert!(decide(&v).tick, "recently active");
        let mut v = view(&live);
        v.matched[1].1 = Some(9);
        assert!(decide(&v).tick, "a follower lags");
        let dead3 = |id| id != 3;
        assert!(decide(&view(&dead3)).tick, "a follower's broker is down");
    }

    #[test]
    fn follower_ticks_only_without_a_live_leader() {
        let live = |_| true;
        let mut v = view(&live);
        v.state = ServerState::Follower;
        v.leader = Some(2);
        assert!(!decide(&v).tick, "leader's broker live: no election timer needed");
        let dead2 = |id| id != 2;
        let mut v = view(&dead2);
        v.state = ServerState::Follower;
        v.leader = Some(2);
        assert!(decide(&v).tick, "leader's broker down: must be able to elect");
        let mut v = view(&live);
        v.state = ServerState::Follower;
        v.leader = Some(2);
        v.leader_gone = true;
        assert!(decide(&v).tick, "leader's broker live but it lost its disk: must be able to elect");
        let mut v = view(&live);
        v.state = ServerState::Follower;
        v.leader = None;
        assert!(decide(&v).tick, "no leader known");
        let mut v = view(&live);
        v.state = ServerState::Follower;
        v.leader = Some(1);
        assert!(decide(&v).tick, "restarted former leader must be able to campaign");
        let mut v = view(&live);
        v.state = ServerState::Candidate;
        v.leader = None;
        assert!(decide(&v).tick);
    }

    #[test]
    fn leadership_returns_to_a_live_caught_up_preferred_replica_after_the_delay() {
        let live = |_| true;
        let mut v = view(&live);
        v.preferred = Some(2);
        assert_eq!(decide(&v).transfer_to, None, "leadership too recent");
        v.leader_for = PREFERRED_LEADER_DELAY;
        assert_eq!(decide(&v).transfer_to, Some(2));
        v.matched[0].1 = Some(9);
        assert_eq!(decide(&v).transfer_to, None, "preferred replica lags");
        let dead2 = |id| id != 2;
        let mut v = view(&dead2);
        v.preferred = Some(2);
        v.leader_for = PREFERRED_LEADER_DELAY;
        assert_eq!(decide(&v).transfer_to, None, "preferred replica's broker is down");
        let mut v = view(&live);
        v.leader_for = PREFERRED_LEADER_DELAY;
        assert_eq!(decide(&v).transfer_to, None, "already the preferred leader");
    }
}
