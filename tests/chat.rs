//! `POST /v1/chat/completions` through the proxy: what a Chat Completions client sees (chunk
//! and completion shapes, tool call indexes, finish reasons, usage, errors before and after
//! the first chunk), what the upstream receives (continued turns with only the new items,
//! nothing for a bad request, the original bytes on the pass-through path).
//! The loops live in `common::chat` and take a base URL, so the same loop can run straight
//! against any chat endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::chat::*;
use common::*;
use serde_json::{Value, json};
use wsbridge::config::ChatMode;

#[tokio::test]
async fn a_stream_is_chunks_with_one_id_a_role_delta_a_finish_a_usage_chunk_and_done() {
    let bridge = bridge().await;
    let mut body = hi(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = chat(&bridge.url(), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        header(&reply, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
    assert_eq!(header(&reply, "x-wsbridge-continuation"), "fresh");
    let (chunks, done) = sse_chunks(&reply.body);
    assert!(done, "{}", reply.body);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert!(chunk["created"].as_u64().unwrap() > 1_600_000_000);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(
        content(&chunks).starts_with("You said: hello there."),
        "{}",
        content(&chunks)
    );
    assert_eq!(finish_reason(&chunks), ["stop"]);
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let tokens = &usage["usage"];
    assert!(tokens["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        tokens["total_tokens"].as_u64().unwrap(),
        tokens["prompt_tokens"].as_u64().unwrap() + tokens["completion_tokens"].as_u64().unwrap()
    );
    assert!(tokens["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(tokens["completion_tokens_details"]["reasoning_tokens"].is_u64());
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );

    // Without include_usage: no usage chunk, no usage field.
    let (plain, done) = sse_chunks(&chat(&bridge.url(), &hi(true)).await.body);
    assert!(done);
    assert!(
        plain
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
    assert_eq!(
        bridge
            .metric("wsbridge_chat_finishes_total{finish=\"stop\"}")
            .await,
        2.0
    );
    assert_eq!(
        bridge
            .metric("wsbridge_chat_requests_total{route=\"bridged\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_non_stream_answer_is_one_chat_completion_with_the_streams_text() {
    let bridge = bridge().await;
    let reply = chat(&bridge.url(), &hi(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
    let completion = reply.json();
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["message"]["annotations"], json!([]));
    assert!(choice["message"].get("tool_calls").is_none());
    let (streamed, _) = sse_chunks(&chat(&bridge.url(), &hi(true)).await.body);
    assert_eq!(choice["message"]["content"], content(&streamed).as_str());
    let usage = &completion["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens_details"]["reasoning_tokens"].is_u64());
}

#[tokio::test]
async fn max_tokens_reached_is_length_with_usage_and_a_refusal_is_a_refusal() {
    let bridge = bridge().await;
    let mut body = hi(true);
    // 16 is the least `max_output_tokens` the Responses API takes (below it: pass-through).
    body["max_tokens"] = json!(16);
    body["metadata"] = json!({"sim_words": "40"});
    body["stream_options"] = json!({"include_usage": true});
    let reply = chat(&bridge.url(), &body).await;
    assert_eq!(header(&reply, "x-wsbridge-route"), "chat-bridged");
    let (chunks_, done) = sse_chunks(&reply.body);
    assert!(done);
    assert_eq!(finish_reason(&chunks_), ["length"]);
    assert_eq!(chunks_.last().unwrap()["usage"]["completion_tokens"], 16);
    body["stream"] = json!(false);
    // As OpenAI does, stream_options without stream is refused.
    let refused = chat(&bridge.url(), &body).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["param"], "stream_options");
    body.as_object_mut().unwrap().remove("stream_options");
    let completion = chat(&bridge.url(), &body).await.json();
    assert_eq!(completion["choices"][0]["finish_reason"], "length");

    let mut refuse = hi(false);
    refuse["metadata"] = json!({"sim_refuse": "true"});
    let completion = chat(&bridge.url(), &refuse).await.json();
    let message = &completion["choices"][0]["message"];
    assert!(
        message["refusal"]
            .as_str()
            .unwrap()
            .starts_with("I'm sorry"),
        "{message}"
    );
    assert_eq!(message["content"], Value::Null);
    refuse["stream"] = json!(true);
    let (chunks_, _) = sse_chunks(&chat(&bridge.url(), &refuse).await.body);
    let refusal: String = chunks_
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["refusal"].as_str())
        .collect();
    assert_eq!(refusal, message["refusal"].as_str().unwrap());
}

#[tokio::test]
async fn parallel_tool_calls_get_indexes_0_1_2_and_finish_with_tool_calls() {
    let upstream = scripted(|_, _| parallel_calls("resp_p", 3)).await;
    let proxy = proxy_for(&upstream, |_| {}).await;
    let mut body = hi(true);
    body["tools"] = lookup_chat_tool();
    let (chunks_, done) = sse_chunks(&chat(&proxy.base_url(), &body).await.body);
    assert!(done);
    let calls: Vec<&Value> = chunks_
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    let headers: Vec<(u64, &str, &str)> = calls
        .iter()
        .filter(|c| c.get("id").is_some())
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["id"].as_str().unwrap(),
                c["function"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        headers,
        [
            (0, "call_0", "tool_0"),
            (1, "call_1", "tool_1"),
            (2, "call_2", "tool_2")
        ]
    );
    for index in 0..3u64 {
        let arguments: String = calls
            .iter()
            .filter(|c| c["index"] == index)
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, format!("{{\"n\":{index}}}"));
    }
    assert_eq!(finish_reason(&chunks_), ["tool_calls"]);
    // The tools went upstream flat, not strict unless the client said so.
    let frame = &upstream.frames()[0];
    assert_eq!(frame["tools"][0]["name"], "lookup");
    assert_eq!(frame["tools"][0]["strict"], false);
    assert_eq!(frame["store"], false);

    body["stream"] = json!(false);
    let completion = chat(&proxy.base_url(), &body).await.json();
    let tool_calls = completion["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(tool_calls.len(), 3);
    assert_eq!(
        tool_calls[2],
        json!({"id": "call_2", "type": "function", "function": {"name": "tool_2", "arguments": "{\"n\":2}"}})
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(completion["usage"]["total_tokens"], 15);
}

#[tokio::test]
async fn a_content_filter_cut_finishes_with_content_filter() {
    let upstream = scripted(|_, _| {
        let mut frames = answer("resp_f", "partial");
        let mut last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
        last["type"] = json!("response.incomplete");
        last["response"]["status"] = json!("incomplete");
        last["response"]["incomplete_details"] = json!({"reason": "content_filter"});
        *frames.last_mut().unwrap() = last.to_string();
        frames
    })
    .await;
    let proxy = proxy_for(&upstream, |_| {}).await;
    let (chunks_, done) = sse_chunks(&chat(&proxy.base_url(), &hi(true)).await.body);
    assert!(done);
    assert_eq!(content(&chunks_), "partial");
    assert_eq!(finish_reason(&chunks_), ["content_filter"]);
}

#[tokio::test]
async fn an_upstream_error_before_the_first_chunk_is_a_real_status_with_openais_body() {
    let bridge = bridge().await;
    for stream in [true, false] {
        let mut body = hi(stream);
        body["metadata"] = json!({"sim_fault": "error:429:rate_limit_exceeded"});
        let reply = chat(&bridge.url(), &body).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert_eq!(header(&reply, "content-type"), "application/json");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "rate_limit_exceeded");
        for key in ["message", "type", "param"] {
            assert!(error.get(key).is_some(), "{key}: {error}");
        }
    }
    assert_eq!(
        bridge
            .metric("wsbridge_chat_finishes_total{finish=\"failed\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_failure_after_the_first_chunk_is_an_error_chunk_and_no_done() {
    let bridge = bridge().await;
    for (fault, code) in [
        ("close_mid_stream", "server_error"),
        ("response_failed", "server_error"),
        ("stream_error:server_error", "server_error"),
    ] {
        let mut body = hi(true);
        body["metadata"] = json!({"sim_fault": fault});
        let reply = chat(&bridge.url(), &body).await;
        assert_eq!(reply.status, 200, "{fault}: {}", reply.body);
        let (chunks_, done) = sse_chunks(&reply.body);
        assert!(!done, "{fault}: no [DONE] after an error: {}", reply.body);
        assert_eq!(chunks_[0]["choices"][0]["delta"]["role"], "assistant");
        let error = &chunks_.last().unwrap()["error"];
        assert_eq!(error["code"], code, "{fault}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(finish_reason(&chunks_).is_empty(), "{fault}");
    }
    // Not streamed: a 5xx with the error body.
    let mut body = hi(false);
    body["metadata"] = json!({"sim_fault": "response_failed"});
    let reply = chat(&bridge.url(), &body).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "server_error");
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_field_and_send_nothing_upstream() {
    let bridge = bridge().await;
    let user = json!({"role": "user", "content": "x"});
    let cases = [
        ("{not json".to_owned(), None),
        ("[1]".to_owned(), None),
        (json!({"model": "m"}).to_string(), Some("messages")),
        (
            json!({"model": "m", "messages": "hi"}).to_string(),
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": []}).to_string(),
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}).to_string(),
            Some("messages[0].role"),
        ),
        (
            json!({"model": "m", "messages": [user, {"role": "tool", "content": "42"}]})
                .to_string(),
            Some("messages[1].tool_call_id"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": {"text": "x"}}]})
                .to_string(),
            Some("messages[0].content"),
        ),
        (
            json!({"model": "m", "messages": [user], "stream": "yes"}).to_string(),
            Some("stream"),
        ),
        // Bad even where the rest would pass through: nothing goes upstream either.
        (
            json!({"model": "m", "n": 2, "messages": [{"role": "robot", "content": "x"}]})
                .to_string(),
            Some("messages[0].role"),
        ),
    ];
    for (body, param) in cases {
        let reply = request(
            "POST",
            &format!("{}/chat/completions", bridge.url()),
            Some(KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
        assert!(reply.headers.get("x-wsbridge-route").is_none());
    }
    let stats = bridge.sim.stats();
    assert_eq!(stats.turns_total, 0);
    assert_eq!(stats.sockets_opened, 0);
    assert_eq!(
        bridge
            .metric("wsbridge_requests_total{route=\"chat\",status=\"400\"}")
            .await,
        10.0
    );
}

#[tokio::test]
async fn fields_without_a_faithful_equivalent_reach_the_chat_endpoint_byte_for_byte() {
    let (base_url, seen) = recording_upstream().await;
    let proxy = wsbridge::Proxy::start({
        let mut config = wsbridge::config::Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.upstream.base_url = wsbridge::config::BaseUrl::parse(&base_url).unwrap();
        config.pool.min_idle = 0;
        config
    })
    .await
    .unwrap();
    let bodies = [
        // Odd spacing and key order: the bytes, not a re-serialisation, must arrive.
        r#"{"model":"m",  "n":2,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"model":"m","logit_bias":{"50256":-100}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"x_brand_new":{"a":[1,2]}}"#,
        // Below the Responses API's least `max_output_tokens`, which chat accepts.
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5}"#,
    ];
    for body in bodies {
        let reply = request(
            "POST",
            &format!("{}/chat/completions", proxy.base_url()),
            Some(KEY),
            Some(body.to_owned()),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply, "x-wsbridge-route"), "chat-passthrough");
        let (method, path, received) = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(String::from_utf8(received).unwrap(), body);
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    for reason in ["choices", "logit_bias", "field", "output_limit"] {
        let series = format!("wsbridge_chat_passthroughs_total{{reason=\"{reason}\"}}");
        assert_eq!(proxy_metric(&proxy, &series).await, 1.0, "{series}");
    }
}

#[tokio::test]
async fn passthrough_mode_and_an_oversized_frame_pass_plain_requests_through() {
    let (base_url, seen) = recording_upstream().await;
    for (mode, max_frame_bytes, reason) in [
        (ChatMode::Passthrough, 1 << 20, "mode"),
        (ChatMode::Bridge, 16, "fallback"),
    ] {
        let proxy = wsbridge::Proxy::start({
            let mut config = wsbridge::config::Config::default();
            config.server.listen = "127.0.0.1:0".parse().unwrap();
            config.upstream.base_url = wsbridge::config::BaseUrl::parse(&base_url).unwrap();
            config.pool.min_idle = 0;
            config.chat.mode = mode;
            config.upstream.max_frame_bytes = max_frame_bytes;
            config
        })
        .await
        .unwrap();
        let body = hi(false).to_string();
        let reply = request(
            "POST",
            &format!("{}/chat/completions", proxy.base_url()),
            Some(KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            header(&reply, "x-wsbridge-route"),
            "chat-passthrough",
            "{reason}"
        );
        assert_eq!(seen.lock().unwrap().last().unwrap().2, body.as_bytes());
        assert_eq!(
            proxy_metric(
                &proxy,
                &format!("wsbridge_chat_passthroughs_total{{reason=\"{reason}\"}}")
            )
            .await,
            1.0
        );
        proxy.shutdown().await;
    }
}
