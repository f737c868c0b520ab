//! What one request needs to find and continue a head ([`Plan`]), which socket it asks the pool
//! for ([`Affinity`]), what it matched ([`Matched`]) and the head it leaves behind
//! ([`HeadSeed`]) (docs/architecture.md, "Continuations").

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{Digester, Frame, Head, input_items};
pub use crate::outcome::Continuation;

/// The continuation settings a plan follows (from `[continuation]`).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Rewrite full resends into continuations at all.
    pub enabled: bool,
    /// Continue `store: true` turns on any socket (the upstream loads them from its store).
    pub stored_on_any_socket: bool,
}

/// A request's continuation plan, computed once per request.
#[derive(Debug)]
pub struct Plan<'a> {
    request: &'a Map<String, Value>,
    items: Cow<'a, [Value]>,
    /// Digest after each input item (empty unless wsbridge may rewrite the request).
    prefixes: Vec<u128>,
    model: &'a str,
    /// The client's own `previous_response_id`.
    explicit: Option<&'a str>,
    digester: &'a Digester,
    enabled: bool,
    stored_on_any_socket: bool,
}

/// Which socket a request would like (docs/architecture.md, "Continuations").
#[derive(Debug, Clone, Copy)]
pub enum Affinity<'a> {
    /// Any socket (a new conversation, or one wsbridge does not rewrite).
    None,
    /// The socket whose head is the longest prefix of the request's items (digests after each
    /// item), for the same model.
    Extend {
        prefixes: &'a [u128],
        model: &'a str,
    },
    /// The socket whose head is this response (the client's own `previous_response_id`).
    Response(&'a str),
    /// Like `Extend`, but no other socket will do (the request only fits as a continuation).
    Only {
        prefixes: &'a [u128],
        model: &'a str,
    },
}

/// A head a request extends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The head covers the request's first `items` items (`Affinity::Extend`; 0 for
    /// `Affinity::Response`).
    pub items: usize,
    /// Its response id: the continuation's `previous_response_id`.
    pub previous: String,
    /// The upstream keeps it in its store (so may a turn continuing it).
    pub stored: bool,
    /// The head's [`Head::trailing_reasoning`].
    pub trailing_reasoning: Vec<u128>,
}

impl<'a> Plan<'a> {
    pub fn new(rules: Rules, digester: &'a Digester, request: &'a Map<String, Value>) -> Self {
        let config = rules;
        let explicit = request.get("previous_response_id").and_then(Value::as_str);
        // Requests that chain themselves (or use `conversation`) are never rewritten.
        let rewritable = config.enabled
            && explicit.is_none()
            && request.get("conversation").is_none_or(Value::is_null);
        let items = input_items(request);
        let prefixes = if rewritable {
            digester.prefixes(&items)
        } else {
            Vec::new()
        };
        Self {
            request,
            items,
            prefixes,
            model: request.get("model").and_then(Value::as_str).unwrap_or(""),
            explicit,
            digester,
            enabled: config.enabled,
            stored_on_any_socket: config.stored_on_any_socket,
        }
    }

    /// The request as the client sent it.
    pub fn request(&self) -> &Map<String, Value> {
        self.request
    }

    /// True when a head may make part of the request unnecessary to send.
    pub fn may_continue(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The client's own `previous_response_id`.
    pub fn explicit(&self) -> Option<&'a str> {
        self.explicit
    }

    /// Which socket to ask for; `only_continuation` when the request fits in a frame only as
    /// a continuation.
    pub fn affinity(&self, only_continuation: bool) -> Affinity<'_> {
        match self.explicit {
            Some(id) if self.enabled => Affinity::Response(id),
            None if only_continuation => Affinity::Only {
                prefixes: &self.prefixes,
                model: self.model,
            },
            None if !self.prefixes.is_empty() => Affinity::Extend {
                prefixes: &self.prefixes,
                model: self.model,
            },
            _ => Affinity::None,
        }
    }

    /// The full frame: the request as given.
    pub fn full_frame(&self) -> String {
        Frame {
            request: self.request,
            continuation: None,
        }
        .to_json()
    }

    /// The continuation frame after `matched`: `previous_response_id` and only the items the
    /// head does not hold.
    pub fn continuation_frame(&self, matched: &Matched) -> String {
        let start =
            self.digester
                .delta_start(&self.items, matched.items, &matched.trailing_reasoning);
        Frame {
            request: self.request,
            continuation: Some((&matched.previous, &self.items[start..])),
        }
        .to_json()
    }

    /// What the socket's head will be once this turn completes (its output still to add);
    /// `parent_stored`: what it continues (if anything) is in the upstream's store.
    pub fn seed(&self, parent_stored: bool) -> HeadSeed {
        HeadSeed {
            enabled: self.enabled,
            digester: self.digester.clone(),
            input: self.prefixes.last().copied(),
            model: self.model.to_owned(),
            items: self.items.len(),
            // The Responses API stores a response unless the request says `store: false`; one
            // continuing a response only its socket holds cannot be loaded anywhere else.
            stored: self.stored_on_any_socket
                && parent_stored
                && self.request.get("store") != Some(&Value::Bool(false)),
        }
    }
}

/// The parts of a head known before the turn ran.
#[derive(Debug)]
pub struct HeadSeed {
    /// Continuations are on (otherwise sockets keep no heads).
    enabled: bool,
    digester: Digester,
    /// Digest of the full input, when wsbridge knows the full input.
    input: Option<u128>,
    model: String,
    /// Input items.
    items: usize,
    stored: bool,
}

impl HeadSeed {
    /// The head after a `response.completed` / `response.incomplete` event.
    pub fn head(&self, terminal: &str) -> Option<Head> {
        if !self.enabled {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Terminal {
            response: TerminalResponse,
        }
        #[derive(serde::Deserialize)]
        struct TerminalResponse {
            id: String,
            #[serde(default)]
            output: Vec<Value>,
        }
        let terminal: Terminal = serde_json::from_str(terminal).ok()?;
        let output = &terminal.response.output;
        Some(Head {
            response_id: terminal.response.id,
            digest: self.input.map(|input| self.digester.extend(input, output)),
            model: self.model.clone(),
            items: self.items + output.len(),
            stored: self.stored,
            trailing_reasoning: self.digester.trailing_reasoning(output),
        })
    }
}

impl Continuation {
    /// The `x-wsbridge-continuation` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            Continuation::Continued => "continued",
            Continuation::Fresh => "fresh",
            Continuation::Explicit => "explicit",
            Continuation::Recovered => "recovered",
        }
    }
}
