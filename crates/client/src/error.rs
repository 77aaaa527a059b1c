//! [`ClientError`]: every error the client returns, with what a caller needs
//! to act on it ([`ClientError::kind`], [`ClientError::is_retriable`],
//! [`ClientError::leader_hint`]) and no transport types.

use std::time::Duration;

use ferrolog_proto::errors;
use ferrolog_proto::errors::Reason;
use tonic::Code;
use tonic::Status;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker does not lead the partition (or the metadata group); see
    /// [`ClientError::leader_hint`].
    NotLeader,
    /// No such topic, partition or group (a just-created topic may not be
    /// known to every broker yet: retriable, as in Kafka).
    NotFound,
    /// The request was refused as invalid (bad name, oversize batch, ...).
    InvalidArgument,
    /// A batch failed its checksum (sent, or fetched).
    CorruptBatch,
    /// An idempotent batch does not continue its producer's sequence.
    OutOfOrderSequence,
    /// A newer instance of this producer exists.
    Fenced,
    /// The consumer-group member must rejoin.
    StaleMemberEpoch,
    /// The offset is outside the log; see [`ClientError::log_bounds`].
    OffsetOutOfRange,
    /// The topic exists already.
    AlreadyExists,
    /// The operation needs another state (e.g. a group without members).
    FailedPrecondition,
    /// No answer in time; the request may or may not have been applied.
    Timeout,
    /// The broker could not serve it now (leader change, starting up).
    Unavailable,
    /// No broker could be connected to (refused, unresolvable, hung); the
    /// message names each address tried.
    Unreachable,
    /// The client (producer, consumer) was closed.
    Closed,
    /// A bug or a storage failure on the broker.
    Internal,
}

/// Where the leader is, as far as the answering broker knew.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderHint {
    /// Broker id of the leader, if known.
    pub leader_id: Option<u64>,
    /// Its address (`host:port`), if known.
    pub leader_address: Option<String>,
}

/// An error from the client or from a broker.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    kind: ErrorKind,
    message: String,
    leader: Option<LeaderHint>,
    bounds: Option<(u64, u64)>,
}

impl ClientError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClientError { kind, message: message.into(), leader: None, bounds: None }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn closed(what: &str) -> Self {
        Self::new(ErrorKind::Closed, format!("{what} closed"))
    }

    pub(crate) fn timeout(what: &str, after: Duration) -> Self {
        Self::new(ErrorKind::Timeout, format!("{what}: no answer within {after:?}"))
    }

    pub(crate) fn corrupt(offset: i64, detail: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::CorruptBatch, format!("corrupt batch at offset {offset}: {detail}"))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message (the broker's, or the client's own).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again (after a short backoff, or at the hinted
    /// leader) can succeed. A retried *produce* may duplicate unless the
    /// producer is idempotent.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotLeader
                | ErrorKind::NotFound
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::Unreachable
        )
    }

    /// Where the leader is, for a [`ErrorKind::NotLeader`] error.
    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        self.leader.as_ref()
    }

    /// `(log start, log end)` of an [`ErrorKind::OffsetOutOfRange`] error.
    pub fn log_bounds(&self) -> Option<(u64, u64)> {
        self.bounds
    }

    /// Whether the request certainly did not reach a broker (so a retry of
    /// a non-idempotent produce cannot duplicate it).
    pub(crate) fn not_sent(&self) -> bool {
        matches!(self.kind, ErrorKind::Unreachable | ErrorKind::NotLeader | ErrorKind::NotFound)
    }
}

/// Whether a failed call never reached the broker: the connection could not
/// be made (refused, unresolvable, connect timeout). Looked up in the
/// error's source chain, not in its message.
pub(crate) fn connect_failure(s: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::NotFound
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ) {
                return true;
            }
        }
        // tonic reports a connect that did not finish in connect_timeout
        // as its own error type.
        if e.downcast_ref::<tonic::transport::Error>().is_some() && e.to_string().contains("connect") {
            return true;
        }
        cur = e.source();
    }
    false
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let reason = errors::reason_of(&s).map(|(r, _)| r);
        let kind = match reason {
            Some(Reason::NotLeader) => ErrorKind::NotLeader,
            Some(Reason::Fenced) => ErrorKind::Fenced,
            Some(Reason::OutOfOrderSequence) => ErrorKind::OutOfOrderSequence,
            Some(Reason::CorruptBatch) => ErrorKind::CorruptBatch,
            Some(Reason::StaleMemberEpoch) => ErrorKind::StaleMemberEpoch,
            Some(Reason::OffsetOutOfRange) => ErrorKind::OffsetOutOfRange,
            None => match s.code() {
                _ if connect_failure(&s) => ErrorKind::Unreachable,
                Code::NotFound => ErrorKind::NotFound,
                Code::InvalidArgument => ErrorKind::InvalidArgument,
                Code::AlreadyExists => ErrorKind::AlreadyExists,
                Code::FailedPrecondition => ErrorKind::FailedPrecondition,
                Code::DeadlineExceeded => ErrorKind::Timeout,
                Code::OutOfRange => ErrorKind::OffsetOutOfRange,
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        };
        let leader =
            errors::leader_hint(&s).map(|h| LeaderHint { leader_id: h.leader_id, leader_address: h.leader_address });
        let bounds = errors::out_of_range_bounds(&s);
        let message = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() };
        ClientError { kind, message, leader, bounds }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn broker_errors_keep_their_kind_hint_and_bounds() {
        let st = errors::not_leader(
            "not the leader",
            &errors::LeaderHint { leader_id: Some(2), leader_address: Some("b:2".into()) },
        );
        let e = ClientError::from(st);
        assert_eq!(e.kind(), ErrorKind::NotLeader);
        assert!(e.is_retriable() && e.not_sent());
        assert_eq!(e.leader_hint().and_then(|h| h.leader_address.as_deref()), Some("b:2"));

        let e = ClientError::from(errors::out_of_range("offset 9 is out of range", 3, 7));
        assert_eq!((e.kind(), e.log_bounds()), (ErrorKind::OffsetOutOfRange, Some((3, 7))));
        assert!(!e.is_retriable());

        let e = ClientError::from(errors::status(Reason::Fenced, "old epoch", HashMap::new()));
        assert_eq!(e.kind(), ErrorKind::Fenced);
        assert!(!e.is_retriable());
        assert_eq!(e.to_string(), "old epoch");

        assert_eq!(ClientError::from(Status::deadline_exceeded("slow")).kind(), ErrorKind::Timeout);
        assert!(!ClientError::from(Status::deadline_exceeded("slow")).not_sent(), "a timeout is ambiguous");
        assert_eq!(ClientError::from(Status::not_found("no topic")).kind(), ErrorKind::NotFound);
        assert_eq!(ClientError::from(Status::internal("bug")).kind(), ErrorKind::Internal);
        assert_eq!(ClientError::from(Status::unavailable("starting")).kind(), ErrorKind::Unavailable);
    }
}
