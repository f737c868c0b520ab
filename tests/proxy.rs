//! The proxy in front of the simulator, both in-process: what a REST client sees, and what the
//! upstream sees (simulator stats), for the bridge's normal path and every fault path.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::{
    Bridge, KEY, PATIENCE, assert_consecutive_sequence_numbers, bridge, bridge_with, mask_fields,
    metric, output_text, types,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use wsbridge::config::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::stats::Transport;

fn hello(stream: bool) -> Value {
    json!({"model": "gpt-test", "input": "hello", "stream": stream})
}

fn with_fault(fault: &str) -> Value {
    json!({"model": "gpt-test", "input": "hello", "stream": true, "metadata": {"sim_fault": fault}})
}

/// Starts a streaming `POST /v1/responses` through the proxy and reads its first chunk, which
/// must be `response.created`; returns the rest of the body and that chunk's text.
async fn open_stream(bridge: &Bridge, body: &Value) -> (hyper::body::Incoming, String) {
    let authorization = format!("Bearer {KEY}");
    let response = common::send(
        "POST",
        &format!("{}/responses", bridge.url()),
        &[("authorization", &authorization)],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(first.data_ref().unwrap()).into_owned();
    assert!(first.starts_with("event: response.created"), "{first}");
    (body, first)
}

// ---------------------------------------------------------------- the normal path

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
async fn sequential_turns_reuse_one_socket_when_sockets_keep_no_heads() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.enabled = false;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(bridge.post(&hello(true)).await.status, 200);
    }
    let stats = bridge.sim.stats();
    assert_eq!(stats.sockets_opened, 1);
    assert_eq!(stats.turns_total, 3);
}

#[tokio::test]
async fn pool_prewarms_min_idle_sockets_after_first_use() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.min_idle = 2
    })
    .await;
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    let stats = bridge
        .sim
        .wait_for(|s| s.sockets_open >= 2, PATIENCE)
        .await
        .expect("the pool refills to min_idle in the background");
    assert_eq!(stats.turns_total, 1);
}

#[tokio::test]
async fn two_credentials_never_share_a_socket() {
    let bridge = bridge().await;
    let url = format!("{}/responses", bridge.url());
    for round in 0..3 {
        for key in ["sk-alpha", "sk-bravo"] {
            let reply = common::request(
                "POST",
                &url,
                Some(key),
                Some(hello(round % 2 == 0).to_string()),
            )
            .await;
            assert_eq!(reply.status, 200);
        }
    }
    let stats = bridge.sim.stats();
    let alpha = stats.sockets_for("sk-alpha");
    let bravo = stats.sockets_for("sk-bravo");
    assert!(!alpha.is_empty() && !bravo.is_empty());
    assert!(alpha.is_disjoint(&bravo), "{alpha:?} vs {bravo:?}");
    for turn in &stats.turns {
        let socket = turn.socket.unwrap();
        let owner = if alpha.contains(&socket) {
            "sk-alpha"
        } else {
            "sk-bravo"
        };
        assert_eq!(turn.key, owner);
    }
}

#[tokio::test]
async fn organization_and_project_headers_key_the_pool_too() {
    let bridge = bridge().await;
    let url = format!("{}/responses", bridge.url());
    let authorization = format!("Bearer {KEY}");
    // Each distinct (organization, project) is a credential of its own, with sockets of its own.
    for (org, project) in [
        ("org-a", None),
        ("org-b", None),
        ("org-a", Some("proj-1")),
        ("org-a", Some("proj-2")),
        ("org-a", Some("proj-1")),
    ] {
        let mut headers = vec![
            ("authorization", authorization.as_str()),
            ("openai-organization", org),
        ];
        headers.extend(project.map(|p| ("openai-project", p)));
        let reply =
            common::request_with("POST", &url, &headers, Some(hello(false).to_string())).await;
        assert_eq!(reply.status, 200);
    }
    let sockets: Vec<u64> = bridge
        .sim
        .stats()
        .turns
        .iter()
        .map(|t| t.socket.unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<_> = sockets[..4].iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "four credentials, four sockets: {sockets:?}"
    );
    assert!(
        ![sockets[0], sockets[1], sockets[3]].contains(&sockets[4]),
        "a repeat of (org-a, proj-1) never uses another credential's socket: {sockets:?}"
    );
}

// ---------------------------------------------------------------- errors before the first event

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
async fn close_before_created_is_retried_on_another_socket_transparently() {
    let bridge = bridge().await;
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "close_before_created".into(),
            turn_every: 1,
            ..FaultConfig::default()
        })
        .unwrap();
    // Every turn is faulted, so the proxy gives up after max_attempts with a 502.
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_closed");
    // Every other turn faulted: the retry lands.
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "close_before_created".into(),
            turn_every: 2,
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "response.created")
            .count(),
        1
    );
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert!(
        metric(
            &bridge.metrics().await,
            "wsbridge_upstream_recoveries_total{cause=\"socket_closed\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_socket_closed_right_after_the_upgrade_is_retried() {
    let bridge = bridge().await;
    bridge
        .sim
        .set_faults(FaultConfig {
            close_after_upgrade: 1,
            ..FaultConfig::default()
        })
        .unwrap();
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
    assert_eq!(bridge.sim.stats().sockets_opened, 2);
}

#[tokio::test]
async fn an_idle_socket_that_reaches_the_connection_limit_is_replaced() {
    let config = SimulatorConfig {
        max_connection_age: Duration::from_millis(300),
        ..SimulatorConfig::default()
    };
    // Idle sockets are swept every ping interval.
    let bridge = bridge_with(config, |config| {
        config.pool.ping_interval = Some(Duration::from_millis(50));
    })
    .await;
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let closed = bridge
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"limit_reached\"}",
            |closed| closed >= 1.0,
        )
        .await;
    assert_eq!(closed, 1.0, "the unsolicited error retired the idle socket");
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
    assert_eq!(bridge.sim.stats().sockets_opened, 2);
}

#[tokio::test]
async fn a_turn_refused_for_the_connection_limit_is_retried_on_a_new_socket() {
    let bridge = bridge().await;
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "error:400:websocket_connection_limit_reached".into(),
            turn_every: 2,
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        metric(
            &bridge.metrics().await,
            "wsbridge_upstream_recoveries_total{cause=\"limit_reached\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn upgrade_refused_with_503_is_retried_and_with_429_is_passed_on() {
    let bridge = bridge().await;
    bridge
        .sim
        .set_faults(FaultConfig {
            upgrade_status: 503,
            upgrade_count: 1,
            ..FaultConfig::default()
        })
        .unwrap();
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(bridge.sim.stats().upgrades_refused, 1);

    let bridge = common::bridge().await;
    bridge
        .sim
        .set_faults(FaultConfig {
            upgrade_status: 429,
            ..FaultConfig::default()
        })
        .unwrap();
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 429);
    assert!(reply.json()["error"]["message"].is_string());
    assert_eq!(
        bridge.sim.stats().upgrades_refused,
        1,
        "a 429 is not retried"
    );
}

#[tokio::test]
async fn an_upstream_without_websockets_is_served_over_rest_for_a_cooldown() {
    for status in [426, 404, 405] {
        let bridge = bridge().await;
        bridge
            .sim
            .set_faults(FaultConfig {
                upgrade_status: status,
                ..FaultConfig::default()
            })
            .unwrap();
        for stream in [true, false] {
            let reply = bridge.post(&hello(stream)).await;
            assert_eq!(reply.status, 200, "upgrade refused with {status}");
            if stream {
                assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
            } else {
                assert!(output_text(&reply.json()).starts_with("You said: hello."));
            }
        }
        let stats = bridge.sim.stats();
        assert_eq!(
            stats.upgrades_refused, 1,
            "the second request does not try the upgrade again ({status})"
        );
        assert!(stats.turns.iter().all(|t| t.transport == Transport::Rest));
    }
}

#[tokio::test]
async fn after_the_rest_cooldown_the_websocket_is_tried_again() {
    // Long enough for two requests through the proxy on a loaded machine.
    let cooldown = Duration::from_secs(1);
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.rest_fallback_cooldown = cooldown;
    })
    .await;
    bridge
        .sim
        .set_faults(FaultConfig {
            upgrade_status: 426,
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    bridge.sim.set_faults(FaultConfig::default()).unwrap();
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    assert_eq!(
        bridge.sim.stats().turns.last().unwrap().transport,
        Transport::Rest,
        "still within the cool-down"
    );
    tokio::time::sleep(cooldown).await;
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    let stats = bridge.sim.stats();
    assert_eq!(stats.turns.last().unwrap().transport, Transport::Ws);
    assert_eq!(stats.sockets_opened, 1);
}

#[tokio::test]
async fn the_rest_path_streams_both_ways_without_buffering() {
    // A frame limit of 1 byte sends every request over the REST pass-through.
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.max_frame_bytes = 1;
    })
    .await;
    // A large request body goes through whole: the answer echoes its last message.
    let filler = "x".repeat(1 << 20);
    let body = json!({"model": "gpt-test", "stream": true, "input": [
        {"role": "user", "content": filler},
        {"role": "user", "content": "the end"}],
        "metadata": {"sim_fault": "stall_within:1500"}});
    let (body, first) = open_stream(&bridge, &body).await;
    assert_eq!(
        bridge.sim.stats().turns_total,
        0,
        "the first event reached the client while the upstream was still generating"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    let text = first + &String::from_utf8_lossy(&rest);
    let events = common::parse_sse(&text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert!(output_text(&last["response"]).starts_with("You said: the end."));
    let turn = &bridge.sim.stats().turns[0];
    assert_eq!(turn.transport, Transport::Rest);
    assert!(turn.bytes > 1 << 20, "the whole body reached the upstream");
}

#[tokio::test]
async fn background_and_oversized_requests_go_over_rest() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.max_frame_bytes = 200
    })
    .await;
    let reply = bridge
        .post(&json!({"model": "gpt-test", "input": "bg", "background": true}))
        .await;
    assert_eq!(reply.status, 200);
    let reply = bridge
        .post(&json!({"model": "gpt-test", "input": "y".repeat(300), "stream": true}))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
    let stats = bridge.sim.stats();
    assert_eq!(stats.sockets_opened, 0);
    assert_eq!(
        stats
            .turns
            .iter()
            .filter(|t| t.transport == Transport::Rest)
            .count(),
        2
    );
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "wsbridge_rest_fallbacks_total{reason=\"background\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "wsbridge_rest_fallbacks_total{reason=\"frame_too_large\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_stalled_upstream_gets_a_504_after_the_first_event_timeout() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.first_event_timeout = Duration::from_millis(300);
    })
    .await;
    let reply = bridge.post(&with_fault("stall_before:5000")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    bridge
        .sim
        .wait_for(|s| s.sockets_closed == 1, PATIENCE)
        .await
        .expect("the stalled socket is closed, not reused");
}

#[tokio::test]
async fn all_sockets_busy_waits_then_answers_429_with_retry_after() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_sockets = 1;
        config.pool.checkout_timeout = Duration::from_millis(200);
    })
    .await;
    let slow = json!({"model": "gpt-test", "input": "slow", "stream": true, "metadata": {"sim_fault": "stall_within:1500"}});
    let url = bridge.url();
    let first = tokio::spawn(async move { common::post_json(&url, &slow).await });
    bridge
        .sim
        .wait_for(|s| s.sockets_open == 1, PATIENCE)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reply = bridge.post(&hello(true)).await;
    assert_eq!(reply.status, 429);
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(reply.json()["error"]["code"], "wsbridge_pool_exhausted");
    let first = first.await.unwrap();
    assert_eq!(first.events().last().unwrap()["type"], "response.completed");
}

// ---------------------------------------------------------------- after the first event

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
async fn a_client_that_goes_away_mid_stream_closes_the_upstream_socket() {
    let bridge = bridge().await;
    let body = json!({"model": "gpt-test", "input": "long", "stream": true, "metadata": {"sim_fault": "stall_within:3000"}});
    let (body, _) = open_stream(&bridge, &body).await;
    drop(body);
    bridge
        .sim
        .wait_for(|s| s.sockets_closed == 1, PATIENCE)
        .await
        .expect("the upstream sees its socket closed");
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "wsbridge_upstream_socket_closes_total{reason=\"client_gone\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn after_a_client_disconnect_the_pool_refills_in_the_background() {
    // One socket allowed: no refill can happen while the stream holds it.
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.min_idle = 1;
        config.pool.max_sockets = 1;
    })
    .await;
    let body = json!({"model": "gpt-test", "input": "long", "stream": true, "metadata": {"sim_fault": "stall_within:3000"}});
    let (body, _) = open_stream(&bridge, &body).await;
    drop(body);
    bridge
        .sim
        .wait_for(
            |s| s.sockets_closed == 1 && s.sockets_opened == 2 && s.sockets_open == 1,
            PATIENCE,
        )
        .await
        .expect("the closed socket is replaced by a pre-warmed one");
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
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
async fn a_request_cancelled_while_connecting_gives_its_socket_slot_back() {
    // An upstream that accepts TCP and never answers the upgrade.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.base_url = format!("http://{hole}/v1");
        config.pool.max_sockets = 1;
    })
    .await;
    let url = bridge.url();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        common::post_json(&url, &hello(true)),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the connect hangs, so the client gives up"
    );
    let connecting = bridge
        .wait_for_metric("wsbridge_upstream_sockets{state=\"connecting\"}", |n| {
            n == 0.0
        })
        .await;
    assert_eq!(connecting, 0.0, "the abandoned connect released its slot");
    held.abort();
}

// ---------------------------------------------------------------- everything else

#[tokio::test]
async fn other_paths_pass_through_with_status_and_body_as_upstream_sent_them() {
    let bridge = bridge().await;
    let created = bridge
        .post(&json!({"model": "gpt-test", "input": "keep", "store": true}))
        .await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let fetched = common::request(
        "GET",
        &format!("{}/responses/{id}", bridge.url()),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json()["id"], id.as_str());
    let direct = common::request(
        "GET",
        &format!("{}/embeddings", bridge.sim.base_url()),
        Some(KEY),
        None,
    )
    .await;
    let proxied = common::request(
        "GET",
        &format!("{}/embeddings", bridge.url()),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(proxied.status, direct.status);
    assert_eq!(proxied.body, direct.body);
    let no_key = common::request("GET", &format!("{}/models", bridge.url()), None, None).await;
    assert_eq!(no_key.status, 401);
}

#[tokio::test]
async fn a_websocket_upgrade_on_get_responses_is_refused_with_426() {
    let bridge = bridge().await;
    let ws_url = format!("ws://{}/v1/responses", bridge.proxy.addr());
    match common::ws_connect(&ws_url, KEY).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 426);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
        other => panic!("expected a 426, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let bridge = bridge().await;
    let addr = bridge.proxy.addr();
    let health = common::request("GET", &format!("http://{addr}/healthz"), None, None).await;
    assert_eq!(health.status, 200);
    let ready = common::request("GET", &format!("http://{addr}/readyz"), None, None).await;
    assert_eq!(ready.status, 200, "the upstream answers");
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "wsbridge_requests_total{route=\"responses\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "wsbridge_upstream_sockets{state=\"idle\"}"),
        1.0
    );
    assert_eq!(metric(&text, "wsbridge_upstream_socket_opens_total"), 1.0);
    assert!(text.contains("wsbridge_time_to_first_byte_seconds_bucket"));
    assert!(!text.contains(KEY), "keys never appear in metrics");
    let missing = common::request("GET", &format!("http://{addr}/nope"), None, None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn readyz_fails_when_the_upstream_is_unreachable() {
    let bridge = bridge().await;
    let addr = bridge.proxy.addr();
    let Bridge { sim, proxy } = bridge;
    sim.shutdown().await;
    let ready = common::request("GET", &format!("http://{addr}/readyz"), None, None).await;
    assert_eq!(ready.status, 503);
    drop(proxy);
}

#[tokio::test]
async fn inject_mode_sends_its_own_key_and_checks_client_tokens() {
    use wsbridge::config::{AuthConfig, Secret};
    let sim_config = SimulatorConfig {
        accepted_keys: vec!["sk-injected".into()],
        ..SimulatorConfig::default()
    };
    let bridge = bridge_with(sim_config, |config| {
        config.auth = AuthConfig::Inject {
            api_key: Secret::new("sk-injected"),
            client_tokens: vec![Secret::new("team-token")],
        };
        config.pool.min_idle = 1;
    })
    .await;
    bridge
        .sim
        .wait_for(|s| s.sockets_open == 1, PATIENCE)
        .await
        .expect("the injected credential's pool is pre-warmed at start");
    let url = format!("{}/responses", bridge.url());
    let denied = common::request("POST", &url, Some("wrong"), Some(hello(true).to_string())).await;
    assert_eq!(denied.status, 401);
    let allowed = common::request(
        "POST",
        &url,
        Some("team-token"),
        Some(hello(true).to_string()),
    )
    .await;
    assert_eq!(allowed.status, 200);
    let stats = bridge.sim.stats();
    assert!(stats.turns.iter().all(|t| t.key == "sk-injected"));
    assert_eq!(stats.turns_total, 1);
}

#[tokio::test]
async fn idle_sockets_are_pinged_and_kept() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.ping_interval = Some(Duration::from_millis(50));
        config.continuation.enabled = false;
    })
    .await;
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    bridge
        .sim
        .wait_for(|s| s.pings_received >= 3, PATIENCE)
        .await
        .expect("the idle socket is pinged");
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let stats = bridge.sim.stats();
    assert_eq!((stats.sockets_opened, stats.sockets_closed), (1, 0));
}

#[tokio::test]
async fn an_idle_socket_that_stops_answering_pings_is_replaced() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.ping_interval = Some(Duration::from_millis(50));
    })
    .await;
    bridge
        .sim
        .set_faults(FaultConfig {
            ignore_pings: true,
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(bridge.post(&hello(true)).await.status, 200);
    let closed = bridge
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"ping_timeout\"}",
            |n| n >= 1.0,
        )
        .await;
    assert_eq!(closed, 1.0, "the unanswered ping closed the socket");
    bridge.sim.set_faults(FaultConfig::default()).unwrap();
    let reply = bridge.post(&hello(false)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(bridge.sim.stats().sockets_opened, 2, "on a new socket");
}

#[tokio::test]
async fn a_socket_that_passes_max_age_during_a_turn_is_retired_when_it_ends() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_age = Duration::from_millis(300);
        config.continuation.enabled = false;
    })
    .await;
    let reply = bridge.post(&with_fault("stall_within:500")).await;
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
    assert_eq!(
        bridge
            .metric("wsbridge_upstream_socket_closes_total{reason=\"max_age\"}")
            .await,
        1.0,
        "retired as the turn ended, not given back to the pool"
    );
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    assert_eq!(bridge.sim.stats().sockets_opened, 2);
}

#[tokio::test]
async fn an_idle_socket_past_max_age_is_retired_and_never_used_again() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_age = Duration::from_millis(300);
        config.continuation.enabled = false;
    })
    .await;
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    let closed = bridge
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"max_age\"}",
            |n| n >= 1.0,
        )
        .await;
    assert_eq!(closed, 1.0, "the old idle socket was retired");
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    let stats = bridge.sim.stats();
    assert_eq!(stats.sockets_opened, 2);
    let sockets: Vec<_> = stats.turns.iter().map(|t| t.socket).collect();
    assert_ne!(
        sockets[0], sockets[1],
        "the second turn went on a new socket"
    );
}

#[tokio::test]
async fn idle_sockets_close_after_the_idle_timeout() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.idle_timeout = Duration::from_millis(300);
        config.pool.min_idle = 1;
    })
    .await;
    // Two turns at once: two sockets, plus the pre-warmed one.
    let slow = with_fault("stall_within:200");
    let (a, b) = tokio::join!(bridge.post(&slow), bridge.post(&slow));
    assert_eq!((a.status, b.status), (200, 200));
    let stats = bridge
        .sim
        .wait_for(|s| s.sockets_opened >= 2 && s.sockets_open == 0, PATIENCE)
        .await
        .expect("an unused credential lets all its sockets go");
    let closed = bridge
        .metric("wsbridge_upstream_socket_closes_total{reason=\"idle_timeout\"}")
        .await;
    assert_eq!(
        closed, stats.sockets_opened as f64,
        "every socket closed for the idle timeout"
    );
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let bridge = bridge().await;
    let slow = json!({"model": "gpt-test", "input": "slow", "stream": true, "metadata": {"sim_fault": "stall_within:400"}});
    let url = bridge.url();
    let stream = tokio::spawn(async move { common::post_json(&url, &slow).await });
    bridge
        .sim
        .wait_for(|s| s.sockets_open == 1, PATIENCE)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Bridge { sim, proxy } = bridge;
    proxy.shutdown().await;
    let reply = stream.await.unwrap();
    assert_eq!(reply.events().last().unwrap()["type"], "response.completed");
    sim.wait_for(|s| s.sockets_open == 0, PATIENCE)
        .await
        .expect("the pool closes its sockets on shutdown");
}

#[tokio::test]
async fn metrics_expose_every_documented_series_from_the_start() {
    let bridge = bridge().await;
    let text = bridge.metrics().await;
    // README's operations table is the list of series users are told about.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .lines()
        .find(|line| line.starts_with("| `GET /metrics`"))
        .expect("README documents /metrics");
    let documented: Vec<&str> = table
        .split('`')
        .filter(|part| part.starts_with("wsbridge_"))
        .map(|part| part.split('{').next().unwrap())
        .collect();
    assert!(documented.len() >= 10, "{documented:?}");
    for name in documented {
        assert!(
            text.lines()
                .any(|line| line.starts_with(&format!("{name}{{"))
                    || line.starts_with(&format!("{name} "))
                    || line.starts_with(&format!("{name}_bucket{{"))),
            "{name} has no sample before first use:\n{text}"
        );
    }
    assert_eq!(
        metric(&text, "wsbridge_continuations_total{outcome=\"recovered\"}"),
        0.0
    );
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
