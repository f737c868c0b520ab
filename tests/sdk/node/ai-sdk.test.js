// The Vercel AI SDK (`ai` + `@ai-sdk/openai`), unchanged but for its baseURL: `openai.chat()`
// speaks Chat Completions, so through the proxy every step is a bridged Responses turn. Each
// run is compared with the same run straight against a standalone simulator's chat endpoint.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";
import { MODEL, TIMEOUT } from "./checks.js";
import { CONTINUED, KEY, assertContinued, counter, startPair, stopPair, upstreamTurns } from "./bridge.js";

let pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  if (pair) await stopPair(pair);
});

/** The provider's Chat Completions model (`openai.chat`), talking to `baseURL`. */
const chatModel = (baseURL) => createOpenAI({ baseURL, apiKey: KEY }).chat(MODEL);

/** Runs `streamText` to the end (retries off, so a failure shows): its text as streamed,
 * finish reason, usage and steps. */
async function run(baseURL, options) {
  const result = streamText({ model: chatModel(baseURL), maxRetries: 0, ...options });
  let text = "";
  for await (const delta of result.textStream) text += delta;
  return { text, finishReason: await result.finishReason, usage: await result.usage, steps: await result.steps };
}

test("streamText with openai.chat(): the same text as the simulator's chat endpoint", TIMEOUT, async () => {
  const options = { system: "You are terse.", prompt: "hello vercel" };
  const bridged = await run(pair.proxy.baseURL, options);
  const expected = await run(pair.sim.baseURL, options);
  assert.ok(bridged.text.startsWith("You said: hello vercel."), bridged.text);
  assert.equal(bridged.text, expected.text);
  assert.equal(bridged.finishReason, "stop");
  assert.ok(bridged.usage.outputTokens > 0);
  assert.equal(bridged.usage.outputTokens, expected.usage.outputTokens);
});

test("a multi-step tool loop (execute, stopWhen): the same final text as direct, later steps continued", TIMEOUT, async () => {
  const calls = 5;
  const executed = [];
  const lookup = tool({
    description: "Look something up.",
    inputSchema: jsonSchema({ type: "object", properties: { query: { type: "string" } } }),
    execute: async (input, { toolCallId }) => {
      executed.push(toolCallId);
      return `page ${input.step} for ${input.query}`;
    },
  });
  const options = {
    prompt: "loop vercel",
    tools: { lookup },
    stopWhen: stepCountIs(calls + 3),
    providerOptions: { openai: { metadata: { sim_tool_calls: String(calls) } } },
  };
  const continuedBefore = await counter(pair.proxy, CONTINUED);
  const turnsBefore = (await upstreamTurns(pair.proxy)).length;

  const bridged = await run(pair.proxy.baseURL, options);
  const bridgedCalls = executed.splice(0);
  const expected = await run(pair.sim.baseURL, options);
  assert.equal(bridged.text, expected.text);
  assert.ok(bridged.text.startsWith(`You said: loop vercel. Tool said: page ${calls} for loop vercel.`), bridged.text);
  assert.equal(bridged.finishReason, "stop");
  assert.equal(bridged.steps.length, calls + 1);
  assert.deepEqual(bridgedCalls, executed, "the same tool calls (ids derive from the conversation)");
  assert.equal(bridgedCalls.length, calls);

  assert.equal((await counter(pair.proxy, CONTINUED)) - continuedBefore, calls);
  assertContinued((await upstreamTurns(pair.proxy)).slice(turnsBefore), Array(calls).fill(1));
});
