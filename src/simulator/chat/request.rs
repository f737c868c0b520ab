//! A chat request read the way OpenAI reads it (the same 400s for bad `messages`, tools and
//! limits) and turned into the Responses request the scripted model plays, so the same
//! conversation gets the same answer on both APIs (docs/protocol.md, "Chat Completions"):
//! every message becomes the item a Responses conversation holds at that point, and the
//! parameters the model acts on take their Responses names. Fields the model ignores
//! (`logit_bias`, `seed`, `stop`, unknown ones) are accepted and ignored.

use serde_json::{Map, Value, json};

use crate::protocol::OpenAiError;
use crate::simulator::validate::{invalid_type, missing};

/// The most choices one request may ask for (`n`).
const MAX_CHOICES: u64 = 128;

/// A chat request, checked and translated.
#[derive(Debug)]
pub struct ChatRequest {
    /// The Responses request to play: `model`, `input`, `tools`, `tool_choice`,
    /// `max_output_tokens`, `text`, `reasoning`, `metadata` …, and `store: false`.
    pub responses: Map<String, Value>,
    pub n: usize,
    pub include_usage: bool,
    pub obfuscate: bool,
    /// The request used the legacy `functions`: calls are answered as `function_call`.
    pub legacy: bool,
}

/// Checks and translates a chat request body.
pub fn read(fields: &Map<String, Value>, stream: bool) -> Result<ChatRequest, OpenAiError> {
    let messages = match fields.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(invalid_type("messages", "an array of objects", other)),
    };
    if messages.is_empty() {
        return Err(OpenAiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .with_param("messages")
        .with_code("empty_array"));
    }
    let mut responses = Map::new();
    for key in [
        "model",
        "metadata",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "user",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        if let Some(value) = fields.get(key) {
            responses.insert(key.into(), value.clone());
        }
    }
    responses.insert(
        "input".into(),
        Value::Array(super::messages::items(messages)?),
    );
    let legacy = tools(fields, &mut responses)?;
    parameters(fields, &mut responses)?;
    responses.insert("store".into(), Value::Bool(false));
    let options = fields.get("stream_options").filter(|o| !o.is_null());
    if options.is_some() && !stream {
        return Err(OpenAiError::invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .with_param("stream_options"));
    }
    let option = |key: &str| options.and_then(|o| o.get(key)).and_then(Value::as_bool);
    let n = match fields.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=MAX_CHOICES).contains(n))
            .ok_or_else(|| {
                OpenAiError::invalid_request(format!(
                    "Invalid 'n': expected an integer from 1 to {MAX_CHOICES}, got {n}."
                ))
                .with_param("n")
                .with_code("invalid_value")
            })?,
    };
    Ok(ChatRequest {
        responses,
        n: n as usize,
        include_usage: option("include_usage").unwrap_or(false),
        obfuscate: option("include_obfuscation").unwrap_or(true),
        legacy,
    })
}

/// `tools` (or the legacy `functions`) flattened to Responses function tools, and
/// `tool_choice` (or `function_call`); true when the request is in the legacy form.
fn tools(fields: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<bool, OpenAiError> {
    let (key, legacy) = match (fields.get("tools"), fields.get("functions")) {
        (Some(tools), _) if !tools.is_null() => ("tools", false),
        (_, Some(functions)) if !functions.is_null() => ("functions", true),
        _ => ("tools", false),
    };
    if let Some(list) = fields.get(key).filter(|list| !list.is_null()) {
        let Some(list) = list.as_array() else {
            return Err(invalid_type(key, "an array", list));
        };
        let flat = list
            .iter()
            .enumerate()
            .map(|(index, tool)| flat_tool(&format!("{key}[{index}]"), tool, legacy))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(flat));
    }
    if legacy {
        // The legacy form has room for one call per answer.
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    let choice_key = if legacy {
        "function_call"
    } else {
        "tool_choice"
    };
    match fields.get(choice_key) {
        None | Some(Value::Null) => {}
        Some(Value::String(mode)) if ["none", "auto", "required"].contains(&mode.as_str()) => {
            out.insert("tool_choice".into(), Value::from(mode.as_str()));
        }
        Some(choice) => {
            let named = if legacy {
                choice.get("name")
            } else {
                choice.get("function").and_then(|f| f.get("name"))
            };
            let Some(name) = named.and_then(Value::as_str) else {
                return Err(OpenAiError::invalid_request(format!(
                    "Invalid value for '{choice_key}': expected 'none', 'auto', 'required' or a named function."
                ))
                .with_param(choice_key)
                .with_code("invalid_value"));
            };
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "name": name}),
            );
        }
    }
    Ok(legacy)
}

/// `{type: function, function: {name, description, parameters, strict}}` (or a legacy
/// function definition) as the flat Responses tool.
fn flat_tool(at: &str, tool: &Value, legacy: bool) -> Result<Value, OpenAiError> {
    let function = if legacy {
        tool
    } else {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => tool
                .get("function")
                .ok_or_else(|| missing(&format!("{at}.function")))?,
            // Custom tools keep their shape; the scripted model never calls them.
            Some("custom") => return Ok(tool.clone()),
            Some(other) => {
                return Err(OpenAiError::invalid_request(format!(
                    "Invalid value: '{other}'. Supported values are: 'function' and 'custom'."
                ))
                .with_param(format!("{at}.type"))
                .with_code("invalid_value"));
            }
            None => return Err(missing(&format!("{at}.type"))),
        }
    };
    let prefix = if legacy {
        at.to_owned()
    } else {
        format!("{at}.function")
    };
    match function.get("name") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => return Err(missing(&format!("{prefix}.name"))),
        Some(other) => return Err(invalid_type(&format!("{prefix}.name"), "a string", other)),
    }
    let mut flat = Map::new();
    flat.insert("type".into(), Value::from("function"));
    for key in ["name", "description", "parameters", "strict"] {
        if let Some(value) = function.get(key) {
            flat.insert(key.into(), value.clone());
        }
    }
    Ok(Value::Object(flat))
}

/// `max_completion_tokens` / `max_tokens`, `response_format`, `reasoning_effort`.
fn parameters(
    fields: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), OpenAiError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        let Some(limit) = fields.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let limit = limit.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            OpenAiError::invalid_request(format!(
                "Invalid '{key}': expected an integer of at least 1, got {limit}."
            ))
            .with_param(key)
            .with_code("invalid_value")
        })?;
        out.entry("max_output_tokens").or_insert(Value::from(limit));
    }
    match fields.get("response_format").filter(|v| !v.is_null()) {
        None => {}
        Some(format) => {
            let text_format = match format.get("type").and_then(Value::as_str) {
                Some("text") => json!({"type": "text"}),
                Some("json_object") => json!({"type": "json_object"}),
                Some("json_schema") => {
                    let Some(schema) = format.get("json_schema").and_then(Value::as_object) else {
                        return Err(missing("response_format.json_schema"));
                    };
                    let mut flat = json!({"type": "json_schema"});
                    if let Some(map) = flat.as_object_mut() {
                        map.extend(schema.clone());
                    }
                    flat
                }
                _ => {
                    return Err(OpenAiError::invalid_request(
                        "Invalid value for 'response_format.type': supported values are 'text', 'json_object' and 'json_schema'.",
                    )
                    .with_param("response_format.type")
                    .with_code("invalid_value"));
                }
            };
            out.insert("text".into(), json!({ "format": text_format }));
        }
    }
    match fields.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(effort)) => {
            out.insert("reasoning".into(), json!({ "effort": effort }));
        }
        Some(other) => return Err(invalid_type("reasoning_effort", "a string", other)),
    }
    Ok(())
}
