//! [`Pool::checkout`]: which socket a turn gets (docs/architecture.md, "Pool").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::super::socket::CloseReason;
use super::partition::{ConnectSlot, Idle, Partition, State};
use super::{Checkout, CheckoutError, Inner, Pool, lock};
use crate::auth::Credential;
use crate::continuation::{Affinity, Matched};

/// What a checkout does next, decided under the partition lock.
enum Next {
    /// Lease this idle socket; with its own head when that is what the request continues.
    Take(Box<Idle>, Option<Matched>),
    /// Open a new socket (its slot is already counted).
    Connect,
    /// Every slot is taken: wait for a socket or a slot to come back.
    Wait,
}

/// Why [`State::choose`] gives up at once.
enum Refusal {
    /// `Affinity::Only` and no socket or stored head holds what it needs.
    NoMatch,
    ShuttingDown,
}

impl From<Refusal> for CheckoutError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoMatch => CheckoutError::NoMatch,
            Refusal::ShuttingDown => CheckoutError::ShuttingDown,
        }
    }
}

impl Pool {
    /// Leases a socket for one turn: the idle one `affinity` wants, else an idle one without a
    /// head, else a new connection, else the least recently used idle head, else waits up to
    /// `checkout_timeout` for one to come back.
    pub async fn checkout(
        &self,
        credential: &Credential,
        affinity: Affinity<'_>,
    ) -> Result<Checkout, CheckoutError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(CheckoutError::ShuttingDown);
        }
        let deadline = Instant::now() + inner.config.checkout_timeout;
        let (partition, permit) = inner.permit(credential, deadline).await?;
        loop {
            // A stored head to continue on whatever socket this checkout ends up with.
            let mut stored = None;
            let next = {
                let mut state = lock(&partition.state);
                state.choose(&affinity, &mut stored, inner)?
            };
            match next {
                Next::Take(idle, own) => {
                    if let Some(checkout) = inner.take_idle(&partition, *idle, own, stored) {
                        return Ok(Checkout {
                            lease: inner.lease(&partition, checkout.0, permit),
                            matched: checkout.1,
                        });
                    }
                }
                Next::Connect => {
                    return inner.connect(credential, &partition, permit, stored).await;
                }
                Next::Wait => {
                    // A background connect holds the last slot; it notifies when it lands.
                    if tokio::time::timeout_at(deadline, partition.available.notified())
                        .await
                        .is_err()
                    {
                        return Err(inner.busy());
                    }
                }
            }
        }
    }
}

impl Inner {
    pub(super) fn busy(&self) -> CheckoutError {
        CheckoutError::Busy {
            retry_after: self.config.checkout_timeout.max(Duration::from_secs(1)),
        }
    }

    /// This turn's share of `max_sockets`, on the credential's current partition.
    async fn permit(
        &self,
        credential: &Credential,
        deadline: Instant,
    ) -> Result<(Arc<Partition>, OwnedSemaphorePermit), CheckoutError> {
        loop {
            let partition = self.partition(credential);
            let permit = tokio::time::timeout_at(deadline, partition.turns.clone().acquire_owned())
                .await
                .map_err(|_| self.busy())?
                .map_err(|_| CheckoutError::ShuttingDown)?;
            // An unused partition is forgotten only while nobody holds a permit of it: with
            // one held, this partition stays the credential's for the whole checkout.
            if self.is_current(&partition) {
                return Ok((partition, permit));
            }
        }
    }

    /// Checks an idle socket taken for a turn: whatever arrived while it sat idle is read now,
    /// and a dead or too old socket is retired (`None`: pick another). Returns the socket and
    /// the head the request continues.
    fn take_idle(
        self: &Arc<Self>,
        partition: &Arc<Partition>,
        idle: Idle,
        own: Option<Matched>,
        stored: Option<Matched>,
    ) -> Option<(super::Socket, Option<Matched>)> {
        let mut socket = idle.socket;
        let checked = if socket.age() >= self.config.max_age {
            Err(CloseReason::MaxAge)
        } else {
            socket.drain()
        };
        if let Err(reason) = checked {
            self.retire(partition, socket, reason);
            return None;
        }
        lock(&partition.state).busy += 1;
        if own.is_none() && socket.head().is_some() {
            // Taken for another conversation: its head is about to be replaced.
            socket.set_head(None);
            self.metrics.head_evicted();
        }
        let stored_head = own.is_none() && stored.is_some();
        let matched = own.or(stored);
        socket.span().in_scope(|| {
            tracing::debug!(
                head_items = socket.head().map(|head| head.items),
                matched_items = matched.as_ref().map(|m| m.items),
                stored_head,
                "leased an idle upstream socket"
            );
        });
        Some((socket, matched))
    }

    /// Opens a socket for this turn in the slot [`State::choose`] counted.
    async fn connect(
        self: &Arc<Self>,
        credential: &Credential,
        partition: &Arc<Partition>,
        permit: OwnedSemaphorePermit,
        stored: Option<Matched>,
    ) -> Result<Checkout, CheckoutError> {
        let slot = ConnectSlot {
            partition,
            armed: true,
        };
        match self.connector.connect(credential).await {
            Ok(socket) => {
                slot.into_busy();
                self.metrics.socket_opened();
                socket
                    .span()
                    .in_scope(|| tracing::debug!("upstream socket opened"));
                Ok(Checkout {
                    lease: self.lease(partition, socket, permit),
                    matched: stored,
                })
            }
            Err(error) => {
                drop(slot);
                drop(permit);
                // A key that never works (bad, revoked, or an unreachable upstream) must
                // leave nothing behind.
                self.forget_if_unused(partition);
                Err(CheckoutError::Connect(error))
            }
        }
    }
}

impl State {
    /// The checkout's next step: the socket holding the wanted head, else an empty idle
    /// socket, else a new connection (counted here), else the least recently used idle head,
    /// else wait. `stored` receives a stored head to continue on whatever socket is chosen.
    fn choose(
        &mut self,
        affinity: &Affinity<'_>,
        stored: &mut Option<Matched>,
        inner: &Inner,
    ) -> Result<Next, Refusal> {
        self.last_used = Some(Instant::now());
        let oldest = |headless: bool| {
            self.idle
                .iter()
                .enumerate()
                .filter(|(_, idle)| !headless || idle.head().is_none())
                .min_by_key(|(_, idle)| idle.since)
                .map(|(index, _)| index)
        };
        let headless = oldest(true);
        let least_recent = oldest(false);
        match self.affine(affinity) {
            Some((Some(index), own)) => {
                return Ok(Next::Take(Box::new(self.remove_idle(index)), Some(own)));
            }
            Some((None, found)) => *stored = Some(found),
            None => {}
        }
        if stored.is_none() && matches!(affinity, Affinity::Only { .. }) {
            Err(Refusal::NoMatch)
        } else if let Some(index) = headless {
            Ok(Next::Take(Box::new(self.remove_idle(index)), None))
        } else if inner.shutdown.is_cancelled() {
            Err(Refusal::ShuttingDown)
        } else if self.open < inner.config.max_sockets {
            self.open += 1;
            self.connecting += 1;
            Ok(Next::Connect)
        } else if let Some(index) = least_recent {
            Ok(Next::Take(Box::new(self.remove_idle(index)), None))
        } else {
            Ok(Next::Wait)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::super::fake::{self, head, key};
    use super::super::{Checkout, CheckoutError, ConnectError};
    use crate::continuation::Affinity;
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    const SECOND: Duration = Duration::from_secs(1);

    fn extend(prefixes: &[u128]) -> Affinity<'_> {
        Affinity::Extend {
            prefixes,
            model: "m",
        }
    }

    fn id(checkout: &mut Checkout) -> u64 {
        checkout.lease.socket().id()
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkout_takes_the_continued_head_then_an_empty_socket_then_a_new_one_then_the_oldest_head()
     {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        // Three sockets, idle from oldest to newest: head r1, head r2, no head.
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(pool.checkout(&alpha, Affinity::None).await.unwrap());
        }
        assert_eq!(upstream.opened(), 3);
        for (n, mut checkout) in first.into_iter().enumerate() {
            if n < 2 {
                let response = format!("r{}", n + 1);
                let digest = 11 * (n as u128 + 1);
                let head = head(&response, digest, false);
                checkout.lease.socket().set_head(Some(head));
            }
            checkout.lease.release();
            sleep(SECOND).await;
        }

        // The request continues r2 (its second item ends where r2 did): r2's socket.
        let mut continued = pool.checkout(&alpha, extend(&[5, 22, 99])).await.unwrap();
        assert_eq!(id(&mut continued), 2);
        let matched = continued.matched.clone().unwrap();
        assert_eq!((matched.previous.as_str(), matched.items), ("r2", 2));
        // Back with a new head: now the most recently used.
        let next = head("r2b", 23, false);
        continued.lease.socket().set_head(Some(next));
        continued.lease.release();

        // A new conversation: the empty socket, though r1's is older and a connect is allowed.
        let mut empty = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!((id(&mut empty), upstream.opened()), (3, 3));
        assert!(empty.matched.is_none());
        // No empty socket left, a slot free: a new connection, no head given up.
        let mut fresh = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!((id(&mut fresh), upstream.opened()), (4, 4));
        assert_eq!(pool.counter("wsbridge_head_evictions_total"), 0);
        // Every slot taken: the least recently used head (r1) is given up, r2b kept.
        let mut evicted = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!(id(&mut evicted), 1);
        assert!(evicted.matched.is_none());
        assert_eq!(evicted.lease.socket().head(), None);
        assert_eq!(pool.counter("wsbridge_head_evictions_total"), 1);
        assert_eq!(upstream.opened(), 4, "max_sockets is 4");
        let mut kept = pool.checkout(&alpha, extend(&[23])).await.unwrap();
        assert_eq!(id(&mut kept), 2);
        assert_eq!(kept.matched.unwrap().previous, "r2b");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_socket_busy_a_checkout_waits_for_one_then_gives_up_after_checkout_timeout()
    {
        let config = fake::config();
        let timeout = config.checkout_timeout;
        let (pool, upstream) = fake::pool(config.clone());
        let alpha = key("sk-alpha");
        let mut leases = Vec::new();
        for _ in 0..config.max_sockets {
            leases.push(pool.checkout(&alpha, Affinity::None).await.unwrap().lease);
        }
        let waiting = tokio::spawn({
            let (pool, alpha) = (pool.clone(), alpha.clone());
            async move { pool.checkout(&alpha, Affinity::None).await }
        });
        sleep(timeout / 2).await;
        assert!(!waiting.is_finished(), "no socket is free yet");
        let mut returned = leases.pop().unwrap();
        let returned_id = returned.socket().id();
        returned.release();
        let mut got = waiting.await.unwrap().unwrap();
        assert_eq!(id(&mut got), returned_id, "the socket that came back");
        assert_eq!(upstream.opened(), config.max_sockets);

        let started = Instant::now();
        let busy = pool.checkout(&alpha, Affinity::None).await;
        assert!(
            matches!(busy, Err(CheckoutError::Busy { retry_after }) if retry_after == timeout),
            "{busy:?}"
        );
        assert_eq!(started.elapsed(), timeout);
        assert_eq!(upstream.opened(), config.max_sockets, "never more sockets");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_only_fits_as_a_continuation_gets_its_head_or_nothing() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        let only = |prefixes| Affinity::Only {
            prefixes,
            model: "m",
        };
        let refused = pool.checkout(&alpha, only(&[11])).await;
        assert!(
            matches!(refused, Err(CheckoutError::NoMatch)),
            "{refused:?}"
        );
        assert_eq!(upstream.opened(), 0, "no socket opened for it");
        let mut checkout = pool.checkout(&alpha, Affinity::None).await.unwrap();
        checkout
            .lease
            .socket()
            .set_head(Some(head("r1", 11, false)));
        checkout.lease.release();
        let continued = pool.checkout(&alpha, only(&[11, 12])).await.unwrap();
        assert_eq!(continued.matched.unwrap().previous, "r1");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_that_broke_while_idle_is_replaced_at_checkout() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        pool.checkout(&alpha, Affinity::None)
            .await
            .unwrap()
            .lease
            .release();
        upstream.send(
            0,
            r#"{"type":"error","error":{"code":"websocket_connection_limit_reached"}}"#,
        );
        sleep(Duration::from_millis(1)).await;
        let mut checkout = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!(id(&mut checkout), 2, "a new socket");
        assert_eq!(pool.closes(crate::outcome::CloseReason::LimitReached), 1);
        sleep(Duration::from_millis(1)).await;
        assert!(!upstream.is_open(0), "the upstream saw the old one closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkout_cancelled_while_connecting_gives_its_slot_back() {
        let (pool, upstream) = fake::pool(fake::config());
        upstream.hang(true);
        let connecting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.checkout(&key("sk-alpha"), Affinity::None).await }
        });
        sleep(SECOND / 2).await;
        assert_eq!(pool.census(), [0, 0, 1], "connecting");
        connecting.abort();
        let _ = connecting.await;
        assert_eq!(pool.census(), [0, 0, 0]);
        sleep(SECOND).await;
        assert_eq!(pool.credentials(), 0, "forgotten at the next sweep");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgrade_left_unanswered_fails_after_the_connect_timeout() {
        let (pool, upstream) = fake::pool(fake::config());
        upstream.hang(true);
        let started = Instant::now();
        let failed = pool.checkout(&key("sk-alpha"), Affinity::None).await;
        assert!(
            matches!(failed, Err(CheckoutError::Connect(ConnectError::TimedOut))),
            "{failed:?}"
        );
        assert_eq!(started.elapsed(), fake::CONNECT_TIMEOUT);
        assert_eq!((pool.census(), pool.credentials()), ([0, 0, 0], 0));
    }
}
