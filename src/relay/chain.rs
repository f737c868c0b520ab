//! [`Chain`]: what one relayed client socket remembers of its conversation, so that a
//! `store: false` chain survives a change of upstream socket (docs/architecture.md,
//! "WebSocket relay").
//!
//! An upstream socket keeps its latest response in memory, one per `stream_id` lane, and with
//! `store: false` nothing else has it: a `response.create` naming it on another socket gets
//! `previous_response_not_found`. The relay keeps, for the latest response of each lane it
//! carried, every item of the conversation that led to it (each turn's input, then its
//! output), as the JSON text of each item, up to `relay.max_replay_bytes` for all lanes of the
//! client socket together. When the client continues one of those responses after its socket
//! is gone, [`Chain::frame_for`] writes the client's frame again with the whole conversation
//! as `input` and no `previous_response_id`.
//!
//! Output messages and function calls are kept without their `id` (a `store: false` item id
//! names nothing the upstream can load; docs/protocol.md, "previous_response_id on a socket"),
//! reasoning items too when they carry `encrypted_content`. A reasoning item without it is
//! left out: it is nothing but its id, which a fresh socket answers with "Item with id 'rs_…'
//! not found" (the API accepts an input without the reasoning of earlier turns).

use serde_json::{Map, Value};

use crate::protocol::items::{ItemKind, kind};

/// The most lanes a client socket's chain remembers (the protocol's lanes per socket); the
/// least recently completed is forgotten first.
const MAX_LANES: usize = 32;

/// The latest response of each lane a client socket carried, and the items leading to each.
#[derive(Debug, Default)]
pub struct Chain {
    /// By `stream_id` (`None`: the default lane), least recently completed first.
    lanes: Vec<(Option<String>, Latest)>,
}

#[derive(Debug)]
struct Latest {
    response_id: String,
    /// `None`: too large to keep (or unknown: it continued a response the relay never saw).
    items: Option<Items>,
    store: bool,
    /// The upstream socket that produced it (the relay numbers its upstream sockets).
    socket: u64,
}

#[derive(Debug, Default, Clone)]
struct Items {
    json: Vec<String>,
    bytes: usize,
}

impl Items {
    fn push(&mut self, item: &Value, limit: usize) -> bool {
        let text = item.to_string();
        self.bytes += text.len() + 1;
        self.json.push(text);
        self.bytes <= limit
    }
}

/// What a `response.create` contributes to the chain, kept until its response ends.
#[derive(Debug)]
pub struct Turn {
    lane: Option<String>,
    previous: Option<String>,
    input: Vec<Value>,
    store: bool,
}

impl Turn {
    /// The chain part of a `response.create` frame: `input` (a string is one user message),
    /// `previous_response_id`, `store` (true unless `false`, the API's default).
    pub fn of(frame: &Map<String, Value>) -> Self {
        let input = match frame.get("input") {
            Some(Value::String(text)) => {
                vec![serde_json::json!({"role": "user", "content": text})]
            }
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        Self {
            lane: frame
                .get("stream_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            previous: frame
                .get("previous_response_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            input,
            store: frame.get("store") != Some(&Value::Bool(false)),
        }
    }
}

/// What [`Chain::frame_for`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Send the client's frame as it came.
    AsItCame,
    /// Send this instead: the full conversation as `input`.
    Rebuilt(String),
    /// It needs a rebuild that the bound (or the frame limit) did not allow: send it as it came.
    TooLarge,
}

impl Chain {
    /// The latest response of a lane whose id is `response_id`.
    fn latest(&self, response_id: &str) -> Option<&Latest> {
        self.lanes
            .iter()
            .map(|(_, latest)| latest)
            .find(|latest| latest.response_id == response_id)
    }

    /// The frame a `response.create` needs on upstream socket `socket`: rebuilt when it
    /// continues the latest response of a lane (its own or another), which was `store: false`
    /// and produced on another socket. A rebuilt frame over `max_bytes`
    /// (`upstream.max_frame_bytes`) is [`Frame::TooLarge`]: the upstream would refuse it.
    pub fn frame_for(&self, frame: &Map<String, Value>, socket: u64, max_bytes: usize) -> Frame {
        let previous = frame.get("previous_response_id").and_then(Value::as_str);
        let Some(latest) = previous.and_then(|previous| self.latest(previous)) else {
            return Frame::AsItCame;
        };
        if latest.store || latest.socket == socket {
            return Frame::AsItCame;
        }
        let Some(items) = &latest.items else {
            return Frame::TooLarge;
        };
        let mut rest = frame.clone();
        rest.remove("previous_response_id");
        let input = rest.remove("input");
        let mut text = Value::Object(rest).to_string();
        text.pop();
        text.push_str(",\"input\":[");
        let mut first = true;
        for item in &items.json {
            if !first {
                text.push(',');
            }
            first = false;
            text.push_str(item);
        }
        for item in Turn::of(&Map::from_iter(
            input.map(|input| ("input".to_owned(), input)),
        ))
        .input
        {
            if !first {
                text.push(',');
            }
            first = false;
            text.push_str(&item.to_string());
        }
        text.push_str("]}");
        if text.len() > max_bytes {
            return Frame::TooLarge;
        }
        Frame::Rebuilt(text)
    }

    /// `turn` ended with a completed (or incomplete) response `response` on socket `socket`:
    /// it is its lane's latest now, with the items that led to it. `limit` bounds the items
    /// of every lane together.
    pub fn completed(&mut self, turn: Turn, response: &Value, socket: u64, limit: usize) {
        let own = self.lanes.iter().position(|(lane, _)| *lane == turn.lane);
        let replaced = own.map(|index| self.lanes.remove(index).1);
        let Some(response_id) = response.get("id").and_then(Value::as_str) else {
            return;
        };
        let base = match (&turn.previous, replaced) {
            (None, _) => Some(Items::default()),
            (Some(previous), Some(latest)) if *previous == latest.response_id => latest.items,
            // A fork from another lane's latest response: a copy of its history.
            (Some(previous), _) => self
                .latest(previous)
                .and_then(|latest| latest.items.clone()),
        };
        // What the other lanes keep counts against the same bound.
        let others: usize = self
            .lanes
            .iter()
            .filter_map(|(_, latest)| latest.items.as_ref().map(|items| items.bytes))
            .sum();
        let limit = limit.saturating_sub(others);
        let output = response.get("output").and_then(Value::as_array);
        let items = base.and_then(|mut items| {
            let input = turn.input.iter();
            let output = output.into_iter().flatten().filter_map(replayable);
            let fits = input
                .chain(output.collect::<Vec<_>>().iter())
                .all(|item| items.push(item, limit));
            fits.then_some(items)
        });
        if self.lanes.len() >= MAX_LANES {
            self.lanes.remove(0);
        }
        self.lanes.push((
            turn.lane,
            Latest {
                response_id: response_id.to_owned(),
                items,
                store: turn.store,
                socket,
            },
        ));
    }
}

/// An output item as it goes back as input: a message or function call without its `id` and
/// `status`, a reasoning item with `encrypted_content` without its `id`, one without it not at
/// all (see the module docs); anything else whole (some item types require their id).
fn replayable(item: &Value) -> Option<Value> {
    let strip = match kind(item) {
        ItemKind::Message | ItemKind::FunctionCall => true,
        ItemKind::Reasoning if item.get("encrypted_content").is_some_and(Value::is_string) => true,
        ItemKind::Reasoning => return None,
        ItemKind::FunctionCallOutput | ItemKind::Other => false,
    };
    let mut item = item.clone();
    if strip && let Some(fields) = item.as_object_mut() {
        fields.remove("id");
        fields.remove("status");
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn response(id: &str, text: &str) -> Value {
        json!({"id": id, "output": [{"id": format!("msg_{id}"), "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]})
    }

    #[test]
    fn a_store_false_continuation_on_another_socket_gets_the_whole_conversation() {
        let mut chain = Chain::default();
        let first =
            map(json!({"type": "response.create", "model": "m", "store": false, "input": "hi"}));
        chain.completed(Turn::of(&first), &response("r1", "hello"), 1, 1 << 20);
        let second = map(
            json!({"type": "response.create", "model": "m", "store": false, "previous_response_id": "r1", "input": [{"role": "user", "content": "more"}], "instructions": "be brief"}),
        );
        assert_eq!(
            chain.frame_for(&second, 1, 1 << 20),
            Frame::AsItCame,
            "same socket"
        );
        let Frame::Rebuilt(text) = chain.frame_for(&second, 2, 1 << 20) else {
            panic!("not rebuilt");
        };
        let rebuilt: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            rebuilt,
            json!({"type": "response.create", "model": "m", "store": false, "instructions": "be brief", "input": [
                {"role": "user", "content": "hi"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
                {"role": "user", "content": "more"},
            ]})
        );
        chain.completed(Turn::of(&second), &response("r2", "ok"), 2, 1 << 20);
        let third = map(
            json!({"type": "response.create", "store": false, "previous_response_id": "r2", "input": "last"}),
        );
        let Frame::Rebuilt(text) = chain.frame_for(&third, 3, 1 << 20) else {
            panic!("not rebuilt");
        };
        let rebuilt: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(rebuilt["input"].as_array().unwrap().len(), 5);
        assert_eq!(
            rebuilt["input"][4],
            json!({"role": "user", "content": "last"})
        );
    }

    #[test]
    fn reasoning_is_replayed_only_with_its_encrypted_content() {
        let mut chain = Chain::default();
        let first = map(json!({"type": "response.create", "store": false, "input": "hi"}));
        let output = json!({"id": "r1", "output": [
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {"id": "rs_2", "type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        ]});
        chain.completed(Turn::of(&first), &output, 1, 1 << 20);
        let next = map(
            json!({"type": "response.create", "store": false, "previous_response_id": "r1", "input": "more"}),
        );
        let Frame::Rebuilt(text) = chain.frame_for(&next, 2, 1 << 20) else {
            panic!("not rebuilt");
        };
        let rebuilt: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            rebuilt["input"],
            json!([
                {"role": "user", "content": "hi"},
                {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
                {"role": "user", "content": "more"},
            ])
        );
    }

    #[test]
    fn each_lane_keeps_its_own_chain_and_the_bound_covers_them_all() {
        let mut chain = Chain::default();
        let create = |lane: &str, previous: Option<&str>, text: &str| {
            let mut frame = json!({"type": "response.create", "store": false, "stream_id": lane, "input": text});
            if let Some(previous) = previous {
                frame["previous_response_id"] = json!(previous);
            }
            map(frame)
        };
        chain.completed(
            Turn::of(&create("a", None, "a1")),
            &response("ra1", "A1"),
            1,
            1 << 20,
        );
        chain.completed(
            Turn::of(&create("b", None, "b1")),
            &response("rb1", "B1"),
            1,
            1 << 20,
        );
        let a2 = create("a", Some("ra1"), "a2");
        chain.completed(Turn::of(&a2), &response("ra2", "A2"), 1, 1 << 20);
        // Lane b's latest is still known after lane a moved on; each rebuilds its own history.
        let inputs = |frame: &Map<String, Value>| {
            let Frame::Rebuilt(text) = chain.frame_for(frame, 2, 1 << 20) else {
                panic!("not rebuilt");
            };
            let rebuilt: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(rebuilt["stream_id"], frame["stream_id"]);
            rebuilt["input"].as_array().unwrap().len()
        };
        assert_eq!(inputs(&create("b", Some("rb1"), "b2")), 3);
        assert_eq!(inputs(&create("a", Some("ra2"), "a3")), 5);
        // A fork of lane b's response on a new lane.
        assert_eq!(inputs(&create("c", Some("rb1"), "c1")), 3);
        // The bound is for all lanes together: a lane that alone would fit does not.
        let mut tight = Chain::default();
        let limit = 200;
        tight.completed(
            Turn::of(&create("a", None, &"x".repeat(60))),
            &response("ra1", "A1"),
            1,
            limit,
        );
        tight.completed(
            Turn::of(&create("b", None, &"y".repeat(60))),
            &response("rb1", "B1"),
            1,
            limit,
        );
        assert!(matches!(
            tight.frame_for(&create("a", Some("ra1"), "n"), 2, 1 << 20),
            Frame::Rebuilt(_)
        ));
        assert_eq!(
            tight.frame_for(&create("b", Some("rb1"), "n"), 2, 1 << 20),
            Frame::TooLarge
        );
    }

    #[test]
    fn stored_responses_unknown_ids_and_chains_over_the_bound_are_sent_as_they_came() {
        let mut chain = Chain::default();
        let stored = map(json!({"type": "response.create", "input": "hi"}));
        chain.completed(Turn::of(&stored), &response("r1", "hello"), 1, 1 << 20);
        let next =
            map(json!({"type": "response.create", "previous_response_id": "r1", "input": "x"}));
        assert_eq!(
            chain.frame_for(&next, 2, 1 << 20),
            Frame::AsItCame,
            "store defaults to true"
        );
        let other =
            map(json!({"type": "response.create", "previous_response_id": "r0", "input": "x"}));
        assert_eq!(chain.frame_for(&other, 2, 1 << 20), Frame::AsItCame);

        let big = map(json!({"type": "response.create", "store": false, "input": "x".repeat(100)}));
        chain.completed(Turn::of(&big), &response("r2", "hello"), 1, 64);
        let next = map(
            json!({"type": "response.create", "store": false, "previous_response_id": "r2", "input": "x"}),
        );
        assert_eq!(chain.frame_for(&next, 2, 1 << 20), Frame::TooLarge);
    }

    #[test]
    fn a_rebuilt_frame_over_the_frame_limit_is_too_large() {
        let mut chain = Chain::default();
        let first = map(json!({"type": "response.create", "store": false, "input": "hi"}));
        chain.completed(Turn::of(&first), &response("r1", "hello"), 1, 1 << 20);
        let next = map(
            json!({"type": "response.create", "store": false, "previous_response_id": "r1", "input": "x"}),
        );
        let Frame::Rebuilt(text) = chain.frame_for(&next, 2, 1 << 20) else {
            panic!("not rebuilt");
        };
        assert_eq!(
            chain.frame_for(&next, 2, text.len()),
            Frame::Rebuilt(text.clone())
        );
        assert_eq!(chain.frame_for(&next, 2, text.len() - 1), Frame::TooLarge);
    }
}
