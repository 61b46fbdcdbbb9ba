// Proves a restore from a backup leaves out the level of commands the source cluster applied, as it leaves out its nonce: a restored cluster is a new one, whose members' releases nobody has heard yet (found in review: it started out taking every silent member for 0.9.0).
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
