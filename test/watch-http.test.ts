// Proves GET /watch over HTTP: bad requests are 400 JSON, a start older than the history is 410 compacted, a client
// that disconnects unsubscribes (kv_watchers back to 0), and a node serving HTTP (in-process, createServer) streams
// put, delete and progress events as Server-Sent Events to a plain streaming fetch, with the auth token required as
// on other routes.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHttpApp } from "../src/http/app.ts";
import { instrumentNode } from "../src/http/node-metrics.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { createMetricsRegistry } from "../src/lib/metrics.ts";
import { SseParser } from "../src/lib/sse-reader.ts";
import type { WatchFilter, WatchItem } from "../src/node/api.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const request = (path: string, headers: Record<string, string> = {}) => new Request(`http://kv.local${path}`, { headers });

describe("GET /watch validation", () => {
  const app = createHttpApp(new MemoryKvNode());
  const cases: [string, Record<string, string>][] = [
    ["/watch", {}],
    ["/watch?prefix=a&key=b", {}],
    ["/watch?prefix=a&prefix=b", {}],
    ["/watch?prefix=a&fromVersion=0", {}],
    ["/watch?prefix=a&fromVersion=-3", {}],
    ["/watch?prefix=a&fromVersion=1.5", {}],
    ["/watch?prefix=a&fromVersion=abc", {}],
    ["/watch?prefix=a&limit=3", {}],
    ["/watch?prefix=a", { "last-event-id": "x7" }],
    ["/watch?prefix=a", { "last-event-id": "-1" }],
    ["/watch?key=", {}],
  ];
  for (const [path, headers] of cases) {
    test(`${path} ${JSON.stringify(headers)} is 400 bad_request`, async () => {
      const response = await app.handle(request(path, headers));
      expect(response.status).toBe(400);
      const body = (await response.json()) as { error: string; message: string };
      expect(body.error).toBe("bad_request");
      expect(body.message.length).toBeGreaterThan(0);
    });
  }
  test("POST /watch is 405", async () => {
    const response = await app.handle(new Request("http://kv.local/watch?prefix=a", { method: "POST" }));
    expect(response.status).toBe(405);
  });
});

describe("GET /watch on a node", () => {
  test("410 compacted before any event; a client that disconnects unsubscribes", async () => {
    const cluster = createMemoryCluster({ node: { watch: { historyEntriesMax: 2 } } });
    try {
      await cluster.until(() => cluster.leader() !== undefined);
      const leader = cluster.leader()!;
      for (let i = 0; i < 4; i++) await cluster.drive(leader.put(`cfg/${i}`, new TextEncoder().encode("v")));
      const registry = createMetricsRegistry();
      const app = createHttpApp(instrumentNode(leader, registry, { clusterId: "c", version: "0" }).node, { renderMetrics: () => registry.render() });
      const gone = await app.handle(request("/watch?prefix=cfg/&fromVersion=1"));
      expect(gone.status).toBe(410);
      const body = (await gone.json()) as { error: string; compactVersion: number };
      expect(body.error).toBe("compacted");
      expect(body.compactVersion).toBeGreaterThan(1);
      const ok = await app.handle(request("/watch?prefix=cfg/", { "last-event-id": String(body.compactVersion - 1) }));
      expect(ok.status).toBe(200);
      expect(ok.headers.get("content-type")).toBe("text/event-stream");
      const reader = ok.body!.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      expect(first).toMatch(/^id: \d+\nevent: (put|progress)\ndata: \{/);
      const gauge = async () => /^kv_watchers (\d+)$/m.exec(await (await app.handle(request("/metrics"))).text())?.[1];
      expect(await gauge()).toBe("1");
      await reader.cancel();
      expect(await gauge()).toBe("0");
    } finally {
      for (const id of [...cluster.nodes.keys()]) cluster.stop(id);
    }
  });
});

describe("GET /watch from a version that does not exist yet", () => {
  test("is a 400 once a read barrier shows the cluster has not reached it; the next version, or one a lagging node has not applied, is served", async () => {
    const cluster = createMemoryCluster();
    try {
      await cluster.until(() => cluster.leader() !== undefined);
      const leader = cluster.leader()!;
      const { version } = await cluster.drive(leader.put("cfg/a", new TextEncoder().encode("v")));
      const app = createHttpApp(leader);
      // Before, the stream opened and sent progress at 99998, a version that did not exist.
      for (const [path, headers] of [["/watch?prefix=cfg/&fromVersion=99999", {}], ["/watch?prefix=cfg/", { "last-event-id": "99998" }]] as const) {
        const ahead = await cluster.drive(app.handle(request(path, headers)));
        expect(ahead.status).toBe(400);
        expect(((await ahead.json()) as { message: string }).message).toContain(`past the last version the cluster applied`);
      }
      const next = await cluster.drive(app.handle(request(`/watch?prefix=cfg/&fromVersion=${version + 1}`)));
      expect(next.status).toBe(200);
      await next.body?.cancel();
      // A follower cut off before the write has not applied it: a resume from it waits for the
      // leader's word (a read barrier) and is served once it has caught up.
      const follower = [...cluster.nodes.values()].find((node) => node !== leader)!;
      const followerApp = createHttpApp(follower);
      const resumed = await cluster.drive(followerApp.handle(request("/watch?prefix=cfg/", { "last-event-id": String(version) })));
      expect(resumed.status).toBe(200);
      await resumed.body?.cancel();
    } finally {
      for (const id of [...cluster.nodes.keys()]) cluster.stop(id);
    }
  });
});

describe("a node serving HTTP (in-process)", () => {
  const baseDir = mkdtempSync(join(tmpdir(), "kv-watch-"));
  afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

  test("a streaming GET /watch?prefix=cfg/ receives a put, a delete and progress events", async () => {
    const token = "watch-test-token-0123456789";
    // As kv serve --watch-progress-ms 200 --auth-token <token> would run it.
    const cluster = createServerCluster({ size: 1, baseDir, config: () => ({ watch: { progressMs: 200 }, authToken: token }) });
    try {
      await cluster.start();
      const node = cluster.node(1);
      const auth = { authorization: `Bearer ${token}` };
      expect((await fetch(`${node.httpUrl}/watch?prefix=cfg/`)).status).toBe(401);
      const abort = new AbortController();
      const response = await fetch(`${node.httpUrl}/watch?prefix=cfg/`, { headers: auth, signal: abort.signal });
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toBe("text/event-stream");
      const reader = response.body!.getReader();
      let received = "";
      /** Reads the stream until `done()` holds for what came so far (each read waits for the server: no sleeps). */
      const readUntil = async (done: () => boolean) => {
        while (!done()) {
          const chunk = await reader.read();
          if (chunk.done) throw new Error(`stream ended; got ${received}`);
          received += new TextDecoder().decode(chunk.value);
        }
      };
      const put = (await (await fetch(`${node.httpUrl}/kv/cfg/a`, { method: "PUT", body: "on", headers: auth })).json()) as { version: number };
      await fetch(`${node.httpUrl}/kv/other`, { method: "PUT", body: "x", headers: auth });
      const del = (await (await fetch(`${node.httpUrl}/kv/cfg/a`, { method: "DELETE", headers: auth })).json()) as { version: number };
      await readUntil(() => received.includes("event: delete"));
      expect(received).toContain(`id: ${put.version}\nevent: put\ndata: {"key":"cfg/a","value":"on","version":${put.version}}\n\n`);
      expect(received).toContain(`id: ${del.version}\nevent: delete\ndata: {"key":"cfg/a","version":${del.version},"reason":"delete"}\n\n`);
      expect(received).not.toContain("other");
      // Progress keeps coming while nothing changes, at or past the delete.
      const afterDelete = received.length;
      await readUntil(() => received.slice(afterDelete).split("event: progress").length - 1 >= 2);
      const progress = [...received.slice(afterDelete).matchAll(/id: (\d+)\nevent: progress\ndata: \{"version":(\d+)\}\n\n/g)];
      expect(progress.length).toBeGreaterThanOrEqual(2);
      for (const [, id, version] of progress) {
        expect(id).toBe(version!);
        expect(Number(version)).toBeGreaterThanOrEqual(del.version);
      }
      abort.abort();
    } finally {
      await cluster.stop();
    }
  }, 60_000);

  test("only the last event of a version carries its id: a client cut off inside a transaction's changes resumes with all of them", async () => {
    const change = (key: string, version: number): WatchItem => ({ type: "change", change: { kind: "put", key, value: new TextEncoder().encode("v"), version } });
    // A transaction at version 5 changed two keys, a put at 6 one: one batch, as NodeWatch hands them out.
    const batches: WatchItem[][] = [[{ type: "progress", version: 4 }], [change("t/a", 5), change("t/b", 5), change("t/c", 6)]];
    const node = Object.assign(new MemoryKvNode(), {
      watch: async (_filter: WatchFilter) => ({ next: async () => batches.shift(), close: () => {} }),
    });
    const app = createHttpApp(node);
    const text = await (await app.handle(request("/watch?prefix=t/&fromVersion=1"))).text();
    expect(text).toBe(
      [
        'id: 4\nevent: progress\ndata: {"version":4}\n\n',
        'event: put\ndata: {"key":"t/a","value":"v","version":5}\n\n',
        'id: 5\nevent: put\ndata: {"key":"t/b","value":"v","version":5}\n\n',
        'id: 6\nevent: put\ndata: {"key":"t/c","value":"v","version":6}\n\n',
      ].join(""),
    );
    // An EventSource cut off after t/a resumes with Last-Event-ID 4: after 4, so t/a and t/b come again.
    const cut = text.slice(0, text.indexOf("\n\n", text.indexOf("t/a")) + 2);
    const seen = new SseParser({ charsMax: 1 << 20 }).push(cut);
    expect(seen.map((event) => [event.event, event.id])).toEqual([
      ["progress", "4"],
      ["put", "4"],
    ]);
  });
});
