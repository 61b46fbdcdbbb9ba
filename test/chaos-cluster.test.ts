// Proves the chaos runner's cluster notices a node that exits without being told to (a crash, or a
// kill from outside the run): it is marked dead and reported, and a later signal to it does not throw.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster, freeBasePort } from "../src/chaos/cluster.ts";
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

test("kv chaos whose cluster cannot start (a port in use under --base-port) prints the node's reason and exits 2, no anomaly (found in a black-box walkthrough: exit 1, the reason only in the log)", async () => {
  const base = freeBasePort(3);
  const taken = Bun.listen({ hostname: "127.0.0.1", port: base + 3002, socket: { data() {} } });
  try {
    const proc = Bun.spawn([...kvCommand(), "chaos", "failover", "--base-port", String(base)], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    try {
      const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
      expect(code).toBe(2);
      expect(out).toContain(`the cluster could not start: node 3 exited with code 1 before starting: cannot listen for clients on 127.0.0.1:${base + 3002}`);
    } finally {
      if (proc.exitCode === null) proc.kill("SIGKILL");
    }
  } finally {
    taken.stop(true);
  }
});
