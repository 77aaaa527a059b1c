//! openraft glue for Ferrolog: the type config, and the log store and state
//! machine that put any number of Raft groups into one broker's RocksDB.
//!
//! # Layout
//! - [`types`]: the two openraft configurations ([`PartitionConfig`],
//!   [`MetaConfig`]), each with its own entry and reply types.
//! - [`adapter`]: [`Applier`], openraft's state machine, written once over
//!   the [`adapter::GroupState`] of either group kind.
//! - [`codec`]: postcard encoding of openraft values stored in RocksDB.
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` for one group
//!   of either kind.
//! - [`state_machine`]: [`StateMachine`], the state of one partition group,
//!   applying [`ferrolog_partition`] commands.
//! - [`index`]: the offset index of a partition and [`PartitionReader`]
//!   (batches are written once, in the Raft log; the index points at them).
//! - [`snapshot`]: snapshot data of both group kinds; partition snapshots
//!   stream in bounded chunks.
//! - [`meta_sm`]: [`MetaStateMachine`], the metadata group's state.
//! - [`acks`]: acks=1 waiters completed from the log store's flush.
//! - [`bench`]: the storage micro-benchmark behind `ferrolog bench storage`.
//!
//! Every group is a `(GroupId, Arc<Storage>)` pair: opening a group costs no
//! file handles, threads or memory beyond its small in-memory state, so a
//! broker can hold thousands of replicas.

pub mod acks;
pub mod adapter;
pub mod bench;
pub mod codec;
pub mod faults;
pub mod index;
pub mod log_store;
pub mod meta_sm;
pub mod snapshot;
mod snapshot_slot;
pub mod state_machine;
pub mod types;

pub use adapter::Applier;
pub use index::PartitionReader;
pub use log_store::LogStore;
pub use log_store::flush_signal;
pub use meta_sm::MetaStateMachine;
pub use state_machine::StateMachine;
pub use types::MetaConfig;
pub use types::MetaEntry;
pub use types::PartitionConfig;
pub use types::PartitionEntry;
pub use types::Reply;

#[cfg(test)]
mod meta_tests;
#[cfg(test)]
mod tests;
