//! What wsbridge reads of an upstream event: its `type`, `sequence_number` and the id of the
//! response it belongs to ([`Envelope`]), in one validating pass over the JSON that builds no
//! tree. Everything else is skipped (and so checked to be JSON) but never copied.
//!
//! [`TurnFilter`] then decides which of a socket's events belong to the turn being relayed
//! (docs/protocol.md, "Upstream events"): the upstream's bytes are trusted to be JSON only
//! after [`Envelope::read`] said so, and an event from another response, or one whose
//! sequence number goes backwards, never reaches the client.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The fields of one upstream event that routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `type`: non-empty, without whitespace or control characters (so it fits an SSE
    /// `event:` line as it is).
    pub kind: Cow<'a, str>,
    /// `sequence_number`, when it is a non-negative integer.
    pub sequence: Option<u64>,
    /// The response the event belongs to: `response.id` (lifecycle events) or a top-level
    /// `response_id`.
    pub response_id: Option<Cow<'a, str>>,
}

/// Why an upstream frame is not an event wsbridge can relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("the upstream sent a frame that is not a JSON object ({0})")]
    NotJson(String),
    #[error("the upstream sent an event without a string `type`")]
    NoType,
    #[error("the upstream sent an event whose `type` holds whitespace or control characters")]
    BadType,
}

impl<'a> Envelope<'a> {
    /// Reads and validates one frame: it must be one JSON object with a usable `type`.
    pub fn read(text: &'a str) -> Result<Self, InvalidEvent> {
        // serde would also take an array as a struct (field by position).
        if !text.trim_start().starts_with('{') {
            return Err(InvalidEvent::NotJson("not an object".into()));
        }
        let raw: RawEnvelope<'a> =
            serde_json::from_str(text).map_err(|error| InvalidEvent::NotJson(error.to_string()))?;
        let kind = raw
            .kind
            .and_then(|kind| kind.0)
            .ok_or(InvalidEvent::NoType)?;
        if kind.is_empty() || kind.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEvent::BadType);
        }
        Ok(Self {
            kind,
            sequence: raw.sequence.and_then(|n| n.0),
            response_id: raw
                .response
                .and_then(|r| r.0)
                .or(raw.response_id.and_then(|id| id.0)),
        })
    }

    /// `response.completed`, `response.failed`, `response.incomplete`: the turn is over.
    pub fn is_terminal_response(&self) -> bool {
        matches!(
            &*self.kind,
            "response.completed" | "response.failed" | "response.incomplete"
        )
    }
}

/// The wire form. Duplicate keys are rejected by serde (an event that says two things is not
/// relayed); any other field is skipped.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<MaybeText<'a>>,
    #[serde(rename = "sequence_number", default)]
    sequence: Option<Counter>,
    #[serde(borrow, default)]
    response: Option<ResponseId<'a>>,
    #[serde(borrow, default)]
    response_id: Option<MaybeText<'a>>,
}

/// Any JSON value; `Some` when it is a string (borrowed when it holds no escapes).
struct MaybeText<'a>(Option<Cow<'a, str>>);

/// Any JSON value; `Some` when it is a non-negative integer.
struct Counter(Option<u64>);

/// Any JSON value; `Some(id)` when it is an object with a string `id`.
struct ResponseId<'a>(Option<Cow<'a, str>>);

/// Accepts every JSON value, keeping strings (borrowed where possible), integers or an
/// object's `id` as `T` asks.
struct Lenient<T>(std::marker::PhantomData<T>);

macro_rules! skip_other_values {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

impl<'de> Visitor<'de> for Lenient<Option<Cow<'de, str>>> {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(text)))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(text.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    skip_other_values!();
}

impl<'de> Visitor<'de> for Lenient<Option<u64>> {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    skip_other_values!();
}

/// The `id` of a `response` object.
struct IdOf;

impl<'de> Visitor<'de> for IdOf {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        while let Some(key) = map.next_key::<MaybeText<'de>>()? {
            if key.0.as_deref() == Some("id") && id.is_none() {
                id = map.next_value::<MaybeText<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(id)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    skip_other_values!();
}

impl<'de: 'a, 'a> Deserialize<'de> for MaybeText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Lenient::<Option<Cow<'de, str>>>(std::marker::PhantomData))
            .map(MaybeText)
    }
}

impl<'de> Deserialize<'de> for Counter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Lenient::<Option<u64>>(std::marker::PhantomData))
            .map(Counter)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ResponseId<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdOf).map(ResponseId)
    }
}

/// Why an event of the socket was not relayed as part of the current turn.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Dropped {
    /// It came before this turn's `response.created` (a late event of an earlier turn).
    BeforeCreated,
    /// It names another response than the one this turn created.
    OtherResponse,
    /// Its `sequence_number` is not above the last one relayed.
    Sequence,
}

/// What [`TurnFilter::admit`] decided for one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<'a> {
    /// Part of the turn: relay it.
    Relay(Envelope<'a>),
    /// A `keepalive` before the response started: says nothing, skip it.
    Skip,
    /// Not part of the turn: drop it (and count it).
    Drop(Dropped),
}

/// Keeps one turn's event stream consistent: nothing before its `response.created` but an
/// `error`, nothing of another response, sequence numbers only going up.
#[derive(Debug, Default, Clone)]
pub struct TurnFilter {
    started: bool,
    response_id: Option<String>,
    last_sequence: Option<u64>,
}

impl TurnFilter {
    /// Decides for one frame; `Err` when the frame cannot be relayed at all.
    pub fn admit<'a>(&mut self, text: &'a str) -> Result<Admit<'a>, InvalidEvent> {
        let event = Envelope::read(text)?;
        if !self.started {
            match &*event.kind {
                "response.created" => {
                    self.started = true;
                    self.response_id = event.response_id.as_deref().map(str::to_owned);
                }
                "error" => {}
                "keepalive" => return Ok(Admit::Skip),
                _ => return Ok(Admit::Drop(Dropped::BeforeCreated)),
            }
        } else if let (Some(ours), Some(theirs)) = (&self.response_id, &event.response_id)
            && ours != theirs
        {
            return Ok(Admit::Drop(Dropped::OtherResponse));
        }
        if let Some(sequence) = event.sequence {
            if self.last_sequence.is_some_and(|last| sequence <= last) {
                return Ok(Admit::Drop(Dropped::Sequence));
            }
            self.last_sequence = Some(sequence);
        }
        Ok(Admit::Relay(event))
    }

    /// The sequence number for an event wsbridge adds to the stream itself (one above the
    /// last relayed).
    pub fn next_sequence(&self) -> u64 {
        self.last_sequence.map_or(0, |last| last.saturating_add(1))
    }

    /// The id of the response this turn created, once `response.created` was relayed.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_reads_type_sequence_and_response_id() {
        let created = Envelope::read(
            r#"{"type":"response.created","sequence_number":0,"response":{"object":"response","id":"resp_1","output":[{"id":"x"}]}}"#,
        )
        .unwrap();
        assert_eq!(created.kind, "response.created");
        assert_eq!(created.sequence, Some(0));
        assert_eq!(created.response_id.as_deref(), Some("resp_1"));
        let delta = Envelope::read(
            r#"{"delta":"a","sequence_number":7,"type":"response.output_text.delta"}"#,
        )
        .unwrap();
        assert_eq!(
            (delta.kind.as_ref(), delta.sequence),
            ("response.output_text.delta", Some(7))
        );
        assert_eq!(delta.response_id, None);
        let inject =
            Envelope::read(r#"{"type":"response.inject.created","response_id":"resp_2"}"#).unwrap();
        assert_eq!(inject.response_id.as_deref(), Some("resp_2"));
    }

    #[test]
    fn loose_field_types_are_tolerated_not_trusted() {
        let event =
            Envelope::read(r#"{"type":"x","sequence_number":"4","response":null,"response_id":5}"#)
                .unwrap();
        assert_eq!((event.sequence, event.response_id), (None, None));
        let event = Envelope::read(r#"{"type":"x","sequence_number":-1,"response":[1]}"#).unwrap();
        assert_eq!(event.sequence, None);
    }

    #[test]
    fn frames_that_are_not_one_json_object_with_a_clean_type_are_invalid() {
        for bad in [
            "not json",
            r#"{"type":"x"} trailing"#,
            r#"{"type":"x","a":}"#,
            "[1,2]",
            r#"{"type":"a","type":"b"}"#,
        ] {
            assert!(
                matches!(Envelope::read(bad), Err(InvalidEvent::NotJson(_))),
                "{bad}"
            );
        }
        assert_eq!(Envelope::read(r#"{"a":1}"#), Err(InvalidEvent::NoType));
        assert_eq!(
            Envelope::read(r#"{"type":"x\nevent: response.completed"}"#),
            Err(InvalidEvent::BadType)
        );
        assert_eq!(Envelope::read(r#"{"type":""}"#), Err(InvalidEvent::BadType));
    }

    #[test]
    fn pretty_printed_json_is_valid() {
        let event =
            Envelope::read("{\n  \"type\": \"response.created\",\r\n  \"sequence_number\": 0\n}")
                .unwrap();
        assert_eq!(event.kind, "response.created");
    }

    #[test]
    fn nothing_but_error_before_response_created() {
        let mut filter = TurnFilter::default();
        assert_eq!(
            filter.admit(r#"{"type":"response.output_text.delta","sequence_number":9}"#),
            Ok(Admit::Drop(Dropped::BeforeCreated))
        );
        assert_eq!(filter.admit(r#"{"type":"keepalive"}"#), Ok(Admit::Skip));
        assert!(matches!(
            filter.admit(r#"{"type":"error","status":400,"error":{}}"#),
            Ok(Admit::Relay(_))
        ));
        assert!(matches!(
            filter
                .admit(r#"{"type":"response.created","sequence_number":0,"response":{"id":"r1"}}"#),
            Ok(Admit::Relay(_))
        ));
        assert_eq!(filter.response_id(), Some("r1"));
    }

    #[test]
    fn other_responses_and_backward_sequence_numbers_are_dropped() {
        let mut filter = TurnFilter::default();
        filter
            .admit(r#"{"type":"response.created","sequence_number":0,"response":{"id":"r1"}}"#)
            .unwrap();
        assert!(matches!(
            filter.admit(
                r#"{"type":"response.in_progress","sequence_number":1,"response":{"id":"r1"}}"#
            ),
            Ok(Admit::Relay(_))
        ));
        assert_eq!(
            filter.admit(
                r#"{"type":"response.completed","sequence_number":2,"response":{"id":"r0"}}"#
            ),
            Ok(Admit::Drop(Dropped::OtherResponse))
        );
        assert_eq!(
            filter.admit(r#"{"type":"response.output_text.delta","sequence_number":1}"#),
            Ok(Admit::Drop(Dropped::Sequence))
        );
        assert!(matches!(
            filter.admit(r#"{"type":"response.output_text.delta","sequence_number":5}"#),
            Ok(Admit::Relay(_))
        ));
        assert_eq!(filter.next_sequence(), 6);
        assert_eq!(
            filter.admit(r#"{"type":"response.output_text.delta","sequence_number":5}"#),
            Ok(Admit::Drop(Dropped::Sequence))
        );
        assert!(matches!(
            filter.admit(r#"{"type":"response.output_text.delta"}"#),
            Ok(Admit::Relay(_))
        ));
    }
}
