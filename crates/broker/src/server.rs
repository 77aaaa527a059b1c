//! [`run`]: start a broker and serve until the cancellation token fires.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrolog_proto::internal::raft_server::RaftServer;
use ferrolog_proto::v1::admin_server::AdminServer;
use ferrolog_proto::v1::broker_server::BrokerServer;
use ferrolog_proto::v1::groups_server::GroupsServer;
use ferrolog_proto::v1::producers_server::ProducersServer;
use ferrolog_raft::LogStore;
use ferrolog_raft::MetaStateMachine;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_types::GroupId;
use ferrolog_types::NodeId;
use ferrolog_types::limits::API_MESSAGE_LIMIT;
use ferrolog_types::limits::RAFT_MESSAGE_LIMIT;
use openraft::BasicNode;
use openraft::Raft;
use tokio_util::sync::CancellationToken;

use crate::BrokerConfig;
use crate::groups::Groups;
use crate::groups::Meta;
use crate::groups::metadata_raft_config;
use crate::grpc::GrpcServices;
use crate::handles::Core;
use crate::transport::MetadataProbe;
use crate::transport::RaftService;
use crate::transport::Transport;

/// The `grpc.health.v1` service name of readiness (Kubernetes'
/// readinessProbe asks for it): SERVING once the broker has joined (its
/// metadata caught up, as for the default service "") and every local
/// partition replica knows its leader and has applied everything that
/// leader reported committed. A rolling restart waits for it before taking
/// the next broker down.
pub const READY_SERVICE: &str = "ferrolog.ready";

/// The `grpc.health.v1` service name of liveness: SERVING while the
/// process serves requests (Kubernetes' livenessProbe). Unlike readiness it
/// does not depend on the cluster: a broker cut off from its peers is not
/// restarted for that.
pub const LIVE_SERVICE: &str = "ferrolog.live";

/// Whether every local partition replica has a leader and applied what it
/// last heard was committed.
fn replicas_caught_up(groups: &Groups) -> bool {
    use openraft::async_runtime::watch::WatchReceiver;
    groups.replicas().iter().all(|r| {
        let m = r.raft.metrics().borrow_watched().clone();
        m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.cluster_committed.map(|l| l.index)
    })
}

/// Pending connections the kernel queues before the broker accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr`, not yet listening (connects are refused).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std's and tokio's listeners do: a restart may rebind at once
    // while the previous process's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Exit status of a broker halted by failed storage (a WAL sync, a write,
/// a RocksDB background error).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;
/// How often the fail-stop watchdog looks at the store.
const FAIL_STOP_CHECK: Duration = Duration::from_millis(20);

/// Fail-stop: after a WAL fsync failed, nothing can be known about what
/// reached the disk (the kernel may have dropped the dirty pages), so the
/// broker halts at once, like Kafka on its last log directory failing. The
/// same for a write RocksDB refused and for an error of its background
/// flushes and compactions (a full disk): RocksDB takes no more writes, and
/// a broker left running would keep leading, and heartbeating for, groups
/// that can no longer append, so their followers would never elect. The
/// store already refuses every write and no completion of the failed sync
/// acknowledged anything; halting also stops this broker from voting or
/// serving reads from a state it cannot trust. On restart RocksDB replays
/// its WAL, and Raft repairs anything missing from the other replicas.
///
/// It watches until the broker's last write (the final flush of an orderly
/// stop) is done: a sync that fails during the hand-off or the flush halts
/// the broker the same way, with the same exit status.
async fn halt_when_storage_fails(node_id: u64, storage: Arc<Storage>, stop_watching: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop_watching.cancelled() => return,
            _ = tokio::time::sleep(FAIL_STOP_CHECK) => {}
        }
        halt_if_failed(node_id, &storage);
    }
}

fn halt_if_failed(node_id: u64, storage: &Storage) {
    if storage.check_background_errors() {
        tracing::error!(
            node = node_id,
            "storage failed (a WAL fsync, a write, or a RocksDB flush or compaction): halting the broker (fail-stop)"
        );
        // Not a graceful shutdown: no leadership hand-off, no flush.
        std::process::exit(FAIL_STOP_EXIT_CODE);
    }
}

// The metadata bootstrap probes its peers as recovering groups probe
// their voters: same per-peer timeout, same pause between rounds.
use crate::recovery::PROBE_RETRY;
use crate::recovery::PROBE_TIMEOUT;

/// Bootstraps the metadata group from a fresh data dir, unless the peers
/// already form a cluster. A broker whose disk was lost and that bootstrapped
/// again would initialize a group whose committed history it forgot (and,
/// with empty peers, start a second cluster); so it asks first. One peer
/// whose metadata log holds anything past index 0 means the cluster exists:
/// this broker then only waits for the leader to replicate to it, taking no
/// part in elections until it has caught up. The cluster is new only when
/// enough of the *other* initial peers say their log is empty that every
/// majority of the initial peers has one of them (`n - q + 1` of the
/// others: all the others of three, three of the four others of five):
/// anything committed is on a majority, and this broker cannot count
/// itself, since an empty data dir is also what a lost disk leaves. Then it
/// initializes, as every initial peer does (openraft allows the same
/// membership twice). Otherwise it asks again: a peer that does not answer,
/// or does not know yet, may hold data. So the first start of a cluster
/// waits for that many peers; a broker that lost its disk, with a peer down
/// and another one empty, waits for the one that is down instead of
/// starting the cluster again without it. Whether the cluster exists.
async fn bootstrap_metadata(
    node_id: NodeId,
    peers: std::collections::BTreeMap<NodeId, String>,
    raft: Raft<ferrolog_raft::MetaConfig, MetaStateMachine>,
    transport: Arc<Transport>,
    shutdown: CancellationToken,
) -> bool {
    let needed = crate::recovery::answers_needed(peers.len());
    loop {
        let mut empty = 0;
        for (peer, addr) in peers.iter().filter(|(id, _)| **id != node_id) {
            match transport.probe_metadata(*peer, addr, PROBE_TIMEOUT).await {
                Some(MetadataProbe::Cluster { last_index }) => {
                    tracing::warn!(
                        node = node_id,
                        peer,
                        last_index,
                        "empty data dir, but the peers already form a cluster: joining it (not bootstrapping); this \
                         broker takes no part in elections until it has caught up"
                    );
                    return true;
                }
                Some(MetadataProbe::Empty) => empty += 1,
                None => {}
            }
        }
        if empty >= needed {
            tracing::info!(node = node_id, empty, of = peers.len(), "no cluster yet: bootstrapping the metadata group");
            transport.recovery().finish_metadata([]);
            raft.runtime_config().elect(true);
            let members: std::collections::BTreeMap<u64, BasicNode> =
                peers.iter().map(|(id, a)| (*id, BasicNode { addr: a.clone() })).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "metadata initialize (another voter may have been first)");
            }
            return false;
        }
        tracing::info!(
            node = node_id,
            empty,
            needed,
            "waiting for the other initial peers to say whether a cluster exists"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(PROBE_RETRY) => {}
        }
    }
}

/// The metadata group's voters as a recovering broker sees them: its
/// membership if the leader's entries told it, else the initial peers. A
/// recovering replica takes no entries until it has its target
/// (crate::recovery), so after a lost disk this is the initial peers: a
/// broker that became a voter through `--join` and holds what this one lacks
/// is not asked (see docs/architecture.md).
fn metadata_voters(
    raft: Raft<ferrolog_raft::MetaConfig, MetaStateMachine>,
    initial: std::collections::BTreeMap<NodeId, String>,
) -> impl FnMut() -> Option<Vec<(NodeId, String)>> + Send {
    move || {
        use openraft::async_runtime::watch::WatchReceiver;
        let m = raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let known: Vec<(NodeId, String)> =
            membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone()))).collect();
        if known.is_empty() { Some(initial.iter().map(|(id, a)| (*id, a.clone())).collect()) } else { Some(known) }
    }
}

/// Ends the metadata group's recovery once it has caught up (see
/// [`crate::recovery`]), recording the partition groups placed on this
/// broker at that point: those replicas recover as well.
fn finish_metadata_recovery(
    node_id: NodeId,
    groups: &Groups,
    raft: &Raft<ferrolog_raft::MetaConfig, MetaStateMachine>,
    state: &ferrolog_raft::meta_sm::MetaView,
) {
    use crate::transport::GroupRaft;
    let recovery = groups.transport().recovery();
    let target = recovery.target(GroupId::METADATA);
    let (applied, term) = GroupRaft::applied_and_term(raft);
    if !crate::recovery::caught_up(target, applied, term) {
        return;
    }
    // The state read after the check holds at least what was applied then.
    let held: Vec<GroupId> = crate::groups::Placement::of(&state.borrow(), node_id).groups().collect();
    tracing::info!(node = node_id, ?target, held = held.len(), "metadata caught up after a lost disk; it votes again");
    recovery.finish_metadata(held);
    raft.runtime_config().elect(true);
}

/// Runs a broker until `shutdown` is cancelled, then stops its groups and
/// flushes its store.
pub async fn run(config: BrokerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_inner(config, shutdown, None).await
}

/// A broker running in this process (tests, embedding): its [`Core`] to
/// call the handles directly, and the task running it.
#[derive(Debug)]
pub struct InProcess {
    /// The broker's protocol-neutral core.
    pub core: Core,
    /// Cancel to stop the broker.
    pub shutdown: CancellationToken,
    /// Ends when the broker has stopped, with [`run`]'s result.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Stops the broker (orderly) and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("broker task")?
    }
}

/// Starts a broker in this process and answers once its core exists (the
/// store is open and the groups are starting; not yet serving).
pub async fn spawn(config: BrokerConfig) -> anyhow::Result<InProcess> {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_inner(config, shutdown.clone(), Some(tx)));
    match rx.await {
        Ok(core) => Ok(InProcess { core, shutdown, task }),
        Err(_) => Err(task.await.context("broker task")?.err().unwrap_or_else(|| anyhow::anyhow!("broker stopped"))),
    }
}

async fn run_inner(
    config: BrokerConfig,
    shutdown: CancellationToken,
    core_tx: Option<tokio::sync::oneshot::Sender<Core>>,
) -> anyhow::Result<()> {
    let node_id = config.node_id;
    crate::failpoints::check_supported().map_err(anyhow::Error::msg)?;
    config.timings.validate().context("invalid timings")?;
    // The port is bound before anything starts, so that a port in use fails
    // the start at once, before any group or task runs; it listens only
    // when the services are ready to answer (until then a client's connect
    // is refused and it tries another broker, rather than hanging on a
    // broker that is still opening its store).
    let socket = bind(config.listen).with_context(|| format!("bind {}", config.listen))?;
    tracing::info!(node = node_id, data_dir = %config.data_dir.display(), "opening the store");
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
    // No store yet: a first start, or a broker whose disk was lost or
    // replaced. Which of the two is told by the peers (below).
    let fresh = !config.data_dir.join("db").exists();
    let storage_id = crate::config::settle_storage_id(&config.data_dir, fresh)?;
    tracing::info!(node = node_id, storage_id, fresh, "data dir identity");
    let mut storage_config = StorageConfig::new(config.data_dir.join("db"));
    storage_config.fail_syncs_after = crate::failpoints::fail_syncs_after();
    storage_config.skip_syncs = crate::failpoints::skip_syncs();
    let storage = Arc::new(Storage::open(&storage_config).context("open the store")?);
    let tasks = crate::tasks::Supervisor::new(node_id, shutdown.clone());
    // Not one of the supervised tasks: those stop when shutdown starts, the
    // watchdog only when this function returns (the guard), after the flush.
    let stop_watching = CancellationToken::new();
    let _stop_watching = stop_watching.clone().drop_guard();
    let watchdog = tokio::spawn(halt_when_storage_fails(node_id, storage.clone(), stop_watching.clone()));
    // An early return from here on (a failed start) stops the tasks
    // already spawned.
    let _stop_tasks = shutdown.clone().drop_guard();
    tracing::info!(node = node_id, "store open; starting the metadata group");
    let transport = Transport::new(node_id, config.listen);
    if fresh && config.peers.contains_key(&node_id) {
        // Until the peers say the cluster is new, this initial voter may be
        // an old one that forgot its votes and log: it takes no part in the
        // metadata group's elections (crate::recovery). (A broker that
        // joins with --join is not protected yet: see docs/architecture.md.)
        transport.recovery().start(GroupId::METADATA);
    }
    let groups = Groups::with_timings(node_id, storage.clone(), transport.clone(), config.timings.clone());

    // The metadata group.
    let sm = MetaStateMachine::open(storage.clone())?;
    let meta_state = sm.subscribe();
    let log = LogStore::metadata(storage.clone());
    let factory = transport.factory::<ferrolog_raft::MetaConfig>(GroupId::METADATA);
    let raft = Raft::new(node_id, metadata_raft_config(&config.timings), factory, log, sm).await?;
    if transport.recovery().is_recovering(GroupId::METADATA) {
        // No campaigns of its own while it may have forgotten its votes.
        raft.runtime_config().elect(false);
    }
    let mut bootstrap = None;
    if !raft.is_initialized().await? {
        if fresh && config.peers.contains_key(&node_id) {
            // Bootstraps only once the peers say no cluster exists; run
            // once this broker answers their probes too (below).
            bootstrap = Some(config.peers.clone());
        } else if config.peers.contains_key(&node_id) {
            // Bootstrap: every initial voter initializes with the same
            // membership; on restart the group is initialized and this is skipped.
            let members: std::collections::BTreeMap<u64, BasicNode> =
                config.peers.iter().map(|(id, a)| (*id, BasicNode { addr: a.clone() })).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "metadata initialize (another voter may have been first)");
            }
        } else if config.join.is_empty() {
            tracing::warn!(node = node_id, "not an initial peer and no --join given: waiting to be added");
        } else {
            tracing::info!(node = node_id, via = ?config.join, "not an initial peer: joining the running cluster");
            tokio::spawn(crate::join::join(node_id, config.advertise.clone(), config.join.clone(), shutdown.clone()));
        }
    }
    groups.set_meta(Meta { raft: raft.clone(), state: meta_state.clone() });
    tokio::spawn(crate::failpoints::fail_led_log_reads_on_sigusr1(groups.clone()));

    // Health: NOT_SERVING until the metadata group has a leader and this
    // broker has applied all the metadata the leader reported committed (and
    // so started its partitions). Once serving, it stays so until shutdown.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health_reporter.set_service_status(READY_SERVICE, tonic_health::ServingStatus::NotServing).await;
    // Liveness: answers SERVING as long as the server answers at all.
    health_reporter.set_service_status(LIVE_SERVICE, tonic_health::ServingStatus::Serving).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrolog_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrolog_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The reconciler: follows the metadata's placement.
    {
        let groups = groups.clone();
        let mut state = meta_state.clone();
        let shutdown = shutdown.clone();
        let health = health_reporter.clone();
        let raft = raft.clone();
        let reconcile_interval = config.timings.reconcile_interval;
        tasks.spawn("reconciler", async move {
            let mut serving = false;
            let mut ready = false;
            loop {
                if groups.transport().recovery().is_recovering(GroupId::METADATA) {
                    finish_metadata_recovery(node_id, &groups, &raft, &state);
                }
                groups.check_recovery();
                let placement = crate::groups::Placement::of(&state.borrow(), node_id);
                if let Err(e) = groups.reconcile(&placement).await {
                    tracing::error!(node = node_id, error = %e, "reconciling partitions failed; retrying");
                }
                // Caught up: a leader is known and this broker has applied
                // everything the leader last reported as committed.
                let caught_up = {
                    use openraft::async_runtime::watch::WatchReceiver;
                    let m = raft.metrics().borrow_watched().clone();
                    let applied = m.last_applied.map(|l| l.index);
                    m.current_leader.is_some() && applied.is_some() && applied >= m.cluster_committed.map(|l| l.index)
                };
                if caught_up && !serving {
                    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                    serving = true;
                    tracing::info!(node = node_id, "broker is serving");
                }
                let now_ready = caught_up && replicas_caught_up(&groups);
                if now_ready != ready {
                    let status = if now_ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status(READY_SERVICE, status).await;
                    ready = now_ready;
                    tracing::info!(node = node_id, ready, "readiness changed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    // Placement only: offset commits and group changes
                    // do not wake the reconciler.
                    _ = state.placement_changed() => {}
                    _ = tokio::time::sleep(reconcile_interval) => {}
                }
            }
        });
    }

    let metrics = Arc::new(crate::metrics::Metrics::default());
    if let Some(addr) = config.metrics_listen {
        tracing::info!(node = node_id, %addr, "serving Prometheus metrics at /metrics");
        let serve = crate::metrics::serve(addr, metrics.clone(), groups.clone(), storage.clone(), shutdown.clone());
        tasks.spawn_fallible("metrics server", serve);
    }
    metrics.observe_syncs(&storage);
    let core = Core::new(groups.clone(), metrics);
    let services = GrpcServices::new(core.clone());
    if let Some(tx) = core_tx {
        let _ = tx.send(core.clone());
    }
    tasks.spawn("session expiry", crate::handles::coordinator::run_expiry(core.clone(), shutdown.clone()));
    tasks.spawn("consumer lag", crate::lag::run(core.clone(), config.lag_metrics_max_partitions, shutdown.clone()));
    tasks.spawn(
        "retention",
        crate::retention::run(
            groups.clone(),
            config.timings.retention_check,
            config.timings.producer_expiry,
            shutdown.clone(),
        ),
    );
    tasks.spawn("quiescer", crate::quiesce::run(groups.clone(), config.quiesce, shutdown.clone()));
    if let Some(peers) = bootstrap {
        // Ends once decided; a panic in it stops the broker.
        let (raft, transport, shutdown) = (raft.clone(), transport.clone(), shutdown.clone());
        tasks.spawn_fallible("metadata bootstrap", async move {
            if bootstrap_metadata(node_id, peers.clone(), raft.clone(), transport.clone(), shutdown).await {
                // The cluster exists: catch up before voting again.
                crate::recovery::probe_group(transport, GroupId::METADATA, node_id, metadata_voters(raft, peers)).await;
            }
            Ok(())
        });
    }
    let stop_serving = CancellationToken::new();
    tracing::info!(node = node_id, listen = %config.listen, advertise = config.advertise, "broker starting");
    // Accepted here (not by tonic) so that open connections are counted.
    let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("listen on {}", config.listen))?;
    let incoming = {
        use tokio_stream::StreamExt;
        let metrics = core.metrics().clone();
        tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
            accepted.map(|stream| {
                // Small Raft and produce messages must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                metrics.count_connection(stream)
            })
        })
    };
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Decode limits (ferrolog_types::limits): the Raft service takes the
        // largest entry or snapshot chunk, the client API the largest batch;
        // tonic's default of 4 MiB would refuse both.
        .add_service(RaftServer::new(RaftService::new(groups.clone())).max_decoding_message_size(RAFT_MESSAGE_LIMIT))
        .add_service(BrokerServer::new(services.clone()).max_decoding_message_size(API_MESSAGE_LIMIT))
        .add_service(ProducersServer::new(services.clone()).max_decoding_message_size(API_MESSAGE_LIMIT))
        .add_service(GroupsServer::new(services.clone()).max_decoding_message_size(API_MESSAGE_LIMIT))
        .add_service(AdminServer::new(services).max_decoding_message_size(API_MESSAGE_LIMIT))
        .serve_with_incoming_shutdown(incoming, stop_serving.clone().cancelled_owned());
    // SIGTERM: first hand leadership away while still serving (the new
    // leaders need our votes and replies), then stop accepting.
    {
        let (groups, shutdown, stop_serving) = (groups.clone(), shutdown.clone(), stop_serving.clone());
        tasks.spawn("leadership hand-off", async move {
            shutdown.cancelled().await;
            let moved = groups.hand_off_leadership(groups.timings().shutdown_handoff_timeout).await;
            tracing::info!(node = node_id, groups = moved, "leadership handed off; stopping");
            stop_serving.cancel();
        });
    }
    let served = serve.await;

    // Orderly stop: partitions and metadata group, then flush the store.
    tracing::info!(node = node_id, "broker stopping");
    shutdown.cancel();
    tasks.join().await;
    groups.shutdown().await;
    let flushed = storage.flush();
    // A sync that failed during the stop halts as one at any other time.
    halt_if_failed(node_id, &storage);
    // The watchdog lets go of the store before this returns (an embedder
    // may reopen the directory right after).
    stop_watching.cancel();
    let _ = watchdog.await;
    flushed.context("flush the store")?;
    served.context("serve")?;
    match tasks.failure() {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}
