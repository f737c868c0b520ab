//! The `upstream.lanes` series (docs/architecture.md, "Lanes"): lanes in use and the sockets
//! carrying them, kept by the pool as deltas on every change of its lane tables.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, add};

#[derive(Debug)]
pub(super) struct LaneMetrics {
    in_use: Gauge,
    sockets: Gauge,
}

impl LaneMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            in_use: add(
                registry,
                "upstream_lanes_in_use",
                "stream_id lanes (upstream.lanes) with a turn in flight or holding a \
                 conversation's head",
                Gauge::default(),
            ),
            sockets: add(
                registry,
                "upstream_lane_sockets",
                "Upstream WebSockets carrying stream_id lanes (also counted in upstream_sockets)",
                Gauge::default(),
            ),
        }
    }
}

impl Metrics {
    /// Lanes in use and lane sockets changed by these amounts.
    pub fn lanes_changed(&self, lanes: i64, sockets: i64) {
        let metrics = &self.upstream.lanes;
        if lanes != 0 {
            metrics.in_use.inc_by(lanes);
        }
        if sockets != 0 {
            metrics.sockets.inc_by(sockets);
        }
    }
}
