//! The simulator's `POST /v1/chat/completions` when things are not plain: OpenAI-shaped
//! errors for bad requests, what `/sim/stats` records (raw bodies included), turn faults and
//! the latency model.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::latency::LatencyModel;
use wsbridge::simulator::stats::{Outcome, Transport};

fn hello_chat(stream: bool) -> Value {
    json!({"model": "gpt-sim", "messages": [{"role": "user", "content": "hello there"}], "stream": stream})
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
    let limited = chat::chat(
        &sim.base_url(),
        &with("error:429:rate_limit_exceeded", false),
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");

    let failed = chat::chat(&sim.base_url(), &with("response_failed", false)).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"]["code"], "server_error");

    let (status, text, clean) = request_partial(&url, &with("response_failed", true)).await;
    assert_eq!(status, 200);
    assert!(clean);
    let (chunks, done) = chat::sse_chunks(&text);
    assert!(!done, "an error ends the stream without [DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks.last().unwrap()["error"]["code"], "server_error");

    let (_, text, _) = request_partial(&url, &with("stream_error:rate_limit_exceeded", true)).await;
    let (chunks, done) = chat::sse_chunks(&text);
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
    let (chunks, done) = chat::sse_chunks(&text);
    assert!(done);
    let plain = chat::chat(&sim.base_url(), &hello_chat(false)).await.json();
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
    let completion = chat::chat(&sim.base_url(), &hello_chat(false)).await.json();
    let tokens = completion["usage"]["completion_tokens"].as_u64().unwrap();
    let floor = Duration::from_millis(150 + 10 * (tokens - 1));
    assert!(
        started.elapsed() >= floor,
        "{:?} < {floor:?}",
        started.elapsed()
    );
}
