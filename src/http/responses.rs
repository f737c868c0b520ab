//! `POST /v1/responses`: one REST request becomes one `response.create` turn on a leased
//! upstream WebSocket, and the turn's events go back as SSE (`stream: true`) or as the final
//! Response JSON (docs/architecture.md, "Data path"; docs/protocol.md, "SSE").
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
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::App;
use super::passthrough::{self, X_ACCEL_BUFFERING};
use crate::auth::Credential;
use crate::continuation::{self, Digester, Frame, Head};
use crate::metrics::{CloseReason, Continuation, FallbackReason, Metrics, RecoveryCause};
use crate::protocol::error::{Meaning, upstream_error_headers};
use crate::protocol::event::{Admit, Envelope, InvalidEvent, TurnFilter};
use crate::protocol::{OpenAiError, sse};
use crate::upstream::pool::{Affinity, Checkout, CheckoutError, Lease};
use crate::upstream::socket::ConnectError;

/// The handler. Every answer carries an `x-request-id` (the upstream socket gives none).
pub async fn create(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = crate::ids::new_id("req");
    let mut response = respond(&app, &uri, headers, body).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .entry("x-request-id")
            .or_insert(value);
    }
    response
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
    let started = tokio::select! {
        started = start_turn(app, &credential, &plan, full_frame, body.len()) => started,
        () = app.grace_expired.cancelled() => return shutting_down_error().into_response(),
    };
    let started = match started {
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
    let mut response = if stream {
        stream_events(app, started)
    } else {
        collect_response(app, started).await
    };
    response
        .headers_mut()
        .insert(X_WSBRIDGE_CONTINUATION, route);
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
    /// What the turn relayed so far (its first event).
    filter: TurnFilter,
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
    'attempts: loop {
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
        let (first, filter) = loop {
            app.metrics.frame_sent(frame.len());
            if !bridged {
                // What a full resend would have sent, counted once the request went upstream.
                app.metrics.request_bridged(body_len);
                bridged = true;
            }
            let mut filter = TurnFilter::default();
            // The send and the wait for the first event share one deadline: an upstream that
            // stops reading (a full TCP window) cannot hang the request either.
            let started = first_event(app, lease.socket(), frame.clone(), &mut filter);
            let first = match tokio::time::timeout(config.first_event_timeout, started).await {
                Ok(first) => first,
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
            };
            if let Ok(First::Error(event, error)) = &first {
                if route == Continuation::Continued
                    && error.meaning() == Meaning::PreviousResponseGone
                {
                    // Our own rewrite missed (the upstream no longer has the response, whatever
                    // words it used to say so): resend in full, nothing has reached the client.
                    tracing::info!(
                        upstream_error = %error,
                        "continuation not resolvable upstream; resending the full input"
                    );
                    app.metrics
                        .recovery(RecoveryCause::PreviousResponseNotFound);
                    if let Some(matched) = &matched {
                        app.pool.forget_stored(credential, &matched.previous);
                    }
                    if event.get("error").is_none_or(|e| !e.is_object()) {
                        // A flat error may have ended more than the request: use a new socket.
                        lease.close(CloseReason::TurnFailed);
                        retry(RecoveryCause::SocketClosed, error.clone())?;
                        continue 'attempts;
                    }
                    route = Continuation::Recovered;
                    frame = full_frame.clone();
                    if too_large(&frame) {
                        lease.release();
                        return Err(Failure::FrameTooLarge);
                    }
                    continue;
                }
            }
            break (first, filter);
        };
        let (event, error) = match first {
            Ok(First::Event(first)) => {
                lease.refill_pool();
                return Ok(Started {
                    lease,
                    first,
                    filter,
                    route,
                    // A full resend (fresh or recovered) depends on nothing upstream.
                    seed: plan.seed(
                        route != Continuation::Continued
                            || matched.as_ref().is_none_or(|m| m.stored),
                    ),
                });
            }
            Ok(First::Error(event, error)) => (event, error),
            Err(FirstFailure::Closed(reason)) => {
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
            Err(FirstFailure::Invalid(invalid)) => {
                tracing::warn!(%invalid, "upstream protocol error before the response started");
                lease.close(CloseReason::ProtocolError);
                let broken = OpenAiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    format!(
                        "The upstream broke the protocol before the response started: {invalid}."
                    ),
                )
                .with_code("upstream_protocol_error");
                retry(RecoveryCause::SocketClosed, broken)?;
                continue;
            }
        };
        // A request-scoped error before any output.
        if error.meaning() == Meaning::ConnectionLimit {
            lease.close(CloseReason::LimitReached);
            retry(RecoveryCause::LimitReached, error)?;
            continue;
        }
        if event.get("error").is_some_and(Value::is_object) {
            // The socket is fine after a request-scoped error.
            lease.release();
        } else {
            lease.close(CloseReason::TurnFailed);
        }
        let headers = upstream_error_headers(&event, &error);
        let mut response = error.into_response();
        response.headers_mut().extend(headers);
        return Err(Failure::Answer(Box::new(response)));
    }
}

/// How a turn began upstream.
enum First {
    /// Its first event (`response.created`), already admitted by the turn's filter.
    Event(Utf8Bytes),
    /// A request-scoped `error` instead, parsed.
    Error(Value, OpenAiError),
}

/// Why a turn did not begin.
enum FirstFailure {
    /// The socket closed (or the send failed).
    Closed(CloseReason),
    /// The upstream sent a frame that cannot be relayed.
    Invalid(InvalidEvent),
}

/// Sends `frame` and reads up to the turn's first event: late events of an earlier turn and
/// keep-alives are passed over (the former counted), so the turn starts at its own
/// `response.created` or a request-scoped `error`.
async fn first_event(
    app: &App,
    socket: &mut crate::upstream::socket::Socket,
    frame: Utf8Bytes,
    filter: &mut TurnFilter,
) -> Result<First, FirstFailure> {
    socket
        .send(frame)
        .await
        .map_err(|_| FirstFailure::Closed(CloseReason::ServerClosed))?;
    loop {
        let text = socket.next_event().await.map_err(FirstFailure::Closed)?;
        match filter.admit(&text) {
            Ok(Admit::Relay(event)) if event.kind == "error" => {
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                let error = OpenAiError::from_upstream_event(&value);
                return Ok(First::Error(value, error));
            }
            Ok(Admit::Relay(_)) => return Ok(First::Event(text)),
            Ok(Admit::Skip) => {}
            Ok(Admit::Drop(reason)) => {
                tracing::debug!(?reason, "dropped an upstream event that is not this turn's");
                app.metrics.event_dropped(reason);
            }
            Err(invalid) => return Err(FirstFailure::Invalid(invalid)),
        }
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
        filter: started.filter,
        seed: started.seed,
        metrics: app.metrics.clone(),
        grace_expired: app.grace_expired.clone(),
        keepalive: app.config.server.sse_keepalive,
        idle_timeout: app.config.upstream.stream_idle_timeout,
        created: None,
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
    /// The turn's first event, already admitted by `filter`.
    first: Option<Utf8Bytes>,
    filter: TurnFilter,
    seed: HeadSeed,
    metrics: Arc<Metrics>,
    /// Cancelled when the shutdown grace runs out: the stream ends with `response.failed`.
    grace_expired: CancellationToken,
    keepalive: Option<Duration>,
    idle_timeout: Duration,
    /// The `response` object of `response.created`, for a synthesised `response.failed`.
    created: Option<Value>,
    /// Upstream silence so far, across keep-alive comments.
    silent: Duration,
    finished: bool,
}

/// Why wsbridge ends a stream itself.
struct Ending {
    reason: CloseReason,
    code: &'static str,
    message: String,
}

impl Relay {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let (text, admitted) = match self.first.take() {
                Some(first) => (first, true),
                None => match self.read().await {
                    Ok(text) => (text, false),
                    Err(chunk) => return Some(chunk),
                },
            };
            let event = if admitted {
                Envelope::read(&text)
            } else {
                match self.filter.admit(&text) {
                    Ok(Admit::Relay(event)) => Ok(event),
                    Ok(Admit::Skip) => continue,
                    Ok(Admit::Drop(reason)) => {
                        tracing::debug!(
                            ?reason,
                            "dropped an upstream event that is not this turn's"
                        );
                        self.metrics.event_dropped(reason);
                        continue;
                    }
                    Err(invalid) => Err(invalid),
                }
            };
            let event = match event {
                Ok(event) => event,
                Err(invalid) => {
                    return Some(self.fail(Ending {
                        reason: CloseReason::ProtocolError,
                        code: "server_error",
                        message: format!("The upstream broke the protocol mid-stream: {invalid}."),
                    }));
                }
            };
            if event.kind == "response.created" && self.created.is_none() {
                self.created = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|mut event| event.get_mut("response").map(Value::take));
            }
            let chunk = sse::frame(&event.kind, &text);
            if event.is_terminal_response() {
                self.finished = true;
                if let Some(mut lease) = self.lease.take() {
                    if event.kind != "response.failed" {
                        lease.socket().set_head(self.seed.head(&text));
                    }
                    lease.release();
                }
            } else if event.kind == "error" {
                self.finished = true;
                if let Some(lease) = self.lease.take() {
                    lease.close(CloseReason::TurnFailed);
                }
            }
            return Some(chunk);
        }
    }

    /// The next upstream frame, or the chunk to send instead (a keep-alive comment, or the
    /// `response.failed` that ends a broken stream).
    async fn read(&mut self) -> Result<Utf8Bytes, Bytes> {
        let silent_since = Instant::now();
        let Some(lease) = self.lease.as_mut() else {
            self.finished = true;
            return Err(Bytes::new());
        };
        let left = self.idle_timeout.saturating_sub(self.silent);
        let wait = self.keepalive.map_or(left, |every| every.min(left));
        let next = tokio::select! {
            next = tokio::time::timeout(wait, lease.socket().next_event()) => next,
            () = self.grace_expired.cancelled() => return Err(self.fail(shutting_down())),
        };
        match next {
            Ok(Ok(text)) => {
                self.silent = Duration::ZERO;
                Ok(text)
            }
            Ok(Err(reason)) => Err(self.fail(Ending {
                reason,
                code: "server_error",
                message: "The upstream connection closed before the response finished; it was \
                          not retried because output had already been sent."
                    .into(),
            })),
            Err(_) if silent_since.elapsed() + self.silent >= self.idle_timeout => {
                Err(self.fail(Ending {
                    reason: CloseReason::TurnFailed,
                    code: "server_error",
                    message: "The upstream sent nothing for too long \
                              (upstream.stream_idle_timeout_secs)."
                        .into(),
                }))
            }
            Err(_) => {
                self.silent += silent_since.elapsed();
                Err(Bytes::from_static(sse::KEEPALIVE_COMMENT))
            }
        }
    }

    /// Ends the stream with `response.failed` (or a flat `error` event when no
    /// `response.created` was seen), numbered after the last event relayed, closing the socket.
    fn fail(&mut self, ending: Ending) -> Bytes {
        tracing::warn!(
            reason = ?ending.reason,
            message = %ending.message,
            "the upstream turn ended after output reached the client; ending the stream with \
             response.failed"
        );
        self.finished = true;
        if let Some(lease) = self.lease.take() {
            lease.close(ending.reason);
        }
        let error = serde_json::json!({ "code": ending.code, "message": ending.message });
        let sequence = self.filter.next_sequence();
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
                    "code": ending.code,
                    "message": ending.message,
                    "param": null,
                    "sequence_number": sequence,
                });
                sse::frame("error", &event.to_string())
            }
        }
    }
}

/// How a stream or request still running when the shutdown grace runs out ends.
fn shutting_down() -> Ending {
    Ending {
        reason: CloseReason::Shutdown,
        code: SHUTTING_DOWN,
        message: "wsbridge is shutting down and its shutdown grace period \
                  (server.shutdown_grace_secs) ran out before this response finished."
            .into(),
    }
}

/// The `code` of the error a request gets when wsbridge's shutdown grace runs out.
pub const SHUTTING_DOWN: &str = "server_shutting_down";

/// The 503 for a request that had no output yet when the shutdown grace ran out.
pub fn shutting_down_error() -> OpenAiError {
    let ending = shutting_down();
    OpenAiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        ending.message,
    )
    .with_code(ending.code)
}

/// `stream: false`: reads the turn to its end and answers with the final Response object.
async fn collect_response(app: &App, started: Started) -> Response {
    let Started {
        mut lease,
        first,
        mut filter,
        seed,
        ..
    } = started;
    let idle_timeout = app.config.upstream.stream_idle_timeout;
    let mut next = Some(first);
    loop {
        let text = match next.take() {
            Some(text) => text,
            None => {
                let read = tokio::select! {
                    read = tokio::time::timeout(idle_timeout, lease.socket().next_event()) => read,
                    () = app.grace_expired.cancelled() => {
                        lease.close(CloseReason::Shutdown);
                        return shutting_down_error().into_response();
                    }
                };
                match read {
                    Ok(Ok(text)) => match filter.admit(&text) {
                        Ok(Admit::Relay(_)) => text,
                        Ok(Admit::Skip) => continue,
                        Ok(Admit::Drop(reason)) => {
                            app.metrics.event_dropped(reason);
                            continue;
                        }
                        Err(invalid) => {
                            lease.close(CloseReason::ProtocolError);
                            return OpenAiError::new(
                                StatusCode::BAD_GATEWAY,
                                "server_error",
                                format!("The upstream broke the protocol mid-response: {invalid}."),
                            )
                            .with_code("upstream_protocol_error")
                            .into_response();
                        }
                    },
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
                            "The upstream sent nothing for too long \
                             (upstream.stream_idle_timeout_secs).",
                        )
                        .with_code("upstream_timeout")
                        .into_response();
                    }
                }
            }
        };
        let kind = Envelope::read(&text).map(|event| event.kind.into_owned());
        match kind.as_deref().unwrap_or_default() {
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
                return OpenAiError::from_failed_response(&event).into_response();
            }
            "error" => {
                lease.close(CloseReason::TurnFailed);
                let event: Value = serde_json::from_str(&text).unwrap_or_default();
                return OpenAiError::from_upstream_event(&event).into_response();
            }
            _ => {}
        }
    }
}
