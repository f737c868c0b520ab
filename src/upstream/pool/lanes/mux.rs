//! One lane socket's task (docs/architecture.md, "Lanes"): it owns the upstream socket, writes
//! the frames its lanes' turns send, and hands each event to the turn that owns the event's
//! `stream_id` lane, with the `stream_id` taken out (a REST client never sees one).
//!
//! A turn whose client went away cannot be stopped upstream without closing the socket and
//! every other lane on it, so its lane is abandoned instead: its events are dropped until its
//! terminal event, and then the lane is free again. A turn that failed while its response
//! still runs (silent, no first event in time) retires the socket, whose slot the upstream
//! may never give back. The task ends when the socket closes (every turn on it sees the
//! close), when it is retired with no turn left but abandoned ones, or when it sat idle for
//! `pool.idle_timeout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::super::Inner;
use super::LanePartition;
use super::table::{Finish, lane_of};
use crate::upstream::socket::{CloseReason, Inbound, Socket};

/// How often a lane socket checks its pings, age and idleness.
const TICK: Duration = Duration::from_secs(1);

/// What a lane lease asks its socket's task.
#[derive(Debug)]
pub(super) enum Command {
    /// Send a turn's frame on `lane`; its events go to `events`.
    Send {
        lane: usize,
        frame: Utf8Bytes,
        events: mpsc::UnboundedSender<Utf8Bytes>,
    },
    /// The turn on `lane` was given up, for this reason: free the lane once its terminal
    /// event has passed.
    Abandon(usize, CloseReason),
}

/// Where a lane's events go while its turn runs.
struct Route {
    /// `None`: abandoned, events are dropped.
    events: Option<mpsc::UnboundedSender<Utf8Bytes>>,
}

pub(super) struct Task {
    pub(super) socket: Socket,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) partition: Arc<LanePartition>,
    pub(super) pool: Arc<Inner>,
    routes: HashMap<usize, Route>,
}

impl Task {
    pub(super) fn new(
        socket: Socket,
        commands: mpsc::UnboundedReceiver<Command>,
        partition: Arc<LanePartition>,
        pool: Arc<Inner>,
    ) -> Self {
        Self {
            socket,
            commands,
            partition,
            pool,
            routes: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let id = self.socket.id();
        let mut ticks = tokio::time::interval_at(Instant::now() + TICK, TICK);
        let mut quiet_since = Instant::now();
        let shutdown = self.pool.shutdown.clone();
        let reason = loop {
            let idle = self.routes.values().all(|route| route.events.is_none());
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Send { lane, frame, events }) => {
                        self.routes.insert(lane, Route { events: Some(events) });
                        self.pool.metrics.frame_sent(frame.len());
                        if self.socket.send(frame).await.is_err() {
                            break CloseReason::ServerClosed;
                        }
                    }
                    Some(Command::Abandon(lane, reason)) => self.abandon(lane, reason),
                    None => break CloseReason::Shutdown,
                },
                inbound = self.socket.read() => match inbound {
                    Inbound::Event(text) => {
                        if let Err(reason) = self.route(text) {
                            break reason;
                        }
                    }
                    Inbound::Control => {}
                    Inbound::Closed(reason) => break reason,
                },
                _ = ticks.tick() => {
                    if let Err(reason) = self.tick(idle, quiet_since, &shutdown) {
                        break reason;
                    }
                }
            }
            if self.routes.values().any(|route| route.events.is_some()) {
                quiet_since = Instant::now();
            }
        };
        self.partition.close_mux(&self.pool, id);
        // Every turn still on this socket sees it closed (its event channel ends).
        self.routes.clear();
        self.pool.metrics.socket_closed(reason);
        self.socket
            .span()
            .in_scope(|| tracing::debug!(?reason, "lane socket closed"));
        self.socket.close().await;
    }

    /// The periodic checks: pings, age, idleness, shutdown.
    fn tick(
        &mut self,
        idle: bool,
        quiet_since: Instant,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), CloseReason> {
        let config = &self.pool.config;
        if let Some(every) = config.ping_interval {
            self.socket.keep_alive(every)?;
        }
        let id = self.socket.id();
        let reason = if shutdown.is_cancelled() {
            CloseReason::Shutdown
        } else if self.socket.age() >= config.max_age {
            CloseReason::MaxAge
        } else {
            // Retired for a lane that never finished (see `abandon`), if at all.
            CloseReason::TurnFailed
        };
        if reason != CloseReason::TurnFailed && self.partition.retire(&self.pool, id) {
            return Err(reason);
        }
        // Retired, and no turn left but abandoned ones: nobody waits for this socket.
        if idle && self.partition.is_retiring(id) {
            return Err(reason);
        }
        if idle && quiet_since.elapsed() >= config.idle_timeout && self.partition.is_idle(id) {
            return Err(CloseReason::IdleTimeout);
        }
        Ok(())
    }

    /// A client that went away leaves its lane generating: its events are dropped until the
    /// terminal one. A turn that failed while its response still runs (silent, no first
    /// event in time, an invalid event) means a lane the upstream may never finish, holding
    /// one of the socket's slots: the socket takes no new turn and closes once the others end.
    fn abandon(&mut self, lane: usize, reason: CloseReason) {
        match self.routes.get_mut(&lane) {
            Some(route) => {
                route.events = None;
                if reason != CloseReason::ClientGone {
                    self.partition.retire(&self.pool, self.socket.id());
                }
            }
            None => self
                .partition
                .finish(&self.pool, self.socket.id(), lane, Finish::Head(None)),
        }
    }

    /// Hands one event to its lane's turn. An event of no lane is only expected to be the
    /// connection limit, which every turn on the socket gets (the socket is done).
    fn route(&mut self, text: Utf8Bytes) -> Result<(), CloseReason> {
        let Some((lane, event)) = split_lane(&text) else {
            return self.unrouted(text);
        };
        let Some(lane) = lane_of(&lane) else {
            self.dropped("an event of a stream_id wsbridge did not open");
            return Ok(());
        };
        let terminal = is_terminal(&event);
        let Some(route) = self.routes.get(&lane) else {
            self.dropped("an event of a lane with no turn");
            return Ok(());
        };
        if let Some(events) = &route.events
            && events.send(event).is_err()
        {
            // The turn is gone without saying so: treat it as abandoned.
            if let Some(route) = self.routes.get_mut(&lane) {
                route.events = None;
            }
        }
        if terminal
            && let Some(route) = self.routes.remove(&lane)
            && route.events.is_none()
        {
            self.partition
                .finish(&self.pool, self.socket.id(), lane, Finish::Head(None));
        }
        Ok(())
    }

    fn unrouted(&mut self, text: Utf8Bytes) -> Result<(), CloseReason> {
        if text.contains("websocket_connection_limit_reached") {
            self.partition.retire(&self.pool, self.socket.id());
            for route in self.routes.values() {
                if let Some(events) = &route.events {
                    let _ = events.send(text.clone());
                }
            }
            if self.routes.values().all(|route| route.events.is_none()) {
                return Err(CloseReason::LimitReached);
            }
            return Ok(());
        }
        if crate::protocol::sse::event_type(&text).is_none() {
            self.socket.span().in_scope(|| {
                tracing::warn!("upstream sent a frame that is not a JSON event on a lane socket");
            });
            return Err(CloseReason::ProtocolError);
        }
        self.dropped("an event without a stream_id");
        Ok(())
    }

    fn dropped(&self, what: &str) {
        self.socket
            .span()
            .in_scope(|| tracing::debug!("dropped {what}"));
    }
}

fn is_terminal(event: &str) -> bool {
    matches!(
        crate::protocol::sse::event_type(event).as_deref(),
        Some("response.completed" | "response.failed" | "response.incomplete" | "error")
    )
}

/// The event's top-level `stream_id` and the event without it, or `None` when it has none
/// (or is not a JSON object). Every other field is kept as the upstream wrote it.
pub(super) fn split_lane(text: &str) -> Option<(String, Utf8Bytes)> {
    if !text.contains("\"stream_id\"") {
        return None;
    }
    let fields: Fields<'_> = serde_json::from_str(text).ok()?;
    let mut lane = None;
    let mut out = String::with_capacity(text.len());
    out.push('{');
    for (key, value) in fields.0 {
        if key == "stream_id" && lane.is_none() {
            lane = Some(serde_json::from_str::<String>(value.get()).ok()?);
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&key).ok()?);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Some((lane?, Utf8Bytes::from(out)))
}

/// A JSON object's fields in order, values as written.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn the_stream_id_is_read_and_taken_out_and_everything_else_kept_as_written() {
        let event = r#"{"type":"response.output_text.delta","stream_id":"wsbridge-3","delta":"a \"b\"","n":[1, 2]}"#;
        let (lane, stripped) = split_lane(event).unwrap();
        assert_eq!(lane, "wsbridge-3");
        assert_eq!(
            stripped.as_str(),
            r#"{"type":"response.output_text.delta","delta":"a \"b\"","n":[1, 2]}"#
        );
        assert_eq!(split_lane(r#"{"type":"keepalive"}"#), None);
        assert_eq!(
            split_lane(r#"{"type":"x","delta":"\"stream_id\""}"#),
            None,
            "only a top-level field counts"
        );
        assert_eq!(split_lane(r#"["stream_id"]"#), None);
    }

    #[test]
    fn terminal_events_end_a_lanes_turn() {
        for kind in [
            "response.completed",
            "response.failed",
            "response.incomplete",
            "error",
        ] {
            assert!(is_terminal(&format!(r#"{{"type":"{kind}"}}"#)), "{kind}");
        }
        assert!(!is_terminal(r#"{"type":"response.created"}"#));
    }
}
