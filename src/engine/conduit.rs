//! What a turn runs on ([`Conduit`]): a socket it owns (`upstream.lanes = false`, the default)
//! or one `stream_id` lane of a shared socket (docs/architecture.md, "Lanes"). The socket case
//! reads the socket directly, as it always did: no task, channel or lock per event.

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{BridgeError, Engine};
use crate::auth::Credential;
use crate::continuation::{Affinity, Head, Matched};
use crate::protocol::OpenAiError;
use crate::upstream::pool::{Checkout, CheckoutError, LaneCheckout, LaneLease, Lease};
use crate::upstream::socket::CloseReason;

impl Engine {
    /// A socket of the credential's own (`upstream.lanes` off) or a lane of a shared one.
    pub(super) async fn checkout(
        &self,
        credential: &Credential,
        affinity: Affinity<'_>,
    ) -> Result<(Conduit, Option<Matched>), CheckoutError> {
        if self.upstream.lanes {
            let LaneCheckout { lease, matched } =
                self.pool.checkout_lane(credential, affinity).await?;
            return Ok((Conduit::Lane(lease), matched));
        }
        let Checkout { lease, matched } = self.pool.checkout(credential, affinity).await?;
        Ok((Conduit::Socket(lease), matched))
    }
}

/// The answer to a request naming its own `stream_id` while lanes are on: wsbridge names the
/// lanes itself, and over REST the parameter does not exist.
pub(super) fn client_stream_id() -> BridgeError {
    BridgeError::Upstream {
        error: OpenAiError::invalid_request(
            "Unrecognized request argument supplied: stream_id (a WebSocket-only parameter).",
        )
        .with_param("stream_id")
        .with_code("unknown_parameter"),
        headers: Default::default(),
    }
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the socket variant is the default path: inline as the lease always was, no \
              allocation per turn; a lane lease is small and only wastes the difference"
)]
pub enum Conduit {
    Socket(Lease),
    Lane(LaneLease),
}

impl Conduit {
    /// Sends a turn's frame. The socket's head is dropped first: the upstream replaces it with
    /// this turn's (or loses it if the turn does not complete).
    pub async fn send(&mut self, frame: Utf8Bytes) -> Result<(), ()> {
        match self {
            Self::Socket(lease) => {
                let socket = lease.socket();
                socket.set_head(None);
                socket.send(frame).await.map_err(|_| ())
            }
            Self::Lane(lane) => lane.send(&frame).map_err(|_| ()),
        }
    }

    /// The next event; `Err` when the socket is finished.
    pub async fn next_event(&mut self) -> Result<Utf8Bytes, CloseReason> {
        match self {
            Self::Socket(lease) => lease.socket().next_event().await,
            Self::Lane(lane) => lane.next_event().await,
        }
    }

    /// The turn ended cleanly; the socket (or lane) now holds `head`.
    pub fn release(self, head: Option<Head>) {
        match self {
            Self::Socket(mut lease) => {
                lease.socket().set_head(head);
                lease.release();
            }
            Self::Lane(lane) => lane.release(head),
        }
    }

    /// Nothing was sent: the socket (or lane) keeps the head it had.
    pub fn release_unused(self) {
        match self {
            Self::Socket(lease) => lease.release(),
            Self::Lane(lane) => lane.release_unused(),
        }
    }

    /// The turn failed: the socket is closed (a lane is given up, see [`LaneLease::close`]).
    pub fn close(self, reason: CloseReason) {
        match self {
            Self::Socket(lease) => lease.close(reason),
            Self::Lane(lane) => lane.close(reason),
        }
    }

    /// The first event is in: top the pool up in the background (sockets only; lanes open
    /// sockets as turns need them).
    pub fn refill_pool(&self) {
        if let Self::Socket(lease) = self {
            lease.refill_pool();
        }
    }

    /// True when the socket had carried a turn before this one.
    pub fn reused(&mut self) -> bool {
        match self {
            Self::Socket(lease) => lease.socket().turns() > 1,
            Self::Lane(lane) => lane.reused(),
        }
    }

    /// When the socket was opened.
    pub fn opened(&mut self) -> Instant {
        match self {
            Self::Socket(lease) => lease.socket().opened(),
            Self::Lane(lane) => lane.opened(),
        }
    }
}
