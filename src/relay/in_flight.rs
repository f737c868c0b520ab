//! [`InFlight`]: the `response.create` frames of one relayed client socket that the upstream
//! has not finished answering, and which of them an upstream event belongs to
//! (docs/architecture.md, "WebSocket relay").
//!
//! Without `stream_id` the upstream answers creates one after another, so an event belongs to
//! the oldest. With lanes, responses of different lanes interleave: once a client has named a
//! lane, each event's `stream_id` (absent on the default lane) picks the oldest create of its
//! lane, so a turn is never recorded with another lane's output.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::chain;

/// A `response.create` the upstream has not finished answering.
#[derive(Debug)]
pub(super) struct Pending {
    pub frame: Map<String, Value>,
    /// The frame as the client sent it.
    pub text: Utf8Bytes,
    /// Its part of the conversation, recorded in the chain when it completes.
    pub turn: Option<chain::Turn>,
    /// An event of its response reached the client: it is never sent again.
    pub started: bool,
    pub attempts: u32,
    lane: Option<String>,
}

impl Pending {
    pub fn new(frame: Map<String, Value>, text: Utf8Bytes) -> Self {
        let lane = frame
            .get("stream_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            turn: Some(chain::Turn::of(&frame)),
            frame,
            text,
            started: false,
            attempts: 1,
            lane,
        }
    }

    /// A response the upstream started on its own (the successor of a steered one): in
    /// flight until its terminal event, never sent again, recorded in no chain.
    fn follow_on(lane: Option<String>) -> Self {
        Self {
            frame: Map::new(),
            text: Utf8Bytes::default(),
            turn: None,
            started: true,
            attempts: 1,
            lane,
        }
    }

    pub fn lane(&self) -> Option<&str> {
        self.lane.as_deref()
    }
}

/// The creates in flight, oldest first.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    pending: VecDeque<Pending>,
    /// A create named a `stream_id`: events are matched by lane from now on.
    lanes: bool,
}

/// The lane of an upstream event (its `stream_id`).
#[derive(Deserialize)]
struct LaneOf {
    stream_id: Option<String>,
}

impl InFlight {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn push(&mut self, pending: Pending) {
        self.lanes |= pending.lane.is_some();
        self.pending.push_back(pending);
    }

    pub fn get(&self, index: usize) -> Option<&Pending> {
        self.pending.get(index)
    }

    /// True when part of some response in flight reached the client.
    pub fn any_started(&self) -> bool {
        self.pending.iter().any(|pending| pending.started)
    }

    /// Counts one more attempt for every create; returns the most any of them had before.
    pub fn attempt(&mut self) -> u32 {
        let most = self.pending.iter().map(|p| p.attempts).max().unwrap_or(0);
        for pending in &mut self.pending {
            pending.attempts += 1;
        }
        most
    }

    pub fn pop_front(&mut self) -> Option<Pending> {
        self.pending.pop_front()
    }

    /// The lane of `event` (an upstream frame): `None` until a client named one.
    fn lane_of(&self, event: &str) -> Option<String> {
        if !self.lanes {
            return None;
        }
        serde_json::from_str::<LaneOf>(event)
            .ok()
            .and_then(|of| of.stream_id)
    }

    /// The create `event` (an upstream frame) belongs to, if any: the oldest of its lane.
    pub fn owner(&self, event: &str) -> Option<usize> {
        let lane = self.lane_of(event);
        self.pending
            .iter()
            .position(|pending| pending.lane() == lane.as_deref())
    }

    /// A `response.created` starts the oldest create of its lane that has not started; with
    /// none waiting it is a response the upstream started on its own (after a steered
    /// `response.incomplete`), in flight from now on as the oldest of its lane.
    pub fn created(&mut self, event: &str) {
        let lane = self.lane_of(event);
        let waiting = self
            .pending
            .iter_mut()
            .find(|pending| pending.lane == lane && !pending.started);
        match waiting {
            Some(pending) => pending.started = true,
            None => self.pending.push_front(Pending::follow_on(lane)),
        }
    }

    pub fn started(&mut self, index: Option<usize>) {
        if let Some(pending) = index.and_then(|i| self.pending.get_mut(i)) {
            pending.started = true;
        }
    }

    pub fn is_started(&self, index: Option<usize>) -> bool {
        index
            .and_then(|i| self.pending.get(i))
            .is_some_and(|pending| pending.started)
    }

    /// The create at `index` is answered: out of the list.
    pub fn remove(&mut self, index: Option<usize>) -> Option<Pending> {
        self.pending.remove(index?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use serde_json::json;

    use super::*;

    fn create(lane: Option<&str>) -> Pending {
        let mut frame = json!({"type": "response.create", "input": "x"});
        if let Some(lane) = lane {
            frame["stream_id"] = json!(lane);
        }
        let text = Utf8Bytes::from(frame.to_string());
        Pending::new(frame.as_object().unwrap().clone(), text)
    }

    #[test]
    fn events_belong_to_the_oldest_create_of_their_lane() {
        let mut in_flight = InFlight::default();
        in_flight.push(create(None));
        in_flight.push(create(None));
        assert_eq!(in_flight.owner(r#"{"type":"response.created"}"#), Some(0));

        let mut lanes = InFlight::default();
        lanes.push(create(Some("a")));
        lanes.push(create(None));
        lanes.push(create(Some("b")));
        assert_eq!(
            lanes.owner(r#"{"type":"response.created","stream_id":"b"}"#),
            Some(2)
        );
        assert_eq!(lanes.owner(r#"{"type":"response.created"}"#), Some(1));
        assert_eq!(lanes.owner(r#"{"type":"error","stream_id":"c"}"#), None);
        lanes.started(Some(2));
        assert!(lanes.is_started(Some(2)) && !lanes.is_started(Some(0)));
        assert_eq!(lanes.remove(Some(2)).unwrap().lane(), Some("b"));
        assert_eq!(lanes.len(), 2);
    }

    #[test]
    fn a_response_created_with_no_create_waiting_is_an_untracked_follow_on() {
        let mut in_flight = InFlight::default();
        in_flight.push(create(None));
        in_flight.created(r#"{"type":"response.created"}"#);
        assert!(in_flight.is_started(Some(0)));
        // The steered response ends; its successor starts with no create of its own.
        assert!(in_flight.remove(Some(0)).unwrap().turn.is_some());
        in_flight.created(r#"{"type":"response.created"}"#);
        assert!(in_flight.any_started() && in_flight.len() == 1);
        in_flight.push(create(None));
        assert_eq!(in_flight.owner(r#"{"type":"response.completed"}"#), Some(0));
        assert!(in_flight.remove(Some(0)).unwrap().turn.is_none());
        in_flight.created(r#"{"type":"response.created"}"#);
        assert!(in_flight.is_started(Some(0)) && in_flight.len() == 1);
    }
}
