// Proves the scale modes of `kv bench` parse and run as documented: --idle-watchers and --lease-churn take their flags (and refuse the ones that do not go with them, exit 2), idle watchers stay open on one node through the writes, and --lease-churn grants N leases with one key each, keeps each alive once, and reports when every key is gone, counting leases that expired before their keepalive.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { BenchReport } from "../src/bench/bench-report.ts";
import type { LeaseChurnReport } from "../src/bench/lease-churn.ts";
import { benchOptionsFromArgs, leaseChurnOptionsFromArgs } from "../src/cli/bench.ts";

const root = join(import.meta.dir, "..");
const endpoints = ["http://127.0.0.1:1", "http://127.0.0.1:2"];

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

describe("scale flags", () => {
  test("--idle-watchers defaults to the first endpoint and no settle; --idle-endpoint and --idle-settle are taken", () => {
    const plain = benchOptionsFromArgs({ "idle-watchers": "10000" }, endpoints);
    expect(plain.idleWatchers).toBe(10_000);
    expect(plain.idleEndpoint).toBe("http://127.0.0.1:1");
    expect(plain.idleSettleMs).toBe(0);
    const chosen = benchOptionsFromArgs({ "idle-watchers": "5", "idle-endpoint": "http://127.0.0.1:2/", "idle-settle": "2s", target: "etcd" }, endpoints);
    expect(chosen.idleEndpoint).toBe("http://127.0.0.1:2");
    expect(chosen.idleSettleMs).toBe(2_000);
    expect(benchOptionsFromArgs({}, endpoints).idleWatchers).toBe(0);
  });

  test("idle flags out of place are usage errors", () => {
    expect(() => benchOptionsFromArgs({ "idle-watchers": "10001" }, endpoints)).toThrow("--idle-watchers must be a whole number from 0 to 10000");
    expect(() => benchOptionsFromArgs({ "idle-watchers": "3", target: "noop" }, endpoints)).toThrow("--idle-watchers needs a store that watches");
    expect(() => benchOptionsFromArgs({ "idle-settle": "1s" }, endpoints)).toThrow("go with --idle-watchers");
    expect(() => benchOptionsFromArgs({ "idle-watchers": "3", "idle-endpoint": "http://a:1,http://b:2" }, endpoints)).toThrow("--idle-endpoint takes one URL");
    // Named as the flag it came from (found in a black-box review: it said --endpoints).
    expect(() => benchOptionsFromArgs({ "idle-watchers": "3", "idle-endpoint": "foo" }, endpoints)).toThrow("--idle-endpoint: 'foo' is not a URL");
  });

  test("--lease-churn takes a count, a TTL (default 10s) and clients (default 64); it refuses what does not go with it", () => {
    expect(leaseChurnOptionsFromArgs({})).toBeUndefined();
    expect(leaseChurnOptionsFromArgs({ "lease-churn": "10000" })).toEqual({ target: "kv", leases: 10_000, ttlMs: 10_000, clients: 64, requestTimeoutMs: 10_000 });
    expect(leaseChurnOptionsFromArgs({ "lease-churn": "5", "lease-ttl": "5s", target: "etcd", clients: "8" })).toMatchObject({ target: "etcd", ttlMs: 5_000, clients: 8 });
    expect(() => leaseChurnOptionsFromArgs({ "lease-ttl": "5s" })).toThrow("--lease-ttl goes with --lease-churn");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "5", target: "noop" })).toThrow("--lease-churn needs a store with leases");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "5", watchers: "3" })).toThrow("--watchers does not go with --lease-churn");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "5", duration: "3s" })).toThrow("--duration does not go with --lease-churn");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "5", "lease-ttl": "500ms" })).toThrow("--lease-ttl must be from 1s to 24h");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "5", "lease-ttl": "1500ms", target: "etcd" })).toThrow("whole seconds");
    expect(() => leaseChurnOptionsFromArgs({ "lease-churn": "0" })).toThrow("--lease-churn must be a whole number from 1 to 1000000");
  });
});

/**
 * A fake kv leader with leases: a lease's keys vanish `ttlMs` after its last keepalive (or grant).
 * Keepalives of leases numbered in `goneBeforeKeepalive` answer 404 lease_not_found.
 */
function fakeLeaseNode(opts: { goneBeforeKeepalive?: ReadonlySet<number> } = {}) {
  const leases = new Map<number, { ttlMs: number; keys: Set<string>; timer: ReturnType<typeof setTimeout> | undefined; keepalives: number }>();
  const keys = new Map<string, number>(); // key → lease id
  let nextId = 1;
  let selfUrl = "";
  const arm = (id: number) => {
    const lease = leases.get(id)!;
    clearTimeout(lease.timer);
    lease.timer = setTimeout(() => {
      for (const key of lease.keys) keys.delete(key);
      leases.delete(id);
    }, lease.ttlMs); // the fake's own expiry, the behaviour under test's input
  };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/status") return Response.json({ id: 1, role: "leader", term: 1, leaderId: 1, leaderUrl: selfUrl });
      if (url.pathname === "/leases" && request.method === "POST") {
        const { ttlMs } = (await request.json()) as { ttlMs: number };
        const id = nextId++;
        leases.set(id, { ttlMs, keys: new Set(), timer: undefined, keepalives: 0 });
        arm(id);
        return Response.json({ id: String(id), ttlMs });
      }
      const keepalive = /^\/leases\/(\d+)\/keepalive$/.exec(url.pathname);
      if (keepalive !== null) {
        const id = Number(keepalive[1]);
        const lease = leases.get(id);
        if (lease === undefined || opts.goneBeforeKeepalive?.has(id) === true) return Response.json({ error: "lease_not_found" }, { status: 404 });
        lease.keepalives++;
        arm(id);
        return Response.json({ id: String(id), ttlMs: lease.ttlMs });
      }
      if (url.pathname.startsWith("/kv/") && request.method === "PUT") {
        await request.arrayBuffer();
        const id = Number(url.searchParams.get("lease"));
        const lease = leases.get(id);
        if (lease === undefined) return Response.json({ error: "lease_not_found" }, { status: 404 });
        const key = decodeURIComponent(url.pathname.slice(4));
        lease.keys.add(key);
        keys.set(key, id);
        return Response.json({ key, version: 1 });
      }
      if (url.pathname === "/kv") {
        const prefix = url.searchParams.get("prefix") ?? "";
        const items = [...keys.keys()].filter((key) => key.startsWith(prefix)).slice(0, 1);
        return Response.json({ items: items.map((key) => ({ key, value: "x", version: 1 })), more: false });
      }
      return Response.json({ error: "not_found" }, { status: 404 });
    },
  });
  selfUrl = `http://127.0.0.1:${server.port}`;
  return { server, url: selfUrl, leases, stop: () => { for (const lease of leases.values()) clearTimeout(lease.timer); server.stop(true); } };
}

describe("kv bench --lease-churn against an in-process fake node", () => {
  test("N leases, one key and one keepalive each; every key gone is reported, with 0 leader changes", async () => {
    const node = fakeLeaseNode();
    try {
      const result = await bench(["--endpoints", node.url, "--lease-churn", "200", "--lease-ttl", "1s", "--clients", "8", "--json"]);
      if (result.code !== 0) console.error(result.err, result.out);
      expect(result.code).toBe(0);
      const report = JSON.parse(result.out) as LeaseChurnReport;
      expect(report.leasesReady).toBe(200);
      expect(report.expiredEarly).toBe(0);
      expect(report.keysLeft).toBe(0);
      expect(report.goneAfterLastRefreshMs).not.toBeNull();
      expect(report.goneAfterLastRefreshMs!).toBeGreaterThanOrEqual(report.ttlMs - 100);
      expect(report.leaderChanges).toBe(0);
      expect(report.errors).toEqual({});
      expect(node.leases.size).toBe(0);
    } finally {
      node.stop();
    }
  });

  test("leases gone before their keepalive are counted as expired early", async () => {
    const node = fakeLeaseNode({ goneBeforeKeepalive: new Set([3, 7, 11]) });
    try {
      const result = await bench(["--endpoints", node.url, "--lease-churn", "20", "--lease-ttl", "1s", "--clients", "2", "--json"]);
      const report = JSON.parse(result.out) as LeaseChurnReport;
      expect(report.leasesReady).toBe(20);
      expect(report.expiredEarly).toBe(3);
      expect(report.keysLeft).toBe(0);
    } finally {
      node.stop();
    }
  });

  test("--lease-churn with --idle-watchers is a usage error (exit 2)", async () => {
    const result = await bench(["--lease-churn", "5", "--idle-watchers", "3"]);
    expect(result.code).toBe(2);
    expect(result.err + result.out).toContain("--idle-watchers does not go with --lease-churn");
  });
});

// The idle watchers against a fake node: every stream opens on the one endpoint named, stays open through the writes;
// openings refused with 307 (a node that lost its leadership while its read barrier waited) are tried again.
test("--idle-watchers opens N streams on the idle prefix at --idle-endpoint, held through the run; refused openings are tried again", async () => {
  const opened: string[] = [];
  let refused = 0;
  let selfUrl = "";
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/status") return Response.json({ id: 1, role: "leader", term: 1, leaderId: 1, leaderUrl: selfUrl });
      if (url.pathname === "/watch") {
        if (refused < 5) {
          refused++;
          return Response.json({ error: "not_leader", message: "leadership changed" }, { status: 307, headers: { location: selfUrl } });
        }
        opened.push(url.searchParams.get("prefix") ?? "");
        return new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode('id: 0\nevent: progress\ndata: {"version":0}\n\n')) }), {
          headers: { "content-type": "text/event-stream" },
        });
      }
      await request.arrayBuffer();
      return Response.json({ key: "k", version: 1 });
    },
  });
  selfUrl = `http://127.0.0.1:${server.port}`;
  try {
    const result = await bench(["--endpoints", selfUrl, "--requests", "50", "--clients", "2", "--idle-watchers", "600", "--idle-endpoint", selfUrl, "--json"]);
    expect(result.code).toBe(0);
    expect(result.err).toContain(`kv bench: 600 idle watchers open on ${selfUrl}`);
    const report = JSON.parse(result.out) as BenchReport;
    expect(opened.length).toBe(600);
    expect(new Set(opened)).toEqual(new Set(["idle-watch/"]));
    expect(report.idleWatch).toMatchObject({ watchers: 600, endpoint: selfUrl, prefix: "idle-watch/", streamsEnded: {}, openRetries: 5 });
    expect(report.ok).toBe(50);
  } finally {
    server.stop(true);
  }
});
