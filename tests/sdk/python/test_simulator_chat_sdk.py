"""The official openai Python SDK's Chat Completions API, pointed at the simulator, must see
OpenAI's chat endpoint: `create` (stream and not), the `stream()` and `parse()` helpers with a
pydantic `response_format`, usage chunks, `length`, refusals, parallel tool calls and a tool loop
whose answer matches the same loop over the Responses API.

Written from the simulator's contract: answers start with `You said: <last user text>`,
function tools are called `metadata.sim_tool_calls` times, `metadata.sim_parallel` at a time.
"""

import asyncio
import json

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from conftest import STRICT_KEY
from sdk_helpers import MODEL, FullHistoryLoop

CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
    for name in ("lookup", "search", "fetch")
]
HELLO = [{"role": "user", "content": "hello chat"}]


class Answer(BaseModel):
    said: str
    items: int
    sure: bool


def test_create_returns_a_chat_completion(client):
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content.startswith("You said: hello chat.")
    assert choice.message.refusal is None and choice.message.tool_calls is None
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_the_same_conversation_answers_alike_on_chat_and_responses(client):
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    )
    responses = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    assert chat.choices[0].message.content == responses.output_text


def test_streamed_create_with_include_usage(client):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    *answer, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in answer)
    assert answer[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    assert text == plain.choices[0].message.content


def test_stream_helper_and_parse_with_a_pydantic_response_format(client):
    parsed = client.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Answer)
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer)
    assert answer.said.startswith("You said: hello chat.") and answer.items == 1 and answer.sure

    with client.chat.completions.stream(model=MODEL, messages=HELLO, response_format=Answer) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    types = [e.type for e in events]
    assert "content.delta" in types and "content.done" in types
    [done] = [e for e in events if e.type == "content.done"]
    assert done.parsed == answer
    assert final.choices[0].message.parsed == answer


def test_stream_helper_plain_text(client):
    with client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1
    assert "".join(deltas) == final.choices[0].message.content
    assert final.choices[0].message.content.startswith("You said: hello chat.")


def test_max_tokens_finishes_with_length(client):
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "You said: hello"
    assert completion.usage.completion_tokens == 3
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=MODEL, messages=HELLO, response_format=Answer, max_completion_tokens=2
        )


def test_refusal_is_reported_as_a_refusal(client):
    refused = client.chat.completions.parse(
        model=MODEL, messages=HELLO, response_format=Answer, metadata={"sim_refuse": "true"}
    )
    message = refused.choices[0].message
    assert message.refusal.startswith("I'm sorry") and message.parsed is None and message.content is None
    with client.chat.completions.stream(model=MODEL, messages=HELLO, metadata={"sim_refuse": "true"}) as stream:
        types = [e.type for e in stream]
    assert "refusal.delta" in types and "refusal.done" in types


def test_parallel_tool_calls_stream_with_their_own_indexes(client):
    kwargs = {"model": MODEL, "messages": HELLO, "tools": CHAT_TOOLS, "metadata": {"sim_tool_calls": "3", "sim_parallel": "3"}}
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    headers = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or []) if t.id]
    assert [t.index for t in headers] == [0, 1, 2]
    assert [t.function.name for t in headers] == ["lookup", "search", "fetch"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    with client.chat.completions.stream(**kwargs) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.id for c in calls] == [t.id for t in headers], "the same history gives the same call ids"
    assert [e.index for e in done] == [0, 1, 2]
    assert [json.loads(c.function.arguments)["step"] for c in calls] == [1, 2, 3]


def chat_tool_loop(client, question, calls, **extra):
    """The usual chat agent loop, the whole `messages` history resent every turn; returns the
    final completion and how many turns it took."""
    messages = [{"role": "user", "content": question}]
    outputs = 0
    for turn in range(calls + 2):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            tools=CHAT_TOOLS[:1],
            metadata={"sim_tool_calls": str(calls), **extra},
        )
        message = completion.choices[0].message
        if not message.tool_calls:
            return completion, turn + 1
        assert completion.choices[0].finish_reason == "tool_calls"
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            outputs += 1
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"result #{outputs} for {call.id}"})
    raise AssertionError("the model was still calling tools")


def test_a_tool_loop_answers_as_the_same_loop_over_responses(client):
    completion, turns = chat_tool_loop(client, "loop over chat", calls=4)
    assert turns == 5
    answer = completion.choices[0].message.content
    assert "Tool said: result #4 for call_" in answer
    responses = FullHistoryLoop(client, "loop over chat", calls=4).run()
    assert answer == responses.output_text

    parallel, turns = chat_tool_loop(client, "loop over chat", calls=4, sim_parallel="2")
    assert turns == 3


def test_bad_requests_raise_the_sdk_errors(client, strict_base_url):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    assert error.value.status_code == 400 and error.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "x"}])
    assert error.value.body["param"] == "messages[0].tool_call_id"
    with OpenAI(base_url=strict_base_url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=MODEL, messages=HELLO)
    with OpenAI(base_url=strict_base_url, api_key=STRICT_KEY, max_retries=0) as right:
        assert right.chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content


def test_a_failure_after_the_first_chunk_raises_in_the_stream(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, metadata={"sim_fault": "response_failed"}
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_async_client_streams_n_choices(async_client):
    async def run():
        stream = await async_client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, n=2)
        texts = {0: "", 1: ""}
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        return texts

    texts = asyncio.run(run())
    assert texts[0] == texts[1] and texts[0].startswith("You said: hello chat.")


def test_stats_keep_chat_bodies_with_the_fields_the_simulator_ignores(client, simulator):
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "keep my body"}],
        logit_bias={"50256": -100},
        seed=7,
        extra_body={"x_unknown": {"nested": [1, 2]}},
    )
    stats = simulator.sim_stats()
    turn = next(t for t in reversed(stats["turns"]) if t["transport"] == "chat")
    kept = next(b for b in stats["chat_bodies"] if b["turn"] == turn["index"])
    sent = json.loads(kept["text"])
    assert sent["logit_bias"] == {"50256": -100} and sent["seed"] == 7
    assert sent["x_unknown"] == {"nested": [1, 2]}
    assert kept["bytes"] == turn["bytes"] == len(kept["text"].encode())
    assert turn["body_fnv1a"] == kept["fnv1a"] and turn["input_items"] == 1
    assert turn["outcome"] == "completed"
