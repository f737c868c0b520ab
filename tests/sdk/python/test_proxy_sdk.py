"""The official openai Python SDK, unchanged but for its base URL, through the proxy.

The proxy (`wsbridge serve --simulate`) relays each `POST /v1/responses` over pooled WebSockets
to its in-process simulator, which accepts only conftest's KEY. Every test asserts what a user of
the SDK would see, written from the simulator's contract: answers start with
`You said: <last user text>`, `metadata.sim_*` knobs select tool calls and faults.
"""

import asyncio

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_OPTIONS, KEY
from sdk_helpers import MODEL, check_stream, run_tool_loop, text_deltas


def turns_of(proxy, responses):
    """The upstream simulator's turn records of `responses` (SDK Response objects), in order."""
    by_id = {turn["response_id"]: turn for turn in proxy.sim_stats()["turns"]}
    missing = [r.id for r in responses if r.id not in by_id]
    assert not missing, f"the upstream simulator recorded no turn for {missing}"
    return [by_id[r.id] for r in responses]


# --- answers -----------------------------------------------------------------------------------


def test_streamed_create_through_the_proxy(proxy_client):
    events = list(proxy_client.responses.create(model=MODEL, input="stream me", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = check_stream(events)
    assert last.type == "response.completed"
    assert last.response.status == "completed"
    deltas = text_deltas(events)
    assert len([e for e in events if e.type == "response.output_text.delta"]) > 1
    assert deltas == last.response.output_text
    assert deltas.startswith("You said: stream me")


def test_create_through_the_proxy_returns_the_echo_answer(proxy_client):
    response = proxy_client.responses.create(model=MODEL, input="hello proxy")
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text.startswith("You said: hello proxy")
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_stream_helper_final_response_through_the_proxy(proxy_client):
    with proxy_client.responses.stream(model=MODEL, input="helper proxy") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert check_stream(events).type == "response.completed"
    assert final.output_text.startswith("You said: helper proxy")
    assert final.output_text == text_deltas(events)


def test_async_create_through_the_proxy(proxy_async_client):
    async def run():
        async with proxy_async_client:
            return await proxy_async_client.responses.create(model=MODEL, input="async plain")

    response = asyncio.run(run())
    assert response.status == "completed"
    assert response.output_text.startswith("You said: async plain")


def test_the_proxy_streams_the_same_events_as_the_simulator(proxy_client, client):
    kwargs = {"model": MODEL, "input": "compare", "stream": True, "metadata": {"sim_words": "20"}}
    direct = list(client.responses.create(**kwargs))
    proxied = list(proxy_client.responses.create(**kwargs))
    assert [e.type for e in proxied] == [e.type for e in direct]
    assert [e.sequence_number for e in proxied] == [e.sequence_number for e in direct]
    assert proxied[-1].response.output_text == direct[-1].response.output_text


def test_function_tool_loop_gives_the_same_answer_as_the_simulator(proxy_client, client):
    direct, direct_calls, _ = run_tool_loop(client, "plan a trip", calls=3, chained=False)
    proxied, proxied_calls, outputs = run_tool_loop(proxy_client, "plan a trip", calls=3, chained=False)
    assert len(proxied_calls) == 3
    assert [c.call_id for c in proxied_calls] == [c.call_id for c in direct_calls]
    assert proxied.status == "completed"
    assert outputs[-1] in proxied.output_text
    # The answer carries a digest of the whole conversation the model saw.
    assert proxied.output_text == direct.output_text


def test_request_id_header_is_exposed(proxy_client):
    response = proxy_client.responses.create(model=MODEL, input="which request")
    assert response._request_id.startswith("req_"), response._request_id


# --- errors ------------------------------------------------------------------------------------


def test_wrong_key_is_an_authentication_error(proxy_base_url):
    with OpenAI(base_url=proxy_base_url, api_key="sk-wrong-key-0000", **CLIENT_OPTIONS) as wrong:
        with pytest.raises(openai.AuthenticationError) as raised:
            wrong.responses.create(model=MODEL, input="x")
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def test_upstream_close_mid_stream_ends_the_stream_with_response_failed(proxy_client):
    # Output was already sent, so the proxy cannot retry: the SDK sees a failed response, and
    # iterating the stream raises nothing.
    stream = proxy_client.responses.create(
        model=MODEL, input="cut me off", stream=True, metadata={"sim_fault": "close_mid_stream"}
    )
    events = list(stream)
    last = check_stream(events)
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error.code == "server_error"
    assert last.response.error.message
    assert text_deltas(events).startswith("You said: cut me off")


# --- upstream transport ------------------------------------------------------------------------


def test_sdk_requests_go_upstream_over_websockets(proxy, proxy_client):
    plain = proxy_client.responses.create(model=MODEL, input="over a socket")
    streamed = list(proxy_client.responses.create(model=MODEL, input="over a socket", stream=True))[-1].response
    turns = turns_of(proxy, [plain, streamed])
    assert [turn["transport"] for turn in turns] == ["ws", "ws"]
    assert [turn["outcome"] for turn in turns] == ["completed", "completed"]
    assert {turn["key"] for turn in turns} == {KEY}
    # Nothing any SDK test sent to /v1/responses through the proxy fell back to REST upstream
    # (chat requests that pass through on purpose reach the simulator's chat endpoint: "chat").
    assert {turn["transport"] for turn in proxy.sim_stats()["turns"]} - {"chat"} == {"ws"}


def test_a_20_tool_call_agent_loop_continues_on_one_socket(proxy, proxy_base_url, simulator, client):
    """Issue 4's headline: the usual full-history loop (`input += response.output` plus
    function_call_output items) sends only the new items upstream, on one socket."""
    # Its own organization header gives this client its own pool partition (and sockets).
    with OpenAI(base_url=proxy_base_url, api_key=KEY, organization="org-agent-loop", **CLIENT_OPTIONS) as own:
        through, calls, _ = run_tool_loop(own, "Loop twenty times.", 20, chained=False)
        assert len(calls) == 20
    direct, direct_calls, _ = run_tool_loop(client, "Loop twenty times.", 20, chained=False)
    assert through.output_text == direct.output_text, "identical to the same loop over REST"
    assert len(direct_calls) == 20

    turns = [t for t in proxy.sim_stats()["turns"] if t["response_id"] and t["transport"] == "ws"]
    by_id = {t["response_id"]: t for t in turns}
    # Walk the chain back from the final response: 21 turns.
    chain = [by_id[through.id]]
    while chain[-1]["previous_response_id"]:
        chain.append(by_id[chain[-1]["previous_response_id"]])
    chain.reverse()
    assert len(chain) == 21, [t["input_items"] for t in chain]
    assert len({t["socket"] for t in chain}) == 1, "one upstream socket"
    assert chain[0]["previous_response_id"] is None
    for turn in chain[1:]:
        assert turn["continued"], "served from the socket's memory"
        assert turn["input_items"] == 1, "only the new function_call_output"
    sent = sum(t["bytes"] for t in chain)
    direct_turns = [t for t in simulator.sim_stats()["turns"] if t["transport"] == "rest"][-21:]
    resent = sum(t["bytes"] for t in direct_turns)
    assert sent * 5 < resent, f"{sent} bytes upstream through wsbridge vs {resent} resent in full"
