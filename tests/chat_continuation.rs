//! A Chat Completions client that resends its whole `messages` history every turn gets
//! continuations: only the new messages go upstream, on the socket holding the previous turn,
//! with the same answers as full resends, whatever the model reasons.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::chat::*;
use common::*;
use serde_json::json;
use wsbridge::config::SimulatorConfig;
use wsbridge::simulator::stats::Transport;

#[tokio::test]
async fn a_20_call_chat_loop_resending_everything_sends_only_new_messages_upstream() {
    let bridge = bridge().await;
    let through = chat_loop(&bridge.url(), 20, true).await;
    assert_eq!(through.calls, 20);
    assert_eq!(through.routes.len(), 21);
    assert_eq!(through.routes[0], "fresh");
    assert!(
        through.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        through.routes
    );
    let stats = bridge.sim.stats();
    let turns: Vec<_> = stats
        .turns
        .iter()
        .filter(|t| t.transport == Transport::Ws)
        .collect();
    assert_eq!(turns.len(), 21);
    assert_eq!(turns[0].input_items, 2);
    for (turn, previous) in turns[1..].iter().zip(&turns) {
        assert!(turn.continued, "{turn:?}");
        assert_eq!(turn.previous_response_id, previous.response_id);
        assert_eq!(turn.input_items, 1, "only the tool message: {turn:?}");
    }
    assert_eq!(stats.sockets_for(KEY).len(), 1, "one upstream socket");

    // The same loop resent in full every turn (continuations off) gets the same answer.
    let full = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.enabled = false
    })
    .await;
    let resent = chat_loop(&full.url(), 20, false).await;
    assert_eq!(resent.answer, through.answer);
    assert!(resent.routes.iter().all(|r| r == "fresh"));
    let sent: Vec<usize> = full
        .sim
        .stats()
        .turns
        .iter()
        .map(|t| t.input_items)
        .collect();
    assert_eq!(
        sent.last(),
        Some(&(2 + 2 * 20)),
        "full resends carry everything: {sent:?}"
    );
}

#[tokio::test]
async fn reasoning_in_the_output_does_not_stop_a_chat_from_continuing_even_in_strict_mode() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.continuation.reasoning = wsbridge::continuation::ReasoningPolicy::Strict;
    })
    .await;
    let mut body = hi(false);
    body["reasoning_effort"] = json!("low");
    let first = chat(&bridge.url(), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let completion = first.json();
    assert!(
        completion["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let mut message = completion["choices"][0]["message"].clone();
    message.as_object_mut().unwrap().remove("annotations");
    body["messages"]
        .as_array_mut()
        .unwrap()
        .extend([message, json!({"role": "user", "content": "and then?"})]);
    let second = chat(&bridge.url(), &body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(header(&second, "x-wsbridge-continuation"), "continued");
    assert_eq!(bridge.sim.stats().turns.last().unwrap().input_items, 1);
}
