//! The simulator's `POST /v1/chat/completions`: OpenAI's chat wire format, stream and
//! non-stream, driven by the same scripted model as `/v1/responses` (the same conversation
//! gets the same answer and the same tool calls on both APIs), its errors, faults, latency and
//! what `/sim/stats` records.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wsbridge::config::SimulatorConfig;
use wsbridge::simulator::latency::LatencyModel;
use wsbridge::simulator::stats::{Outcome, Transport};

fn hello_chat(stream: bool) -> Value {
    json!({"model": "gpt-sim", "messages": [{"role": "user", "content": "hello there"}], "stream": stream})
}

#[tokio::test]
async fn a_completion_answers_like_the_responses_api_for_the_same_conversation() {
    let sim = default_simulator().await;
    let chat = post_chat(
        &sim.base_url(),
        &json!({"model": "gpt-sim", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "second question"},
        ]}),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    assert_eq!(chat.headers["content-type"], "application/json");
    let completion = chat.json();
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-sim");
    let [choice] = completion["choices"].as_array().unwrap().as_slice() else {
        panic!("one choice: {completion}")
    };
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["refusal"].is_null());
    assert!(choice["message"].get("tool_calls").is_none());

    let responses = post_json(
        &sim.base_url(),
        &json!({"model": "gpt-sim", "input": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "noted", "annotations": []}]},
            {"role": "user", "content": "second question"},
        ]}),
    )
    .await;
    let text = output_text(&responses.json());
    assert!(text.starts_with("You said: second question."), "{text}");
    assert_eq!(choice["message"]["content"], text.as_str());

    let usage = &completion["usage"];
    let (prompt, completion_tokens) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion_tokens > 0);
    assert_eq!(usage["total_tokens"], prompt + completion_tokens);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn a_stream_has_openais_chunk_framing_and_the_same_text() {
    let sim = default_simulator().await;
    let plain = post_chat(&sim.base_url(), &hello_chat(false)).await.json();
    let mut body = hello_chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post_chat(&sim.base_url(), &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let (chunks, done) = parse_chat_sse(&reply.body);
    assert!(done, "a finished stream ends with data: [DONE]");
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text = chat_deltas(&chunks, 0, "content");
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(chunks.len() > 4, "one chunk per token");

    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        rest[..rest.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // Without include_usage: no usage chunk and no usage field.
    let (chunks, done) = parse_chat_sse(&post_chat(&sim.base_url(), &hello_chat(true)).await.body);
    assert!(done);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
}

/// One turn of a chat tool loop: the completion's calls as `(id, name, arguments)`.
fn chat_calls(completion: &Value) -> Vec<(String, String, String)> {
    completion["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let field = |v: &Value| v.as_str().unwrap().to_owned();
                    (
                        field(&c["id"]),
                        field(&c["function"]["name"]),
                        field(&c["function"]["arguments"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_parallel_tool_loop_makes_the_same_calls_and_answer_as_over_responses() {
    let sim = default_simulator().await;
    let metadata = json!({"sim_tool_calls": "3", "sim_parallel": "2"});

    let mut messages = vec![json!({"role": "user", "content": "find the things"})];
    let mut chat_turns = Vec::new();
    let chat_answer = loop {
        let body = json!({"model": "gpt-sim", "messages": messages, "tools": chat_tools(&["lookup", "search"]), "metadata": metadata});
        let completion = post_chat(&sim.base_url(), &body).await.json();
        let calls = chat_calls(&completion);
        if calls.is_empty() {
            assert_eq!(completion["choices"][0]["finish_reason"], "stop");
            break completion["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert!(completion["choices"][0]["message"]["content"].is_null());
        messages.push(completion["choices"][0]["message"].clone());
        for (id, _, _) in &calls {
            messages.push(
                json!({"role": "tool", "tool_call_id": id, "content": format!("result for {id}")}),
            );
        }
        chat_turns.push(calls);
        assert!(chat_turns.len() <= 3, "still calling tools");
    };

    let tools =
        json!([{"type": "function", "name": "lookup"}, {"type": "function", "name": "search"}]);
    let mut input = vec![json!({"role": "user", "content": "find the things"})];
    let mut responses_turns = Vec::new();
    let responses_answer = loop {
        let response = post_json(
            &sim.base_url(),
            &json!({"model": "gpt-sim", "input": input, "tools": tools, "metadata": metadata}),
        )
        .await
        .json();
        let output = response["output"].as_array().unwrap().clone();
        let calls: Vec<(String, String, String)> = output
            .iter()
            .filter(|item| item["type"] == "function_call")
            .map(|c| {
                (
                    c["call_id"].as_str().unwrap().into(),
                    c["name"].as_str().unwrap().into(),
                    c["arguments"].as_str().unwrap().into(),
                )
            })
            .collect();
        if calls.is_empty() {
            break output_text(&response);
        }
        input.extend(output);
        for (id, _, _) in &calls {
            input.push(json!({"type": "function_call_output", "call_id": id, "output": format!("result for {id}")}));
        }
        responses_turns.push(calls);
        assert!(responses_turns.len() <= 3, "still calling tools");
    };

    assert_eq!(chat_turns, responses_turns);
    let names: Vec<Vec<&str>> = chat_turns
        .iter()
        .map(|t| t.iter().map(|c| c.1.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        [vec!["lookup", "search"], vec!["lookup"]],
        "two parallel calls, then the last one"
    );
    assert_eq!(chat_answer, responses_answer);
    assert!(
        chat_answer.contains("Tool said: result for"),
        "{chat_answer}"
    );
}

#[tokio::test]
async fn streamed_parallel_calls_have_a_header_then_arguments_with_their_own_index() {
    let sim = default_simulator().await;
    let mut body = hello_chat(false);
    body["tools"] = chat_tools(&["lookup", "search"]);
    body["metadata"] = json!({"sim_parallel": "2", "sim_tool_calls": "2"});
    let plain = chat_calls(&post_chat(&sim.base_url(), &body).await.json());
    body["stream"] = json!(true);
    let (chunks, done) = parse_chat_sse(&post_chat(&sim.base_url(), &body).await.body);
    assert!(done);
    let deltas: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let mut streamed: Vec<(String, String, String)> = Vec::new();
    for delta in deltas {
        let index = delta["index"].as_u64().unwrap() as usize;
        if let Some(id) = delta["id"].as_str() {
            assert_eq!(index, streamed.len(), "headers come in call order");
            assert_eq!(delta["type"], "function");
            assert_eq!(delta["function"]["arguments"], "");
            streamed.push((
                id.into(),
                delta["function"]["name"].as_str().unwrap().into(),
                String::new(),
            ));
        } else {
            assert_eq!(
                index + 1,
                streamed.len(),
                "arguments follow their own header"
            );
            assert!(delta.get("id").is_none() && delta["function"].get("name").is_none());
            streamed[index].2 += delta["function"]["arguments"].as_str().unwrap();
        }
    }
    assert_eq!(streamed, plain);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_reason_length() {
    let sim = default_simulator().await;
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut body = hello_chat(false);
        body[key] = json!(3);
        let completion = post_chat(&sim.base_url(), &body).await.json();
        assert_eq!(completion["choices"][0]["finish_reason"], "length", "{key}");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "You said: hello"
        );
        assert_eq!(completion["usage"]["completion_tokens"], 3);
        body["stream"] = json!(true);
        let (chunks, done) = parse_chat_sse(&post_chat(&sim.base_url(), &body).await.body);
        assert!(done);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(chat_deltas(&chunks, 0, "content"), "You said: hello");
    }
}

#[tokio::test]
async fn refusals_n_choices_json_schema_reasoning_and_legacy_functions() {
    let sim = default_simulator().await;
    let url = sim.base_url();
    let mut refuse = hello_chat(false);
    refuse["metadata"] = json!({"sim_refuse": "true"});
    let message = &post_chat(&url, &refuse).await.json()["choices"][0]["message"];
    assert!(message["content"].is_null());
    assert!(
        message["refusal"]
            .as_str()
            .unwrap()
            .starts_with("I'm sorry")
    );
    refuse["stream"] = json!(true);
    let (chunks, _) = parse_chat_sse(&post_chat(&url, &refuse).await.body);
    assert_eq!(
        chat_deltas(&chunks, 0, "refusal"),
        message["refusal"].as_str().unwrap()
    );

    let mut two = hello_chat(false);
    two["n"] = json!(2);
    let completion = post_chat(&url, &two).await.json();
    let one = post_chat(&url, &hello_chat(false)).await.json();
    assert_eq!(completion["choices"].as_array().unwrap().len(), 2);
    assert_eq!(completion["choices"][1]["index"], 1);
    assert_eq!(
        completion["usage"]["completion_tokens"],
        one["usage"]["completion_tokens"].as_u64().unwrap() * 2
    );
    two["stream"] = json!(true);
    let (chunks, _) = parse_chat_sse(&post_chat(&url, &two).await.body);
    assert_eq!(
        chat_deltas(&chunks, 1, "content"),
        chat_deltas(&chunks, 0, "content")
    );

    let mut schema = hello_chat(false);
    schema["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "Answer", "strict": true, "schema": {
        "type": "object", "properties": {"said": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["said", "count"], "additionalProperties": false}}});
    let content = post_chat(&url, &schema).await.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let parsed: Value = serde_json::from_str(&content).unwrap();
    assert!(
        parsed["said"]
            .as_str()
            .unwrap()
            .starts_with("You said: hello there.")
    );
    assert_eq!(parsed["count"], 1);

    let mut reasoning = hello_chat(false);
    reasoning["reasoning_effort"] = json!("low");
    let usage = &post_chat(&url, &reasoning).await.json()["usage"];
    assert!(
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let mut legacy = hello_chat(false);
    legacy["functions"] = json!([{"name": "lookup", "parameters": {"type": "object"}}]);
    let choice = &post_chat(&url, &legacy).await.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "function_call");
    assert_eq!(choice["message"]["function_call"]["name"], "lookup");
    assert!(choice["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn bad_requests_get_openais_errors_and_are_recorded_with_their_bodies() {
    let sim = default_simulator().await;
    let url = format!("{}/chat/completions", sim.base_url());
    let unauthenticated = request("POST", &url, None, Some(hello_chat(false).to_string())).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(
        unauthenticated.json()["error"]["type"],
        "invalid_request_error"
    );

    let cases = [
        ("{not json".to_owned(), None),
        (json!({"model": "gpt-sim", "messages": "hi"}).to_string(), Some("messages")),
        (json!({"model": "gpt-sim", "messages": []}).to_string(), Some("messages")),
        (json!({"model": "gpt-sim", "messages": [{"role": "robot", "content": "x"}]}).to_string(), Some("messages[0].role")),
        (json!({"model": "gpt-sim", "messages": [{"role": "tool", "content": "x"}]}).to_string(), Some("messages[0].tool_call_id")),
        (json!({"messages": [{"role": "user", "content": "x"}]}).to_string(), Some("model")),
        (json!({"model": "gpt-sim", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}).to_string(), Some("stream_options")),
        (json!({"model": "gpt-sim", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}).to_string(), Some("tools[0].function")),
    ];
    for (body, param) in &cases {
        let reply = request("POST", &url, Some(KEY), Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"].as_str(), *param, "{body}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let stats = sim.stats();
    assert_eq!(
        stats.turns.len(),
        cases.len(),
        "every authenticated request is recorded"
    );
    for (turn, (body, _)) in stats.turns.iter().zip(&cases) {
        assert_eq!(turn.transport, Transport::Chat);
        assert_eq!(turn.outcome, Outcome::Error);
        assert_eq!(turn.bytes, body.len());
    }
    let kept: Vec<&str> = stats
        .chat_bodies
        .iter()
        .map(|b| b.text.as_deref().unwrap())
        .collect();
    assert_eq!(
        kept,
        cases
            .iter()
            .map(|(body, _)| body.as_str())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn stats_keep_the_raw_body_with_the_fields_the_simulator_ignores() {
    let sim = default_simulator().await;
    // Odd spacing and field order, logit_bias, an unknown field: kept byte for byte.
    let body = r#"{ "model":"gpt-sim",  "logit_bias":{"50256":-100}, "x_unknown":[1,2],
        "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"user","content":"again"}], "seed": 7 }"#;
    let reply = request(
        "POST",
        &format!("{}/chat/completions", sim.base_url()),
        Some(KEY),
        Some(body.to_owned()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stats = sim.stats();
    let turn = stats.turns.last().unwrap();
    assert_eq!(
        (turn.transport, turn.outcome),
        (Transport::Chat, Outcome::Completed)
    );
    assert_eq!(turn.input_items, 3);
    assert_eq!(turn.bytes, body.len());
    assert_eq!(stats.bytes_received_total, body.len() as u64);
    assert_eq!(turn.model.as_deref(), Some("gpt-sim"));
    assert_eq!(turn.response_id.as_deref(), reply.json()["id"].as_str());
    let kept = stats.chat_bodies.last().unwrap();
    assert_eq!(kept.text.as_deref(), Some(body));
    assert_eq!(kept.turn, turn.index);
    assert_eq!(turn.body_fnv1a.as_deref(), Some(kept.fnv1a.as_str()));
    assert_eq!(
        kept.fnv1a,
        format!(
            "{:016x}",
            wsbridge::simulator::stats::fnv1a(body.as_bytes())
        )
    );

    let over_http = request(
        "GET",
        &format!("http://{}/sim/stats", sim.addr()),
        None,
        None,
    )
    .await
    .json();
    assert_eq!(over_http["chat_bodies"][0]["text"], body);
    assert_eq!(over_http["turns"][0]["transport"], "chat");
}

#[tokio::test]
async fn turn_faults_apply_to_chat_as_to_rest() {
    let sim = default_simulator().await;
    let url = format!("{}/chat/completions", sim.base_url());
    let with = |fault: &str, stream: bool| {
        let mut body = hello_chat(stream);
        body["metadata"] = json!({"sim_fault": fault});
        body
    };
    let limited = post_chat(
        &sim.base_url(),
        &with("error:429:rate_limit_exceeded", false),
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");

    let failed = post_chat(&sim.base_url(), &with("response_failed", false)).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"]["code"], "server_error");

    let (status, text, clean) = request_partial(&url, &with("response_failed", true)).await;
    assert_eq!(status, 200);
    assert!(clean);
    let (chunks, done) = parse_chat_sse(&text);
    assert!(!done, "an error ends the stream without [DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks.last().unwrap()["error"]["code"], "server_error");

    let (_, text, _) = request_partial(&url, &with("stream_error:rate_limit_exceeded", true)).await;
    let (chunks, done) = parse_chat_sse(&text);
    assert!(!done);
    assert_eq!(
        chunks.last().unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
    assert_eq!(
        chat_deltas(&chunks, 0, "content"),
        "You ",
        "the error follows the first token"
    );

    let (status, text, clean) = request_partial(&url, &with("close_mid_stream", true)).await;
    assert_eq!(status, 200);
    assert!(!clean, "the body breaks off");
    assert!(
        !text.contains("[DONE]") && text.contains("\"content\":\"You \""),
        "{text}"
    );

    // Faults that only make sense for Responses events leave a chat stream intact.
    let (_, text, clean) =
        request_partial(&url, &with("repeat_sequence,keepalive:2,late_event", true)).await;
    assert!(clean);
    let (chunks, done) = parse_chat_sse(&text);
    assert!(done);
    let plain = post_chat(&sim.base_url(), &hello_chat(false)).await.json();
    assert_eq!(
        chat_deltas(&chunks, 0, "content"),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn chat_turns_pay_the_latency_model() {
    let sim = simulator(SimulatorConfig {
        latency: LatencyModel {
            ttft: Duration::from_millis(150),
            per_token: Duration::from_millis(10),
            ..LatencyModel::NONE
        },
        ..SimulatorConfig::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let completion = post_chat(&sim.base_url(), &hello_chat(false)).await.json();
    let tokens = completion["usage"]["completion_tokens"].as_u64().unwrap();
    let floor = Duration::from_millis(150 + 10 * (tokens - 1));
    assert!(
        started.elapsed() >= floor,
        "{:?} < {floor:?}",
        started.elapsed()
    );
}
