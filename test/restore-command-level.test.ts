// Proves a restore from a backup leaves out the level of commands the source cluster applied, as it leaves out its nonce: a restored cluster is a new one, whose members' releases nobody has heard yet (found in review: it started out taking every silent member for 0.9.0); and that the directories a restore makes above the data dir are made durable.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { commandLevelKey } from "../src/kv/apply-plan.ts";
import { BackupWriter } from "../src/kv/backup-format.ts";
import { clusterNonceKey } from "../src/kv/cluster-nonce.ts";
import { restoreSnapshot } from "../src/server/restore-snapshot.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";

const dir = mkdtempSync(join(tmpdir(), "kv-restore-level-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("the restored data dir holds the backup's rows but its level of commands and its nonce", async () => {
  const text = (value: string) => new TextEncoder().encode(value);
  const writer = new BackupWriter({ index: 9, term: 2, voters: [1], learners: [], addresses: [{ id: 1, peerUrl: "http://127.0.0.1:1" }], createdAtMs: 0 });
  const rows = [
    { key: commandLevelKey, value: text("2"), version: 7 },
    { key: clusterNonceKey, value: text("0123456789abcdef"), version: 2 },
    { key: "k", value: text("v"), version: 9 },
  ].sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
  const chunks = [writer.begin(), writer.rows(rows), writer.end()];
  const dataDir = join(dir, "node-1");
  await restoreSnapshot({ source: (async function* () { yield* chunks; })(), dataDir, id: 1, peers: new Map([[1, "http://127.0.0.1:1"]]) });
  const storage = openSqliteStorage(dataDir, { nodeId: 1 });
  try {
    expect(storage.get("k")?.version).toBe(9);
    expect(storage.get(commandLevelKey)).toBeUndefined();
    expect(storage.get(clusterNonceKey)).toBeUndefined();
  } finally {
    storage.close();
    await storage.released();
  }
});

test("a restore that makes the data dir's missing parents makes their entries durable: each new directory's parent is fsynced (found in a review: only the data dir's own entry was, and kv serve syncs nothing for a data dir that exists)", async () => {
  const writer = new BackupWriter({ index: 9, term: 2, voters: [1], learners: [], addresses: [{ id: 1, peerUrl: "http://127.0.0.1:1" }], createdAtMs: 0 });
  const chunks = [writer.begin(), writer.rows([{ key: "k", value: new TextEncoder().encode("v"), version: 9 }]), writer.end()];
  const base = join(dir, "parents");
  const fsynced: string[] = [];
  await restoreSnapshot({
    source: (async function* () { yield* chunks; })(),
    dataDir: join(base, "new", "deeper", "node-1"),
    id: 1,
    peers: new Map([[1, "http://127.0.0.1:1"]]),
    fsync: (path) => fsynced.push(path),
  });
  // The entries of "new" (in dir), "deeper" (in new) and "node-1" (in deeper, after its rename).
  expect(fsynced).toContain(dir);
  expect(fsynced).toContain(join(base, "new"));
  expect(fsynced).toContain(join(base, "new", "deeper"));
});
