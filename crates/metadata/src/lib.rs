//! The cluster metadata state machine, with no IO.
//!
//! The metadata Raft group replicates [`MetaCommand`]s; every broker applies
//! them in log order to its [`ClusterState`] and gets the same
//! [`MetaOutcome`]. This crate decides: names, limits, replica placement and
//! the allocation of partition Raft group ids. Persisting and serving the
//! state is ferrolog-raft's and the broker's job.
//!
//! Brokers are not registered here: the set of brokers is the membership of
//! the metadata Raft group (voters and learners), which the proposer passes
//! into commands that need it, so that applying stays deterministic.
//!
//! Invariants:
//! - topic names are unique and valid (see [`validate_topic_name`]);
//! - group ids are allocated from `next_group_id`, which only grows, so a
//!   group id is never reused, even after its topic is deleted;
//! - every partition has `replication_factor` distinct replicas;
//! - producer ids are allocated from `next_producer_id`, which only grows
//!   and is replicated and persisted, so an id is never handed out twice,
//!   even across restarts of the whole cluster; a named producer keeps its
//!   id and gets a strictly higher epoch each time it initializes.

pub mod groups;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use serde::Deserialize;
use serde::Serialize;

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;
/// Default `max.message.bytes`: the largest batch a topic accepts (1 MiB, as Kafka).
pub use ferrolog_types::limits::DEFAULT_MAX_MESSAGE_BYTES;
/// The largest `max.message.bytes` a topic may be given.
pub use ferrolog_types::limits::MAX_MESSAGE_BYTES_LIMIT;

/// Per-topic configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// `retention.ms`; `None` = keep forever.
    pub retention_ms: Option<i64>,
    /// `retention.bytes` per partition; `None` = unlimited.
    pub retention_bytes: Option<i64>,
    /// `max.message.bytes`.
    pub max_message_bytes: u32,
}

/// One partition's placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    /// The partition's Raft group.
    pub group: GroupId,
    /// Brokers holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Configuration.
    pub config: TopicConfig,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionAssignment>,
}

/// Everything the metadata group knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Topics by name.
    pub topics: BTreeMap<String, Topic>,
    /// The next partition group id to hand out (group 0 is the metadata group).
    pub next_group_id: u64,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
    /// Named producers: name -> (id, current epoch).
    pub named_producers: BTreeMap<String, (i64, i32)>,
    /// Current epoch of each named producer's id (for fencing checks).
    pub producer_epochs: BTreeMap<i64, i32>,
    /// Consumer groups by name.
    pub groups: BTreeMap<String, groups::Group>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            topics: BTreeMap::new(),
            next_group_id: 1,
            next_producer_id: 0,
            named_producers: BTreeMap::new(),
            producer_epochs: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// A replicated metadata command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create a topic, placing replicas on `brokers` (the metadata group's
    /// members when the command was proposed, sorted).
    CreateTopic {
        /// Topic name.
        name: String,
        /// Number of partitions.
        partitions: u32,
        /// Replicas per partition.
        replication_factor: u32,
        /// Configuration.
        config: TopicConfig,
        /// Brokers to place on.
        brokers: Vec<NodeId>,
    },
    /// Delete a topic and, on every broker, its partitions' data.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Allocate a producer id (and epoch), or raise a named producer's epoch.
    InitProducer {
        /// Stable producer name, if any.
        name: Option<String>,
    },
    /// A consumer-group command.
    Group {
        /// Group name.
        group: String,
        /// The command.
        cmd: groups::GroupCommand,
    },
    /// Delete a consumer group (it must have no members).
    DeleteGroup {
        /// Group name.
        group: String,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The topic was created.
    TopicCreated(Topic),
    /// The topic was deleted.
    TopicDeleted(String),
    /// Refused; the state is unchanged.
    Rejected(MetaError),
    /// A producer id and epoch.
    ProducerInitialized {
        /// Producer id.
        id: i64,
        /// Its epoch.
        epoch: i32,
    },
    /// What a group command did.
    Group(Result<Option<groups::HeartbeatReply>, groups::GroupError>),
}

/// The answer one kind of command gets out of the outcome of applying it.
///
/// A proposer names the answer it expects (`propose::<Topic>(CreateTopic)`)
/// and gets that type back: this is the one place an outcome is matched
/// against the kind of command it answers (the broker takes refusals,
/// [`MetaOutcome::Rejected`] and group errors, out first).
pub trait Answer: Sized {
    /// The answer, or back the outcome when it is of another kind of
    /// command, which applying never gives: each kind of command has its own
    /// outcome variant (`every_command_kind_gets_its_answer` below).
    fn from_outcome(outcome: MetaOutcome) -> Result<Self, MetaOutcome>;
}

/// [`MetaCommand::CreateTopic`] answers the created topic.
impl Answer for Topic {
    fn from_outcome(outcome: MetaOutcome) -> Result<Self, MetaOutcome> {
        match outcome {
            MetaOutcome::TopicCreated(t) => Ok(t),
            other => Err(other),
        }
    }
}

/// [`MetaCommand::DeleteTopic`]'s answer: the topic is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDeleted(pub String);

impl Answer for TopicDeleted {
    fn from_outcome(outcome: MetaOutcome) -> Result<Self, MetaOutcome> {
        match outcome {
            MetaOutcome::TopicDeleted(name) => Ok(TopicDeleted(name)),
            other => Err(other),
        }
    }
}

/// [`MetaCommand::InitProducer`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerId {
    /// Producer id.
    pub id: i64,
    /// Its epoch.
    pub epoch: i32,
}

impl Answer for ProducerId {
    fn from_outcome(outcome: MetaOutcome) -> Result<Self, MetaOutcome> {
        match outcome {
            MetaOutcome::ProducerInitialized { id, epoch } => Ok(ProducerId { id, epoch }),
            other => Err(other),
        }
    }
}

/// The answer of [`MetaCommand::Group`] and [`MetaCommand::DeleteGroup`]:
/// a heartbeat's reply (`None` for the other group commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAnswer(pub Option<groups::HeartbeatReply>);

impl Answer for GroupAnswer {
    fn from_outcome(outcome: MetaOutcome) -> Result<Self, MetaOutcome> {
        match outcome {
            MetaOutcome::Group(Ok(reply)) => Ok(GroupAnswer(reply)),
            other => Err(other),
        }
    }
}

/// Why a metadata command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    /// A name that is not allowed.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The topic exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// More replicas asked for than there are brokers.
    #[error("replication factor {requested} is larger than the number of brokers ({brokers})")]
    NotEnoughBrokers {
        /// Asked for.
        requested: u32,
        /// Available.
        brokers: usize,
    },
}

/// Checks a topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), MetaError> {
    let bad = |reason: &str| Err(MetaError::InvalidName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("character {c:?} is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')"));
    }
    Ok(())
}

/// Checks a create request against what can be known without the state.
pub fn validate_create(name: &str, partitions: u32, replication_factor: u32, brokers: usize) -> Result<(), MetaError> {
    validate_topic_name(name)?;
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(MetaError::InvalidArgument(format!("partitions must be 1..={MAX_PARTITIONS}, got {partitions}")));
    }
    if replication_factor == 0 {
        return Err(MetaError::InvalidArgument("replication factor must be at least 1".into()));
    }
    if replication_factor as usize > brokers {
        return Err(MetaError::NotEnoughBrokers { requested: replication_factor, brokers });
    }
    Ok(())
}

/// One separately persisted part of the [`ClusterState`]: the store keeps
/// a value per key, so that applying a command rewrites only what it
/// changed (an offset commit writes one small value, not the cluster).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateKey {
    /// `next_group_id` and `next_producer_id`.
    Counters,
    /// A topic (its config and placement).
    Topic(String),
    /// A named producer's id and epoch.
    NamedProducer(String),
    /// The current epoch of a producer id.
    ProducerEpoch(i64),
    /// A consumer group's members and epochs, without its offsets.
    Group(String),
    /// One committed offset of a group.
    Offset(String, groups::Tp),
}

/// What applying commands changed: the keys to rewrite (a key whose part
/// is gone is to be deleted), the groups removed whole (their offsets with
/// them), and which kind of reader to wake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys whose value changed or disappeared.
    pub keys: BTreeSet<StateKey>,
    /// Groups removed (every offset of theirs is gone), in the order they
    /// were removed; a group may be created again after its removal.
    pub removed_groups: Vec<String>,
    /// Topics or placement changed: the reconciler must look.
    pub placement: bool,
    /// Consumer groups or offsets changed.
    pub groups: bool,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.removed_groups.is_empty() && !self.placement && !self.groups
    }
}

impl ClusterState {
    fn allocate_producer_id(&mut self, changes: &mut Changes) -> i64 {
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        changes.keys.insert(StateKey::Counters);
        id
    }

    /// Removes every group's committed offsets of the deleted `topic`: a
    /// topic created again under that name starts with no commits (its
    /// consumers follow their reset policy from its first record instead of
    /// starting at the old, high offsets, which "never backwards" would
    /// otherwise keep over every lower commit). A group left with neither
    /// members nor offsets is removed.
    fn forget_offsets_of(&mut self, topic: &str, changes: &mut Changes) {
        let mut emptied = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            let gone: Vec<groups::Tp> = g.offsets.keys().filter(|(t, _)| t == topic).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            for tp in gone {
                g.offsets.remove(&tp);
                changes.keys.insert(StateKey::Offset(name.clone(), tp));
            }
            changes.groups = true;
            if g.members.is_empty() && g.offsets.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.groups.remove(&name);
            changes.removed_groups.push(name);
        }
    }

    /// Applies one committed command.
    pub fn apply(&mut self, cmd: MetaCommand) -> MetaOutcome {
        self.apply_tracked(cmd, &mut Changes::default())
    }

    /// Applies one committed command, adding what it changed to `changes`.
    /// A refused command changes nothing and adds nothing.
    pub fn apply_tracked(&mut self, cmd: MetaCommand, changes: &mut Changes) -> MetaOutcome {
        match cmd {
            MetaCommand::CreateTopic { name, partitions, replication_factor, config, brokers } => {
                if let Err(e) = validate_create(&name, partitions, replication_factor, brokers.len()) {
                    return MetaOutcome::Rejected(e);
                }
                if self.topics.contains_key(&name) {
                    return MetaOutcome::Rejected(MetaError::TopicExists(name));
                }
                let topic = self.place(name, partitions, replication_factor, config, brokers);
                self.topics.insert(topic.name.clone(), topic.clone());
                changes.keys.insert(StateKey::Counters);
                changes.keys.insert(StateKey::Topic(topic.name.clone()));
                changes.placement = true;
                MetaOutcome::TopicCreated(topic)
            }
            MetaCommand::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(_) => {
                    changes.keys.insert(StateKey::Topic(name.clone()));
                    changes.placement = true;
                    self.forget_offsets_of(&name, changes);
                    MetaOutcome::TopicDeleted(name)
                }
                None => MetaOutcome::Rejected(MetaError::UnknownTopic(name)),
            },
            MetaCommand::Group { group, cmd } => {
                if group.is_empty() || group.len() > MAX_TOPIC_NAME_LEN {
                    return MetaOutcome::Group(Err(groups::GroupError::Invalid(format!(
                        "group name must be 1..={MAX_TOPIC_NAME_LEN} bytes"
                    ))));
                }
                let topics = &self.topics;
                let partitions = |t: &str| topics.get(t).map(|t| t.partitions.len() as u32);
                // The offsets a command may change: the only ones rewritten.
                let offsets: Vec<groups::Tp> = match &cmd {
                    groups::GroupCommand::Commit { offsets, .. } => {
                        offsets.iter().map(|(tp, _, _)| tp.clone()).collect()
                    }
                    groups::GroupCommand::ResetOffsets(offsets) => offsets.iter().map(|(tp, _)| tp.clone()).collect(),
                    groups::GroupCommand::Heartbeat(_) | groups::GroupCommand::RemoveMembers(_) => Vec::new(),
                };
                let members_change = offsets.is_empty();
                let existed = self.groups.contains_key(&group);
                let g = self.groups.entry(group.clone()).or_default();
                // Group::apply changes nothing when it refuses a command.
                let r = g.apply(cmd, &partitions);
                let now_empty = g.members.is_empty() && g.offsets.is_empty();
                if now_empty {
                    self.groups.remove(&group);
                }
                if r.is_ok() {
                    changes.groups = true;
                    if members_change || !existed {
                        changes.keys.insert(StateKey::Group(group.clone()));
                    }
                    for tp in offsets {
                        changes.keys.insert(StateKey::Offset(group.clone(), tp));
                    }
                    if now_empty && existed {
                        changes.removed_groups.push(group);
                    }
                }
                MetaOutcome::Group(r)
            }
            MetaCommand::DeleteGroup { group } => match self.groups.get(&group) {
                None => MetaOutcome::Group(Err(groups::GroupError::UnknownGroup(group))),
                Some(g) if !g.members.is_empty() => {
                    MetaOutcome::Group(Err(groups::GroupError::NotEmpty(g.members.len())))
                }
                Some(_) => {
                    self.groups.remove(&group);
                    changes.keys.insert(StateKey::Group(group.clone()));
                    changes.removed_groups.push(group);
                    changes.groups = true;
                    MetaOutcome::Group(Ok(None))
                }
            },
            MetaCommand::InitProducer { name } => {
                let Some(name) = name else {
                    let id = self.allocate_producer_id(changes);
                    return MetaOutcome::ProducerInitialized { id, epoch: 0 };
                };
                if name.is_empty() || name.len() > MAX_TOPIC_NAME_LEN {
                    return MetaOutcome::Rejected(MetaError::InvalidArgument(format!(
                        "producer name must be 1..={MAX_TOPIC_NAME_LEN} bytes"
                    )));
                }
                let (id, epoch) = match self.named_producers.get(&name) {
                    // Epochs are i32 on the wire: past the last one the
                    // name moves to a fresh id.
                    Some((id, epoch)) if *epoch < i32::MAX => (*id, epoch + 1),
                    Some((old, _)) => {
                        let old = *old;
                        self.producer_epochs.remove(&old);
                        changes.keys.insert(StateKey::ProducerEpoch(old));
                        (self.allocate_producer_id(changes), 0)
                    }
                    None => (self.allocate_producer_id(changes), 0),
                };
                changes.keys.insert(StateKey::NamedProducer(name.clone()));
                changes.keys.insert(StateKey::ProducerEpoch(id));
                self.named_producers.insert(name, (id, epoch));
                self.producer_epochs.insert(id, epoch);
                MetaOutcome::ProducerInitialized { id, epoch }
            }
        }
    }

    /// Spreads replicas and preferred leaders evenly. Partition p's
    /// preferred leader is broker `(start + p) mod n`, where `start` rotates
    /// with every topic so small topics do not all lead on the same broker;
    /// its followers are the `rf - 1` other brokers holding the fewest
    /// replicas of this topic so far (ties broken by position after the
    /// leader). Every broker ends up with its fair share of replicas and of
    /// preferred leaderships, give or take one.
    fn place(
        &mut self,
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
        mut brokers: Vec<NodeId>,
    ) -> Topic {
        brokers.sort_unstable();
        brokers.dedup();
        let n = brokers.len();
        let start = self.next_group_id as usize;
        // Count every preferred leadership first, so followers go where the
        // total (leader + follower) load is lowest.
        let mut load = vec![0u32; n];
        for p in 0..partitions as usize {
            load[(start + p) % n] += 1;
        }
        let partitions = (0..partitions as usize)
            .map(|p| {
                let group = GroupId(self.next_group_id);
                self.next_group_id += 1;
                let leader = (start + p) % n;
                let mut followers: Vec<usize> = (1..n).map(|k| (leader + k) % n).collect();
                // Stable: among equally loaded brokers, the one closest after the leader.
                followers.sort_by_key(|b| load[*b]);
                followers.truncate(replication_factor as usize - 1);
                for f in &followers {
                    load[*f] += 1;
                }
                let replicas = std::iter::once(leader).chain(followers).map(|b| brokers[b]).collect();
                PartitionAssignment { group, replicas }
            })
            .collect();
        Topic { name, replication_factor, config, partitions }
    }

    /// Every partition group placed on `node`, with its topic and partition number.
    pub fn groups_on(&self, node: NodeId) -> impl Iterator<Item = (&Topic, u32, &PartitionAssignment)> {
        self.topics.values().flat_map(move |t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(move |(_, a)| a.replicas.contains(&node))
                .map(move |(i, a)| (t, i as u32, a))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn create(name: &str, p: u32, rf: u32, brokers: &[u64]) -> MetaCommand {
        MetaCommand::CreateTopic {
            name: name.into(),
            partitions: p,
            replication_factor: rf,
            config: TopicConfig { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, ..Default::default() },
            brokers: brokers.to_vec(),
        }
    }

    fn commit(s: &mut ClusterState, group: &str, tp: (&str, u32), offset: i64, changes: &mut Changes) -> MetaOutcome {
        let cmd = groups::GroupCommand::Commit {
            member_id: String::new(),
            member_epoch: 0,
            offsets: vec![((tp.0.to_string(), tp.1), offset, String::new())],
        };
        s.apply_tracked(MetaCommand::Group { group: group.into(), cmd }, changes)
    }

    /// A deleted topic's committed offsets go with it (from every group, as
    /// keys to delete on disk), so a topic created again under its name
    /// starts with no commit and takes lower ones; commits of topics or
    /// partitions that do not exist are refused.
    #[test]
    fn deleting_a_topic_forgets_its_committed_offsets() {
        let mut s = ClusterState::default();
        let mut c = Changes::default();
        s.apply(create("t", 2, 1, &[1]));
        s.apply(create("u", 1, 1, &[1]));
        for (group, tp, offset) in [("g", ("t", 0), 500), ("g", ("t", 1), 40), ("g", ("u", 0), 7), ("h", ("t", 0), 9)] {
            assert!(matches!(commit(&mut s, group, tp, offset, &mut c), MetaOutcome::Group(Ok(None))));
        }
        let mut changes = Changes::default();
        assert_eq!(
            s.apply_tracked(MetaCommand::DeleteTopic { name: "t".into() }, &mut changes),
            MetaOutcome::TopicDeleted("t".into())
        );
        let g = &s.groups["g"];
        assert_eq!(
            g.offsets.keys().cloned().collect::<Vec<_>>(),
            vec![("u".to_string(), 0)],
            "only u's offset is left"
        );
        assert!(!s.groups.contains_key("h"), "a group left with nothing is removed");
        assert_eq!(changes.removed_groups, vec!["h".to_string()]);
        assert!(changes.groups);
        for (group, p) in [("g", 0), ("g", 1), ("h", 0)] {
            assert!(changes.keys.contains(&StateKey::Offset(group.into(), ("t".into(), p))), "{group} t/{p} rewritten");
        }
        assert!(!changes.keys.contains(&StateKey::Offset("g".into(), ("u".into(), 0))), "u's offset untouched");

        let refused = commit(&mut s, "g", ("t", 0), 500, &mut Changes::default());
        assert_eq!(
            refused,
            MetaOutcome::Group(Err(groups::GroupError::UnknownPartition {
                topic: "t".into(),
                partition: 0,
                count: None
            }))
        );
        s.apply(create("t", 2, 1, &[1]));
        assert!(matches!(commit(&mut s, "g", ("t", 0), 3, &mut c), MetaOutcome::Group(Ok(None))));
        assert_eq!(
            s.groups["g"].offsets[&("t".to_string(), 0)].offset,
            3,
            "a lower commit than the old topic's applies"
        );
        let out_of_range = commit(&mut s, "g", ("t", 2), 1, &mut Changes::default());
        assert_eq!(
            out_of_range,
            MetaOutcome::Group(Err(groups::GroupError::UnknownPartition {
                topic: "t".into(),
                partition: 2,
                count: Some(2)
            }))
        );
    }

    #[test]
    fn names_are_validated() {
        for ok in ["orders", "a", "A.b_c-9", &"x".repeat(249)] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "has space", "slash/", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn create_places_distinct_replicas_and_spreads_leaders() {
        let mut s = ClusterState::default();
        let MetaOutcome::TopicCreated(t) = s.apply(create("orders", 6, 3, &[3, 1, 2])) else { panic!("created") };
        let mut leaders = BTreeMap::new();
        for a in &t.partitions {
            let mut r = a.replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "replicas distinct: {:?}", a.replicas);
            *leaders.entry(a.replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "leaders even: {leaders:?}");
        let groups: Vec<u64> = t.partitions.iter().map(|a| a.group.0).collect();
        assert_eq!(groups, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn errors_leave_the_state_unchanged_and_ids_are_never_reused() {
        let mut s = ClusterState::default();
        assert!(matches!(s.apply(create("t", 2, 1, &[1])), MetaOutcome::TopicCreated(_)));
        let before = s.clone();
        assert_eq!(s.apply(create("t", 1, 1, &[1])), MetaOutcome::Rejected(MetaError::TopicExists("t".into())));
        assert!(matches!(s.apply(create("u", 1, 2, &[1])), MetaOutcome::Rejected(MetaError::NotEnoughBrokers { .. })));
        assert!(matches!(s.apply(create("u", 0, 1, &[1])), MetaOutcome::Rejected(MetaError::InvalidArgument(_))));
        assert!(matches!(s.apply(create("b a d", 1, 1, &[1])), MetaOutcome::Rejected(MetaError::InvalidName { .. })));
        assert_eq!(s, before);
        assert_eq!(s.apply(MetaCommand::DeleteTopic { name: "t".into() }), MetaOutcome::TopicDeleted("t".into()));
        let MetaOutcome::TopicCreated(t) = s.apply(create("t", 1, 1, &[1])) else { panic!("re-created") };
        assert_eq!(t.partitions[0].group, GroupId(3), "group ids of the deleted topic are not reused");
        assert_eq!(
            s.apply(MetaCommand::DeleteTopic { name: "nope".into() }),
            MetaOutcome::Rejected(MetaError::UnknownTopic("nope".into()))
        );
    }

    proptest::proptest! {
        /// For any cluster size, replication factor and partition count:
        /// replicas of a partition are distinct, and every broker holds and
        /// preferably leads its fair share, give or take one.
        #[test]
        fn placement_is_distinct_and_even(n in 1usize..8, rf_seed in 0usize..8, partitions in 1u32..60, existing in 0u32..5) {
            let rf = (rf_seed % n + 1) as u32;
            let brokers: Vec<u64> = (1..=n as u64).map(|b| b * 10).collect();
            let mut s = ClusterState::default();
            for i in 0..existing {
                s.apply(create(&format!("pre{i}"), 3, 1, &brokers));
            }
            let MetaOutcome::TopicCreated(t) = s.apply(create("t", partitions, rf, &brokers)) else {
                panic!("valid create refused")
            };
            let mut held = std::collections::BTreeMap::new();
            let mut led = std::collections::BTreeMap::new();
            for a in &t.partitions {
                let mut r = a.replicas.clone();
                r.sort();
                r.dedup();
                proptest::prop_assert_eq!(r.len(), rf as usize);
                for b in &a.replicas {
                    *held.entry(*b).or_insert(0u32) += 1;
                }
                *led.entry(a.replicas[0]).or_insert(0u32) += 1;
            }
            let fair_held = partitions * rf / n as u32;
            let fair_led = partitions / n as u32;
            for b in &brokers {
                let h = held.get(b).copied().unwrap_or(0);
                let l = led.get(b).copied().unwrap_or(0);
                proptest::prop_assert!(h == fair_held || h == fair_held + 1, "broker {} holds {} (fair {})", b, h, fair_held);
                proptest::prop_assert!(l == fair_led || l == fair_led + 1, "broker {} leads {} (fair {})", b, l, fair_led);
            }
        }
    }

    #[test]
    fn groups_on_lists_a_brokers_replicas() {
        let mut s = ClusterState::default();
        s.apply(create("a", 3, 2, &[1, 2, 3]));
        let on1: Vec<u32> = s.groups_on(1).map(|(_, p, _)| p).collect();
        assert_eq!(on1.len(), 2);
        let total: usize = [1, 2, 3].iter().map(|n| s.groups_on(*n).count()).sum();
        assert_eq!(total, 6);
    }

    #[test]
    fn producer_ids_are_unique_and_names_raise_the_epoch() {
        let mut s = ClusterState::default();
        let init = |s: &mut ClusterState, name: Option<&str>| match s
            .apply(MetaCommand::InitProducer { name: name.map(String::from) })
        {
            MetaOutcome::ProducerInitialized { id, epoch } => (id, epoch),
            other => panic!("{other:?}"),
        };
        assert_eq!(init(&mut s, None), (0, 0));
        assert_eq!(init(&mut s, Some("orders")), (1, 0));
        assert_eq!(init(&mut s, None), (2, 0));
        assert_eq!(init(&mut s, Some("orders")), (1, 1), "same name: same id, next epoch");
        assert_eq!(s.producer_epochs.get(&1), Some(&1));
        s.named_producers.insert("orders".into(), (1, i32::MAX));
        assert_eq!(init(&mut s, Some("orders")), (3, 0), "epoch exhausted: a fresh id");
        assert!(matches!(s.apply(MetaCommand::InitProducer { name: Some(String::new()) }), MetaOutcome::Rejected(_)));
    }

    /// Each kind of command is answered with its own answer type, and with
    /// no other: what `Answer::from_outcome` relies on.
    #[test]
    fn every_command_kind_gets_its_answer() {
        fn kinds(o: &MetaOutcome) -> [bool; 4] {
            [
                Topic::from_outcome(o.clone()).is_ok(),
                TopicDeleted::from_outcome(o.clone()).is_ok(),
                ProducerId::from_outcome(o.clone()).is_ok(),
                GroupAnswer::from_outcome(o.clone()).is_ok(),
            ]
        }
        let mut s = ClusterState::default();
        let created = s.apply(create("t", 2, 1, &[1]));
        assert_eq!(kinds(&created), [true, false, false, false], "{created:?}");
        let producer = s.apply(MetaCommand::InitProducer { name: Some("p".into()) });
        assert_eq!(kinds(&producer), [false, false, true, false], "{producer:?}");
        let join = groups::Heartbeat {
            member_id: "m".into(),
            member_epoch: 0,
            client_id: "c".into(),
            subscribed: ["t".to_string()].into(),
            owned: BTreeSet::new(),
            assignor: groups::Assignor::default(),
            session_timeout_ms: 10_000,
        };
        let joined = s.apply(MetaCommand::Group { group: "g".into(), cmd: groups::GroupCommand::Heartbeat(join) });
        assert_eq!(kinds(&joined), [false, false, false, true], "{joined:?}");
        let left = s.apply(MetaCommand::Group {
            group: "g".into(),
            cmd: groups::GroupCommand::RemoveMembers(vec!["m".into()]),
        });
        assert_eq!(kinds(&left), [false, false, false, true], "{left:?}");
        let commit = s.apply(MetaCommand::Group {
            group: "g".into(),
            cmd: groups::GroupCommand::ResetOffsets(vec![(("t".to_string(), 0), 5)]),
        });
        assert_eq!(kinds(&commit), [false, false, false, true], "{commit:?}");
        let deleted_group = s.apply(MetaCommand::DeleteGroup { group: "g".into() });
        assert_eq!(kinds(&deleted_group), [false, false, false, true], "{deleted_group:?}");
        let deleted = s.apply(MetaCommand::DeleteTopic { name: "t".into() });
        assert_eq!(kinds(&deleted), [false, true, false, false], "{deleted:?}");
        // Refusals are no command's answer (the proposer reports them).
        let refused = s.apply(MetaCommand::DeleteTopic { name: "t".into() });
        assert_eq!(kinds(&refused), [false; 4], "{refused:?}");
    }
}
