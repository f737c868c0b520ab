"""Continuations (issue 4) with the official openai Python SDK: the usual full-history agent loop
(`input += response.output`, then `function_call_output` items, 20 tool calls from the
simulator's tool-loop script) through the proxy, in the variants the issue lists.

Every test asserts two things: from the upstream simulator's turn records (`/sim/stats`) how
each turn went upstream (continued from the socket's memory or sent in full, how many items,
which socket), and that every answer is identical to the same loop run directly against the
simulator's REST endpoint (the `client` fixture): a continuation must never change an answer.
"""

import json
import threading
import time
import urllib.request

import pytest
from openai import OpenAI

from conftest import CLIENT_OPTIONS, KEY, Wsbridge, accepting_only
from sdk_helpers import FullHistoryLoop

CALLS = 20
LOW, HIGH = {"effort": "low"}, {"effort": "high"}


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_proxy():
    """A proxy with `continuation.reasoning = "strict"` (from its environment)."""
    process = Wsbridge(
        "serve", "--simulate", extra_env={**accepting_only(KEY), "WSBRIDGE_CONTINUATION_REASONING": "strict"}
    )
    yield process
    process.stop()


@pytest.fixture()
def own_proxy():
    """A proxy of this test's own: its in-process simulator sees no other test's turns, so a
    fault configured with `POST /sim/faults` (which counts every turn) hits exactly the turn
    the test means."""
    process = Wsbridge("serve", "--simulate", extra_env=accepting_only(KEY))
    yield process
    process.stop()


def through(proxy, organization):
    """An SDK client of `proxy`. Its own organization header gives it its own pool partition
    (its own sockets and heads), untouched by the other tests that share the proxy."""
    return OpenAI(base_url=f"{proxy.url}/v1", api_key=KEY, organization=organization, **CLIENT_OPTIONS)


def set_faults(proxy, config):
    """`POST /sim/faults` on the proxy's in-process simulator."""
    root = proxy.upstream.removesuffix("/v1")
    request = urllib.request.Request(
        f"{root}/sim/faults",
        data=json.dumps(config).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


def turns_of(proxy, responses):
    """The upstream simulator's turn records of `responses` (SDK Response objects), in order."""
    by_id = {turn["response_id"]: turn for turn in proxy.sim_stats()["turns"] if turn["outcome"] != "closed"}
    missing = [r.id for r in responses if r.id not in by_id]
    assert not missing, f"the upstream simulator recorded no turn for {missing}"
    return [by_id[r.id] for r in responses]


def transcript(responses):
    """What each turn answered, without the ids that differ from run to run: the tool calls
    (their deterministic call_id and arguments, which depend on the whole conversation) and the
    text (which ends with a digest of the whole conversation)."""
    turns = []
    for response in responses:
        items = []
        for item in response.output:
            if item.type == "function_call":
                items.append(("function_call", item.name, item.call_id, item.arguments))
            elif item.type == "message":
                text = "".join(part.text for part in item.content if part.type == "output_text")
                items.append(("message", text))
            else:
                items.append((item.type,))
        turns.append(items)
    return turns


def summary(turns):
    """A compact view of turn records for assertion messages."""
    return [
        (t["socket"], t["input_items"], t["continued"], (t["previous_response_id"] or "")[-6:], t["outcome"])
        for t in turns
    ]


def assert_continued_chain(turns, responses, first=1):
    """Turns `first..` each continue the previous response from the socket's memory with only
    the one new function_call_output."""
    for i in range(first, len(turns)):
        assert turns[i]["continued"], (i, summary(turns))
        assert turns[i]["previous_response_id"] == responses[i - 1].id, (i, summary(turns))
        assert turns[i]["input_items"] == 1, (i, summary(turns))


def run_beside_direct(proxy, organization, client, question, **options):
    """The same full-history loop through `proxy` (under its own organization) and straight to
    the simulator; asserts that every answer is identical and returns the proxied loop."""
    with through(proxy, organization) as own:
        loop = FullHistoryLoop(own, question, CALLS, **options)
        loop.run()
    direct = FullHistoryLoop(client, question, CALLS, **options)
    direct.run()
    assert transcript(loop.responses) == transcript(direct.responses)
    assert loop.last.output_text == direct.last.output_text
    return loop


# --- reasoning items dropped by the client -----------------------------------------------------


def test_lenient_proxy_continues_a_loop_that_drops_reasoning_items(proxy, client):
    loop = run_beside_direct(
        proxy, "org-cont-reasoning-lenient", client, "Think, then loop.", drop_reasoning=True, reasoning=LOW
    )

    # The premise: every turn's output starts with a reasoning item, none of which is sent back.
    assert len(loop.responses) == CALLS + 1
    assert all(r.output[0].type == "reasoning" for r in loop.responses)
    assert not [item for item in loop.history if getattr(item, "type", None) == "reasoning"]

    turns = turns_of(proxy, loop.responses)
    assert len({t["socket"] for t in turns}) == 1, summary(turns)
    assert not turns[0]["continued"] and turns[0]["previous_response_id"] is None
    assert_continued_chain(turns, loop.responses)
    assert loop.routes == ["fresh"] + ["continued"] * CALLS


def test_strict_proxy_sends_a_loop_that_drops_reasoning_items_in_full(strict_proxy, client):
    loop = run_beside_direct(
        strict_proxy, "org-cont-reasoning-strict", client, "Think, then loop.", drop_reasoning=True, reasoning=HIGH
    )

    assert len(loop.responses) == CALLS + 1
    assert all(r.output[0].type == "reasoning" for r in loop.responses)

    turns = turns_of(strict_proxy, loop.responses)
    assert not any(t["continued"] for t in turns), summary(turns)
    assert all(t["previous_response_id"] is None for t in turns), summary(turns)
    assert [t["input_items"] for t in turns] == loop.sent_items, "every turn carried the full history"
    assert loop.routes == ["fresh"] * (CALLS + 1)


def test_strict_proxy_still_continues_a_loop_that_keeps_reasoning_items(strict_proxy, client):
    """The control for the test above: strict mode is not "continuations off"."""
    loop = run_beside_direct(
        strict_proxy, "org-cont-reasoning-strict-kept", client, "Think, keep it.", reasoning={"effort": "medium"}
    )

    assert sum(getattr(item, "type", None) == "reasoning" for item in loop.history) == CALLS

    turns = turns_of(strict_proxy, loop.responses)
    assert len({t["socket"] for t in turns}) == 1, summary(turns)
    assert_continued_chain(turns, loop.responses)
    assert loop.routes == ["fresh"] + ["continued"] * CALLS


# --- store=false, upstream socket lost -----------------------------------------------------------


def test_store_false_loop_survives_the_upstream_closing_its_socket(own_proxy, client):
    """The upstream drops the socket holding the conversation when the proxy sends the next
    continuation on it (before any event): the proxy resends the full history on another socket
    before anything reached the client, and continues from there."""
    kill = 8  # 1-based turn whose continuation finds its socket gone
    with through(own_proxy, "org-cont-killed") as own:
        loop = FullHistoryLoop(own, "Loop, store nothing.", CALLS, store=False)
        for turn in range(1, CALLS + 2):
            if turn == kill - 1:
                # Counted from here: this turn is #1, the continuation of turn `kill` is #2
                # (closed before `response.created`), its resend #3.
                set_faults(own_proxy, {"turn": "close_before_created", "turn_every": 2})
            loop.step()
            if turn == kill:
                set_faults(own_proxy, {})
        assert loop.done
    direct = FullHistoryLoop(client, "Loop, store nothing.", CALLS, store=False)
    direct.run()

    assert transcript(loop.responses) == transcript(direct.responses)
    assert loop.last.output_text == direct.last.output_text

    records = own_proxy.sim_stats()["turns"]
    closed = [t for t in records if t["outcome"] == "closed"]
    assert len(closed) == 1, summary(records)
    before = turns_of(own_proxy, loop.responses[: kill - 1])
    after = turns_of(own_proxy, loop.responses[kill - 1 :])
    # The attempt that was cut off was a continuation on the conversation's socket.
    assert closed[0]["socket"] == before[-1]["socket"], summary(records)
    assert closed[0]["previous_response_id"] == loop.responses[kill - 2].id
    assert closed[0]["input_items"] == 1
    # Turn `kill`: the full history, as the client sent it, on another socket.
    resend = after[0]
    assert not resend["continued"] and resend["previous_response_id"] is None, summary(records)
    assert resend["input_items"] == loop.sent_items[kill - 1] == 2 * (kill - 1) + 1
    assert resend["socket"] != before[-1]["socket"]
    assert resend["index"] > closed[0]["index"]
    assert loop.routes[kill - 1] in ("fresh", "recovered"), loop.routes
    # Continued before the loss on one socket, and again afterwards on the new one.
    assert len({t["socket"] for t in before}) == 1 and len({t["socket"] for t in after}) == 1
    assert_continued_chain(before, loop.responses[: kill - 1])
    assert_continued_chain(after, loop.responses[kill - 1 :])


def test_store_false_loop_survives_its_idle_socket_being_closed_between_turns(client):
    """The same loss while the socket sits idle between two turns: the simulator closes sockets
    past `simulator.max_connection_age_secs` (as OpenAI does at 60 minutes). The next turn goes
    in full on a new socket and later turns continue again.

    Timing: the sockets opened at start close after `age` s; their replacements, opened then,
    last another `age` s, which the rest of the loop (16 turns, well under a second) must fit in."""
    age = 4
    process = Wsbridge(
        "serve",
        "--simulate",
        extra_env={**accepting_only(KEY), "WSBRIDGE_SIMULATOR_MAX_CONNECTION_AGE_SECS": str(age)},
    )
    try:
        kill = 6  # the first turn after the socket went
        with through(process, "org-cont-idle-closed") as own:
            loop = FullHistoryLoop(own, "Loop across a dead socket.", CALLS, store=False)
            for _ in range(kill - 1):
                loop.step()
            first_socket = turns_of(process, loop.responses)[0]["socket"]
            opened = process.sim_stats()["sockets_opened"]
            # Wait until every socket open so far (the conversation's among them) has been closed.
            deadline = time.monotonic() + age + 5
            while process.sim_stats()["sockets_closed"] < opened:
                assert time.monotonic() < deadline, f"the simulator did not close its sockets after {age} s"
                time.sleep(0.1)
            resumed = time.monotonic()
            loop.run()
            elapsed = time.monotonic() - resumed
        direct = FullHistoryLoop(client, "Loop across a dead socket.", CALLS, store=False)
        direct.run()

        assert transcript(loop.responses) == transcript(direct.responses)
        assert loop.last.output_text == direct.last.output_text
        turns = turns_of(process, loop.responses)
        assert {t["socket"] for t in turns[: kill - 1]} == {first_socket}, summary(turns)
        resend = turns[kill - 1]
        assert not resend["continued"] and resend["previous_response_id"] is None, summary(turns)
        assert resend["input_items"] == loop.sent_items[kill - 1] == 2 * (kill - 1) + 1
        assert resend["socket"] != first_socket
        after = f"(the last {len(turns) - kill + 1} turns took {elapsed:.2f} s of the {age} s a socket lives)"
        assert len({t["socket"] for t in turns[kill - 1 :]}) == 1, (after, summary(turns))
        assert_continued_chain(turns[: kill - 1], loop.responses[: kill - 1])
        assert_continued_chain(turns[kill - 1 :], loop.responses[kill - 1 :])
        assert {t["outcome"] for t in process.sim_stats()["turns"]} == {"completed"}, after
    finally:
        process.stop()


# --- two conversations on one key ----------------------------------------------------------------


def test_two_interleaved_conversations_on_one_key_keep_their_own_sockets(proxy, client):
    with through(proxy, "org-cont-interleaved") as own:
        a = FullHistoryLoop(own, "Conversation A: alpha.", CALLS, tag="-a")
        b = FullHistoryLoop(own, "Conversation B: beta.", CALLS, tag="-b")
        while not (a.done and b.done):
            for loop in (a, b):
                if not loop.done:
                    loop.step()
    direct_a = FullHistoryLoop(client, "Conversation A: alpha.", CALLS, tag="-a")
    direct_b = FullHistoryLoop(client, "Conversation B: beta.", CALLS, tag="-b")
    direct_a.run()
    direct_b.run()

    assert transcript(a.responses) == transcript(direct_a.responses)
    assert transcript(b.responses) == transcript(direct_b.responses)
    assert a.last.output_text == direct_a.last.output_text
    assert b.last.output_text == direct_b.last.output_text
    assert a.last.output_text.startswith("You said: Conversation A: alpha.")
    assert b.last.output_text.startswith("You said: Conversation B: beta.")
    assert a.last.output_text != b.last.output_text

    turns_a, turns_b = turns_of(proxy, a.responses), turns_of(proxy, b.responses)
    sockets_a, sockets_b = {t["socket"] for t in turns_a}, {t["socket"] for t in turns_b}
    assert len(sockets_a) == 1 and len(sockets_b) == 1, (summary(turns_a), summary(turns_b))
    assert sockets_a != sockets_b, "each conversation on its own socket"
    assert_continued_chain(turns_a, a.responses)
    assert_continued_chain(turns_b, b.responses)
    assert a.routes == b.routes == ["fresh"] + ["continued"] * CALLS


# --- an edited history ---------------------------------------------------------------------------


def edit_first_user_message(history):
    history[0] = {"role": "user", "content": "Loop, but I changed my mind."}


def edit_an_earlier_tool_output(history):
    outputs = [
        i for i, item in enumerate(history) if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]
    index = outputs[2]  # the third tool output
    history[index] = {**history[index], "output": history[index]["output"] + " (corrected)"}


@pytest.mark.parametrize("edit", [edit_first_user_message, edit_an_earlier_tool_output])
def test_an_edited_history_is_sent_in_full_and_answered_for_the_edit(proxy, client, edit):
    edited = 10  # 1-based turn sent with the edited history

    def play(loop):
        for _ in range(edited - 1):
            loop.step()
        loop.absorb()
        edit(loop.history)
        loop.send()
        return loop.run()

    with through(proxy, f"org-cont-edited-{edit.__name__}") as own:
        loop = FullHistoryLoop(own, "Loop, then edit.", CALLS)
        play(loop)
    direct = FullHistoryLoop(client, "Loop, then edit.", CALLS)
    play(direct)

    # The edit reached the model: the answers from the edit on differ from an unedited run.
    plain = FullHistoryLoop(client, "Loop, then edit.", CALLS)
    plain.run()
    assert transcript(plain.responses[: edited - 1]) == transcript(direct.responses[: edited - 1])
    assert plain.last.output_text != direct.last.output_text

    assert transcript(loop.responses) == transcript(direct.responses)
    assert loop.last.output_text == direct.last.output_text
    if edit is edit_first_user_message:
        assert loop.last.output_text.startswith("You said: Loop, but I changed my mind.")

    turns = turns_of(proxy, loop.responses)
    fresh = turns[edited - 1]
    assert not fresh["continued"] and fresh["previous_response_id"] is None, summary(turns)
    assert fresh["input_items"] == loop.sent_items[edited - 1] == 2 * (edited - 1) + 1
    assert loop.routes[edited - 1] == "fresh"
    assert_continued_chain(turns[: edited - 1], loop.responses[: edited - 1])
    # After the edit the edited conversation is the one that continues.
    assert_continued_chain(turns[edited - 1 :], loop.responses[edited - 1 :])


# --- a forked history ----------------------------------------------------------------------------


@pytest.mark.parametrize("at_once", [False, True], ids=["one-after-the-other", "at-once"])
def test_a_forked_history_answers_both_branches(proxy, client, at_once):
    """Two branches extend the same response with different tool outputs. Sent at once, both
    stall 1 s upstream so that they overlap. Both are answered as their own history says; at
    most one of them (exactly one, by the design) continues the shared head; then each branch
    goes on to its 20th tool call."""
    fork_at = 10  # responses shared by both branches
    stall = {"sim_fault": "stall_before:1000"} if at_once else None

    def play(make):
        trunk = make()
        for _ in range(fork_at):
            trunk.step()
        left, right = trunk.fork(tag="-left"), trunk.fork(tag="-right")
        left.absorb()
        right.absorb()
        if at_once:
            errors = []

            def send(branch):
                try:
                    branch.send(stall)
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=send, args=(branch,)) for branch in (left, right)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=20)
            assert not errors, errors
        else:
            left.send()
            right.send()
        while not (left.done and right.done):
            for branch in (left, right):
                if not branch.done:
                    branch.step()
        return trunk, left, right

    name = "at-once" if at_once else "sequential"
    with through(proxy, f"org-cont-fork-{name}") as own:
        trunk, left, right = play(lambda: FullHistoryLoop(own, "Loop, then fork.", CALLS))
    _, direct_left, direct_right = play(lambda: FullHistoryLoop(client, "Loop, then fork.", CALLS))

    assert transcript(left.responses) == transcript(direct_left.responses)
    assert transcript(right.responses) == transcript(direct_right.responses)
    assert left.last.output_text == direct_left.last.output_text
    assert right.last.output_text == direct_right.last.output_text
    assert left.last.output_text != right.last.output_text, "the branches differ"
    assert len(left.responses) == len(right.responses) == CALLS + 1

    head = trunk.responses[-1]
    first = turns_of(proxy, [left.responses[fork_at], right.responses[fork_at]])
    continued = [t for t in first if t["continued"]]
    assert len(continued) <= 1, summary(first)
    assert len(continued) == 1, f"one branch continues the shared head: {summary(first)}"
    assert continued[0]["previous_response_id"] == head.id
    assert continued[0]["input_items"] == 1
    full = next(t for t in first if not t["continued"])
    assert full["previous_response_id"] is None and full["input_items"] == 2 * fork_at + 1
    if not at_once:
        assert first[0] is continued[0], "the first branch sent continues"
    assert sorted(left.routes[fork_at:][:1] + right.routes[fork_at:][:1]) == ["continued", "fresh"]

    trunk_turns = turns_of(proxy, trunk.responses)
    assert_continued_chain(trunk_turns, trunk.responses)
    left_turns = turns_of(proxy, left.responses[fork_at:])
    right_turns = turns_of(proxy, right.responses[fork_at:])
    # After the fork each branch goes on on its own socket, continuing its own head.
    assert len({t["socket"] for t in left_turns}) == 1 and len({t["socket"] for t in right_turns}) == 1
    assert {t["socket"] for t in left_turns} != {t["socket"] for t in right_turns}
    assert_continued_chain(left_turns, left.responses[fork_at:])
    assert_continued_chain(right_turns, right.responses[fork_at:])
