//! Sealed values: `crc32c (4 bytes, big-endian) ‖ payload`.
//!
//! RocksDB checks its own blocks, but a value can also be damaged before it
//! reaches RocksDB (a bad buffer) or be written by a bug to the wrong key;
//! the per-value checksum catches what block checksums cannot, at the cost of
//! 4 bytes and one CRC32C (hardware-accelerated) per value.

use crate::StorageError;

/// Prepends the checksum of `payload`.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Checks and strips the checksum; `cf` and `key` name the value in errors.
pub fn open<'a>(cf: &'static str, key: &[u8], raw: &'a [u8]) -> Result<&'a [u8], StorageError> {
    let Some((crc, payload)) = raw.split_first_chunk::<4>() else {
        return Err(StorageError::corrupt(cf, key, format!("value of {} bytes has no checksum", raw.len())));
    };
    let stored = u32::from_be_bytes(*crc);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(StorageError::corrupt(
            cf,
            key,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_single_bit_flip_is_caught() {
        let sealed = seal(b"an entry");
        assert_eq!(open("log", b"k", &sealed).expect("intact"), b"an entry");
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut d = sealed.clone();
                d[byte] ^= 1 << bit;
                assert!(open("log", b"k", &d).is_err(), "flip at byte {byte} bit {bit} not caught");
            }
        }
        assert!(open("log", b"k", &[1, 2]).is_err());
    }
}
