//! Server-sent-event framing exactly as the Responses API writes it (PROTOCOL.md §4.2): one
//! `event:` line equal to the JSON `type`, one single-line `data:` line, a blank line.

use bytes::{BufMut, Bytes, BytesMut};

/// Frames one event. JSON with raw line breaks (legal whitespace, but it would end the `data:`
/// line) is re-serialised compactly first; everything else goes out byte for byte.
pub fn frame(event_type: &str, data: &str) -> Bytes {
    if data.contains(['\n', '\r']) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(data) {
            return frame(event_type, &value.to_string());
        }
    }
    let mut out = BytesMut::with_capacity(event_type.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(event_type.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
    out.freeze()
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
    fn multi_line_json_is_compacted_so_the_event_stays_one_data_line() {
        let framed = frame("x", "{\"type\":\"x\",\n \"a\": 1}");
        assert_eq!(&framed[..], b"event: x\ndata: {\"type\":\"x\",\"a\":1}\n\n");
    }

    #[test]
    fn event_type_reads_the_leading_type_key() {
        let fast = event_type(r#"{"type":"response.output_text.delta","delta":"x"}"#);
        assert_eq!(fast.as_deref(), Some("response.output_text.delta"));
        let slow = event_type(r#"{"delta":"x","type":"keepalive"}"#);
        assert_eq!(slow.as_deref(), Some("keepalive"));
        assert_eq!(event_type(r#"{"delta":"x"}"#), None);
    }
}
