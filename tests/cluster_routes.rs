//! Owner routing of the other request kinds (docs/architecture.md, "Cluster"): a streamed
//! Chat Completions tool loop spread over three replicas continues every turn and streams
//! through the forwarding hop; with `cluster.affinity_header`, the header's value picks the
//! owner whatever the conversation, and routes a `previous_response_id` the receiving replica
//! does not remember; an owner refusing the hop (another secret) or never answering a streamed
//! request leaves it served locally; a cluster-less proxy ignores the internal header.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::chat::{assemble, chat, chat_loop, header, lookup_chat_tool};
use common::cluster::{
    affinity_replicas, metric_of, peer_urls, post_with, replica, replica_with, v1,
};
use serde_json::json;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::stats::Transport;

/// A streamed chat tool loop whose every turn goes to the next of `urls`; the answer and each
/// turn's `x-wsbridge-continuation`.
async fn chat_round_robin(urls: &[String], calls: u32) -> (String, Vec<String>) {
    // As `chat_loop` starts, so the direct run has the same conversation.
    let mut messages = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "What is the answer?"}),
    ];
    let mut routes = Vec::new();
    let mut seen = 0;
    for turn in 0.. {
        let body = json!({"model": "gpt-test", "messages": messages, "tools": lookup_chat_tool(),
                          "stream": true, "metadata": {"sim_tool_calls": calls.to_string()}});
        let reply = chat(&urls[turn % urls.len()], &body).await;
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.body);
        assert!(header(&reply, "content-type").starts_with("text/event-stream"));
        routes.push(header(&reply, "x-wsbridge-continuation").to_owned());
        let message = assemble(&reply.body);
        let tool_calls = message["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        messages.push(message.clone());
        if tool_calls.is_empty() {
            return (message["content"].as_str().unwrap().to_owned(), routes);
        }
        for call in tool_calls {
            seen += 1;
            let id = call["id"].as_str().unwrap();
            let content = format!("result {seen} for {id}");
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_streamed_chat_tool_loop_over_three_replicas_continues_every_turn() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(3);
    let mut replicas = Vec::new();
    for me in 0..3 {
        replicas.push(replica(&sim, &peers, me).await);
    }
    let (answer, routes) = chat_round_robin(&v1(&peers), 8).await;
    assert_eq!(routes.len(), 9);
    assert_eq!(routes[0], "fresh");
    assert!(routes[1..].iter().all(|r| r == "continued"), "{routes:?}");
    let mut forwarded = 0.0;
    for peer in &peers {
        forwarded += metric_of(peer, "wsbridge_cluster_forwarded_total").await;
    }
    assert_eq!(
        forwarded, 6.0,
        "two turns in three reach a replica that does not own them"
    );
    let ws = sim
        .stats()
        .turns
        .iter()
        .filter(|t| t.transport == Transport::Ws)
        .count();
    assert_eq!(ws, 9);
    // The same conversation straight to the simulator's chat endpoint.
    let direct = chat_loop(&sim.base_url(), 8, true).await;
    assert_eq!(answer, direct.answer);
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn the_affinity_header_picks_the_owner_whatever_the_conversation() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(3);
    let replicas = affinity_replicas(&sim, &peers).await;
    // Per session, ten different conversations sent to replica 0: all forwarded, or none.
    let mut counts = Vec::new();
    for session in ["s-1", "s-2", "s-3", "s-4", "s-5", "s-6"] {
        let before = metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await;
        for index in 0..10 {
            let body = json!({"model": "gpt-test", "input": format!("{session} question {index}")});
            let reply = post_with(
                &format!("{}/v1/responses", peers[0]),
                body.to_string(),
                &[("session_id", session)],
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        let forwarded = metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await - before;
        assert!(
            forwarded == 0.0 || forwarded == 10.0,
            "{session}: {forwarded}"
        );
        counts.push(forwarded);
    }
    assert!(
        counts.contains(&10.0),
        "some session is owned elsewhere: {counts:?}"
    );
    // Without the header, the conversations spread over the replicas as usual.
    let before = metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await;
    for index in 0..30 {
        let body = json!({"model": "gpt-test", "input": format!("question {index}")});
        let reply = common::post_json(&v1(&peers)[0], &body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let spread = metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await - before;
    assert!((5.0..=28.0).contains(&spread), "{spread} of 30 forwarded");
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// A `/v1/responses` turn to `url` with `session_id: session`.
async fn session_turn(url: &str, session: &str, body: &serde_json::Value) -> common::Reply {
    post_with(
        &format!("{url}/v1/responses"),
        body.to_string(),
        &[("session_id", session)],
    )
    .await
}

#[tokio::test]
async fn an_unknown_previous_response_id_goes_to_the_affinity_owner() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(3);
    let replicas = affinity_replicas(&sim, &peers).await;
    let first = json!({"model": "gpt-test", "input": "hi", "store": false});
    let reply = session_turn(&peers[0], "s-1", &first).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let previous = reply.json()["id"].as_str().unwrap().to_owned();
    // The owner: replica 0, or the peer it forwarded to.
    let mut owner = 0;
    for (index, peer) in peers.iter().enumerate() {
        if metric_of(peer, "wsbridge_cluster_served_for_peers_total").await == 1.0 {
            owner = index;
        }
    }
    // Neither the owner nor replica 0 (which remembers the id if it forwarded): a replica
    // that knows nothing of `previous` but the session's header.
    let entry = (1..3).find(|&index| index != owner).unwrap();
    let next = json!({"model": "gpt-test", "input": "and then?", "store": false,
                      "previous_response_id": previous});
    let reply = session_turn(&peers[entry], "s-1", &next).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let forwarded = metric_of(&peers[entry], "wsbridge_cluster_forwarded_total").await;
    assert_eq!(forwarded, 1.0, "sent to the session's owner");
    let turn = sim
        .stats()
        .turns
        .into_iter()
        .find(|turn| turn.response_id.as_deref() == Some(id.as_str()))
        .unwrap();
    assert!(turn.continued, "continued on the owner's socket");
    // The entry now remembers who issued `id`: followed there even without the header.
    let third = json!({"model": "gpt-test", "input": "more?", "store": false,
                       "previous_response_id": id});
    let reply = common::post_json(&v1(&peers)[entry], &third).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let forwarded = metric_of(&peers[entry], "wsbridge_cluster_forwarded_total").await;
    assert_eq!(forwarded, 2.0);
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn an_owner_that_refuses_the_hop_leaves_every_request_served_locally() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(2);
    let other = |config: &mut wsbridge::config::Config| {
        let secret = wsbridge::config::Secret::new("a-different-secret-0123456789");
        config.cluster.as_mut().unwrap().secret = secret;
    };
    let replicas = [
        replica(&sim, &peers, 0).await,
        replica_with(&sim, &peers, 1, other).await,
    ];
    for index in 0..20 {
        let body = json!({"model": "gpt-test", "input": format!("question {index}")});
        for url in v1(&peers) {
            let reply = common::post_json(&url, &body).await;
            assert_eq!(reply.status, 200, "{url}: {}", reply.body);
            assert!(!common::output_text(&reply.json()).is_empty());
        }
    }
    for (me, peer) in peers.iter().enumerate() {
        let fallbacks = metric_of(peer, "wsbridge_cluster_local_fallbacks_total").await;
        let refused = metric_of(&peers[1 - me], "wsbridge_cluster_forged_refused_total").await;
        assert!(
            fallbacks > 0.0,
            "{peer}: some conversation is owned by the other"
        );
        assert_eq!(fallbacks, refused, "{peer}: each refused hop served here");
        let forwarded = metric_of(peer, "wsbridge_cluster_forwarded_total").await;
        assert_eq!(forwarded, 0.0);
    }
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_streamed_request_to_an_owner_that_never_answers_is_served_locally() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    // The second "replica" accepts connections and never reads or answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![
        peer_urls(1).remove(0),
        format!("http://{}", silent.local_addr().unwrap()),
    ];
    let first_event = std::time::Duration::from_millis(250);
    let tune = |config: &mut wsbridge::config::Config| {
        config.upstream.first_event_timeout = first_event;
    };
    let bridge = replica_with(&sim, &peers, 0, tune).await;
    let head_timeout = wsbridge::cluster::head_timeout(first_event);
    let mut slow = 0;
    // Within DOWN_FOR of the first timeout: the silent owner is skipped after it.
    for index in 0..16 {
        let body = json!({"model": "gpt-test", "input": format!("question {index}"),
                          "stream": true});
        let started = tokio::time::Instant::now();
        let reply = common::post_json(&v1(&peers)[0], &body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let last = reply.events().pop().unwrap();
        assert_eq!(last["type"], "response.completed");
        if started.elapsed() >= head_timeout {
            slow += 1;
        }
    }
    assert_eq!(slow, 1, "one request waited for the silent owner");
    let unreachable = metric_of(&peers[0], "wsbridge_cluster_owner_unreachable_total").await;
    let fallbacks = metric_of(&peers[0], "wsbridge_cluster_local_fallbacks_total").await;
    assert_eq!((unreachable, fallbacks), (1.0, 1.0));
    drop(silent);
    bridge.shutdown().await;
}

#[tokio::test]
async fn without_a_cluster_the_internal_header_means_nothing() {
    let bridge = common::bridge().await;
    let reply = post_with(
        &format!("{}/responses", bridge.url()),
        json!({"model": "gpt-test", "input": "hi"}).to_string(),
        &[(
            "x-wsbridge-forwarded",
            "v1;ts=1;from=http://10.0.0.1:1;sig=00",
        )],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        bridge.metric("wsbridge_cluster_forged_refused_total").await,
        0.0
    );
}
