// What the chat suites share: a proxy and a separate simulator side by side (so every bridged
// answer can be compared with the same request sent straight to a chat endpoint), and what the
// upstream saw: the proxy's continuation counter and its in-process simulator's turn records.
import assert from "node:assert/strict";
import { startProxy, startSimulator } from "./simulator.js";

export const KEY = "sk-test";

/** A proxy (`serve --simulate`, accepting only KEY) and a standalone simulator. */
export async function startPair() {
  const [proxy, sim] = await Promise.all([
    startProxy({ WSBRIDGE_SIMULATOR_ACCEPTED_KEYS: JSON.stringify([KEY]) }),
    startSimulator(),
  ]);
  return { proxy, sim };
}

/** Stops both; each must exit 0 on SIGTERM. */
export async function stopPair({ proxy, sim }) {
  const codes = await Promise.all([proxy?.stop(), sim?.stop()]);
  if (proxy) assert.equal(codes[0], 0, `the proxy must exit 0 on SIGTERM; stderr:\n${proxy.log()}`);
  if (sim) assert.equal(codes[1], 0, `the simulator must exit 0 on SIGTERM; stderr:\n${sim.log()}`);
}

/** A `fetch` for an SDK client that also records each answer's `x-wsbridge-*` headers. */
export function recordingFetch() {
  const seen = [];
  const wrapped = async (url, init) => {
    const response = await fetch(url, init);
    seen.push({
      route: response.headers.get("x-wsbridge-route"),
      continuation: response.headers.get("x-wsbridge-continuation"),
    });
    return response;
  };
  return { fetch: wrapped, seen };
}

/** The value of one Prometheus series on the proxy's `/metrics`, e.g.
 * `wsbridge_continuations_total{outcome="continued"}`. */
export async function counter(proxy, series) {
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  assert.ok(line, `no ${series} in /metrics`);
  return Number(line.slice(series.length + 1));
}

export const CONTINUED = 'wsbridge_continuations_total{outcome="continued"}';

/** The turn records of the proxy's in-process simulator (`GET /sim/stats`), warm-ups left out. */
export async function upstreamTurns(proxy) {
  const root = proxy.upstreamURL.replace(/\/v1$/, "");
  const stats = await (await fetch(`${root}/sim/stats`)).json();
  return stats.turns.filter((turn) => !turn.warmup);
}

/** What a bridged loop did upstream, from `upstreamTurns` before and after it: each turn after
 * the first must continue the one before it and send only `newItems[i]`
 * input items (the messages the client added since). */
export function assertContinued(turns, newItems) {
  assert.equal(turns.length, newItems.length + 1, JSON.stringify(turns.map((t) => t.input_items)));
  assert.equal(turns[0].continued, false);
  turns.slice(1).forEach((turn, i) => {
    assert.equal(turn.continued, true, `turn ${i + 1} was not continued`);
    assert.equal(turn.previous_response_id, turns[i].response_id);
    assert.equal(turn.input_items, newItems[i], `turn ${i + 1} sent more than the new items`);
  });
}
