import { defineCommand } from "citty";
import { parseIntFlag, UsageError } from "./usage-error.ts";
import { printLine } from "./output.ts";
import { caFile, TLS_HINT } from "./client.ts";
import { tlsFailure } from "../client/transport.ts";

/** Default of `kv health --endpoint`: node 1 of the local cluster, and the port the container image serves on. */
const HEALTH_ENDPOINT_DEFAULT = "http://127.0.0.1:8001";

/**
 * `kv health`: asks one node's `GET /health` and exits 0 when it answers 200, 1 otherwise (another
 * status, or no answer within the timeout), as a container's HEALTHCHECK expects (Docker reserves
 * other codes; a usage error is still 2). The image has no curl: this is its probe.
 */
export const healthCommand = defineCommand({
  meta: { name: "health", description: "Exit 0 when the node's /health answers 200, else 1 (for container health checks)" },
  args: {
    endpoint: { type: "string", description: `The node's client URL (default ${HEALTH_ENDPOINT_DEFAULT}; not $KV_ENDPOINTS, which names a cluster: this checks one node)`, valueHint: "URL" },
    "timeout-ms": { type: "string", description: "How long to wait for the answer (default 3000)", valueHint: "MS" },
    cacert: { type: "string", description: "PEM file of the CA that signed the node's certificate, for an https:// endpoint (default: the system's CAs)", valueHint: "FILE" },
  },
  async run({ args }) {
    const endpoint = (args.endpoint ?? HEALTH_ENDPOINT_DEFAULT).replace(/\/+$/, "");
    if (!URL.canParse(endpoint) || !/^https?:$/.test(new URL(endpoint).protocol)) throw new UsageError(`--endpoint: '${endpoint}' is not an http(s) URL`);
    const timeoutMs = args["timeout-ms"] === undefined ? 3_000 : parseIntFlag("timeout-ms", args["timeout-ms"], 1, 600_000);
    const ca = caFile(args.cacert);
    let status: number;
    let body: string;
    try {
      // /health is open even with --auth-token: no Authorization needed.
      const response = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(timeoutMs), redirect: "manual", ...(ca === undefined ? {} : { tls: { ca } }) });
      status = response.status;
      body = (await response.text()).slice(0, 512);
    } catch (error) {
      const hint = tlsFailure(error) === "certificate" ? TLS_HINT : "";
      console.error(`kv: ${endpoint}/health did not answer: ${error instanceof Error ? error.message : String(error)}${hint}`);
      process.exit(1);
    }
    if (status !== 200) {
      console.error(`kv: ${endpoint}/health answered ${status} ${body}`);
      process.exit(1);
    }
    printLine(body);
  },
});
