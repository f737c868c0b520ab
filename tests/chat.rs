//! `POST /v1/chat/completions` through the proxy: what a Chat Completions client sees (chunk
//! and completion shapes, tool call indexes, finish reasons, usage, errors before and after
//! the first chunk), what the upstream receives (continued turns with only the new items,
//! nothing for a bad request, the original bytes on the pass-through path).
//!
//! The loops take a base URL, so the same loop can run straight against any chat endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use wsbridge::config::{ChatMode, SimulatorConfig};
use wsbridge::simulator::stats::Transport;

/// `POST {base}/chat/completions` with [`KEY`].
async fn chat(base_url: &str, body: &Value) -> Reply {
    request(
        "POST",
        &format!("{base_url}/chat/completions"),
        Some(KEY),
        Some(body.to_string()),
    )
    .await
}

/// A streamed chat body: its chunks, and whether it ended with `data: [DONE]`. Asserts the
/// framing: data-only events, one JSON line each, `[DONE]` only last.
fn sse_chunks(body: &str) -> (Vec<Value>, bool) {
    assert!(body.ends_with("\n\n"), "ends with a blank line: {body:?}");
    let mut out = Vec::new();
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
    (out, done)
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

fn hi(stream: bool) -> Value {
    json!({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

/// The text of a stream's content deltas.
fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reason(chunks: &[Value]) -> Vec<&str> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect()
}

#[tokio::test]
async fn a_stream_is_chunks_with_one_id_a_role_delta_a_finish_a_usage_chunk_and_done() {
    let bridge = bridge().await;
    let mut body = hi(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = chat(&bridge.url(), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        header(&reply, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
    assert_eq!(header(&reply, "x-wsbridge-continuation"), "fresh");
    let (chunks, done) = sse_chunks(&reply.body);
    assert!(done, "{}", reply.body);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert!(chunk["created"].as_u64().unwrap() > 1_600_000_000);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(
        content(&chunks).starts_with("You said: hello there."),
        "{}",
        content(&chunks)
    );
    assert_eq!(finish_reason(&chunks), ["stop"]);
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let tokens = &usage["usage"];
    assert!(tokens["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        tokens["total_tokens"].as_u64().unwrap(),
        tokens["prompt_tokens"].as_u64().unwrap() + tokens["completion_tokens"].as_u64().unwrap()
    );
    assert!(tokens["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(tokens["completion_tokens_details"]["reasoning_tokens"].is_u64());
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );

    // Without include_usage: no usage chunk, no usage field.
    let (plain, done) = sse_chunks(&chat(&bridge.url(), &hi(true)).await.body);
    assert!(done);
    assert!(
        plain
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
    assert_eq!(
        bridge
            .metric("wsbridge_chat_finishes_total{finish=\"stop\"}")
            .await,
        2.0
    );
    assert_eq!(
        bridge
            .metric("wsbridge_chat_requests_total{route=\"bridged\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_non_stream_answer_is_one_chat_completion_with_the_streams_text() {
    let bridge = bridge().await;
    let reply = chat(&bridge.url(), &hi(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
    let completion = reply.json();
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["message"]["annotations"], json!([]));
    assert!(choice["message"].get("tool_calls").is_none());
    let (streamed, _) = sse_chunks(&chat(&bridge.url(), &hi(true)).await.body);
    assert_eq!(choice["message"]["content"], content(&streamed).as_str());
    let usage = &completion["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens_details"]["reasoning_tokens"].is_u64());
}

#[tokio::test]
async fn max_tokens_reached_is_length_with_usage_and_a_refusal_is_a_refusal() {
    let bridge = bridge().await;
    let mut body = hi(true);
    body["max_tokens"] = json!(3);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks_, done) = sse_chunks(&chat(&bridge.url(), &body).await.body);
    assert!(done);
    assert_eq!(finish_reason(&chunks_), ["length"]);
    assert_eq!(chunks_.last().unwrap()["usage"]["completion_tokens"], 3);
    body["stream"] = json!(false);
    let completion = chat(&bridge.url(), &body).await.json();
    assert_eq!(completion["choices"][0]["finish_reason"], "length");

    let mut refuse = hi(false);
    refuse["metadata"] = json!({"sim_refuse": "true"});
    let completion = chat(&bridge.url(), &refuse).await.json();
    let message = &completion["choices"][0]["message"];
    assert!(
        message["refusal"]
            .as_str()
            .unwrap()
            .starts_with("I'm sorry"),
        "{message}"
    );
    assert_eq!(message["content"], Value::Null);
    refuse["stream"] = json!(true);
    let (chunks_, _) = sse_chunks(&chat(&bridge.url(), &refuse).await.body);
    let refusal: String = chunks_
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["refusal"].as_str())
        .collect();
    assert_eq!(refusal, message["refusal"].as_str().unwrap());
}

/// Scripted events of one response with `n` function calls one after another (parallel calls).
fn parallel_calls(id: &str, n: usize) -> Vec<String> {
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

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "lookup", "description": "Look it up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

#[tokio::test]
async fn parallel_tool_calls_get_indexes_0_1_2_and_finish_with_tool_calls() {
    let upstream = scripted(|_, _| parallel_calls("resp_p", 3)).await;
    let proxy = proxy_for(&upstream, |_| {}).await;
    let mut body = hi(true);
    body["tools"] = tools();
    let (chunks_, done) = sse_chunks(&chat(&proxy.base_url(), &body).await.body);
    assert!(done);
    let calls: Vec<&Value> = chunks_
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    let headers: Vec<(u64, &str, &str)> = calls
        .iter()
        .filter(|c| c.get("id").is_some())
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["id"].as_str().unwrap(),
                c["function"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        headers,
        [
            (0, "call_0", "tool_0"),
            (1, "call_1", "tool_1"),
            (2, "call_2", "tool_2")
        ]
    );
    for index in 0..3u64 {
        let arguments: String = calls
            .iter()
            .filter(|c| c["index"] == index)
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, format!("{{\"n\":{index}}}"));
    }
    assert_eq!(finish_reason(&chunks_), ["tool_calls"]);
    // The tools went upstream flat, not strict unless the client said so.
    let frame = &upstream.frames()[0];
    assert_eq!(frame["tools"][0]["name"], "lookup");
    assert_eq!(frame["tools"][0]["strict"], false);
    assert_eq!(frame["store"], false);

    body["stream"] = json!(false);
    let completion = chat(&proxy.base_url(), &body).await.json();
    let tool_calls = completion["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(tool_calls.len(), 3);
    assert_eq!(
        tool_calls[2],
        json!({"id": "call_2", "type": "function", "function": {"name": "tool_2", "arguments": "{\"n\":2}"}})
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(completion["usage"]["total_tokens"], 15);
}

#[tokio::test]
async fn a_content_filter_cut_finishes_with_content_filter() {
    let upstream = scripted(|_, _| {
        let mut frames = answer("resp_f", "partial");
        let mut last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
        last["type"] = json!("response.incomplete");
        last["response"]["status"] = json!("incomplete");
        last["response"]["incomplete_details"] = json!({"reason": "content_filter"});
        *frames.last_mut().unwrap() = last.to_string();
        frames
    })
    .await;
    let proxy = proxy_for(&upstream, |_| {}).await;
    let (chunks_, done) = sse_chunks(&chat(&proxy.base_url(), &hi(true)).await.body);
    assert!(done);
    assert_eq!(content(&chunks_), "partial");
    assert_eq!(finish_reason(&chunks_), ["content_filter"]);
}

#[tokio::test]
async fn an_upstream_error_before_the_first_chunk_is_a_real_status_with_openais_body() {
    let bridge = bridge().await;
    for stream in [true, false] {
        let mut body = hi(stream);
        body["metadata"] = json!({"sim_fault": "error:429:rate_limit_exceeded"});
        let reply = chat(&bridge.url(), &body).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert_eq!(header(&reply, "content-type"), "application/json");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "rate_limit_exceeded");
        for key in ["message", "type", "param"] {
            assert!(error.get(key).is_some(), "{key}: {error}");
        }
    }
    assert_eq!(
        bridge
            .metric("wsbridge_chat_finishes_total{finish=\"failed\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_failure_after_the_first_chunk_is_an_error_chunk_and_no_done() {
    let bridge = bridge().await;
    for (fault, code) in [
        ("close_mid_stream", "server_error"),
        ("response_failed", "server_error"),
        ("stream_error:server_error", "server_error"),
    ] {
        let mut body = hi(true);
        body["metadata"] = json!({"sim_fault": fault});
        let reply = chat(&bridge.url(), &body).await;
        assert_eq!(reply.status, 200, "{fault}: {}", reply.body);
        let (chunks_, done) = sse_chunks(&reply.body);
        assert!(!done, "{fault}: no [DONE] after an error: {}", reply.body);
        assert_eq!(chunks_[0]["choices"][0]["delta"]["role"], "assistant");
        let error = &chunks_.last().unwrap()["error"];
        assert_eq!(error["code"], code, "{fault}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(finish_reason(&chunks_).is_empty(), "{fault}");
    }
    // Not streamed: a 5xx with the error body.
    let mut body = hi(false);
    body["metadata"] = json!({"sim_fault": "response_failed"});
    let reply = chat(&bridge.url(), &body).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "server_error");
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_field_and_send_nothing_upstream() {
    let bridge = bridge().await;
    let user = json!({"role": "user", "content": "x"});
    let cases = [
        ("{not json".to_owned(), None),
        ("[1]".to_owned(), None),
        (json!({"model": "m"}).to_string(), Some("messages")),
        (
            json!({"model": "m", "messages": "hi"}).to_string(),
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": []}).to_string(),
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}).to_string(),
            Some("messages[0].role"),
        ),
        (
            json!({"model": "m", "messages": [user, {"role": "tool", "content": "42"}]})
                .to_string(),
            Some("messages[1].tool_call_id"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": {"text": "x"}}]})
                .to_string(),
            Some("messages[0].content"),
        ),
        (
            json!({"model": "m", "messages": [user], "stream": "yes"}).to_string(),
            Some("stream"),
        ),
        // Bad even where the rest would pass through: nothing goes upstream either.
        (
            json!({"model": "m", "n": 2, "messages": [{"role": "robot", "content": "x"}]})
                .to_string(),
            Some("messages[0].role"),
        ),
    ];
    for (body, param) in cases {
        let reply = request(
            "POST",
            &format!("{}/chat/completions", bridge.url()),
            Some(KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
        assert!(reply.headers.get("x-wsbridge-route").is_none());
    }
    let stats = bridge.sim.stats();
    assert_eq!(stats.turns_total, 0);
    assert_eq!(stats.sockets_opened, 0);
    assert_eq!(
        bridge
            .metric("wsbridge_requests_total{route=\"chat\",status=\"400\"}")
            .await,
        10.0
    );
}

/// A chat upstream that records every request (method, path, body bytes) and answers 200.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<(String, String, Vec<u8>)>>>) {
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

#[tokio::test]
async fn fields_without_a_faithful_equivalent_reach_the_chat_endpoint_byte_for_byte() {
    let (base_url, seen) = recording_upstream().await;
    let proxy = wsbridge::Proxy::start({
        let mut config = wsbridge::config::Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.upstream.base_url = base_url;
        config.pool.min_idle = 0;
        config
    })
    .await
    .unwrap();
    let bodies = [
        // Odd spacing and key order: the bytes, not a re-serialisation, must arrive.
        r#"{"model":"m",  "n":2,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"model":"m","logit_bias":{"50256":-100}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"x_brand_new":{"a":[1,2]}}"#,
    ];
    for body in bodies {
        let reply = request(
            "POST",
            &format!("{}/chat/completions", proxy.base_url()),
            Some(KEY),
            Some(body.to_owned()),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply, "x-wsbridge-route"), "chat-passthrough");
        let (method, path, received) = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(String::from_utf8(received).unwrap(), body);
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
    let metrics = request(
        "GET",
        &format!("http://{}/metrics", proxy.addr()),
        None,
        None,
    )
    .await
    .body;
    assert_eq!(
        metric(
            &metrics,
            "wsbridge_chat_passthroughs_total{reason=\"choices\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "wsbridge_chat_passthroughs_total{reason=\"logit_bias\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "wsbridge_chat_passthroughs_total{reason=\"field\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn passthrough_mode_and_an_oversized_frame_pass_plain_requests_through() {
    let (base_url, seen) = recording_upstream().await;
    for (mode, max_frame_bytes, reason) in [
        (ChatMode::Passthrough, 1 << 20, "mode"),
        (ChatMode::Bridge, 16, "fallback"),
    ] {
        let proxy = wsbridge::Proxy::start({
            let mut config = wsbridge::config::Config::default();
            config.server.listen = "127.0.0.1:0".parse().unwrap();
            config.upstream.base_url = base_url.clone();
            config.pool.min_idle = 0;
            config.chat.mode = mode;
            config.upstream.max_frame_bytes = max_frame_bytes;
            config
        })
        .await
        .unwrap();
        let body = hi(false).to_string();
        let reply = request(
            "POST",
            &format!("{}/chat/completions", proxy.base_url()),
            Some(KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            header(&reply, "x-wsbridge-route"),
            "chat-passthrough",
            "{reason}"
        );
        assert_eq!(seen.lock().unwrap().last().unwrap().2, body.as_bytes());
        assert_eq!(
            proxy_metric(
                &proxy,
                &format!("wsbridge_chat_passthroughs_total{{reason=\"{reason}\"}}")
            )
            .await,
            1.0
        );
        proxy.shutdown().await;
    }
}

/// What one chat tool loop saw.
#[derive(Debug)]
struct Run {
    answer: String,
    routes: Vec<String>,
    calls: usize,
}

/// The usual chat agent loop: the whole `messages` history every turn (assistant message as
/// answered, then one `tool` message per call), until the model answers.
async fn chat_loop(base_url: &str, calls: u32, stream: bool) -> Run {
    let mut messages = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "What is the answer?"}),
    ];
    let mut routes = Vec::new();
    let mut seen = 0;
    loop {
        let body = json!({"model": "gpt-test", "messages": messages, "tools": tools(), "stream": stream,
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
        messages.push(message.clone());
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
fn assemble(body: &str) -> Value {
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

#[tokio::test]
async fn a_20_call_chat_loop_resending_everything_sends_only_new_messages_upstream() {
    let bridge = bridge().await;
    let through = chat_loop(&bridge.url(), 20, true).await;
    assert_eq!(through.calls, 20);
    assert_eq!(through.routes.len(), 21);
    assert_eq!(through.routes[0], "fresh");
    assert!(
        through.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        through.routes
    );
    let stats = bridge.sim.stats();
    let turns: Vec<_> = stats
        .turns
        .iter()
        .filter(|t| t.transport == Transport::Ws)
        .collect();
    assert_eq!(turns.len(), 21);
    assert_eq!(turns[0].input_items, 2);
    for (turn, previous) in turns[1..].iter().zip(&turns) {
        assert!(turn.continued, "{turn:?}");
        assert_eq!(turn.previous_response_id, previous.response_id);
        assert_eq!(turn.input_items, 1, "only the tool message: {turn:?}");
    }
    assert_eq!(stats.sockets_for(KEY).len(), 1, "one upstream socket");

    // The same loop resent in full every turn (continuations off) gets the same answer.
    let full = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.enabled = false
    })
    .await;
    let resent = chat_loop(&full.url(), 20, false).await;
    assert_eq!(resent.answer, through.answer);
    assert!(resent.routes.iter().all(|r| r == "fresh"));
    let sent: Vec<usize> = full
        .sim
        .stats()
        .turns
        .iter()
        .map(|t| t.input_items)
        .collect();
    assert_eq!(
        sent.last(),
        Some(&(2 + 2 * 20)),
        "full resends carry everything: {sent:?}"
    );
}

#[tokio::test]
async fn reasoning_in_the_output_does_not_stop_a_chat_from_continuing_even_in_strict_mode() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.reasoning = wsbridge::continuation::ReasoningPolicy::Strict;
    })
    .await;
    let mut body = hi(false);
    body["reasoning_effort"] = json!("low");
    let first = chat(&bridge.url(), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let completion = first.json();
    assert!(
        completion["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let mut message = completion["choices"][0]["message"].clone();
    message.as_object_mut().unwrap().remove("annotations");
    body["messages"]
        .as_array_mut()
        .unwrap()
        .extend([message, json!({"role": "user", "content": "and then?"})]);
    let second = chat(&bridge.url(), &body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(header(&second, "x-wsbridge-continuation"), "continued");
    assert_eq!(bridge.sim.stats().turns.last().unwrap().input_items, 1);
}
