//! The storage error type.

use std::io;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (IO, or a checksum mismatch in its own files).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A value failed its checksum or could not be decoded.
    #[error("corrupt value in column family {cf} at key {key}: {detail}")]
    Corrupt {
        /// Column family name.
        cf: &'static str,
        /// Hex of the key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// An earlier WAL fsync failed: the store stopped accepting writes.
    #[error("storage is stopped after a failed WAL sync: {0}")]
    Stopped(String),
    /// The data directory was written in another on-disk format.
    #[error(
        "the data directory is in on-disk format {found}, this broker reads format {expected}; \
         start it on an empty directory (format 1 stores are not converted)"
    )]
    Format {
        /// The format found.
        found: u32,
        /// The format this build reads.
        expected: u32,
    },
    /// The store is shutting down.
    #[error("storage is closed")]
    Closed,
}

impl StorageError {
    /// A corruption error for `key` in `cf`.
    pub fn corrupt(cf: &'static str, key: &[u8], detail: impl Into<String>) -> Self {
        StorageError::Corrupt { cf, key: hex(key), detail: detail.into() }
    }
}

/// Lower-case hex of a byte string (for keys in messages).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        let kind = match &e {
            StorageError::Corrupt { .. } => io::ErrorKind::InvalidData,
            StorageError::Rocks(r) if r.kind() == rocksdb::ErrorKind::Corruption => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
