//! Brokers joining a running cluster.
//!
//! A broker started with `--join` (and not among the initial peers) asks
//! any broker for admission; the request is forwarded by `NOT_LEADER` hints
//! to the metadata leader, which adds it as a learner of the metadata group
//! (a voter set stays the initial 3 or 5). Once a member, it appears in the
//! broker list that placement uses, so new partitions are placed on it.

use std::time::Duration;

use ferrolog_proto::errors;
use ferrolog_proto::errors::LeaderHint;
use ferrolog_proto::internal::JoinRequest;
use ferrolog_proto::internal::raft_client::RaftClient;
use ferrolog_types::NodeId;
use openraft::BasicNode;
use openraft::async_runtime::watch::WatchReceiver;
use tonic::Status;

use crate::error::BrokerError;
use crate::groups::Groups;

/// Pause between admission attempts while no leader answers.
const JOIN_RETRY: Duration = Duration::from_millis(200);

/// On the metadata leader: adds `node_id` at `address` as a learner and
/// waits until it has caught up. Idempotent for the same address.
/// Errors are [`BrokerError`]s, mapped to statuses where every other is
/// (`crate::error`).
pub async fn admit(groups: &Groups, node_id: NodeId, address: String) -> Result<(), BrokerError> {
    let meta = groups.meta().ok_or_else(|| BrokerError::Unavailable("broker is starting".into()))?;
    let leader = meta.raft.current_leader().await;
    if leader != Some(groups.node_id()) {
        let hint = LeaderHint { leader_id: leader, leader_address: leader.and_then(|l| groups.address_of(l)) };
        return Err(BrokerError::NotLeader { what: "not the metadata leader".into(), hint });
    }
    let membership = meta.raft.metrics().borrow_watched().membership_config.clone();
    if let Some(node) = membership.membership().get_node(&node_id) {
        if node.addr == address {
            // A member asks to join only when its metadata log is empty
            // (a restart on an intact data dir does not join): it lost its
            // disk. Replication to it restarts from scratch once it reports
            // the reverted log (openraft refuses a reversion unless told).
            let _ = meta.raft.trigger().allow_next_revert(&node_id, true).await;
            return Ok(());
        }
        return Err(BrokerError::AlreadyExists(format!(
            "broker {node_id} is already a member at {}; a broker id is never reused for another broker",
            node.addr
        )));
    }
    tracing::info!(node = groups.node_id(), joining = node_id, %address, "admitting broker as a metadata learner");
    meta.raft
        .add_learner(node_id, BasicNode { addr: address }, true)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("add broker {node_id}: {e}")))?;
    Ok(())
}

/// On the joining broker: asks `seeds` until admitted (follows hints).
pub async fn join(node_id: NodeId, address: String, seeds: Vec<String>, shutdown: tokio_util::sync::CancellationToken) {
    let mut i = 0;
    let mut next: Option<String> = None;
    while !shutdown.is_cancelled() {
        let addr = next.take().unwrap_or_else(|| {
            i += 1;
            seeds[i % seeds.len()].clone()
        });
        let result = async {
            let mut c =
                RaftClient::connect(format!("http://{addr}")).await.map_err(|e| Status::unavailable(e.to_string()))?;
            c.join(JoinRequest { node_id, address: address.clone() }).await
        }
        .await;
        match result {
            Ok(_) => {
                tracing::info!(node = node_id, via = addr, "joined the cluster");
                return;
            }
            Err(s) => {
                if let Some(h) = errors::leader_hint(&s) {
                    next = h.leader_address;
                }
                if s.code() == tonic::Code::AlreadyExists {
                    tracing::error!(node = node_id, error = %s.message(), "cannot join");
                    return;
                }
                tracing::debug!(node = node_id, via = addr, error = %s.message(), "join attempt failed; retrying");
                if next.is_none() {
                    tokio::time::sleep(JOIN_RETRY).await;
                }
            }
        }
    }
}
