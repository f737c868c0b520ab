//! The bridged `POST /v1/responses` as a client sees it: the SSE and JSON answers, upstream
//! errors before and after the first event, and what is relayed of a sloppy upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::stats::Transport;

#[tokio::test]
async fn stream_is_byte_for_byte_the_rest_apis_sse_body() {
    let bridge = bridge().await;
    let body = json!({"model": "gpt-test", "input": "compare me", "stream": true, "store": false});
    let direct = common::post_json(&bridge.sim.base_url(), &body).await;
    let proxied = bridge.post(&body).await;
    assert_eq!(proxied.status, 200);
    let ids = ["id", "item_id", "obfuscation"];
    let times = ["created_at", "completed_at"];
    assert_eq!(
        mask_fields(&proxied.body, &ids, &times),
        mask_fields(&direct.body, &ids, &times),
        "same events, same order, same bytes (ids and times aside)"
    );
    let events = proxied.events();
    assert_eq!(events.first().unwrap()["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let turns = bridge.sim.stats().turns;
    assert_eq!(
        turns
            .iter()
            .filter(|t| t.transport == Transport::Ws)
            .count(),
        1
    );
}

#[tokio::test]
async fn stream_headers_are_event_stream_with_a_request_id() {
    let bridge = bridge().await;
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(reply.headers["cache-control"], "no-cache");
    assert_eq!(reply.headers["x-accel-buffering"], "no");
    assert!(
        reply.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}

#[tokio::test]
async fn non_stream_returns_the_final_response_object() {
    let bridge = bridge().await;
    let reply = bridge.post(&hello(false)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let response = reply.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert!(output_text(&response).starts_with("You said: hello."));
    let direct = common::post_json(&bridge.sim.base_url(), &hello(false)).await;
    let ids = ["id"];
    let times = ["created_at", "completed_at"];
    assert_eq!(
        mask_fields(&reply.body, &ids, &times),
        mask_fields(&direct.body, &ids, &times)
    );
}

#[tokio::test]
async fn an_incomplete_response_is_a_200_with_status_incomplete() {
    let bridge = bridge().await;
    let body = json!({"model": "gpt-test", "input": "cut me short", "max_output_tokens": 3});
    let reply = bridge.post(&body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let response = reply.json();
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let direct = common::post_json(&bridge.sim.base_url(), &body).await;
    assert_eq!(output_text(&response), output_text(&direct.json()));
}

#[tokio::test]
async fn upstream_error_before_output_becomes_that_http_status() {
    let bridge = bridge().await;
    let reply = bridge
        .post(&with_fault("error:429:rate_limit_exceeded"))
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["content-type"], "application/json");
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "rate_limit_exceeded");
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "REST error bodies carry {key}");
    }
    // A request-scoped error leaves the socket usable.
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    assert_eq!(bridge.sim.stats().sockets_opened, 1);
}

#[tokio::test]
async fn upstream_validation_errors_come_back_as_the_upstream_gave_them() {
    let bridge = bridge().await;
    let reply = bridge
        .post(&json!({"model": "gpt-test", "input": "x", "previous_response_id": "resp_nope", "stream": true}))
        .await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "previous_response_not_found");
    assert_eq!(error["param"], "previous_response_id");
    assert_eq!(
        error["message"],
        "Previous response with id 'resp_nope' not found."
    );
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors_without_touching_upstream() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.max_body_bytes = 1024
    })
    .await;
    let url = format!("{}/responses", bridge.url());
    let not_json = common::request("POST", &url, Some(KEY), Some("{nope".into())).await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");
    let array = common::request("POST", &url, Some(KEY), Some("[1,2]".into())).await;
    assert_eq!(array.status, 400);
    let bad_stream =
        common::request("POST", &url, Some(KEY), Some(r#"{"stream":"yes"}"#.into())).await;
    assert_eq!(bad_stream.status, 400);
    assert_eq!(bad_stream.json()["error"]["param"], "stream");
    // `type` names the WebSocket event; a body carrying one would send a frame with two.
    let typed = json!({"model": "m", "input": "hi", "type": "message"}).to_string();
    let typed = common::request("POST", &url, Some(KEY), Some(typed)).await;
    assert_eq!(typed.status, 400);
    assert_eq!(typed.json()["error"]["param"], "type");
    assert_eq!(typed.json()["error"]["code"], "unknown_parameter");
    let large = json!({"model": "m", "input": "x".repeat(2000)}).to_string();
    let too_large = common::request("POST", &url, Some(KEY), Some(large)).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["error"]["type"], "invalid_request_error");
    let no_key = common::request("POST", &url, None, Some(hello(false).to_string())).await;
    assert_eq!(no_key.status, 401);
    assert_eq!(
        no_key.headers["www-authenticate"],
        "Bearer realm=\"OpenAI API\""
    );
    assert!(no_key.headers.contains_key("x-request-id"));
    let stats = bridge.sim.stats();
    assert_eq!((stats.sockets_opened, stats.turns_total), (0, 0));
}

#[tokio::test]
async fn unknown_fields_are_forwarded_untouched() {
    let bridge = bridge().await;
    let extra = json!({"model": "gpt-test", "input": "x", "future_field": {"nested": [1, 2, 3]}});
    let direct = common::post_json(&bridge.sim.base_url(), &extra).await;
    let proxied = bridge.post(&extra).await;
    assert_eq!(proxied.status, direct.status);
    // Bytes received upstream: the frame is the body plus `"type":"response.create",`.
    let stats = bridge.sim.stats();
    let ws = stats
        .turns
        .iter()
        .find(|t| t.transport == Transport::Ws)
        .unwrap();
    let frame_overhead = r#""type":"response.create","#.len();
    assert_eq!(ws.bytes, extra.to_string().len() + frame_overhead);
}

// ---------------------------------------------------------------- recovery before the first event

#[tokio::test]
async fn a_mid_stream_close_ends_with_response_failed_and_nothing_duplicated() {
    let bridge = bridge().await;
    let reply = bridge.post(&with_fault("close_mid_stream")).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert_eq!(last["response"]["id"], events[0]["response"]["id"]);
    assert_consecutive_sequence_numbers(&events);
    assert_eq!(
        types(&events)
            .iter()
            .filter(|t| **t == "response.created")
            .count(),
        1
    );
    assert_eq!(bridge.sim.stats().turns_total, 1, "never replayed");
    // The broken socket is gone; the next request gets a new one.
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    assert_eq!(bridge.sim.stats().sockets_opened, 2);
}

#[tokio::test]
async fn upstream_response_failed_and_stream_errors_are_relayed() {
    let bridge = bridge().await;
    let failed = bridge.post(&with_fault("response_failed")).await;
    assert_eq!(failed.events().last().unwrap()["type"], "response.failed");
    let errored = bridge.post(&with_fault("stream_error:server_error")).await;
    let last = errored.events().last().unwrap().clone();
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "server_error");
    let mut non_stream = with_fault("response_failed");
    non_stream["stream"] = json!(false);
    let reply = bridge.post(&non_stream).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn keepalive_comments_fill_long_upstream_silences() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.sse_keepalive = Some(Duration::from_millis(100));
    })
    .await;
    let reply = bridge.post(&with_fault("stall_within:450")).await;
    assert!(
        reply.body.contains("\n: keep-alive\n\n") || reply.body.starts_with(": keep-alive"),
        "{}",
        reply.body
    );
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
}

#[tokio::test]
async fn a_silent_upstream_mid_stream_fails_the_stream_after_the_idle_timeout() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.stream_idle_timeout = Duration::from_millis(300);
        config.server.sse_keepalive = Some(Duration::from_millis(50));
    })
    .await;
    let reply = bridge.post(&with_fault("stall_within:5000")).await;
    assert!(
        reply.body.contains(": keep-alive"),
        "keep-alives do not reset the idle clock"
    );
    let last = reply.events().last().unwrap().clone();
    assert_eq!(last["type"], "response.failed");
}

#[tokio::test]
async fn upstream_keepalive_events_are_relayed_unchanged() {
    let bridge = bridge().await;
    let reply = bridge.post(&with_fault("keepalive:2")).await;
    let events = reply.events();
    assert_eq!(
        types(&events).iter().filter(|t| **t == "keepalive").count(),
        2
    );
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_consecutive_sequence_numbers(&events);
}

#[tokio::test]
async fn a_repeated_sequence_number_from_the_upstream_is_relayed_once() {
    let bridge = bridge().await;
    let reply = bridge.post(&with_fault("repeat_sequence")).await;
    let events = reply.events();
    assert_consecutive_sequence_numbers(&events);
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, output_text(&events.last().unwrap()["response"]));
    assert_eq!(
        bridge
            .metric("wsbridge_upstream_events_dropped_total{reason=\"sequence\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_straggler_after_the_terminal_event_never_reaches_the_next_conversation() {
    // One socket, so the next conversation goes on the socket the straggler arrives on.
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_sockets = 1;
    })
    .await;
    let first =
        json!({"model": "gpt-test", "input": "one", "metadata": {"sim_fault": "late_event"}});
    assert_eq!(bridge.post(&first).await.status, 200);
    let second = bridge
        .post(&json!({"model": "gpt-test", "input": "two", "stream": true}))
        .await;
    assert!(!second.body.contains("LATE"), "{}", second.body);
    let events = second.events();
    assert_eq!(events[0]["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_consecutive_sequence_numbers(&events);
    // It was caught either way: dropped before the next turn's response.created, or, when it
    // came while the socket sat idle, by closing that socket.
    let dropped = bridge
        .metric("wsbridge_upstream_events_dropped_total{reason=\"before_created\"}")
        .await;
    let closed = bridge
        .metric("wsbridge_upstream_socket_closes_total{reason=\"protocol_error\"}")
        .await;
    assert_eq!(dropped + closed, 1.0, "dropped {dropped}, closed {closed}");
}
