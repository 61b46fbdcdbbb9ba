// Proves the chaos runner's cluster notices a node that exits without being told to (a crash, or a
// kill from outside the run): it is marked dead and reported, and a later signal to it does not throw.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { kvCommand } from "./helpers/kv-binary.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-chaos-cluster-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

test("a paused node killed from outside the run is recorded as an unexpected exit, and resuming it does not throw", async () => {
  const cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir });
  try {
    await cluster.start();
    cluster.signal(2, "SIGSTOP");
    const pid = cluster.node(2).pid as number;
    process.kill(pid, "SIGKILL"); // not through the cluster: as if something else killed it
    const deadline = performance.now() + 10_000;
    while (cluster.node(2).state !== "dead" && performance.now() < deadline) await Bun.sleep(10); // until the exit is seen
    expect(cluster.node(2).state).toBe("dead");
    expect(cluster.unexpectedExits).toEqual([{ id: 2, code: expect.any(Number), signal: "SIGKILL" }]);
    expect(() => cluster.signal(2, "SIGCONT")).not.toThrow();
    // Nodes the runner itself kills are not reported.
    await cluster.kill(3);
    expect(cluster.unexpectedExits.map((exit) => exit.id)).toEqual([2]);
    // The node can be started again on its data dir.
    await cluster.startNode(2);
    expect(cluster.node(2).state).toBe("running");
  } finally {
    await cluster.stop();
  }
}, 60_000);
