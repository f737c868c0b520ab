//! One upstream WebSocket ([`Socket`]) and how it is opened ([`Connector`]).
//!
//! A socket is a plain value with one owner at a time: the pool's idle watcher while it waits,
//! the request that leased it during a turn. Events are read as text frames and handed on as
//! they came ([`Utf8Bytes`] shares the received buffer), so nothing is re-serialised.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::transport::{Dial, Stream};
use crate::auth::Credential;
use crate::continuation::Head;
use crate::net::{Outbound, TunnelError};
pub use crate::outcome::CloseReason;

/// An open upstream WebSocket.
#[derive(Debug)]
pub struct Socket {
    id: u64,
    ws: Stream,
    opened: Instant,
    turns: u64,
    /// The last completed turn, which the upstream holds in this socket's memory.
    head: Option<Head>,
    /// When the last ping went out, and whether its pong is still due.
    pinged: Option<Instant>,
    awaiting_pong: bool,
    /// This socket's span: its lifecycle events (opened, leased, closed) are logged in it.
    span: tracing::Span,
    /// The largest message read so far, in bytes.
    largest_message: usize,
    /// The close frame the upstream sent, if it closed with one (a relay forwards it).
    peer_close: Option<CloseFrame>,
    /// The close frame [`Socket::close`] sends (none: a plain close).
    close_frame: Option<CloseFrame>,
}

/// A socket that received a message larger than this is closed after its turn instead of
/// going back to the pool: the WebSocket layer's read buffer grew to the message's size and
/// is never shrunk, so keeping the socket would keep that memory for as long as it lives.
pub const LARGE_MESSAGE_BYTES: usize = 1 << 20;

/// What reading a socket produced.
#[derive(Debug)]
pub enum Inbound {
    /// One JSON event, as the upstream wrote it.
    Event(Utf8Bytes),
    /// A control frame was handled (ping answered, pong seen); nothing for the caller.
    Control,
    /// The socket is finished.
    Closed(CloseReason),
}

impl Socket {
    /// A process-unique number, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The span that socket events are logged in (`upstream_socket{socket, credential}`).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Turns started on this socket (0 for a pre-warmed one).
    pub fn turns(&self) -> u64 {
        self.turns
    }

    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Replaces the head: `Some` after a completed turn, `None` when the upstream may no longer
    /// hold it (a failed turn, a turn for another conversation).
    pub fn set_head(&mut self, head: Option<Head>) {
        self.head = head;
    }

    /// True when the socket read a message over [`LARGE_MESSAGE_BYTES`].
    pub fn holds_large_buffer(&self) -> bool {
        self.largest_message > LARGE_MESSAGE_BYTES
    }

    /// The close frame the upstream closed this socket with, once [`Socket::read`] saw it.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }

    /// The code and reason [`Socket::close`] sends: a relayed client's own close frame.
    pub fn set_close_frame(&mut self, frame: CloseFrame) {
        self.close_frame = Some(frame);
    }

    /// Sends a client's frame as it came, whatever it is (a relayed client socket's events);
    /// a `response.create` counts a turn.
    pub async fn forward(
        &mut self,
        message: Message,
        creates_turn: bool,
    ) -> Result<(), tungstenite::Error> {
        if creates_turn {
            self.turns += 1;
        }
        self.ws.send(message).await
    }

    /// Sends one client event (a `response.create` frame) and counts a turn.
    pub async fn send(&mut self, frame: Utf8Bytes) -> Result<(), tungstenite::Error> {
        self.turns += 1;
        self.ws.send(Message::Text(frame)).await
    }

    /// Reads the next frame. Pings are answered by tungstenite while reading; a pong settles
    /// the keep-alive ping, whichever reader saw it (the idle watcher or a turn).
    pub async fn read(&mut self) -> Inbound {
        match self.ws.next().await {
            Some(Ok(Message::Text(text))) => {
                self.largest_message = self.largest_message.max(text.len());
                Inbound::Event(text)
            }
            Some(Ok(Message::Pong(_))) => {
                self.awaiting_pong = false;
                Inbound::Control
            }
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => Inbound::Control,
            Some(Ok(Message::Binary(_))) => Inbound::Closed(CloseReason::ProtocolError),
            Some(Ok(Message::Close(frame))) => {
                self.peer_close = frame;
                Inbound::Closed(CloseReason::ServerClosed)
            }
            Some(Err(_)) | None => Inbound::Closed(CloseReason::ServerClosed),
        }
    }

    /// The next event, skipping control frames; `Err` when the socket is finished.
    pub async fn next_event(&mut self) -> Result<Utf8Bytes, CloseReason> {
        loop {
            match self.read().await {
                Inbound::Event(text) => return Ok(text),
                Inbound::Control => {}
                Inbound::Closed(reason) => return Err(reason),
            }
        }
    }

    /// Reads what an idle socket has received, without waiting: pings are answered, pongs
    /// noted, keep-alives ignored. `Err` when the socket is finished: closed, reporting
    /// `websocket_connection_limit_reached`, or sending an event no turn asked for.
    pub fn drain(&mut self) -> Result<(), CloseReason> {
        while let Some(inbound) = self.read().now_or_never() {
            match inbound {
                Inbound::Control => {}
                Inbound::Closed(reason) => return Err(reason),
                Inbound::Event(text) => {
                    if text.contains("websocket_connection_limit_reached") {
                        return Err(CloseReason::LimitReached);
                    }
                    if crate::protocol::sse::event_type(&text).as_deref() != Some("keepalive") {
                        self.span.in_scope(|| {
                            tracing::warn!("unexpected event on an idle upstream socket");
                        });
                        return Err(CloseReason::ProtocolError);
                    }
                }
            }
        }
        // Pongs tungstenite queued while reading go out now (or with the next write).
        if let Some(Err(_)) = self.ws.flush().now_or_never() {
            return Err(CloseReason::ServerClosed);
        }
        Ok(())
    }

    /// Pings an idle socket every `every`; a ping still unanswered when the next is due means
    /// the peer is gone. Never waits.
    pub fn keep_alive(&mut self, every: Duration) -> Result<(), CloseReason> {
        let due = self.pinged.is_none_or(|at| at.elapsed() >= every);
        if !due {
            return Ok(());
        }
        if self.awaiting_pong {
            return Err(CloseReason::PingTimeout);
        }
        // `None` (queued behind a full socket buffer) is fine: it goes out with the next write.
        if let Some(Err(_)) = self.ws.send(Message::Ping(Bytes::new())).now_or_never() {
            return Err(CloseReason::ServerClosed);
        }
        self.pinged = Some(Instant::now());
        self.awaiting_pong = true;
        Ok(())
    }

    /// Closes politely (a close frame, briefly waiting for the reply), then drops the socket.
    pub async fn close(mut self) {
        let frame = self.close_frame.take();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(frame)).await;
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The upstream answered the upgrade with an HTTP status instead of 101.
    Refused {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// DNS, TCP, TLS or the handshake failed.
    Failed(String),
    /// The outbound proxy refused the tunnel with a 4xx (its credentials, its rules): another
    /// attempt would be refused alike, and repeated wrong credentials can lock an account.
    ProxyRefused(String),
    /// The upstream's TLS certificate was refused (an unknown issuer, expired, for another
    /// name): another attempt meets the same certificate.
    Certificate(String),
    /// No upgrade within `upstream.connect_timeout`.
    TimedOut,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { status, .. } => write!(f, "upgrade refused with {status}"),
            Self::Failed(message) | Self::ProxyRefused(message) | Self::Certificate(message) => {
                write!(f, "connect failed: {message}")
            }
            Self::TimedOut => f.write_str("connect timed out"),
        }
    }
}

/// Opens upstream WebSockets to one URL.
#[derive(Debug)]
pub struct Connector {
    url: String,
    /// `upstream.headers`, on every handshake (the credential's headers go on top).
    headers: HeaderMap,
    dial: Dial,
    timeout: Duration,
    max_message_bytes: usize,
    next_id: AtomicU64,
}

impl Connector {
    pub fn new(
        url: String,
        outbound: Outbound,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        Self::with_dial(url, Dial::Net(outbound), timeout, max_message_bytes)
    }

    /// A connector that reaches the upstream through `dial` (tests dial in memory).
    pub(super) fn with_dial(
        url: String,
        dial: Dial,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            url,
            headers: HeaderMap::new(),
            dial,
            timeout,
            max_message_bytes,
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends `headers` on every handshake.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects and upgrades with `credential`'s headers, within the connect timeout.
    pub async fn connect(&self, credential: &Credential) -> Result<Socket, ConnectError> {
        self.connect_with_query(credential, None).await
    }

    /// The base URL's own query followed by those parameters of a client's `query` it does
    /// not have; `None` when that is just the base URL's own (what pooled sockets use).
    pub fn merged_query(&self, query: &str) -> Option<String> {
        let base_query = self.url.split_once('?').map(|(_, q)| q);
        crate::config::merge_queries(base_query, Some(query))
            .filter(|merged| Some(merged.as_str()) != base_query)
    }

    /// [`Connector::connect`] with `query` appended to the URL (a relayed client's query
    /// string, kept as it asked).
    pub async fn connect_with_query(
        &self,
        credential: &Credential,
        query: Option<&str>,
    ) -> Result<Socket, ConnectError> {
        // The base URL's own query (e.g. Azure's `api-version`) comes first, as on REST.
        let url = match query.and_then(|query| self.merged_query(query)) {
            Some(merged) => {
                let path = self
                    .url
                    .split_once('?')
                    .map_or(self.url.as_str(), |(p, _)| p);
                std::borrow::Cow::Owned(format!("{path}?{merged}"))
            }
            None => std::borrow::Cow::Borrowed(self.url.as_str()),
        };
        let mut request = url
            .as_ref()
            .into_client_request()
            .map_err(|error| ConnectError::Failed(error.to_string()))?;
        for (name, value) in &self.headers {
            request.headers_mut().insert(name, value.clone());
        }
        credential.apply(request.headers_mut());
        // Small buffers: an idle pooled socket should cost kilobytes, not the 2 × 128 KiB of
        // tungstenite's defaults. Reads still grow to any message size; writes go out at once.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes));
        let connect = self.dial.open(request, config);
        match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => Err(ConnectError::TimedOut),
            Ok(Ok((ws, _response))) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                // A root span: the socket outlives the request that opened it.
                let span = tracing::info_span!(parent: None, "upstream_socket", socket = id, credential = ?credential);
                Ok(Socket {
                    id,
                    ws,
                    opened: Instant::now(),
                    turns: 0,
                    head: None,
                    pinged: None,
                    awaiting_pong: false,
                    span,
                    largest_message: 0,
                    peer_close: None,
                    close_frame: None,
                })
            }
            Ok(Err(tungstenite::Error::Http(response))) => {
                let (parts, body) = (*response).into_parts();
                Err(ConnectError::Refused {
                    status: parts.status,
                    headers: parts.headers,
                    body: body.map(Bytes::from).unwrap_or_default(),
                })
            }
            Ok(Err(tungstenite::Error::Io(error))) if TunnelError::refused_for_good(&error) => {
                Err(ConnectError::ProxyRefused(error.to_string()))
            }
            Ok(Err(error)) if refused_certificate(&error) => {
                Err(ConnectError::Certificate(error.to_string()))
            }
            Ok(Err(error)) => Err(ConnectError::Failed(error.to_string())),
        }
    }
}

/// Whether a failed connect is rustls refusing the upstream's certificate, as tungstenite
/// reports it or inside an I/O error (as tokio-rustls reports a handshake's failure).
fn refused_certificate(error: &tungstenite::Error) -> bool {
    let rustls_error = match error {
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(error)) => Some(&**error),
        tungstenite::Error::Io(error) => error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(
        rustls_error,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}
