//! The accept loop: client connections served by hyper with explicit limits, and their
//! shutdown in three steps (docs/architecture.md, "Shutdown").
//!
//! Limits, so that no client can hold resources it does not use:
//! - at most `server.max_connections` open connections (one permit each); beyond that the
//!   listener is not polled, so new connections wait in the kernel's backlog;
//! - a connection must complete a request's headers within `server.header_read_timeout`
//!   (silent and trickling clients are closed), which also bounds idle keep-alive time: hyper
//!   enforces it between HTTP/1 requests, and an HTTP/2 connection with no stream open for a
//!   whole period of it is sent GOAWAY and closed ([`Streams`]);
//! - header blocks are bounded: HTTP/1 reads at most twice `server.max_header_bytes` of
//!   headers (hyper answers 431 beyond that), HTTP/2 header lists at most
//!   `server.max_header_bytes`; the router answers 431 in OpenAI's shape above the limit.
//!
//! Shutdown: `stop` closes the listener and asks every connection to finish its in-flight
//! requests and close; `kill` drops whatever connections are still open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// What a connection may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Signals that end the server and its connections.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; let in-flight requests finish, then close each connection.
    pub stop: CancellationToken,
    /// Drop every connection still open.
    pub kill: CancellationToken,
}

/// Accepts connections until `shutdown.stop`, serving each on a task of `connections`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
    connections: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let builder = Arc::new(builder(limits));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.stop.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        connections.spawn(connection(
            tcp,
            router.clone(),
            builder.clone(),
            limits.header_read_timeout,
            shutdown.clone(),
            permit,
        ));
    }
}

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves one connection. Until its first request's headers are in, the connection is on a
/// deadline of its own: hyper's HTTP/1 header timeout only starts once the protocol is
/// known, and HTTP/2 has none.
async fn connection(
    tcp: TcpStream,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    shutdown: Shutdown,
    _slot: OwnedSemaphorePermit,
) {
    crate::net::no_delay(&tcp);
    let requested = Arc::new(AtomicBool::new(false));
    let seen = requested.clone();
    let streams = Arc::new(Streams::default());
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let mut router = router.clone();
        // HTTP/1 keep-alive is bounded by hyper; HTTP/2 streams are counted for the idle check.
        let stream = (request.version() == hyper::Version::HTTP_2).then(|| counted.open());
        async move {
            let response = router.call(request).await?;
            Ok::<_, std::convert::Infallible>(match stream {
                Some(stream) => response.map(|body| {
                    axum::body::Body::new(CountedBody {
                        inner: body,
                        _stream: stream,
                    })
                }),
                None => response,
            })
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let first_request = tokio::time::sleep(header_read_timeout);
    tokio::pin!(first_request);
    let mut draining = false;
    let mut deadline_passed = false;
    let mut idle_check = tokio::time::interval(header_read_timeout);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut opened_at_last_check = 0;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                return;
            }
            // A `select!` precondition is read only when the select starts, and this one stays
            // pending for the connection's whole life: the flag is checked when the time is up.
            () = &mut first_request, if !deadline_passed => {
                if !requested.load(Ordering::Relaxed) {
                    tracing::debug!("closing a client connection that sent no request headers in time");
                    return;
                }
                deadline_passed = true;
            }
            _ = idle_check.tick(), if deadline_passed && !draining => {
                if streams.idle_since(&mut opened_at_last_check) {
                    tracing::debug!("closing an HTTP/2 client connection idle for a whole header_read_timeout");
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
            () = shutdown.stop.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = shutdown.kill.cancelled() => return,
        }
    }
}

/// The HTTP/2 streams of one connection: how many are open, and how many were ever opened.
#[derive(Debug, Default)]
struct Streams {
    open: AtomicUsize,
    opened: AtomicUsize,
}

impl Streams {
    fn open(self: &Arc<Self>) -> OpenStream {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// True when HTTP/2 streams were served, none is open, and none opened since the last
    /// check (`opened_before`, updated): the connection sat idle for a whole period.
    fn idle_since(&self, opened_before: &mut usize) -> bool {
        let opened = self.opened.load(Ordering::Relaxed);
        let idle = opened > 0 && opened == *opened_before && self.open.load(Ordering::Relaxed) == 0;
        *opened_before = opened;
        idle
    }
}

/// One open HTTP/2 stream; closed when its response body is dropped (sent or abandoned).
#[derive(Debug)]
struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its stream open until it is dropped.
#[derive(Debug)]
struct CountedBody {
    inner: axum::body::Body,
    _stream: OpenStream,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
