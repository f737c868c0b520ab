//! A Chat Completions client that resends its whole `messages` history every turn gets
//! continuations: only the new messages go upstream, on the socket holding the previous turn,
//! with the same answers as full resends, whatever the model reasons.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::chat::*;
use common::*;
use serde_json::json;
use wsbridge::simulator::SimulatorConfig;
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

/// LangChain rebuilds each tool call's arguments with Python's `json.dumps` (`{"a": 1}` for the
/// model's `{"a":1}`), and sends `content: ""` beside tool calls: the same calls all the same.
#[tokio::test]
async fn a_framework_that_reserialises_tool_arguments_still_continues() {
    let bridge = bridge().await;
    let run = chat_loop_with(&bridge.url(), 4, false, |message| {
        if message["tool_calls"].is_array() {
            message["content"] = json!("");
        }
        if let Some(calls) = message["tool_calls"].as_array_mut() {
            for call in calls {
                let arguments: serde_json::Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                let spaced = arguments
                    .to_string()
                    .replace("\":", "\": ")
                    .replace(",\"", ", \"");
                assert_ne!(spaced, call["function"]["arguments"].as_str().unwrap());
                call["function"]["arguments"] = json!(spaced);
            }
        }
    })
    .await;
    assert_eq!(run.calls, 4);
    assert!(
        run.routes[1..].iter().all(|r| r == "continued"),
        "{:?}",
        run.routes
    );
    let turns = bridge.sim.stats().turns;
    assert!(
        turns[1..].iter().all(|t| t.continued && t.input_items == 1),
        "{turns:?}"
    );
}

/// Legacy function calling (`functions`, `message.function_call`, the `function` role): answered
/// in that form, streamed or not, one call per turn; a legacy call has no id, so each turn goes
/// in full.
#[tokio::test]
async fn a_legacy_function_calling_loop_is_answered_in_its_own_form() {
    let bridge = bridge().await;
    let functions = json!([{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]);
    let mut messages = vec![json!({"role": "user", "content": "What is the answer?"})];
    for turn in 0..=3 {
        let mut body = json!({"model": "gpt-test", "messages": messages, "functions": functions,
                              "metadata": {"sim_tool_calls": "3"}});
        let reply = chat(&bridge.url(), &body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
        assert_eq!(header(&reply, "x-wsbridge-continuation"), "fresh");
        let choice = reply.json()["choices"][0].clone();
        let message = choice["message"].clone();
        assert!(message.get("tool_calls").is_none(), "{message}");
        body["stream"] = json!(true);
        let (chunks, done) = sse_chunks(&chat(&bridge.url(), &body).await.body);
        assert!(done);
        assert_eq!(
            finish_reason(&chunks),
            [choice["finish_reason"].as_str().unwrap()]
        );
        if turn == 3 {
            assert_eq!(choice["finish_reason"], "stop");
            assert!(
                message["content"]
                    .as_str()
                    .unwrap()
                    .contains("Tool said: result 3"),
                "{message}"
            );
            return;
        }
        assert_eq!(choice["finish_reason"], "function_call");
        assert_eq!(message["function_call"]["name"], "lookup");
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["function_call"]["name"],
            "lookup"
        );
        messages.push(message);
        messages.push(json!({"role": "function", "name": "lookup", "content": format!("result {}", turn + 1)}));
    }
}
