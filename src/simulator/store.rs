//! Completed responses and where they are kept: each socket's cache (in `ws`) and the
//! persisted store for `store=true` responses, which any socket and REST can hydrate from.
//!
//! A [`Stored`] response points at its parent instead of copying the history, so a long chain
//! costs one node per turn. Its [`ContextSummary`] is what the scripted model needs of the whole
//! conversation, folded incrementally so no turn walks the chain.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::protocol::items::{self, ItemKind};

/// What the scripted model needs to know about a whole conversation.
#[derive(Debug, Clone)]
pub struct ContextSummary {
    /// FNV-1a over the canonical encoding of every non-reasoning item: equal for the same
    /// conversation whether it arrived in full, as a continuation, or in another SDK's shapes.
    pub digest: u64,
    /// Non-reasoning items (reasoning may be dropped by clients without changing the answer).
    pub items: usize,
    pub tool_outputs: usize,
    pub last_user_text: Option<Arc<str>>,
    pub last_tool_output: Option<Arc<str>>,
    /// Bytes of the items' JSON, for usage figures.
    pub bytes: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for ContextSummary {
    fn default() -> Self {
        Self {
            digest: FNV_OFFSET,
            items: 0,
            tool_outputs: 0,
            last_user_text: None,
            last_tool_output: None,
            bytes: 0,
        }
    }
}

impl ContextSummary {
    /// Folds `items` into the summary.
    pub fn extend<'a>(&mut self, new_items: impl IntoIterator<Item = &'a Value>) {
        let mut scratch = Vec::new();
        for item in new_items {
            scratch.clear();
            let kind = items::write_canonical(item, &mut scratch);
            self.bytes += json_len(item);
            if kind == ItemKind::Reasoning {
                continue;
            }
            self.items += 1;
            match kind {
                ItemKind::Message if item.get("role").and_then(Value::as_str) == Some("user") => {
                    self.last_user_text = items::message_text(item).map(Arc::from);
                }
                ItemKind::FunctionCallOutput => {
                    self.tool_outputs += 1;
                    self.last_tool_output = Some(Arc::from(match item.get("output") {
                        Some(Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    }));
                }
                _ => {}
            }
            for byte in &scratch {
                self.digest = (self.digest ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
            }
        }
    }
}

/// Serialized length of a JSON value, without keeping the text.
pub fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A completed (or incomplete) response and the conversation that led to it.
#[derive(Debug)]
pub struct Stored {
    pub id: String,
    pub model: String,
    pub parent: Option<Arc<Stored>>,
    /// This turn's input items followed by its output items.
    pub items: Vec<Value>,
    /// Summary of the whole conversation up to and including `items`.
    pub summary: ContextSummary,
    /// The final Response object, as `GET /v1/responses/{id}` returns it.
    pub response: Value,
}

/// Unlinks the ancestors one at a time: dropping a long chain recursively would overflow the
/// stack (a client can build one quickly with empty-input continuations).
impl Drop for Stored {
    fn drop(&mut self) {
        let mut parent = self.parent.take();
        while let Some(node) = parent {
            parent = match Arc::try_unwrap(node) {
                Ok(mut only_owner) => only_owner.parent.take(),
                Err(_shared) => None,
            };
        }
    }
}

impl Stored {
    /// Whether an item with `id` is part of this conversation.
    pub fn contains_item(&self, id: &str) -> bool {
        let mut node = Some(self);
        while let Some(stored) = node {
            if stored
                .items
                .iter()
                .any(|item| item.get("id").and_then(Value::as_str) == Some(id))
            {
                return true;
            }
            node = stored.parent.as_deref();
        }
        false
    }

    fn reasoning_ids(&self) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(|item| items::kind(item) == ItemKind::Reasoning)
            .filter_map(|item| item.get("id").and_then(Value::as_str))
    }
}

/// The persisted store: `store=true` responses by id, oldest dropped beyond `capacity`.
#[derive(Debug)]
pub struct Store {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    responses: HashMap<String, Arc<Stored>>,
    order: VecDeque<String>,
    reasoning_ids: HashSet<String>,
}

impl Store {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        self.lock().responses.get(id).cloned()
    }

    /// Whether a persisted response produced the reasoning item `id`.
    pub fn has_reasoning_item(&self, id: &str) -> bool {
        self.lock().reasoning_ids.contains(id)
    }

    pub fn insert(&self, stored: Arc<Stored>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        while inner.order.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(evicted) = inner.responses.remove(&oldest) {
                for id in evicted.reasoning_ids() {
                    inner.reasoning_ids.remove(id);
                }
            }
        }
        for id in stored.reasoning_ids() {
            inner.reasoning_ids.insert(id.to_owned());
        }
        inner.order.push_back(stored.id.clone());
        inner.responses.insert(stored.id.clone(), stored);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_is_the_same_for_sdk_round_trip_shapes_and_ignores_reasoning() {
        let mut full = ContextSummary::default();
        full.extend(&[
            json!({"role":"user","content":"hi"}),
            json!({"id":"rs_1","type":"reasoning","summary":[]}),
            json!({"id":"msg_1","type":"message","status":"completed","role":"assistant",
                   "content":[{"type":"output_text","text":"yo","annotations":[]}]}),
        ]);
        let mut easy = ContextSummary::default();
        easy.extend(&[
            json!({"role":"user","content":"hi"}),
            json!({"role":"assistant","content":"yo"}),
        ]);
        assert_eq!(full.digest, easy.digest);
        let mut other = ContextSummary::default();
        other.extend(&[
            json!({"role":"user","content":"hi"}),
            json!({"role":"assistant","content":"no"}),
        ]);
        assert_ne!(full.digest, other.digest);
    }

    #[test]
    fn dropping_a_very_long_chain_does_not_overflow_the_stack() {
        let mut head: Option<Arc<Stored>> = None;
        for i in 0..200_000 {
            head = Some(Arc::new(Stored {
                id: i.to_string(),
                model: "m".into(),
                parent: head.take(),
                items: Vec::new(),
                summary: ContextSummary::default(),
                response: Value::Null,
            }));
        }
        drop(head);
    }

    #[test]
    fn store_drops_the_oldest_beyond_capacity() {
        let store = Store::new(2);
        for id in ["a", "b", "c"] {
            store.insert(Arc::new(Stored {
                id: id.into(),
                model: "m".into(),
                parent: None,
                items: vec![json!({"id": format!("rs_{id}"), "type": "reasoning"})],
                summary: ContextSummary::default(),
                response: Value::Null,
            }));
        }
        assert!(store.get("a").is_none() && store.get("c").is_some());
        assert!(!store.has_reasoning_item("rs_a") && store.has_reasoning_item("rs_b"));
    }
}
