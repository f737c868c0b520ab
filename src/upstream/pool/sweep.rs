//! Keeping a pool's sockets: background connects up to `min_idle` ([`Inner::refill`]) and the
//! sweeper that reads, pings, ages and closes idle sockets (docs/architecture.md, "Pool").

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::super::socket::CloseReason;
use super::partition::Partition;
use super::{Inner, backoff, lock};

impl Inner {
    /// Opens sockets in the background until `min_idle` empty ones are idle or connecting, for
    /// credentials in use (or pinned), after `refill_delay`.
    pub(super) fn refill(self: &Arc<Self>, partition: &Arc<Partition>) {
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

    /// Sweeps every idle socket each period until shutdown, then closes them all.
    pub(super) async fn sweep_forever(self: Arc<Self>) {
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
    pub(super) fn sweep(self: &Arc<Self>, partition: &Arc<Partition>) {
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
        {
            // Old stored heads and an ended REST cool-down are let go; a partition left with
            // nothing is then forgotten (forget_if_unused checks it under the lock).
            let mut state = lock(&partition.state);
            state.index.expire_stored();
            if state
                .rest_until
                .is_some_and(|until| Instant::now() >= until)
            {
                state.rest_until = None;
            }
        }
        self.forget_if_unused(partition);
    }
}
