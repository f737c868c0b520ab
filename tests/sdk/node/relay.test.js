// openai-node's ResponsesWS through the proxy: `GET /v1/responses` upgraded and relayed over a
// pooled upstream socket. The same store=false chain is run straight against a simulator, and
// the answers must be the same. Run with `node --test` in this directory.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ResponsesWS } from "openai/resources/responses/ws";
import { KEY, counter, startPair, stopPair, upstreamTurns } from "./bridge.js";
import { MODEL, TIMEOUT, TERMINAL, checkStream, messageText, textDeltas } from "./checks.js";

const OPTIONS = { maxRetries: 0, timeout: 30_000 };

let pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await stopPair(pair ?? {});
});

/** A store=false chain over one ResponsesWS socket; returns each turn's final response. */
async function chain(baseURL, texts) {
  const ws = new ResponsesWS(new OpenAI({ baseURL, apiKey: KEY, ...OPTIONS }));
  const messages = ws.stream();
  async function turn() {
    const events = [];
    for (;;) {
      const { value, done } = await messages.next();
      assert.ok(!done, "the socket closed mid-turn");
      if (value.type === "error") assert.fail(`error: ${JSON.stringify(value.error?.error ?? value)}`);
      if (value.type === "close") assert.fail(`socket closed: ${value.code} ${value.reason}`);
      if (value.type !== "message") continue;
      events.push(value.message);
      if (TERMINAL.has(value.message.type)) return events;
    }
  }
  const responses = [];
  try {
    let previous;
    for (const text of texts) {
      ws.send({
        type: "response.create",
        model: MODEL,
        store: false,
        input: [{ role: "user", content: text }],
        ...(previous ? { previous_response_id: previous } : {}),
      });
      const events = await turn();
      const last = checkStream(events);
      assert.equal(last.type, "response.completed");
      assert.equal(textDeltas(events), messageText(last.response));
      responses.push(last.response);
      previous = last.response.id;
    }
  } finally {
    ws.close();
  }
  return responses;
}

test("ResponsesWS: a store=false chain through the proxy answers as the simulator does", TIMEOUT, async () => {
  const texts = ["node one", "node two", "node three"];
  const accepted = await counter(pair.proxy, "wsbridge_relay_client_sockets_accepted_total");
  const relayed = await chain(pair.proxy.baseURL, texts);
  const direct = await chain(pair.sim.baseURL, texts);

  assert.deepEqual(relayed.map(messageText), direct.map(messageText));
  assert.ok(messageText(relayed[2]).startsWith("You said: node three"), messageText(relayed[2]));
  const ids = new Set(relayed.map((r) => r.id));
  const turns = (await upstreamTurns(pair.proxy)).filter((t) => ids.has(t.response_id));
  assert.equal(turns.length, 3);
  assert.equal(new Set(turns.map((t) => t.socket)).size, 1, "one upstream socket");
  assert.deepEqual(
    turns.map((t) => t.continued),
    [false, true, true],
    "each turn continued in the socket's memory",
  );
  assert.equal(await counter(pair.proxy, "wsbridge_relay_client_sockets_accepted_total"), accepted + 1);
});
