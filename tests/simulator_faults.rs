//! The simulator's faults on demand: closes, errors, stalls, keep-alives, refused upgrades,
//! every-Nth-turn faults and faults set over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use serde_json::{Value, json};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::stats::Outcome;

#[tokio::test]
async fn close_mid_stream_drops_the_socket_without_a_terminal_event() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(
        json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "close_mid_stream"}}),
    )
    .await;
    let (events, _) = ws.until_closed().await;
    assert!(types(&events).contains(&"response.output_text.delta"));
    assert!(!events.iter().any(is_terminal));
    let stats = sim
        .wait_for(|s| s.sockets_closed == 1, PATIENCE)
        .await
        .unwrap();
    assert_eq!(stats.turns[0].outcome, Outcome::Closed);
}

#[tokio::test]
async fn close_mid_stream_also_closes_reasoning_turns() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(
        json!({"model": "gpt-test", "input": "x", "reasoning": {"effort": "medium"},
                     "metadata": {"sim_fault": "close_mid_stream"}}),
    )
    .await;
    let (events, _) = ws.until_closed().await;
    assert!(!events.iter().any(is_terminal), "{:?}", types(&events));
}

#[tokio::test]
async fn oversized_scripts_are_refused() {
    let sim = default_simulator().await;
    for metadata in [
        json!({"sim_words": "4000000000"}),
        json!({"sim_fault": "keepalive:4000000000"}),
    ] {
        let reply = post_json(
            &sim.base_url(),
            &json!({"model": "gpt-test", "input": "x", "metadata": metadata}),
        )
        .await;
        assert_eq!(reply.status, 400, "{metadata}");
    }
}

#[tokio::test]
async fn close_mid_stream_breaks_a_rest_stream_off() {
    let sim = default_simulator().await;
    let body = json!({"model": "gpt-test", "input": "x", "stream": true, "metadata": {"sim_fault": "close_mid_stream"}});
    let (status, text, clean) =
        request_partial(&format!("{}/responses", sim.base_url()), &body).await;
    assert_eq!(status, 200);
    assert!(!clean, "the body must break off, not end cleanly");
    assert!(text.contains("response.output_text.delta") && !text.contains("response.completed"));
}

#[tokio::test]
async fn close_before_created_sends_nothing() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "close_before_created"}})).await;
    let (events, _) = ws.until_closed().await;
    assert!(events.is_empty());
}

#[tokio::test]
async fn error_directives_answer_with_the_given_status_and_code() {
    let sim = default_simulator().await;
    let body = json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "error:429:rate_limit_exceeded"}});
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(body.clone()).await;
    let error = ws.event().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 429);
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let reply = post_json(&sim.base_url(), &body).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    ws.create(greeting()).await;
    assert_eq!(ws.outcome().await, "response.completed");
}

#[tokio::test]
async fn response_failed_over_rest_non_streaming_is_a_500() {
    let sim = default_simulator().await;
    let reply = post_json(
        &sim.base_url(),
        &json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "response_failed"}}),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["code"], "server_error");
    assert_eq!(reply.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn stream_error_ends_the_stream_with_a_flat_error_event() {
    let sim = default_simulator().await;
    let mut body = json!({"model": "gpt-test", "input": "x", "stream": true,
                          "metadata": {"sim_fault": "stream_error:server_error"}});
    let events = post_json(&sim.base_url(), &body).await.events();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "server_error");
    assert!(last.get("error").is_none(), "the in-stream error is flat");
    assert_eq!(last["sequence_number"], events.len() as u64 - 1);
    assert!(types(&events).contains(&"response.output_text.delta"));
    body.as_object_mut().unwrap().remove("stream");
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(body).await;
    assert_eq!(ws.turn().await.last().unwrap()["code"], "server_error");
    ws.create(greeting()).await;
    assert_eq!(ws.outcome().await, "response.completed");
}

#[tokio::test]
async fn the_upgrade_answer_carries_no_request_id() {
    let sim = default_simulator().await;
    let ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    assert!(ws.handshake.get("x-request-id").is_none());
}

#[tokio::test]
async fn keepalive_events_take_sequence_numbers() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "keepalive:2"}}))
        .await;
    let events = ws.turn().await;
    assert_eq!(
        &types(&events)[..4],
        [
            "response.created",
            "response.in_progress",
            "keepalive",
            "keepalive"
        ]
    );
    assert_eq!(events[3]["sequence_number"], 3);
    assert_eq!(
        events[3].as_object().unwrap().len(),
        2,
        "keepalive carries only type and sequence_number"
    );
}

#[tokio::test]
async fn stalls_delay_the_stream() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let started = Instant::now();
    ws.create(
        json!({"model": "gpt-test", "input": "x", "metadata": {"sim_fault": "stall_before:150"}}),
    )
    .await;
    ws.event().await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "response.created came before the stall ended"
    );
    ws.turn().await;
}

#[tokio::test]
async fn upgrades_can_be_refused_with_a_given_status() {
    let sim = default_simulator().await;
    for status in [426u16, 429, 503, 401] {
        sim.set_faults(FaultConfig {
            upgrade_status: status,
            upgrade_count: 1,
            ..FaultConfig::default()
        })
        .unwrap();
        match ws_connect(&sim.ws_url(), KEY).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status);
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert!(body["error"]["message"].is_string());
            }
            other => panic!("expected {status}, got {:?}", other.map(|_| ())),
        }
        assert!(
            ws_connect(&sim.ws_url(), KEY).await.is_ok(),
            "only `upgrade_count` upgrades are refused"
        );
    }
    assert_eq!(sim.stats().upgrades_refused, 4);
}

#[tokio::test]
async fn sockets_can_be_closed_right_after_the_upgrade() {
    let sim = default_simulator().await;
    sim.set_faults(FaultConfig {
        close_after_upgrade: 1,
        ..FaultConfig::default()
    })
    .unwrap();
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let (events, _) = ws.until_closed().await;
    assert!(events.is_empty());
}

#[tokio::test]
async fn configured_faults_hit_every_nth_turn() {
    let sim = simulator(SimulatorConfig {
        faults: FaultConfig {
            turn: "response_failed".into(),
            turn_every: 2,
            ..FaultConfig::default()
        },
        ..SimulatorConfig::default()
    })
    .await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let mut last = Vec::new();
    for _ in 0..4 {
        ws.create(greeting()).await;
        last.push(ws.outcome().await);
    }
    assert_eq!(
        last,
        [
            "response.completed",
            "response.failed",
            "response.completed",
            "response.failed"
        ]
    );
}

#[tokio::test]
async fn faults_can_be_set_over_http() {
    let sim = default_simulator().await;
    let reply = request(
        "POST",
        &format!("http://{}/sim/faults", sim.addr()),
        None,
        Some(r#"{"upgrade_status":503}"#.into()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(ws_connect(&sim.ws_url(), KEY).await.is_err());
    let bad = request(
        "POST",
        &format!("http://{}/sim/faults", sim.addr()),
        None,
        Some(r#"{"turn":"explode"}"#.into()),
    )
    .await;
    assert_eq!(bad.status, 400);
}
