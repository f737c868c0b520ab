//! Everything that is not a bridged turn: the REST fallback, pass-through, the operations
//! endpoints, inject mode, shutdown and the metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::stats::Transport;

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
