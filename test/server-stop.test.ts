// Proves an in-process server frees everything on stop(): a process that starts and stops several
// servers (test/children/server-stop-child.ts) holds no more file descriptors after the last than
// after the first (no listening socket, database file or worker's connection left open) and exits on its own at once
// (no timer, socket or worker keeps it alive).
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const baseDir = mkdtempSync(join(tmpdir(), "kv-server-stop-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

/**
 * How long the child may stay alive after its last stop() before it calls itself stuck. The shutdown
 * drain's cap (SHUTDOWN_DRAIN_MS_MAX in src/server/create-server.ts, 3 s) is what a leaked drain
 * timer would hold it for; a process with nothing left exits in milliseconds.
 */
const ALIVE_AFTER_STOP_MS_MAX = 1_500;

test("starting and stopping in-process servers leaves no descriptor open and nothing that keeps the process alive", async () => {
  const child = Bun.spawn([process.execPath, join(import.meta.dir, "children", "server-stop-child.ts"), baseDir, "3", "2", String(ALIVE_AFTER_STOP_MS_MAX)], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  try {
    const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    const lines = out.trim().split("\n");
    expect({ code, lines: lines.slice(1), err: code === 0 ? "" : err }).toEqual({ code: 0, lines: [], err: "" });
    const report = JSON.parse(lines[0] ?? "{}") as { afterFirstRound: string[]; afterLastRound: string[]; checkpointsPerRound: number[] };
    expect(report.afterLastRound).toEqual(report.afterFirstRound);
    // Every round's server started its checkpointer's worker, so the worker's end was checked too.
    expect(report.checkpointsPerRound.map((count) => count > 0)).toEqual([true, true, true]);
  } finally {
    if (child.exitCode === null) process.kill(child.pid, "SIGKILL");
  }
}, 60_000);
