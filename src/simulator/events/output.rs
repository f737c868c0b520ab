//! The events of each output item kind (docs/protocol.md, "Upstream events"): reasoning
//! summaries, function call arguments, message text or refusal.

use serde_json::{Value, json};

use super::{Emitter, merge};
use crate::simulator::faults::Directives;
use crate::simulator::model::{Body, PlannedItem};

impl Emitter<'_> {
    /// All events of one output item; true when the script closed inside it.
    pub(super) fn item(
        &mut self,
        index: usize,
        item: &PlannedItem,
        directives: &Directives,
        close_at: Option<u32>,
    ) -> bool {
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item.added_item()}),
        );
        let at = json!({"item_id": item.id, "output_index": index});
        let closed = match &item.body {
            Body::Reasoning {
                summary: Some(chunks),
                ..
            } => {
                let at = merge(&at, json!({"summary_index": 0}));
                self.summary(&at, chunks, directives, close_at)
            }
            Body::Reasoning { summary: None, .. } => false,
            Body::FunctionCall { name, chunks, .. } => {
                self.arguments(&at, name, chunks, directives, close_at)
            }
            Body::Message {
                chunks, refusal, ..
            } => {
                let at = merge(&at, json!({"content_index": 0}));
                self.content(&at, *refusal, chunks, directives, close_at)
            }
        };
        if closed {
            return true;
        }
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item.done_item()}),
        );
        false
    }

    /// A reasoning summary part: added, its deltas, done.
    fn summary(
        &mut self,
        at: &Value,
        chunks: &[String],
        directives: &Directives,
        close_at: Option<u32>,
    ) -> bool {
        let part = |text: &str| json!({"type": "summary_text", "text": text});
        self.event(
            "response.reasoning_summary_part.added",
            merge(at, json!({"part": part("")})),
        );
        for chunk in chunks {
            let delta = merge(at, json!({"delta": chunk}));
            if self.token(
                "response.reasoning_summary_text.delta",
                delta,
                directives,
                close_at,
            ) {
                return true;
            }
        }
        let text = chunks.concat();
        self.event(
            "response.reasoning_summary_text.done",
            merge(at, json!({"text": text})),
        );
        self.event(
            "response.reasoning_summary_part.done",
            merge(at, json!({"part": part(&text)})),
        );
        false
    }

    /// A function call's argument deltas and their done event.
    fn arguments(
        &mut self,
        at: &Value,
        name: &str,
        chunks: &[String],
        directives: &Directives,
        close_at: Option<u32>,
    ) -> bool {
        for chunk in chunks {
            let delta = merge(at, json!({"delta": chunk}));
            if self.token(
                "response.function_call_arguments.delta",
                delta,
                directives,
                close_at,
            ) {
                return true;
            }
        }
        let done = json!({"arguments": chunks.concat(), "name": name});
        self.event("response.function_call_arguments.done", merge(at, done));
        false
    }

    /// A message's content part (text or refusal): added, its deltas, done.
    fn content(
        &mut self,
        at: &Value,
        refusal: bool,
        chunks: &[String],
        directives: &Directives,
        close_at: Option<u32>,
    ) -> bool {
        let empty = PlannedItem::part(refusal, "");
        self.event(
            "response.content_part.added",
            merge(at, json!({"part": empty})),
        );
        let (delta_kind, done_kind, done_field) = if refusal {
            ("response.refusal.delta", "response.refusal.done", "refusal")
        } else {
            (
                "response.output_text.delta",
                "response.output_text.done",
                "text",
            )
        };
        let with_logprobs = |mut value: Value| {
            if !refusal && let Some(map) = value.as_object_mut() {
                map.insert("logprobs".into(), json!([]));
            }
            value
        };
        for chunk in chunks {
            let delta = with_logprobs(merge(at, json!({"delta": chunk})));
            if self.token(delta_kind, delta, directives, close_at) {
                return true;
            }
        }
        let text = chunks.concat();
        self.event(
            done_kind,
            with_logprobs(merge(at, json!({ done_field: text }))),
        );
        let part = PlannedItem::part(refusal, &text);
        self.event(
            "response.content_part.done",
            merge(at, json!({"part": part})),
        );
        false
    }
}
