// The official openai npm package, unchanged but for its baseURL, through the proxy
// (`wsbridge serve --simulate`: each POST /v1/responses goes over pooled WebSockets to the
// in-process simulator, which accepts only KEY). Run with `node --test` in this directory.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startProxy } from "./simulator.js";
import { MODEL, TIMEOUT, checkStream, collect, messageText, textDeltas } from "./checks.js";

const KEY = "sk-test";
const OPTIONS = { maxRetries: 0, timeout: 30_000 };

/** Awaits `request`, which must fail with an `ErrorClass`; returns the error. */
async function rejection(request, ErrorClass) {
  const error = await request.then(
    (value) => assert.fail(`expected ${ErrorClass.name}, got a result: ${JSON.stringify(value).slice(0, 200)}`),
    (reason) => reason,
  );
  assert.ok(error instanceof ErrorClass, `expected ${ErrorClass.name}, got ${error?.constructor?.name}: ${error}`);
  return error;
}

let proxy;
let client;
before(async () => {
  proxy = await startProxy({ WSBRIDGE_SIMULATOR_ACCEPTED_KEYS: JSON.stringify([KEY]) });
  client = new OpenAI({ baseURL: proxy.baseURL, apiKey: KEY, ...OPTIONS });
});
after(async () => {
  if (proxy) assert.equal(await proxy.stop(), 0, `the proxy must exit 0 on SIGTERM; stderr:\n${proxy.log()}`);
});

test("streamed create through the proxy: events in order, then response.completed", TIMEOUT, async () => {
  const events = await collect(await client.responses.create({ model: MODEL, input: "stream proxy", stream: true }));
  assert.deepEqual(
    events.slice(0, 2).map((e) => e.type),
    ["response.created", "response.in_progress"],
  );
  const last = checkStream(events);
  assert.equal(last.type, "response.completed");
  assert.equal(last.response.status, "completed");
  const deltas = textDeltas(events);
  assert.equal(deltas, messageText(last.response));
  assert.ok(deltas.startsWith("You said: stream proxy"), deltas);
});

test("non-streamed create through the proxy returns the echo answer", TIMEOUT, async () => {
  const response = await client.responses.create({ model: MODEL, input: "hello proxy" });
  assert.equal(response.status, "completed");
  assert.ok(response.id.startsWith("resp_"), response.id);
  assert.ok(response.output_text.startsWith("You said: hello proxy"), response.output_text);
});

test("responses.stream() helper through the proxy: finalResponse()", TIMEOUT, async () => {
  const stream = client.responses.stream({ model: MODEL, input: "helper proxy" });
  const events = await collect(stream);
  const final = await stream.finalResponse();
  assert.equal(checkStream(events).type, "response.completed");
  assert.ok(final.output_text.startsWith("You said: helper proxy"), final.output_text);
  assert.equal(final.output_text, textDeltas(events));
});

test("the x-request-id header is exposed as _request_id", TIMEOUT, async () => {
  const response = await client.responses.create({ model: MODEL, input: "which request" });
  assert.ok(response._request_id?.startsWith("req_"), response._request_id);
});

test("an unknown previous_response_id raises BadRequestError", TIMEOUT, async () => {
  const request = client.responses.create({ model: MODEL, input: "x", previous_response_id: "resp_missing" });
  const error = await rejection(request, OpenAI.BadRequestError);
  assert.equal(error.status, 400);
  assert.equal(error.code, "previous_response_not_found");
  assert.equal(error.param, "previous_response_id");
});

test("a wrong API key raises AuthenticationError", TIMEOUT, async () => {
  const wrong = new OpenAI({ baseURL: proxy.baseURL, apiKey: "sk-wrong-key-0000", ...OPTIONS });
  const error = await rejection(wrong.responses.create({ model: MODEL, input: "x" }), OpenAI.AuthenticationError);
  assert.equal(error.status, 401);
  assert.equal(error.code, "invalid_api_key");
});

test("a 429 fault raises RateLimitError", TIMEOUT, async () => {
  const metadata = { sim_fault: "error:429:rate_limit_exceeded" };
  const error = await rejection(client.responses.create({ model: MODEL, input: "x", metadata }), OpenAI.RateLimitError);
  assert.equal(error.status, 429);
  assert.equal(error.code, "rate_limit_exceeded");
});

test("an upstream close mid-stream ends the stream with response.failed", TIMEOUT, async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: "cut me off",
    stream: true,
    metadata: { sim_fault: "close_mid_stream" },
  });
  const events = await collect(stream);
  const last = checkStream(events);
  assert.equal(last.type, "response.failed");
  assert.equal(last.response.status, "failed");
  assert.equal(last.response.error.code, "server_error");
  assert.ok(textDeltas(events).startsWith("You said: cut me off"), textDeltas(events));
});
