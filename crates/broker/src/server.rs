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

/// Exit status of a broker halted by a failed WAL sync.
pub const FAIL_STOP_EXIT_CODE: i32 = 70;
/// How often the fail-stop watchdog looks at the store.
const FAIL_STOP_CHECK: Duration = Duration::from_millis(20);

/// Fail-stop: after a WAL fsync failed, nothing can be known about what
/// reached the disk (the kernel may have dropped the dirty pages), so the
/// broker halts at once, like Kafka on its last log directory failing. The
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
    if storage.has_failed() {
        tracing::error!(node = node_id, "a WAL fsync failed: halting the broker (fail-stop)");
        // Not a graceful shutdown: no leadership hand-off, no flush.
        std::process::exit(FAIL_STOP_EXIT_CODE);
    }
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
    let mut storage_config = StorageConfig::new(config.data_dir.join("db"));
    storage_config.fail_syncs_after = crate::failpoints::fail_syncs_after();
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
    let groups = Groups::with_timings(node_id, storage.clone(), transport.clone(), config.timings.clone());

    // The metadata group.
    let sm = MetaStateMachine::open(storage.clone())?;
    let meta_state = sm.subscribe();
    let log = LogStore::metadata(storage.clone());
    let factory = transport.factory::<ferrolog_raft::MetaConfig>(GroupId::METADATA);
    let raft = Raft::new(node_id, metadata_raft_config(&config.timings), factory, log, sm).await?;
    if !raft.is_initialized().await? {
        if config.peers.contains_key(&node_id) {
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
