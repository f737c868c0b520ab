//! Who owns a conversation (docs/architecture.md, "Cluster"): rendezvous (highest random
//! weight) hashing of the conversation's key over the replicas that are up. Every replica
//! computes the same owner from the request alone: the key is a hash, keyed by
//! `cluster.secret`, of the credential and of the conversation's root (its items up to and
//! including the first user message, in canonical form), or of the affinity header's value.
//! Adding or removing one replica of N moves only the conversations it owns or will own.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::auth::Credential;
use crate::continuation::input_items;
use crate::protocol::items::{self, ItemKind};

/// The keyed hash every replica shares.
#[derive(Debug, Clone)]
pub(super) struct Ring {
    keys: (u64, u64),
}

impl Ring {
    /// Keys derived from the shared secret, so every replica agrees and no client can aim a
    /// conversation at a replica of its choice.
    pub(super) fn new(secret: &[u8]) -> Self {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            b"wsbridge cluster owner key",
        );
        let bytes = tag.as_ref();
        let word = |at: usize| {
            let mut buffer = [0; 8];
            buffer.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(buffer)
        };
        Self {
            keys: (word(0), word(8)),
        }
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.keys.0, self.keys.1)
    }

    /// The conversation's key: the credential and `affinity` (the affinity header's value)
    /// when given, else the root items of `request`'s input; `None` when it has no input.
    pub(super) fn key(
        &self,
        credential: &Credential,
        affinity: Option<&[u8]>,
        request: &Map<String, Value>,
    ) -> Option<u128> {
        let mut hasher = self.hasher();
        credential.hash(&mut hasher);
        if let Some(value) = affinity {
            hasher.write(b"h");
            hasher.write(value);
            return Some(hasher.finish128().as_u128());
        }
        let items = input_items(request);
        if items.is_empty() {
            return None;
        }
        hasher.write(b"r");
        let mut buffer = Vec::new();
        for item in items.iter() {
            buffer.clear();
            let kind = items::write_canonical(item, &mut buffer);
            hasher.write(&buffer);
            let user = kind == ItemKind::Message
                && item.get("role").and_then(Value::as_str) == Some("user");
            if user {
                break;
            }
        }
        Some(hasher.finish128().as_u128())
    }

    /// The index of the replica in `peers` with the highest weight for `key` among those
    /// `up` says are up.
    pub(super) fn owner(&self, key: u128, peers: &[String], up: impl Fn(usize) -> bool) -> usize {
        let mut best = (0, 0);
        for (index, peer) in peers.iter().enumerate() {
            if !up(index) {
                continue;
            }
            let mut hasher = self.hasher();
            hasher.write(&key.to_le_bytes());
            hasher.write(peer.as_bytes());
            let weight = hasher.finish();
            if weight >= best.1 {
                best = (index, weight);
            }
        }
        best.0
    }
}

/// Which replica answered a response id this replica forwarded, so a later request that
/// names it in `previous_response_id` goes there. Bounded: the oldest ids are forgotten.
#[derive(Debug, Default)]
pub(super) struct Issued {
    owners: HashMap<String, Arc<str>>,
    order: VecDeque<String>,
}

/// Response ids remembered at most.
const ISSUED_KEPT: usize = 100_000;

impl Issued {
    pub(super) fn remember(&mut self, id: String, owner: Arc<str>) {
        if self.owners.insert(id.clone(), owner).is_some() {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > ISSUED_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.owners.remove(&oldest);
        }
    }

    pub(super) fn owner(&self, id: &str) -> Option<Arc<str>> {
        self.owners.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(input: Value) -> Map<String, Value> {
        json!({ "model": "m", "input": input })
            .as_object()
            .unwrap()
            .clone()
    }

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn later_turns_of_a_conversation_have_its_first_turns_key() {
        let ring = Ring::new(b"0123456789abcdef");
        let key = Credential::bearer("sk-a").unwrap();
        let system = json!({ "role": "developer", "content": "Be brief." });
        let user = json!({ "role": "user", "content": "hi" });
        let first = ring.key(&key, None, &request(json!([system, user])));
        let later = request(json!([
            system,
            { "role": "user", "content": [{ "type": "input_text", "text": "hi" }] },
            { "type": "function_call", "call_id": "c", "name": "f", "arguments": "{}" },
            { "type": "function_call_output", "call_id": "c", "output": "1" },
        ]));
        assert_eq!(first, ring.key(&key, None, &later));
        assert_eq!(
            ring.key(&key, None, &request(json!("hi"))),
            ring.key(&key, None, &request(json!([user])))
        );
        let other_text = request(json!([system, { "role": "user", "content": "ho" }]));
        assert_ne!(first, ring.key(&key, None, &other_text));
        let other_key = Credential::bearer("sk-b").unwrap();
        assert_ne!(first, ring.key(&other_key, None, &later));
        assert_eq!(ring.key(&key, None, &request(json!([]))), None);
        let pinned = ring.key(&key, Some(b"session-1"), &later);
        assert_eq!(pinned, ring.key(&key, Some(b"session-1"), &other_text));
        assert_ne!(pinned, first);
        // Another secret, another key: owners cannot be predicted from outside.
        assert_ne!(
            first,
            Ring::new(b"another secret!!").key(&key, None, &later)
        );
    }

    #[test]
    fn owners_spread_evenly_and_a_new_replica_takes_only_its_share() {
        let ring = Ring::new(b"0123456789abcdef");
        let (three, four) = (peers(3), peers(4));
        let keys: Vec<u128> = (0..6000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut counts = [0; 3];
        let mut moved = 0;
        for &key in &keys {
            let before = ring.owner(key, &three, |_| true);
            counts[before] += 1;
            let after = ring.owner(key, &four, |_| true);
            if after != before {
                assert_eq!(after, 3, "a conversation moved between two old replicas");
                moved += 1;
            }
            // Replica 1 down: only its conversations move.
            let without = ring.owner(key, &three, |i| i != 1);
            assert!(before == 1 || without == before);
            assert_ne!(without, 1);
        }
        for count in counts {
            assert!((1800..2200).contains(&count), "{counts:?}");
        }
        assert!((1300..1700).contains(&moved), "{moved} of 6000 moved");
    }

    #[test]
    fn issued_ids_are_remembered_up_to_a_bound() {
        let mut issued = Issued::default();
        issued.remember("resp_a".into(), Arc::from("http://b:1"));
        assert_eq!(issued.owner("resp_a").as_deref(), Some("http://b:1"));
        assert_eq!(issued.owner("resp_b"), None);
        for i in 0..ISSUED_KEPT {
            issued.remember(format!("resp_{i}"), Arc::from("http://a:1"));
        }
        assert_eq!(issued.owner("resp_a"), None);
        assert_eq!(issued.owners.len(), ISSUED_KEPT);
    }
}
