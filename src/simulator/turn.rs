//! One `response.create`, from request body to finished turn, shared by both transports:
//! [`prepare`] validates the request and resolves `previous_response_id` (request-scoped
//! errors come out here, before any event); [`play`] runs the scripted model and plays its
//! events into a [`Sink`], keeping the result when it completes.

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::events::{self, ScriptInput, Step, Terminal};
use super::faults::Directives;
use super::model::{self, Settings};
use super::stats::{Outcome, Transport, TurnRecord};
use super::store::{ContextSummary, Stored, json_len};
use crate::ids;
use crate::protocol::OpenAiError;
use crate::protocol::items::{self, ItemKind};

/// Where a continuation found its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentSource {
    /// This socket's memory (the fast path).
    Socket,
    /// The persisted store (`store=true` only; pays the hydration cost).
    Store,
}

/// A validated request, ready to play.
#[derive(Debug)]
pub struct Prepared {
    pub id: String,
    pub request: Map<String, Value>,
    pub model: String,
    pub input: Vec<Value>,
    pub parent: Option<(Arc<Stored>, ParentSource)>,
    pub store: bool,
    pub warmup: bool,
    pub settings: Settings,
    pub directives: Directives,
    pub stream_id: Option<String>,
}

/// Receives the events of a turn; `false` means the client is gone.
pub trait Sink {
    fn send(&mut self, event: String) -> impl Future<Output = bool> + Send;
}

/// The stats record for a request, filled in as far as the raw body allows.
pub fn record(
    transport: Transport,
    socket: Option<u64>,
    key: &str,
    body: &Map<String, Value>,
    bytes: usize,
) -> TurnRecord {
    TurnRecord {
        index: 0,
        transport,
        socket,
        key: key.to_owned(),
        stream_id: body
            .get("stream_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        model: body.get("model").and_then(Value::as_str).map(str::to_owned),
        input_items: match body.get("input") {
            Some(Value::Array(items)) => items.len(),
            Some(Value::String(_)) => 1,
            _ => 0,
        },
        bytes,
        previous_response_id: body
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        continued: false,
        hydrated: false,
        warmup: body.get("generate") == Some(&Value::Bool(false)),
        outcome: Outcome::Error,
        response_id: None,
        error_code: None,
    }
}

/// Validates `request` and resolves its parent. `cached` looks an id up in the socket's
/// memory (always `None` over REST).
pub fn prepare(
    shared: &Shared,
    mut request: Map<String, Value>,
    transport: Transport,
    cached: impl Fn(&str) -> Option<Arc<Stored>>,
) -> Result<Prepared, OpenAiError> {
    let model = match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        None | Some(Value::Null) => return Err(missing("model")),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let field_str = |key: &str| -> Result<Option<String>, OpenAiError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(invalid_type(key, "a string", other)),
        }
    };
    let previous = field_str("previous_response_id")?;
    let stream_id = field_str("stream_id")?;
    let flag = |key: &str, default: bool| -> Result<bool, OpenAiError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(invalid_type(key, "a boolean", other)),
        }
    };
    let store = flag("store", true)?;
    let warmup = !flag("generate", true)?;
    let background = flag("background", false)?;

    match transport {
        Transport::Ws if background => {
            return Err(OpenAiError::invalid_request(
                "Background responses are not supported over WebSocket.",
            )
            .with_param("background"));
        }
        Transport::Rest => {
            for key in ["stream_id", "generate"] {
                if request.contains_key(key) {
                    return Err(OpenAiError::invalid_request(format!(
                        "Unsupported parameter: '{key}'."
                    ))
                    .with_param(key)
                    .with_code("unsupported_parameter"));
                }
            }
        }
        Transport::Ws => {}
    }
    if previous.is_some() && request.get("conversation").is_some_and(|c| !c.is_null()) {
        return Err(OpenAiError::invalid_request(
            "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or 'conversation'.",
        )
        .with_code("mutually_exclusive_parameters"));
    }
    if let Some(tools) = request
        .get("tools")
        .filter(|tools| !tools.is_null() && !tools.is_array())
    {
        return Err(invalid_type("tools", "an array", tools));
    }
    let (settings, directives) = options(shared, &request)?;

    let input = match request.remove("input") {
        None | Some(Value::Null) if previous.is_some() || warmup => Vec::new(),
        None | Some(Value::Null) => return Err(missing("input")),
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                validate_item(index, item)?;
            }
            items
        }
        Some(other) => return Err(invalid_type("input", "a string or an array", &other)),
    };

    let parent = match previous.as_deref() {
        None => None,
        Some(id) => match cached(id) {
            Some(stored) => Some((stored, ParentSource::Socket)),
            None => match shared.store.get(id) {
                Some(stored) => Some((stored, ParentSource::Store)),
                None => return Err(OpenAiError::previous_response_not_found(id)),
            },
        },
    };
    check_item_references(
        shared,
        &input,
        parent.as_ref().map(|(stored, _)| stored.as_ref()),
        store,
    )?;

    Ok(Prepared {
        id: ids::new_id("resp"),
        request,
        model,
        input,
        parent,
        store,
        warmup,
        settings,
        directives,
        stream_id,
    })
}

/// The largest answer length, tool-call count or keepalive count a request may ask for.
pub const MAX_SCRIPTED: u32 = 100_000;

/// `metadata.sim_*` knobs and fault directives, over the configured defaults.
fn options(
    shared: &Shared,
    request: &Map<String, Value>,
) -> Result<(Settings, Directives), OpenAiError> {
    let metadata = match request.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => return Err(invalid_type("metadata", "an object", other)),
    };
    let get = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    let number = |key: &str, default: u32| -> Result<u32, OpenAiError> {
        get(key).map_or(Ok(default), |text| {
            // The whole script is built up front, so client-chosen sizes are capped.
            text.parse()
                .ok()
                .filter(|n| *n <= MAX_SCRIPTED)
                .ok_or_else(|| {
                    OpenAiError::invalid_request(format!(
                        "metadata.{key} must be a whole number up to {MAX_SCRIPTED}, got '{text}'."
                    ))
                    .with_param(format!("metadata.{key}"))
                })
        })
    };
    let settings = Settings {
        answer_words: number("sim_words", shared.config.answer_words)?,
        tool_calls: number("sim_tool_calls", shared.config.tool_calls)?,
        refuse: get("sim_refuse") == Some("true"),
    };
    let requested = Directives::parse(get("sim_fault").unwrap_or(""))
        .map_err(|why| OpenAiError::invalid_request(why).with_param("metadata.sim_fault"))?;
    Ok((settings, shared.faults.next_turn().merge(requested)))
}

const ITEM_TYPES: &[&str] = &[
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "item_reference",
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "image_generation_call",
    "code_interpreter_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
    "compaction",
];

fn validate_item(index: usize, item: &Value) -> Result<(), OpenAiError> {
    let at = |field: &str| format!("input[{index}]{field}");
    let Some(map) = item.as_object() else {
        return Err(invalid_type(&at(""), "an object", item));
    };
    if let Some(kind) = map.get("type") {
        match kind.as_str() {
            Some(kind) if ITEM_TYPES.contains(&kind) => {}
            Some(kind) => {
                return Err(OpenAiError::invalid_request(format!(
                    "Invalid value: '{kind}'. Supported values are: {}.",
                    ITEM_TYPES
                        .iter()
                        .map(|t| format!("'{t}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_param(at(".type"))
                .with_code("invalid_value"));
            }
            None => return Err(invalid_type(&at(".type"), "a string", kind)),
        }
    } else if !map.contains_key("role") {
        return Err(missing(&at(".type")));
    }
    let require =
        |field: &str, check: fn(&Value) -> bool, expected: &str| -> Result<(), OpenAiError> {
            match map.get(field) {
                None => Err(missing(&at(&format!(".{field}")))),
                Some(value) if !check(value) => {
                    Err(invalid_type(&at(&format!(".{field}")), expected, value))
                }
                Some(_) => Ok(()),
            }
        };
    let string_or_array = |v: &Value| v.is_string() || v.is_array();
    match items::kind(item) {
        ItemKind::Message => {
            require("role", Value::is_string, "a string")?;
            let role = map.get("role").and_then(Value::as_str).unwrap_or_default();
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(OpenAiError::invalid_request(format!(
                    "Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system', and 'developer'."
                ))
                .with_param(at(".role"))
                .with_code("invalid_value"));
            }
            require("content", string_or_array, "a string or an array")
        }
        ItemKind::FunctionCall => {
            require("call_id", Value::is_string, "a string")?;
            require("name", Value::is_string, "a string")?;
            require("arguments", Value::is_string, "a string")
        }
        ItemKind::FunctionCallOutput => {
            require("call_id", Value::is_string, "a string")?;
            require("output", string_or_array, "a string or an array")
        }
        ItemKind::Reasoning | ItemKind::Other => Ok(()),
    }
}

/// Reasoning items sent back without `encrypted_content`, and item references, name server
/// state by id: it must be in this conversation or (for stored responses) the persisted store.
fn check_item_references(
    shared: &Shared,
    input: &[Value],
    parent: Option<&Stored>,
    store: bool,
) -> Result<(), OpenAiError> {
    for item in input {
        let by_reference = match items::kind(item) {
            ItemKind::Reasoning => item.get("encrypted_content").is_none_or(Value::is_null),
            _ => item.get("type").and_then(Value::as_str) == Some("item_reference"),
        };
        let Some(id) = item
            .get("id")
            .and_then(Value::as_str)
            .filter(|_| by_reference)
        else {
            continue;
        };
        if parent.is_some_and(|parent| parent.contains_item(id))
            || shared.store.has_reasoning_item(id)
        {
            continue;
        }
        let message = if store {
            format!("Item with id '{id}' not found.")
        } else {
            format!(
                "Item with id '{id}' not found. Items are not persisted when `store` is set to false. Try again \
                 with `store` set to true, or remove this item from your input."
            )
        };
        return Err(
            OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
                .with_param("input"),
        );
    }
    Ok(())
}

fn missing(param: &str) -> OpenAiError {
    OpenAiError::invalid_request(format!("Missing required parameter: '{param}'."))
        .with_param(param)
        .with_code("missing_required_parameter")
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> OpenAiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    OpenAiError::invalid_request(format!(
        "Invalid type for '{param}': expected {expected}, but got {got} instead."
    ))
    .with_param(param)
    .with_code("invalid_type")
}

/// How a played turn ended and, when it completed, the response to remember.
#[derive(Debug)]
pub struct Played {
    pub outcome: Outcome,
    pub stored: Option<Arc<Stored>>,
    /// The final Response object (`Null` when the connection closed first).
    pub response: Value,
}

/// Plays the turn into `sink`. Stops early (as `Closed`) when the sink is gone, the script
/// closes, or `cancel` fires.
pub async fn play<S: Sink>(
    shared: &Shared,
    turn: &Prepared,
    sink: &mut S,
    cancel: &CancellationToken,
) -> Played {
    let (parent, source) = match &turn.parent {
        Some((stored, source)) => (Some(stored), Some(*source)),
        None => (None, None),
    };
    let mut summary = parent.map_or_else(ContextSummary::default, |p| p.summary.clone());
    summary.extend(&turn.input);
    let plan = if turn.warmup {
        model::Plan::default()
    } else {
        model::plan(&summary, &turn.request, turn.settings)
    };

    // What the upstream has not seen before: the new items, plus a hydrated parent's history.
    let input_bytes: usize = turn.input.iter().map(json_len).sum();
    let hydrated = source == Some(ParentSource::Store);
    let uncached = input_bytes
        + if hydrated {
            parent.map_or(0, |p| p.summary.bytes)
        } else {
            0
        };
    let cached_bytes = if source == Some(ParentSource::Socket) {
        parent.map_or(0, |p| p.summary.bytes)
    } else {
        0
    };
    let latency = &shared.config.latency;
    let output_tokens = plan.output_tokens();
    let input_tokens = summary.bytes.div_ceil(4) as u64;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_bytes.div_ceil(4)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens()},
        "total_tokens": input_tokens + u64::from(output_tokens),
    });
    let template = response_template(turn);
    let obfuscate = turn
        .request
        .get("stream_options")
        .and_then(|options| options.get("include_obfuscation"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let script = events::script(&ScriptInput {
        template: &template,
        plan: &plan,
        directives: &turn.directives,
        stream_id: turn.stream_id.as_deref(),
        obfuscate,
        first_token_delay: latency.prefill(uncached, hydrated)
            + if turn.warmup {
                Default::default()
            } else {
                latency.ttft
            },
        per_token: latency.per_token,
        usage,
    });

    let closed = Played {
        outcome: Outcome::Closed,
        stored: None,
        response: Value::Null,
    };
    let outcome = match script.terminal {
        Terminal::Completed => Outcome::Completed,
        Terminal::Incomplete => Outcome::Incomplete,
        Terminal::Failed => Outcome::Failed,
        Terminal::Closed => Outcome::Closed,
    };
    let stored = matches!(outcome, Outcome::Completed | Outcome::Incomplete).then(|| {
        let mut items = turn.input.clone();
        items.extend(script.output.iter().cloned());
        summary.extend(&script.output);
        Arc::new(Stored {
            id: turn.id.clone(),
            model: turn.model.clone(),
            parent: parent.cloned(),
            items,
            summary,
            response: script.response.clone(),
        })
    });
    // The terminal event is the last step; the response is stored before it goes out, so a
    // client that continues the moment it sees `response.completed` finds it.
    let last = script
        .steps
        .iter()
        .rposition(|step| !matches!(step, Step::Late(_)))
        .unwrap_or(0);
    for (index, step) in script.steps.into_iter().enumerate() {
        if index == last
            && turn.store
            && let Some(stored) = &stored
        {
            shared.store.insert(stored.clone());
        }
        match step {
            Step::Event(event) => {
                if !sink.send(event).await {
                    return closed;
                }
            }
            Step::Sleep(duration) => {
                tokio::select! {
                    () = tokio::time::sleep(duration) => {}
                    () = cancel.cancelled() => return closed,
                }
            }
            Step::Close => return closed,
            Step::Late(event) => {
                tokio::select! {
                    () = tokio::time::sleep(super::events::LATE_AFTER) => {}
                    () = cancel.cancelled() => return closed,
                }
                if !sink.send(event).await {
                    return closed;
                }
            }
        }
    }
    Played {
        outcome,
        stored,
        response: script.response,
    }
}

/// The Response object fields that do not change during the turn, echoing the request.
fn response_template(turn: &Prepared) -> Map<String, Value> {
    let request = &turn.request;
    let echo = |key: &str, default: Value| {
        request
            .get(key)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let reasoning = request.get("reasoning").and_then(Value::as_object);
    let reasoning_field = |key: &str| {
        reasoning
            .and_then(|r| r.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let fields = json!({
        "id": turn.id,
        "object": "response",
        "created_at": events::unix_now(),
        "status": "in_progress",
        "background": echo("background", false.into()),
        "completed_at": null,
        "error": null,
        "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "max_tool_calls": echo("max_tool_calls", Value::Null),
        "model": turn.model,
        "output": [],
        "parallel_tool_calls": echo("parallel_tool_calls", true.into()),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "prompt_cache_key": echo("prompt_cache_key", Value::Null),
        "prompt_cache_retention": echo("prompt_cache_retention", Value::Null),
        "reasoning": {"effort": reasoning_field("effort"), "summary": reasoning_field("summary")},
        "safety_identifier": echo("safety_identifier", Value::Null),
        "service_tier": echo("service_tier", "default".into()),
        "store": turn.store,
        "temperature": echo("temperature", 1.0.into()),
        "text": echo("text", json!({"format": {"type": "text"}, "verbosity": "medium"})),
        "tool_choice": echo("tool_choice", "auto".into()),
        "tools": echo("tools", json!([])),
        "top_logprobs": echo("top_logprobs", 0.into()),
        "top_p": echo("top_p", 1.0.into()),
        "truncation": echo("truncation", "disabled".into()),
        "usage": null,
        "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({})),
    });
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
