//! [`Producer`]: the batching producer. `send` adds a record to its
//! partition's batch and returns at once with a [`Delivery`] to await; a
//! batch goes out when it reaches `batch_bytes` or has waited `linger`, or on
//! [`Producer::flush`]. Keyed records go to Kafka's murmur2 partition of
//! their key; unkeyed records stick to one partition per topic until its
//! batch is sent (sticky partitioning, as Kafka's default since 2.4).
//!
//! Memory is bounded: records wait in at most `buffer_bytes`; a `send` that
//! would exceed it waits until batches complete (backpressure, never
//! unbounded growth). Batches are compressed per `compression` (LZ4 block
//! format, size-prepended, `lz4_flex`); brokers store them compressed and
//! consumers decompress after checking the CRC32C. With idempotence (the
//! default with `acks=all`) each partition's batches carry sequence numbers
//! and retries never duplicate or reorder (see [`crate::IdempotentProducer`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::Acks;
use crate::Client;
use crate::ClientError;
use crate::Compression;
use crate::IdempotentProducer;
use tokio::sync::Notify;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;

/// Batching producer settings (Kafka's names in parentheses).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acks level (`acks`).
    pub acks: Acks,
    /// Sequence numbers per partition; only with `acks=all` (`enable.idempotence`).
    pub idempotence: bool,
    /// How long a batch waits for more records (`linger.ms`).
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (`batch.size`).
    pub batch_bytes: usize,
    /// Bytes of records waiting or in flight; `send` waits beyond it (`buffer.memory`).
    pub buffer_bytes: usize,
    /// Batch compression (`compression.type`): none or lz4.
    pub compression: Compression,
    /// Give up on a batch after this long, retries included (`delivery.timeout.ms`).
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_bytes: 64 << 10,
            buffer_bytes: 32 << 20,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: u32,
    /// Offset (`None` with `acks=0`).
    pub offset: Option<u64>,
}

/// The outcome of one `send`, to await.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<Delivered, ClientError>>);

impl Delivery {
    /// Waits for the record's acknowledgement.
    pub async fn wait(self) -> Result<Delivered, ClientError> {
        self.0.await.unwrap_or_else(|_| Err(ClientError::closed("producer")))
    }
}

type Rec = (Option<Vec<u8>>, Vec<u8>);

#[derive(Debug, Default)]
struct Pending {
    records: Vec<Rec>,
    waiters: Vec<oneshot::Sender<Result<Delivered, ClientError>>>,
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
    since: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    batches: HashMap<(String, u32), Pending>,
    /// Sticky partition per topic for unkeyed records.
    sticky: HashMap<String, u32>,
    /// Partition counts (refreshed when older than [`METADATA_MAX_AGE`]).
    partitions: HashMap<String, (u32, Instant)>,
    /// Batches taken and not yet answered.
    in_flight: usize,
    /// Partitions with a batch in flight: one at a time per partition, so
    /// batches are appended in the order their records were sent (a retry
    /// can never overtake a later batch).
    busy: std::collections::HashSet<(String, u32)>,
}

/// Metadata older than this is refreshed before use (`metadata.max.age.ms`).
const METADATA_MAX_AGE: Duration = Duration::from_secs(30);

/// The batching producer (see the module docs).
#[derive(Debug)]
pub struct Producer {
    inner: Arc<Inner>,
    sender: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    client: Arc<Client>,
    config: ProducerConfig,
    idempotent: Option<IdempotentProducer>,
    state: Mutex<State>,
    buffer: Arc<Semaphore>,
    wake: Notify,
    idle: Notify,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

impl Producer {
    /// A producer (initializes a producer id first when idempotent).
    pub async fn new(client: Arc<Client>, config: ProducerConfig) -> Result<Producer, ClientError> {
        let idempotent = if config.idempotence && config.acks == Acks::All {
            Some(
                IdempotentProducer::new(client.clone(), None, config.acks, config.delivery_timeout)
                    .await?
                    .with_compression(config.compression),
            )
        } else {
            None
        };
        let permits = config.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            client,
            config,
            idempotent,
            state: Mutex::new(State::default()),
            buffer: Arc::new(Semaphore::new(permits)),
            wake: Notify::new(),
            idle: Notify::new(),
        });
        let sender = tokio::spawn(inner.clone().run());
        Ok(Producer { inner, sender })
    }

    /// Adds a record to its partition's batch (waiting while the buffer is
    /// full); returns its [`Delivery`].
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        partition: Option<u32>,
    ) -> Result<Delivery, ClientError> {
        let size = value.len() + key.as_ref().map_or(0, Vec::len) + 16;
        if size > self.inner.config.buffer_bytes {
            return Err(ClientError::invalid(format!(
                "record of {size} bytes exceeds the producer buffer ({} bytes)",
                self.inner.config.buffer_bytes
            )));
        }
        let count = self.inner.partitions(topic).await?;
        let permit = self
            .inner
            .buffer
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| ClientError::closed("producer"))?;
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut s = self.inner.state.lock().expect("producer state lock");
            let p = match (partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => crate::partition_for_key(k, count),
                (None, None) => *s.sticky.entry(topic.to_string()).or_insert_with(|| rand_partition(count)),
            };
            if p >= count {
                return Err(ClientError::invalid(format!("topic {topic} has no partition {p} (it has {count})")));
            }
            let b = s.batches.entry((topic.to_string(), p)).or_default();
            let first = b.since.is_none();
            b.since.get_or_insert_with(Instant::now);
            b.records.push((key, value));
            b.waiters.push(tx);
            b.permits.push(permit);
            b.bytes += size;
            // The sender learns of a new batch (to time its linger) and of a
            // full one (to send it now).
            first || b.bytes >= self.inner.config.batch_bytes
        };
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(Delivery(rx))
    }

    /// Sends every waiting batch now and waits until all are answered.
    pub async fn flush(&self) {
        loop {
            let idle = self.inner.idle.notified();
            {
                let s = self.inner.state.lock().expect("producer state lock");
                if s.in_flight == 0 && s.batches.values().all(|b| b.records.is_empty()) {
                    return;
                }
            }
            self.inner.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
            // Age every waiting batch past its linger so the sender takes it.
            let mut s = self.inner.state.lock().expect("producer state lock");
            let old = Instant::now().checked_sub(self.inner.config.linger).unwrap_or_else(Instant::now);
            for b in s.batches.values_mut() {
                if !b.records.is_empty() {
                    b.since = Some(old);
                }
            }
        }
    }
}

/// Takes at most `max_bytes` of records (at least one) from the front of
/// `b`; the rest stays, due at once, behind the batch taken.
fn take_batch(b: &mut Pending, max_bytes: usize) -> Pending {
    let mut n = 0;
    let mut bytes = 0;
    for (k, v) in &b.records {
        let size = v.len() + k.as_ref().map_or(0, Vec::len) + 16;
        if n > 0 && bytes + size > max_bytes {
            break;
        }
        n += 1;
        bytes += size;
    }
    if n == b.records.len() {
        return std::mem::take(b);
    }
    let rest_records = b.records.split_off(n);
    let rest_waiters = b.waiters.split_off(n);
    let rest_permits = b.permits.split_off(n);
    let taken = Pending {
        records: std::mem::replace(&mut b.records, rest_records),
        waiters: std::mem::replace(&mut b.waiters, rest_waiters),
        permits: std::mem::replace(&mut b.permits, rest_permits),
        bytes,
        since: b.since,
    };
    b.bytes -= bytes;
    taken
}

fn rand_partition(count: u32) -> u32 {
    rand::random::<u32>() % count.max(1)
}

impl Inner {
    async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some((n, at)) = self.state.lock().expect("producer state lock").partitions.get(topic)
            && at.elapsed() < METADATA_MAX_AGE
        {
            return Ok(*n);
        }
        let d = self.client.wait_leaders(topic, self.config.delivery_timeout.min(Duration::from_secs(30))).await?;
        let n = d.partitions.len() as u32;
        self.state.lock().expect("producer state lock").partitions.insert(topic.to_string(), (n, Instant::now()));
        Ok(n)
    }

    /// The sender: takes batches that are full or lingered long enough.
    async fn run(self: Arc<Self>) {
        loop {
            let next_due = {
                let mut s = self.state.lock().expect("producer state lock");
                let now = Instant::now();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                let State { batches, busy, .. } = &mut *s;
                for (k, b) in batches.iter_mut() {
                    let Some(since) = b.since else { continue };
                    if busy.contains(k) {
                        // Keeps accumulating; taken when the partition's
                        // batch in flight is answered (which wakes us).
                        continue;
                    }
                    if b.bytes >= self.config.batch_bytes || now >= since + self.config.linger {
                        due.push((k.clone(), take_batch(b, self.config.batch_bytes)));
                    } else {
                        let at = since + self.config.linger;
                        next = Some(next.map_or(at, |n: Instant| n.min(at)));
                    }
                }
                for ((topic, _), _) in &due {
                    // A new batch for unkeyed records goes elsewhere.
                    let n = s.partitions.get(topic).map_or(1, |(n, _)| *n);
                    s.sticky.insert(topic.clone(), rand_partition(n));
                }
                s.in_flight += due.len();
                for (k, _) in &due {
                    s.busy.insert(k.clone());
                }
                for ((topic, p), b) in due {
                    tokio::spawn(self.clone().send_batch(topic, p, b));
                }
                next
            };
            match next_due {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn send_batch(self: Arc<Self>, topic: String, partition: u32, b: Pending) {
        let r = match &self.idempotent {
            Some(p) => p.send(&topic, partition, &b.records).await,
            None => {
                let batch = crate::make_batch_with(&b.records, crate::now_ms(), self.config.compression);
                match batch {
                    Ok(batch) => {
                        self.client
                            .produce(&topic, partition, self.config.acks, batch, self.config.delivery_timeout)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        for (i, w) in b.waiters.into_iter().enumerate() {
            let _ = w.send(match &r {
                Ok(resp) => Ok(Delivered { partition, offset: resp.base_offset.map(|b| b + i as u64) }),
                Err(s) => Err(s.clone()),
            });
        }
        drop(b.permits);
        let idle = {
            let mut s = self.state.lock().expect("producer state lock");
            s.in_flight -= 1;
            s.busy.remove(&(topic.clone(), partition));
            s.in_flight == 0
        };
        // The partition may have a batch waiting behind this one.
        self.wake.notify_one();
        if idle {
            self.idle.notify_waiters();
        }
    }
}
