//! The deterministic scripted model: from a conversation summary and the request, what to
//! answer. Pure: no I/O, no clock; ids are the only randomness.
//!
//! - With function tools (and `tool_choice` not `none`), it calls them until the conversation
//!   holds `tool_calls` `function_call_output` items: `parallel` calls per turn (one when
//!   `parallel_tool_calls` is false), the function `tool_choice` names or else the function
//!   tools in turn from the first; `call_id` and arguments derive from the conversation, so the
//!   same history gives the same calls on any transport and API.
//! - Otherwise it answers `You said: <last user text>.`, quotes the last tool output, pads to
//!   `answer_words` words and ends with the conversation's item count and digest, so an answer
//!   computed from a wrong context is visibly different.
//! - `reasoning.effort` (other than `none`) adds a reasoning item first; `reasoning.summary`
//!   gives it a summary; `include: ["reasoning.encrypted_content"]` gives it encrypted content.
//! - A refusal replaces the text when the request asks for one (`metadata.sim_refuse`).
//! - `text.format` `json_schema` / `json_object` makes the text a JSON value instead
//!   ([`super::structured`]), so structured-output parsers get something to parse.

use serde_json::{Map, Value, json};

pub use super::plan::{Body, Plan, PlannedItem};
use super::store::ContextSummary;
use crate::ids;

/// Per-request knobs, from config defaults and `metadata.sim_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub answer_words: u32,
    pub tool_calls: u32,
    /// Function calls per turn when `parallel_tool_calls` allows more than one.
    pub parallel: u32,
    pub refuse: bool,
}

const FILLER: [&str; 12] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima",
];
const REFUSAL: &str = "I'm sorry, but I can't help with that request.";
const QUOTE_WORDS: usize = 48;

/// Decides the output for a conversation.
pub fn plan(summary: &ContextSummary, request: &Map<String, Value>, settings: Settings) -> Plan {
    let user_text = summary.last_user_text.as_deref().unwrap_or("");
    let mut items = Vec::new();
    if let Some(reasoning) = reasoning(summary, request, user_text) {
        items.push(reasoning);
    }
    let calls = function_calls(summary, request, settings, user_text);
    if !calls.is_empty() {
        items.extend(calls);
        return Plan { items };
    }
    let mut chunks: Vec<String> = if settings.refuse {
        words_to_chunks(REFUSAL.split(' ').map(str::to_owned).collect())
    } else {
        let words = answer_words(summary, user_text, settings.answer_words);
        match super::structured::format(request) {
            Some(format) => chunk_chars(&format.render(&words.join(" "), summary.items), 8),
            None => words_to_chunks(words),
        }
    };
    let limit = request
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let complete = limit.is_none_or(|limit| chunks.len() <= limit);
    if let Some(limit) = limit.filter(|_| !complete) {
        chunks.truncate(limit.max(1));
        if let Some(last) = chunks.last_mut() {
            last.truncate(last.trim_end().len());
        }
    }
    items.push(PlannedItem {
        id: ids::new_id("msg"),
        body: Body::Message {
            chunks,
            refusal: settings.refuse,
            complete,
        },
    });
    Plan { items }
}

/// This turn's function calls: none once the conversation holds `settings.tool_calls` outputs.
fn function_calls(
    summary: &ContextSummary,
    request: &Map<String, Value>,
    settings: Settings,
    user_text: &str,
) -> Vec<PlannedItem> {
    let tools = function_tools(request);
    let remaining = (settings.tool_calls as usize).saturating_sub(summary.tool_outputs);
    if tools.is_empty() || remaining == 0 {
        return Vec::new();
    }
    let parallel = if request.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        1
    } else {
        settings.parallel.max(1) as usize
    };
    (0..remaining.min(parallel))
        .map(|ordinal| {
            let step = summary.tool_outputs + ordinal + 1;
            let arguments = json!({"step": step, "query": quote(user_text, 12)}).to_string();
            PlannedItem {
                id: ids::new_id("fc"),
                body: Body::FunctionCall {
                    call_id: format!("call_{}", base62(summary.digest ^ step as u64, 24)),
                    name: tools[ordinal % tools.len()].to_owned(),
                    chunks: chunk_chars(&arguments, 4),
                },
            }
        })
        .collect()
}

fn reasoning(
    summary: &ContextSummary,
    request: &Map<String, Value>,
    user_text: &str,
) -> Option<PlannedItem> {
    let reasoning = request.get("reasoning")?.as_object()?;
    let effort = reasoning
        .get("effort")
        .and_then(Value::as_str)
        .unwrap_or("medium");
    if effort == "none" {
        return None;
    }
    let summary_text = reasoning
        .get("summary")
        .and_then(Value::as_str)
        .filter(|mode| *mode != "none")
        .map(|_| {
            let text = format!(
                "**Considering the request** The user wrote: {}",
                quote(user_text, 8)
            );
            words_to_chunks(text.split_whitespace().map(str::to_owned).collect())
        });
    let include_encrypted = request
        .get("include")
        .and_then(Value::as_array)
        .is_some_and(|include| include.iter().any(|v| v == "reasoning.encrypted_content"));
    Some(PlannedItem {
        id: ids::new_id("rs"),
        body: Body::Reasoning {
            summary: summary_text,
            encrypted_content: include_encrypted.then(|| {
                format!(
                    "gAAAAB{:016x}{:016x}{:016x}",
                    summary.digest,
                    ids::random_u64(),
                    ids::random_u64()
                )
            }),
            tokens: match effort {
                "minimal" => 8,
                "low" => 16,
                "high" | "xhigh" => 64,
                _ => 32,
            },
        },
    })
}

/// The names of the function tools the model may call, in order: none with `tool_choice`
/// `none`, only the named one with a function `tool_choice`.
fn function_tools(request: &Map<String, Value>) -> Vec<&str> {
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return Vec::new();
    }
    let named = choice
        .filter(|choice| choice.get("type").and_then(Value::as_str) == Some("function"))
        .and_then(|choice| choice.get("name"))
        .and_then(Value::as_str);
    let Some(tools) = request.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter(|tool| tool.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|tool| tool.get("name").and_then(Value::as_str))
        .filter(|name| named.is_none_or(|named| named == *name))
        .collect()
}

fn answer_words(summary: &ContextSummary, user_text: &str, target: u32) -> Vec<String> {
    let mut words = vec!["You".to_owned(), "said:".to_owned()];
    words.extend(
        format!("{}.", quote(user_text, QUOTE_WORDS))
            .split_whitespace()
            .map(str::to_owned),
    );
    if let Some(output) = summary.last_tool_output.as_deref() {
        words.extend(["Tool".to_owned(), "said:".to_owned()]);
        words.extend(
            format!("{}.", quote(output, QUOTE_WORDS))
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    let mut filler = FILLER.iter().cycle();
    while words.len() + 4 < target as usize {
        words.extend(filler.next().map(|word| (*word).to_owned()));
    }
    words.push(format!("[{}", summary.items));
    words.push("items,".to_owned());
    words.push("digest".to_owned());
    words.push(format!("{:016x}]", summary.digest));
    words
}

/// The first `max_words` words of `text`, whitespace collapsed.
fn quote(text: &str, max_words: usize) -> String {
    text.split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One chunk per word, each but the last followed by its space.
fn words_to_chunks(words: Vec<String>) -> Vec<String> {
    let last = words.len().saturating_sub(1);
    words
        .into_iter()
        .enumerate()
        .map(|(i, word)| if i < last { word + " " } else { word })
        .collect()
}

fn chunk_chars(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size)
        .map(|chunk| chunk.iter().collect())
        .collect()
}

fn base62(mut seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..len)
        .map(|_| {
            // splitmix64 step: spreads every bit of the seed over the whole id.
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            char::from(ALPHABET[((z ^ (z >> 31)) % 62) as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(items: &[Value]) -> ContextSummary {
        let mut summary = ContextSummary::default();
        summary.extend(items);
        summary
    }

    const SETTINGS: Settings = Settings {
        answer_words: 12,
        tool_calls: 2,
        parallel: 1,
        refuse: false,
    };

    fn text(plan: &Plan) -> String {
        match &plan.items.last().unwrap().body {
            Body::Message { chunks, .. } => chunks.concat(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn echoes_the_last_user_message_and_pads_to_length() {
        let plan = plan(
            &summary(&[json!({"role":"user","content":"hello there"})]),
            &Map::new(),
            Settings {
                answer_words: 20,
                ..SETTINGS
            },
        );
        let text = text(&plan);
        assert!(text.starts_with("You said: hello there. alpha"), "{text}");
        assert_eq!(text.split(' ').count(), 20);
    }

    #[test]
    fn a_different_history_gives_a_different_answer() {
        let request = Map::new();
        let a = text(&plan(
            &summary(&[
                json!({"role":"user","content":"x"}),
                json!({"role":"user","content":"q"}),
            ]),
            &request,
            SETTINGS,
        ));
        let b = text(&plan(
            &summary(&[
                json!({"role":"user","content":"y"}),
                json!({"role":"user","content":"q"}),
            ]),
            &request,
            SETTINGS,
        ));
        assert_ne!(a, b);
    }

    #[test]
    fn tool_loop_calls_until_enough_outputs_then_answers_with_the_last_output() {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"tools":[{"type":"function","name":"lookup"}]})).unwrap();
        let mut history = vec![json!({"role":"user","content":"find it"})];
        let mut call_ids = Vec::new();
        for step in 1..=2 {
            let plan = plan(&summary(&history), &request, SETTINGS);
            let Body::FunctionCall {
                call_id,
                name,
                chunks,
            } = &plan.items[0].body
            else {
                panic!("expected a call")
            };
            assert_eq!(name, "lookup");
            let args: Value = serde_json::from_str(&chunks.concat()).unwrap();
            assert_eq!(args["step"], step);
            call_ids.push(call_id.clone());
            history.push(plan.items[0].done_item());
            history.push(json!({"type":"function_call_output","call_id":call_id,"output":format!("result {step}")}));
        }
        assert_ne!(call_ids[0], call_ids[1]);
        let answer = text(&plan(&summary(&history), &request, SETTINGS));
        assert!(
            answer.starts_with("You said: find it. Tool said: result 2."),
            "{answer}"
        );
    }

    #[test]
    fn call_ids_are_deterministic_for_the_same_history() {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"tools":[{"type":"function","name":"f"}]})).unwrap();
        let history = summary(&[json!({"role":"user","content":"go"})]);
        assert_eq!(
            plan(&history, &request, SETTINGS).items[0].done_item()["call_id"],
            plan(&history, &request, SETTINGS).items[0].done_item()["call_id"]
        );
    }

    #[test]
    fn max_output_tokens_cuts_the_answer_short() {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"max_output_tokens": 3})).unwrap();
        let plan = plan(
            &summary(&[json!({"role":"user","content":"hi"})]),
            &request,
            SETTINGS,
        );
        assert!(plan.incomplete());
        assert_eq!(plan.output_tokens(), 3);
    }

    #[test]
    fn reasoning_item_comes_first_with_encrypted_content_only_when_included() {
        let history = summary(&[json!({"role":"user","content":"hi"})]);
        let request: Map<String, Value> =
            serde_json::from_value(json!({"reasoning":{"effort":"low","summary":"auto"}})).unwrap();
        let plain = plan(&history, &request, SETTINGS);
        assert_eq!(plain.items[0].done_item()["type"], "reasoning");
        assert!(
            plain.items[0]
                .done_item()
                .get("encrypted_content")
                .is_none()
        );
        let mut with_include = request.clone();
        with_include.insert("include".into(), json!(["reasoning.encrypted_content"]));
        assert!(
            plan(&history, &with_include, SETTINGS).items[0].done_item()["encrypted_content"]
                .is_string()
        );
    }

    fn call_names(plan: &Plan) -> Vec<&str> {
        plan.items
            .iter()
            .filter_map(|item| match &item.body {
                Body::FunctionCall { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parallel_calls_cycle_through_the_tools_unless_parallel_calls_are_off() {
        let tools = json!([{"type":"function","name":"a"},{"type":"web_search"},{"type":"function","name":"b"}]);
        let request: Map<String, Value> = serde_json::from_value(json!({"tools": tools})).unwrap();
        let history = summary(&[json!({"role":"user","content":"go"})]);
        let settings = Settings {
            tool_calls: 5,
            parallel: 3,
            ..SETTINGS
        };
        let plan = plan(&history, &request, settings);
        assert_eq!(call_names(&plan), ["a", "b", "a"]);
        let ids: std::collections::HashSet<Value> = plan
            .items
            .iter()
            .map(|i| i.done_item()["call_id"].clone())
            .collect();
        assert_eq!(ids.len(), 3, "every call has its own id");

        let mut serial = request.clone();
        serial.insert("parallel_tool_calls".into(), json!(false));
        assert_eq!(call_names(&super::plan(&history, &serial, settings)), ["a"]);

        let mut named = request.clone();
        named.insert(
            "tool_choice".into(),
            json!({"type": "function", "name": "b"}),
        );
        assert_eq!(
            call_names(&super::plan(&history, &named, settings)),
            ["b", "b", "b"]
        );

        // Only the calls still owed: 5 wanted, 4 answered.
        let mut answered = history.clone();
        answered.tool_outputs = 4;
        assert_eq!(
            call_names(&super::plan(&answered, &request, settings)),
            ["a"]
        );
    }

    #[test]
    fn a_json_schema_format_makes_the_answer_json() {
        let request: Map<String, Value> = serde_json::from_value(json!({"text": {"format": {
            "type": "json_schema", "name": "A",
            "schema": {"type": "object", "properties": {"said": {"type": "string"}}}}}}))
        .unwrap();
        let answer = text(&plan(
            &summary(&[json!({"role":"user","content":"hi"})]),
            &request,
            SETTINGS,
        ));
        let value: Value = serde_json::from_str(&answer).unwrap();
        assert!(value["said"].as_str().unwrap().starts_with("You said: hi."));
    }
}
