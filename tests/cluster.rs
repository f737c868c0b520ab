//! Several replicas sharing one upstream, a client spreading turns over them round-robin (as a
//! load balancer does): each conversation's turns reach its owner, so later turns continue
//! from the previous one; a stopped replica's conversations continue elsewhere after one full
//! resend; a new replica takes about a quarter; the internal hop cannot be used from outside
//! (docs/architecture.md, "Cluster").

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::{metric_of, peer_urls, post_with, replica, v1};
use common::{output_text, post_json};
use serde_json::{Value, json};
use wsbridge::cluster::DOWN_FOR;
use wsbridge::simulator::SimulatorConfig;
use wsbridge::simulator::stats::{Transport, TurnRecord};

/// Tool calls per conversation (1 + CALLS turns), unless a test says otherwise.
const CALLS: u32 = 5;

/// One client conversation: a tool loop that resends its whole history every turn.
#[derive(Debug, Clone)]
struct Conversation {
    input: Vec<Value>,
    /// Tool calls before the answer.
    calls: u32,
    /// The response id of each turn so far.
    ids: Vec<String>,
    answer: Option<String>,
}

impl Conversation {
    fn new(index: usize) -> Self {
        Self::with_calls(index, CALLS)
    }

    fn with_calls(index: usize, calls: u32) -> Self {
        let prompt = format!("Conversation {index}: what is the answer?");
        Self {
            input: vec![json!({"role": "user", "content": prompt})],
            calls,
            ids: Vec::new(),
            answer: None,
        }
    }

    /// Sends the next turn to `base_url`; false once the model has answered.
    async fn turn(&mut self, base_url: &str) -> bool {
        let body = json!({
            "model": "gpt-test",
            "input": self.input,
            "tools": [{"type": "function", "name": "lookup", "description": "Look it up.",
                       "parameters": {"type": "object", "properties": {}}}],
            "store": false,
            "metadata": {"sim_tool_calls": self.calls.to_string()},
        });
        let reply = post_json(base_url, &body).await;
        assert_eq!(reply.status, 200, "{base_url}: {}", reply.body);
        let response = reply.json();
        self.ids.push(response["id"].as_str().unwrap().to_owned());
        let output = response["output"].as_array().unwrap().clone();
        let calls: Vec<Value> = output
            .iter()
            .filter(|item| item["type"] == "function_call")
            .cloned()
            .collect();
        self.input.extend(output);
        if calls.is_empty() {
            self.answer = Some(output_text(&response));
            return false;
        }
        for call in calls {
            let output = format!("result for {}", call["call_id"].as_str().unwrap());
            self.input.push(
                json!({"type": "function_call_output", "call_id": call["call_id"], "output": output}),
            );
        }
        true
    }
}

/// Runs `turns` more turns of every conversation concurrently, each turn going to the next
/// of `urls` in one shared round-robin.
async fn run(conversations: &mut [Conversation], urls: &[String], turns: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = conversations
        .iter()
        .cloned()
        .map(|mut conversation| {
            let (urls, next) = (urls.to_vec(), next.clone());
            tokio::spawn(async move {
                for _ in 0..turns {
                    let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                    if !conversation.turn(url).await {
                        break;
                    }
                }
                conversation
            })
        })
        .collect();
    for (slot, task) in conversations.iter_mut().zip(tasks) {
        *slot = task.await.unwrap();
    }
}

/// For each conversation, its later turns (2nd onwards) as the upstream saw them, in order.
fn later_turns<'a>(
    sim_turns: &'a [TurnRecord],
    conversations: &[Conversation],
) -> Vec<Vec<&'a TurnRecord>> {
    let by_id: HashMap<&str, &TurnRecord> = sim_turns
        .iter()
        .filter_map(|turn| Some((turn.response_id.as_deref()?, turn)))
        .collect();
    conversations
        .iter()
        .map(|c| c.ids[1..].iter().map(|id| by_id[id.as_str()]).collect())
        .collect()
}

/// True when the turn continued from the response right before it (only new items sent).
fn continued_from(turn: &TurnRecord, previous: &str) -> bool {
    turn.continued && turn.previous_response_id.as_deref() == Some(previous)
}

/// Full resends among a conversation's later turns.
fn full_resends(conversation: &Conversation, later: &[&TurnRecord]) -> usize {
    later
        .iter()
        .zip(&conversation.ids)
        .filter(|(turn, previous)| !continued_from(turn, previous))
        .count()
}

#[tokio::test]
async fn turns_spread_over_three_replicas_continue_from_the_previous_turn() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(3);
    let mut replicas = Vec::new();
    for me in 0..3 {
        replicas.push(replica(&sim, &peers, me).await);
    }
    // Ten loops of 20 tool calls, as the CI test runs them.
    let calls = 20;
    let mut through: Vec<_> = (0..10)
        .map(|i| Conversation::with_calls(i, calls))
        .collect();
    run(&mut through, &v1(&peers), 30).await;
    let turns = sim.stats().turns;
    let later = later_turns(&turns, &through);
    let total: usize = later.iter().map(Vec::len).sum();
    let resends: usize = through
        .iter()
        .zip(&later)
        .map(|(c, l)| full_resends(c, l))
        .sum();
    assert_eq!(total, 10 * calls as usize);
    assert!(
        resends * 100 <= total,
        "{resends} of {total} later turns were not continued from the previous turn"
    );
    assert!(turns.iter().all(|turn| turn.transport == Transport::Ws));

    // The same conversations straight to the upstream: the same answers.
    let mut direct: Vec<_> = (0..10)
        .map(|i| Conversation::with_calls(i, calls))
        .collect();
    run(&mut direct, &[sim.base_url()], 30).await;
    for (through, direct) in through.iter().zip(&direct) {
        assert!(through.answer.is_some());
        assert_eq!(through.answer, direct.answer);
        assert_eq!(through.input.len(), direct.input.len());
    }

    let mut forwarded = 0.0;
    for peer in &peers {
        forwarded += metric_of(peer, "wsbridge_cluster_forwarded_total").await;
        assert_eq!(
            metric_of(peer, "wsbridge_cluster_local_fallbacks_total").await,
            0.0
        );
        assert_eq!(
            metric_of(peer, "wsbridge_cluster_forged_refused_total").await,
            0.0
        );
    }
    // Round-robin over three: about two turns in three reach a replica that does not own them.
    let all = (10 * (calls + 1)) as f64;
    assert!(forwarded > all / 3.0, "{forwarded} of {all} forwarded");
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_stopped_replicas_conversations_continue_elsewhere_after_one_full_resend() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(3);
    let mut replicas = Vec::new();
    for me in 0..3 {
        replicas.push(replica(&sim, &peers, me).await);
    }
    let mut conversations: Vec<_> = (0..24).map(Conversation::new).collect();
    run(&mut conversations, &v1(&peers), 3).await;
    // Turns the stopped replica served as owner: three per conversation it owned.
    let owned = metric_of(&peers[2], "wsbridge_continuations_total{outcome=\"fresh\"}").await;
    replicas.pop().unwrap().shutdown().await;
    // The load balancer sends only to the replicas left; every turn still succeeds.
    run(&mut conversations, &v1(&peers[..2]), 10).await;
    let turns = sim.stats().turns;
    let later = later_turns(&turns, &conversations);
    let mut moved = 0;
    for (conversation, later) in conversations.iter().zip(&later) {
        assert!(conversation.answer.is_some());
        let resends = full_resends(conversation, later);
        assert!(resends <= 1, "{resends} full resends in one conversation");
        // Each resend is right after the stop (turn 4), and the turns after it continue.
        if resends == 1 {
            assert!(!continued_from(later[2], &conversation.ids[2]));
            moved += 1;
        }
    }
    assert_eq!(
        moved as f64, owned,
        "the stopped replica's conversations moved, no other"
    );
    assert!(moved > 0);
    let mut unreachable = 0.0;
    for peer in &peers[..2] {
        unreachable += metric_of(peer, "wsbridge_cluster_owner_unreachable_total").await;
    }
    assert!(unreachable >= 1.0, "{unreachable}");
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_fourth_replica_takes_about_a_quarter_of_the_conversations() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(4);
    let mut replicas = Vec::new();
    for me in 0..3 {
        replicas.push(replica(&sim, &peers, me).await);
    }
    // The fourth is listed but not started: its conversations go to their next owner.
    let mut conversations: Vec<_> = (0..24).map(Conversation::new).collect();
    run(&mut conversations, &v1(&peers[..3]), 3).await;
    replicas.push(replica(&sim, &peers, 3).await);
    // Once the others try it again, it owns its share.
    tokio::time::sleep(DOWN_FOR + Duration::from_millis(200)).await;
    run(&mut conversations, &v1(&peers), 10).await;
    let turns = sim.stats().turns;
    let later = later_turns(&turns, &conversations);
    let moved: usize = conversations
        .iter()
        .zip(&later)
        .map(|(c, l)| full_resends(c, l))
        .sum();
    assert!(
        // Binomial(24, 1/4): 0 or over 12 has odds of about 1 in 1 000; the exact check follows.
        (1..=12).contains(&moved),
        "{moved} of 24 conversations moved (about 6 expected)"
    );
    let owned = metric_of(&peers[3], "wsbridge_continuations_total{outcome=\"fresh\"}").await;
    assert_eq!(
        moved as f64, owned,
        "only the new replica's conversations moved"
    );
    for conversation in &conversations {
        assert!(conversation.answer.is_some());
    }
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_forged_internal_header_is_refused_and_counted() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(2);
    let replicas = [
        replica(&sim, &peers, 0).await,
        replica(&sim, &peers, 1).await,
    ];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = json!({"model": "gpt-test", "input": "hi"}).to_string();
    let forged = [
        format!("v1;ts={now};from={};sig={}", peers[0], "00".repeat(32)),
        format!("v1;ts={now};from={}", peers[0]),
        format!("v1;ts={now};from=http://127.0.0.1:1;sig=00"),
    ];
    for header in &forged {
        let reply = post_with(
            &format!("{}/v1/responses", peers[1]),
            body.clone(),
            &[("x-wsbridge-forwarded", header)],
        )
        .await;
        assert_eq!(reply.status, 403, "{header}: {}", reply.body);
        assert!(reply.headers.contains_key("x-wsbridge-hop-refused"));
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "forbidden");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("x-wsbridge-forwarded")
        );
    }
    assert_eq!(
        metric_of(&peers[1], "wsbridge_cluster_forged_refused_total").await,
        forged.len() as f64
    );
    assert_eq!(sim.stats().turns_total, 0, "nothing reached the upstream");
    // The same request without the header is served.
    let reply = post_json(
        &format!("{}/v1", peers[1]),
        &serde_json::from_str(&body).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_previous_response_id_goes_to_the_replica_that_issued_it() {
    let sim = common::simulator(SimulatorConfig::default()).await;
    let peers = peer_urls(2);
    let replicas = [
        replica(&sim, &peers, 0).await,
        replica(&sim, &peers, 1).await,
    ];
    let entry = format!("{}/v1", peers[0]);
    // A conversation replica 0 does not own (it forwards its first turn).
    let mut conversation = None;
    for index in 0..40 {
        let mut candidate = Conversation::new(index);
        candidate.turn(&entry).await;
        if metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await == 1.0 {
            conversation = Some(candidate);
            break;
        }
    }
    let conversation = conversation.expect("replica 1 owns some conversation");
    let previous = conversation.ids[0].clone();
    let new_items: Vec<Value> = conversation
        .input
        .iter()
        .filter(|item| item["type"] == "function_call_output")
        .cloned()
        .collect();
    let body = json!({
        "model": "gpt-test", "input": new_items, "previous_response_id": previous, "store": false,
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}],
        "metadata": {"sim_tool_calls": CALLS.to_string()},
    });
    let reply = post_json(&entry, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        metric_of(&peers[0], "wsbridge_cluster_forwarded_total").await,
        2.0
    );
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let turn = sim
        .stats()
        .turns
        .into_iter()
        .find(|turn| turn.response_id.as_deref() == Some(id.as_str()))
        .unwrap();
    assert!(turn.continued, "continued on the owner's socket");
    for replica in replicas {
        replica.shutdown().await;
    }
}
