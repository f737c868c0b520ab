"""WebSocket-mode clients through the proxy (`GET /v1/responses` relayed over pooled upstream
sockets): openai-python's `client.responses.connect()` (one chain, and several chains on
`stream_id` lanes of one socket) and the Agents SDK's WebSocket model, unchanged but for their
base URL. Each relayed answer is compared with the same conversation sent straight to a
simulator."""

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


# Lane chains: two named lanes and the default one (no `stream_id`), interleaved on one socket.
LANES = {
    "alpha": ["alpha one", "alpha two", "alpha three"],
    "beta.2": ["beta one", "beta two", "beta three"],
    None: ["plain one", "plain two", "plain three"],
}
# The first lane's turns pause after their first delta, so the other lanes' turns, sent after
# it, end first: proof that the lanes run concurrently and their events interleave.
SLOW = "alpha"
STALL = {"sim_fault": "stall_within:500"}


def lane_round(connection, lanes, previous):
    """One turn of every lane: all the `response.create` frames first (`store: false`, each
    continuing its own lane's previous response), then the interleaved events until every lane
    has its terminal event. Returns each lane's events, and the lanes in the order they ended."""
    for lane, text in lanes.items():
        extra = {"previous_response_id": previous[lane]} if previous[lane] else {}
        if lane is not None:
            extra["stream_id"] = lane
        if lane == SLOW:
            extra["metadata"] = STALL
        connection.response.create(model=MODEL, input=[{"role": "user", "content": text}], store=False, **extra)
    events = {lane: [] for lane in lanes}
    ended = []
    while len(ended) < len(lanes):
        event = connection.recv()
        lane = getattr(event, "stream_id", None)
        assert lane in lanes, f"an event of no lane in flight: {event}"
        assert lane not in ended, f"an event after the terminal one on lane {lane}: {event}"
        events[lane].append(event)
        if event.type in TERMINAL:
            ended.append(lane)
    return events, ended


def lane_chains(client):
    """The [`LANES`] chains over one `responses.connect()` socket, turn by turn, every lane's
    turn in flight together; returns each lane's responses."""
    responses = {lane: [] for lane in LANES}
    with client.responses.connect() as connection:
        for turn in range(3):
            previous = {lane: chain[-1].id if chain else None for lane, chain in responses.items()}
            events, ended = lane_round(connection, {lane: texts[turn] for lane, texts in LANES.items()}, previous)
            assert ended[-1] == SLOW, f"the stalled lane ends last, the others do not wait: {ended}"
            for lane, lane_events in events.items():
                last = check_stream(lane_events)
                assert last.type == "response.completed", last
                assert text_deltas(lane_events) == last.response.output_text
                assert last.response.previous_response_id == previous[lane]
                responses[lane].append(last.response)
    return responses


def test_responses_connect_chains_on_stream_id_lanes_through_the_proxy_match_the_simulator(
    proxy, proxy_client, client
):
    before = {t["response_id"] for t in proxy.sim_stats()["turns"]}

    relayed = lane_chains(proxy_client)
    direct = lane_chains(client)

    for lane, texts in LANES.items():
        assert [r.output_text for r in relayed[lane]] == [r.output_text for r in direct[lane]], lane
        assert relayed[lane][-1].output_text.startswith(f"You said: {texts[-1]}")
    turns = {t["response_id"]: t for t in proxy.sim_stats()["turns"] if t["response_id"] not in before}
    ids = [r.id for chain in relayed.values() for r in chain]
    assert sorted(turns) == sorted(ids), "the client's own responses, nothing else"
    assert len({t["socket"] for t in turns.values()}) == 1, "one upstream socket for every lane"
    for lane, chain in relayed.items():
        seen = [turns[r.id] for r in chain]
        assert [t["stream_id"] for t in seen] == [lane] * 3, "each turn on its own lane, as sent"
        assert [t["continued"] for t in seen] == [False, True, True], f"{lane}: continued in its lane's memory"
        assert [t["input_items"] for t in seen] == [1, 1, 1], "only the new message, as the client sent it"


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
