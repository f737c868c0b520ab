//! The proxy's HTTP surface and its lifecycle ([`Proxy`]).
//!
//! ```text
//! POST /v1/responses ─▶ responses::create ─▶ pool lease ─▶ SSE / JSON   (REST fallback: passthrough)
//! POST /v1/chat/completions ─▶ chat::create ─▶ the same turn engine ─▶ chunks / chat.completion
//!                                               (or the upstream's chat endpoint: passthrough)
//! GET  /v1/responses + Upgrade ─▶ relay::upgrade ─▶ crate::relay (frames both ways over a pooled socket)
//! any  /v1/*        ─▶ passthrough::handle (streamed both ways)
//! /healthz /readyz /metrics
//! ```

pub mod chat;
mod cluster;
mod logs;
pub mod passthrough;
mod relay;
pub mod responses;
pub mod server;

pub use logs::{RequestId, SocketUse};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::{BaseUrl, Config, UpstreamMode};
use crate::engine::Engine;
use crate::metrics::{Metrics, Route};
use crate::net::{Outbound, RestClient, rest_client};
use crate::protocol::OpenAiError;
use crate::simulator::{Simulator, SimulatorHandle};

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    config: Config,
    auth: Auth,
    /// The turn engine (and through it, the pool).
    engine: Engine,
    /// Client WebSockets on `GET /v1/responses`, relayed over the engine's pool.
    relay: Arc<crate::relay::Relay>,
    client: RestClient,
    /// Direct or through a proxy: readiness checks the first hop.
    route: crate::net::Route,
    metrics: Arc<Metrics>,
    /// `[cluster]`: owner routing between replicas (docs/architecture.md, "Cluster").
    cluster: Option<Cluster>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the in-process simulator: {0}")]
    Simulator(std::io::Error),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] crate::net::TlsError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running proxy (and its in-process simulator in `simulator` mode).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: server::Shutdown,
    server: tokio::task::JoinHandle<()>,
    connections: TaskTracker,
    simulator: Option<SimulatorHandle>,
}

impl Proxy {
    /// Binds `server.listen`, starts the simulator first in `simulator` mode, pre-warms the
    /// injected credential's sockets, and serves until [`Proxy::shutdown`].
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
        let simulator = start_simulator(&mut config).await?;
        let auth = Auth::from_config(&config.auth, config.upstream.auth_header)
            .map_err(StartError::Config)?;
        let outbound = Outbound {
            tls: crate::net::tls_config(&config.upstream.trust)?,
            route: upstream_route(&config),
        };
        let client = rest_client(&outbound, config.upstream.connect_timeout);
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::new(&config, outbound.clone(), metrics.clone());
        if let Some(credential) = auth.fixed() {
            engine.prewarm(credential);
        }
        let shutdown = server::Shutdown::default();
        let connections = TaskTracker::new();
        let relay = Arc::new(crate::relay::Relay::new(
            &config,
            engine.pool().clone(),
            metrics.clone(),
            shutdown.stop.clone(),
            connections.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let cluster = config.cluster.as_ref().map(|cluster| {
            let first_event = config.upstream.first_event_timeout;
            Cluster::new(cluster, first_event, metrics.clone())
        });
        let app = Arc::new(App {
            config,
            auth,
            engine,
            relay,
            client,
            route: outbound.route,
            metrics,
            cluster,
        });
        let limits = server::Limits {
            max_connections: app.config.server.max_connections,
            header_read_timeout: app.config.server.header_read_timeout,
            max_header_bytes: app.config.server.max_header_bytes,
        };
        let server = tokio::spawn(server::serve(
            listener,
            router(app.clone()),
            limits,
            shutdown.clone(),
            connections.clone(),
        ));
        Ok(Self {
            addr,
            app,
            shutdown,
            server,
            connections,
            simulator,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, what an SDK takes as `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The in-process simulator, in `simulator` mode.
    pub fn simulator(&self) -> Option<&SimulatorHandle> {
        self.simulator.as_ref()
    }

    /// Stops accepting and lets in-flight requests finish within `server.shutdown_grace`.
    /// When the grace runs out, every bridged stream still open ends with a terminal
    /// `response.failed` and a clean end of body (requests without output get 503), and
    /// connections get [`FLUSH`] to write that before they are dropped. Then the upstream
    /// sockets close and the in-process simulator stops.
    pub async fn shutdown(self) {
        let grace = self.app.config.server.shutdown_grace;
        self.shutdown.stop.cancel();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish within the shutdown grace; ending them"
            );
            self.app.engine.expire();
            self.app.relay.expire();
            if tokio::time::timeout(FLUSH, self.connections.wait())
                .await
                .is_err()
            {
                self.shutdown.kill.cancel();
                self.connections.wait().await;
            }
        }
        let _ = self.server.await;
        self.app.engine.close(Duration::from_secs(2)).await;
        if let Some(simulator) = self.simulator {
            simulator.shutdown().await;
        }
    }
}

/// In `simulator` mode, starts the in-process simulator on a free loopback port and points
/// `upstream.base_url` at it.
async fn start_simulator(config: &mut Config) -> Result<Option<SimulatorHandle>, StartError> {
    if config.upstream.mode != UpstreamMode::Simulator {
        return Ok(None);
    }
    let mut simulator_config = config.simulator.clone();
    simulator_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let handle = Simulator::spawn(simulator_config)
        .await
        .map_err(StartError::Simulator)?;
    config.upstream.base_url = BaseUrl::parse(&handle.base_url()).map_err(StartError::Config)?;
    tracing::info!(
        "upstream: the in-process simulator at {}",
        handle.base_url()
    );
    Ok(Some(handle))
}

/// The route to the configured upstream (direct or through a proxy), logged once.
fn upstream_route(config: &Config) -> crate::net::Route {
    let base = &config.upstream.base_url;
    let proxy = &config.upstream.proxy;
    let route = proxy.route(base.is_https(), base.host(), base.port());
    logs::log_route(proxy, &route, base);
    route
}

/// After the shutdown grace, how long connections get to write their last events.
const FLUSH: Duration = Duration::from_secs(2);

/// Starts the proxy, logs where it listens, and runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let proxy = Proxy::start(config).await?;
    logs::log_started(&proxy);
    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing in-flight requests");
    proxy.shutdown().await;
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.server.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/responses",
            axum::routing::post(responses::create)
                .layer(DefaultBodyLimit::max(body_limit))
                .get(responses_get)
                .fallback(passthrough::handle),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(chat::create)
                .layer(DefaultBodyLimit::max(body_limit))
                .fallback(passthrough::handle),
        )
        .route("/v1", any(passthrough::handle))
        .route("/v1/{*rest}", any(passthrough::handle))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cluster::internal_hop,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// 431 in OpenAI's shape for a header block over `server.max_header_bytes` (counted as on
/// the wire: `name: value` and a line end per header), before anything is forwarded.
async fn limit_headers(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let limit = app.config.server.max_header_bytes;
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return OpenAiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            format!(
                "Request header fields too large: {size} bytes, this wsbridge accepts at most \
                 {limit} (server.max_header_bytes)."
            ),
        )
        .with_code("request_header_fields_too_large")
        .into_response();
    }
    next.run(request).await
}

/// Metrics, a tracing span with the request id, the `x-request-id` header, and (with
/// `log.access`) one access line per request, written when its body has been sent.
async fn observe(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let post = method == axum::http::Method::POST;
    let route = if path == "/v1/responses" && post {
        Route::Responses
    } else if path == "/v1/responses" && relay::wants_websocket(request.headers()) {
        Route::Relay
    } else if path == "/v1/chat/completions" && post {
        Route::Chat
    } else if path == "/v1" || path.starts_with("/v1/") {
        Route::Passthrough
    } else {
        Route::Operations
    };
    let request_id = crate::ids::new_id("req");
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %path,
        request_id = %request_id,
        upstream_request_id = tracing::field::Empty,
    );
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let first_byte = started.elapsed();
    app.metrics.first_byte(route, first_byte);
    app.metrics.request(route, response.status().as_u16());
    // A passed-through answer keeps the upstream's id (what OpenAI support asks for); the span
    // then carries both, so the id the client received is in every later line.
    match response.headers().get(logs::X_REQUEST_ID) {
        Some(upstream) => {
            span.record("upstream_request_id", upstream.to_str().unwrap_or("?"));
        }
        None => {
            if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(logs::X_REQUEST_ID, value);
            }
        }
    }
    if !app.config.log.access {
        return response;
    }
    let line = logs::AccessLine {
        span,
        method,
        path,
        route: logs::route_name(route, response.headers()),
        status: response.status().as_u16(),
        continuation: response
            .headers()
            .get(responses::X_WSBRIDGE_CONTINUATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        socket: response.extensions().get::<SocketUse>().copied(),
        owner: response
            .extensions()
            .get::<crate::cluster::Owner>()
            .map(|owner| owner.0.clone()),
        started,
        first_byte,
        bytes: 0,
    };
    response.map(|body| logs::with_access_line(body, line))
}

/// `GET /v1/responses`: a WebSocket upgrade is relayed (`relay::upgrade`); anything else
/// passes through.
async fn responses_get(state: State<Arc<App>>, request: Request) -> Response {
    if relay::wants_websocket(request.headers()) {
        return relay::upgrade(state.0, request).await;
    }
    passthrough::handle(state, request).await
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

/// Ready when a pooled socket is idle, else when the first hop (the upstream, or the proxy
/// that reaches it) answers a TCP connect.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let [idle, busy, _] = app.engine.census();
    let ready = idle > 0 || upstream_reachable(&app.config.upstream.base_url, &app.route).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "upstream_unreachable" },
        "idle_sockets": idle,
        "busy_sockets": busy,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A TCP connect to the first hop: the upstream, or the proxy that reaches it.
async fn upstream_reachable(base: &BaseUrl, route: &crate::net::Route) -> bool {
    let (host, port) = match route {
        crate::net::Route::Direct => (base.host(), base.port()),
        crate::net::Route::Tunnel(proxy) => (proxy.host.as_str(), proxy.port),
    };
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app
        .metrics
        .render(app.engine.census(), app.engine.credentials());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    let _ = headers;
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Invalid URL ({uri}): wsbridge serves the OpenAI API under /v1."),
    )
    .into_response()
}
