// Proves `kv bench` measures what it claims: exact histogram and percentile math, strict flag parsing
// (bad input is exit 2), an HTTP/1.1 parser that handles etcd's chunked answers, exactly the requested
// number of operations sent and reported, redirects followed, errors classified, and real runs
// against the noop server and a 3-node cluster of the built executable.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BenchInputError, parseDurationMs, parseMix } from "../src/bench/bench-options.ts";
import type { BenchReport } from "../src/bench/bench-report.ts";
import { buildRequest, parseResponse } from "../src/lib/http-connection.ts";
import { LatencyHistogram } from "../src/bench/latency-histogram.ts";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { kvCommand, runKv } from "./helpers/kv-binary.ts";

const root = join(import.meta.dir, "..");

/** Runs `kv bench ...args` from source without blocking this process (the fake servers live here). */
async function bench(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const proc = Bun.spawn([process.execPath, "src/cli/main.ts", "bench", ...args], { cwd: root, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, out, err };
}

async function benchJson(args: string[]): Promise<BenchReport> {
  const result = await bench([...args, "--json"]);
  if (result.code !== 0) throw new Error(`kv bench exited ${result.code}: ${result.err}`);
  return JSON.parse(result.out) as BenchReport;
}

describe("latency histogram", () => {
  test("values below 256 µs are exact: percentiles of 1..100 µs and of 151..250 µs", () => {
    const histogram = new LatencyHistogram();
    for (let us = 1; us <= 100; us++) histogram.record(us);
    expect(histogram.count).toBe(100);
    expect(histogram.valueAtPercentileUs(50)).toBe(50);
    expect(histogram.valueAtPercentileUs(90)).toBe(90);
    expect(histogram.valueAtPercentileUs(99)).toBe(99);
    expect(histogram.valueAtPercentileUs(99.9)).toBe(100);
    expect(histogram.valueAtPercentileUs(100)).toBe(100);
    expect(histogram.valueAtPercentileUs(0.5)).toBe(1);
    expect(histogram.summaryMs()).toEqual({ min: 0.001, mean: 0.0505, p50: 0.05, p90: 0.09, p99: 0.099, p999: 0.1, max: 0.1 });
    const upper = new LatencyHistogram();
    for (let us = 151; us <= 250; us++) upper.record(us);
    expect([50, 90, 99, 99.9].map((p) => upper.valueAtPercentileUs(p))).toEqual([200, 240, 249, 250]);
  });

  test("above 256 µs every percentile is at or above the true sample and at most 1/128 higher (HdrHistogram, two significant digits)", () => {
    const samples: number[] = [];
    // Geometric spread from 1 µs to ~17 minutes, plus exact powers of two and their neighbours.
    for (let v = 1; v < 1e9; v = Math.ceil(v * 1.013) + 1) samples.push(v);
    for (let k = 7; k < 40; k++) samples.push(2 ** k - 1, 2 ** k, 2 ** k + 1);
    const histogram = new LatencyHistogram();
    for (const sample of samples) histogram.record(sample);
    samples.sort((a, b) => a - b);
    for (const p of [0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]) {
      const exact = samples[Math.max(1, Math.ceil((p / 100) * samples.length)) - 1] as number;
      const measured = histogram.valueAtPercentileUs(p);
      expect(measured).toBeGreaterThanOrEqual(exact);
      expect(measured).toBeLessThanOrEqual(exact * (1 + 1 / 128));
    }
    expect(histogram.minValueUs).toBe(1);
    expect(histogram.maxValueUs).toBe(samples[samples.length - 1] as number);
  });

  test("rows by power of two cover min to max and hold every sample; add() merges", () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    for (const us of [0, 1, 3, 100, 1_000]) a.record(us);
    for (const us of [5_000, 70_000, 1_000_000]) b.record(us);
    a.add(b);
    const rows = a.rowsByPowerOfTwo();
    expect(rows[0]).toEqual({ fromUs: 0, toUs: 1, count: 1 });
    expect(rows.at(-1)).toEqual({ fromUs: 2 ** 19, toUs: 2 ** 20, count: 1 });
    expect(rows.reduce((sum, row) => sum + row.count, 0)).toBe(8);
    expect(rows.find((row) => row.fromUs === 64)?.count).toBe(1);
    expect(a.count).toBe(8);
    expect(a.maxValueUs).toBe(1_000_000);
    expect(a.valueAtPercentileUs(100)).toBe(1_000_000);
  });

  test("an empty histogram reports zeros and a bad percentile throws", () => {
    const histogram = new LatencyHistogram();
    expect(histogram.summaryMs()).toEqual({ min: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 });
    expect(histogram.rowsByPowerOfTwo()).toEqual([]);
    expect(() => histogram.valueAtPercentileUs(0)).toThrow(RangeError);
  });
});

describe("flag parsers", () => {
  test("--mix takes op=weight pairs; missing operations weigh 0", () => {
    expect(parseMix("put=1,get=0")).toEqual({ put: 1, get: 0, delete: 0 });
    expect(parseMix("get=3, put=1 ,delete=0.5")).toEqual({ put: 1, get: 3, delete: 0.5 });
    for (const bad of ["put", "put=x", "read=1", "put=1,put=2", "put=0,get=0", "put=-1", ""]) {
      expect(() => parseMix(bad)).toThrow(BenchInputError);
    }
  });

  test("--duration needs a unit and may combine parts", () => {
    expect(parseDurationMs("duration", "15s")).toBe(15_000);
    expect(parseDurationMs("duration", "500ms")).toBe(500);
    expect(parseDurationMs("duration", "1.5s")).toBe(1_500);
    expect(parseDurationMs("duration", "2m")).toBe(120_000);
    expect(parseDurationMs("duration", "1m30s")).toBe(90_000);
    expect(parseDurationMs("duration", "1h")).toBe(3_600_000);
    for (const bad of ["15", "s", "-1s", "0s", "15 s", "1d", "25h", ""]) {
      expect(() => parseDurationMs("duration", bad)).toThrow(BenchInputError);
    }
  });

  test.each([
    [["--mix", "put"], "--mix must be op=weight pairs"],
    [["--mix", "scan=1"], "unknown operation 'scan'"],
    [["--duration", "15"], "--duration must be a duration"],
    [["--duration", "1s", "--requests", "5"], "not both"],
    [["--clients", "0"], "--clients must be a whole number"],
    [["--target", "redis"], "--target must be kv, etcd or noop"],
    [["--consistency", "strong"], "--consistency must be linearizable, lease or stale"],
    [["--target", "etcd", "--consistency", "lease"], "--consistency lease is kv's"],
    [["--endpoints", "ftp://127.0.0.1:1"], "must be http://"],
    [["--bogus"], "unknown flag '--bogus'"],
  ])("kv bench %p is a usage error: exit 2 and one line", async (args, message) => {
    const result = await bench(args as string[]);
    expect(result.code).toBe(2);
    expect(result.err).toContain(message as string);
    expect(result.err.trim().split("\n")).toHaveLength(1);
  });
});

describe("HTTP/1.1 response parser", () => {
  const errorJson = '{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}';
  // As etcd 3.4's gateway sends an error: chunked (here in two chunks), then a trailer.
  const etcdError =
    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nTrailer: Grpc-Trailer-Content-Type\r\nTransfer-Encoding: chunked\r\n\r\n" +
    `${(10).toString(16)}\r\n${errorJson.slice(0, 10)}\r\n${(errorJson.length - 10).toString(16)}\r\n${errorJson.slice(10)}\r\n` +
    "0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";

  test("a chunked answer with trailers (etcd's errors) parses only once complete", () => {
    const bytes = Buffer.from(etcdError);
    for (let cut = 0; cut < bytes.length; cut++) expect(parseResponse(bytes.subarray(0, cut))).toBeUndefined();
    const parsed = parseResponse(bytes);
    expect(parsed?.consumed).toBe(bytes.length);
    expect(parsed?.response.status).toBe(400);
    expect(new TextDecoder().decode(parsed?.response.body)).toBe(errorJson);
  });

  test("a Content-Length answer, a bodiless 204 and Connection: close", () => {
    const ok = Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\nhello");
    expect(parseResponse(ok.subarray(0, ok.length - 1))).toBeUndefined();
    const parsed = parseResponse(ok);
    expect(parsed?.close).toBe(true);
    expect(new TextDecoder().decode(parsed?.response.body)).toBe("hello");
    expect(parseResponse(Buffer.from("HTTP/1.1 204 No Content\r\n\r\n"))?.response.body.length).toBe(0);
    expect(() => parseResponse(Buffer.from("SSH-2.0-OpenSSH\r\n\r\n"))).toThrow();
  });

  test("requests carry Host and Content-Length", () => {
    const text = new TextDecoder().decode(buildRequest("PUT", "/kv/a", "127.0.0.1:8001", new Uint8Array([104, 105])));
    expect(text).toBe("PUT /kv/a HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nContent-Length: 2\r\n\r\nhi");
  });
});

/** Who leads, as the fake nodes report it on /status (shared by the fakes of one test). */
interface FakeLeadership {
  leaderUrl: string;
  leaderId: number;
  term: number;
}

/** A fake kv node: answers /status from `leadership` (itself when omitted) and counts /kv requests. */
function fakeKvNode(
  opts: { id?: number; leadership?: FakeLeadership; redirectPutsAfter?: number; onRedirect?: () => void; failGetsEvery?: number; authToken?: string; absentDeletes?: boolean } = {},
) {
  const id = opts.id ?? 1;
  const counts = { put: 0, get: 0, delete: 0, status: 0, redirected: 0, refused: 0 };
  let selfUrl = "";
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (opts.authToken !== undefined && request.headers.get("authorization") !== `Bearer ${opts.authToken}`) {
        counts.refused += 1;
        return Response.json({ error: "unauthenticated", message: "this node requires a bearer token" }, { status: 401 });
      }
      if (url.pathname === "/status") {
        counts.status += 1;
        const leadership = opts.leadership ?? { leaderUrl: selfUrl, leaderId: id, term: 1 };
        const role = leadership.leaderUrl === selfUrl ? "leader" : "follower";
        return Response.json({ id, role, term: leadership.term, leaderId: leadership.leaderId, leaderUrl: leadership.leaderUrl });
      }
      if (!url.pathname.startsWith("/kv/")) return new Response("no", { status: 404 });
      switch (request.method) {
        case "PUT": {
          await request.arrayBuffer();
          if (opts.redirectPutsAfter !== undefined && counts.put >= opts.redirectPutsAfter) {
            counts.redirected += 1;
            opts.onRedirect?.(); // before the Location is read: it must name the new leader
            return Response.json({ error: "not_leader" }, { status: 307, headers: { location: `${opts.leadership?.leaderUrl}${url.pathname}` } });
          }
          counts.put += 1;
          return Response.json({ key: url.pathname.slice(4), version: counts.put });
        }
        case "GET":
          counts.get += 1;
          if (opts.failGetsEvery !== undefined && counts.get % opts.failGetsEvery === 0) {
            return Response.json({ error: "no_leader", message: "no leader" }, { status: 503 });
          }
          return counts.get % 2 === 0 ? new Response("value") : Response.json({ error: "not_found" }, { status: 404 });
        case "DELETE":
          counts.delete += 1;
          // With absentDeletes, every other delete finds nothing (as kv answers it: deleted false, a version all the same).
          return Response.json({ deleted: opts.absentDeletes !== true || counts.delete % 2 === 0, version: counts.delete });
        default:
          return new Response("no", { status: 405 });
      }
    },
  });
  selfUrl = `http://127.0.0.1:${server.port}`;
  return { server, counts, url: selfUrl };
}

describe("kv bench against in-process fake servers", () => {
  test("--requests 200 --clients 4 sends exactly 200 operations and reports every field", async () => {
    const node = fakeKvNode();
    try {
      const report = await benchJson(["--endpoints", node.url, "--requests", "200", "--clients", "4", "--mix", "put=2,get=1,delete=1"]);
      expect(node.counts.put + node.counts.get + node.counts.delete).toBe(200);
      expect(report.ok).toBe(200);
      expect(report.errors).toBe(0);
      expect(report.byKind.put?.ok).toBe(node.counts.put);
      expect(report.byKind.get?.ok).toBe(node.counts.get);
      expect(report.byKind.get?.notFound).toBeGreaterThan(0);
      expect(report.byKind.delete?.ok).toBe(node.counts.delete);
      expect(report.opsPerSec).toBeGreaterThan(0);
      for (const field of ["min", "mean", "p50", "p90", "p99", "p999", "max"] as const) expect(typeof report.latencyMs[field]).toBe("number");
      expect(report.latencyMs.p50).toBeLessThanOrEqual(report.latencyMs.p99);
      expect(report.histogram.reduce((sum, row) => sum + row.count, 0)).toBe(200);
      expect(report.leaderChanges).toBe(0);
      expect(report.leaders?.[0]?.origin).toBe(node.url);
      expect(report.errorsByKind).toEqual({});
    } finally {
      node.server.stop(true);
    }
  });

  test("the text report has throughput, percentiles, a histogram, errors and leader changes", async () => {
    const node = fakeKvNode({ failGetsEvery: 5 });
    try {
      const result = await bench(["--endpoints", node.url, "--requests", "50", "--clients", "2", "--mix", "get=1"]);
      expect(result.code).toBe(0);
      expect(node.counts.get).toBe(50);
      for (const text of ["Throughput:", "p50", "p90", "p99", "p99.9", "max", "Latency histogram", "Errors:", "http_503:no_leader", "Leader changes: 0"]) {
        expect(result.out).toContain(text);
      }
    } finally {
      node.server.stop(true);
    }
  });

  test("a 307 makes it re-discover the leader and resend the write there", async () => {
    const leadership: FakeLeadership = { leaderUrl: "", leaderId: 1, term: 1 };
    let newLeaderUrl = "";
    // From its first redirect on, both nodes report the new leader in a new term (set before the
    // 307 is built, so its Location names the new leader: a timer here once raced the client).
    const onRedirect = () => Object.assign(leadership, { leaderUrl: newLeaderUrl, leaderId: 2, term: 2 });
    const oldLeader = fakeKvNode({ id: 1, leadership, redirectPutsAfter: 10, onRedirect });
    const newLeader = fakeKvNode({ id: 2, leadership });
    newLeaderUrl = newLeader.url;
    leadership.leaderUrl = oldLeader.url;
    try {
      const report = await benchJson(["--endpoints", `${oldLeader.url},${newLeader.url}`, "--requests", "50", "--clients", "2"]);
      expect(report.ok).toBe(50);
      expect(report.errors).toBe(0);
      expect(report.redirects).toBe(oldLeader.counts.redirected);
      expect(report.redirects).toBeGreaterThan(0);
      expect(oldLeader.counts.put + newLeader.counts.put).toBe(50);
      expect(newLeader.counts.put).toBeGreaterThanOrEqual(40);
    } finally {
      oldLeader.server.stop(true);
      newLeader.server.stop(true);
    }
  });

  test("--auth-token (or KV_AUTH_TOKEN) sends the bearer token with every request, discovery included; without it nothing is served", async () => {
    const token = "bench-token-0123456789";
    const node = fakeKvNode({ authToken: token });
    try {
      const report = await benchJson(["--endpoints", node.url, "--requests", "60", "--clients", "3", "--mix", "put=1,get=1,delete=1", "--auth-token", token]);
      expect(report.ok).toBe(60);
      expect(report.errors).toBe(0);
      expect(node.counts.refused).toBe(0);
      const refused = await bench(["--endpoints", node.url, "--requests", "10", "--timeout", "1s"]);
      expect(refused.code).toBe(1);
      expect(refused.err).toContain("401 unauthenticated (the cluster requires a token: --auth-token or KV_AUTH_TOKEN)");
      expect(node.counts.refused).toBeGreaterThan(0);
      const byEnv = Bun.spawn([process.execPath, "src/cli/main.ts", "bench", "--endpoints", node.url, "--requests", "10", "--json"], {
        cwd: root,
        env: { ...process.env, KV_AUTH_TOKEN: token },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [out, code] = await Promise.all([new Response(byEnv.stdout).text(), byEnv.exited]);
      expect(code).toBe(0);
      expect((JSON.parse(out) as BenchReport).ok).toBe(10);
    } finally {
      node.server.stop(true);
    }
  });

  test("without --endpoints a run against kv takes $KV_ENDPOINTS, as kv's client commands do (found in a review: it measured 127.0.0.1:8001-8003 instead)", async () => {
    const node = fakeKvNode();
    const run = async (env: Record<string, string>, args: string[] = []) => {
      const proc = Bun.spawn([process.execPath, "src/cli/main.ts", "bench", "--requests", "10", "--timeout", "2s", "--json", ...args], {
        cwd: root,
        env: { ...process.env, ...env },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
      return { out, err, code };
    };
    try {
      const byEnv = await run({ KV_ENDPOINTS: node.url });
      expect(byEnv.code).toBe(0);
      expect((JSON.parse(byEnv.out) as BenchReport).ok).toBe(10);
      expect(node.counts.put).toBeGreaterThanOrEqual(10);
      const bad = await run({ KV_ENDPOINTS: "not a url" });
      expect(bad.code).toBe(2);
      expect(bad.err).toContain("$KV_ENDPOINTS: 'not a url' is not a URL");
      // --endpoints wins, and etcd's runs never take kv's variable.
      const flagWins = await run({ KV_ENDPOINTS: "not a url" }, ["--endpoints", node.url]);
      expect(flagWins.code).toBe(0);
    } finally {
      node.server.stop(true);
    }
  });

  test("a delete answered deleted: false counts as one of an absent key, as a read's 404 does (found in a black-box review: all were counted as found)", async () => {
    const node = fakeKvNode({ absentDeletes: true });
    try {
      const report = await benchJson(["--endpoints", node.url, "--requests", "40", "--clients", "2", "--mix", "delete=1"]);
      expect(node.counts.delete).toBe(40);
      expect(report.byKind.delete?.ok).toBe(40);
      expect(report.byKind.delete?.notFound).toBe(20);
    } finally {
      node.server.stop(true);
    }
  });

  test("a run whose leader goes away ends at its duration, not after --timeout of waiting for a new one (found in a black-box review: a 5 s run took 12 s with every node down)", async () => {
    const node = fakeKvNode();
    const proc = Bun.spawn([process.execPath, "src/cli/main.ts", "bench", "--endpoints", node.url, "--duration", "1s", "--clients", "4", "--timeout", "60s", "--json"], { cwd: root, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    try {
      const output = new Response(proc.stdout).text();
      // Once writes are acknowledged, the only node goes away: every write then waits for a leader that never comes.
      while (node.counts.put < 20) await Bun.sleep(10); // the fake counts what it served: polled, as nothing else tells
      node.server.stop(true);
      const startedMs = performance.now();
      expect(await proc.exited).toBe(0);
      // Not the 60 s of --timeout: the run's end stops the wait for a leader (a second of run, with room for a loaded machine).
      expect(performance.now() - startedMs).toBeLessThan(30_000);
      const report = JSON.parse(await output) as BenchReport;
      expect(report.ok).toBeGreaterThanOrEqual(20);
    } finally {
      proc.kill("SIGKILL");
      node.server.stop(true);
    }
  }, 90_000);

  test("an endpoint that refuses connections shows up as a network error", async () => {
    const node = fakeKvNode();
    const closed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const closedUrl = `http://127.0.0.1:${closed.port}`;
    closed.stop(true);
    try {
      const report = await benchJson(["--target", "noop", "--endpoints", `${node.url},${closedUrl}`, "--requests", "40", "--clients", "2"]);
      expect(report.ok + report.errors).toBe(40);
      expect(report.ok).toBe(node.counts.put);
      expect(Object.keys(report.errorsByKind).some((kind) => kind.startsWith("network:"))).toBe(true);
      expect(report.leaderChanges).toBeNull();
    } finally {
      node.server.stop(true);
    }
  });
});

test("kv bench against endpoints with no leader is one line on stderr and exit 1", async () => {
  const closed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  const closedUrl = `http://127.0.0.1:${closed.port}`;
  closed.stop(true);
  const result = await bench(["--endpoints", closedUrl, "--requests", "5", "--timeout", "200ms"]);
  expect(result.code).toBe(1);
  expect(result.err.trim()).toBe(`kv: bench: kv at ${closedUrl}: no leader found within 200 ms`);
  expect(result.out).toBe("");
});

test("kv bench pointed at the other kind of store says which it is (a review found 'no leader found' alone when --target etcd met kv)", async () => {
  const kvNode = fakeKvNode();
  const etcd = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (request) =>
      new URL(request.url).pathname === "/v3/maintenance/status" ? Response.json({ header: { member_id: "1" }, leader: "0" }) : new Response("404 page not found", { status: 404 }),
  });
  const etcdUrl = `http://127.0.0.1:${etcd.port}`;
  try {
    const atKv = await bench(["--target", "etcd", "--endpoints", kvNode.url, "--requests", "5", "--timeout", "200ms"]);
    expect(atKv.code).toBe(1);
    expect(atKv.err.trim()).toBe(`kv: bench: etcd at ${kvNode.url}: no leader found within 200 ms: ${kvNode.url} is a kv node, not etcd (--target kv)`);
    const atEtcd = await bench(["--endpoints", etcdUrl, "--requests", "5", "--timeout", "200ms"]);
    expect(atEtcd.code).toBe(1);
    expect(atEtcd.err.trim()).toBe(`kv: bench: kv at ${etcdUrl}: no leader found within 200 ms: ${etcdUrl} is an etcd endpoint, not kv (--target etcd)`);
  } finally {
    kvNode.server.stop(true);
    etcd.stop(true);
  }
});

test("kv bench --target noop starts its own trivial server and measures the tool's ceiling", async () => {
  const report = await benchJson(["--target", "noop", "--requests", "2000", "--clients", "8"]);
  expect(report.ok).toBe(2000);
  expect(report.errors).toBe(0);
  expect(report.endpoints).toHaveLength(1);
});

describe("kv bench against a real 3-node cluster of the built executable", () => {
  let cluster: ChaosCluster;
  let baseDir: string;

  beforeAll(async () => {
    baseDir = mkdtempSync(join(tmpdir(), "kv-bench-test-"));
    cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir });
    await cluster.start();
    await cluster.waitForLeader();
  });

  afterAll(async () => {
    await cluster?.stop(); // kills every node by pid
    rmSync(baseDir, { recursive: true, force: true });
  });

  test("200 operations, half linearizable reads spread over the nodes, writes to the leader", async () => {
    const leader = await cluster.waitForLeader();
    const endpoints = cluster.nodes.map((node) => node.httpUrl).join(",");
    const report = await benchJson(["--endpoints", endpoints, "--requests", "200", "--clients", "4", "--mix", "put=1,get=1", "--keys", "50"]);
    expect(report.ok + report.errors).toBe(200);
    expect(report.ok).toBeGreaterThan(0);
    expect(report.byKind.put?.ok).toBeGreaterThan(0);
    expect(report.byKind.get?.ok).toBeGreaterThan(0);
    expect(report.description).toContain("writes to the leader");
    expect(typeof report.leaderChanges).toBe("number");
    expect(report.leaders?.[0]?.leaderId).toBe(String(leader));
    const status = await cluster.status(leader);
    expect(status?.commitIndex).toBeGreaterThanOrEqual(report.byKind.put?.ok ?? 0);
  });
});

test("the built executable's kv bench runs (its bundled histogram library loads), and reports through --json", async () => {
  const { code, out } = await runKv(["bench", "--target", "noop", "--requests", "200", "--clients", "2", "--json"]);
  expect(code).toBe(0);
  const report = JSON.parse(out.slice(out.indexOf("{"))) as BenchReport;
  expect(report.ok).toBe(200);
});
