//! [`Lease`]: exclusive use of one socket for one turn (docs/architecture.md, "Pool").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::super::socket::{CloseReason, Socket};
use super::partition::Partition;
use super::{Inner, lock};

/// Exclusive use of one socket for one turn.
#[derive(Debug)]
pub struct Lease {
    pub(super) socket: Option<Socket>,
    pub(super) partition: Arc<Partition>,
    pub(super) pool: Arc<Inner>,
    /// This turn's share of `max_sockets`; given back before the socket is retired so an
    /// unused partition can be forgotten.
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    pub fn socket(&mut self) -> &mut Socket {
        #[expect(
            clippy::expect_used,
            reason = "the socket is only taken by self-consuming methods"
        )]
        self.socket.as_mut().expect("a live lease holds its socket")
    }

    /// The turn ended cleanly: the socket goes back to the pool.
    pub fn release(mut self) {
        if let Some(socket) = self.socket.take() {
            {
                let mut state = lock(&self.partition.state);
                state.busy -= 1;
                state.refill_delay = Duration::ZERO;
                if let Some(head) = socket.head() {
                    state.index.remember_stored(head);
                }
            }
            if socket.age() >= self.pool.config.max_age {
                self.pool
                    .retire(&self.partition, socket, CloseReason::MaxAge);
            } else if socket.holds_large_buffer() {
                self.pool
                    .retire(&self.partition, socket, CloseReason::LargeMessage);
            } else {
                self.pool.park(&self.partition, socket);
            }
        }
    }

    /// Tops the pool up to `min_idle` empty sockets in the background. Called once the turn's
    /// first event is in, so the handshakes of background connects stay off the critical path
    /// of the turn that used the last empty socket, and finish while it streams.
    pub fn refill_pool(&self) {
        self.pool.refill(&self.partition);
    }

    /// The socket cannot be trusted with another turn: close it.
    pub fn close(mut self, reason: CloseReason) {
        self.discard(reason);
    }

    fn discard(&mut self, reason: CloseReason) {
        if let Some(socket) = self.socket.take() {
            lock(&self.partition.state).busy -= 1;
            self.permit.take();
            self.pool.retire(&self.partition, socket, reason);
        }
    }
}

impl Drop for Lease {
    /// A lease dropped mid-turn means the client went away: closing the socket is what stops
    /// the upstream from generating further.
    fn drop(&mut self) {
        self.discard(CloseReason::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use std::time::Duration;

    use tokio::time::sleep;

    use super::super::fake::{self, key};
    use crate::config::PoolConfig;
    use crate::continuation::Affinity;
    use crate::outcome::CloseReason;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_passes_max_age_during_a_turn_is_retired_when_it_ends() {
        let (pool, upstream) = fake::pool(PoolConfig {
            max_age: SECOND * 60,
            ..fake::config()
        });
        let alpha = key("sk-alpha");
        let checkout = pool.checkout(&alpha, Affinity::None).await.unwrap();
        sleep(SECOND * 59).await;
        checkout.lease.release();
        assert_eq!(pool.census(), [1, 0, 0], "still young: back in the pool");
        let mut checkout = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!(checkout.lease.socket().id(), 1);
        sleep(SECOND * 2).await;
        checkout.lease.release();
        assert_eq!(pool.closes(CloseReason::MaxAge), 1);
        assert_eq!(pool.census(), [0, 0, 0], "retired, not given back");
        sleep(SECOND).await;
        assert_eq!(upstream.open(), 0, "the upstream got the close");
        let mut next = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!((next.lease.socket().id(), upstream.opened()), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_dropped_mid_turn_closes_its_socket() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        let checkout = pool.checkout(&alpha, Affinity::None).await.unwrap();
        drop(checkout);
        assert_eq!(pool.closes(CloseReason::ClientGone), 1);
        assert_eq!((pool.census(), pool.credentials()), ([0, 0, 0], 0));
        sleep(SECOND).await;
        assert_eq!(
            upstream.open(),
            0,
            "closing is what stops generation upstream"
        );
    }
}
