//! The cluster's series (docs/architecture.md, "Cluster"): requests forwarded to their owner,
//! served for a peer, owners found unreachable, local fallbacks, forged internal headers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::{Metrics, add};

#[derive(Debug)]
pub(super) struct ClusterMetrics {
    forwarded: Counter,
    served_for_peers: Counter,
    owner_unreachable: Counter,
    local_fallbacks: Counter,
    forged: Counter,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            forwarded: add(
                registry,
                "cluster_forwarded",
                "Bridged requests forwarded to the replica that owns their conversation",
                Counter::default(),
            ),
            served_for_peers: add(
                registry,
                "cluster_served_for_peers",
                "Bridged requests another replica forwarded here (this replica owns them)",
                Counter::default(),
            ),
            owner_unreachable: add(
                registry,
                "cluster_owner_unreachable",
                "Forwards whose owner replica could not be connected to (then skipped for a while)",
                Counter::default(),
            ),
            local_fallbacks: add(
                registry,
                "cluster_local_fallbacks",
                "Requests served here because forwarding to their owner failed",
                Counter::default(),
            ),
            forged: add(
                registry,
                "cluster_forged_refused",
                "Requests refused with 403: an internal forwarding header that did not verify",
                Counter::default(),
            ),
        }
    }
}

impl Metrics {
    pub fn cluster_forwarded(&self) {
        self.cluster.forwarded.inc();
    }

    pub fn cluster_served_for_peer(&self) {
        self.cluster.served_for_peers.inc();
    }

    pub fn cluster_owner_unreachable(&self) {
        self.cluster.owner_unreachable.inc();
    }

    pub fn cluster_local_fallback(&self) {
        self.cluster.local_fallbacks.inc();
    }

    pub fn cluster_forged_refused(&self) {
        self.cluster.forged.inc();
    }
}
