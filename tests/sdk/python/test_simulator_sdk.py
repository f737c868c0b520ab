"""The official openai Python SDK, pointed at the simulator, must see OpenAI's Responses API.

Every test asserts what a user of the SDK would see (texts, items, errors), written from the
simulator's contract: answers start with `You said: <last user text>`, function tools are called
`metadata.sim_tool_calls` times, `metadata.sim_*` knobs select reasoning-free variants, refusals
and faults.
"""

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest
from openai import OpenAI, Omit

from conftest import STRICT_KEY
from sdk_helpers import MODEL, TERMINAL, TOOLS, check_stream, run_tool_loop, text_deltas

REASONING = {"effort": "low", "summary": "auto"}


# --- REST: plain answers -----------------------------------------------------------------------


def test_create_returns_the_echo_answer(client):
    response = client.responses.create(model=MODEL, input="hello")
    assert response.status == "completed"
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == MODEL
    assert response.output_text.startswith("You said: hello")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_the_last_user_message_is_the_one_echoed(client):
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "input_text", "text": "second question"}]},
    ]
    response = client.responses.create(model=MODEL, input=history, instructions="Be terse.")
    assert response.output_text.startswith("You said: second question")
    assert response.instructions == "Be terse."


def test_streamed_create_parses_every_event_in_order(client):
    events = list(client.responses.create(model=MODEL, input="stream me", stream=True))
    assert events[0].type == "response.created" and events[0].sequence_number == 0
    assert events[1].type == "response.in_progress" and events[1].sequence_number == 1
    last = check_stream(events)
    assert last.type == "response.completed"
    final = last.response
    assert final.status == "completed" and final.usage.output_tokens > 0
    deltas = text_deltas(events)
    assert len([e for e in events if e.type == "response.output_text.delta"]) > 1
    assert deltas == final.output_text
    assert deltas.startswith("You said: stream me")
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == deltas
    [added] = [e for e in events if e.type == "response.output_item.added"]
    [item_done] = [e for e in events if e.type == "response.output_item.done"]
    assert added.item.id == item_done.item.id == final.output[0].id
    assert all(e.item_id == added.item.id for e in events if e.type == "response.output_text.delta")


def test_stream_and_non_stream_give_the_same_answer(client):
    plain = client.responses.create(model=MODEL, input="same either way")
    streamed = list(client.responses.create(model=MODEL, input="same either way", stream=True))
    assert streamed[-1].response.output_text == plain.output_text


def test_sim_words_sets_the_answer_length(client):
    short = client.responses.create(model=MODEL, input="count", metadata={"sim_words": "10"})
    long = client.responses.create(model=MODEL, input="count", metadata={"sim_words": "40"})
    assert short.output_text.startswith("You said: count") and long.output_text.startswith("You said: count")
    assert len(long.output_text.split()) > len(short.output_text.split())
    assert abs(len(long.output_text.split()) - 40) <= 5, long.output_text
    assert long.metadata == {"sim_words": "40"}


def test_stream_helper_final_response(client):
    with client.responses.stream(model=MODEL, input="helper") as stream:
        events = list(stream)
        final = stream.get_final_response()
    check_stream(events)
    assert events[-1].type == "response.completed"
    assert final.output_text.startswith("You said: helper")
    # The helper accumulates the text itself and offers it on the done event.
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == final.output_text == text_deltas(events)


def test_stream_helper_text_deltas(client):
    pieces = []
    with client.responses.stream(model=MODEL, input="pieces", metadata={"sim_words": "30"}) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                pieces.append(event.delta)
                # The helper's snapshot is the text so far.
                assert event.snapshot == "".join(pieces)
    assert "".join(pieces) == stream.get_final_response().output_text


# --- REST: the function-tool loop --------------------------------------------------------------


def test_function_tool_loop_with_full_history(client):
    final, calls, outputs = run_tool_loop(client, "plan a trip", calls=3, chained=False)
    assert len(calls) == 3
    assert len({call.call_id for call in calls}) == 3
    assert len({call.id for call in calls}) == 3
    assert final.status == "completed"
    assert final.output_text.startswith("You said: plan a trip")
    assert outputs[-1] in final.output_text
    assert all(item.type == "message" for item in final.output)


def test_chained_loop_gives_the_same_answer_as_full_history(client):
    full, full_calls, _ = run_tool_loop(client, "same trip", calls=3, chained=False)
    chained, chained_calls, chained_outputs = run_tool_loop(client, "same trip", calls=3, chained=True)
    assert len(chained_calls) == 3 and len({c.call_id for c in chained_calls}) == 3
    # The model is deterministic and sees the same conversation either way.
    assert [c.call_id for c in chained_calls] == [c.call_id for c in full_calls]
    assert chained.output_text == full.output_text
    assert chained_outputs[-1] in chained.output_text


def test_streamed_function_call(client):
    events = list(
        client.responses.create(model=MODEL, input="call it", tools=TOOLS, tool_choice="auto", stream=True)
    )
    last = check_stream(events)
    assert last.type == "response.completed"
    [call] = last.response.output
    assert call.type == "function_call" and call.name == "lookup" and call.call_id.startswith("call_")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert args == done.arguments == call.arguments
    assert not [e for e in events if e.type.startswith("response.content_part")]


# --- REST: reasoning, refusal ------------------------------------------------------------------


def test_reasoning_with_encrypted_content(client):
    response = client.responses.create(
        model=MODEL, input="think first", reasoning=REASONING, include=["reasoning.encrypted_content"]
    )
    reasoning, message = response.output
    assert reasoning.type == "reasoning"
    assert isinstance(reasoning.encrypted_content, str) and reasoning.encrypted_content
    assert reasoning.summary and reasoning.summary[0].type == "summary_text" and reasoning.summary[0].text
    assert message.type == "message"
    assert response.output_text.startswith("You said: think first")
    assert response.usage.output_tokens_details.reasoning_tokens > 0


def test_reasoning_without_include_has_no_encrypted_content(client):
    response = client.responses.create(model=MODEL, input="think", reasoning=REASONING)
    assert response.output[0].type == "reasoning"
    assert not response.output[0].encrypted_content


def test_streamed_reasoning_summary(client):
    events = list(
        client.responses.create(
            model=MODEL, input="think aloud", reasoning=REASONING, include=["reasoning.encrypted_content"], stream=True
        )
    )
    last = check_stream(events)
    reasoning = last.response.output[0]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == reasoning.summary[0].text
    [item_done] = [e for e in events if e.type == "response.output_item.done" and e.item.type == "reasoning"]
    assert item_done.item.encrypted_content == reasoning.encrypted_content
    assert text_deltas(events) == last.response.output_text
    assert last.response.output_text.startswith("You said: think aloud")


def test_refusal(client):
    response = client.responses.create(model=MODEL, input="do something bad", metadata={"sim_refuse": "true"})
    assert response.status == "completed"
    [message] = response.output
    [part] = message.content
    assert part.type == "refusal"
    assert part.refusal.strip()
    assert response.output_text == ""


def test_streamed_refusal(client):
    events = list(
        client.responses.create(model=MODEL, input="bad", metadata={"sim_refuse": "true"}, stream=True)
    )
    last = check_stream(events)
    assert last.type == "response.completed"
    refusal = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    [done] = [e for e in events if e.type == "response.refusal.done"]
    assert refusal and done.refusal == refusal == last.response.output[0].content[0].refusal
    assert not [e for e in events if e.type == "response.output_text.delta"]


# --- REST: errors ------------------------------------------------------------------------------


def raw_post(url, body, headers):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    return raised.value.code, json.loads(raised.value.read())


def test_missing_key_is_an_authentication_error(client, base_url):
    # The SDK itself refuses to run without a key, so drop the header from one request.
    with pytest.raises(openai.AuthenticationError) as raised:
        client.responses.create(model=MODEL, input="x", extra_headers={"Authorization": Omit()})
    assert raised.value.status_code == 401
    # And on the wire: OpenAI's error body, all four keys present.
    status, body = raw_post(f"{base_url}/responses", {"model": MODEL, "input": "x"}, {"Content-Type": "application/json"})
    assert status == 401
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_wrong_key_is_rejected_when_keys_are_configured(strict_base_url):
    wrong = OpenAI(base_url=strict_base_url, api_key="sk-wrong-key-0000", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.responses.create(model=MODEL, input="x")
    assert raised.value.code == "invalid_api_key"
    right = OpenAI(base_url=strict_base_url, api_key=STRICT_KEY, max_retries=0, timeout=30)
    assert right.responses.create(model=MODEL, input="x").output_text.startswith("You said: x")


def test_failed_response_arrives_as_an_event(client):
    events = list(
        client.responses.create(model=MODEL, input="x", stream=True, metadata={"sim_fault": "response_failed"})
    )
    last = check_stream(events)
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error.code == "server_error"
    assert last.response.error.message


def test_sim_stats_is_a_json_object(base_url):
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/sim/stats")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        assert isinstance(json.loads(reply.read()), dict)


# --- async client ------------------------------------------------------------------------------


def test_async_client_websocket_turn(async_client):
    async def run():
        async with async_client:
            async with async_client.responses.connect() as connection:
                await connection.response.create(model=MODEL, input="async socket", store=False)
                events = []
                async for event in connection:
                    events.append(event)
                    if event.type in TERMINAL:
                        return events

    events = asyncio.run(run())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text.startswith("You said: async socket")


# --- WebSocket mode: client.responses.connect() ------------------------------------------------


def ws_turn(connection):
    """Events of one response, up to and including its terminal event (or an `error` frame)."""
    events = []
    while True:
        event = connection.recv()
        events.append(event)
        if event.type in TERMINAL:
            return events


def test_websocket_chain_over_one_connection(client):
    answers = []
    with client.responses.connect() as connection:
        previous = None
        for text in ("turn one", "turn two", "turn three"):
            extra = {"previous_response_id": previous} if previous else {}
            connection.response.create(
                model=MODEL, input=[{"role": "user", "content": text}], store=False, **extra
            )
            events = ws_turn(connection)
            last = check_stream(events)
            assert last.type == "response.completed", last
            assert text_deltas(events) == last.response.output_text
            assert last.response.previous_response_id == previous
            assert last.response.store is False
            answers.append(last.response)
            previous = last.response.id
        assert answers[2].output_text.startswith("You said: turn three")

        # An unknown id: the SDK delivers the error frame as an event (it raises only from
        # dispatch_events() without a handler); the socket stays usable.
        connection.response.create(model=MODEL, input="x", previous_response_id="resp_doesnotexist", store=False)
        [error] = ws_turn(connection)
        assert error.type == "error"
        assert error.status == 400
        assert error.error.code == "previous_response_not_found"
        assert error.error.param == "previous_response_id"

        connection.response.create(model=MODEL, input="after the error", store=False)
        last = ws_turn(connection)[-1]
        assert last.type == "response.completed"
        assert last.response.output_text.startswith("You said: after the error")

    # The chained answer was computed from the whole conversation: resending it in full over
    # REST gives the same text.
    one, two, _ = answers
    history = [
        {"role": "user", "content": "turn one"},
        *one.output,
        {"role": "user", "content": "turn two"},
        *two.output,
        {"role": "user", "content": "turn three"},
    ]
    full = client.responses.create(model=MODEL, input=history, store=False)
    assert full.output_text == answers[2].output_text


def test_websocket_error_frame_raises_from_dispatch_events(client):
    # The push-style API raises on an error frame when no "error" handler is registered.
    completed = []
    with client.responses.connect() as connection:
        connection.on("response.completed", completed.append)
        connection.response.create(model=MODEL, input="fine", store=False)
        connection.response.create(model=MODEL, input="x", previous_response_id="resp_doesnotexist", store=False)
        with pytest.raises(openai.OpenAIError, match="previous_response_not_found"):
            connection.dispatch_events()
    assert len(completed) == 1
    assert completed[0].response.output_text.startswith("You said: fine")


def test_websocket_store_false_stays_on_its_socket_store_true_does_not(client):
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="kept", store=True)
        stored = ws_turn(connection)[-1].response
        connection.response.create(model=MODEL, input="not kept", store=False)
        unstored = ws_turn(connection)[-1].response
    follow = client.responses.create(model=MODEL, input="continue", previous_response_id=stored.id)
    assert follow.output_text.startswith("You said: continue")
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="continue", previous_response_id=unstored.id)
    assert raised.value.code == "previous_response_not_found"
    # A stored response also continues on another socket.
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="again", previous_response_id=stored.id)
        last = ws_turn(connection)[-1]
    assert last.type == "response.completed"
    assert last.response.output_text.startswith("You said: again")
    assert last.response.previous_response_id == stored.id


def test_websocket_rate_limit_fault_is_an_error_event(client):
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="x", metadata={"sim_fault": "error:429:rate_limit_exceeded"})
        [error] = ws_turn(connection)
        assert error.type == "error" and error.status == 429
        assert error.error.code == "rate_limit_exceeded"
        connection.response.create(model=MODEL, input="x", metadata={"sim_fault": "response_failed"})
        last = check_stream(ws_turn(connection))
        assert last.type == "response.failed" and last.response.error.code == "server_error"


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({"input": "compare"}, id="text"),
        pytest.param({"input": "compare tools", "tools": TOOLS}, id="function_call"),
        pytest.param(
            {"input": "compare reasoning", "reasoning": REASONING, "include": ["reasoning.encrypted_content"]},
            id="reasoning",
        ),
        pytest.param({"input": "compare refusal", "metadata": {"sim_refuse": "true"}}, id="refusal"),
        pytest.param({"input": "compare failure", "metadata": {"sim_fault": "response_failed"}}, id="failed"),
    ],
)
def test_websocket_and_rest_stream_the_same_events(client, request_kwargs):
    rest = list(client.responses.create(model=MODEL, stream=True, **request_kwargs))
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, **request_kwargs)
        ws = ws_turn(connection)
    check_stream(ws)
    assert [e.type for e in ws] == [e.type for e in rest]
    assert [e.sequence_number for e in ws] == [e.sequence_number for e in rest]
    assert ws[-1].response.output_text == rest[-1].response.output_text
    assert [item.type for item in ws[-1].response.output] == [item.type for item in rest[-1].response.output]
