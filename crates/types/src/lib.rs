//! Ferrolog's shared vocabulary: identifiers, offsets, and the record batch
//! format with its end-to-end checksum.
//!
//! # Layout
//! - [`ids`]: broker ids, Raft group ids (the metadata group is group 0), offsets.
//! - [`batch`]: [`batch::Batch`], the unit that is produced, replicated, stored
//!   and fetched, and the CRC32C that guards it from producer to consumer.
//! - [`limits`]: message size limits brokers and clients agree on.
//!
//! This crate has no IO and no async: every other crate depends on it.

pub mod batch;
pub mod ids;
pub mod limits;

pub use batch::Batch;
pub use batch::BatchError;
pub use batch::BatchHeader;
pub use ids::GroupId;
pub use ids::NodeId;
pub use ids::Offset;
