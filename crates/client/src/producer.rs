//! The idempotent producer: a producer id and epoch from the metadata group,
//! and per-partition sequence numbers, so that retrying a batch (after a
//! lost response, a timeout, a leader failover or a broker restart) never
//! writes it twice and never reorders it.
//!
//! - Every batch takes the next sequence numbers of its partition when it is
//!   sent and keeps them through every retry.
//! - Up to [`MAX_IN_FLIGHT`] batches per partition are in flight at once;
//!   the partition remembers that many, so a retry of any of them is
//!   answered with its original offsets. A batch that overtook an earlier one
//!   still in flight is refused as out of order and simply retried once the
//!   earlier one resolved: the log keeps the send order.
//! - A batch that still failed when its delivery timeout ran out leaves its
//!   sequence state unknown (it may or may not be in the log). The producer
//!   then takes a new epoch (named producers) or a new id before its next
//!   send, as Kafka's producer bumps its epoch, so later batches can neither
//!   be mistaken for that one nor be blocked by it.
//! - A batch refused as out of order while no earlier batch of its
//!   partition is in flight (checked twice) means the partition holds no
//!   state of this producer: its state expired after the idle time, or the
//!   topic was deleted and re-created. The send fails at once (nothing of it
//!   was appended) instead of waiting out its delivery timeout, and the
//!   producer takes a new identity before its next send. It is not resent
//!   automatically: a send issued meanwhile could then land before it.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::Acks;
use crate::Client;
use crate::ClientError;
use crate::Compression;
use crate::ErrorKind;
use crate::Produced;
use tokio::sync::Mutex;
use tokio::sync::Notify;
use tokio::sync::Semaphore;

/// Batches in flight per partition; the partition remembers as many.
pub const MAX_IN_FLIGHT: usize = 5;

#[derive(Debug)]
struct PartitionSeq {
    next_seq: i32,
    /// Bounds the batches in flight; a send waits for a permit.
    permits: Arc<Semaphore>,
    /// Woken whenever a batch of this partition resolves.
    resolved: Arc<Notify>,
    /// First sequence numbers of the batches in flight (at most
    /// [`MAX_IN_FLIGHT`]): the lowest is the one nothing can overtake.
    /// (Wrong only for the few batches around the wrap of the sequence
    /// past `i32::MAX`, i.e. after 2^31 records of one producer.)
    in_flight: BTreeSet<i32>,
}

#[derive(Debug)]
struct State {
    id: i64,
    epoch: i32,
    /// Bumped by every re-initialization: which identity a batch was sent
    /// under (the epoch alone does not tell: an unnamed producer gets a new
    /// id at epoch 0).
    generation: u64,
    /// Set after a batch's fate became unknown: re-initialize first.
    stale: bool,
    /// A newer instance took over this producer's name: every send fails
    /// (re-initializing would fence the newer instance in turn).
    fenced: Option<ClientError>,
    partitions: HashMap<(String, u32), PartitionSeq>,
}

/// A producer whose retries never duplicate or reorder.
#[derive(Debug)]
pub struct IdempotentProducer {
    client: Arc<Client>,
    name: Option<String>,
    acks: Acks,
    delivery_timeout: Duration,
    compression: Compression,
    state: Mutex<State>,
}

impl IdempotentProducer {
    /// Initializes a producer id (and epoch) through the metadata group.
    /// With a `name`, an earlier instance with that name is fenced.
    pub async fn new(
        client: Arc<Client>,
        name: Option<&str>,
        acks: Acks,
        delivery_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let (id, epoch) = client.init_producer(name).await?;
        Ok(IdempotentProducer {
            client,
            name: name.map(String::from),
            acks,
            delivery_timeout,
            compression: Compression::None,
            state: Mutex::new(State {
                id,
                epoch,
                generation: 0,
                stale: false,
                fenced: None,
                partitions: HashMap::new(),
            }),
        })
    }

    /// Compresses batches with `compression`.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The current producer id and epoch.
    pub async fn identity(&self) -> (i64, i32) {
        let s = self.state.lock().await;
        (s.id, s.epoch)
    }

    /// Sends `records` (`(key, value)`) as one batch to `topic`/`partition`
    /// and returns the broker's answer (`duplicate` is set when a retry
    /// found the batch already appended; the offsets are the original ones).
    pub async fn send(
        &self,
        topic: &str,
        partition: u32,
        records: &[(Option<Vec<u8>>, Vec<u8>)],
    ) -> Result<Produced, ClientError> {
        let key = (topic.to_string(), partition);
        // Built before it takes sequence numbers: a batch that cannot be
        // built takes none.
        let mut batch = crate::make_batch_with(records, crate::now_ms(), self.compression)?;
        let (permits, resolved) = {
            let mut s = self.state.lock().await;
            if let Some(f) = &s.fenced {
                return Err(f.clone());
            }
            if s.stale {
                let (id, epoch) = self.client.init_producer(self.name.as_deref()).await?;
                let generation = s.generation + 1;
                *s = State { id, epoch, generation, stale: false, fenced: None, partitions: HashMap::new() };
            }
            let p = s.partitions.entry(key.clone()).or_insert_with(|| PartitionSeq {
                next_seq: 0,
                permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                resolved: Arc::new(Notify::new()),
                in_flight: BTreeSet::new(),
            });
            (p.permits.clone(), p.resolved.clone())
        };
        let _permit = permits.acquire_owned().await.map_err(|_| ClientError::closed("producer"))?;
        // Take sequence numbers under the lock, in send order.
        let (seq, generation) = {
            let mut s = self.state.lock().await;
            let (id, epoch, generation) = (s.id, s.epoch, s.generation);
            let Some(p) = s.partitions.get_mut(&key) else {
                return Err(ClientError::new(
                    ErrorKind::Unavailable,
                    "producer re-initialized while sending; send again",
                ));
            };
            let seq = p.next_seq;
            p.in_flight.insert(seq);
            let n = records.len() as u32;
            p.next_seq = ferrolog_partition_seq_add(seq, n);
            crate::set_producer(&mut batch, id, epoch, seq);
            (seq, generation)
        };
        let deadline = Instant::now() + self.delivery_timeout;
        // Refused out of order as the earliest batch of the partition in
        // flight: once may race an acknowledgement, twice means the
        // partition lost this producer.
        let mut refused_alone = false;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.client.produce_with(topic, partition, self.acks, batch.clone(), left, true).await;
            match r {
                Err(s) if s.kind() == ErrorKind::OutOfOrderSequence && Instant::now() < deadline => {
                    // Overtook an earlier batch of this partition. Every
                    // earlier batch is in flight (wait for it), acknowledged
                    // since the refusal (retry now), or failed for good,
                    // which marks the producer stale (give up: the gap is
                    // real). Sequence 0 overtakes nothing: the partition
                    // lost this producer (expired), so give up too.
                    let (gap_is_real, earliest) = {
                        let st = self.state.lock().await;
                        let earliest = st.partitions.get(&key).and_then(|p| p.in_flight.first().copied()) == Some(seq);
                        (st.stale || st.generation != generation || seq == 0, earliest)
                    };
                    if gap_is_real {
                        break Err(s);
                    }
                    if earliest {
                        if refused_alone {
                            break Err(ClientError::new(
                                ErrorKind::OutOfOrderSequence,
                                format!(
                                    "{topic}/{partition} holds no state of this producer (its state expired, or the \
                                     topic was re-created): nothing of this batch was appended; the next send starts \
                                     over under a new producer identity ({})",
                                    s.message()
                                ),
                            ));
                        }
                        // Every earlier batch resolved: retry now.
                        refused_alone = true;
                        continue;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), resolved.notified()).await;
                }
                other => break other,
            }
        };
        let mut s = self.state.lock().await;
        if s.generation == generation {
            if let Some(p) = s.partitions.get_mut(&key) {
                p.in_flight.remove(&seq);
            }
            if let Err(st) = &result
                && st.kind() == ErrorKind::Fenced
            {
                s.fenced = Some(st.clone());
            } else if result.is_err() {
                // The batch failed for good (refused, or unknown whether it
                // was appended) but took sequence numbers: later batches of
                // this partition would not follow on. Start over with a new
                // identity before the next send.
                s.stale = true;
            }
        }
        drop(s);
        resolved.notify_waiters();
        result
    }
}

fn ferrolog_partition_seq_add(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}
