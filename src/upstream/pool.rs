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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::socket::CloseReason;
use super::socket::{ConnectError, Connector, Socket};
use crate::auth::Credential;
use crate::config::PoolConfig;
use crate::continuation::index::{Found, HeadIndex};
use crate::continuation::{Affinity, Head, Matched};
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
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The sockets of one credential.
#[derive(Debug)]
struct Partition {
    credential: Credential,
    turns: Arc<Semaphore>,
    available: Notify,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<Idle>,
    /// The heads of the idle sockets, and the stored heads.
    index: HeadIndex,
    /// Idle + busy + connecting.
    open: usize,
    connecting: usize,
    busy: usize,
    /// REST only until then (the upstream refused the upgrade with 426/404/405).
    rest_until: Option<Instant>,
    /// Last checkout; a credential unused for `idle_timeout` lets all its sockets go.
    last_used: Option<Instant>,
    /// Kept warm regardless of use (the injected credential).
    pinned: bool,
    /// Wait before the next background connect: grows while connects fail or fresh sockets
    /// are closed at once, so a broken upstream is not hammered.
    refill_delay: Duration,
}

/// An idle socket, owned by the pool while no turn uses it.
#[derive(Debug)]
struct Idle {
    socket: Socket,
    since: Instant,
}

impl Idle {
    fn head(&self) -> Option<&Head> {
        self.socket.head()
    }
}

/// One `open` + `connecting` slot taken for a connect in progress; dropping it (the connect
/// failed, or the waiting request was cancelled) gives the slot back.
struct ConnectSlot<'a> {
    partition: &'a Partition,
    armed: bool,
}

impl ConnectSlot<'_> {
    /// The connect succeeded: the slot now belongs to a socket that is `busy`.
    fn into_busy(mut self) {
        self.armed = false;
        let mut state = lock(&self.partition.state);
        state.connecting -= 1;
        state.busy += 1;
    }
}

impl Drop for ConnectSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = lock(&self.partition.state);
            state.connecting -= 1;
            state.open -= 1;
            drop(state);
            self.partition.available.notify_one();
        }
    }
}

impl State {
    fn headless_idle(&self) -> usize {
        self.idle
            .iter()
            .filter(|idle| idle.head().is_none())
            .count()
    }

    fn add_idle(&mut self, idle: Idle) {
        if let Some(head) = idle.head() {
            self.index.insert(idle.socket.id(), head);
        }
        self.idle.push(idle);
    }

    fn remove_idle(&mut self, index: usize) -> Idle {
        let idle = self.idle.swap_remove(index);
        if let Some(head) = idle.socket.head() {
            self.index.remove(idle.socket.id(), head);
        }
        idle
    }

    fn idle_index(&self, id: u64) -> Option<usize> {
        self.idle.iter().position(|idle| idle.socket.id() == id)
    }

    /// The head `affinity` wants: on an idle socket (its index), or stored (`None`: any
    /// socket will do).
    fn affine(&self, affinity: &Affinity<'_>) -> Option<(Option<usize>, Matched)> {
        let idle_head = |socket: u64| {
            self.idle_index(socket)
                .and_then(|index| self.idle[index].head())
        };
        match self.index.find(affinity, idle_head)? {
            Found::Socket(socket, matched) => Some((self.idle_index(socket), matched)),
            Found::Stored(matched) => Some((None, matched)),
        }
    }
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

    /// True while `credential` is on REST after a refused upgrade.
    pub fn rest_only(&self, credential: &Credential) -> bool {
        let partition = self.inner.partition(credential);
        let mut state = lock(&partition.state);
        match state.rest_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                state.rest_until = None;
                false
            }
            None => false,
        }
    }

    /// Stops offering the stored head `response_id` (the upstream answered that it does not
    /// have it).
    pub fn forget_stored(&self, credential: &Credential, response_id: &str) {
        let partition = self.inner.partition(credential);
        lock(&partition.state).index.forget_stored(response_id);
    }

    /// Sends `credential` over REST for `cooldown`.
    pub fn mark_rest_only(&self, credential: &Credential, cooldown: Duration) {
        let partition = self.inner.partition(credential);
        lock(&partition.state).rest_until = Some(Instant::now() + cooldown);
    }

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
        let busy = || CheckoutError::Busy {
            retry_after: inner.config.checkout_timeout.max(Duration::from_secs(1)),
        };
        let (partition, permit) = loop {
            let partition = inner.partition(credential);
            let permit = tokio::time::timeout_at(deadline, partition.turns.clone().acquire_owned())
                .await
                .map_err(|_| busy())?
                .map_err(|_| CheckoutError::ShuttingDown)?;
            // An unused partition is forgotten only while nobody holds a permit of it: with
            // one held, this partition stays the credential's for the whole checkout.
            if inner.is_current(&partition) {
                break (partition, permit);
            }
        };
        loop {
            // A stored head to continue on whatever socket this checkout ends up with.
            let mut stored = None;
            enum Next {
                /// An idle socket, and its own head when that is what the request continues.
                Take(Box<Idle>, Option<Matched>),
                Connect,
                Wait,
            }
            let next = {
                let mut state = lock(&partition.state);
                state.last_used = Some(Instant::now());
                let headless = state
                    .idle
                    .iter()
                    .enumerate()
                    .filter(|(_, idle)| idle.head().is_none())
                    .min_by_key(|(_, idle)| idle.since)
                    .map(|(index, _)| index);
                let least_recent = || {
                    state
                        .idle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, idle)| idle.since)
                        .map(|(index, _)| index)
                };
                let affine = state.affine(&affinity);
                let own = match affine {
                    Some((Some(index), own)) => Some((index, own)),
                    Some((None, found)) => {
                        stored = Some(found);
                        None
                    }
                    None => None,
                };
                if let Some((index, own)) = own {
                    Next::Take(Box::new(state.remove_idle(index)), Some(own))
                } else if stored.is_none() && matches!(affinity, Affinity::Only { .. }) {
                    return Err(CheckoutError::NoMatch);
                } else if let Some(index) = headless {
                    Next::Take(Box::new(state.remove_idle(index)), None)
                } else if inner.shutdown.is_cancelled() {
                    return Err(CheckoutError::ShuttingDown);
                } else if state.open < inner.config.max_sockets {
                    state.open += 1;
                    state.connecting += 1;
                    Next::Connect
                } else if let Some(index) = least_recent() {
                    Next::Take(Box::new(state.remove_idle(index)), None)
                } else {
                    Next::Wait
                }
            };
            match next {
                Next::Take(idle, own) => {
                    let mut socket = idle.socket;
                    // Whatever arrived while it sat idle, read now: a dead socket is retired
                    // and another one picked.
                    let checked = if socket.age() >= inner.config.max_age {
                        Err(CloseReason::MaxAge)
                    } else {
                        socket.drain()
                    };
                    if let Err(reason) = checked {
                        inner.retire(&partition, socket, reason);
                        continue;
                    }
                    lock(&partition.state).busy += 1;
                    if own.is_none() && socket.head().is_some() {
                        // Taken for another conversation: its head is about to be replaced.
                        socket.set_head(None);
                        inner.metrics.head_evicted();
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
                    return Ok(Checkout {
                        lease: inner.lease(&partition, socket, permit),
                        matched,
                    });
                }
                Next::Connect => {
                    let slot = ConnectSlot {
                        partition: &partition,
                        armed: true,
                    };
                    match inner.connector.connect(credential).await {
                        Ok(socket) => {
                            slot.into_busy();
                            inner.metrics.socket_opened();
                            socket
                                .span()
                                .in_scope(|| tracing::debug!("upstream socket opened"));
                            return Ok(Checkout {
                                lease: inner.lease(&partition, socket, permit),
                                matched: stored,
                            });
                        }
                        Err(error) => {
                            drop(slot);
                            drop(permit);
                            // A key that never works (bad, revoked, or an unreachable upstream)
                            // must leave nothing behind.
                            inner.forget_if_unused(&partition);
                            return Err(CheckoutError::Connect(error));
                        }
                    }
                }
                Next::Wait => {
                    // A background connect holds the last slot; it notifies when it lands.
                    if tokio::time::timeout_at(deadline, partition.available.notified())
                        .await
                        .is_err()
                    {
                        return Err(busy());
                    }
                }
            }
        }
    }

    /// Credentials the pool holds state for (sockets, heads, a REST cool-down, a turn).
    pub fn credentials(&self) -> usize {
        lock(&self.inner.partitions).len()
    }

    /// Sockets by state over all credentials.
    pub fn census(&self) -> Census {
        let partitions: Vec<Arc<Partition>> =
            lock(&self.inner.partitions).values().cloned().collect();
        partitions.iter().fold([0; 3], |mut sum, partition| {
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

    /// Opens sockets in the background until `min_idle` empty ones are idle or connecting, for
    /// credentials in use (or pinned), after `refill_delay`.
    fn refill(self: &Arc<Self>, partition: &Arc<Partition>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let (count, delay) = {
            let mut state = lock(&partition.state);
            let in_use = state.pinned
                || state
                    .last_used
                    .is_some_and(|used| used.elapsed() < self.config.idle_timeout);
            if !in_use {
                return;
            }
            let want = self
                .config
                .min_idle
                .saturating_sub(state.headless_idle() + state.connecting);
            let count = want.min(self.config.max_sockets.saturating_sub(state.open));
            state.open += count;
            state.connecting += count;
            (count, state.refill_delay)
        };
        for _ in 0..count {
            let pool = self.clone();
            let partition = partition.clone();
            self.tasks.spawn(async move {
                let connected = tokio::select! {
                    connected = async {
                        tokio::time::sleep(delay).await;
                        pool.connector.connect(&partition.credential).await
                    } => Some(connected),
                    () = pool.shutdown.cancelled() => None,
                };
                let mut state = lock(&partition.state);
                state.connecting -= 1;
                match connected {
                    Some(Ok(socket)) => {
                        drop(state);
                        pool.metrics.socket_opened();
                        socket
                            .span()
                            .in_scope(|| tracing::debug!("upstream socket pre-warmed"));
                        pool.park(&partition, socket);
                    }
                    failed => {
                        state.open -= 1;
                        if let Some(Err(error)) = failed {
                            state.refill_delay = backoff(state.refill_delay);
                            tracing::warn!(%error, credential = ?partition.credential, "pre-warming an upstream socket failed");
                        }
                        drop(state);
                        partition.available.notify_one();
                    }
                }
            });
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

    /// Sweeps every idle socket each period until shutdown, then closes them all.
    async fn sweep_forever(self: Arc<Self>) {
        let period = self
            .config
            .ping_interval
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            let partitions: Vec<Arc<Partition>> =
                lock(&self.partitions).values().cloned().collect();
            for partition in partitions {
                self.sweep(&partition);
            }
        }
        let partitions: Vec<Arc<Partition>> = lock(&self.partitions).values().cloned().collect();
        for partition in partitions {
            let idle = std::mem::take(&mut lock(&partition.state).idle);
            for idle in idle {
                self.retire(&partition, idle.socket, CloseReason::Shutdown);
            }
        }
    }

    /// One pass over a partition's idle sockets: read what arrived, ping, and close the ones
    /// that are dead, too old, unanswered, or idle for too long.
    fn sweep(self: &Arc<Self>, partition: &Arc<Partition>) {
        let config = &self.config;
        let mut closing = Vec::new();
        {
            let mut state = lock(&partition.state);
            let quiet = !state.pinned
                && state
                    .last_used
                    .is_none_or(|used| used.elapsed() >= config.idle_timeout);
            let mut index = 0;
            while index < state.idle.len() {
                let surplus = state.idle.len() > config.min_idle;
                let idle = &mut state.idle[index];
                let verdict = idle.socket.drain().and_then(|()| {
                    if idle.socket.age() >= config.max_age {
                        Err(CloseReason::MaxAge)
                    } else if idle.since.elapsed() >= config.idle_timeout && (surplus || quiet) {
                        Err(CloseReason::IdleTimeout)
                    } else {
                        match config.ping_interval {
                            Some(every) => idle.socket.keep_alive(every),
                            None => Ok(()),
                        }
                    }
                });
                match verdict {
                    Ok(()) => index += 1,
                    Err(reason) => closing.push((state.remove_idle(index).socket, reason)),
                }
            }
        }
        for (socket, reason) in closing {
            self.retire(partition, socket, reason);
        }
        let expired = lock(&partition.state).index.expire_stored();
        let cooled_down = {
            let mut state = lock(&partition.state);
            let over = state
                .rest_until
                .is_some_and(|until| Instant::now() >= until);
            if over {
                state.rest_until = None;
            }
            over
        };
        if expired || cooled_down || lock(&partition.state).open == 0 {
            self.forget_if_unused(partition);
        }
    }

    /// Drops a partition that holds nothing any more: no socket, no stored head, no REST
    /// cool-down, no turn in flight, not pinned.
    fn forget_if_unused(&self, partition: &Arc<Partition>) {
        let unused = {
            let state = lock(&partition.state);
            state.open == 0
                && !state.index.has_stored()
                && !state.pinned
                && state.rest_until.is_none()
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

/// Exclusive use of one socket for one turn.
#[derive(Debug)]
pub struct Lease {
    socket: Option<Socket>,
    partition: Arc<Partition>,
    pool: Arc<Inner>,
    /// This turn's share of `max_sockets`; given back before the socket is retired so an
    /// unused partition can be forgotten.
    permit: Option<OwnedSemaphorePermit>,
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
