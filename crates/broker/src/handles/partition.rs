//! [`PartitionHandle`]: produce, fetch and list offsets on one partition
//! replica of this broker.
//!
//! Owns the three acks paths (acks=0 queued, acks=1 answered once the leader
//! has synced the entry to its own log, acks=all once a quorum committed and
//! it applied), the checks a batch passes before it reaches Raft, the fetch
//! long poll and the rule for when an offset is *out of range* rather than
//! *not yet available*.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_metadata::DEFAULT_MAX_MESSAGE_BYTES;
use ferrolog_metadata::Topic;
use ferrolog_partition::Outcome;
use ferrolog_proto::records;
use ferrolog_raft::PartitionEntry;
use ferrolog_raft::types::NotACommand;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::RaftError;
use openraft::impls::ProgressResponder;

use super::Core;
use super::now_ms;
use crate::error::BrokerError;
use crate::failpoints;
use crate::groups::Replica;

/// Default fetch size limit when the request names none.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 4 << 20;
/// How far ahead of the broker's clock a batch's timestamps may be
/// (Kafka's `log.message.timestamp.after.max.ms`).
pub const MAX_TIMESTAMP_AHEAD_MS: i64 = 3_600_000;
/// Most batches in one fetch answer (besides the byte cap).
const MAX_FETCH_BATCHES: usize = 4096;
/// Compression codecs a batch may name (none, LZ4, zstd).
const KNOWN_COMPRESSIONS: std::ops::RangeInclusive<u32> = 0..=2;

/// How durable a produce must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Fire and forget: answered once queued; may be lost.
    None,
    /// Synced to the leader's own log.
    Leader,
    /// Committed by a quorum of the partition's replicas.
    All,
}

impl Acks {
    pub(crate) fn slot(self) -> usize {
        match self {
            Acks::All => 0,
            Acks::Leader => 1,
            Acks::None => 2,
        }
    }
}

/// The answer to a produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Offsets of the batch's first and last record; `None` with acks=0.
    pub offsets: Option<(u64, u64)>,
    /// The partition's high watermark as this leader knows it.
    pub high_watermark: u64,
    /// The batch was a retry of one already in the log: these are the
    /// offsets it got then, nothing was appended now.
    pub duplicate: bool,
    /// Broker time of the answer (ms since the epoch); `None` with acks=0.
    pub append_time_ms: Option<i64>,
}

/// What a fetch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchArgs {
    /// First offset wanted.
    pub offset: u64,
    /// How long to wait for data when there is none yet (capped at
    /// `fetch_max_wait_ms`); zero answers at once.
    pub max_wait: Duration,
    /// Byte cap of the answer; `None` for [`DEFAULT_FETCH_MAX_BYTES`].
    /// Capped at `ferrolog_types::limits::MAX_FETCH_BYTES` whatever is asked.
    pub max_bytes: Option<usize>,
}

/// A fetch's answer: committed batches from the one holding the offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `(base offset, batch)`, in order.
    pub batches: Vec<(u64, Batch)>,
    /// Offset after the last committed record this replica has applied.
    pub high_watermark: u64,
    /// First offset still held.
    pub log_start: u64,
}

/// Which offset a list-offsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start.
    Earliest,
    /// The high watermark (where the next record goes).
    Latest,
    /// The first batch whose newest record is at or after this time (ms);
    /// the high watermark when there is none.
    Timestamp(i64),
}

/// One partition replica on this broker, with what its topic's metadata
/// says of it.
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    core: Core,
    topic: Topic,
    replica: Arc<Replica>,
}

impl PartitionHandle {
    pub(crate) fn new(core: Core, topic: Topic, replica: Arc<Replica>) -> Self {
        PartitionHandle { core, topic, replica }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// The partition number.
    pub fn partition(&self) -> u32 {
        self.replica.partition
    }

    /// High watermark and log start as this replica has applied them.
    pub fn bounds(&self) -> (u64, u64) {
        let p = *self.replica.progress.borrow();
        (p.next_offset, p.log_start)
    }

    /// Appends `batch` if this broker leads the partition, answering once
    /// `acks` is met (or with `Timeout` after `timeout`, default
    /// `produce_timeout_default_ms`). Not counted in the metrics: front ends
    /// call [`Core::produce`], which is.
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), topic = %self.topic.name, partition = self.partition()))]
    pub async fn produce(&self, batch: Batch, acks: Acks, timeout: Option<Duration>) -> Result<Produced, BrokerError> {
        let timeout = timeout.unwrap_or(self.core.timings().produce_timeout_default);
        self.produce_inner(batch, acks, timeout).await
    }

    async fn produce_inner(&self, batch: Batch, acks: Acks, timeout: Duration) -> Result<Produced, BrokerError> {
        self.check_leader().await?;
        let max = match self.topic.config.max_message_bytes {
            0 => DEFAULT_MAX_MESSAGE_BYTES,
            m => m,
        };
        check_batch(&batch, max)?;
        self.check_not_fenced(&batch.header)?;
        let replica = &self.replica;
        let hw = || replica.progress.borrow().next_offset;
        replica.wake();
        let (base, last, duplicate) = match acks {
            Acks::None => {
                // Fire and forget: errors after this point are not reported.
                let _ = replica.raft.client_write_ff(PartitionEntry::append(batch), None).await;
                return Ok(Produced { offsets: None, high_watermark: hw(), duplicate: false, append_time_ms: None });
            }
            Acks::All => {
                let fut = replica.raft.client_write(PartitionEntry::append(batch));
                let resp = tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(|_| BrokerError::Timeout(format!("not committed within {timeout:?}")))?
                    .map_err(|e| self.core.write_error(e, "produce"))?;
                produced(resp.data.outcome())?
            }
            Acks::Leader => {
                // Answered by the log store once the entry is synced to this
                // leader's log (the acks token), or by Raft if it commits
                // (and applies) first.
                let (token, acked) = replica.acks.register();
                let (responder, _commit_rx, complete_rx) = ProgressResponder::new();
                let req = PartitionEntry { cmd: ferrolog_partition::Command::Append(batch), ack: token };
                if let Err(e) = replica.raft.client_write_ff(req, Some(responder)).await {
                    replica.acks.cancel(token);
                    return Err(BrokerError::Unavailable(format!("produce: {e}")));
                }
                let result = tokio::time::timeout(timeout, async {
                    tokio::select! {
                        a = acked => match a {
                            Ok(a) => produced(Ok(a.outcome)),
                            Err(_) => Err(BrokerError::Unavailable("produce: leader log closed".into())),
                        },
                        done = complete_rx => match done {
                            Ok(Ok(resp)) => produced(resp.data.outcome()),
                            Ok(Err(e)) => Err(self.core.write_error(RaftError::APIError(e), "produce")),
                            Err(_) => Err(BrokerError::Unavailable("produce: raft dropped the request".into())),
                        },
                    }
                })
                .await;
                replica.acks.cancel(token);
                result.map_err(|_| BrokerError::Timeout(format!("not appended within {timeout:?}")))??
            }
        };
        // The answer of both waiting acks levels, once the level is met.
        failpoints::drop_produce_response(duplicate)?;
        Ok(Produced { offsets: Some((base, last)), high_watermark: hw(), duplicate, append_time_ms: Some(now_ms()) })
    }

    /// Committed batches from the one holding `args.offset`. Any replica
    /// serves a fetch: it holds only applied, i.e. committed, batches. Not
    /// counted in the metrics ([`Core::fetch`] is).
    #[tracing::instrument(skip_all, fields(node = self.core.node_id(), topic = %self.topic.name, partition = self.partition()))]
    pub async fn fetch(&self, args: FetchArgs) -> Result<Fetched, BrokerError> {
        let replica = &self.replica;
        let offset = args.offset;
        let out_of_range = |p: ferrolog_raft::state_machine::Progress| BrokerError::OutOfRange {
            offset: offset as i64,
            start: p.log_start,
            end: p.next_offset,
        };
        let mut progress = replica.progress.clone();
        let p = *progress.borrow_and_update();
        if offset < p.log_start {
            return Err(out_of_range(p));
        }
        if offset > p.next_offset && self.is_settled_leader() {
            return Err(out_of_range(p));
        }
        // An offset past this replica's high watermark that it cannot rule
        // out (a follower behind, a broker replaying its log after a
        // restart, a new leader before its first commit) is *not yet
        // available*: wait like a long poll and answer with what is there
        // (possibly nothing), never with out-of-range, which would make
        // consumers reset their position.
        if offset >= p.next_offset && !args.max_wait.is_zero() {
            let wait = args.max_wait.min(self.core.timings().fetch_max_wait);
            let _ = tokio::time::timeout(wait, progress.wait_for(|p| p.next_offset > offset)).await;
        }
        let p = *replica.progress.borrow();
        // The broker's cap holds whatever the client asks: an answer is
        // built in memory and must decode within the client's limit.
        let max_bytes = args.max_bytes.unwrap_or(DEFAULT_FETCH_MAX_BYTES).min(ferrolog_types::limits::MAX_FETCH_BYTES);
        // One seek finds the batch holding `offset`; the reads are blocking
        // RocksDB calls, off the async workers.
        let reader = replica.reader.clone();
        let end = p.next_offset;
        let read = tokio::task::spawn_blocking(move || reader.read(offset, end, MAX_FETCH_BATCHES, max_bytes))
            .await
            .map_err(|e| BrokerError::Internal(format!("fetch read task: {e}")))?;
        let batches = match read {
            Ok(r) => r,
            // Retention trimmed the offset away after the bounds check above.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && offset < replica.progress.borrow().log_start => {
                return Err(out_of_range(*replica.progress.borrow()));
            }
            Err(e) => {
                return Err(BrokerError::Internal(format!("read {}/{}: {e}", self.topic.name, self.partition())));
            }
        };
        Ok(Fetched { batches, high_watermark: p.next_offset, log_start: p.log_start })
    }

    /// The offset `spec` names, from this replica's applied state.
    pub async fn list_offsets(&self, spec: OffsetSpec) -> Result<u64, BrokerError> {
        let p = *self.replica.progress.borrow();
        Ok(match spec {
            OffsetSpec::Earliest => p.log_start,
            OffsetSpec::Latest => p.next_offset,
            OffsetSpec::Timestamp(ts) => {
                // The first batch whose newest record is at or after the
                // timestamp (its base offset: brokers do not decode records
                // inside a batch), found by bisecting the offset index.
                let reader = self.replica.reader.clone();
                let (start, end) = (p.log_start, p.next_offset);
                tokio::task::spawn_blocking(move || reader.offset_for_timestamp(start, end, ts))
                    .await
                    .map_err(|e| BrokerError::Internal(format!("list offsets task: {e}")))?
                    .map_err(|e| BrokerError::Internal(e.to_string()))?
                    .unwrap_or(p.next_offset)
            }
        })
    }

    async fn check_leader(&self) -> Result<(), BrokerError> {
        let leader = self.replica.raft.current_leader().await;
        if leader != Some(self.core.node_id()) {
            return Err(BrokerError::NotLeader {
                what: format!(
                    "broker {} is not the leader of {}/{}",
                    self.core.node_id(),
                    self.topic.name,
                    self.partition()
                ),
                hint: self.core.hint(leader),
            });
        }
        Ok(())
    }

    /// Whether this replica knows its high watermark is the partition's: it
    /// leads, has committed an entry of its own term (openraft's blank entry
    /// on election) and applied everything committed. Only then is a fetch
    /// past the high watermark really out of range.
    pub fn is_settled_leader(&self) -> bool {
        let m = self.replica.raft.metrics().borrow_watched().clone();
        let leads = m.current_leader == Some(self.core.node_id()) && m.state == openraft::ServerState::Leader;
        let committed = m.cluster_committed.as_ref();
        let own_term_committed = committed.is_some_and(|c| c.committed_leader_id().term == m.current_term);
        leads && own_term_committed && m.last_applied.as_ref().map(|l| l.index) >= committed.map(|c| c.index)
    }

    /// Fences a zombie before it appends anything: a named producer whose
    /// epoch is older than the one the metadata group last handed out. (The
    /// partition state machine fences too, once the newer epoch wrote there;
    /// this check also covers partitions the new instance has not written.)
    /// An idempotent batch's producer must be one InitProducer issued, at
    /// an epoch it issued, and not fenced by a newer epoch. Ids and epochs
    /// a client made up would otherwise create producer-table entries that
    /// live for the producer expiry (7 days). Refused as retriable: this
    /// broker's metadata may not have applied a just-issued id yet
    /// (InitProducer waits for it, but only up to its fence timeout).
    fn check_not_fenced(&self, h: &BatchHeader) -> Result<(), BrokerError> {
        if h.producer_id == ferrolog_types::batch::NO_PRODUCER_ID {
            return Ok(());
        }
        let Ok(meta) = self.core.meta() else { return Ok(()) };
        let state = meta.state.borrow();
        let cluster = &state.cluster;
        let (id, epoch) = (h.producer_id, h.producer_epoch);
        match cluster.producer_epochs.get(&id).copied() {
            Some(cur) if epoch < cur => Err(BrokerError::Fenced(format!(
                "producer {id} epoch {epoch} is fenced: a newer instance holds epoch {cur}"
            ))),
            Some(cur) if epoch > cur => Err(BrokerError::Unavailable(format!(
                "producer {id} epoch {epoch} was not issued (the newest this broker knows is {cur}); \
                 producer ids and epochs come from InitProducer"
            ))),
            Some(_) => Ok(()),
            // An unnamed producer: any issued id, at epoch 0.
            None if (0..cluster.next_producer_id).contains(&id) && epoch == 0 => Ok(()),
            None => Err(BrokerError::Unavailable(format!(
                "producer {id} epoch {epoch} was not issued by InitProducer (as far as this broker's metadata \
                 knows: {} ids issued)",
                cluster.next_producer_id
            ))),
        }
    }
}

/// The checks a produced batch passes before it reaches Raft: not empty, a
/// known codec, no timestamps from the future, within `max_bytes`
/// (the topic's max.message.bytes), its checksum, and records that match
/// its header (decoded, decompression bounded: `ferrolog_proto::records`).
/// A batch whose `record_count` lies would shift every later offset.
pub fn check_batch(batch: &Batch, max_bytes: u32) -> Result<(), BrokerError> {
    let h = &batch.header;
    if h.record_count == 0 {
        return Err(BrokerError::InvalidArgument("record batch is empty (record_count = 0)".into()));
    }
    if !KNOWN_COMPRESSIONS.contains(&h.compression) {
        return Err(BrokerError::InvalidArgument(format!("unknown compression {}", h.compression)));
    }
    // A batch from the future would hold up the index's running maximum
    // timestamp, which ListOffsets by time and retention.ms bisect on, for
    // every later batch.
    let horizon = now_ms() + MAX_TIMESTAMP_AHEAD_MS;
    if h.max_timestamp_ms > horizon {
        return Err(BrokerError::InvalidArgument(format!(
            "record batch max timestamp {} ms is more than {MAX_TIMESTAMP_AHEAD_MS} ms ahead of the broker's clock",
            h.max_timestamp_ms
        )));
    }
    if batch.size_bytes() > max_bytes as usize {
        return Err(BrokerError::InvalidArgument(format!(
            "record batch of {} bytes exceeds max.message.bytes ({max_bytes})",
            batch.size_bytes()
        )));
    }
    batch.verify().map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
    records::check(batch, records::MAX_DECOMPRESSED_BYTES)
        .map(drop)
        .map_err(|e| BrokerError::CorruptBatch(format!("record batch refused: {e}")))
}

/// The producer's view of an applied (or projected) append: offsets and
/// whether it was a retry of a batch already appended.
fn produced(r: Result<Outcome, NotACommand>) -> Result<(u64, u64, bool), BrokerError> {
    let outcome = r.map_err(|e| BrokerError::Internal(format!("produce: {e}")))?;
    match outcome.into_append() {
        Ok(Ok(a)) => Ok((a.base_offset, a.last_offset, a.duplicate)),
        Ok(Err(r)) => Err(r.into()),
        // Impossible: applying an append answers as an append (tested in
        // ferrolog-partition); reported, not panicked on.
        Err(other) => Err(BrokerError::Internal(format!("produce: applying it answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn batch(records: u32, ts: i64) -> Batch {
        let blob = ferrolog_proto::records::encode((0..records).map(|_| (None, Bytes::from(vec![7u8; 100]))), ts);
        Batch::seal(BatchHeader::plain(records, ts), blob)
    }

    #[test]
    fn a_sound_batch_passes() {
        check_batch(&batch(3, now_ms()), 1 << 20).expect("sound batch");
    }

    #[test]
    fn bad_batches_are_refused_with_their_reason() {
        let e = check_batch(&batch(0, now_ms()), 1 << 20).expect_err("must fail");
        assert!(matches!(e, BrokerError::InvalidArgument(ref m) if m.contains("empty")), "{e}");

        let mut b = batch(1, now_ms());
        b.header.compression = 9;
        let e = check_batch(&b, 1 << 20).expect_err("must fail");
        assert!(e.to_string().contains("unknown compression 9"), "{e}");

        let e = check_batch(&batch(1, now_ms() + 2 * MAX_TIMESTAMP_AHEAD_MS), 1 << 20).expect_err("must fail");
        assert!(e.to_string().contains("ahead of the broker's clock"), "{e}");

        let e = check_batch(&batch(1, now_ms()), 64).expect_err("must fail");
        assert!(e.to_string().contains("exceeds max.message.bytes (64)"), "{e}");

        let mut b = batch(1, now_ms());
        b.crc32c ^= 1;
        assert!(matches!(check_batch(&b, 1 << 20), Err(BrokerError::CorruptBatch(_))));

        // A count that disagrees with the records, under a valid checksum
        // (the producer computed it over the lie).
        let mut h = batch(3, now_ms()).header;
        h.record_count = 5;
        let b = Batch::seal(h, batch(3, now_ms()).records);
        let e = check_batch(&b, 1 << 20).expect_err("must fail");
        assert!(matches!(e, BrokerError::CorruptBatch(ref m) if m.contains("record_count is 5")), "{e}");
        // Garbage records under a valid checksum.
        let b = Batch::seal(BatchHeader::plain(1, now_ms()), Bytes::from(vec![0xffu8; 100]));
        assert!(matches!(check_batch(&b, 1 << 20), Err(BrokerError::CorruptBatch(_))));
    }
}
