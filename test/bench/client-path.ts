// Measures what the bench's hot path would cost on the client library: `kv bench`'s kv target (raw
// pooled HTTP/1.1 connections, src/bench/kv-target.ts) against a target built on createClient
// (src/client), alternating A B A B on one 3-node cluster. Usage: bun test/bench/client-path.ts
// [--runs 4] [--duration 10s] [--clients 64] [--fetch (adds C: bare fetch, D: bare fetch with an Idempotency-Key)]. Ports 6201-6203 (client) and 6301-6303 (peer).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { benchReport } from "../../src/bench/bench-report.ts";
import { runBench } from "../../src/bench/bench-runner.ts";
import { benchValue, keyName, type BenchTarget, type OperationOutcome } from "../../src/bench/bench-target.ts";
import { createKvTarget } from "../../src/bench/kv-target.ts";
import type { BenchOptions } from "../../src/bench/bench-options.ts";
import { createClient, KvClientError, UnknownOutcomeError } from "../../src/client/index.ts";
import { kvCommand } from "../helpers/kv-binary.ts";

const { values } = parseArgs({ options: { runs: { type: "string" }, duration: { type: "string" }, clients: { type: "string" }, fetch: { type: "boolean" } } });
const runs = Number(values.runs ?? 4);
const durationMs = Number((values.duration ?? "10s").replace(/s$/, "")) * 1000;
const clients = Number(values.clients ?? 64);

const endpoints = [1, 2, 3].map((id) => `http://127.0.0.1:${6200 + id}`);
const cluster = [1, 2, 3].map((id) => `${id}=http://127.0.0.1:${6300 + id}`).join(",");

/** The kv target's interface over the client library: every operation is one client call. */
function createClientTarget(valueBytes: number): BenchTarget {
  const kv = createClient({ endpoints, timeoutMs: 10_000 });
  const value = benchValue(valueBytes);
  const outcomeOf = (error: unknown): OperationOutcome => {
    if (error instanceof KvClientError) return { ok: false, errorKind: `${error.status}:${error.code}`, redirects: 0 };
    if (error instanceof UnknownOutcomeError) return { ok: false, errorKind: "unknown", redirects: 0 };
    throw error;
  };
  return {
    hasLeader: true,
    start: async () => {
      await kv.put("bench-warmup", "x");
    },
    observeLeader: async () => undefined,
    describe: () => `kv through src/client at ${endpoints.join(",")}`,
    async execute(_connections, _client, operation, keyIndex) {
      try {
        switch (operation) {
          case "put":
            await kv.put(keyName(keyIndex), value);
            return { ok: true, notFound: false, redirects: 0 };
          case "delete":
            await kv.delete(keyName(keyIndex));
            return { ok: true, notFound: false, redirects: 0 };
          case "get":
            return { ok: true, notFound: (await kv.get(keyName(keyIndex))) === null, redirects: 0 };
        }
      } catch (error) {
        return outcomeOf(error);
      }
    },
  };
}

/** Bare fetch to the leader (found once): what the client costs over fetch itself. */
function createFetchTarget(valueBytes: number, idempotencyKeys: boolean): BenchTarget {
  const kv = createClient({ endpoints, timeoutMs: 10_000 });
  const value = benchValue(valueBytes);
  let leader = "";
  return {
    hasLeader: true,
    start: async () => {
      await kv.put("bench-warmup", "x");
      leader = kv.leaderEndpoint ?? (endpoints[0] as string);
    },
    observeLeader: async () => undefined,
    describe: () => `kv through bare fetch at ${leader}`,
    async execute(_connections, _client, _operation, keyIndex) {
      try {
        const response = await fetch(`${leader}/kv/${keyName(keyIndex)}`, {
          method: "PUT",
          body: value,
          redirect: "manual",
          ...(idempotencyKeys ? { headers: { "idempotency-key": crypto.randomUUID() } } : {}),
        });
        await response.arrayBuffer();
        return response.status === 200 ? { ok: true, notFound: false, redirects: 0 } : { ok: false, errorKind: `http_${response.status}`, redirects: 0 };
      } catch {
        return { ok: false, errorKind: "network", redirects: 0 };
      }
    },
  };
}

const dir = mkdtempSync(join(tmpdir(), "kv-client-path-"));
const children: Subprocess[] = [];
try {
  for (const id of [1, 2, 3]) {
    children.push(
      Bun.spawn(
        [...kvCommand(), "serve", "--id", String(id), "--cluster", cluster, "--listen-peer", `127.0.0.1:${6300 + id}`, "--listen-http", `127.0.0.1:${6200 + id}`, "--data-dir", join(dir, `node-${id}`), "--log-level", "error"],
        { stdout: "ignore", stderr: "inherit", stdin: "ignore" },
      ),
    );
  }
  const options: BenchOptions = {
    target: "kv",
    watchers: 0,
    idleWatchers: 0,
    idleEndpoint: endpoints[0] as string,
    idleSettleMs: 0,
    endpoints,
    clients,
    stop: { kind: "duration", durationMs },
    valueBytes: 100,
    keys: 10_000,
    mix: { put: 1, get: 0, delete: 0 },
    consistency: "linearizable",
    requestTimeoutMs: 10_000,
    seed: 1,
  };
  const results: unknown[] = [];
  for (let run = 0; run < runs; run++) {
    for (const variant of ["A raw (kv-target)", "B client (src/client)", ...(values.fetch === true ? ["C bare fetch", "D bare fetch + Idempotency-Key"] : [])]) {
      const target = variant.startsWith("A")
        ? createKvTarget({ endpoints, valueBytes: 100, consistency: "linearizable", discoverTimeoutMs: 10_000 })
        : variant.startsWith("B")
          ? createClientTarget(100)
          : createFetchTarget(100, variant.startsWith("D"));
      const report = benchReport(await runBench(options, target));
      const line = { variant, opsPerSec: Math.round(report.opsPerSec), p50Ms: report.latencyMs.p50, p99Ms: report.latencyMs.p99, errors: report.errors, errorsByKind: report.errorsByKind };
      results.push(line);
      console.log(JSON.stringify(line));
    }
  }
} finally {
  for (const child of children) child.kill("SIGKILL");
  await Promise.all(children.map((child) => child.exited));
  rmSync(dir, { recursive: true, force: true });
}
