// Proves `kv bench --watchers N` measures what it claims: every stream opens before the first write, each acknowledged put is matched to its event on every stream (a stream that skips one is reported as lost, exit 1; one ended with slow_watcher resumes from its last id and loses nothing), and against a real 3-node cluster of the built executable N streams deliver every acknowledged put (0 lost) with events/s and acknowledgement-to-event latency reported.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BenchReport } from "../src/bench/bench-report.ts";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { kvCommand } from "./helpers/kv-binary.ts";
import { kvSignalDecoder } from "../src/bench/watch-load.ts";

const root = join(import.meta.dir, "..");

/** Runs `kv bench ...args` from source without blocking this process (the fake server lives here). */
async function bench(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const proc = Bun.spawn([process.execPath, "src/cli/main.ts", "bench", ...args], { cwd: root, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  try {
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return { code, out, err };
  } finally {
    if (proc.exitCode === null) proc.kill("SIGKILL");
  }
}

/**
 * A fake kv node that leads, numbers each put, and streams every put to every open `/watch` as an
 * SSE event, resuming after `Last-Event-ID`. The first stream opened skips the put numbered
 * `dropVersion`, if given, or ends with `slow_watcher` right after the put numbered `slowAfter`.
 */
function fakeWatchNode(opts: { dropVersion?: number; slowAfter?: number } = {}) {
  const encoder = new TextEncoder();
  const streams: { controller: ReadableStreamDefaultController<Uint8Array>; first: boolean; open: boolean }[] = [];
  const events: string[] = []; // events[v - 1]: the put numbered v
  const resumedAfter: number[] = [];
  let selfUrl = "";
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/status") return Response.json({ id: 1, role: "leader", term: 1, leaderId: 1, leaderUrl: selfUrl });
      if (url.pathname === "/watch") {
        const lastEventId = request.headers.get("last-event-id");
        if (lastEventId !== null) resumedAfter.push(Number(lastEventId));
        const after = lastEventId === null ? events.length : Number(lastEventId);
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            streams.push({ controller, first: streams.length === 0, open: true });
            for (const event of events.slice(after)) controller.enqueue(encoder.encode(event));
            controller.enqueue(encoder.encode(`id: ${events.length}\nevent: progress\ndata: {"version":${events.length}}\n\n`));
          },
        });
        return new Response(body, { headers: { "content-type": "text/event-stream" } });
      }
      if (request.method === "PUT" && url.pathname.startsWith("/kv/")) {
        await request.arrayBuffer();
        const at = events.length + 1;
        const key = decodeURIComponent(url.pathname.slice(4));
        const event = `id: ${at}\nevent: put\ndata: ${JSON.stringify({ key, value: "x", version: at })}\n\n`;
        events.push(event);
        for (const stream of streams) {
          if (!stream.open || (stream.first && at === opts.dropVersion)) continue;
          stream.controller.enqueue(encoder.encode(event));
          if (stream.first && at === opts.slowAfter) {
            stream.controller.enqueue(encoder.encode('event: error\ndata: {"error":"slow_watcher","message":"resume"}\n\n'));
            stream.controller.close();
            stream.open = false;
          }
        }
        return Response.json({ key, version: at });
      }
      return Response.json({ error: "not_found" }, { status: 404 });
    },
  });
  selfUrl = `http://127.0.0.1:${server.port}`;
  return { server, url: selfUrl, streams, resumedAfter };
}

describe("kv bench --watchers against an in-process fake node", () => {
  test("every stream delivers every acknowledged put: 0 lost, events and latency reported", async () => {
    const node = fakeWatchNode();
    try {
      const result = await bench(["--endpoints", node.url, "--requests", "100", "--clients", "2", "--watchers", "5", "--json"]);
      expect(result.code).toBe(0);
      const report = JSON.parse(result.out) as BenchReport;
      expect(node.streams.length).toBe(5);
      expect(report.watch?.watchers).toBe(5);
      expect(report.watch?.acknowledgedPuts).toBe(100);
      expect(report.watch?.eventsDelivered).toBe(500);
      expect(report.watch?.lost).toBe(0);
      expect(report.watch?.misordered).toBe(0);
      expect(report.watch?.eventsPerSec).toBeGreaterThan(0);
      expect(report.watch?.latencyMs.p50).toBeLessThanOrEqual(report.watch?.latencyMs.p99 ?? -1);
    } finally {
      node.server.stop(true);
    }
  });

  test("a stream that skips an acknowledged put is reported lost, and the run exits 1", async () => {
    const node = fakeWatchNode({ dropVersion: 7 });
    try {
      const result = await bench(["--endpoints", node.url, "--requests", "20", "--clients", "1", "--watchers", "3"]);
      expect(result.code).toBe(1);
      expect(result.out).toContain("Watchers: 3 streams on the writers' prefix");
      expect(result.out).toContain("Lost:        1 (of 20 acknowledged puts × 3 streams)");
    } finally {
      node.server.stop(true);
    }
  });

  test("a stream ended with slow_watcher resumes from its last id and loses nothing", async () => {
    const node = fakeWatchNode({ slowAfter: 10 });
    try {
      const result = await bench(["--endpoints", node.url, "--requests", "40", "--clients", "1", "--watchers", "3", "--json"]);
      expect(result.code).toBe(0);
      const report = JSON.parse(result.out) as BenchReport;
      expect(node.resumedAfter).toEqual([10]);
      expect(report.watch?.resumes).toBe(1);
      expect(report.watch?.streamsEnded).toEqual({ 'event: error {"error":"slow_watcher","message":"resume"}': 1 });
      expect(report.watch?.lost).toBe(0);
      expect(report.watch?.eventsDelivered).toBe(120);
    } finally {
      node.server.stop(true);
    }
  });
});

describe("kv bench --watchers against a real 3-node cluster of the built executable", () => {
  let cluster: ChaosCluster;
  let baseDir: string;

  beforeAll(async () => {
    baseDir = mkdtempSync(join(tmpdir(), "kv-bench-watch-test-"));
    cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir });
    await cluster.start();
    await cluster.waitForLeader();
  });

  afterAll(async () => {
    await cluster?.stop(); // kills every node by pid
    rmSync(baseDir, { recursive: true, force: true });
  });

  test("30 streams spread over the nodes deliver every acknowledged put: 0 lost", async () => {
    const endpoints = cluster.nodes.map((node) => node.httpUrl).join(",");
    const result = await bench(["--endpoints", endpoints, "--requests", "300", "--clients", "4", "--keys", "50", "--watchers", "30", "--mix", "put=3,delete=1", "--json"]);
    if (result.code !== 0) console.error(result.err);
    expect(result.code).toBe(0);
    const report = JSON.parse(result.out) as BenchReport;
    const puts = report.byKind.put?.ok ?? 0;
    expect(puts).toBeGreaterThan(0);
    expect(report.watch?.watchers).toBe(30);
    expect(report.watch?.acknowledgedPuts).toBe(puts);
    expect(report.watch?.lost).toBe(0);
    expect(report.watch?.misordered).toBe(0);
    // Every put reached every stream; deletes of present keys are events too.
    expect(report.watch?.eventsDelivered).toBeGreaterThanOrEqual(30 * puts);
    expect(report.watch?.streamsEnded).toEqual({});
    expect(report.watch?.latencyMs.p50).toBeLessThanOrEqual(report.watch?.latencyMs.p99 ?? -1);
  });
});

test("the kv watch decoder reads each change's version from its data: only a version's last change carries the SSE id", () => {
  const decode = kvSignalDecoder();
  const text =
    'id: 4\nevent: progress\ndata: {"version":4}\n\n' +
    'event: put\ndata: {"key":"t/\\"version\\":9","value":"v","version":5}\n\n' +
    'id: 5\nevent: delete\ndata: {"key":"t/b","version":5,"reason":"delete"}\n\n';
  expect(decode(text)).toEqual([
    { kind: "progress", version: 4 },
    { kind: "change", version: 5, put: true },
    { kind: "change", version: 5, put: false },
  ]);
});
