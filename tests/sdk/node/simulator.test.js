// The official openai npm package, pointed at the simulator, must see OpenAI's API.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startSimulator } from "./simulator.js";

let sim;
let client;
before(async () => {
  sim = await startSimulator();
  client = new OpenAI({ baseURL: sim.baseURL, apiKey: "sk-test-node", maxRetries: 0 });
});
after(async () => {
  assert.equal(await sim.stop(), 0, "the simulator exits 0 on SIGTERM");
});

test("non-streamed create returns the echo answer", async () => {
  const response = await client.responses.create({ model: "gpt-sim", input: "hello node" });
  assert.equal(response.status, "completed");
  assert.ok(response.output_text.startsWith("You said: hello node."), response.output_text);
});

test("streamed create parses every event in order", async () => {
  const stream = await client.responses.create({ model: "gpt-sim", input: "stream node", stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  assert.equal(events[0].type, "response.created");
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  const last = events.at(-1);
  assert.equal(last.type, "response.completed");
  const deltas = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  assert.equal(deltas, last.response.output[0].content[0].text);
  assert.ok(deltas.startsWith("You said: stream node."));
});

test("responses.stream() helper gives the final response", async () => {
  const stream = client.responses.stream({ model: "gpt-sim", input: "helper node" });
  const final = await stream.finalResponse();
  assert.ok(final.output_text.startsWith("You said: helper node."), final.output_text);
});

test("a bad request raises BadRequestError with the error code", async () => {
  await assert.rejects(
    client.responses.create({ model: "gpt-sim", input: "x", previous_response_id: "resp_missing" }),
    (error) => error instanceof OpenAI.BadRequestError && error.code === "previous_response_not_found",
  );
});
