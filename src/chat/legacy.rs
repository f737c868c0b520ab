//! The legacy function-calling form of Chat Completions (`functions`, `function_call`, the
//! `function` role, `message.function_call`), onto the same Responses function tools
//! (docs/architecture.md, "Chat Completions").
//!
//! A legacy call has no id, so the translation names the k-th call of a conversation
//! `call_legacy_k` and the `function` message after it answers it. Those names are not the
//! upstream's own call ids, so a legacy conversation never continues a turn: it is sent in full
//! every turn, which is correct, only slower.

use serde_json::{Map, Value, json};

use super::request::{Verdict, bad, expect_array, expect_str};
use crate::outcome::ChatPassthrough as Unsupported;
use crate::protocol::OpenAiError;

/// The id of the `k`-th legacy call of a conversation (from 0).
fn call_id(k: usize) -> String {
    format!("call_legacy_{k}")
}

/// `message.function_call` (`{name, arguments}`) as the conversation's `k`-th function call.
pub fn call_item(call: &Value, at: &str, k: usize) -> Result<Value, OpenAiError> {
    let name = expect_str(
        call.get("name").unwrap_or(&Value::Null),
        &format!("{at}.name"),
    )?;
    let arguments = expect_str(
        call.get("arguments").unwrap_or(&Value::Null),
        &format!("{at}.arguments"),
    )?;
    Ok(
        json!({"type": "function_call", "call_id": call_id(k), "name": name, "arguments": arguments}),
    )
}

/// A `function` message, answering the latest legacy call (`calls` made so far); with none
/// before it there is nothing to answer in Responses terms, so the request passes through.
pub fn output_item(output: String, calls: usize) -> Verdict<Value> {
    match calls.checked_sub(1) {
        Some(k) => Verdict::Bridge(
            json!({"type": "function_call_output", "call_id": call_id(k), "output": output}),
        ),
        None => Verdict::Passthrough(Unsupported::LegacyFunctions),
    }
}

/// `functions` and `function_call` as Responses `tools` and `tool_choice` (one call per turn,
/// as legacy function calling makes).
pub fn tools(request: &Map<String, Value>) -> Result<Verdict<Vec<(String, Value)>>, OpenAiError> {
    let present = |key: &str| request.get(key).filter(|value| !value.is_null());
    if present("tools").is_some() || present("tool_choice").is_some() {
        // Both forms at once: the upstream decides what that means.
        return Ok(Verdict::Passthrough(Unsupported::LegacyFunctions));
    }
    let mut out = Vec::new();
    if let Some(functions) = present("functions") {
        let functions = expect_array(functions, "functions")?;
        let mut tools = Vec::with_capacity(functions.len());
        for (index, function) in functions.iter().enumerate() {
            let at = format!("functions[{index}]");
            let Some(function) = function.as_object() else {
                return Err(bad(
                    format!("Invalid type for '{at}': expected an object."),
                    &at,
                ));
            };
            let name = expect_str(
                function.get("name").unwrap_or(&Value::Null),
                &format!("{at}.name"),
            )?;
            tools.push(super::request::function_tool(name, function, false));
        }
        out.push(("tools".to_owned(), Value::Array(tools)));
    }
    match present("function_call") {
        None => {}
        Some(Value::String(choice)) if choice == "none" || choice == "auto" => {
            out.push(("tool_choice".into(), Value::from(choice.as_str())));
        }
        Some(choice) => match choice.get("name").and_then(Value::as_str) {
            Some(name) => out.push((
                "tool_choice".into(),
                json!({"type": "function", "name": name}),
            )),
            None => {
                return Err(bad(
                    "Invalid value for 'function_call': expected 'none', 'auto' or {\"name\": …}."
                        .into(),
                    "function_call",
                )
                .with_code("invalid_value"));
            }
        },
    }
    out.push(("parallel_tool_calls".into(), Value::Bool(false)));
    Ok(Verdict::Bridge(out))
}

/// True when a request uses the legacy form (its answers then carry `function_call`).
pub fn is_legacy(request: &Map<String, Value>) -> bool {
    ["functions", "function_call"]
        .iter()
        .any(|key| request.get(*key).is_some_and(|value| !value.is_null()))
}
