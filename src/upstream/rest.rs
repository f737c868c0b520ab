//! The REST cool-down ([`RestCooldown`]): a credential whose WebSocket upgrade the upstream
//! refused with 426, 404 or 405 (no WebSocket mode there) is sent over the REST pass-through
//! for `upstream.rest_fallback_cooldown` before the upgrade is tried again
//! (docs/architecture.md, "Data path"). The engine owns one, beside the pool: the cool-down is
//! about the REST path, not about any socket.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Credential;

/// When each credential's cool-down ends. Ended ones are forgotten as soon as they are looked
/// up, when another cool-down starts and when the credentials are counted, so the map only
/// holds credentials refused within the last cool-down.
#[derive(Debug, Default)]
pub struct RestCooldown {
    until: Mutex<HashMap<Credential, Instant>>,
}

impl RestCooldown {
    fn until(&self) -> MutexGuard<'_, HashMap<Credential, Instant>> {
        // A panic while holding the lock leaves plain instants behind; keep serving.
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while `credential` is in its cool-down.
    pub fn active(&self, credential: &Credential) -> bool {
        let mut until = self.until();
        // The common case, no credential refused: no hashing.
        if until.is_empty() {
            return false;
        }
        match until.get(credential) {
            Some(end) if Instant::now() < *end => true,
            Some(_) => {
                until.remove(credential);
                false
            }
            None => false,
        }
    }

    /// Sends `credential` over REST for `cooldown` from now.
    pub fn start(&self, credential: &Credential, cooldown: Duration) {
        let now = Instant::now();
        let mut until = self.until();
        until.retain(|_, end| now < *end);
        until.insert(credential.clone(), now + cooldown);
    }

    /// The credentials in a cool-down now.
    pub fn credentials(&self) -> Vec<Credential> {
        let now = Instant::now();
        let mut until = self.until();
        until.retain(|_, end| now < *end);
        until.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(300);

    fn key(name: &str) -> Credential {
        Credential::bearer(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_credential_is_on_rest_for_its_cooldown_only() {
        let cooldown = RestCooldown::default();
        let (alpha, bravo) = (key("sk-alpha"), key("sk-bravo"));
        assert!(!cooldown.active(&alpha));
        cooldown.start(&alpha, COOLDOWN);
        assert!(cooldown.active(&alpha));
        assert!(!cooldown.active(&bravo), "per credential");
        tokio::time::advance(COOLDOWN - Duration::from_millis(1)).await;
        assert!(cooldown.active(&alpha));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!cooldown.active(&alpha), "the upgrade is tried again");
        assert!(
            cooldown.credentials().is_empty(),
            "and the credential forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ended_cooldowns_are_forgotten_when_counted_or_when_another_starts() {
        let cooldown = RestCooldown::default();
        let (alpha, bravo) = (key("sk-alpha"), key("sk-bravo"));
        cooldown.start(&alpha, COOLDOWN);
        tokio::time::advance(COOLDOWN / 2).await;
        cooldown.start(&bravo, COOLDOWN);
        assert_eq!(cooldown.credentials().len(), 2);
        tokio::time::advance(COOLDOWN / 2).await;
        assert_eq!(cooldown.credentials(), [bravo]);
        cooldown.start(&alpha, COOLDOWN);
        tokio::time::advance(COOLDOWN / 2).await;
        cooldown.start(&key("sk-charlie"), COOLDOWN);
        assert_eq!(cooldown.until().len(), 2, "bravo's ended cool-down is gone");
    }
}
