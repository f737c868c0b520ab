//! Upstream Responses events → `chat.completion.chunk` objects, one event at a time
//! (docs/protocol.md, "Chat Completions"). The encoder holds what a chunk needs from earlier
//! events: the `chatcmpl-…` id and `created` (the same on every chunk), the model, and which
//! tool call index each function call item got.

use serde_json::{Value, json};

use super::completion;
use crate::outcome::ChatFinish;
use crate::protocol::OpenAiError;

/// What one upstream event becomes.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Chunk objects to write, in order (each one `data:` line).
    pub chunks: Vec<Value>,
    /// The stream is over: with `[DONE]` after a finish, or after an error chunk.
    pub end: Option<End>,
}

/// How a chat stream ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The turn finished: `data: [DONE]` follows the chunks.
    Done(ChatFinish),
    /// The turn failed: the last chunk is `{"error":{…}}` and no `[DONE]` follows.
    Failed(OpenAiError),
}

/// The stateful encoder of one chat stream.
#[derive(Debug)]
pub struct Encoder {
    id: String,
    created: u64,
    model: Value,
    /// The response's `service_tier` (chat puts it on every chunk; null until known).
    service_tier: Value,
    include_usage: bool,
    /// Legacy function calling: the first call streams as `function_call`, no `tool_calls`.
    legacy: bool,
    /// `output_index` of each function call item seen, in order: a call's position here is its
    /// `tool_calls[].index`.
    calls: Vec<u64>,
    /// Per call (same order): whether any argument delta was written. An upstream that puts
    /// the whole `arguments` in the item and sends no deltas gets them written at its
    /// `response.output_item.done`, so no call reaches the client without its arguments.
    streamed: Vec<bool>,
}

impl Encoder {
    /// `model` is the request's, until `response.created` names the upstream's; `legacy`: the
    /// request used `functions`.
    pub fn new(id: String, model: &str, include_usage: bool, legacy: bool) -> Self {
        Self {
            id,
            created: 0,
            model: Value::from(model),
            service_tier: Value::Null,
            include_usage,
            legacy,
            calls: Vec::new(),
            streamed: Vec::new(),
        }
    }

    /// True for the event types that can give a chunk (the others need not be parsed).
    pub fn reads(kind: &str) -> bool {
        matches!(
            kind,
            "response.created"
                | "response.output_text.delta"
                | "response.refusal.delta"
                | "response.output_item.added"
                | "response.function_call_arguments.delta"
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error"
        )
    }

    /// The chunks for one upstream event (`kind` is its `type`).
    pub fn event(&mut self, kind: &str, event: &Value) -> Step {
        let delta = match kind {
            "response.created" => {
                let response = &event["response"];
                self.created = completion::created(response);
                if let Some(model) = response.get("model").filter(|model| model.is_string()) {
                    self.model = model.clone();
                }
                if let Some(tier) = response.get("service_tier").filter(|tier| tier.is_string()) {
                    self.service_tier = tier.clone();
                }
                json!({"role": "assistant", "content": ""})
            }
            "response.output_text.delta" => json!({"content": event["delta"]}),
            "response.refusal.delta" => json!({"refusal": event["delta"]}),
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let index = self.calls.len();
                self.calls
                    .push(event["output_index"].as_u64().unwrap_or(u64::MAX));
                self.streamed.push(false);
                let item = &event["item"];
                match (self.legacy, index) {
                    (false, _) => json!({"tool_calls": [{
                        "index": index, "id": item["call_id"], "type": "function",
                        "function": {"name": item["name"], "arguments": ""},
                    }]}),
                    (true, 0) => json!({"function_call": {"name": item["name"], "arguments": ""}}),
                    (true, _) => return Step::default(),
                }
            }
            "response.function_call_arguments.delta" => {
                match self.arguments(event, &event["delta"]) {
                    Some(delta) => delta,
                    None => return Step::default(),
                }
            }
            "response.output_item.done" if event["item"]["type"] == "function_call" => {
                let unsent = self
                    .call_index(event)
                    .is_some_and(|index| !self.streamed[index]);
                let arguments = &event["item"]["arguments"];
                if !unsent || arguments.as_str().is_none_or(str::is_empty) {
                    return Step::default();
                }
                match self.arguments(event, arguments) {
                    Some(delta) => delta,
                    None => return Step::default(),
                }
            }
            "response.completed" | "response.incomplete" => return self.finish(&event["response"]),
            "response.failed" => return self.failed(OpenAiError::from_failed_response(event)),
            "error" => return self.failed(OpenAiError::from_upstream_event(event)),
            _ => return Step::default(),
        };
        Step {
            chunks: vec![self.chunk(delta, None)],
            end: None,
        }
    }

    /// The tool call index of the function call item an event names by `output_index`.
    fn call_index(&self, event: &Value) -> Option<usize> {
        let output_index = event["output_index"].as_u64().unwrap_or(u64::MAX);
        self.calls.iter().position(|&i| i == output_index)
    }

    /// The delta carrying `arguments` for the call `event` names (`None`: no chunk).
    fn arguments(&mut self, event: &Value, arguments: &Value) -> Option<Value> {
        let index = self.call_index(event)?;
        self.streamed[index] = true;
        match (self.legacy, index) {
            (false, _) => Some(
                json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
            ),
            (true, 0) => Some(json!({"function_call": {"arguments": arguments}})),
            (true, _) => None,
        }
    }

    /// The chunk that ends a turn that broke after it started (the socket failed).
    pub fn failed(&self, error: OpenAiError) -> Step {
        Step {
            chunks: vec![serde_json::from_str(&error.rest_body()).unwrap_or_default()],
            end: Some(End::Failed(error)),
        }
    }

    fn finish(&self, response: &Value) -> Step {
        let finish = completion::finish_for(response, self.legacy);
        let mut chunks = vec![self.chunk(json!({}), finish.reason())];
        if self.include_usage {
            let mut usage = self.chunk(Value::Null, None);
            usage["choices"] = json!([]);
            usage["usage"] = completion::usage(&response["usage"]);
            chunks.push(usage);
        }
        Step {
            chunks,
            end: Some(End::Done(finish)),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": self.service_tier,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(encoder: &mut Encoder, events: &[Value]) -> (Vec<Value>, Option<End>) {
        let mut chunks = Vec::new();
        let mut end = None;
        for event in events {
            assert!(end.is_none(), "nothing after the end");
            let step = encoder.event(event["type"].as_str().unwrap(), event);
            chunks.extend(step.chunks);
            end = step.end;
        }
        (chunks, end)
    }

    fn created() -> Value {
        json!({"type": "response.created", "sequence_number": 0,
               "response": {"id": "resp_1", "created_at": 1_700_000_000, "model": "gpt-up", "service_tier": "default", "status": "in_progress", "output": []}})
    }

    fn call_added(output_index: u64, call_id: &str) -> Value {
        json!({"type": "response.output_item.added", "output_index": output_index,
               "item": {"id": format!("fc_{output_index}"), "type": "function_call", "status": "in_progress",
                        "arguments": "", "call_id": call_id, "name": "lookup"}})
    }

    fn args(output_index: u64, delta: &str) -> Value {
        json!({"type": "response.function_call_arguments.delta", "output_index": output_index,
               "item_id": format!("fc_{output_index}"), "delta": delta})
    }

    fn call_done(output_index: u64, call_id: &str, arguments: &str) -> Value {
        json!({"type": "response.output_item.done", "output_index": output_index,
               "item": {"id": format!("fc_{output_index}"), "type": "function_call", "status": "completed",
                        "arguments": arguments, "call_id": call_id, "name": "lookup"}})
    }

    /// An upstream looser than OpenAI's: one call's arguments arrive only whole, in its item;
    /// the other's as deltas, which the item's copy must not repeat.
    #[test]
    fn arguments_sent_only_in_the_item_are_written_once_at_its_done() {
        let mut encoder = Encoder::new("chatcmpl-1".into(), "gpt-req", false, false);
        let completed = json!({"type": "response.completed", "response": {
            "status": "completed", "output": [{"type": "function_call"}, {"type": "function_call"}]}});
        let (chunks, _) = run(
            &mut encoder,
            &[
                created(),
                call_added(0, "call_a"),
                call_done(0, "call_a", "{\"q\":1}"),
                call_added(1, "call_b"),
                args(1, "{}"),
                call_done(1, "call_b", "{}"),
                completed,
            ],
        );
        let arguments: Vec<(u64, String)> = chunks
            .iter()
            .filter_map(|c| {
                let call = &c["choices"][0]["delta"]["tool_calls"][0];
                let text = call["function"]["arguments"].as_str()?;
                (!text.is_empty()).then(|| (call["index"].as_u64().unwrap(), text.to_owned()))
            })
            .collect();
        assert_eq!(
            arguments,
            vec![(0, "{\"q\":1}".to_owned()), (1, "{}".to_owned())]
        );
    }

    /// A recorded-shape sequence: reasoning first, then three parallel calls.
    #[test]
    fn parallel_calls_get_their_ordinal_as_index_and_finish_with_tool_calls() {
        let mut encoder = Encoder::new("chatcmpl-1".into(), "gpt-req", false, false);
        let completed = json!({"type": "response.completed", "response": {
            "status": "completed", "output": [{"type": "reasoning"}, {"type": "function_call"}, {"type": "function_call"}, {"type": "function_call"}]}});
        let (chunks, end) = run(
            &mut encoder,
            &[
                created(),
                json!({"type": "response.in_progress"}),
                json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning"}}),
                call_added(1, "call_a"),
                args(1, "{\"q\":"),
                args(1, "1}"),
                call_added(2, "call_b"),
                args(2, "{}"),
                call_added(3, "call_c"),
                args(3, "{}"),
                completed,
            ],
        );
        assert_eq!(end, Some(End::Done(ChatFinish::ToolCalls)));
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "chatcmpl-1" && c["created"] == 1_700_000_000)
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["model"] == "gpt-up" && c.get("usage").is_none())
        );
        assert!(chunks.iter().all(|c| c["service_tier"] == "default"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let header = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(header["index"], 0);
        assert_eq!(header["id"], "call_a");
        assert_eq!(
            header["function"],
            json!({"name": "lookup", "arguments": ""})
        );
        let indexes: Vec<u64> = chunks[1..chunks.len() - 1]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["index"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(indexes, [0, 0, 0, 1, 1, 2, 2]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn legacy_requests_stream_their_first_call_as_function_call() {
        let mut encoder = Encoder::new("chatcmpl-4".into(), "gpt-req", false, true);
        let completed = json!({"type": "response.completed", "response": {
            "status": "completed", "output": [{"type": "function_call"}]}});
        let (chunks, end) = run(
            &mut encoder,
            &[created(), call_added(0, "call_a"), args(0, "{}"), completed],
        );
        assert_eq!(end, Some(End::Done(ChatFinish::FunctionCall)));
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(
            deltas[1],
            &json!({"function_call": {"name": "lookup", "arguments": ""}})
        );
        assert_eq!(deltas[2], &json!({"function_call": {"arguments": "{}"}}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "function_call");
    }

    #[test]
    fn text_refusal_and_usage_chunk() {
        let mut encoder = Encoder::new("chatcmpl-2".into(), "gpt-req", true, false);
        let completed = json!({"type": "response.incomplete", "response": {
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "output": [], "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}});
        let (chunks, end) = run(
            &mut encoder,
            &[
                created(),
                json!({"type": "response.output_text.delta", "output_index": 0, "delta": "Hel"}),
                json!({"type": "response.refusal.delta", "output_index": 0, "delta": "No"}),
                json!({"type": "keepalive", "sequence_number": 9}),
                completed,
            ],
        );
        assert_eq!(end, Some(End::Done(ChatFinish::Length)));
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(chunks[2]["choices"][0]["delta"], json!({"refusal": "No"}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
        assert!(chunks[..4].iter().all(|c| c["usage"].is_null()));
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(chunks[4]["usage"]["prompt_tokens"], 5);
        assert_eq!(chunks[4]["usage"]["total_tokens"], 7);
    }

    #[test]
    fn a_failure_is_an_error_chunk_and_no_done() {
        let mut encoder = Encoder::new("chatcmpl-3".into(), "m", false, false);
        let (chunks, end) = run(
            &mut encoder,
            &[
                created(),
                json!({"type": "response.failed", "response": {"status": "failed",
                       "error": {"code": "server_error", "message": "The model failed."}}}),
            ],
        );
        assert!(matches!(end, Some(End::Failed(_))));
        assert_eq!(
            chunks[1],
            json!({"error": {"message": "The model failed.", "type": "server_error", "param": null, "code": "server_error"}})
        );
        let step = encoder.event(
            "error",
            &json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}),
        );
        assert_eq!(step.chunks[0]["error"]["code"], "rate_limit_exceeded");
    }
}
