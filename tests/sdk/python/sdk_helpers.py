"""What the SDK suites share: the request shapes, what every Responses stream must look like, and
the usual function-tool agent loop. Written from the simulator's contract (README.md)."""

import json

MODEL = "gpt-sim"
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")
TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def check_stream(events):
    """What every Responses stream must look like; returns the terminal event."""
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert [e.sequence_number for e in events] == list(range(len(events))), types
    assert types[-1] in TERMINAL and not any(t in TERMINAL for t in types[:-1]), types
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert len(ids) == 1, ids
    return events[-1]


def text_deltas(events):
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def run_tool_loop(client, question, calls, chained):
    """The usual SDK agent loop to its answer; returns the final response, the function calls
    seen and the outputs sent. Full history ([`FullHistoryLoop`]): `input += response.output`, then
    the tool outputs. Chained: only the new items, with `previous_response_id` (REST, `store` left
    at its default)."""
    if not chained:
        loop = FullHistoryLoop(client, question, calls)
        return loop.run(), loop.seen_calls, loop.output_texts
    history = [{"role": "user", "content": question}]
    kwargs = {"model": MODEL, "tools": TOOLS, "metadata": {"sim_tool_calls": str(calls)}}
    response = client.responses.create(input=history, **kwargs)
    seen_calls, outputs = [], []
    for _ in range(calls + 2):
        function_calls = [item for item in response.output if item.type == "function_call"]
        if not function_calls:
            return response, seen_calls, outputs
        new_items = []
        for call in function_calls:
            assert call.name == "lookup"
            assert call.call_id.startswith("call_")
            assert isinstance(json.loads(call.arguments), dict), call.arguments
            seen_calls.append(call)
            outputs.append(f"result #{len(outputs) + 1} for {call.call_id}")
            new_items.append({"type": "function_call_output", "call_id": call.call_id, "output": outputs[-1]})
        response = client.responses.create(input=new_items, previous_response_id=response.id, **kwargs)
        assert response.previous_response_id is not None
    raise AssertionError(f"the model was still calling tools after {len(seen_calls)} calls")


class FullHistoryLoop:
    """The usual full-history agent loop (`input += response.output`, then one
    `function_call_output` per call), one turn at a time, so a test can interleave, edit or fork
    conversations between turns. `drop_reasoning` leaves `reasoning` items out of what it appends
    (as many clients do); `extra` goes into every request (`store`, `reasoning`, ...).

    Each turn goes through `with_raw_response`, so `routes` keeps the proxy's
    `x-wsbridge-continuation` header of every turn (None when talking to the simulator)."""

    def __init__(self, client, question, calls=20, drop_reasoning=False, tag="", **extra):
        self.client = client
        self.calls = calls
        self.drop_reasoning = drop_reasoning
        self.tag = tag
        self.history = [{"role": "user", "content": question}]
        self.kwargs = {"model": MODEL, "tools": TOOLS, "metadata": {"sim_tool_calls": str(calls)}, **extra}
        self.responses = []
        self.routes = []
        self.sent_items = []
        self.outputs = 0
        self.seen_calls = []
        self.output_texts = []

    @property
    def last(self):
        return self.responses[-1] if self.responses else None

    def pending_calls(self):
        return [item for item in self.last.output if item.type == "function_call"] if self.last else []

    @property
    def done(self):
        return self.last is not None and not self.pending_calls()

    def send(self, metadata=None):
        """One request with the whole history as it stands."""
        kwargs = dict(self.kwargs)
        if metadata:
            kwargs["metadata"] = {**kwargs["metadata"], **metadata}
        raw = self.client.responses.with_raw_response.create(input=list(self.history), **kwargs)
        response = raw.parse()
        assert response.status == "completed", (response.status, response.error)
        self.responses.append(response)
        self.routes.append(raw.headers.get("x-wsbridge-continuation"))
        self.sent_items.append(len(self.history))
        return response

    def absorb(self):
        """Appends the last response's output and an output for each of its tool calls."""
        calls = self.pending_calls()
        assert calls, "the conversation is over"
        kept = [item for item in self.last.output if not (self.drop_reasoning and item.type == "reasoning")]
        self.history += kept
        for call in calls:
            assert call.name == "lookup" and call.call_id.startswith("call_"), call
            assert isinstance(json.loads(call.arguments), dict), call.arguments
            self.outputs += 1
            output = f"result #{self.outputs}{self.tag} for {call.call_id}"
            self.seen_calls.append(call)
            self.output_texts.append(output)
            self.history.append({"type": "function_call_output", "call_id": call.call_id, "output": output})

    def step(self, metadata=None):
        """The next turn: the first request, or the last output and tool results plus a request."""
        if self.last is not None:
            self.absorb()
        return self.send(metadata)

    def run(self):
        """Turns until the model answers; returns the final response."""
        while not self.done:
            assert len(self.responses) <= self.calls + 2, f"still calling tools after {self.outputs} outputs"
            self.step()
        return self.last

    def fork(self, tag=None):
        """An independent copy of this conversation (same history so far), for branching."""
        other = FullHistoryLoop.__new__(FullHistoryLoop)
        other.__dict__.update(self.__dict__)
        other.history = list(self.history)
        other.kwargs = dict(self.kwargs)
        other.responses = list(self.responses)
        other.routes = list(self.routes)
        other.sent_items = list(self.sent_items)
        other.seen_calls = list(self.seen_calls)
        other.output_texts = list(self.output_texts)
        if tag is not None:
            other.tag = tag
        return other

