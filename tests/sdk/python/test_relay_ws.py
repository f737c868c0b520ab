"""WebSocket-mode clients through the proxy (`GET /v1/responses` relayed over pooled upstream
sockets): openai-python's `client.responses.connect()` and the Agents SDK's WebSocket model,
unchanged but for their base URL. Each relayed answer is compared with the same conversation
sent straight to a simulator."""

import asyncio
import urllib.request

from agents import Agent, ModelSettings, OpenAIResponsesWSModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from conftest import CLIENT_OPTIONS, KEY
from sdk_helpers import MODEL, TERMINAL, check_stream, text_deltas

# Tracing would try to export spans to the internet.
set_tracing_disabled(True)


def ws_turn(connection):
    """Events of one response, up to and including its terminal event (or an `error` frame)."""
    events = []
    while True:
        event = connection.recv()
        events.append(event)
        if event.type in TERMINAL:
            return events


def chain(client, texts):
    """A `store: false` chain over one `responses.connect()` socket: each turn continues the one
    before with `previous_response_id` and sends only its new message; returns the responses."""
    responses = []
    with client.responses.connect() as connection:
        previous = None
        for text in texts:
            extra = {"previous_response_id": previous} if previous else {}
            connection.response.create(model=MODEL, input=[{"role": "user", "content": text}], store=False, **extra)
            events = ws_turn(connection)
            last = check_stream(events)
            assert last.type == "response.completed", last
            assert text_deltas(events) == last.response.output_text
            assert last.response.previous_response_id == previous
            responses.append(last.response)
            previous = last.response.id
    return responses


def metric(proxy, series):
    with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    line = next((l for l in text.splitlines() if l.startswith(series + " ")), None)
    assert line, f"no {series} in /metrics"
    return float(line.split()[-1])


def test_responses_connect_chain_through_the_proxy_matches_the_simulator(proxy, proxy_client, client):
    texts = ["relay one", "relay two", "relay three", "relay four"]
    before = {t["response_id"] for t in proxy.sim_stats()["turns"]}
    accepted = metric(proxy, "wsbridge_relay_client_sockets_accepted_total")

    relayed = chain(proxy_client, texts)
    direct = chain(client, texts)

    assert [r.output_text for r in relayed] == [r.output_text for r in direct]
    assert relayed[3].output_text.startswith("You said: relay four")
    turns = [t for t in proxy.sim_stats()["turns"] if t["response_id"] not in before]
    assert [t["response_id"] for t in turns] == [r.id for r in relayed], "the client's own responses"
    assert len({t["socket"] for t in turns}) == 1, "one upstream socket"
    assert all(t["continued"] for t in turns[1:]), "each continued in the socket's memory"
    assert [t["input_items"] for t in turns] == [1, 1, 1, 1], "only the new message, as the client sent it"
    assert metric(proxy, "wsbridge_relay_client_sockets_accepted_total") == accepted + 1


@function_tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


def run_agent(base_url):
    """An Agents SDK run with the WebSocket model and a function tool (three calls, then the
    answer)."""

    async def run():
        client = AsyncOpenAI(base_url=base_url, api_key=KEY, **CLIENT_OPTIONS)
        model = OpenAIResponsesWSModel(model=MODEL, openai_client=client)
        agent = Agent(
            name="looker",
            instructions="Use the lookup tool.",
            tools=[lookup],
            model=model,
            model_settings=ModelSettings(metadata={"sim_tool_calls": "3"}),
        )
        try:
            return await Runner.run(agent, "What is the answer?")
        finally:
            await model.close()
            await client.close()

    return asyncio.run(run())


def test_agents_websocket_model_runs_a_tool_loop_through_the_proxy(proxy, proxy_base_url, base_url):
    frames = metric(proxy, 'wsbridge_relay_frames_total{direction="client_to_upstream"}')
    relayed = run_agent(proxy_base_url)
    direct = run_agent(base_url)

    assert relayed.final_output.startswith("You said: What is the answer?. Tool said: found ")
    assert relayed.final_output == direct.final_output
    ids = [raw.response_id for raw in relayed.raw_responses]
    assert len(ids) == 4, "three tool calls, then the answer"
    turns = {t["response_id"]: t for t in proxy.sim_stats()["turns"]}
    assert len({turns[i]["socket"] for i in ids}) == 1, "one upstream socket for the run"
    sent = metric(proxy, 'wsbridge_relay_frames_total{direction="client_to_upstream"}') - frames
    assert sent == 4, "one response.create per model call, relayed as it came"
