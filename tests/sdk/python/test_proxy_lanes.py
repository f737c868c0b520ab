"""`upstream.lanes = true` with the official openai Python SDK: concurrent conversations through
the proxy share one upstream socket, each on a `stream_id` lane of its own, and every answer is
the one the simulator gives directly (docs/architecture.md, "Lanes").

Two chain styles, as SDK users write them: the full history resent every turn
(`input += response.output`), and `previous_response_id` with only the new message. From the
simulator's turn records: each continued turn went upstream with only the new item, on the lane
(and socket) of the turn it continues.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI

from conftest import CLIENT_OPTIONS, KEY, Wsbridge, accepting_only

CONVERSATIONS = 6
TURNS = 3


@pytest.fixture(scope="module")
def lanes_proxy():
    process = Wsbridge(
        "serve", "--simulate", extra_env={**accepting_only(KEY), "WSBRIDGE_UPSTREAM_LANES": "true"}
    )
    yield process
    process.stop()


def full_history(client, n, stream):
    """One conversation resending its whole history each turn; the answers and response ids."""
    history, seen = [], []
    for turn in range(TURNS):
        history.append({"role": "user", "content": f"lanes conversation {n}, turn {turn}"})
        if stream:
            with client.responses.stream(model="gpt-test", input=history, store=False) as events:
                response = events.get_final_response()
        else:
            response = client.responses.create(model="gpt-test", input=history, store=False)
        history += response.output
        seen.append((response.id, response.output_text))
    return seen


def chained(client, n):
    """One conversation chained with `previous_response_id`, only the new message each turn
    (`store: true`, so that the direct run over REST can chain too; through the proxy each
    turn still finds its parent in its lane's memory)."""
    previous, seen = None, []
    for turn in range(TURNS):
        extra = {"previous_response_id": previous} if previous else {}
        response = client.responses.create(
            model="gpt-test", input=f"chained conversation {n}, turn {turn}", store=True, **extra
        )
        previous = response.id
        seen.append((response.id, response.output_text))
    return seen


def run_all(client, style):
    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        if style == "full_history":
            jobs = [pool.submit(full_history, client, n, n % 2 == 0) for n in range(CONVERSATIONS)]
        else:
            jobs = [pool.submit(chained, client, n) for n in range(CONVERSATIONS)]
        return [job.result() for job in jobs]


@pytest.mark.parametrize("style", ["full_history", "previous_response_id"])
def test_concurrent_sdk_conversations_continue_on_their_own_lanes(lanes_proxy, client, style):
    with OpenAI(base_url=f"{lanes_proxy.url}/v1", api_key=KEY, **CLIENT_OPTIONS) as proxied:
        through = run_all(proxied, style)
    direct = run_all(client, style)
    texts = lambda runs: [[text for _, text in conversation] for conversation in runs]  # noqa: E731
    assert texts(through) == texts(direct), "lanes must never change an answer"

    records = {t["response_id"]: t for t in lanes_proxy.sim_stats()["turns"] if t.get("response_id")}
    for conversation in through:
        for (parent, _), (child, _) in zip(conversation, conversation[1:]):
            before, after = records[parent], records[child]
            assert after["previous_response_id"] == parent
            assert after["continued"], after
            assert after["input_items"] == 1, after
            assert after["stream_id"] and after["stream_id"] == before["stream_id"], (before, after)
            assert after["socket"] == before["socket"]
    sockets = {records[rid]["socket"] for conversation in through for rid, _ in conversation}
    assert len(sockets) == 1, f"{CONVERSATIONS} conversations fit on one socket's lanes: {sockets}"
