// Proves the client library (src/client) against real in-process nodes: reads, writes, listings, status and members; following a follower's 307 to the leader with the bearer token; moving past endpoints that refuse or never answer; landing a write exactly once across a leader failover mid-call (its retry, under the same Idempotency-Key, answers the first apply's version); and reporting an outcome that stays unknown as UnknownOutcomeError.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TCPSocketListener } from "bun";
import { type ClientSideCode, createClient, KvClientError, UnknownOutcomeError } from "../src/client/index.ts";
import { Transport } from "../src/client/transport.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";
import { txnStandIn } from "./helpers/txn-stand-in.ts";

const TOKEN = "client-test-token";

/** A port nothing listens on: bound by the OS, then released. */
function closedPortUrl(): string {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const url = `http://127.0.0.1:${listener.port}`;
  listener.stop(true);
  return url;
}

/** A TCP listener that accepts connections, reads the request and never answers. */
function blackHole(): { url: string; listener: TCPSocketListener<undefined> } {
  const listener = Bun.listen<undefined>({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  return { url: `http://127.0.0.1:${listener.port}`, listener };
}

/** Polls `condition` (a condition, not a sleep) until it holds; fails after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5); // polling interval
  }
}

function followerOf(cluster: ServerCluster, leader: number): number {
  return cluster.nodes.map((n) => n.id).find((id) => id !== leader) as number;
}

describe("against a 3-node cluster with a bearer token", () => {
  let dir: string;
  let cluster: ServerCluster;
  let leader: number;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kv-client-"));
    cluster = createServerCluster({ size: 3, baseDir: dir, config: () => ({ authToken: TOKEN }) });
    await cluster.start();
    leader = await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const urls = () => cluster.nodes.map((n) => cluster.node(n.id).httpUrl);

  test("put, get, delete and compare-and-set, with text and binary values", async () => {
    const kv = createClient({ endpoints: urls(), authToken: TOKEN });
    const { version } = await kv.put("greeting", "héllo");
    const got = await kv.get("greeting");
    expect(got?.text).toBe("héllo");
    expect(got?.version).toBe(version);
    expect(got?.bytes).toEqual(new TextEncoder().encode("héllo"));

    const binary = new Uint8Array([0, 255, 128, 10]);
    await kv.put("binary/1", binary);
    expect((await kv.get("binary/1", { consistency: "stale" }))?.bytes ?? null).toEqual(binary);

    const mismatch = await kv.put("greeting", "x", { ifVersion: version + 1000 }).catch((e: unknown) => e);
    expect(mismatch).toBeInstanceOf(KvClientError);
    expect((mismatch as KvClientError).code).toBe("version_mismatch");
    expect((mismatch as KvClientError).status).toBe(409);
    expect((mismatch as KvClientError).details.version).toBe(version);

    expect(await kv.delete("greeting", { ifVersion: version })).toMatchObject({ deleted: true });
    expect(await kv.get("greeting")).toBeNull();
    expect(await kv.delete("greeting")).toMatchObject({ deleted: false });
  });

  test("an idempotency key of any text travels as its UTF-8 bytes, and a retry under it answers the first version (found in a black-box review: 'k-€' was retried for 5 s and called unknown)", async () => {
    const kv = createClient({ endpoints: urls(), authToken: TOKEN });
    const first = await kv.put("utf8-key/a", "v1", { idempotencyKey: "k-€-ключ" });
    expect(await kv.put("utf8-key/a", "v1", { idempotencyKey: "k-€-ключ" })).toEqual(first);
    expect((await kv.get("utf8-key/a"))?.version).toBe(first.version);
  });

  test("list pages through a prefix in key order, decoding base64 values, honouring limit", async () => {
    const kv = createClient({ endpoints: urls(), authToken: TOKEN });
    for (let i = 0; i < 5; i++) await kv.put(`list/${i}`, `v${i}`);
    await kv.put("list/raw", new Uint8Array([0xff, 0xfe]));
    await kv.put("other", "not listed");
    const pages = [];
    for await (const page of kv.list("list/", { pageSize: 2 })) pages.push(page.items.map((item) => item.key));
    expect(pages).toEqual([["list/0", "list/1"], ["list/2", "list/3"], ["list/4", "list/raw"]]);
    const items = [];
    for await (const page of kv.list("list/", { limit: 3, pageSize: 2 })) items.push(...page.items);
    expect(items.map((item) => item.text)).toEqual(["v0", "v1", "v2"]);
    const raw = [];
    for await (const page of kv.list("list/r")) raw.push(...page.items);
    expect(raw.map((item) => [...item.bytes])).toEqual([[0xff, 0xfe]]);
  });

  test("status and members describe the cluster", async () => {
    const kv = createClient({ endpoints: urls(), authToken: TOKEN });
    const status = await kv.status();
    expect(status.members.map((m) => m.id).sort()).toEqual([1, 2, 3]);
    expect((await kv.statusOf(cluster.node(leader).httpUrl)).role).toBe("leader");
    const members = await kv.members();
    expect(members.members.map((m) => m.role)).toEqual(["voter", "voter", "voter"]);
    expect(members.leaderId).toBe(leader);
  });

  test("a write sent to a follower follows its 307 to the leader with the token, and the leader is remembered", async () => {
    const follower = cluster.node(followerOf(cluster, leader)).httpUrl;
    const kv = createClient({ endpoints: [follower], authToken: TOKEN });
    expect(kv.leaderEndpoint).toBeUndefined();
    await kv.put("redirected", "yes");
    expect(kv.leaderEndpoint).toBe(cluster.node(leader).httpUrl);
    expect((await kv.get("redirected"))?.text).toBe("yes");

    const anonymous = createClient({ endpoints: [follower] });
    const refused = await anonymous.put("redirected", "no").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KvClientError);
    expect((refused as KvClientError).code).toBe("unauthenticated");
    expect((refused as KvClientError).status).toBe(401);
  });

  test("request() reaches any route the same way: an idempotent raw write through a follower, retried, applies once", async () => {
    const follower = cluster.node(followerOf(cluster, leader)).httpUrl;
    const kv = createClient({ endpoints: [follower], authToken: TOKEN });
    const write = { method: "PUT", path: "/kv/raw%2Fkey", body: "once", headers: { "idempotency-key": "raw-1" } } as const;
    const first = await kv.request(write);
    const again = await kv.request(write);
    expect(first.status).toBe(200);
    expect(JSON.parse(new TextDecoder().decode(again.body))).toEqual(JSON.parse(new TextDecoder().decode(first.body)));
    expect((await kv.get("raw/key"))?.version).toBe((JSON.parse(new TextDecoder().decode(first.body)) as { version: number }).version);
    const missing = await kv.request({ method: "GET", path: "/no-such-route" });
    expect(missing.status).toBe(404);
  });

  test("endpoints that refuse connections or never answer are passed over", async () => {
    const hole = blackHole();
    try {
      const kv = createClient({ endpoints: [closedPortUrl(), hole.url, ...urls()], authToken: TOKEN, timeoutMs: 5_000, attemptTimeoutMs: 300 });
      const { version } = await kv.put("failover/endpoint", "landed");
      expect((await kv.get("failover/endpoint"))?.version).toBe(version);
    } finally {
      hole.listener.stop(true);
    }
  });

  test("a put whose answer never comes is UnknownOutcomeError, a get is unreachable, and a put to refusing endpoints is unreachable", async () => {
    const hole = blackHole();
    try {
      const kv = createClient({ endpoints: [hole.url], timeoutMs: 600, attemptTimeoutMs: 200 });
      const put = await kv.put("nowhere", "v", { idempotencyKey: "nowhere-1" }).catch((e: unknown) => e);
      expect(put).toBeInstanceOf(UnknownOutcomeError);
      expect((put as UnknownOutcomeError).idempotencyKey).toBe("nowhere-1");
      const get = await kv.get("nowhere").catch((e: unknown) => e);
      expect(get).toBeInstanceOf(KvClientError);
      expect((get as KvClientError).code).toBe("unreachable");
    } finally {
      hole.listener.stop(true);
    }
    // Refused connections carried nothing: the write certainly did not happen, so it is not "unknown".
    const refused = await createClient({ endpoints: [closedPortUrl(), closedPortUrl()], timeoutMs: 1_000 })
      .put("nowhere", "v")
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KvClientError);
    expect((refused as KvClientError).code).toBe("unreachable");
  });

  test("a put to an https:// endpoint that speaks plain HTTP failed its handshake before sending anything: tls_failed at once, not unknown (found in black-box reviews)", async () => {
    const plain = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ key: "x", version: 1 }) });
    try {
      const wrongScheme = await createClient({ endpoints: [`https://127.0.0.1:${plain.port}`], timeoutMs: 1_000 })
        .put("nowhere", "v")
        .catch((e: unknown) => e);
      expect(wrongScheme).toBeInstanceOf(KvClientError);
      expect(wrongScheme).not.toBeInstanceOf(UnknownOutcomeError);
      expect((wrongScheme as KvClientError).code).toBe("tls_failed");
      expect((wrongScheme as KvClientError).message).toContain("no endpoint could be reached over TLS (PUT /kv/nowhere)");
    } finally {
      plain.stop(true);
    }
  });

  test("an endpoint that fails alike on every pass is named once in the error, with how many times", async () => {
    const dead = closedPortUrl();
    const error = await createClient({ endpoints: [dead], timeoutMs: 1_500 })
      .get("nowhere")
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KvClientError);
    const message = (error as KvClientError).message;
    expect(message.split(dead).length - 1).toBe(1); // before, once per pass: the same text eight times
    expect(message).toMatch(/ \(×\d+\)$/);
    // Two endpoints failing in turn are each named once too (found in review: they alternated, eight times a line).
    const [a, b] = [closedPortUrl(), closedPortUrl()];
    const both = await createClient({ endpoints: [a, b], timeoutMs: 1_500 })
      .get("nowhere")
      .catch((e: unknown) => e);
    const bothMessage = (both as KvClientError).message;
    expect(bothMessage.split(a).length - 1).toBe(1);
    expect(bothMessage.split(b).length - 1).toBe(1);
  });
});

describe("leader failover", () => {
  let dir: string;
  let cluster: ServerCluster;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kv-client-failover-"));
    cluster = createServerCluster({ size: 3, baseDir: dir });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a put applied by a leader that dies before answering lands exactly once: the retry answers the first apply's version", async () => {
    const leader = await cluster.waitForLeader();
    const survivors = cluster.nodes.map((n) => n.id).filter((id) => id !== leader);
    const leaderUrl = cluster.node(leader).httpUrl;
    // A front for the leader: it hands the request on, and once the leader has applied it, kills
    // the leader and never answers, as a connection cut after the write arrived looks to a client.
    let firstAnswer: { status: number; body: string } | undefined;
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const front = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        const url = new URL(request.url);
        const response = await fetch(`${leaderUrl}${url.pathname}${url.search}`, {
          method: request.method,
          headers: request.headers,
          body: await request.arrayBuffer(),
        });
        firstAnswer = { status: response.status, body: await response.text() };
        await cluster.kill(leader);
        await released;
        return new Response("too late", { status: 599 });
      },
    });
    try {
      const kv = createClient({
        endpoints: [`http://127.0.0.1:${front.port}`, ...survivors.map((id) => cluster.node(id).httpUrl)],
        timeoutMs: 15_000,
        attemptTimeoutMs: 1_000,
      });
      // ifVersion 0 (create only): a second apply of the same write would be refused as version_mismatch.
      const result = await kv.put("exactly-once", "v1", { ifVersion: 0 });
      expect(firstAnswer?.status).toBe(200);
      const applied = JSON.parse(firstAnswer?.body ?? "{}") as { version: number };
      expect(result.version).toBe(applied.version);
      const stored = await kv.get("exactly-once");
      expect(stored?.version).toBe(applied.version);
      expect(stored?.text).toBe("v1");
      expect(survivors).toContain(await cluster.waitForLeader(survivors));
    } finally {
      release();
      front.stop(true);
      await cluster.startNode(leader);
    }
  }, 60_000);

  test("writes in flight when the leader stops, and the next ones, land once each on the new leader", async () => {
    const leader = await cluster.waitForLeader();
    const kv = createClient({ endpoints: cluster.nodes.map((n) => cluster.node(n.id).httpUrl), timeoutMs: 15_000, attemptTimeoutMs: 2_000 });
    await kv.put("warm", "up"); // the client now knows the leader, and sends to it first
    expect(kv.leaderEndpoint).toBe(cluster.node(leader).httpUrl);
    // 8 writers, 15 writes each, one at a time, each write create-only (ifVersion 0): a write
    // applied twice would come back version_mismatch. The leader stops once 10 are acknowledged.
    const results = new Map<string, { version: number } | { error: unknown }>();
    let acked = 0;
    let killed = false;
    let inFlightAtKill = 0;
    let inFlight = 0;
    let tenAcked: () => void = () => {};
    const tenAckedPromise = new Promise<void>((resolve) => {
      tenAcked = resolve;
    });
    const writers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < 15; i++) {
        const key = `inflight/${w}/${i}`;
        inFlight++;
        try {
          results.set(key, { version: (await kv.put(key, `v${i}`, { ifVersion: 0 })).version });
          if (++acked === 10) tenAcked();
        } catch (error) {
          results.set(key, { error });
        } finally {
          inFlight--;
        }
      }
    });
    await tenAckedPromise;
    inFlightAtKill = inFlight;
    await cluster.kill(leader);
    killed = true;
    await Promise.all(writers);
    expect(killed).toBe(true);
    expect(inFlightAtKill).toBeGreaterThan(0);
    expect(results.size).toBe(120);
    for (const [key, result] of results) {
      if ("error" in result) {
        // At worst unknown (the budget ran out): never refused as a duplicate, never another error.
        expect(result.error).toBeInstanceOf(UnknownOutcomeError);
        continue;
      }
      expect({ key, version: (await kv.get(key))?.version }).toEqual({ key, version: result.version });
    }
    expect([...results.values()].filter((r) => "version" in r).length).toBeGreaterThan(100);
    // Between calls: the remembered leader is gone; the next write finds the new one.
    const after = await kv.put("after-failover", "v");
    expect((await kv.get("after-failover"))?.version).toBe(after.version);
    await cluster.startNode(leader);
  }, 60_000);
});

// A stand-in answering the documented POST /txn contract checks what the client sends and how it
// reads the answer (the real route is proved in test/txn*.test.ts).
describe("txn against a stand-in for the documented POST /txn contract", () => {
  test("a transaction that writes nothing in either branch goes without an Idempotency-Key, as a read (found in review: its session held its gets against the quota)", async () => {
    const server = txnStandIn({ succeeded: false, version: 9, results: [{ get: { key: "b", found: false } }] });
    const keys = server.keys;
    try {
      const kv = createClient({ endpoints: [server.url] });
      const result = await kv.txn({ compare: [{ key: "a", exists: true }], success: [{ get: { key: "a" } }], failure: [{ get: { key: "b" } }] });
      expect(result.results).toEqual([{ get: null }]);
      await kv.txn({ success: [{ get: { key: "a" } }], failure: [{ delete: { key: "a" } }] });
      expect(keys[0]).toBeNull();
      expect(keys[1]).toMatch(/^[0-9a-f-]{36}$/); // a delete in either branch: keyed
    } finally {
      server.stop();
    }
  });

  test("sends compare/success/failure as JSON (binary values as base64) with an Idempotency-Key, and decodes get results", async () => {
    const seen: { body: unknown; idempotencyKey: string | null; authorization: string | null }[] = [];
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        seen.push({ body: await request.json(), idempotencyKey: request.headers.get("idempotency-key"), authorization: request.headers.get("authorization") });
        return Response.json({
          succeeded: true,
          version: 42,
          results: [{ put: { key: "a", version: 42 } }, { get: { key: "b", found: true, value: { base64: "AP8=" }, version: 7 } }, { get: { key: "c", found: false } }],
        });
      },
    });
    try {
      const kv = createClient({ endpoints: [`http://127.0.0.1:${server.port}`], authToken: "t" });
      const result = await kv.txn({
        compare: [{ key: "a", version: 3 }, { key: "b", value: new Uint8Array([0, 255]) }, { key: "c", exists: false }],
        success: [{ put: { key: "a", value: "x", lease: 9 } }, { get: { key: "b" } }, { get: { key: "c" } }],
        failure: [{ delete: { key: "a" } }],
      });
      expect(seen[0]?.body).toEqual({
        compare: [{ key: "a", version: 3 }, { key: "b", value: { base64: "AP8=" } }, { key: "c", exists: false }],
        success: [{ put: { key: "a", value: "x", lease: 9 } }, { get: { key: "b" } }, { get: { key: "c" } }],
        failure: [{ delete: { key: "a" } }],
      });
      expect(seen[0]?.idempotencyKey).toMatch(/^[0-9a-f-]{36}$/);
      expect(seen[0]?.authorization).toBe("Bearer t");
      expect(result.succeeded).toBe(true);
      expect(result.version).toBe(42);
      const got = result.results[1] as { get: { bytes: Uint8Array; version: number } };
      expect([...got.get.bytes]).toEqual([0, 255]);
      expect(result.results[0]).toEqual({ put: { key: "a", version: 42 } });
      expect(result.results[2]).toEqual({ get: null });
    } finally {
      server.stop(true);
    }
  });
});

test("redirects that go round in circles are too_many_redirects, as documented (found in review: they read as unreachable)", async () => {
  let requests = 0;
  // Two nodes, each naming the other the leader.
  const fake = (async (input: string | URL | Request) => {
    requests++;
    const url = new URL(String(input));
    const other = url.port === "1" ? "2" : "1";
    return new Response(JSON.stringify({ error: "not_leader", message: "elsewhere" }), { status: 307, headers: { location: `http://127.0.0.1:${other}${url.pathname}` } });
  }) as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake, timeoutMs: 300 });
  const error = await kv.get("k").catch((e: unknown) => e);
  expect(error).toBeInstanceOf(KvClientError);
  expect((error as KvClientError).code).toBe("too_many_redirects");
  expect(requests).toBeGreaterThan(5);
});

test("endpoints that are not a URL or a list of URLs are a bad_request, not a TypeError (found in a black-box review)", () => {
  const sparse: string[] = new Array(2);
  sparse[1] = "http://127.0.0.1:1";
  expect(() => (createClient as (options?: unknown) => unknown)()).toThrow(KvClientError);
  for (const endpoints of [undefined, null, 8001, {}, ["http://127.0.0.1:1", 2], sparse]) {
    const error = (() => {
      try {
        createClient({ endpoints } as unknown as Parameters<typeof createClient>[0]);
        return undefined;
      } catch (e: unknown) {
        return e;
      }
    })();
    expect([endpoints, error instanceof KvClientError ? error.code : String(error)]).toEqual([endpoints, "bad_request"]);
  }
});

test("an endpoint with a path, query, fragment or user is a bad_request before any request; a trailing slash is fine (found in a review: the node answered its unknown path 404 not_found, and every key read as absent)", () => {
  for (const endpoints of ["http://127.0.0.1:8001/v1", "http://127.0.0.1:8001?cluster=a", "http://127.0.0.1:8001/#x", "http://me:pw@127.0.0.1:8001", "http://127.0.0.1:8001,http://127.0.0.1:8002/kv"]) {
    expect(() => createClient({ endpoints })).toThrow(/must be only a scheme, host and port/);
  }
  expect(createClient({ endpoints: "http://127.0.0.1:8001/, https://kv.example:8443, http://[::1]:8002//" }).endpoints).toEqual(["http://127.0.0.1:8001", "https://kv.example:8443", "http://[::1]:8002"]);
  // As the URL reads it: a backslash is a slash there, and was appended as it came (found in review: GET \/kv/a, no route).
  expect(createClient({ endpoints: "http://127.0.0.1:8001\\" }).endpoints).toEqual(["http://127.0.0.1:8001"]);
});

test("the keys '.' and '..' are refused before any request: a URL has no path for them (found in review: get('..') read GET / as an absent key)", async () => {
  let requests = 0;
  const fake = (async () => {
    requests++;
    return Response.json({ error: "not_found", message: "no route" }, { status: 404 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake });
  for (const call of [() => kv.get(".."), () => kv.put(".", "x"), () => kv.delete("..")]) {
    const error = await call().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KvClientError);
    expect((error as KvClientError).code).toBe("bad_request");
  }
  expect(requests).toBe(0);
  // Other keys with dots still go out.
  expect(await kv.get("...")).toBeNull();
  expect(requests).toBe(1);
});

test("an endpoint that gave no answer is asked last for a while: a read-only client does not wait on a paused node every pass (found in review)", async () => {
  const asked: string[] = [];
  const fake = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(String(input));
    asked.push(url.port);
    // Node 1 is paused: no answer until the attempt gives up.
    if (url.port === "1") return new Promise<Response>((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)));
    return new Response("v", { status: 200, headers: { "x-kv-version": "3" } });
  }) as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"], fetch: fake, attemptTimeoutMs: 200 });
  for (let i = 0; i < 6; i++) expect((await kv.get("k"))?.text).toBe("v");
  expect(asked.filter((port) => port === "1").length).toBe(1);
});

test("a silent leader a redirect named is the one asked last, not the endpoint that redirected (found in review)", async () => {
  const asked: string[] = [];
  let leaderCalls = 0;
  const fake = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(String(input));
    asked.push(url.port);
    // Port 1 always redirects to the leader, port 2, which is silent for its first request only.
    if (url.port === "1") return new Response(null, { status: 307, headers: { location: `http://127.0.0.1:2${url.pathname}` } });
    if (leaderCalls++ === 0) return new Promise<Response>((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)));
    return new Response("v", { status: 200, headers: { "x-kv-version": "3" } });
  }) as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake, attemptTimeoutMs: 200 });
  for (let i = 0; i < 3; i++) expect((await kv.get("k"))?.text).toBe("v");
  // 1st get: 1 → 2 (silent), then 2 answers; 2nd: 2; 3rd starts at 1 again, which was never at fault.
  expect(asked).toEqual(["1", "2", "2", "2", "1", "2"]);
});

test("a keepalive refused lease_not_found after an attempt that went unanswered is a definite refusal: a keepalive cannot cause its own refusal (found in review)", async () => {
  let calls = 0;
  const fake = (async (_input: string | URL | Request, init?: RequestInit) => {
    if (calls++ === 0) return new Promise<Response>((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)));
    return Response.json({ error: "lease_not_found", message: "lease 7 does not exist" }, { status: 404 });
  }) as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake, attemptTimeoutMs: 100 });
  const error = await kv.leases.keepAlive(7).catch((e: unknown) => e);
  expect(calls).toBe(2);
  expect(error).toBeInstanceOf(KvClientError);
  expect((error as KvClientError).code).toBe("lease_not_found");
});

test("a keeper of a lease longer than a timer can hold (2^31 ms, 24.8 days) is not lost at once (found in review: a 30-day lease was lost after 26 ms)", async () => {
  const fake = (async () => Response.json({ id: "7", ttlMs: 30 * 24 * 3_600_000 })) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake });
  const keeper = kv.leases.keep(7, { ttlMs: 30 * 24 * 3_600_000 });
  try {
    // An overflowing timer fires after 1 ms: give it several times that to show it does not.
    await Bun.sleep(50);
    expect(keeper.lost.aborted).toBe(false);
    expect(keeper.aliveUntilMs()).toBeGreaterThan(performance.now() + 29 * 24 * 3_600_000);
  } finally {
    keeper.stop();
  }
});

test("a put whose first attempt went unanswered and whose retry is refused quota_exceeded is an unknown outcome: the first may have applied and crossed the quota (found in review)", async () => {
  let calls = 0;
  const fake = (async () => {
    if (calls++ === 0) throw Object.assign(new Error("The socket connection was closed unexpectedly"), { code: "ECONNRESET" });
    return Response.json({ error: "quota_exceeded", message: "at or past its quota" }, { status: 507 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
  const error = await kv.put("k", "v").catch((e: unknown) => e);
  expect(calls).toBe(2);
  expect(error).toBeInstanceOf(UnknownOutcomeError);
  // Without an attempt of unknown outcome before it, the refusal stands.
  const refused = await kv.put("k", "v").catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(KvClientError);
  expect((refused as KvClientError).code).toBe("quota_exceeded");
});

test("a transaction whose first attempt went unanswered and whose retry is refused upgrade_required is an unknown outcome: a member restarted on an older release refuses the retry whatever the first did (found in review)", async () => {
  let calls = 0;
  const fake = (async () => {
    if (calls++ === 0) throw Object.assign(new Error("The socket connection was closed unexpectedly"), { code: "ECONNRESET" });
    return Response.json({ error: "upgrade_required", message: "node 3 runs an older release", members: [3] }, { status: 409 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
  const request = { compare: [{ key: "n", version: 5, op: "<" as const }], success: [{ put: { key: "n", value: "x" } }] };
  expect(await kv.txn(request).catch((e: unknown) => e)).toBeInstanceOf(UnknownOutcomeError);
  expect(calls).toBe(2);
  const refused = await kv.txn(request).catch((e: unknown) => e);
  expect((refused as KvClientError).code).toBe("upgrade_required");
});

test("a put whose first attempt went unanswered and whose retry's body is refused 408 request_timeout is an unknown outcome: the first may have applied (found in review)", async () => {
  let calls = 0;
  const fake = (async () => {
    if (calls++ === 0) throw Object.assign(new Error("The socket connection was closed unexpectedly"), { code: "ECONNRESET" });
    return Response.json({ error: "request_timeout", message: "the body did not arrive within 10000 ms" }, { status: 408 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
  expect(await kv.put("k", "v").catch((e: unknown) => e)).toBeInstanceOf(UnknownOutcomeError);
  expect(calls).toBe(2);
  // Without an attempt of unknown outcome before it, the refusal stands.
  const refused = await kv.put("k", "v").catch((e: unknown) => e);
  expect((refused as KvClientError).code).toBe("request_timeout");
});

test("an endpoint whose name does not resolve carried nothing: a membership change goes on to the next endpoint rather than report an unknown outcome (found in review)", async () => {
  const asked: string[] = [];
  const fake = (async (input: string | URL | Request) => {
    const url = new URL(String(input));
    asked.push(url.hostname);
    if (url.hostname === "kv-1.invalid") throw Object.assign(new TypeError("getaddrinfo ENOTFOUND kv-1.invalid"), { code: "ENOTFOUND" });
    return Response.json({ leaderId: 2, previousLeaderId: 1 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://kv-1.invalid:8001", "http://127.0.0.1:2"], fetch: fake });
  expect(await kv.transferLeadership()).toEqual({ leaderId: 2, previousLeaderId: 1 });
  expect(asked).toEqual(["kv-1.invalid", "127.0.0.1"]);
});

test("a lock whose signal aborts while its last look at the queue is on its way is not taken: it rejects and gives the lease back (found in review: kv lock -- CMD, interrupted then, ran CMD)", async () => {
  const stop = new AbortController();
  const seen: string[] = [];
  const fake = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(String(input));
    seen.push(`${init?.method ?? "GET"} ${url.pathname}`);
    if (url.pathname === "/leases") return Response.json({ id: "7", ttlMs: 3_000 });
    if (url.pathname === "/leases/7/keepalive") return Response.json({ id: "7", ttlMs: 3_000 });
    if (url.pathname === "/leases/7") return Response.json({ id: "7", version: 12, deletedKeys: 1 });
    if (url.pathname.startsWith("/kv/")) return Response.json({ key: "jobs/x/7", version: 11 });
    // The queue's listing: ours is first, and the caller gives up while the answer is on its way.
    stop.abort(new Error("gave up"));
    return Response.json({ items: [{ key: "jobs/x/7", value: "", version: 11 }], more: false });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake });
  const outcome = await kv.lock("jobs/x", { ttlMs: 3_000, signal: stop.signal }).then(
    (held) => `held ${held.key}`,
    (e: unknown) => (e instanceof Error ? e.message : String(e)),
  );
  expect(outcome).toBe("gave up");
  expect(seen).toContain("DELETE /leases/7");
});

test("a node answering 429 with Retry-After is asked again only after it (found in review: every 170 ms); a 503 no_leader's Retry-After does not slow the hunt for a new leader", async () => {
  let asked = 0;
  const overloaded = (async () => {
    asked++;
    return Response.json({ error: "overloaded", message: "too many requests are waiting", retryAfterS: 1 }, { status: 429, headers: { "retry-after": "1" } });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: overloaded, timeoutMs: 2_500 });
  const error = await kv.put("k", "v").catch((e: unknown) => e);
  expect((error as KvClientError).code).toBe("overloaded");
  expect(asked).toBeGreaterThanOrEqual(2);
  expect(asked).toBeLessThanOrEqual(4); // at 0, 1 and 2 s, and one last try in what is left
  let leaderless = 0;
  const noLeader = (async () => {
    leaderless++;
    return Response.json({ error: "no_leader", message: "no leader is known right now", retryAfterS: 1 }, { status: 503, headers: { "retry-after": "1" } });
  }) as unknown as typeof fetch;
  await createClient({ endpoints: ["http://127.0.0.1:1"], fetch: noLeader, timeoutMs: 1_000 }).put("k", "v").catch(() => undefined);
  expect(leaderless).toBeGreaterThan(4);
});

test("a membership change refused conf_change_pending (the change before it, or a leader just elected, not applied yet) is asked again within the budget (found in a black-box review: removing the leader under writes failed at the leader it handed over to)", async () => {
  let calls = 0;
  const fake = (async () => {
    if (calls++ < 2) return Response.json({ error: "conf_change_pending", message: "another membership change is not yet applied; retry once it is", retryAfterS: 1 }, { status: 409 });
    return Response.json({ members: [{ id: 1, peerUrl: "http://127.0.0.1:5001", httpUrl: null, role: "voter" }], leaderId: 1, configIndex: 9 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake, timeoutMs: 5_000 });
  const view = await kv.membership.remove(2);
  expect(view.members.map((member) => member.id)).toEqual([1]);
  expect(calls).toBe(3);
});

/** An error as Bun's fetch throws it for a failed TLS handshake (its `code` is what the client reads). */
function tlsError(code: string, message: string): Error {
  return Object.assign(new TypeError(message), { code });
}

test("a leader a redirect names whose certificate fails is named as such, and the client goes on while the followers answer: leadership may move (found in review: tls_failed at once, naming the followers)", async () => {
  let calls = 0;
  // Followers 1 and 2 send writes to leader 3, whose certificate has expired; after three tries leadership moved to 1.
  const fake = (async (input: string | URL | Request) => {
    calls++;
    const url = new URL(String(input));
    if (url.port === "3") throw tlsError("CERT_HAS_EXPIRED", "certificate has expired");
    if (calls > 6 && url.port === "1") return Response.json({ key: "k", version: 9 });
    return new Response(JSON.stringify({ error: "not_leader", message: "elsewhere" }), { status: 307, headers: { location: `https://127.0.0.1:3${url.pathname}` } });
  }) as typeof fetch;
  const kv = createClient({ endpoints: ["https://127.0.0.1:1", "https://127.0.0.1:2"], fetch: fake, timeoutMs: 5_000 });
  expect(await kv.put("k", "v", { idempotencyKey: "tls-redirect-1" })).toMatchObject({ version: 9 });
  // Every try the leader refused: its own URL in the error, not the followers'.
  const stuck = createClient({ endpoints: ["https://127.0.0.1:2"], fetch: fake, timeoutMs: 400 });
  const error = await stuck.put("k", "v", { idempotencyKey: "tls-redirect-2" }).catch((e: unknown) => e);
  expect((error as KvClientError).code).toBe("unreachable");
  expect((error as KvClientError).message).toContain("https://127.0.0.1:3: certificate has expired");
});

test("a TLS alert (EPROTO) is final only when a second pass meets it too; a certificate failure at once (found in review: one passing alert ended the call)", async () => {
  let alerts = 1;
  const fake = (async () => {
    if (alerts-- > 0) throw tlsError("EPROTO", "TLS alert");
    return Response.json({ key: "k", version: 3 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["https://127.0.0.1:1"], fetch: fake, timeoutMs: 5_000 });
  expect(await kv.put("k", "v", { idempotencyKey: "alert-once" })).toMatchObject({ version: 3 });
  let certificateCalls = 0;
  const untrusted = createClient({
    endpoints: ["https://127.0.0.1:1", "https://127.0.0.1:2"],
    fetch: (async () => {
      certificateCalls++;
      throw tlsError("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unable to verify the first certificate");
    }) as unknown as typeof fetch,
    timeoutMs: 5_000,
  });
  const error = await untrusted.get("k").catch((e: unknown) => e);
  expect((error as KvClientError).code).toBe("tls_failed");
  expect(certificateCalls).toBe(2);
});

test("a caller's mistake is bad_request at once, nothing sent: a key or value the wire cannot carry, an idempotency key or token a header cannot, the empty prefix without { all: true } (found in a black-box review: some were stored garbled, some retried for 5 s and reported unknown)", async () => {
  const sent: string[] = [];
  const fake = (async (input: string | URL | Request, init?: RequestInit) => {
    sent.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}${new URL(String(input)).search}`);
    return Response.json({ key: "k", version: 5, deleted: 0, more: false });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake });
  const refused = async (call: () => Promise<unknown>): Promise<string> => {
    const error = await call().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KvClientError);
    expect((error as KvClientError).code).toBe("bad_request");
    return (error as KvClientError).message;
  };
  expect(await refused(() => kv.put("k", { a: 1 } as unknown as string))).toContain("a value is a string or a Uint8Array, got Object");
  expect(await refused(() => kv.put("k", 42 as unknown as string))).toContain("got number 42");
  expect(await refused(() => kv.put("k", "\ud800"))).toContain("lone UTF-16 surrogate");
  expect(await refused(() => kv.put("\ud800", "v"))).toContain("lone UTF-16 surrogate");
  expect(await refused(() => kv.put("", "v"))).toContain("a key is at least one character");
  expect(await refused(() => kv.delete(""))).toContain("a key is at least one character");
  expect(await refused(() => kv.put("k", "v", { idempotencyKey: "a\nb" }))).toContain("no control characters");
  expect(await refused(() => kv.put("k", "v", { idempotencyKey: "x".repeat(257) }))).toContain("at most 256 bytes");
  expect(await refused(() => kv.deletePrefix(""))).toContain("{ all: true }");
  expect(await refused(async () => kv.leases.keep(1, undefined as unknown as { ttlMs: number }))).toContain("keep(id, { ttlMs }) needs the lease's TTL");
  expect(await refused(() => kv.lock("/"))).toContain("a character besides '/'");
  expect(sent).toEqual([]);
  expect(() => createClient({ endpoints: ["http://127.0.0.1:1"], authToken: "abc\ndef0123456789" })).toThrow("authToken must be visible ASCII");
  // What is right goes through: the whole cluster with { all: true }, a lease id as its decimal string.
  expect(await kv.deletePrefix("", { all: true })).toMatchObject({ deleted: 0, requests: 1 });
  await kv.put("k", "v", { lease: "7" });
  expect(sent).toEqual(["DELETE /kv?prefix=", "PUT /kv/k?lease=7"]);
});

describe("a call's own timeoutMs and signal (etcd's clients take a context: a deadline and a cancellation)", () => {
  /** A listener that reads requests and never answers; `arrived` resolves once a request came in. */
  function silentListener() {
    let arrived = () => {};
    const came = new Promise<void>((resolve) => (arrived = resolve));
    const listener = Bun.listen<undefined>({ hostname: "127.0.0.1", port: 0, socket: { data: () => arrived() } });
    return { url: `http://127.0.0.1:${listener.port}`, listener, came };
  }

  test("a signal aborted before the call sends nothing and rejects with its reason", async () => {
    let sent = 0;
    const kv = createClient({ endpoints: [closedPortUrl()], fetch: (() => (sent++, Promise.reject(new Error("sent")))) as unknown as typeof fetch });
    const reason = new Error("caller gave up");
    for (const call of [
      () => kv.get("k", { signal: AbortSignal.abort(reason) }),
      () => kv.put("k", "v", { signal: AbortSignal.abort(reason) }),
      () => kv.delete("k", { signal: AbortSignal.abort(reason) }),
      () => kv.txn({ success: [{ put: { key: "k", value: "v" } }] }, { signal: AbortSignal.abort(reason) }),
    ]) {
      expect(await call().catch((error: unknown) => error)).toBe(reason);
    }
    expect(sent).toBe(0);
  });

  test("a read aborted while its request waits rejects with the reason; a write aborted then is of unknown outcome, with its key to resend", async () => {
    const silent = silentListener();
    try {
      const kv = createClient({ endpoints: [silent.url], timeoutMs: 60_000 });
      const readAbort = new AbortController();
      const read = kv.get("k", { signal: readAbort.signal }).catch((error: unknown) => error);
      await silent.came;
      readAbort.abort(new Error("read abandoned"));
      expect(((await read) as Error).message).toBe("read abandoned");

      const again = silentListener();
      try {
        const writer = createClient({ endpoints: [again.url], timeoutMs: 60_000 });
        const writeAbort = new AbortController();
        const write = writer.put("k", "v", { signal: writeAbort.signal, idempotencyKey: "resend-me" }).catch((error: unknown) => error);
        await again.came;
        writeAbort.abort(new Error("write abandoned"));
        const error = await write;
        expect(error).toBeInstanceOf(UnknownOutcomeError);
        expect((error as UnknownOutcomeError).idempotencyKey).toBe("resend-me");
        expect((error as UnknownOutcomeError).message).toContain("the call's signal aborted it");
      } finally {
        again.listener.stop(true);
      }
    } finally {
      silent.listener.stop(true);
    }
  });

  test("a write aborted while no endpoint took its connection rejects with the reason: nothing was sent", async () => {
    const abort = new AbortController();
    // Aborted as the first connection is refused (this reaction runs before the client's own).
    const refusing = ((url: string, init?: RequestInit) => {
      const sent = fetch(url, init);
      sent.catch(() => abort.abort(new Error("gave up")));
      return sent;
    }) as unknown as typeof fetch;
    const kv = createClient({ endpoints: [closedPortUrl()], timeoutMs: 60_000, fetch: refusing });
    const write = await kv.put("k", "v", { signal: abort.signal }).catch((error: unknown) => error);
    expect((write as Error).message).toBe("gave up");
  });

  test("a call's timeoutMs replaces the client's, longer or shorter; one that is no whole number of ms is bad_request", async () => {
    const kv = createClient({ endpoints: [closedPortUrl()], timeoutMs: 100 });
    const longer = (await kv.get("k", { timeoutMs: 700 }).catch((error: unknown) => error)) as KvClientError;
    expect([longer.code, longer.message]).toEqual(["unreachable", expect.stringContaining("within 700 ms")]);
    const slow = createClient({ endpoints: [closedPortUrl()], timeoutMs: 60_000 });
    const shorter = (await slow.put("k", "v", { timeoutMs: 200 }).catch((error: unknown) => error)) as KvClientError;
    expect([shorter.code, shorter.message]).toEqual(["unreachable", expect.stringContaining("within 200 ms")]);
    for (const timeoutMs of [0, -1, 1.5, Number.NaN]) {
      const bad = (await kv.get("k", { timeoutMs }).catch((error: unknown) => error)) as KvClientError;
      expect([timeoutMs, bad.code]).toEqual([timeoutMs, "bad_request"]);
    }
  });

  test("an abort ends the call at once, not after the pass's backoff: a 429's Retry-After of 60 s is not waited out (found in review: 5 s after the abort)", async () => {
    const silent = silentListener();
    const busy = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ error: "overloaded", message: "busy" }, { status: 429, headers: { "retry-after": "60" } }) });
    try {
      // The busy node is asked first (a rotation), the silent one last: the abort comes during the pass's last attempt.
      const kv = createClient({ endpoints: [`http://127.0.0.1:${busy.port}`, silent.url], timeoutMs: 120_000 });
      const abort = new AbortController();
      const read = kv.get("k", { signal: abort.signal }).catch((error: unknown) => error);
      await silent.came;
      abort.abort(new Error("no more"));
      expect(((await read) as Error).message).toBe("no more");
    } finally {
      busy.stop(true);
      silent.listener.stop(true);
    }
  });

  test("a call's own budget does not cut its attempts to a quarter of it: a node answering in 150 ms serves a call of 400 ms (found in review: unreachable, and a put of unknown outcome)", async () => {
    const slow = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        await Bun.sleep(150); // a slow but healthy node
        if (request.method === "PUT") return Response.json({ key: "k", version: 7 });
        return new Response("v", { headers: { "x-kv-version": "7" } });
      },
    });
    try {
      const kv = createClient({ endpoints: [`http://127.0.0.1:${slow.port}`] });
      expect((await kv.get("k", { timeoutMs: 400 }))?.text).toBe("v");
      expect((await kv.put("k", "v", { timeoutMs: 400 })).version).toBe(7);
    } finally {
      slow.stop(true);
    }
  });

  test("a deletePrefix aborted between its requests, after some applied, says how many keys went (found in review: the signal's reason read as nothing deleted)", async () => {
    const abort = new AbortController();
    const { node, requests } = deletingNode((n) => Response.json({ deleted: 1000, more: true, version: 40 + n }));
    try {
      const kv = createClient({ endpoints: [`http://127.0.0.1:${node.port}`] });
      const error = (await kv
        .deletePrefix("p/", { signal: abort.signal, onProgress: (deleted) => deleted >= 2000 && abort.abort(new Error("enough")) })
        .catch((thrown: unknown) => thrown)) as KvClientError;
      expect(error).toBeInstanceOf(KvClientError);
      expect([error.code, error.details]).toEqual(["aborted", { deleted: 2000, version: 42 }]);
      expect(requests()).toBe(2);
    } finally {
      node.stop(true);
    }
  });

  test("a deletePrefix refused or of unknown outcome after requests that applied says how many keys went, as a partial outcome (found in a code review: a refusal read as nothing deleted, and an unknown outcome said to resend under a key deletePrefix takes none of)", async () => {
    for (const [status, code, cause] of [
      [503, "no_leader", "no_leader"],
      [409, "upgrade_required", "upgrade_required"],
      [503, "timeout", "unknown_outcome"],
    ] as const) {
      const { node } = deletingNode((n) => (n === 1 ? Response.json({ deleted: 1000, more: true, version: 41 }) : Response.json({ error: code, message: "no", retryAfterS: 0 }, { status })));
      try {
        const kv = createClient({ endpoints: [`http://127.0.0.1:${node.port}`], timeoutMs: 300 });
        const error = (await kv.deletePrefix("p/").catch((thrown: unknown) => thrown)) as KvClientError;
        expect(error).toBeInstanceOf(KvClientError);
        // One of the client's own codes, by its type too (found in a code review: ClientSideCode had no "partial").
        const partial: ClientSideCode = "partial";
        expect([error.code, error.details]).toEqual([partial, { deleted: 1000, version: 41, cause }]);
        expect(error.message).toContain("deletePrefix deleted 1000 keys under the prefix in 1 requests (up to version 41)");
        expect(error.message).toContain("call it again to delete what is left");
      } finally {
        node.stop(true);
      }
    }
  });

  test("a write refused by a node this process had a connection with is of unknown outcome: Bun's fetch sent it again on a new connection when the kept-alive one closed under it, and reported only the refusal (found in a black-box review: a put reported refused was applied)", async () => {
    for (const aborting of [false, true]) {
      let received = 0;
      // Reads the put, then dies without answering: it stops listening and closes every connection.
      const dying = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        async fetch(request) {
          if (request.method === "GET") return new Response("v", { headers: { "x-kv-version": "1" } });
          received++;
          await request.arrayBuffer();
          dying.stop(true);
          return new Promise<Response>(() => {});
        },
      });
      const kv = createClient({ endpoints: [`http://127.0.0.1:${dying.port}`], timeoutMs: 1_000 });
      expect((await kv.get("k"))?.text).toBe("v"); // a kept-alive connection to it now
      const abort = new AbortController();
      const put = kv.put("k", "v2", { idempotencyKey: "sent-once", ...(aborting ? { signal: abort.signal } : {}) }).catch((error: unknown) => error);
      if (aborting) {
        await until(() => received > 0, "the put to arrive");
        abort.abort(new Error("gave up"));
      }
      const error = await put;
      expect([aborting, received]).toEqual([aborting, 1]);
      expect(error).toBeInstanceOf(UnknownOutcomeError);
      expect((error as UnknownOutcomeError).idempotencyKey).toBe("sent-once");
    }
  });

  test("a write refused by a node whose last answer is older than the window is refused for certain again: unreachable, and a no_leader answer elsewhere is said as such (found in review: the mark never expired)", async () => {
    const members = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("v", { headers: { "x-kv-version": "1" } }) });
    const goneUrl = `http://127.0.0.1:${members.port}`;
    const noLeader = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ error: "no_leader", message: "electing" }, { status: 503 }) });
    try {
      const transport = new Transport({ endpoints: [goneUrl, `http://127.0.0.1:${noLeader.port}`], authToken: undefined, timeoutMs: 300, attemptTimeoutMs: 300, globalFetch: true, resentWithinMs: 50 });
      await transport.send({ method: "GET", path: "/kv/k", safety: "read" });
      members.stop(true);
      const put = { method: "PUT" as const, path: "/kv/k", body: "v", headers: { "idempotency-key": "k1" }, safety: "idempotent" as const, idempotencyKey: "k1" };
      // Within the window: the refusal may follow a copy sent on the kept-alive connection.
      expect(await transport.send(put).catch((error: unknown) => error)).toBeInstanceOf(UnknownOutcomeError);
      await Bun.sleep(100); // the condition is time itself: past the 50 ms window
      const after = (await transport.send(put).catch((error: unknown) => error)) as KvClientError;
      expect(after).toBeInstanceOf(KvClientError);
      expect(after.code).toBe("no_leader");
    } finally {
      members.stop(true);
      noLeader.stop(true);
    }
  });

  test("a membership change goes on a connection of its own: refused there by a node this process knew, it certainly did not arrive, and the next endpoint is asked", async () => {
    let asked = 0;
    const members = () => Response.json({ members: [], leaderId: 1, configIndex: 3 });
    const gone = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: members });
    const live = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => {
        asked++;
        return members();
      },
    });
    try {
      // Answered by the first (the process's connections are shared by its clients): a kept-alive connection to it.
      const goneUrl = `http://127.0.0.1:${gone.port}`;
      await createClient({ endpoints: [goneUrl] }).members();
      gone.stop(true);
      const kv = createClient({ endpoints: [goneUrl, `http://127.0.0.1:${live.port}`] });
      expect((await kv.membership.add({ id: 4, peerUrl: "http://127.0.0.1:5004" })).configIndex).toBe(3);
      expect(asked).toBe(1);
    } finally {
      gone.stop(true);
      live.stop(true);
    }
  });

  test("a listing's pages and a deletePrefix's requests take the call's signal", async () => {
    const kv = createClient({ endpoints: [closedPortUrl()] });
    const reason = new Error("stop");
    const pages = kv.list("p", { signal: AbortSignal.abort(reason) });
    expect(await pages.next().catch((error: unknown) => error)).toBe(reason);
    expect(await kv.deletePrefix("p", { signal: AbortSignal.abort(reason) }).catch((error: unknown) => error)).toBe(reason);
  });
});

/** A node that answers its nth request (1, 2, ...) with `answer(n)`; `requests()` counts them. */
function deletingNode(answer: (n: number) => Response): { node: ReturnType<typeof Bun.serve>; requests: () => number } {
  let requests = 0;
  const node = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => answer(++requests) });
  return { node, requests: () => requests };
}
