import type { OperationKind } from "./bench-options.ts";
import { benchValue, errorKindOf, keyName, type BenchTarget, type OperationOutcome } from "./bench-target.ts";
import { buildRequest, hostOf, type HttpResponse } from "../lib/http-connection.ts";

/**
 * Any HTTP server: kv-shaped requests (PUT/GET/DELETE /kv/{key}) spread over the endpoints, every
 * 2xx a success, no leader. Pointed at a server that does nothing, it measures the ceiling of the
 * load generator itself.
 */
export function createNoopTarget(opts: { readonly endpoints: readonly string[]; readonly valueBytes: number }): BenchTarget {
  const value = benchValue(opts.valueBytes);
  const hosts = opts.endpoints.map(hostOf);
  const methods: Record<OperationKind, "PUT" | "GET" | "DELETE"> = { put: "PUT", get: "GET", delete: "DELETE" };
  return {
    hasLeader: false,
    start: () => Promise.resolve(),
    observeLeader: () => Promise.resolve(undefined),
    describe: () => `any HTTP server at ${opts.endpoints.join(",")} (2xx = success)`,
    async execute(connections, client, operation, keyIndex): Promise<OperationOutcome> {
      const slot = client % opts.endpoints.length;
      const method = methods[operation];
      let response: HttpResponse;
      try {
        response = await connections
          .to(opts.endpoints[slot] as string)
          .request(buildRequest(method, `/kv/${keyName(keyIndex)}`, hosts[slot] as string, method === "PUT" ? value : undefined));
      } catch (error) {
        return { ok: false, errorKind: errorKindOf(error), redirects: 0 };
      }
      if (response.status >= 200 && response.status < 300) return { ok: true, notFound: false, redirects: 0 };
      return { ok: false, errorKind: `http_${response.status}`, redirects: 0 };
    },
  };
}

/** The trivial server `kv bench --target noop` starts when no endpoint is given: answers "ok" to anything. */
export const NOOP_SERVER_SOURCE =
  'const server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") }); console.log(server.port);';

/**
 * Starts the trivial server in a child process (so it does not share the load generator's thread):
 * this executable run as plain bun (BUN_BE_BUN=1 when compiled). Resolves with its origin and pid.
 */
export async function startNoopServerProcess(): Promise<{ origin: string; pid: number; stop: () => Promise<void> }> {
  const proc = Bun.spawn([process.execPath, "-e", NOOP_SERVER_SOURCE], {
    env: { ...process.env, BUN_BE_BUN: "1" },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "inherit",
  });
  const stop = async () => {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await proc.exited;
  };
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of proc.stdout) {
    text += decoder.decode(chunk, { stream: true });
    const newline = text.indexOf("\n");
    if (newline >= 0) {
      const port = Number(text.slice(0, newline).trim());
      if (!Number.isInteger(port) || port <= 0) break;
      return { origin: `http://127.0.0.1:${port}`, pid: proc.pid, stop };
    }
  }
  await stop();
  throw new Error(`the noop server did not report its port (got ${JSON.stringify(text.slice(0, 80))})`);
}
