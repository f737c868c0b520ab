//! The heads a credential's idle sockets hold, and its stored heads, indexed for one lookup
//! per request ([`HeadIndex`]) (docs/architecture.md, "Continuations").
//!
//! The index is keyed by socket id and knows nothing of sockets: the pool owns one per
//! partition, under the partition's lock, inserting a head when its socket goes idle and
//! removing it when the socket is taken, so a lookup and the take that follows are atomic.
//! Stored heads (`store: true` turns, continuable on any socket) outlive their socket, at most
//! [`STORED_HEADS`] per credential, each for [`STORED_HEAD_TTL`].

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Affinity, Head, Matched, longest_match};

/// Stored heads remembered per credential; the least recently recorded goes first.
pub const STORED_HEADS: usize = 4096;

/// How long a stored head is offered for continuation after its turn.
pub const STORED_HEAD_TTL: Duration = Duration::from_secs(3600);

/// Heads by digest and by response id (→ socket id), and stored heads by digest.
#[derive(Debug, Default)]
pub struct HeadIndex {
    by_digest: HashMap<u128, u64>,
    by_response: HashMap<String, u64>,
    stored: HashMap<u128, StoredHead>,
}

/// A `store: true` turn the upstream can load on any socket.
#[derive(Debug)]
struct StoredHead {
    response_id: String,
    model: String,
    trailing_reasoning: Vec<u128>,
    recorded: Instant,
}

/// Where the head a request wants is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// On this idle socket.
    Socket(u64, Matched),
    /// In the upstream's store: any socket will do.
    Stored(Matched),
}

impl HeadIndex {
    /// `socket` went idle holding `head`.
    pub fn insert(&mut self, socket: u64, head: &Head) {
        if let Some(digest) = head.digest {
            self.by_digest.insert(digest, socket);
        }
        self.by_response.insert(head.response_id.clone(), socket);
    }

    /// `socket`, holding `head`, is no longer idle (taken or closed).
    pub fn remove(&mut self, socket: u64, head: &Head) {
        if let Some(digest) = head.digest
            && self.by_digest.get(&digest) == Some(&socket)
        {
            self.by_digest.remove(&digest);
        }
        if self.by_response.get(&head.response_id) == Some(&socket) {
            self.by_response.remove(&head.response_id);
        }
    }

    /// Keeps a `store: true` head continuable on any socket, whatever becomes of its own.
    pub fn remember_stored(&mut self, head: &Head) {
        let Some(digest) = head.digest.filter(|_| head.stored) else {
            return;
        };
        if self.stored.len() >= STORED_HEADS && !self.stored.contains_key(&digest) {
            let oldest = self
                .stored
                .iter()
                .min_by_key(|(_, stored)| stored.recorded)
                .map(|(digest, _)| *digest);
            if let Some(oldest) = oldest {
                self.stored.remove(&oldest);
            }
        }
        self.stored.insert(
            digest,
            StoredHead {
                response_id: head.response_id.clone(),
                model: head.model.clone(),
                trailing_reasoning: head.trailing_reasoning.clone(),
                recorded: Instant::now(),
            },
        );
    }

    /// Stops offering the stored head `response_id` (the upstream said it does not have it).
    pub fn forget_stored(&mut self, response_id: &str) {
        self.stored
            .retain(|_, stored| stored.response_id != response_id);
    }

    /// Drops stored heads older than [`STORED_HEAD_TTL`].
    pub fn expire_stored(&mut self) {
        self.stored
            .retain(|_, stored| stored.recorded.elapsed() < STORED_HEAD_TTL);
    }

    /// True while stored heads are remembered (the credential's state must stay).
    pub fn has_stored(&self) -> bool {
        !self.stored.is_empty()
    }

    /// The head `affinity` wants. `idle_head` gives the head of an idle socket (`None` when
    /// the socket is not idle): the index only proposes sockets that are.
    pub fn find<'h>(
        &self,
        affinity: &Affinity<'_>,
        idle_head: impl Fn(u64) -> Option<&'h Head>,
    ) -> Option<Found> {
        match affinity {
            Affinity::None => None,
            Affinity::Extend { prefixes, model } | Affinity::Only { prefixes, model } => {
                let mut found = None;
                let on_socket = longest_match(prefixes, |digest| {
                    found = self.by_digest.get(&digest).and_then(|socket| {
                        idle_head(*socket)
                            .filter(|head| head.model == *model)
                            .map(|head| (*socket, head))
                    });
                    found.is_some()
                });
                if let (Some(items), Some((socket, head))) = (on_socket, found) {
                    return Some(Found::Socket(
                        socket,
                        Matched {
                            items,
                            previous: head.response_id.clone(),
                            stored: head.stored,
                            trailing_reasoning: head.trailing_reasoning.clone(),
                        },
                    ));
                }
                if self.stored.is_empty() {
                    return None;
                }
                let mut stored = None;
                let items = longest_match(prefixes, |digest| {
                    stored = self.stored.get(&digest).filter(|s| s.model == *model);
                    stored.is_some()
                })?;
                let stored = stored?;
                Some(Found::Stored(Matched {
                    items,
                    previous: stored.response_id.clone(),
                    stored: true,
                    trailing_reasoning: stored.trailing_reasoning.clone(),
                }))
            }
            Affinity::Response(id) => {
                let socket = *self.by_response.get(*id)?;
                idle_head(socket)?;
                Some(Found::Socket(
                    socket,
                    Matched {
                        items: 0,
                        previous: (*id).to_owned(),
                        stored: false,
                        trailing_reasoning: Vec::new(),
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: &str, digest: u128, stored: bool) -> Head {
        Head {
            response_id: id.into(),
            digest: Some(digest),
            model: "m".into(),
            items: 2,
            stored,
            trailing_reasoning: Vec::new(),
        }
    }

    fn extend(prefixes: &[u128]) -> Affinity<'_> {
        Affinity::Extend {
            prefixes,
            model: "m",
        }
    }

    #[test]
    fn the_longest_prefix_held_by_an_idle_socket_of_the_same_model_is_found() {
        let mut index = HeadIndex::default();
        let (short, long) = (head("r1", 11, false), head("r2", 22, false));
        index.insert(1, &short);
        index.insert(2, &long);
        let idle = |socket: u64| match socket {
            1 => Some(&short),
            2 => Some(&long),
            _ => None,
        };
        let found = index.find(&extend(&[11, 22, 33]), idle);
        assert!(
            matches!(found, Some(Found::Socket(2, ref m)) if m.items == 2 && m.previous == "r2")
        );
        let other_model = Affinity::Extend {
            prefixes: &[11, 22, 33],
            model: "other",
        };
        assert_eq!(index.find(&other_model, idle), None);
    }

    #[test]
    fn a_socket_that_is_not_idle_or_was_removed_is_not_offered() {
        let mut index = HeadIndex::default();
        let held = head("r1", 11, false);
        index.insert(1, &held);
        assert_eq!(index.find(&extend(&[11]), |_| None), None);
        index.remove(1, &held);
        assert_eq!(index.find(&extend(&[11]), |_| Some(&held)), None);
        assert_eq!(index.find(&Affinity::Response("r1"), |_| Some(&held)), None);
    }

    #[test]
    fn a_newer_socket_holding_the_same_head_is_not_unindexed_by_the_older_one() {
        let mut index = HeadIndex::default();
        let held = head("r1", 11, false);
        index.insert(1, &held);
        index.insert(2, &held);
        index.remove(1, &held);
        assert!(matches!(
            index.find(&extend(&[11]), |_| Some(&held)),
            Some(Found::Socket(2, _))
        ));
    }

    #[test]
    fn the_clients_own_previous_response_id_finds_its_socket() {
        let mut index = HeadIndex::default();
        let held = head("r9", 99, false);
        index.insert(7, &held);
        let found = index.find(&Affinity::Response("r9"), |_| Some(&held));
        assert!(matches!(found, Some(Found::Socket(7, ref m)) if m.items == 0));
    }

    #[test]
    fn stored_heads_outlive_their_socket_are_bounded_and_can_be_forgotten() {
        let mut index = HeadIndex::default();
        index.remember_stored(&head("unstored", 5, false));
        assert!(!index.has_stored());
        index.remember_stored(&head("r1", 11, true));
        let found = index.find(&extend(&[11, 12]), |_| None);
        assert!(matches!(found, Some(Found::Stored(ref m)) if m.previous == "r1" && m.stored));
        index.forget_stored("r1");
        assert_eq!(index.find(&extend(&[11, 12]), |_| None), None);
        for n in 0..=STORED_HEADS as u128 {
            index.remember_stored(&head(&format!("r{n}"), 1000 + n, true));
        }
        assert_eq!(index.stored.len(), STORED_HEADS);
    }

    #[tokio::test(start_paused = true)]
    async fn stored_heads_expire_after_their_ttl() {
        let mut index = HeadIndex::default();
        index.remember_stored(&head("r1", 11, true));
        tokio::time::advance(STORED_HEAD_TTL - Duration::from_secs(1)).await;
        index.expire_stored();
        assert!(index.has_stored());
        tokio::time::advance(Duration::from_secs(2)).await;
        index.expire_stored();
        assert!(!index.has_stored());
    }
}
