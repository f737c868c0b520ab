//! The byte stream under an upstream WebSocket ([`Transport`]) and how one is dialled
//! ([`Dial`]) (docs/architecture.md, "Pool").
//!
//! In the binary there is one way: TCP to the upstream's host, directly or through an HTTP
//! proxy's CONNECT tunnel (`net::Route`, docs/architecture.md, "Outbound proxy"), with TLS for
//! `wss://` (through tokio-tungstenite's `MaybeTlsStream` around the [`Transport`]). Unit tests add an in-memory
//! variant, so the pool can be driven by a fake upstream task on paused time. Both are enum
//! variants, not trait objects: with one variant compiled in, the match on every read and
//! write is gone after inlining.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, error::UrlError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::net::Outbound;

/// The connection an upstream WebSocket runs over.
#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
    /// One end of an in-memory pipe whose other end a test's fake upstream serves.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

/// An upstream WebSocket over a [`Transport`] (TLS or not).
pub type Stream = WebSocketStream<MaybeTlsStream<Transport>>;

/// How a connector reaches the upstream.
#[derive(Debug)]
pub enum Dial {
    /// TCP to the URL's host and port along the route; TLS with the configuration for
    /// `wss://` (no ALPN: the upgrade needs HTTP/1.1).
    Net(Outbound),
    /// Each connection is an in-memory pipe whose far end goes to this channel (a test's fake
    /// upstream accepts it).
    #[cfg(test)]
    Memory(tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>),
}

impl Dial {
    /// Opens the connection and performs the WebSocket handshake of `request`.
    pub async fn open(
        &self,
        request: Request,
        config: WebSocketConfig,
    ) -> Result<(Stream, Response), tungstenite::Error> {
        match self {
            Self::Net(outbound) => {
                let uri = request.uri();
                let host = uri.host().ok_or(UrlError::NoHostName)?;
                // An IPv6 literal comes bracketed in a URL, bare in an address.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri
                    .port_u16()
                    .or(match uri.scheme_str() {
                        Some("wss") => Some(443),
                        Some("ws") => Some(80),
                        _ => None,
                    })
                    .ok_or(UrlError::UnsupportedUrlScheme)?;
                let tcp = outbound.route.connect(host, port).await?;
                let tls = tokio_tungstenite::Connector::Rustls(outbound.tls.clone());
                tokio_tungstenite::client_async_tls_with_config(
                    request,
                    Transport::Tcp(tcp),
                    Some(config),
                    Some(tls),
                )
                .await
            }
            #[cfg(test)]
            Self::Memory(upstream) => {
                let (near, far) = tokio::io::duplex(64 << 10);
                upstream
                    .send(far)
                    .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
                tokio_tungstenite::client_async_tls_with_config(
                    request,
                    Transport::Memory(near),
                    Some(config),
                    Some(tokio_tungstenite::Connector::Plain),
                )
                .await
            }
        }
    }
}

/// Forwards one `poll_*` call to the variant in use.
macro_rules! forward {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Tcp($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            #[cfg(test)]
            Transport::Memory($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
        }
    };
}

impl AsyncRead for Transport {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, stream => stream.poll_write(cx, buf))
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, stream => stream.poll_write_vectored(cx, bufs))
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(stream) => stream.is_write_vectored(),
            #[cfg(test)]
            Self::Memory(stream) => stream.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_flush(cx))
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_shutdown(cx))
    }
}
