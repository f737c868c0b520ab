//! The upstream side: WebSocket connections ([`socket`]), the per-credential [`pool`] of them,
//! and the TLS configuration shared with the REST client used for pass-through and fallback.

pub mod pool;
pub mod socket;

use std::sync::Arc;

/// One rustls client configuration (ring, Mozilla's roots via `webpki-roots`) for both the
/// WebSocket connector and the hyper client. No ALPN here: the hyper connector adds its own
/// (`h2`, `http/1.1`) to a copy, and WebSockets need HTTP/1.1.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

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

    #[test]
    fn tls_config_builds_with_the_ring_provider() {
        assert!(tls_config().unwrap().alpn_protocols.is_empty());
    }
}
