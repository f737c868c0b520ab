//! Scenarios about how wsbridge scales out rather than how fast one stream goes: `lanes`
//! (sockets and memory for many concurrent conversations, `upstream.lanes` off vs on),
//! `relay` (a WebSocket client's first turn through the relay vs straight to the simulator) and
//! `cluster` (three replicas vs one instance, turns spread round-robin). Each compares against
//! a baseline measured in the same run (docs/architecture.md, "Lanes", "WebSocket relay",
//! "Cluster").

mod cluster;
mod lanes;
mod relay;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};

pub use cluster::cluster;
pub use lanes::lanes;
pub use relay::relay;

use crate::load::{self, HttpClient, simulator_profile as profile};

fn profile_name(quick: bool) -> &'static str {
    if quick { "openai ÷ 10" } else { "openai" }
}

/// One client conversation: a tool loop resending its whole history every turn, as the SDKs'
/// agent loops do, until the model answers.
struct Conversation {
    input: Vec<Value>,
    calls: u32,
    /// The response id of each turn so far.
    ids: Vec<String>,
    answer: Option<String>,
}

impl Conversation {
    fn new(index: usize, calls: u32) -> Self {
        let prompt = format!("Conversation {index}: find the answer.");
        Self {
            input: vec![json!({"role": "user", "content": prompt})],
            calls,
            ids: Vec::new(),
            answer: None,
        }
    }

    fn done(&self) -> bool {
        self.answer.is_some()
    }

    /// Sends the next turn (non-streaming) to `base`; returns the time to the response head.
    /// Panics on anything but a 200: the figures of failed turns would not compare.
    async fn turn(&mut self, client: &HttpClient, base: &str) -> Duration {
        let body = json!({
            "model": "gpt-bench",
            "input": self.input,
            "tools": [{"type": "function", "name": "lookup", "description": "Look it up.",
                       "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}],
            "store": false,
            "metadata": {"sim_tool_calls": self.calls.to_string()},
        });
        let started = Instant::now();
        let response = client
            .request(load::post_to(base, "/responses", crate::KEY, &body))
            .await
            .unwrap();
        let head = started.elapsed();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{base}: {}", String::from_utf8_lossy(&bytes));
        let response: Value = serde_json::from_slice(&bytes).unwrap();
        self.ids.push(response["id"].as_str().unwrap().to_owned());
        let output = response["output"].as_array().unwrap().clone();
        let calls: Vec<Value> = output
            .iter()
            .filter(|item| item["type"] == "function_call")
            .cloned()
            .collect();
        self.input.extend(output.iter().cloned());
        if calls.is_empty() {
            self.answer = Some(
                output
                    .iter()
                    .filter_map(|item| item["content"].as_array())
                    .flatten()
                    .filter_map(|part| part["text"].as_str())
                    .collect(),
            );
        }
        for call in calls {
            // About 1 KiB of tool output, as in the simulator's calibration loop.
            let output = format!(
                "result for {}: {}",
                call["call_id"].as_str().unwrap_or(""),
                "data ".repeat(200)
            );
            self.input.push(
                json!({"type": "function_call_output", "call_id": call["call_id"], "output": output}),
            );
        }
        head
    }
}

/// Of the conversations' later turns (2nd onwards), how many the upstream saw continued from
/// the turn right before (`previous_response_id` = that turn's id, found on the socket: only
/// the new items sent), and how many later turns there were.
fn continued_from_previous(sim_stats: &Value, conversations: &[Conversation]) -> (usize, usize) {
    let turns = sim_stats["turns"].as_array().unwrap();
    let by_id: HashMap<&str, &Value> = turns
        .iter()
        .filter_map(|turn| Some((turn["response_id"].as_str()?, turn)))
        .collect();
    let (mut continued, mut total) = (0, 0);
    for conversation in conversations {
        for pair in conversation.ids.windows(2) {
            total += 1;
            let turn = by_id[pair[1].as_str()];
            if turn["continued"] == true && turn["previous_response_id"] == pair[0].as_str() {
                continued += 1;
            }
        }
    }
    (continued, total)
}

fn percent(part: usize, whole: usize) -> String {
    format!("{:.1} %", part as f64 * 100.0 / whole.max(1) as f64)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
