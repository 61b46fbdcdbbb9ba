// Proves a node whose log was damaged behind its back refuses to start, with one line naming the
// database file and the damaged index, instead of serving or replicating bad data. The log is written
// by an in-process node; the refusal (exit code and stderr) is the built executable's.
import { afterAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-corruption-node-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

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
