//! The scripted model's Responses output as Chat Completions answers (docs/protocol.md, "Chat
//! Completions"): [`Chunker`] turns the turn's events, as they are played, into
//! `chat.completion.chunk` SSE frames; [`completion`] turns the final Response object into a
//! `chat.completion`.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::request::ChatRequest;
use crate::ids;

/// What the simulator reports as `system_fingerprint`.
const FINGERPRINT: &str = "fp_wsbridge_sim";

/// The fields every chunk and completion of one answer share.
#[derive(Debug, Clone)]
pub struct Header {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub service_tier: String,
    pub n: usize,
    /// Calls are answered in the legacy `function_call` form.
    pub legacy: bool,
}

impl Header {
    pub fn new(request: &ChatRequest, model: &str, created: u64) -> Self {
        let tier = request
            .responses
            .get("service_tier")
            .and_then(Value::as_str);
        Self {
            id: ids::new_id("chatcmpl").replacen('_', "-", 1),
            created,
            model: model.to_owned(),
            service_tier: tier.unwrap_or("default").to_owned(),
            n: request.n,
            legacy: request.legacy,
        }
    }

    fn object(&self, object: &str) -> Map<String, Value> {
        let fields = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "service_tier": self.service_tier, "system_fingerprint": FINGERPRINT,
        });
        match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Translates one turn's Responses events into chat chunks, in order.
#[derive(Debug)]
pub struct Chunker {
    header: Header,
    include_usage: bool,
    obfuscate: bool,
    /// Function calls announced so far: the next call's `index`.
    calls: usize,
    last_sequence: Option<u64>,
    /// The stream has ended (`[DONE]` or an error); later events are dropped.
    done: bool,
}

impl Chunker {
    pub fn new(header: Header, request: &ChatRequest) -> Self {
        Self {
            header,
            include_usage: request.include_usage,
            obfuscate: request.obfuscate,
            calls: 0,
            last_sequence: None,
            done: false,
        }
    }

    /// The SSE frames for one event (JSON text); none for events chat does not show
    /// (reasoning, keep-alives, a repeated sequence number, anything after the end).
    pub fn frames(&mut self, event: &str) -> Vec<Bytes> {
        let Ok(event) = serde_json::from_str::<Value>(event) else {
            return Vec::new();
        };
        let sequence = event.get("sequence_number").and_then(Value::as_u64);
        if self.done || sequence.is_some_and(|seq| self.last_sequence.is_some_and(|l| seq <= l)) {
            return Vec::new();
        }
        self.last_sequence = sequence.or(self.last_sequence);
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
        match text("type") {
            "response.created" => self.deltas(&json!({"role": "assistant", "content": ""})),
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let (name, call_id) = (&event["item"]["name"], &event["item"]["call_id"]);
                self.calls += 1;
                self.deltas(&self.call_delta(
                    json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}),
                ))
            }
            "response.function_call_arguments.delta" => {
                self.deltas(&self.call_delta(json!({"function": {"arguments": text("delta")}})))
            }
            "response.output_text.delta" => self.deltas(&json!({ "content": text("delta") })),
            "response.refusal.delta" => self.deltas(&json!({ "refusal": text("delta") })),
            "response.completed" | "response.incomplete" => self.finish(&event["response"]),
            "response.failed" => self.error(&event["response"]["error"]),
            "error" => self.error(&event),
            _ => Vec::new(),
        }
    }

    /// A `tool_calls` entry for the latest call (or the legacy `function_call` form).
    fn call_delta(&self, mut call: Value) -> Value {
        if self.header.legacy {
            return json!({ "function_call": call["function"].take() });
        }
        let mut ordered = json!({"index": self.calls.saturating_sub(1)});
        if let (Some(out), Value::Object(rest)) = (ordered.as_object_mut(), call) {
            out.extend(rest);
        }
        json!({ "tool_calls": [ordered] })
    }

    /// One chunk per choice carrying `delta`.
    fn deltas(&self, delta: &Value) -> Vec<Bytes> {
        (0..self.header.n)
            .map(|index| self.chunk(index, delta.clone(), Value::Null))
            .collect()
    }

    fn chunk(&self, index: usize, delta: Value, finish_reason: Value) -> Bytes {
        let carries_output = delta.as_object().is_some_and(|d| !d.is_empty());
        let choice = json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason});
        let mut chunk = self.header.object("chat.completion.chunk");
        chunk.insert("choices".into(), json!([choice]));
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        if self.obfuscate && carries_output {
            chunk.insert("obfuscation".into(), Value::from(obfuscation()));
        }
        data(&Value::Object(chunk))
    }

    fn finish(&mut self, response: &Value) -> Vec<Bytes> {
        self.done = true;
        let reason = Value::from(finish_reason(response, self.header.legacy));
        let mut frames: Vec<Bytes> = (0..self.header.n)
            .map(|index| self.chunk(index, json!({}), reason.clone()))
            .collect();
        if self.include_usage {
            let mut last = self.header.object("chat.completion.chunk");
            last.insert("choices".into(), json!([]));
            last.insert("usage".into(), usage(&response["usage"], self.header.n));
            frames.push(data(&Value::Object(last)));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        frames
    }

    /// The error that ends a stream after it started: no `[DONE]` follows.
    fn error(&mut self, error: &Value) -> Vec<Bytes> {
        self.done = true;
        let text = |key: &str| error.get(key).and_then(Value::as_str);
        let code = text("code").unwrap_or("server_error");
        let kind = if code == "rate_limit_exceeded" {
            "requests"
        } else {
            "server_error"
        };
        let message =
            text("message").unwrap_or("The server had an error while processing your request.");
        vec![data(
            &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        )]
    }
}

/// Random-length padding, as the API adds to chunks that carry output.
fn obfuscation() -> String {
    let seed = ids::random_u64();
    let text = format!("{seed:016x}");
    text[..1 + (seed % 15) as usize].to_owned()
}

/// `data: JSON\n\n`.
fn data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// `length` when `max_output_tokens` cut the answer, `tool_calls` (`function_call` in the
/// legacy form) when it calls functions, else `stop`.
fn finish_reason(response: &Value, legacy: bool) -> &'static str {
    let calls = response["output"]
        .as_array()
        .is_some_and(|items| items.iter().any(|item| item["type"] == "function_call"));
    match () {
        () if response["status"] == "incomplete" => "length",
        () if calls && legacy => "function_call",
        () if calls => "tool_calls",
        () => "stop",
    }
}

/// Chat usage from Responses usage; `n` choices generate `n` times the output.
fn usage(usage: &Value, n: usize) -> Value {
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let prompt = number(&usage["input_tokens"]);
    let completion = number(&usage["output_tokens"]) * n as u64;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": number(&usage["input_tokens_details"]["cached_tokens"]),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": number(&usage["output_tokens_details"]["reasoning_tokens"]) * n as u64,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// The `chat.completion` for a finished Response object.
pub fn completion(header: &Header, response: &Value) -> Value {
    let output = response["output"].as_array().map_or(&[][..], Vec::as_slice);
    let parts = |kind: &str, key: &str| -> Option<String> {
        let texts: Vec<&str> = output
            .iter()
            .filter(|item| item["type"] == "message")
            .flat_map(|item| item["content"].as_array().into_iter().flatten())
            .filter(|part| part["type"] == kind)
            .filter_map(|part| part[key].as_str())
            .collect();
        (!texts.is_empty()).then(|| texts.concat())
    };
    let calls: Vec<Value> = output
        .iter()
        .filter(|item| item["type"] == "function_call")
        .map(|item| {
            json!({"id": item["call_id"], "type": "function",
                           "function": {"name": item["name"], "arguments": item["arguments"]}})
        })
        .collect();
    let mut message = json!({
        "role": "assistant",
        "content": parts("output_text", "text"),
        "refusal": parts("refusal", "refusal"),
        "annotations": [],
    });
    if let Some(map) = message.as_object_mut() {
        match calls.first() {
            Some(first) if header.legacy => {
                map.insert("function_call".into(), first["function"].clone());
            }
            Some(_) => {
                map.insert("tool_calls".into(), Value::Array(calls));
            }
            None => {}
        }
    }
    let reason = finish_reason(response, header.legacy);
    let choices: Vec<Value> = (0..header.n)
        .map(|index| json!({"index": index, "message": message, "logprobs": null, "finish_reason": reason}))
        .collect();
    let mut out = header.object("chat.completion");
    out.insert("choices".into(), Value::Array(choices));
    out.insert("usage".into(), usage(&response["usage"], header.n));
    Value::Object(out)
}
