"""Chat Completions answer for answer (issue 12): the same `chat.completions` calls, sent with the
official openai Python SDK straight to the simulator's chat endpoint and through the proxy (which
bridges them onto Responses turns over its pooled sockets), give the same answers: text, refusals,
tool calls with their ids, indexes and arguments, finish reasons and output token counts, chunk
by chunk when streamed, for plain answers, `max_tokens`, refusals, parallel, named and legacy
function calls, reasoning, structured output and a history of every message kind.
Only the completion `id` and `created` differ, and what a Responses turn has no equivalent for
(`system_fingerprint`, `obfuscation`, the chunks' `service_tier`), which `answer` and `chunk`
leave out.

The simulator's answers end with `[N items, digest D]` of the conversation it saw, so an answer
that matches was computed from the same items: the proxy's messages → items translation is the
simulator's (docs/protocol.md, "Chat Completions").

The 20-call loop resends the whole `messages` history every turn, as chat clients do: through the
proxy every turn after the first is a continuation (the upstream receives only the new tool
message), and the answer is the one the simulator gives to the full history."""

import json
from collections import namedtuple

import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel

from conftest import CLIENT_OPTIONS, KEY, Wsbridge, accepting_only

MODEL = "gpt-sim"
CALLS = 20
HELLO = [{"role": "user", "content": "hello parity"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} something.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
    for name in ("lookup", "search", "fetch")
]
FINISH = {"length": "length", "parallel": "tool_calls", "named tool": "tool_calls", "legacy functions": "function_call"}
CASES = {
    "text": {},
    # 16 is the least `max_output_tokens` the Responses API takes; below it the proxy passes through.
    "length": {"max_tokens": 16, "metadata": {"sim_words": "40"}},
    "refusal": {"metadata": {"sim_refuse": "true"}},
    "parallel": {"tools": TOOLS, "metadata": {"sim_tool_calls": "3", "sim_parallel": "3"}},
    "named tool": {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fetch"}},
                   "metadata": {"sim_tool_calls": "1"}},
    "legacy functions": {"functions": [t["function"] for t in TOOLS], "metadata": {"sim_tool_calls": "1"}},
    "reasoning": {"reasoning_effort": "low"},
    "history": {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "terse."}]},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok", "refusal": None},
            {"role": "assistant", "content": None, "refusal": "I can't."},
            {"role": "user", "content": "second"},
            # An answer without text, as LangChain resends it.
            {"role": "assistant", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": "third"}]},
        ]
    },
}


class Answer(BaseModel):
    said: str
    items: int
    sure: bool


# --- what a user compares -----------------------------------------------------------------------

# One choice of a completion (`parsed` from `.parse()`), or of a chunk (its delta's fields).
Choice = namedtuple("Choice", "index finish role content refusal calls function_call parsed")
Call = namedtuple("Call", "index id type name arguments")
Usage = namedtuple("Usage", "completion reasoning")
Completion = namedtuple("Completion", "object model choices usage")


def usage_of(usage):
    """The output side of the usage. The simulator counts prompt tokens from the JSON of the items
    it holds, which is spelled differently when the proxy sends a message as a string and the
    chat endpoint makes parts of it, and which a continuation partly serves from the cache."""
    if usage is None:
        return None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return Usage(usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens)


def calls_of(calls):
    return [Call(getattr(c, "index", None), c.id, c.type, c.function.name, c.function.arguments) for c in calls or []]


def choice_of(index, finish, message):
    legacy = message.function_call
    return Choice(index, finish, message.role, message.content, message.refusal, calls_of(message.tool_calls),
                  legacy and (legacy.name, legacy.arguments), getattr(message, "parsed", None))


def answer(completion):
    """A `chat.completion` without what may differ between two deployments."""
    choices = [choice_of(c.index, c.finish_reason, c.message) for c in completion.choices]
    return Completion(completion.object, completion.model, choices, usage_of(completion.usage))


def chunk(c):
    """A `chat.completion.chunk` without what may differ between two deployments."""
    choices = [choice_of(ch.index, ch.finish_reason, ch.delta) for ch in c.choices]
    return Completion(c.object, c.model, choices, usage_of(c.usage))


def stream_event(event):
    """A `.stream()` helper event as a comparable tuple."""
    fields = {k: v for k, v in vars(event).items() if k not in ("snapshot", "chunk", "parsed")}
    return (event.type, json.dumps(fields, default=str, sort_keys=True), repr(getattr(event, "parsed", None)))


@pytest.fixture()
def both(client, proxy_client):
    """The simulator's chat endpoint and the proxy, as two SDK clients."""
    return {"direct": client, "proxy": proxy_client}


def create_both(both, **kwargs):
    """The same `create` on both; returns {path: parsed result} and checks the proxy's route."""
    out = {}
    for path, c in both.items():
        raw = c.chat.completions.with_raw_response.create(model=MODEL, **kwargs)
        if path == "proxy":
            assert raw.headers["x-wsbridge-route"] == "chat-bridged"
        else:
            assert "x-wsbridge-route" not in raw.headers
        result = raw.parse()
        out[path] = [chunk(c) for c in result] if kwargs.get("stream") else answer(result)
    return out


# --- single calls -------------------------------------------------------------------------------


def check_case(case, choice, usage):
    """What each case must answer (the same on both paths, checked once)."""
    assert choice.finish == FINISH.get(case, "stop")
    if case == "refusal":
        assert choice.content is None and choice.refusal.startswith("I'm sorry")
    elif case == "parallel":
        assert choice.content is None and [c.name for c in choice.calls] == ["lookup", "search", "fetch"]
        assert [json.loads(c.arguments)["step"] for c in choice.calls] == [1, 2, 3]
    elif case == "named tool":
        assert [c.name for c in choice.calls] == ["fetch"] and choice.function_call is None
    elif case == "legacy functions":
        assert choice.calls == [] and choice.function_call[0] == "lookup"
    elif case == "length":
        assert choice.content.startswith("You said: hello") and (usage is None or usage.completion == 16)
    else:
        assert choice.content.startswith("You said: ") and choice.refusal is None and not choice.calls
    if usage is not None:
        assert (usage.reasoning > 0) == (case == "reasoning"), usage


@pytest.mark.parametrize("case", CASES)
def test_create_answers_alike(both, case):
    got = create_both(both, **{"messages": HELLO, **CASES[case]})
    assert got["proxy"] == got["direct"]
    [choice] = got["direct"].choices
    check_case(case, choice, got["direct"].usage)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_chunks_alike(both, case, include_usage):
    kwargs = {"messages": HELLO, **CASES[case], "stream": True}
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    got = create_both(both, **kwargs)
    assert got["proxy"] == got["direct"]
    chunks = got["direct"]
    assert chunks[0].choices == [Choice(0, None, "assistant", "", None, [], None, None)]
    if include_usage:
        *body, last = chunks
        assert last.choices == [] and all(c.usage is None for c in body)
        usage = last.usage
    else:
        assert all(c.usage is None for c in chunks)
        body, usage = chunks, None
    # The choice the SDK's stream helper assembles from these chunks.
    deltas = [c.choices[0] for c in body]
    [finish] = [d.finish for d in deltas if d.finish]
    calls = {}
    for d in deltas:
        for call in d.calls:
            if call.id:
                assert call.index == len(calls), "each call has its own index, in order"
                calls[call.index] = call._replace(arguments="")
            calls[call.index] = calls[call.index]._replace(arguments=calls[call.index].arguments + call.arguments)
    legacy = [d.function_call for d in deltas if d.function_call]
    assembled = Choice(
        0, finish, "assistant",
        "".join(d.content or "" for d in deltas) or None,
        "".join(d.refusal or "" for d in deltas) or None,
        [calls[i] for i in sorted(calls)],
        (legacy[0][0], "".join(a or "" for _, a in legacy)) if legacy else None,
        None,
    )
    check_case(case, assembled, usage)


@pytest.mark.parametrize("case", ["text", "refusal", "parallel", "schema"])
def test_stream_helper_events_alike(both, case):
    kwargs = {"messages": HELLO, **CASES.get(case, {})}
    if case == "schema":
        kwargs["response_format"] = Answer
    seen = {}
    for path, c in both.items():
        with c.chat.completions.stream(model=MODEL, **kwargs) as stream:
            events = [stream_event(e) for e in stream]
            seen[path] = (events, answer(stream.get_final_completion()))
    assert seen["proxy"] == seen["direct"]
    types = [e[0] for e in seen["direct"][0]]
    expected = {"refusal": "refusal.done", "parallel": "tool_calls.function.arguments.done"}
    assert expected.get(case, "content.done") in types
    if case == "schema":
        parsed = seen["direct"][1].choices[0].parsed
        assert isinstance(parsed, Answer) and parsed.said.startswith("You said: hello parity.")


def test_parse_with_a_pydantic_response_format_alike(both):
    got = {
        path: c.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Answer)
        for path, c in both.items()
    }
    assert answer(got["proxy"]) == answer(got["direct"])
    parsed = got["proxy"].choices[0].message.parsed
    assert isinstance(parsed, Answer) and parsed.said.startswith("You said: hello parity.") and parsed.sure
    # The answer fits the schema because the schema reached the model: `items` counts the
    # conversation's items, as the simulator saw them.
    assert parsed.items == 1
    # 16 is the least limit that is bridged (below it the request passes through), and the
    # structured answer to a long question is longer, so the bridged turn ends `incomplete` →
    # `length`.
    long = [{"role": "user", "content": " ".join(["word"] * 40)}]
    for c in both.values():
        with pytest.raises(openai.LengthFinishReasonError):
            c.chat.completions.parse(model=MODEL, messages=long, response_format=Answer, max_completion_tokens=16)
    raw = both["proxy"].chat.completions.with_raw_response.parse(
        model=MODEL, messages=long, response_format=Answer, max_completion_tokens=16
    )
    assert raw.headers.get("x-wsbridge-route") == "chat-bridged"
    with pytest.raises(openai.LengthFinishReasonError):
        raw.parse()


# --- the 20-call loop ---------------------------------------------------------------------------


def chat_tool_loop(client, question, calls=CALLS, stream=False):
    """The usual chat agent loop: the whole `messages` history every turn (the assistant message
    as answered, then one `tool` message per call) until the model answers. Returns the final
    answer, each turn's `x-wsbridge-continuation` header (None straight to the simulator) and
    every turn's tool calls as (id, name, arguments)."""
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}]
    routes, transcript = [], []
    for _ in range(calls + 2):
        kwargs = dict(model=MODEL, messages=list(messages), tools=TOOLS[:1], metadata={"sim_tool_calls": str(calls)})
        raw = client.chat.completions.with_raw_response.create(stream=stream, **kwargs)
        routes.append(raw.headers.get("x-wsbridge-continuation"))
        if stream:
            # What the `.stream()` helper assembles, from the chunks as they came.
            state = ChatCompletionStreamState(input_tools=TOOLS[:1])
            for c in raw.parse():
                state.handle_chunk(c)
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


@pytest.fixture()
def own_proxy():
    """A proxy of this test's own: its simulator's turn records are this test's only."""
    process = Wsbridge("serve", "--simulate", extra_env=accepting_only(KEY))
    yield process
    process.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_20_call_loop_continues_every_turn_and_answers_as_the_direct_loop(client, own_proxy, stream):
    direct, direct_routes, direct_transcript = chat_tool_loop(client, "What is the answer?", stream=stream)
    assert set(direct_routes) == {None}
    with OpenAI(base_url=f"{own_proxy.url}/v1", api_key=KEY, **CLIENT_OPTIONS) as proxied:
        final, routes, transcript = chat_tool_loop(proxied, "What is the answer?", stream=stream)

    assert sum(len(calls) for calls in transcript) == CALLS
    assert transcript == direct_transcript
    assert answer(final) == answer(direct)
    assert f"[{2 * CALLS + 2} items, digest " in final.choices[0].message.content
    if not stream:
        # The history the upstream already held counts as cached prompt, as OpenAI reports it.
        assert direct.usage.prompt_tokens_details.cached_tokens == 0
        assert final.usage.prompt_tokens_details.cached_tokens > 0
    assert routes[0] == "fresh" and routes[1:] == ["continued"] * CALLS, routes

    turns = [t for t in own_proxy.sim_stats()["turns"] if t["outcome"] == "completed"]
    assert len(turns) == CALLS + 1 and {t["transport"] for t in turns} == {"ws"}
    assert turns[0]["input_items"] == 2 and not turns[0]["continued"]
    for previous, turn in zip(turns, turns[1:]):
        # Only the new tool message went upstream, on top of the previous response.
        assert turn["continued"] and turn["previous_response_id"] == previous["response_id"], turn
        assert turn["input_items"] == 1, turn
