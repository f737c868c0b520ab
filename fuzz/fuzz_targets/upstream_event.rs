//! An upstream WebSocket frame, as a turn would read it: whatever the bytes, wsbridge either
//! refuses the frame or writes exactly one well-formed SSE event that means the same JSON; an
//! error event always becomes an OpenAI-shaped error with a status and safe headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsbridge::protocol::OpenAiError;
use wsbridge::protocol::error::upstream_error_headers;
use wsbridge::protocol::event::{Admit, Envelope, TurnFilter};
use wsbridge::protocol::sse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Frames split at NUL: one turn's events in order.
    let mut filter = TurnFilter::default();
    let mut last = None;
    for frame in text.split('\0') {
        let Ok(admitted) = filter.admit(frame) else {
            assert!(Envelope::read(frame).is_err());
            continue;
        };
        let Admit::Relay(event) = admitted else {
            continue;
        };
        if let Some(sequence) = event.sequence {
            assert!(last.is_none_or(|last| sequence > last), "sequence numbers only go up");
            last = Some(sequence);
        }
        let framed = sse::frame(&event.kind, frame);
        let framed = std::str::from_utf8(&framed).expect("SSE is UTF-8");
        // Exactly one event: `event:` line, one `data:` line, blank line, nothing else.
        let body = framed.strip_suffix("\n\n").expect("ends with a blank line");
        let mut lines = body.split(['\n', '\r']);
        assert_eq!(lines.next(), Some(format!("event: {}", event.kind).as_str()));
        let data = lines.next().and_then(|line| line.strip_prefix("data: ")).expect("data line");
        assert!(lines.next().is_none(), "one data line");
        // Byte for byte, but for line breaks (whitespace in JSON) turned into spaces.
        assert_eq!(data, frame.replace(['\r', '\n'], " "));
        // JSON sets no range on numbers, serde_json's Value does (1e999): compare where it can.
        let Ok(sent) = serde_json::from_str::<Value>(frame) else {
            continue;
        };
        let relayed: Value = serde_json::from_str(data).expect("relayed data is JSON");
        assert_eq!(sent, relayed);
        if event.kind == "error" {
            let error = OpenAiError::from_upstream_event(&sent);
            assert!(error.status.is_client_error() || error.status.is_server_error());
            let _ = error.meaning();
            let headers = upstream_error_headers(&sent, &error);
            assert!(headers.keys().all(|name| {
                let name = name.as_str();
                name.starts_with("retry-after") || name.starts_with("x-ratelimit-") || name == "x-should-retry"
            }));
            let body: Value = serde_json::from_str(&error.rest_body()).expect("REST error is JSON");
            assert!(body["error"].is_object());
        }
    }
    if let Some(last) = last {
        assert!(filter.next_sequence() > last || last == u64::MAX);
    }
});
