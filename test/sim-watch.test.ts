/**
 * The swarm's watchers (src/sim/sim-watch.ts) against a scripted simulator: how a watcher resumes
 * when nodes refuse it, without the node swarm's randomness deciding which refusals happen.
 */
import { describe, expect, test } from "bun:test";
import { KvError } from "../src/lib/kv-error.ts";
import { createPrng } from "../src/lib/prng.ts";
import type { WatchItem, WatchStart, WatchSubscription } from "../src/node/api.ts";
import type { NodeSim } from "../src/sim/node-sim.ts";
import { outOfOrderOrRepeated, SimWatchers, watchedWrites } from "../src/sim/sim-watch.ts";
import { checkWatch } from "../src/chaos/watch-check.ts";
import type { Operation } from "../src/chaos/history.ts";

/** A node that answers watches as its test says. */
interface ScriptedNode {
  running: boolean;
  watch(filter: unknown, start: WatchStart): Promise<WatchSubscription>;
}

/** A stream that sends `items`, then ends. */
function streamOf(items: WatchItem[]): WatchSubscription {
  let sent = false;
  return {
    next: async () => {
      if (sent) return undefined;
      sent = true;
      return items;
    },
    close: () => undefined,
  };
}

/** Just what SimWatchers uses of NodeSim: servers, whether each runs, a timer queue, raise. */
function scriptedSim(nodes: Map<number, ScriptedNode>) {
  let nowMs = 0;
  const timers: { atMs: number; fn: () => void }[] = [];
  const raised: unknown[] = [];
  const sim = {
    servers: new Map([...nodes].map(([id, node]) => [id, { node }])),
    isRunning: (id: number) => nodes.get(id)?.running === true,
    at: (delayMs: number, fn: () => void) => {
      timers.push({ atMs: nowMs + delayMs, fn });
      timers.sort((a, b) => a.atMs - b.atMs);
    },
    raise: (error: unknown) => raised.push(error),
  };
  /** Runs timers (and the promises they settle) until `untilMs`. */
  const run = async (untilMs: number): Promise<void> => {
    while (timers.length > 0 && (timers[0] as { atMs: number }).atMs <= untilMs) {
      const timer = timers.shift() as { atMs: number; fn: () => void };
      nowMs = timer.atMs;
      timer.fn();
      for (let i = 0; i < 10; i++) await Promise.resolve();
    }
    nowMs = untilMs;
  };
  return { sim: sim as unknown as NodeSim, run, raised };
}

describe("swarm watchers", () => {
  test("a watcher whose last candidate stops without refusing it as compacted ends, and another starts", async () => {
    const opens: { id: number; start: WatchStart }[] = [];
    const node = (id: number, resume: () => Promise<WatchSubscription>): ScriptedNode => ({
      running: true,
      watch: (_filter, start) => {
        opens.push({ id, start });
        if (start !== "now") return resume();
        // The first stream from now starts at version 5 and ends at once (its node stopped, say), so
        // it resumes; a later one starts at 12 and stays open.
        const first = opens.filter((open) => open.start === "now").length === 1;
        return Promise.resolve(first ? streamOf([{ type: "progress", version: 5 }]) : { next: () => new Promise<undefined>(() => undefined), close: () => undefined });
      },
    });
    // Node 1's history no longer reaches version 5; node 2 was removed from the cluster: it refuses
    // every watch as unavailable until the operator stops it.
    const nodes = new Map<number, ScriptedNode>([
      [1, node(1, () => Promise.reject(new KvError("compacted", "compacted", { compactVersion: 9 })))],
      [2, node(2, () => Promise.reject(new KvError("unavailable", "this node was removed from the cluster")))],
    ]);
    const { sim, run, raised } = scriptedSim(nodes);
    const watchers = new SimWatchers(sim, createPrng(7), "k/");
    watchers.start(1, 10);
    await run(500);
    // Both nodes were asked to resume it: node 1 refused as compacted, node 2 refuses as unavailable.
    expect(opens.some((open) => open.id === 1 && open.start !== "now")).toBe(true);
    expect(opens.some((open) => open.id === 2 && open.start !== "now")).toBe(true);
    // The operator stops node 2: no running node keeps the history the watcher needs.
    (nodes.get(2) as ScriptedNode).running = false;
    const before = opens.length;
    await run(1000);
    expect(raised).toEqual([]);
    // It ended as compacted, and a new watcher started from now on node 1.
    const later = opens.slice(before);
    expect(later.some((open) => open.id === 1 && open.start === "now")).toBe(true);
    expect(watchers.digestText().split("|").length).toBe(2);
  });
});

test("an unanswered put that a get read counts as committed at the version the get named: its change missing from every stream and from the reference fails the check (found in a code review: it passed)", () => {
  const op = (fields: Partial<Operation> & Pick<Operation, "id" | "kind" | "key" | "outcome">): Operation => ({ clientId: fields.id, callMs: fields.id, ...fields }) as Operation;
  const history: Operation[] = [
    op({ id: 1, kind: "put", key: "k1", value: "b", outcome: "unknown" }),
    op({ id: 2, kind: "get", key: "k1", output: "b", version: 7, outcome: "ok", returnMs: 3 }),
    op({ id: 3, kind: "put", key: "k1", value: "c", version: 9, outcome: "ok", returnMs: 4 }),
    op({ id: 4, kind: "get", key: "other", output: "x", version: 8, outcome: "ok", returnMs: 5 }),
  ];
  const writes = watchedWrites(history, "k", 0);
  expect(writes.acknowledged).toEqual([
    { key: "k1", kind: "put", value: "c", version: 9 },
    { key: "k1", kind: "put", value: "b", version: 7 },
  ]);
  expect(writes.unknown).toEqual([{ key: "k1", kind: "put", value: "b" }]);
  const skipped = [{ version: 9, kind: "put" as const, key: "k1", value: "c" }];
  const result = checkWatch({ reference: skipped, referenceAfter: 0, throughVersion: 10, watchers: [{ label: "w1", prefix: "k", startAfter: 0, events: skipped, reached: 10 }], ...writes, singleKeyWrites: true });
  expect(result.ok).toBe(false);
  expect(result.problems.map((problem) => problem.kind)).toContain("ack_missing");
  // With the change in the reference and the stream, it passes.
  const whole = [{ version: 7, kind: "put" as const, key: "k1", value: "b" }, ...skipped];
  expect(checkWatch({ reference: whole, referenceAfter: 0, throughVersion: 10, watchers: [{ label: "w1", prefix: "k", startAfter: 0, events: whole, reached: 10 }], ...writes, singleKeyWrites: true }).ok).toBe(true);
});

test("a watcher's events are judged for order and repeats whatever the reference covers: a change twice, or a version going back, is said (a review found a quarter of the swarm's events judged by nothing)", () => {
  const put = (version: number, key: string) => ({ version, kind: "put" as const, key, value: "v" });
  expect(outOfOrderOrRepeated([put(3, "a"), put(3, "b"), put(5, "a")])).toBeUndefined();
  expect(outOfOrderOrRepeated([put(3, "a"), put(3, "a")])).toBe("got a at version 3 twice");
  expect(outOfOrderOrRepeated([put(5, "a"), put(3, "b")])).toBe("got version 3 (b) after 5");
});
