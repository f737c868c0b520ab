//! `POST /v1/responses`: the Responses front-ends over the turn engine ([`crate::engine`]).
//! One REST request becomes one turn; its events go back as SSE (`stream: true`) or as the
//! final Response JSON (docs/architecture.md, "Data path"; docs/protocol.md, "SSE").
//!
//! Status and headers wait for the turn's first event, so a failure before it is a real HTTP
//! status with a REST error body ([`BridgeError`]). After it nothing is ever replayed: a broken
//! turn ends with a `response.failed` event (SSE) or a 5xx (JSON).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use serde_json::Value;
use serde_json::value::RawValue;

use super::App;
use super::passthrough::{self, X_ACCEL_BUFFERING};
use crate::cluster::{Forwarded, Inbound};
use crate::engine::{Break, BridgeError, Next, Turn};
use crate::protocol::{OpenAiError, request, sse};

/// The handler. Its answer gets the request's `x-request-id` from the `observe` middleware
/// (the upstream socket gives none).
pub async fn create(
    State(app): State<Arc<App>>,
    forwarded: Option<Extension<Forwarded>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(&app, forwarded.map(|mark| mark.0), &uri, headers, body).await
}

async fn respond(
    app: &App,
    forwarded: Option<Forwarded>,
    uri: &Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let credential = match app.auth.resolve(&headers) {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    let limit = || {
        format!(
            "this wsbridge accepts at most {} bytes (server.max_body_bytes)",
            app.config.server.max_body_bytes
        )
    };
    let (request, stream, body) = match request::read(body, limit) {
        Ok(read) => (read.fields, read.stream, read.bytes),
        Err(error) => return error.into_response(),
    };
    if request.contains_key("type") {
        // The REST API has no `type` parameter, and over the WebSocket it names the event.
        return OpenAiError::invalid_request("Unknown parameter: 'type'.")
            .with_param("type")
            .with_code("unknown_parameter")
            .into_response();
    }
    let inbound = Inbound {
        credential: &credential,
        uri,
        headers: &headers,
        fields: &request,
        body: &body,
        stream,
    };
    let local = match super::cluster::owner_route(app, inbound, forwarded).await {
        Ok(answer) => return answer,
        Err(local) => local,
    };
    let plan = app.engine.plan(&request);
    let turn = match app.engine.start(&credential, &plan, body.len()).await {
        Ok(turn) => turn,
        Err(BridgeError::Fallback(_)) => {
            return passthrough::forward(
                app,
                Method::POST,
                uri,
                headers,
                &credential,
                Body::from(body),
            )
            .await;
        }
        Err(error) => return error.into_response(),
    };
    let route = HeaderValue::from_static(turn.route().header_value());
    let response_id = local
        .as_ref()
        .filter(|local| local.wants_response_id())
        .and_then(|_| turn.response_id());
    // For the access line: whether this turn ran on a socket that had carried one before.
    let socket = super::SocketUse {
        reused: turn.socket_reused(),
        opened: turn.socket_opened(),
    };
    let mut response = if stream {
        stream_events(app, turn)
    } else {
        collect_response(turn).await
    };
    response
        .headers_mut()
        .insert(X_WSBRIDGE_CONTINUATION, route);
    response.extensions_mut().insert(socket);
    if let Some(local) = local {
        local.finish(&mut response, response_id.as_deref());
    }
    response
}

/// Says how a bridged turn went upstream: `continued`, `fresh`, `explicit` or `recovered`.
pub const X_WSBRIDGE_CONTINUATION: header::HeaderName =
    header::HeaderName::from_static("x-wsbridge-continuation");

/// `stream: true`: SSE, one event per upstream frame, flushed as it comes.
fn stream_events(app: &App, turn: Turn) -> Response {
    let relay = Relay {
        turn,
        keepalive: app.config.server.sse_keepalive,
        finished: false,
    };
    sse_response(relay)
}

/// An SSE encoder over a turn: the next bytes to write, `None` at the end.
///
/// `next_chunk` must be cancel-safe (dropped while pending, it loses nothing): the body polls
/// it once more without waiting to gather chunks that are already there.
pub(super) trait SseSource: Send + 'static {
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
}

/// The streaming answer of an SSE front-end: its headers, and a body that writes each chunk
/// as `source` yields it. The body is polled after the handler returned; the turn logs in
/// the request's span.
pub(super) fn sse_response(source: impl SseSource) -> Response {
    let body = futures_util::stream::unfold(source, move |mut source| async move {
        let chunk = source.next_chunk().await?;
        Some((
            Ok::<_, std::convert::Infallible>(ready_after(chunk, &mut source)),
            source,
        ))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// `first` and every chunk `source` has ready without waiting, as one body frame: events that
/// arrived together leave together (one HTTP chunk, not one per event), and an event that is
/// alone is never held back (docs/architecture.md, "Data path").
fn ready_after(first: Bytes, source: &mut impl SseSource) -> Bytes {
    use futures_util::FutureExt;
    let mut batch: Option<BytesMut> = None;
    // Bounded, so a fast upstream cannot grow one frame without limit.
    while batch.as_ref().map_or(first.len(), BytesMut::len) < READY_BATCH_BYTES {
        let Some(Some(chunk)) = source.next_chunk().now_or_never() else {
            break;
        };
        batch
            .get_or_insert_with(|| BytesMut::from(&first[..]))
            .extend_from_slice(&chunk);
    }
    batch.map_or(first, BytesMut::freeze)
}

/// How many bytes of ready chunks [`ready_after`] gathers into one body frame at most.
const READY_BATCH_BYTES: usize = 64 << 10;

/// The SSE encoder of one turn; dropping it (the client went away) drops the turn, which
/// closes the upstream socket and so stops generation.
struct Relay {
    turn: Turn,
    keepalive: Option<Duration>,
    finished: bool,
}

impl SseSource for Relay {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        match self.turn.next(self.keepalive).await {
            Next::Event(event) => {
                self.finished = event.is_terminal();
                Some(sse::frame(event.kind(), event.text()))
            }
            Next::Quiet => Some(Bytes::from_static(sse::KEEPALIVE_COMMENT)),
            Next::Broken(cause) => {
                self.finished = true;
                Some(self.failure(&cause))
            }
            Next::Done => None,
        }
    }
}

impl Relay {
    /// The event that ends a broken stream: `response.failed` numbered after the last event
    /// relayed (or a flat `error` event when no `response.created` was relayed).
    fn failure(&self, cause: &Break) -> Bytes {
        let error = serde_json::json!({ "code": cause.code(), "message": cause.message() });
        let sequence = self.turn.next_sequence();
        match self.turn.created() {
            Some(created) => {
                let mut response = created;
                if let Some(object) = response.as_object_mut() {
                    object.insert("status".into(), Value::from("failed"));
                    object.insert("error".into(), error);
                }
                let event = serde_json::json!({
                    "type": "response.failed",
                    "sequence_number": sequence,
                    "response": response,
                });
                sse::frame("response.failed", &event.to_string())
            }
            None => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": cause.code(),
                    "message": cause.message(),
                    "param": null,
                    "sequence_number": sequence,
                });
                sse::frame("error", &event.to_string())
            }
        }
    }
}

/// `stream: false`: reads the turn to its end and answers with the final Response object.
async fn collect_response(mut turn: Turn) -> Response {
    loop {
        let event = match turn.next(None).await {
            Next::Event(event) => event,
            Next::Quiet => continue,
            Next::Broken(cause) => return broken_response(&cause),
            Next::Done => return broken_response(&Break::Closed),
        };
        match event.kind() {
            "response.completed" | "response.incomplete" => {
                #[derive(serde::Deserialize)]
                struct Terminal<'a> {
                    #[serde(borrow)]
                    response: &'a RawValue,
                }
                return match serde_json::from_str::<Terminal>(event.text()) {
                    Ok(terminal) => (
                        [(header::CONTENT_TYPE, "application/json")],
                        terminal.response.get().to_owned(),
                    )
                        .into_response(),
                    Err(_) => OpenAiError::new(
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        "The upstream's final event had no response object.",
                    )
                    .into_response(),
                };
            }
            "response.failed" => {
                let failed: Value = serde_json::from_str(event.text()).unwrap_or_default();
                return OpenAiError::from_failed_response(&failed).into_response();
            }
            "error" => {
                let error: Value = serde_json::from_str(event.text()).unwrap_or_default();
                return OpenAiError::from_upstream_event(&error).into_response();
            }
            _ => {}
        }
    }
}

/// The answer to a `stream: false` request whose turn broke before its end.
pub(super) fn broken_response(cause: &Break) -> Response {
    let (status, code) = match cause {
        Break::Closed => (StatusCode::BAD_GATEWAY, "upstream_closed"),
        Break::Silent => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        Break::Protocol(_) => (StatusCode::BAD_GATEWAY, "upstream_protocol_error"),
        Break::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, cause.code()),
    };
    OpenAiError::new(status, "server_error", cause.message())
        .with_code(code)
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::VecDeque;

    use futures_util::FutureExt;

    use super::*;

    /// Chunks already there (`Some`), then nothing ready yet (`None`): pending forever.
    struct Scripted(VecDeque<Option<&'static str>>);

    impl SseSource for Scripted {
        async fn next_chunk(&mut self) -> Option<Bytes> {
            match self.0.pop_front() {
                Some(Some(chunk)) => Some(Bytes::from_static(chunk.as_bytes())),
                Some(None) => std::future::pending().await,
                None => None,
            }
        }
    }

    #[test]
    fn chunks_already_there_leave_in_one_frame_and_a_lone_one_is_not_held_back() {
        let mut source = Scripted([Some("b"), Some("c"), None, Some("d")].into());
        assert_eq!(ready_after(Bytes::from_static(b"a"), &mut source), "abc");
        assert_eq!(source.0.len(), 1, "stopped at the first chunk not ready");
        // "d" comes after a wait: the next frame starts with it and ends with the stream.
        let d = source.next_chunk().now_or_never().flatten().unwrap();
        assert_eq!(ready_after(d, &mut source), "d");
        let mut ended = Scripted(VecDeque::new());
        assert_eq!(ready_after(Bytes::from_static(b"z"), &mut ended), "z");
    }
}
