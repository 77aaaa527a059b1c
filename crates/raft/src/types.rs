//! The openraft type configuration shared by every Raft group.

use std::fmt;

use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::MetaOutcome;
use ferrolog_partition::Command;
use ferrolog_partition::Outcome;
use ferrolog_types::Batch;
use serde::Deserialize;
use serde::Serialize;

openraft::declare_raft_types!(
    /// Ferrolog's Raft types: u64 broker ids, `BasicNode { addr }` carrying the
    /// broker's address, the default (tokio, advanced leader id) for the rest.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A Raft entry: what a group replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A partition command (append a batch, trim).
    Partition {
        /// The command.
        cmd: Command,
        /// Token of an acks=1 waiter on the proposing leader (0: none).
        /// Meaningless on other brokers, which ignore it.
        ack: u64,
    },
    /// A metadata group command.
    Metadata(MetaCommand),
}

impl Request {
    /// An append with no acks=1 waiter.
    pub fn append(batch: Batch) -> Self {
        Request::Partition { cmd: Command::Append(batch), ack: 0 }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Partition { cmd: Command::Append(b), .. } => {
                write!(f, "append({} records, {} bytes)", b.header.record_count, b.records.len())
            }
            Request::Partition { cmd: Command::TrimBefore(o), .. } => write!(f, "trim_before({o})"),
            Request::Partition { cmd: Command::Clock { now_ms, .. }, .. } => write!(f, "clock({now_ms})"),
            Request::Metadata(m) => write!(f, "metadata({m:?})"),
        }
    }
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries produce nothing.
    None,
    /// The outcome of a partition command.
    Partition(Outcome),
    /// The outcome of a metadata command.
    Metadata(MetaOutcome),
}

/// Shorthands for openraft's generic types under [`TypeConfig`].
pub mod alias {
    use super::TypeConfig;

    /// A log id.
    pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
    /// A log entry.
    pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
    /// Membership with the log id that set it.
    pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
    /// A snapshot of either group kind.
    pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::snapshot::SnapshotData>;
}

/// The log id of entry `index` proposed by `node` in `term`.
pub fn log_id(term: u64, node: u64, index: u64) -> alias::LogId {
    use openraft::vote::RaftLeaderIdExt;
    alias::LogId::new(<TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, node), index)
}
