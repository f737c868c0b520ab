//! The pool of upstream sockets as a client and the upstream see it: one credential per
//! socket, pre-warming, retries before the first event, busy pools, disconnects. The pool's
//! timing (pings, ages, idle timeouts, checkout order) is unit-tested on paused time in
//! `src/upstream/pool/`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wsbridge::config::BaseUrl;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;

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
async fn a_credential_in_its_rest_cooldown_is_state_the_proxy_keeps() {
    let bridge = bridge().await;
    bridge
        .sim
        .set_faults(FaultConfig {
            upgrade_status: 426,
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(bridge.post(&hello(false)).await.status, 200);
    let stats = bridge.sim.stats();
    assert_eq!((stats.upgrades_refused, stats.sockets_opened), (1, 0));
    // No socket and no head: only the cool-down (forgotten when it ends, unit-tested in
    // src/upstream/rest.rs) keeps the credential counted.
    assert_eq!(bridge.metric("wsbridge_pool_credentials").await, 1.0);
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
        config.upstream.base_url = BaseUrl::parse(&format!("http://{hole}/v1")).unwrap();
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
