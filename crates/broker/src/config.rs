//! Broker configuration: a plain struct (no clap here), plus the rules that
//! decide a broker's node id.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use ferrolog_types::NodeId;

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This broker's id.
    pub node_id: NodeId,
    /// Where its RocksDB and identity live.
    pub data_dir: PathBuf,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Address other brokers and clients use to reach it.
    pub advertise: String,
    /// Brokers of a running cluster to join through (when this broker is not
    /// one of the initial peers).
    pub join: Vec<String>,
    /// How often retention limits are enforced.
    pub retention_check: std::time::Duration,
    /// Idle time after which partitions forget an idempotent producer.
    pub producer_expiry: std::time::Duration,
    /// Park the Raft tickers of idle partition groups (see [`crate::quiesce`]).
    pub quiesce: bool,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Most (group, topic, partition) consumer-lag series the coordinator
    /// exports (see [`crate::lag`]).
    pub lag_metrics_max_partitions: usize,
    /// Initial voters of the metadata group, this broker included when it
    /// is one: `id → address`.
    pub peers: BTreeMap<NodeId, String>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').with_context(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id.trim().parse().with_context(|| format!("peer id {id:?} is not a number"))?;
        if addr.trim().is_empty() {
            bail!("peer {id} has an empty address");
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            bail!("peer {id} is listed twice");
        }
    }
    Ok(out)
}

/// The node id for a StatefulSet-style hostname `name-N`: `N + 1` (ordinals
/// start at 0, node ids at 1). `None` when the hostname has no such suffix.
pub fn node_id_from_hostname(hostname: &str) -> Option<NodeId> {
    let (_, ordinal) = hostname.rsplit_once('-')?;
    ordinal.parse::<NodeId>().ok().map(|n| n + 1)
}

/// Where a StatefulSet pod finds itself and its peers, derived from its
/// pod name (`ferrolog-2`), the number of initial brokers, and the DNS
/// domain of the headless Service (`ferrolog-brokers.ns.svc.cluster.local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSetLayout {
    /// Ordinal + 1.
    pub node_id: NodeId,
    /// `pod.domain:port`: the stable DNS name peers and clients use.
    pub advertise: String,
    /// The initial metadata voters, pods `0..initial`: set when this pod is
    /// one of them.
    pub peers: BTreeMap<NodeId, String>,
    /// Pods with an ordinal of `initial` or more were added by scaling out:
    /// they join through the initial ones.
    pub join: Vec<String>,
}

/// The layout of pod `pod_name` in a StatefulSet whose first `initial` pods
/// bootstrapped the cluster. `initial` must stay what it was when the
/// cluster was created (scaling out changes the replica count, not this).
pub fn statefulset_layout(pod_name: &str, initial: u64, domain: &str, port: u16) -> anyhow::Result<StatefulSetLayout> {
    let (base, ordinal) =
        pod_name.rsplit_once('-').with_context(|| format!("pod name {pod_name:?} does not end in -ORDINAL"))?;
    let ordinal: u64 = ordinal.parse().with_context(|| format!("pod name {pod_name:?} does not end in -ORDINAL"))?;
    if initial == 0 {
        bail!("the number of initial brokers must be at least 1");
    }
    let domain = domain.trim_matches('.');
    let addr =
        |i: u64| if domain.is_empty() { format!("{base}-{i}:{port}") } else { format!("{base}-{i}.{domain}:{port}") };
    let initial_peers: BTreeMap<NodeId, String> = (0..initial).map(|i| (i + 1, addr(i))).collect();
    let (peers, join) = if ordinal < initial {
        (initial_peers, Vec::new())
    } else {
        (BTreeMap::new(), initial_peers.into_values().collect())
    };
    Ok(StatefulSetLayout { node_id: ordinal + 1, advertise: addr(ordinal), peers, join })
}

const NODE_ID_FILE: &str = "node_id";

/// Reconciles the configured id with the one stored in `data_dir`: the
/// stored id wins (a broker keeps its identity across restarts, whatever the
/// flags say); a fresh data dir stores the configured one.
pub fn settle_node_id(data_dir: &Path, configured: Option<NodeId>) -> anyhow::Result<NodeId> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let stored: NodeId = s.trim().parse().with_context(|| format!("{} is damaged", path.display()))?;
            if let Some(c) = configured
                && c != stored
            {
                tracing::warn!(
                    configured = c,
                    stored,
                    "node id differs from the one stored in the data dir; using the stored one"
                );
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = configured.context("no node id: pass --node-id, or run on a host named like NAME-N")?;
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, format!("{id}\n"))?;
            // durability: the identity must survive a crash before the broker
            // joins anything under it.
            std::fs::File::open(&path)?.sync_all()?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        let p = parse_peers("1=a:1, 2=b:2,3=c:3").expect("valid");
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "b:2");
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1").is_err());
        assert!(parse_peers("1=").is_err());
    }

    #[test]
    fn statefulset_hostnames_give_ordinal_plus_one() {
        assert_eq!(node_id_from_hostname("ferrolog-0"), Some(1));
        assert_eq!(node_id_from_hostname("ferrolog-broker-2"), Some(3));
        assert_eq!(node_id_from_hostname("ferrolog"), None);
        assert_eq!(node_id_from_hostname("ferrolog-x"), None);
    }

    #[test]
    fn statefulset_pods_find_their_id_and_peers() -> anyhow::Result<()> {
        let domain = "ferrolog-brokers.streaming.svc.cluster.local";
        let l = statefulset_layout("ferrolog-2", 3, domain, 9092)?;
        assert_eq!(l.node_id, 3);
        assert_eq!(l.advertise, "ferrolog-2.ferrolog-brokers.streaming.svc.cluster.local:9092");
        assert_eq!(
            l.peers,
            BTreeMap::from([
                (1, "ferrolog-0.ferrolog-brokers.streaming.svc.cluster.local:9092".to_string()),
                (2, "ferrolog-1.ferrolog-brokers.streaming.svc.cluster.local:9092".to_string()),
                (3, "ferrolog-2.ferrolog-brokers.streaming.svc.cluster.local:9092".to_string()),
            ])
        );
        assert!(l.join.is_empty());
        // A pod added by scaling out joins through the initial ones.
        let l = statefulset_layout("ferrolog-3", 3, domain, 9092)?;
        assert_eq!(l.node_id, 4);
        assert!(l.peers.is_empty());
        assert_eq!(l.join.len(), 3);
        assert_eq!(l.join[0], "ferrolog-0.ferrolog-brokers.streaming.svc.cluster.local:9092");
        // Names with dashes keep their base; a trailing dot is ignored.
        let l = statefulset_layout("my-log-broker-0", 5, "hl.", 7000)?;
        assert_eq!(l.advertise, "my-log-broker-0.hl:7000");
        assert_eq!(l.peers.len(), 5);
        assert_eq!(l.peers[&5], "my-log-broker-4.hl:7000");
        assert!(statefulset_layout("ferrolog", 3, domain, 9092).is_err());
        assert!(statefulset_layout("ferrolog-x", 3, domain, 9092).is_err());
        assert!(statefulset_layout("ferrolog-0", 0, domain, 9092).is_err());
        Ok(())
    }

    #[test]
    fn stored_node_id_wins() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(settle_node_id(dir.path(), None).is_err(), "fresh dir needs an id");
        assert_eq!(settle_node_id(dir.path(), Some(4))?, 4);
        assert_eq!(settle_node_id(dir.path(), Some(9))?, 4);
        assert_eq!(settle_node_id(dir.path(), None)?, 4);
        Ok(())
    }
}
