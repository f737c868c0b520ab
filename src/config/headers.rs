//! `upstream.headers`: extra headers sent on every WebSocket handshake and every REST request
//! to the upstream (e.g. `OpenAI-Beta`), checked once at load time.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::setting::{Invalid, invalid};

const KEY: &str = "upstream.headers";

/// Headers wsbridge sets itself: the credential (from `auth` and `upstream.auth_header`),
/// and those that describe the connection or the WebSocket handshake.
const OWN: &[&str] = &[
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
];

/// The table as headers; a name or value HTTP cannot carry, or a header wsbridge sets
/// itself, is an error naming it.
pub(super) fn extra_headers(raw: &BTreeMap<String, String>) -> Result<HeaderMap, Invalid> {
    let mut headers = HeaderMap::new();
    for (name, value) in raw {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(KEY, format!("`{name}` is not a header name")))?;
        let lower = parsed.as_str();
        if OWN.contains(&lower) || lower.starts_with("sec-websocket-") {
            let why = if matches!(lower, "authorization" | "api-key") {
                "the key is the client's, or auth.mode = \"inject\" sends one, in the header \
                 upstream.auth_header names"
            } else if lower.starts_with("openai-") {
                "it is part of the client's credential and comes from the client"
            } else {
                "wsbridge sets it for each connection"
            };
            return Err(invalid(KEY, format!("`{name}` cannot be set here: {why}")));
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid(
                KEY,
                format!("the value of `{name}` is not a valid header value"),
            )
        })?;
        headers.insert(parsed, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn headers_are_kept_and_what_wsbridge_sets_is_refused_by_name() {
        let headers = extra_headers(&table(&[
            ("OpenAI-Beta", "responses_websockets=2026-02-06"),
            ("x-team", "a"),
        ]))
        .unwrap();
        assert_eq!(headers["openai-beta"], "responses_websockets=2026-02-06");
        assert_eq!(headers.len(), 2);
        for (name, value, why) in [
            ("Authorization", "Bearer x", "upstream.auth_header"),
            ("api-key", "x", "upstream.auth_header"),
            ("OpenAI-Project", "p", "comes from the client"),
            ("Sec-WebSocket-Protocol", "x", "sets it for each connection"),
            ("Host", "h", "sets it for each connection"),
            ("bad name", "x", "is not a header name"),
            ("x-ok", "line\nbreak", "not a valid header value"),
        ] {
            let error = extra_headers(&table(&[(name, value)])).unwrap_err();
            assert_eq!(error.key, KEY);
            assert!(error.message.contains(why), "{name}: {}", error.message);
        }
    }
}
