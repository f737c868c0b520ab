//! The upstream side: WebSocket connections ([`socket`]), the per-credential [`pool`] of them,
//! and the WebSocket URL of a REST base (the TLS configuration is in [`crate::net`]).

pub mod pool;
pub mod socket;

/// The WebSocket URL for a REST base: `https://h/v1` → `wss://h/v1/responses`.
pub fn websocket_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .map(|rest| ("wss://", rest))
        .or_else(|| base.strip_prefix("http://").map(|rest| ("ws://", rest)));
    match rest {
        Some((scheme, rest)) => format!("{scheme}{rest}/responses"),
        None => format!("{base}/responses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_maps_the_scheme_and_appends_responses() {
        assert_eq!(
            websocket_url("https://api.openai.com/v1"),
            "wss://api.openai.com/v1/responses"
        );
        assert_eq!(
            websocket_url("http://127.0.0.1:9100/v1/"),
            "ws://127.0.0.1:9100/v1/responses"
        );
    }
}
