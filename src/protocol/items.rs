//! The canonical form of a conversation item: what "the same item" means when a client sends
//! back, in whatever shape its SDK produced, an item the API returned (docs/architecture.md, "Continuations").
//!
//! [`write_canonical`] writes a self-delimiting byte encoding that is equal for equal items, so
//! callers hash it with whatever hasher they need (the simulator a fixed one, the continuation
//! index a keyed one). Rules:
//! - message: role + content parts; a string `content` equals one text part; `input_text` and
//!   `output_text` parts compare by text, and adjacent text parts by their joined text (a Chat
//!   Completions client gets one string for a message the upstream wrote in several parts);
//!   `id`, `status`, `annotations`, `logprobs`, `phase` and an absent `type` are ignored;
//! - `function_call`: `call_id`, `name`, `arguments`, the arguments as the JSON they hold when
//!   they parse (a client that parsed and re-serialised them, as LangChain does with
//!   `{"a": 1}` for the model's `{"a":1}`, sends the same call); `function_call_output`:
//!   `call_id`, `output`;
//! - `reasoning`: `id`, else `encrypted_content`;
//! - anything else: its JSON without `id`/`status`, keys sorted.

use serde_json::{Map, Value};

/// The class of an item, as far as matching cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Message,
    FunctionCall,
    FunctionCallOutput,
    Reasoning,
    Other,
}

/// The kind of `item` (`type` absent with a `role` means a message).
pub fn kind(item: &Value) -> ItemKind {
    match item.get("type").and_then(Value::as_str) {
        Some("message") => ItemKind::Message,
        None if item.get("role").is_some() => ItemKind::Message,
        Some("function_call") => ItemKind::FunctionCall,
        Some("function_call_output") => ItemKind::FunctionCallOutput,
        Some("reasoning") => ItemKind::Reasoning,
        _ => ItemKind::Other,
    }
}

/// Appends the canonical encoding of `item` to `out` and returns its kind.
pub fn write_canonical(item: &Value, out: &mut Vec<u8>) -> ItemKind {
    let kind = kind(item);
    let field = |key: &str| item.get(key).unwrap_or(&Value::Null);
    match kind {
        ItemKind::Message => {
            out.push(b'm');
            write_str(out, field("role").as_str().unwrap_or(""));
            match field("content") {
                Value::String(text) => write_text_part(out, text),
                Value::Array(parts) => write_parts(out, parts),
                other => write_sorted_json(out, other),
            }
            out.push(b'.');
        }
        ItemKind::FunctionCall => {
            out.push(b'f');
            for key in ["call_id", "name"] {
                write_value(out, field(key));
            }
            write_arguments(out, field("arguments"));
        }
        ItemKind::FunctionCallOutput => {
            out.push(b'o');
            for key in ["call_id", "output"] {
                write_value(out, field(key));
            }
        }
        ItemKind::Reasoning => {
            out.push(b'r');
            match item.get("id") {
                Some(id) => write_value(out, id),
                None => write_value(out, field("encrypted_content")),
            }
        }
        ItemKind::Other => {
            out.push(b'x');
            write_sorted_json_without(out, item, &["id", "status"]);
        }
    }
    kind
}

/// The text of a message item (string content or its text parts joined), if it is a message.
pub fn message_text(item: &Value) -> Option<String> {
    if kind(item) != ItemKind::Message {
        return None;
    }
    Some(match item.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    })
}

/// Function call arguments: the JSON they hold (keys sorted), else the value as it is.
fn write_arguments(out: &mut Vec<u8>, arguments: &Value) {
    if let Some(text) = arguments.as_str()
        && let Ok(parsed) = serde_json::from_str::<Value>(text)
    {
        out.push(b'J');
        write_sorted_json(out, &parsed);
        return;
    }
    write_value(out, arguments);
}

/// The text of a text part (`input_text`, `output_text`, `text`), `None` for other parts.
fn part_text(part: &Value) -> Option<&str> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Some(part.get("text").and_then(Value::as_str).unwrap_or(""))
        }
        _ => None,
    }
}

/// Content parts, each run of adjacent text parts written as one text part.
fn write_parts(out: &mut Vec<u8>, parts: &[Value]) {
    let mut i = 0;
    while i < parts.len() {
        let Some(first) = part_text(&parts[i]) else {
            write_part(out, &parts[i]);
            i += 1;
            continue;
        };
        let run = parts[i + 1..]
            .iter()
            .take_while(|part| part_text(part).is_some())
            .count();
        if run == 0 {
            write_text_part(out, first);
        } else {
            let joined: String = parts[i..=i + run].iter().filter_map(part_text).collect();
            write_text_part(out, &joined);
        }
        i += run + 1;
    }
}

/// A part that is not text.
fn write_part(out: &mut Vec<u8>, part: &Value) {
    match part.get("type").and_then(Value::as_str) {
        Some("refusal") => {
            out.push(b'R');
            write_value(out, part.get("refusal").unwrap_or(&Value::Null));
        }
        _ => {
            out.push(b'P');
            write_sorted_json_without(out, part, &["annotations", "logprobs"]);
        }
    }
}

fn write_text_part(out: &mut Vec<u8>, text: &str) {
    out.push(b't');
    write_str(out, text);
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => {
            out.push(b's');
            write_str(out, text);
        }
        other => write_sorted_json(out, other),
    }
}

/// Length-prefixed, so no two different sequences of strings encode alike.
fn write_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn write_sorted_json_without(out: &mut Vec<u8>, value: &Value, skip: &[&str]) {
    match value {
        Value::Object(map) => write_sorted_map(out, map, skip),
        other => write_sorted_json(out, other),
    }
}

/// JSON with object keys in sorted order, whatever order they arrived in.
fn write_sorted_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_sorted_map(out, map, &[]),
        Value::Array(values) => {
            out.push(b'[');
            for value in values {
                write_sorted_json(out, value);
                out.push(b',');
            }
            out.push(b']');
        }
        Value::String(text) => {
            out.push(b's');
            write_str(out, text);
        }
        scalar => {
            out.push(b'v');
            write_str(out, &scalar.to_string());
        }
    }
}

fn write_sorted_map(out: &mut Vec<u8>, map: &Map<String, Value>, skip: &[&str]) {
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|key| !skip.contains(&key.as_str()))
        .collect();
    keys.sort_unstable();
    out.push(b'{');
    for key in keys {
        write_str(out, key);
        write_sorted_json(out, &map[key.as_str()]);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(item: Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical(&item, &mut out);
        out
    }

    #[test]
    fn string_content_equals_typed_text_parts() {
        let easy = canon(json!({"role":"user","content":"hi"}));
        assert_eq!(
            easy,
            canon(
                json!({"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]})
            )
        );
        let returned = json!({"id":"msg_1","type":"message","status":"completed","role":"assistant",
            "content":[{"type":"output_text","text":"hi","annotations":[],"logprobs":[]}]});
        assert_eq!(
            canon(returned),
            canon(json!({"role":"assistant","content":"hi"}))
        );
    }

    #[test]
    fn adjacent_text_parts_equal_their_joined_text() {
        let parts = canon(json!({"role":"assistant","content":[
            {"type":"output_text","text":"Hel"},{"type":"output_text","text":"lo"}]}));
        assert_eq!(parts, canon(json!({"role":"assistant","content":"Hello"})));
        // Not across a part of another kind.
        let split = canon(json!({"role":"assistant","content":[
            {"type":"output_text","text":"a"},{"type":"refusal","refusal":"r"},{"type":"output_text","text":"b"}]}));
        let moved = canon(json!({"role":"assistant","content":[
            {"type":"output_text","text":"ab"},{"type":"refusal","refusal":"r"}]}));
        assert_ne!(split, moved);
    }

    #[test]
    fn role_text_and_arguments_are_significant() {
        assert_ne!(
            canon(json!({"role":"user","content":"hi"})),
            canon(json!({"role":"assistant","content":"hi"}))
        );
        assert_ne!(
            canon(json!({"role":"user","content":"hi"})),
            canon(json!({"role":"user","content":"ho"}))
        );
        let call = |args: &str| {
            canon(json!({"type":"function_call","call_id":"c","name":"f","arguments":args}))
        };
        assert_ne!(call("{}"), call("{\"a\":1}"));
    }

    #[test]
    fn call_arguments_compare_as_the_json_they_hold() {
        let call = |args: &str| {
            canon(json!({"type":"function_call","call_id":"c","name":"f","arguments":args}))
        };
        assert_eq!(
            call(r#"{"q":"é","n":[1,2]}"#),
            call(r#"{"n": [1, 2], "q": "\u00e9"}"#)
        );
        assert_ne!(call(r#"{"n":1}"#), call(r#"{"n":2}"#));
        // Arguments that are not JSON compare as text, never equal to a JSON string.
        assert_eq!(call("{oops"), call("{oops"));
        assert_ne!(call("{oops"), call("{oops "));
        assert_ne!(call(r#""x""#), call("x"));
    }

    #[test]
    fn other_items_ignore_key_order_id_and_status() {
        let a = canon(
            json!({"type":"web_search_call","id":"ws_1","status":"completed","action":{"q":"x","k":1}}),
        );
        let b = canon(json!({"action":{"k":1,"q":"x"},"type":"web_search_call"}));
        assert_eq!(a, b);
    }
}
