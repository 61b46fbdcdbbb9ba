// Proves `kv chaos lock` runs as a user runs it (the built executable) and passes on a healthy kv: lock holders paused past their TTL let a second client take the lock (counted, not failed), while the fenced counter stays safe; --json carries the counts, --report is written; bad flags are usage errors; and the pure parts (pause plan, tenures from reports) do what they say.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planHolderPauses, tenuresOf, type LockResult } from "../src/chaos/lock.ts";
import { exclusionBreaches } from "../src/chaos/lock-check.ts";
import { runKv } from "./helpers/kv-binary.ts";

/** Bounds a hung run; asserts nothing about speed. */
const SCENARIO_TIMEOUT_MS = 120_000;

const outDir = mkdtempSync(join(tmpdir(), "kv-chaos-lock-test-"));
afterAll(() => rmSync(outDir, { recursive: true, force: true }));

describe("kv chaos lock, through the built executable", () => {
  test(
    "seed 3 for 8 s: holders paused past their TTL, overlapping holders counted, the counter safe; --json and --report written",
    async () => {
      const jsonFile = join(outDir, "lock.json");
      const reportFile = join(outDir, "lock.html");
      const { code, out } = await runKv(["chaos", "lock", "--duration", "8s", "--seed", "3", "--json", jsonFile, "--report", reportFile]);
      if (code !== 0) console.error(out);
      expect(code).toBe(0);
      expect(out).toContain("=== Chaos Test: Lock Holders Paused Past Their TTL ===");
      expect(out).toContain("Seed: 3 (replay: kv chaos lock --seed 3 --duration 8s)");
      expect(out).toContain("Problems: fence_order 0, count 0, lost_ack 0, phantom 0, final_value 0, shared_fence 0");
      expect(out).not.toContain("❌");

      const body = JSON.parse(readFileSync(jsonFile, "utf8")) as { scenario: string; ok: boolean; result: LockResult };
      expect(body.scenario).toBe("lock");
      const result = body.result;
      expect(result.ok).toBe(true);
      expect(result.holderPauses.length).toBe(planHolderPauses(3, 8_000, 2_000).length);
      expect(result.holderPauses.length).toBeGreaterThan(0);
      // Every client took the lock, and more than one update went through.
      expect(result.perClient.every((c) => c.tenures > 0 && c.exitCode === 0)).toBe(true);
      expect(result.acceptedUpdates).toBeGreaterThan(1);
      expect(result.finalCount).toBe(result.acceptedUpdates);
      // A paused holder outlived its lease while another took the lock: the honest number is above 0.
      expect(result.overlaps).toBeGreaterThan(0);
      // ... and what kept the counter safe: the stale holder's update was fenced out or refused by ifVersion.
      expect(result.updates.fenced + result.updates.conflict).toBeGreaterThan(0);
      expect(Object.values(result.problems).every((n) => n === 0)).toBe(true);

      const html = readFileSync(reportFile, "utf8");
      expect(html).toContain("Counter safe");
      expect(html).toContain("client 1");
    },
    SCENARIO_TIMEOUT_MS,
  );

  test("bad flags are usage errors (exit 2) and start nothing", async () => {
    const clients = await runKv(["chaos", "lock", "--clients", "1"]);
    expect(clients.code).toBe(2);
    expect(clients.out).toContain("--clients");
    const nemesis = await runKv(["chaos", "lock", "--nemesis", "fire"]);
    expect(nemesis.code).toBe(2);
    expect(nemesis.out).toContain("--nemesis must be one of holders, all, partition, kill, pause");
    const proxies = await runKv(["chaos", "lock", "--nemesis", "partition", "--base-port", "5001"]);
    expect(proxies.code).toBe(2);
    expect(proxies.out).toContain("'lock' needs the runner's TCP proxies");
  });
});

describe("the scenario's pure parts", () => {
  test("planHolderPauses: seeded, inside the first 80% of the run, each longer than the TTL", () => {
    const plan = planHolderPauses(11, 30_000, 2_000);
    expect(plan).toEqual(planHolderPauses(11, 30_000, 2_000));
    expect(plan).not.toEqual(planHolderPauses(12, 30_000, 2_000));
    expect(plan.length).toBeGreaterThan(2);
    for (const p of plan) {
      expect(p.atMs).toBeLessThan(24_000);
      expect(p.durationMs).toBeGreaterThan(2_000);
    }
    for (let i = 1; i < plan.length; i++) expect(plan[i]!.atMs).toBeGreaterThan(plan[i - 1]!.atMs + plan[i - 1]!.durationMs);
  });

  test("tenuresOf: a tenure ends when the client releases, or earlier when it noticed the loss, or at the end; a release carries when it began and until when the lease was known alive", () => {
    const tenures = tenuresOf(
      2,
      [
        { type: "acquired", fence: 5, key: "m/1", atMs: 100 },
        { type: "released", fence: 5, atMs: 200, releaseStartMs: 190, aliveUntilMs: 1_150 },
        { type: "acquired", fence: 9, key: "m/2", atMs: 300 },
        { type: "lost", fence: 9, atMs: 350, aliveUntilMs: 320 },
        { type: "released", fence: 9, atMs: 400, releaseStartMs: 380, aliveUntilMs: 330 },
        { type: "acquired", fence: 12, key: "m/3", atMs: 500 },
        { type: "lost", fence: 12, atMs: 600, aliveUntilMs: 590 },
      ],
      900,
    );
    expect(tenures).toEqual([
      { client: 2, fence: 5, acquiredMs: 100, endMs: 200, end: "released", releaseStartMs: 190, aliveUntilMs: 1_150 },
      { client: 2, fence: 9, acquiredMs: 300, endMs: 350, end: "lost", releaseStartMs: 380, aliveUntilMs: 320 },
      { client: 2, fence: 12, acquiredMs: 500, endMs: 600, end: "lost", aliveUntilMs: 590 },
    ]);
  });

  test("a tenure the run ended on is known alive until what its client knew as it took the lock: a second client taking the lock before then is a mutual_exclusion breach (found in a code review: such a tenure was never judged as the earlier holder, and this passed)", () => {
    const holder = tenuresOf(1, [{ type: "acquired", fence: 1, key: "m/1", atMs: 100, aliveUntilMs: 5_000 }], 10_000);
    expect(holder).toEqual([{ client: 1, fence: 1, acquiredMs: 100, endMs: 10_000, end: "run_end", aliveUntilMs: 5_000 }]);
    const second = tenuresOf(
      2,
      [
        { type: "acquired", fence: 2, key: "m/2", atMs: 200, aliveUntilMs: 5_200 },
        { type: "released", fence: 2, atMs: 300, releaseStartMs: 290, aliveUntilMs: 5_250 },
      ],
      10_000,
    );
    expect(exclusionBreaches([...holder, ...second]).map(({ earlier, later }) => [earlier.fence, later.fence])).toEqual([[1, 2]]);
    // Taken after it, nothing.
    const after = tenuresOf(2, [{ type: "acquired", fence: 2, key: "m/2", atMs: 5_100, aliveUntilMs: 9_000 }], 10_000);
    expect(exclusionBreaches([...holder, ...after])).toEqual([]);
  });
});
