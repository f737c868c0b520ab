//! The Chat Completions counterpart of `agent_loop`: the loop chat clients (the SDKs' tool
//! helpers, LangChain, the AI SDK) run, resending the whole `messages` array every turn.

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{HttpClient, post_to};

/// The usual chat tool loop against `base` on `client` (its kept-alive connection): the whole
/// `messages` history every turn (the assistant message as answered, nulls dropped as the SDKs
/// do, then one `tool` message of about 1 KiB per call) until the model answers; returns the
/// answer. Panics on anything but a 200.
pub async fn chat_loop(
    client: &HttpClient,
    base: &str,
    key: &str,
    calls: u32,
    seed: usize,
) -> String {
    let tools = json!([{"type": "function", "function": {
        "name": "lookup", "description": "Look it up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let mut messages = vec![
        json!({"role": "system", "content": "You are a research agent. Use the lookup tool."}),
        json!({"role": "user", "content": format!("Loop {seed}: find the answer.")}),
    ];
    loop {
        let body = json!({"model": "gpt-bench", "messages": messages, "tools": tools,
                          "metadata": {"sim_tool_calls": calls.to_string()}});
        let response = client
            .request(post_to(base, "/chat/completions", key, &body))
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let completion: Value = serde_json::from_slice(&bytes).unwrap();
        let message = &completion["choices"][0]["message"];
        let Some(tool_calls) = message["tool_calls"].as_array().filter(|c| !c.is_empty()) else {
            return message["content"].as_str().unwrap_or_default().to_owned();
        };
        let mut assistant = json!({"role": "assistant", "tool_calls": tool_calls});
        if let Some(text) = message["content"].as_str() {
            assistant["content"] = text.into();
        }
        messages.push(assistant);
        for call in tool_calls {
            // About 1 KiB of tool output, as in the simulator's calibration loop.
            let id = call["id"].as_str().unwrap_or_default();
            let content = format!("result for {id}: {}", "data ".repeat(200));
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
    }
}
