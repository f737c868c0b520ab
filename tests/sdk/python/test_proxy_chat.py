"""Chat Completions clients through the proxy (issue 12) with the official openai Python SDK:
`chat.completions.create` streamed and not, the `.stream()` and `.parse()` helpers, usage,
finish reasons, parallel tool calls, errors, and the usual full-history tool loop, which the
proxy turns into continuations (only the new messages go upstream).

Most tests talk to `wsbridge serve --simulate`. What the simulator's scripted model never does
(several parallel calls in one turn, JSON that fits a schema) comes from `ScriptedUpstream`, a
small WebSocket-mode upstream in this file that a proxy of its own points at.

`chat_tool_loop` takes any client, so the same loop can run straight against a chat endpoint
for answer-for-answer comparisons."""

import asyncio
import json
import threading

import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel

from conftest import CLIENT_OPTIONS, KEY, Wsbridge, accepting_only

MODEL = "gpt-sim"
CALLS = 20
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
HELLO = [{"role": "user", "content": "hello there"}]


# --- helpers and fixtures ---------------------------------------------------------------------


def chat_tool_loop(client, question, calls=CALLS, stream=False):
    """The usual chat agent loop: the whole `messages` history every turn (the assistant message
    as answered, then one `tool` message per call) until the model answers. Returns the final
    completion, each turn's `x-wsbridge-continuation` header (None straight to an upstream) and
    every turn's tool calls as (id, name, arguments)."""
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}]
    routes, transcript = [], []
    for _ in range(calls + 2):
        kwargs = dict(model=MODEL, messages=list(messages), tools=TOOLS, metadata={"sim_tool_calls": str(calls)})
        raw = client.chat.completions.with_raw_response.create(stream=stream, **kwargs)
        routes.append(raw.headers.get("x-wsbridge-continuation"))
        if stream:
            # What the `.stream()` helper assembles, from the chunks as they came.
            state = ChatCompletionStreamState(input_tools=TOOLS)
            for chunk in raw.parse():
                state.handle_chunk(chunk)
            completion = state.get_final_completion()
        else:
            completion = raw.parse()
        message = completion.choices[0].message
        calls_made = message.tool_calls or []
        transcript.append([(c.id, c.function.name, c.function.arguments) for c in calls_made])
        messages.append(message.model_dump(exclude_none=True, exclude={"annotations", "parsed"}))
        if not calls_made:
            assert completion.choices[0].finish_reason == "stop"
            return completion, routes, transcript
        assert completion.choices[0].finish_reason == "tool_calls"
        for call in calls_made:
            assert call.id.startswith("call_") and json.loads(call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"result for {call.id}"})
    raise AssertionError(f"still calling tools after {calls + 2} turns")


def proxy_process(**env):
    return Wsbridge("serve", "--simulate", extra_env={**accepting_only(KEY), **env})


@pytest.fixture()
def own_proxy():
    """A proxy of this test's own: its simulator's turn records are this test's only."""
    process = proxy_process()
    yield process
    process.stop()


class ScriptedUpstream:
    """A WebSocket-mode upstream answering each `response.create` from the last user message:
    `parallel` → one function call per tool (in one turn, one after another), `json` → a JSON
    text, anything else → `ok`. Records the frames it received."""

    def __init__(self):
        import websockets.asyncio.server as server

        self.frames = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main():
            self.server = await server.serve(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            try:
                await self.server.serve_forever()
            except asyncio.CancelledError:
                pass

        threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True).start()
        assert started.wait(10)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, socket):
        async for text in socket:
            frame = json.loads(text)
            self.frames.append(frame)
            for seq, event in enumerate(self.events(frame)):
                await socket.send(json.dumps({**event, "sequence_number": seq}))

    @staticmethod
    def events(frame):
        last = [i for i in frame["input"] if i.get("role") == "user"][-1]["content"]
        last = last if isinstance(last, str) else "".join(p.get("text", "") for p in last)
        if "parallel" in last:
            output = [
                {"id": f"fc_{i}", "type": "function_call", "status": "completed", "call_id": f"call_{i}",
                 "name": tool["name"], "arguments": json.dumps({"n": i})}
                for i, tool in enumerate(frame["tools"])
            ]
        else:
            text = json.dumps({"name": "Ada", "age": 36}) if "json" in last else "ok"
            output = [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]}]
        response = {"id": "resp_s", "object": "response", "created_at": 1_700_000_000, "model": MODEL,
                    "status": "in_progress", "output": []}
        yield {"type": "response.created", "response": response}
        for index, item in enumerate(output):
            if item["type"] == "function_call":
                yield {"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "status": "in_progress", "arguments": ""}}
                for piece in (item["arguments"][:3], item["arguments"][3:]):
                    yield {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                           "output_index": index, "delta": piece}
            else:
                yield {"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "status": "in_progress", "content": []}}
                yield {"type": "response.output_text.delta", "item_id": item["id"], "output_index": index,
                       "content_index": 0, "delta": item["content"][0]["text"]}
            yield {"type": "response.output_item.done", "output_index": index, "item": item}
        usage = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 16}
        yield {"type": "response.completed",
               "response": {**response, "status": "completed", "output": output, "usage": usage}}

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)


@pytest.fixture(scope="module")
def scripted():
    """A `ScriptedUpstream` and an SDK client of a proxy in front of it."""
    upstream = ScriptedUpstream()
    process = Wsbridge("serve", extra_env={"WSBRIDGE_UPSTREAM_BASE_URL": upstream.base_url})
    with OpenAI(base_url=f"{process.url}/v1", api_key=KEY, **CLIENT_OPTIONS) as client:
        yield upstream, client
    process.stop()
    upstream.stop()


# --- shapes -----------------------------------------------------------------------------------


def test_create_answers_one_chat_completion(proxy_client):
    raw = proxy_client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-wsbridge-route"] == "chat-bridged"
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.message.content.startswith("You said: hello there.")
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.prompt_tokens_details.cached_tokens is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_create_streams_chunks_with_include_usage(proxy_client):
    chunks = list(
        proxy_client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, usage = chunks
    assert usage.choices == [] and usage.usage.completion_tokens > 0
    assert all(c.usage is None for c in body)
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["stop"]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    answer = proxy_client.chat.completions.create(model=MODEL, messages=HELLO)
    assert text == answer.choices[0].message.content


def test_stream_helper_assembles_the_same_answer(proxy_client):
    with proxy_client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = "".join(e.delta for e in events if e.type == "content.delta")
    assert deltas == final.choices[0].message.content
    assert any(e.type == "content.done" for e in events)
    assert final.choices[0].message.content.startswith("You said: hello there.")


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_response_format(scripted):
    upstream, client = scripted
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "json please"}], response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    text_format = upstream.frames[-1]["text"]["format"]
    assert text_format["type"] == "json_schema" and text_format["name"] == "Person"
    assert text_format["strict"] is True and "age" in text_format["schema"]["properties"]


def test_max_tokens_reached_finishes_with_length(proxy_client):
    completion = proxy_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    chunks = list(proxy_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_refusal_is_the_messages_refusal(proxy_client):
    completion = proxy_client.chat.completions.create(model=MODEL, messages=HELLO, metadata={"sim_refuse": "true"})
    message = completion.choices[0].message
    assert message.refusal.startswith("I'm sorry") and message.content is None


def test_parallel_tool_calls_have_their_own_indexes(scripted):
    upstream, client = scripted
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
        for name in ("alpha", "bravo", "charlie")
    ]
    messages = [{"role": "user", "content": "parallel please"}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True))
    headers = [
        (call.index, call.id, call.function.name)
        for chunk in chunks
        for call in (chunk.choices[0].delta.tool_calls or [])
        if call.id
    ]
    assert headers == [(0, "call_0", "alpha"), (1, "call_1", "bravo"), (2, "call_2", "charlie")]
    with client.chat.completions.stream(model=MODEL, messages=messages, tools=tools) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [(f"call_{i}", {"n": i}) for i in range(3)]
    assert final.choices[0].finish_reason == "tool_calls"
    assert [t["name"] for t in upstream.frames[-1]["tools"]] == ["alpha", "bravo", "charlie"]


# --- errors -----------------------------------------------------------------------------------


def test_an_error_before_the_first_chunk_raises_the_status_error(proxy_client):
    metadata = {"sim_fault": "error:429:rate_limit_exceeded"}
    with pytest.raises(openai.RateLimitError) as raised:
        proxy_client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, metadata=metadata)
    assert raised.value.code == "rate_limit_exceeded"


def test_an_error_after_the_first_chunk_raises_while_iterating(proxy_client):
    stream = proxy_client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, metadata={"sim_fault": "close_mid_stream"}
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"


def test_bad_messages_are_a_400_naming_the_field(proxy_client):
    with pytest.raises(openai.BadRequestError) as raised:
        proxy_client.chat.completions.create(model=MODEL, messages=[])
    assert raised.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as raised:
        proxy_client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "42"}])
    assert raised.value.param == "messages[0].tool_call_id"


# --- continuations ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_20_call_loop_resending_everything_continues_every_turn(own_proxy, stream):
    with OpenAI(base_url=f"{own_proxy.url}/v1", api_key=KEY, **CLIENT_OPTIONS) as client:
        final, routes, transcript = chat_tool_loop(client, "What is the answer?", stream=stream)
    assert sum(len(calls) for calls in transcript) == CALLS
    assert routes[0] == "fresh" and routes[1:] == ["continued"] * CALLS, routes
    turns = [t for t in own_proxy.sim_stats()["turns"] if t["outcome"] == "completed"]
    assert len(turns) == CALLS + 1
    assert turns[0]["input_items"] == 2
    for previous, turn in zip(turns, turns[1:]):
        assert turn["continued"] and turn["previous_response_id"] == previous["response_id"], turn
        assert turn["input_items"] == 1, turn

    # The same loop resent in full every turn (continuations off) answers the same.
    full = proxy_process(WSBRIDGE_CONTINUATION_ENABLED="false")
    try:
        with OpenAI(base_url=f"{full.url}/v1", api_key=KEY, **CLIENT_OPTIONS) as client:
            full_final, full_routes, full_transcript = chat_tool_loop(client, "What is the answer?")
    finally:
        full.stop()
    assert set(full_routes) == {"fresh"}
    assert full_transcript == transcript
    assert full_final.choices[0].message.content == final.choices[0].message.content
