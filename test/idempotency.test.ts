// Proves an Idempotency-Key is bound to the request it first came with (a reuse for another request is refused with 422 and changes nothing), that sessions live for a stretch of the leader's wall-clock time stamped in the log (not a count of entries) up to a cap, that every replica and every snapshot decides the same, and that entries and data dirs of 0.1.0 still apply and open as before.
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { cpSync } from "node:fs";
import { join } from "node:path";
import { createHttpApp } from "../src/http/app.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { type ApplyResult, legacySessionWindowEntries } from "../src/kv/apply-plan.ts";
import { type Command, decodeCommand, encodeCommand, type IdempotencyStamp, sessionKeyPrefix } from "../src/kv/command.ts";
import type { ImageRow } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

/** The storages that apply on the caller's thread, returning their results at once. */
type KvStorage = SqliteStorage | MemoryKvStorage;

const tempDir = tempDirs("kv-idempotency-");

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (data: Uint8Array | undefined): string | undefined => (data === undefined ? undefined : new TextDecoder().decode(data));

const minuteMs = 60_000;
const t0 = 1_700_000_000_000;
const stamp = (atMs: number, windowMs = 10 * minuteMs, sessionsMax = 100_000): IdempotencyStamp => ({ atMs, windowMs, sessionsMax });

function entry(index: number, command: Command): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand(command) };
}
function noop(index: number): Entry {
  return { index, term: 1, type: EntryType.Normal, data: new Uint8Array(0) };
}

/** Saves `entries` as committed and applies them in one batch. */
function apply(storage: KvStorage, entries: readonly Entry[]): ApplyResult[] {
  const last = entries[entries.length - 1];
  if (last === undefined) return [];
  storage.save({ term: 1, vote: 1, commit: last.index }, entries, false);
  return storage.applyEntries(entries);
}

const implementations: [string, () => KvStorage][] = [
  ["sqlite", () => openSqliteStorage(tempDir(), { voters: [1] })],
  ["memory", () => createMemoryKvStorage({ voters: [1] })],
];

/** Every row of the state machine, sessions included, as one comparable list. */
function dump(storage: KvStorage): string[] {
  const image = storage.openImage();
  const rows: ImageRow[] = [];
  for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) rows.push(...page);
  image.close();
  return rows.map((row) => `${JSON.stringify(row.key)}=${Buffer.from(row.value).toString("hex")}@${row.version}`);
}

describe("the command codec", () => {
  test("a stamped idempotent write round-trips under its own op byte; the 0.1.0 bytes still decode as before", () => {
    const stamped: Command = { op: "put", key: "x", value: bytes("v"), ifVersion: 3, idempotencyKey: "k1", stamp: stamp(t0) };
    expect(decodeCommand(encodeCommand(stamped))).toEqual(stamped);
    const stampedDelete: Command = { op: "delete", key: "x", idempotencyKey: "k2", stamp: stamp(t0 + 1, 5_000, 7) };
    expect(decodeCommand(encodeCommand(stampedDelete))).toEqual(stampedDelete);
    expect(encodeCommand(stamped)[0]).toBe(0x06);
    // Exactly what 0.1.0 wrote for PUT /kv/x "v" with Idempotency-Key k1: [0x05] [2] "k1" [0x01] [1] "x" "v".
    const legacy = Uint8Array.from([0x05, 2, 0x6b, 0x31, 0x01, 1, 0x78, 0x76]);
    expect(decodeCommand(legacy)).toEqual({ op: "put", key: "x", value: bytes("v"), idempotencyKey: "k1" });
    expect(encodeCommand({ op: "put", key: "x", value: bytes("v"), idempotencyKey: "k1" })).toEqual(legacy);
  });
});

describe.each(implementations)("%s sessions", (_name, open) => {
  test("a reuse for another key, another op or another value is refused and changes nothing; a byte-identical retry gets the first answer", () => {
    const storage = open();
    try {
      const first = entry(1, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0) });
      const results = apply(storage, [
        first,
        entry(2, { op: "put", key: "y", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 1) }),
        entry(3, { op: "delete", key: "x", idempotencyKey: "k1", stamp: stamp(t0 + 2) }),
        entry(4, { op: "put", key: "x", value: bytes("two"), idempotencyKey: "k1", stamp: stamp(t0 + 3) }),
        entry(5, { op: "put", key: "x", value: bytes("one"), ifVersion: 1, idempotencyKey: "k1", stamp: stamp(t0 + 4) }),
        entry(6, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 5) }),
      ]);
      expect(results).toEqual([
        { kind: "put", index: 1, version: 1 },
        { kind: "reused", index: 2 },
        { kind: "reused", index: 3 },
        { kind: "reused", index: 4 },
        { kind: "reused", index: 5 },
        { kind: "put", index: 6, version: 1 },
      ]);
      expect(storage.get("y")).toBeUndefined();
      expect(storage.get("x")).toEqual({ value: bytes("one"), version: 1 });
    } finally {
      storage.close();
    }
  });

  test("a session outlives 100,000 entries within its time window, and expires once the stamps pass the window", () => {
    const storage = open();
    try {
      apply(storage, [entry(1, { op: "put", key: "x", value: bytes("first"), idempotencyKey: "k1", stamp: stamp(t0) })]);
      const filler: Entry[] = [];
      const last = legacySessionWindowEntries + 10;
      for (let index = 2; index <= last; index++) filler.push(noop(index));
      apply(storage, filler);
      // 100,009 entries later but 9 minutes on: still the first answer, nothing written.
      const retry = (index: number, atMs: number) => entry(index, { op: "put", key: "x", value: bytes("first"), idempotencyKey: "k1", stamp: stamp(atMs) });
      expect(apply(storage, [retry(last + 1, t0 + 9 * minuteMs)])).toEqual([{ kind: "put", index: last + 1, version: 1 }]);
      expect(storage.get("x")?.version).toBe(1);
      // Just short of 10 minutes after the first write: still remembered; at 10 minutes: forgotten, applied anew.
      expect(apply(storage, [retry(last + 2, t0 + 10 * minuteMs - 1)])).toEqual([{ kind: "put", index: last + 2, version: 1 }]);
      expect(apply(storage, [retry(last + 3, t0 + 10 * minuteMs)])).toEqual([{ kind: "put", index: last + 3, version: last + 3 }]);
      expect(storage.get("x")?.version).toBe(last + 3);
    } finally {
      storage.close();
    }
  });

  test("time only moves forward: a later leader whose clock is behind does not bring an expired session back", () => {
    const storage = open();
    try {
      apply(storage, [
        entry(1, { op: "put", key: "x", value: bytes("a"), idempotencyKey: "old", stamp: stamp(t0) }),
        entry(2, { op: "put", key: "z", value: bytes("b"), idempotencyKey: "other", stamp: stamp(t0 + 11 * minuteMs) }),
      ]);
      // A new leader stamps 5 minutes after the first write: the state machine's now stays at 11 minutes.
      const result = apply(storage, [entry(3, { op: "put", key: "x", value: bytes("a"), idempotencyKey: "old", stamp: stamp(t0 + 5 * minuteMs) })]);
      expect(result).toEqual([{ kind: "put", index: 3, version: 3 }]);
    } finally {
      storage.close();
    }
  });

  test("past the session cap the oldest sessions are dropped first", () => {
    const storage = open();
    try {
      const write = (index: number, key: string) =>
        entry(index, { op: "put", key: `data-${key}`, value: bytes(key), idempotencyKey: key, stamp: stamp(t0 + index, 10 * minuteMs, 3) });
      apply(storage, [write(1, "a"), write(2, "b"), write(3, "c"), write(4, "d")]);
      // a was the oldest of four with room for three: its retry applies again; b, c and d are remembered.
      const results = apply(storage, [write(5, "d"), write(6, "c"), write(7, "b"), write(8, "a")]);
      expect(results).toEqual([
        { kind: "put", index: 5, version: 4 },
        { kind: "put", index: 6, version: 3 },
        { kind: "put", index: 7, version: 2 },
        { kind: "put", index: 8, version: 8 },
      ]);
      expect(dump(storage).filter((row) => row.startsWith(JSON.stringify(sessionKeyPrefix).slice(0, -1)) && !row.startsWith(`${JSON.stringify(sessionKeyPrefix)}=`)).length).toBe(3);
    } finally {
      storage.close();
    }
  });

  test("a snapshot image carries sessions, their fingerprints and the state machine's time", () => {
    const source = open();
    const target = open();
    try {
      apply(source, [
        entry(1, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0) }),
        entry(2, { op: "put", key: "z", value: bytes("two"), idempotencyKey: "k2", stamp: stamp(t0 + 8 * minuteMs) }),
      ]);
      const image = source.openImage();
      const rows: ImageRow[] = [];
      for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) rows.push(...page);
      const metadata = image.metadata;
      image.close();
      target.stageImageChunk("image-1", rows, true);
      target.installSnapshot(metadata, "image-1");
      expect(dump(target)).toEqual(dump(source));
      // Same decisions on both: a reuse is refused, a retry answered, and time continues from 8 minutes.
      const next = [
        entry(3, { op: "put", key: "y", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 60) }),
        entry(4, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 9 * minuteMs) }),
        entry(5, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 60) }),
      ];
      const expected: ApplyResult[] = [
        { kind: "reused", index: 3 },
        { kind: "put", index: 4, version: 1 },
        { kind: "put", index: 5, version: 1 },
      ];
      expect(apply(source, next)).toEqual(expected);
      expect(apply(target, next)).toEqual(expected);
      const expire = [entry(6, { op: "put", key: "x", value: bytes("one"), idempotencyKey: "k1", stamp: stamp(t0 + 10 * minuteMs) })];
      expect(apply(target, expire)).toEqual([{ kind: "put", index: 6, version: 6 }]);
      expect(apply(source, expire)).toEqual([{ kind: "put", index: 6, version: 6 }]);
      expect(dump(target)).toEqual(dump(source));
    } finally {
      source.close();
      target.close();
    }
  });

  test("an image from a 0.1.0 leader (sessions, no session clock) installs with its sessions counted toward the cap", () => {
    const storage = open();
    try {
      const legacySession = { key: `${sessionKeyPrefix}old`, value: bytes(JSON.stringify({ kind: "put", version: 1 })), version: 1 };
      storage.stageImageChunk("image-0.1.0", [legacySession, { key: "x", value: bytes("v"), version: 1 }], true);
      storage.installSnapshot({ index: 5, term: 1, voters: [1] }, "image-0.1.0");
      const write = (index: number, idempotencyKey: string, key: string) =>
        entry(index, { op: "put", key, value: bytes("v"), idempotencyKey, stamp: stamp(t0, 10 * minuteMs, 2) });
      // Within the cap of 2 (the old session and a): the old session, with no fingerprint, answers a put under its key.
      expect(apply(storage, [write(6, "a", "a"), write(7, "old", "x")])).toEqual([
        { kind: "put", index: 6, version: 6 },
        { kind: "put", index: 7, version: 1 },
      ]);
      // b makes three: the oldest, the 0.1.0 session, is dropped; a retry under it applies anew.
      expect(apply(storage, [write(8, "b", "b"), write(9, "old", "x")])).toEqual([
        { kind: "put", index: 8, version: 8 },
        { kind: "put", index: 9, version: 9 },
      ]);
    } finally {
      storage.close();
    }
  });

  test("entries in the 0.1.0 encoding apply exactly as before: within 100,000 entries a retry gets the first answer", () => {
    const storage = open();
    try {
      const legacy = (index: number, value: string): Entry => entry(index, { op: "put", key: "k", value: bytes(value), idempotencyKey: "client-1:7" });
      expect(apply(storage, [legacy(1, "first"), legacy(2, "second")])).toEqual([
        { kind: "put", index: 1, version: 1 },
        { kind: "put", index: 2, version: 1 },
      ]);
      expect(text(storage.get("k")?.value)).toBe("first");
    } finally {
      storage.close();
    }
  });
});

test("replicas that apply the same entries in different batches decide the same and hold the same state", () => {
  const log: Entry[] = [];
  let index = 0;
  for (let round = 0; round < 60; round++) {
    // Requests under the same idempotency key are the same request, except every fourth round's.
    const id = (round * round) % 13;
    const key = round % 4 === 0 ? `k${round % 7}` : `k${id % 7}`;
    const atMs = t0 + round * 20_000 - (round % 5 === 0 ? 90_000 : 0); // some leaders' clocks run behind
    const common = { idempotencyKey: `req-${id}`, stamp: stamp(atMs, 5 * minuteMs, 5) };
    log.push(
      id % 3 === 0
        ? entry(++index, { op: "delete", key, ...common })
        : entry(++index, { op: "put", key, value: bytes(`v${id % 4}`), ...common }),
    );
    if (round % 4 === 0) log.push(noop(++index));
  }
  const outcomes = implementations.flatMap(([, open]) =>
    [1, 3, 17].map((batch) => {
      const storage = open();
      const results: ApplyResult[] = [];
      for (let start = 0; start < log.length; start += batch) results.push(...apply(storage, log.slice(start, start + batch)));
      const state = dump(storage);
      storage.close();
      return { results, state };
    }),
  );
  // The log exercises every path: reuses refused, retries answered, sessions expired or evicted and made anew.
  const results = outcomes[0]!.results;
  expect(results.some((result) => result.kind === "reused")).toBe(true);
  expect(results.some((result) => result.kind === "put" && result.version < result.index)).toBe(true);
  expect(results.filter((result) => (result.kind === "put" || result.kind === "delete") && result.version === result.index).length).toBeGreaterThan(13);
  for (const outcome of outcomes.slice(1)) expect(outcome).toEqual(outcomes[0]!);
});

describe("sqlite data dirs of 0.1.0 (schema 3)", () => {
  test("open migrated to the current schema (7) in place; an old session answers a retry of the same op and refuses another op", () => {
    const dir = tempDir();
    cpSync(join(import.meta.dir, "fixtures", "v0.1.0", "node-1"), dir, { recursive: true });
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      expect(storage.get("config/a")).toEqual({ value: bytes("once"), version: 3 });
      const next = storage.lastIndex() + 1;
      // The fixture's session k1 (PUT config/a at index 3) has no fingerprint: it matches any put under k1.
      expect(
        apply(storage, [
          entry(next, { op: "put", key: "config/a", value: bytes("once"), idempotencyKey: "k1", stamp: stamp(t0) }),
          entry(next + 1, { op: "delete", key: "config/a", idempotencyKey: "k1", stamp: stamp(t0) }),
        ]),
      ).toEqual([
        { kind: "put", index: next, version: 3 },
        { kind: "reused", index: next + 1 },
      ]);
      expect(storage.get("config/a")?.version).toBe(3);
    } finally {
      storage.close();
    }
    const raw = new Database(join(dir, "kv.db"), { readonly: true });
    try {
      expect(raw.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(8);
    } finally {
      raw.close();
    }
  });
});

describe("through the HTTP API and a node", () => {
  /** One node over the in-memory twins, its HTTP app, and a way to send it a request while the cluster runs. */
  async function singleNode() {
    const cluster = createMemoryCluster();
    const storage = createMemoryKvStorage();
    const node = cluster.startNode(9, new Map([[9, "mem://peer-9"]]), storage);
    await cluster.until(() => node.status().role === "leader");
    const app = createHttpApp(node, {});
    const call = (method: string, path: string, body?: string, headers: Record<string, string> = {}) =>
      cluster.drive(app.handle(new Request(`http://localhost${path}`, { method, ...(body === undefined ? {} : { body }), headers })));
    return { cluster, node, call, storage };
  }

  test("a transaction that writes nothing in either branch keeps no session: its gets are not stored for the window, and a retry reads anew (found in review: read-only transactions filled the quota)", async () => {
    const { cluster, node, storage } = await singleNode();
    const sessions = () => storage.list(sessionKeyPrefix, undefined, 100).length;
    await cluster.drive(node.put("x", bytes("v1")));
    const read = { compare: [], success: [{ op: "get" as const, key: "x" }], failure: [{ op: "get" as const, key: "y" }] };
    const first = await cluster.drive(node.txn(read, { idempotencyKey: "r1" }));
    expect(first.results).toEqual([{ op: "get", key: "x", found: true, value: bytes("v1"), version: expect.any(Number) }]);
    expect(sessions()).toBe(0);
    await cluster.drive(node.put("x", bytes("v2")));
    const retry = await cluster.drive(node.txn(read, { idempotencyKey: "r1" }));
    expect(retry.results).toMatchObject([{ op: "get", key: "x", found: true, value: bytes("v2") }]);
    // One that may write keeps its session, as before: its retry gets the first answer.
    const write = { compare: [], success: [{ op: "put" as const, key: "z", value: bytes("w") }, { op: "get" as const, key: "x" }], failure: [] };
    const written = await cluster.drive(node.txn(write, { idempotencyKey: "w1" }));
    expect(sessions()).toBeGreaterThan(0);
    expect(await cluster.drive(node.txn(write, { idempotencyKey: "w1" }))).toEqual(written);
  });

  test("a retry under the key of a write that crossed the quota, or of a transaction whose gets grew past 4 MiB since, gets its first answer, not a refusal made before the session is looked at (found in review: the client reported a stored value as refused)", async () => {
    const cluster = createMemoryCluster({ node: { quotaBytes: 50_000 } });
    const node = cluster.startNode(9, new Map([[9, "mem://peer-9"]]), createMemoryKvStorage());
    await cluster.until(() => node.status().role === "leader");
    const value = new Uint8Array(30_000).fill(7);
    await cluster.drive(node.put("a", value, { idempotencyKey: "q1" }));
    const crossing = await cluster.drive(node.put("b", value, { idempotencyKey: "q2" }));
    // Past the quota now: a new put is refused, while the retry is answered as the first was.
    // (The node refuses before proposing by throwing at once: the async wrapper makes it a rejection.)
    await expect(cluster.drive((async () => node.put("c", value, { idempotencyKey: "q3" }))())).rejects.toMatchObject({ code: "quota_exceeded" });
    expect(await cluster.drive(node.put("b", value, { idempotencyKey: "q2" }))).toEqual(crossing);
    // A retry under the key for another request is still refused as a reuse, and writes nothing.
    await expect(cluster.drive(node.put("d", value, { idempotencyKey: "q2" }))).rejects.toMatchObject({ code: "idempotency_key_reused" });
    expect(node.status().role).toBe("leader");
    await expect(cluster.drive(node.get("d", "linearizable"))).resolves.toBeUndefined();
    // A transaction's retry: its get read a small value the first time; the value has grown past
    // what one answer may carry since, and the retry still gets the first answer.
    const unbounded = createMemoryCluster();
    const leader = unbounded.startNode(9, new Map([[9, "mem://peer-9"]]), createMemoryKvStorage());
    await unbounded.until(() => leader.status().role === "leader");
    const txn = { compare: [], success: [{ op: "delete" as const, key: "t" }, { op: "get" as const, key: "g" }], failure: [] };
    const firstTxn = await unbounded.drive(leader.txn(txn, { idempotencyKey: "t1" }));
    await unbounded.drive(leader.put("g", new Uint8Array(4 * 1024 * 1024 + 1)));
    await expect(unbounded.drive((async () => leader.txn(txn, { idempotencyKey: "t2" }))())).rejects.toMatchObject({ code: "too_large" });
    expect(await unbounded.drive(leader.txn(txn, { idempotencyKey: "t1" }))).toEqual(firstTxn);
  });

  test("an Idempotency-Key reused for another key is refused with 422, and that key is not written", async () => {
    const { call } = await singleNode();
    const first = await call("PUT", "/kv/x", "v", { "idempotency-key": "k1" });
    expect(first.status).toBe(200);
    const firstBody = (await first.json()) as { key: string; version: number };
    const reused = await call("PUT", "/kv/y", "v", { "idempotency-key": "k1" });
    expect(reused.status).toBe(422);
    expect(((await reused.json()) as { error: string }).error).toBe("idempotency_key_reused");
    expect((await call("GET", "/kv/y")).status).toBe(404);
    // The byte-identical retry still gets the first answer.
    const retry = await call("PUT", "/kv/x", "v", { "idempotency-key": "k1" });
    expect(retry.status).toBe(200);
    expect(await retry.json()).toEqual(firstBody);
  });

  test("an Idempotency-Key reused for a DELETE, or for another value, is refused with 422 and nothing changes", async () => {
    const { call, node } = await singleNode();
    const first = await call("PUT", "/kv/x", "v", { "idempotency-key": "k1" });
    const { version } = (await first.json()) as { version: number };
    const deleted = await call("DELETE", "/kv/x", undefined, { "idempotency-key": "k1" });
    expect(deleted.status).toBe(422);
    const body = (await deleted.json()) as { error: string; message: string };
    expect(body.error).toBe("idempotency_key_reused");
    expect(body.message).toContain("k1");
    const otherValue = await call("PUT", "/kv/x", "w", { "idempotency-key": "k1" });
    expect(otherValue.status).toBe(422);
    const got = await call("GET", "/kv/x");
    expect([got.status, await got.text(), got.headers.get("x-kv-version")]).toEqual([200, "v", String(version)]);
    expect(await node.get("x", "stale")).toEqual({ value: bytes("v"), version });
  });

  test("a reuse with another lease is refused too, and the message names the lease among what makes another request (found in a black-box review: it named only method, key, value, ifVersion and transaction)", async () => {
    const { cluster, node } = await singleNode();
    const lease = await cluster.drive(node.grantLease!(60_000));
    await cluster.drive(node.put("x", bytes("v"), { idempotencyKey: "k3", lease: lease.id }));
    const error = await cluster.drive(node.put("x", bytes("v"), { idempotencyKey: "k3" }).catch((e: unknown) => e));
    expect((error as KvError).code).toBe("idempotency_key_reused");
    expect((error as KvError).message).toContain("ifVersion, lease, prefix, limit or transaction");
  });

  test("the node rejects a reuse with the KvError code idempotency_key_reused", async () => {
    const { cluster, node } = await singleNode();
    await cluster.drive(node.put("x", bytes("v"), { idempotencyKey: "k1" }));
    const error = await cluster.drive(node.delete("x", { idempotencyKey: "k1" }).catch((e: unknown) => e));
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe("idempotency_key_reused");
  });

  test("the leader stamps idempotent writes with its wall clock: a retry 11 minutes later applies anew", async () => {
    const { cluster, node } = await singleNode();
    const first = await cluster.drive(node.put("x", bytes("v"), { idempotencyKey: "k1" }));
    cluster.clock.advance(11 * minuteMs);
    const second = await cluster.drive(node.put("x", bytes("v"), { idempotencyKey: "k1" }));
    expect(second.version).toBeGreaterThan(first.version);
  });
});
