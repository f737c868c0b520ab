//! Why a turn could not be started: one error for every front-end, turned into OpenAI's error
//! answer in exactly one place ([`BridgeError::into_response`]).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::outcome::FallbackReason;
use crate::protocol::OpenAiError;
use crate::protocol::event::InvalidEvent;
use crate::upstream::socket::ConnectError;

/// The code of the error a request gets when wsbridge is shutting down.
pub const SHUTTING_DOWN: &str = "server_shutting_down";

/// The upstream refused a new `stream_id` lane on a socket (`websocket_stream_limit_reached`):
/// another socket takes it (docs/architecture.md, "Lanes").
pub fn is_stream_limit(error: &OpenAiError) -> bool {
    error.code.as_deref() == Some("websocket_stream_limit_reached")
}

/// A turn that did not start (nothing reached the client).
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Not for the WebSocket: the front-end sends the request over REST instead.
    #[error("the request goes over REST ({0:?})")]
    Fallback(FallbackReason),
    /// Every socket of the credential stayed busy for `pool.checkout_timeout`.
    #[error("all upstream sockets of this key are busy")]
    Busy { retry_after: Duration },
    /// wsbridge is shutting down (the pool closed, or the shutdown grace ran out).
    #[error("wsbridge is shutting down")]
    ShuttingDown,
    /// The upstream refused the upgrade with its own answer (401 bad key, 429, …).
    #[error("the upstream refused the WebSocket upgrade with {status}")]
    Refused {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// Connecting failed (DNS, TCP, TLS, handshake) or timed out.
    #[error("wsbridge could not open an upstream WebSocket ({0})")]
    Unreachable(ConnectError),
    /// The socket closed before the response started.
    #[error("the upstream closed the WebSocket before the response started")]
    ClosedBeforeStart,
    /// The upstream sent a frame that cannot be relayed before the response started.
    #[error("the upstream broke the protocol before the response started: {0}")]
    Protocol(InvalidEvent),
    /// No first event within `upstream.first_event_timeout`.
    #[error("the upstream did not start the response within {} ms", .0.as_millis())]
    FirstEventTimeout(Duration),
    /// A request-scoped upstream `error` event, with the headers its REST twin would carry.
    #[error("{error}")]
    Upstream {
        error: OpenAiError,
        headers: HeaderMap,
    },
}

impl BridgeError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fallback(_) => "fallback",
            Self::Busy { .. } => "pool_exhausted",
            Self::ShuttingDown => "shutting_down",
            Self::Refused { .. } => "upgrade_refused",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::ClosedBeforeStart => "upstream_closed",
            Self::Protocol(_) => "upstream_protocol_error",
            Self::FirstEventTimeout(_) => "upstream_timeout",
            Self::Upstream { .. } => "upstream_error",
        }
    }

    /// True when another socket may succeed where this one failed: nothing reached the
    /// upstream's model, or the upstream asked for a new connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(ConnectError::ProxyRefused(_) | ConnectError::Certificate(_)) => {
                false
            }
            Self::Unreachable(_) | Self::ClosedBeforeStart | Self::Protocol(_) => true,
            Self::Refused { status, .. } => status.is_server_error(),
            Self::Upstream { error, .. } => {
                error.meaning() == crate::protocol::error::Meaning::ConnectionLimit
                    || is_stream_limit(error)
            }
            _ => false,
        }
    }

    /// The OpenAI-shaped error body of this failure (also what a WebSocket or Chat front-end
    /// would report).
    pub fn to_openai(&self) -> OpenAiError {
        match self {
            Self::Fallback(_) => OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The request was not sent over REST as it should have been.",
            ),
            Self::Busy { .. } => OpenAiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "All upstream connections for this API key are busy (pool.max_sockets). \
                 Please retry shortly.",
            )
            .with_code("wsbridge_pool_exhausted"),
            Self::ShuttingDown => OpenAiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "wsbridge is shutting down and its shutdown grace period \
                 (server.shutdown_grace_secs) ran out before this response finished.",
            )
            .with_code(SHUTTING_DOWN),
            Self::Refused { status, .. } => OpenAiError::for_status(*status, "upstream_refused"),
            Self::Unreachable(error) => OpenAiError::new(
                if matches!(error, ConnectError::TimedOut) {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "server_error",
                format!("wsbridge could not open an upstream WebSocket ({error})."),
            )
            .with_code("upstream_unreachable"),
            Self::ClosedBeforeStart => OpenAiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "The upstream closed the WebSocket before the response started.",
            )
            .with_code("upstream_closed"),
            Self::Protocol(invalid) => OpenAiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("The upstream broke the protocol before the response started: {invalid}."),
            )
            .with_code("upstream_protocol_error"),
            Self::FirstEventTimeout(timeout) => OpenAiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!(
                    "The upstream did not start the response within {} ms \
                     (upstream.first_event_timeout_ms).",
                    timeout.as_millis()
                ),
            )
            .with_code("upstream_timeout"),
            Self::Upstream { error, .. } => error.clone(),
        }
    }
}

impl IntoResponse for BridgeError {
    fn into_response(self) -> Response {
        match self {
            // The upstream's own answer, passed on as it was; a body that is not an OpenAI
            // error is wrapped in one.
            Self::Refused {
                status,
                headers,
                body,
            } => {
                let is_error_body = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .is_some_and(|value| value.get("error").is_some_and(|e| e.is_object()));
                let mut response = if is_error_body {
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                } else {
                    OpenAiError::for_status(status, "upstream_refused").into_response()
                };
                for name in [
                    header::RETRY_AFTER,
                    header::WWW_AUTHENTICATE,
                    header::HeaderName::from_static("retry-after-ms"),
                    header::HeaderName::from_static("x-should-retry"),
                ] {
                    if let Some(value) = headers.get(&name) {
                        response.headers_mut().insert(name, value.clone());
                    }
                }
                response
            }
            Self::Upstream { error, headers } => {
                let mut response = error.into_response();
                response.headers_mut().extend(headers);
                response
            }
            Self::Busy { retry_after } => {
                let mut response = self.to_openai().into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                response
            }
            other => other.to_openai().into_response(),
        }
    }
}
