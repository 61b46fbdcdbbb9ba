// Proves that a long-running command re-executes itself in place with the allocator's purging off
// (src/cli/allocator-tuning.ts): the very process that was spawned (same pid, answering signals)
// runs with MIMALLOC_PURGE_DELAY=-1, and an operator's own value is left alone.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PURGE_DELAY_VARIABLE } from "../src/cli/allocator-tuning.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-allocator-"));
afterAll(async () => {
  await killAllKvProcesses();
  rmSync(baseDir, { recursive: true, force: true });
});
// The spawned nodes inherit this process's environment: start from one without the variable.
delete process.env[PURGE_DELAY_VARIABLE];

/** The environment of a running process, from /proc. */
function environmentOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter((entry) => entry.includes("="));
  return new Map(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}

describe.skipIf(process.platform !== "linux")("allocator tuning", () => {
  test("kv serve runs with purging off in the process that was spawned, and stops on SIGTERM", async () => {
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir: join(baseDir, "default"), logFile: join(baseDir, "default.log") });
    try {
      expect(environmentOf(node.pid).get(PURGE_DELAY_VARIABLE)).toBe("-1");
      expect(readFileSync(`/proc/${node.pid}/cmdline`, "utf8").split("\0")).toContain("serve");
      const status = (await (await fetch(`${node.httpUrl}/status`)).json()) as { id: number };
      expect(status.id).toBe(1);
      expect(await node.terminate()).toBe(0);
    } finally {
      await node.stop();
    }
  });

  test("an operator's own MIMALLOC_PURGE_DELAY is kept", async () => {
    const node = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "operator"),
      logFile: join(baseDir, "operator.log"),
      env: { [PURGE_DELAY_VARIABLE]: "250" },
    });
    try {
      expect(environmentOf(node.pid).get(PURGE_DELAY_VARIABLE)).toBe("250");
    } finally {
      await node.stop();
    }
  });
});
