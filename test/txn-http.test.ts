// Proves POST /txn over a real three-node cluster in memory: it answers which branch ran at which version with one result per operation, refuses every malformed or oversized request with 400/413 and applies nothing, answers 307 on a follower, honours Idempotency-Key (a retry gets the first answer, a reuse 422), and a watcher receives all of a transaction's changes together at its one version.
import { afterEach, describe, expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { isPaddedBase64, txnBodyBytesMax } from "../src/http/txn-route.ts";
import { createPrng } from "../src/lib/prng.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { txnSessionGetBytesMax } from "../src/kv/txn.ts";
import type { WatchItem } from "../src/node/api.ts";
import { createMemoryCluster, type MemoryCluster, tickMs } from "./helpers/memory-cluster.ts";
import { serverClusterForSuite } from "./helpers/server-cluster.ts";

let cluster: MemoryCluster | undefined;
afterEach(() => {
  for (const id of [...(cluster?.nodes.keys() ?? [])]) cluster?.stop(id);
  cluster = undefined;
});

const limits = { keyBytesMax: 64, valueBytesMax: 1024 };

async function started() {
  const c = createMemoryCluster();
  cluster = c;
  // Once the first leader's cluster nonce applied, only what a test sends is proposed.
  await c.until(() => c.leader()?.clusterNonce() !== undefined);
  const leaderId = c.leader()!.status().id;
  const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
  const apps = new Map([1, 2, 3].map((id) => [id, createHttpApp(c.node(id), limits)] as const));
  const call = (id: number, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    c.drive(
      apps.get(id)!.handle(
        new Request(`http://localhost${path}`, {
          method,
          ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
          headers,
        }),
      ),
    );
  const txn = (body: unknown, headers: Record<string, string> = {}) => call(leaderId, "POST", "/txn", body, headers);
  return { c, leaderId, followerId, call, txn };
}

describe("POST /txn", () => {
  test("a key longer than --key-bytes-max, written under a higher limit, can be compared, read and deleted; not written (found in a black-box review)", async () => {
    const { c, leaderId, txn } = await started();
    const long = "k".repeat(100);
    await c.drive(c.node(leaderId).put(long, new TextEncoder().encode("old")));
    const response = await txn({ compare: [{ key: long, value: "old" }], success: [{ get: { key: long } }, { delete: { key: long } }] });
    expect(response.status).toBe(200);
    const answer = (await response.json()) as { succeeded: boolean; results: unknown[] };
    expect(answer.succeeded).toBe(true);
    expect(answer.results).toEqual([{ get: { key: long, found: true, value: "old", version: expect.any(Number) } }, { delete: { key: long, deleted: true } }]);
    expect(await c.drive(c.node(leaderId).get(long, "linearizable"))).toBeUndefined();
    const refused = await txn({ success: [{ put: { key: long, value: "new" } }] });
    expect(refused.status).toBe(413);
  });

  test("the success branch runs at one version, with one result per operation; values come back as text or base64", async () => {
    const { c, leaderId, call, txn } = await started();
    const put = (await (await call(leaderId, "PUT", "/kv/gone", "x")).json()) as { version: number };
    const response = await txn({
      compare: [
        { key: "gone", version: put.version },
        { key: "gone", value: "x" },
        { key: "new", exists: false },
      ],
      success: [
        { put: { key: "new", value: "hello" } },
        { put: { key: "bin", value: { base64: "/wA=" } } },
        { delete: { key: "gone" } },
        { delete: { key: "never" } },
        { get: { key: "bin" } },
        { get: { key: "nothing" } },
      ],
      failure: [{ put: { key: "failed", value: "1" } }],
    });
    expect(response.status).toBe(200);
    const answer = (await response.json()) as { succeeded: boolean; version: number; results: unknown[] };
    const version = answer.version;
    expect(answer).toEqual({
      succeeded: true,
      version,
      results: [
        { put: { key: "new", version } },
        { put: { key: "bin", version } },
        { delete: { key: "gone", deleted: true } },
        { delete: { key: "never", deleted: false } },
        { get: { key: "bin", found: true, value: { base64: "/wA=" }, version } },
        { get: { key: "nothing", found: false } },
      ],
    });
    expect(version).toBeGreaterThan(put.version);
    // Every replica holds the same outcome, all at that one version.
    await c.until(() => [1, 2, 3].every((id) => c.node(id).status().appliedIndex >= version));
    for (const id of [1, 2, 3]) {
      const storage = c.storages.get(id)!;
      expect([storage.get("new")?.version, storage.get("bin")?.version, storage.get("gone"), storage.get("failed")]).toEqual([version, version, undefined, undefined]);
    }
    const list = (await (await call(leaderId, "GET", "/kv?prefix=")).json()) as { items: unknown[] };
    expect(list.items).toEqual([
      { key: "bin", value: { base64: "/wA=" }, version },
      { key: "new", value: "hello", version },
    ]);
  });

  test("a comparison that does not hold runs the failure branch; an empty transaction succeeds", async () => {
    const { txn } = await started();
    const response = await txn({ compare: [{ key: "k", version: 3 }], success: [{ put: { key: "k", value: "s" } }], failure: [{ get: { key: "k" } }, { put: { key: "f", value: "v" } }] });
    const answer = (await response.json()) as { succeeded: boolean; version: number; results: unknown[] };
    expect(answer).toEqual({ succeeded: false, version: answer.version, results: [{ get: { key: "k", found: false } }, { put: { key: "f", version: answer.version } }] });
    const empty = (await (await txn({})).json()) as { succeeded: boolean; version: number; results: unknown[] };
    expect(empty).toEqual({ succeeded: true, version: empty.version, results: [] });
  });

  test("every malformed, oversized or refused request is a 400 or 413 that says why, and nothing is applied", async () => {
    const { c, leaderId, call, txn } = await started();
    const ops = (n: number) => Array.from({ length: n }, (_, i) => ({ get: { key: `k${i}` } }));
    const cases: [string, unknown, number, string | RegExp][] = [
      ["not JSON", "{nope", 400, /must be JSON/],
      ["not UTF-8 JSON", "\"\\ud800", 400, /must be JSON/],
      ["an array", [], 400, /JSON object/],
      ["an unknown field", { compare: [], then: [] }, 400, /unknown field 'then'/],
      ["a list that is not one", { success: {} }, 400, /'success' must be a list/],
      ["an unknown operation", { success: [{ patch: { key: "a" } }] }, 400, /unknown field 'patch'/],
      ["two operations in one", { success: [{ put: { key: "a", value: "1" }, get: { key: "a" } }] }, 400, /must be one of/],
      ["an empty operation", { success: [{}] }, 400, /must be one of/],
      ["an unknown field in an operation", { success: [{ get: { key: "a", rev: 1 } }] }, 400, /unknown field 'rev'/],
      ["a put without a value", { success: [{ put: { key: "a" } }] }, 400, /needs a 'value'/],
      ["a value that is neither", { success: [{ put: { key: "a", value: 7 } }] }, 400, /string or \{"base64"/],
      ["bad base64", { success: [{ put: { key: "a", value: { base64: "!!" } } }] }, 400, /base64/],
      ["a lone surrogate in a value", '{"success":[{"put":{"key":"a","value":"\\ud800"}}]}', 400, /lone UTF-16 surrogate/],
      ["an empty key", { success: [{ delete: { key: "" } }] }, 400, /non-empty string/],
      ["a comparison with two targets", { compare: [{ key: "a", version: 1, exists: true }] }, 400, /exactly one of/],
      ["a comparison with none", { compare: [{ key: "a" }] }, 400, /exactly one of/],
      ["a negative version", { compare: [{ key: "a", version: -1 }] }, 400, /version number/],
      ["exists that is not a boolean", { compare: [{ key: "a", exists: "no" }] }, 400, /true or false/],
      ["129 operations in all", { compare: [{ key: "a", exists: false }], success: ops(64), failure: ops(64) }, 400, /at most 128 comparisons and operations in all, not 129/],
      ["a reserved key in an operation", { success: [{ put: { key: "\u0000session/x", value: "1" } }] }, 400, /reserved/],
      ["a reserved key in a comparison", { compare: [{ key: "\u0000session/x", exists: false }] }, 400, /reserved/],
      ["a key written twice in a branch", { success: [{ put: { key: "a", value: "1" } }, { delete: { key: "a" } }] }, 400, /more than once/],
      ["a lease id of 0", { success: [{ put: { key: "a", value: "1", lease: "0" } }] }, 400, /success\[0\]\.put\.lease must be a lease id.*got "0"/],
      ["a lease id with a leading zero", { success: [{ put: { key: "a", value: "1", lease: "07" } }] }, 400, /lease must be a lease id/],
      ["a lease id that is not a number", { failure: [{ put: { key: "a", value: "1", lease: "seven" } }] }, 400, /failure\[0\]\.put\.lease must be a lease id/],
      ["a negative lease id", { success: [{ put: { key: "a", value: "1", lease: -3 } }] }, 400, /lease must be a lease id/],
      ["a fractional lease id", { success: [{ put: { key: "a", value: "1", lease: 1.5 } }] }, 400, /lease must be a lease id/],
      ["a lease id past 2^53", { success: [{ put: { key: "a", value: "1", lease: 2 ** 53 } }] }, 400, /lease must be a lease id/],
      ["a lease id as a string past 2^53", { success: [{ put: { key: "a", value: "1", lease: "9007199254740993" } }] }, 400, /lease must be a lease id/],
      ["a lease that is neither", { success: [{ put: { key: "a", value: "1", lease: true } }] }, 400, /lease must be a lease id/],
      ["a key over --key-bytes-max", { success: [{ put: { key: "k".repeat(65), value: "v" } }] }, 413, /65 bytes; the limit is 64/],
      ["a key over the most any limit allows", { success: [{ get: { key: "k".repeat(16_385) } }] }, 413, /16385 bytes; the limit is 16384/],
      ["a value over --value-bytes-max", { success: [{ put: { key: "a", value: "v".repeat(1025) } }] }, 413, /1025 bytes; the limit is 1024/],
      ["a comparison value over it", { compare: [{ key: "a", value: { base64: Buffer.alloc(1025).toString("base64") } }] }, 413, /1025 bytes/],
      ["a branch given twice (JSON.parse kept the last: found in a black-box review)", '{"success":[{"put":{"key":"a","value":"1"}}],"success":[{"put":{"key":"b","value":"2"}}]}', 400, "the body gives 'success' twice in one object"],
      ["brackets nested deep (they held the leader's loop past an election timeout: same review)", "[".repeat(100_000) + "]".repeat(100_000), 400, "the body is nested deeper than 8 levels"],
      ["a wide array", `{"success":[1${",1".repeat(100_000)}]}`, 400, "the body holds more than 2048 values"],
      ["a body over the bound", { success: [{ put: { key: "a", value: "v".repeat(txnBodyBytesMax(1024)) } }] }, 413, `the transaction's body is over the limit of ${txnBodyBytesMax(1024)} bytes`],
    ];
    await c.until(() => c.node(leaderId).status().appliedIndex === c.node(leaderId).status().lastLogIndex);
    const lastIndex = c.node(leaderId).status().lastLogIndex;
    for (const [name, body, status, message] of cases) {
      const response = await txn(body);
      const answer = (await response.json()) as { error: string; message: string };
      expect([name, response.status, answer.error]).toEqual([name, status, status === 400 ? "bad_request" : "too_large"]);
      expect([name, answer.message]).toEqual([name, typeof message === "string" ? message : expect.stringMatching(message)]);
    }
    const wrongMethod = await call(leaderId, "GET", "/txn");
    expect([wrongMethod.status, wrongMethod.headers.get("allow")]).toEqual([405, "POST"]);
    expect((await call(leaderId, "POST", "/txn?x=1", {})).status).toBe(400);
    expect((await txn({}, { "idempotency-key": "k".repeat(257) })).status).toBe(400);
    // Nothing was proposed for any of them.
    await c.settle();
    expect(c.node(leaderId).status().lastLogIndex).toBe(lastIndex);
    expect(c.storages.get(leaderId)!.get("a")).toBeUndefined();
  });

  test("a transaction of gets alone is a linearizable read on the leader: no entry, the version of the state it read, answers as through the log", async () => {
    const { c, leaderId, call, txn } = await started();
    const leader = c.node(leaderId);
    const first = (await (await call(leaderId, "PUT", "/kv/a", "1")).json()) as { version: number };
    const second = (await (await call(leaderId, "PUT", "/kv/b", "2")).json()) as { version: number };
    const before = leader.status().lastLogIndex;
    const body = {
      compare: [{ key: "a", version: first.version }, { key: "gone", exists: false }],
      success: [{ get: { key: "a" } }, { get: { key: "b" } }, { get: { key: "gone" } }],
      failure: [{ get: { key: "b" } }],
    };
    const response = await txn(body);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({
      succeeded: true,
      version: second.version,
      results: [
        { get: { key: "a", found: true, value: "1", version: first.version } },
        { get: { key: "b", found: true, value: "2", version: second.version } },
        { get: { key: "gone", found: false } },
      ],
    });
    const failed = (await (await txn({ ...body, compare: [{ key: "a", version: first.version, op: "!=" }] })).json()) as { succeeded: boolean; version: number; results: unknown[] };
    expect(failed).toEqual({ succeeded: false, version: second.version, results: [{ get: { key: "b", found: true, value: "2", version: second.version } }] });
    expect(leader.status().lastLogIndex).toBe(before);
    // A write after it is seen by the next one, at the write's version.
    const third = (await (await call(leaderId, "PUT", "/kv/a", "3")).json()) as { version: number };
    expect(await (await txn({ success: [{ get: { key: "a" } }] })).json()).toEqual({
      succeeded: true,
      version: third.version,
      results: [{ get: { key: "a", found: true, value: "3", version: third.version } }],
    });
    // An Idempotency-Key changes nothing: a read keeps no session, and is read anew.
    expect((await (await txn({ success: [{ get: { key: "b" } }] }, { "Idempotency-Key": "r1" })).json()) as unknown).toMatchObject({ version: third.version });
    expect(leader.status().lastLogIndex).toBe(third.version);
  });

  test("a leader cut off from the others answers no transaction of gets (it cannot confirm it leads), while they elect another and write", async () => {
    const c = createMemoryCluster({ node: { requestTimeoutMs: 500 } });
    cluster = c;
    await c.until(() => c.leader() !== undefined);
    const old = c.leader()!;
    const oldId = old.status().id;
    await c.drive(old.put("x", new TextEncoder().encode("1")));
    for (const other of [1, 2, 3]) if (other !== oldId) c.network.cutBetween(oldId, other);
    const read = old.txn({ compare: [], success: [{ op: "get", key: "x" }], failure: [] });
    let answered: unknown;
    let refused: unknown;
    read.then(
      (answer) => (answered = answer),
      (error) => (refused = error),
    );
    const newLeader = () => [...c.nodes.values()].find((node) => node.status().id !== oldId && node.status().role === "leader");
    await c.until(() => newLeader() !== undefined);
    await c.drive(newLeader()!.put("x", new TextEncoder().encode("2")));
    await c.until(() => answered !== undefined || refused !== undefined);
    expect(answered).toBeUndefined();
    expect(refused instanceof KvError && ["timeout", "no_leader"].includes(refused.code)).toBe(true);
  });

  test("a follower answers a transaction of gets alone itself, as a linearizable read: the leader's last acknowledged write, no entry; one that writes is 307", async () => {
    const { c, leaderId, followerId, call } = await started();
    // The follower hears of nothing from now on until the read asks: the leader's writes reach only the third node.
    const thirdId = [1, 2, 3].find((id) => id !== leaderId && id !== followerId)!;
    c.network.cutBetween(leaderId, followerId);
    const written = (await (await call(leaderId, "PUT", "/kv/a", "1")).json()) as { version: number };
    expect(c.storages.get(followerId)!.get("a")).toBeUndefined();
    c.network.heal();
    const before = c.node(leaderId).status().lastLogIndex;
    // Its length declared, as clients send it (one without is taken as a large body, redirected unread).
    const body = JSON.stringify({ compare: [{ key: "a", exists: true }], success: [{ get: { key: "a" } }], failure: [] });
    const response = await call(followerId, "POST", "/txn", body, { "content-length": String(body.length) });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ succeeded: true, version: before, results: [{ get: { key: "a", found: true, value: "1", version: written.version } }] });
    expect(c.node(leaderId).status().lastLogIndex).toBe(before);
    expect(c.storages.get(thirdId)!.get("a")?.version).toBe(written.version);
    // One that writes, in either branch, goes to the leader.
    const writes = JSON.stringify({ success: [{ get: { key: "a" } }], failure: [{ delete: { key: "a" } }] });
    const writing = await call(followerId, "POST", "/txn", writes, { "content-length": String(writes.length) });
    expect([writing.status, writing.headers.get("location")]).toEqual([307, `http://node-${leaderId}/txn`]);
  });

  test("a follower answers 307 to the leader's /txn and proposes nothing", async () => {
    const { c, leaderId, followerId, call } = await started();
    const lastIndex = c.node(leaderId).status().lastLogIndex;
    const response = await call(followerId, "POST", "/txn", { success: [{ put: { key: "a", value: "1" } }] });
    expect(response.status).toBe(307);
    expect(response.headers.get("location")).toBe(`http://node-${leaderId}/txn`);
    expect(((await response.json()) as { error: string }).error).toBe("not_leader");
    await c.settle();
    expect(c.node(leaderId).status().lastLogIndex).toBe(lastIndex);
  });

  test("Idempotency-Key: a retry gets the first answer even where its comparison no longer holds; a reuse with another body or method is 422", async () => {
    const { c, leaderId, call, txn } = await started();
    const body = { compare: [{ key: "once", exists: false }], success: [{ put: { key: "once", value: "1" } }, { get: { key: "once" } }], failure: [{ get: { key: "once" } }] };
    const first = await txn(body, { "idempotency-key": "t-1" });
    const firstAnswer = (await first.json()) as { succeeded: boolean; version: number };
    expect(firstAnswer.succeeded).toBe(true);
    const retry = await txn(body, { "idempotency-key": "t-1" });
    expect([retry.status, await retry.json()]).toEqual([200, firstAnswer]);
    // Without the key, the same body is a new transaction: "once" exists now, so it fails.
    expect(((await (await txn(body)).json()) as { succeeded: boolean }).succeeded).toBe(false);
    const other = await txn({ ...body, failure: [] }, { "idempotency-key": "t-1" });
    expect([other.status, ((await other.json()) as { error: string }).error]).toEqual([422, "idempotency_key_reused"]);
    const put = await call(leaderId, "PUT", "/kv/once", "2", { "idempotency-key": "t-1" });
    expect(put.status).toBe(422);
    // A key first used by a PUT is refused for a transaction too.
    await call(leaderId, "PUT", "/kv/p", "1", { "idempotency-key": "p-1" });
    expect((await txn({ success: [{ put: { key: "p", value: "1" } }] }, { "idempotency-key": "p-1" })).status).toBe(422);
    expect(c.storages.get(leaderId)!.get("once")?.version).toBe(firstAnswer.version);
    // A key sent as UTF-8 (its bytes one character each, as from a socket) is decoded: 128 Cyrillic
    // letters are 256 bytes, within the limit, and the 422 names the key as sent (found in review).
    const wire = (text: string) => Buffer.from(text, "utf8").toString("latin1");
    const cyrillic = "ж".repeat(128);
    expect((await txn({ success: [{ put: { key: "u", value: "1" } }] }, { "idempotency-key": wire(cyrillic) })).status).toBe(200);
    const reused = await call(leaderId, "PUT", "/kv/u", "2", { "idempotency-key": wire(cyrillic) });
    expect([reused.status, ((await reused.json()) as { message: string }).message]).toEqual([422, expect.stringContaining(cyrillic)]);
  });

  test("a transaction whose gets would return more than 4 MiB is a 413 with nothing applied, with an Idempotency-Key or without", async () => {
    const { c, leaderId, txn } = await started();
    const leader = c.node(leaderId);
    const big = new Uint8Array(txnSessionGetBytesMax / 2 + 1).fill(0x61);
    await c.drive(leader.put("big1", big));
    await c.drive(leader.put("big2", big));
    const body = { success: [{ put: { key: "w", value: "1" } }, { get: { key: "big1" } }, { get: { key: "big2" } }] };
    for (const headers of [{ "idempotency-key": "big" }, {}] as Record<string, string>[]) {
      const refused = await txn(body, headers);
      const answer = (await refused.json()) as { error: string; message: string };
      expect([refused.status, answer.error]).toEqual([413, "too_large"]);
      expect(answer.message).toContain("read large values with GET /kv/{key}");
      expect(c.storages.get(leaderId)!.get("w")).toBeUndefined();
    }
    const smaller = { success: [{ put: { key: "w", value: "1" } }, { get: { key: "big1" } }] };
    expect(((await (await txn(smaller, { "idempotency-key": "small" })).json()) as { succeeded: boolean }).succeeded).toBe(true);
  });

  test("a watcher on a follower receives a transaction's changes together, at its one version", async () => {
    const { c, followerId, txn } = await started();
    const watch = await c.drive(c.node(followerId).watch({ prefix: "w/" }, "now"));
    await c.drive(c.node(c.leader()!.status().id).put("w/c", new TextEncoder().encode("old")));
    const response = await txn({ success: [{ put: { key: "w/a", value: "1" } }, { put: { key: "other", value: "x" } }, { delete: { key: "w/c" } }, { put: { key: "w/b", value: "2" } }] });
    const { version } = (await response.json()) as { version: number };
    const batches: WatchItem[][] = [];
    while (!batches.flat().some((item) => item.type === "change" && item.change.version === version)) {
      const next = await c.drive(watch.next());
      if (next === undefined) break;
      batches.push(next.filter((item) => item.type === "change"));
    }
    const last = batches[batches.length - 1]!;
    const atVersion = last.filter((item) => item.type === "change" && item.change.version === version);
    expect(atVersion.map((item) => (item.type === "change" ? `${item.change.kind} ${item.change.key} @${item.change.version}` : ""))).toEqual([
      `put w/a @${version}`,
      `delete w/c @${version}`,
      `put w/b @${version}`,
    ]);
    watch.close();
  });
});

/** Advances the simulated clock by `ms`, settling every tick. */
async function advance(c: MemoryCluster, ms: number): Promise<void> {
  for (let elapsed = 0; elapsed < ms; elapsed += tickMs) {
    c.clock.advance(tickMs);
    await c.settle();
  }
}

/** The deletes among `items`, as "key @version reason". */
const deletesOf = (items: WatchItem[]) =>
  items.flatMap((item) => (item.type === "change" && item.change.kind === "delete" ? [`${item.change.key} @${item.change.version} ${item.change.reason}`] : []));

describe("transactions of gets alone on a server (its storage thread applies, its loop reads)", () => {
  const clusterOf = serverClusterForSuite({ size: 1, dirPrefix: "kv-txn-read-" });

  test("each answers the version of the state it read: every get is that state's value, while writes apply", async () => {
    const url = clusterOf().node(1).httpUrl;
    type Read = { version: number; results: { get: { found: boolean; value?: string; version?: number } }[] };
    const puts: Promise<{ value: string; version: number }>[] = [];
    for (let i = 0; i < 1000; i++) {
      const value = String(i);
      puts.push(fetch(`${url}/kv/k`, { method: "PUT", body: value }).then(async (answer) => ({ value, version: ((await answer.json()) as { version: number }).version })));
    }
    let writing = true;
    const allWritten = Promise.all(puts).finally(() => {
      writing = false;
    });
    // Readers that keep asking while the writes apply.
    const readers = Array.from({ length: 8 }, async () => {
      const seen: Read[] = [];
      while (writing) seen.push((await (await fetch(`${url}/txn`, { method: "POST", body: JSON.stringify({ success: [{ get: { key: "k" } }] }) })).json()) as Read);
      return seen;
    });
    const written = (await allWritten).sort((a, b) => a.version - b.version);
    const reads = (await Promise.all(readers)).flat();
    expect(reads.length).toBeGreaterThan(0);
    for (const read of reads) {
      // The state at the answer's version holds the last put at or before it.
      const expected = written.filter((put) => put.version <= read.version).at(-1);
      expect(read.results).toEqual([{ get: expected === undefined ? { key: "k", found: false } : { key: "k", found: true, value: expected.value, version: expected.version } }] as never);
    }
  });
});

describe("leases in transactions", () => {
  test("a put with a lease attaches its key when its branch runs (GET /leases/{id} lists it); the branch not taken attaches nothing; revoke deletes the keys (reason delete), expiry too (reason lease_expired)", async () => {
    const { c, leaderId, call, txn } = await started();
    const grant = async (ttlMs: number) => ((await (await call(leaderId, "POST", "/leases", { ttlMs })).json()) as { id: string }).id;
    const id = await grant(60_000);
    const other = await grant(60_000);
    const keysOf = async (lease: string) => ((await (await call(leaderId, "GET", `/leases/${lease}`)).json()) as { keys: string[] }).keys;
    const watch = await c.drive(c.node(leaderId).watch({ prefix: "t/" }, "now"));

    // The lease id as a decimal string (as the lease routes give it) or as a JSON number.
    const response = await txn({
      compare: [{ key: "t/x", exists: false }],
      success: [{ put: { key: "t/a", value: "1", lease: id } }, { put: { key: "t/b", value: "2", lease: Number(id) } }, { put: { key: "t/plain", value: "3" } }],
      failure: [{ put: { key: "t/c", value: "4", lease: other } }],
    });
    expect(response.status).toBe(200);
    const { succeeded, version } = (await response.json()) as { succeeded: boolean; version: number };
    expect(succeeded).toBe(true);
    expect(await keysOf(id)).toEqual(["t/a", "t/b"]);
    expect(await keysOf(other)).toEqual([]);
    expect(c.storages.get(leaderId)!.get("t/c")).toBeUndefined();
    // A branch not taken attaches nothing: the comparison fails, the failure branch only reads.
    const notTaken = await txn({ compare: [{ key: "t/a", exists: false }], success: [{ put: { key: "t/d", value: "5", lease: other } }], failure: [{ get: { key: "t/a" } }] });
    expect(((await notTaken.json()) as { succeeded: boolean }).succeeded).toBe(false);
    expect(await keysOf(other)).toEqual([]);
    expect(c.storages.get(leaderId)!.get("t/d")).toBeUndefined();
    // A later put without a lease, in a transaction, detaches the key.
    expect((await txn({ success: [{ put: { key: "t/b", value: "6" } }] })).status).toBe(200);
    expect(await keysOf(id)).toEqual(["t/a"]);

    const revoke = await call(leaderId, "DELETE", `/leases/${id}`);
    const revoked = (await revoke.json()) as { version: number; deletedKeys: number };
    expect(revoked.deletedKeys).toBe(1);
    expect(c.storages.get(leaderId)!.get("t/a")).toBeUndefined();
    expect(c.storages.get(leaderId)!.get("t/b")?.version).toBeGreaterThan(version);
    expect(c.storages.get(leaderId)!.get("t/plain")?.version).toBe(version);

    // A short lease: the key goes when it runs out, reason lease_expired.
    const short = await grant(400);
    const onShort = await txn({ success: [{ put: { key: "t/e", value: "7", lease: short } }] });
    expect(onShort.status).toBe(200);
    expect(await keysOf(short)).toEqual(["t/e"]);
    const deadlineMs = 10_000;
    for (let elapsedMs = 0; c.storages.get(leaderId)!.get("t/e") !== undefined; elapsedMs += 100) {
      if (elapsedMs > deadlineMs) throw new Error("the short lease did not expire within 10 s of simulated time");
      await advance(c, 100);
    }
    const items: WatchItem[] = [];
    while (!deletesOf(items).some((line) => line.startsWith("t/e "))) {
      const next = await c.drive(watch.next());
      if (next === undefined) break;
      items.push(...next);
    }
    expect(deletesOf(items)).toEqual([`t/a @${revoked.version} delete`, expect.stringMatching(/^t\/e @\d+ lease_expired$/)]);
    watch.close();
  });

  test("a lease that does not exist is 404 lease_not_found and no operation of the branch is applied, with or without Idempotency-Key", async () => {
    const { c, leaderId, call, txn } = await started();
    expect((await call(leaderId, "PUT", "/kv/u%2Fpre", "before")).status).toBe(200);
    const body = { success: [{ put: { key: "u/a", value: "1" } }, { delete: { key: "u/pre" } }, { put: { key: "u/b", value: "2", lease: "987654" } }] };
    for (const headers of [{}, { "idempotency-key": "u-1" }] as Record<string, string>[]) {
      const response = await txn(body, headers);
      const answer = (await response.json()) as { error: string; message: string };
      expect([response.status, answer.error]).toEqual([404, "lease_not_found"]);
      expect(answer.message).toContain("lease 987654");
    }
    await c.settle();
    const storage = c.storages.get(leaderId)!;
    expect([storage.get("u/a"), storage.get("u/b")]).toEqual([undefined, undefined]);
    expect(new TextDecoder().decode(storage.get("u/pre")!.value)).toBe("before");
    // Nothing was remembered under the key: once the lease exists, a request under it runs.
    const { id } = (await (await call(leaderId, "POST", "/leases", { ttlMs: 60_000 })).json()) as { id: string };
    const retried = await txn({ success: [{ put: { key: "u/a", value: "1" } }, { delete: { key: "u/pre" } }, { put: { key: "u/b", value: "2", lease: id } }] }, { "idempotency-key": "u-1" });
    expect(retried.status).toBe(200);
    expect(storage.get("u/pre")).toBeUndefined();
  });
});

describe("transactions and the data quota", () => {
  test("past --quota-bytes a transaction with a put in either branch is refused with quota_exceeded; one that only reads and deletes runs", async () => {
    const c = createMemoryCluster({ node: { quotaBytes: 1 } });
    cluster = c;
    await c.until(() => c.leader() !== undefined);
    // One key (of the state machine, which the quota counts) takes it past 1 byte.
    await c.drive(c.leader()!.put("first", new TextEncoder().encode("x")));
    await c.until(() => c.leader()?.status().storage?.quotaExceeded === true);
    const leader = c.leader()!;
    const putInFailure = { compare: [], success: [{ op: "get" as const, key: "k" }], failure: [{ op: "put" as const, key: "k", value: new Uint8Array(1) }] };
    // Refused before anything is proposed: thrown at once, as a put is.
    let refusedCode: string | undefined;
    try {
      void leader.txn(putInFailure).catch(() => undefined);
    } catch (error) {
      refusedCode = (error as { code?: string }).code;
    }
    expect(refusedCode).toBe("quota_exceeded");
    const readsAndDeletes = await c.drive(leader.txn({ compare: [], success: [{ op: "get", key: "k" }, { op: "delete", key: "k" }], failure: [] }));
    expect(readsAndDeletes.succeeded).toBe(true);
  });
});

test("isPaddedBase64 takes what the pattern it replaced took, and only that", () => {
  const pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
  const alphabet = "Az09+/=-_!. \\n\u00e9";
  const prng = createPrng(7);
  const samples = ["", "====", "A===", "AB==", "ABC=", "ABCD", "AB=C", "ABC", "=ABC", "AB==AB==", "/wA=", Buffer.from("hello").toString("base64")];
  for (let i = 0; i < 20_000; i++) {
    let text = "";
    for (let n = prng.intInclusive(0, 12); n > 0; n--) text += alphabet[prng.intInclusive(0, alphabet.length - 1)];
    samples.push(text);
  }
  for (const text of samples) expect([text, isPaddedBase64(text)]).toEqual([text, pattern.test(text)]);
});
