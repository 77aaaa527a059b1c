//! A Ferrolog broker: one process serving the public gRPC API, the
//! broker-to-broker Raft transport, health and reflection on one port, and
//! running the metadata group plus the partition groups placed on it.
//!
//! # Layout
//! - [`config`]: [`BrokerConfig`], node identity (flags, hostname ordinal,
//!   the id stored in the data dir).
//! - [`transport`]: the multi-group Raft transport (client and server).
//! - [`groups`]: the registry of Raft groups and the reconciler that follows
//!   the metadata group's placement.
//! - [`handles`]: the protocol-neutral core: [`handles::Core`] and its
//!   partition, metadata and coordinator handles, where every request's
//!   logic lives.
//! - [`grpc`]: the public gRPC services, conversions over the handles.
//! - [`metrics`]: Prometheus metrics on `--metrics-listen`.
//! - [`lag`]: consumer lag in records and seconds, refreshed on the
//!   coordinator for the metrics and `group describe`.
//! - [`liveness`]: whether a broker is alive (one definition for all).
//! - [`join`]: admitting brokers that join a running cluster.
//! - [`recovery`]: replicas that lost their disk take no part in
//!   elections until they have caught up.
//! - [`retention`]: deleting old data and purging Raft logs.
//! - [`quiesce`]: broker heartbeats, parking idle groups' Raft tickers, and
//!   moving leadership back to preferred replicas.
//! - [`tasks`]: the supervisor of background tasks (a failed one stops the
//!   broker).
//! - [`failpoints`]: test-only fault hooks (cargo feature `failpoints`).
//! - [`error`]: [`error::BrokerError`] and its mapping to `tonic::Status`.
//! - [`server`]: [`run`], wiring it together until shutdown.

pub mod config;
pub mod error;
pub mod failpoints;
pub mod groups;
pub mod grpc;
pub mod handles;
pub mod join;
pub mod lag;
pub mod liveness;
pub mod metrics;
pub mod quiesce;
pub mod recovery;
pub mod retention;
pub mod server;
pub mod tasks;
pub mod transport;

pub use config::BrokerConfig;
pub use server::InProcess;
pub use server::run;
pub use server::spawn;
