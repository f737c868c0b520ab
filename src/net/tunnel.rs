//! Opening the TCP connection under an upstream WebSocket or REST request along a [`Route`]:
//! straight to the upstream, or to an HTTP proxy that is asked to `CONNECT` to it
//! (docs/architecture.md, "Outbound proxy"). TLS for `https://` / `wss://` runs inside the
//! tunnel, end to end with the upstream; the proxy only relays bytes.
//!
//! Every connection resolves its host afresh (`TcpStream::connect` and hyper's
//! `HttpConnector` both call the system resolver each time; nothing here caches an address).

use std::io;

use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proxy::{ProxyServer, Route};

/// Why a proxy did not open a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the proxy {proxy}: {cause}")]
    Unreachable { proxy: String, cause: io::Error },
    /// The proxy answered the CONNECT with a status other than 2xx (407: its credentials are
    /// missing or wrong; 403: the target is not allowed; 502: it cannot reach the target).
    #[error("proxy refused CONNECT: {status} {reason} (proxy {proxy}, target {target})")]
    Refused {
        status: u16,
        reason: String,
        proxy: String,
        target: String,
    },
    #[error("proxy {proxy} broke the CONNECT exchange: {why}")]
    Malformed { proxy: String, why: String },
}

impl TunnelError {
    /// True when `error` is a proxy's 4xx answer to a CONNECT (407, 403): the proxy's
    /// decision, which a retry would meet again.
    pub fn refused_for_good(error: &io::Error) -> bool {
        let tunnel = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Self>());
        matches!(tunnel, Some(Self::Refused { status, .. }) if (400..500).contains(status))
    }
}

impl From<TunnelError> for io::Error {
    fn from(error: TunnelError) -> Self {
        let kind = match &error {
            TunnelError::Unreachable { cause, .. } => cause.kind(),
            _ => io::ErrorKind::ConnectionRefused,
        };
        io::Error::new(kind, error)
    }
}

/// The largest CONNECT answer head read; a proxy's is a few hundred bytes.
const MAX_ANSWER_HEAD: usize = 16 << 10;

impl Route {
    /// A TCP connection to `host:port` (an IPv6 literal without brackets), through the proxy
    /// when there is one. Nagle is off on it.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        match self {
            Self::Direct => {
                let tcp = TcpStream::connect((host, port)).await?;
                super::no_delay(&tcp);
                Ok(tcp)
            }
            Self::Tunnel(proxy) => {
                let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
                    .await
                    .map_err(|cause| TunnelError::Unreachable {
                        proxy: proxy.to_string(),
                        cause,
                    })?;
                super::no_delay(&tcp);
                open_tunnel(&mut tcp, proxy, host, port).await?;
                Ok(tcp)
            }
        }
    }
}

/// Asks the proxy on `tcp` to CONNECT to `host:port` and reads its answer. On success the
/// connection is a byte pipe to the target; nothing of the target's has been read yet (the
/// client speaks first in TLS and HTTP, so a proxy sends nothing after its 2xx head).
pub async fn open_tunnel(
    tcp: &mut TcpStream,
    proxy: &ProxyServer,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = proxy.authorization() {
        head.push_str("Proxy-Authorization: ");
        head.push_str(authorization);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let broken = |why: String| TunnelError::Malformed {
        proxy: proxy.to_string(),
        why,
    };
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|error| broken(format!("writing the request: {error}")))?;
    let mut answer = Vec::with_capacity(512);
    let end = loop {
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if answer.len() > MAX_ANSWER_HEAD {
            return Err(broken(format!(
                "an answer head over {MAX_ANSWER_HEAD} bytes"
            )));
        }
        let mut chunk = [0u8; 1024];
        let read = tcp
            .read(&mut chunk)
            .await
            .map_err(|error| broken(format!("reading the answer: {error}")))?;
        if read == 0 {
            return Err(broken("it closed the connection before answering".into()));
        }
        answer.extend_from_slice(&chunk[..read]);
    };
    let status = status_of(&answer[..end]).ok_or_else(|| broken("no HTTP status line".into()))?;
    if !status.is_success() {
        return Err(TunnelError::Refused {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_owned(),
            proxy: proxy.to_string(),
            target,
        });
    }
    if end < answer.len() {
        return Err(broken(
            "it sent data after its 2xx answer, before the target spoke".into(),
        ));
    }
    Ok(())
}

/// The status of an `HTTP/1.x SSS reason` line.
fn status_of(head: &[u8]) -> Option<StatusCode> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut words = line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    StatusCode::from_bytes(words.next()?.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot proxy that reads the CONNECT head, answers `answer` and hands back the head.
    async fn proxy_answering(
        answer: &'static [u8],
    ) -> (ProxyServer, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server =
            ProxyServer::parse(&format!("http://us%3Aer:pa%20ss@127.0.0.1:{port}")).unwrap();
        let head = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            tcp.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (server, head)
    }

    #[tokio::test]
    async fn connect_names_the_target_and_sends_the_decoded_credentials() {
        let (server, head) = proxy_answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let route = Route::Tunnel(std::sync::Arc::new(server));
        route.connect("::1", 443).await.unwrap();
        // base64("us:er:pa ss")
        assert_eq!(
            head.await.unwrap(),
            "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\
             Proxy-Authorization: Basic dXM6ZXI6cGEgc3M=\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_refusal_names_the_status_and_the_proxy_without_its_credentials() {
        let (server, _head) =
            proxy_answering(b"HTTP/1.0 403 Go Away\r\ncontent-length: 0\r\n\r\n").await;
        let error = Route::Tunnel(std::sync::Arc::new(server.clone()))
            .connect("upstream.example", 443)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "proxy refused CONNECT: 403 Forbidden (proxy http://***@127.0.0.1:{}, target \
                 upstream.example:443)",
                server.port
            )
        );
    }

    #[tokio::test]
    async fn a_broken_answer_or_an_absent_proxy_is_an_error_saying_so() {
        for (answer, says) in [
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "no HTTP status line"),
            (
                b"HTTP/1.1 200 OK\r\n\r\nearly",
                "sent data after its 2xx answer",
            ),
        ] {
            let (server, _head) = proxy_answering(answer).await;
            let error = Route::Tunnel(std::sync::Arc::new(server))
                .connect("upstream.example", 443)
                .await
                .unwrap_err();
            assert!(error.to_string().contains(says), "{error}");
        }
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let server = ProxyServer::parse(&format!("http://u:secret@127.0.0.1:{port}")).unwrap();
        let error = Route::Tunnel(std::sync::Arc::new(server))
            .connect("upstream.example", 443)
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("cannot reach the proxy http://***@127.0.0.1:"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }
}
