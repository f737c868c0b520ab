"""What the proxy decides about a Chat Completions request (issue 12), seen with the official
openai Python SDK and from the upstream's side (`/sim/stats` of the proxy's in-process
simulator):
- bridged onto a Responses turn over a pooled socket (`x-wsbridge-route: chat-bridged`);
- passed through to the upstream's `/v1/chat/completions` with the very bytes the SDK sent
  (`chat-passthrough`) when a field has no faithful Responses equivalent (`n` > 1,
  `logit_bias`, a field wsbridge does not know);
- refused with OpenAI's 400 before anything goes upstream;
- an upstream failure before or after the first chunk, as the SDK expects it.

That bridged answers are the simulator's own chat answers, call for call, is
`test_chat_parity.py`."""

import json

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion

from conftest import CLIENT_OPTIONS, KEY, Wsbridge, accepting_only

MODEL = "gpt-sim"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def chat_proxy():
    """A proxy of this module's own, so its simulator's stats move only with these tests."""
    process = Wsbridge("serve", "--simulate", extra_env=accepting_only(KEY))
    yield process
    process.stop()


class Recorder:
    """An SDK client of `chat_proxy` whose HTTP client keeps the body of every request it sends
    (an httpx event hook: the bytes as they go on the wire)."""

    def __init__(self, base_url):
        self.bodies = []

        def record(request):
            self.bodies.append(request.read())

        http_client = openai.DefaultHttpxClient(event_hooks={"request": [record]})
        self.client = OpenAI(base_url=base_url, api_key=KEY, http_client=http_client, **CLIENT_OPTIONS)


@pytest.fixture()
def recorder(chat_proxy):
    rec = Recorder(f"{chat_proxy.url}/v1")
    with rec.client:
        yield rec


def new_turns(process, before):
    """The turns the simulator recorded since `before` (a `/sim/stats` snapshot), and the stats."""
    stats = process.sim_stats()
    seen = {t["index"] for t in before["turns"]}
    return [t for t in stats["turns"] if t["index"] not in seen], stats


# --- bridged ----------------------------------------------------------------------------------


def test_a_faithful_request_is_bridged_onto_a_socket(chat_proxy, recorder):
    before = chat_proxy.sim_stats()
    raw = recorder.client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-wsbridge-route"] == "chat-bridged"
    assert raw.headers["x-wsbridge-continuation"] == "fresh"
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.refusal is None
    assert choice.message.content.startswith("You said: hello there.")
    [turn], stats = new_turns(chat_proxy, before)
    assert turn["transport"] == "ws" and turn["input_items"] == 1 and turn["outcome"] == "completed"
    assert stats["chat_bodies"] == before["chat_bodies"], "nothing reached the upstream's chat endpoint"


# --- pass-through -------------------------------------------------------------------------------


PASSTHROUGH = {
    "n=2": {"n": 2},
    "n=2 streamed": {"n": 2, "stream": True},
    "logit_bias": {"logit_bias": {"50256": -100}, "seed": 7},
    # 2**64 fits no JSON number type of a parser that re-serialises (it would come out as a
    # float), so it shows that the bytes went on untouched.
    "unknown field": {"extra_body": {"x_unknown": {"nested": [1, 2.5, None]}, "x_big": 2**64}},
}


@pytest.mark.parametrize("case", PASSTHROUGH)
def test_an_unfaithful_request_reaches_the_upstream_chat_endpoint_byte_for_byte(chat_proxy, recorder, case):
    messages = [{"role": "system", "content": "Réponds en français ✓"}, {"role": "user", "content": "héllo"}]
    before = chat_proxy.sim_stats()
    raw = recorder.client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, **PASSTHROUGH[case])
    assert raw.headers["x-wsbridge-route"] == "chat-passthrough"
    assert "x-wsbridge-continuation" not in raw.headers
    if PASSTHROUGH[case].get("stream"):
        texts = {}
        for chunk in raw.parse():
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        answers = [texts[i] for i in sorted(texts)]
    else:
        answers = [choice.message.content for choice in raw.parse().choices]
    assert len(answers) == PASSTHROUGH[case].get("n", 1)
    assert all(a.startswith("You said: héllo.") for a in answers), answers

    [sent] = recorder.bodies
    [turn], stats = new_turns(chat_proxy, before)
    assert turn["transport"] == "chat" and turn["outcome"] == "completed"
    [kept] = [b for b in stats["chat_bodies"] if b["turn"] == turn["index"]]
    assert kept["text"].encode() == sent
    assert kept["bytes"] == turn["bytes"] == len(sent)
    assert kept["fnv1a"] == turn["body_fnv1a"]
    # What the test meant to send is in those bytes.
    body = json.loads(sent)
    for key, value in PASSTHROUGH[case].get("extra_body", PASSTHROUGH[case]).items():
        assert body[key] == value


# --- bad input ----------------------------------------------------------------------------------


def post_raw(client, content):
    return client.post(
        "/chat/completions",
        content=content,
        cast_to=ChatCompletion,
        options={"headers": {"Content-Type": "application/json"}},
    )


BAD = {
    "not JSON": (lambda c: post_raw(c, b'{"model": "gpt-sim", "messages": [}'), None, None),
    "not an object": (lambda c: post_raw(c, b'["gpt-sim"]'), None, None),
    "messages not an array": (
        lambda c: c.chat.completions.create(model=MODEL, messages={"role": "user", "content": "hi"}),
        "messages",
        "invalid_type",
    ),
    "messages empty": (lambda c: c.chat.completions.create(model=MODEL, messages=[]), "messages", "empty_array"),
    "unknown role": (
        lambda c: c.chat.completions.create(model=MODEL, messages=[*HELLO, {"role": "robot", "content": "beep"}]),
        "messages[1].role",
        "invalid_value",
    ),
    "tool message without tool_call_id": (
        lambda c: c.chat.completions.create(model=MODEL, messages=[*HELLO, {"role": "tool", "content": "42"}]),
        "messages[1].tool_call_id",
        "missing_required_parameter",
    ),
    # A field that would pass the request through does not let a malformed one reach upstream.
    "unknown role with n=2": (
        lambda c: c.chat.completions.create(model=MODEL, n=2, messages=[{"role": "robot", "content": "beep"}]),
        "messages[0].role",
        "invalid_value",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_openais_400_and_nothing_goes_upstream(chat_proxy, recorder, case):
    send, param, code = BAD[case]
    before = chat_proxy.sim_stats()
    with pytest.raises(openai.BadRequestError) as raised:
        send(recorder.client)
    error = raised.value
    assert error.status_code == 400
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert error.param == param and error.code == code, body
    if case == "not JSON":
        assert "could not parse the JSON body" in body["error"]["message"]
    after = chat_proxy.sim_stats()
    for key in ("turns_total", "bytes_received_total", "sockets_opened", "chat_bodies"):
        assert after[key] == before[key], key


# --- upstream errors ----------------------------------------------------------------------------


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
