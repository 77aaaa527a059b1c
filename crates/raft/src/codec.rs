//! Encoding of the openraft values we store. postcard: compact, no schema
//! evolution beyond appending enum variants, which is all Raft entries need
//! while the openraft version is pinned (see docs/adr/0001).

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a value for storage.
pub fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("encode: {e}")))
}

/// Decodes a stored value; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("decode {what}: {e}")))
}
