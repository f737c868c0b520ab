//! Continuations (docs/architecture.md, "Continuations"): recognising that a request's input is a socket's last turn
//! (its input ++ its output) plus new items, so that only the new items go upstream with
//! `previous_response_id`, on the socket that holds that response in memory.
//!
//! Items are compared by their canonical encoding ([`crate::protocol::items::write_canonical`]),
//! chained through a keyed 128-bit SipHash: `d(0) = 0`, `d(k) = H(d(k-1) ‖ canon(item k))`.
//! A socket's [`Head`] holds the digest of its last completed turn's input ++ output; a request
//! whose prefix digest equals a head's digest extends that head. The key is random per process,
//! so digests cannot be predicted or forged from outside, and 128 bits make an accidental
//! collision practically impossible (and heads are scoped by credential on top).
//!
//! In lenient mode reasoning items are left out of the chain on both sides, so a client that
//! drops them still matches; the delta is still cut at the client's own item positions.

use std::hash::Hasher;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::protocol::items::{self, ItemKind};

pub mod index;
pub mod plan;

pub use plan::{Affinity, Continuation, HeadSeed, Matched, Plan, Rules};

/// Whether reasoning items take part in matching (`continuation.reasoning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningPolicy {
    /// Reasoning items are ignored: a client that dropped them still continues.
    Lenient,
    /// Reasoning items must come back exactly (by `id` or `encrypted_content`).
    Strict,
}

/// The last completed turn on a socket: what a continuation on it must extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub response_id: String,
    /// Digest of the turn's full input ++ output; `None` when the input is not known in full
    /// (the client chained with its own `previous_response_id`), so only that id can continue it.
    pub digest: Option<u128>,
    pub model: String,
    /// Items of the turn's input ++ output (what a continuation of it does not resend).
    pub items: usize,
    /// A `store: true` turn that may be continued on any socket
    /// (`continuation.stored_on_any_socket`): the upstream loads it from its store.
    pub stored: bool,
    /// [`Digester::item_key`]s of the reasoning items its output ends with (a turn cut off by
    /// `max_output_tokens` while reasoning): already upstream, so never part of a delta.
    pub trailing_reasoning: Vec<u128>,
}

/// Keyed digests of canonical item chains.
#[derive(Debug, Clone)]
pub struct Digester {
    keys: (u64, u64),
    policy: ReasoningPolicy,
}

impl Digester {
    /// A digester with fresh random keys.
    pub fn new(policy: ReasoningPolicy) -> Self {
        Self {
            keys: crate::ids::secret_key(),
            policy,
        }
    }

    pub fn policy(&self) -> ReasoningPolicy {
        self.policy
    }

    /// The digest after each item: entry `i` covers `items[..=i]`. In lenient mode a reasoning
    /// item repeats the digest before it.
    pub fn prefixes(&self, items: &[Value]) -> Vec<u128> {
        let mut digest = 0;
        let mut buffer = Vec::new();
        items
            .iter()
            .map(|item| {
                digest = self.step(digest, item, &mut buffer);
                digest
            })
            .collect()
    }

    /// `digest` extended by `items`.
    pub fn extend<'a>(&self, mut digest: u128, items: impl IntoIterator<Item = &'a Value>) -> u128 {
        let mut buffer = Vec::new();
        for item in items {
            digest = self.step(digest, item, &mut buffer);
        }
        digest
    }

    /// One item's own key (its canonical form, hashed), whatever the reasoning policy.
    pub fn item_key(&self, item: &Value) -> u128 {
        let mut buffer = Vec::new();
        items::write_canonical(item, &mut buffer);
        let mut hasher = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(&buffer);
        hasher.finish128().as_u128()
    }

    /// The keys of the reasoning items `output` ends with.
    pub fn trailing_reasoning(&self, output: &[Value]) -> Vec<u128> {
        let mut keys: Vec<u128> = output
            .iter()
            .rev()
            .take_while(|item| item.get("type").and_then(Value::as_str) == Some("reasoning"))
            .map(|item| self.item_key(item))
            .collect();
        keys.reverse();
        keys
    }

    /// Where the delta after a matched head starts: at `matched`, past any of the head's own
    /// trailing reasoning items the client sent back (`longest_match` puts every reasoning
    /// item after the matched prefix into the delta).
    pub fn delta_start(
        &self,
        items: &[Value],
        matched: usize,
        trailing_reasoning: &[u128],
    ) -> usize {
        let mut start = matched;
        while start < items.len()
            && !trailing_reasoning.is_empty()
            && trailing_reasoning.contains(&self.item_key(&items[start]))
        {
            start += 1;
        }
        start
    }

    fn step(&self, digest: u128, item: &Value, buffer: &mut Vec<u8>) -> u128 {
        buffer.clear();
        let kind = items::write_canonical(item, buffer);
        if kind == ItemKind::Reasoning && self.policy == ReasoningPolicy::Lenient {
            return digest;
        }
        let mut hasher = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(&digest.to_le_bytes());
        hasher.write(buffer);
        hasher.finish128().as_u128()
    }
}

/// A request's `input` as items: a string is one user message; absent is none.
pub fn input_items(request: &Map<String, Value>) -> std::borrow::Cow<'_, [Value]> {
    match request.get("input") {
        Some(Value::Array(items)) => std::borrow::Cow::Borrowed(items.as_slice()),
        Some(Value::String(text)) => std::borrow::Cow::Owned(vec![serde_json::json!({
            "role": "user",
            "content": text,
        })]),
        _ => std::borrow::Cow::Borrowed(&[]),
    }
}

/// The longest prefix of `prefixes` accepted by `matches`: `Some(k)` means `items[..k]` is
/// matched (so the delta is `items[k..]`). Longest first, so the most recent head wins.
///
/// In lenient mode the items that repeat a digest are reasoning items; those right after the
/// matched prefix are new to the upstream, so the delta starts at the first of them: nothing
/// the client sent after the head is left out.
pub fn longest_match(prefixes: &[u128], mut matches: impl FnMut(u128) -> bool) -> Option<usize> {
    let mut i = (0..prefixes.len()).rev().find(|&i| matches(prefixes[i]))?;
    while i > 0 && prefixes[i - 1] == prefixes[i] {
        i -= 1;
    }
    Some(i + 1)
}

/// A `response.create` frame written straight from the client's request, without copying it:
/// `type` first, then the client's fields in their order minus the REST-only `stream` and
/// `background` (and any `type` of the client's), with `input` replaced by `delta` and
/// `previous_response_id` set for a continuation.
#[derive(Debug)]
pub struct Frame<'a> {
    pub request: &'a Map<String, Value>,
    pub continuation: Option<(&'a str, &'a [Value])>,
}

impl Frame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for Frame<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", "response.create")?;
        if let Some((previous, _)) = self.continuation {
            map.serialize_entry("previous_response_id", previous)?;
        }
        for (key, value) in self.request {
            match (key.as_str(), self.continuation) {
                // `type` is the event's own (a REST body has none; never send two).
                ("stream" | "background" | "type", _) => {}
                ("previous_response_id", Some(_)) => {}
                ("input", Some((_, delta))) => map.serialize_entry(key, delta)?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    /// An assistant message as `response.output` returns it.
    fn output_message(text: &str) -> Value {
        json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    }

    fn call(id: &str) -> Value {
        json!({"id": "fc_1", "type": "function_call", "status": "completed", "call_id": id,
               "name": "lookup", "arguments": "{\"q\":1}"})
    }

    fn call_output(id: &str) -> Value {
        json!({"type": "function_call_output", "call_id": id, "output": "42"})
    }

    fn reasoning(id: &str) -> Value {
        json!({"id": id, "type": "reasoning", "summary": []})
    }

    fn lenient() -> Digester {
        Digester::new(ReasoningPolicy::Lenient)
    }

    #[test]
    fn sdk_round_trip_forms_match() {
        let digester = lenient();
        let head = digester.extend(0, &[user("hi"), output_message("Hello!")]);
        let forms = [
            vec![user("hi"), output_message("Hello!")],
            vec![
                json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}),
                json!({"role": "assistant", "content": "Hello!"}),
            ],
            vec![
                user("hi"),
                json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]}),
            ],
        ];
        for form in forms {
            assert_eq!(digester.extend(0, &form), head, "{form:?}");
        }
        let call_forms = [
            call("c1"),
            json!({"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":1}"}),
        ];
        let digests: Vec<u128> = call_forms
            .iter()
            .map(|c| digester.extend(head, [c]))
            .collect();
        assert_eq!(digests[0], digests[1]);
    }

    #[test]
    fn lenient_ignores_reasoning_and_strict_requires_it() {
        let with = [user("hi"), reasoning("rs_1"), call("c1")];
        let without = [user("hi"), call("c1")];
        let lenient = lenient();
        assert_eq!(lenient.extend(0, &with), lenient.extend(0, &without));
        let strict = Digester::new(ReasoningPolicy::Strict);
        assert_ne!(strict.extend(0, &with), strict.extend(0, &without));
        let prefixes = lenient.prefixes(&with);
        assert_eq!(
            prefixes[0], prefixes[1],
            "reasoning repeats the previous digest"
        );
    }

    #[test]
    fn longest_match_cuts_the_delta_after_the_matched_prefix() {
        let digester = lenient();
        let history = [user("hi"), call("c1")];
        let head = digester.extend(0, &history);
        let request = [user("hi"), call("c1"), call_output("c1"), user("more")];
        let prefixes = digester.prefixes(&request);
        assert_eq!(longest_match(&prefixes, |d| d == head), Some(2));
        assert_eq!(longest_match(&prefixes, |_| false), None);
        let exact = digester.prefixes(&history);
        assert_eq!(
            longest_match(&exact, |d| d == head),
            Some(2),
            "an empty delta is a match"
        );
    }

    #[test]
    fn reasoning_right_after_the_head_stays_in_the_delta() {
        let digester = lenient();
        let head = digester.extend(0, &[user("hi"), output_message("Hello!")]);
        let request = [
            user("hi"),
            output_message("Hello!"),
            reasoning("rs_new"),
            user("more"),
        ];
        let prefixes = digester.prefixes(&request);
        assert_eq!(
            longest_match(&prefixes, |d| d == head),
            Some(2),
            "the delta is the reasoning item and the new message"
        );
        // Reasoning inside the matched turn (the model's own, resent) is not part of the delta.
        let request = [user("hi"), reasoning("rs_1"), call("c1"), call_output("c1")];
        let head = digester.extend(0, &[user("hi"), reasoning("rs_1"), call("c1")]);
        assert_eq!(
            longest_match(&digester.prefixes(&request), |d| d == head),
            Some(3)
        );
    }

    #[test]
    fn the_heads_own_trailing_reasoning_is_never_resent() {
        // A turn cut off while reasoning: its output ends with a reasoning item.
        let digester = lenient();
        let output = [reasoning("rs_cut")];
        let head = digester.extend(0, [&user("hi")].into_iter().chain(&output));
        let trailing = digester.trailing_reasoning(&output);
        assert_eq!(trailing.len(), 1);
        let request = [
            user("hi"),
            reasoning("rs_cut"),
            reasoning("rs_new"),
            user("go on"),
        ];
        let matched = longest_match(&digester.prefixes(&request), |d| d == head).unwrap();
        assert_eq!(matched, 1, "the walk-back reaches the head's own reasoning");
        assert_eq!(
            digester.delta_start(&request, matched, &trailing),
            2,
            "the head's reasoning stays out of the delta, the new one goes in"
        );
        assert!(
            digester
                .trailing_reasoning(&[reasoning("rs_1"), output_message("done")])
                .is_empty()
        );
    }

    #[test]
    fn keys_differ_per_digester() {
        assert_ne!(
            lenient().extend(0, &[user("x")]),
            lenient().extend(0, &[user("x")])
        );
    }

    #[test]
    fn string_input_is_one_user_message() {
        let request: Map<String, Value> = serde_json::from_value(json!({"input": "hi"})).unwrap();
        let digester = lenient();
        assert_eq!(
            digester.extend(0, input_items(&request).iter()),
            digester.extend(0, &[json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})])
        );
    }

    #[test]
    fn frame_writes_type_first_and_replaces_input_for_a_continuation() {
        let request: Map<String, Value> = serde_json::from_value(json!({
            "model": "m", "stream": true, "background": false, "input": [1, 2, 3], "extra": {"a": 1}
        }))
        .unwrap();
        let full = Frame {
            request: &request,
            continuation: None,
        };
        assert_eq!(
            full.to_json(),
            r#"{"type":"response.create","model":"m","input":[1,2,3],"extra":{"a":1}}"#
        );
        let delta = [json!(3)];
        let continued = Frame {
            request: &request,
            continuation: Some(("resp_1", &delta)),
        };
        assert_eq!(
            continued.to_json(),
            r#"{"type":"response.create","previous_response_id":"resp_1","model":"m","input":[3],"extra":{"a":1}}"#
        );
    }

    fn item_strategy() -> impl Strategy<Value = Value> {
        let text = "[a-c]{0,3}";
        prop_oneof![
            (prop_oneof![Just("user"), Just("assistant"), Just("system")], text)
                .prop_map(|(role, t)| json!({"role": role, "content": t})),
            (text, text).prop_map(|(id, args)| json!({"type": "function_call", "call_id": id, "name": "f", "arguments": args})),
            (text, text).prop_map(|(id, out)| json!({"type": "function_call_output", "call_id": id, "output": out})),
            text.prop_map(|id| json!({"type": "item_reference", "id": id})),
            text.prop_map(|id| json!({"type": "reasoning", "id": format!("rs_{id}"), "summary": []})),
        ]
    }

    fn is_reasoning(item: &Value) -> bool {
        item["type"] == "reasoning"
    }

    /// The canonical encodings of `items`, without reasoning items when `policy` ignores them:
    /// what matching is defined on.
    fn canonical(items: &[Value], policy: ReasoningPolicy) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter(|item| policy == ReasoningPolicy::Strict || !is_reasoning(item))
            .map(|item| {
                let mut out = Vec::new();
                items::write_canonical(item, &mut out);
                out
            })
            .collect()
    }

    fn policy_strategy() -> impl Strategy<Value = ReasoningPolicy> {
        prop_oneof![
            Just(ReasoningPolicy::Lenient),
            Just(ReasoningPolicy::Strict)
        ]
    }

    /// Rewrites an item the way an SDK round trip might: typed parts, ids, status.
    fn sdk_form(item: &Value) -> Value {
        let mut item = item.clone();
        if let Some(text) = item
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            let role = item["role"].as_str().unwrap_or("user").to_owned();
            let part = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            item = json!({"type": "message", "id": "msg_x", "status": "completed", "role": role,
                          "content": [{"type": part, "text": text, "annotations": []}]});
        } else if item["type"] == "function_call" {
            item["id"] = json!("fc_x");
            item["status"] = json!("completed");
        }
        item
    }

    proptest! {
        #[test]
        fn round_trips_match(history in proptest::collection::vec(item_strategy(), 1..8)) {
            let digester = lenient();
            let round_tripped: Vec<Value> = history.iter().map(sdk_form).collect();
            prop_assert_eq!(digester.extend(0, &history), digester.extend(0, &round_tripped));
        }

        #[test]
        fn any_edit_breaks_the_match(
            history in proptest::collection::vec(item_strategy(), 2..8),
            edit in 0usize..4,
            at in any::<proptest::sample::Index>(),
            extra in item_strategy(),
            policy in policy_strategy(),
        ) {
            let digester = Digester::new(policy);
            let head = digester.extend(0, &history);
            let mut changed = history.clone();
            let i = at.index(history.len());
            match edit {
                0 => { changed.remove(i); }
                1 => changed.insert(i, extra.clone()),
                2 => changed.swap(i, (i + 1) % history.len()),
                _ => changed[i] = extra.clone(),
            }
            let canonical = |items: &[Value]| canonical(items, policy);
            // Only a change that leaves the canonical sequence as it was may still match.
            prop_assume!(canonical(&changed) != canonical(&history));
            let prefixes = digester.prefixes(&changed);
            prop_assert_ne!(digester.extend(0, &changed), head);
            // And no prefix of the edited history other than an untouched one matches.
            if let Some(k) = longest_match(&prefixes, |d| d == head) {
                prop_assert_eq!(canonical(&changed[..k]), canonical(&history));
            }
        }

        #[test]
        fn the_delta_holds_everything_sent_after_the_head(
            history in proptest::collection::vec(item_strategy(), 1..8),
            new in proptest::collection::vec(item_strategy(), 0..4),
            policy in policy_strategy(),
        ) {
            let digester = Digester::new(policy);
            let head = digester.extend(0, &history);
            let request: Vec<Value> = history.iter().map(sdk_form).chain(new.iter().cloned()).collect();
            let k = longest_match(&digester.prefixes(&request), |d| d == head);
            prop_assert!(k.is_some(), "a round-tripped history plus new items extends its head");
            let k = k.unwrap();
            // Only reasoning items at the end of the head may be resent, never a new item lost.
            prop_assert!(k <= history.len(), "no new item is taken for part of the head");
            prop_assert!(request[k.min(history.len())..history.len()].iter().all(is_reasoning));
        }
    }
}
