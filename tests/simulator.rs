//! The simulator, observed from a client over real sockets (port 0): the wire behaviour of
//! OpenAI's Responses API over REST and WebSocket mode, its scripted model, latency and stats.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use serde_json::{Value, json};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::latency::LatencyModel;
use wsbridge::simulator::stats::Transport;

#[tokio::test]
async fn rest_non_streaming_returns_the_response_object() {
    let sim = default_simulator().await;
    let reply = post_json(&sim.base_url(), &greeting()).await;
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
    let mut body = greeting();
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
    let missing = request("POST", &url, None, Some(greeting().to_string())).await;
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
        Some(greeting().to_string()),
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
    let first = post_json(&sim.base_url(), &greeting()).await.json();
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

#[tokio::test]
async fn function_call_stream_has_the_documented_events() {
    let sim = default_simulator().await;
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    ws.create(json!({"model": "gpt-test", "input": "find it", "tools": lookup_tools()}))
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
    ws.create(json!({"model": "gpt-test", "input": "plan a trip", "tools": lookup_tools(), "metadata": metadata, "store": false})).await;
    let mut response = final_response(&ws.turn().await).clone();
    let mut calls = 0;
    while response["output"][0]["type"] == "function_call" {
        calls += 1;
        let output = json!({"type": "function_call_output", "call_id": response["output"][0]["call_id"], "output": format!("result-{calls}")});
        ws.create(
            json!({"model": "gpt-test", "input": [output], "tools": lookup_tools(), "metadata": metadata,
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
    post_json(&sim.base_url(), &greeting()).await;
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
