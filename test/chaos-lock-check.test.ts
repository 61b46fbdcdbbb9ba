/** The chaos lock checker finds each way the protected counter can go wrong, and counts overlapping tenures without calling them a failure. */
import { describe, expect, test } from "bun:test";
import { checkLock, EXCLUSION_TOLERANCE_MS, exclusionBreaches, tenureOverlaps, type CounterValue, type CounterWrite, type LockTenure } from "../src/chaos/lock-check.ts";

const initial: CounterValue = { count: 0, fence: 0, client: 0, n: 0 };
const value = (count: number, fence: number, client: number, n = 1) => JSON.stringify({ count, fence, client, n });

/** A clean run: three holders one after another, each one accepted update. */
function cleanRun() {
  const tenures: LockTenure[] = [
    { client: 1, fence: 10, acquiredMs: 0, endMs: 100, end: "released" },
    { client: 2, fence: 20, acquiredMs: 110, endMs: 200, end: "released" },
    { client: 3, fence: 30, acquiredMs: 210, endMs: 300, end: "released" },
  ];
  const writes: CounterWrite[] = [
    { client: 1, fence: 10, value: value(1, 10, 1), outcome: "ok", version: 11, callMs: 50, returnMs: 60 },
    { client: 2, fence: 20, value: value(2, 20, 2), outcome: "ok", version: 21, callMs: 150, returnMs: 160 },
    { client: 3, fence: 30, value: value(3, 30, 3), outcome: "unknown", callMs: 250, returnMs: 290 },
  ];
  const committed = [
    { version: 11, value: value(1, 10, 1) },
    { version: 21, value: value(2, 20, 2) },
    { version: 31, value: value(3, 30, 3) },
  ];
  return { tenures, writes, committed, initial, finalValue: value(3, 30, 3) as string | null };
}

describe("checkLock", () => {
  test("a clean run passes, counting every committed update (an unknown outcome that committed included)", () => {
    const result = checkLock(cleanRun());
    expect(result.problems).toEqual([]);
    expect(result.ok).toBe(true);
    expect(result.acceptedUpdates).toBe(3);
    expect(result.overlaps).toEqual([]);
  });

  test("a stale holder's update accepted after a larger fence is a fence_order problem", () => {
    const run = cleanRun();
    const stale = value(3, 15, 1, 2);
    run.writes.push({ client: 1, fence: 15, value: stale, outcome: "ok", version: 41, callMs: 310, returnMs: 320 });
    run.committed.push({ version: 41, value: stale });
    run.finalValue = stale;
    const result = checkLock(run);
    expect(result.ok).toBe(false);
    expect(result.counts.fence_order).toBe(1);
    // its count repeats 3 after 3
    expect(result.counts.count).toBe(1);
  });

  test("an update that skips a count is a count problem", () => {
    const run = cleanRun();
    run.committed[1] = { version: 21, value: value(5, 20, 2) };
    run.writes[1] = { ...run.writes[1]!, value: value(5, 20, 2) };
    run.committed[2] = { version: 31, value: value(6, 30, 3) };
    run.writes[2] = { ...run.writes[2]!, value: value(6, 30, 3) };
    run.finalValue = value(6, 30, 3);
    const result = checkLock(run);
    expect(result.counts.count).toBe(1);
    expect(result.ok).toBe(false);
  });

  test("an acknowledged update missing from the history is lost_ack; one committed at another version too", () => {
    const run = cleanRun();
    run.writes.push({ client: 2, fence: 40, value: value(4, 40, 2, 2), outcome: "ok", version: 51, callMs: 400, returnMs: 410 });
    expect(checkLock(run).counts.lost_ack).toBe(1);
    const moved = cleanRun();
    moved.writes[0] = { ...moved.writes[0]!, version: 12 };
    expect(checkLock(moved).counts.lost_ack).toBe(1);
  });

  test("a committed update no client sent, or that was refused, is a phantom", () => {
    const run = cleanRun();
    run.writes[1] = { ...run.writes[1]!, outcome: "conflict" };
    delete (run.writes[1] as { version?: number }).version;
    const result = checkLock(run);
    expect(result.counts.phantom).toBe(1);
    expect(result.ok).toBe(false);
  });

  test("a final value other than the last committed update is final_value", () => {
    const run = cleanRun();
    run.finalValue = value(2, 20, 2);
    expect(checkLock(run).counts.final_value).toBe(1);
    run.finalValue = null;
    expect(checkLock(run).counts.final_value).toBe(1);
  });

  test("no update at all: the final value must be the initial one", () => {
    const ok = checkLock({ tenures: [], writes: [], committed: [], initial, finalValue: JSON.stringify(initial) });
    expect(ok.ok).toBe(true);
    expect(ok.acceptedUpdates).toBe(0);
  });

  test("two clients with one fence is shared_fence", () => {
    const run = cleanRun();
    run.tenures.push({ client: 4, fence: 20, acquiredMs: 400, endMs: 450, end: "released" });
    expect(checkLock(run).counts.shared_fence).toBe(1);
  });

  test("one client given the same fence for two tenures is shared_fence too (found in review: only two clients were)", () => {
    const run = cleanRun();
    const first = run.tenures[0]!;
    run.tenures.push({ client: first.client, fence: first.fence, acquiredMs: 900, endMs: 950, end: "released" });
    const result = checkLock(run);
    expect(result.counts.shared_fence).toBe(1);
    expect(result.ok).toBe(false);
  });

  test("overlapping tenures are counted with their overlap, and do not fail the run by themselves", () => {
    const run = cleanRun();
    // client 1, paused past its TTL, believed it held the lock until 180 ms; client 2 took it at 110 ms.
    run.tenures[0] = { client: 1, fence: 10, acquiredMs: 0, endMs: 180, end: "lost" };
    run.writes.push({ client: 1, fence: 10, outcome: "fenced", callMs: 170, returnMs: 175 });
    const result = checkLock(run);
    expect(result.ok).toBe(true);
    expect(result.overlaps.length).toBe(1);
    expect(result.overlaps[0]?.overlapMs).toBe(70);
    expect(result.overlapMsTotal).toBe(70);
  });
});

describe("mutual exclusion", () => {
  /** Client 1 held fence 10 from 0 ms, its lease known alive until `aliveUntilMs`, and began to release at `releaseStartMs`. */
  const holder = (aliveUntilMs: number, releaseStartMs: number): LockTenure => ({
    client: 1,
    fence: 10,
    acquiredMs: 0,
    endMs: releaseStartMs + 5,
    end: "released",
    releaseStartMs,
    aliveUntilMs,
  });
  const next = (acquiredMs: number, fence = 20, client = 2): LockTenure => ({ client, fence, acquiredMs, endMs: acquiredMs + 100, end: "released" });

  test("a lock taken while the earlier holder's lease was known alive and not released is mutual_exclusion", () => {
    const run = cleanRun();
    // Client 1 kept its lease alive until 1,000 ms and began to release at 150; client 2 says it took
    // the lock at 110 (client 3, at 210, took it after that release began).
    run.tenures[0] = holder(1_000, 150);
    const result = checkLock(run);
    expect(result.counts.mutual_exclusion).toBe(1);
    expect(result.ok).toBe(false);
    expect(result.problems.find((p) => p.kind === "mutual_exclusion")?.detail).toContain("client 2 took the lock (fence 20) at 110 ms");
  });

  test("a holder paused past its lease may be overtaken: an overlap, not a problem", () => {
    // Client 1's lease was known alive until 100 ms only; it resumed and began to release at 900.
    const breaches = exclusionBreaches([holder(100, 900), next(100 + 1)]);
    expect(breaches).toEqual([]);
    const overlaps = tenureOverlaps([holder(100, 900), next(101)]);
    expect(overlaps.length).toBe(1);
  });

  test("the lock taken after the earlier holder began to release is no breach, whatever its lease", () => {
    expect(exclusionBreaches([holder(5_000, 300), next(300)])).toEqual([]);
    expect(exclusionBreaches([holder(5_000, 300), next(299)]).length).toBe(1);
  });

  test("within the tolerance before the lease's known end is no breach; further before it is", () => {
    expect(exclusionBreaches([holder(1_000, 2_000), next(1_000 - EXCLUSION_TOLERANCE_MS)])).toEqual([]);
    expect(exclusionBreaches([holder(1_000, 2_000), next(1_000 - EXCLUSION_TOLERANCE_MS - 1)]).length).toBe(1);
  });

  test("a tenure is checked against every smaller fence, not only the one just before it", () => {
    // Fence 15 was overtaken legitimately (paused past its lease); fence 10's lease still held at 500.
    const paused: LockTenure = { client: 3, fence: 15, acquiredMs: 50, endMs: 900, end: "released", releaseStartMs: 880, aliveUntilMs: 60 };
    const breaches = exclusionBreaches([next(500), paused, holder(2_000, 1_500)]);
    expect(breaches.map((b) => `${b.earlier.fence}->${b.later.fence}`)).toEqual(["10->15", "10->20"]);
  });

  test("a tenure that ended lost constrains as one released does, until its lease's known end (found in a review: lost tenures were skipped, and a lease expired early is what makes them)", () => {
    const lost: LockTenure = { client: 1, fence: 10, acquiredMs: 0, endMs: 3_000, end: "lost", aliveUntilMs: 2_000 };
    expect(exclusionBreaches([lost, next(1_500)]).map((b) => `${b.earlier.fence}->${b.later.fence}`)).toEqual(["10->20"]);
    expect(exclusionBreaches([lost, next(2_000 - EXCLUSION_TOLERANCE_MS)])).toEqual([]);
    const run = cleanRun();
    run.tenures[0] = { ...lost, endMs: 90 };
    expect(checkLock(run).problems.find((p) => p.kind === "mutual_exclusion")?.detail).toContain("it noticed the lease gone at 90 ms");
  });

  test("tenures without a release (the run ended) constrain no one; tenures sharing a fence are shared_fence's", () => {
    const unreleased: LockTenure = { client: 1, fence: 10, acquiredMs: 0, endMs: 5_000, end: "run_end" };
    expect(exclusionBreaches([unreleased, next(10)])).toEqual([]);
    expect(exclusionBreaches([holder(1_000, 900), next(20, 10, 2)])).toEqual([]);
  });
});

describe("tenureOverlaps", () => {
  test("finds every overlapping pair of different clients, not a client with itself", () => {
    const tenures: LockTenure[] = [
      { client: 1, fence: 1, acquiredMs: 0, endMs: 100, end: "lost" },
      { client: 2, fence: 2, acquiredMs: 50, endMs: 120, end: "released" },
      { client: 3, fence: 3, acquiredMs: 90, endMs: 95, end: "released" },
      { client: 1, fence: 4, acquiredMs: 99, endMs: 130, end: "released" },
    ];
    const pairs = tenureOverlaps(tenures).map((o) => `${o.first.fence}-${o.second.fence}:${o.overlapMs}`);
    expect(pairs.sort()).toEqual(["1-2:50", "1-3:5", "2-3:5", "2-4:21"].sort());
  });
});
