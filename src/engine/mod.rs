//! The turn engine: every front-end (Responses SSE, Responses JSON, and those to come) drives a
//! turn through it and only through it (docs/architecture.md, "Data path").
//!
//! ```text
//! Plan (continuation) ─▶ lease (pool) ─▶ send ─▶ first event ─▶ Turn::next … terminal
//!                          ▲                         │ recovery before the first event:
//!                          └──── another socket ◀────┘ closed, refused 5xx, limit reached,
//!                                                      invalid frame; a continuation the
//!                                                      upstream lost is resent in full
//! ```
//!
//! [`Engine::start`] returns a [`Turn`] once the turn's first event is in, or a
//! [`BridgeError`] while nothing has reached the client. [`Turn::next`] yields the rest and
//! applies the one end-of-turn rule (head recorded, socket released or closed).

mod conduit;
mod error;
mod turn;

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

pub use crate::outcome::{FallbackReason, RecoveryCause};
pub use error::{BridgeError, SHUTTING_DOWN};
pub use turn::{Break, Event, Next, Turn};

use crate::auth::Credential;
use crate::config::{Config, UpstreamConfig};
use crate::continuation::Continuation;
use crate::continuation::{Digester, Matched, Plan, ReasoningPolicy, Rules};
use crate::metrics::Metrics;
use crate::net::Outbound;
use crate::protocol::OpenAiError;
use crate::protocol::error::{Meaning, upstream_error_headers};
use crate::protocol::event::{Admit, TurnFilter};
use crate::upstream::pool::{Census, CheckoutError, Pool};
use crate::upstream::rest::RestCooldown;
use crate::upstream::socket::CloseReason;
use crate::upstream::socket::{ConnectError, Connector};
use conduit::Conduit;
use turn::Kind;

/// What every turn shares.
#[derive(Debug)]
pub struct Engine {
    pool: Pool,
    /// Credentials sent over REST for a while after a refused upgrade.
    rest: RestCooldown,
    metrics: Arc<Metrics>,
    upstream: UpstreamConfig,
    rules: Rules,
    digester: Digester,
    /// Matches leaving reasoning items out whatever `continuation.reasoning` says: what Chat
    /// Completions requests use ([`Engine::chat_plan`]).
    lenient: Digester,
    /// Cancelled when the shutdown grace runs out: turns end at once.
    grace_expired: CancellationToken,
}

impl Engine {
    /// The engine over a new pool of upstream sockets for `config`'s upstream.
    pub fn new(config: &Config, outbound: Outbound, metrics: Arc<Metrics>) -> Self {
        let upstream = config.upstream.clone();
        let connector = Connector::new(
            upstream.base_url.websocket_url(),
            outbound,
            upstream.connect_timeout,
            upstream.max_message_bytes,
        )
        .with_headers(upstream.headers.clone());
        let pool = Pool::new(config.pool.clone(), connector, metrics.clone());
        let continuation = &config.continuation;
        let digester = Digester::new(continuation.reasoning);
        let lenient = match continuation.reasoning {
            ReasoningPolicy::Lenient => digester.clone(),
            ReasoningPolicy::Strict => Digester::new(ReasoningPolicy::Lenient),
        };
        Self {
            pool,
            rest: RestCooldown::default(),
            metrics,
            upstream,
            rules: Rules {
                enabled: continuation.enabled,
                stored_on_any_socket: continuation.stored_on_any_socket,
            },
            digester,
            lenient,
            grace_expired: CancellationToken::new(),
        }
    }

    /// Opens `pool.min_idle` sockets for `credential` now and keeps them warm (the injected key).
    pub fn prewarm(&self, credential: &Credential) {
        self.pool.prewarm(credential);
    }

    /// The pool, for a front-end that holds a socket longer than a turn (the WebSocket relay).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Upstream sockets by state: idle, busy, connecting.
    pub fn census(&self) -> Census {
        self.pool.census()
    }

    /// Credentials the engine holds state for: in the pool, or in a REST cool-down.
    pub fn credentials(&self) -> usize {
        let cooling = self.rest.credentials();
        let only_cooling = cooling.iter().filter(|c| !self.pool.holds(c)).count();
        self.pool.credentials() + only_cooling
    }

    /// Closes the upstream sockets (leased ones when their turn ends), waiting up to `grace`.
    pub async fn close(&self, grace: std::time::Duration) {
        self.pool.close(grace).await;
    }

    /// Ends every turn now (the shutdown grace ran out): streams break with
    /// [`Break::ShuttingDown`], turns not started yet fail with [`BridgeError::ShuttingDown`].
    pub fn expire(&self) {
        self.grace_expired.cancel();
    }

    /// The continuation plan of a request body.
    pub fn plan<'a>(&'a self, request: &'a Map<String, Value>) -> Plan<'a> {
        Plan::new(self.rules, &self.digester, request)
    }

    /// The continuation plan of a Chat Completions request translated into a Responses body:
    /// reasoning items never take part in matching, since a chat client can never send them
    /// back (strict matching would never continue a reasoning model's chat). The upstream still
    /// holds them, so a continued chat turn keeps the model's reasoning (docs/architecture.md,
    /// "Chat Completions").
    pub fn chat_plan<'a>(&'a self, request: &'a Map<String, Value>) -> Plan<'a> {
        Plan::new(self.rules, &self.lenient, request)
    }

    /// Starts a turn for `plan`: leases a socket, sends the frame and waits for the first
    /// event, retrying while nothing has reached the client (bounded by
    /// `upstream.max_attempts`). `body_len` is what a full resend costs, for the metrics.
    pub async fn start(
        &self,
        credential: &Credential,
        plan: &Plan<'_>,
        body_len: usize,
    ) -> Result<Turn, BridgeError> {
        let request = plan.request();
        if request.get("background") == Some(&Value::Bool(true)) {
            return Err(self.fallback(FallbackReason::Background));
        }
        let full_frame = Utf8Bytes::from(plan.full_frame());
        // Too large in full can still fit as a continuation; without a chance of one, go now.
        if full_frame.len() > self.upstream.max_frame_bytes && !plan.may_continue() {
            return Err(self.fallback(FallbackReason::FrameTooLarge));
        }
        if self.upstream.lanes && request.contains_key("stream_id") {
            return Err(conduit::client_stream_id());
        }
        if self.rest.active(credential) {
            return Err(self.fallback(FallbackReason::UpgradeRefused));
        }
        let started = tokio::select! {
            started = self.attempts(credential, plan, full_frame, body_len) => started,
            () = self.grace_expired.cancelled() => Err(BridgeError::ShuttingDown),
        };
        if let Err(BridgeError::Fallback(FallbackReason::UpgradeRefused)) = &started {
            self.rest
                .start(credential, self.upstream.rest_fallback_cooldown);
            tracing::warn!(credential = ?credential, "upstream refused the WebSocket upgrade; using REST for this credential for a while");
        }
        if let Ok(turn) = &started {
            self.metrics.continuation(turn.route());
        }
        started
    }

    fn fallback(&self, reason: FallbackReason) -> BridgeError {
        self.metrics.fallback(reason);
        BridgeError::Fallback(reason)
    }

    /// The retry loop of [`Engine::start`].
    async fn attempts(
        &self,
        credential: &Credential,
        plan: &Plan<'_>,
        full_frame: Utf8Bytes,
        body_len: usize,
    ) -> Result<Turn, BridgeError> {
        let mut bridged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let only_continuation = full_frame.len() > self.upstream.max_frame_bytes;
            let checkout = self
                .checkout(credential, plan.affinity(only_continuation))
                .await
                .map_err(|error| self.checkout_failed(error));
            let outcome = match checkout {
                Ok(checkout) => {
                    self.attempt(
                        credential,
                        plan,
                        &full_frame,
                        checkout,
                        body_len,
                        &mut bridged,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Err(error) if error.is_retryable() && attempt < self.upstream.max_attempts => {
                    let cause = match &error {
                        BridgeError::Unreachable(_) | BridgeError::Refused { .. } => {
                            RecoveryCause::ConnectFailed
                        }
                        BridgeError::Upstream { error, .. } if error::is_stream_limit(error) => {
                            RecoveryCause::StreamLimit
                        }
                        BridgeError::Upstream { .. } => RecoveryCause::LimitReached,
                        _ => RecoveryCause::SocketClosed,
                    };
                    self.metrics.recovery(cause);
                    tracing::info!(?cause, attempt, error = %error, "retrying on another upstream socket");
                }
                outcome => return outcome,
            }
        }
    }

    fn checkout_failed(&self, error: CheckoutError) -> BridgeError {
        match error {
            CheckoutError::NoMatch => self.fallback(FallbackReason::FrameTooLarge),
            CheckoutError::Busy { retry_after } => BridgeError::Busy { retry_after },
            CheckoutError::ShuttingDown => BridgeError::ShuttingDown,
            CheckoutError::Connect(ConnectError::Refused {
                status,
                headers,
                body,
            }) => {
                if matches!(status.as_u16(), 404 | 405 | 426) {
                    return self.fallback(FallbackReason::UpgradeRefused);
                }
                BridgeError::Refused {
                    status,
                    headers,
                    body,
                }
            }
            CheckoutError::Connect(error) => {
                tracing::warn!(%error, "connecting upstream failed");
                BridgeError::Unreachable(error)
            }
        }
    }

    /// One attempt on a leased socket: the frame this socket needs, sent, up to the first
    /// event. A continuation the upstream cannot resolve is resent in full here.
    async fn attempt(
        &self,
        credential: &Credential,
        plan: &Plan<'_>,
        full_frame: &Utf8Bytes,
        checkout: (Conduit, Option<Matched>),
        body_len: usize,
        bridged: &mut bool,
    ) -> Result<Turn, BridgeError> {
        let (mut lease, matched) = checkout;
        let (mut route, mut frame) = route_and_frame(plan, matched.as_ref(), full_frame);
        if frame.len() > self.upstream.max_frame_bytes {
            // Nothing was sent: the socket and its head stay as they were.
            lease.release_unused();
            return Err(self.fallback(FallbackReason::FrameTooLarge));
        }
        loop {
            if !*bridged {
                // What a full resend would have sent, counted once the request went upstream.
                self.metrics.request_bridged(body_len);
                *bridged = true;
            }
            let mut filter = TurnFilter::default();
            let (event, error) = match self.send(&mut lease, frame.clone(), &mut filter).await {
                Ok(First::Event(text, kind)) => {
                    lease.refill_pool();
                    // A full resend (fresh or recovered) depends on nothing upstream.
                    let parent_stored = route != Continuation::Continued
                        || matched.as_ref().is_none_or(|m| m.stored);
                    let seed = plan.seed(parent_stored);
                    return Ok(Turn::new(lease, (text, kind), filter, route, seed, self));
                }
                Ok(First::Error(event, error)) => (event, error),
                Err((error, reason)) => {
                    lease.close(reason);
                    return Err(error);
                }
            };
            if matches!(lease, Conduit::Lane(_)) && error::is_stream_limit(&error) {
                // This socket takes no more lanes: another one will (nothing was generated).
                if let Conduit::Lane(lane) = lease {
                    lane.refused();
                }
                return Err(BridgeError::Upstream {
                    error,
                    headers: Default::default(),
                });
            }
            if route != Continuation::Continued || error.meaning() != Meaning::PreviousResponseGone
            {
                let nested = event.get("error").is_some_and(Value::is_object);
                return Err(self.request_error(lease, &event, error, nested));
            }
            // Our own rewrite missed (the upstream no longer has the response, whatever words
            // it used to say so): resend in full, nothing has reached the client.
            tracing::info!(upstream_error = %error, "continuation not resolvable upstream; resending the full input");
            self.metrics
                .recovery(RecoveryCause::PreviousResponseNotFound);
            if let Some(matched) = &matched {
                self.pool.forget_stored(credential, &matched.previous);
            }
            route = Continuation::Recovered;
            frame = full_frame.clone();
            if frame.len() > self.upstream.max_frame_bytes {
                lease.release(None);
                return Err(self.fallback(FallbackReason::FrameTooLarge));
            }
        }
    }

    /// Sends `frame` and waits for the first event. The send and the wait share one deadline:
    /// an upstream that stops reading (a full TCP window) cannot hang the request either. On
    /// failure, how the socket must be closed.
    async fn send(
        &self,
        lease: &mut Conduit,
        frame: Utf8Bytes,
        filter: &mut TurnFilter,
    ) -> Result<First, (BridgeError, CloseReason)> {
        if let Conduit::Socket(_) = lease {
            // A lane's socket task counts the frame it writes, `stream_id` included.
            self.metrics.frame_sent(frame.len());
        }
        let timeout = self.upstream.first_event_timeout;
        match tokio::time::timeout(timeout, self.first_event(lease, frame, filter)).await {
            Ok(Ok(first)) => Ok(first),
            Ok(Err(failure)) => {
                let reason = match failure {
                    BridgeError::Protocol(_) => CloseReason::ProtocolError,
                    _ => CloseReason::ServerClosed,
                };
                Err((failure, reason))
            }
            Err(_) => Err((
                BridgeError::FirstEventTimeout(timeout),
                CloseReason::TurnFailed,
            )),
        }
    }

    /// A request-scoped error before any output: the socket stays for a nested error (the
    /// WebSocket form), and is closed after a flat one or the connection limit.
    fn request_error(
        &self,
        lease: Conduit,
        event: &Value,
        error: OpenAiError,
        nested: bool,
    ) -> BridgeError {
        if error.meaning() == Meaning::ConnectionLimit {
            lease.close(CloseReason::LimitReached);
        } else if nested {
            lease.release(None);
        } else {
            lease.close(CloseReason::TurnFailed);
        }
        let headers = upstream_error_headers(event, &error);
        BridgeError::Upstream { error, headers }
    }

    /// Sends `frame` and reads up to the turn's first event: late events of an earlier turn and
    /// keep-alives are passed over (the former counted), so the turn starts at its own
    /// `response.created` or a request-scoped `error`.
    async fn first_event(
        &self,
        socket: &mut Conduit,
        frame: Utf8Bytes,
        filter: &mut TurnFilter,
    ) -> Result<First, BridgeError> {
        socket
            .send(frame)
            .await
            .map_err(|()| BridgeError::ClosedBeforeStart)?;
        loop {
            let text = socket
                .next_event()
                .await
                .map_err(|_| BridgeError::ClosedBeforeStart)?;
            match filter.admit(&text) {
                Ok(Admit::Relay(event)) if event.kind == "error" => {
                    let value: Value = serde_json::from_str(&text).unwrap_or_default();
                    let error = OpenAiError::from_upstream_event(&value);
                    return Ok(First::Error(value, error));
                }
                Ok(Admit::Relay(event)) => {
                    let kind = Kind::of(&text, event);
                    return Ok(First::Event(text, kind));
                }
                Ok(Admit::Skip) => {}
                Ok(Admit::Drop(reason)) => {
                    tracing::debug!(?reason, "dropped an upstream event that is not this turn's");
                    self.metrics.event_dropped(reason);
                }
                Err(invalid) => {
                    tracing::warn!(%invalid, "upstream protocol error before the response started");
                    return Err(BridgeError::Protocol(invalid));
                }
            }
        }
    }
}

/// How a turn goes upstream on a socket that holds `matched` (if anything), and its frame:
/// only the new items after a matched head, else the request as given.
fn route_and_frame(
    plan: &Plan<'_>,
    matched: Option<&Matched>,
    full_frame: &Utf8Bytes,
) -> (Continuation, Utf8Bytes) {
    match (plan.explicit(), matched) {
        (Some(_), _) => (Continuation::Explicit, full_frame.clone()),
        (None, Some(matched)) => (
            Continuation::Continued,
            Utf8Bytes::from(plan.continuation_frame(matched)),
        ),
        (None, None) => (Continuation::Fresh, full_frame.clone()),
    }
}

/// How a turn began upstream.
enum First {
    /// Its first event (`response.created`), already admitted by the turn's filter, and
    /// where its `type` is.
    Event(Utf8Bytes, turn::Kind),
    /// A request-scoped `error` instead, parsed.
    Error(Value, OpenAiError),
}
