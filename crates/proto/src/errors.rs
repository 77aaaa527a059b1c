//! Typed error details carried in a `tonic::Status`.
//!
//! Every Ferrolog error that a client must act on (rather than just print)
//! carries a `google.rpc.ErrorInfo` detail with domain [`DOMAIN`] and one of
//! the [`Reason`] strings; extra facts travel in its metadata map. The status
//! code alone tells generic tools (grpcurl, other languages) the class of
//! error; the reason tells a Ferrolog client exactly what to do.

use std::collections::HashMap;

use tonic::Code;
use tonic::Status;
use tonic_types::ErrorDetails;
use tonic_types::StatusExt;

/// The `ErrorInfo.domain` of every Ferrolog error detail.
pub const DOMAIN: &str = "ferrolog.dev";

/// Machine-readable error reasons (the `ErrorInfo.reason` strings). Part of
/// the public API: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This broker does not lead the partition (or the metadata group).
    NotLeader,
    /// The producer's epoch is older than the current one for its id.
    Fenced,
    /// A gap in the producer's sequence numbers.
    OutOfOrderSequence,
    /// The batch checksum did not match its bytes.
    CorruptBatch,
    /// A consumer group member's epoch is no longer current.
    StaleMemberEpoch,
    /// A fetch or list-offsets asked for an offset outside the log; the
    /// metadata holds `log_start_offset` and `log_end_offset`.
    OffsetOutOfRange,
}

/// Every reason, for tests and for parsing.
pub const ALL_REASONS: [Reason; 6] = [
    Reason::NotLeader,
    Reason::Fenced,
    Reason::OutOfOrderSequence,
    Reason::CorruptBatch,
    Reason::StaleMemberEpoch,
    Reason::OffsetOutOfRange,
];

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotLeader => "NOT_LEADER",
            Reason::Fenced => "FENCED",
            Reason::OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            Reason::CorruptBatch => "CORRUPT_BATCH",
            Reason::StaleMemberEpoch => "STALE_MEMBER_EPOCH",
            Reason::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
        }
    }

    /// Parses a wire spelling; `None` for reasons this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_REASONS.into_iter().find(|r| r.as_str() == s)
    }

    /// The gRPC code a status with this reason carries.
    pub fn code(self) -> Code {
        match self {
            Reason::NotLeader => Code::Unavailable,
            Reason::Fenced | Reason::OutOfOrderSequence | Reason::StaleMemberEpoch => Code::FailedPrecondition,
            Reason::CorruptBatch => Code::InvalidArgument,
            Reason::OffsetOutOfRange => Code::OutOfRange,
        }
    }
}

/// Where the leader is, as far as the answering broker knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderHint {
    /// Broker id of the leader, if known.
    pub leader_id: Option<u64>,
    /// Its client address (`host:port`), if known.
    pub leader_address: Option<String>,
}

/// Builds a status with `reason`'s code, a message, and an `ErrorInfo` detail.
pub fn status(reason: Reason, message: impl Into<String>, metadata: HashMap<String, String>) -> Status {
    let details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata);
    Status::with_error_details(reason.code(), message, details)
}

/// `UNAVAILABLE` + `NOT_LEADER`, naming the leader when it is known.
pub fn not_leader(message: impl Into<String>, hint: &LeaderHint) -> Status {
    let mut md = HashMap::new();
    if let Some(id) = hint.leader_id {
        md.insert("leader_id".to_string(), id.to_string());
    }
    if let Some(addr) = &hint.leader_address {
        md.insert("leader_address".to_string(), addr.clone());
    }
    status(Reason::NotLeader, message, md)
}

/// `OUT_OF_RANGE` + `OFFSET_OUT_OF_RANGE` with the log's bounds.
pub fn out_of_range(message: impl Into<String>, log_start: u64, log_end: u64) -> Status {
    let md = HashMap::from([
        ("log_start_offset".to_string(), log_start.to_string()),
        ("log_end_offset".to_string(), log_end.to_string()),
    ]);
    status(Reason::OffsetOutOfRange, message, md)
}

/// The `(log start, log end)` of an `OFFSET_OUT_OF_RANGE` status.
pub fn out_of_range_bounds(status: &Status) -> Option<(u64, u64)> {
    let (reason, md) = reason_of(status)?;
    if reason != Reason::OffsetOutOfRange {
        return None;
    }
    Some((md.get("log_start_offset")?.parse().ok()?, md.get("log_end_offset")?.parse().ok()?))
}

/// The Ferrolog reason and metadata of a status, if it carries one.
pub fn reason_of(status: &Status) -> Option<(Reason, HashMap<String, String>)> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    if info.domain != DOMAIN {
        return None;
    }
    Some((Reason::parse(&info.reason)?, info.metadata.clone()))
}

/// The leader hint of a `NOT_LEADER` status; `None` for any other status.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    let (reason, md) = reason_of(status)?;
    if reason != Reason::NotLeader {
        return None;
    }
    Some(LeaderHint {
        leader_id: md.get("leader_id").and_then(|s| s.parse().ok()),
        leader_address: md.get("leader_address").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_round_trips_through_status_details() {
        let hint = LeaderHint { leader_id: Some(3), leader_address: Some("127.0.0.3:9092".into()) };
        let st = not_leader("partition orders/2 is led by broker 3", &hint);
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(leader_hint(&st), Some(hint));
        // Survives the trip through HTTP/2 headers (details are a binary header).
        let mut headers = tonic::codegen::http::HeaderMap::new();
        st.add_header(&mut headers).expect("encode status");
        let back = Status::from_header_map(&headers).expect("decode status");
        assert_eq!(leader_hint(&back).and_then(|h| h.leader_id), Some(3));
    }

    #[test]
    fn unknown_leader_has_no_hint_fields() {
        let st = not_leader("no leader elected", &LeaderHint::default());
        assert_eq!(leader_hint(&st), Some(LeaderHint::default()));
    }

    #[test]
    fn every_reason_parses_back_and_others_are_not_ours() {
        for r in ALL_REASONS {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            let st = status(r, "x", HashMap::new());
            assert_eq!(st.code(), r.code());
            assert_eq!(reason_of(&st).map(|(r, _)| r), Some(r));
        }
        assert_eq!(reason_of(&Status::internal("plain")), None);
        assert_eq!(leader_hint(&status(Reason::Fenced, "x", HashMap::new())), None);
    }
}
