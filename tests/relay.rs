//! WebSocket clients on `GET /v1/responses`, relayed over pooled upstream sockets: frames as
//! they came both ways, the credential forms, bad frames, close codes, client hang-ups and
//! shutdown. The connection limit hidden: `relay_limit.rs`.

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

use common::{Bridge, KEY, PATIENCE, Ws, bridge_with, final_response, output_text};

fn relay_url(bridge: &Bridge) -> String {
    format!("ws://{}/v1/responses", bridge.proxy.addr())
}

async fn relayed(bridge: &Bridge) -> Ws {
    common::ws_connect(&relay_url(bridge), KEY).await.unwrap()
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
    let frame = close_frame(&mut ws).await;
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

/// The close frame the client gets next (events before it skipped).
async fn close_frame(ws: &mut Ws) -> tungstenite::protocol::CloseFrame {
    loop {
        match tokio::time::timeout(PATIENCE, ws.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => return frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// A close that says the frame itself is bad (here 1009, too big) is not retried on a fresh
/// socket, where it would be refused again: the client gets the upstream's code and reason.
#[tokio::test]
async fn an_upstream_policy_close_before_the_response_is_passed_on_not_retried() {
    let upstream = common::scripted(|index, _| match index {
        0 => vec![format!("{}:1009:message too big", common::CLOSE)],
        _ => common::answer("resp_1", "retried"),
    })
    .await;
    let proxy = common::proxy_for(&upstream, |_| {}).await;
    let url = format!("ws://{}/v1/responses", proxy.addr());
    let mut ws = common::ws_connect(&url, KEY).await.unwrap();
    ws.create(json!({"model": "m", "input": "hi"})).await;
    let frame = close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(frame.reason.as_str(), "message too big");
    assert_eq!(upstream.frames().len(), 1, "not sent again");
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
