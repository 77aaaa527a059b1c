//! In-process clusters: brokers started with `ferrolog_broker::spawn` in the
//! test's own runtime (real RocksDB in temp dirs, real gRPC on loopback
//! between them), whose handles the test calls directly. Seconds to start,
//! no processes, and every acks path, fetch rule and coordinator answer is
//! visible as a domain value rather than a status.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ferrolog_broker::BrokerConfig;
use ferrolog_broker::InProcess;
use ferrolog_broker::config::Timings;
use ferrolog_broker::handles::Core;
use ferrolog_broker::handles::metadata::NewTopic;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;

use crate::cluster::free_ports;
use crate::eventually;

/// Brokers in this process, ids 1..=n.
pub struct InProcCluster {
    /// The running brokers, by id order.
    pub brokers: Vec<InProcess>,
    _dirs: Vec<tempfile::TempDir>,
}

impl std::fmt::Debug for InProcCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcCluster").field("brokers", &self.brokers.len()).finish()
    }
}

impl InProcCluster {
    /// Starts `n` brokers (all initial metadata voters) and waits until the
    /// metadata group has a leader.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_on(free_ports(n)?).await
    }

    /// Starts one broker on each of `ports` (ids 1..), as [`Self::start`].
    pub async fn start_on(ports: Vec<u16>) -> anyhow::Result<Self> {
        let peers: BTreeMap<u64, String> =
            ports.iter().enumerate().map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}"))).collect();
        let mut brokers = Vec::new();
        let mut dirs = Vec::new();
        for (id, addr) in &peers {
            let dir = tempfile::tempdir()?;
            let config = BrokerConfig {
                node_id: *id,
                data_dir: dir.path().to_path_buf(),
                listen: addr.parse()?,
                advertise: addr.clone(),
                join: Vec::new(),
                timings: Timings::default(),
                quiesce: true,
                metrics_listen: None,
                lag_metrics_max_partitions: 1_000,
                peers: peers.clone(),
            };
            brokers.push(ferrolog_broker::spawn(config).await?);
            dirs.push(dir);
        }
        let c = InProcCluster { brokers, _dirs: dirs };
        c.meta_leader().await?;
        Ok(c)
    }

    /// The core of broker `id`.
    pub fn core(&self, id: u64) -> &Core {
        &self.brokers[(id - 1) as usize].core
    }

    /// The core of the metadata leader, once there is one.
    pub async fn meta_leader(&self) -> anyhow::Result<Core> {
        eventually("a metadata leader", Duration::from_secs(30), || async {
            for b in &self.brokers {
                // Elected, and applied the membership of every broker.
                if let Ok(d) = b.core.metadata().describe_cluster().await
                    && d.brokers.len() == self.brokers.len()
                {
                    return Ok(b.core.clone());
                }
            }
            Err("no broker answers as metadata leader with every broker".to_string())
        })
        .await
    }

    /// Creates a topic on the metadata leader and waits until every
    /// partition has a leader that accepts writes.
    pub async fn create_topic(&self, name: &str, partitions: u32, rf: u32) -> anyhow::Result<()> {
        let leader = self.meta_leader().await?;
        let t = NewTopic { name: name.into(), partitions, replication_factor: rf, ..Default::default() };
        leader.metadata().create_topic(t).await.context("create topic")?;
        for p in 0..partitions {
            self.partition_leader(name, p).await?;
        }
        Ok(())
    }

    /// The core of the broker leading `topic`/`partition`.
    pub async fn partition_leader(&self, topic: &str, partition: u32) -> anyhow::Result<Core> {
        eventually(&format!("a leader of {topic}/{partition}"), Duration::from_secs(30), || async {
            for b in &self.brokers {
                let Ok(d) = b.core.metadata().describe_topic(topic, Default::default()).await else { continue };
                let Some(leader) = d.partitions.get(partition as usize).and_then(|p| p.leader) else { continue };
                let core = self.core(leader);
                // Leads, and has committed and applied an entry of its term.
                if core.partition(topic, partition).is_ok_and(|h| h.is_settled_leader()) {
                    return Ok(core.clone());
                }
            }
            Err("no ready leader yet".to_string())
        })
        .await
    }

    /// Stops every broker (orderly).
    pub async fn stop(self) -> anyhow::Result<()> {
        for b in self.brokers {
            b.stop().await?;
        }
        Ok(())
    }
}

/// A plain (non-idempotent) batch of `values`, stamped now.
pub fn batch(values: &[&[u8]]) -> Batch {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    sealed(BatchHeader::plain(values.len() as u32, now), values)
}

/// `header` sealed over a record list of `values` (offset deltas 0, 1, ...;
/// every record at the header's first timestamp), as brokers require.
fn sealed(header: BatchHeader, values: &[&[u8]]) -> Batch {
    let blob = ferrolog_proto::records::encode(
        values.iter().map(|v| (None, Bytes::copy_from_slice(v))),
        header.first_timestamp_ms,
    );
    Batch::seal(header, blob)
}

/// An idempotent batch of `n` records from `(producer, epoch)` starting at
/// sequence `seq`.
pub fn idempotent_batch(producer: i64, epoch: i32, seq: i32, n: u32) -> Batch {
    let mut h = BatchHeader::plain(n, batch(&[]).header.first_timestamp_ms);
    h.producer_id = producer;
    h.producer_epoch = epoch;
    h.base_sequence = seq;
    let values = vec![&b"xxxxxxxx"[..]; n as usize];
    sealed(h, &values)
}
