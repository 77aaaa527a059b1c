//! Ferrolog's gRPC protocol: the code generated from `proto/`, plus the
//! conventions for error details that both sides rely on.
//!
//! - [`v1`]: the public API (`ferrolog.v1`): produce, fetch, offsets, admin,
//!   producer ids, consumer groups.
//! - [`internal`]: the broker-to-broker Raft transport (`ferrolog.internal.v1`),
//!   where every message names its Raft group.
//! - [`batch`]: the wire batch to and from the domain batch;
//!   [`partitions`]: `(topic, partition)` sets to and from the wire.
//! - [`records`]: the records inside a batch, decoded (decompression
//!   bounded) and checked against the batch's header.
//! - [`errors`]: how typed errors (not leader, fenced, ...) travel inside a
//!   `tonic::Status` as `google.rpc.ErrorInfo` details.
//!
//! Beyond [`records`], this crate does not validate requests; brokers
//! validate names and sizes (see the broker crate).

#![allow(missing_debug_implementations)]

/// The public API, `ferrolog.v1`.
pub mod v1 {
    #![allow(clippy::all, rust_2018_idioms, missing_docs)]
    tonic::include_proto!("ferrolog.v1");
}

/// The broker-to-broker Raft transport, `ferrolog.internal.v1`.
pub mod internal {
    #![allow(clippy::all, rust_2018_idioms, missing_docs)]
    tonic::include_proto!("ferrolog.internal.v1");
}

/// Serialized descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferrolog_descriptor");

pub mod batch;
pub mod errors;
pub mod partitions;
pub mod records;
