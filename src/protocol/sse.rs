//! Server-sent-event framing exactly as the Responses API writes it (docs/protocol.md, "SSE"):
//! one `event:` line equal to the JSON `type`, one single-line `data:` line, a blank line.
//!
//! No payload byte can end a line early: the only line terminators SSE knows are CR and LF,
//! and in valid JSON those occur only as whitespace between tokens (inside strings they must
//! be escaped), so [`frame`] turns each into a space and the event means exactly what the
//! upstream sent. Callers pass JSON that [`super::event::Envelope::read`] validated and an
//! event type it checked to hold no whitespace.

use bytes::{BufMut, Bytes, BytesMut};

/// Frames one event: the JSON goes out byte for byte, except that CR and LF (whitespace in
/// valid JSON) become spaces so the `data:` line cannot be split.
pub fn frame(event_type: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(event_type.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(event_type.as_bytes());
    out.put_slice(b"\ndata: ");
    let data = data.as_bytes();
    if has_line_break(data) {
        out.extend(data.iter().map(|&byte| match byte {
            b'\n' | b'\r' => b' ',
            other => other,
        }));
    } else {
        out.put_slice(data);
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Whether `data` holds a CR or an LF, in one pass: 16 bytes at a time with no branch inside
/// a block, which the compiler turns into vector compares (less than half the instructions
/// of two `contains` scans on event-sized frames).
fn has_line_break(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let found = block.iter().fold(0u8, |found, &byte| {
            found | u8::from(byte == b'\n') | u8::from(byte == b'\r')
        });
        if found != 0 {
            return true;
        }
    }
    blocks
        .remainder()
        .iter()
        .any(|&byte| byte == b'\n' || byte == b'\r')
}

/// An SSE comment line, ignored by every SDK decoder; used as a keep-alive.
pub const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// The `type` of a JSON event, read without parsing the rest of it when `type` is the first
/// key (as OpenAI and the simulator write it); otherwise the event is parsed. Event types hold
/// no escapes, so the fast path is exact.
pub fn event_type(json: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(rest) = json.strip_prefix("{\"type\":\"") {
        let len = rest.find('"')?;
        return Some(std::borrow::Cow::Borrowed(&rest[..len]));
    }
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(std::borrow::Cow::Owned(
        value.get("type")?.as_str()?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_event_then_data_then_blank_line() {
        let framed = frame("response.created", r#"{"type":"response.created"}"#);
        assert_eq!(
            &framed[..],
            b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n"
        );
    }

    #[test]
    fn line_breaks_between_json_tokens_become_spaces_so_the_event_stays_one_data_line() {
        let framed = frame("x", "{\"type\":\"x\",\r\n \"a\": 1}");
        assert_eq!(
            &framed[..],
            b"event: x\ndata: {\"type\":\"x\",   \"a\": 1}\n\n"
        );
    }

    #[test]
    fn a_line_break_is_found_wherever_it_is() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 200] {
            let clean = "a".repeat(len);
            assert!(!has_line_break(clean.as_bytes()), "{len}");
            for at in 0..len {
                for byte in [b'\n', b'\r'] {
                    let mut data = clean.clone().into_bytes();
                    data[at] = byte;
                    assert!(has_line_break(&data), "{len} {at} {byte}");
                }
            }
        }
    }

    #[test]
    fn event_type_reads_the_leading_type_key() {
        let fast = event_type(r#"{"type":"response.output_text.delta","delta":"x"}"#);
        assert_eq!(fast.as_deref(), Some("response.output_text.delta"));
        let slow = event_type(r#"{"delta":"x","type":"keepalive"}"#);
        assert_eq!(slow.as_deref(), Some("keepalive"));
        assert_eq!(event_type(r#"{"delta":"x"}"#), None);
    }

    /// An SSE decoder as the spec (and the SDKs) read a stream: lines end at CR, LF or CRLF;
    /// `event:`/`data:` fields, one optional space after the colon; a blank line dispatches.
    fn decode(stream: &str) -> Vec<(String, String)> {
        let mut events = Vec::new();
        let (mut event, mut data): (String, Vec<String>) = (String::new(), Vec::new());
        let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
        for line in normalised.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    events.push((std::mem::take(&mut event), data.join("\n")));
                    data.clear();
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            // Line breaks, SSE field names and blank lines inside strings.
            "(\\PC|\r|\n|event: x|data: y|\n\n){0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever JSON the upstream sends, compact or pretty-printed with any line ends,
        /// the SSE written for it decodes to exactly one event per frame, named by its type,
        /// whose data is the same JSON value.
        #[test]
        fn sse_output_decodes_to_exactly_the_upstream_events(
            events in proptest::collection::vec(
                ("[a-z]{1,10}(\\.[a-z_]{1,12}){0,3}", json_value(), 0u8..3), 1..6),
        ) {
            let mut stream = String::new();
            let mut sent = Vec::new();
            for (kind, payload, layout) in events {
                let value = serde_json::json!({"type": kind, "payload": payload});
                let text = match layout {
                    0 => value.to_string(),
                    1 => serde_json::to_string_pretty(&value).unwrap(),
                    _ => serde_json::to_string_pretty(&value).unwrap().replace('\n', "\r\n"),
                };
                let envelope = crate::protocol::event::Envelope::read(&text).unwrap();
                stream.push_str(std::str::from_utf8(&frame(&envelope.kind, &text)).unwrap());
                sent.push(value);
            }
            let decoded = decode(&stream);
            proptest::prop_assert_eq!(decoded.len(), sent.len());
            for ((event, data), value) in decoded.iter().zip(&sent) {
                proptest::prop_assert_eq!(event.as_str(), value["type"].as_str().unwrap());
                let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
                proptest::prop_assert_eq!(&parsed, value);
            }
        }
    }
}
