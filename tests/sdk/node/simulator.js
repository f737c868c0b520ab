// Starts `wsbridge simulate` on a free port and stops it with SIGTERM.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export async function startSimulator() {
  const binary = process.env.WSBRIDGE_BIN ?? path.join(root, "target/debug/wsbridge");
  const env = { ...process.env };
  delete env.RUST_LOG;
  const child = spawn(binary, ["simulate", "--listen", "127.0.0.1:0"], { env, stdio: ["ignore", "ignore", "pipe"] });
  const url = await new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error("the simulator did not report its address")), 30_000);
    child.stderr.on("data", (chunk) => {
      seen += chunk;
      const match = seen.match(/listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on("exit", (code) => reject(new Error(`the simulator exited early (${code})`)));
  });
  return {
    baseURL: `${url}/v1`,
    async stop() {
      const exited = new Promise((resolve) => child.on("exit", resolve));
      child.kill("SIGTERM");
      return exited;
    },
  };
}
