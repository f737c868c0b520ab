"""What an SDK user gets, the same from the simulator directly and through the proxy (each test
runs twice, via `either_client` / `either_async_client`): streams, and errors with their HTTP
status, typed exception and OpenAI's error body."""

import asyncio

import openai
import pytest

from sdk_helpers import MODEL, check_stream, text_deltas


def test_unknown_previous_response_is_a_bad_request(either_client):
    with pytest.raises(openai.BadRequestError) as raised:
        either_client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert raised.value.status_code == 400
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.param == "previous_response_id"
    assert "resp_missing" in raised.value.message


def test_unknown_previous_response_is_a_bad_request_when_streaming(either_client):
    # Errors found before the stream starts are plain HTTP errors, never SSE.
    with pytest.raises(openai.BadRequestError) as raised:
        either_client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing", stream=True)
    assert raised.value.code == "previous_response_not_found"


def test_rate_limit_fault_is_a_rate_limit_error(either_client):
    with pytest.raises(openai.RateLimitError) as raised:
        either_client.responses.create(model=MODEL, input="x", metadata={"sim_fault": "error:429:rate_limit_exceeded"})
    assert raised.value.status_code == 429
    assert raised.value.code == "rate_limit_exceeded"


def test_errors_carry_the_request_id(either_client):
    with pytest.raises(openai.BadRequestError) as raised:
        either_client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert raised.value.request_id.startswith("req_"), raised.value.request_id


def test_either_async_client_streams(either_async_client):
    async def run():
        async with either_async_client:
            stream = await either_async_client.responses.create(model=MODEL, input="async", stream=True)
            return [event async for event in stream]

    events = asyncio.run(run())
    last = check_stream(events)
    assert last.type == "response.completed"
    assert text_deltas(events) == last.response.output_text
    assert last.response.output_text.startswith("You said: async")
