//! What the scripted model decided for one turn ([`Plan`]: its output items, in order) and how
//! each item looks on the wire when it is announced and when it is done.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Reasoning {
        summary: Option<Vec<String>>,
        encrypted_content: Option<String>,
        tokens: u32,
    },
    FunctionCall {
        call_id: String,
        name: String,
        /// The arguments JSON, cut into stream chunks.
        chunks: Vec<String>,
    },
    Message {
        chunks: Vec<String>,
        refusal: bool,
        /// False when `max_output_tokens` cut the text short.
        complete: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedItem {
    pub id: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub items: Vec<PlannedItem>,
}

impl Plan {
    /// True when the answer was cut by `max_output_tokens`.
    pub fn incomplete(&self) -> bool {
        self.items.iter().any(|item| {
            matches!(
                item.body,
                Body::Message {
                    complete: false,
                    ..
                }
            )
        })
    }

    /// Output tokens: one per streamed chunk, plus hidden reasoning tokens.
    pub fn output_tokens(&self) -> u32 {
        self.items.iter().map(|item| item.tokens()).sum()
    }

    pub fn reasoning_tokens(&self) -> u32 {
        self.items
            .iter()
            .map(|item| match &item.body {
                Body::Reasoning { tokens, .. } => *tokens,
                _ => 0,
            })
            .sum()
    }
}

impl PlannedItem {
    /// Delta events this item streams (reasoning tokens are hidden).
    pub fn deltas(&self) -> u32 {
        let chunks = match &self.body {
            Body::Reasoning { summary, .. } => summary.as_ref().map_or(0, Vec::len),
            Body::FunctionCall { chunks, .. } | Body::Message { chunks, .. } => chunks.len(),
        };
        chunks as u32
    }

    /// Output tokens: the streamed deltas plus hidden reasoning tokens.
    pub fn tokens(&self) -> u32 {
        match &self.body {
            Body::Reasoning { tokens, .. } => tokens + self.deltas(),
            _ => self.deltas(),
        }
    }

    /// The item as it appears in `response.output` once done.
    pub fn done_item(&self) -> Value {
        match &self.body {
            Body::Reasoning {
                summary,
                encrypted_content,
                ..
            } => {
                let summary: Vec<Value> = summary
                    .iter()
                    .map(|chunks| json!({"type": "summary_text", "text": chunks.concat()}))
                    .collect();
                let mut item = json!({"id": self.id, "type": "reasoning", "summary": summary});
                if let (Some(content), Some(map)) = (encrypted_content, item.as_object_mut()) {
                    map.insert("encrypted_content".into(), Value::from(content.as_str()));
                }
                item
            }
            Body::FunctionCall {
                call_id,
                name,
                chunks,
            } => json!({
                "id": self.id, "type": "function_call", "status": "completed",
                "arguments": chunks.concat(), "call_id": call_id, "name": name,
            }),
            Body::Message {
                chunks,
                refusal,
                complete,
            } => json!({
                "id": self.id, "type": "message",
                "status": if *complete { "completed" } else { "incomplete" },
                "content": [Self::part(*refusal, &chunks.concat())],
                "role": "assistant",
            }),
        }
    }

    /// The item as `response.output_item.added` announces it.
    pub fn added_item(&self) -> Value {
        match &self.body {
            Body::Reasoning {
                encrypted_content, ..
            } => {
                let mut item = json!({"id": self.id, "type": "reasoning", "summary": []});
                if let (Some(content), Some(map)) = (encrypted_content, item.as_object_mut()) {
                    map.insert("encrypted_content".into(), Value::from(content.as_str()));
                }
                item
            }
            Body::FunctionCall { call_id, name, .. } => json!({
                "id": self.id, "type": "function_call", "status": "in_progress",
                "arguments": "", "call_id": call_id, "name": name,
            }),
            Body::Message { .. } => json!({
                "id": self.id, "type": "message", "status": "in_progress", "content": [], "role": "assistant",
            }),
        }
    }

    /// A message content part holding `text`.
    pub fn part(refusal: bool, text: &str) -> Value {
        if refusal {
            json!({"type": "refusal", "refusal": text})
        } else {
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
        }
    }
}
