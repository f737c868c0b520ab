//! `stream_id` lanes (`upstream.lanes = true`; docs/architecture.md, "Lanes"): concurrent
//! conversations of one credential share few upstream sockets, each conversation on a named
//! lane of its own that holds its head.
//!
//! ```text
//!  checkout_lane ──▶ the idle lane holding the head the request extends (its socket has a slot)
//!     │              else a free lane on the socket with the fewest turns in flight
//!     │              else a new socket (one connect at a time), else the least recently used
//!     │              idle head (evicted) ──▶ LaneLease ──▶ frames through the socket's task
//!     └─ nothing free: wait up to checkout_timeout (429 after)
//! ```
//!
//! The bookkeeping is [`table::Table`] under the partition's lock; each socket is owned by its
//! task ([`mux`]), which writes the frames and routes every event to its lane's turn by
//! `stream_id`. With lanes off none of this runs: a turn owns its socket as before.

mod mux;
mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{CheckoutError, Inner, Pool, lock};
use crate::auth::Credential;
use crate::continuation::{Affinity, Head, Matched};
use crate::upstream::socket::CloseReason;
use mux::Command;
use table::{Finish, Pick, Table, Taken, lane_name};

/// Lane sockets of all credentials.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    partitions: Mutex<HashMap<Credential, Arc<LanePartition>>>,
}

/// One credential's lane sockets.
#[derive(Debug)]
pub(super) struct LanePartition {
    credential: Credential,
    state: Mutex<LaneState>,
    /// Woken whenever a lane, a slot or a socket may have become available.
    available: Notify,
}

#[derive(Debug, Default)]
struct LaneState {
    table: Table,
    /// Each open lane socket's task, and when the socket was opened.
    tasks: HashMap<u64, (mpsc::UnboundedSender<Command>, Instant)>,
}

/// A lane leased for one turn, and the head it continues.
#[derive(Debug)]
pub struct LaneCheckout {
    pub lease: LaneLease,
    pub matched: Option<Matched>,
}

/// One lane of a shared socket for one turn. Frames go out and events come in through the
/// socket's task; the turn ends with [`LaneLease::release`] (head kept) or
/// [`LaneLease::close`] (the lane is given up; the socket itself only for a socket-wide
/// reason). Dropped mid-turn, the lane is abandoned.
#[derive(Debug)]
pub struct LaneLease {
    partition: Arc<LanePartition>,
    pool: Arc<Inner>,
    mux: u64,
    lane: usize,
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    events: Option<mpsc::UnboundedReceiver<Utf8Bytes>>,
    reused: bool,
    opened: Instant,
    done: bool,
}

impl Pool {
    /// Leases a lane for one turn (see the module's diagram).
    pub async fn checkout_lane(
        &self,
        credential: &Credential,
        affinity: Affinity<'_>,
    ) -> Result<LaneCheckout, CheckoutError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.checkout_timeout;
        let partition = inner.lane_partition(credential);
        loop {
            if inner.shutdown.is_cancelled() {
                return Err(CheckoutError::ShuttingDown);
            }
            let notified = partition.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let pick = partition.with_table(inner, |table| {
                table.choose(&affinity, now < deadline, inner.config.max_sockets, now)
            });
            match pick.map_err(|_| CheckoutError::NoMatch)? {
                Pick::Take(taken) => return Ok(partition.lease(inner, taken)),
                Pick::Connect(stored) => {
                    return partition.connect(inner, stored).await;
                }
                Pick::Wait if now >= deadline => return Err(inner.busy()),
                Pick::Wait => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
        }
    }

    /// Lane sockets, idle and busy, and lanes in use, over all credentials.
    pub(super) fn lane_census(&self) -> (usize, usize, usize) {
        let partitions: Vec<Arc<LanePartition>> = lock(&self.inner.lanes.partitions)
            .values()
            .cloned()
            .collect();
        partitions
            .iter()
            .fold((0, 0, 0), |(idle, busy, lanes), partition| {
                let state = lock(&partition.state);
                let (i, b) = state.table.sockets();
                (idle + i, busy + b, lanes + state.table.lanes_in_use())
            })
    }

    /// Wakes every waiting lane checkout (the pool is closing: they give up at once).
    pub(super) fn wake_lane_checkouts(&self) {
        for partition in lock(&self.inner.lanes.partitions).values() {
            partition.available.notify_waiters();
        }
    }

    /// Credentials with lane state.
    pub(super) fn lane_credentials(&self) -> Vec<Credential> {
        lock(&self.inner.lanes.partitions).keys().cloned().collect()
    }
}

impl Inner {
    fn lane_partition(&self, credential: &Credential) -> Arc<LanePartition> {
        lock(&self.lanes.partitions)
            .entry(credential.clone())
            .or_insert_with(|| {
                Arc::new(LanePartition {
                    credential: credential.clone(),
                    state: Mutex::default(),
                    available: Notify::new(),
                })
            })
            .clone()
    }
}

impl LanePartition {
    /// Runs `change` on the table and keeps the lane gauges in step with it.
    fn with_table<T>(&self, pool: &Inner, change: impl FnOnce(&mut Table) -> T) -> T {
        let mut state = lock(&self.state);
        let (lanes, sockets) = (state.table.lanes_in_use(), state.tasks.len());
        let out = change(&mut state.table);
        pool.metrics.lanes_changed(
            state.table.lanes_in_use() as i64 - lanes as i64,
            state.tasks.len() as i64 - sockets as i64,
        );
        out
    }

    fn lease(self: &Arc<Self>, pool: &Arc<Inner>, taken: Taken) -> LaneCheckout {
        if taken.evicted {
            pool.metrics.head_evicted();
        }
        let task = lock(&self.state).tasks.get(&taken.mux).cloned();
        let (commands, opened) = task.unwrap_or_else(|| {
            // The task is gone (never in practice: a socket leaves the table before its task
            // ends); a closed channel makes the turn see a closed socket and retry.
            (mpsc::unbounded_channel().0, Instant::now())
        });
        LaneCheckout {
            matched: taken.matched,
            lease: LaneLease {
                partition: self.clone(),
                pool: pool.clone(),
                mux: taken.mux,
                lane: taken.lane,
                name: lane_name(taken.lane),
                commands,
                events: None,
                reused: taken.reused,
                opened,
                done: false,
            },
        }
    }

    /// Opens a lane socket for this turn (its slot counted by the table) and starts its task.
    async fn connect(
        self: &Arc<Self>,
        pool: &Arc<Inner>,
        stored: Option<Matched>,
    ) -> Result<LaneCheckout, CheckoutError> {
        struct Connecting<'a>(Option<(&'a LanePartition, &'a Inner)>);
        impl Drop for Connecting<'_> {
            fn drop(&mut self) {
                if let Some((partition, pool)) = self.0.take() {
                    partition.with_table(pool, |table| table.connecting -= 1);
                    partition.available.notify_waiters();
                    pool.forget_lanes_if_unused(partition);
                }
            }
        }
        let mut guard = Connecting(Some((self, pool)));
        let socket = pool
            .connector
            .connect(&self.credential)
            .await
            .map_err(CheckoutError::Connect)?;
        // Connected: `add_mux` below takes the slot over.
        guard.0 = None;
        pool.metrics.socket_opened();
        socket
            .span()
            .in_scope(|| tracing::debug!("lane socket opened"));
        let id = socket.id();
        let opened = socket.opened();
        let (commands, receiver) = mpsc::unbounded_channel();
        let taken = {
            let mut state = lock(&self.state);
            state.tasks.insert(id, (commands, opened));
            let (lanes, sockets) = (state.table.lanes_in_use(), state.tasks.len() - 1);
            let taken = state.table.add_mux(id, stored);
            pool.metrics.lanes_changed(
                state.table.lanes_in_use() as i64 - lanes as i64,
                state.tasks.len() as i64 - sockets as i64,
            );
            taken
        };
        self.available.notify_waiters();
        pool.tasks
            .spawn(mux::Task::new(socket, receiver, self.clone(), pool.clone()).run());
        Ok(self.lease(pool, taken))
    }

    /// A turn on `lane` of socket `mux` ended; `head` says what the lane now holds.
    fn finish(&self, pool: &Inner, mux: u64, lane: usize, head: Finish) {
        let now = Instant::now();
        // A retiring socket left idle is closed by its task's next tick.
        self.with_table(pool, |table| table.finish(mux, lane, head, now));
        self.available.notify_waiters();
    }

    /// No new turn on socket `mux`; true when it has none in flight.
    fn retire(&self, pool: &Inner, mux: u64) -> bool {
        self.with_table(pool, |table| table.retire(mux))
    }

    fn is_idle(&self, mux: u64) -> bool {
        lock(&self.state).table.is_idle(mux)
    }

    fn is_retiring(&self, mux: u64) -> bool {
        lock(&self.state).table.is_retiring(mux)
    }

    /// Socket `mux`'s task is ending: its lanes and heads go.
    fn close_mux(&self, pool: &Inner, mux: u64) {
        self.with_table(pool, |table| table.remove_mux(mux));
        {
            let mut state = lock(&self.state);
            if state.tasks.remove(&mux).is_some() {
                pool.metrics.lanes_changed(0, -1);
            }
        }
        self.available.notify_waiters();
        pool.forget_lanes_if_unused(self);
    }
}

impl Inner {
    /// Drops a lane partition that holds nothing any more.
    fn forget_lanes_if_unused(&self, partition: &LanePartition) {
        if lock(&partition.state).table.holds_anything() {
            return;
        }
        let mut partitions = lock(&self.lanes.partitions);
        if partitions
            .get(&partition.credential)
            .is_some_and(|current| std::ptr::eq(current.as_ref(), partition))
            && !lock(&partition.state).table.holds_anything()
        {
            partitions.remove(&partition.credential);
        }
    }
}

impl LaneLease {
    /// True when the socket had carried a turn before this one.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// When the socket was opened.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Sends a turn's `response.create` frame on this lane (its `stream_id` added).
    pub fn send(&mut self, frame: &str) -> Result<(), CloseReason> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.events = Some(receiver);
        let frame = Utf8Bytes::from(with_stream_id(frame, &self.name));
        self.commands
            .send(Command::Send {
                lane: self.lane,
                frame,
                events,
            })
            .map_err(|_| CloseReason::ServerClosed)
    }

    /// The next event of this lane's turn, `stream_id` taken out; `Err` once the socket closed.
    pub async fn next_event(&mut self) -> Result<Utf8Bytes, CloseReason> {
        match self.events.as_mut() {
            Some(events) => events.recv().await.ok_or(CloseReason::ServerClosed),
            None => Err(CloseReason::ServerClosed),
        }
    }

    /// The turn ended with its terminal event: the lane holds `head` (or nothing).
    pub fn release(mut self, head: Option<Head>) {
        self.done = true;
        self.partition
            .finish(&self.pool, self.mux, self.lane, Finish::Head(head));
    }

    /// Nothing was sent on this lane: it keeps the head it had.
    pub fn release_unused(mut self) {
        self.done = true;
        self.partition
            .finish(&self.pool, self.mux, self.lane, Finish::Unused);
    }

    /// The upstream refused this lane (`websocket_stream_limit_reached`): its socket opens no
    /// more lanes.
    pub fn refused(mut self) {
        self.done = true;
        let now = Instant::now();
        self.partition.with_table(&self.pool, |table| {
            table.refuse_lane(self.mux, self.lane, now)
        });
        self.partition.available.notify_waiters();
    }

    /// The turn failed. The connection limit retires the whole socket; anything else gives up
    /// only this lane (its events are dropped until its terminal event).
    pub fn close(mut self, reason: CloseReason) {
        self.abandon(reason);
    }

    fn abandon(&mut self, reason: CloseReason) {
        if self.done {
            return;
        }
        self.done = true;
        if reason == CloseReason::LimitReached {
            self.partition.retire(&self.pool, self.mux);
        }
        if self
            .commands
            .send(Command::Abandon(self.lane, reason))
            .is_err()
        {
            self.partition
                .finish(&self.pool, self.mux, self.lane, Finish::Head(None));
        }
    }
}

impl Drop for LaneLease {
    fn drop(&mut self) {
        self.abandon(CloseReason::ClientGone);
    }
}

/// `frame` (a `response.create` object) with `"stream_id"` as its first field.
fn with_stream_id(frame: &str, name: &str) -> String {
    let rest = frame
        .trim_start()
        .strip_prefix('{')
        .unwrap_or(frame)
        .trim_start();
    let separator = if rest.starts_with('}') { "" } else { "," };
    format!("{{\"stream_id\":\"{name}\"{separator}{rest}")
}

#[cfg(test)]
mod tests {
    use super::with_stream_id;

    #[test]
    fn the_lane_goes_first_in_the_frame() {
        assert_eq!(
            with_stream_id(r#"{"type":"response.create","input":[]}"#, "wsbridge-2"),
            r#"{"stream_id":"wsbridge-2","type":"response.create","input":[]}"#
        );
        assert_eq!(
            with_stream_id("{}", "wsbridge-0"),
            r#"{"stream_id":"wsbridge-0"}"#
        );
    }
}
