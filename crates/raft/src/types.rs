//! The openraft type configurations of the two kinds of Raft group, each
//! with its own entry and reply types: a partition group replicates
//! [`PartitionEntry`] and answers [`Outcome`]s, the metadata group
//! replicates [`MetaEntry`] and answers [`MetaOutcome`]s. Neither can be
//! handed the other's command.
//!
//! Everything else (node ids, `BasicNode { addr }`, terms, the advanced
//! leader id, log ids, votes, memberships) is the same type in both, so
//! the code that only moves log ids and votes (the log store, snapshot
//! slots, the transport) is written once, generic over [`GroupConfig`].
//!
//! # On-disk and wire encoding
//! Both entry types are encoded as the single `Request` enum of store
//! format 3 was (variant 0 `Partition { cmd, ack }`, variant 1
//! `Metadata(cmd)`, postcard): stores written before the groups were typed
//! open unchanged, and a store whose log holds an entry of the other kind
//! fails to decode it (corruption) instead of applying it.

use std::fmt;
use std::io;

use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::MetaOutcome;
use ferrolog_partition::Command;
use ferrolog_partition::Outcome;
use ferrolog_types::Batch;
use openraft::BasicNode;
use openraft::RaftTypeConfig;
use openraft::impls::leader_id_adv::LeaderId;
use serde::Deserialize;
use serde::Serialize;

use crate::acks::Acked;
use crate::log_store::LogStore;

openraft::declare_raft_types!(
    /// A partition group: u64 broker ids, `BasicNode { addr }` carrying the
    /// broker's address, the default (tokio, advanced leader id) for the rest.
    pub PartitionConfig:
        D = PartitionEntry,
        R = Reply<Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
);

openraft::declare_raft_types!(
    /// The metadata group (same ids and nodes as [`PartitionConfig`]).
    pub MetaConfig:
        D = MetaEntry,
        R = Reply<MetaOutcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// What applying an entry answers its proposer.
///
/// Only two kinds of entry are ever proposed with a responder: a command
/// (answered with its outcome) and a membership change (answered with
/// [`Reply::Membership`]; openraft's `change_membership` ignores the data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<O> {
    /// The outcome of the command the entry carried.
    Applied(O),
    /// The entry was a membership change (or a blank entry).
    Membership,
}

impl<O: fmt::Debug> Reply<O> {
    /// The command's outcome. A command entry is always answered with one;
    /// [`NotACommand`] would mean openraft paired a proposal with another
    /// entry's reply.
    pub fn outcome(self) -> Result<O, NotACommand> {
        match self {
            Reply::Applied(o) => Ok(o),
            Reply::Membership => Err(NotACommand),
        }
    }
}

/// A command proposal was answered with a membership entry's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a command was answered with the reply of a membership entry")]
pub struct NotACommand;

/// An entry of a partition group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// The command (append a batch, trim, clock).
    pub cmd: Command,
    /// Token of an acks=1 waiter on the proposing leader (0: none).
    /// Meaningless on other brokers, which ignore it; see [`crate::acks`].
    pub ack: u64,
}

impl PartitionEntry {
    /// A command with no acks=1 waiter.
    pub fn new(cmd: Command) -> Self {
        PartitionEntry { cmd, ack: 0 }
    }

    /// An append with no acks=1 waiter.
    pub fn append(batch: Batch) -> Self {
        Self::new(Command::Append(batch))
    }
}

impl fmt::Display for PartitionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cmd {
            Command::Append(b) => write!(f, "append({} records, {} bytes)", b.header.record_count, b.records.len()),
            Command::TrimBefore(o) => write!(f, "trim_before({o})"),
            Command::Clock { now_ms, .. } => write!(f, "clock({now_ms})"),
        }
    }
}

/// An entry of the metadata group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEntry(pub MetaCommand);

impl fmt::Display for MetaEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata({:?})", self.0)
    }
}

/// The encoding both entry types share (see the module docs), borrowed for
/// encoding...
#[derive(Serialize)]
enum WireRef<'a> {
    Partition { cmd: &'a Command, ack: u64 },
    Metadata(&'a MetaCommand),
}

/// ...and owned for decoding.
#[derive(Deserialize)]
enum Wire {
    Partition { cmd: Command, ack: u64 },
    Metadata(MetaCommand),
}

impl Serialize for PartitionEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef::Partition { cmd: &self.cmd, ack: self.ack }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PartitionEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Partition { cmd, ack } => Ok(PartitionEntry { cmd, ack }),
            Wire::Metadata(_) => Err(serde::de::Error::custom("a metadata command in a partition group's log")),
        }
    }
}

impl Serialize for MetaEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef::Metadata(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for MetaEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Metadata(cmd) => Ok(MetaEntry(cmd)),
            Wire::Partition { .. } => Err(serde::de::Error::custom("a partition command in the metadata group's log")),
        }
    }
}

/// The leader id both configurations use.
pub type Leader = LeaderId<u64, u64>;

/// What the code shared by both group kinds (log store, snapshot slots,
/// transport) needs of a configuration: the ids, nodes and leader ids the
/// two have in common, and the log store's hook for acks=1.
pub trait GroupConfig:
    RaftTypeConfig<NodeId = u64, Node = BasicNode, Term = u64, LeaderId = Leader, Vote = openraft::impls::Vote<Leader>>
{
    /// The acks=1 waiters among `entries`, about to be appended to `log`,
    /// with their projected outcomes (see [`crate::acks`]). Only partition
    /// groups have any.
    fn acks_among(log: &LogStore<Self>, entries: &[alias::EntryOf<Self>]) -> io::Result<Vec<(u64, Acked)>>;

    /// Called when `log` is truncated: whatever was projected past the
    /// truncation point is void.
    fn on_truncate(log: &LogStore<Self>);
}

impl GroupConfig for MetaConfig {
    fn acks_among(_: &LogStore<Self>, _: &[alias::EntryOf<Self>]) -> io::Result<Vec<(u64, Acked)>> {
        Ok(Vec::new())
    }

    fn on_truncate(_: &LogStore<Self>) {}
}

impl GroupConfig for PartitionConfig {
    fn acks_among(log: &LogStore<Self>, entries: &[alias::EntryOf<Self>]) -> io::Result<Vec<(u64, Acked)>> {
        log.project_acks(entries)
    }

    fn on_truncate(log: &LogStore<Self>) {
        if let Some(acks) = log.acks() {
            acks.invalidate();
        }
    }
}

/// Shorthands for openraft's generic types.
pub mod alias {
    use super::MetaConfig;
    use super::PartitionConfig;

    /// A log id (the same type in both group kinds).
    pub type LogId = openraft::type_config::alias::LogIdOf<PartitionConfig>;
    /// A vote (the same type in both group kinds).
    pub type Vote = openraft::type_config::alias::VoteOf<PartitionConfig>;
    /// Membership with the log id that set it (the same in both).
    pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<PartitionConfig>;
    /// A log entry of group kind `C`.
    pub type EntryOf<C> = openraft::type_config::alias::EntryOf<C>;
    /// Snapshot metadata of group kind `C`.
    pub type SnapshotMetaOf<C> = openraft::type_config::alias::SnapshotMetaOf<C>;
    /// A snapshot of group kind `C`.
    pub type SnapshotOf<C> = openraft::type_config::alias::SnapshotOf<C, crate::snapshot::SnapshotData>;
    /// A partition group's log entry.
    pub type Entry = EntryOf<PartitionConfig>;
    /// A partition group's snapshot metadata.
    pub type SnapshotMeta = SnapshotMetaOf<PartitionConfig>;
    /// A partition group's snapshot.
    pub type Snapshot = SnapshotOf<PartitionConfig>;
    /// A metadata group's log entry.
    pub type MetaLogEntry = EntryOf<MetaConfig>;
    /// The metadata group's snapshot metadata.
    pub type MetaSnapshotMeta = SnapshotMetaOf<MetaConfig>;
    /// The metadata group's snapshot.
    pub type MetaSnapshot = SnapshotOf<MetaConfig>;
}

/// The log id of entry `index` proposed by `node` in `term`.
pub fn log_id(term: u64, node: u64, index: u64) -> alias::LogId {
    use openraft::vote::RaftLeaderIdExt;
    alias::LogId::new(Leader::new_committed(term, node), index)
}

#[cfg(test)]
mod tests {
    use ferrolog_types::BatchHeader;

    use super::*;

    /// The typed entries keep store format 3's encoding, and neither kind
    /// decodes as the other.
    #[test]
    fn entries_keep_the_untyped_encoding() {
        #[derive(Serialize)]
        enum Request {
            Partition { cmd: Command, ack: u64 },
            Metadata(MetaCommand),
        }
        let batch = Batch::seal(BatchHeader::plain(2, 0), vec![7u8; 16].into());
        let p = PartitionEntry { cmd: Command::Append(batch.clone()), ack: 9 };
        let old = postcard::to_allocvec(&Request::Partition { cmd: Command::Append(batch), ack: 9 }).expect("encode");
        assert_eq!(postcard::to_allocvec(&p).expect("encode"), old);
        assert_eq!(postcard::from_bytes::<PartitionEntry>(&old).expect("decode"), p);
        assert!(postcard::from_bytes::<MetaEntry>(&old).is_err(), "a partition entry is not a metadata entry");

        let cmd = MetaCommand::DeleteTopic { name: "t".into() };
        let m = MetaEntry(cmd.clone());
        let old = postcard::to_allocvec(&Request::Metadata(cmd)).expect("encode");
        assert_eq!(postcard::to_allocvec(&m).expect("encode"), old);
        assert_eq!(postcard::from_bytes::<MetaEntry>(&old).expect("decode"), m);
        assert!(postcard::from_bytes::<PartitionEntry>(&old).is_err(), "a metadata entry is not a partition entry");
    }
}
