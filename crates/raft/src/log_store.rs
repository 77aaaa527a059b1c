//! [`LogStore`]: openraft's log storage for one Raft group, in the broker's
//! shared RocksDB.
//!
//! Keys: `Log` CF `group ‖ index` → entry; `RaftMeta` CF `group ‖ kind` →
//! vote / committed / last purged log id. Every value is sealed (CRC32C).
//!
//! Durability contract (openraft's, and how it is met):
//! - `append`: entries are written unsynced (readable at once), and the
//!   flush callback fires from the group-commit syncer after the WAL fsync.
//! - `save_vote`: a durable write; returns after the fsync.
//! - `truncate_after`, `purge`, `save_committed`: buffered writes. `purge`
//!   moves openraft's purge marker but keeps the entries that still hold a
//!   partition's retained batches (see [`crate::state_machine::log_floor`]). They need
//!   no fsync of their own: the WAL is ordered, so they become durable with
//!   the next append or vote of any group, and until then losing them only
//!   rolls the group back to a state it was in before (longer log, fewer
//!   purged entries, older commit) that Raft repairs itself.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use ferrolog_partition::PartitionState;
use ferrolog_storage::Cf;
use ferrolog_storage::Storage;
use ferrolog_storage::keys;
use ferrolog_types::GroupId;
use ferrolog_types::limits::MAX_APPEND_ENTRIES_BYTES;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;

use crate::acks::AckTracker;
use crate::acks::Acked;
use crate::codec;
use crate::types::GroupConfig;
use crate::types::MetaConfig;
use crate::types::PartitionConfig;
use crate::types::alias::LogId;
use crate::types::alias::Vote;

type Entry<C> = crate::types::alias::EntryOf<C>;

const META_VOTE: u8 = 1;
const META_COMMITTED: u8 = 2;
const META_PURGED: u8 = 3;

/// The log of one Raft group of kind `C` (a partition group unless named).
/// Cheap to clone (a group id and `Arc`s).
#[derive(Debug)]
pub struct LogStore<C: GroupConfig = PartitionConfig> {
    group: GroupId,
    storage: Arc<Storage>,
    /// acks=1 support; only partition groups on a broker have one.
    acks: Option<Arc<AckTracker>>,
    _kind: std::marker::PhantomData<fn() -> C>,
}

impl<C: GroupConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            storage: self.storage.clone(),
            acks: self.acks.clone(),
            _kind: std::marker::PhantomData,
        }
    }
}

impl<C: GroupConfig> LogStore<C> {
    fn open(storage: Arc<Storage>, group: GroupId, acks: Option<Arc<AckTracker>>) -> Self {
        LogStore { group, storage, acks, _kind: std::marker::PhantomData }
    }

    /// The acks=1 waiters of this log, if it has any.
    pub(crate) fn acks(&self) -> Option<&Arc<AckTracker>> {
        self.acks.as_ref()
    }
}

impl LogStore<MetaConfig> {
    /// The metadata group's log in `storage`.
    pub fn metadata(storage: Arc<Storage>) -> Self {
        Self::open(storage, GroupId::METADATA, None)
    }
}

impl LogStore<PartitionConfig> {
    /// The log of partition group `group` in `storage`.
    pub fn new(storage: Arc<Storage>, group: GroupId) -> Self {
        Self::open(storage, group, None)
    }

    /// The log of a partition group whose leader answers acks=1 producers.
    pub fn with_acks(storage: Arc<Storage>, group: GroupId, acks: Arc<AckTracker>) -> Self {
        Self::open(storage, group, Some(acks))
    }

    /// The projected outcomes of the acks=1 waiters among `entries`.
    pub(crate) fn project_acks(&self, entries: &[Entry<PartitionConfig>]) -> io::Result<Vec<(u64, Acked)>> {
        let Some(acks) = &self.acks else { return Ok(Vec::new()) };
        let Some(first) = entries.first().map(|e| e.log_id().index) else { return Ok(Vec::new()) };
        let mut state = match acks.take_projection_before(first) {
            Some(s) => s,
            None => self.recompute_projection(first)?,
        };
        let mut out = Vec::new();
        let mut last_index = first.saturating_sub(1);
        for e in entries {
            last_index = e.log_id().index;
            if let EntryPayload::Normal(crate::PartitionEntry { cmd, ack }) = &e.payload {
                // Exactly what apply will do (checksum, dedup, offsets).
                let (outcome, _) = state.apply(cmd.clone());
                if *ack != 0 {
                    out.push((*ack, Acked { index: last_index, outcome }));
                }
            }
        }
        acks.set_projection(last_index, state);
        Ok(out)
    }

    /// The partition state after log index `before - 1`: the applied state
    /// with the log's commands between it and `before` applied.
    fn recompute_projection(&self, before: u64) -> io::Result<PartitionState> {
        let applied = crate::state_machine::load_applied(&self.storage, self.group)?;
        let mut state = applied.partition;
        let from = applied.last_applied.map(|l| l.index + 1).unwrap_or(0);
        for item in self.storage.scan(Cf::Log, self.group, from, before) {
            let (index, bytes) = item?;
            let e = self.decode_entry(index, &bytes)?;
            if let EntryPayload::Normal(crate::PartitionEntry { cmd, .. }) = e.payload {
                state.apply(cmd);
            }
        }
        Ok(state)
    }
}

impl<C: GroupConfig> LogStore<C> {
    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, kind: u8, what: &str) -> io::Result<Option<T>> {
        match self.storage.get(Cf::RaftMeta, &keys::singleton(self.group, kind))? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode(what, &v)?)),
        }
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> io::Result<Entry<C>> {
        let entry: Entry<C> = codec::decode("log entry", bytes)?;
        // A value stored under the wrong key (a bug, or a misdirected write)
        // would break log matching silently: refuse it.
        if entry.log_id().index != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: entry under index {index} claims index {}", self.group, entry.log_id().index),
            ));
        }
        Ok(entry)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C: GroupConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry<C>>> {
        let (start, end) = bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        crate::faults::check_log_read(self.group)?;
        let mut out = Vec::new();
        for item in self.storage.scan(Cf::Log, self.group, start, end) {
            let (index, bytes) = item?;
            out.push(self.decode_entry(index, &bytes)?);
        }
        Ok(out)
    }

    /// Replication reads through this: a prefix of `[start, end)` within
    /// [`MAX_APPEND_ENTRIES_BYTES`], and always at least one entry (an empty
    /// answer would stall replication). A follower any distance behind is
    /// sent requests of bounded size that its decode limit accepts.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry<C>>> {
        crate::faults::check_log_read(self.group)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.storage.scan(Cf::Log, self.group, start, end) {
            let (index, raw) = item?;
            if !out.is_empty() && bytes + raw.len() > MAX_APPEND_ENTRIES_BYTES {
                break;
            }
            bytes += raw.len();
            out.push(self.decode_entry(index, &raw)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_meta(META_VOTE, "vote")
    }

    /// What the state machine applies from: read in chunks of at most
    /// [`MAX_APPEND_ENTRIES_BYTES`] as the apply consumes them (openraft's
    /// default reads the whole range into memory first; a range can be a
    /// follower's whole catch-up).
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = io::Result<Entry<C>>> + openraft::OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend,
    {
        use futures::StreamExt;
        let (start, end) = bounds(&range);
        let chunks = futures::stream::unfold((self.clone(), start), move |(mut reader, next)| async move {
            if next >= end {
                return None;
            }
            match reader.limited_get_log_entries(next, end).await {
                Ok(chunk) => {
                    // An empty chunk: the log holds nothing more of the range.
                    let after = chunk.last()?.index() + 1;
                    Some((Ok(chunk), (reader, after)))
                }
                Err(e) => Some((Err(e), (reader, end))),
            }
        });
        chunks.flat_map(|chunk| match chunk {
            Ok(entries) => futures::stream::iter(entries.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::iter([Err(e)]).right_stream(),
        })
    }
}

impl<C: GroupConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> io::Result<LogState<C>> {
        let last_purged: Option<LogId> = self.read_meta(META_PURGED, "purged log id")?;
        let last = match self.storage.last(Cf::Log, self.group)? {
            Some((index, bytes)) => Some(self.decode_entry(index, &bytes)?.log_id()),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let mut wb = self.storage.batch();
        self.storage.put(&mut wb, Cf::RaftMeta, &keys::singleton(self.group, META_VOTE), &codec::encode(vote)?);
        // durability: a vote must be on disk before it is granted or acted
        // upon; write_durable returns only after the WAL fsync.
        self.storage.write_durable(wb).await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let mut wb = self.storage.batch();
        let key = keys::singleton(self.group, META_COMMITTED);
        match committed {
            Some(c) => self.storage.put(&mut wb, Cf::RaftMeta, &key, &codec::encode(&c)?),
            None => self.storage.delete(&mut wb, Cf::RaftMeta, &key),
        }
        // Not synced: committed is a hint that lets a restarted node re-apply
        // without waiting for the leader; losing the latest one is harmless.
        self.storage.write_buffered(wb)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.read_meta(META_COMMITTED, "committed log id")
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let mut wb = self.storage.batch();
        for entry in &entries {
            let index = entry.log_id().index;
            self.storage.put(&mut wb, Cf::Log, &keys::indexed(self.group, index), &codec::encode(entry)?);
        }
        let acked = C::acks_among(self, &entries)?;
        let acks = self.acks.clone();
        // durability: the entries are readable when this returns; openraft
        // (and any acks=1 producer) is told they are flushed only from the
        // syncer, after the WAL fsync that covers them (shared with every
        // other group's appends).
        self.storage
            .write_durable_then(
                wb,
                Box::new(move |r| {
                    let ok = r.is_ok();
                    callback.io_completed(r.map_err(io::Error::from));
                    if ok && let Some(acks) = acks {
                        acks.complete(&acked);
                    }
                }),
            )
            .await?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        C::on_truncate(self);
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let mut wb = self.storage.batch();
        self.storage.delete_range(&mut wb, Cf::Log, &keys::indexed(self.group, from), &keys::group_end(self.group));
        self.storage.write_buffered(wb)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut wb = self.storage.batch();
        // The marker and the deletion are one atomic batch: after a crash
        // either both happened or neither, so no hole is ever visible.
        self.storage.put(&mut wb, Cf::RaftMeta, &keys::singleton(self.group, META_PURGED), &codec::encode(&log_id)?);
        // A partition's log is its data: entries that hold retained batches
        // stay (openraft no longer reads them; fetch does, through the
        // index) until retention moves the log start past them.
        let mut upto = log_id.index + 1;
        if let Some(floor) = crate::state_machine::log_floor(&self.storage, self.group)? {
            upto = upto.min(floor);
        }
        self.storage.delete_range(&mut wb, Cf::Log, &keys::indexed(self.group, 0), &keys::indexed(self.group, upto));
        self.storage.write_buffered(wb)?;
        Ok(())
    }
}

/// A flush callback and a future that resolves when it fires: for callers
/// outside openraft (benchmarks, tests, tools) that append directly.
pub fn flush_signal<C: GroupConfig>() -> (IOFlushed<C>, impl std::future::Future<Output = io::Result<()>> + Send) {
    use openraft::type_config::TypeConfigExt;
    let (tx, rx) = C::oneshot::<io::Result<()>>();
    let fut = async move { rx.await.map_err(|_| io::Error::other("flush callback dropped"))? };
    (IOFlushed::signal(tx), fut)
}
