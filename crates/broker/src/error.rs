//! [`BrokerError`] and the one place it becomes a `tonic::Status`.

use std::collections::HashMap;

use ferrolog_metadata::MetaError;
use ferrolog_proto::errors;
use ferrolog_proto::errors::LeaderHint;
use ferrolog_proto::errors::Reason;
use tonic::Status;

/// Every error a broker RPC can answer with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Asked for.
        partition: u32,
        /// How many there are.
        count: usize,
    },
    /// Bad input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The batch failed its checksum.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// An idempotent batch does not continue its producer's sequence.
    #[error("{0}")]
    OutOfOrderSequence(String),
    /// The producer's epoch is older than the newest one: a newer instance
    /// of this producer exists.
    #[error("{0}")]
    Fenced(String),
    /// Not the leader of what was addressed.
    #[error("{what}")]
    NotLeader {
        /// Message.
        what: String,
        /// Where the leader is, if known.
        hint: LeaderHint,
    },
    /// Fetch or list-offsets outside the log.
    #[error("offset {offset} is out of range: the log holds {start}..{end}")]
    OutOfRange {
        /// Asked for.
        offset: i64,
        /// Log start offset.
        start: u64,
        /// Log end offset (high watermark).
        end: u64,
    },
    /// The topic exists already.
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    /// The request's deadline passed before its acks level was met.
    #[error("{0}")]
    Timeout(String),
    /// Temporarily unable to serve (leader change, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<MetaError> for BrokerError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::TopicExists(t) => BrokerError::AlreadyExists(t),
            MetaError::UnknownTopic(t) => BrokerError::UnknownTopic(t),
            other => BrokerError::InvalidArgument(other.to_string()),
        }
    }
}

impl From<ferrolog_partition::Rejection> for BrokerError {
    fn from(r: ferrolog_partition::Rejection) -> Self {
        use ferrolog_partition::Rejection;
        match r {
            Rejection::Corrupt(_) => BrokerError::CorruptBatch(r.to_string()),
            Rejection::OutOfOrderSequence { .. } => BrokerError::OutOfOrderSequence(r.to_string()),
            Rejection::Fenced { .. } => BrokerError::Fenced(r.to_string()),
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let msg = e.to_string();
        match e {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => Status::not_found(msg),
            BrokerError::InvalidArgument(_) => Status::invalid_argument(msg),
            BrokerError::CorruptBatch(_) => errors::status(Reason::CorruptBatch, msg, HashMap::new()),
            BrokerError::OutOfOrderSequence(_) => errors::status(Reason::OutOfOrderSequence, msg, HashMap::new()),
            BrokerError::Fenced(_) => errors::status(Reason::Fenced, msg, HashMap::new()),
            BrokerError::NotLeader { hint, .. } => errors::not_leader(msg, &hint),
            BrokerError::OutOfRange { start, end, .. } => {
                let details = tonic_types_out_of_range(start, end);
                Status::with_error_details(tonic::Code::OutOfRange, msg, details)
            }
            BrokerError::AlreadyExists(_) => Status::already_exists(msg),
            BrokerError::Timeout(_) => Status::deadline_exceeded(msg),
            BrokerError::Unavailable(_) => Status::unavailable(msg),
            BrokerError::Internal(_) => Status::internal(msg),
        }
    }
}

fn tonic_types_out_of_range(start: u64, end: u64) -> tonic_types::ErrorDetails {
    let md = HashMap::from([
        ("log_start_offset".to_string(), start.to_string()),
        ("log_end_offset".to_string(), end.to_string()),
    ]);
    tonic_types::ErrorDetails::with_error_info("OFFSET_OUT_OF_RANGE", errors::DOMAIN, md)
}

use tonic_types::StatusExt;
