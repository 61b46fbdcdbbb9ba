// Proves `kv bench --target etcd --watchers N` drives etcd's gateway watch: each stream POSTs a create_request on the writers' prefix (range_end = prefix + 1), its JSON lines are read as events by mod_revision and matched to the revision of each acknowledged put (0 lost when all arrive, a skipped revision is reported lost with exit 1), and --watchers with --target noop is a usage error.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { BenchReport } from "../src/bench/bench-report.ts";
import { etcdSignals, prefixRangeEnd } from "../src/bench/watch-load.ts";

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

const b64 = (text: string) => Buffer.from(text).toString("base64");

/**
 * A fake one-member etcd gateway: it leads, gives each put the next revision and streams it to every
 * open `/v3/watch` as a JSON line, as etcd's gateway does. The first stream skips revision
 * `dropRevision`, if given.
 */
function fakeEtcd(opts: { dropRevision?: number } = {}) {
  const encoder = new TextEncoder();
  const streams: { controller: ReadableStreamDefaultController<Uint8Array>; first: boolean }[] = [];
  const createRequests: unknown[] = [];
  let revision = 1;
  const header = () => ({ cluster_id: "1", member_id: "42", revision: String(revision), raft_term: "2" });
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/v3/maintenance/status") return Response.json({ header: header(), leader: "42", raftTerm: "2" });
      if (url.pathname === "/v3/watch") {
        createRequests.push(await request.json());
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            streams.push({ controller, first: streams.length === 0 });
            controller.enqueue(encoder.encode(`${JSON.stringify({ result: { header: header(), created: true } })}\n`));
          },
        });
        return new Response(body, { headers: { "content-type": "application/json" } });
      }
      if (url.pathname === "/v3/kv/put") {
        const put = (await request.json()) as { key: string; value: string };
        revision += 1;
        const line = `${JSON.stringify({ result: { header: header(), events: [{ kv: { key: put.key, create_revision: String(revision), mod_revision: String(revision), version: "1", value: put.value } }] } })}\n`;
        for (const stream of streams) if (!(stream.first && revision === opts.dropRevision)) stream.controller.enqueue(encoder.encode(line));
        return Response.json({ header: header() });
      }
      return Response.json({ error: "not found", code: 5 }, { status: 404 });
    },
  });
  return { server, url: `http://127.0.0.1:${server.port}`, streams, createRequests };
}

describe("etcd watch lines", () => {
  test("created opens a stream; each event's mod_revision is a change; DELETE is told apart; canceled ends it", () => {
    expect(etcdSignals('{"result":{"header":{"revision":"7"},"created":true}}')).toEqual([{ kind: "opened" }]);
    const two = `{"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"${b64("a")}","create_revision":"3","mod_revision":"8"}},{"kv":{"key":"${b64("b")}","create_revision":"9","mod_revision":"9"}}]}}`;
    expect(etcdSignals(two)).toEqual([
      { kind: "change", version: 8, put: true },
      { kind: "change", version: 9, put: true },
    ]);
    const deleted = `{"result":{"header":{"revision":"10"},"events":[{"type":"DELETE","kv":{"key":"${b64("a")}","mod_revision":"10"}}]}}`;
    expect(etcdSignals(deleted)).toEqual([{ kind: "change", version: 10, put: false }]);
    expect(etcdSignals('{"result":{"header":{},"canceled":true,"cancel_reason":"mvcc: required revision has been compacted"}}')[0]?.kind).toBe("error");
    expect(etcdSignals('{"error":{"grpc_code":14,"message":"unavailable"}}')[0]?.kind).toBe("error");
  });

  test("a prefix's range end is the prefix with its last byte below 0xff raised by one", () => {
    expect(new TextDecoder().decode(prefixRangeEnd("bench-"))).toBe("bench.");
    expect([...prefixRangeEnd("a\u00ff")]).toEqual([0x61, 0xc3, 0xc0]);
    expect([...prefixRangeEnd("")]).toEqual([0]);
  });
});

describe("kv bench --target etcd --watchers against an in-process fake gateway", () => {
  test("every stream delivers every acknowledged put's revision: 0 lost; each stream asked for the bench prefix", async () => {
    const etcd = fakeEtcd();
    try {
      const result = await bench(["--target", "etcd", "--endpoints", etcd.url, "--requests", "100", "--clients", "2", "--watchers", "4", "--json"]);
      if (result.code !== 0) console.error(result.err);
      expect(result.code).toBe(0);
      const report = JSON.parse(result.out) as BenchReport;
      expect(etcd.streams.length).toBe(4);
      expect(etcd.createRequests[0]).toEqual({ create_request: { key: b64("bench-"), range_end: b64("bench.") } });
      expect(report.watch?.acknowledgedPuts).toBe(100);
      expect(report.watch?.eventsDelivered).toBe(400);
      expect(report.watch?.lost).toBe(0);
      expect(report.watch?.misordered).toBe(0);
    } finally {
      etcd.server.stop(true);
    }
  });

  test("a stream that skips a revision is reported lost, and the run exits 1", async () => {
    const etcd = fakeEtcd({ dropRevision: 5 });
    try {
      const result = await bench(["--target", "etcd", "--endpoints", etcd.url, "--requests", "20", "--clients", "1", "--watchers", "3"]);
      expect(result.code).toBe(1);
      expect(result.out).toContain("Lost:        1 (of 20 acknowledged puts × 3 streams)");
    } finally {
      etcd.server.stop(true);
    }
  });

  test("--watchers with --target noop is a usage error", async () => {
    const result = await bench(["--target", "noop", "--watchers", "3", "--requests", "1"]);
    expect(result.code).toBe(2);
    expect(result.err + result.out).toContain("--watchers needs a store that watches");
  });
});
