//! What the client sees when the upstream is looser than the documentation, or broken: error
//! events without a `code`, frames that are not JSON or are pretty-printed, late events of an
//! earlier turn, sequence numbers that go backwards, huge messages. The upstream here is a
//! scripted WebSocket server ([`common::scripted`]), since the simulator never misbehaves
//! like this on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::*;
use serde_json::{Value, json};

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// A proxy in front of `upstream`, and its answer to one `"hi"` (streamed or not).
async fn ask_hi(upstream: &Scripted, stream: bool) -> (wsbridge::Proxy, Reply) {
    let proxy = proxy_for(upstream, |_| {}).await;
    let reply = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "input": "hi", "stream": stream}),
    )
    .await;
    (proxy, reply)
}

#[tokio::test]
async fn a_codeless_invalid_previous_response_id_on_our_continuation_is_resent_in_full() {
    let upstream = scripted(|index, frame| match index {
        0 => answer("resp_1", "Hello"),
        // The form real servers send: no code, no param.
        1 if frame.get("previous_response_id").is_some() => vec![
            json!({"type": "error", "status": 400, "error": {"type": "invalid_request_error",
                   "message": "Invalid `previous_response_id`."}})
            .to_string(),
        ],
        _ => answer("resp_2", "Again"),
    })
    .await;
    let proxy = proxy_for(&upstream, |_| {}).await;
    let first = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "input": [user("hi")]}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let output = first.json()["output"][0].clone();
    let second = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "stream": true,
                "input": [user("hi"), output, user("more")]}),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "recovered");
    let events = second.events();
    assert_eq!(output_text(final_response(&events)), "Again");
    let frames = upstream.frames();
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[1]["previous_response_id"], "resp_1");
    assert_eq!(frames[1]["input"].as_array().unwrap().len(), 1);
    assert!(frames[2].get("previous_response_id").is_none());
    assert_eq!(frames[2]["input"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_frame_that_is_not_json_ends_the_stream_with_response_failed_and_forges_nothing() {
    let upstream = scripted(|_, _| {
        let mut frames = answer("resp_1", "Hello");
        // Raw line breaks inside a string: not JSON, and relayed as is it would forge a
        // `response.completed` event at the client.
        frames.insert(
            2,
            "{\"type\":\"response.output_text.delta\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\",\"sequence_number\":2}"
                .to_owned(),
        );
        frames
    })
    .await;
    let (_proxy, reply) = ask_hi(&upstream, true).await;
    assert_eq!(reply.status, 200);
    // Strict framing: every event is exactly `event:` + one `data:` line of JSON.
    let events = reply.events();
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ],
        "{}",
        reply.body
    );
    let failed = &events[2];
    assert_eq!(failed["sequence_number"], 2);
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_error");
}

#[tokio::test]
async fn a_frame_that_is_not_json_before_any_output_is_retried_on_another_socket() {
    let upstream = scripted(|index, _| match index {
        0 => vec!["<html>502 Bad Gateway</html>".to_owned()],
        _ => answer("resp_1", "Hello"),
    })
    .await;
    let (_proxy, reply) = ask_hi(&upstream, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(output_text(&reply.json()), "Hello");
    assert_eq!(
        upstream.sockets.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn pretty_printed_events_are_relayed_as_one_event_each_meaning_the_same() {
    let upstream = scripted(|_, _| {
        answer("resp_1", "Hello\nworld")
            .iter()
            .map(|frame| {
                let value: Value = serde_json::from_str(frame).unwrap();
                serde_json::to_string_pretty(&value)
                    .unwrap()
                    .replace('\n', "\r\n")
            })
            .collect()
    })
    .await;
    let (_proxy, reply) = ask_hi(&upstream, true).await;
    let events = reply.events();
    let expected: Vec<Value> = answer("resp_1", "Hello\nworld")
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    assert_eq!(events, expected);
}

#[tokio::test]
async fn late_events_of_an_earlier_turn_and_events_of_another_response_are_dropped() {
    let upstream = scripted(|index, _| match index {
        0 => answer("resp_1", "one"),
        _ => {
            // Conversation one's stragglers arrive just after conversation two's request.
            let mut frames = vec![
                json!({"type": "response.output_text.delta", "sequence_number": 7,
                       "item_id": "msg_resp_1", "output_index": 0, "content_index": 0, "delta": "LEAK"})
                .to_string(),
                json!({"type": "response.completed", "sequence_number": 8,
                       "response": {"id": "resp_1", "status": "completed", "output": []}})
                .to_string(),
            ];
            let mut answer = answer("resp_2", "two");
            answer.insert(
                1,
                json!({"type": "response.in_progress", "sequence_number": 1,
                       "response": {"id": "resp_1", "status": "in_progress", "output": []}})
                .to_string(),
            );
            frames.extend(answer);
            frames
        }
    })
    .await;
    // One socket, so conversation two is served on conversation one's.
    let proxy = proxy_for(&upstream, |config| config.pool.max_sockets = 1).await;
    let first = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "input": "first"}),
    )
    .await;
    assert_eq!(output_text(&first.json()), "one");
    let second = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "input": "second", "stream": true}),
    )
    .await;
    assert!(!second.body.contains("LEAK"), "{}", second.body);
    let events = second.events();
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_text.delta",
            "response.completed"
        ]
    );
    assert!(
        events
            .iter()
            .all(|event| event.get("response").is_none_or(|r| r["id"] == "resp_2"))
    );
    assert_eq!(output_text(final_response(&events)), "two");
    assert_eq!(
        upstream.sockets.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let dropped = "wsbridge_upstream_events_dropped_total";
    assert_eq!(
        proxy_metric(&proxy, &format!("{dropped}{{reason=\"before_created\"}}")).await,
        2.0
    );
    assert_eq!(
        proxy_metric(&proxy, &format!("{dropped}{{reason=\"other_response\"}}")).await,
        1.0
    );
}

#[tokio::test]
async fn sequence_numbers_that_go_backwards_or_repeat_are_dropped_and_the_added_failure_follows_the_last()
 {
    let upstream = scripted(|_, _| {
        let delta = |sequence: u64, text: &str| {
            json!({"type": "response.output_text.delta", "sequence_number": sequence,
                   "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": text})
            .to_string()
        };
        let mut frames = answer("resp_1", "a");
        frames.truncate(3);
        frames.extend([
            delta(2, "DUP"),
            delta(1, "OLD"),
            delta(5, "b"),
            CLOSE.to_owned(),
        ]);
        frames
    })
    .await;
    let (proxy, reply) = ask_hi(&upstream, true).await;
    let events = reply.events();
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [0, 1, 2, 5, 6], "{}", reply.body);
    assert_eq!(events.last().unwrap()["type"], "response.failed");
    assert!(!reply.body.contains("DUP") && !reply.body.contains("OLD"));
    assert_eq!(
        proxy_metric(
            &proxy,
            "wsbridge_upstream_events_dropped_total{reason=\"sequence\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_socket_that_read_a_huge_message_is_closed_after_its_turn_to_free_its_buffer() {
    let padding = "x".repeat(2 << 20);
    let upstream = scripted(move |_, _| {
        let mut frames = answer("resp_1", "big");
        let mut completed: Value = serde_json::from_str(&frames[3]).unwrap();
        completed["response"]["metadata"] = json!({"padding": padding});
        frames[3] = completed.to_string();
        frames
    })
    .await;
    let (proxy, reply) = ask_hi(&upstream, false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["metadata"]["padding"].as_str().unwrap().len(),
        2 << 20
    );
    let closed = "wsbridge_upstream_socket_closes_total{reason=\"large_message\"}";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while proxy_metric(&proxy, closed).await < 1.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(proxy_metric(&proxy, closed).await, 1.0);
    assert_eq!(
        proxy_metric(&proxy, "wsbridge_upstream_sockets{state=\"idle\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_message_over_the_frame_limit_fails_the_turn_instead_of_being_buffered() {
    let padding = "x".repeat(300 << 10);
    let upstream = scripted(move |_, _| {
        let mut frames = answer("resp_1", "big");
        frames[2] = json!({"type": "response.output_text.delta", "sequence_number": 2,
                           "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": padding})
        .to_string();
        frames
    })
    .await;
    let proxy = proxy_for(&upstream, |config| {
        config.upstream.max_message_bytes = 256 << 10
    })
    .await;
    let reply = post_json(
        &proxy.base_url(),
        &json!({"model": "gpt-sim", "input": "hi", "stream": true}),
    )
    .await;
    let events = reply.events();
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    // The oversized message broke the socket: it is closed, never returned to the pool.
    assert_eq!(events[2]["response"]["error"]["code"], "server_error");
    assert_eq!(
        proxy_metric(&proxy, "wsbridge_upstream_sockets{state=\"idle\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_websocket_429_gets_retry_after_from_the_wording_of_its_message() {
    let upstream = scripted(|_, _| {
        vec![json!({"type": "error", "status": 429, "error": {"type": "requests", "code": "rate_limit_exceeded",
              "message": "Rate limit reached for gpt-sim on requests per min (RPM): Limit 3. Please try again in 1.2s."}})
        .to_string()]
    })
    .await;
    let (_proxy, reply) = ask_hi(&upstream, false).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["retry-after"], "2");
    assert_eq!(reply.headers["retry-after-ms"], "1200");
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
}
