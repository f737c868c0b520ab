// Starts `wsbridge simulate` on a free port and stops it with SIGTERM.
// The binary is $WSBRIDGE_BIN, or <repo>/target/debug/wsbridge (build it with `cargo build`).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

export async function startSimulator(extraEnv = {}) {
  const binary = path.resolve(process.env.WSBRIDGE_BIN ?? path.join(root, "target/debug/wsbridge"));
  if (!existsSync(binary)) {
    throw new Error(`no simulator binary at ${binary}: run \`cargo build\` or set WSBRIDGE_BIN`);
  }
  const env = { ...process.env, ...extraEnv };
  delete env.RUST_LOG;
  const child = spawn(binary, ["simulate", "--listen", "127.0.0.1:0"], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // Keep draining stderr for the whole run; the tail goes into failure messages.
  let log = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    log = (log + chunk).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));

  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the simulator did not log its address within ${STARTUP_TIMEOUT_MS} ms:\n${log}`));
    }, STARTUP_TIMEOUT_MS);
    const onData = () => {
      const match = log.match(/listening on (http:\/\/[^\s"',]+)/);
      if (match) {
        clearTimeout(timer);
        child.stderr.off("data", onData);
        resolve(match[1].replace(/\/$/, ""));
      }
    };
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the simulator exited early (code ${code}, signal ${signal}):\n${log}`));
    });
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });

  return {
    url,
    baseURL: `${url}/v1`,
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
