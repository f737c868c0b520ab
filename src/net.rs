//! Socket settings shared by the proxy and the simulator.
//!
//! Nagle's algorithm is off on every connection wsbridge accepts or opens: an event is written
//! as it comes, never held back waiting for an ACK (which costs up to 40 ms with delayed ACKs).

use std::net::SocketAddr;

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
