//! One credential's share of the pool ([`Partition`]): its idle sockets, the head index over
//! them, and the counters every socket moves through (docs/architecture.md, "Pool").

use std::sync::Arc;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::super::socket::Socket;
use super::lock;
use crate::auth::Credential;
use crate::continuation::index::{Found, HeadIndex};
use crate::continuation::{Affinity, Head, Matched};

/// The sockets of one credential.
#[derive(Debug)]
pub(super) struct Partition {
    pub(super) credential: Credential,
    pub(super) turns: Arc<Semaphore>,
    pub(super) available: Notify,
    pub(super) state: Mutex<State>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) idle: Vec<Idle>,
    /// The heads of the idle sockets, and the stored heads.
    pub(super) index: HeadIndex,
    /// Idle + busy + connecting.
    pub(super) open: usize,
    pub(super) connecting: usize,
    pub(super) busy: usize,
    /// Last checkout; a credential unused for `idle_timeout` lets all its sockets go.
    pub(super) last_used: Option<Instant>,
    /// Kept warm regardless of use (the injected credential).
    pub(super) pinned: bool,
    /// Wait before the next background connect: grows while connects fail or fresh sockets
    /// are closed at once, so a broken upstream is not hammered.
    pub(super) refill_delay: Duration,
}

/// An idle socket, owned by the pool while no turn uses it.
#[derive(Debug)]
pub(super) struct Idle {
    pub(super) socket: Socket,
    pub(super) since: Instant,
}

impl Idle {
    pub(super) fn head(&self) -> Option<&Head> {
        self.socket.head()
    }
}

/// One `open` + `connecting` slot taken for a connect in progress; dropping it (the connect
/// failed, or the waiting request was cancelled) gives the slot back.
pub(super) struct ConnectSlot<'a> {
    pub(super) partition: &'a Partition,
    pub(super) armed: bool,
}

impl ConnectSlot<'_> {
    /// The connect succeeded: the slot now belongs to a socket that is `busy`.
    pub(super) fn into_busy(mut self) {
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
    pub(super) fn headless_idle(&self) -> usize {
        self.idle
            .iter()
            .filter(|idle| idle.head().is_none())
            .count()
    }

    pub(super) fn add_idle(&mut self, idle: Idle) {
        if let Some(head) = idle.head() {
            self.index.insert(idle.socket.id(), head);
        }
        self.idle.push(idle);
    }

    pub(super) fn remove_idle(&mut self, index: usize) -> Idle {
        let idle = self.idle.swap_remove(index);
        if let Some(head) = idle.socket.head() {
            self.index.remove(idle.socket.id(), head);
        }
        idle
    }

    pub(super) fn idle_index(&self, id: u64) -> Option<usize> {
        self.idle.iter().position(|idle| idle.socket.id() == id)
    }

    /// The head `affinity` wants: on an idle socket (its index), or stored (`None`: any
    /// socket will do).
    pub(super) fn affine(&self, affinity: &Affinity<'_>) -> Option<(Option<usize>, Matched)> {
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
