//! The record batch: the unit a producer sends, a Raft entry carries, the
//! broker stores and a consumer fetches.
//!
//! A batch is a fixed header plus an opaque `records` blob (the encoded,
//! possibly compressed, list of records). Brokers never re-encode the blob:
//! they store and return the producer's bytes. The CRC32C therefore covers
//! the batch from the producer to the consumer, and every hop that holds the
//! batch (leader on produce, state machine on apply, consumer on fetch) can
//! check it with [`Batch::verify`].
//!
//! Checksummed layout, all integers big-endian and fixed width (40 bytes),
//! followed by the `records` bytes:
//!
//! | bytes | field              |
//! |-------|--------------------|
//! | 0..8  | producer_id (i64)  |
//! | 8..12 | producer_epoch (i32) |
//! | 12..16| base_sequence (i32)|
//! | 16..20| record_count (u32) |
//! | 20..24| compression (u32)  |
//! | 24..32| first_timestamp_ms (i64) |
//! | 32..40| max_timestamp_ms (i64) |
//!
//! The base offset is not covered: the leader assigns it after the producer
//! computed the checksum.

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// Producer id of a batch sent without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;

/// Length of the checksummed header.
pub const HEADER_LEN: usize = 40;

/// The byte container used for record blobs (re-exported so users need no `bytes` dependency).
pub type BytesAlias = Bytes;

/// The batch fields a producer fills in and the checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Idempotent producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// The producer's epoch (fencing).
    pub producer_epoch: i32,
    /// Sequence number of the first record, -1 without idempotence.
    pub base_sequence: i32,
    /// Records in the batch; at least one.
    pub record_count: u32,
    /// Compression codec of `records` (the protocol's enum value).
    pub compression: u32,
    /// Timestamp of the first record (ms since the epoch).
    pub first_timestamp_ms: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp_ms: i64,
}

impl BatchHeader {
    /// A header for a non-idempotent, uncompressed batch.
    pub fn plain(record_count: u32, timestamp_ms: i64) -> Self {
        BatchHeader {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: -1,
            record_count,
            compression: 0,
            first_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
        }
    }

    /// The fixed-width big-endian encoding covered by the checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.producer_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[12..16].copy_from_slice(&self.base_sequence.to_be_bytes());
        b[16..20].copy_from_slice(&self.record_count.to_be_bytes());
        b[20..24].copy_from_slice(&self.compression.to_be_bytes());
        b[24..32].copy_from_slice(&self.first_timestamp_ms.to_be_bytes());
        b[32..40].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        b
    }
}

/// A record batch with its checksum, as carried in Raft entries and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The checksummed header.
    pub header: BatchHeader,
    /// The encoded (possibly compressed) records, exactly as the producer sent them.
    pub records: Bytes,
    /// CRC32C of `header.encode() ++ records`.
    pub crc32c: u32,
}

/// Why a batch is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes do not match the checksum: the batch was damaged in flight or at rest.
    #[error("record batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The checksum that came with the batch.
        stored: u32,
        /// The checksum of the bytes as they are now.
        computed: u32,
    },
    /// A batch must hold at least one record.
    #[error("record batch holds no records")]
    Empty,
}

/// CRC32C of a header and a records blob, as [`Batch::crc32c`] defines it.
pub fn checksum(header: &BatchHeader, records: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header.encode());
    crc32c::crc32c_append(crc, records)
}

impl Batch {
    /// Seals a batch: computes its checksum (what a producer does).
    pub fn seal(header: BatchHeader, records: Bytes) -> Self {
        let crc32c = checksum(&header, &records);
        Batch { header, records, crc32c }
    }

    /// Checks the checksum and the basic invariants.
    pub fn verify(&self) -> Result<(), BatchError> {
        let computed = checksum(&self.header, &self.records);
        if computed != self.crc32c {
            return Err(BatchError::ChecksumMismatch { stored: self.crc32c, computed });
        }
        if self.header.record_count == 0 {
            return Err(BatchError::Empty);
        }
        Ok(())
    }

    /// Bytes this batch occupies on the wire and on disk (header + records + crc).
    pub fn size_bytes(&self) -> usize {
        HEADER_LEN + self.records.len() + 4
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header() -> impl Strategy<Value = BatchHeader> {
        (any::<i64>(), any::<i32>(), any::<i32>(), 1u32.., 0u32..3, any::<i64>(), any::<i64>()).prop_map(
            |(producer_id, producer_epoch, base_sequence, record_count, compression, first, max)| BatchHeader {
                producer_id,
                producer_epoch,
                base_sequence,
                record_count,
                compression,
                first_timestamp_ms: first,
                max_timestamp_ms: max,
            },
        )
    }

    proptest! {
        #[test]
        fn sealed_batches_verify(h in header(), records in proptest::collection::vec(any::<u8>(), 0..512)) {
            let b = Batch::seal(h, Bytes::from(records));
            prop_assert_eq!(b.verify(), Ok(()));
        }

        #[test]
        fn any_flipped_bit_is_detected(
            h in header(),
            records in proptest::collection::vec(any::<u8>(), 1..256),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let b = Batch::seal(h, Bytes::from(records.clone()));
            // Flip one bit in either the header or the records.
            let total = HEADER_LEN + records.len();
            let at = pos.index(total);
            let mut damaged = b.clone();
            if at < HEADER_LEN {
                let mut raw = h.encode();
                raw[at] ^= 1 << bit;
                damaged.header = BatchHeader {
                    producer_id: i64::from_be_bytes(raw[0..8].try_into().expect("8 bytes")),
                    producer_epoch: i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes")),
                    base_sequence: i32::from_be_bytes(raw[12..16].try_into().expect("4 bytes")),
                    record_count: u32::from_be_bytes(raw[16..20].try_into().expect("4 bytes")),
                    compression: u32::from_be_bytes(raw[20..24].try_into().expect("4 bytes")),
                    first_timestamp_ms: i64::from_be_bytes(raw[24..32].try_into().expect("8 bytes")),
                    max_timestamp_ms: i64::from_be_bytes(raw[32..40].try_into().expect("8 bytes")),
                };
            } else {
                let mut r = records.clone();
                r[at - HEADER_LEN] ^= 1 << bit;
                damaged.records = Bytes::from(r);
            }
            let is_checksum_error = matches!(damaged.verify(), Err(BatchError::ChecksumMismatch { .. }));
            prop_assert!(is_checksum_error);
        }
    }

    #[test]
    fn known_vector_is_stable() {
        // Pins the layout: a change here breaks every stored batch and client.
        let b = Batch::seal(BatchHeader::plain(1, 0), Bytes::from_static(b"hello"));
        let mut raw = Vec::from(BatchHeader::plain(1, 0).encode());
        raw.extend_from_slice(b"hello");
        assert_eq!(b.crc32c, crc32c::crc32c(&raw));
        assert_eq!(&raw[0..8], &(-1i64).to_be_bytes());
    }

    #[test]
    fn empty_batch_is_rejected() {
        let b = Batch::seal(BatchHeader::plain(0, 0), Bytes::new());
        assert_eq!(b.verify(), Err(BatchError::Empty));
    }
}
