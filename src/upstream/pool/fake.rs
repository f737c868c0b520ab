//! An in-memory upstream for the pool's unit tests (docs/architecture.md, "Pool").
//!
//! Each connection the pool opens is a `tokio::io::duplex` pipe ([`Dial::Memory`]) whose far
//! end a small task serves as a WebSocket through tokio-tungstenite: it answers pings (by
//! reading), answers each text frame with one event, and does what the test tells it (stop
//! reading, send a frame). Nothing touches the network, so the tests run on paused time and
//! a sweep, a ping or a timeout happens exactly when the clock says.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Message, http};

use super::super::socket::Connector;
use super::super::transport::Dial;
use super::{Pool, lock};
use crate::auth::Credential;
use crate::config::PoolConfig;
use crate::continuation::Head;
use crate::metrics::Metrics;
use crate::outcome::CloseReason;

/// The event the fake answers every text frame with.
pub(super) const ANSWER: &str = r#"{"type":"response.created"}"#;

/// The fake upstream: what it accepted, and knobs on each connection.
#[derive(Clone, Default)]
pub(super) struct Upstream {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// Accepted connections, in order (index 0 is the first the pool opened).
    sockets: Vec<Far>,
    /// Refuse every upgrade with this status.
    refuse: Option<u16>,
    /// Never answer an upgrade.
    hang: bool,
}

/// The upstream's end of one connection.
struct Far {
    authorization: String,
    open: bool,
    reading: watch::Sender<bool>,
    outbox: mpsc::UnboundedSender<Message>,
    pings: usize,
    frames: Vec<String>,
}

impl Upstream {
    /// Connections accepted so far.
    pub(super) fn opened(&self) -> usize {
        lock(&self.shared).sockets.len()
    }

    /// Connections still open on the upstream's side.
    pub(super) fn open(&self) -> usize {
        lock(&self.shared).sockets.iter().filter(|s| s.open).count()
    }

    pub(super) fn is_open(&self, socket: usize) -> bool {
        lock(&self.shared).sockets[socket].open
    }

    /// The `Authorization` header connection `socket` was opened with.
    pub(super) fn authorization(&self, socket: usize) -> String {
        lock(&self.shared).sockets[socket].authorization.clone()
    }

    pub(super) fn pings(&self, socket: usize) -> usize {
        lock(&self.shared).sockets[socket].pings
    }

    pub(super) fn frames(&self, socket: usize) -> Vec<String> {
        lock(&self.shared).sockets[socket].frames.clone()
    }

    /// Refuses every upgrade from now on with `status` (`None`: accepts again).
    pub(super) fn refuse(&self, status: Option<u16>) {
        lock(&self.shared).refuse = status;
    }

    /// Leaves every upgrade from now on unanswered (`false`: answers again).
    pub(super) fn hang(&self, hang: bool) {
        lock(&self.shared).hang = hang;
    }

    /// Stops (or resumes) reading connection `socket`: pings sent meanwhile go unanswered.
    pub(super) fn reading(&self, socket: usize, reading: bool) {
        lock(&self.shared).sockets[socket]
            .reading
            .send_replace(reading);
    }

    /// Sends a text frame on connection `socket`, as if unsolicited.
    pub(super) fn send(&self, socket: usize, text: &str) {
        self.push(socket, Message::text(text));
    }

    /// Closes connection `socket` from the upstream's side.
    pub(super) fn close(&self, socket: usize) {
        self.push(socket, Message::Close(None));
    }

    fn push(&self, socket: usize, message: Message) {
        let shared = lock(&self.shared);
        shared.sockets[socket].outbox.send(message).unwrap();
    }

    /// A dial that hands each connection to this upstream.
    fn dial(&self) -> Dial {
        let (connections, mut accepted) = mpsc::unbounded_channel();
        let upstream = self.clone();
        tokio::spawn(async move {
            while let Some(far) = accepted.recv().await {
                tokio::spawn(upstream.clone().serve(far));
            }
        });
        Dial::Memory(connections)
    }

    async fn serve(self, far: DuplexStream) {
        let (refuse, hang) = {
            let shared = lock(&self.shared);
            (shared.refuse, shared.hang)
        };
        if hang {
            let _held = far;
            return std::future::pending().await;
        }
        let mut authorization = String::new();
        #[allow(clippy::result_large_err, reason = "tungstenite's callback signature")]
        let handshake = |request: &Request, response: Response| {
            authorization = request
                .headers()
                .get("authorization")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default();
            match refuse {
                Some(status) => {
                    let mut refusal = ErrorResponse::new(Some("refused".into()));
                    *refusal.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Err(refusal)
                }
                None => Ok(response),
            }
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(far, handshake).await else {
            return;
        };
        let (reading, mut listening) = watch::channel(true);
        let (outbox, mut outgoing) = mpsc::unbounded_channel();
        let index = {
            let mut shared = lock(&self.shared);
            shared.sockets.push(Far {
                authorization,
                open: true,
                reading,
                outbox,
                pings: 0,
                frames: Vec::new(),
            });
            shared.sockets.len() - 1
        };
        loop {
            let read = *listening.borrow_and_update();
            tokio::select! {
                message = ws.next(), if read => match message {
                    Some(Ok(Message::Text(text))) => {
                        lock(&self.shared).sockets[index].frames.push(text.to_string());
                        if ws.send(Message::text(ANSWER)).await.is_err() {
                            break;
                        }
                    }
                    // tungstenite queues the pong; it goes out with the next read or write.
                    Some(Ok(Message::Ping(_))) => lock(&self.shared).sockets[index].pings += 1,
                    // A close is answered while reading on; the stream then ends.
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                },
                Ok(()) = listening.changed() => {}
                Some(message) = outgoing.recv() => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        lock(&self.shared).sockets[index].open = false;
    }
}

/// A pool configuration for tests: nothing kept warm, nothing pinged, long timeouts; each test
/// sets what it exercises.
pub(super) fn config() -> PoolConfig {
    PoolConfig {
        min_idle: 0,
        max_sockets: 4,
        max_age: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(300),
        ping_interval: None,
        checkout_timeout: Duration::from_secs(10),
    }
}

/// How long the test connector waits for an upgrade.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool over a fresh fake upstream.
pub(super) fn pool(config: PoolConfig) -> (Pool, Upstream) {
    let upstream = Upstream::default();
    let connector = Connector::with_dial(
        "ws://upstream.test/v1/responses".into(),
        upstream.dial(),
        CONNECT_TIMEOUT,
        1 << 20,
    );
    let pool = Pool::new(config, connector, Arc::new(Metrics::default()));
    (pool, upstream)
}

pub(super) fn key(name: &str) -> Credential {
    Credential::bearer(name).unwrap()
}

/// A head of `items` items whose digest is `digest`, for model `m`.
pub(super) fn head(response_id: &str, digest: u128, stored: bool) -> Head {
    Head {
        response_id: response_id.into(),
        digest: Some(digest),
        model: "m".into(),
        items: 2,
        stored,
        trailing_reasoning: Vec::new(),
    }
}

impl Pool {
    /// Sockets the pool closed for `reason`, as the metrics count them.
    pub(super) fn closes(&self, reason: CloseReason) -> u64 {
        self.counter(&format!(
            "wsbridge_upstream_socket_closes_total{{reason=\"{}\"}}",
            label(reason)
        ))
    }

    /// The value of one counter series in the metrics exposition.
    pub(super) fn counter(&self, series: &str) -> u64 {
        let text = self.inner.metrics.render(self.census(), self.credentials());
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

/// The metrics label of `reason`: its name in snake_case.
fn label(reason: CloseReason) -> String {
    let mut label = String::new();
    for c in format!("{reason:?}").chars() {
        if c.is_uppercase() && !label.is_empty() {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}
