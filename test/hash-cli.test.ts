// Proves `kv hash` (GET /hash on every endpoint, src/client/replicas.ts) on the built executable: a
// cluster's replicas agree (exit 0), a replica whose state was altered behind its node (its row
// rewritten with a valid checksum, as a bug in applying would leave it) is named as diverged (exit
// 1), and chaos's convergence check (ChaosCluster.waitForConvergence) fails on it too.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { createClient } from "../src/client/index.ts";
import { rowChecksum } from "../src/storage/entry-checksum.ts";
import { kvCommand, runKvCommand } from "./helpers/kv-binary.ts";
import { startKvProcess } from "./helpers/kv-process.ts";

let cluster: ChaosCluster;
let baseDir: string;

beforeAll(async () => {
  baseDir = mkdtempSync(join(tmpdir(), "kv-hash-test-"));
  cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir });
  await cluster.start();
  await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(baseDir, { recursive: true, force: true });
});

const endpoints = () => cluster.nodes.map((n) => n.httpUrl).join(",");

test("kv hash: the replicas agree after writes and a lease; then one altered behind its node is found diverged", async () => {
  const client = createClient({ endpoints: endpoints() });
  for (let i = 0; i < 20; i++) await client.put(`k${i}`, `value ${i}`);
  const lease = await client.leases.grant(60_000);
  await client.put("leased", "v", { lease: lease.id });
  await client.delete("k3");

  const agreed = await runKvCommand(["hash", "--endpoints", endpoints()]);
  expect(agreed.err).toBe("");
  expect(agreed.code).toBe(0);
  const lines = agreed.out.trimEnd().split("\n");
  expect(lines).toHaveLength(4);
  const hashes = lines.slice(0, 3).map((line) => /(sha256:[0-9a-f]{64})/.exec(line)?.[1]);
  expect(new Set(hashes).size).toBe(1);
  expect(lines[3]).toStartWith("consistent: 3 nodes hold");
  const json = JSON.parse((await runKvCommand(["hash", "--endpoints", endpoints(), "--json"])).out) as { verdict: string; answers: { hash: { rows: number } }[] };
  expect(json.verdict).toBe("consistent");
  // 20 keys, one deleted, one leased, and reserved rows besides (the lease's own among them).
  expect(json.answers[0]?.hash.rows).toBeGreaterThan(20);

  // Node 3 down: the other two agree, but not every node was compared: exit 3.
  await cluster.kill(3);
  const partial = await runKvCommand(["hash", "--endpoints", endpoints(), "--timeout-ms", "3000"]);
  expect(partial.code).toBe(3);
  expect(partial.out).toContain("consistent: 2 nodes hold");

  // Node 3, stopped, gets one value rewritten (its checksum too: the node reads it as sound).
  const db = new Database(join(cluster.node(3).dataDir, "kv.db"));
  const { version } = db.query<{ version: number }, []>("SELECT version FROM kv WHERE key = 'k7'").get()!;
  const altered = new TextEncoder().encode("altered");
  db.query("UPDATE kv SET value = ?, crc = ? WHERE key = 'k7'").run(altered, rowChecksum("k7", altered, version));
  db.close();
  await cluster.startNode(3);

  const diverged = await runKvCommand(["hash", "--endpoints", endpoints()]);
  expect(diverged.code).toBe(1);
  expect(diverged.out).toContain("diverged: at index");
  expect(diverged.out).toContain(cluster.node(3).httpUrl);

  const status = await cluster.status(await cluster.waitForLeader());
  await expect(cluster.waitForConvergence(status?.commitIndex ?? 0)).rejects.toThrow(/replicas diverged/);
  expect(cluster.replicaChecks.at(-1)?.verdict).toBe("diverged");
});

test("kv hash exits 2 when every node refuses it (a wrong or missing token), as other client commands do, not 3", async () => {
  const refusing = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ error: "unauthenticated", message: "the bearer token is wrong" }, { status: 401 }) });
  try {
    const result = await runKvCommand(["hash", "--endpoints", `http://127.0.0.1:${refusing.port}`, "--timeout-ms", "2000"]);
    expect(result.out).toContain("HTTP 401 unauthenticated");
    expect(result.code).toBe(2);
  } finally {
    refusing.stop(true);
  }
});

test("a backup's state hash (kv snapshot status) is what the cluster answered at its index, and what a cluster restored from it answers", async () => {
  const source = new ChaosCluster({ size: 1, command: kvCommand(), baseDir: join(baseDir, "backup-source") });
  const restoredDir = join(baseDir, "restored");
  const file = join(baseDir, "backup.kvsnap");
  let restored: Awaited<ReturnType<typeof startKvProcess>> | undefined;
  try {
    await source.start();
    await source.waitForLeader();
    const client = createClient({ endpoints: source.node(1).httpUrl });
    for (let i = 0; i < 10; i++) await client.put(`b${i}`, `value ${i}`);
    await client.put("idem", "v", { idempotencyKey: "once" });
    const before = await client.hashOf(source.node(1).httpUrl);
    expect((await runKvCommand(["snapshot", "save", file, "--endpoints", source.node(1).httpUrl])).code).toBe(0);
    const status = JSON.parse((await runKvCommand(["snapshot", "status", file, "--json"])).out) as { stateHash: string; index: number };
    expect(status.index).toBe(before.index);
    expect(status.stateHash).toBe(before.hash);
    const restore = await runKvCommand(["snapshot", "restore", file, "--data-dir", restoredDir, "--id", "1", "--cluster", "1=http://127.0.0.1:0"]);
    expect(restore.code).toBe(0);
    restored = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir: restoredDir, logFile: join(baseDir, "restored.log") });
    // Its first leader writes a nonce of its own (left out of the hash): the rows are the backup's.
    const after = await createClient({ endpoints: restored.httpUrl }).hashOf(restored.httpUrl, { consistency: "linearizable" });
    expect(after.hash).toBe(status.stateHash);
  } finally {
    await restored?.stop();
    await source.stop();
  }
});
