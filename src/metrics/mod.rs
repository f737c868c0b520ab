//! Prometheus metrics (`GET /metrics`, text format 0.0.4). Every label is an enum or a status
//! code, never an id, a key or a message, so cardinality is bounded by construction. The
//! enums live in [`crate::outcome`] (and `protocol::event::Dropped`); labels are derived from
//! them here.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outcome::{
    ChatFinish, ChatPassthrough, ChatRoute, CloseReason, Continuation, FallbackReason,
    RebuildOutcome, RecoveryCause, RelayDirection, RelaySwitch,
};

mod chat;
mod cluster;
mod lanes;
mod relay;
use crate::protocol::event::Dropped;

/// Which surface served a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/responses`, bridged over a WebSocket or its REST fallback.
    Responses,
    /// `POST /v1/chat/completions`, bridged or passed through.
    Chat,
    /// `GET /v1/responses` upgraded to a WebSocket and relayed (counted at the upgrade, `101`).
    Relay,
    /// Any other `/v1/*` request, proxied as it is.
    Passthrough,
    /// `/healthz`, `/readyz`, `/metrics`, unknown paths.
    Operations,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

/// Pool sockets by state, counted when metrics are scraped.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SocketState {
    Idle,
    Busy,
    Connecting,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: SocketState,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    reason: CloseReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: RecoveryCause,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    reason: Dropped,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    reason: FallbackReason,
}

/// All of wsbridge's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    time_to_first_byte: Family<RouteLabels, Histogram>,
    continuations: Family<ContinuationLabels, Counter>,
    chat: chat::ChatMetrics,
    relay: relay::RelayMetrics,
    cluster: cluster::ClusterMetrics,
    request_bytes: Counter,
    upstream: Upstream,
}

/// The upstream sockets' series.
#[derive(Debug)]
struct Upstream {
    sockets: Family<StateLabels, Gauge>,
    socket_opens: Counter,
    socket_closes: Family<CloseLabels, Counter>,
    recoveries: Family<CauseLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    head_evictions: Counter,
    upstream_bytes: Counter,
    dropped_events: Family<DroppedLabels, Counter>,
    credentials: Gauge,
    lanes: lanes::LaneMetrics,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContinuationLabels {
    outcome: Continuation,
}

/// Registers `metric` under `name` and hands it back.
fn add<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Upstream {
    fn register(registry: &mut Registry) -> Self {
        let sockets = add(
            registry,
            "upstream_sockets",
            "Upstream WebSockets by state",
            Family::<StateLabels, Gauge>::default(),
        );
        let socket_opens = add(
            registry,
            "upstream_socket_opens",
            "Upstream WebSockets opened",
            Counter::default(),
        );
        let socket_closes = add(
            registry,
            "upstream_socket_closes",
            "Upstream WebSockets closed, by reason",
            Family::<CloseLabels, Counter>::default(),
        );
        let recoveries = add(
            registry,
            "upstream_recoveries",
            "Requests retried on another socket before their first event, by cause",
            Family::<CauseLabels, Counter>::default(),
        );
        let fallbacks = add(
            registry,
            "rest_fallbacks",
            "POST /v1/responses sent over REST instead of a WebSocket, by reason",
            Family::<FallbackLabels, Counter>::default(),
        );
        let head_evictions = add(
            registry,
            "head_evictions",
            "Idle sockets whose head was dropped to serve another conversation",
            Counter::default(),
        );
        let upstream_bytes = add(
            registry,
            "upstream_frame_bytes",
            "Bytes of response.create frames sent upstream",
            Counter::default(),
        );
        let dropped_events = add(
            registry,
            "upstream_events_dropped",
            "Upstream events not relayed because they did not belong to the turn, by reason",
            Family::<DroppedLabels, Counter>::default(),
        );
        let credentials = add(
            registry,
            "pool_credentials",
            "Credentials the pool keeps state for (dropped once a credential has no sockets, \
             no stored heads and no REST cool-down)",
            Gauge::default(),
        );
        Self {
            lanes: lanes::LaneMetrics::register(registry),
            sockets,
            socket_opens,
            socket_closes,
            recoveries,
            fallbacks,
            head_evictions,
            upstream_bytes,
            dropped_events,
            credentials,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wsbridge");
        let requests = add(
            &mut registry,
            "requests",
            "Requests answered, by route and HTTP status",
            Family::<RequestLabels, Counter>::default(),
        );
        let time_to_first_byte = add(
            &mut registry,
            "time_to_first_byte_seconds",
            "From the request's arrival to its response status and headers",
            Family::<RouteLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
            }),
        );
        let continuations = add(
            &mut registry,
            "continuations",
            "Bridged turns (POST /v1/responses and /v1/chat/completions) by how they went upstream",
            Family::<ContinuationLabels, Counter>::default(),
        );
        let chat = chat::ChatMetrics::register(&mut registry);
        let relay = relay::RelayMetrics::register(&mut registry);
        let cluster = cluster::ClusterMetrics::register(&mut registry);
        let request_bytes = add(
            &mut registry,
            "client_request_bytes",
            "Bytes of the bridged client request bodies (what full resends would have sent)",
            Counter::default(),
        );
        let upstream = Upstream::register(&mut registry);
        Self {
            registry,
            upstream,
            requests,
            continuations,
            chat,
            relay,
            cluster,
            request_bytes,
            time_to_first_byte,
        }
    }
}

impl Metrics {
    /// Creates every labelled series that does not exist yet, at zero, so a dashboard or alert
    /// sees each documented series from the first scrape rather than after its first event.
    /// The label sets are all the enums' variants (bounded); for requests, each route's `200`.
    fn zero_every_series(&self) {
        for route in Route::ALL {
            drop(
                self.requests
                    .get_or_create(&RequestLabels { route, status: 200 }),
            );
            drop(
                self.time_to_first_byte
                    .get_or_create(&RouteLabels { route }),
            );
        }
        for reason in CloseReason::ALL {
            drop(
                self.upstream
                    .socket_closes
                    .get_or_create(&CloseLabels { reason }),
            );
        }
        for cause in RecoveryCause::ALL {
            drop(
                self.upstream
                    .recoveries
                    .get_or_create(&CauseLabels { cause }),
            );
        }
        for reason in FallbackReason::ALL {
            drop(
                self.upstream
                    .fallbacks
                    .get_or_create(&FallbackLabels { reason }),
            );
        }
        for outcome in Continuation::ALL {
            drop(
                self.continuations
                    .get_or_create(&ContinuationLabels { outcome }),
            );
        }
        for reason in Dropped::ALL {
            drop(
                self.upstream
                    .dropped_events
                    .get_or_create(&DroppedLabels { reason }),
            );
        }
        self.chat.zero();
        self.relay.zero();
        drop(self.requests.get_or_create(&RequestLabels {
            route: Route::Relay,
            status: 101,
        }));
    }

    pub fn request(&self, route: Route, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    pub fn first_byte(&self, route: Route, elapsed: Duration) {
        self.time_to_first_byte
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn socket_opened(&self) {
        self.upstream.socket_opens.inc();
    }

    pub fn socket_closed(&self, reason: CloseReason) {
        self.upstream
            .socket_closes
            .get_or_create(&CloseLabels { reason })
            .inc();
    }

    pub fn recovery(&self, cause: RecoveryCause) {
        self.upstream
            .recoveries
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    pub fn fallback(&self, reason: FallbackReason) {
        self.upstream
            .fallbacks
            .get_or_create(&FallbackLabels { reason })
            .inc();
    }

    pub fn continuation(&self, outcome: Continuation) {
        self.continuations
            .get_or_create(&ContinuationLabels { outcome })
            .inc();
    }

    pub fn head_evicted(&self) {
        self.upstream.head_evictions.inc();
    }

    /// An upstream event was not relayed (see [`Dropped`]).
    pub fn event_dropped(&self, reason: Dropped) {
        self.upstream
            .dropped_events
            .get_or_create(&DroppedLabels { reason })
            .inc();
    }

    /// A `response.create` frame went upstream (once per attempt).
    pub fn frame_sent(&self, frame: usize) {
        self.upstream.upstream_bytes.inc_by(frame as u64);
    }

    /// A client request body is being bridged (once per request, whatever the attempts).
    pub fn request_bridged(&self, body: usize) {
        self.request_bytes.inc_by(body as u64);
    }

    /// The text exposition, with the socket gauges set from `sockets` (idle, busy, connecting)
    /// and the credential gauge from `credentials`.
    pub fn render(&self, sockets: [usize; 3], credentials: usize) -> String {
        self.zero_every_series();
        self.upstream
            .credentials
            .set(i64::try_from(credentials).unwrap_or(i64::MAX));
        for (state, count) in [
            SocketState::Idle,
            SocketState::Busy,
            SocketState::Connecting,
        ]
        .into_iter()
        .zip(sockets)
        {
            self.upstream
                .sockets
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

/// Every variant of the labelled enums, to create their series at zero.
impl Route {
    pub const ALL: [Self; 5] = [
        Self::Responses,
        Self::Chat,
        Self::Relay,
        Self::Passthrough,
        Self::Operations,
    ];
}

impl CloseReason {
    pub const ALL: [Self; 10] = [
        Self::ServerClosed,
        Self::LimitReached,
        Self::PingTimeout,
        Self::MaxAge,
        Self::IdleTimeout,
        Self::ClientGone,
        Self::TurnFailed,
        Self::ProtocolError,
        Self::Shutdown,
        Self::LargeMessage,
    ];
}

impl RecoveryCause {
    pub const ALL: [Self; 5] = [
        Self::SocketClosed,
        Self::ConnectFailed,
        Self::LimitReached,
        Self::PreviousResponseNotFound,
        Self::StreamLimit,
    ];
}

impl FallbackReason {
    pub const ALL: [Self; 3] = [Self::Background, Self::FrameTooLarge, Self::UpgradeRefused];
}

impl Dropped {
    pub const ALL: [Self; 3] = [Self::BeforeCreated, Self::OtherResponse, Self::Sequence];
}

impl Continuation {
    pub const ALL: [Self; 4] = [
        Self::Continued,
        Self::Fresh,
        Self::Explicit,
        Self::Recovered,
    ];
}

/// Label values are the variants' names in snake_case (`server_closed`).
macro_rules! snake_case_labels {
    ($($kind:ty),*) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                for (index, c) in format!("{self:?}").chars().enumerate() {
                    if c.is_ascii_uppercase() {
                        if index > 0 {
                            encoder.write_char('_')?;
                        }
                        encoder.write_char(c.to_ascii_lowercase())?;
                    } else {
                        encoder.write_char(c)?;
                    }
                }
                Ok(())
            }
        }
    )*};
}

snake_case_labels!(
    Route,
    SocketState,
    CloseReason,
    RecoveryCause,
    FallbackReason,
    Continuation,
    Dropped,
    ChatRoute,
    ChatPassthrough,
    ChatFinish,
    RelayDirection,
    RebuildOutcome,
    RelaySwitch
);

/// The `content-type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_and_gauges_follow_the_census() {
        let metrics = Metrics::default();
        metrics.socket_closed(CloseReason::ServerClosed);
        metrics.request(Route::Responses, 200);
        let text = metrics.render([2, 1, 0], 1);
        assert!(
            text.contains("wsbridge_upstream_recoveries_total{cause=\"limit_reached\"} 0"),
            "every series exists from the start: {text}"
        );
        assert!(
            text.contains("wsbridge_upstream_socket_closes_total{reason=\"server_closed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsbridge_requests_total{route=\"responses\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsbridge_upstream_sockets{state=\"idle\"} 2"),
            "{text}"
        );
    }
}
