"""LangChain's `ChatOpenAI` (`langchain-openai`, pinned in requirements.txt), unchanged but for its
`base_url`, over Chat Completions (not `use_responses_api`) with `streaming=True` and
`bind_tools`, in the tool loop LangChain agents run: the whole history (system, human, every
`AIMessage` with its tool calls, every `ToolMessage`) resent on every call (issue 12).

Through the proxy, every call after the first is a continuation: the upstream receives only the
new tool messages on top of the previous response, although LangChain re-serialises the call
arguments (`{"step": 1}` for the model's `{"step":1}`) and writes a missing text as `""`. The
answers are the ones the same loop gets straight from the simulator's chat endpoint."""

import re
import urllib.request

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from conftest import KEY, Wsbridge, accepting_only

MODEL = "gpt-sim"
CALLS = 6
PARALLEL = 2


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"lookup says {len(query)}"


@tool
def search(query: str) -> str:
    """Search for something."""
    return f"search says {query[::-1]}"


TOOLS = {t.name: t for t in (lookup, search)}


def langchain_tool_loop(base_url, question):
    """LangChain's tool loop to the model's answer; returns the final `AIMessage`, each call's
    `x-wsbridge-continuation` header (None straight to the simulator) and every call's tool
    calls as (id, name, args)."""
    llm = ChatOpenAI(
        model=MODEL,
        base_url=base_url,
        api_key=KEY,
        streaming=True,
        max_retries=0,
        timeout=30,
        include_response_headers=True,
        # `metadata` is LangChain's own tracing field, so the simulator's knobs go in the body.
        extra_body={"metadata": {"sim_tool_calls": str(CALLS), "sim_parallel": str(PARALLEL)}},
    )
    model = llm.bind_tools(list(TOOLS.values()))
    messages = [SystemMessage("You are terse."), HumanMessage(question)]
    routes, transcript = [], []
    for _ in range(CALLS + 2):
        ai = model.invoke(messages)
        headers = {k.lower(): v for k, v in ai.response_metadata.get("headers", {}).items()}
        routes.append(headers.get("x-wsbridge-continuation"))
        transcript.append([(c["id"], c["name"], c["args"]) for c in ai.tool_calls])
        messages.append(ai)
        if not ai.tool_calls:
            assert ai.response_metadata["finish_reason"] == "stop"
            return ai, routes, transcript
        assert ai.response_metadata["finish_reason"] == "tool_calls"
        for call in ai.tool_calls:
            messages.append(TOOLS[call["name"]].invoke(call))
    raise AssertionError(f"still calling tools after {CALLS + 2} calls")


@pytest.fixture()
def own_proxy():
    """A proxy of this test's own: its stats and metrics count this test's turns only."""
    process = Wsbridge("serve", "--simulate", extra_env=accepting_only(KEY))
    yield process
    process.stop()


def continuations(proxy):
    """`wsbridge_continuations_total` by outcome, from the proxy's `/metrics`."""
    with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    series = re.finditer(r'^wsbridge_continuations_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {m[1]: int(float(m[2])) for m in series}


def test_a_langchain_tool_loop_continues_every_turn_and_answers_as_the_direct_loop(base_url, own_proxy):
    direct, direct_routes, direct_transcript = langchain_tool_loop(base_url, "Where is it?")
    final, routes, transcript = langchain_tool_loop(f"{own_proxy.url}/v1", "Where is it?")

    turns = CALLS // PARALLEL + 1
    assert [len(calls) for calls in transcript] == [PARALLEL] * (turns - 1) + [0]
    assert [name for calls in transcript for _, name, _ in calls] == ["lookup", "search"] * (CALLS // 2)
    assert transcript == direct_transcript
    assert final.content == direct.content
    assert final.content.startswith("You said: Where is it?. Tool said: search says ")
    assert f"[{2 + 2 * CALLS} items, digest " in final.content
    assert set(direct_routes) == {None}
    assert routes == ["fresh"] + ["continued"] * (turns - 1), routes

    counted = continuations(own_proxy)
    assert counted["fresh"] == 1 and counted["continued"] == turns - 1, counted
    upstream = [t for t in own_proxy.sim_stats()["turns"] if t["outcome"] == "completed"]
    assert len(upstream) == turns and {t["transport"] for t in upstream} == {"ws"}
    assert upstream[0]["input_items"] == 2
    for previous, turn in zip(upstream, upstream[1:]):
        # Only LangChain's new ToolMessages went upstream, on top of the previous response.
        assert turn["continued"] and turn["previous_response_id"] == previous["response_id"], turn
        assert turn["input_items"] == PARALLEL, turn
