"""openai-agents (the Agents SDK) through the proxy: a `Runner` with a function tool resends the
whole conversation every turn, and wsbridge turns that into continuations on one socket."""

import asyncio

from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from conftest import CLIENT_OPTIONS, KEY
from sdk_helpers import MODEL

# Tracing would try to export spans to the internet.
set_tracing_disabled(True)


@function_tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


def test_an_agents_runner_gets_continued_turns(proxy, proxy_base_url):
    async def run():
        client = AsyncOpenAI(base_url=proxy_base_url, api_key=KEY, **CLIENT_OPTIONS)
        agent = Agent(
            name="looker",
            instructions="Use the lookup tool.",
            tools=[lookup],
            model=OpenAIResponsesModel(model=MODEL, openai_client=client),
            model_settings=ModelSettings(metadata={"sim_tool_calls": "3"}),
        )
        async with client:
            return await Runner.run(agent, "What is the answer?")

    result = asyncio.run(run())
    assert result.final_output.startswith("You said: What is the answer?. Tool said: found ")

    ids = [raw.response_id for raw in result.raw_responses]
    assert len(ids) == 4, "three tool calls, then the answer"
    turns = {t["response_id"]: t for t in proxy.sim_stats()["turns"]}
    chain = [turns[i] for i in ids]
    assert len({t["socket"] for t in chain}) == 1, "one upstream socket"
    assert chain[0]["previous_response_id"] is None
    for previous, turn in zip(ids, chain[1:]):
        assert turn["previous_response_id"] == previous
        assert turn["continued"]
        assert turn["input_items"] == 1, "only the new function_call_output"
