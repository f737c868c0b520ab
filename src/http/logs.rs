//! What the proxy logs about itself and its requests: the start-up line (what is in force),
//! and the access line, one per request, written when its response body has been sent (or
//! dropped), in the request's span.

use std::time::Duration;

use tokio::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::header;

use super::Proxy;
use crate::config::BaseUrl;
use crate::metrics::Route;
use crate::net::{self, ProxySetting};

/// The start-up line: where it listens and what is in force (upstream without secrets, auth
/// mode, pool limits, the upstream profile and what it derived, continuation policy, chat
/// mode, where the configuration came from).
pub(super) fn log_started(proxy: &Proxy) {
    let config = &proxy.app.config;
    let upstream = match proxy.simulator() {
        Some(simulator) => format!("in-process simulator at {}", simulator.base_url()),
        None => config.upstream.base_url.to_string(),
    };
    let auth = match &config.auth {
        crate::config::AuthConfig::Passthrough => "passthrough (each client's key)".to_owned(),
        crate::config::AuthConfig::Inject { client_tokens, .. } => {
            format!("inject ({} client tokens)", client_tokens.len())
        }
    };
    let continuation = &config.continuation;
    let continuation_policy = if continuation.enabled {
        format!(
            "on (reasoning {}, stored_on_any_socket {})",
            match continuation.reasoning {
                crate::config::ReasoningPolicy::Lenient => "lenient",
                crate::config::ReasoningPolicy::Strict => "strict",
            },
            continuation.stored_on_any_socket
        )
    } else {
        "off".to_owned()
    };
    let chat = match config.chat.mode {
        crate::config::ChatMode::Bridge => "bridge",
        crate::config::ChatMode::Passthrough => "passthrough",
    };
    // `SELF of N peers`, `SELF, peers from NAME:PORT`, or `off`.
    let cluster = config.cluster.as_ref().map_or_else(
        || "off".to_owned(),
        |cluster| match &cluster.dns {
            Some(dns) => format!("{}, peers from {}:{}", cluster.self_url, dns.host, dns.port),
            None => format!("{} of {} peers", cluster.self_url, cluster.peers.len()),
        },
    );
    tracing::info!(
        upstream = %upstream,
        auth = %auth,
        pool.min_idle = config.pool.min_idle,
        pool.max_sockets = config.pool.max_sockets,
        upstream.profile = %config.limits_summary(),
        upstream.auth_header = %config.upstream.auth_header,
        continuation = %continuation_policy,
        chat = %chat,
        cluster = %cluster,
        config = %config.source,
        "proxy listening on http://{} (OpenAI base URL {})",
        proxy.addr(),
        proxy.base_url()
    );
}

/// How upstream connections are made, once at start: through which proxy (credentials
/// redacted) and from which setting, or directly, and which hosts `NO_PROXY` exempts.
pub(super) fn log_route(setting: &ProxySetting, route: &net::Route, base: &BaseUrl) {
    let candidate = setting.candidate(base.is_https());
    let from = candidate.map_or("", |source| source.from);
    let (no_proxy_from, no_proxy) = setting
        .no_proxy()
        .map_or(("", ""), |(from, list)| (from, list.text.as_str()));
    match route {
        net::Route::Tunnel(proxy) => {
            let bypass = if no_proxy.is_empty() {
                "no host bypasses it".to_owned()
            } else {
                format!("{no_proxy_from} bypasses it for: {no_proxy}")
            };
            tracing::info!(
                proxy = %proxy,
                from,
                no_proxy,
                "upstream connections go through the HTTP proxy {proxy} from {from} \
                 (CONNECT tunnels); {bypass}"
            );
        }
        net::Route::Direct => match candidate {
            Some(source) => tracing::info!(
                proxy = %source.server,
                from,
                no_proxy,
                "the upstream {} is in {no_proxy_from}: connecting directly, not through the \
                 proxy {} from {from}",
                base.host(),
                source.server,
            ),
            None => tracing::info!("upstream connections are direct (no outbound proxy)"),
        },
    }
}

/// The id a request is known by: in its span, its `x-request-id` header and its access line.
/// Set by `observe` as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Set on a bridged answer by `responses`: the socket its turn ran on.
#[derive(Debug, Clone, Copy)]
pub struct SocketUse {
    /// It had carried a turn before this one.
    pub reused: bool,
    pub opened: Instant,
}

pub(super) const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The access line's `route`: the metrics route, and for a chat request the path it took
/// (`chat-bridged`, `chat-passthrough`; `chat` when it took none, e.g. a 400).
pub(super) fn route_name(route: Route, headers: &axum::http::HeaderMap) -> &'static str {
    match route {
        Route::Responses => "responses",
        Route::Relay => "relay",
        Route::Passthrough => "passthrough",
        Route::Operations => "operations",
        Route::Chat => match headers
            .get(super::chat::X_WSBRIDGE_ROUTE)
            .map(axum::http::HeaderValue::as_bytes)
        {
            Some(b"chat-bridged") => "chat-bridged",
            Some(b"chat-passthrough") => "chat-passthrough",
            _ => "chat",
        },
    }
}

/// What the access line says about one request, filled in as its body is sent.
#[derive(Debug)]
pub(super) struct AccessLine {
    pub(super) span: tracing::Span,
    pub(super) method: axum::http::Method,
    pub(super) path: String,
    pub(super) route: &'static str,
    pub(super) status: u16,
    pub(super) continuation: Option<String>,
    pub(super) socket: Option<SocketUse>,
    /// The replica that served a bridged request, in a cluster (docs/architecture.md,
    /// "Cluster").
    pub(super) owner: Option<std::sync::Arc<str>>,
    pub(super) started: Instant,
    pub(super) first_byte: Duration,
    pub(super) bytes: u64,
}

impl AccessLine {
    /// Writes the line, in the request's span (so with its `request_id`). `complete` is false
    /// when the body was dropped before its end (the client went away).
    fn write(self, complete: bool) {
        let _entered = self.span.enter();
        // `reused`: it carried a turn before; `warm`: open before this request (pre-warmed),
        // first turn; `opened`: this request waited for it to connect.
        let socket = match self.socket {
            Some(SocketUse { reused: true, .. }) => "reused",
            Some(SocketUse { opened, .. }) if opened < self.started => "warm",
            Some(_) => "opened",
            None => "-",
        };
        tracing::info!(
            target: "wsbridge::access",
            route = %self.route,
            status = self.status,
            continuation = %self.continuation.as_deref().unwrap_or("-"),
            socket = %socket,
            owner = %self.owner.as_deref().unwrap_or("-"),
            ttfb_ms = self.first_byte.as_millis() as u64,
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes = self.bytes,
            complete,
            "{} {}",
            self.method,
            self.path,
        );
    }
}

/// `body`, writing `line` when it has been sent.
pub(super) fn with_access_line(body: Body, line: AccessLine) -> Body {
    Body::new(AccessBody {
        inner: body,
        line: Some(line),
    })
}

/// A response body that counts what it sends and writes the access line at its end.
#[derive(Debug)]
struct AccessBody {
    inner: Body,
    line: Option<AccessLine>,
}

impl hyper::body::Body for AccessBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(line)) = (frame.data_ref(), self.line.as_mut()) {
                    line.bytes += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(line) = self.line.take() {
                    line.write(true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            // A body whose end hyper saw through `is_end_stream` (never polled to `None`) ends
            // here too; only a body with more to send was cut short.
            let complete = hyper::body::Body::is_end_stream(&self.inner);
            line.write(complete);
        }
    }
}
