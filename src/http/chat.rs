//! `POST /v1/chat/completions`: the Chat Completions front-end over the turn engine
//! (docs/architecture.md, "Chat Completions"). A request whose every field has a faithful
//! Responses equivalent becomes one turn, driven exactly like `http::responses` drives one;
//! its events go back as `chat.completion.chunk` SSE (`stream: true`) or one `chat.completion`.
//! Anything else goes to the upstream's `/v1/chat/completions` as it came (pass-through).
//!
//! As for `/v1/responses`, status and headers wait for the turn's first event, so a failure
//! before it is a real HTTP status with OpenAI's error body; after it, a stream ends with
//! `data: {"error":{…}}` and no `[DONE]`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::App;
use super::passthrough;
use super::responses::{SseSource, X_WSBRIDGE_CONTINUATION, broken_response, sse_response};
use crate::auth::Credential;
use crate::chat::stream::{Encoder, End};
use crate::chat::{self, Bridged, Verdict, completion};
use crate::cluster::{Forwarded, Inbound};
use crate::config::ChatMode;
use crate::engine::{Break, BridgeError, Next, Turn};
use crate::outcome::{ChatFinish, ChatPassthrough, ChatRoute};
use crate::protocol::{OpenAiError, request, sse};

/// Which path a chat request took: `chat-bridged` or `chat-passthrough`.
pub const X_WSBRIDGE_ROUTE: HeaderName = HeaderName::from_static("x-wsbridge-route");

/// The handler. Its answer gets the request's `x-request-id` from the `observe` middleware.
pub async fn create(
    State(app): State<Arc<App>>,
    forwarded: Option<Extension<Forwarded>>,
    uri: Uri,
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
    let read = match request::read(body, limit) {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    let request = Request {
        app: &app,
        uri: &uri,
        headers,
        credential: &credential,
        bytes: read.bytes,
        forwarded: forwarded.map(|mark| mark.0),
    };
    if app.config.chat.mode == ChatMode::Passthrough {
        return request.pass_through(ChatPassthrough::Mode).await;
    }
    match chat::translate(&read.fields) {
        Err(error) => error.into_response(),
        Ok(Verdict::Passthrough(why)) => request.pass_through(why).await,
        Ok(Verdict::Bridge(bridged)) => request.bridge(bridged).await,
    }
}

/// One chat request, read.
struct Request<'a> {
    app: &'a App,
    uri: &'a Uri,
    headers: HeaderMap,
    credential: &'a Credential,
    bytes: Bytes,
    /// A peer forwarded it (docs/architecture.md, "Cluster").
    forwarded: Option<Forwarded>,
}

impl Request<'_> {
    /// The original body, byte for byte, to the upstream's `/v1/chat/completions`.
    async fn pass_through(self, why: ChatPassthrough) -> Response {
        tracing::debug!(reason = ?why, "chat request passed through");
        self.app.metrics.chat_passthrough(why);
        let mut response = passthrough::forward(
            self.app,
            Method::POST,
            self.uri,
            self.headers,
            self.credential,
            Body::from(self.bytes),
        )
        .await;
        with_route(self.app, &mut response, ChatRoute::Passthrough);
        response
    }

    /// One turn on the engine, answered as chunks or as one `chat.completion`.
    async fn bridge(self, bridged: Bridged) -> Response {
        let app = self.app;
        let inbound = Inbound {
            credential: self.credential,
            uri: self.uri,
            headers: &self.headers,
            fields: &bridged.body,
            body: &self.bytes,
            stream: bridged.stream,
        };
        let local = match super::cluster::owner_route(app, inbound, self.forwarded.clone()).await {
            Ok(answer) => return answer,
            Err(local) => local,
        };
        let plan = app.engine.chat_plan(&bridged.body);
        let turn = match app
            .engine
            .start(self.credential, &plan, self.bytes.len())
            .await
        {
            Ok(turn) => turn,
            Err(BridgeError::Fallback(_)) => {
                return self.pass_through(ChatPassthrough::Fallback).await;
            }
            Err(error) => {
                app.metrics.chat_finish(ChatFinish::Failed);
                let mut response = error.into_response();
                with_route(app, &mut response, ChatRoute::Bridged);
                return response;
            }
        };
        let continuation = HeaderValue::from_static(turn.route().header_value());
        let socket = super::SocketUse {
            reused: turn.socket_reused(),
            opened: turn.socket_opened(),
        };
        let id = chat::new_id();
        let model = bridged
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut response = if bridged.stream {
            let encoder = Encoder::new(id, model, bridged.include_usage, bridged.legacy);
            stream_chunks(app, turn, encoder)
        } else {
            collect_completion(app, turn, &id, bridged.legacy).await
        };
        with_route(app, &mut response, ChatRoute::Bridged);
        response
            .headers_mut()
            .insert(X_WSBRIDGE_CONTINUATION, continuation);
        response.extensions_mut().insert(socket);
        if let Some(local) = local {
            local.finish(&mut response, None);
        }
        response
    }
}

/// Sets `x-wsbridge-route` and counts the route.
fn with_route(app: &App, response: &mut Response, route: ChatRoute) {
    app.metrics.chat_route(route);
    response.headers_mut().insert(
        X_WSBRIDGE_ROUTE,
        HeaderValue::from_static(route.header_value()),
    );
}

/// `stream: true`: data-only SSE, each upstream event's chunks written as the event arrives.
fn stream_chunks(app: &App, turn: Turn, encoder: Encoder) -> Response {
    let relay = Relay {
        turn,
        encoder,
        keepalive: app.config.server.sse_keepalive,
        finished: false,
        metrics: app.metrics.clone(),
    };
    sse_response(relay)
}

/// The chunk encoder of one turn; dropping it (the client went away) drops the turn, which
/// closes the upstream socket and so stops generation.
struct Relay {
    turn: Turn,
    encoder: Encoder,
    keepalive: Option<Duration>,
    finished: bool,
    metrics: Arc<crate::metrics::Metrics>,
}

impl SseSource for Relay {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let step = match self.turn.next(self.keepalive).await {
                Next::Event(event) => {
                    if !Encoder::reads(event.kind()) {
                        continue;
                    }
                    let value: Value = serde_json::from_str(event.text()).unwrap_or_default();
                    self.encoder.event(event.kind(), &value)
                }
                Next::Quiet => return Some(Bytes::from_static(sse::KEEPALIVE_COMMENT)),
                Next::Broken(cause) => self.encoder.failed(broken(&cause)),
                Next::Done => return None,
            };
            if step.chunks.is_empty() && step.end.is_none() {
                continue;
            }
            let mut out = String::new();
            for chunk in &step.chunks {
                out.push_str("data: ");
                out.push_str(&chunk.to_string());
                out.push_str("\n\n");
            }
            match step.end {
                Some(End::Done(finish)) => {
                    out.push_str("data: [DONE]\n\n");
                    self.finished = true;
                    self.metrics.chat_finish(finish);
                }
                Some(End::Failed(_)) => {
                    self.finished = true;
                    self.metrics.chat_finish(ChatFinish::Failed);
                }
                None => {}
            }
            return Some(Bytes::from(out));
        }
    }
}

/// The error a stream reports when its turn broke after it started.
fn broken(cause: &Break) -> OpenAiError {
    OpenAiError::new(StatusCode::BAD_GATEWAY, "server_error", cause.message())
        .with_code(cause.code())
}

/// `stream: false`: reads the turn to its end and answers with one `chat.completion`.
async fn collect_completion(app: &App, mut turn: Turn, id: &str, legacy: bool) -> Response {
    let (response, finish) = loop {
        let event = match turn.next(None).await {
            Next::Event(event) => event,
            Next::Quiet => continue,
            Next::Broken(cause) => break (broken_response(&cause), ChatFinish::Failed),
            Next::Done => break (broken_response(&Break::Closed), ChatFinish::Failed),
        };
        let kind = event.kind();
        if !matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        ) {
            continue;
        }
        let value: Value = serde_json::from_str(event.text()).unwrap_or_default();
        break match kind {
            "response.failed" => (
                OpenAiError::from_failed_response(&value).into_response(),
                ChatFinish::Failed,
            ),
            "error" => (
                OpenAiError::from_upstream_event(&value).into_response(),
                ChatFinish::Failed,
            ),
            _ if !value["response"].is_object() => (
                OpenAiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "The upstream's final event had no response object.",
                )
                .into_response(),
                ChatFinish::Failed,
            ),
            _ => {
                let response = &value["response"];
                let body = completion::completion(id, response, legacy);
                (
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        body.to_string(),
                    )
                        .into_response(),
                    completion::finish_for(response, legacy),
                )
            }
        };
    };
    app.metrics.chat_finish(finish);
    response
}
