//! The upstream simulator: OpenAI's Responses API in WebSocket mode and over REST, and Chat
//! Completions, driven by one deterministic scripted model, with per-socket response caches, a persisted store,
//! lanes, the connection age limit, a latency model (handshakes included), fault injection and counters
//! (docs/architecture.md, "Simulator").
//!
//! ```text
//! GET  /v1/responses   (WebSocket)   ─┐                       ┌─ per-socket cache (ws)
//! POST /v1/responses   (SSE / JSON)  ─┼─ turn::prepare ─ play ─┼─ persisted Store (store=true)
//! POST /v1/chat/completions (chat) ───┘  (messages → items)    └─ Stats (turn records)
//! GET  /v1/responses/{id}, /v1/models, /sim/stats, /sim/faults
//! ```
//!
//! Tests and benchmarks spawn it in-process on port 0 with [`Simulator::spawn`].

mod chat;
pub mod config;
pub mod events;
pub mod faults;
mod gate;
mod handshake;
pub mod latency;
pub mod model;
mod plan;
mod rest;
pub mod stats;
pub mod store;
mod structured;
mod turn;
mod validate;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::config::SimulatorConfig;
use self::faults::{FaultConfig, Faults};
use self::stats::{Stats, StatsSnapshot};
use self::store::Store;
use crate::protocol::OpenAiError;
use crate::protocol::key::KeyHeader;

/// State shared by every connection of one simulator.
#[derive(Debug)]
pub struct Shared {
    config: SimulatorConfig,
    store: Store,
    stats: Stats,
    faults: Faults,
    shutdown: CancellationToken,
    /// WebSocket connections and streaming bodies, awaited on shutdown.
    tasks: TaskTracker,
}

impl Shared {
    /// The caller's API key, from the header `simulator.auth_header` names, or the 401 the
    /// upstream would answer.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, OpenAiError> {
        let Some(key) = self.config.auth_header.read(headers) else {
            let mut error = OpenAiError::invalid_api_key(match self.config.auth_header {
                KeyHeader::Authorization => {
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                }
                KeyHeader::ApiKey => {
                    "You didn't provide an API key in the api-key header (this simulator has \
                     simulator.auth_header = \"api-key\", as Azure OpenAI takes its keys)."
                }
            });
            error.code = None;
            return Err(error);
        };
        if !self.config.accepted_keys.is_empty()
            && !self.config.accepted_keys.iter().any(|k| k == key)
        {
            return Err(OpenAiError::invalid_api_key(format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask(key)
            )));
        }
        Ok(key.to_owned())
    }
}

/// `sk-abc…wxyz` style, as OpenAI echoes keys in errors.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// The simulator's HTTP surface: the API under `simulator.path_prefix` (every request under
/// it through [`gate::gate`]), the simulator's own `/sim/*` at the root.
pub fn router(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config.max_frame_bytes;
    let api = Router::new()
        .route("/responses", get(ws::upgrade).post(rest::create))
        .route("/responses/{id}", get(rest::retrieve))
        .route("/chat/completions", post(chat::create))
        .route("/models", get(rest::models))
        .route("/models/{id}", get(rest::model));
    Router::new()
        .nest(&shared.config.path_prefix, api)
        .route("/sim/stats", get(rest::stats))
        .route("/sim/faults", get(rest::faults).post(rest::set_faults))
        .fallback(rest::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            gate::gate,
        ))
        .layer(axum::middleware::map_response(rest::common_headers))
        .with_state(shared)
}

/// Entry point for spawning a simulator.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds `config.listen` (port 0 picks a free port) and serves until the handle is shut
    /// down or dropped.
    pub async fn spawn(config: SimulatorConfig) -> std::io::Result<SimulatorHandle> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let listener =
            handshake::SlowStart::new(crate::net::without_nagle(listener), config.latency.connect);
        let shared = Arc::new(Shared {
            store: Store::new(config.store_capacity),
            stats: Stats::new(config.stats_turn_capacity),
            faults: Faults::new(config.faults.clone()),
            config,
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
        });
        let app = router(shared.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "simulator server failed");
            }
        });
        tracing::debug!(%addr, "simulator bound");
        Ok(SimulatorHandle {
            addr,
            shared,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the simulator; [`SimulatorHandle::shutdown`] also
/// waits for its connections to finish.
#[derive(Debug)]
pub struct SimulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1` (the path prefix), what an SDK takes as `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, self.shared.config.path_prefix)
    }

    /// `ws://ADDR/v1/responses` (under the path prefix).
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{}/responses",
            self.addr, self.shared.config.path_prefix
        )
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Waits until `condition` holds for the stats, up to `timeout`; returns the last snapshot
    /// either way (`Err` on timeout).
    pub async fn wait_for(
        &self,
        condition: impl Fn(&StatsSnapshot) -> bool,
        timeout: Duration,
    ) -> Result<StatsSnapshot, StatsSnapshot> {
        let mut changes = self.shared.stats.subscribe();
        let wait = async {
            loop {
                let snapshot = self.stats();
                if condition(&snapshot) {
                    return snapshot;
                }
                if changes.changed().await.is_err() {
                    return snapshot;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| self.stats())
    }

    /// Replaces the configured faults (and restarts their counters).
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), String> {
        self.shared.faults.set(faults)
    }

    /// Stops accepting, closes sockets (code 1001) and ends streams, and waits for all of it,
    /// at most `GRACE`.
    pub async fn shutdown(mut self) {
        const GRACE: Duration = Duration::from_secs(5);
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let task = self.task.take();
        let _ = tokio::time::timeout(GRACE, async {
            if let Some(task) = task {
                let _ = task.await;
            }
            self.shared.tasks.wait().await;
        })
        .await;
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
