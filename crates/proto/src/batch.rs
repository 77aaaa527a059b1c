//! The record batch on the wire (`v1::RecordBatch`) and in the domain
//! (`ferrolog_types::Batch`): converted here, once, for the broker's
//! services, the client and the tests. Nothing is checked beyond the shape
//! (the broker's `check_batch` verifies the CRC, codec and sizes).

use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;

use crate::v1;

/// A wire batch whose fields do not fit the domain batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBatch(pub String);

impl std::fmt::Display for InvalidBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidBatch {}

/// `b` as sent, its offsets starting at `base_offset` (0 for a produce:
/// the broker assigns them).
pub fn to_proto(base_offset: u64, b: &Batch) -> v1::RecordBatch {
    v1::RecordBatch {
        base_offset: base_offset as i64,
        producer_id: b.header.producer_id,
        producer_epoch: b.header.producer_epoch,
        base_sequence: b.header.base_sequence,
        record_count: b.header.record_count,
        compression: b.header.compression as i32,
        first_timestamp_ms: b.header.first_timestamp_ms,
        max_timestamp_ms: b.header.max_timestamp_ms,
        records: b.records.clone(),
        crc32c: b.crc32c,
    }
}

/// The domain batch of a wire batch, and its base offset (`None` when
/// negative: a produce's, which the broker ignores).
pub fn from_proto(b: v1::RecordBatch) -> Result<(Option<u64>, Batch), InvalidBatch> {
    let compression =
        u32::try_from(b.compression).map_err(|_| InvalidBatch(format!("unknown compression {}", b.compression)))?;
    let header = BatchHeader {
        producer_id: b.producer_id,
        producer_epoch: b.producer_epoch,
        base_sequence: b.base_sequence,
        record_count: b.record_count,
        compression,
        first_timestamp_ms: b.first_timestamp_ms,
        max_timestamp_ms: b.max_timestamp_ms,
    };
    Ok((u64::try_from(b.base_offset).ok(), Batch { header, records: b.records, crc32c: b.crc32c }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_survives_the_wire() {
        let mut header = BatchHeader::plain(3, 1_700_000_000_000);
        header.producer_id = 42;
        header.producer_epoch = 2;
        header.base_sequence = 7;
        let b = Batch::seal(header, vec![1u8, 2, 3, 4].into());
        let wire = to_proto(99, &b);
        assert_eq!(from_proto(wire), Ok((Some(99), b)));
        let bad = v1::RecordBatch { compression: -1, ..Default::default() };
        assert!(from_proto(bad).is_err(), "a negative codec is refused");
    }
}
