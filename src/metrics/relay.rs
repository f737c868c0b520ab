//! The WebSocket relay's series (`GET /v1/responses`): client sockets, frames each way,
//! context rebuilds and moves to fresh upstream sockets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;
use crate::outcome::{RebuildOutcome, RelayDirection, RelaySwitch};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: RelayDirection,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebuildLabels {
    outcome: RebuildOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabels {
    reason: RelaySwitch,
}

#[derive(Debug)]
pub(super) struct RelayMetrics {
    open: Gauge,
    accepted: Counter,
    frames: Family<DirectionLabels, Counter>,
    rebuilds: Family<RebuildLabels, Counter>,
    switches: Family<SwitchLabels, Counter>,
}

impl RelayMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            open: Gauge::default(),
            accepted: Counter::default(),
            frames: Family::default(),
            rebuilds: Family::default(),
            switches: Family::default(),
        };
        registry.register(
            "relay_client_sockets",
            "Client WebSockets on GET /v1/responses being relayed now",
            metrics.open.clone(),
        );
        registry.register(
            "relay_client_sockets_accepted",
            "Client WebSockets on GET /v1/responses accepted for relaying",
            metrics.accepted.clone(),
        );
        registry.register(
            "relay_frames",
            "WebSocket frames relayed, by direction",
            metrics.frames.clone(),
        );
        registry.register(
            "relay_context_rebuilds",
            "Relayed response.create frames naming a store=false response only a closed upstream \
             socket held: rebuilt with the full input, or too large to rebuild",
            metrics.rebuilds.clone(),
        );
        registry.register(
            "relay_upstream_switches",
            "Relayed client sockets moved to a fresh upstream socket, by reason",
            metrics.switches.clone(),
        );
        metrics
    }

    /// Every series at zero (see `Metrics::zero_every_series`).
    pub(super) fn zero(&self) {
        for direction in RelayDirection::ALL {
            drop(self.frames.get_or_create(&DirectionLabels { direction }));
        }
        for outcome in RebuildOutcome::ALL {
            drop(self.rebuilds.get_or_create(&RebuildLabels { outcome }));
        }
        for reason in RelaySwitch::ALL {
            drop(self.switches.get_or_create(&SwitchLabels { reason }));
        }
    }
}

impl Metrics {
    /// A client socket is being relayed, until [`Metrics::relay_closed`].
    pub fn relay_opened(&self) {
        self.relay.accepted.inc();
        self.relay.open.inc();
    }

    pub fn relay_closed(&self) {
        self.relay.open.dec();
    }

    /// One frame relayed `direction`.
    pub fn relay_frame(&self, direction: RelayDirection) {
        self.relay
            .frames
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    pub fn relay_rebuild(&self, outcome: RebuildOutcome) {
        self.relay
            .rebuilds
            .get_or_create(&RebuildLabels { outcome })
            .inc();
    }

    pub fn relay_switch(&self, reason: RelaySwitch) {
        self.relay
            .switches
            .get_or_create(&SwitchLabels { reason })
            .inc();
    }
}

/// Every variant of the labelled enums, to create their series at zero.
impl RelayDirection {
    pub const ALL: [Self; 2] = [Self::ClientToUpstream, Self::UpstreamToClient];
}

impl RebuildOutcome {
    pub const ALL: [Self; 2] = [Self::Rebuilt, Self::TooLarge];
}

impl RelaySwitch {
    pub const ALL: [Self; 3] = [Self::MaxAge, Self::Dropped, Self::LimitReached];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_series_exist_from_the_first_scrape_and_count() {
        let metrics = Metrics::default();
        metrics.relay_opened();
        metrics.relay_frame(RelayDirection::UpstreamToClient);
        metrics.relay_rebuild(RebuildOutcome::Rebuilt);
        let text = metrics.render([0, 0, 0], 0);
        for series in [
            "wsbridge_relay_client_sockets 1",
            "wsbridge_relay_client_sockets_accepted_total 1",
            "wsbridge_relay_frames_total{direction=\"upstream_to_client\"} 1",
            "wsbridge_relay_frames_total{direction=\"client_to_upstream\"} 0",
            "wsbridge_relay_context_rebuilds_total{outcome=\"rebuilt\"} 1",
            "wsbridge_relay_context_rebuilds_total{outcome=\"too_large\"} 0",
            "wsbridge_relay_upstream_switches_total{reason=\"max_age\"} 0",
            "wsbridge_requests_total{route=\"relay\",status=\"101\"} 0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
    }
}
