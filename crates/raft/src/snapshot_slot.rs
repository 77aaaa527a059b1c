//! Where a state machine keeps its current snapshot: one sealed value
//! `(meta, data)` under a fixed key (for a partition, data is its applied
//! state only). Shared by the partition and metadata
//! state machines.

use std::io;

use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::WriteBatch;

use crate::codec;
// (The same type for both group kinds: snapshot metadata holds only log
// ids and memberships.)
use crate::types::alias::SnapshotMeta;

/// The current-snapshot slot of one state machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotSlot {
    /// Column family of the slot.
    pub cf: Cf,
    /// Key of the slot.
    pub key: [u8; 9],
}

impl SnapshotSlot {
    /// Adds "this is the current snapshot" to `wb`.
    pub fn put(&self, storage: &Storage, wb: &mut WriteBatch, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        storage.put(wb, self.cf, &self.key, &codec::encode(&(meta, data))?);
        Ok(())
    }

    /// Stores `(meta, data)` as the current snapshot and returns once durable.
    pub async fn store(&self, storage: &Storage, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut wb = storage.batch();
        self.put(storage, &mut wb, meta, data)?;
        // durability: openraft may purge the log up to this snapshot right
        // after it is built; the snapshot must survive a crash first.
        storage.write_durable(wb).await?;
        Ok(())
    }

    /// The current snapshot's meta and stored bytes, if any.
    pub fn load(&self, storage: &Storage) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        match storage.get(self.cf, &self.key)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode("current snapshot", &v)?)),
        }
    }
}
