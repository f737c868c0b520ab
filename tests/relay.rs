//! WebSocket clients on `GET /v1/responses`, relayed over pooled upstream sockets: frames as
//! they came both ways, the credential forms, bad frames, client hang-ups, and the upstream's
//! connection limit hidden from a `store: false` chain.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};
use wsbridge::config::{AuthConfig, Secret};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::stats::Outcome;

use common::{Bridge, KEY, PATIENCE, Seen, Ws, bridge_with, final_response, output_text};

fn relay_url(bridge: &Bridge) -> String {
    format!("ws://{}/v1/responses", bridge.proxy.addr())
}

async fn relayed(bridge: &Bridge) -> Ws {
    common::ws_connect(&relay_url(bridge), KEY).await.unwrap()
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
async fn frames_pass_unchanged_both_ways() {
    let created = r#"{"type":"response.created",  "sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[]}}"#;
    let odd =
        r#"{"type":"response.odd_future_event","sequence_number":1,"detail":{"a":[1, 2 ,3]}}"#;
    let completed = r#"{"type":"response.completed","sequence_number":2,"response":{"id":"resp_1","object":"response","status":"completed","output":[]}}"#;
    let upstream = common::scripted(move |_, frame| {
        if frame["type"] == "response.create" {
            vec![created.into(), odd.into(), completed.into()]
        } else {
            Vec::new()
        }
    })
    .await;
    let proxy = common::proxy_for(&upstream, |_| {}).await;
    let url = format!("ws://{}/v1/responses?trace=1", proxy.addr());
    let mut ws = common::ws_connect(&url, KEY).await.unwrap();
    let create = r#"{"type":"response.create", "model":"m","input":"hi","x_unknown":{"k":[1, 2]}}"#;
    let steer = r#"{"previous_response_id":"resp_1","type":"response.steer","input":"go on"}"#;
    ws.send_raw(create).await;
    for expected in [created, odd, completed] {
        let Some(Ok(Message::Text(text))) = ws.socket.next().await else {
            panic!("no event");
        };
        assert_eq!(
            text.as_str(),
            expected,
            "the upstream's bytes, as they were"
        );
    }
    ws.send_raw(steer).await;
    ws.socket.send(Message::Ping(vec![7].into())).await.unwrap();
    let pong = tokio::time::timeout(PATIENCE, ws.socket.next())
        .await
        .unwrap();
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref p))) if p[..] == [7]),
        "{pong:?}"
    );
    let uri = format!("{}uri:/v1/responses?trace=1", common::CLOSE);
    assert_eq!(
        *upstream.raw.lock().unwrap(),
        [uri.as_str(), create, steer],
        "the client's query kept on the upstream URL, then its bytes as they were"
    );
}

#[tokio::test]
async fn a_key_in_the_subprotocol_is_used_and_the_beta_protocol_echoed() {
    let bridge = bridge_with(
        SimulatorConfig {
            accepted_keys: vec![KEY.into()],
            ..SimulatorConfig::default()
        },
        |_| {},
    )
    .await;
    let protocols = format!("openai-insecure-api-key.{KEY}, openai-beta.responses-v1");
    let mut ws = common::ws_connect_with(
        &relay_url(&bridge),
        &[("sec-websocket-protocol", &protocols)],
    )
    .await
    .unwrap();
    assert_eq!(
        ws.handshake["sec-websocket-protocol"],
        "openai-beta.responses-v1"
    );
    ws.create(json!({"model": "gpt-test", "input": "by subprotocol"}))
        .await;
    assert_eq!(ws.outcome().await, "response.completed");
    assert!(bridge.sim.stats().keys.contains_key(KEY));

    let wrong = "openai-insecure-api-key.sk-wrong, openai-beta.responses-v1";
    let refused =
        common::ws_connect_with(&relay_url(&bridge), &[("sec-websocket-protocol", wrong)]).await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("a wrong key must be refused at the upgrade");
    };
    assert_eq!(response.status(), 401, "the upstream's answer");
}

#[tokio::test]
async fn inject_mode_sends_its_key_and_refuses_a_wrong_client_token_before_any_upstream_socket() {
    let inject = |tokens: Vec<Secret>| {
        move |config: &mut wsbridge::config::Config| {
            config.auth = AuthConfig::Inject {
                api_key: Secret::new(KEY),
                client_tokens: tokens,
            };
        }
    };
    let sim = || SimulatorConfig {
        accepted_keys: vec![KEY.into()],
        ..SimulatorConfig::default()
    };
    let open = bridge_with(sim(), inject(Vec::new())).await;
    let mut ws = common::ws_connect_with(&relay_url(&open), &[])
        .await
        .unwrap();
    ws.create(json!({"model": "gpt-test", "input": "no key of mine"}))
        .await;
    assert_eq!(ws.outcome().await, "response.completed");

    let guarded = bridge_with(sim(), inject(vec![Secret::new("tok-right")])).await;
    let refused = common::ws_connect(&relay_url(&guarded), "tok-wrong").await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("a wrong client token must be refused");
    };
    assert_eq!(response.status(), 401);
    assert_eq!(
        guarded.sim.stats().sockets_opened,
        0,
        "no upstream socket was used"
    );
    assert_eq!(
        guarded.metric("wsbridge_upstream_socket_opens_total").await,
        0.0
    );
    let mut ws = common::ws_connect(&relay_url(&guarded), "tok-right")
        .await
        .unwrap();
    ws.create(json!({"model": "gpt-test", "input": "with my token"}))
        .await;
    assert_eq!(ws.outcome().await, "response.completed");
    assert!(guarded.sim.stats().keys.contains_key(KEY));
}

#[tokio::test]
async fn bad_client_frames_get_the_upstreams_error_events_and_the_socket_stays_open() {
    let bridge = bridge_with(SimulatorConfig::default(), |_| {}).await;
    let mut ws = relayed(&bridge).await;
    for bad in [
        "not json at all",
        r#"{"type":"response.create","model":"gpt-test","input":5}"#,
        r#"{"type":"response.unheard_of"}"#,
    ] {
        ws.send_raw(bad).await;
        let event = ws.event().await;
        assert_eq!(event["type"], "error", "{bad}: {event}");
        assert_eq!(event["status"], 400, "{event}");
    }
    ws.create(json!({"model": "gpt-test", "input": "still here"}))
        .await;
    let events = ws.turn().await;
    assert!(output_text(final_response(&events)).starts_with("You said: still here"));
    assert_eq!(
        bridge.sim.stats().sockets_opened,
        1,
        "all on one upstream socket"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_response_closes_its_upstream_socket_and_the_pool_refills() {
    let bridge = bridge_with(common::paced(20), |config| config.pool.min_idle = 1).await;
    let mut ws = relayed(&bridge).await;
    ws.create(
        json!({"model": "gpt-test", "input": "a long one", "metadata": {"sim_words": "400"}}),
    )
    .await;
    assert_eq!(ws.event().await["type"], "response.created");
    ws.socket.close(None).await.unwrap();
    drop(ws);
    let stopped = |s: &wsbridge::simulator::stats::StatsSnapshot| {
        s.sockets_closed >= 1 && s.turns.iter().any(|t| t.outcome == Outcome::Closed)
    };
    let stats = bridge
        .sim
        .wait_for(stopped, PATIENCE)
        .await
        .expect("the upstream socket must close, cutting the answer short");
    assert_eq!(stats.sockets_closed, 1);
    let closed = bridge
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"client_gone\"}",
            |n| n == 1.0,
        )
        .await;
    assert_eq!(closed, 1.0);
    let idle = bridge
        .wait_for_metric("wsbridge_upstream_sockets{state=\"idle\"}", |n| n == 1.0)
        .await;
    assert_eq!(idle, 1.0, "the pool is back to min_idle");
    assert_eq!(
        bridge
            .metric("wsbridge_upstream_sockets{state=\"busy\"}")
            .await,
        0.0
    );
    assert_eq!(bridge.metric("wsbridge_relay_client_sockets").await, 0.0);
}

#[tokio::test]
async fn a_client_leaving_between_turns_gives_its_upstream_socket_back() {
    let bridge = bridge_with(SimulatorConfig::default(), |_| {}).await;
    let mut ws = relayed(&bridge).await;
    ws.create(json!({"model": "gpt-test", "input": "one"}))
        .await;
    assert_eq!(ws.outcome().await, "response.completed");
    ws.socket.close(None).await.unwrap();
    let idle = bridge
        .wait_for_metric("wsbridge_upstream_sockets{state=\"idle\"}", |n| n == 1.0)
        .await;
    assert_eq!(idle, 1.0);
    let mut again = relayed(&bridge).await;
    again
        .create(json!({"model": "gpt-test", "input": "two"}))
        .await;
    assert_eq!(again.outcome().await, "response.completed");
    assert_eq!(
        bridge.sim.stats().sockets_opened,
        1,
        "the same upstream socket"
    );
    let text = bridge.metrics().await;
    assert_eq!(
        common::metric(&text, "wsbridge_relay_client_sockets_accepted_total"),
        2.0
    );
    assert_eq!(
        common::metric(
            &text,
            "wsbridge_relay_frames_total{direction=\"client_to_upstream\"}"
        ),
        2.0
    );
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
    let rebuilt = bridge
        .metric("wsbridge_relay_context_rebuilds_total{outcome=\"rebuilt\"}")
        .await;
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
async fn an_upgrade_the_upstream_refuses_gets_the_upstreams_status() {
    let bridge = bridge_with(
        SimulatorConfig {
            faults: FaultConfig {
                upgrade_status: 426,
                ..FaultConfig::default()
            },
            ..SimulatorConfig::default()
        },
        |_| {},
    )
    .await;
    match common::ws_connect(&relay_url(&bridge), KEY).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 426, "Codex then goes over HTTP");
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
        other => panic!("expected a 426, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn stopping_the_proxy_closes_an_idle_client_socket_with_going_away() {
    let bridge = bridge_with(SimulatorConfig::default(), |_| {}).await;
    let mut ws = relayed(&bridge).await;
    ws.create(json!({"model": "gpt-test", "input": "before the stop"}))
        .await;
    assert_eq!(ws.outcome().await, "response.completed");
    let Bridge { sim, proxy } = bridge;
    let stopping = tokio::spawn(proxy.shutdown());
    let (events, code) = ws.until_closed().await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(code, Some(1001), "SDKs reconnect after 1001");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
    drop(sim);
}

#[tokio::test]
async fn an_upstream_close_mid_response_reaches_the_client_with_its_code_and_reason() {
    let upstream = common::scripted(|_, _| {
        let mut frames = common::answer("resp_1", "cut short");
        frames.truncate(3);
        frames.push(format!("{}:4003:upstream says stop", common::CLOSE));
        frames
    })
    .await;
    let proxy = common::proxy_for(&upstream, |_| {}).await;
    let url = format!("ws://{}/v1/responses", proxy.addr());
    let mut ws = common::ws_connect(&url, KEY).await.unwrap();
    ws.create(json!({"model": "m", "input": "hi"})).await;
    let frame = loop {
        match tokio::time::timeout(PATIENCE, ws.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), 4003);
    assert_eq!(
        frame.reason.as_str(),
        "upstream says stop",
        "the upstream's own reason"
    );
    assert_eq!(
        upstream.sockets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing replayed"
    );
}

#[tokio::test]
async fn a_client_close_mid_response_reaches_the_upstream_with_its_code_and_reason() {
    let upstream = common::scripted(|_, _| {
        let mut frames = common::answer("resp_1", "never finished");
        frames.truncate(3);
        frames
    })
    .await;
    let proxy = common::proxy_for(&upstream, |_| {}).await;
    let url = format!("ws://{}/v1/responses", proxy.addr());
    let mut ws = common::ws_connect(&url, KEY).await.unwrap();
    ws.create(json!({"model": "m", "input": "hi"})).await;
    for _ in 0..3 {
        ws.event().await;
    }
    let bye = tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "user cancelled".into(),
    };
    ws.socket.close(Some(bye)).await.unwrap();
    let expected = format!("{}:4000:user cancelled", common::CLOSE);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !upstream.raw.lock().unwrap().contains(&expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            upstream.raw.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.create(turn("more", "a", "5", Some(&alpha))).await;
    let events = ws.turn().await;
    assert_eq!(output_text(final_response(&events)), expected);
    assert_eq!(
        bridge
            .metric("wsbridge_relay_context_rebuilds_total{outcome=\"rebuilt\"}")
            .await,
        1.0
    );
}
