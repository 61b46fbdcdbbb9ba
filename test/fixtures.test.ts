// Proves that a data dir written by each earlier release opens in the built executable (migrated in
// place) and still holds exactly what that release acknowledged.
import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { commandLevelKey, commandLevelOf } from "../src/kv/apply-plan.ts";
import { decodeCommand } from "../src/kv/command.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { kvCommand } from "./helpers/kv-binary.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";

const fixtures = join(import.meta.dir, "fixtures");
const scratch = mkdtempSync(join(tmpdir(), "kv-fixtures-"));

afterAll(async () => {
  await killAllKvProcesses();
  rmSync(scratch, { recursive: true, force: true });
});

/** GET a key with a local (stale) read: the node serves what it applied, with no quorum needed. */
async function read(httpUrl: string, key: string): Promise<{ status: number; body: Uint8Array; version: string | null }> {
  const response = await fetch(`${httpUrl}/kv/${encodeURIComponent(key)}?consistency=stale`);
  return { status: response.status, body: new Uint8Array(await response.arrayBuffer()), version: response.headers.get("x-kv-version") };
}

/**
 * The state the 0.9.0 and 0.10.0 fixtures' requests left (their READMEs list them): each key's value
 * and version, and the delete by prefix's retry under its key answered with its first answer.
 */
async function expectSweptState(httpUrl: string): Promise<void> {
  const text = new TextDecoder();
  const expected: [string, number, string | undefined, string | undefined][] = [
    ["greeting", 200, "v2", "7"],
    ["big", 200, "z".repeat(10_000), "4"],
    ["tmp/a", 404, undefined, undefined],
    ["tmp/b", 404, undefined, undefined],
    ["tmp/c", 200, "x", "10"],
    ["counter", 200, "1", "12"],
    ["deleted", 404, undefined, undefined],
  ];
  for (const [key, status, value, version] of expected) {
    const got = await read(httpUrl, key);
    expect([key, got.status, got.status === 200 ? text.decode(got.body) : undefined, got.status === 200 ? got.version : undefined]).toEqual([key, status, value, version]);
  }
  const retry = await fetch(`${httpUrl}/kv?prefix=tmp/&limit=2`, { method: "DELETE", headers: { "Idempotency-Key": "fixture-sweep" } });
  expect(await retry.json()).toEqual({ deleted: 2, more: true, version: 11 });
}

/** Runs `check` on the storage of `dataDir` as its release left it (before a node touches it), then closes it. */
async function withStorage(dataDir: string, check: (storage: ReturnType<typeof openSqliteStorage>) => void): Promise<void> {
  const storage = openSqliteStorage(dataDir, { nodeId: 1 });
  try {
    check(storage);
  } finally {
    storage.close();
    await storage.released();
  }
}

describe("data dirs of earlier releases", () => {
  test("0.1.0: a single-node data dir opens, keeps every acknowledged write, and takes new ones", async () => {
    const dataDir = join(scratch, "v0.1.0");
    cpSync(join(fixtures, "v0.1.0", "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir,
      logFile: join(scratch, "v0.1.0.log"),
    });
    try {
      const text = new TextDecoder();
      const greeting = await read(node.httpUrl, "greeting");
      expect([greeting.status, text.decode(greeting.body), greeting.version]).toEqual([200, "hello", "2"]);
      const configA = await read(node.httpUrl, "config/a");
      expect([configA.status, text.decode(configA.body), configA.version]).toEqual([200, "once", "3"]);
      const configB = await read(node.httpUrl, "config/b");
      expect([configB.status, text.decode(configB.body), configB.version]).toEqual([200, "v2", "5"]);
      expect((await read(node.httpUrl, "deleted")).status).toBe(404);
      const binary = await read(node.httpUrl, "binary");
      expect([binary.status, [...binary.body], binary.version]).toEqual([200, [0xff, 0x00, 0x01], "8"]);

      // The old release's idempotency session still answers a byte-identical retry with its first answer.
      const retry = await fetch(`${node.httpUrl}/kv/config%2Fa`, { method: "PUT", headers: { "Idempotency-Key": "k1" }, body: "once" });
      expect(retry.status).toBe(200);
      expect(((await retry.json()) as { version: number }).version).toBe(3);

      // And it takes new writes on top.
      const put = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", body: "new" });
      expect(put.status).toBe(200);
      expect(((await put.json()) as { version: number }).version).toBeGreaterThan(8);
    } finally {
      await node.stop();
    }
  });

  test("0.2.0: a data dir with a leader-stamped idempotency session opens with every acknowledged write, and takes idempotent writes on top", async () => {
    const dataDir = join(scratch, "v0.2.0");
    cpSync(join(fixtures, "v0.2.0", "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.2.0.log") });
    try {
      const text = new TextDecoder();
      const greeting = await read(node.httpUrl, "greeting");
      expect([greeting.status, text.decode(greeting.body), greeting.version]).toEqual([200, "hello", "2"]);
      const configA = await read(node.httpUrl, "config/a");
      expect([configA.status, text.decode(configA.body), configA.version]).toEqual([200, "stamped", "3"]);
      expect((await read(node.httpUrl, "deleted")).status).toBe(404);
      // Its session was stamped with the wall clock of the day it was made: by now it may have
      // expired (10 minutes), so what does not depend on the date is checked: the node takes new
      // idempotent writes on top of the stamped one, and retries them exactly once.
      const first = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", headers: { "Idempotency-Key": "k3" }, body: "new" });
      const firstVersion = ((await first.json()) as { version: number }).version;
      expect([first.status, firstVersion > 5]).toEqual([200, true]);
      const retry = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", headers: { "Idempotency-Key": "k3" }, body: "new" });
      expect([retry.status, ((await retry.json()) as { version: number }).version]).toEqual([200, firstVersion]);
      const reuse = await fetch(`${node.httpUrl}/kv/other`, { method: "PUT", headers: { "Idempotency-Key": "k3" }, body: "new" });
      expect(reuse.status).toBe(422);
    } finally {
      await node.stop();
    }
  });

  test("0.3.0: a data dir with a lease, a key on it and a transaction opens with all of them", async () => {
    const dataDir = join(scratch, "v0.3.0");
    cpSync(join(fixtures, "v0.3.0", "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.3.0.log") });
    try {
      const text = new TextDecoder();
      const expected: [string, string, string][] = [
        ["greeting", "hello", "2"],
        ["service/a", "http://10.0.0.5:9000", "4"],
        ["cfg/n", "1", "5"],
        ["cfg/m", "2", "5"],
      ];
      for (const [key, value, version] of expected) {
        const got = await read(node.httpUrl, key);
        expect([key, got.status, text.decode(got.body), got.version]).toEqual([key, 200, value, version]);
      }
      const lease = await fetch(`${node.httpUrl}/leases/3`);
      expect(lease.status).toBe(200);
      expect(((await lease.json()) as { keys: string[] }).keys).toEqual(["service/a"]);
      const revoke = await fetch(`${node.httpUrl}/leases/3`, { method: "DELETE" });
      expect(revoke.status).toBe(200);
      expect((await read(node.httpUrl, "service/a")).status).toBe(404);
    } finally {
      await node.stop();
    }
  });

  /**
   * 0.5.0, 0.6.0 and 0.7.0 answered the same five requests (their READMEs): greeting hello, big (10,000
   * bytes of z), deleted, its delete, greeting v2, at versions from `first` on. Opens a copy, checks
   * them and a new write on top, and returns the copy's path.
   */
  async function openSameFiveWrites(release: string, first: number): Promise<string> {
    const dataDir = join(scratch, `v${release}`);
    cpSync(join(fixtures, `v${release}`, "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, `v${release}.log`) });
    try {
      const text = new TextDecoder();
      const greeting = await read(node.httpUrl, "greeting");
      expect([greeting.status, text.decode(greeting.body), greeting.version]).toEqual([200, "v2", String(first + 4)]);
      const big = await read(node.httpUrl, "big");
      expect([big.status, big.body.byteLength, big.body.every((byte) => byte === 0x7a), big.version]).toEqual([200, 10_000, true, String(first + 1)]);
      expect((await read(node.httpUrl, "deleted")).status).toBe(404);
      const put = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", body: "new" });
      expect(put.status).toBe(200);
      expect(((await put.json()) as { version: number }).version).toBeGreaterThan(first + 4);
    } finally {
      await node.stop();
    }
    return dataDir;
  }

  test("0.9.0: a data dir with a delete by prefix and a transaction comparing by operator opens with every acknowledged write and takes new ones; the delete's retry gets its first answer; both entries decode as written", async () => {
    const dataDir = join(scratch, "v0.9.0");
    cpSync(join(fixtures, "v0.9.0", "node-1"), dataDir, { recursive: true });
    // The log's entries as 0.9.0 wrote them (before the node touches the copy).
    await withStorage(dataDir, (storage) => {
      const [sweep, txn] = storage.entries(11, 13, Number.MAX_SAFE_INTEGER).map((entry) => decodeCommand(entry.data));
      expect(sweep).toEqual({ op: "delete-prefix", prefix: "tmp/", limit: 2, keyBytesMax: 4 * 1024 * 1024, idempotencyKey: "fixture-sweep", stamp: expect.any(Object) });
      expect(txn).toMatchObject({
        op: "txn",
        compare: [
          { key: "greeting", target: "version", version: 8, op: "<" },
          { key: "big", target: "value", op: ">" },
        ],
      });
      // The level of commands the cluster applied, recorded by the first entry of it.
      const level = storage.get(commandLevelKey);
      expect([commandLevelOf(level), level?.version]).toEqual([2, 11]);
    });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.9.0.log") });
    try {
      await expectSweptState(node.httpUrl);
      expect((await read(node.httpUrl, "tmp/c")).status).toBe(200);
      const put = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", body: "new" });
      expect(((await put.json()) as { version: number }).version).toBeGreaterThan(12);
    } finally {
      await node.stop();
    }
  });

  test("0.10.0: a data dir opens with every acknowledged write and takes new ones; the delete by prefix's retry gets its first answer; a transaction of gets alone is a read at the state's version (no entry)", async () => {
    const dataDir = join(scratch, "v0.10.0");
    cpSync(join(fixtures, "v0.10.0", "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.10.0.log") });
    try {
      await expectSweptState(node.httpUrl);
      const before = ((await (await fetch(`${node.httpUrl}/status`)).json()) as { lastLogIndex: number }).lastLogIndex;
      const reading = await fetch(`${node.httpUrl}/txn`, { method: "POST", body: JSON.stringify({ success: [{ get: { key: "counter" } }] }) });
      expect(await reading.json()).toEqual({ succeeded: true, version: before, results: [{ get: { key: "counter", found: true, value: "1", version: 12 } }] });
      expect(((await (await fetch(`${node.httpUrl}/status`)).json()) as { lastLogIndex: number }).lastLogIndex).toBe(before);
      const put = await fetch(`${node.httpUrl}/kv/after-upgrade`, { method: "PUT", body: "new" });
      expect(((await put.json()) as { version: number }).version).toBeGreaterThan(12);
    } finally {
      await node.stop();
    }
  });

  test("0.11.0: a data dir with a transaction whose gets are bounded (op 0x0c) opens with every acknowledged write and takes new ones; the entry decodes as written and its level is recorded", async () => {
    const dataDir = join(scratch, "v0.11.0");
    cpSync(join(fixtures, "v0.11.0", "node-1"), dataDir, { recursive: true });
    await withStorage(dataDir, (storage) => {
      const [bounded] = storage.entries(13, 14, Number.MAX_SAFE_INTEGER);
      expect(bounded?.data[0]).toBe(0x0c);
      expect(decodeCommand(bounded?.data as Uint8Array)).toMatchObject({ op: "txn", getsBounded: true, success: [{ op: "put", key: "bounded" }, { op: "get", key: "greeting" }] });
      const level = storage.get(commandLevelKey);
      expect([commandLevelOf(level), level?.version]).toEqual([3, 13]);
    });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.11.0.log") });
    try {
      await expectSweptState(node.httpUrl);
      const stored = await fetch(`${node.httpUrl}/kv/bounded`);
      expect([stored.status, await stored.text(), stored.headers.get("x-kv-version")]).toEqual([200, "b", "13"]);
      const txn = await fetch(`${node.httpUrl}/txn`, { method: "POST", body: JSON.stringify({ success: [{ put: { key: "after-upgrade", value: "new" } }, { get: { key: "bounded" } }] }) });
      const answer = (await txn.json()) as { version: number; results: unknown[] };
      expect(answer.version).toBeGreaterThan(13);
      expect(answer.results[1]).toEqual({ get: { key: "bounded", found: true, value: "b", version: 13 } });
    } finally {
      await node.stop();
    }
  });

  test("0.8.0: a data dir whose applies record the log's durable bytes opens with every acknowledged write and takes new ones; a sector of zeros below that mark is refused as damage, not cut as a torn write", async () => {
    await openSameFiveWrites("0.8.0", 3);
    const damaged = join(scratch, "v0.8.0-damaged");
    cpSync(join(fixtures, "v0.8.0", "node-1"), damaged, { recursive: true });
    const segment = join(damaged, "kv.db-log", "seg-0000000000000001.log");
    const bytes = readFileSync(segment);
    // A whole sector inside the 10,000 bytes of z (entry 4, fsynced and applied) reads as zeros.
    const sector = Math.ceil(bytes.indexOf("z".repeat(600)) / 512) * 512;
    bytes.fill(0, sector, sector + 512);
    writeFileSync(segment, bytes);
    const refused = Bun.spawnSync([...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", damaged], { stderr: "pipe", stdout: "pipe" });
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr.toString() + refused.stdout.toString()).toContain("a completed sync had made durable (recorded in the database): damage, not a torn write");
    expect(readFileSync(segment)).toEqual(bytes);
  });

  test("0.7.0: a data dir whose members carry the index that added them opens with every acknowledged write, takes new ones, and lists node 1 as a founding member (added at 0)", async () => {
    const dataDir = await openSameFiveWrites("0.7.0", 3);
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.7.0-members.log") });
    try {
      const members = (await (await fetch(`${node.httpUrl}/members`)).json()) as { members: { id: number; addedIndex: number | null }[] };
      expect(members.members.map(({ id, addedIndex }) => ({ id, addedIndex }))).toEqual([{ id: 1, addedIndex: 0 }]);
    } finally {
      await node.stop();
    }
  });

  test("0.6.0: a data dir whose rows carry checksums opens with every acknowledged write, takes new ones, and is still node 1's", async () => {
    const dataDir = await openSameFiveWrites("0.6.0", 3);
    // Its database names its node, with or without the node-id file beside it.
    rmSync(join(dataDir, "node-id"));
    const refused = Bun.spawnSync([...kvCommand(), "serve", "--id", "2", "--cluster", "2=http://127.0.0.1:0", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir], { stderr: "pipe", stdout: "pipe" });
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr.toString()).toContain("node 1's, not node 2's");
  });

  test("0.5.0: a data dir whose log is in segment files opens with every acknowledged write, and takes new ones", async () => {
    await openSameFiveWrites("0.5.0", 2);
  });

  test("0.4.0: a data dir with a transaction that put a key on a lease opens with the key on the lease", async () => {
    const dataDir = join(scratch, "v0.4.0");
    cpSync(join(fixtures, "v0.4.0", "node-1"), dataDir, { recursive: true });
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(scratch, "v0.4.0.log") });
    try {
      const text = new TextDecoder();
      const expected: [string, string, string][] = [
        ["greeting", "hello", "2"],
        ["cfg/n", "1", "4"],
        ["service/b", "http://10.0.0.6:9000", "4"],
      ];
      for (const [key, value, version] of expected) {
        const got = await read(node.httpUrl, key);
        expect([key, got.status, text.decode(got.body), got.version]).toEqual([key, 200, value, version]);
      }
      const lease = await fetch(`${node.httpUrl}/leases/3`);
      expect(lease.status).toBe(200);
      expect(((await lease.json()) as { keys: string[] }).keys).toEqual(["service/b"]);
      const revoke = await fetch(`${node.httpUrl}/leases/3`, { method: "DELETE" });
      expect(revoke.status).toBe(200);
      expect((await read(node.httpUrl, "service/b")).status).toBe(404);
      expect((await read(node.httpUrl, "cfg/n")).status).toBe(200);
    } finally {
      await node.stop();
    }
  });
});
