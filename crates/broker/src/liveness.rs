//! [`Liveness`]: the one answer to "is broker N alive?", used by the
//! cluster description, by quiescing (a follower wakes its group when the
//! leader's broker goes silent) and by producer fencing (whom to wait for).
//!
//! A broker is alive when it was heard from (any message, the broker
//! heartbeat of [`crate::quiesce`] at least every 250 ms) within the
//! liveness timeout (`liveness_timeout_ms`, see [`crate::config::Timings`]).
//! Every broker heartbeats every peer, so each broker
//! answers for all of them from its own observations.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_types::NodeId;

use crate::transport::Transport;

/// Whether peers were heard from recently.
#[derive(Debug, Clone)]
pub struct Liveness {
    transport: Arc<Transport>,
    timeout: Duration,
}

impl Liveness {
    /// Liveness from what `transport` heard, with `timeout`.
    pub fn new(transport: Arc<Transport>, timeout: Duration) -> Self {
        Liveness { transport, timeout }
    }

    /// Whether `id` was heard from within the timeout (this broker always is).
    pub fn is_live(&self, id: NodeId) -> bool {
        self.transport.is_live(id, self.timeout)
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
