//! Socket settings shared by the proxy and the simulator, and how the upstream is reached
//! ([`Outbound`]): the TLS client configuration shared by the upstream WebSockets and the REST
//! client, with the roots it trusts (`upstream.tls_roots`, `upstream.ca_file`), and the route
//! to it, direct or through an HTTP proxy (`proxy`, `tunnel`).
//!
//! Nagle's algorithm is off on every connection wsbridge accepts or opens: an event is written
//! as it comes, never held back waiting for an ACK (which costs up to 40 ms with delayed ACKs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod client;
mod proxy;
mod tunnel;

pub use client::{RestClient, RouteConnector, rest_client};
pub use proxy::{NoProxy, ProxyServer, ProxySetting, ProxySource, Route};
pub use tunnel::TunnelError;

use axum::http::{HeaderMap, HeaderName, header};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

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

/// How every upstream connection is made: the route (direct or through a proxy) and the TLS
/// configuration for `https://` / `wss://` on top of it.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub tls: Arc<rustls::ClientConfig>,
    pub route: Route,
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), including any named in
/// `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// `upstream.tls_roots`: which certificate authorities the upstream's certificate may chain
/// to (docs/architecture.md, "Upstream TLS").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRoots {
    /// Mozilla's roots, compiled in (`webpki-roots`): the same on every machine.
    Webpki,
    /// The operating system's store (`rustls-native-certs`; `SSL_CERT_FILE` / `SSL_CERT_DIR`
    /// replace it, as for OpenSSL).
    Native,
    /// Both: a public upstream verifies even where the OS store is empty (a minimal
    /// container), and a CA the machine's owner installed (a corporate TLS inspector) is
    /// trusted as curl and the system's tools trust it.
    #[default]
    Both,
}

/// A PEM bundle of extra trusted CAs (`upstream.ca_file`), read and checked at load time.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads `path`; an unreadable file, a malformed PEM block, a certificate rustls cannot
    /// use as a trust anchor, or a file with no certificate at all is an error naming the path.
    pub fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read(path).map_err(|error| format!("cannot read {shown}: {error}"))?;
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("{shown} is not a PEM file: {error}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)"
            ));
        }
        let mut check = rustls::RootCertStore::empty();
        for (n, cert) in certs.iter().enumerate() {
            check.add(cert.clone()).map_err(|error| {
                format!("certificate {} in {shown} is not usable: {error}", n + 1)
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            certs,
        })
    }
}

/// What the upstream's certificate is checked against: `upstream.tls_roots` plus
/// `upstream.ca_file`.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub roots: TlsRoots,
    pub ca_file: Option<CaBundle>,
}

/// Why no TLS client configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "upstream.tls_roots = \"native\" found no usable certificate in the OS trust store \
         ({0}); set SSL_CERT_FILE, upstream.ca_file, or tls_roots = \"both\""
    )]
    NoNativeRoots(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// One rustls client configuration (ring, the roots of [`Trust`]) for both the WebSocket
/// connector and the hyper client. No ALPN here: the hyper connector adds its own (`h2`,
/// `http/1.1`) to a copy, and WebSockets need HTTP/1.1.
pub fn tls_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(root_store(trust)?)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trusted roots; logs how many came from where.
fn root_store(trust: &Trust) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if trust.roots != TlsRoots::Native {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let webpki = roots.len();
    let mut native = 0;
    if trust.roots != TlsRoots::Webpki {
        let found = rustls_native_certs::load_native_certs();
        let problems: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        if !problems.is_empty() {
            tracing::warn!(?problems, "some of the OS trust store could not be read");
        }
        (native, _) = roots.add_parsable_certificates(found.certs);
        if native == 0 && trust.roots == TlsRoots::Native && trust.ca_file.is_none() {
            let why = problems.first().cloned();
            return Err(TlsError::NoNativeRoots(
                why.unwrap_or_else(|| "it is empty".into()),
            ));
        }
    }
    if let Some(bundle) = &trust.ca_file {
        for cert in &bundle.certs {
            roots.add(cert.clone())?;
        }
    }
    tracing::info!(
        tls_roots = %trust.roots,
        webpki,
        native,
        ca_file = ?trust.ca_file.as_ref().map(|bundle| &bundle.path),
        ca_file_certs = trust.ca_file.as_ref().map_or(0, |bundle| bundle.certs.len()),
        "upstream TLS roots loaded"
    );
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_builds_with_the_ring_provider() {
        let webpki = Trust {
            roots: TlsRoots::Webpki,
            ca_file: None,
        };
        assert!(tls_config(&webpki).unwrap().alpn_protocols.is_empty());
    }
}
