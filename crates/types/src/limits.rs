//! Message size limits that brokers and clients must agree on. Every queue
//! and message in Ferrolog is bounded; these are the bounds that cross a
//! process boundary, so they live here where both sides see them.
//!
//! How they fit together: a batch is at most a topic's `max.message.bytes`,
//! which is at most [`MAX_MESSAGE_BYTES_LIMIT`]. A produce request carries
//! one batch and a fetch answer at most [`MAX_FETCH_BYTES`] (or one batch,
//! when a single batch is larger), so [`API_MESSAGE_LIMIT`] fits either
//! with room for the envelope. Raft messages carry entries up to
//! [`MAX_APPEND_ENTRIES_BYTES`] (or one entry, when a single entry is
//! larger) and snapshot chunks of about a MiB plus one batch, so
//! [`RAFT_MESSAGE_LIMIT`] fits either.

/// The largest `max.message.bytes` a topic may have (Kafka's default for
/// `message.max.bytes` is about 1 MiB; ours is [`DEFAULT_MAX_MESSAGE_BYTES`]).
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 16 << 20;

/// `max.message.bytes` of a topic created without one.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1 << 20;

/// Room for everything in a message around its batches (headers, names,
/// per-batch fields). Generous: the largest envelope is a few KiB.
pub const ENVELOPE_BYTES: usize = 1 << 20;

/// The most a fetch answer holds, whatever the client asks (it always holds
/// at least one batch, so a batch larger than this still gets through).
pub const MAX_FETCH_BYTES: usize = 8 << 20;

/// The decode limit of the client API on both sides: brokers decoding
/// requests, clients decoding answers.
pub const API_MESSAGE_LIMIT: usize = max(MAX_MESSAGE_BYTES_LIMIT as usize, MAX_FETCH_BYTES) + ENVELOPE_BYTES;

/// Bytes of entries per AppendEntries request (at least one entry is sent,
/// whatever its size): a follower any distance behind catches up in
/// requests of this size instead of one it would refuse.
pub const MAX_APPEND_ENTRIES_BYTES: usize = 4 << 20;

/// The decode limit of the broker-to-broker Raft service.
pub const RAFT_MESSAGE_LIMIT: usize =
    max(MAX_MESSAGE_BYTES_LIMIT as usize, MAX_APPEND_ENTRIES_BYTES) + 2 * ENVELOPE_BYTES;

/// The longest metadata string a committed offset may carry (Kafka's
/// `offset.metadata.max.bytes` default).
pub const MAX_COMMIT_METADATA_BYTES: usize = 4096;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// The limits fit what they carry, checked when the crate compiles:
const _: () = {
    // The largest produce request and fetch answer decode.
    assert!(MAX_MESSAGE_BYTES_LIMIT as usize + ENVELOPE_BYTES <= API_MESSAGE_LIMIT);
    assert!(MAX_FETCH_BYTES + ENVELOPE_BYTES <= API_MESSAGE_LIMIT);
    // One entry of the largest batch, a full budget of smaller ones, or a
    // snapshot chunk (1 MiB + one batch) decodes on the Raft side.
    assert!(MAX_MESSAGE_BYTES_LIMIT as usize + ENVELOPE_BYTES < RAFT_MESSAGE_LIMIT);
    assert!(MAX_APPEND_ENTRIES_BYTES + ENVELOPE_BYTES < RAFT_MESSAGE_LIMIT);
    assert!((1 << 20) + MAX_MESSAGE_BYTES_LIMIT as usize + ENVELOPE_BYTES <= RAFT_MESSAGE_LIMIT);
    assert!(DEFAULT_MAX_MESSAGE_BYTES <= MAX_MESSAGE_BYTES_LIMIT);
};
