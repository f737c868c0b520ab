//! Chat Completions helpers: requests, strict parsing of data-only chunk streams, the usual
//! full-history chat tool loop (against any base URL: the proxy, or any chat endpoint), and
//! upstreams for the cases the simulator does not produce.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{KEY, Reply, request};

/// `POST {base}/chat/completions` with [`KEY`].
pub async fn chat(base_url: &str, body: &Value) -> Reply {
    request(
        "POST",
        &format!("{base_url}/chat/completions"),
        Some(KEY),
        Some(body.to_string()),
    )
    .await
}

/// A streamed chat body: its chunks, and whether it ended with `data: [DONE]`. Asserts
/// OpenAI's framing: data-only events (comments such as keep-alives skipped), one JSON line
/// each, `[DONE]` only last, and the same `object`, `id`, `created` and `model` on every chunk
/// but an error.
pub fn sse_chunks(body: &str) -> (Vec<Value>, bool) {
    assert!(body.ends_with("\n\n"), "ends with a blank line: {body:?}");
    let mut out: Vec<Value> = Vec::new();
    let mut done = false;
    for block in body
        .split("\n\n")
        .filter(|b| !b.is_empty() && !b.starts_with(':'))
    {
        assert!(!done, "nothing after [DONE]: {body}");
        let data = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("data-only SSE: {block:?}"));
        assert!(!data.contains('\n'), "one line per event: {block:?}");
        if data == "[DONE]" {
            done = true;
        } else {
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    let stamped: Vec<&Value> = out.iter().filter(|c| c.get("error").is_none()).collect();
    if let Some(first) = stamped.first() {
        for chunk in &stamped {
            assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
            for key in ["id", "created", "model"] {
                assert_eq!(chunk[key], first[key], "{key} differs between chunks");
            }
        }
    }
    (out, done)
}

pub fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

pub fn hi(stream: bool) -> Value {
    json!({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

/// The text of a stream's content deltas.
pub fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

pub fn finish_reason(chunks: &[Value]) -> Vec<&str> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect()
}

/// Scripted events of one response with `n` function calls one after another (parallel calls).
pub fn parallel_calls(id: &str, n: usize) -> Vec<String> {
    let call = |i: usize, status: &str, arguments: &str| {
        json!({"id": format!("fc_{i}"), "type": "function_call", "status": status,
               "arguments": arguments, "call_id": format!("call_{i}"), "name": format!("tool_{i}")})
    };
    let response = |status: &str, output: Value| {
        json!({"id": id, "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": "gpt-sim", "output": output,
        "usage": {"input_tokens": 9, "output_tokens": 6, "total_tokens": 15}})
    };
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", json!([]))}),
        json!({"type": "response.in_progress", "response": response("in_progress", json!([]))}),
    ];
    for i in 0..n {
        events.push(json!({"type": "response.output_item.added", "output_index": i, "item": call(i, "in_progress", "")}));
        for part in ["{\"n\":", &i.to_string(), "}"] {
            events.push(json!({"type": "response.function_call_arguments.delta", "item_id": format!("fc_{i}"), "output_index": i, "delta": part}));
        }
        events.push(json!({"type": "response.output_item.done", "output_index": i, "item": call(i, "completed", &format!("{{\"n\":{i}}}"))}));
    }
    let output: Vec<Value> = (0..n)
        .map(|i| call(i, "completed", &format!("{{\"n\":{i}}}")))
        .collect();
    events.push(
        json!({"type": "response.completed", "response": response("completed", json!(output))}),
    );
    events
        .into_iter()
        .enumerate()
        .map(|(seq, mut event)| {
            event["sequence_number"] = json!(seq);
            event.to_string()
        })
        .collect()
}

pub fn lookup_chat_tool() -> Value {
    json!([{"type": "function", "function": {"name": "lookup", "description": "Look it up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

/// A chat upstream that records every request (method, path, body bytes) and answers 200.
pub async fn recording_upstream() -> (String, Arc<Mutex<Vec<(String, String, Vec<u8>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let record = record.clone();
        async move {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                .await
                .unwrap();
            record.lock().unwrap().push((method, path, body.to_vec()));
            (
                [("content-type", "application/json")],
                r#"{"object":"chat.completion","choices":[]}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

/// What one chat tool loop saw.
#[derive(Debug)]
pub struct Run {
    pub answer: String,
    pub routes: Vec<String>,
    pub calls: usize,
}

/// The usual chat agent loop: the whole `messages` history every turn (assistant message as
/// answered, then one `tool` message per call), until the model answers.
pub async fn chat_loop(base_url: &str, calls: u32, stream: bool) -> Run {
    chat_loop_with(base_url, calls, stream, |_| {}).await
}

/// [`chat_loop`], with `echo` rewriting each assistant message before the client appends it
/// (the way a framework rebuilds it from its own types).
pub async fn chat_loop_with(
    base_url: &str,
    calls: u32,
    stream: bool,
    echo: impl Fn(&mut Value),
) -> Run {
    let mut messages = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "What is the answer?"}),
    ];
    let mut routes = Vec::new();
    let mut seen = 0;
    loop {
        let body = json!({"model": "gpt-test", "messages": messages, "tools": lookup_chat_tool(), "stream": stream,
                          "metadata": {"sim_tool_calls": calls.to_string()}});
        let reply = chat(base_url, &body).await;
        assert_eq!(
            reply.status,
            200,
            "turn {}: {}",
            routes.len() + 1,
            reply.body
        );
        routes.push(header(&reply, "x-wsbridge-continuation").to_owned());
        let message = if stream {
            assemble(&reply.body)
        } else {
            reply.json()["choices"][0]["message"].clone()
        };
        let tool_calls = message["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut echoed = message.clone();
        echo(&mut echoed);
        messages.push(echoed);
        if tool_calls.is_empty() {
            return Run {
                answer: message["content"].as_str().unwrap().to_owned(),
                routes,
                calls: seen,
            };
        }
        for call in tool_calls {
            seen += 1;
            messages.push(json!({"role": "tool", "tool_call_id": call["id"],
                                 "content": format!("result {seen} for {}", call["id"].as_str().unwrap())}));
        }
    }
}

/// The assistant message a client builds from a stream's chunks.
pub fn assemble(body: &str) -> Value {
    let (chunks_, done) = sse_chunks(body);
    assert!(done);
    let mut calls: Vec<Value> = Vec::new();
    for chunk in &chunks_ {
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                calls.push(json!({"id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}));
            }
            let arguments = calls[index]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned()
                + call["function"]["arguments"].as_str().unwrap_or("");
            calls[index]["function"]["arguments"] = json!(arguments);
        }
    }
    let text = content(&chunks_);
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    message
}
