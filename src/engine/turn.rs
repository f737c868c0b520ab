//! A started turn: its upstream events, each admitted by the turn's filter, and the one rule
//! that ends a turn (docs/architecture.md, "Data path").
//!
//! End of turn, whichever front-end reads it:
//! - `response.completed` / `response.incomplete`: the socket's head becomes this turn's and the
//!   socket goes back to the pool;
//! - `response.failed`: the socket goes back with no head;
//! - an `error` event, a broken connection, silence beyond `upstream.stream_idle_timeout`, an
//!   invalid frame, or the shutdown grace running out: the socket is closed.
//!
//! Dropping a [`Turn`] before its end (the client went away) closes its socket, which stops
//! generation upstream.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Engine;
use super::conduit::Conduit;
use crate::continuation::Continuation;
use crate::continuation::HeadSeed;
use crate::metrics::Metrics;
use crate::protocol::event::{Admit, Envelope, InvalidEvent, TurnFilter};
use crate::upstream::socket::CloseReason;

/// A turn whose first event has arrived.
#[derive(Debug)]
pub struct Turn {
    lease: Option<Conduit>,
    /// The first event, already admitted by `filter`, not yet handed out, and its `type`.
    first: Option<(Utf8Bytes, Kind)>,
    filter: TurnFilter,
    route: Continuation,
    seed: HeadSeed,
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
    /// Resolves when the shutdown grace runs out; made once per turn.
    grace_expired: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The turn's `response.created` event as it came (shared bytes, not a copy); parsed only
    /// when a front-end reports a failure itself.
    created: Option<Utf8Bytes>,
    /// When the upstream last sent a frame (or the turn started).
    heard: Instant,
    /// When the last quiet tick was handed out.
    ticked: Option<Instant>,
    /// One timer per turn, armed at or before the next deadline (quiet tick or idle timeout)
    /// and moved on only when it fires early: events cost no timer work.
    timer: Pin<Box<Sleep>>,
    /// The request's span (the turn is read after its handler returned): what the turn logs
    /// is logged in it.
    span: tracing::Span,
    /// The socket had carried a turn before this one.
    socket_reused: bool,
    socket_opened: Instant,
}

/// One upstream event of the turn, as the upstream wrote it.
#[derive(Debug)]
pub struct Event {
    text: Utf8Bytes,
    kind: Kind,
    terminal: bool,
}

/// Where an event's `type` is: a slice of its text (no escapes, the usual case) or a copy.
#[derive(Debug)]
pub(super) enum Kind {
    Span(Range<usize>),
    Owned(Box<str>),
}

impl Event {
    /// The JSON text, byte for byte as the upstream sent it (validated).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The event's `type`.
    pub fn kind(&self) -> &str {
        match &self.kind {
            Kind::Span(range) => self.text.get(range.clone()).unwrap_or_default(),
            Kind::Owned(kind) => kind,
        }
    }

    /// True for the event that ended the turn (`response.completed`, `.failed`,
    /// `.incomplete`, or `error`).
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }
}

/// Why a turn broke after it started; its socket is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The upstream connection closed before the terminal event.
    Closed,
    /// The upstream sent nothing for `upstream.stream_idle_timeout`.
    Silent,
    /// The upstream sent a frame that cannot be relayed.
    Protocol(InvalidEvent),
    /// The shutdown grace ran out.
    ShuttingDown,
}

impl Break {
    /// The `error.code` a front-end reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ShuttingDown => super::SHUTTING_DOWN,
            _ => "server_error",
        }
    }

    /// The message a front-end reports.
    pub fn message(&self) -> String {
        match self {
            Self::Closed => "The upstream connection closed before the response finished; it was \
                             not retried because output had already been sent."
                .into(),
            Self::Silent => {
                "The upstream sent nothing for too long (upstream.stream_idle_timeout_secs).".into()
            }
            Self::Protocol(invalid) => {
                format!("The upstream broke the protocol mid-stream: {invalid}.")
            }
            Self::ShuttingDown => "wsbridge is shutting down and its shutdown grace period \
                                   (server.shutdown_grace_secs) ran out before this response \
                                   finished."
                .into(),
        }
    }
}

/// What [`Turn::next`] produced.
#[derive(Debug)]
pub enum Next {
    /// An event of the turn, to relay.
    Event(Event),
    /// Nothing arrived for the `quiet` period asked for (time for a keep-alive).
    Quiet,
    /// The turn broke; its socket is closed.
    Broken(Break),
    /// The turn is over: a terminal event or a break was already handed out.
    Done,
}

impl Turn {
    pub(super) fn new(
        lease: Conduit,
        first: (Utf8Bytes, Kind),
        filter: TurnFilter,
        route: Continuation,
        seed: HeadSeed,
        engine: &Engine,
    ) -> Self {
        let mut lease = lease;
        let socket_reused = lease.reused();
        let socket_opened = lease.opened();
        Self {
            socket_reused,
            socket_opened,
            lease: Some(lease),
            first: Some(first),
            filter,
            route,
            seed,
            metrics: engine.metrics.clone(),
            idle_timeout: engine.upstream.stream_idle_timeout,
            grace_expired: Box::pin(engine.grace_expired.clone().cancelled_owned()),
            created: None,
            heard: Instant::now(),
            ticked: None,
            timer: Box::pin(tokio::time::sleep(engine.upstream.stream_idle_timeout)),
            span: tracing::Span::current(),
        }
    }

    /// How the turn went upstream (continued, fresh, explicit, recovered).
    pub fn route(&self) -> Continuation {
        self.route
    }

    /// True when the turn's socket had carried a turn before this one.
    pub fn socket_reused(&self) -> bool {
        self.socket_reused
    }

    /// When the turn's socket was opened.
    pub fn socket_opened(&self) -> Instant {
        self.socket_opened
    }

    /// The `response` object of the turn's `response.created`, once handed out.
    pub fn created(&self) -> Option<Value> {
        let created = self.created.as_ref()?;
        let mut event = serde_json::from_str::<Value>(created).ok()?;
        event.get_mut("response").map(Value::take)
    }

    /// The id in the turn's `response.created` (its first event, read before the turn
    /// started), for a cluster peer (docs/architecture.md, "Cluster").
    pub fn response_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Created {
            response: Response,
        }
        #[derive(serde::Deserialize)]
        struct Response {
            id: String,
        }
        let first = self.first.as_ref().map(|(text, _)| text);
        let text = self.created.as_ref().or(first)?;
        let created: Created = serde_json::from_str(text).ok()?;
        Some(created.response.id)
    }

    /// The sequence number for an event a front-end adds itself (after the last relayed).
    pub fn next_sequence(&self) -> u64 {
        self.filter.next_sequence()
    }

    /// The next event of the turn. With `quiet`, returns [`Next::Quiet`] when nothing arrived
    /// for that long (the silence still counts towards `upstream.stream_idle_timeout`).
    pub async fn next(&mut self, quiet: Option<Duration>) -> Next {
        loop {
            if let Some((text, kind)) = self.first.take() {
                return self.admitted(text, kind);
            }
            let deadline = self.deadline(quiet);
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            let Some(lease) = self.lease.as_mut() else {
                return Next::Done;
            };
            let read = tokio::select! {
                biased;
                () = &mut self.grace_expired => {
                    return self.broken(Break::ShuttingDown, CloseReason::Shutdown);
                }
                read = lease.next_event() => read,
                () = &mut self.timer => {
                    let now = Instant::now();
                    if now >= self.heard + self.idle_timeout {
                        return self.broken(Break::Silent, CloseReason::TurnFailed);
                    }
                    if now >= deadline {
                        self.ticked = Some(now);
                        return Next::Quiet;
                    }
                    // Fired early: frames came since it was armed; the loop re-arms it.
                    self.timer.as_mut().reset(now + self.idle_timeout);
                    continue;
                }
            };
            let text = match read {
                Ok(text) => text,
                Err(reason) => return self.broken(Break::Closed, reason),
            };
            self.heard = Instant::now();
            match self.filter.admit(&text) {
                Ok(Admit::Relay(event)) => {
                    let kind = Kind::of(&text, event);
                    return self.admitted(text, kind);
                }
                Ok(Admit::Skip) => {}
                Ok(Admit::Drop(reason)) => {
                    let _entered = self.span.enter();
                    tracing::debug!(?reason, "dropped an upstream event that is not this turn's");
                    self.metrics.event_dropped(reason);
                }
                Err(invalid) => {
                    return self.broken(Break::Protocol(invalid), CloseReason::ProtocolError);
                }
            }
        }
    }

    /// The next moment something is due without a frame: a quiet tick (`quiet` after the
    /// last frame or tick) or the idle timeout (`upstream.stream_idle_timeout` after the last
    /// frame), whichever comes first.
    fn deadline(&self, quiet: Option<Duration>) -> Instant {
        let idle = self.heard + self.idle_timeout;
        let Some(quiet) = quiet else {
            return idle;
        };
        let since = self
            .ticked
            .map_or(self.heard, |ticked| ticked.max(self.heard));
        idle.min(since + quiet)
    }

    /// Hands out an admitted event, ending the turn on a terminal one.
    fn admitted(&mut self, text: Utf8Bytes, kind: Kind) -> Next {
        let mut event = Event {
            text,
            kind,
            terminal: false,
        };
        match event.kind() {
            "response.created" if self.created.is_none() => {
                self.created = Some(event.text.clone());
            }
            "response.completed" | "response.incomplete" => {
                event.terminal = true;
                if let Some(lease) = self.lease.take() {
                    lease.release(self.seed.head(event.text()));
                }
            }
            "response.failed" => {
                event.terminal = true;
                if let Some(lease) = self.lease.take() {
                    lease.release(None);
                }
            }
            "error" => {
                event.terminal = true;
                if let Some(lease) = self.lease.take() {
                    lease.close(CloseReason::TurnFailed);
                }
            }
            _ => {}
        }
        Next::Event(event)
    }

    fn broken(&mut self, cause: Break, reason: CloseReason) -> Next {
        let _entered = self.span.enter();
        tracing::warn!(?reason, cause = %cause.message(), "the upstream turn broke after it started");
        if let Some(lease) = self.lease.take() {
            lease.close(reason);
        }
        Next::Broken(cause)
    }
}

impl Kind {
    /// Where `envelope`'s `type` is in `text`, the frame it was read from: no second read.
    pub(super) fn of(text: &str, envelope: Envelope<'_>) -> Self {
        match envelope.kind {
            std::borrow::Cow::Borrowed(kind) => {
                let start = kind.as_ptr() as usize - text.as_ptr() as usize;
                Kind::Span(start..start + kind.len())
            }
            std::borrow::Cow::Owned(kind) => Kind::Owned(kind.into_boxed_str()),
        }
    }
}
