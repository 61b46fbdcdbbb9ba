// Proves createServer(config) assembles a working node in-process: three servers in one test process
// elect a leader, take writes through their HTTP API, hand leadership over on stop(), and a server
// restarted on its data dir still holds what was acknowledged.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../src/lib/logger.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-server-"));
/** Every node's log lines, parsed. */
const logged: { node: number; event: string; leaderId?: number }[] = [];
const cluster = createServerCluster({
  size: 3,
  baseDir,
  config: (id) => ({ logger: createLogger(id, "info", { format: "json", write: (line) => void logged.push(JSON.parse(line)) }) }),
});
afterAll(async () => {
  await cluster.stop();
  rmSync(baseDir, { recursive: true, force: true });
});

test("three in-process servers elect a leader and serve writes and reads over HTTP; stop() hands over; a restart keeps what was acknowledged", async () => {
  await cluster.start();
  const firstId = await cluster.waitForLeader();
  const first = cluster.node(firstId);
  const put = await fetch(`${first.httpUrl}/kv/greeting`, { method: "PUT", body: "hello" });
  expect(put.status).toBe(200);
  const { version } = (await put.json()) as { version: number };
  for (const { id } of cluster.nodes) {
    const read = await fetch(`${cluster.node(id).httpUrl}/kv/greeting`); // linearizable, on followers too
    expect([read.status, await read.text(), read.headers.get("x-kv-version")]).toEqual([200, "hello", String(version)]);
  }

  // A clean stop of the leader hands leadership to another voter first.
  await first.stop();
  const handOver = logged.find((line) => line.node === firstId && line.event === "leadership handed over");
  expect(handOver?.leaderId).toBeOneOf([1, 2, 3].filter((id) => id !== firstId));
  await cluster.kill(firstId); // forget the stopped server
  const others = cluster.nodes.map((node) => node.id).filter((id) => id !== firstId);
  const second = cluster.node(await cluster.waitForLeader(others));
  expect((await fetch(`${second.httpUrl}/kv/greeting`, { method: "PUT", body: "again" })).status).toBe(200);

  // Back on its data dir, the stopped node catches up and serves what was acknowledged.
  const restarted = await cluster.startNode(firstId);
  const deadline = performance.now() + 10_000;
  while (restarted.node.status().appliedIndex < second.node.status().commitIndex && performance.now() < deadline) await Bun.sleep(10); // until caught up
  const read = await fetch(`${restarted.httpUrl}/kv/greeting?consistency=stale`);
  expect(await read.text()).toBe("again");
}, 60_000);

test("a leader stopped with no follower to take over says the hand-over failed, at warn, not that it handed over (found in an operator's review)", async () => {
  const leaderId = await cluster.waitForLeader();
  for (const { id } of cluster.nodes) if (id !== leaderId) await cluster.kill(id);
  const before = logged.length;
  await cluster.node(leaderId).stop();
  const ours = logged.slice(before).filter((line) => line.node === leaderId);
  expect(ours.filter((line) => line.event === "leadership handed over")).toEqual([]);
  const failed = ours.find((line) => line.event === "leadership handover failed") as { level?: string } | undefined;
  expect(failed?.level).toBe("warn");
}, 60_000);
