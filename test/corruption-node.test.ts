// Proves a node whose log was damaged behind its back refuses to start, with one line naming the
// database file and the damaged index, instead of serving or replicating bad data.
import { afterAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-corruption-node-"));
afterAll(async () => {
  await killAllKvProcesses();
  rmSync(baseDir, { recursive: true, force: true });
});

test("a damaged log entry stops the node at start with the file and the index", async () => {
  const dataDir = join(baseDir, "node-1");
  // A one-voter cluster leads itself: enough to write a log.
  const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir, logFile: join(baseDir, "node-1.log") });
  // It becomes leader after its first election timeout: wait for it (a condition on the process).
  while ((await fetch(`${node.httpUrl}/health`)).status !== 200) await Bun.sleep(10);
  let version = 0;
  for (let i = 0; i < 5; i++) {
    const response = await fetch(`${node.httpUrl}/kv/k${i}`, { method: "PUT", body: `v${i}` });
    expect(response.status).toBe(200);
    version = ((await response.json()) as { version: number }).version;
  }
  expect(await node.terminate()).toBe(0);

  // Flip the data of the last entry, as a bad disk would, keeping its stored checksum.
  const file = join(dataDir, "kv.db");
  const db = new Database(file);
  const damaged = db.query<{ idx: number }, []>("SELECT max(idx) AS idx FROM raft_log").get()!.idx;
  expect(damaged).toBe(version);
  db.run("UPDATE raft_log SET data = X'DEADBEEF' WHERE idx = ?", [damaged]);
  db.close();

  const restart = Bun.spawn(
    [...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    const [code, err] = await Promise.all([restart.exited, new Response(restart.stderr).text()]);
    expect(code).not.toBe(0);
    expect(err).toContain("kv.db");
    expect(err).toContain(`index ${damaged}`);
    expect(err).toContain("checksum");
    expect(err.trim().split("\n").filter((line) => line.startsWith("kv: "))).toHaveLength(1);
    expect(err).not.toContain("    at "); // a message, not a stack trace
  } finally {
    restart.kill("SIGKILL");
  }
});
