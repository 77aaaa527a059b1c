//! One RocksDB per broker, shared by every Raft group on it.
//!
//! # Layout
//! - [`keys`]: fixed-width big-endian keys, `group_id ‖ index` and
//!   `group_id ‖ kind`, so a group's keys are contiguous and ordered.
//! - [`value`]: every value this crate stores is sealed with a CRC32C, so a
//!   damaged value is an error, never data (on top of RocksDB's block checksums).
//! - [`db`]: [`Storage`]: opening the database with its column families, reads,
//!   buffered writes, durable writes, and deleting a group.
//! - [`syncer`]: group commit: one WAL fsync shared by every append queued
//!   while the previous fsync ran, across all groups.
//!
//! This crate knows nothing of openraft or gRPC: `ferrolog-raft` maps Raft's
//! storage contract onto it. It owns the durability rules:
//!
//! - A write is *durable* once the RocksDB WAL that holds it is fsynced.
//!   Every write goes to one WAL, so syncing the WAL at time T makes every
//!   write completed before T durable, whatever its group or column family.
//! - After a failed fsync nothing can be known about what reached the disk,
//!   so the store fails stop: every later write and sync is refused.

pub mod db;
pub mod error;
pub mod keys;
pub mod syncer;
pub mod value;

pub use db::Cf;
pub use db::MEMTABLE_BUDGET_BYTES;
pub use db::MEMTABLE_LIMIT_BYTES;
pub use db::Storage;
pub use db::StorageConfig;
pub use error::StorageError;
pub use syncer::SyncStats;

/// RocksDB's write batch, re-exported so callers need no rocksdb dependency.
pub use rocksdb::WriteBatch;
