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
    fn busy(&self) -> CheckoutError {
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
