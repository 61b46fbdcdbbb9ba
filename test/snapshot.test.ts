// Proves, with real processes of the built executable, that a follower behind the leader's compacted log catches up by a streamed snapshot (also when the receiver or the leader is killed mid-transfer), and that nodes restarted on compacted logs serve all their data.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster, type StatusView } from "../src/chaos/cluster.ts";
import { kvCommand } from "./helpers/kv-binary.ts";

/** /status with the snapshot fields this suite reads. */
interface SnapshotStatus extends StatusView {
  snapshotIndex: number;
  firstLogIndex: number;
}

let cluster: ChaosCluster;
let baseDir: string;
/** Every key written so far and its value's fill byte and length, to check anywhere later. */
const written = new Map<string, { fill: number; bytes: number }>();

beforeAll(async () => {
  baseDir = mkdtempSync(join(tmpdir(), "kv-snapshot-test-"));
  cluster = new ChaosCluster({
    size: 3,
    command: kvCommand(),
    baseDir,
    serveArgs: ["--snapshot-entries", "50", "--snapshot-catchup-entries", "10"],
  });
  await cluster.start();
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(baseDir, { recursive: true, force: true });
});

const url = (id: number, path: string) => `${cluster.node(id).httpUrl}${path}`;

async function status(id: number): Promise<SnapshotStatus> {
  const got = await cluster.status(id, 2_000);
  if (got === undefined) throw new Error(`node ${id} did not answer /status`);
  return got as SnapshotStatus;
}

/** Polls `condition` (every 20 ms) until it holds, or fails naming `what` after `timeoutMs`. */
async function until(what: string, condition: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20); // polling interval between probes
  }
}

function valueOf(fill: number, bytes: number): Uint8Array {
  return new Uint8Array(bytes).fill(fill);
}

/**
 * Writes `count` keys `${prefix}-i` of `bytes` bytes each through whoever leads among `among`, 8 at a
 * time, retrying refusals (a leader change) until each is acknowledged. Returns the last version.
 */
async function writeKeys(prefix: string, count: number, bytes: number, among: readonly number[]): Promise<number> {
  let next = 0;
  let lastVersion = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const key = `${prefix}-${i}`;
      const fill = (i * 7 + prefix.length) & 0xff;
      for (let attempt = 0; ; attempt++) {
        const leader = await cluster.waitForLeader(among, 15_000);
        const response = await fetch(url(leader, `/kv/${key}`), { method: "PUT", body: valueOf(fill, bytes), signal: AbortSignal.timeout(10_000) }).catch(
          () => undefined,
        );
        if (response?.status === 200) {
          const { version } = (await response.json()) as { version: number };
          lastVersion = Math.max(lastVersion, version);
          written.set(key, { fill, bytes });
          break;
        }
        if (attempt >= 50) throw new Error(`could not write ${key}: ${response?.status}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return lastVersion;
}

/** Every key written so far, read with ?consistency=stale on node `id`, has its value. */
async function expectAllKeysOn(id: number): Promise<void> {
  let checked = 0;
  for (const [key, { fill, bytes }] of written) {
    const response = await fetch(url(id, `/kv/${key}?consistency=stale`));
    expect(response.status).toBe(200);
    const body = new Uint8Array(await response.arrayBuffer());
    expect(body.byteLength).toBe(bytes);
    expect(body.every((byte) => byte === fill)).toBe(true);
    checked++;
  }
  expect(checked).toBe(written.size);
}

async function logOf(id: number): Promise<string> {
  return Bun.file(cluster.node(id).logFile).text();
}

/** How many times node `id` logged `event` so far. */
async function eventCount(id: number, event: string): Promise<number> {
  return (await logOf(id)).split("\n").filter((line) => line.includes(`"event":"${event}"`)).length;
}

const running = () => cluster.nodes.filter((n) => n.state === "running").map((n) => n.id);

describe("snapshots between real processes", () => {
  test(
    "a follower that missed compacted entries catches up by snapshot and serves every key",
    async () => {
      const leader = await cluster.waitForLeader();
      await writeKeys("before", 20, 100, running());
      const follower = cluster.nodes.find((n) => n.id !== leader)!.id;
      const behind = await status(follower);
      await cluster.kill(follower);

      const lastVersion = await writeKeys("missed", 300, 100, running());
      // The leader compacted past everything the follower has: only a snapshot can bring it back.
      const leaderNow = await cluster.waitForLeader(running());
      await until("the leader to compact past the follower", async () => (await status(leaderNow)).firstLogIndex > behind.lastLogIndex + 1);

      const installedBefore = await eventCount(follower, "snapshot installed");
      await cluster.startNode(follower);
      await cluster.waitForConvergence(lastVersion, 30_000);
      const after = await status(follower);
      expect(after.snapshotIndex).toBeGreaterThan(behind.lastLogIndex);
      expect(after.appliedIndex).toBeGreaterThanOrEqual(lastVersion);
      expect(await eventCount(follower, "snapshot installed")).toBeGreaterThan(installedBefore);
      await expectAllKeysOn(follower);
    },
    120_000,
  );

  test(
    "killing the receiver, then the sender, in the middle of a transfer leaves both consistent, and the follower still catches up",
    async () => {
      const leader = await cluster.waitForLeader();
      const follower = cluster.nodes.find((n) => n.id !== leader)!.id;
      await cluster.kill(follower);
      // ~24 MiB of state: about two dozen 1 MiB chunks, long enough to interrupt.
      await writeKeys("big", 375, 64 * 1024, running());

      // Kill the receiver once it has staged its first chunk and before it has installed the image.
      let installed = await eventCount(follower, "snapshot installed");
      let receiving = await eventCount(follower, "snapshot receive");
      await cluster.startNode(follower);
      await until("the follower to start receiving an image", async () => (await eventCount(follower, "snapshot receive")) > receiving);
      const receiverKilledMidway = (await eventCount(follower, "snapshot installed")) === installed;
      await cluster.kill(follower);

      // Now interrupt the sender: restart the follower and kill the leader once the follower receives.
      installed = await eventCount(follower, "snapshot installed");
      receiving = await eventCount(follower, "snapshot receive");
      await cluster.startNode(follower);
      await until("the follower to start receiving again", async () => (await eventCount(follower, "snapshot receive")) > receiving);
      const sender = await cluster.waitForLeader(running());
      const senderKilledMidway = (await eventCount(follower, "snapshot installed")) === installed;
      await cluster.kill(sender);

      // The two survivors elect a leader (the follower can vote: its log is consistent) and converge.
      const survivors = running();
      const newLeader = await cluster.waitForLeader(survivors, 30_000);
      const lastVersion = await writeKeys("after", 5, 100, survivors);
      await cluster.waitForConvergence(lastVersion, 60_000);
      expect((await status(follower)).appliedIndex).toBeGreaterThanOrEqual(lastVersion);
      await expectAllKeysOn(follower);
      await expectAllKeysOn(newLeader);

      // The sender restarts from its own disk and catches up too.
      await cluster.startNode(sender);
      const finalVersion = await writeKeys("rejoined", 3, 100, running());
      await cluster.waitForConvergence(finalVersion, 60_000);
      await expectAllKeysOn(sender);
      // At least one kill landed mid-transfer (the image is large; both landing after it would mean a very fast machine).
      expect(receiverKilledMidway || senderKilledMidway).toBe(true);
    },
    120_000,
  );

  test(
    "every node restarted on a compacted log serves all the data",
    async () => {
      for (const node of cluster.nodes) if (node.state === "dead") await cluster.startNode(node.id);
      const lastVersion = await writeKeys("final", 60, 100, running());
      await cluster.waitForConvergence(lastVersion, 30_000);
      const before = await Promise.all(cluster.nodes.map((n) => status(n.id)));
      for (const each of before) {
        expect(each.snapshotIndex).toBeGreaterThan(0);
        expect(each.firstLogIndex).toBe(each.snapshotIndex + 1);
      }

      await cluster.killAll();
      await cluster.start();
      const leader = await cluster.waitForLeader(undefined, 30_000);
      // A linearizable read through the leader, then stale reads on every node once they converge.
      // All three restarted at once, so the first election may be followed by another (a split
      // vote): a 503 (no_leader, "retry shortly") is the contract's answer then, and is retried.
      let probe = await fetch(url(leader, "/kv/final-0"));
      const probeDeadline = performance.now() + 15_000;
      while (probe.status === 503 && performance.now() < probeDeadline) {
        await probe.arrayBuffer();
        const current = await cluster.waitForLeader(undefined, 15_000);
        probe = await fetch(url(current, "/kv/final-0"));
      }
      expect(probe.status).toBe(200);
      await cluster.waitForConvergence(lastVersion, 30_000);
      for (const node of cluster.nodes) {
        const after = await status(node.id);
        expect(after.snapshotIndex).toBeGreaterThan(0);
        await expectAllKeysOn(node.id);
      }
    },
    120_000,
  );
});
