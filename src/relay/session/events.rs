//! Upstream events of a [`Session`]: which `response.create` each belongs to, and whether it
//! ends one (docs/architecture.md, "WebSocket relay").

use axum::extract::ws::{self, WebSocket};
use bytes::Bytes;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Flow, Session};
use crate::outcome::{CloseReason, RelayDirection};
use crate::protocol::OpenAiError;
use crate::protocol::error::Meaning;
use crate::protocol::sse::event_type;

impl Session {
    /// An upstream event: noted (which create it answers) and sent to the client as it came,
    /// except a connection limit that the client must not see.
    pub(super) async fn event(&mut self, client: &mut WebSocket, text: Utf8Bytes) -> Flow {
        let owner = self.pending.owner(&text);
        match event_type(&text).as_deref() {
            // An error ends a create that has not started (it refused it); one that answers
            // a steer, an unknown event or a bad frame sent mid-response ends nothing: a
            // started response ends only with its terminal event or its socket.
            Some("error") if !self.pending.is_started(owner) => {
                if is_connection_limit(&text) {
                    return self.upstream_lost(client, CloseReason::LimitReached).await;
                }
                self.pending.remove(owner);
            }
            Some("error") => {}
            Some("response.created") => self.pending.created(&text),
            Some("response.completed" | "response.incomplete") => self.completed(owner, &text),
            Some("response.failed") => {
                self.pending.remove(owner);
            }
            _ => self.pending.started(owner),
        }
        self.relay
            .metrics
            .relay_frame(RelayDirection::UpstreamToClient);
        let Ok(text) = ws::Utf8Bytes::try_from(Bytes::from(text)) else {
            return Flow::Continue;
        };
        if client.send(ws::Message::Text(text)).await.is_err() {
            self.client_gone(None);
            return Flow::End;
        }
        Flow::Continue
    }

    /// Create `owner`'s response completed: it is the chain's latest now.
    fn completed(&mut self, owner: Option<usize>, text: &str) {
        let Some(mut pending) = self.pending.remove(owner) else {
            return;
        };
        let socket = self.upstream.as_mut().map_or(0, |u| u.socket().id());
        let (Some(turn), Ok(event)) = (pending.turn.take(), serde_json::from_str::<Value>(text))
        else {
            return;
        };
        let limit = self.relay.max_replay_bytes;
        self.chain
            .completed(turn, &event["response"], socket, limit);
    }
}

/// `websocket_connection_limit_reached`, however the upstream words it: a socket that is
/// finished, hidden from the client when none of what it answered reached the client.
fn is_connection_limit(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|event| {
        OpenAiError::from_upstream_event(&event).meaning() == Meaning::ConnectionLimit
    })
}
