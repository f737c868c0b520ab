// What the SDK suites share: the request shapes and what every Responses stream must look like.
// Written from the simulator's contract (README.md).
import assert from "node:assert/strict";

export const MODEL = "gpt-sim";
export const TIMEOUT = { timeout: 60_000 };
export const TERMINAL = new Set(["response.completed", "response.failed", "response.incomplete", "error"]);

/** What every Responses stream must look like; returns the terminal event. */
export function checkStream(events) {
  const types = events.map((e) => e.type);
  assert.deepEqual(types.slice(0, 2), ["response.created", "response.in_progress"], types.join(" "));
  assert.deepEqual(
    events.map((e) => e.sequence_number),
    events.map((_, i) => i),
  );
  assert.ok(TERMINAL.has(types.at(-1)), types.join(" "));
  assert.ok(!types.slice(0, -1).some((t) => TERMINAL.has(t)), types.join(" "));
  return events.at(-1);
}

export const textDeltas = (events) =>
  events
    .filter((e) => e.type === "response.output_text.delta")
    .map((e) => e.delta)
    .join("");

export const messageText = (response) =>
  response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");

/** Every event of an SDK stream. */
export async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}
