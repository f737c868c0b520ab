//! The WebSocket relay: a client's WebSocket on `GET /v1/responses` carried over an upstream
//! socket of its credential taken from the pool (docs/architecture.md, "WebSocket relay").
//!
//! ```text
//! client socket ──frames as they came──▶ Session ──▶ Upstream (a pooled Lease, or a socket of
//!               ◀──events as they came──         ◀──  its own when the client's query adds to the base's)
//!                                          │ between turns: a socket past pool.max_age, closed,
//!                                          │ or at the connection limit is replaced; a store=false
//!                                          └ continuation it held is rebuilt from the Chain
//! ```
//!
//! The upstream socket is chosen before the upgrade is answered, so a refused key gets the
//! upstream's HTTP answer and the client's first turn pays no upstream handshake when an idle
//! socket was pooled. The session holds it for the life of the client socket; it goes back to
//! the pool when the client leaves between turns, and is closed when it leaves mid-response
//! (which stops generation upstream).

mod chain;
mod in_flight;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Credential;
use crate::config::Config;
use crate::continuation::Affinity;
use crate::engine::BridgeError;
use crate::metrics::Metrics;
use crate::outcome::CloseReason;
use crate::upstream::pool::{CheckoutError, Lease, Pool};
use crate::upstream::socket::{ConnectError, Socket};

/// What every relayed client socket shares.
#[derive(Debug)]
pub struct Relay {
    pool: Pool,
    metrics: Arc<Metrics>,
    max_age: Duration,
    ping_interval: Option<Duration>,
    max_attempts: u32,
    max_replay_bytes: usize,
    /// `upstream.max_frame_bytes`: a rebuilt frame over it is sent as it came.
    max_frame_bytes: usize,
    /// Cancelled when the proxy stops accepting: sessions end once no response is in flight.
    stop: CancellationToken,
    /// Cancelled when the shutdown grace runs out: sessions end at once.
    expired: CancellationToken,
    /// Sessions, so that shutdown waits for them.
    tasks: TaskTracker,
}

impl Relay {
    pub fn new(
        config: &Config,
        pool: Pool,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            pool,
            metrics,
            max_age: config.pool.max_age,
            ping_interval: config.pool.ping_interval,
            max_attempts: config.upstream.max_attempts,
            max_replay_bytes: config.relay.max_replay_bytes,
            max_frame_bytes: config.upstream.max_frame_bytes,
            stop,
            expired: CancellationToken::new(),
            tasks,
        }
    }

    /// Ends every session now (the shutdown grace ran out).
    pub fn expire(&self) {
        self.expired.cancel();
    }

    /// An upstream socket of `credential` for a client socket: a pooled one (an idle one when
    /// there is one), or with a `query` that adds to the base URL's own a socket of its own
    /// opened to the URL with that query (an Azure client's `api-version`, which the base URL
    /// already has, is served from the pool).
    pub async fn open(
        &self,
        credential: &Credential,
        query: Option<&str>,
    ) -> Result<Upstream, BridgeError> {
        let connector = self.pool.connector();
        if let Some(query) = query.filter(|query| connector.merged_query(query).is_some()) {
            let socket = self
                .pool
                .connector()
                .connect_with_query(credential, Some(query))
                .await
                .map_err(connect_failed)?;
            return Ok(Upstream::Own(socket));
        }
        match self.pool.checkout(credential, Affinity::None).await {
            Ok(checkout) => {
                checkout.lease.refill_pool();
                Ok(Upstream::Pooled(checkout.lease))
            }
            Err(CheckoutError::Busy { retry_after }) => Err(BridgeError::Busy { retry_after }),
            Err(CheckoutError::ShuttingDown) => Err(BridgeError::ShuttingDown),
            Err(CheckoutError::Connect(error)) => Err(connect_failed(error)),
            Err(CheckoutError::NoMatch) => Err(BridgeError::ClosedBeforeStart),
        }
    }

    /// Relays `client` over `upstream` until one side ends it (on the upgraded connection's
    /// task, holding a [`Relay::track`] token).
    pub async fn serve(
        self: Arc<Self>,
        client: WebSocket,
        credential: Credential,
        query: Option<String>,
        upstream: Upstream,
    ) {
        self.metrics.relay_opened();
        session::Session::new(self.clone(), credential, query, upstream)
            .run(client)
            .await;
        self.metrics.relay_closed();
    }

    /// Keeps the session counted by shutdown from before the upgrade completes.
    pub fn track(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.tasks.token()
    }
}

/// The refused upgrade is the upstream's own answer (passed on); anything else is ours.
fn connect_failed(error: ConnectError) -> BridgeError {
    match error {
        ConnectError::Refused {
            status,
            headers,
            body,
        } => BridgeError::Refused {
            status,
            headers,
            body,
        },
        error => {
            tracing::warn!(%error, "connecting upstream for a relayed client socket failed");
            BridgeError::Unreachable(error)
        }
    }
}

/// The upstream socket a client socket is relayed over.
#[derive(Debug)]
pub enum Upstream {
    /// Leased from the pool for as long as the client socket needs it.
    Pooled(Lease),
    /// Opened for this client alone (its query adds to the base URL's).
    Own(Socket),
}

impl Upstream {
    fn socket(&mut self) -> &mut Socket {
        match self {
            Self::Pooled(lease) => lease.socket(),
            Self::Own(socket) => socket,
        }
    }

    /// No response in flight: a pooled socket goes back to the pool (with no head: what it
    /// holds is the client's), one of its own is closed.
    fn release(mut self) {
        self.socket().set_head(None);
        match self {
            Self::Pooled(lease) => lease.release(),
            Self::Own(socket) => drop(tokio::spawn(socket.close())),
        }
    }

    /// The socket cannot be used again (or a response is in flight): close it.
    fn close(self, reason: CloseReason) {
        match self {
            Self::Pooled(lease) => lease.close(reason),
            Self::Own(socket) => drop(tokio::spawn(socket.close())),
        }
    }
}
