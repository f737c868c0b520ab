//! `messages` → Responses input items (docs/architecture.md, "Chat Completions").
//!
//! One message always gives the same items, whatever came before it, so turn N+1's items start
//! with turn N's items followed by what the upstream output in turn N, written the way the
//! canonical item form ([`crate::protocol::items`]) reads the upstream's own items:
//! - assistant text → one `message` with a string `content` (equals one `output_text` part);
//!   a refusal → a `refusal` part; text parts → `output_text` parts;
//! - each `tool_calls[i]` → a `function_call` with `call_id` = the tool call's `id`;
//! - `tool` → `function_call_output`.
//!
//! An assistant message with neither text (null, `""` or no parts) nor refusal nor tool calls
//! gives no item, like an upstream turn whose output was only reasoning. Reasoning never comes back from a chat client:
//! chat plans match with reasoning left out (`Engine::chat_plan`).

use serde_json::{Map, Value, json};

use super::legacy;
use super::request::{Verdict, bad, expect_array, expect_str};
use crate::outcome::ChatPassthrough as Unsupported;
use crate::protocol::OpenAiError;

/// The input items of `messages` (already known to be a non-empty array).
pub fn items(messages: &[Value]) -> Result<Verdict<Vec<Value>>, OpenAiError> {
    let mut items = Vec::with_capacity(messages.len());
    let mut unsupported = None;
    // Legacy `function_call`s so far (see `legacy`).
    let mut legacy_calls = 0;
    for (index, message) in messages.iter().enumerate() {
        let at = format!("messages[{index}]");
        let Some(message) = message.as_object() else {
            return Err(bad(
                format!("Invalid type for '{at}': expected an object."),
                &at,
            ));
        };
        match one(message, &at, &mut items, &mut legacy_calls)? {
            Verdict::Bridge(()) => {}
            Verdict::Passthrough(why) => {
                unsupported.get_or_insert(why);
            }
        }
    }
    Ok(match unsupported {
        Some(why) => Verdict::Passthrough(why),
        None => Verdict::Bridge(items),
    })
}

/// Appends the items of one message. Shape errors are errors even when something else sends
/// the request to pass-through: the upstream would refuse it too.
fn one(
    message: &Map<String, Value>,
    at: &str,
    items: &mut Vec<Value>,
    legacy_calls: &mut usize,
) -> Result<Verdict<()>, OpenAiError> {
    let role_at = format!("{at}.role");
    let role = match message.get("role") {
        None | Some(Value::Null) => {
            return Err(bad(
                format!("Missing required parameter: '{role_at}'."),
                &role_at,
            )
            .with_code("missing_required_parameter"));
        }
        Some(role) => expect_str(role, &role_at)?,
    };
    let name = message.get("name").is_some_and(|name| !name.is_null());
    let verdict = match role {
        "system" | "developer" => {
            let content = text_content(message, at, true)?;
            items.push(json!({"role": role, "content": content}));
            Verdict::Bridge(())
        }
        "user" => user(message, at, items)?,
        "assistant" => assistant(message, at, items, legacy_calls)?,
        "tool" => {
            let id_at = format!("{at}.tool_call_id");
            let call_id = match message.get("tool_call_id") {
                None | Some(Value::Null) => {
                    return Err(
                        bad(format!("Missing required parameter: '{id_at}'."), &id_at)
                            .with_code("missing_required_parameter"),
                    );
                }
                Some(id) => expect_str(id, &id_at)?,
            };
            let output = text_content(message, at, true)?;
            items.push(
                json!({"type": "function_call_output", "call_id": call_id, "output": output}),
            );
            Verdict::Bridge(())
        }
        // The legacy `function` role: its `name` is the function's, not a participant's.
        "function" => {
            let output = text_content(message, at, true)?;
            return Ok(match legacy::output_item(output, *legacy_calls) {
                Verdict::Bridge(item) => {
                    items.push(item);
                    Verdict::Bridge(())
                }
                Verdict::Passthrough(why) => Verdict::Passthrough(why),
            });
        }
        other => {
            return Err(bad(
                format!(
                    "Invalid value: '{other}'. Supported values are: 'system', 'developer', \
                     'user', 'assistant', 'tool', and 'function'."
                ),
                &role_at,
            )
            .with_code("invalid_value"));
        }
    };
    // A participant `name` has no Responses equivalent, nor has a key this role does not
    // know (`cache_control`, `reasoning_content`, anything new): dropping it would change the
    // request, so it goes to the upstream's chat endpoint as sent.
    Ok(match verdict {
        Verdict::Bridge(()) if name || unknown_key(message, role) => {
            Verdict::Passthrough(Unsupported::Field)
        }
        verdict => verdict,
    })
}

/// Whether `message` holds a non-null key its role does not define. An assistant message
/// resent as the API returned it keeps `annotations` (output only; nothing to send back) and
/// null `audio`/`function_call`/`tool_calls`/`refusal`, which are all known.
fn unknown_key(message: &Map<String, Value>, role: &str) -> bool {
    let known: &[&str] = match role {
        "assistant" => &[
            "role",
            "content",
            "name",
            "refusal",
            "tool_calls",
            "function_call",
            "audio",
            "annotations",
        ],
        "tool" => &["role", "content", "tool_call_id"],
        _ => &["role", "content", "name"],
    };
    let unknown =
        |(key, value): (&String, &Value)| !value.is_null() && !known.contains(&key.as_str());
    message.iter().any(unknown) || content_parts(message).any(part_has_unknown_key)
}

fn content_parts(message: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A content part holds its `type` and one key named by it (`text`, `image_url`, `file`,
/// `refusal`); anything else beside them (`cache_control`) has no Responses equivalent.
fn part_has_unknown_key(part: &Value) -> bool {
    let Some(part) = part.as_object() else {
        return false;
    };
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    part.iter()
        .any(|(key, value)| !value.is_null() && key != "type" && key != kind)
}

/// The text of a `content` that is a string or an array of text parts (system, developer,
/// tool). `required`: absent or null is an error.
fn text_content(
    message: &Map<String, Value>,
    at: &str,
    required: bool,
) -> Result<String, OpenAiError> {
    let content_at = format!("{at}.content");
    match message.get("content") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (index, part) in parts.iter().enumerate() {
                let part_at = format!("{content_at}[{index}]");
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(
                        format!(
                            "Invalid content part at '{part_at}': only 'text' parts are supported here."
                        ),
                        &part_at,
                    ));
                }
                text.push_str(expect_str(
                    part.get("text").unwrap_or(&Value::Null),
                    &format!("{part_at}.text"),
                )?);
            }
            Ok(text)
        }
        None | Some(Value::Null) if required => Err(bad(
            format!("Missing required parameter: '{content_at}'."),
            &content_at,
        )
        .with_code("missing_required_parameter")),
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => Err(invalid_content(&content_at)),
    }
}

fn invalid_content(at: &str) -> OpenAiError {
    bad(
        format!("Invalid type for '{at}': expected a string or an array of content parts."),
        at,
    )
    .with_code("invalid_type")
}

fn user(
    message: &Map<String, Value>,
    at: &str,
    items: &mut Vec<Value>,
) -> Result<Verdict<()>, OpenAiError> {
    let content_at = format!("{at}.content");
    let parts = match message.get("content") {
        Some(Value::String(text)) => {
            items.push(json!({"role": "user", "content": text}));
            return Ok(Verdict::Bridge(()));
        }
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => {
            return Err(bad(
                format!("Missing required parameter: '{content_at}'."),
                &content_at,
            )
            .with_code("missing_required_parameter"));
        }
        Some(_) => return Err(invalid_content(&content_at)),
    };
    let mut content = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let part_at = format!("{content_at}[{index}]");
        match user_part(part, &part_at)? {
            Some(part) => content.push(part),
            None => return Ok(Verdict::Passthrough(Unsupported::Content)),
        }
    }
    items.push(json!({"type": "message", "role": "user", "content": content}));
    Ok(Verdict::Bridge(()))
}

/// One user content part as a Responses input part; `None` for a kind with no equivalent
/// (`input_audio`, anything new).
fn user_part(part: &Value, at: &str) -> Result<Option<Value>, OpenAiError> {
    let Some(part) = part.as_object() else {
        return Err(bad(
            format!("Invalid type for '{at}': expected an object."),
            at,
        ));
    };
    let field = |key: &str| part.get(key).filter(|value| !value.is_null());
    Ok(match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = expect_str(field("text").unwrap_or(&Value::Null), &format!("{at}.text"))?;
            Some(json!({"type": "input_text", "text": text}))
        }
        Some("image_url") => {
            let image = field("image_url").and_then(Value::as_object);
            let url = image
                .and_then(|image| image.get("url"))
                .unwrap_or(&Value::Null);
            let url = expect_str(url, &format!("{at}.image_url.url"))?;
            let detail = image
                .and_then(|image| image.get("detail"))
                .and_then(Value::as_str)
                .unwrap_or("auto");
            Some(json!({"type": "input_image", "image_url": url, "detail": detail}))
        }
        Some("file") => {
            let Some(file) = field("file").and_then(Value::as_object) else {
                return Err(bad(
                    format!("Missing required parameter: '{at}.file'."),
                    &format!("{at}.file"),
                ));
            };
            let mut out = Map::new();
            out.insert("type".into(), Value::from("input_file"));
            for key in ["file_id", "file_data", "filename"] {
                if let Some(value) = file.get(key).filter(|value| !value.is_null()) {
                    out.insert(key.into(), value.clone());
                }
            }
            Some(Value::Object(out))
        }
        _ => None,
    })
}

fn assistant(
    message: &Map<String, Value>,
    at: &str,
    items: &mut Vec<Value>,
    legacy_calls: &mut usize,
) -> Result<Verdict<()>, OpenAiError> {
    let present = |key: &str| message.get(key).is_some_and(|value| !value.is_null());
    if present("audio") {
        return Ok(Verdict::Passthrough(Unsupported::Audio));
    }
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(calls) => expect_array(calls, &format!("{at}.tool_calls"))?,
    };
    let content_at = format!("{at}.content");
    let mut parts = Vec::new();
    let mut plain = None;
    match message.get("content") {
        None | Some(Value::Null) => {}
        // Empty text is how many clients write "no text": beside tool calls, and for a turn
        // whose answer had none (LangChain resends such a turn as `content: ""`). Like null, it
        // gives no item, as the simulator's chat endpoint reads it (docs/protocol.md).
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => plain = Some(text.clone()),
        Some(Value::Array(list)) => {
            for (index, part) in list.iter().enumerate() {
                match assistant_part(part, &format!("{content_at}[{index}]"))? {
                    Some(part) => parts.push(part),
                    None => return Ok(Verdict::Passthrough(Unsupported::Content)),
                }
            }
        }
        Some(_) => return Err(invalid_content(&content_at)),
    }
    if let Some(refusal) = message.get("refusal").filter(|value| !value.is_null()) {
        let refusal = expect_str(refusal, &format!("{at}.refusal"))?;
        if let Some(text) = plain.take() {
            parts.push(json!({"type": "output_text", "text": text, "annotations": []}));
        }
        parts.push(json!({"type": "refusal", "refusal": refusal}));
    }
    match (plain, parts.is_empty()) {
        (Some(text), _) => items.push(json!({"role": "assistant", "content": text})),
        (None, false) => {
            items.push(json!({"type": "message", "role": "assistant", "content": parts}));
        }
        (None, true) => {}
    }
    if let Some(call) = message.get("function_call").filter(|call| !call.is_null()) {
        items.push(legacy::call_item(
            call,
            &format!("{at}.function_call"),
            *legacy_calls,
        )?);
        *legacy_calls += 1;
    }
    for (index, call) in calls.iter().enumerate() {
        match tool_call(call, &format!("{at}.tool_calls[{index}]"))? {
            Some(item) => items.push(item),
            None => return Ok(Verdict::Passthrough(Unsupported::Tools)),
        }
    }
    Ok(Verdict::Bridge(()))
}

/// One assistant content part as an output part; `None` for a kind with no equivalent.
fn assistant_part(part: &Value, at: &str) -> Result<Option<Value>, OpenAiError> {
    let field = |key: &str| part.get(key).unwrap_or(&Value::Null);
    Ok(match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = expect_str(field("text"), &format!("{at}.text"))?;
            Some(json!({"type": "output_text", "text": text, "annotations": []}))
        }
        Some("refusal") => {
            let refusal = expect_str(field("refusal"), &format!("{at}.refusal"))?;
            Some(json!({"type": "refusal", "refusal": refusal}))
        }
        _ => None,
    })
}

/// One `tool_calls` entry as a `function_call` item; `None` for a kind other than `function`.
fn tool_call(call: &Value, at: &str) -> Result<Option<Value>, OpenAiError> {
    if call
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind != "function")
    {
        return Ok(None);
    }
    let id = expect_str(call.get("id").unwrap_or(&Value::Null), &format!("{at}.id"))?;
    let function = call.get("function").unwrap_or(&Value::Null);
    let name = expect_str(
        function.get("name").unwrap_or(&Value::Null),
        &format!("{at}.function.name"),
    )?;
    let arguments = expect_str(
        function.get("arguments").unwrap_or(&Value::Null),
        &format!("{at}.function.arguments"),
    )?;
    Ok(Some(
        json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments}),
    ))
}
