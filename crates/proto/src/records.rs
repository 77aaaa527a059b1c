//! The records inside a batch: the one decoder (decompression included, and
//! bounded), and the rules a batch's records must meet before a broker
//! stores it.
//!
//! A batch's header says how many records it holds and their largest
//! timestamp; offsets are assigned from `record_count` and the index bisects
//! on `max_timestamp_ms`. A header that disagrees with its records shifts
//! every later offset or hides records from time lookups, and the CRC does
//! not help: the producer computed it over the lie. So the broker decodes
//! every batch it is asked to append ([`check`]) and refuses one whose
//! records do not match its header, and consumers decode with the same
//! function ([`decode`]), so a claimed decompressed size is bounded on both
//! sides (an LZ4 block announces its size before it is decompressed).
//!
//! The records blob is a `v1::RecordList`, uncompressed or compressed per
//! the header's codec: LZ4 as a block prefixed with its decompressed size
//! (4 bytes, little-endian), as `lz4_flex::compress_prepend_size` writes.
//! Zstandard is a known codec but neither side can decode it yet, so a
//! broker refuses it rather than store what it cannot check.

use bytes::Bytes;
use ferrolog_types::Batch;
use prost::Message;

use crate::v1;

/// The most bytes a batch's records may take once decompressed. The
/// largest batch a topic accepts is 16 MiB on the wire; this lets one
/// compress 4:1 at that size (and far more at usual sizes) while a lying
/// LZ4 size prefix cannot make a broker or consumer allocate more.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// The most an LZ4 block can expand: each byte of a block describes at most
/// 255 bytes of output (a match length byte), so a larger claim is a lie
/// and is refused before the output buffer is allocated.
const LZ4_MAX_RATIO: usize = 255;

/// Why a batch's records were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// The codec is one this build cannot decode.
    #[error("compression {0} is not supported (records must be decodable to be checked)")]
    Unsupported(u32),
    /// The decompressed size claimed by the records is over the bound.
    #[error("records claim {claimed} bytes decompressed, over the limit of {limit}")]
    TooLarge {
        /// The size the LZ4 prefix announced.
        claimed: usize,
        /// The bound ([`MAX_DECOMPRESSED_BYTES`] or the caller's).
        limit: usize,
    },
    /// The compressed block does not decompress.
    #[error("records do not decompress: {0}")]
    Decompress(String),
    /// The records are not a record list.
    #[error("records do not decode: {0}")]
    Decode(String),
    /// The header's record count is not the number of records.
    #[error("record_count is {header} but the batch holds {decoded} records")]
    Count {
        /// What the header says.
        header: u32,
        /// What the records hold.
        decoded: usize,
    },
    /// More records than the header's count (counting stopped there).
    #[error("record_count is {header} but the batch holds more records")]
    TooMany {
        /// What the header says.
        header: u32,
    },
    /// A record's offset delta is not its position.
    #[error("record {index} has offset delta {delta}: deltas must be 0, 1, 2, ... in order")]
    OffsetDelta {
        /// The record's position.
        index: usize,
        /// Its delta.
        delta: u32,
    },
    /// The header's timestamps do not match the records'.
    #[error("{0}")]
    Timestamps(String),
}

/// The plain (decompressed) record-list bytes of `batch`, at most `limit`
/// bytes.
fn plain(batch: &Batch, limit: usize) -> Result<Bytes, RecordsError> {
    let records = &batch.records;
    match batch.header.compression {
        c if c == v1::Compression::None as u32 => Ok(records.clone()),
        c if c == v1::Compression::Lz4 as u32 => {
            let Some((size, block)) = records.split_first_chunk::<4>() else {
                return Err(RecordsError::Decompress("no size prefix".into()));
            };
            let claimed = u32::from_le_bytes(*size) as usize;
            if claimed > limit {
                return Err(RecordsError::TooLarge { claimed, limit });
            }
            if claimed > block.len().saturating_mul(LZ4_MAX_RATIO) {
                return Err(RecordsError::Decompress(format!(
                    "{} bytes cannot decompress to the {claimed} announced",
                    block.len()
                )));
            }
            let out =
                lz4_flex::block::decompress(block, claimed).map_err(|e| RecordsError::Decompress(e.to_string()))?;
            if out.len() != claimed {
                return Err(RecordsError::Decompress(format!(
                    "decompressed to {} bytes, {claimed} announced",
                    out.len()
                )));
            }
            Ok(Bytes::from(out))
        }
        other => Err(RecordsError::Unsupported(other)),
    }
}

/// One top-level pass over protobuf bytes: calls `f(field, wire, value)`
/// for each field, `value` being a varint's value or a length-delimited
/// field's bytes (fixed-width fields are skipped). `Err` for bytes that are
/// not well formed.
fn walk(mut b: &[u8], mut f: impl FnMut(u32, Field<'_>) -> Result<bool, RecordsError>) -> Result<(), RecordsError> {
    use prost::encoding::WireType;
    use prost::encoding::decode_key;
    use prost::encoding::decode_varint;
    let bad = |e: prost::DecodeError| RecordsError::Decode(e.to_string());
    while !b.is_empty() {
        let (field, wire) = decode_key(&mut b).map_err(bad)?;
        let value = match wire {
            WireType::Varint => Field::Varint(decode_varint(&mut b).map_err(bad)?),
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                if n > b.len() {
                    return Err(RecordsError::Decode("truncated field".into()));
                }
                b = &b[n..];
                Field::Fixed
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut b).map_err(bad)?)
                    .map_err(|_| RecordsError::Decode("length".into()))?;
                if len > b.len() {
                    return Err(RecordsError::Decode("truncated field".into()));
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                Field::Bytes(v)
            }
            other => return Err(RecordsError::Decode(format!("unexpected wire type {other:?}"))),
        };
        if !f(field, value)? {
            break;
        }
    }
    Ok(())
}

/// A field's value, as [`walk`] sees it.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// What [`check`] reads of each record: its timestamp and offset delta
/// (field numbers of `v1::Record`).
const TIMESTAMP_FIELD: u32 = 4;
const OFFSET_DELTA_FIELD: u32 = 5;
/// The records field of `v1::RecordList`.
const RECORDS_FIELD: u32 = 1;

/// The uncompressed records blob of `(key, value)` pairs as every producer
/// writes it: offset deltas 0, 1, 2, ..., each record at `timestamp_ms`
/// (the header's first and max timestamp), no headers.
pub fn encode(records: impl IntoIterator<Item = (Option<Bytes>, Bytes)>, timestamp_ms: i64) -> Bytes {
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| v1::Record { key, value, headers: vec![], timestamp_ms, offset_delta: i as u32 })
        .collect();
    Bytes::from(v1::RecordList { records }.encode_to_vec())
}

/// Decodes `batch`'s records, decompressing at most `limit` bytes (use
/// [`MAX_DECOMPRESSED_BYTES`]), once [`check`] has passed them (so no more
/// records are decoded than the header claims). For consumers.
pub fn decode(batch: &Batch, limit: usize) -> Result<Vec<v1::Record>, RecordsError> {
    let bytes = plain(batch, limit)?;
    // The count and deltas, not the header's timestamps: a consumer reads
    // what older brokers stored too, and timestamps move no offset.
    check_plain(batch, &bytes, false)?;
    // Decoded from `Bytes`: keys and values share its buffer, not copies.
    let list = v1::RecordList::decode(bytes).map_err(|e| RecordsError::Decode(e.to_string()))?;
    Ok(list.records)
}

/// The rules a batch's records meet before a broker appends it: they
/// decode (decompressed size bounded by `limit`); there are `record_count`
/// of them; their offset deltas are 0, 1, 2, ... in order; the header's
/// first timestamp is the first record's and its max timestamp the largest
/// record's. Reads the records in place (no key or value is copied, no
/// record allocated: a small compressed block of millions of empty records
/// costs its decompressed size and nothing more). Returns the count.
pub fn check(batch: &Batch, limit: usize) -> Result<usize, RecordsError> {
    let bytes = plain(batch, limit)?;
    check_plain(batch, &bytes, true)
}

fn check_plain(batch: &Batch, bytes: &[u8], timestamps: bool) -> Result<usize, RecordsError> {
    let h = &batch.header;
    let mut n = 0usize;
    let mut first = None;
    let mut max = None;
    walk(bytes, |field, value| {
        let Field::Bytes(record) = value else { return Ok(true) };
        if field != RECORDS_FIELD {
            return Ok(true);
        }
        if n >= h.record_count as usize {
            return Err(RecordsError::TooMany { header: h.record_count });
        }
        // Proto3 defaults: an absent field is 0.
        let (mut ts, mut delta) = (0i64, 0u64);
        walk(record, |f, v| {
            match (f, v) {
                (TIMESTAMP_FIELD, Field::Varint(x)) => ts = x as i64,
                (OFFSET_DELTA_FIELD, Field::Varint(x)) => delta = x,
                (TIMESTAMP_FIELD | OFFSET_DELTA_FIELD, _) => {
                    return Err(RecordsError::Decode(format!("record field {f} of the wrong type")));
                }
                _ => {}
            }
            Ok(true)
        })?;
        if delta != n as u64 {
            return Err(RecordsError::OffsetDelta { index: n, delta: delta as u32 });
        }
        first.get_or_insert(ts);
        max = Some(max.map_or(ts, |m: i64| m.max(ts)));
        n += 1;
        Ok(true)
    })?;
    if n != h.record_count as usize {
        return Err(RecordsError::Count { header: h.record_count, decoded: n });
    }
    if !timestamps {
        return Ok(n);
    }
    if first != Some(h.first_timestamp_ms) {
        return Err(RecordsError::Timestamps(format!(
            "first_timestamp_ms is {} but the first record's timestamp is {first:?}",
            h.first_timestamp_ms
        )));
    }
    if max != Some(h.max_timestamp_ms) {
        return Err(RecordsError::Timestamps(format!(
            "max_timestamp_ms is {} but the records' largest timestamp is {max:?}",
            h.max_timestamp_ms
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use ferrolog_types::BatchHeader;

    use super::*;

    fn record(delta: u32, ts: i64, value: &[u8]) -> v1::Record {
        v1::Record {
            key: None,
            value: Bytes::copy_from_slice(value),
            headers: vec![],
            timestamp_ms: ts,
            offset_delta: delta,
        }
    }

    fn sealed(header: BatchHeader, records: Vec<v1::Record>) -> Batch {
        Batch::seal(header, Bytes::from(v1::RecordList { records }.encode_to_vec()))
    }

    fn good(n: u32) -> Batch {
        sealed(BatchHeader::plain(n, 1_000), (0..n).map(|i| record(i, 1_000, b"v")).collect())
    }

    fn lz4(b: &Batch) -> Batch {
        let mut h = b.header;
        h.compression = v1::Compression::Lz4 as u32;
        Batch::seal(h, Bytes::from(lz4_flex::compress_prepend_size(&b.records)))
    }

    #[test]
    fn encoded_records_pass_and_decode_back() {
        let blob = encode(
            [(Some(Bytes::from_static(b"k")), Bytes::from_static(b"a")), (None, Bytes::from_static(b"b"))],
            1_000,
        );
        let b = Batch::seal(BatchHeader::plain(2, 1_000), blob);
        assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES), Ok(2));
        let records = decode(&b, MAX_DECOMPRESSED_BYTES).expect("decodes");
        assert_eq!(records, vec![record_with_key(0, b"k", b"a"), record(1, 1_000, b"b")]);
    }

    fn record_with_key(delta: u32, key: &[u8], value: &[u8]) -> v1::Record {
        v1::Record { key: Some(Bytes::copy_from_slice(key)), ..record(delta, 1_000, value) }
    }

    #[test]
    fn a_batch_whose_header_matches_its_records_passes() {
        assert_eq!(check(&good(3), MAX_DECOMPRESSED_BYTES), Ok(3));
        assert_eq!(decode(&good(3), MAX_DECOMPRESSED_BYTES).map(|r| r.len()), Ok(3));
        assert_eq!(check(&lz4(&good(5)), MAX_DECOMPRESSED_BYTES), Ok(5));
        // Timestamps that differ: first is the first record's, max the largest.
        let mut h = BatchHeader::plain(3, 10);
        h.max_timestamp_ms = 30;
        let b = sealed(h, vec![record(0, 10, b"a"), record(1, 30, b"b"), record(2, 20, b"c")]);
        assert!(check(&b, MAX_DECOMPRESSED_BYTES).is_ok());
    }

    #[test]
    fn a_count_that_disagrees_with_the_records_is_refused() {
        let records: Vec<_> = (0..3).map(|i| record(i, 1_000, b"v")).collect();
        for claimed in [4, 1_000_000] {
            let b = sealed(BatchHeader::plain(claimed, 1_000), records.clone());
            let want = Some(RecordsError::Count { header: claimed, decoded: 3 });
            assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES).err(), want, "{claimed}");
            assert_eq!(decode(&b, MAX_DECOMPRESSED_BYTES).err(), want, "{claimed}");
        }
        for claimed in [1, 2] {
            let b = sealed(BatchHeader::plain(claimed, 1_000), records.clone());
            let want = Some(RecordsError::TooMany { header: claimed });
            assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES).err(), want, "{claimed}");
            assert_eq!(decode(&b, MAX_DECOMPRESSED_BYTES).err(), want, "{claimed}");
        }
    }

    #[test]
    fn offset_deltas_must_be_the_positions() {
        for deltas in [[0, 0, 1], [1, 2, 3], [0, 2, 1], [0, 1, 7]] {
            let records = deltas.iter().map(|d| record(*d, 1_000, b"v")).collect();
            let b = sealed(BatchHeader::plain(3, 1_000), records);
            assert!(matches!(check(&b, MAX_DECOMPRESSED_BYTES), Err(RecordsError::OffsetDelta { .. })), "{deltas:?}");
        }
    }

    #[test]
    fn header_timestamps_must_be_the_records() {
        let mut h = BatchHeader::plain(2, 1_000);
        h.max_timestamp_ms = 5_000; // a record at 5 s is claimed, none is there
        let b = sealed(h, vec![record(0, 1_000, b"a"), record(1, 2_000, b"b")]);
        assert!(matches!(check(&b, MAX_DECOMPRESSED_BYTES), Err(RecordsError::Timestamps(_))));
        let mut h = BatchHeader::plain(2, 1_000);
        h.max_timestamp_ms = 2_000;
        h.first_timestamp_ms = 0;
        let b = sealed(h, vec![record(0, 1_000, b"a"), record(1, 2_000, b"b")]);
        assert!(matches!(check(&b, MAX_DECOMPRESSED_BYTES), Err(RecordsError::Timestamps(_))));
    }

    #[test]
    fn garbage_under_a_valid_crc_is_refused() {
        for junk in [vec![0xffu8; 64], vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], b"not protobuf at all".to_vec()] {
            let b = Batch::seal(BatchHeader::plain(1, 1_000), Bytes::from(junk.clone()));
            assert!(b.verify().is_ok(), "the CRC is fine: the producer computed it");
            assert!(check(&b, MAX_DECOMPRESSED_BYTES).is_err(), "{junk:?}");
        }
        // An empty blob is an empty list: refused by the count.
        let b = Batch::seal(BatchHeader::plain(1, 1_000), Bytes::new());
        assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES).err(), Some(RecordsError::Count { header: 1, decoded: 0 }));
    }

    #[test]
    fn a_claimed_decompressed_size_is_bounded_before_anything_is_allocated() {
        // Four bytes announcing 4 GiB, then nothing.
        let mut h = BatchHeader::plain(1, 1_000);
        h.compression = v1::Compression::Lz4 as u32;
        let b = Batch::seal(h, Bytes::from(vec![0xff, 0xff, 0xff, 0xff, 0x00]));
        assert_eq!(
            check(&b, MAX_DECOMPRESSED_BYTES).err(),
            Some(RecordsError::TooLarge { claimed: u32::MAX as usize, limit: MAX_DECOMPRESSED_BYTES })
        );
        // A size no block of that length can expand to.
        let b = Batch::seal(h, Bytes::from(vec![0x00, 0x10, 0x00, 0x00, 0x00]));
        assert!(matches!(check(&b, MAX_DECOMPRESSED_BYTES), Err(RecordsError::Decompress(_))));
        // A real block over a smaller bound.
        let big = lz4(&sealed(BatchHeader::plain(1, 1_000), vec![record(0, 1_000, &[7u8; 10_000])]));
        assert!(matches!(check(&big, 1_000), Err(RecordsError::TooLarge { .. })));
        assert!(check(&big, MAX_DECOMPRESSED_BYTES).is_ok());
        let no_prefix = Batch::seal(h, Bytes::from(vec![0x01]));
        assert!(matches!(check(&no_prefix, MAX_DECOMPRESSED_BYTES), Err(RecordsError::Decompress(_))));
    }

    #[test]
    fn a_tiny_block_of_millions_of_empty_records_is_refused_without_decoding_them() {
        // 16 MiB of empty records (two bytes each) compress to ~64 KiB; a
        // header claiming one record is refused by counting, not by
        // decoding 8 million records.
        let list = [0x0au8, 0x00].repeat(8 << 20);
        let mut h = BatchHeader::plain(1, 1_000);
        h.compression = v1::Compression::Lz4 as u32;
        let b = Batch::seal(h, Bytes::from(lz4_flex::compress_prepend_size(&list)));
        assert!(b.records.len() < 1 << 20, "{} bytes compressed", b.records.len());
        assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES).err(), Some(RecordsError::TooMany { header: 1 }));
    }

    #[test]
    fn zstd_is_refused_until_it_can_be_checked() {
        let mut h = BatchHeader::plain(1, 1_000);
        h.compression = v1::Compression::Zstd as u32;
        let b = Batch::seal(h, Bytes::from(vec![1, 2, 3]));
        assert_eq!(check(&b, MAX_DECOMPRESSED_BYTES).err(), Some(RecordsError::Unsupported(2)));
    }
}
