//! The upstream's 60-minute connection limit hidden from a relayed client socket: upstream
//! sockets that age out, drop or report the limit between turns are replaced, and `store: false`
//! chains go on with the rebuilt input, with the answers of a direct run.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;

use common::{Bridge, KEY, Seen, Ws, bridge_with, final_response, output_text};

fn relay_url(bridge: &Bridge) -> String {
    format!("ws://{}/v1/responses", bridge.proxy.addr())
}

async fn relayed(bridge: &Bridge) -> Ws {
    common::ws_connect(&relay_url(bridge), KEY).await.unwrap()
}

/// Chains rebuilt on a fresh upstream socket so far.
async fn rebuilt(bridge: &Bridge) -> f64 {
    bridge
        .metric("wsbridge_relay_context_rebuilds_total{outcome=\"rebuilt\"}")
        .await
}

/// One `store: false` turn of a chain: `text` as the user's message, continuing `previous`.
fn chain_turn(text: &str, previous: Option<&str>) -> Value {
    let mut body =
        json!({"model": "gpt-test", "store": false, "input": [{"role": "user", "content": text}]});
    if let Some(previous) = previous {
        body["previous_response_id"] = json!(previous);
    }
    body
}

/// Runs a 12-turn `store: false` chain on `ws`, `pause` apart; returns each answer's text.
async fn twelve_turns(ws: &mut Ws, pause: Duration) -> Vec<String> {
    let mut previous: Option<String> = None;
    let mut answers = Vec::new();
    for turn in 0..12 {
        ws.create(chain_turn(&format!("turn {turn}"), previous.as_deref()))
            .await;
        let events = ws.turn().await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed", "turn {turn}: {last}");
        let response = final_response(&events);
        previous = Some(response["id"].as_str().unwrap().to_owned());
        answers.push(output_text(response));
        tokio::time::sleep(pause).await;
    }
    answers
}

/// The same chain straight against a simulator that never ages its sockets.
async fn direct_answers() -> Vec<String> {
    let sim = common::default_simulator().await;
    let mut ws = common::ws_connect(&sim.ws_url(), KEY).await.unwrap();
    twelve_turns(&mut ws, Duration::ZERO).await
}

#[tokio::test]
async fn the_upstream_connection_limit_is_hidden_from_a_store_false_chain() {
    let direct = direct_answers().await;
    let bridge = bridge_with(
        SimulatorConfig {
            max_connection_age: Duration::from_secs(1),
            ..SimulatorConfig::default()
        },
        |_| {},
    )
    .await;
    let mut ws = relayed(&bridge).await;
    let answers = twelve_turns(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(answers, direct);
    assert_limit_hidden(&bridge, 3).await;
    let reported = bridge
        .metric("wsbridge_relay_upstream_switches_total{reason=\"limit_reached\"}")
        .await;
    assert!(
        reported >= 2.0,
        "the upstream reported its limit {reported} times, unseen"
    );
}

#[tokio::test]
async fn a_socket_past_pool_max_age_is_replaced_between_turns() {
    let direct = direct_answers().await;
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_age = Duration::from_millis(800);
    })
    .await;
    let mut ws = relayed(&bridge).await;
    let answers = twelve_turns(&mut ws, Duration::from_millis(250)).await;
    assert_eq!(answers, direct);
    assert_limit_hidden(&bridge, 3).await;
    assert!(
        bridge
            .metric("wsbridge_relay_upstream_switches_total{reason=\"max_age\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn an_upstream_socket_killed_between_turns_is_replaced_and_the_chain_goes_on() {
    let direct = direct_answers().await;
    let bridge = bridge_with(SimulatorConfig::default(), |_| {}).await;
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "close_after_turn".into(),
            turn_every: 4,
            ..FaultConfig::default()
        })
        .unwrap();
    let mut ws = relayed(&bridge).await;
    let answers = twelve_turns(&mut ws, Duration::from_millis(20)).await;
    assert_eq!(answers, direct);
    assert_limit_hidden(&bridge, 3).await;
    assert!(
        bridge
            .metric("wsbridge_relay_upstream_switches_total{reason=\"dropped\"}")
            .await
            >= 2.0
    );
}

/// The chain spanned at least `sockets` upstream sockets, the upstream never answered
/// `previous_response_not_found`, and the continuations across sockets were rebuilt.
async fn assert_limit_hidden(bridge: &Bridge, sockets: usize) {
    let stats = bridge.sim.stats();
    let used = stats.sockets_for(KEY);
    assert!(used.len() >= sockets, "{} upstream sockets", used.len());
    assert!(
        stats.turns.iter().all(|t| t.error_code.is_none()),
        "{:?}",
        stats
            .turns
            .iter()
            .map(|t| &t.error_code)
            .collect::<Vec<_>>()
    );
    let rebuilt = rebuilt(bridge).await;
    assert!(rebuilt >= (sockets - 1) as f64, "{rebuilt} rebuilds");
}

#[tokio::test]
async fn a_chain_over_max_replay_bytes_gets_the_upstreams_error_unchanged() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.relay.max_replay_bytes = 64;
    })
    .await;
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "close_after_turn".into(),
            turn_every: 1,
            ..FaultConfig::default()
        })
        .unwrap();
    let mut ws = relayed(&bridge).await;
    ws.create(chain_turn("first", None)).await;
    let events = ws.turn().await;
    let id = final_response(&events)["id"].as_str().unwrap().to_owned();
    ws.create(chain_turn("second", Some(&id))).await;
    let Seen::Event(error) = ws.next().await else {
        panic!("the socket must stay open");
    };
    assert_eq!(error["type"], "error");
    assert_eq!(
        error["error"]["code"], "previous_response_not_found",
        "{error}"
    );
    assert_eq!(
        bridge
            .metric("wsbridge_relay_context_rebuilds_total{outcome=\"too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_create_answered_with_the_connection_limit_goes_again_on_a_fresh_socket_rebuilt() {
    let limit = json!({"type": "error", "status": 400, "error": {"type": "invalid_request_error", "code": "websocket_connection_limit_reached", "message": "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue."}});
    let upstream = common::scripted(move |index, _| match index {
        0 => common::answer("resp_1", "first answer"),
        1 => vec![limit.to_string(), common::CLOSE.into()],
        _ => common::answer("resp_2", "second answer"),
    })
    .await;
    let proxy = common::proxy_for(&upstream, |_| {}).await;
    let url = format!("ws://{}/v1/responses", proxy.addr());
    let mut ws = common::ws_connect(&url, KEY).await.unwrap();
    ws.create(chain_turn("one", None)).await;
    assert_eq!(ws.outcome().await, "response.completed");
    ws.create(chain_turn("two", Some("resp_1"))).await;
    let events = ws.turn().await;
    assert_eq!(
        output_text(final_response(&events)),
        "second answer",
        "no error shown"
    );
    let frames = upstream.frames();
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames[1]["previous_response_id"], "resp_1",
        "as the client sent it"
    );
    assert_eq!(
        frames[2].get("previous_response_id"),
        None,
        "rebuilt on the fresh socket"
    );
    assert_eq!(
        frames[2]["input"],
        json!([
            {"role": "user", "content": "one"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first answer", "annotations": []}]},
            {"role": "user", "content": "two"},
        ])
    );
    assert_eq!(
        upstream.sockets.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn interleaved_lanes_are_recorded_by_stream_id_and_rebuilt_on_a_fresh_socket() {
    let turn = |text: &str, lane: &str, words: &str, previous: Option<&str>| {
        let mut body = chain_turn(text, previous);
        body["stream_id"] = json!(lane);
        body["metadata"] = json!({"sim_words": words});
        body
    };
    // Straight to a simulator: alpha, then its continuation.
    let sim = common::default_simulator().await;
    let mut direct = common::ws_connect(&sim.ws_url(), KEY).await.unwrap();
    direct.create(turn("alpha", "a", "40", None)).await;
    let first = final_response(&direct.turn().await).clone();
    direct
        .create(turn("more", "a", "5", Some(first["id"].as_str().unwrap())))
        .await;
    let expected = output_text(final_response(&direct.turn().await));
    direct.create(turn("beta", "b", "2", None)).await;
    let first = final_response(&direct.turn().await).clone();
    direct
        .create(turn("again", "b", "5", Some(first["id"].as_str().unwrap())))
        .await;
    let expected_beta = output_text(final_response(&direct.turn().await));

    let bridge = bridge_with(common::paced(3), |config| {
        config.pool.max_age = Duration::from_millis(600);
    })
    .await;
    let mut ws = relayed(&bridge).await;
    ws.create(turn("alpha", "a", "40", None)).await;
    ws.create(turn("beta", "b", "2", None)).await;
    let mut completed = Vec::new();
    while completed.len() < 2 {
        let event = ws.event().await;
        if event["type"] == "response.completed" {
            completed.push(event);
        }
    }
    assert_eq!(completed[0]["stream_id"], "b", "the short lane ends first");
    let alpha = completed[1]["response"]["id"].as_str().unwrap().to_owned();
    let beta = completed[0]["response"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.create(turn("more", "a", "5", Some(&alpha))).await;
    let events = ws.turn().await;
    assert_eq!(output_text(final_response(&events)), expected);
    // Lane b's chain was kept beside lane a's, though lane a completed after it.
    ws.create(turn("again", "b", "5", Some(&beta))).await;
    let events = ws.turn().await;
    assert_eq!(output_text(final_response(&events)), expected_beta);
    assert_eq!(rebuilt(&bridge).await, 2.0);
}

#[tokio::test]
async fn a_reasoning_chain_goes_on_after_its_socket_ages_out() {
    // Reasoning items come back by id only (no `encrypted_content` asked for): a fresh socket
    // cannot load them, so the rebuilt input must leave them out.
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_age = Duration::from_millis(600);
    })
    .await;
    let mut ws = relayed(&bridge).await;
    let mut previous: Option<String> = None;
    for turn in 0..3 {
        let mut body = chain_turn(&format!("turn {turn}"), previous.as_deref());
        body["reasoning"] = json!({"effort": "low"});
        ws.create(body).await;
        let events = ws.turn().await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed", "turn {turn}: {last}");
        let response = final_response(&events);
        assert!(
            response["output"]
                .as_array()
                .unwrap()
                .iter()
                .any(|item| item["type"] == "reasoning"),
            "the simulator reasons: {response}"
        );
        assert!(
            output_text(response).contains(&format!("turn {turn}")),
            "{response}"
        );
        previous = Some(response["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(rebuilt(&bridge).await, 2.0);
}

/// An unknown client event sent mid-response gets the upstream's `error`, which answers that
/// frame and does not end the response: the session still knows a response is in flight, so
/// its socket is not replaced at `pool.max_age` before the response completes, and the
/// completed turn is recorded for the rebuild of the next one on a fresh socket.
#[tokio::test]
async fn an_error_answering_a_frame_sent_mid_response_does_not_end_the_response() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_age = Duration::from_millis(400);
    })
    .await;
    let max_age = "wsbridge_relay_upstream_switches_total{reason=\"max_age\"}";
    let mut ws = relayed(&bridge).await;
    let mut first = chain_turn("first", None);
    first["metadata"] = json!({"sim_fault": "stall_within:1500"});
    ws.create(first).await;
    assert_eq!(ws.event().await["type"], "response.created");
    ws.send(json!({"type": "response.unknown"})).await;
    let mut events = Vec::new();
    for round in 0..2 {
        let error = loop {
            let event = ws.event().await;
            if event["type"] == "error" {
                break event;
            }
            events.push(event);
        };
        assert_eq!(error["error"]["param"], "type", "{error}");
        if round == 0 {
            // Past max_age, still mid-response: the next frame must not switch sockets.
            tokio::time::sleep(Duration::from_millis(500)).await;
            ws.send(json!({"type": "response.unknown"})).await;
        }
    }
    events.extend(ws.turn().await);
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(bridge.metric(max_age).await, 0.0, "no switch mid-response");
    let id = final_response(&events)["id"].as_str().unwrap().to_owned();
    ws.create(chain_turn("second", Some(&id))).await;
    assert_eq!(ws.outcome().await, "response.completed");
    assert_eq!(bridge.metric(max_age).await, 1.0);
    assert_eq!(rebuilt(&bridge).await, 1.0);
}
