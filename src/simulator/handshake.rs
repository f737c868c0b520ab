//! What a new connection costs before it is served: `simulator.latency.connect_ms`, standing
//! for the TCP and TLS handshakes a real upstream makes its clients wait for (docs/architecture.md,
//! "Simulator"). Each accepted connection is read (and written) only once its delay has passed,
//! counted from the accept; the accept loop itself never waits, so connections opened together
//! wait together, and requests on a kept-alive connection pay nothing more.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A listener whose connections each wait `delay` after their accept before they are served.
pub(super) struct SlowStart<L> {
    inner: L,
    delay: Duration,
}

impl<L> SlowStart<L> {
    pub(super) fn new(inner: L, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl<L> Listener for SlowStart<L>
where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = Handshaking;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (Self::Io, Self::Addr)> + Send {
        let delay = self.delay;
        let accepted = self.inner.accept();
        async move {
            let (io, addr) = accepted.await;
            let pending = (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay)));
            (Handshaking { io, pending }, addr)
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection still in its modelled handshake until `pending` fires.
pub(super) struct Handshaking {
    io: TcpStream,
    pending: Option<Pin<Box<Sleep>>>,
}

impl Handshaking {
    /// Ready once the handshake's time has passed (at once when there is none).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = self.pending.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            self.pending = None;
        }
        Poll::Ready(())
    }
}

impl AsyncRead for Handshaking {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx));
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Handshaking {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx));
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx));
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
