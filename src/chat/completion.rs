//! A finished Responses turn as Chat Completions sees it: the `finish_reason`, the `usage`, and
//! the whole `chat.completion` object of a `stream: false` request (docs/protocol.md, "Chat
//! Completions").

use serde_json::{Map, Value, json};

use crate::outcome::ChatFinish;

/// The finish of a final Response object (`response.completed` / `.incomplete`): cut short by
/// the output limit → `length`, by the content filter → `content_filter`; otherwise
/// `tool_calls` when it called a function, else `stop`.
pub fn finish(response: &Value) -> ChatFinish {
    if response["status"] == "incomplete" {
        return match response["incomplete_details"]["reason"].as_str() {
            Some("content_filter") => ChatFinish::ContentFilter,
            _ => ChatFinish::Length,
        };
    }
    let calls = response["output"]
        .as_array()
        .is_some_and(|output| output.iter().any(|item| item["type"] == "function_call"));
    if calls {
        ChatFinish::ToolCalls
    } else {
        ChatFinish::Stop
    }
}

/// [`finish`] for a request in the legacy function-calling form (`function_call`, not
/// `tool_calls`).
pub fn finish_for(response: &Value, legacy: bool) -> ChatFinish {
    match finish(response) {
        ChatFinish::ToolCalls if legacy => ChatFinish::FunctionCall,
        finish => finish,
    }
}

/// A Responses `usage` as Chat Completions reports it (`null` when there is none).
pub fn usage(usage: &Value) -> Value {
    if !usage.is_object() {
        return Value::Null;
    }
    let count = |value: &Value| value.as_u64().unwrap_or(0);
    let prompt = count(&usage["input_tokens"]);
    let completion = count(&usage["output_tokens"]);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage["total_tokens"].as_u64().unwrap_or(prompt + completion),
        "prompt_tokens_details": {
            "cached_tokens": count(&usage["input_tokens_details"]["cached_tokens"]),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": count(&usage["output_tokens_details"]["reasoning_tokens"]),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// `created` of a chat object: the response's `created_at`.
pub fn created(response: &Value) -> u64 {
    response["created_at"].as_u64().unwrap_or(0)
}

/// The `chat.completion` object for a final Response object; `id` is the `chatcmpl-…` id;
/// `legacy`: the request used `functions`, so the (one) call is `message.function_call`.
pub fn completion(id: &str, response: &Value, legacy: bool) -> Value {
    let mut text: Option<String> = None;
    let mut refusal: Option<String> = None;
    let mut annotations = Vec::new();
    let mut tool_calls = Vec::new();
    for item in response["output"].as_array().map_or(&[][..], Vec::as_slice) {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().map_or(&[][..], Vec::as_slice) {
                    match part["type"].as_str() {
                        Some("output_text") => {
                            let text = text.get_or_insert_with(String::new);
                            let offset = text.chars().count() as u64;
                            annotations.extend(
                                part["annotations"]
                                    .as_array()
                                    .map_or(&[][..], Vec::as_slice)
                                    .iter()
                                    .filter_map(|a| annotation(a, offset)),
                            );
                            text.push_str(part["text"].as_str().unwrap_or(""));
                        }
                        Some("refusal") => refusal
                            .get_or_insert_with(String::new)
                            .push_str(part["refusal"].as_str().unwrap_or("")),
                        _ => {}
                    }
                }
            }
            Some("function_call") => tool_calls.push(json!({
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            })),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::from));
    message.insert("refusal".into(), refusal.map_or(Value::Null, Value::from));
    message.insert("annotations".into(), Value::Array(annotations));
    match tool_calls.first() {
        Some(call) if legacy => {
            message.insert("function_call".into(), call["function"].clone());
        }
        Some(_) => {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        None => {}
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created(response),
        "model": response["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_for(response, legacy).reason(),
        }],
        "usage": usage(&response["usage"]),
        "service_tier": response.get("service_tier").cloned().unwrap_or(Value::Null),
        "system_fingerprint": null,
    })
}

/// A Responses `url_citation` annotation in the chat form (`{type, url_citation:{…}}`), its
/// indexes moved by `offset` when the message had earlier text parts; other kinds have no chat
/// form.
fn annotation(annotation: &Value, offset: u64) -> Option<Value> {
    if annotation["type"] != "url_citation" {
        return None;
    }
    let index = |key: &str| annotation[key].as_u64().map(|index| index + offset);
    Some(json!({
        "type": "url_citation",
        "url_citation": {
            "url": annotation["url"],
            "title": annotation["title"],
            "start_index": index("start_index"),
            "end_index": index("end_index"),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, output: Value) -> Value {
        json!({"id": "resp_1", "object": "response", "created_at": 1_700_000_000, "model": "gpt-x",
               "status": status, "output": output, "service_tier": "default",
               "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                         "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3},
                         "total_tokens": 17}})
    }

    #[test]
    fn text_tool_calls_and_usage_become_one_choice() {
        let output = json!([
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hi ", "annotations": []},
                         {"type": "output_text", "text": "there", "annotations": [
                             {"type": "url_citation", "url": "https://x", "title": "X", "start_index": 0, "end_index": 5}]}]},
            {"id": "fc_1", "type": "function_call", "call_id": "call_a", "name": "f", "arguments": "{}"},
            {"id": "fc_2", "type": "function_call", "call_id": "call_b", "name": "g", "arguments": "{\"x\":1}"},
        ]);
        let chat = completion("chatcmpl-1", &response("completed", output.clone()), false);
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(chat["created"], 1_700_000_000);
        let choice = &chat["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Hi there");
        assert_eq!(choice["message"]["refusal"], Value::Null);
        assert_eq!(
            choice["message"]["annotations"][0]["url_citation"]["start_index"],
            3
        );
        assert_eq!(choice["message"]["tool_calls"][1]["id"], "call_b");
        assert_eq!(
            choice["message"]["tool_calls"][1]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(chat["usage"]["prompt_tokens"], 10);
        assert_eq!(chat["usage"]["completion_tokens"], 7);
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            chat["usage"]["completion_tokens_details"]["reasoning_tokens"],
            3
        );
        let legacy = completion("chatcmpl-1", &response("completed", output), true);
        let message = &legacy["choices"][0]["message"];
        assert_eq!(
            message["function_call"],
            json!({"name": "f", "arguments": "{}"})
        );
        assert!(message.get("tool_calls").is_none());
        assert_eq!(legacy["choices"][0]["finish_reason"], "function_call");
    }

    #[test]
    fn finish_reasons() {
        let text = json!([{"type": "message", "content": [{"type": "output_text", "text": "x"}]}]);
        assert_eq!(
            finish(&response("completed", text.clone())),
            ChatFinish::Stop
        );
        let mut cut = response("incomplete", text.clone());
        cut["incomplete_details"] = json!({"reason": "max_output_tokens"});
        assert_eq!(finish(&cut), ChatFinish::Length);
        cut["incomplete_details"] = json!({"reason": "content_filter"});
        assert_eq!(finish(&cut), ChatFinish::ContentFilter);
        let refusal =
            json!([{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}]);
        let chat = completion("c", &response("completed", refusal), false);
        assert_eq!(chat["choices"][0]["message"]["refusal"], "No.");
        assert_eq!(chat["choices"][0]["message"]["content"], Value::Null);
        assert!(chat["choices"][0]["message"].get("tool_calls").is_none());
    }
}
