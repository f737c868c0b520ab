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
    if data.contains(&b'\n') || data.contains(&b'\r') {
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
    fn event_type_reads_the_leading_type_key() {
        let fast = event_type(r#"{"type":"response.output_text.delta","delta":"x"}"#);
        assert_eq!(fast.as_deref(), Some("response.output_text.delta"));
        let slow = event_type(r#"{"delta":"x","type":"keepalive"}"#);
        assert_eq!(slow.as_deref(), Some("keepalive"));
        assert_eq!(event_type(r#"{"delta":"x"}"#), None);
    }
}
