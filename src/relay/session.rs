//! [`Session`]: one relayed client socket (docs/architecture.md, "WebSocket relay").
//!
//! Frames go through as they came, both ways. The session only reads the `type` of each
//! upstream event (and parses the few that end a turn) to know which `response.create` frames
//! are still being answered, because that decides what an upstream socket's end means:
//! - no response in flight: nothing is lost; the next frame goes on a fresh socket (and a
//!   `store: false` continuation of a response the old socket held is rebuilt from the
//!   [`Chain`]). `websocket_connection_limit_reached` is not shown to the client.
//! - responses in flight, none of which reached the client: they are sent again on a fresh
//!   socket (up to `upstream.max_attempts`), as the engine retries a turn; not after a close
//!   that says the frame itself is bad (1007, 1008, 1009), which the client gets as it came.
//! - an event of a response reached the client: nothing is replayed; the client gets the
//!   upstream's close code and reason (1011 when the connection broke without one).
//!
//! # Concurrency
//! One task per client socket reads both sockets in one `select!`; a write to either side
//! is awaited before the next read, so a slow client slows its upstream socket (and nothing
//! else). Pings are answered by each side's WebSocket layer on its next read.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{self, WebSocket};
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

mod events;

use super::chain::{Chain, Frame};
use super::in_flight::{InFlight, Pending};
use super::{Relay, Upstream};
use crate::auth::Credential;
use crate::engine::BridgeError;
use crate::outcome::{CloseReason, RebuildOutcome, RelayDirection, RelaySwitch};
use crate::protocol::OpenAiError;
use crate::protocol::sse::event_type;
use crate::upstream::socket::Inbound;

/// Whether the session goes on.
enum Flow {
    Continue,
    End,
}

/// What woke the session.
enum Step {
    Client(Option<Result<ws::Message, axum::Error>>),
    Upstream(Inbound),
    Ping,
    Stop,
    Expired,
}

pub(super) struct Session {
    relay: Arc<Relay>,
    credential: Credential,
    query: Option<String>,
    /// `None` after it was lost between turns: reopened by the next client frame.
    upstream: Option<Upstream>,
    pending: InFlight,
    chain: Chain,
}

impl Session {
    pub(super) fn new(
        relay: Arc<Relay>,
        credential: Credential,
        query: Option<String>,
        upstream: Upstream,
    ) -> Self {
        Self {
            relay,
            credential,
            query,
            upstream: Some(upstream),
            pending: InFlight::default(),
            chain: Chain::default(),
        }
    }

    pub(super) async fn run(mut self, mut client: WebSocket) {
        let every = self.relay.ping_interval;
        let period = every.unwrap_or(Duration::from_secs(3600));
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let idle = self.pending.is_empty();
            let step = tokio::select! {
                () = self.relay.expired.cancelled() => Step::Expired,
                () = self.relay.stop.cancelled(), if idle => Step::Stop,
                message = client.recv() => Step::Client(message),
                inbound = read(&mut self.upstream) => Step::Upstream(inbound),
                _ = pings.tick(), if idle && every.is_some() => Step::Ping,
            };
            let flow = match step {
                Step::Client(Some(Ok(message))) => self.client_frame(&mut client, message).await,
                Step::Client(_) => {
                    self.client_gone(None);
                    Flow::End
                }
                Step::Upstream(Inbound::Control) => Flow::Continue,
                Step::Upstream(Inbound::Closed(reason)) => {
                    self.upstream_lost(&mut client, reason).await
                }
                Step::Upstream(Inbound::Event(text)) => self.event(&mut client, text).await,
                Step::Ping => {
                    self.keep_alive(period);
                    Flow::Continue
                }
                Step::Stop | Step::Expired => {
                    self.shut(&mut client).await;
                    Flow::End
                }
            };
            if let Flow::End = flow {
                break;
            }
        }
        // Completes the close handshake (the reply to the client's close goes out on a read).
        let drain = async { while let Some(Ok(_)) = client.recv().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }

    /// A client frame: forwarded as it came (a `response.create` rebuilt when it continues
    /// a `store: false` response that only a socket gone since held).
    async fn client_frame(&mut self, client: &mut WebSocket, message: ws::Message) -> Flow {
        let message = match message {
            ws::Message::Text(text) => match Utf8Bytes::try_from(Bytes::from(text)) {
                Ok(text) => Message::Text(text),
                Err(_) => return Flow::Continue,
            },
            ws::Message::Binary(data) => Message::Binary(data),
            // The WebSocket layer answers pings itself.
            ws::Message::Ping(_) | ws::Message::Pong(_) => return Flow::Continue,
            ws::Message::Close(frame) => {
                self.client_gone(frame.map(upstream_close));
                return Flow::End;
            }
        };
        self.relay
            .metrics
            .relay_frame(RelayDirection::ClientToUpstream);
        if let Err(error) = self.ensure_upstream().await {
            let stream_id = match &message {
                Message::Text(text) => serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("stream_id")?.as_str().map(str::to_owned)),
                _ => None,
            };
            return send_error(client, &error.to_openai(), stream_id.as_deref()).await;
        }
        let create = match &message {
            Message::Text(text) if event_type(text).as_deref() == Some("response.create") => {
                serde_json::from_str::<Map<String, Value>>(text)
                    .ok()
                    .map(|frame| (frame, text.clone()))
            }
            _ => None,
        };
        let Some((frame, text)) = create else {
            return self.forward_other(client, message).await;
        };
        self.pending.push(Pending::new(frame, text));
        if self.send_pending(self.pending.len() - 1).await {
            Flow::Continue
        } else {
            // Not sent: it goes again on a fresh socket with whatever else is pending.
            self.upstream_lost(client, CloseReason::ServerClosed).await
        }
    }

    /// Any other client frame (steer, inject, unknown): sent as it came, once more on a fresh
    /// socket when the current one turns out to be gone.
    async fn forward_other(&mut self, client: &mut WebSocket, message: Message) -> Flow {
        for _ in 0..2 {
            if let Some(upstream) = &mut self.upstream
                && upstream
                    .socket()
                    .forward(message.clone(), false)
                    .await
                    .is_ok()
            {
                return Flow::Continue;
            }
            if let Flow::End = self.upstream_lost(client, CloseReason::ServerClosed).await {
                return Flow::End;
            }
            if let Err(error) = self.ensure_upstream().await {
                return send_error(client, &error.to_openai(), None).await;
            }
        }
        Flow::Continue
    }

    /// Between turns, a socket that was lost or reached `pool.max_age` is replaced.
    async fn ensure_upstream(&mut self) -> Result<(), BridgeError> {
        let aged = match &mut self.upstream {
            None => false,
            Some(upstream) => {
                if !self.pending.is_empty() || upstream.socket().age() < self.relay.max_age {
                    return Ok(());
                }
                true
            }
        };
        if aged {
            self.relay.metrics.relay_switch(RelaySwitch::MaxAge);
        }
        self.reopen().await
    }

    /// Gives up the current upstream socket (if any; the pool retires it when too old) and
    /// takes a fresh one.
    async fn reopen(&mut self) -> Result<(), BridgeError> {
        if let Some(old) = self.upstream.take() {
            old.release();
        }
        let upstream = self
            .relay
            .open(&self.credential, self.query.as_deref())
            .await?;
        self.upstream = Some(upstream);
        Ok(())
    }

    /// Sends pending create `index` on the current socket; false when the socket is gone.
    async fn send_pending(&mut self, index: usize) -> bool {
        let (Some(upstream), Some(pending)) = (&mut self.upstream, self.pending.get(index)) else {
            return false;
        };
        let socket = upstream.socket();
        let max_bytes = self.relay.max_frame_bytes;
        let text = match self.chain.frame_for(&pending.frame, socket.id(), max_bytes) {
            Frame::AsItCame => pending.text.clone(),
            Frame::Rebuilt(text) => {
                self.relay.metrics.relay_rebuild(RebuildOutcome::Rebuilt);
                Utf8Bytes::from(text)
            }
            Frame::TooLarge => {
                self.relay.metrics.relay_rebuild(RebuildOutcome::TooLarge);
                pending.text.clone()
            }
        };
        socket.forward(Message::Text(text), true).await.is_ok()
    }

    /// The upstream socket closed, broke, or reported its connection limit.
    async fn upstream_lost(&mut self, client: &mut WebSocket, reason: CloseReason) -> Flow {
        let mut peer = None;
        if let Some(mut upstream) = self.upstream.take() {
            peer = upstream.socket().peer_close().cloned();
            upstream.close(reason);
        }
        // Part of a response reached the client, or the upstream refused what it was sent
        // (a policy close: sending it again would be refused again): the client sees the end
        // a direct client would.
        if self.pending.any_started() || peer.as_ref().is_some_and(is_policy_close) {
            let frame = peer.unwrap_or(CloseFrame {
                code: CloseCode::Error,
                reason: "the upstream connection was lost".into(),
            });
            let _ = client
                .send(ws::Message::Close(Some(client_close(frame))))
                .await;
            return Flow::End;
        }
        self.relay.metrics.relay_switch(match reason {
            CloseReason::LimitReached => RelaySwitch::LimitReached,
            _ => RelaySwitch::Dropped,
        });
        if self.pending.is_empty() {
            return Flow::Continue;
        }
        self.resend(client).await
    }

    /// Sends the pending creates again on a fresh socket: nothing of theirs reached the client.
    async fn resend(&mut self, client: &mut WebSocket) -> Flow {
        loop {
            if self.pending.attempt() >= self.relay.max_attempts {
                return self
                    .fail_pending(client, &BridgeError::ClosedBeforeStart)
                    .await;
            }
            if let Err(error) = self.reopen().await {
                return self.fail_pending(client, &error).await;
            }
            let mut sent = true;
            for index in 0..self.pending.len() {
                sent = sent && self.send_pending(index).await;
            }
            if sent {
                return Flow::Continue;
            }
            if let Some(upstream) = self.upstream.take() {
                upstream.close(CloseReason::ServerClosed);
            }
            self.relay.metrics.relay_switch(RelaySwitch::Dropped);
        }
    }

    /// Answers every pending create with `error` (as the upstream would: an `error` event).
    async fn fail_pending(&mut self, client: &mut WebSocket, error: &BridgeError) -> Flow {
        let error = error.to_openai();
        while let Some(pending) = self.pending.pop_front() {
            if let Flow::End = send_error(client, &error, pending.lane()).await {
                return Flow::End;
            }
        }
        Flow::Continue
    }

    /// The client left: between turns its socket goes back to the pool; mid-response it is
    /// closed (with the client's close code and reason), which stops generation.
    fn client_gone(&mut self, frame: Option<CloseFrame>) {
        let Some(mut upstream) = self.upstream.take() else {
            return;
        };
        if self.pending.is_empty() {
            upstream.release();
            return;
        }
        if let Some(frame) = frame {
            upstream.socket().set_close_frame(frame);
        }
        upstream.close(CloseReason::ClientGone);
    }

    /// Pings the idle upstream socket; one that stopped answering is dropped (and replaced
    /// by the next client frame).
    fn keep_alive(&mut self, every: Duration) {
        let Some(upstream) = &mut self.upstream else {
            return;
        };
        if let Err(reason) = upstream.socket().keep_alive(every) {
            if let Some(upstream) = self.upstream.take() {
                upstream.close(reason);
            }
            self.relay.metrics.relay_switch(RelaySwitch::Dropped);
        }
    }

    /// wsbridge is stopping: the client gets 1001 (going away), which SDKs reconnect after.
    async fn shut(&mut self, client: &mut WebSocket) {
        if let Some(upstream) = self.upstream.take() {
            if self.pending.is_empty() {
                upstream.release();
            } else {
                upstream.close(CloseReason::Shutdown);
            }
        }
        let frame = ws::CloseFrame {
            code: 1001,
            reason: "wsbridge is shutting down".into(),
        };
        let _ = client.send(ws::Message::Close(Some(frame))).await;
    }
}

/// The next frame of the upstream socket; never, while there is none.
async fn read(upstream: &mut Option<Upstream>) -> Inbound {
    match upstream {
        Some(upstream) => upstream.socket().read().await,
        None => std::future::pending().await,
    }
}

/// Answers the client with an `error` event (the socket stays open).
async fn send_error(client: &mut WebSocket, error: &OpenAiError, stream_id: Option<&str>) -> Flow {
    let event = error.ws_event(stream_id);
    match client.send(ws::Message::Text(event.into())).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::End,
    }
}

/// 1007 (invalid data), 1008 (policy violation), 1009 (message too big): the frame the
/// upstream was sent is bad, wherever it goes.
fn is_policy_close(frame: &CloseFrame) -> bool {
    matches!(
        frame.code,
        CloseCode::Invalid | CloseCode::Policy | CloseCode::Size
    )
}

fn upstream_close(frame: ws::CloseFrame) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(frame.code),
        reason: Utf8Bytes::try_from(Bytes::from(frame.reason)).unwrap_or_default(),
    }
}

fn client_close(frame: CloseFrame) -> ws::CloseFrame {
    ws::CloseFrame {
        code: u16::from(frame.code),
        reason: ws::Utf8Bytes::try_from(Bytes::from(frame.reason)).unwrap_or_default(),
    }
}
