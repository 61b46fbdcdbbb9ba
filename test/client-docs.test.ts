// Proves the tour in docs/client.md runs as written against three real nodes (put, get, compare-and-set, list, txn, watch, leases, lock, election, delete by prefix) and prints what it says it does.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

const root = join(import.meta.dir, "..");
const TOKEN = "client-docs-token-0123456789";
let dir: string;
let cluster: ServerCluster;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kv-client-docs-"));
  // With a client token, as a cluster should run: the tour reads it from $KV_AUTH_TOKEN (found in a
  // black-box walkthrough: the tour sent none, and a cluster with a token refused it 401).
  cluster = createServerCluster({ size: 3, baseDir: dir, config: () => ({ watch: { progressMs: 200 }, authToken: TOKEN }) });
  await cluster.start();
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("the tour in docs/client.md runs and prints each step", async () => {
  const doc = readFileSync(join(root, "docs", "client.md"), "utf8");
  const block = /<!-- tour:start -->\s*```ts\n([\s\S]*?)```\s*<!-- tour:end -->/.exec(doc)?.[1];
  expect(block).toBeDefined();
  // Outside this repository `kv/client` resolves through the package's exports; here, by path.
  const script = join(dir, "tour.ts");
  writeFileSync(script, (block as string).replace(`from "kv/client"`, `from ${JSON.stringify(join(root, "src", "client", "index.ts"))}`));
  const endpoints = cluster.nodes.map((n) => cluster.node(n.id).httpUrl).join(",");
  const proc = Bun.spawn([process.execPath, script], { env: { ...process.env, KV_ENDPOINTS: endpoints, KV_AUTH_TOKEN: TOKEN }, stdout: "pipe", stderr: "pipe" });
  try {
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    expect(err).toBe("");
    expect(code).toBe(0);
    for (const line of [
      "get on true",
      "cas refused, current version",
      "list tour/config/mode off",
      "txn true",
      "watch put tour/config/mode on",
      "watch delete tour/config/mode delete",
      'lease keys [ "tour/services/api-1" ]',
      "leader is node-a:9000",
      "keys deleted under tour/: 1",
      "done",
    ]) {
      expect(out).toContain(line);
    }
  } finally {
    if (proc.exitCode === null) process.kill(proc.pid, "SIGKILL");
  }
});
