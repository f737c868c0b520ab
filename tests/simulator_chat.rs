//! The simulator's `POST /v1/chat/completions`: OpenAI's chat wire format, stream and
//! non-stream, driven by the same scripted model as `/v1/responses` (the same conversation
//! gets the same answer and the same tool calls on both APIs). Errors, stats, faults and
//! latency: `simulator_chat_errors.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::*;
use serde_json::{Value, json};

fn hello_chat(stream: bool) -> Value {
    json!({"model": "gpt-sim", "messages": [{"role": "user", "content": "hello there"}], "stream": stream})
}

#[tokio::test]
async fn a_completion_answers_like_the_responses_api_for_the_same_conversation() {
    let sim = default_simulator().await;
    let chat = chat::chat(
        &sim.base_url(),
        &json!({"model": "gpt-sim", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "second question"},
        ]}),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    assert_eq!(chat.headers["content-type"], "application/json");
    let completion = chat.json();
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-sim");
    assert_eq!(completion["service_tier"], "default");
    assert!(
        completion["system_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("fp_")
    );
    let [choice] = completion["choices"].as_array().unwrap().as_slice() else {
        panic!("one choice: {completion}")
    };
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["refusal"].is_null());
    assert!(choice["message"].get("tool_calls").is_none());

    let responses = post_json(
        &sim.base_url(),
        &json!({"model": "gpt-sim", "input": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "noted", "annotations": []}]},
            {"role": "user", "content": "second question"},
        ]}),
    )
    .await;
    let text = output_text(&responses.json());
    assert!(text.starts_with("You said: second question."), "{text}");
    assert_eq!(choice["message"]["content"], text.as_str());

    let usage = &completion["usage"];
    let (prompt, completion_tokens) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion_tokens > 0);
    assert_eq!(usage["total_tokens"], prompt + completion_tokens);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn a_stream_has_openais_chunk_framing_and_the_same_text() {
    let sim = default_simulator().await;
    let plain = chat::chat(&sim.base_url(), &hello_chat(false)).await.json();
    let mut body = hello_chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = chat::chat(&sim.base_url(), &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let (chunks, done) = chat::sse_chunks(&reply.body);
    assert!(done, "a finished stream ends with data: [DONE]");
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text = chat_deltas(&chunks, 0, "content");
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(chunks.len() > 4, "one chunk per token");

    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        rest[..rest.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // Without include_usage: no usage chunk and no usage field.
    let (chunks, done) =
        chat::sse_chunks(&chat::chat(&sim.base_url(), &hello_chat(true)).await.body);
    assert!(done);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
}

/// One turn of a chat tool loop: the completion's calls as `(id, name, arguments)`.
fn chat_calls(completion: &Value) -> Vec<(String, String, String)> {
    completion["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let field = |v: &Value| v.as_str().unwrap().to_owned();
                    (
                        field(&c["id"]),
                        field(&c["function"]["name"]),
                        field(&c["function"]["arguments"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_parallel_tool_loop_makes_the_same_calls_and_answer_as_over_responses() {
    let sim = default_simulator().await;
    let metadata = json!({"sim_tool_calls": "3", "sim_parallel": "2"});

    let mut messages = vec![json!({"role": "user", "content": "find the things"})];
    let mut chat_turns = Vec::new();
    let chat_answer = loop {
        let body = json!({"model": "gpt-sim", "messages": messages, "tools": chat_tools(&["lookup", "search"]), "metadata": metadata});
        let completion = chat::chat(&sim.base_url(), &body).await.json();
        let calls = chat_calls(&completion);
        if calls.is_empty() {
            assert_eq!(completion["choices"][0]["finish_reason"], "stop");
            break completion["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert!(completion["choices"][0]["message"]["content"].is_null());
        messages.push(completion["choices"][0]["message"].clone());
        for (id, _, _) in &calls {
            messages.push(
                json!({"role": "tool", "tool_call_id": id, "content": format!("result for {id}")}),
            );
        }
        chat_turns.push(calls);
        assert!(chat_turns.len() <= 3, "still calling tools");
    };

    let tools =
        json!([{"type": "function", "name": "lookup"}, {"type": "function", "name": "search"}]);
    let mut input = vec![json!({"role": "user", "content": "find the things"})];
    let mut responses_turns = Vec::new();
    let responses_answer = loop {
        let response = post_json(
            &sim.base_url(),
            &json!({"model": "gpt-sim", "input": input, "tools": tools, "metadata": metadata}),
        )
        .await
        .json();
        let output = response["output"].as_array().unwrap().clone();
        let calls: Vec<(String, String, String)> = output
            .iter()
            .filter(|item| item["type"] == "function_call")
            .map(|c| {
                (
                    c["call_id"].as_str().unwrap().into(),
                    c["name"].as_str().unwrap().into(),
                    c["arguments"].as_str().unwrap().into(),
                )
            })
            .collect();
        if calls.is_empty() {
            break output_text(&response);
        }
        input.extend(output);
        for (id, _, _) in &calls {
            input.push(json!({"type": "function_call_output", "call_id": id, "output": format!("result for {id}")}));
        }
        responses_turns.push(calls);
        assert!(responses_turns.len() <= 3, "still calling tools");
    };

    assert_eq!(chat_turns, responses_turns);
    let names: Vec<Vec<&str>> = chat_turns
        .iter()
        .map(|t| t.iter().map(|c| c.1.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        [vec!["lookup", "search"], vec!["lookup"]],
        "two parallel calls, then the last one"
    );
    assert_eq!(chat_answer, responses_answer);
    assert!(
        chat_answer.contains("Tool said: result for"),
        "{chat_answer}"
    );
}

#[tokio::test]
async fn streamed_parallel_calls_have_a_header_then_arguments_with_their_own_index() {
    let sim = default_simulator().await;
    let mut body = hello_chat(false);
    body["tools"] = chat_tools(&["lookup", "search"]);
    body["metadata"] = json!({"sim_parallel": "2", "sim_tool_calls": "2"});
    let plain = chat_calls(&chat::chat(&sim.base_url(), &body).await.json());
    body["stream"] = json!(true);
    let (chunks, done) = chat::sse_chunks(&chat::chat(&sim.base_url(), &body).await.body);
    assert!(done);
    let deltas: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let mut streamed: Vec<(String, String, String)> = Vec::new();
    for delta in deltas {
        let index = delta["index"].as_u64().unwrap() as usize;
        if let Some(id) = delta["id"].as_str() {
            assert_eq!(index, streamed.len(), "headers come in call order");
            assert_eq!(delta["type"], "function");
            assert_eq!(delta["function"]["arguments"], "");
            streamed.push((
                id.into(),
                delta["function"]["name"].as_str().unwrap().into(),
                String::new(),
            ));
        } else {
            assert_eq!(
                index + 1,
                streamed.len(),
                "arguments follow their own header"
            );
            assert!(delta.get("id").is_none() && delta["function"].get("name").is_none());
            streamed[index].2 += delta["function"]["arguments"].as_str().unwrap();
        }
    }
    assert_eq!(streamed, plain);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_reason_length() {
    let sim = default_simulator().await;
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut body = hello_chat(false);
        body[key] = json!(3);
        let completion = chat::chat(&sim.base_url(), &body).await.json();
        assert_eq!(completion["choices"][0]["finish_reason"], "length", "{key}");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "You said: hello"
        );
        assert_eq!(completion["usage"]["completion_tokens"], 3);
        body["stream"] = json!(true);
        let (chunks, done) = chat::sse_chunks(&chat::chat(&sim.base_url(), &body).await.body);
        assert!(done);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(chat_deltas(&chunks, 0, "content"), "You said: hello");
    }
}

#[tokio::test]
async fn refusals_n_choices_json_schema_reasoning_and_legacy_functions() {
    let sim = default_simulator().await;
    let url = sim.base_url();
    let mut refuse = hello_chat(false);
    refuse["metadata"] = json!({"sim_refuse": "true"});
    let message = &chat::chat(&url, &refuse).await.json()["choices"][0]["message"];
    assert!(message["content"].is_null());
    assert!(
        message["refusal"]
            .as_str()
            .unwrap()
            .starts_with("I'm sorry")
    );
    refuse["stream"] = json!(true);
    let (chunks, _) = chat::sse_chunks(&chat::chat(&url, &refuse).await.body);
    assert_eq!(
        chat_deltas(&chunks, 0, "refusal"),
        message["refusal"].as_str().unwrap()
    );

    let mut flex = hello_chat(false);
    flex["service_tier"] = json!("flex");
    assert_eq!(chat::chat(&url, &flex).await.json()["service_tier"], "flex");

    let mut two = hello_chat(false);
    two["n"] = json!(2);
    let completion = chat::chat(&url, &two).await.json();
    let one = chat::chat(&url, &hello_chat(false)).await.json();
    assert_eq!(completion["choices"].as_array().unwrap().len(), 2);
    assert_eq!(completion["choices"][1]["index"], 1);
    assert_eq!(
        completion["usage"]["completion_tokens"],
        one["usage"]["completion_tokens"].as_u64().unwrap() * 2
    );
    two["stream"] = json!(true);
    let (chunks, _) = chat::sse_chunks(&chat::chat(&url, &two).await.body);
    assert_eq!(
        chat_deltas(&chunks, 1, "content"),
        chat_deltas(&chunks, 0, "content")
    );

    let mut schema = hello_chat(false);
    schema["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "Answer", "strict": true, "schema": {
        "type": "object", "properties": {"said": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["said", "count"], "additionalProperties": false}}});
    let content = chat::chat(&url, &schema).await.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let parsed: Value = serde_json::from_str(&content).unwrap();
    assert!(
        parsed["said"]
            .as_str()
            .unwrap()
            .starts_with("You said: hello there.")
    );
    assert_eq!(parsed["count"], 1);

    let mut reasoning = hello_chat(false);
    reasoning["reasoning_effort"] = json!("low");
    let usage = &chat::chat(&url, &reasoning).await.json()["usage"];
    assert!(
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let mut legacy = hello_chat(false);
    legacy["functions"] = json!([{"name": "lookup", "parameters": {"type": "object"}}]);
    let choice = &chat::chat(&url, &legacy).await.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "function_call");
    assert_eq!(choice["message"]["function_call"]["name"], "lookup");
    assert!(choice["message"].get("tool_calls").is_none());
    legacy["metadata"] = json!({"sim_parallel": "3", "sim_tool_calls": "3"});
    legacy["stream"] = json!(true);
    let (chunks, done) = chat::sse_chunks(&chat::chat(&url, &legacy).await.body);
    assert!(done);
    let headers = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["function_call"]["name"].is_string())
        .count();
    assert_eq!(headers, 1, "one legacy call per answer");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "function_call"
    );
}

#[tokio::test]
async fn tool_choice_decides_whether_and_which_function_is_called() {
    let sim = default_simulator().await;
    let mut body = hello_chat(false);
    body["tools"] = chat_tools(&["lookup", "search"]);
    let names = |completion: Value| -> Vec<String> {
        chat_calls(&completion).into_iter().map(|c| c.1).collect()
    };
    assert_eq!(
        names(chat::chat(&sim.base_url(), &body).await.json()),
        ["lookup"]
    );
    body["tool_choice"] = json!({"type": "function", "function": {"name": "search"}});
    assert_eq!(
        names(chat::chat(&sim.base_url(), &body).await.json()),
        ["search"]
    );
    body["tool_choice"] = json!("none");
    let completion = chat::chat(&sim.base_url(), &body).await.json();
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert!(names(completion).is_empty());
    body["tool_choice"] = json!({"type": "function"});
    let error = chat::chat(&sim.base_url(), &body).await;
    assert_eq!(error.status, 400);
    assert_eq!(error.json()["error"]["param"], "tool_choice");
}
