// Starts wsbridge processes on free ports and stops them with SIGTERM: `wsbridge simulate` (the
// upstream simulator) and `wsbridge serve --simulate` (the proxy, with its in-process simulator
// as upstream).
// The binary is $WSBRIDGE_BIN, or <repo>/target/debug/wsbridge (build it with `cargo build`).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
const URL = String.raw`(http:\/\/[^\s"',]+)`;

/**
 * Runs `wsbridge <...command> --listen 127.0.0.1:0`. Resolves once it logs "listening on
 * http://ADDR", to `{ url, baseURL, upstreamURL, log, stop }`: `upstreamURL` is the in-process
 * simulator's base URL that `serve --simulate` logs ("upstream: the in-process simulator at
 * http://ADDR/v1"), undefined for `simulate`.
 */
export async function startWsbridge(command, extraEnv = {}) {
  const name = ["wsbridge", ...command].join(" ");
  const binary = path.resolve(process.env.WSBRIDGE_BIN ?? path.join(root, "target/debug/wsbridge"));
  if (!existsSync(binary)) {
    throw new Error(`no wsbridge binary at ${binary}: run \`cargo build\` or set WSBRIDGE_BIN`);
  }
  const env = { ...process.env, ...extraEnv };
  delete env.RUST_LOG;
  const child = spawn(binary, [...command, "--listen", "127.0.0.1:0"], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // Keep draining stderr for the whole run; the tail goes into failure messages. The startup
  // lines are matched on their own copy, which the tail's trimming never cuts.
  let log = "";
  let startup = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    log = (log + chunk).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));

  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`\`${name}\` did not log its address within ${STARTUP_TIMEOUT_MS} ms:\n${log}`));
    }, STARTUP_TIMEOUT_MS);
    const onData = (chunk) => {
      startup += chunk;
      const match = startup.match(new RegExp(`listening on ${URL}`));
      if (match) {
        clearTimeout(timer);
        child.stderr.off("data", onData);
        resolve(match[1].replace(/\/$/, ""));
      }
    };
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`\`${name}\` exited early (code ${code}, signal ${signal}):\n${log}`));
    });
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  const upstreamURL = startup.match(new RegExp(`in-process simulator at ${URL}`))?.[1].replace(/\/$/, "");

  return {
    url,
    baseURL: `${url}/v1`,
    upstreamURL,
    log: () => log,
    /** Sends SIGTERM; resolves to the exit code (null if it had to be killed). */
    async stop() {
      child.kill("SIGTERM");
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS);
      });
      const result = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (result === null) {
        child.kill("SIGKILL");
        return null;
      }
      return result.code;
    },
  };
}

/** `wsbridge simulate`: the upstream simulator on its own. */
export function startSimulator(extraEnv = {}) {
  return startWsbridge(["simulate"], extraEnv);
}

/** `wsbridge serve --simulate`: the proxy, with its in-process simulator as upstream. */
export async function startProxy(extraEnv = {}) {
  const proxy = await startWsbridge(["serve", "--simulate"], extraEnv);
  if (!proxy.upstreamURL) {
    await proxy.stop();
    throw new Error(`the proxy did not log its in-process simulator's URL:\n${proxy.log()}`);
  }
  return proxy;
}
