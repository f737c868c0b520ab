//! Turns a [`Plan`] into the exact event script of docs/protocol.md, "Upstream events": `sequence_number` from 0,
//! full Response objects in lifecycle events, `obfuscation` on deltas unless disabled,
//! `stream_id` on every event of a named lane. Latency and faults become [`Step`]s, so the
//! WebSocket and REST transports play one script and cannot drift apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

mod output;

use super::faults::Directives;
use super::model::{Plan, PlannedItem};
use crate::ids;

/// One thing a transport does while playing a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this event (JSON text).
    Event(String),
    Sleep(Duration),
    /// Drop the connection without a terminal event.
    Close,
    /// After the terminal event (and after the response is stored): wait [`LATE_AFTER`],
    /// then send this event anyway (the `late_event` fault).
    Late(String),
}

/// How long after its terminal event a `late_event` straggler goes out.
pub const LATE_AFTER: Duration = Duration::from_millis(20);

/// How the script ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Completed,
    Incomplete,
    Failed,
    Closed,
}

#[derive(Debug)]
pub struct Script {
    pub steps: Vec<Step>,
    pub terminal: Terminal,
    /// The final Response object (what `stream: false` returns and the store keeps).
    pub response: Value,
    /// The output items, as the terminal event lists them.
    pub output: Vec<Value>,
}

/// Everything the script needs besides the plan.
#[derive(Debug)]
pub struct ScriptInput<'a> {
    /// The Response object of this turn without its status-dependent fields.
    pub template: &'a Map<String, Value>,
    pub plan: &'a Plan,
    pub directives: &'a Directives,
    pub stream_id: Option<&'a str>,
    pub obfuscate: bool,
    /// Input processing plus time to first token.
    pub first_token_delay: Duration,
    pub per_token: Duration,
    pub usage: Value,
}

pub fn script(input: &ScriptInput<'_>) -> Script {
    let mut out = Emitter {
        seq: 0,
        stream_id: input.stream_id,
        obfuscate: input.obfuscate,
        steps: Vec::new(),
        per_token: input.per_token,
        tokens_sent: 0,
        failed: false,
    };
    let directives = input.directives;
    out.sleep(directives.stall_before);
    if directives.close_before_created {
        out.steps.push(Step::Close);
        return out.end(Terminal::Closed, Value::Null, Vec::new());
    }
    let in_progress = Value::Object(response(input, "in_progress", json!([]), Value::Null));
    out.event("response.created", json!({"response": in_progress}));
    out.event("response.in_progress", json!({"response": in_progress}));
    for _ in 0..directives.keepalives {
        out.sleep(directives.keepalive_interval);
        out.event("keepalive", json!({}));
    }
    out.sleep(input.first_token_delay);

    if directives.response_failed {
        let mut failed = response(input, "failed", json!([]), Value::Null);
        failed.insert("completed_at".into(), Value::Null);
        failed.insert(
            "error".into(),
            json!({"code": "server_error", "message": "The model failed to generate a response."}),
        );
        let failed = Value::Object(failed);
        out.event("response.failed", json!({"response": failed}));
        return out.end(Terminal::Failed, failed, Vec::new());
    }

    let deltas: u32 = input.plan.items.iter().map(PlannedItem::deltas).sum();
    let close_at = directives.close_mid_stream.then_some((deltas / 2).max(1));
    for (index, item) in input.plan.items.iter().enumerate() {
        if out.item(index, item, directives, close_at) {
            let terminal = if out.failed {
                Terminal::Failed
            } else {
                Terminal::Closed
            };
            return out.end(terminal, Value::Null, Vec::new());
        }
    }
    out.finish(input)
}

/// The turn's Response object with `status`, `output` and `usage` set.
fn response(
    input: &ScriptInput<'_>,
    status: &str,
    output: Value,
    usage: Value,
) -> Map<String, Value> {
    let mut response = input.template.clone();
    response.insert("status".into(), status.into());
    response.insert("output".into(), output);
    response.insert("usage".into(), usage);
    response
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Emitter<'a> {
    seq: u64,
    stream_id: Option<&'a str>,
    obfuscate: bool,
    steps: Vec<Step>,
    per_token: Duration,
    tokens_sent: u32,
    /// The script ended with an in-stream `error` event rather than a close.
    failed: bool,
}

impl Emitter<'_> {
    fn end(self, terminal: Terminal, response: Value, output: Vec<Value>) -> Script {
        Script {
            steps: self.steps,
            terminal,
            response,
            output,
        }
    }

    /// The terminal event of a turn that produced all its output (and the `late_event`
    /// straggler after it).
    fn finish(mut self, input: &ScriptInput<'_>) -> Script {
        let output: Vec<Value> = input
            .plan
            .items
            .iter()
            .map(PlannedItem::done_item)
            .collect();
        let incomplete = input.plan.incomplete();
        let (status, terminal, event) = if incomplete {
            ("incomplete", Terminal::Incomplete, "response.incomplete")
        } else {
            ("completed", Terminal::Completed, "response.completed")
        };
        let mut done = response(
            input,
            status,
            Value::Array(output.clone()),
            input.usage.clone(),
        );
        done.insert("completed_at".into(), Value::from(unix_now()));
        if incomplete {
            done.insert(
                "incomplete_details".into(),
                json!({"reason": "max_output_tokens"}),
            );
        }
        let done = Value::Object(done);
        self.event(event, json!({"response": done}));
        if input.directives.late_event {
            self.event(
                "response.output_text.delta",
                json!({"item_id": "msg_late", "output_index": 0, "content_index": 0, "delta": "LATE"}),
            );
            if let Some(Step::Event(late)) = self.steps.pop() {
                self.steps.push(Step::Late(late));
            }
        }
        self.end(terminal, done, output)
    }

    fn event(&mut self, kind: &str, fields: Value) {
        let mut event = Map::with_capacity(8);
        event.insert("type".into(), kind.into());
        event.insert("sequence_number".into(), self.seq.into());
        if let Value::Object(fields) = fields {
            event.extend(fields);
        }
        if let Some(stream_id) = self.stream_id {
            event.insert("stream_id".into(), stream_id.into());
        }
        self.seq += 1;
        self.steps
            .push(Step::Event(Value::Object(event).to_string()));
    }

    fn sleep(&mut self, duration: Duration) {
        if !duration.is_zero() {
            self.steps.push(Step::Sleep(duration));
        }
    }

    /// A delta event carrying one output token, paced by `per_token`. Returns true when the
    /// script must close here (the `close_mid_stream` point).
    fn token(
        &mut self,
        kind: &str,
        mut fields: Value,
        directives: &Directives,
        close_at: Option<u32>,
    ) -> bool {
        if self.tokens_sent > 0 {
            self.sleep(self.per_token);
        }
        if self.obfuscate
            && let Some(map) = fields.as_object_mut()
        {
            map.insert("obfuscation".into(), obfuscation().into());
        }
        self.event(kind, fields);
        self.tokens_sent += 1;
        if self.tokens_sent == 1
            && directives.repeat_sequence
            && let Some(Step::Event(first)) = self.steps.last()
        {
            let again = Step::Event(first.clone());
            self.steps.push(again);
        }
        if self.tokens_sent == 1 {
            self.sleep(directives.stall_within);
            if let Some(code) = &directives.stream_error {
                // The flat in-stream error of docs/protocol.md, "Errors", which ends the stream.
                let message = "An error occurred while processing your request.";
                self.event(
                    "error",
                    json!({"code": code, "message": message, "param": null}),
                );
                self.failed = true;
                return true;
            }
        }
        if close_at == Some(self.tokens_sent) {
            self.steps.push(Step::Close);
            return true;
        }
        false
    }
}

fn merge(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}

/// Random-length padding that blurs packet sizes, as the API adds to deltas.
fn obfuscation() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let seed = ids::random_u64();
    let len = 1 + (seed % 15) as usize;
    (0..len)
        .map(|i| char::from(ALPHABET[((seed >> (i * 4)) % 62) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::model::{self, Settings};
    use crate::simulator::store::ContextSummary;

    fn play(plan: &Plan, directives: &Directives, stream_id: Option<&str>) -> (Vec<Value>, Script) {
        let template: Map<String, Value> =
            serde_json::from_value(json!({"id":"resp_1","object":"response"})).unwrap();
        let script = script(&ScriptInput {
            template: &template,
            plan,
            directives,
            stream_id,
            obfuscate: true,
            first_token_delay: Duration::ZERO,
            per_token: Duration::ZERO,
            usage: json!({}),
        });
        let events = script
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Event(text) => Some(serde_json::from_str(text).unwrap()),
                _ => None,
            })
            .collect();
        (events, script)
    }

    fn text_plan() -> Plan {
        let mut summary = ContextSummary::default();
        summary.extend(&[json!({"role":"user","content":"hi"})]);
        model::plan(
            &summary,
            &Map::new(),
            Settings {
                answer_words: 6,
                tool_calls: 0,
                parallel: 1,
                refuse: false,
            },
        )
    }

    #[test]
    fn text_answer_follows_the_documented_order() {
        let (events, script) = play(&text_plan(), &Directives::default(), None);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            &kinds[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            &kinds[kinds.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i as u64);
            assert!(event.get("stream_id").is_none());
        }
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(script.response["output"][0]["content"][0]["text"], deltas);
        assert!(
            events
                .iter()
                .filter(|e| e["type"] == "response.output_text.delta")
                .all(|e| e["obfuscation"].is_string())
        );
        assert_eq!(script.terminal, Terminal::Completed);
    }

    #[test]
    fn named_lane_events_carry_the_stream_id() {
        let (events, _) = play(&text_plan(), &Directives::default(), Some("lane-1"));
        assert!(events.iter().all(|e| e["stream_id"] == "lane-1"));
    }

    #[test]
    fn faults_shape_the_script() {
        let directives = Directives::parse("close_mid_stream").unwrap();
        let (events, script) = play(&text_plan(), &directives, None);
        assert_eq!(script.terminal, Terminal::Closed);
        assert_eq!(script.steps.last(), Some(&Step::Close));
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "response.output_text.delta")
        );
        assert!(!events.iter().any(|e| e["type"] == "response.completed"));

        let (events, script) = play(
            &text_plan(),
            &Directives::parse("response_failed,keepalive:2").unwrap(),
            None,
        );
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "keepalive",
                "keepalive",
                "response.failed"
            ]
        );
        assert_eq!(script.response["error"]["code"], "server_error");
        assert_eq!(events[4]["sequence_number"], 4);
    }
}
