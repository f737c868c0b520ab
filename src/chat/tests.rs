//! The translation's contract: bad bodies are 400s naming the field, unfaithful ones pass
//! through, and a conversation resent with the upstream's output appended continues the
//! previous turn's head under the canonical item form.

use serde_json::{Map, Value, json};

use super::completion::completion;
use super::request::{Bridged, Verdict, translate};
use crate::continuation::{Digester, ReasoningPolicy, longest_match};
use crate::outcome::ChatPassthrough;

fn body(value: Value) -> Map<String, Value> {
    serde_json::from_value(value).unwrap()
}

fn bridged(value: Value) -> Bridged {
    match translate(&body(value)).unwrap() {
        Verdict::Bridge(bridged) => bridged,
        Verdict::Passthrough(why) => panic!("passed through: {why:?}"),
    }
}

fn input(bridged: &Bridged) -> Vec<Value> {
    bridged.body["input"].as_array().unwrap().clone()
}

#[test]
fn fields_map_to_their_responses_equivalents() {
    let out = bridged(json!({
        "model": "gpt-x", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}},
        "verbosity": "low", "max_tokens": 50, "max_completion_tokens": 60, "reasoning_effort": "low",
        "temperature": 0.5, "top_p": 0.9, "user": "u", "metadata": {"k": "v"}, "service_tier": "auto",
        "prompt_cache_key": "p", "safety_identifier": "s", "n": 1, "logprobs": false, "frequency_penalty": 0,
    }));
    assert!(out.stream && out.include_usage);
    let b = &out.body;
    assert_eq!(
        b["tools"],
        json!([{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": false}])
    );
    assert_eq!(b["tool_choice"], json!({"type": "function", "name": "f"}));
    assert_eq!(b["parallel_tool_calls"], false);
    assert_eq!(
        b["text"],
        json!({"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"})
    );
    assert_eq!(b["max_output_tokens"], 60);
    assert_eq!(b["reasoning"], json!({"effort": "low"}));
    assert_eq!(b["store"], false, "chat's default, said explicitly");
    for key in [
        "temperature",
        "top_p",
        "user",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        assert!(b.contains_key(key), "{key}");
    }
    for key in [
        "stream",
        "messages",
        "n",
        "logprobs",
        "frequency_penalty",
        "stream_options",
    ] {
        assert!(!b.contains_key(key), "{key}");
    }
    assert_eq!(
        input(&out)[0],
        json!({"role": "system", "content": "Be brief."})
    );
}

#[test]
fn every_message_kind_becomes_items_in_order() {
    let out = bridged(json!({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://i/x.png", "detail": "low"}},
            {"type": "file", "file": {"file_id": "file_1"}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": null, "refusal": "No."},
        {"role": "system", "content": "mid-conversation"},
    ]}));
    assert_eq!(
        input(&out),
        vec![
            json!({"role": "developer", "content": "ab"}),
            json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://i/x.png", "detail": "low"},
            {"type": "input_file", "file_id": "file_1"}]}),
            json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}),
            json!({"type": "function_call_output", "call_id": "call_1", "output": "42"}),
            json!({"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}),
            json!({"role": "system", "content": "mid-conversation"}),
        ]
    );
}

/// `""`, null, `[]` and no `content` all say "no text": such an assistant message gives no item
/// (only its refusal or calls), as the simulator's chat endpoint reads it, so a bridged
/// conversation is the one a direct chat call holds.
#[test]
fn an_assistant_message_without_text_gives_no_text_item_however_it_says_so() {
    let user = json!({"role": "user", "content": "hi"});
    let call =
        json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let refusal = json!({"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]});
    let function_call =
        json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"});
    for content in [json!(""), Value::Null, json!([])] {
        let items = |assistant: Value| {
            input(&bridged(
                json!({"model": "m", "messages": [user.clone(), assistant]}),
            ))
        };
        assert_eq!(
            items(json!({"role": "assistant", "content": content})),
            vec![user.clone()],
            "{content}"
        );
        assert_eq!(
            items(json!({"role": "assistant", "content": content, "refusal": "No."})),
            [user.clone(), refusal.clone()],
            "{content}"
        );
        assert_eq!(
            items(json!({"role": "assistant", "content": content, "tool_calls": [call.clone()]})),
            [user.clone(), function_call.clone()],
            "{content}"
        );
    }
    assert_eq!(
        input(&bridged(
            json!({"model": "m", "messages": [user.clone(), {"role": "assistant"}]})
        )),
        [user]
    );
}

#[test]
fn bad_bodies_are_400s_naming_the_field() {
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": {}}), "messages"),
        (json!({"model": "m", "messages": []}), "messages"),
        (json!({"model": "m", "messages": ["hi"]}), "messages[0]"),
        (
            json!({"model": "m", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "x"}]}),
            "messages[1].tool_call_id",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": {}}),
            "tools",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}),
            "response_format.type",
        ),
    ];
    for (request, param) in cases {
        let error = translate(&body(request.clone())).unwrap_err();
        assert_eq!(error.status, 400, "{request}");
        assert_eq!(error.kind, "invalid_request_error");
        assert_eq!(error.param.as_deref(), Some(param), "{request}");
    }
}

#[test]
fn fields_without_a_faithful_equivalent_pass_through() {
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (json!({"n": 2}), ChatPassthrough::Choices),
        (json!({"logprobs": true}), ChatPassthrough::Logprobs),
        (json!({"top_logprobs": 2}), ChatPassthrough::Logprobs),
        (json!({"stop": ["\n"]}), ChatPassthrough::Stop),
        (
            json!({"logit_bias": {"50256": -100}}),
            ChatPassthrough::LogitBias,
        ),
        (json!({"presence_penalty": 0.5}), ChatPassthrough::Penalties),
        (json!({"seed": 7}), ChatPassthrough::Seed),
        (json!({"store": true}), ChatPassthrough::Store),
        (
            json!({"modalities": ["text", "audio"]}),
            ChatPassthrough::Audio,
        ),
        (json!({"audio": {"voice": "alloy"}}), ChatPassthrough::Audio),
        (
            json!({"prediction": {"type": "content", "content": "x"}}),
            ChatPassthrough::Prediction,
        ),
        (
            json!({"web_search_options": {}}),
            ChatPassthrough::WebSearch,
        ),
        (json!({"brand_new_field": 1}), ChatPassthrough::Field),
        (json!({"max_tokens": 15}), ChatPassthrough::OutputLimit),
        (
            json!({"max_tokens": 100, "max_completion_tokens": 3}),
            ChatPassthrough::OutputLimit,
        ),
        (
            json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            ChatPassthrough::Tools,
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            ChatPassthrough::Content,
        ),
        (
            json!({"messages": [{"role": "user", "name": "ann", "content": "x"}]}),
            ChatPassthrough::Field,
        ),
        (
            json!({"messages": [{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]}),
            ChatPassthrough::Field,
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "reasoning_content": "z"}]}),
            ChatPassthrough::Field,
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "y", "name": "f"}]}),
            ChatPassthrough::Field,
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}),
            ChatPassthrough::Field,
        ),
    ];
    for (extra, why) in cases {
        let mut request = json!({"model": "m", "messages": user});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        assert_eq!(
            translate(&body(request.clone())).unwrap(),
            Verdict::Passthrough(why),
            "{request}"
        );
    }
}

#[test]
fn legacy_function_calling_maps_to_function_tools_with_named_calls() {
    let out = bridged(json!({"model": "m",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": {"name": "f"},
    "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "1"},
        {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{\"a\":2}"}},
        {"role": "function", "name": "f", "content": "2"},
    ]}));
    assert!(out.legacy);
    assert_eq!(
        out.body["tools"],
        json!([{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": false}])
    );
    assert_eq!(
        out.body["tool_choice"],
        json!({"type": "function", "name": "f"})
    );
    assert_eq!(out.body["parallel_tool_calls"], false);
    let items = input(&out);
    assert_eq!(
        items[1],
        json!({"type": "function_call", "call_id": "call_legacy_0", "name": "f", "arguments": "{}"})
    );
    assert_eq!(
        items[2],
        json!({"type": "function_call_output", "call_id": "call_legacy_0", "output": "1"})
    );
    assert_eq!(items[3]["call_id"], "call_legacy_1");
    assert_eq!(items[4]["call_id"], "call_legacy_1");
    assert!(!bridged(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).legacy);
    // A function message answering nothing, or both forms at once: the upstream decides.
    let orphan =
        json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]});
    let mixed = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "functions": [{"name": "f"}], "tools": [{"type": "function", "function": {"name": "g"}}]});
    for request in [orphan, mixed] {
        assert_eq!(
            translate(&body(request)).unwrap(),
            Verdict::Passthrough(ChatPassthrough::LegacyFunctions)
        );
    }
}

/// A turn's upstream output, and the assistant message a chat client appends for it (from the
/// `chat.completion` wsbridge answered).
fn answered(output: Value) -> Value {
    let response = json!({"status": "completed", "model": "m", "output": output});
    let mut message = completion("chatcmpl-x", &response, false)["choices"][0]["message"].clone();
    // What SDKs send back: the message without `annotations`.
    message.as_object_mut().unwrap().remove("annotations");
    message
}

/// Turn N+1's items continue turn N's head (its input ++ output) and leave only the new
/// messages as the delta, for every kind of output a chat client cannot echo exactly.
#[test]
fn a_resent_conversation_continues_the_previous_turn_under_the_canonical_form() {
    let reasoning =
        json!({"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "gAAA"});
    let message = |parts: Value| json!({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": parts});
    let text =
        |t: &str| json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
    let call = |id: &str| json!({"id": "fc_1", "type": "function_call", "status": "completed", "call_id": id, "name": "f", "arguments": "{\"a\":1}"});
    let outputs = [
        json!([message(json!([text("Hello")]))]),
        json!([reasoning.clone(), message(json!([text("Hel"), text("lo")]))]),
        json!([message(json!([{"type": "refusal", "refusal": "I can't."}]))]),
        json!([
            reasoning.clone(),
            call("call_a"),
            call("call_b"),
            call("call_c")
        ]),
        json!([message(json!([text("Let me look.")])), call("call_a")]),
        json!([reasoning]),
    ];
    let digester = Digester::new(ReasoningPolicy::Lenient);
    for output in outputs {
        let first = vec![
            json!({"role": "system", "content": "s"}),
            json!({"role": "user", "content": "hi"}),
        ];
        let turn = bridged(json!({"model": "m", "messages": first}));
        let head = digester.extend(0, input(&turn).iter().chain(output.as_array().unwrap()));
        let mut messages = first.clone();
        messages.push(answered(output.clone()));
        if messages.last().unwrap()["content"].is_null() {
            // LangChain resends an answer without text as `content: ""`: the same turn.
            let mut langchain = messages.clone();
            langchain.last_mut().unwrap()["content"] = json!("");
            let resent = input(&bridged(json!({"model": "m", "messages": langchain})));
            assert_eq!(
                digester.prefixes(&resent).last().copied(),
                Some(head),
                "{output}"
            );
        }
        for call in messages.last().unwrap()["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "r"}));
        }
        messages.push(json!({"role": "user", "content": "more"}));
        let next = input(&bridged(json!({"model": "m", "messages": messages})));
        let matched = longest_match(&digester.prefixes(&next), |d| d == head);
        let new = next.len() - matched.unwrap_or_else(|| panic!("no match for {output}: {next:?}"));
        let calls = output
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"] == "function_call")
            .count();
        assert_eq!(
            new,
            calls + 1,
            "only the tool outputs and the new message: {output}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = Value> {
        let text = "[a-c ]{0,4}";
        prop_oneof![
            (prop_oneof![Just("system"), Just("developer"), Just("user")], text)
                .prop_map(|(role, t)| json!({"role": role, "content": t})),
            (text, text).prop_map(|(a, b)| json!({"role": "user", "content": [
                {"type": "text", "text": a}, {"type": "image_url", "image_url": {"url": b}}]})),
            (proptest::option::of(text), proptest::collection::vec("[a-c]{1,3}", 0..3)).prop_map(
                |(content, ids)| {
                    let calls: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}))
                        .collect();
                    json!({"role": "assistant", "content": content, "tool_calls": calls})
                }
            ),
            text.prop_map(|r| json!({"role": "assistant", "content": null, "refusal": r})),
            ("[a-c]{1,3}", text).prop_map(|(id, out)| json!({"role": "tool", "tool_call_id": id, "content": out})),
        ]
    }

    proptest! {
        /// The continuation property: a conversation's items start with the items of every
        /// earlier turn of it, and the translation is the same every time.
        #[test]
        fn a_longer_conversation_extends_the_items_of_a_shorter_one(
            messages in proptest::collection::vec(message(), 1..10),
            cut in any::<proptest::sample::Index>(),
        ) {
            let request = |messages: &[Value]| json!({"model": "m", "messages": messages});
            let all = input(&bridged(request(&messages)));
            prop_assert_eq!(&all, &input(&bridged(request(&messages))));
            let k = cut.index(messages.len()) + 1;
            let shorter = input(&bridged(request(&messages[..k])));
            prop_assert_eq!(&all[..shorter.len()], &shorter[..]);
        }
    }
}

/// Chat reads a function without `parameters` as one taking none; the Responses API requires
/// the field, so the bridge sends the empty object schema (tools and legacy functions alike).
#[test]
fn a_function_without_parameters_gets_the_empty_object_schema() {
    let empty = json!({"type": "object", "properties": {}});
    let out = bridged(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "now"}}]}),
    );
    assert_eq!(out.body["tools"][0]["parameters"], empty);
    let out = bridged(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "functions": [{"name": "now", "parameters": null}]}),
    );
    assert_eq!(out.body["tools"][0]["parameters"], empty);
}

/// An assistant message resent exactly as the SDK returned it (`message.model_dump()`: null
/// audio, function_call and refusal, empty annotations) is bridged like its plain form.
#[test]
fn an_assistant_message_as_returned_by_the_api_is_bridged() {
    let user = json!({"role": "user", "content": "hi"});
    let plain = json!({"role": "assistant", "content": "hello"});
    let returned = json!({"role": "assistant", "content": "hello", "refusal": null,
        "annotations": [], "audio": null, "function_call": null, "tool_calls": null});
    let items = |assistant: Value| {
        input(&bridged(
            json!({"model": "m", "messages": [user.clone(), assistant]}),
        ))
    };
    assert_eq!(items(returned), items(plain));
}
