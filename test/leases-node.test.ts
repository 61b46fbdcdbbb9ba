// Proves leases on a real three-node cluster in memory (simulated clock): grants go through the log with short TTLs raised to the minimum, keepalives keep a lease alive on the leader, an expired lease's keys all go at one version with watch reason lease_expired on every node, a revoke deletes at one version with reason delete, thousands of leases expire in bounded batches without a leader change, a new leader restarts every countdown at its full TTL, and the HTTP routes answer every case (200, 400, 404 lease_not_found, 307 from a follower).
import { afterEach, describe, expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { instrumentNode } from "../src/http/node-metrics.ts";
import { createMetricsRegistry } from "../src/lib/metrics.ts";
import type { WatchItem, WatchSubscription } from "../src/node/api.ts";
import { createMemoryCluster, type MemoryCluster, tickMs } from "./helpers/memory-cluster.ts";

const text = (value: string) => new TextEncoder().encode(value);
let cluster: MemoryCluster | undefined;
afterEach(() => {
  for (const id of [...(cluster?.nodes.keys() ?? [])]) cluster?.stop(id);
  cluster = undefined;
});

/** The memory cluster's nodes: electionTicks 10 of 10 ms, so the shortest lease is 2 × 2 × 10 × 10 = 400 ms. */
const ttlMinMs = 400;

async function started(): Promise<{ c: MemoryCluster; leaderId: number; followers: number[] }> {
  const c = createMemoryCluster();
  cluster = c;
  await c.until(() => c.leader() !== undefined);
  const leaderId = c.leader()!.status().id;
  return { c, leaderId, followers: [1, 2, 3].filter((id) => id !== leaderId) };
}

/** Advances the simulated clock by `ms`, settling every tick. */
async function advance(c: MemoryCluster, ms: number): Promise<void> {
  for (let elapsed = 0; elapsed < ms; elapsed += tickMs) {
    c.clock.advance(tickMs);
    await c.settle();
  }
}

/** Items from `subscription` until `changes` changes came. */
async function collect(c: MemoryCluster, subscription: WatchSubscription, changes: number): Promise<WatchItem[]> {
  const items: WatchItem[] = [];
  while (items.filter((item) => item.type === "change").length < changes) {
    const next = await c.drive(subscription.next());
    if (next === undefined) break;
    items.push(...next);
  }
  return items;
}

const deletes = (items: WatchItem[]) =>
  items.flatMap((item) => (item.type === "change" && item.change.kind === "delete" ? [`${item.change.key} @${item.change.version} ${item.change.reason}`] : []));

describe("leases on a cluster", () => {
  test("a grant goes through the log (short TTLs raised); keepalives keep it; once they stop, its keys go at one version, reason lease_expired, on every node", async () => {
    const { c, leaderId, followers } = await started();
    const leader = c.node(leaderId);
    expect(await c.drive(leader.grantLease(100))).toMatchObject({ ttlMs: ttlMinMs, raisedFromMs: 100 });
    const lease = await c.drive(leader.grantLease(1_000));
    expect(lease).toEqual({ id: expect.any(Number), ttlMs: 1_000 });
    // Every replica applied the grant: it is in the log, not only on the leader.
    await c.until(() => followers.every((id) => c.node(id).leaseStats().leases === 2));

    const watchers = await Promise.all([leaderId, ...followers].map((id) => c.drive(c.node(id).watch({ prefix: "svc/" }, "now"))));
    await c.drive(leader.put("svc/a", text("1"), { lease: lease.id }));
    await c.drive(leader.put("svc/b", text("2"), { lease: lease.id }));
    await c.drive(leader.put("svc/plain", text("3")));
    const info = await c.drive(leader.leaseInfo(lease.id));
    expect(info).toMatchObject({ id: lease.id, ttlMs: 1_000, keys: ["svc/a", "svc/b"], keysTruncated: false });
    expect(info.remainingMs).toBeGreaterThan(700); // three writes took a few ticks since the grant
    expect(info.remainingMs).toBeLessThanOrEqual(1_000);

    // Kept alive every 600 ms for 3 s: three TTLs, and the keys are still there.
    for (let i = 0; i < 5; i++) {
      await advance(c, 600);
      expect(await c.drive(leader.keepAliveLease(lease.id))).toEqual({ id: lease.id, ttlMs: 1_000 });
    }
    expect(leader.status().leaderId).toBe(leaderId);
    expect((await c.drive(leader.get("svc/a", "linearizable")))?.version).toBeGreaterThan(0);

    // Left alone, it runs out within its TTL (plus a few ticks to commit the expiry).
    await advance(c, 900);
    expect(leader.status().leaderId).toBe(leaderId);
    expect(await c.drive(leader.get("svc/a", "linearizable"))).toBeDefined();
    await c.until(() => [leaderId, ...followers].every((id) => c.storages.get(id)!.get("svc/a") === undefined), 20);
    for (const id of [leaderId, ...followers]) {
      expect(c.storages.get(id)!.get("svc/b")).toBeUndefined();
      expect(c.storages.get(id)!.get("svc/plain")).toBeDefined();
    }
    await expect(c.drive(leader.keepAliveLease(lease.id))).rejects.toMatchObject({ code: "lease_not_found" });
    for (const watcher of watchers) {
      const items = await collect(c, watcher, 5);
      const gone = deletes(items);
      expect(gone.length).toBe(2);
      const version = Number(gone[0]!.split(" @")[1]!.split(" ")[0]);
      expect(gone).toEqual([`svc/a @${version} lease_expired`, `svc/b @${version} lease_expired`]);
      watcher.close();
    }
    expect(leader.leaseStats()).toEqual({ leases: 0, expiredTotal: 2 }); // the 400 ms lease, never kept alive, went first
  });

  test("a put on an unknown lease writes nothing; revoke deletes its keys at one version, reason delete; unknown ids are lease_not_found", async () => {
    const { c, leaderId } = await started();
    const leader = c.node(leaderId);
    await c.drive(leader.put("k", text("before")));
    await expect(c.drive(leader.put("k", text("after"), { lease: 987654 }))).rejects.toMatchObject({ code: "lease_not_found" });
    expect(new TextDecoder().decode((await c.drive(leader.get("k", "linearizable")))!.value)).toBe("before");

    const lease = await c.drive(leader.grantLease(5_000));
    const watcher = await c.drive(leader.watch({ prefix: "r/" }, "now"));
    await c.drive(leader.put("r/1", text("a"), { lease: lease.id }));
    await c.drive(leader.put("r/2", text("b"), { lease: lease.id }));
    const revoked = await c.drive(leader.revokeLease(lease.id));
    expect(revoked).toEqual({ id: lease.id, version: expect.any(Number), deletedKeys: 2 });
    expect(deletes(await collect(c, watcher, 4))).toEqual([`r/1 @${revoked.version} delete`, `r/2 @${revoked.version} delete`]);
    watcher.close();
    const calls: (() => Promise<unknown>)[] = [() => leader.revokeLease(lease.id), () => leader.keepAliveLease(lease.id), () => leader.leaseInfo(lease.id)];
    for (const call of calls) {
      await expect(c.drive(call())).rejects.toMatchObject({ code: "lease_not_found" });
    }
    // The reserved space stays closed to clients.
    await expect(c.drive(leader.list("\u0000lease/", undefined, 10, "linearizable"))).rejects.toMatchObject({ code: "bad_request" });
    expect(() => leader.put("\u0000lease/l/1", text("x"))).toThrow("reserved");
    // A watch on a reserved prefix is refused as a listing is (it was served, with progress events only; found in a black-box review).
    await expect(c.drive(leader.watch({ prefix: "\u0000session/" }, { from: 1 }))).rejects.toMatchObject({ code: "bad_request" });
  });

  test("followers serve no lease calls: not_leader naming the leader", async () => {
    const { c, leaderId, followers } = await started();
    const lease = await c.drive(c.node(leaderId).grantLease(1_000));
    const follower = c.node(followers[0]!);
    const calls: (() => Promise<unknown>)[] = [() => follower.grantLease(1_000), () => follower.keepAliveLease(lease.id), () => follower.leaseInfo(lease.id), () => follower.revokeLease(lease.id)];
    for (const call of calls) {
      await expect(c.drive(call())).rejects.toMatchObject({ code: "not_leader", details: { leaderId } });
    }
  });

  test("thousands of leases running out together expire in bounded batches, with no leader change", async () => {
    const { c, leaderId, followers } = await started();
    const leader = c.node(leaderId);
    const count = 2_000;
    // In rounds of 500: the cluster's nodes take 1,000 requests waiting at most. Each round's keys are
    // attached at once, so every lease counts down from about the same time.
    const leases: { id: number }[] = [];
    for (let round = 0; round < count / 500; round++) {
      const granted = await c.drive(Promise.all(Array.from({ length: 500 }, () => leader.grantLease(ttlMinMs))));
      await c.drive(Promise.all(granted.map((lease) => leader.put(`many/${leases.length + granted.indexOf(lease)}`, text("v"), { lease: lease.id }))));
      leases.push(...granted);
    }
    expect(new Set(leases.map((lease) => lease.id)).size).toBe(count);
    const watcher = await c.drive(c.node(followers[0]!).watch({ prefix: "many/" }, "now"));
    const term = leader.status().term;
    await c.until(() => leader.leaseStats().leases === 0, 100);
    expect(leader.status()).toMatchObject({ role: "leader", term });
    expect(leader.list("many/", undefined, 10, "stale")).resolves.toEqual([]);
    const items = await collect(c, watcher, count);
    const versions = new Set(items.flatMap((item) => (item.type === "change" ? [item.change.version] : [])));
    // 250 ids per expire command at most: at least eight entries, each deleting its leases' keys together.
    expect(versions.size).toBeGreaterThanOrEqual(count / 250);
    expect(items.filter((item) => item.type === "change" && item.change.kind === "delete" && item.change.reason === "lease_expired").length).toBe(count);
    watcher.close();
    expect(leader.leaseStats().expiredTotal).toBe(count);
  });

  test("a new leader restarts every countdown at its full TTL: a failover makes a lease last longer, never shorter", async () => {
    const { c, leaderId, followers } = await started();
    const oldLeader = c.node(leaderId);
    const lease = await c.drive(oldLeader.grantLease(1_000));
    await c.drive(oldLeader.put("held", text("x"), { lease: lease.id }));
    await c.until(() => followers.every((id) => c.storages.get(id)!.get("held") !== undefined));
    await advance(c, 700); // 300 ms were left on the old leader's countdown
    c.stop(leaderId);
    await c.until(() => c.leader() !== undefined);
    const newLeader = c.leader()!;
    const electedAtMs = c.clock.nowMs();
    expect(followers).toContain(newLeader.status().id);
    const info = await c.drive(newLeader.leaseInfo(lease.id));
    expect(info.remainingMs).toBeGreaterThan(1_000 - 100);
    // Past the old deadline, and nearly a full TTL after the election, the key is still there.
    await advance(c, 1_000 - 50 - (c.clock.nowMs() - electedAtMs));
    expect(c.storages.get(newLeader.status().id)!.get("held")).toBeDefined();
    await c.until(() => c.storages.get(newLeader.status().id)!.get("held") === undefined, 30);
  });
});

describe("a keepalive of a lease run out whose expiry never applies (found in a review: it was 404, and the lease lived on)", () => {
  /** A lease with a key, 30 ms left on the leader's countdown, as a transfer to a paused target begins: the expiry is refused. */
  async function runOutDuringTransfer() {
    const { c, leaderId } = await started();
    const oldLeader = c.node(leaderId);
    const target = [1, 2, 3].find((id) => id !== leaderId)!;
    const lease = await c.drive(oldLeader.grantLease(1_000));
    await c.drive(oldLeader.put("held", text("x"), { lease: lease.id }));
    await c.until(() => c.storages.get(target)!.get("held") !== undefined);
    await advance(c, 900);
    await advance(c, (await c.drive(oldLeader.leaseInfo(lease.id))).remainingMs - 30);
    c.pause(target);
    oldLeader.transferLeadership(target).catch(() => undefined);
    await advance(c, 40);
    return { c, leaderId, oldLeader, target, lease };
  }

  test("waits: once the leadership moved it is not_leader (or no_leader), and the new leader, counting the lease from its full TTL, keeps it alive", async () => {
    const { c, leaderId, oldLeader, target, lease } = await runOutDuringTransfer();
    let answer: unknown;
    const keepalive = oldLeader.keepAliveLease(lease.id).then(
      (kept) => (answer = kept),
      (error: unknown) => (answer = error),
    );
    await advance(c, 20);
    expect(answer).toBeUndefined(); // waiting: the lease is not gone, nor known to live on
    c.resume(target);
    await c.until(() => c.leader() !== undefined && c.leader()!.status().id !== leaderId, 200);
    await c.drive(keepalive);
    expect(["not_leader", "no_leader"]).toContain(String((answer as { code?: string }).code));
    const newLeader = c.leader()!;
    expect(await c.drive(newLeader.keepAliveLease(lease.id))).toEqual({ id: lease.id, ttlMs: 1_000 });
    expect(c.storages.get(newLeader.status().id)!.get("held")).toBeDefined();
  });

  test("waits: once the expiry applies, 404 lease_not_found, the key gone", async () => {
    const { c, oldLeader, target, lease } = await runOutDuringTransfer();
    let answer: unknown;
    const keepalive = oldLeader.keepAliveLease(lease.id).then(
      (kept) => (answer = kept),
      (error: unknown) => (answer = error),
    );
    // The transfer gives up (its target stays paused), and the expiry, proposed again, applies.
    await c.until(() => answer !== undefined, 400);
    await c.drive(keepalive);
    expect((answer as { code?: string }).code).toBe("lease_not_found");
    expect(c.storages.get(oldLeader.status().id)!.get("held")).toBeUndefined();
    c.resume(target);
  });
});

describe("lease routes over a cluster", () => {
  test("the instrumented node serves the lease routes and exports kv_leases and kv_lease_expired_total", async () => {
    const { c, leaderId } = await started();
    const registry = createMetricsRegistry();
    const app = createHttpApp(instrumentNode(c.node(leaderId), registry, { clusterId: "c", version: "0" }).node, { renderMetrics: () => registry.render() });
    const metric = async (name: string) => new RegExp(`^${name} (\\d+)$`, "m").exec(await (await c.drive(app.handle(new Request("http://localhost/metrics")))).text())?.[1];
    expect([await metric("kv_leases"), await metric("kv_lease_expired_total")]).toEqual(["0", "0"]);
    for (let i = 0; i < 3; i++) {
      const response = await c.drive(app.handle(new Request("http://localhost/leases", { method: "POST", body: JSON.stringify({ ttlMs: ttlMinMs }) })));
      expect(response.status).toBe(200);
    }
    expect(await metric("kv_leases")).toBe("3");
    await c.until(() => c.node(leaderId).leaseStats().leases === 0, 100);
    expect([await metric("kv_leases"), await metric("kv_lease_expired_total")]).toEqual(["0", "3"]);
  });


  test("grant, put ?lease, read, keepalive, revoke; every error: 400, 404 lease_not_found, 307 from a follower", async () => {
    const { c, leaderId, followers } = await started();
    const app = createHttpApp(c.node(leaderId));
    const followerApp = createHttpApp(c.node(followers[0]!));
    const call = async (target: typeof app, method: string, path: string, body?: string) => {
      const response = await c.drive(target.handle(new Request(`http://localhost${path}`, { method, ...(body === undefined ? {} : { body }) })));
      return { status: response.status, json: (await response.json().catch(() => null)) as Record<string, unknown> | null, location: response.headers.get("location") };
    };

    const granted = await call(app, "POST", "/leases", '{"ttlMs": 150}');
    expect(granted.status).toBe(200);
    expect(granted.json).toEqual({ id: expect.stringMatching(/^[1-9][0-9]*$/), ttlMs: ttlMinMs, raisedFromMs: 150 });
    const plain = await call(app, "POST", "/leases", '{"ttlMs": 60000}');
    expect(plain.json).toEqual({ id: expect.any(String), ttlMs: 60_000 });
    const id = plain.json!.id as string;

    // HEAD says how long GET's body is (found in a black-box review: HEAD /leases/{id} said 0).
    for (const path of [`/leases/${id}`, "/leases"]) {
      const body = await (await c.drive(app.handle(new Request(`http://localhost${path}`)))).arrayBuffer();
      const head = await c.drive(app.handle(new Request(`http://localhost${path}`, { method: "HEAD" })));
      expect([path, head.status, head.headers.get("content-length")]).toEqual([path, 200, String(body.byteLength)]);
      expect((await head.arrayBuffer()).byteLength).toBe(0);
    }

    for (const body of ["not json", "{}", '{"ttlMs": "5"}', '{"ttlMs": 1.5}', '{"ttlMs": 0}', '{"ttlMs": -4}', '{"ttlMs": 1e300}', "[]", '{"ttlMs": 99999999999999}', '{"ttlMs": 60000, "ttl": 5}']) {
      const bad = await call(app, "POST", "/leases", body);
      expect([body, bad.status, bad.json?.error]).toEqual([body, 400, "bad_request"]);
      expect(typeof bad.json?.message).toBe("string");
    }
    expect((await call(app, "POST", "/leases", '{"ttlMs": 1e400}')).json?.message).toContain("got Infinity");
    // A field given twice was granted with the last value (found in a black-box review).
    expect((await call(app, "POST", "/leases", '{"ttlMs": 1000, "ttlMs": 2000}')).json).toEqual({ error: "bad_request", message: "the body gives 'ttlMs' twice in one object" });
    expect((await call(app, "POST", "/leases?ttlMs=5", '{"ttlMs": 60000}')).status).toBe(400);
    expect((await call(app, "POST", `/leases/${id}/keepalive?x=1`)).status).toBe(400);
    for (const path of ["/leases/0", "/leases/abc", "/leases/-1", "/leases/99999999999999999999", "/leases/1.5/keepalive"]) {
      // keepalive is POST only: a GET there is a 405 (Allow: POST) before its id is looked at.
      expect([path, (await call(app, path.endsWith("/keepalive") ? "POST" : "GET", path)).status]).toEqual([path, 400]);
    }
    expect((await call(app, "PUT", `/kv/a?lease=x`, "v")).status).toBe(400);
    expect((await call(app, "PUT", `/kv/a?lease=${id}&lease=${id}`, "v")).status).toBe(400);
    expect((await call(app, "DELETE", `/kv/a?lease=${id}`)).status).toBe(400);

    const missing = await call(app, "PUT", "/kv/a?lease=424242", "v");
    expect([missing.status, missing.json?.error]).toEqual([404, "lease_not_found"]);
    expect((await call(app, "GET", "/kv/a")).status).toBe(404);
    for (const [method, path] of [["GET", "/leases/424242"], ["POST", "/leases/424242/keepalive"], ["DELETE", "/leases/424242"]] as const) {
      const answer = await call(app, method, path);
      expect([method, answer.status, answer.json?.error]).toEqual([method, 404, "lease_not_found"]);
    }

    expect((await call(app, "PUT", `/kv/a?lease=${id}`, "v")).status).toBe(200);
    const info = await call(app, "GET", `/leases/${id}`);
    expect(info.json).toMatchObject({ id, ttlMs: 60_000, keys: ["a"], keysTruncated: false });
    expect(await call(app, "POST", `/leases/${id}/keepalive`)).toMatchObject({ status: 200, json: { id, ttlMs: 60_000 } });

    for (const [method, path, body] of [["POST", "/leases", '{"ttlMs": 1000}'], ["POST", `/leases/${id}/keepalive`], ["GET", `/leases/${id}`], ["DELETE", `/leases/${id}`]] as const) {
      const redirected = await call(followerApp, method, path, body);
      expect([method, path, redirected.status, redirected.location]).toEqual([method, path, 307, `http://node-${leaderId}${path}`]);
    }
    expect((await call(app, "PATCH", `/leases/${id}`)).status).toBe(405);
    expect((await call(app, "PUT", "/leases")).status).toBe(405);

    const revoked = await call(app, "DELETE", `/leases/${id}`);
    expect(revoked.json).toEqual({ id, version: expect.any(Number), deletedKeys: 1 });
    expect((await call(app, "GET", "/kv/a")).status).toBe(404);
  });

  test("GET /leases pages through every lease in the order of the ids' text, with the leader's countdowns; a revoked one is gone; bad queries 400, followers 307", async () => {
    const { c, leaderId, followers } = await started();
    const app = createHttpApp(c.node(leaderId));
    const call = async (target: typeof app, path: string, method = "GET") => {
      const response = await c.drive(target.handle(new Request(`http://localhost${path}`, { method })));
      return { status: response.status, json: (await response.json().catch(() => null)) as Record<string, unknown> | null, location: response.headers.get("location") };
    };
    expect((await call(app, "/leases")).json).toEqual({ leases: [], more: false });
    // Ids are grants' Raft indexes: twelve grants on a fresh cluster cross from one digit to two.
    const granted: string[] = [];
    for (let i = 0; i < 12; i++) {
      const response = await c.drive(app.handle(new Request("http://localhost/leases", { method: "POST", body: JSON.stringify({ ttlMs: 60_000 + i }) })));
      granted.push(((await response.json()) as { id: string }).id);
    }
    expect(granted.some((id) => id.length === 1) && granted.some((id) => id.length === 2)).toBe(true);

    await advance(c, 100);
    const pages: Record<string, unknown>[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await call(app, `/leases?limit=5${after === undefined ? "" : `&after=${after}`}`);
      expect(page.status).toBe(200);
      pages.push(page.json!);
      const leases = page.json!.leases as { id: string }[];
      if (page.json!.more !== true) break;
      after = leases[leases.length - 1]!.id;
    }
    expect(pages.map((page) => (page.leases as unknown[]).length)).toEqual([5, 5, 2]);
    const listed = pages.flatMap((page) => page.leases as { id: string; ttlMs: number; remainingMs: number }[]);
    // The order of the ids' decimal text ("10" before "9"), every lease once.
    expect(listed.map((lease) => lease.id)).toEqual([...granted].sort());
    for (const lease of listed) {
      expect(lease.ttlMs).toBe(60_000 + granted.indexOf(lease.id));
      expect(lease.remainingMs).toBeGreaterThan(lease.ttlMs - 1_000);
      expect(lease.remainingMs).toBeLessThan(lease.ttlMs);
    }

    const gone = granted[3]!;
    expect((await call(app, `/leases/${gone}`, "DELETE")).status).toBe(200);
    const all = await call(app, "/leases?limit=1000");
    expect((all.json!.leases as { id: string }[]).map((lease) => lease.id)).toEqual(granted.filter((id) => id !== gone).sort());
    expect(all.json!.more).toBe(false);

    for (const query of ["limit=0", "limit=1001", "limit=x", "after=0", "after=abc", "after=-1", "x=1", "after=%ff"]) {
      const bad = await call(app, `/leases?${query}`);
      expect([query, bad.status, bad.json?.error]).toEqual([query, 400, "bad_request"]);
    }
    const redirected = await call(createHttpApp(c.node(followers[0]!)), "/leases?limit=3");
    expect([redirected.status, redirected.location]).toEqual([307, `http://node-${leaderId}/leases?limit=3`]);
  });
});
