//! Request checks shared by the Responses transports (and the chat endpoint's translated
//! requests): input items, server-side item references, and the wording of OpenAI's
//! parameter errors.

use axum::http::StatusCode;
use serde_json::Value;

use super::Shared;
use super::store::Stored;
use crate::protocol::OpenAiError;
use crate::protocol::items::{self, ItemKind};

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

pub(super) fn validate_item(index: usize, item: &Value) -> Result<(), OpenAiError> {
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
pub(super) fn check_item_references(
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

pub(super) fn missing(param: &str) -> OpenAiError {
    OpenAiError::invalid_request(format!("Missing required parameter: '{param}'."))
        .with_param(param)
        .with_code("missing_required_parameter")
}

pub(super) fn invalid_type(param: &str, expected: &str, got: &Value) -> OpenAiError {
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
