//! Identifiers shared by every crate.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// A broker's id: unique in the cluster, never reused for a broker that
/// starts with an empty data dir (Raft relies on it).
pub type NodeId = u64;

/// A position in a partition's log: the offset of one record.
pub type Offset = u64;

/// The id of one Raft group on a broker. Every partition replica belongs to
/// one group; the cluster metadata is group [`GroupId::METADATA`].
///
/// Stored as a fixed-width big-endian prefix of every RocksDB key, so that a
/// group's keys are contiguous and ordered by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata Raft group (brokers, topics, placement, consumer groups).
    pub const METADATA: GroupId = GroupId(0);

    /// The big-endian bytes used as a key prefix.
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == GroupId::METADATA { write!(f, "g0(metadata)") } else { write!(f, "g{}", self.0) }
    }
}
