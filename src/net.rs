//! Socket settings shared by the proxy and the simulator, and the TLS client configuration
//! shared by the upstream WebSockets and the REST client.
//!
//! Nagle's algorithm is off on every connection wsbridge accepts or opens: an event is written
//! as it comes, never held back waiting for an ACK (which costs up to 40 ms with delayed ACKs).

use std::net::SocketAddr;
use std::sync::Arc;

/// Turns Nagle's algorithm off on one connection (a failure is only logged: the connection
/// still works, a little slower).
pub fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// A listener whose accepted connections have Nagle's algorithm off, for `axum::serve`.
pub fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp| no_delay(tcp))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_builds_with_the_ring_provider() {
        assert!(tls_config().unwrap().alpn_protocols.is_empty());
    }
}
