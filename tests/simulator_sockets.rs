//! The simulator's WebSocket sockets: the per-socket response cache, lanes and the in-flight
//! cap, bad frames, pings, and the connection age limit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::latency::LatencyModel;

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
    ws.create(json!({"model": "gpt-test", "input": "prepare", "generate": false, "store": false, "tools": lookup_tools()})).await;
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
    ws.create(greeting()).await;
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
    ws.create(greeting()).await;
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

/// One HTTP/1.1 connection to `addr`, opened now and kept open.
async fn http1_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET /v1/models` on `connection`, read to its end; when it ended.
async fn list_models(connection: &mut hyper::client::conn::http1::SendRequest<String>) -> Instant {
    use http_body_util::BodyExt;
    let request = hyper::Request::get("/v1/models")
        .header("host", "simulator")
        .header("authorization", format!("Bearer {KEY}"))
        .body(String::new())
        .unwrap();
    let response = connection.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    Instant::now()
}

#[tokio::test]
async fn a_new_connection_waits_for_its_handshakes_once() {
    const CONNECT: Duration = Duration::from_millis(500);
    const UPGRADE: Duration = Duration::from_millis(200);
    let sim = simulator(SimulatorConfig {
        latency: LatencyModel {
            connect: CONNECT,
            upgrade: UPGRADE,
            ..LatencyModel::NONE
        },
        ..SimulatorConfig::default()
    })
    .await;
    let opened = Instant::now();
    let mut kept = http1_connection(sim.addr()).await;
    assert!(list_models(&mut kept).await - opened >= CONNECT);

    // The kept connection's next request against a new connection's first, sent together: the
    // new one waits for its handshakes, the kept one has none left to wait for.
    let raced = Instant::now();
    let (again, fresh) = tokio::join!(list_models(&mut kept), async {
        let mut new = http1_connection(sim.addr()).await;
        list_models(&mut new).await
    });
    assert!(fresh - raced >= CONNECT);
    assert!(
        again < fresh,
        "the kept-alive request ended {:?} after the new connection's",
        again - fresh
    );

    // A WebSocket client also waits for its upgrade's round trip.
    let opened = Instant::now();
    let mut ws = ws_connect(&sim.ws_url(), KEY).await.unwrap();
    assert!(opened.elapsed() >= CONNECT + UPGRADE);
    ws.create(greeting()).await;
    assert_eq!(types(&ws.turn().await).last(), Some(&"response.completed"));
}
