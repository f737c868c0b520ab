//! A `POST /v1/chat/completions` body → a `POST /v1/responses` body, or the verdict that it
//! must pass through to the upstream's chat endpoint unchanged (docs/architecture.md, "Chat
//! Completions"). Pure and deterministic: the same body always gives the same translation.

use serde_json::{Map, Value, json};

use super::{legacy, messages};
use crate::outcome::ChatPassthrough as Unsupported;
use crate::protocol::OpenAiError;

/// Bridged, or passed through for a reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    Bridge(T),
    Passthrough(Unsupported),
}

/// A chat request as a Responses turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridged {
    /// The Responses request body (no `stream`: the front-end streams or collects itself).
    pub body: Map<String, Value>,
    pub stream: bool,
    /// `stream_options.include_usage`: one usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// The request uses legacy function calling: answers carry `function_call`, not
    /// `tool_calls` ([`legacy`]).
    pub legacy: bool,
}

/// A 400 `invalid_request_error` naming `param`.
pub(super) fn bad(message: String, param: &str) -> OpenAiError {
    OpenAiError::invalid_request(message).with_param(param)
}

/// `value` as an array, or the 400 `invalid_type` naming `param`.
pub(super) fn expect_array<'a>(value: &'a Value, param: &str) -> Result<&'a [Value], OpenAiError> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| {
        bad(
            format!("Invalid type for '{param}': expected an array."),
            param,
        )
        .with_code("invalid_type")
    })
}

/// `value` as a string, or a 400 naming `param`.
pub(super) fn expect_str<'a>(value: &'a Value, param: &str) -> Result<&'a str, OpenAiError> {
    value.as_str().ok_or_else(|| {
        let message = if value.is_null() {
            format!("Missing required parameter: '{param}'.")
        } else {
            format!("Invalid type for '{param}': expected a string.")
        };
        bad(message, param).with_code(if value.is_null() {
            "missing_required_parameter"
        } else {
            "invalid_type"
        })
    })
}

/// Fields copied as they are (same name, same meaning in both APIs).
const SAME: [&str; 8] = [
    "temperature",
    "top_p",
    "user",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
];

/// Fields read by the translation itself.
const TRANSLATED: [&str; 15] = [
    "functions",
    "function_call",
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "verbosity",
    "max_tokens",
    "max_completion_tokens",
    "reasoning_effort",
    "modalities",
];

/// Translates a chat body (a JSON object). Errors are the 400s OpenAI would answer.
pub fn translate(request: &Map<String, Value>) -> Result<Verdict<Bridged>, OpenAiError> {
    let (model, messages, stream) = required(request)?;
    let items = match messages::items(messages)? {
        Verdict::Bridge(items) => items,
        Verdict::Passthrough(why) => return Ok(Verdict::Passthrough(why)),
    };
    if let Some(why) = unfaithful(request) {
        return Ok(Verdict::Passthrough(why));
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));
    body.insert("input".into(), Value::Array(items));
    let legacy = legacy::is_legacy(request);
    let tools = if legacy {
        legacy::tools(request)?
    } else {
        tools(request)?
    };
    let tools = match tools {
        Verdict::Bridge(tools) => tools,
        Verdict::Passthrough(why) => return Ok(Verdict::Passthrough(why)),
    };
    for (key, value) in tools.into_iter().chain(settings(request)?) {
        body.insert(key, value);
    }
    // Chat's `store` defaults to false, the Responses API's to true: always say which (a
    // stored chat completion passed through above).
    body.insert("store".into(), Value::Bool(false));
    let include_usage = request
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Verdict::Bridge(Bridged {
        body,
        stream,
        include_usage,
        legacy,
    }))
}

/// The fields every chat request needs: `model`, a non-empty `messages` array, and `stream`
/// (a boolean when present).
fn required(request: &Map<String, Value>) -> Result<(&str, &[Value], bool), OpenAiError> {
    let model = match request.get("model") {
        None | Some(Value::Null) => {
            return Err(bad("you must provide a model parameter".into(), "model")
                .with_code("missing_required_parameter"));
        }
        Some(model) => expect_str(model, "model")?,
    };
    let messages = match request.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                bad("Missing required parameter: 'messages'.".into(), "messages")
                    .with_code("missing_required_parameter"),
            );
        }
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(bad(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".into(),
                "messages",
            )
            .with_code("empty_array"));
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(bad(
                "Invalid type for 'messages': expected an array.".into(),
                "messages",
            )
            .with_code("invalid_type"));
        }
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => {
            return Err(bad(
                "Invalid type for 'stream': expected a boolean.".into(),
                "stream",
            )
            .with_code("invalid_type"));
        }
    };
    if !stream && request.get("stream_options").is_some_and(|o| !o.is_null()) {
        return Err(bad(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
            "stream_options",
        ));
    }
    Ok((model, messages, stream))
}

/// The smallest `max_output_tokens` the Responses API accepts (it answers a 400
/// `integer_below_min_value` below it); Chat Completions takes any positive count.
const MIN_OUTPUT_TOKENS: u64 = 16;

/// The first field that has no faithful Responses equivalent, if any.
fn unfaithful(request: &Map<String, Value>) -> Option<Unsupported> {
    let present = |key: &str| request.get(key).filter(|value| !value.is_null());
    let limit = present("max_completion_tokens").or_else(|| present("max_tokens"));
    if limit
        .and_then(Value::as_u64)
        .is_some_and(|limit| limit < MIN_OUTPUT_TOKENS)
    {
        return Some(Unsupported::OutputLimit);
    }
    for (key, value) in request {
        let key = key.as_str();
        if value.is_null() || SAME.contains(&key) || TRANSLATED.contains(&key) {
            continue;
        }
        let why = match key {
            "n" if value.as_u64() == Some(1) => continue,
            // A stored chat completion is listed and retrieved by its `chatcmpl-…` id through
            // the chat API; a Responses turn is stored as a response instead.
            "store" if value == &Value::Bool(false) => continue,
            "store" => Unsupported::Store,
            "n" => Unsupported::Choices,
            "logprobs" if value == &Value::Bool(false) => continue,
            "logprobs" | "top_logprobs" => Unsupported::Logprobs,
            "stop" => Unsupported::Stop,
            "logit_bias" if value.as_object().is_some_and(Map::is_empty) => continue,
            "logit_bias" => Unsupported::LogitBias,
            "frequency_penalty" | "presence_penalty" if value.as_f64() == Some(0.0) => continue,
            "frequency_penalty" | "presence_penalty" => Unsupported::Penalties,
            "seed" => Unsupported::Seed,
            "audio" => Unsupported::Audio,
            "prediction" => Unsupported::Prediction,
            "web_search_options" => Unsupported::WebSearch,
            _ => Unsupported::Field,
        };
        return Some(why);
    }
    match request.get("modalities") {
        Some(Value::Array(modalities)) if modalities.iter().any(|m| m != "text") => {
            Some(Unsupported::Audio)
        }
        _ => None,
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` in their Responses form.
/// One chat function (`tools[].function` or a legacy `functions[]` entry) as a flat Responses
/// function tool. Chat reads a missing `parameters` as "no arguments"; the Responses API
/// requires the field, so that becomes the empty object schema.
pub fn function_tool(name: &str, function: &Map<String, Value>, strict: bool) -> Value {
    let mut tool = Map::new();
    tool.insert("type".into(), Value::from("function"));
    tool.insert("name".into(), Value::from(name));
    if let Some(description) = function.get("description").filter(|value| !value.is_null()) {
        tool.insert("description".into(), description.clone());
    }
    let parameters = function
        .get("parameters")
        .filter(|value| !value.is_null())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    tool.insert("parameters".into(), parameters);
    tool.insert("strict".into(), Value::Bool(strict));
    Value::Object(tool)
}

fn tools(request: &Map<String, Value>) -> Result<Verdict<Vec<(String, Value)>>, OpenAiError> {
    let mut out = Vec::new();
    if let Some(tools) = request.get("tools").filter(|value| !value.is_null()) {
        let tools = expect_array(tools, "tools")?;
        let mut flat = Vec::with_capacity(tools.len());
        for (index, tool) in tools.iter().enumerate() {
            let at = format!("tools[{index}]");
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Ok(Verdict::Passthrough(Unsupported::Tools));
            }
            let Some(function) = tool.get("function").and_then(Value::as_object) else {
                return Err(bad(
                    format!("Missing required parameter: '{at}.function'."),
                    &format!("{at}.function"),
                )
                .with_code("missing_required_parameter"));
            };
            let name = expect_str(
                function.get("name").unwrap_or(&Value::Null),
                &format!("{at}.function.name"),
            )?;
            // Chat functions are not strict unless they say so; Responses ones are.
            let strict = function
                .get("strict")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            flat.push(function_tool(name, function, strict));
        }
        out.push(("tools".to_owned(), Value::Array(flat)));
    }
    match request.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) => {
            out.push(("tool_choice".into(), Value::from(choice.as_str())))
        }
        Some(choice) => {
            let name = choice
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str);
            match (choice.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => {
                    out.push((
                        "tool_choice".into(),
                        json!({"type": "function", "name": name}),
                    ));
                }
                _ => return Ok(Verdict::Passthrough(Unsupported::Tools)),
            }
        }
    }
    if let Some(parallel) = request
        .get("parallel_tool_calls")
        .filter(|value| !value.is_null())
    {
        out.push(("parallel_tool_calls".into(), parallel.clone()));
    }
    Ok(Verdict::Bridge(out))
}

/// The remaining settings: output limit, reasoning, text format, and the fields of [`SAME`].
fn settings(request: &Map<String, Value>) -> Result<Vec<(String, Value)>, OpenAiError> {
    let mut out = Vec::new();
    let present = |key: &str| request.get(key).filter(|value| !value.is_null());
    if let Some(limit) = present("max_completion_tokens").or_else(|| present("max_tokens")) {
        out.push(("max_output_tokens".into(), limit.clone()));
    }
    if let Some(effort) = present("reasoning_effort") {
        out.push(("reasoning".into(), json!({"effort": effort})));
    }
    let mut text = Map::new();
    if let Some(format) = present("response_format") {
        text.insert("format".into(), text_format(format)?);
    }
    if let Some(verbosity) = present("verbosity") {
        text.insert("verbosity".into(), verbosity.clone());
    }
    if !text.is_empty() {
        out.push(("text".into(), Value::Object(text)));
    }
    for key in SAME {
        if let Some(value) = present(key) {
            out.push((key.to_owned(), value.clone()));
        }
    }
    Ok(out)
}

/// `response_format` → `text.format`.
fn text_format(format: &Value) -> Result<Value, OpenAiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let Some(schema) = format.get("json_schema").and_then(Value::as_object) else {
                return Err(bad(
                    "Missing required parameter: 'response_format.json_schema'.".into(),
                    "response_format.json_schema",
                )
                .with_code("missing_required_parameter"));
            };
            let mut out = Map::new();
            out.insert("type".into(), Value::from("json_schema"));
            for key in ["name", "description", "schema", "strict"] {
                if let Some(value) = schema.get(key).filter(|value| !value.is_null()) {
                    out.insert(key.into(), value.clone());
                }
            }
            Ok(Value::Object(out))
        }
        _ => Err(bad(
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'.".into(),
            "response_format.type",
        )
        .with_code("invalid_value")),
    }
}
