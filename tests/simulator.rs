//! The simulator, observed from a client over real sockets (port 0): the wire behaviour of
//! OpenAI's Responses API in WebSocket mode and over REST.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsbridge::config::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::latency::LatencyModel;
use wsbridge::simulator::stats::{Outcome, Transport};

fn hello() -> Value {
    json!({"model": "gpt-test", "input": "hello there"})
}

/// The default simulator with output tokens `ms` apart, so concurrency becomes visible.
fn paced(ms: u64) -> SimulatorConfig {
    SimulatorConfig {
        latency: LatencyModel {
            per_token: Duration::from_millis(ms),
            ..LatencyModel::NONE
        },
        ..SimulatorConfig::default()
    }
}

fn tools() -> Value {
    json!([{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}])
}

// ---------------------------------------------------------------- REST

#[tokio::test]
async fn rest_non_streaming_returns_the_response_object() {
    let sim = default_simulator().await;
    let reply = post_json(&sim.base_url(), &hello()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(
        reply.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let response = reply.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert!(output_text(&response).starts_with("You said: hello there."));
    assert!(response["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn rest_streaming_is_sse_framed_exactly_like_openai() {
    let sim = default_simulator().await;
    let mut body = hello();
    body["stream"] = json!(true);
    let reply = post_json(&sim.base_url(), &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let events = reply.events();
    let kinds = types(&events);
    assert_eq!(&kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(kinds.last(), Some(&"response.completed"));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i as u64);
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, output_text(final_response(&events)));
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["output"], json!([]));
}

#[tokio::test]
async fn websocket_and_rest_play_the_same_event_sequence() {
    let sim = default_simulator().await;
    let mut body = json!({"model": "gpt-test", "input": "same", "reasoning": {"effort": "low", "summary": "auto"}});
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(body.clone()).await;
    let over_ws = ws.turn().await;
    body["stream"] = json!(true);
    let over_rest = post_json(&sim.base_url(), &body).await.events();
    assert_eq!(types(&over_ws), types(&over_rest));
    assert_eq!(
        output_text(final_response(&over_ws)),
        output_text(final_response(&over_rest))
    );
}

#[tokio::test]
async fn missing_or_unknown_keys_get_a_401_without_upgrade() {
    let config = SimulatorConfig {
        accepted_keys: vec![KEY.to_owned()],
        ..SimulatorConfig::default()
    };
    let sim = simulator(config).await;
    let url = format!("{}/responses", sim.base_url());
    let missing = request("POST", &url, None, Some(hello().to_string())).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.headers["www-authenticate"],
        "Bearer realm=\"OpenAI API\""
    );
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
    let wrong = request(
        "POST",
        &url,
        Some("sk-wrong-key-123456"),
        Some(hello().to_string()),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    assert!(
        !wrong.body.contains("sk-wrong-key-123456"),
        "the key is masked in the message"
    );
    match ws_connect(&sim.ws_url(), "sk-wrong-key-123456").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected an HTTP 401 refusal, got {:?}", other.map(|_| ())),
    }
    assert!(ws_connect(&sim.ws_url(), KEY).await.is_ok());
}

#[tokio::test]
async fn rest_bad_input_gets_openai_shaped_400s() {
    let sim = default_simulator().await;
    let url = format!("{}/responses", sim.base_url());
    let not_json = request("POST", &url, Some(KEY), Some("{nope".into())).await;
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not parse the JSON body")
    );
    let cases = [
        (json!([1, 2]), None),
        (json!({"input": "hi"}), Some("model")),
        (json!({"model": 5, "input": "hi"}), Some("model")),
        (json!({"model": "m"}), Some("input")),
        (json!({"model": "m", "input": 7}), Some("input")),
        (
            json!({"model": "m", "input": [{"type": "bogus"}]}),
            Some("input[0].type"),
        ),
        (
            json!({"model": "m", "input": [{"role": "user"}]}),
            Some("input[0].content"),
        ),
        (
            json!({"model": "m", "input": "x", "generate": false}),
            Some("generate"),
        ),
        (
            json!({"model": "m", "input": "x", "stream_id": "a"}),
            Some("stream_id"),
        ),
    ];
    for (body, param) in cases {
        let reply = post_json(&sim.base_url(), &body).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"].as_str(), param, "{body}: {error}");
    }
}

#[tokio::test]
async fn rest_hydrates_stored_responses_and_misses_unstored_ones() {
    let sim = default_simulator().await;
    let first = post_json(&sim.base_url(), &hello()).await.json();
    let follow =
        json!({"model": "gpt-test", "input": "and then", "previous_response_id": first["id"]});
    let second = post_json(&sim.base_url(), &follow).await;
    assert_eq!(second.status, 200);
    assert!(output_text(&second.json()).starts_with("You said: and then."));
    assert!(sim.stats().turns.last().unwrap().hydrated);

    let unstored = post_json(
        &sim.base_url(),
        &json!({"model": "gpt-test", "input": "x", "store": false}),
    )
    .await
    .json();
    let miss = post_json(
        &sim.base_url(),
        &json!({"model": "gpt-test", "input": "y", "previous_response_id": unstored["id"]}),
    )
    .await;
    assert_eq!(miss.status, 400);
    assert_eq!(miss.json()["error"]["code"], "previous_response_not_found");
    assert_eq!(miss.json()["error"]["param"], "previous_response_id");

    let fetched = request(
        "GET",
        &format!(
            "{}/responses/{}",
            sim.base_url(),
            first["id"].as_str().unwrap()
        ),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(fetched.json()["id"], first["id"]);
    let absent = request(
        "GET",
        &format!(
            "{}/responses/{}",
            sim.base_url(),
            unstored["id"].as_str().unwrap()
        ),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(absent.status, 404);
}

#[tokio::test]
async fn unknown_paths_get_an_openai_404() {
    let sim = default_simulator().await;
    let reply = request("GET", &format!("{}/nope", sim.base_url()), Some(KEY), None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["error"]["message"],
        "Invalid URL (GET /v1/nope)"
    );
}

// ---------------------------------------------------------------- the scripted model

#[tokio::test]
async fn function_call_stream_has_the_documented_events() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "find it", "tools": tools()}))
        .await;
    let events = ws.turn().await;
    let kinds = types(&events);
    assert_eq!(kinds[2], "response.output_item.added");
    assert!(kinds.contains(&"response.function_call_arguments.delta"));
    assert!(
        !kinds.contains(&"response.content_part.added"),
        "no content parts for function calls"
    );
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done["name"], "lookup");
    let call = &final_response(&events)["output"][0];
    assert_eq!(call["type"], "function_call");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(done["arguments"], call["arguments"]);
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["step"], 1);
}

#[tokio::test]
async fn tool_loop_answers_from_the_whole_conversation_after_n_outputs() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let metadata = json!({"sim_tool_calls": "3"});
    ws.create(json!({"model": "gpt-test", "input": "plan a trip", "tools": tools(), "metadata": metadata, "store": false})).await;
    let mut response = final_response(&ws.turn().await).clone();
    let mut calls = 0;
    while response["output"][0]["type"] == "function_call" {
        calls += 1;
        let output = json!({"type": "function_call_output", "call_id": response["output"][0]["call_id"], "output": format!("result-{calls}")});
        ws.create(
            json!({"model": "gpt-test", "input": [output], "tools": tools(), "metadata": metadata,
                         "store": false, "previous_response_id": response["id"]}),
        )
        .await;
        response = final_response(&ws.turn().await).clone();
    }
    assert_eq!(calls, 3);
    let text = output_text(&response);
    assert!(
        text.starts_with("You said: plan a trip. Tool said: result-3."),
        "{text}"
    );
    // Stats are recorded just after the terminal event goes out: wait for all four turns.
    let stats = sim
        .wait_for(|s| s.turns_total == 4, PATIENCE)
        .await
        .unwrap();
    assert!(
        stats.turns[1..]
            .iter()
            .all(|t| t.continued && t.input_items == 1),
        "{:?}",
        stats.turns
    );
}

#[tokio::test]
async fn a_wrong_history_gives_a_visibly_different_answer() {
    let sim = default_simulator().await;
    let ask = |history: Value| {
        let base = sim.base_url();
        async move {
            output_text(
                &post_json(&base, &json!({"model": "gpt-test", "input": history}))
                    .await
                    .json(),
            )
        }
    };
    let right = ask(json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])).await;
    let same = ask(json!([{"role": "user", "content": [{"type": "input_text", "text": "a"}]},
                         {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
                         {"role": "user", "content": "c"}])).await;
    let wrong =
        ask(json!([{"role": "user", "content": "a"}, {"role": "user", "content": "c"}])).await;
    assert_eq!(
        right, same,
        "SDK round-trip shapes are the same conversation"
    );
    assert_ne!(right, wrong);
}

#[tokio::test]
async fn reasoning_items_carry_encrypted_content_only_when_included() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let body = json!({"model": "gpt-test", "input": "think", "reasoning": {"effort": "low", "summary": "auto"}});
    ws.create(body.clone()).await;
    let events = ws.turn().await;
    let kinds = types(&events);
    for kind in [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ] {
        assert!(kinds.contains(&kind), "missing {kind}");
    }
    let output = &final_response(&events)["output"];
    assert_eq!(output[0]["type"], "reasoning");
    assert!(output[0].get("encrypted_content").is_none());
    assert_eq!(output[1]["type"], "message");
    assert!(
        final_response(&events)["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let mut with_include = body;
    with_include["include"] = json!(["reasoning.encrypted_content"]);
    ws.create(with_include).await;
    let output = final_response(&ws.turn().await)["output"].clone();
    assert!(
        output[0]["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with("gAAAA")
    );
}

#[tokio::test]
async fn unstored_reasoning_items_sent_back_by_id_are_rejected() {
    let sim = default_simulator().await;
    let body = json!({"model": "gpt-test", "input": "think", "store": false, "reasoning": {"effort": "low"}});
    let first = post_json(&sim.base_url(), &body).await.json();
    let reasoning = first["output"][0].clone();
    let resend = json!({"model": "gpt-test", "store": false, "input": [{"role": "user", "content": "think"}, reasoning, {"role": "user", "content": "more"}]});
    let reply = post_json(&sim.base_url(), &resend).await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Items are not persisted when `store` is set to false")
    );
    assert_eq!(error["param"], "input");
    assert_eq!(error["code"], Value::Null);
}

#[tokio::test]
async fn refusals_stream_as_refusal_parts() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "bad", "metadata": {"sim_refuse": "true"}}))
        .await;
    let events = ws.turn().await;
    let kinds = types(&events);
    assert!(kinds.contains(&"response.refusal.delta") && kinds.contains(&"response.refusal.done"));
    assert!(!kinds.contains(&"response.output_text.delta"));
    let part = &final_response(&events)["output"][0]["content"][0];
    assert_eq!(part["type"], "refusal");
    assert!(part["refusal"].as_str().unwrap().starts_with("I'm sorry"));
}

#[tokio::test]
async fn max_output_tokens_ends_with_response_incomplete() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "long", "max_output_tokens": 4}))
        .await;
    let events = ws.turn().await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(output_text(&last["response"]).split(' ').count(), 4);
}

#[tokio::test]
async fn obfuscation_can_be_turned_off() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "x", "stream_options": {"include_obfuscation": false}})).await;
    let events = ws.turn().await;
    assert!(events.iter().all(|e| e.get("obfuscation").is_none()));
}

// ---------------------------------------------------------------- WebSocket state

#[tokio::test]
async fn socket_cache_continues_its_latest_response_only() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "one", "store": false}))
        .await;
    let first = final_response(&ws.turn().await)["id"].clone();
    ws.create(
        json!({"model": "gpt-test", "input": "two", "store": false, "previous_response_id": first}),
    )
    .await;
    let second = final_response(&ws.turn().await).clone();
    assert!(output_text(&second).starts_with("You said: two."));
    let stats = sim
        .wait_for(|s| s.turns_total == 2, PATIENCE)
        .await
        .unwrap();
    assert!(stats.turns[1].continued);

    // The socket now holds only `second`; with store=false, `first` is gone.
    ws.create(json!({"model": "gpt-test", "input": "fork", "store": false, "previous_response_id": first})).await;
    let error = ws.turn().await.pop().unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 400);
    assert_eq!(error["error"]["code"], "previous_response_not_found");
    assert_eq!(error["error"]["param"], "previous_response_id");

    // A request-scoped error leaves the socket open and its state intact.
    ws.create(json!({"model": "gpt-test", "input": "three", "store": false, "previous_response_id": second["id"]})).await;
    assert_eq!(ws.outcome().await, "response.completed");
}

#[tokio::test]
async fn unstored_responses_are_invisible_to_other_sockets_and_stored_ones_hydrate() {
    let sim = default_simulator().await;
    let mut a = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let mut b = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    a.create(json!({"model": "gpt-test", "input": "secret", "store": false}))
        .await;
    let unstored = final_response(&a.turn().await)["id"].clone();
    b.create(json!({"model": "gpt-test", "input": "x", "store": false, "previous_response_id": unstored})).await;
    assert_eq!(
        b.turn().await.last().unwrap()["error"]["code"],
        "previous_response_not_found"
    );

    a.create(json!({"model": "gpt-test", "input": "kept"}))
        .await;
    let stored = final_response(&a.turn().await)["id"].clone();
    b.create(json!({"model": "gpt-test", "input": "y", "previous_response_id": stored}))
        .await;
    assert_eq!(b.outcome().await, "response.completed");
    let stats = sim
        .wait_for(|s| s.turns_total == 4, PATIENCE)
        .await
        .unwrap();
    let last = stats.turns.last().unwrap();
    assert!(last.hydrated && !last.continued);
}

#[tokio::test]
async fn a_failed_continuation_evicts_its_parent() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "one", "store": false}))
        .await;
    let parent = final_response(&ws.turn().await)["id"].clone();
    ws.create(
        json!({"model": "gpt-test", "input": "x", "store": false, "previous_response_id": parent,
                     "metadata": {"sim_fault": "response_failed"}}),
    )
    .await;
    let failed = ws.turn().await;
    assert_eq!(failed.last().unwrap()["type"], "response.failed");
    assert_eq!(final_response(&failed)["error"]["code"], "server_error");
    ws.create(json!({"model": "gpt-test", "input": "retry", "store": false, "previous_response_id": parent})).await;
    assert_eq!(
        ws.turn().await.last().unwrap()["error"]["code"],
        "previous_response_not_found"
    );
}

#[tokio::test]
async fn generate_false_warms_up_a_chainable_empty_response() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "prepare", "generate": false, "store": false, "tools": tools()})).await;
    let events = ws.turn().await;
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.completed"
        ]
    );
    let warm = final_response(&events);
    assert_eq!(warm["status"], "completed");
    assert_eq!(warm["output"], json!([]));
    assert_eq!(warm["usage"]["output_tokens"], 0);
    assert!(warm["usage"]["input_tokens"].as_u64().unwrap() > 0);
    ws.create(json!({"model": "gpt-test", "input": [], "store": false, "previous_response_id": warm["id"]})).await;
    let answer = final_response(&ws.turn().await).clone();
    assert!(
        output_text(&answer).starts_with("You said: prepare."),
        "the warmed context is used"
    );
    assert!(sim.stats().turns[0].warmup);
}

#[tokio::test]
async fn creates_on_one_lane_run_one_at_a_time_in_order() {
    let sim = simulator(paced(2)).await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "first"}))
        .await;
    ws.create(json!({"model": "gpt-test", "input": "second"}))
        .await;
    let first = ws.turn().await;
    let second = ws.turn().await;
    assert!(output_text(final_response(&first)).starts_with("You said: first."));
    assert!(output_text(final_response(&second)).starts_with("You said: second."));
    assert_eq!(
        second[0]["sequence_number"], 0,
        "sequence numbers restart per response"
    );
}

#[tokio::test]
async fn named_lanes_run_concurrently_and_echo_their_stream_id() {
    let sim = simulator(paced(5)).await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "left", "stream_id": "a"}))
        .await;
    ws.create(json!({"model": "gpt-test", "input": "right", "stream_id": "b"}))
        .await;
    let mut completed = Vec::new();
    let mut order = Vec::new();
    while completed.len() < 2 {
        let event = ws.event().await;
        let lane = event["stream_id"]
            .as_str()
            .expect("named-lane events carry stream_id")
            .to_owned();
        order.push(lane.clone());
        if event["type"] == "response.completed" {
            completed.push(lane);
        }
    }
    let b_started = order.iter().position(|l| l == "b").unwrap();
    let a_finished = order.iter().rposition(|l| l == "a").unwrap();
    assert!(b_started < a_finished, "lanes interleave: {order:?}");
}

#[tokio::test]
async fn the_in_flight_cap_queues_extra_lanes() {
    let sim = simulator(SimulatorConfig {
        max_in_flight: 1,
        ..paced(2)
    })
    .await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "left", "stream_id": "a"}))
        .await;
    ws.create(json!({"model": "gpt-test", "input": "right", "stream_id": "b"}))
        .await;
    let first = ws.turn().await;
    let second = ws.turn().await;
    assert!(first.iter().all(|e| e["stream_id"] == "a"));
    assert!(second.iter().all(|e| e["stream_id"] == "b"));
}

#[tokio::test]
async fn stream_ids_are_validated_and_named_lanes_are_capped() {
    let sim = simulator(SimulatorConfig {
        max_named_lanes: 2,
        ..SimulatorConfig::default()
    })
    .await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(257)),
        json!(7),
    ] {
        ws.create(json!({"model": "gpt-test", "input": "x", "stream_id": bad}))
            .await;
        let error = ws.event().await;
        assert_eq!(error["error"]["code"], "invalid_stream_id", "{bad}");
        assert_eq!(error["error"]["param"], "stream_id");
    }
    for lane in ["a", "b"] {
        ws.create(json!({"model": "gpt-test", "input": "x", "stream_id": lane}))
            .await;
        assert_eq!(ws.outcome().await, "response.completed");
    }
    ws.create(json!({"model": "gpt-test", "input": "x", "stream_id": "c"}))
        .await;
    let error = ws.event().await;
    assert_eq!(error["error"]["code"], "websocket_stream_limit_reached");
    assert_eq!(error["stream_id"], "c");
    ws.create(json!({"model": "gpt-test", "input": "x", "stream_id": "a"}))
        .await;
    assert_eq!(
        ws.outcome().await,
        "response.completed",
        "existing lanes still work"
    );
}

#[tokio::test]
async fn background_is_rejected_over_websocket() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "x", "background": true}))
        .await;
    let error = ws.event().await;
    assert_eq!(error["status"], 400);
    assert_eq!(error["error"]["param"], "background");
    ws.create(hello()).await;
    assert_eq!(ws.outcome().await, "response.completed");
}

#[tokio::test]
async fn bad_frames_get_error_events_and_the_socket_stays_open() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.send_raw("{not json").await;
    assert_eq!(ws.event().await["error"]["code"], "invalid_json");
    ws.send(json!({"type": "response.cancel"})).await;
    assert_eq!(ws.event().await["error"]["param"], "type");
    ws.send(json!({"model": "gpt-test"})).await;
    assert_eq!(
        ws.event().await["error"]["code"],
        "missing_required_parameter"
    );
    ws.create(json!({"input": "x"})).await;
    assert_eq!(ws.event().await["error"]["param"], "model");
    ws.create(json!({"model": "gpt-test", "input": [{"type": "message", "role": "robot", "content": "x"}]})).await;
    assert_eq!(ws.event().await["error"]["param"], "input[0].role");
    ws.socket
        .send(Message::Binary(vec![1, 2].into()))
        .await
        .unwrap();
    assert_eq!(ws.event().await["status"], 400);
    ws.create(json!({"model": "gpt-test", "input": "still here", "stream": true}))
        .await;
    let events = ws.turn().await;
    assert!(output_text(final_response(&events)).starts_with("You said: still here."));
    assert_eq!(sim.stats().sockets_opened, 1);
}

#[tokio::test]
async fn pings_are_answered_and_query_strings_accepted() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&format!("{}?model=gpt-test&x=1", sim.ws_url()), KEY)
        .await
        .unwrap();
    ws.socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        use futures_util::StreamExt;
        loop {
            if let Some(Ok(Message::Pong(data))) = ws.socket.next().await {
                return data;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"are you there");
}

#[tokio::test]
async fn an_idle_socket_past_its_age_gets_the_limit_error_then_closes() {
    let sim = simulator(SimulatorConfig {
        max_connection_age: Duration::from_millis(300),
        ..SimulatorConfig::default()
    })
    .await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let (events, code) = ws.until_closed().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["error"]["code"],
        "websocket_connection_limit_reached"
    );
    assert_eq!(events[0]["status"], 400);
    assert!(
        events[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Responses websocket connection limit reached (1 minutes)")
    );
    assert_eq!(code, Some(1000));
    sim.wait_for(|s| s.sockets_closed == 1, PATIENCE)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_busy_socket_refuses_creates_past_its_age_but_finishes_the_turn_in_flight() {
    let sim = simulator(SimulatorConfig {
        max_connection_age: Duration::from_millis(300),
        ..SimulatorConfig::default()
    })
    .await;
    let connected = Instant::now();
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "slow", "metadata": {"sim_fault": "stall_within:1500"}})).await;
    // The server's clock started after `connected`, so this is past its deadline while the
    // turn is still stalled.
    tokio::time::sleep_until(connected + Duration::from_millis(450)).await;
    ws.create(hello()).await;
    let (events, code) = ws.until_closed().await;
    let kinds = types(&events);
    assert_eq!(
        kinds.iter().filter(|k| **k == "response.created").count(),
        1,
        "the late create never started: {kinds:?}"
    );
    assert!(
        kinds.contains(&"response.completed"),
        "the in-flight turn finished: {kinds:?}"
    );
    let errors: Vec<&Value> = events.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0]["error"]["code"],
        "websocket_connection_limit_reached"
    );
    assert_eq!(code, Some(1000));
}

// ---------------------------------------------------------------- faults

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
    ws.create(hello()).await;
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
    ws.create(hello()).await;
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
        ws.create(hello()).await;
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

// ---------------------------------------------------------------- latency, stats, lifecycle

#[tokio::test]
async fn latency_model_paces_the_stream() {
    let sim = simulator(SimulatorConfig {
        latency: LatencyModel {
            ttft: Duration::from_millis(120),
            per_token: Duration::from_millis(10),
            ..LatencyModel::NONE
        },
        ..SimulatorConfig::default()
    })
    .await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    let started = Instant::now();
    ws.create(json!({"model": "gpt-test", "input": "x", "metadata": {"sim_words": "10"}}))
        .await;
    let events = ws.turn().await;
    let deltas = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .count() as u32;
    assert_eq!(deltas, 10);
    assert!(
        started.elapsed() >= Duration::from_millis(120) + Duration::from_millis(10) * (deltas - 1)
    );
}

#[tokio::test]
async fn stats_count_sockets_turns_items_and_bytes() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), "sk-key-a").await.unwrap();
    let frame = json!({"type": "response.create", "model": "gpt-test", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "store": false});
    ws.send(frame.clone()).await;
    let first = final_response(&ws.turn().await)["id"].clone();
    ws.create(json!({"model": "gpt-test", "input": [{"role": "user", "content": "c"}], "store": false, "previous_response_id": first})).await;
    ws.turn().await;
    post_json(&sim.base_url(), &hello()).await;
    drop(ws);
    let stats = sim
        .wait_for(|s| s.sockets_closed == 1 && s.turns_total == 3, PATIENCE)
        .await
        .unwrap();
    assert_eq!(stats.keys["sk-key-a"].sockets_opened, 1);
    assert_eq!(stats.turns[0].bytes, frame.to_string().len());
    assert_eq!(
        (stats.turns[0].input_items, stats.turns[0].continued),
        (2, false)
    );
    assert_eq!(
        (stats.turns[1].input_items, stats.turns[1].continued),
        (1, true)
    );
    assert_eq!(stats.turns[2].transport, Transport::Rest);
    let over_http = request(
        "GET",
        &format!("http://{}/sim/stats", sim.addr()),
        None,
        None,
    )
    .await
    .json();
    assert_eq!(over_http["turns_total"], 3);
    assert_eq!(over_http["turns"][1]["continued"], true);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    sim.shutdown().await;
    let (_, code) = ws.until_closed().await;
    assert_eq!(code, Some(1001));
}
