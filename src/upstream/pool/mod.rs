//! The pool of upstream sockets, partitioned by credential (docs/architecture.md, "Pool").
//!
//! ```text
//!  checkout ──▶ the idle socket whose head the request extends (Affinity)
//!     │         else an idle socket without a head, else a new connection (under max_sockets),
//!     │         else the least recently used idle head (evicted) ──▶ Lease ──▶ release → idle
//!     │                                                                   └──▶ drop/close → gone
//!     └─ all busy: wait up to checkout_timeout, then CheckoutError::Busy (429)
//! ```
//!
//! Heads of idle sockets are indexed per credential by digest and by response id, so finding
//! the socket a request continues is a few hash lookups under the partition lock. Heads of
//! `store: true` turns (with `continuation.stored_on_any_socket`) are also kept in a bounded
//! index of their own that outlives their socket: when the socket holding one is busy or gone,
//! the request continues it on any socket and the upstream loads it from its store.
//!
//! Idle sockets sit in the pool itself, so a checkout takes one under the lock with no task
//! hop. Before it is used, whatever the upstream sent meanwhile is read without waiting
//! ([`Socket::drain`]): a close, an unsolicited `websocket_connection_limit_reached` or a
//! protocol error retires it and the checkout picks another. One sweeper task per pool does
//! the same for every idle socket each `sweep` period, answers and sends pings (a ping still
//! unanswered at the next one closes the socket), and closes sockets that are too old, or idle
//! beyond `idle_timeout` while more than `min_idle` are idle (or the credential went quiet).
//! A [`Lease`] gives its socket back only through [`Lease::release`] after a clean turn, and
//! closes it otherwise (also when dropped, which is how a client disconnect stops generation).
//!
//! # Concurrency
//! Per partition, a semaphore of `max_sockets` permits bounds turns in flight; the counters
//! (`open` = idle + busy + connecting) live under a std mutex that is never held across an
//! await: draining and pinging an idle socket never wait, they only poll once. Every socket
//! that closes goes through [`Inner::retire`], which decrements `open` exactly once. A connect
//! holds its slot through a guard, so a cancelled request gives it back. `Notify` wakes one
//! waiter whenever a socket goes idle or a slot frees up.

mod checkout;
#[cfg(test)]
mod fake;
mod lanes;
mod lease;
mod partition;
mod sweep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lanes::{LaneCheckout, LaneLease};
pub use lease::Lease;
use partition::{Idle, Partition, State};

use super::socket::{CloseReason, ConnectError, Connector, Socket};
use crate::auth::Credential;
use crate::config::PoolConfig;
use crate::continuation::Matched;
use crate::metrics::Metrics;

/// Why no socket could be leased.
#[derive(Debug)]
pub enum CheckoutError {
    /// Every socket of this credential stayed busy for `checkout_timeout`.
    Busy { retry_after: Duration },
    /// Opening a new socket failed.
    Connect(ConnectError),
    /// The pool is shutting down.
    ShuttingDown,
    /// `Affinity::Only` found no idle socket holding the head it needs.
    NoMatch,
}

/// The pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PoolConfig,
    connector: Connector,
    metrics: Arc<Metrics>,
    partitions: Mutex<HashMap<Credential, Arc<Partition>>>,
    /// Lane sockets (`upstream.lanes`), kept apart from the sockets above.
    lanes: lanes::Lanes,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A leased socket and what it holds for the request.
#[derive(Debug)]
pub struct Checkout {
    pub lease: Lease,
    /// The head the request continues: the socket's own, or a stored one.
    pub matched: Option<Matched>,
}

/// The next refill delay after a failure: 1 s, doubling, at most 30 s.
fn backoff(delay: Duration) -> Duration {
    (delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Sockets by state, summed over credentials: (idle, busy, connecting).
pub type Census = [usize; 3];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a pool lock leaves plain counters behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A pool and its sweeper task (which needs a tokio runtime).
    pub fn new(config: PoolConfig, connector: Connector, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(Inner {
            config,
            connector,
            metrics,
            partitions: Mutex::new(HashMap::new()),
            lanes: lanes::Lanes::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(inner.clone().sweep_forever());
        Self { inner }
    }

    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// Opens `min_idle` sockets for `credential` in the background.
    pub fn prewarm(&self, credential: &Credential) {
        let partition = self.inner.partition(credential);
        lock(&partition.state).pinned = true;
        self.inner.refill(&partition);
    }

    /// Stops offering the stored head `response_id` (the upstream answered that it does not
    /// have it).
    pub fn forget_stored(&self, credential: &Credential, response_id: &str) {
        let partition = self.inner.partition(credential);
        lock(&partition.state).index.forget_stored(response_id);
    }

    /// Credentials the pool holds state for (sockets, lane sockets, stored heads, a turn).
    pub fn credentials(&self) -> usize {
        let lanes = self.lane_credentials();
        let partitions = lock(&self.inner.partitions);
        let lanes_only = lanes.iter().filter(|c| !partitions.contains_key(c)).count();
        partitions.len() + lanes_only
    }

    /// True while the pool holds state for `credential`.
    pub fn holds(&self, credential: &Credential) -> bool {
        lock(&self.inner.partitions).contains_key(credential)
            || self.lane_credentials().contains(credential)
    }

    /// Sockets by state over all credentials (a lane socket is busy while any lane of it is).
    pub fn census(&self) -> Census {
        let partitions: Vec<Arc<Partition>> =
            lock(&self.inner.partitions).values().cloned().collect();
        let (idle, busy, _) = self.lane_census();
        partitions
            .iter()
            .fold([idle, busy, 0], |mut sum, partition| {
                let state = lock(&partition.state);
                sum[0] += state.idle.len();
                sum[1] += state.busy;
                sum[2] += state.connecting;
                sum
            })
    }

    /// Closes idle sockets now and leased ones when their turn ends; waits up to `grace` for
    /// the close frames to go out.
    pub async fn close(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        // Waiting checkouts get ShuttingDown (503) rather than waiting for a 429.
        for partition in lock(&self.inner.partitions).values() {
            partition.turns.close();
        }
        self.wake_lane_checkouts();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
    }
}

impl Inner {
    fn is_current(&self, partition: &Arc<Partition>) -> bool {
        lock(&self.partitions)
            .get(&partition.credential)
            .is_some_and(|current| Arc::ptr_eq(current, partition))
    }

    fn partition(&self, credential: &Credential) -> Arc<Partition> {
        lock(&self.partitions)
            .entry(credential.clone())
            .or_insert_with(|| {
                Arc::new(Partition {
                    credential: credential.clone(),
                    turns: Arc::new(Semaphore::new(self.config.max_sockets)),
                    available: Notify::new(),
                    state: Mutex::new(State::default()),
                })
            })
            .clone()
    }

    fn lease(
        self: &Arc<Self>,
        partition: &Arc<Partition>,
        socket: Socket,
        permit: OwnedSemaphorePermit,
    ) -> Lease {
        Lease {
            socket: Some(socket),
            partition: partition.clone(),
            pool: self.clone(),
            permit: Some(permit),
        }
    }

    /// Makes `socket` idle.
    fn park(self: &Arc<Self>, partition: &Arc<Partition>, socket: Socket) {
        if self.shutdown.is_cancelled() {
            self.retire(partition, socket, CloseReason::Shutdown);
            return;
        }
        lock(&partition.state).add_idle(Idle {
            socket,
            since: Instant::now(),
        });
        partition.available.notify_one();
    }

    /// Drops a partition that holds nothing any more: no socket, no stored head, no turn in
    /// flight, not pinned.
    fn forget_if_unused(&self, partition: &Arc<Partition>) {
        let unused = {
            let state = lock(&partition.state);
            state.open == 0
                && !state.index.has_stored()
                && !state.pinned
                && partition.turns.available_permits() == self.config.max_sockets
        };
        if unused {
            let mut partitions = lock(&self.partitions);
            if partitions
                .get(&partition.credential)
                .is_some_and(|current| Arc::ptr_eq(current, partition))
            {
                partitions.remove(&partition.credential);
            }
        }
    }

    /// Accounts for a socket that is closing (it was idle or leased) and closes it.
    fn retire(self: &Arc<Self>, partition: &Arc<Partition>, socket: Socket, reason: CloseReason) {
        {
            let mut state = lock(&partition.state);
            state.open -= 1;
            // A fresh socket the upstream drops at once: do not reconnect in a tight loop.
            let dropped_at_once = socket.turns() == 0
                && socket.age() < Duration::from_secs(5)
                && matches!(
                    reason,
                    CloseReason::ServerClosed
                        | CloseReason::ProtocolError
                        | CloseReason::LimitReached
                );
            if dropped_at_once {
                state.refill_delay = backoff(state.refill_delay);
            }
        }
        self.forget_if_unused(partition);
        self.metrics.socket_closed(reason);
        socket.span().in_scope(|| {
            tracing::debug!(?reason, turns = socket.turns(), "upstream socket closed");
        });
        partition.available.notify_one();
        self.tasks.spawn(socket.close());
        if reason != CloseReason::Shutdown {
            self.refill(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use std::time::Duration;

    use super::fake::{self, key};
    use super::{CheckoutError, ConnectError};
    use crate::continuation::Affinity;
    use crate::outcome::CloseReason;

    #[tokio::test(start_paused = true)]
    async fn a_key_whose_upgrade_is_refused_leaves_no_state_behind() {
        let (pool, upstream) = fake::pool(fake::config());
        upstream.refuse(Some(401));
        let refused = pool.checkout(&key("sk-revoked"), Affinity::None).await;
        let Err(CheckoutError::Connect(ConnectError::Refused { status, .. })) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(status, 401);
        assert_eq!((pool.census(), pool.credentials()), ([0, 0, 0], 0));
    }

    #[tokio::test(start_paused = true)]
    async fn each_credential_gets_sockets_of_its_own() {
        let (pool, upstream) = fake::pool(fake::config());
        for name in ["sk-alpha", "sk-bravo", "sk-alpha"] {
            let checkout = pool.checkout(&key(name), Affinity::None).await.unwrap();
            checkout.lease.release();
        }
        assert_eq!(
            upstream.opened(),
            2,
            "alpha's socket is reused, bravo has its own"
        );
        assert_eq!(upstream.authorization(0), "Bearer sk-alpha");
        assert_eq!(upstream.authorization(1), "Bearer sk-bravo");
        assert_eq!((pool.census(), pool.credentials()), ([2, 0, 0], 2));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_pool_closes_idle_sockets_and_refuses_checkouts() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        let idle = pool.checkout(&alpha, Affinity::None).await.unwrap();
        let busy = pool.checkout(&alpha, Affinity::None).await.unwrap();
        idle.lease.release();
        pool.close(Duration::from_secs(1)).await;
        assert_eq!(pool.closes(CloseReason::Shutdown), 1);
        assert_eq!(upstream.open(), 1, "the leased one stays for its turn");
        busy.lease.release();
        assert_eq!(pool.closes(CloseReason::Shutdown), 2, "then goes too");
        let refused = pool.checkout(&alpha, Affinity::None).await;
        assert!(
            matches!(refused, Err(CheckoutError::ShuttingDown)),
            "{refused:?}"
        );
    }
}
