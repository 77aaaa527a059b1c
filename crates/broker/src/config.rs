//! Broker configuration: a plain struct (no clap here), plus the rules that
//! decide a broker's node id.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Every timing (heartbeats, elections, liveness, quiescing, sessions,
    /// retention, timeouts), with documented defaults.
    pub timings: Timings,
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

/// Declares [`Timings`]: one field per timing, its key (the TOML key; the
/// flag is `--key-with-dashes`, the variable `FERROLOG_KEY`), its default
/// in ms and its documentation, all in one table.
macro_rules! timings {
    ($( $(#[doc = $doc:literal])+ $field:ident = $key:literal, $default_ms:expr; )+) => {
        /// Every timing of a broker, in one place. Defaults suit a 2-core
        /// machine running thousands of partition groups; each is a flag
        /// (`--KEY-WITH-DASHES`), an environment variable (`FERROLOG_KEY`)
        /// and a key of the config file's `[timings]` table.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Timings {
            $( $(#[doc = $doc])+ pub $field: Duration, )+
        }

        impl Default for Timings {
            fn default() -> Self {
                Timings { $( $field: Duration::from_millis($default_ms), )+ }
            }
        }

        /// One timing's key, default and documentation.
        #[derive(Debug, Clone, Copy)]
        pub struct TimingKey {
            /// TOML key (`snake_case`, ending in `_ms`).
            pub key: &'static str,
            /// Default, ms.
            pub default_ms: u64,
            /// What it sets (first doc line).
            pub doc: &'static str,
        }

        impl Timings {
            /// Every timing's key, default and documentation.
            pub const KEYS: &'static [TimingKey] = &[
                $( TimingKey { key: $key, default_ms: $default_ms, doc: timings!(@first $($doc)+) }, )+
            ];

            /// Sets the timing named `key` to `ms`.
            pub fn set(&mut self, key: &str, ms: u64) -> anyhow::Result<()> {
                match key {
                    $( $key => self.$field = Duration::from_millis(ms), )+
                    other => bail!("unknown timing {other:?}"),
                }
                Ok(())
            }

            /// Every timing as `(key, ms)`.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![ $( ($key, self.$field.as_millis() as u64), )+ ]
            }
        }
    };
    (@first $first:literal $($rest:literal)*) => { $first };
}

timings! {
    /// Raft heartbeat interval of every group, and of the broker heartbeat
    /// each broker sends every peer (what liveness and quiescing hear).
    raft_heartbeat = "raft_heartbeat_ms", 250;
    /// Smallest Raft election timeout: a dead leader is replaced after
    /// this to `election_timeout_max_ms`.
    election_timeout_min = "election_timeout_min_ms", 1_000;
    /// Largest Raft election timeout.
    election_timeout_max = "election_timeout_max_ms", 2_000;
    /// A broker not heard from for this long counts as down, for the
    /// cluster description, quiescing (followers of its groups wake up and
    /// may elect) and producer fencing (whom to wait for). Defaults to the
    /// smallest election timeout, so a quiesced group fails over about as
    /// fast as an active one.
    liveness_timeout = "liveness_timeout_ms", 1_000;
    /// A leader whose log has not grown for this long (its followers caught
    /// up and live) stops its Raft ticker.
    quiesce_after = "quiesce_after_ms", 2_000;
    /// How long a partition's preferred replica must have been live and
    /// caught up before leadership moves back to it.
    preferred_leader_delay = "preferred_leader_delay_ms", 10_000;
    /// How long a non-preferred replica of a new partition waits for the
    /// preferred one to initialize the group before doing it itself.
    init_fallback = "init_fallback_ms", 3_000;
    /// How often the partition reconciler runs without metadata changes
    /// (it retries what failed).
    reconcile_interval = "reconcile_interval_ms", 1_000;
    /// How often retention (retention.ms, retention.bytes) is enforced.
    retention_check = "retention_check_ms", 60_000;
    /// A partition forgets an idempotent producer idle this long (7 days);
    /// never because data was deleted.
    producer_expiry = "producer_expiry_ms", 7 * 24 * 3_600_000;
    /// Session timeout of a consumer-group member that asks for none
    /// (Kafka's default: 45 s).
    session_timeout_default = "session_timeout_default_ms", 45_000;
    /// Shortest session timeout a member may ask for.
    session_timeout_min = "session_timeout_min_ms", 1_000;
    /// Longest session timeout a member may ask for (Kafka's
    /// group.max.session.timeout.ms: 30 min): a member asking for more is
    /// refused, so a dead one cannot hold its partitions for weeks.
    session_timeout_max = "session_timeout_max_ms", 1_800_000;
    /// Longest heartbeat interval handed to members (a third of the session
    /// timeout when that is shorter; Kafka's default: 3 s).
    heartbeat_interval_max = "heartbeat_interval_max_ms", 3_000;
    /// How often the coordinator looks for expired member sessions.
    session_expiry_check = "session_expiry_check_ms", 250;
    /// Longest a produce waits for its acks level when it names no timeout.
    produce_timeout_default = "produce_timeout_default_ms", 30_000;
    /// Longest a fetch may long-poll, whatever it asks.
    fetch_max_wait = "fetch_max_wait_ms", 30_000;
    /// Longest an InitProducer waits for live brokers to learn a new
    /// producer epoch.
    fence_propagation_timeout = "fence_propagation_timeout_ms", 5_000;
    /// How long a broker waits for another to describe its partitions.
    remote_describe_timeout = "remote_describe_timeout_ms", 500;
    /// How often the coordinator recomputes consumer lag for the metrics.
    lag_refresh = "lag_refresh_ms", 5_000;
    /// A follower not caught up for this long counts as under-replicated in
    /// the metrics.
    under_replicated_after = "under_replicated_after_ms", 10_000;
    /// Longest a stopping broker waits for its leaderships to move.
    shutdown_handoff_timeout = "shutdown_handoff_timeout_ms", 5_000;
}

impl Timings {
    /// Refuses combinations Raft or the coordinator cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ms = |d: Duration| d.as_millis();
        if self.raft_heartbeat.is_zero() {
            bail!("raft_heartbeat_ms must be positive");
        }
        if self.election_timeout_min <= self.raft_heartbeat {
            bail!(
                "election_timeout_min_ms ({}) must exceed raft_heartbeat_ms ({})",
                ms(self.election_timeout_min),
                ms(self.raft_heartbeat)
            );
        }
        if self.election_timeout_max <= self.election_timeout_min {
            bail!(
                "election_timeout_max_ms ({}) must exceed election_timeout_min_ms ({})",
                ms(self.election_timeout_max),
                ms(self.election_timeout_min)
            );
        }
        if self.liveness_timeout < 2 * self.raft_heartbeat {
            bail!(
                "liveness_timeout_ms ({}) must be at least two raft heartbeats ({})",
                ms(self.liveness_timeout),
                ms(2 * self.raft_heartbeat)
            );
        }
        if self.session_timeout_min > self.session_timeout_default {
            bail!("session_timeout_min_ms must not exceed session_timeout_default_ms");
        }
        if self.session_timeout_default > self.session_timeout_max {
            bail!("session_timeout_default_ms must not exceed session_timeout_max_ms");
        }
        for (key, ms) in self.entries() {
            if ms == 0 {
                bail!("{key} must be positive");
            }
        }
        Ok(())
    }
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
const STORAGE_ID_FILE: &str = "storage_id";

/// The data dir's storage id: 128 random bits in hex, made when the store is
/// created (`fresh`: the data dir has no store yet, e.g. a replaced disk)
/// and kept for as long as the store lives. It tells one incarnation of a
/// broker's data from another under the same node id.
pub fn settle_storage_id(data_dir: &Path, fresh: bool) -> anyhow::Result<String> {
    let path = data_dir.join(STORAGE_ID_FILE);
    if !fresh {
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            // A store made before storage ids existed gets one now.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("{STORAGE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))?;
    // durability: the id is synced and renamed into place before the store
    // it names is created, so a crash leaves the old id or the new one.
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(id)
}

/// Reconciles the configured id with the one stored in `data_dir`: the
/// stored id wins (a broker keeps its identity across restarts, whatever the
/// flags say); a fresh data dir stores the configured one.
pub fn settle_node_id(data_dir: &Path, configured: Option<NodeId>) -> anyhow::Result<NodeId> {
    let path = data_dir.join(NODE_ID_FILE);
    let stored = match std::fs::read_to_string(&path) {
        // Empty: an older version created the file and lost power before
        // its sync (the file is written in place there). It never got past
        // that point, so nothing was joined under the id: as if absent.
        Ok(s) if s.trim().is_empty() => None,
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    match stored {
        Some(s) => {
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
        None => {
            let id = configured.context("no node id: pass --node-id, or run on a host named like NAME-N")?;
            std::fs::create_dir_all(data_dir)?;
            // Written aside, synced, then renamed into place: a power cut
            // leaves no file or a whole one, never an empty one.
            let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n"))?;
            // durability: the identity must survive a crash before the broker
            // joins anything under it.
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_default_to_the_documented_values_and_set_by_key() -> anyhow::Result<()> {
        let mut t = Timings::default();
        t.validate()?;
        assert_eq!(t.raft_heartbeat, Duration::from_millis(250));
        assert_eq!(t.liveness_timeout, t.election_timeout_min);
        assert_eq!(Timings::KEYS.len(), t.entries().len());
        for k in Timings::KEYS {
            assert!(k.key.ends_with("_ms") && !k.doc.is_empty(), "{k:?}");
            let (_, v) = t.entries().into_iter().find(|(key, _)| *key == k.key).expect("listed");
            assert_eq!(v, k.default_ms, "{}", k.key);
        }
        t.set("liveness_timeout_ms", 3_000)?;
        assert_eq!(t.liveness_timeout, Duration::from_secs(3));
        assert!(t.set("no_such_ms", 1).is_err());
        t.set("election_timeout_max_ms", 500)?;
        assert!(t.validate().expect_err("must fail").to_string().contains("election_timeout_max_ms"));
        Ok(())
    }

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
    fn the_storage_id_lives_as_long_as_the_store() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = settle_storage_id(dir.path(), true)?;
        assert_eq!(first.len(), 32);
        assert_eq!(settle_storage_id(dir.path(), false)?, first, "an intact store keeps its id");
        let second = settle_storage_id(dir.path(), true)?;
        assert_ne!(second, first, "a new store gets a new id");
        assert_eq!(settle_storage_id(dir.path(), false)?, second);
        Ok(())
    }

    #[test]
    fn stored_node_id_wins() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(settle_node_id(dir.path(), None).is_err(), "fresh dir needs an id");
        assert_eq!(settle_node_id(dir.path(), Some(4))?, 4);
        assert_eq!(settle_node_id(dir.path(), Some(9))?, 4);
        assert_eq!(settle_node_id(dir.path(), None)?, 4);
        assert!(!dir.path().join(format!("{NODE_ID_FILE}.tmp")).exists(), "renamed into place");
        Ok(())
    }

    #[test]
    fn an_empty_node_id_file_left_by_a_power_cut_counts_as_absent() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(NODE_ID_FILE), "")?;
        assert_eq!(settle_node_id(dir.path(), Some(3))?, 3);
        assert_eq!(settle_node_id(dir.path(), None)?, 3);
        std::fs::write(dir.path().join(NODE_ID_FILE), "x\n")?;
        assert!(settle_node_id(dir.path(), Some(3)).is_err(), "a damaged id is refused, not replaced");
        Ok(())
    }
}
