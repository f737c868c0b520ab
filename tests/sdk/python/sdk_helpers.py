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
    """The usual SDK agent loop. Full history: `input += response.output`, then the tool outputs.
    Chained: only the new items, with `previous_response_id` (REST, `store` left at its default)."""
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
        if chained:
            response = client.responses.create(input=new_items, previous_response_id=response.id, **kwargs)
            assert response.previous_response_id is not None
        else:
            history += response.output
            history += new_items
            response = client.responses.create(input=history, **kwargs)
    raise AssertionError(f"the model was still calling tools after {len(seen_calls)} calls")
