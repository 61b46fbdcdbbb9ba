// Proves a node whose log was damaged behind its back refuses to start, with one line naming the
// log's segment file and the damaged index, instead of serving or replicating bad data. The log is written
// by an in-process node; the refusal (exit code and stderr) is the built executable's.
import { afterAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";
import { clusterNonceKey } from "../src/kv/cluster-nonce.ts";
import { startKvProcess } from "./helpers/kv-process.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-corruption-node-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

/**
 * A one-voter cluster (it leads itself) in a new dir under `baseDir` writes `values` to keys
 * `<keyPrefix>0`, `<keyPrefix>1`, ... and stops cleanly; its data dir and its log's last segment.
 */
async function writtenAndStopped(name: string, values: readonly string[], keyPrefix = "k") {
  const base = mkdtempSync(join(baseDir, name));
  const dataDir = join(base, "node-1");
  const cluster = createServerCluster({ size: 1, baseDir: base });
  try {
    await cluster.start();
    await cluster.waitForLeader();
    for (const [i, value] of values.entries()) expect((await fetch(`${cluster.node(1).httpUrl}/kv/${keyPrefix}${i}`, { method: "PUT", body: value })).status).toBe(200);
    await cluster.node(1).stop();
  } finally {
    await cluster.stop();
  }
  const logDir = join(dataDir, "kv.db-log");
  return { base, dataDir, logDir, segment: join(logDir, readdirSync(logDir).sort().at(-1) as string) };
}

test("a damaged log entry stops the node at start with the file and the index", async () => {
  const dataDir = join(baseDir, "node-1");
  // A one-voter cluster leads itself: enough to write a log.
  const cluster = createServerCluster({ size: 1, baseDir });
  let version = 0;
  try {
    await cluster.start();
    await cluster.waitForLeader();
    for (let i = 0; i < 5; i++) {
      const response = await fetch(`${cluster.node(1).httpUrl}/kv/k${i}`, { method: "PUT", body: `v${i}` });
      expect(response.status).toBe(200);
      version = ((await response.json()) as { version: number }).version;
    }
    await cluster.node(1).stop(); // a clean stop: the database closed, its WAL checkpointed
  } finally {
    await cluster.stop();
  }

  // Change a byte of the last entry's value in the log's segment, as a bad disk would.
  const logDir = join(dataDir, "kv.db-log");
  const segment = join(logDir, readdirSync(logDir).sort().at(-1) as string);
  const bytes = readFileSync(segment);
  const at = bytes.lastIndexOf("v4");
  expect(at).toBeGreaterThan(0);
  bytes[at] = (bytes[at] as number) ^ 0xff;
  writeFileSync(segment, bytes);
  const damaged = version;

  const restart = Bun.spawn(
    [...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    const [code, err] = await Promise.all([restart.exited, new Response(restart.stderr).text()]);
    expect(code).not.toBe(0);
    expect(err).toContain(segment);
    expect(err).toContain(`index ${damaged}`);
    expect(err).toContain("checksum");
    // One line for what is damaged, one for the way back; a message, not a stack trace.
    const lines = err.trim().split("\n").filter((line) => line.startsWith("kv: "));
    expect(lines).toHaveLength(2);
    expect(lines[1]).toContain("kv member remove");
    expect(lines[1]).toContain("--join");
    expect(err).not.toContain("    at ");
  } finally {
    restart.kill("SIGKILL");
  }
});

test("a log cut short below its commit index stops the node at start naming the log, not the database, and the way back", async () => {
  const { dataDir, logDir, segment } = await writtenAndStopped("cut-", ["cut0", "cut1", "cut2", "cut3", "cut4"]);
  // The segment loses its last records, written and fsynced before the commit index was saved.
  const bytes = readFileSync(segment);
  const at = bytes.lastIndexOf("cut2");
  expect(at).toBeGreaterThan(0);
  writeFileSync(segment, bytes.subarray(0, at));

  const restart = Bun.spawn(
    [...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    const [code, err] = await Promise.all([restart.exited, new Response(restart.stderr).text()]);
    expect(code).toBe(1);
    const lines = err.trim().split("\n").filter((line) => line.startsWith("kv: "));
    // It named kv.db, where nothing is wrong, and said nothing of what to do.
    expect(lines[0]).toContain(`${logDir} `.trimEnd());
    // The durable mark recorded with the applies (schema 8) catches it first: the cut falls within
    // what a completed sync had made durable.
    expect(lines[0]).toContain("a completed sync had made durable (recorded in the database): damage, not a torn write");
    expect(lines[0]).not.toContain("kv.db)");
    expect(lines[1]).toContain("kv member remove");
  } finally {
    restart.kill("SIGKILL");
  }
  // Without that mark (a data dir migrated from schema 7 that applied nothing since), the commit
  // index saved with the log still catches it.
  const db = new Database(join(dataDir, "kv.db"));
  db.run("UPDATE meta SET log_durable_segment = 0, log_durable_bytes = 0");
  db.close();
  const again = Bun.spawn(
    [...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    const [code, err] = await Promise.all([again.exited, new Response(again.stderr).text()]);
    expect(code).toBe(1);
    const first = err.trim().split("\n").find((line) => line.startsWith("kv: "));
    expect(first).toContain(`${logDir} `.trimEnd());
    expect(first).toContain("before the commit index");
  } finally {
    again.kill("SIGKILL");
  }
});

test("a value damaged in the database answers 500 corrupt, naming the key, not the damaged bytes; the others read", async () => {
  const base = mkdtempSync(join(baseDir, "row-"));
  const dataDir = join(base, "node-1");
  const cluster = createServerCluster({ size: 1, baseDir: base });
  try {
    await cluster.start();
    await cluster.waitForLeader();
    expect((await fetch(`${cluster.node(1).httpUrl}/kv/fine`, { method: "PUT", body: "still fine" })).status).toBe(200);
    expect((await fetch(`${cluster.node(1).httpUrl}/kv/hurt`, { method: "PUT", body: `marker-${"z".repeat(60_000)}` })).status).toBe(200);
    await cluster.node(1).stop(); // a clean stop: the WAL checkpointed into kv.db
  } finally {
    await cluster.stop();
  }
  const file = join(dataDir, "kv.db");
  const bytes = readFileSync(file);
  const at = bytes.indexOf("marker-");
  expect(at).toBeGreaterThan(0);
  bytes[at + 30_000] = (bytes[at + 30_000] as number) ^ 0x01;
  writeFileSync(file, bytes);

  const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(base, "node.log") });
  try {
    // It answered 200 with the flipped bit before.
    const hurt = await fetch(`${node.httpUrl}/kv/hurt`);
    expect(hurt.status).toBe(500);
    const answer = (await hurt.json()) as { error: string; message: string };
    expect(answer.error).toBe("corrupt");
    expect(answer.message).toContain('key "hurt"');
    const fine = await fetch(`${node.httpUrl}/kv/fine`);
    expect([fine.status, await fine.text()]).toEqual([200, "still fine"]);
  } finally {
    await node.stop();
  }
});

test("a torn record cut off the log's end at start is logged, with where and how much; the node serves what was acknowledged", async () => {
  const { base, dataDir, segment } = await writtenAndStopped("torn-", ["torn0", "torn1", "torn2"], "t");
  const name = basename(segment);
  // A record being written when the machine stopped: its first bytes made it, the rest never did.
  const bytes = readFileSync(segment);
  // A record's header promising 1,000 bytes, and 41 of them: the file ends inside it.
  const torn = new Uint8Array(50).fill(0x61);
  torn.set([0x12, 0x34, 0x56, 0x78, 0xe8, 0x03, 0x00, 0x00, 0x02]);
  writeFileSync(segment, Buffer.concat([bytes, torn]));

  const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(base, "node.log") });
  try {
    // It was cut without a word before.
    const line = JSON.parse(await node.waitForLog('"log cut"')) as { level: string; segment: string; atByte: number; bytesCut: number; detail: string };
    expect([line.level, line.segment, line.atByte, line.bytesCut]).toEqual(["warn", name, bytes.byteLength, torn.byteLength]);
    expect(line.detail).toContain("never acknowledged");
    const read = await fetch(`${node.httpUrl}/kv/t2`);
    expect([read.status, await read.text()]).toEqual([200, "torn2"]);
  } finally {
    await node.stop();
  }
});

test("a damaged page of the database's key index, met when the node speaks to its peers, stops it naming the damage; its peers are not blamed (found in a black-box review: it ran on as a candidate for ever, logging them unreachable)", async () => {
  const base = mkdtempSync(join(baseDir, "index-"));
  const cluster = createServerCluster({ size: 3, baseDir: base, logLevel: "warn" });
  try {
    await cluster.start();
    const leader = await cluster.waitForLeader();
    for (let i = 0; i < 50; i++) expect((await fetch(`${cluster.node(leader).httpUrl}/kv/k${i}`, { method: "PUT", body: `v${i}` })).status).toBe(200);
    const damaged = [1, 2, 3].find((id) => id !== leader)!;
    // A clean stop: its WAL is checkpointed into kv.db.
    await cluster.kill(damaged);
    const file = join(base, `node-${damaged}`, "kv.db");
    const db = new Database(file, { readonly: true });
    const { rootpage } = db.query("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_kv_1'").get() as { rootpage: number };
    const { page_size: pageSize } = db.query("PRAGMA page_size").get() as { page_size: number };
    db.close();
    const bytes = readFileSync(file);
    bytes.fill(0xab, (rootpage - 1) * pageSize, (rootpage - 1) * pageSize + 200);
    writeFileSync(file, bytes);

    await cluster.startNode(damaged);
    const deadline = performance.now() + 10_000;
    while (cluster.fatal(damaged) === undefined && performance.now() < deadline) await Bun.sleep(10); // polling for the node's stop
    expect(cluster.fatal(damaged)?.message).toMatch(/malformed/);
    expect(cluster.logs(damaged)).not.toContain("unreachable (database disk image is malformed)");
    // Its last word says what to do, as a refusal at start does.
    expect(await cluster.waitForLog(damaged, '"event":"fatal"')).toContain("start the node empty with --join");
  } finally {
    await cluster.stop();
  }
});

test("the cluster nonce's read stops the node only on damage: another error is thrown to the peer call as before, and the node runs on", async () => {
  const cluster = createMemoryCluster();
  try {
    const node = cluster.node(1);
    const storage = cluster.storages.get(1)!;
    const get = storage.get.bind(storage);
    const fail = (error: Error) => {
      storage.get = (key: string) => (key === clusterNonceKey ? (() => { throw error; })() : get(key));
    };
    fail(new Error("a passing fault"));
    expect(() => node.clusterNonce()).toThrow("a passing fault");
    await Promise.resolve();
    expect(node.fatalError()).toBeUndefined();
    fail(Object.assign(new Error("database disk image is malformed"), { code: "SQLITE_CORRUPT" }));
    expect(node.clusterNonce()).toBeUndefined();
    await Promise.resolve();
    expect(node.fatalError()?.message).toBe("database disk image is malformed");
  } finally {
    for (const id of [1, 2, 3]) cluster.node(id).stop();
  }
});
