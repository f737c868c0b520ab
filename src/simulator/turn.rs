//! One `response.create`, from request body to finished turn, shared by both transports:
//! [`prepare`] validates the request and resolves `previous_response_id` (request-scoped
//! errors come out here, before any event); [`play`] runs the scripted model and plays its
//! events into a [`Sink`], keeping the result when it completes.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::events::{self, ScriptInput, Step, Terminal};
use super::faults::Directives;
use super::model::{self, Settings};
use super::stats::{Outcome, Transport};
use super::store::{ContextSummary, Stored, json_len};
use super::validate::{self, invalid_type, missing};
use crate::ids;
use crate::protocol::OpenAiError;

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

/// Validates `request` and resolves its parent. `cached` looks an id up in the socket's
/// memory (always `None` over REST).
pub fn prepare(
    shared: &Shared,
    mut request: Map<String, Value>,
    transport: Transport,
    cached: impl Fn(&str) -> Option<Arc<Stored>>,
) -> Result<Prepared, OpenAiError> {
    let fields = Fields::read(&request, transport)?;
    let (settings, directives) = options(shared, &request)?;
    let input = read_input(
        request.remove("input"),
        fields.previous.is_some() || fields.warmup,
    )?;
    let parent = match fields.previous.as_deref() {
        None => None,
        Some(id) => match cached(id) {
            Some(stored) => Some((stored, ParentSource::Socket)),
            None => match shared.store.get(id) {
                Some(stored) => Some((stored, ParentSource::Store)),
                None => return Err(OpenAiError::previous_response_not_found(id)),
            },
        },
    };
    let parent_node = parent.as_ref().map(|(stored, _)| stored.as_ref());
    validate::check_item_references(shared, &input, parent_node, fields.store)?;
    Ok(Prepared {
        id: ids::new_id("resp"),
        request,
        model: fields.model,
        input,
        parent,
        store: fields.store,
        warmup: fields.warmup,
        settings,
        directives,
        stream_id: fields.stream_id,
    })
}

/// The scalar fields of a request that decide how it is played, checked.
struct Fields {
    model: String,
    previous: Option<String>,
    stream_id: Option<String>,
    store: bool,
    warmup: bool,
}

impl Fields {
    fn read(request: &Map<String, Value>, transport: Transport) -> Result<Self, OpenAiError> {
        let model = match request.get("model") {
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            None | Some(Value::Null) => return Err(missing("model")),
            Some(other) => return Err(invalid_type("model", "a string", other)),
        };
        let text = |key: &str| match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(invalid_type(key, "a string", other)),
        };
        let flag = |key: &str, default: bool| match request.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(invalid_type(key, "a boolean", other)),
        };
        let fields = Self {
            model,
            previous: text("previous_response_id")?,
            stream_id: text("stream_id")?,
            store: flag("store", true)?,
            warmup: !flag("generate", true)?,
        };
        if transport == Transport::Ws && flag("background", false)? {
            return Err(OpenAiError::invalid_request(
                "Background responses are not supported over WebSocket.",
            )
            .with_param("background"));
        }
        if let Some(key) = ["stream_id", "generate"]
            .into_iter()
            .find(|key| transport != Transport::Ws && request.contains_key(*key))
        {
            return Err(
                OpenAiError::invalid_request(format!("Unsupported parameter: '{key}'."))
                    .with_param(key)
                    .with_code("unsupported_parameter"),
            );
        }
        if fields.previous.is_some() && request.get("conversation").is_some_and(|c| !c.is_null()) {
            return Err(OpenAiError::invalid_request(
                "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or 'conversation'.",
            )
            .with_code("mutually_exclusive_parameters"));
        }
        if let Some(tools) = request
            .get("tools")
            .filter(|t| !t.is_null() && !t.is_array())
        {
            return Err(invalid_type("tools", "an array", tools));
        }
        Ok(fields)
    }
}

/// The `input` items; `optional` when the request continues or only warms up.
fn read_input(input: Option<Value>, optional: bool) -> Result<Vec<Value>, OpenAiError> {
    match input {
        None | Some(Value::Null) if optional => Ok(Vec::new()),
        None | Some(Value::Null) => Err(missing("input")),
        Some(Value::String(text)) => Ok(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                validate::validate_item(index, item)?;
            }
            Ok(items)
        }
        Some(other) => Err(invalid_type("input", "a string or an array", &other)),
    }
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
        parallel: number("sim_parallel", 1)?,
        refuse: get("sim_refuse") == Some("true"),
    };
    let requested = Directives::parse(get("sim_fault").unwrap_or(""))
        .map_err(|why| OpenAiError::invalid_request(why).with_param("metadata.sim_fault"))?;
    Ok((settings, shared.faults.next_turn().merge(requested)))
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
    let parent = turn.parent.as_ref().map(|(stored, _)| stored);
    let mut summary = parent.map_or_else(ContextSummary::default, |p| p.summary.clone());
    summary.extend(&turn.input);
    let plan = if turn.warmup {
        model::Plan::default()
    } else {
        model::plan(&summary, &turn.request, turn.settings)
    };
    let (first_token_delay, usage) = cost(shared, turn, &summary, &plan);
    let obfuscate = turn
        .request
        .get("stream_options")
        .and_then(|options| options.get("include_obfuscation"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let script = events::script(&ScriptInput {
        template: &response_template(turn),
        plan: &plan,
        directives: &turn.directives,
        stream_id: turn.stream_id.as_deref(),
        obfuscate,
        first_token_delay,
        per_token: shared.config.latency.per_token,
        usage,
    });
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
    let keep = stored.as_ref().filter(|_| turn.store);
    if !run(shared, script.steps, keep, sink, cancel).await {
        return Played {
            outcome: Outcome::Closed,
            stored: None,
            response: Value::Null,
        };
    }
    Played {
        outcome,
        stored,
        response: script.response,
    }
}

/// The delay before the first output token and the usage figures: only what the upstream has
/// not seen before costs reading time (the new items, plus a hydrated parent's history).
fn cost(
    shared: &Shared,
    turn: &Prepared,
    summary: &ContextSummary,
    plan: &model::Plan,
) -> (std::time::Duration, Value) {
    let (parent_bytes, source) = turn
        .parent
        .as_ref()
        .map_or((0, None), |(p, source)| (p.summary.bytes, Some(*source)));
    let input_bytes: usize = turn.input.iter().map(json_len).sum();
    let hydrated = source == Some(ParentSource::Store);
    let uncached = input_bytes + if hydrated { parent_bytes } else { 0 };
    let cached_bytes = if source == Some(ParentSource::Socket) {
        parent_bytes
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
    let ttft = if turn.warmup {
        Default::default()
    } else {
        latency.ttft
    };
    (latency.prefill(uncached, hydrated) + ttft, usage)
}

/// Runs the script's steps into `sink`; false when it stopped early (the sink is gone, the
/// script closes, or `cancel` fired). The terminal event is the last step; `store` is
/// persisted before it goes out, so a client that continues the moment it sees
/// `response.completed` finds it.
async fn run<S: Sink>(
    shared: &Shared,
    steps: Vec<Step>,
    store: Option<&Arc<Stored>>,
    sink: &mut S,
    cancel: &CancellationToken,
) -> bool {
    let last = steps
        .iter()
        .rposition(|step| !matches!(step, Step::Late(_)))
        .unwrap_or(0);
    let pause = |duration| async move {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = cancel.cancelled() => false,
        }
    };
    for (index, step) in steps.into_iter().enumerate() {
        if index == last
            && let Some(stored) = store
        {
            shared.store.insert(stored.clone());
        }
        let sent = match step {
            Step::Event(event) => sink.send(event).await,
            Step::Sleep(duration) => pause(duration).await,
            Step::Close => false,
            Step::Late(event) => pause(events::LATE_AFTER).await && sink.send(event).await,
        };
        if !sent {
            return false;
        }
    }
    true
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
