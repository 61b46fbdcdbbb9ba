// Proves a data dir belongs to the node that first started on it: the built executable refuses to
// start it as another node (a copy of node 1's data dir would give node 3 node 1's vote and log),
// leaving it untouched, and a data dir from before the node-id file gets one at its next start.
import { afterAll, expect, test } from "bun:test";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-node-id-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

/** Runs `kv serve` as node `id` of a one-voter cluster on `dataDir` until it exits, or SIGKILLs it once `until` shows in its output. */
async function serve(id: number, dataDir: string, until?: string): Promise<{ code: number; err: string }> {
  const child = Bun.spawn(
    [...kvCommand(), "serve", "--id", String(id), "--cluster", `${id}=http://127.0.0.1:0`, "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    if (until === undefined) {
      const [code, err] = await Promise.all([child.exited, new Response(child.stderr).text()]);
      return { code, err };
    }
    let out = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      out += decoder.decode(chunk);
      if (out.includes(until)) break;
    }
    return { code: -1, err: out };
  } finally {
    child.kill("SIGKILL");
    await child.exited;
  }
}

test("a data dir copied from node 1 does not start as node 3, and is left as it was", async () => {
  const cluster = createServerCluster({ size: 1, baseDir });
  try {
    await cluster.start();
    await cluster.waitForLeader();
    expect((await fetch(`${cluster.node(1).httpUrl}/kv/k`, { method: "PUT", body: "v" })).status).toBe(200);
    await cluster.node(1).stop();
  } finally {
    await cluster.stop();
  }
  const original = join(baseDir, "node-1");
  expect(readFileSync(join(original, "node-id"), "utf8").trim()).toBe("1");
  const copy = join(baseDir, "copy-as-3");
  cpSync(original, copy, { recursive: true });
  const before = readdirSync(copy).sort();

  const refused = await serve(3, copy);
  expect(refused.code).toBe(1);
  // It started as node 3 on node 1's vote and log without a word.
  expect(refused.err).toContain("node 1's data dir");
  expect(refused.err).toContain("not node 3's");
  expect(readdirSync(copy).sort()).toEqual(before);
  expect(readFileSync(join(copy, "node-id"), "utf8").trim()).toBe("1");
  // Its own node starts on it.
  expect((await serve(1, copy, '"event":"started"')).err).toContain('"event":"started"');
});

test("a data dir from before the node-id file (0.5.0) gets one with the id it starts as", async () => {
  const dataDir = join(baseDir, "v0.5.0");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  expect(existsSync(join(dataDir, "node-id"))).toBe(false);
  expect((await serve(1, dataDir, '"event":"started"')).err).toContain('"event":"started"');
  expect(readFileSync(join(dataDir, "node-id"), "utf8").trim()).toBe("1");
  expect((await serve(2, dataDir)).err).toContain("node 1's data dir");
});

test("a node-id file that holds no id is refused, not guessed at", async () => {
  const dataDir = join(baseDir, "garbled");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  await Bun.write(join(dataDir, "node-id"), "one\n");
  const refused = await serve(1, dataDir);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain("not a node id");
  expect(refused.err).toContain('\\"one\\"');
});
