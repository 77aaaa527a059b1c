//! [`BrokerError`], the one error type of the broker's handles, and the one
//! place it becomes a `tonic::Status` (its code and, where a client must
//! act on it, a [`Reason`] detail).
//!
//! Rules: handles return `BrokerError` only; a front end converts at its
//! edge (`From<BrokerError> for Status` here, the Kafka error codes in the
//! Kafka listener) and never builds statuses of its own from messages.

use std::collections::HashMap;

use ferrolog_metadata::MetaError;
use ferrolog_metadata::groups::GroupError;
use ferrolog_proto::errors;
use ferrolog_proto::errors::LeaderHint;
use ferrolog_proto::errors::Reason;
use tonic::Code;
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
    /// No such consumer group.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
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
    /// A consumer-group member is unknown or its epoch is not current: it
    /// must rejoin (Kafka's UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH).
    #[error("{0}")]
    StaleMember(String),
    /// The operation needs a group without members.
    #[error("{0}")]
    GroupNotEmpty(String),
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

impl From<GroupError> for BrokerError {
    fn from(e: GroupError) -> Self {
        let msg = e.to_string();
        match e {
            GroupError::UnknownMember(_) | GroupError::StaleEpoch { .. } | GroupError::NotOwner { .. } => {
                BrokerError::StaleMember(msg)
            }
            GroupError::NotEmpty(_) => BrokerError::GroupNotEmpty(msg),
            GroupError::UnknownGroup(g) => BrokerError::UnknownGroup(g),
            GroupError::UnknownPartition { topic, count: None, .. } => BrokerError::UnknownTopic(topic),
            GroupError::UnknownPartition { topic, partition, count: Some(n) } => {
                BrokerError::UnknownPartition { topic, partition, count: n as usize }
            }
            GroupError::Invalid(m) => BrokerError::InvalidArgument(m),
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

impl BrokerError {
    /// The machine-readable reason a client acts on, if any.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            BrokerError::CorruptBatch(_) => Some(Reason::CorruptBatch),
            BrokerError::OutOfOrderSequence(_) => Some(Reason::OutOfOrderSequence),
            BrokerError::Fenced(_) => Some(Reason::Fenced),
            BrokerError::StaleMember(_) => Some(Reason::StaleMemberEpoch),
            BrokerError::NotLeader { .. } => Some(Reason::NotLeader),
            BrokerError::OutOfRange { .. } => Some(Reason::OffsetOutOfRange),
            _ => None,
        }
    }

    /// The gRPC code (also the `code` label of the error metrics).
    pub fn code(&self) -> Code {
        if let Some(r) = self.reason() {
            return r.code();
        }
        match self {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } | BrokerError::UnknownGroup(_) => {
                Code::NotFound
            }
            BrokerError::InvalidArgument(_) => Code::InvalidArgument,
            BrokerError::GroupNotEmpty(_) => Code::FailedPrecondition,
            BrokerError::AlreadyExists(_) => Code::AlreadyExists,
            BrokerError::Timeout(_) => Code::DeadlineExceeded,
            BrokerError::Unavailable(_) => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let msg = e.to_string();
        match (&e, e.reason()) {
            (BrokerError::NotLeader { hint, .. }, _) => errors::not_leader(msg, hint),
            (BrokerError::OutOfRange { start, end, .. }, _) => errors::out_of_range(msg, *start, *end),
            (_, Some(reason)) => errors::status(reason, msg, HashMap::new()),
            (_, None) => Status::new(e.code(), msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<BrokerError> {
        vec![
            BrokerError::UnknownTopic("t".into()),
            BrokerError::UnknownPartition { topic: "t".into(), partition: 9, count: 3 },
            BrokerError::UnknownGroup("g".into()),
            BrokerError::InvalidArgument("bad".into()),
            BrokerError::CorruptBatch("crc".into()),
            BrokerError::OutOfOrderSequence("seq".into()),
            BrokerError::Fenced("old epoch".into()),
            BrokerError::StaleMember("epoch 3 is stale".into()),
            BrokerError::GroupNotEmpty("2 members".into()),
            BrokerError::NotLeader {
                what: "not the leader".into(),
                hint: LeaderHint { leader_id: Some(2), leader_address: Some("127.0.0.2:9092".into()) },
            },
            BrokerError::OutOfRange { offset: 99, start: 10, end: 20 },
            BrokerError::AlreadyExists("t".into()),
            BrokerError::Timeout("slow".into()),
            BrokerError::Unavailable("starting".into()),
            BrokerError::Internal("bug".into()),
        ]
    }

    /// Every error keeps its code, message and reason through the one
    /// mapping, also across HTTP/2 headers (as a client receives it).
    #[test]
    fn every_error_maps_to_its_status_and_reason() {
        for e in every_kind() {
            let (code, reason, msg) = (e.code(), e.reason(), e.to_string());
            let st = Status::from(e);
            let mut headers = tonic::codegen::http::HeaderMap::new();
            st.add_header(&mut headers).expect("encode status");
            let back = Status::from_header_map(&headers).expect("decode status");
            assert_eq!(back.code(), code, "{msg}");
            assert_eq!(back.message(), msg);
            assert_eq!(errors::reason_of(&back).map(|(r, _)| r), reason, "{msg}");
        }
    }

    #[test]
    fn out_of_range_carries_the_log_bounds() {
        let st = Status::from(BrokerError::OutOfRange { offset: 99, start: 10, end: 20 });
        assert_eq!(st.code(), Code::OutOfRange);
        assert_eq!(errors::out_of_range_bounds(&st), Some((10, 20)));
    }

    #[test]
    fn group_errors_keep_their_kind() {
        let stale = GroupError::StaleEpoch { member: "m".into(), got: 1, current: 2 };
        assert_eq!(BrokerError::from(stale).reason(), Some(Reason::StaleMemberEpoch));
        assert_eq!(BrokerError::from(GroupError::NotEmpty(2)).code(), Code::FailedPrecondition);
        assert_eq!(BrokerError::from(GroupError::UnknownGroup("g".into())).code(), Code::NotFound);
        assert_eq!(BrokerError::from(GroupError::Invalid("x".into())).code(), Code::InvalidArgument);
    }
}
