//! `POST /v1/responses`: one REST request becomes one `response.create` turn on a leased
//! upstream WebSocket, and the turn's events go back as SSE (`stream: true`) or as the final
//! Response JSON (DESIGN.md §2, PROTOCOL.md §4–§5).
//!
//! Status and headers wait for the first upstream event, so a request-scoped upstream `error`
//! becomes a real HTTP status with a REST error body. Until then a failure is retried on another
//! socket (a closed socket, a failed connect, `websocket_connection_limit_reached`); after it,
//! nothing is ever replayed: a broken turn ends with a `response.failed` event instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use super::App;
use super::passthrough::{self, X_ACCEL_BUFFERING};
use crate::auth::Credential;
use crate::continuation::{self, Digester, Frame, Head};
use crate::metrics::{CloseReason, Continuation, FallbackReason, RecoveryCause};
use crate::protocol::{OpenAiError, sse};
use crate::upstream::pool::{Affinity, Checkout, CheckoutError, Lease};
use crate::upstream::socket::ConnectError;

/// The handler. Its answer gets the request's `x-request-id` from the `observe` middleware
/// (the upstream socket gives none).
pub async fn create(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(&app, &uri, headers, body).await
}

async fn respond(
    app: &App,
    uri: &Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let credential = match app.auth.resolve(&headers) {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!(
                    "Request body too large: this wsbridge accepts at most {} bytes \
                     (server.max_body_bytes).",
                    app.config.server.max_body_bytes
                ),
            )
            .into_response();
        }
        Err(rejection) => {
            return OpenAiError::invalid_request(rejection.body_text()).into_response();
        }
    };
    let request: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return OpenAiError::invalid_request("The request body must be a JSON object.")
                .into_response();
        }
        Err(_) => return OpenAiError::unparseable_json().into_response(),
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => {
            return OpenAiError::invalid_request("Invalid type for 'stream': expected a boolean.")
                .with_param("stream")
                .with_code("invalid_type")
                .into_response();
        }
    };
    let rest = |reason: FallbackReason| {
        app.metrics.fallback(reason);
        passthrough::forward(
            app,
            Method::POST,
            uri,
            headers.clone(),
            &credential,
            Body::from(body.clone()),
        )
    };
    if request.get("background") == Some(&Value::Bool(true)) {
        return rest(FallbackReason::Background).await;
    }
    let plan = Plan::new(app, &request);
    let full_frame = plan.frame(None);
    // Too large in full can still fit as a continuation; without a chance of one, go now.
    if full_frame.len() > app.config.upstream.max_frame_bytes && plan.prefixes.is_empty() {
        return rest(FallbackReason::FrameTooLarge).await;
    }
    if app.pool.rest_only(&credential) {
        return rest(FallbackReason::UpgradeRefused).await;
    }
    let mut started = match start_turn(app, &credential, &plan, full_frame, body.len()).await {
        Ok(started) => started,
        Err(Failure::Answer(response)) => return *response,
        Err(Failure::FrameTooLarge) => return rest(FallbackReason::FrameTooLarge).await,
        Err(Failure::UpgradeRefused) => {
            app.pool
                .mark_rest_only(&credential, app.config.upstream.rest_fallback_cooldown);
            tracing::warn!(credential = ?credential, "upstream refused the WebSocket upgrade; using REST for this credential for a while");
            return rest(FallbackReason::UpgradeRefused).await;
        }
    };
    app.metrics.continuation(started.route);
    let route = HeaderValue::from_static(started.route.header_value());
    // For the access line: whether this turn ran on a socket that had carried one before.
    let socket = super::SocketUse {
        reused: started.lease.socket().turns() > 1,
        opened: started.lease.socket().opened(),
    };
    let mut response = if stream {
        stream_events(app, started)
    } else {
        collect_response(app, started).await
    };
    response
        .headers_mut()
        .insert(X_WSBRIDGE_CONTINUATION, route);
    response.extensions_mut().insert(socket);
    response
}

/// Says how a bridged turn went upstream: `continued`, `fresh`, `explicit` or `recovered`.
pub const X_WSBRIDGE_CONTINUATION: header::HeaderName =
    header::HeaderName::from_static("x-wsbridge-continuation");

impl Continuation {
    fn header_value(self) -> &'static str {
        match self {
            Continuation::Continued => "continued",
            Continuation::Fresh => "fresh",
            Continuation::Explicit => "explicit",
            Continuation::Recovered => "recovered",
        }
    }
}

/// What a request needs to find and continue a head, computed once per request.
struct Plan<'a> {
    request: &'a Map<String, Value>,
    items: std::borrow::Cow<'a, [Value]>,
    /// Digest after each input item (empty unless wsbridge may rewrite the request).
    prefixes: Vec<u128>,
    model: &'a str,
    /// The client's own `previous_response_id`.
    explicit: Option<&'a str>,
    digester: &'a Digester,
    enabled: bool,
    stored_on_any_socket: bool,
}

impl<'a> Plan<'a> {
    fn new(app: &'a App, request: &'a Map<String, Value>) -> Self {
        let explicit = request.get("previous_response_id").and_then(Value::as_str);
        // Requests that chain themselves (or use `conversation`) are never rewritten.
        let rewritable = app.config.continuation.enabled
            && explicit.is_none()
            && request.get("conversation").is_none_or(Value::is_null);
        let items = continuation::input_items(request);
        let prefixes = if rewritable {
            app.digester.prefixes(&items)
        } else {
            Vec::new()
        };
        Self {
            request,
            items,
            prefixes,
            model: request.get("model").and_then(Value::as_str).unwrap_or(""),
            explicit,
            digester: &app.digester,
            enabled: app.config.continuation.enabled,
            stored_on_any_socket: app.config.continuation.stored_on_any_socket,
        }
    }

    /// Which socket to ask for; `only_continuation` when the request fits in a frame only as
    /// a continuation.
    fn affinity(&self, only_continuation: bool) -> Affinity<'_> {
        match self.explicit {
            Some(id) if self.enabled => Affinity::Response(id),
            None if only_continuation => Affinity::Only {
                prefixes: &self.prefixes,
                model: self.model,
            },
            None if !self.prefixes.is_empty() => Affinity::Extend {
                prefixes: &self.prefixes,
                model: self.model,
            },
            _ => Affinity::None,
        }
    }

    /// The frame: the request as given, or only `items[k..]` after `previous`.
    fn frame(&self, continuation: Option<(&str, usize)>) -> String {
        Frame {
            request: self.request,
            continuation: continuation.map(|(previous, k)| (previous, &self.items[k..])),
        }
        .to_json()
    }

    /// What the socket's head will be once this turn completes (its output still to add);
    /// `parent_stored`: what it continues (if anything) is in the upstream's store.
    fn seed(&self, parent_stored: bool) -> HeadSeed {
        HeadSeed {
            enabled: self.enabled,
            digester: self.digester.clone(),
            input: self
                .prefixes
                .last()
                .copied()
                .filter(|_| !self.prefixes.is_empty()),
            model: self.model.to_owned(),
            items: self.items.len(),
            // The Responses API stores a response unless the request says `store: false`; one
            // continuing a response only its socket holds cannot be loaded anywhere else.
            stored: self.stored_on_any_socket
                && parent_stored
                && self.request.get("store") != Some(&Value::Bool(false)),
        }
    }
}

/// The parts of a head known before the turn ran.
struct HeadSeed {
    /// Continuations are on (otherwise sockets keep no heads).
    enabled: bool,
    digester: Digester,
    /// Digest of the full input, when wsbridge knows the full input.
    input: Option<u128>,
    model: String,
    /// Input items.
    items: usize,
    stored: bool,
}

impl HeadSeed {
    /// The head after a `response.completed` / `response.incomplete` event.
    fn head(&self, terminal: &str) -> Option<Head> {
        if !self.enabled {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Terminal {
            response: TerminalResponse,
        }
        #[derive(serde::Deserialize)]
        struct TerminalResponse {
            id: String,
            #[serde(default)]
            output: Vec<Value>,
        }
        let terminal: Terminal = serde_json::from_str(terminal).ok()?;
        let output = &terminal.response.output;
        Some(Head {
            response_id: terminal.response.id,
            digest: self.input.map(|input| self.digester.extend(input, output)),
            model: self.model.clone(),
            items: self.items + output.len(),
            stored: self.stored,
            trailing_reasoning: self.digester.trailing_reasoning(output),
        })
    }
}

/// A turn whose first event has arrived.
struct Started {
    lease: Lease,
    first: Utf8Bytes,
    route: Continuation,
    seed: HeadSeed,
}

enum Failure {
    /// Give the client this (an error in OpenAI's shape).
    Answer(Box<Response>),
    /// The upstream cannot do WebSockets: go over REST.
    UpgradeRefused,
    /// The frame this turn needs is over `upstream.max_frame_bytes`: go over REST.
    FrameTooLarge,
}

/// Leases a socket, sends the frame and waits for the first event, retrying while nothing has
/// reached the client (bounded by `upstream.max_attempts`). A continuation the upstream cannot
/// resolve (`previous_response_not_found`) is resent in full on the same socket.
async fn start_turn(
    app: &App,
    credential: &Credential,
    plan: &Plan<'_>,
    full_frame: String,
    body_len: usize,
) -> Result<Started, Failure> {
    let config = &app.config.upstream;
    let full_frame = Utf8Bytes::from(full_frame);
    let mut bridged = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= config.max_attempts;
        let retry = |cause: RecoveryCause, error: OpenAiError| {
            if last {
                Err(Failure::Answer(Box::new(error.into_response())))
            } else {
                app.metrics.recovery(cause);
                tracing::info!(?cause, attempt, "retrying on another upstream socket");
                Ok(())
            }
        };
        let only_continuation = full_frame.len() > config.max_frame_bytes;
        let Checkout { mut lease, matched } = match app
            .pool
            .checkout(credential, plan.affinity(only_continuation))
            .await
        {
            Ok(checkout) => checkout,
            Err(CheckoutError::NoMatch) => return Err(Failure::FrameTooLarge),
            Err(CheckoutError::Busy { retry_after }) => {
                let mut response = OpenAiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "All upstream connections for this API key are busy (pool.max_sockets). \
                     Please retry shortly.",
                )
                .with_code("wsbridge_pool_exhausted")
                .into_response();
                if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(Failure::Answer(Box::new(response)));
            }
            Err(CheckoutError::ShuttingDown) => {
                return Err(Failure::Answer(Box::new(
                    OpenAiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "wsbridge is shutting down.",
                    )
                    .into_response(),
                )));
            }
            Err(CheckoutError::Connect(ConnectError::Refused {
                status,
                headers,
                body,
            })) => {
                if matches!(status.as_u16(), 404 | 405 | 426) {
                    return Err(Failure::UpgradeRefused);
                }
                if status.is_server_error() && !last {
                    retry(
                        RecoveryCause::ConnectFailed,
                        OpenAiError::for_status(status, "server_error"),
                    )?;
                    continue;
                }
                return Err(Failure::Answer(Box::new(refused(status, &headers, body))));
            }
            Err(CheckoutError::Connect(error)) => {
                tracing::warn!(%error, "connecting upstream failed");
                let unreachable = OpenAiError::new(
                    if matches!(error, ConnectError::TimedOut) {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::BAD_GATEWAY
                    },
                    "server_error",
                    format!("wsbridge could not open an upstream WebSocket ({error})."),
                )
                .with_code("upstream_unreachable");
                retry(RecoveryCause::ConnectFailed, unreachable)?;
                continue;
            }
        };
        let mut route = match (plan.explicit, &matched) {
            (Some(_), _) => Continuation::Explicit,
            (None, Some(_)) => Continuation::Continued,
            (None, None) => Continuation::Fresh,
        };
        let mut frame = match (route, &matched) {
            (Continuation::Continued, Some(matched)) => {
                let start = plan.digester.delta_start(
                    &plan.items,
                    matched.items,
                    &matched.trailing_reasoning,
                );
                Utf8Bytes::from(plan.frame(Some((&matched.previous, start))))
            }
            _ => {
                route = route.min_fresh();
                full_frame.clone()
            }
        };
        let too_large = |frame: &Utf8Bytes| frame.len() > config.max_frame_bytes;
        if too_large(&frame) {
            // Nothing was sent: the socket and its head stay as they were.
            lease.release();
            return Err(Failure::FrameTooLarge);
        }
        // The socket's head is replaced by this turn's (or dropped if it does not complete).
        lease.socket().set_head(None);
        let first = loop {
            app.metrics.frame_sent(frame.len());
            if !bridged {
                // What a full resend would have sent, counted once the request went upstream.
                app.metrics.request_bridged(body_len);
                bridged = true;
            }
            // The send and the wait for the first event share one deadline: an upstream that
            // stops reading (a full TCP window) cannot hang the request either.
            let started = async {
                let socket = lease.socket();
                socket
                    .send(frame.clone())
                    .await
                    .map_err(|_| CloseReason::ServerClosed)?;
                loop {
                    let event = socket.next_event().await?;
                    // A keep-alive before the response starts says nothing about it.
                    if sse::event_type(&event).as_deref() != Some("keepalive") {
                        return Ok(event);
                    }
                }
            };
            let first = tokio::time::timeout(config.first_event_timeout, started).await;
            match first {
                Ok(Ok(text))
                    if route == Continuation::Continued
                        && sse::event_type(&text).as_deref() == Some("error")
                        && text.contains("\"previous_response_not_found\"") =>
                {
                    // Our own rewrite missed (the upstream dropped its copy): resend in full.
                    tracing::info!("continuation not found upstream; resending the full input");
                    app.metrics
                        .recovery(RecoveryCause::PreviousResponseNotFound);
                    if let Some(matched) = &matched {
                        app.pool.forget_stored(credential, &matched.previous);
                    }
                    route = Continuation::Recovered;
                    frame = full_frame.clone();
                    if too_large(&frame) {
                        lease.release();
                        return Err(Failure::FrameTooLarge);
                    }
                }
                Ok(first) => break first,
                Err(_) => {
                    lease.close(CloseReason::TurnFailed);
                    return Err(Failure::Answer(Box::new(
                        OpenAiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "server_error",
                            format!(
                                "The upstream did not start the response within {} ms \
                                 (upstream.first_event_timeout_ms).",
                                config.first_event_timeout.as_millis()
                            ),
                        )
                        .with_code("upstream_timeout")
                        .into_response(),
                    )));
                }
            }
        };
        let first: Result<Utf8Bytes, CloseReason> = first;
        let first = match first {
            Ok(first) => first,
            Err(reason) => {
                lease.close(reason);
                let closed_early = OpenAiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "The upstream closed the WebSocket before the response started.",
                )
                .with_code("upstream_closed");
                retry(RecoveryCause::SocketClosed, closed_early)?;
                continue;
            }
        };
        if sse::event_type(&first).as_deref() != Some("error") {
            lease.refill_pool();
            return Ok(Started {
                lease,
                first,
                route,
                // A full resend (fresh or recovered) depends on nothing upstream.
                seed: plan.seed(
                    route != Continuation::Continued || matched.as_ref().is_none_or(|m| m.stored),
                ),
            });
        }
        // A request-scoped error before any output.
        let event: Value = serde_json::from_str(&first).unwrap_or_default();
        let error = upstream_error(&event);
        if error.code.as_deref() == Some("websocket_connection_limit_reached") {
            lease.close(CloseReason::LimitReached);
            retry(RecoveryCause::LimitReached, error)?;
            continue;
        }
        let nested = event.get("error").is_some_and(Value::is_object);
        if nested {
            // The socket is fine after a request-scoped error.
            lease.release();
        } else {
            lease.close(CloseReason::TurnFailed);
        }
        let mut response = error.into_response();
        copy_error_headers(&event, response.headers_mut());
        return Err(Failure::Answer(Box::new(response)));
    }
}

impl Continuation {
    /// A turn that was to continue but sends its full input is `fresh`.
    fn min_fresh(self) -> Self {
        match self {
            Continuation::Continued => Continuation::Fresh,
            other => other,
        }
    }
}

/// An upstream `error` event (nested WebSocket form or flat in-stream form) as an error.
fn upstream_error(event: &Value) -> OpenAiError {
    if let Some(error) = OpenAiError::from_ws_event(event) {
        return error;
    }
    let code = event
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("server_error");
    let mut error = OpenAiError::for_status(status_for_code(code), code);
    if let Some(message) = event.get("message").and_then(Value::as_str) {
        error.message = message.to_owned();
    }
    error.param = event
        .get("param")
        .and_then(Value::as_str)
        .map(str::to_owned);
    error
}

/// The REST status of a failure code reported inside a stream.
fn status_for_code(code: &str) -> StatusCode {
    match code {
        "rate_limit_exceeded" | "insufficient_quota" => StatusCode::TOO_MANY_REQUESTS,
        "invalid_prompt" | "invalid_request_error" => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The retry and rate-limit entries of a WebSocket error's `error.headers` (or top-level
/// `headers`) map become HTTP headers, e.g. `retry-after` on a 429; nothing else is copied.
fn copy_error_headers(event: &Value, headers: &mut HeaderMap) {
    let map = event
        .pointer("/error/headers")
        .or_else(|| event.get("headers"))
        .and_then(Value::as_object);
    for (name, value) in map.into_iter().flatten() {
        let name = name.to_ascii_lowercase();
        let allowed = matches!(
            name.as_str(),
            "retry-after" | "retry-after-ms" | "x-should-retry"
        ) || name.starts_with("x-ratelimit-");
        let Some(value) = value.as_str().filter(|_| allowed) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// The upstream's own answer to a refused upgrade (e.g. 401 bad key, 429 rate limit), passed
/// on as it was; a body that is not an OpenAI error is wrapped in one.
fn refused(status: StatusCode, upstream_headers: &HeaderMap, body: Bytes) -> Response {
    let is_error_body = serde_json::from_slice::<Value>(&body)
        .ok()
        .is_some_and(|value| value.get("error").is_some_and(Value::is_object));
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
        if let Some(value) = upstream_headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// `stream: true`: SSE, one event per upstream frame, flushed as it comes.
fn stream_events(app: &App, started: Started) -> Response {
    let relay = Relay {
        lease: Some(started.lease),
        first: Some(started.first),
        seed: started.seed,
        keepalive: app.config.server.sse_keepalive,
        idle_timeout: app.config.upstream.stream_idle_timeout,
        created: None,
        next_sequence: 0,
        silent: Duration::ZERO,
        finished: false,
    };
    // The body is polled after the handler returned: keep what it logs in the request's span.
    let span = tracing::Span::current();
    let body = futures_util::stream::unfold(relay, move |mut relay| {
        async move {
            let chunk = relay.next_chunk().await?;
            Some((Ok::<_, std::convert::Infallible>(chunk), relay))
        }
        .instrument(span.clone())
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

/// The state of one SSE relay; dropping it (the client went away) drops the lease, which
/// closes the upstream socket and so stops generation.
struct Relay {
    lease: Option<Lease>,
    first: Option<Utf8Bytes>,
    seed: HeadSeed,
    keepalive: Option<Duration>,
    idle_timeout: Duration,
    /// The `response` object of `response.created`, for a synthesised `response.failed`.
    created: Option<Value>,
    next_sequence: u64,
    /// Upstream silence so far, across keep-alive comments.
    silent: Duration,
    finished: bool,
}

impl Relay {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let text = match self.first.take() {
            Some(first) => first,
            None => match self.read().await {
                Ok(text) => text,
                Err(chunk) => return Some(chunk),
            },
        };
        let Some(kind) = sse::event_type(&text) else {
            tracing::warn!("upstream event without a type");
            return Some(self.fail(
                CloseReason::ProtocolError,
                "The upstream sent an event without a type.",
            ));
        };
        if let Some(sequence) = sequence_number(&text) {
            self.next_sequence = sequence + 1;
        }
        if kind == "response.created" && self.created.is_none() {
            self.created = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|mut event| event.get_mut("response").map(Value::take));
        }
        let chunk = sse::frame(&kind, &text);
        match &*kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.finished = true;
                if let Some(mut lease) = self.lease.take() {
                    if kind != "response.failed" {
                        lease.socket().set_head(self.seed.head(&text));
                    }
                    lease.release();
                }
            }
            "error" => {
                self.finished = true;
                if let Some(lease) = self.lease.take() {
                    lease.close(CloseReason::TurnFailed);
                }
            }
            _ => {}
        }
        Some(chunk)
    }

    /// The next upstream event, or the chunk to send instead (a keep-alive comment, or the
    /// `response.failed` that ends a broken stream).
    async fn read(&mut self) -> Result<Utf8Bytes, Bytes> {
        let silent_since = Instant::now();
        let Some(lease) = self.lease.as_mut() else {
            self.finished = true;
            return Err(Bytes::new());
        };
        let left = self.idle_timeout.saturating_sub(self.silent);
        let wait = self.keepalive.map_or(left, |every| every.min(left));
        match tokio::time::timeout(wait, lease.socket().next_event()).await {
            Ok(Ok(text)) => {
                self.silent = Duration::ZERO;
                Ok(text)
            }
            Ok(Err(reason)) => Err(self.fail(
                reason,
                "The upstream connection closed before the response finished; it was not \
                 retried because output had already been sent.",
            )),
            Err(_) if silent_since.elapsed() + self.silent >= self.idle_timeout => Err(self.fail(
                CloseReason::TurnFailed,
                "The upstream sent nothing for too long (upstream.stream_idle_timeout_secs).",
            )),
            Err(_) => {
                self.silent += silent_since.elapsed();
                Err(Bytes::from_static(sse::KEEPALIVE_COMMENT))
            }
        }
    }

    /// Ends the stream with `response.failed` (or a flat `error` event when no
    /// `response.created` was seen), closing the socket.
    fn fail(&mut self, reason: CloseReason, message: &str) -> Bytes {
        tracing::warn!(
            ?reason,
            "the upstream turn broke after output reached the client; ending the stream with \
             response.failed"
        );
        self.finished = true;
        if let Some(lease) = self.lease.take() {
            lease.close(reason);
        }
        let error = serde_json::json!({ "code": "server_error", "message": message });
        let sequence = self.next_sequence;
        match self.created.take() {
            Some(mut response) => {
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
                    "code": "server_error",
                    "message": message,
                    "param": null,
                    "sequence_number": sequence,
                });
                sse::frame("error", &event.to_string())
            }
        }
    }
}

/// Reads `"sequence_number":N` without parsing the event.
fn sequence_number(text: &str) -> Option<u64> {
    const KEY: &str = "\"sequence_number\":";
    let at = text.find(KEY)? + KEY.len();
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `stream: false`: reads the turn to its end and answers with the final Response object.
async fn collect_response(app: &App, started: Started) -> Response {
    let Started {
        mut lease,
        first,
        seed,
        ..
    } = started;
    let idle_timeout = app.config.upstream.stream_idle_timeout;
    let mut text = first;
    loop {
        let kind = sse::event_type(&text).unwrap_or_default();
        match &*kind {
            "response.completed" | "response.incomplete" => {
                lease.socket().set_head(seed.head(&text));
                lease.release();
                #[derive(serde::Deserialize)]
                struct Terminal<'a> {
                    #[serde(borrow)]
                    response: &'a RawValue,
                }
                return match serde_json::from_str::<Terminal>(&text) {
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
                lease.release();
                let event: Value = serde_json::from_str(&text).unwrap_or_default();
                let failure = &event["response"]["error"];
                let code = failure["code"].as_str().unwrap_or("server_error");
                let mut error = OpenAiError::for_status(status_for_code(code), code);
                if let Some(message) = failure["message"].as_str() {
                    error.message = message.to_owned();
                }
                return error.into_response();
            }
            "error" => {
                lease.close(CloseReason::TurnFailed);
                let event: Value = serde_json::from_str(&text).unwrap_or_default();
                return upstream_error(&event).into_response();
            }
            _ => {}
        }
        text = match tokio::time::timeout(idle_timeout, lease.socket().next_event()).await {
            Ok(Ok(text)) => text,
            Ok(Err(reason)) => {
                lease.close(reason);
                return OpenAiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "The upstream connection closed before the response finished.",
                )
                .with_code("upstream_closed")
                .into_response();
            }
            Err(_) => {
                lease.close(CloseReason::TurnFailed);
                return OpenAiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    "The upstream sent nothing for too long (upstream.stream_idle_timeout_secs).",
                )
                .with_code("upstream_timeout")
                .into_response();
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retry_and_rate_limit_headers_are_copied_from_an_error_event() {
        let event: Value = serde_json::from_str(
            r#"{"type":"error","status":429,"error":{"type":"requests","code":"rate_limit_exceeded","message":"m",
                "headers":{"retry-after":"2","x-ratelimit-remaining-requests":"0","content-length":"9","connection":"close"}}}"#,
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        copy_error_headers(&event, &mut headers);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    }

    #[test]
    fn sequence_number_is_read_without_parsing() {
        assert_eq!(
            sequence_number(
                r#"{"type":"response.output_text.delta","sequence_number":17,"delta":"x"}"#
            ),
            Some(17)
        );
        assert_eq!(sequence_number(r#"{"type":"x"}"#), None);
    }

    #[test]
    fn flat_and_nested_upstream_errors_map_to_rest_statuses() {
        let nested: Value = serde_json::from_str(
            r#"{"type":"error","status":429,"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down","param":null}}"#,
        )
        .unwrap();
        assert_eq!(
            upstream_error(&nested).status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let flat: Value = serde_json::from_str(
            r#"{"type":"error","code":"server_error","message":"boom","param":null,"sequence_number":3}"#,
        )
        .unwrap();
        let error = upstream_error(&flat);
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.message, "boom");
    }
}
