"""The official openai Python SDK, pointed at the simulator, must see OpenAI's API."""

import asyncio
import json

import urllib.error
import urllib.request
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from conftest import KEY

MODEL = "gpt-sim"
TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def test_create_returns_the_echo_answer(client):
    response = client.responses.create(model=MODEL, input="hello")
    assert response.status == "completed"
    assert response.output_text.startswith("You said: hello.")
    assert response.usage.output_tokens > 0
    assert response.id.startswith("resp_")


def test_streamed_create_parses_every_event_in_order(client):
    events = list(client.responses.create(model=MODEL, input="stream me", stream=True))
    assert events[0].type == "response.created" and events[0].sequence_number == 0
    assert events[1].type == "response.in_progress"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    assert deltas.startswith("You said: stream me.")


def test_stream_helper_final_response(client):
    with client.responses.stream(model=MODEL, input="helper") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds
    assert final.output_text.startswith("You said: helper.")


def run_tool_loop(client, question, calls, chained):
    """The usual SDK agent loop; `chained` sends only new items with previous_response_id."""
    history = [{"role": "user", "content": question}]
    kwargs = {"model": MODEL, "tools": TOOLS, "metadata": {"sim_tool_calls": str(calls)}}
    response = client.responses.create(input=history, **kwargs)
    call_ids, outputs = [], []
    while True:
        tool_calls = [item for item in response.output if item.type == "function_call"]
        if not tool_calls:
            return response.output_text, call_ids, outputs
        new_items = []
        for call in tool_calls:
            args = json.loads(call.arguments)
            call_ids.append(call.call_id)
            outputs.append(f"result of step {args['step']}")
            new_items.append({"type": "function_call_output", "call_id": call.call_id, "output": outputs[-1]})
        if chained:
            response = client.responses.create(input=new_items, previous_response_id=response.id, **kwargs)
        else:
            history += [item.model_dump(exclude_none=True) for item in response.output] + new_items
            response = client.responses.create(input=history, **kwargs)


def test_function_tool_loop_with_full_history(client):
    text, call_ids, outputs = run_tool_loop(client, "plan a trip", calls=3, chained=False)
    assert len(call_ids) == 3 and len(set(call_ids)) == 3
    assert all(cid.startswith("call_") for cid in call_ids)
    assert text.startswith(f"You said: plan a trip. Tool said: {outputs[-1]}.")


def test_chained_loop_gives_the_same_answer_as_full_history(client):
    full, full_ids, _ = run_tool_loop(client, "same trip", calls=2, chained=False)
    chained, chained_ids, _ = run_tool_loop(client, "same trip", calls=2, chained=True)
    assert chained_ids == full_ids
    assert chained == full


def test_reasoning_with_encrypted_content(client):
    response = client.responses.create(
        model=MODEL,
        input="think first",
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content.startswith("gAAAA")
    assert reasoning.summary and reasoning.summary[0].text
    assert response.output_text.startswith("You said: think first.")


def test_refusal(client):
    response = client.responses.create(model=MODEL, input="no", metadata={"sim_refuse": "true"})
    part = response.output[0].content[0]
    assert part.type == "refusal"
    assert part.refusal.startswith("I'm sorry")


def test_missing_or_wrong_key_is_an_authentication_error(base_url, strict_base_url):
    request = urllib.request.Request(
        f"{base_url}/responses",
        data=json.dumps({"model": MODEL, "input": "x"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 401
    assert json.loads(raised.value.read())["error"]["type"] == "invalid_request_error"
    wrong = OpenAI(base_url=strict_base_url, api_key="sk-wrong-key-0000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.responses.create(model=MODEL, input="x")
    assert raised.value.code == "invalid_api_key"
    right = OpenAI(base_url=strict_base_url, api_key=KEY, max_retries=0)
    assert right.responses.create(model=MODEL, input="x").status == "completed"


def test_unknown_previous_response_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_doesnotexist")
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.param == "previous_response_id"


def test_rate_limit_fault_is_a_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError) as raised:
        client.responses.create(model=MODEL, input="x", metadata={"sim_fault": "error:429:rate_limit_exceeded"})
    assert raised.value.code == "rate_limit_exceeded"


def test_failed_response_arrives_as_an_event(client):
    events = list(client.responses.create(model=MODEL, input="x", stream=True, metadata={"sim_fault": "response_failed"}))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"


def test_async_client_streams(base_url):
    async def run():
        client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        stream = await client.responses.create(model=MODEL, input="async", stream=True)
        return [event async for event in stream]

    events = asyncio.run(run())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text.startswith("You said: async.")


def collect_turn(connection):
    events = []
    for event in connection:
        events.append(event)
        if event.type in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events
    raise AssertionError("the socket closed mid-turn")


def test_websocket_chain_over_one_connection(client):
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="turn one", store=False)
        first = collect_turn(connection)
        assert first[-1].type == "response.completed"
        previous = first[-1].response.id
        for text in ("turn two", "turn three"):
            connection.response.create(
                model=MODEL,
                input=[{"role": "user", "content": text}],
                previous_response_id=previous,
                store=False,
            )
            events = collect_turn(connection)
            assert events[-1].type == "response.completed"
            previous = events[-1].response.id
        assert events[-1].response.output_text.startswith("You said: turn three.")
        # Three user turns and two answers came before the last answer.
        assert "[5 items," in events[-1].response.output_text

        connection.response.create(model=MODEL, input="x", previous_response_id="resp_unknown", store=False)
        error = collect_turn(connection)[-1]
        assert error.type == "error"
        assert error.error.code == "previous_response_not_found"

        # The socket is still usable after a request-scoped error.
        connection.response.create(model=MODEL, input="after the error", store=False)
        assert collect_turn(connection)[-1].type == "response.completed"


def test_websocket_and_rest_stream_the_same_event_types(client):
    rest = [e.type for e in client.responses.create(model=MODEL, input="compare", stream=True)]
    with client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="compare")
        ws = [e.type for e in collect_turn(connection)]
    assert ws == rest
