//! `upstream.lanes = true` against the simulator (docs/architecture.md, "Lanes"): concurrent
//! conversations share few sockets, each on a `stream_id` lane of its own that continues its
//! head; forks, the upstream's lane limit and a socket dying mid-turn, as clients and the
//! upstream see them.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::HashMap;

use common::{Bridge, KEY, PATIENCE, bridge_with, final_response, output_text, paced};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::stats::{StatsSnapshot, TurnRecord};

async fn lanes_bridge(simulator: SimulatorConfig) -> Bridge {
    bridge_with(simulator, |config| config.upstream.lanes = true).await
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// One turn's body: the whole history, `store: false`.
fn body(input: &[Value], stream: bool, fault: Option<&str>) -> Value {
    let mut body = json!({"model": "gpt-test", "input": input, "store": false, "stream": stream});
    if let Some(fault) = fault {
        body["metadata"] = json!({"sim_fault": fault});
    }
    body
}

/// One turn through the proxy: its Response (from `response.completed` when streamed) and
/// the `x-wsbridge-continuation` header. A streamed body never shows a `stream_id`.
async fn turn(url: &str, body: &Value) -> (Value, String) {
    let reply = common::post_json(url, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!reply.body.contains("stream_id"), "{}", reply.body);
    let route = reply.headers["x-wsbridge-continuation"]
        .to_str()
        .unwrap()
        .to_owned();
    let response = if body["stream"] == true {
        let events = reply.events();
        common::assert_consecutive_sequence_numbers(&events);
        final_response(&events).clone()
    } else {
        reply.json()
    };
    (response, route)
}

/// Per conversation, per turn: (response id, answer text, continuation header).
type Transcript = Vec<Vec<(String, String, String)>>;

/// `count` conversations at once, `turns` turns each, full history every turn; even ones
/// stream, odd ones do not.
async fn conversations(url: &str, count: usize, turns: usize) -> Transcript {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut input = Vec::new();
                let mut seen = Vec::new();
                for t in 0..turns {
                    input.push(user(&format!("conversation {n}, turn {t}")));
                    let (response, route) = turn(&url, &body(&input, n % 2 == 0, None)).await;
                    input.extend(response["output"].as_array().unwrap().iter().cloned());
                    let id = response["id"].as_str().unwrap().to_owned();
                    seen.push((id, output_text(&response), route));
                }
                seen
            })
        })
        .collect();
    let mut transcript = Vec::new();
    for task in tasks {
        transcript.push(task.await.unwrap());
    }
    transcript
}

fn by_response(stats: &StatsSnapshot) -> HashMap<&str, &TurnRecord> {
    stats
        .turns
        .iter()
        .filter_map(|turn| Some((turn.response_id.as_deref()?, turn)))
        .collect()
}

#[tokio::test]
async fn sixty_four_conversations_share_four_sockets_each_continuing_on_its_own_lane() {
    let on = lanes_bridge(paced(1)).await;
    let with_lanes = conversations(&on.url(), 64, 3).await;
    let off = bridge_with(paced(1), |_| {}).await;
    let without = conversations(&off.url(), 64, 3).await;

    let answers = |transcript: &Transcript| -> Vec<Vec<String>> {
        let each =
            |turns: &Vec<(String, String, String)>| turns.iter().map(|t| t.1.clone()).collect();
        transcript.iter().map(each).collect()
    };
    assert_eq!(
        answers(&with_lanes),
        answers(&without),
        "same answers with lanes off"
    );

    let stats = on.sim.stats();
    let sockets = stats.sockets_for(KEY);
    assert!(sockets.len() <= 4, "{sockets:?}");
    let records = by_response(&stats);
    for conversation in &with_lanes {
        for pair in conversation.windows(2) {
            let (previous, next) = (records[pair[0].0.as_str()], records[pair[1].0.as_str()]);
            assert_eq!(pair[1].2, "continued");
            assert_eq!(
                next.previous_response_id.as_deref(),
                Some(pair[0].0.as_str())
            );
            assert!(next.continued, "found in its lane's memory: {next:?}");
            assert_eq!(next.input_items, 1, "only the new message went upstream");
            assert!(next.stream_id.is_some());
            assert_eq!(
                (&next.stream_id, next.socket),
                (&previous.stream_id, previous.socket)
            );
        }
    }
    assert_eq!(on.metric("wsbridge_upstream_lanes_in_use").await, 64.0);
    assert_eq!(
        on.metric("wsbridge_upstream_lane_sockets").await,
        sockets.len() as f64
    );
    assert_eq!(
        on.metric("wsbridge_continuations_total{outcome=\"continued\"}")
            .await,
        128.0
    );
}

#[tokio::test]
async fn two_requests_continuing_one_head_fork_it_on_two_lanes_of_its_socket() {
    let on = lanes_bridge(SimulatorConfig::default()).await;
    let off = bridge_with(SimulatorConfig::default(), |_| {}).await;
    let mut answers = Vec::new();
    for bridge in [&on, &off] {
        let url = bridge.url();
        let mut input = vec![user("the common part")];
        let (first, _) = turn(&url, &body(&input, true, None)).await;
        input.extend(first["output"].as_array().unwrap().iter().cloned());
        let branch = |side: &str| {
            let mut branch = input.clone();
            branch.push(user(side));
            body(&branch, true, Some("stall_within:500"))
        };
        let (left_body, right_body) = (branch("left"), branch("right"));
        let (left, right) = tokio::join!(turn(&url, &left_body), turn(&url, &right_body));
        answers.push([output_text(&left.0), output_text(&right.0)]);
        if std::ptr::eq(bridge, &on) {
            assert_eq!(
                (left.1.as_str(), right.1.as_str()),
                ("continued", "continued")
            );
            let stats = on.sim.stats();
            let records = by_response(&stats);
            let parent = first["id"].as_str().unwrap();
            let (l, r) = (
                records[left.0["id"].as_str().unwrap()],
                records[right.0["id"].as_str().unwrap()],
            );
            for fork in [l, r] {
                assert_eq!(fork.previous_response_id.as_deref(), Some(parent));
                assert!(fork.continued && fork.input_items == 1, "{fork:?}");
                assert_eq!(fork.socket, records[parent].socket);
            }
            assert_ne!(l.stream_id, r.stream_id, "two lanes");
        }
    }
    assert_eq!(answers[0], answers[1], "the same answers as without lanes");
    assert!(answers[0][0].contains("left") && answers[0][1].contains("right"));
}

/// Starts a streamed turn and waits for its `response.created`; the task returns the whole
/// SSE body.
async fn started(bridge: &Bridge, body: &Value) -> tokio::task::JoinHandle<String> {
    let (rest, first) = common::open_stream(bridge, body).await;
    tokio::spawn(async move {
        let rest = tokio::time::timeout(PATIENCE, rest.collect())
            .await
            .unwrap()
            .unwrap();
        first + std::str::from_utf8(&rest.to_bytes()).unwrap()
    })
}

fn last_type(sse: &str) -> String {
    common::parse_sse(sse).last().unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_lane_limit_moves_a_turn_to_another_socket_and_a_dying_socket_fails_only_its_own_turns()
{
    // Three lanes a socket: the fourth conversation's lane is refused and goes to a new socket.
    let on = lanes_bridge(SimulatorConfig {
        max_named_lanes: 3,
        ..SimulatorConfig::default()
    })
    .await;
    let stream = |name: &str, fault: &str| body(&[user(name)], true, Some(fault));
    let dies = started(&on, &stream("a", "stall_within:2000,close_mid_stream")).await;
    let cut = started(&on, &stream("b", "stall_within:5000")).await;
    // Not started yet when its socket dies: sent again on the other socket, unseen.
    let waiting = tokio::spawn({
        let (url, body) = (
            on.url(),
            body(&[user("w")], false, Some("stall_before:2500")),
        );
        async move { turn(&url, &body).await.0 }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let moved = started(&on, &stream("c", "stall_within:3000")).await;
    let beside = started(&on, &stream("d", "stall_within:3000")).await;

    let [dies, cut, moved, beside] =
        [dies, cut, moved, beside].map(|task| async { task.await.unwrap() });
    let (dies, cut, moved, beside) = tokio::join!(dies, cut, moved, beside);
    assert_eq!(last_type(&dies), "response.failed");
    assert_eq!(
        last_type(&cut),
        "response.failed",
        "its socket died mid-turn"
    );
    assert_eq!(last_type(&moved), "response.completed");
    assert_eq!(last_type(&beside), "response.completed");
    assert!(
        !moved.contains("websocket_stream_limit_reached"),
        "the refusal is not the client's"
    );

    let stats = on.sim.stats();
    let socket_of = |sse: &str| {
        let id = common::parse_sse(sse)[0]["response"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        by_response(&stats)[id.as_str()].socket.unwrap()
    };
    assert_eq!(socket_of(&dies), socket_of(&cut));
    assert_eq!(socket_of(&moved), socket_of(&beside));
    assert_ne!(socket_of(&dies), socket_of(&moved));
    let waiting = waiting.await.unwrap();
    assert!(output_text(&waiting).contains("You said: w"), "{waiting}");
    let stats = on.sim.stats();
    let waited_on = by_response(&stats)[waiting["id"].as_str().unwrap()].socket;
    assert_eq!(waited_on, Some(socket_of(&moved)));
    for (cause, count) in [("stream_limit", 1.0), ("socket_closed", 1.0)] {
        let series = format!("wsbridge_upstream_recoveries_total{{cause=\"{cause}\"}}");
        assert_eq!(on.metric(&series).await, count, "{cause}");
    }
    let lane_sockets = on
        .wait_for_metric("wsbridge_upstream_lane_sockets", |n| n == 1.0)
        .await;
    assert_eq!(lane_sockets, 1.0, "the dead socket left the pool");
    let (after, _) = turn(&on.url(), &body(&[user("e")], false, None)).await;
    assert!(output_text(&after).contains("You said: e"), "{after}");
}

#[tokio::test]
async fn a_request_naming_its_own_stream_id_is_refused_before_anything_goes_upstream() {
    let on = lanes_bridge(SimulatorConfig::default()).await;
    let mut request = body(&[user("hi")], false, None);
    request["stream_id"] = json!("mine");
    let reply = on.post(&request).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let error = &reply.json()["error"];
    assert_eq!(
        (error["param"].as_str(), error["code"].as_str()),
        (Some("stream_id"), Some("unknown_parameter"))
    );
    assert_eq!(on.sim.stats().sockets_opened, 0);
}

#[tokio::test]
async fn a_lane_whose_response_does_not_start_in_time_retires_its_socket() {
    let on = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.lanes = true;
        config.upstream.first_event_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let slow = on
        .post(&body(&[user("slow")], false, Some("stall_before:1500")))
        .await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    // The upstream may never finish that lane: no new turn goes to its socket.
    let (next, _) = turn(&on.url(), &body(&[user("next")], false, None)).await;
    assert!(output_text(&next).contains("You said: next"));
    assert_eq!(on.sim.stats().sockets_opened, 2);
    let closed = on
        .wait_for_metric(
            "wsbridge_upstream_socket_closes_total{reason=\"turn_failed\"}",
            |n| n == 1.0,
        )
        .await;
    assert_eq!(
        closed, 1.0,
        "closed once only abandoned lanes were left on it"
    );
    assert_eq!(on.metric("wsbridge_upstream_lane_sockets").await, 1.0);
}
