//! Chat `messages` as Responses input items, in order (docs/protocol.md, "Chat Completions"):
//! - `system` / `developer` / `user`: a message of that role; string content stays a string,
//!   parts become `input_text` / `input_image` (`detail` defaults to `auto`) / `input_file`;
//! - `assistant`: a message for its content (`output_text` parts) and `refusal` (a `refusal`
//!   part), then one `function_call` per `tool_calls` entry (`call_id` = the tool call's id);
//!   the legacy `function_call` becomes a `function_call` whose `call_id` is `call_legacy_N`
//!   (N counts legacy calls from 0);
//! - `tool`: a `function_call_output` for `tool_call_id`, text parts joined into one string;
//!   legacy `function`: the output of the latest legacy call.
//!
//! Checked as OpenAI checks them: every `tool` message answers a call of the assistant
//! message before it, and every call is answered before the conversation moves on.

use serde_json::{Map, Value, json};

use crate::protocol::OpenAiError;
use crate::simulator::validate::{invalid_type, missing};

const ROLES: &str = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'";

/// The Responses items for `messages`.
pub fn items(messages: &[Value]) -> Result<Vec<Value>, OpenAiError> {
    let mut out = Vec::with_capacity(messages.len());
    let mut calls = Calls::default();
    for (index, message) in messages.iter().enumerate() {
        let at = format!("messages[{index}]");
        let Some(message) = message.as_object() else {
            return Err(invalid_type(&at, "an object", message));
        };
        let role = match message.get("role") {
            Some(Value::String(role)) => role.as_str(),
            None | Some(Value::Null) => return Err(missing(&format!("{at}.role"))),
            Some(other) => return Err(invalid_type(&format!("{at}.role"), "a string", other)),
        };
        if role != "tool" {
            calls.settle(&at)?;
        }
        match role {
            "system" | "developer" | "user" => {
                let content = content(&at, message, role == "user")?;
                out.push(json!({"role": role, "content": content}));
            }
            "assistant" => assistant(&at, message, &mut calls, &mut out)?,
            "tool" => out.push(calls.answer(&at, message)?),
            "function" => {
                let output = tool_output(&at, message)?;
                let call_id = format!("call_legacy_{}", calls.legacy.saturating_sub(1));
                out.push(
                    json!({"type": "function_call_output", "call_id": call_id, "output": output}),
                );
            }
            other => {
                return Err(OpenAiError::invalid_request(format!(
                    "Invalid value: '{other}'. Supported values are: {ROLES}."
                ))
                .with_param(format!("{at}.role"))
                .with_code("invalid_value"));
            }
        }
    }
    calls.settle(&format!("messages[{}]", messages.len()))?;
    Ok(out)
}

/// The tool calls of the latest assistant message that still wait for their `tool` answer.
#[derive(Default)]
struct Calls {
    pending: Vec<String>,
    /// The previous message was an assistant message with `tool_calls`, or one of its answers.
    answering: bool,
    legacy: usize,
}

impl Calls {
    /// A message that is not a `tool` answer: every call must have been answered.
    fn settle(&mut self, at: &str) -> Result<(), OpenAiError> {
        self.answering = false;
        if self.pending.is_empty() {
            return Ok(());
        }
        Err(OpenAiError::invalid_request(format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. \
             The following tool_call_ids did not have response messages: {}",
            self.pending.join(", ")
        ))
        .with_param(format!("{at}.role")))
    }

    fn answer(&mut self, at: &str, message: &Map<String, Value>) -> Result<Value, OpenAiError> {
        let call_id = match message.get("tool_call_id") {
            Some(Value::String(id)) => id.clone(),
            None | Some(Value::Null) => return Err(missing(&format!("{at}.tool_call_id"))),
            Some(other) => {
                return Err(invalid_type(
                    &format!("{at}.tool_call_id"),
                    "a string",
                    other,
                ));
            }
        };
        let position = self.pending.iter().position(|id| *id == call_id);
        let Some(position) = position.filter(|_| self.answering) else {
            return Err(OpenAiError::invalid_request(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
            )
            .with_param(format!("{at}.role")));
        };
        self.pending.remove(position);
        let output = tool_output(at, message)?;
        Ok(json!({"type": "function_call_output", "call_id": call_id, "output": output}))
    }
}

fn assistant(
    at: &str,
    message: &Map<String, Value>,
    calls: &mut Calls,
    out: &mut Vec<Value>,
) -> Result<(), OpenAiError> {
    let mut parts = match message.get("content") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if text.is_empty() => Vec::new(),
        Some(Value::String(text)) => {
            vec![json!({"type": "output_text", "text": text, "annotations": []})]
        }
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| assistant_part(&format!("{at}.content[{i}]"), part))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid_type(
                &format!("{at}.content"),
                "a string or an array",
                other,
            ));
        }
    };
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        parts.push(json!({"type": "refusal", "refusal": refusal}));
    }
    if !parts.is_empty() {
        out.push(json!({"type": "message", "role": "assistant", "content": parts}));
    }
    if let Some(tool_calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        let Some(tool_calls) = tool_calls.as_array() else {
            return Err(invalid_type(
                &format!("{at}.tool_calls"),
                "an array",
                tool_calls,
            ));
        };
        for (i, call) in tool_calls.iter().enumerate() {
            let call_at = format!("{at}.tool_calls[{i}]");
            let id = string_field(&call_at, call, &["id"])?;
            let name = string_field(&call_at, call, &["function", "name"])?;
            let arguments = string_field(&call_at, call, &["function", "arguments"])?;
            calls.pending.push(id.clone());
            out.push(json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments}));
        }
        calls.answering = !tool_calls.is_empty();
    }
    if let Some(call) = message.get("function_call").filter(|v| !v.is_null()) {
        let call_at = format!("{at}.function_call");
        let name = string_field(&call_at, call, &["name"])?;
        let arguments = string_field(&call_at, call, &["arguments"])?;
        let call_id = format!("call_legacy_{}", calls.legacy);
        calls.legacy += 1;
        out.push(json!({"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}));
    }
    Ok(())
}

/// A string at `path` inside `value`, or the 400 naming it.
fn string_field(at: &str, value: &Value, path: &[&str]) -> Result<String, OpenAiError> {
    let param = format!("{at}.{}", path.join("."));
    match path.iter().try_fold(value, |node, key| node.get(key)) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(missing(&param)),
        Some(other) => Err(invalid_type(&param, "a string", other)),
    }
}

fn assistant_part(at: &str, part: &Value) -> Result<Value, OpenAiError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = string_field(at, part, &["text"])?;
            Ok(json!({"type": "output_text", "text": text, "annotations": []}))
        }
        Some("refusal") => {
            let refusal = string_field(at, part, &["refusal"])?;
            Ok(json!({"type": "refusal", "refusal": refusal}))
        }
        _ => Err(part_type_error(at, part, "'text' and 'refusal'")),
    }
}

/// The content of a system, developer or user message: a string as it is, parts translated.
fn content(at: &str, message: &Map<String, Value>, user: bool) -> Result<Value, OpenAiError> {
    let parts = match message.get("content") {
        Some(Value::String(text)) => return Ok(Value::from(text.as_str())),
        None | Some(Value::Null) => return Err(missing(&format!("{at}.content"))),
        Some(Value::Array(parts)) => parts,
        Some(other) => {
            return Err(invalid_type(
                &format!("{at}.content"),
                "a string or an array",
                other,
            ));
        }
    };
    let parts = parts
        .iter()
        .enumerate()
        .map(|(i, part)| input_part(&format!("{at}.content[{i}]"), part, user))
        .collect::<Result<_, _>>()?;
    Ok(Value::Array(parts))
}

fn input_part(at: &str, part: &Value, user: bool) -> Result<Value, OpenAiError> {
    let kind = part.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => {
            Ok(json!({"type": "input_text", "text": string_field(at, part, &["text"])?}))
        }
        Some("image_url") if user => {
            let url = string_field(at, part, &["image_url", "url"])?;
            let detail = part
                .pointer("/image_url/detail")
                .and_then(Value::as_str)
                .unwrap_or("auto");
            Ok(json!({"type": "input_image", "image_url": url, "detail": detail}))
        }
        Some("file") if user => {
            let Some(file) = part.get("file").and_then(Value::as_object) else {
                return Err(missing(&format!("{at}.file")));
            };
            let mut item = json!({"type": "input_file"});
            if let Some(map) = item.as_object_mut() {
                map.extend(file.clone());
            }
            Ok(item)
        }
        Some("input_audio") if user => Ok(part.clone()),
        _ if user => Err(part_type_error(
            at,
            part,
            "'text', 'image_url', 'input_audio' and 'file'",
        )),
        _ => Err(part_type_error(at, part, "'text'")),
    }
}

fn part_type_error(at: &str, part: &Value, supported: &str) -> OpenAiError {
    match part.get("type") {
        Some(Value::String(kind)) => OpenAiError::invalid_request(format!(
            "Invalid value: '{kind}'. Supported values are: {supported}."
        ))
        .with_param(format!("{at}.type"))
        .with_code("invalid_value"),
        None | Some(Value::Null) => missing(&format!("{at}.type")),
        Some(other) => invalid_type(&format!("{at}.type"), "a string", other),
    }
}

/// A tool (or legacy function) result: a string, or text parts joined into one.
fn tool_output(at: &str, message: &Map<String, Value>) -> Result<String, OpenAiError> {
    match message.get("content") {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(missing(&format!("{at}.content"))),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => string_field(&format!("{at}.content[{i}]"), part, &["text"]),
                _ => Err(part_type_error(
                    &format!("{at}.content[{i}]"),
                    part,
                    "'text'",
                )),
            })
            .collect(),
        Some(other) => Err(invalid_type(
            &format!("{at}.content"),
            "a string or an array",
            other,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::store::ContextSummary;

    fn digest(items: &[Value]) -> u64 {
        let mut summary = ContextSummary::default();
        summary.extend(items);
        summary.digest
    }

    #[test]
    fn a_chat_tool_loop_has_the_digest_of_the_same_responses_conversation() {
        let chat = items(&[
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "find it"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "lookup", "arguments": "{\"x\":1}"}},
            ]}),
            json!({"role": "tool", "tool_call_id": "call_a", "content": "A"}),
            json!({"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "B"}]}),
            json!({"role": "assistant", "content": "done"}),
        ])
        .unwrap();
        let responses = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "input_text", "text": "find it"}]}),
            json!({"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_a", "name": "lookup", "arguments": "{}"}),
            json!({"id": "fc_2", "type": "function_call", "status": "completed", "call_id": "call_b", "name": "lookup", "arguments": "{\"x\":1}"}),
            json!({"type": "function_call_output", "call_id": "call_a", "output": "A"}),
            json!({"type": "function_call_output", "call_id": "call_b", "output": "B"}),
            json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": "done", "annotations": [], "logprobs": []}]}),
        ];
        assert_eq!(digest(&chat), digest(&responses));
        assert_eq!(chat.len(), responses.len());
    }

    #[test]
    fn bad_messages_get_openais_errors() {
        let error = |messages: Value| items(messages.as_array().unwrap()).unwrap_err();
        let unknown = error(json!([{"role": "robot", "content": "hi"}]));
        assert_eq!(unknown.param.as_deref(), Some("messages[0].role"));
        assert_eq!(unknown.code.as_deref(), Some("invalid_value"));
        let no_id = error(json!([{"role": "tool", "content": "x"}]));
        assert_eq!(no_id.param.as_deref(), Some("messages[0].tool_call_id"));
        let orphan = error(
            json!([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c", "content": "x"}]),
        );
        assert!(
            orphan
                .message
                .contains("preceeding message with 'tool_calls'"),
            "{}",
            orphan.message
        );
        let unanswered = error(json!([
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "hi"},
        ]));
        assert!(
            unanswered
                .message
                .ends_with("did not have response messages: c"),
            "{}",
            unanswered.message
        );
        let part = error(json!([{"role": "user", "content": [{"type": "video"}]}]));
        assert_eq!(part.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn legacy_function_messages_pair_by_position() {
        let out = items(&[
            json!({"role": "user", "content": "go"}),
            json!({"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}}),
            json!({"role": "function", "name": "f", "content": "out"}),
        ])
        .unwrap();
        assert_eq!(out[1]["call_id"], "call_legacy_0");
        assert_eq!(out[2]["call_id"], "call_legacy_0");
        assert_eq!(out[2]["output"], "out");
    }
}
