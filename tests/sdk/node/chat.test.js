// The official openai npm package's Chat Completions API through the proxy (`serve --simulate`:
// each POST /v1/chat/completions becomes a Responses turn over pooled WebSockets), compared
// answer for answer with the same calls sent straight to a standalone simulator's chat
// endpoint. The simulator's scripted model is deterministic (call ids and the final answer's
// digest derive from the conversation), so a bridged answer built from a wrong history differs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { MODEL, TIMEOUT, collect } from "./checks.js";
import {
  CONTINUED,
  KEY,
  assertContinued,
  counter,
  recordingFetch,
  startPair,
  stopPair,
  upstreamTurns,
} from "./bridge.js";

const OPTIONS = { apiKey: KEY, maxRetries: 0, timeout: 30_000 };
const MESSAGES = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "hello chat" },
];
const tool = (name) => ({
  type: "function",
  function: { name, description: `The ${name} tool.`, parameters: { type: "object", properties: {} } },
});

let pair;
let viaProxy;
let direct;
let headers;
before(async () => {
  pair = await startPair();
  const recording = recordingFetch();
  headers = recording.seen;
  viaProxy = new OpenAI({ ...OPTIONS, baseURL: pair.proxy.baseURL, fetch: recording.fetch });
  direct = new OpenAI({ ...OPTIONS, baseURL: pair.sim.baseURL });
});
after(async () => {
  if (pair) await stopPair(pair);
});

/** The text of a chunk stream, and its chunks with a choice. */
function streamed(chunks) {
  const withChoice = chunks.filter((c) => c.choices.length > 0);
  return { text: withChoice.map((c) => c.choices[0].delta.content ?? "").join(""), withChoice };
}

/** The header chunks of streamed tool calls: [index, id, name]. */
const callHeaders = (chunks) =>
  chunks
    .flatMap((c) => c.choices[0]?.delta.tool_calls ?? [])
    .filter((call) => call.id)
    .map((call) => [call.index, call.id, call.function.name]);

test("create without stream: the chat.completion the simulator's chat endpoint answers", TIMEOUT, async () => {
  const { data, response } = await viaProxy.chat.completions.create({ model: MODEL, messages: MESSAGES }).withResponse();
  assert.equal(response.headers.get("x-wsbridge-route"), "chat-bridged");
  const expected = await direct.chat.completions.create({ model: MODEL, messages: MESSAGES });
  assert.equal(data.object, "chat.completion");
  assert.ok(data.id.startsWith("chatcmpl-"), data.id);
  const [choice] = data.choices;
  assert.equal(choice.finish_reason, "stop");
  assert.ok(choice.message.content.startsWith("You said: hello chat."), choice.message.content);
  assert.deepEqual(choice.message, expected.choices[0].message);
  assert.equal(data.usage.completion_tokens, expected.usage.completion_tokens);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
});

test("streamed create with include_usage: one id, role first, usage last, same text as direct", TIMEOUT, async () => {
  const body = { model: MODEL, messages: MESSAGES, stream: true, stream_options: { include_usage: true } };
  const chunks = await collect(await viaProxy.chat.completions.create(body));
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
  assert.equal(new Set(chunks.map((c) => c.created)).size, 1);
  assert.ok(chunks.every((c) => c.object === "chat.completion.chunk"));
  const { text, withChoice } = streamed(chunks);
  assert.deepEqual(withChoice[0].choices[0].delta, { role: "assistant", content: "" });
  assert.ok(withChoice.length > 3, "the text comes in several chunks");
  assert.deepEqual(
    withChoice.map((c) => c.choices[0].finish_reason).filter(Boolean),
    ["stop"],
  );
  const usage = chunks.at(-1);
  assert.deepEqual(usage.choices, []);
  assert.ok(usage.usage.completion_tokens > 0);
  assert.ok(chunks.slice(0, -1).every((c) => c.usage === null), "every other chunk has usage: null");

  const expected = streamed(await collect(await direct.chat.completions.create(body)));
  assert.equal(text, expected.text);
  assert.equal(usage.usage.completion_tokens, (await direct.chat.completions.create({ model: MODEL, messages: MESSAGES })).usage.completion_tokens);
});

test("parallel tool calls stream with their own indexes 0, 1, 2, as direct", TIMEOUT, async () => {
  const body = {
    model: MODEL,
    messages: [{ role: "user", content: "call them all" }],
    tools: ["alpha", "bravo", "charlie"].map(tool),
    metadata: { sim_parallel: "3", sim_tool_calls: "3" },
    stream: true,
  };
  const chunks = await collect(await viaProxy.chat.completions.create(body));
  const calls = callHeaders(chunks);
  assert.deepEqual(
    calls.map(([index, , name]) => [index, name]),
    [
      [0, "alpha"],
      [1, "bravo"],
      [2, "charlie"],
    ],
  );
  assert.equal(chunks.at(-1).choices[0].finish_reason, "tool_calls");
  assert.deepEqual(calls, callHeaders(await collect(await direct.chat.completions.create(body))));

  // The stream() helper assembles the calls by index into one message, as the non-stream
  // answer straight from the simulator has them.
  const { stream: _, ...plain } = body;
  const final = await viaProxy.chat.completions.stream(plain).finalChatCompletion();
  const expected = await direct.chat.completions.create(plain);
  const simple = (message) => message.tool_calls.map((c) => [c.id, c.function.name, c.function.arguments]);
  assert.deepEqual(simple(final.choices[0].message), simple(expected.choices[0].message));
  assert.equal(final.choices[0].finish_reason, "tool_calls");
});

/** `runTools` with one `lookup` function through `client`; returns the runner once done. */
async function runLookups(client, { question, calls, parallel, stream }) {
  const lookup = {
    type: "function",
    function: {
      name: "lookup",
      description: "Look something up.",
      parameters: { type: "object", properties: { query: { type: "string" } } },
      parse: JSON.parse,
      function: (args) => ({ found: `page ${args.step}`, query: args.query }),
    },
  };
  const runner = client.chat.completions.runTools(
    {
      model: MODEL,
      messages: [
        { role: "system", content: "Use the tool." },
        { role: "user", content: question },
      ],
      tools: [lookup],
      stream,
      metadata: { sim_tool_calls: String(calls), sim_parallel: String(parallel) },
    },
    { maxChatCompletions: calls + 5 },
  );
  await runner.done();
  return runner;
}

/** Each turn's calls as [id, arguments], and the final content. */
const transcript = async (runner) => ({
  calls: runner.allChatCompletions().map((c) => (c.choices[0].message.tool_calls ?? []).map((t) => [t.id, t.function.arguments])),
  final: await runner.finalContent(),
});

for (const { calls, parallel, stream } of [
  { calls: 20, parallel: 1, stream: false },
  { calls: 6, parallel: 2, stream: true },
]) {
  const turns = calls / parallel + 1;
  const name = `runTools (${stream ? "streamed" : "not streamed"}): ${calls} calls in ${turns} turns, the same final answer as direct, every later turn continued`;
  test(name, TIMEOUT, async () => {
    const run = { question: `${calls} lookups ${stream}`, calls, parallel, stream };
    const continuedBefore = await counter(pair.proxy, CONTINUED);
    const turnsBefore = (await upstreamTurns(pair.proxy)).length;
    const headersBefore = headers.length;

    const bridged = await transcript(await runLookups(viaProxy, run));
    const expected = await transcript(await runLookups(direct, run));
    assert.deepEqual(bridged, expected);
    assert.equal(bridged.calls.length, turns);
    assert.equal(bridged.calls.flat().length, calls);
    assert.ok(bridged.final.startsWith(`You said: ${run.question}. Tool said: {"found":"page ${calls}"`), bridged.final);

    assert.deepEqual(
      headers.slice(headersBefore).map((h) => h.continuation),
      ["fresh", ...Array(turns - 1).fill("continued")],
    );
    assert.equal((await counter(pair.proxy, CONTINUED)) - continuedBefore, turns - 1);
    // Upstream, each later turn carried only the tool messages the client added.
    assertContinued((await upstreamTurns(pair.proxy)).slice(turnsBefore), Array(turns - 1).fill(parallel));
  });
}

test("an unknown role is a 400 in OpenAI's shape, as straight from the simulator", TIMEOUT, async () => {
  const body = { model: MODEL, messages: [{ role: "wizard", content: "hi" }] };
  const turnsBefore = (await upstreamTurns(pair.proxy)).length;
  const [bridged, expected] = await Promise.all(
    [viaProxy, direct].map((client) => client.chat.completions.create(body).then(assert.fail, (e) => e)),
  );
  for (const error of [bridged, expected]) {
    assert.ok(error instanceof OpenAI.BadRequestError, String(error));
    assert.equal(error.status, 400);
  }
  assert.equal(bridged.param, expected.param);
  assert.equal(bridged.type, "invalid_request_error");
  assert.equal((await upstreamTurns(pair.proxy)).length, turnsBefore, "nothing went upstream");
});
