// The official openai npm package, pointed at the simulator, must see OpenAI's Responses API.
// Run with `node --test` in this directory (scripts/test does).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ResponsesWS } from "openai/resources/responses/ws";
import { startSimulator } from "./simulator.js";
import { MODEL, TIMEOUT, TERMINAL, checkStream, textDeltas, messageText } from "./checks.js";

const TOOLS = [
  {
    type: "function",
    name: "lookup",
    description: "Look something up.",
    parameters: { type: "object", properties: { query: { type: "string" } } },
    strict: false,
  },
];
const REASONING = { effort: "low", summary: "auto" };

let sim;
let client;
before(async () => {
  sim = await startSimulator();
  client = new OpenAI({ baseURL: sim.baseURL, apiKey: "sk-test", maxRetries: 0, timeout: 30_000 });
});
after(async () => {
  if (sim) assert.equal(await sim.stop(), 0, `the simulator must exit 0 on SIGTERM; stderr:\n${sim.log()}`);
});

test("non-streamed create returns the echo answer", TIMEOUT, async () => {
  const response = await client.responses.create({ model: MODEL, input: "hello node" });
  assert.equal(response.status, "completed");
  assert.ok(response.id.startsWith("resp_"), response.id);
  assert.ok(response.output_text.startsWith("You said: hello node"), response.output_text);
  assert.ok(response.usage.output_tokens > 0);
  assert.equal(response.usage.total_tokens, response.usage.input_tokens + response.usage.output_tokens);
});

test("streamed create parses every event in order", TIMEOUT, async () => {
  const stream = await client.responses.create({ model: MODEL, input: "stream node", stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  assert.equal(events[0].type, "response.created");
  assert.equal(events[0].sequence_number, 0);
  assert.equal(events[1].type, "response.in_progress");
  const last = checkStream(events);
  assert.equal(last.type, "response.completed");
  const deltas = textDeltas(events);
  assert.ok(events.filter((e) => e.type === "response.output_text.delta").length > 1);
  assert.equal(deltas, messageText(last.response));
  assert.equal(events.find((e) => e.type === "response.output_text.done").text, deltas);
  assert.ok(deltas.startsWith("You said: stream node"), deltas);
});

test("responses.stream() helper: events and finalResponse()", TIMEOUT, async () => {
  const stream = client.responses.stream({ model: MODEL, input: "helper node" });
  const events = [];
  for await (const event of stream) events.push(event);
  const final = await stream.finalResponse();
  assert.equal(checkStream(events).type, "response.completed");
  assert.ok(final.output_text.startsWith("You said: helper node"), final.output_text);
  assert.equal(final.output_text, textDeltas(events));
});

// The helper's accumulator validates indices, ids and part types strictly: run it over every
// kind of output the simulator produces.
for (const [name, extra, check] of [
  [
    "function call",
    { tools: TOOLS },
    (final) => {
      const [call] = final.output;
      assert.equal(call.type, "function_call");
      assert.equal(call.name, "lookup");
      assert.ok(call.call_id.startsWith("call_"), call.call_id);
      assert.equal(typeof JSON.parse(call.arguments), "object");
    },
  ],
  [
    "reasoning",
    { reasoning: REASONING, include: ["reasoning.encrypted_content"] },
    (final) => {
      const [reasoning, message] = final.output;
      assert.equal(reasoning.type, "reasoning");
      assert.ok(reasoning.encrypted_content);
      assert.ok(reasoning.summary[0].text);
      assert.equal(message.type, "message");
      assert.ok(final.output_text.startsWith("You said: stream kinds"), final.output_text);
    },
  ],
  [
    "refusal",
    { metadata: { sim_refuse: "true" } },
    (final) => {
      const part = final.output[0].content[0];
      assert.equal(part.type, "refusal");
      assert.ok(part.refusal.length > 0);
      assert.equal(final.output_text, "");
    },
  ],
]) {
  test(`responses.stream() helper accepts a ${name}`, TIMEOUT, async () => {
    const stream = client.responses.stream({ model: MODEL, input: "stream kinds", ...extra });
    const final = await stream.finalResponse();
    assert.equal(final.status, "completed");
    check(final);
  });
}

test("a function-tool loop with the full history", TIMEOUT, async () => {
  const input = [{ role: "user", content: "plan a trip" }];
  const callIds = [];
  let output;
  let response = await client.responses.create({
    model: MODEL,
    input,
    tools: TOOLS,
    metadata: { sim_tool_calls: "3" },
  });
  for (let i = 0; i < 5; i++) {
    const calls = response.output.filter((item) => item.type === "function_call");
    if (calls.length === 0) break;
    input.push(...response.output);
    for (const call of calls) {
      callIds.push(call.call_id);
      output = `result #${callIds.length} for ${call.call_id}`;
      input.push({ type: "function_call_output", call_id: call.call_id, output });
    }
    response = await client.responses.create({
      model: MODEL,
      input,
      tools: TOOLS,
      metadata: { sim_tool_calls: "3" },
    });
  }
  assert.equal(callIds.length, 3);
  assert.equal(new Set(callIds).size, 3);
  assert.ok(response.output_text.startsWith("You said: plan a trip"), response.output_text);
  assert.ok(response.output_text.includes(output), response.output_text);
});

test("an unknown previous_response_id raises BadRequestError", TIMEOUT, async () => {
  await assert.rejects(
    client.responses.create({ model: MODEL, input: "x", previous_response_id: "resp_doesnotexist" }),
    (error) =>
      error instanceof OpenAI.BadRequestError &&
      error.status === 400 &&
      error.code === "previous_response_not_found" &&
      error.param === "previous_response_id",
  );
});

test("a 429 fault raises RateLimitError", TIMEOUT, async () => {
  await assert.rejects(
    client.responses.create({ model: MODEL, input: "x", metadata: { sim_fault: "error:429:rate_limit_exceeded" } }),
    (error) => error instanceof OpenAI.RateLimitError && error.code === "rate_limit_exceeded",
  );
});

test("a missing key raises AuthenticationError", TIMEOUT, async () => {
  await assert.rejects(
    client.responses.create({ model: MODEL, input: "x" }, { headers: { Authorization: null } }),
    (error) => error instanceof OpenAI.AuthenticationError && error.status === 401,
  );
});

test("a failed response arrives as a response.failed event", TIMEOUT, async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: "x",
    stream: true,
    metadata: { sim_fault: "response_failed" },
  });
  const events = [];
  for await (const event of stream) events.push(event);
  const last = checkStream(events);
  assert.equal(last.type, "response.failed");
  assert.equal(last.response.status, "failed");
  assert.equal(last.response.error.code, "server_error");
});

test("ResponsesWS: a store=false chain over one socket", TIMEOUT, async () => {
  const ws = new ResponsesWS(client);
  const messages = ws.stream();
  /** Server events of one response, up to its terminal event or an error. */
  async function turn() {
    const events = [];
    for (;;) {
      const { value, done } = await messages.next();
      assert.ok(!done, "the socket closed mid-turn");
      if (value.type === "error") return [...events, value];
      if (value.type === "close") assert.fail(`socket closed: ${value.code} ${value.reason}`);
      if (value.type !== "message") continue;
      events.push(value.message);
      if (TERMINAL.has(value.message.type)) return events;
    }
  }
  try {
    let previous;
    let last;
    for (const text of ["turn one", "turn two", "turn three"]) {
      ws.send({
        type: "response.create",
        model: MODEL,
        store: false,
        input: [{ role: "user", content: text }],
        ...(previous ? { previous_response_id: previous } : {}),
      });
      const events = await turn();
      last = checkStream(events);
      assert.equal(last.type, "response.completed");
      assert.equal(textDeltas(events), messageText(last.response));
      assert.equal(last.response.previous_response_id ?? undefined, previous);
      previous = last.response.id;
    }
    assert.ok(messageText(last.response).startsWith("You said: turn three"), messageText(last.response));

    // The SDK turns an error frame into a WebSocketError carrying the event.
    ws.send({ type: "response.create", model: MODEL, input: "x", previous_response_id: "resp_doesnotexist" });
    const [failure] = await turn();
    assert.equal(failure.type, "error");
    assert.equal(failure.error.error.status, 400);
    assert.equal(failure.error.error.error.code, "previous_response_not_found");

    ws.send({ type: "response.create", model: MODEL, input: "after the error", store: false });
    const after = checkStream(await turn());
    assert.equal(after.type, "response.completed");
    assert.ok(messageText(after.response).startsWith("You said: after the error"));
  } finally {
    ws.close();
  }
});
