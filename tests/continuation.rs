//! Continuations through the proxy: a client that resends its whole history every turn gets
//! `previous_response_id` + only the new items upstream, on the socket holding the head, and the
//! same answers as a full resend straight to the REST API, on every hit and miss path.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::{PATIENCE, bridge, bridge_with, output_text};
use serde_json::{Value, json};
use wsbridge::continuation::ReasoningPolicy;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::faults::FaultConfig;
use wsbridge::simulator::stats::Transport;

fn tools() -> Value {
    json!([{"type": "function", "name": "lookup", "description": "Look it up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}])
}

/// One turn's request: the whole history, as SDK users send it.
fn turn_body(input: &[Value], calls: u32, extra: &Value) -> Value {
    let mut body = json!({
        "model": "gpt-test",
        "input": input,
        "tools": tools(),
        "store": false,
        "metadata": {"sim_tool_calls": calls.to_string()},
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// What one loop saw: the final answer, and per turn the continuation header.
#[derive(Debug)]
struct Run {
    answer: String,
    routes: Vec<String>,
    turns: usize,
}

/// The usual agent loop: `input += response.output` plus a `function_call_output` per call,
/// full history every turn, until the model answers. `edit` may rewrite the history the client
/// sends back after each response.
async fn agent_loop(
    base_url: &str,
    calls: u32,
    extra: &Value,
    edit: impl Fn(&mut Vec<Value>),
) -> Run {
    let mut input = vec![json!({"role": "user", "content": "What is the answer?"})];
    let mut routes = Vec::new();
    for turn in 1.. {
        let reply = common::post_json(base_url, &turn_body(&input, calls, extra)).await;
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.body);
        routes.push(
            reply
                .headers
                .get("x-wsbridge-continuation")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        );
        let response = reply.json();
        let output = response["output"].as_array().unwrap().clone();
        let calls: Vec<Value> = output
            .iter()
            .filter(|i| i["type"] == "function_call")
            .cloned()
            .collect();
        input.extend(output);
        if calls.is_empty() {
            return Run {
                answer: output_text(&response),
                routes,
                turns: turn,
            };
        }
        for call in calls {
            input.push(json!({"type": "function_call_output", "call_id": call["call_id"],
                              "output": format!("result for {}", call["call_id"].as_str().unwrap())}));
        }
        edit(&mut input);
    }
    unreachable!()
}

fn no_edit(_: &mut Vec<Value>) {}

#[tokio::test]
async fn a_full_history_agent_loop_sends_only_new_items_on_one_socket() {
    let bridge = bridge().await;
    let through = agent_loop(&bridge.url(), 8, &json!({}), no_edit).await;
    let direct = agent_loop(&bridge.sim.base_url(), 8, &json!({}), no_edit).await;
    assert_eq!(
        through.answer, direct.answer,
        "identical to a full resend over REST"
    );
    assert_eq!(through.turns, 9);
    assert_eq!(through.routes[0], "fresh");
    assert!(
        through.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        through.routes
    );

    let stats = bridge.sim.stats();
    let ws: Vec<_> = stats
        .turns
        .iter()
        .filter(|t| t.transport == Transport::Ws)
        .collect();
    assert_eq!(ws.len(), 9);
    assert_eq!(
        stats.sockets_for(common::KEY).len(),
        1,
        "one upstream socket"
    );
    for turn in &ws[1..] {
        assert!(turn.previous_response_id.is_some());
        assert!(turn.continued, "served from the socket's memory");
        assert_eq!(turn.input_items, 1, "only the new function_call_output");
    }
    let sent: usize = ws.iter().map(|t| t.bytes).sum();
    let rest: usize = stats
        .turns
        .iter()
        .filter(|t| t.transport == Transport::Rest)
        .map(|t| t.bytes)
        .sum();
    assert!(
        sent * 2 < rest,
        "upstream received {sent} bytes through wsbridge vs {rest} resent in full"
    );
    assert_eq!(
        bridge
            .metric("wsbridge_continuations_total{outcome=\"continued\"}")
            .await,
        8.0
    );
    let upstream = bridge.metric("wsbridge_upstream_frame_bytes_total").await;
    let requested = bridge.metric("wsbridge_client_request_bytes_total").await;
    assert!(
        upstream * 2.0 < requested,
        "{upstream} bytes upstream for {requested} requested"
    );
}

#[tokio::test]
async fn dropped_reasoning_items_still_continue_when_lenient_but_not_when_strict() {
    let reasoning =
        json!({"reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"]});
    let drop_reasoning = |input: &mut Vec<Value>| input.retain(|item| item["type"] != "reasoning");

    let lenient = bridge().await;
    let run = agent_loop(&lenient.url(), 3, &reasoning, drop_reasoning).await;
    let direct = agent_loop(&lenient.sim.base_url(), 3, &reasoning, drop_reasoning).await;
    assert_eq!(run.answer, direct.answer);
    assert!(
        run.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        run.routes
    );

    let strict = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.reasoning = ReasoningPolicy::Strict;
    })
    .await;
    let run = agent_loop(&strict.url(), 3, &reasoning, drop_reasoning).await;
    assert_eq!(run.answer, direct.answer);
    assert!(run.routes.iter().all(|r| r == "fresh"), "{:?}", run.routes);
    // Sending reasoning back satisfies strict matching.
    let kept = agent_loop(&strict.url(), 3, &reasoning, no_edit).await;
    assert!(
        kept.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        kept.routes
    );
}

#[tokio::test]
async fn a_socket_lost_between_turns_means_a_full_resend_the_client_never_notices() {
    let config = SimulatorConfig {
        max_connection_age: Duration::from_millis(400),
        ..SimulatorConfig::default()
    };
    let bridge = bridge_with(config, |_| {}).await;
    let url = bridge.url();
    let mut input = vec![json!({"role": "user", "content": "What is the answer?"})];
    let first = common::post_json(&url, &turn_body(&input, 1, &json!({}))).await;
    let output = first.json()["output"].as_array().unwrap().clone();
    let call_id = output[0]["call_id"].clone();
    input.extend(output);
    input.push(json!({"type": "function_call_output", "call_id": call_id, "output": "42"}));
    bridge
        .sim
        .wait_for(|s| s.sockets_closed == 1, PATIENCE)
        .await
        .expect("the upstream drops the idle socket and its memory");
    let second = common::post_json(&url, &turn_body(&input, 1, &json!({}))).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.headers["x-wsbridge-continuation"], "fresh");
    let direct = common::post_json(&bridge.sim.base_url(), &turn_body(&input, 1, &json!({}))).await;
    assert_eq!(output_text(&second.json()), output_text(&direct.json()));
}

#[tokio::test]
async fn a_continuation_the_upstream_lost_is_resent_in_full_before_any_output() {
    let bridge = bridge().await;
    // Every second upstream turn answers previous_response_not_found: turn 2 is the
    // continuation, turn 3 its full resend.
    bridge
        .sim
        .set_faults(FaultConfig {
            turn: "error:400:previous_response_not_found".into(),
            turn_every: 2,
            ..FaultConfig::default()
        })
        .unwrap();
    let url = bridge.url();
    let mut input = vec![json!({"role": "user", "content": "What is the answer?"})];
    let first = common::post_json(&url, &turn_body(&input, 1, &json!({}))).await;
    let output = first.json()["output"].as_array().unwrap().clone();
    input.extend(output.clone());
    input.push(
        json!({"type": "function_call_output", "call_id": output[0]["call_id"], "output": "42"}),
    );
    let second = common::post_json(&url, &turn_body(&input, 1, &json!({"stream": true}))).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "recovered");
    let events = second.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "response.created")
            .count(),
        1
    );
    let stats = bridge.sim.stats();
    assert_eq!(stats.turns_total, 3);
    assert!(
        stats.turns[1].previous_response_id.is_some(),
        "turn 2 was the continuation"
    );
    let last = stats.turns.last().unwrap();
    assert_eq!(
        last.previous_response_id, None,
        "the resend carries the full input"
    );
    assert_eq!(last.input_items, input.len());
    assert_eq!(stats.sockets_opened, 1, "on the same socket");
    assert_eq!(
        bridge
            .metric("wsbridge_upstream_recoveries_total{cause=\"previous_response_not_found\"}")
            .await,
        1.0
    );
    assert_eq!(
        bridge
            .metric("wsbridge_continuations_total{outcome=\"recovered\"}")
            .await,
        1.0
    );
    bridge.sim.set_faults(FaultConfig::default()).unwrap();
    let direct = common::post_json(
        &bridge.sim.base_url(),
        &turn_body(&input, 1, &json!({"stream": true})),
    )
    .await;
    let answer = |reply: &common::Reply| output_text(common::final_response(&reply.events()));
    assert_eq!(answer(&second), answer(&direct));
}

#[tokio::test]
async fn interleaved_conversations_each_keep_their_own_socket() {
    let bridge = bridge().await;
    let url = bridge.url();
    let start = |topic: &str| vec![json!({"role": "user", "content": topic})];
    let mut a = start("conversation A");
    let mut b = start("conversation B");
    let mut sockets = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for (index, input) in [&mut a, &mut b].into_iter().enumerate() {
            let reply = common::post_json(&url, &turn_body(input, 3, &json!({}))).await;
            assert_eq!(reply.status, 200);
            let route = reply.headers["x-wsbridge-continuation"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(route, if round == 0 { "fresh" } else { "continued" });
            let response = reply.json();
            let output = response["output"].as_array().unwrap().clone();
            input.extend(output.clone());
            if let Some(call) = output.iter().find(|i| i["type"] == "function_call") {
                input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": format!("r{index}")}));
            }
            sockets[index].push(bridge.sim.stats().turns.last().unwrap().socket.unwrap());
        }
    }
    assert!(
        sockets[0].iter().all(|s| *s == sockets[0][0]),
        "{sockets:?}"
    );
    assert!(
        sockets[1].iter().all(|s| *s == sockets[1][0]),
        "{sockets:?}"
    );
    assert_ne!(sockets[0][0], sockets[1][0]);
    // Each conversation's answer reflects only its own history.
    let direct = common::post_json(&bridge.sim.base_url(), &turn_body(&a, 3, &json!({}))).await;
    let through = common::post_json(&url, &turn_body(&a, 3, &json!({}))).await;
    assert_eq!(output_text(&through.json()), output_text(&direct.json()));
}

#[tokio::test]
async fn an_edited_history_is_sent_fresh_and_answered_correctly() {
    let bridge = bridge().await;
    let edit_first_message = |input: &mut Vec<Value>| {
        input[0] = json!({"role": "user", "content": format!("edited {}", input.len())});
    };
    let through = agent_loop(&bridge.url(), 3, &json!({}), edit_first_message).await;
    let direct = agent_loop(&bridge.sim.base_url(), 3, &json!({}), edit_first_message).await;
    assert_eq!(through.answer, direct.answer);
    assert!(
        through.routes.iter().all(|r| r == "fresh"),
        "{:?}",
        through.routes
    );
}

#[tokio::test]
async fn a_model_change_is_never_continued() {
    let bridge = bridge().await;
    let url = bridge.url();
    let mut input = vec![json!({"role": "user", "content": "hi"})];
    let first = common::post_json(
        &url,
        &json!({"model": "gpt-a", "input": input, "store": false}),
    )
    .await;
    input.extend(first.json()["output"].as_array().unwrap().clone());
    input.push(json!({"role": "user", "content": "and now?"}));
    let other_model = common::post_json(
        &url,
        &json!({"model": "gpt-b", "input": input, "store": false}),
    )
    .await;
    assert_eq!(other_model.headers["x-wsbridge-continuation"], "fresh");
    assert!(
        bridge
            .sim
            .stats()
            .turns
            .last()
            .unwrap()
            .previous_response_id
            .is_none()
    );
}

/// What [`fork`] saw.
struct Fork {
    /// Each branch's `x-wsbridge-continuation`, sorted.
    routes: Vec<String>,
    /// The shared parent's response id.
    parent: String,
    /// The upstream turns that loaded their parent from the store.
    hydrated: Vec<wsbridge::simulator::stats::TurnRecord>,
}

/// Two requests extending the same turn at once, through a proxy with
/// `continuation.stored_on_any_socket = stored_on_any_socket`. Both answers must equal a full
/// resend straight to the simulator.
async fn fork(store: bool, stored_on_any_socket: bool) -> Fork {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.stored_on_any_socket = stored_on_any_socket;
    })
    .await;
    let url = bridge.url();
    let mut base = vec![json!({"role": "user", "content": "start"})];
    let first = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": base, "store": store}),
    )
    .await;
    base.extend(first.json()["output"].as_array().unwrap().clone());
    let parent = first.json()["id"].as_str().unwrap().to_owned();
    let branch = |text: &str| {
        let mut input = base.clone();
        input.push(json!({"role": "user", "content": text}));
        // Long enough for both branches to be in flight at once on a loaded machine.
        json!({"model": "gpt-test", "input": input, "store": store, "stream": true,
               "metadata": {"sim_fault": "stall_within:1000"}})
    };
    let (left_body, right_body) = (branch("left"), branch("right"));
    let (left, right) = tokio::join!(
        common::post_json(&url, &left_body),
        common::post_json(&url, &right_body)
    );
    let mut routes = vec![
        left.headers["x-wsbridge-continuation"]
            .to_str()
            .unwrap()
            .to_owned(),
        right.headers["x-wsbridge-continuation"]
            .to_str()
            .unwrap()
            .to_owned(),
    ];
    routes.sort();
    for (reply, text) in [(&left, "left"), (&right, "right")] {
        let direct = common::post_json(&bridge.sim.base_url(), &branch(text)).await;
        let answer = output_text(common::final_response(&reply.events()));
        assert_eq!(
            answer,
            output_text(common::final_response(&direct.events()))
        );
        assert!(answer.starts_with(&format!("You said: {text}.")));
    }
    let hydrated = bridge
        .sim
        .stats()
        .turns
        .into_iter()
        .filter(|t| t.transport == Transport::Ws && t.hydrated)
        .collect();
    Fork {
        routes,
        parent,
        hydrated,
    }
}

#[tokio::test]
async fn forked_histories_are_both_answered_correctly() {
    let fork = fork(false, false).await;
    assert_eq!(
        fork.routes,
        ["continued", "fresh"],
        "one branch continues, the other goes in full"
    );
    assert!(fork.hydrated.is_empty());
}

#[tokio::test]
async fn a_stored_head_continues_on_another_socket_when_allowed() {
    let fork = fork(true, true).await;
    assert_eq!(
        fork.routes,
        ["continued", "continued"],
        "the busy head's fork continues on another socket"
    );
    assert_eq!(
        fork.hydrated.len(),
        1,
        "the upstream loaded the parent from its store"
    );
    let turn = &fork.hydrated[0];
    assert_eq!(
        turn.previous_response_id.as_deref(),
        Some(fork.parent.as_str())
    );
    assert_eq!(turn.input_items, 1, "only the branch's new message went up");
}

#[tokio::test]
async fn a_stored_head_outlives_its_socket_when_allowed() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.stored_on_any_socket = true;
        config.pool.max_age = Duration::from_millis(300);
    })
    .await;
    let url = bridge.url();
    let mut input = vec![json!({"role": "user", "content": "remember me"})];
    let first = common::post_json(&url, &json!({"model": "gpt-test", "input": input})).await;
    let parent = first.json()["id"].as_str().unwrap().to_owned();
    input.extend(first.json()["output"].as_array().unwrap().clone());
    // The socket holding it is retired (the credential's only one: nothing else is left).
    bridge
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"max_age\"}",
            |n| n >= 1.0,
        )
        .await;
    bridge
        .sim
        .wait_for(|s| s.sockets_open == 0, PATIENCE)
        .await
        .expect("no socket left");
    input.push(json!({"role": "user", "content": "and now?"}));
    let body = json!({"model": "gpt-test", "input": input});
    let second = common::post_json(&url, &body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    let turn = bridge.sim.stats().turns.last().unwrap().clone();
    assert!(turn.hydrated, "loaded from the store on a new socket");
    assert_eq!(turn.previous_response_id.as_deref(), Some(parent.as_str()));
    assert_eq!(turn.input_items, 1);
    let direct = common::post_json(&bridge.sim.base_url(), &body).await;
    assert_eq!(output_text(&second.json()), output_text(&direct.json()));
}

#[tokio::test]
async fn stored_heads_stay_on_their_socket_by_default_and_store_false_always_does() {
    for (store, allowed) in [(true, false), (false, true)] {
        let fork = fork(store, allowed).await;
        assert_eq!(
            fork.routes,
            ["continued", "fresh"],
            "store={store} allowed={allowed}"
        );
        assert!(fork.hydrated.is_empty());
    }
}

#[tokio::test]
async fn a_client_previous_response_id_goes_to_the_socket_holding_it() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.min_idle = 2
    })
    .await;
    let url = bridge.url();
    // Several idle sockets, so a random pick would miss the one holding the response.
    let mut ids = Vec::new();
    for topic in ["one", "two", "three"] {
        let reply = common::post_json(
            &url,
            &json!({"model": "gpt-test", "input": topic, "store": false}),
        )
        .await;
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    for (id, topic) in ids.iter().zip(["one", "two", "three"]) {
        let reply = common::post_json(
            &url,
            &json!({"model": "gpt-test", "input": "again", "previous_response_id": id, "store": false}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.headers["x-wsbridge-continuation"], "explicit");
        assert!(
            output_text(&reply.json()).starts_with("You said: again."),
            "{topic}"
        );
    }
}

#[tokio::test]
async fn with_no_socket_to_spare_a_new_conversation_evicts_the_least_recent_head() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.pool.max_sockets = 1
    })
    .await;
    let url = bridge.url();
    let mut a = vec![json!({"role": "user", "content": "A"})];
    let first = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": a, "store": false}),
    )
    .await;
    a.extend(first.json()["output"].as_array().unwrap().clone());
    a.push(json!({"role": "user", "content": "A again"}));
    let other = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": "B", "store": false}),
    )
    .await;
    assert_eq!(other.headers["x-wsbridge-continuation"], "fresh");
    assert_eq!(bridge.metric("wsbridge_head_evictions_total").await, 1.0);
    // A's head is gone: its next turn is sent in full, and still answered correctly.
    let again = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": a, "store": false}),
    )
    .await;
    assert_eq!(again.headers["x-wsbridge-continuation"], "fresh");
    assert!(output_text(&again.json()).starts_with("You said: A again."));
    assert_eq!(bridge.sim.stats().sockets_opened, 1);
}

#[tokio::test]
async fn a_history_too_large_to_resend_over_the_socket_still_continues_on_it() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.max_frame_bytes = 2_000
    })
    .await;
    let url = bridge.url();
    let mut input = vec![json!({"role": "user", "content": "x".repeat(1_500)})];
    let first = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": input, "store": false}),
    )
    .await;
    input.extend(first.json()["output"].as_array().unwrap().clone());
    input.push(json!({"role": "user", "content": "short"}));
    let body = json!({"model": "gpt-test", "input": input, "store": false});
    assert!(body.to_string().len() > 2_000);
    let second = common::post_json(&url, &body).await;
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    assert!(output_text(&second.json()).starts_with("You said: short."));
    let stats = bridge.sim.stats();
    assert!(stats.turns.iter().all(|t| t.transport == Transport::Ws));
    // A new conversation that large has nothing to continue: it goes over REST.
    let fresh = common::post_json(
        &url,
        &json!({"model": "gpt-test", "input": "y".repeat(2_500)}),
    )
    .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(
        bridge.sim.stats().turns.last().unwrap().transport,
        Transport::Rest
    );
}

#[tokio::test]
async fn continuation_can_be_turned_off() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.enabled = false
    })
    .await;
    let run = agent_loop(&bridge.url(), 3, &json!({}), no_edit).await;
    assert!(run.routes.iter().all(|r| r == "fresh"));
    assert!(
        bridge
            .sim
            .stats()
            .turns
            .iter()
            .all(|t| t.previous_response_id.is_none())
    );
}
