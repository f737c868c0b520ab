//! Keeping a pool's sockets: background connects up to `min_idle` ([`Inner::refill`]) and the
//! sweeper that reads, pings, ages and closes idle sockets (docs/architecture.md, "Pool").

use std::sync::Arc;
use std::time::Duration;

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
            // One sweep polls every idle socket once (`now_or_never`) in a single poll of this
            // task. Under tokio's cooperative budget the sockets past the first hundred or so
            // would see every read as pending, sweep after sweep, and be closed for pongs
            // they had received; so the sweep runs outside the budget. It never waits.
            tokio::task::unconstrained(async {
                for partition in partitions {
                    self.sweep(&partition);
                }
            })
            .await;
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
        // Old stored heads are let go; a partition left with nothing is then forgotten
        // (forget_if_unused checks it under the lock).
        lock(&partition.state).index.expire_stored();
        self.forget_if_unused(partition);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use std::time::Duration;

    use tokio::time::sleep;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::super::fake::{self, ANSWER, head, key};
    use super::super::{Checkout, Pool};
    use crate::config::PoolConfig;
    use crate::continuation::Affinity;
    use crate::continuation::index::STORED_HEAD_TTL;
    use crate::outcome::CloseReason;

    const SECOND: Duration = Duration::from_secs(1);
    const HALF: Duration = Duration::from_millis(500);

    async fn lease(pool: &Pool) -> Checkout {
        pool.checkout(&key("sk-alpha"), Affinity::None)
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn min_idle_empty_sockets_are_opened_once_a_turn_has_started() {
        let (pool, upstream) = fake::pool(PoolConfig {
            min_idle: 2,
            ..fake::config()
        });
        let checkout = lease(&pool).await;
        sleep(SECOND * 5).await;
        assert_eq!(upstream.opened(), 1, "nothing before the first event");
        checkout.lease.refill_pool();
        sleep(SECOND).await;
        assert_eq!(upstream.opened(), 3);
        assert_eq!(pool.census(), [2, 1, 0], "two idle, one busy");
        let auth = upstream.authorization(2);
        assert_eq!(auth, "Bearer sk-alpha", "opened with the credential's key");
    }

    #[tokio::test(start_paused = true)]
    async fn background_connects_stay_within_max_sockets() {
        let (pool, upstream) = fake::pool(PoolConfig {
            min_idle: 5,
            max_sockets: 3,
            ..fake::config()
        });
        let checkout = lease(&pool).await;
        checkout.lease.refill_pool();
        sleep(SECOND).await;
        assert_eq!(pool.census(), [2, 1, 0]);
        checkout.lease.release();
        // A turn on one of them asks again: the three are all it may have.
        let again = lease(&pool).await;
        again.lease.refill_pool();
        sleep(SECOND).await;
        assert_eq!((upstream.opened(), pool.census()), (3, [2, 1, 0]));
        // One closes (the client went away): a replacement, still three at most.
        drop(again);
        sleep(SECOND).await;
        assert_eq!(pool.closes(CloseReason::ClientGone), 1);
        assert_eq!((upstream.opened(), upstream.open()), (4, 3));
        assert_eq!(pool.census(), [3, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sockets_beyond_min_idle_close_after_the_idle_timeout_then_the_credential_is_forgotten()
     {
        let config = PoolConfig {
            min_idle: 1,
            ..fake::config()
        };
        let timeout = config.idle_timeout;
        let (pool, upstream) = fake::pool(config);
        let (a, b) = (lease(&pool).await, lease(&pool).await);
        a.lease.release();
        b.lease.release();
        // In use again 10 s before the timeout: one socket is renewed.
        sleep(timeout - SECOND * 10).await;
        lease(&pool).await.lease.release();
        sleep(SECOND * 10 - HALF).await;
        assert_eq!(pool.census(), [2, 0, 0]);
        sleep(SECOND).await;
        assert_eq!(
            pool.census(),
            [1, 0, 0],
            "the one idle for the timeout closed"
        );
        assert_eq!(pool.closes(CloseReason::IdleTimeout), 1);
        assert_eq!(upstream.open(), 1, "the upstream saw it closed");
        // The credential goes quiet: its last socket goes too, and then the credential.
        sleep(timeout - SECOND * 11).await;
        assert_eq!((pool.census(), pool.credentials()), ([1, 0, 0], 1));
        sleep(SECOND * 2).await;
        assert_eq!(pool.closes(CloseReason::IdleTimeout), 2);
        assert_eq!((upstream.open(), pool.credentials()), (0, 0));
        assert_eq!(
            upstream.opened(),
            2,
            "nothing reopened for a quiet credential"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_prewarmed_credential_keeps_its_sockets_however_quiet() {
        let (pool, upstream) = fake::pool(PoolConfig {
            min_idle: 1,
            ..fake::config()
        });
        pool.prewarm(&key("sk-alpha"));
        sleep(SECOND * 1000).await;
        assert_eq!((upstream.opened(), upstream.open()), (1, 1));
        assert_eq!((pool.census(), pool.credentials()), ([1, 0, 0], 1));
    }

    fn pinged_every_10s() -> PoolConfig {
        PoolConfig {
            ping_interval: Some(SECOND * 10),
            ..fake::config()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_whose_peer_stops_answering_pings_is_closed() {
        let (pool, upstream) = fake::pool(pinged_every_10s());
        lease(&pool).await.lease.release();
        upstream.reading(0, false);
        // Pinged at the first sweep (1 s); the next ping is due 10 s later.
        sleep(SECOND * 10 + HALF).await;
        assert_eq!(pool.census(), [1, 0, 0]);
        sleep(SECOND).await;
        assert_eq!(pool.closes(CloseReason::PingTimeout), 1);
        assert_eq!(pool.census(), [0, 0, 0]);
        upstream.reading(0, true);
        sleep(HALF).await;
        assert!(!upstream.is_open(0), "the upstream got the close");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_whose_peer_answers_pings_is_kept() {
        let (pool, upstream) = fake::pool(pinged_every_10s());
        lease(&pool).await.lease.release();
        sleep(SECOND * 60 + HALF).await;
        assert_eq!(upstream.pings(0), 6, "at 1, 11, 21, 31, 41 and 51 s");
        assert_eq!(pool.closes(CloseReason::PingTimeout), 0);
        assert_eq!(pool.census(), [1, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_idle_socket_of_a_large_pool_reads_its_pongs() {
        // One sweep reads, flushes and pings every idle socket in one poll of the sweeper:
        // within tokio's cooperative budget, the sockets late in the list would read nothing
        // at every sweep and be closed as unanswered (seen as steady `ping_timeout` closes
        // under load).
        const SOCKETS: usize = 150;
        let (pool, upstream) = fake::pool(PoolConfig {
            max_sockets: SOCKETS,
            ping_interval: Some(SECOND),
            ..fake::config()
        });
        let mut leases = Vec::new();
        for _ in 0..SOCKETS {
            leases.push(lease(&pool).await);
        }
        for checkout in leases {
            checkout.lease.release();
        }
        sleep(SECOND * 10 + HALF).await;
        assert_eq!(pool.closes(CloseReason::PingTimeout), 0);
        assert_eq!(pool.census(), [SOCKETS, 0, 0]);
        assert_eq!(upstream.pings(SOCKETS - 1), 10, "one ping a second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_read_during_a_turn_answers_the_idle_ping() {
        let (pool, upstream) = fake::pool(pinged_every_10s());
        lease(&pool).await.lease.release();
        // The ping of the first sweep is still unanswered when the socket is leased.
        upstream.reading(0, false);
        sleep(SECOND + HALF).await;
        let mut checkout = lease(&pool).await;
        let socket = checkout.lease.socket();
        socket.send(Utf8Bytes::from_static("{}")).await.unwrap();
        upstream.reading(0, true);
        // The pong comes first on the wire; the turn reads past it to its event.
        assert_eq!(socket.next_event().await.unwrap().as_str(), ANSWER);
        assert_eq!(upstream.frames(0), ["{}"]);
        checkout.lease.release();
        // The ping due at 11 s finds the first answered: a new ping, no close.
        sleep(SECOND * 20).await;
        assert_eq!(pool.closes(CloseReason::PingTimeout), 0);
        assert_eq!((pool.census(), upstream.pings(0)), ([1, 0, 0], 3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_past_max_age_is_retired() {
        let (pool, upstream) = fake::pool(PoolConfig {
            max_age: SECOND * 60,
            ..fake::config()
        });
        lease(&pool).await.lease.release();
        sleep(SECOND * 60 - HALF).await;
        assert_eq!(pool.census(), [1, 0, 0]);
        sleep(SECOND).await;
        assert_eq!(pool.closes(CloseReason::MaxAge), 1);
        assert_eq!((pool.census(), upstream.open()), ([0, 0, 0], 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_head_outlives_its_socket_until_it_expires() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        let extend = Affinity::Extend {
            prefixes: &[11, 12],
            model: "m",
        };
        let mut checkout = lease(&pool).await;
        checkout.lease.socket().set_head(Some(head("r1", 11, true)));
        checkout.lease.release();
        upstream.close(0);
        sleep(SECOND + HALF).await;
        assert_eq!(pool.closes(CloseReason::ServerClosed), 1);
        assert_eq!((pool.census(), pool.credentials()), ([0, 0, 0], 1));
        // Continued on a new socket: the upstream loads r1 from its store.
        let checkout = pool.checkout(&alpha, extend).await.unwrap();
        let matched = checkout.matched.unwrap();
        assert!(matched.stored && matched.previous == "r1", "{matched:?}");
        checkout.lease.release();
        // The new socket goes with the idle timeout; the stored head stays for its TTL.
        sleep(STORED_HEAD_TTL - SECOND * 2).await;
        assert_eq!((pool.census(), pool.credentials()), ([0, 0, 0], 1));
        sleep(SECOND * 2).await;
        assert_eq!(pool.credentials(), 0, "nothing left: forgotten");
        let checkout = pool.checkout(&alpha, extend).await.unwrap();
        assert_eq!(checkout.matched, None);
    }

    #[tokio::test(start_paused = true)]
    async fn what_an_idle_socket_receives_is_read_at_the_next_sweep() {
        let (pool, upstream) = fake::pool(fake::config());
        let alpha = key("sk-alpha");
        let (a, b) = (lease(&pool).await, lease(&pool).await);
        let c = lease(&pool).await;
        for checkout in [a, b, c] {
            checkout.lease.release();
        }
        upstream.send(0, r#"{"type":"keepalive"}"#);
        let limit = r#"{"type":"error","error":{"code":"websocket_connection_limit_reached"}}"#;
        upstream.send(1, limit);
        upstream.send(2, r#"{"type":"response.created"}"#);
        sleep(SECOND + HALF).await;
        assert_eq!(pool.closes(CloseReason::LimitReached), 1);
        assert_eq!(
            pool.closes(CloseReason::ProtocolError),
            1,
            "an event no turn asked for"
        );
        assert_eq!(pool.census(), [1, 0, 0], "a keep-alive is harmless");
        let mut kept = pool.checkout(&alpha, Affinity::None).await.unwrap();
        assert_eq!(kept.lease.socket().id(), 1);
    }
}
