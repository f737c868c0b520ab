//! The HTTP client for pass-through and the REST fallback ([`rest_client`]) and the connector
//! under it ([`RouteConnector`]), which takes the upstream's route (docs/architecture.md,
//! "Network").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{Outbound, Route};

/// hyper's client over rustls over [`RouteConnector`].
pub type RestClient = Client<hyper_rustls::HttpsConnector<RouteConnector>, Body>;

/// The HTTP client for pass-through and REST fallback, along the upstream's route: h2 when the
/// upstream offers it through ALPN, else HTTP/1.1 (rustls).
pub fn rest_client(outbound: &Outbound, connect_timeout: Duration) -> RestClient {
    // Nagle off upstream too: a request head and its body (or a small SSE chunk) must not
    // wait for an ACK.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = RouteConnector {
        http,
        route: outbound.route.clone(),
        timeout: connect_timeout,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*outbound.tls).clone())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(connector);
    // Every pass-through request of an h2 upstream shares one connection: with hyper's fixed
    // windows (5 MiB for the connection), a few clients that read slowly (a large file
    // download) would hold the connection's window and stall every other stream on it. The
    // adaptive window grows with the measured bandwidth-delay product instead.
    Client::builder(TokioExecutor::new())
        .http2_adaptive_window(true)
        .build(https)
}

/// The connector under hyper-rustls for the REST client: hyper's `HttpConnector` to the
/// upstream, or [`Route::connect`] through the proxy (within `timeout`).
/// hyper-rustls then runs TLS (with ALPN `h2`, `http/1.1`) on what this returns.
#[derive(Debug, Clone)]
pub struct RouteConnector {
    http: HttpConnector,
    route: Route,
    timeout: Duration,
}

impl tower_service::Service<Uri> for RouteConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.http.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        if self.route == Route::Direct {
            let connect = self.http.call(target);
            return Box::pin(async move { connect.await.map_err(io::Error::other) });
        }
        let route = self.route.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let host = target.host().ok_or_else(|| io::Error::other("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let secure = target.scheme_str() == Some("https");
            let port = target.port_u16().unwrap_or(if secure { 443 } else { 80 });
            match tokio::time::timeout(timeout, route.connect(host, port)).await {
                Ok(tcp) => Ok(TokioIo::new(tcp?)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting through the proxy timed out after {timeout:?}"),
                )),
            }
        })
    }
}
