// Proves the watch history and streams of one node: changes come out in version order from any start, bounds by
// count, age and bytes compact the oldest (a start before them is `compacted` with the oldest start served), retries
// and compare-and-set mismatches are no change, and a stream whose client does not keep up ends with slow_watcher.
import { describe, expect, test } from "bun:test";
import { ManualClock } from "../src/lib/clock.ts";
import { KvError } from "../src/lib/kv-error.ts";
import type { ApplyResult } from "../src/kv/apply-plan.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { changeBytes, changeOf, changesOf, type WatchChange, WatchHistory } from "../src/kv/watch-history.ts";
import { createPrng } from "../src/lib/prng.ts";
import type { WatchItem, WatchSubscription } from "../src/node/api.ts";
import { defaultWatch, NodeWatch } from "../src/node/watch.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";

const bytes = (text: string) => new TextEncoder().encode(text);
const put = (version: number, key: string, value = `v${version}`): WatchChange => ({ kind: "put", key, value: bytes(value), version });
const all = () => true;
const limits = { entriesMax: 1_000, retentionMs: 60_000, bytesMax: 1 << 20 };

function putEntry(index: number, key: string, value: string): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: bytes(value) }) };
}
function deleteEntry(index: number, key: string): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "delete", key }) };
}

describe("WatchHistory", () => {
  test("scans the matching changes after a version, in version order, and says how far it looked", () => {
    const history = new WatchHistory(limits, 0);
    history.record(1, [put(1, "cfg/a")], 0);
    history.record(2, [], 0); // a noop
    history.record(3, [put(3, "other")], 0);
    history.record(4, [{ kind: "delete", key: "cfg/a", version: 4, reason: "delete" }], 0);
    const scan = history.scan(0, (key) => key.startsWith("cfg/"), 100, 100);
    expect(scan.changes.map((change) => [change.kind, change.version])).toEqual([["put", 1], ["delete", 4]]);
    expect(scan.throughVersion).toBe(4);
    expect(history.scan(1, all, 100, 100).changes.map((change) => change.version)).toEqual([3, 4]);
    expect(history.scan(4, all, 100, 100)).toEqual({ changes: [], throughVersion: 4, scanned: 0 });
    // A batch limit stops at a version boundary and reports where it stopped.
    expect(history.scan(0, all, 1, 100)).toEqual({ changes: [put(1, "cfg/a")], throughVersion: 1, scanned: 1 });
  });

  test("keeps at most entriesMax changes: the oldest go and the history is compacted through them", () => {
    const history = new WatchHistory({ ...limits, entriesMax: 3 }, 0);
    for (let version = 1; version <= 5; version++) history.record(version, [put(version, `k${version}`)], 0);
    expect(history.size()).toBe(3);
    expect(history.compactedThrough()).toBe(2);
    expect(history.scan(2, all, 100, 100).changes.map((change) => change.version)).toEqual([3, 4, 5]);
  });

  test("drops changes older than retentionMs, and those past bytesMax", () => {
    const aged = new WatchHistory({ ...limits, retentionMs: 1_000 }, 10);
    aged.record(11, [put(11, "a")], 0);
    aged.record(12, [put(12, "b")], 500);
    aged.trim(1_200);
    expect(aged.compactedThrough()).toBe(11);
    expect(aged.size()).toBe(1);
    const big = new WatchHistory({ ...limits, bytesMax: 300 }, 0);
    big.record(1, [put(1, "a", "x".repeat(200))], 0);
    big.record(2, [put(2, "b", "x".repeat(200))], 0);
    expect(big.compactedThrough()).toBe(1);
    expect(big.size()).toBe(1);
  });

  test("a snapshot empties it at the snapshot's index", () => {
    const history = new WatchHistory(limits, 0);
    history.record(1, [put(1, "a")], 0);
    history.reset(50);
    expect(history.compactedThrough()).toBe(50);
    expect(history.lastVersion()).toBe(50);
    expect(history.size()).toBe(0);
  });
});

describe("changeOf", () => {
  test("a put and a delete of a present key are changes; a retry, a conflict, a reuse and a delete of an absent key are not", () => {
    expect(changeOf(putEntry(7, "k", "v"), { kind: "put", index: 7, version: 7 })).toEqual({ kind: "put", key: "k", value: bytes("v"), version: 7 });
    expect(changeOf(deleteEntry(8, "k"), { kind: "delete", index: 8, deleted: true, version: 8 })).toEqual({ kind: "delete", key: "k", version: 8, reason: "delete" });
    const nothing: [Entry, ApplyResult][] = [
      [putEntry(9, "k", "v"), { kind: "put", index: 9, version: 7 }], // an idempotent retry answered from its session
      [deleteEntry(10, "k"), { kind: "delete", index: 10, deleted: false, version: 10 }],
      [deleteEntry(11, "k"), { kind: "delete", index: 11, deleted: true, version: 8 }], // a retried delete
      [putEntry(12, "k", "v"), { kind: "conflict", index: 12, version: 7 }],
      [putEntry(13, "k", "v"), { kind: "reused", index: 13 }],
      [putEntry(14, "k", "v"), { kind: "skipped", index: 14 }],
    ];
    for (const [entry, result] of nothing) expect(changeOf(entry, result)).toBeUndefined();
  });
});

/** Everything a subscription hands out until it has nothing more right now (no progress due). */
async function drain(subscription: WatchSubscription, count: number): Promise<WatchItem[]> {
  const items: WatchItem[] = [];
  while (items.length < count) {
    const next = await subscription.next();
    if (next === undefined) break;
    items.push(...next);
  }
  return items;
}

describe("NodeWatch", () => {
  const apply = (watch: NodeWatch, entries: Entry[]) =>
    watch.applied(
      entries,
      entries.map((entry) => ({ kind: "put", index: entry.index, version: entry.index }) as ApplyResult),
    );

  test("streams resumed far back scan the history a bounded amount per turn of the event loop, not all at once (found in a code review: 50 resumes held the loop 80 ms)", async () => {
    const clock = new ManualClock();
    const turns: (() => void)[] = [];
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 100_000 }, clock, 0, (turn) => turns.push(turn));
    const entries: Entry[] = [];
    for (let v = 1; v <= 60_000; v++) entries.push(putEntry(v, `busy/${v % 100}`, "x"));
    apply(watch, entries);
    // Streams on keys nobody wrote, resumed from the start: each scans all 60,000 changes to find nothing.
    const streams = Array.from({ length: 8 }, (_, i) => watch.subscribe({ key: `quiet/${i}` }, 0));
    for (const stream of streams) expect(await stream.next()).toEqual([{ type: "progress", version: 0 }]);
    const answers = streams.map((stream) => stream.next());
    for (let i = 0; i < 100; i++) await Promise.resolve();
    // Within one turn, at most one scan's worth (16,384 changes) for all of them together.
    expect(watch.historyScanned()).toBeLessThanOrEqual(16_384);
    for (let turn = 0; turn < 1_000 && turns.length > 0; turn++) {
      const before = watch.historyScanned();
      turns.shift()?.();
      for (let i = 0; i < 100; i++) await Promise.resolve();
      expect(watch.historyScanned() - before).toBeLessThanOrEqual(2 * 16_384);
    }
    expect(turns).toEqual([]);
    // Every stream got through the whole history in the end: its progress names the last version.
    clock.advance(1_000);
    expect(await Promise.all(answers)).toEqual(streams.map(() => [{ type: "progress", version: 60_000 }]));
    watch.stop();
  });

  test("a start older than the history is compacted, with the oldest start served", () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 2 }, clock, 0);
    apply(watch, [putEntry(1, "a", "1"), putEntry(2, "a", "2"), putEntry(3, "a", "3")]);
    let error: unknown;
    try {
      watch.subscribe({ prefix: "" }, 0);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe("compacted");
    expect((error as KvError).details.compactVersion).toBe(2);
    expect(() => watch.subscribe({ prefix: "" }, 1).close()).not.toThrow();
    watch.stop();
  });

  test("a stream opens with progress, then sends each matching change once, in order, and progress while idle", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, progressMs: 1_000 }, clock, 0);
    const subscription = watch.subscribe({ prefix: "cfg/" }, 0);
    expect(await subscription.next()).toEqual([{ type: "progress", version: 0 }]);
    apply(watch, [putEntry(1, "cfg/a", "on"), putEntry(2, "x", "no"), putEntry(3, "cfg/b", "off")]);
    const items = await drain(subscription, 2);
    expect(items.map((item) => (item.type === "change" ? item.change.version : -1))).toEqual([1, 3]);
    const idle = subscription.next();
    let progress: WatchItem[] | undefined;
    void idle.then((value) => (progress = value));
    clock.advance(500);
    await Promise.resolve();
    expect(progress).toBeUndefined();
    clock.advance(500);
    await Bun.sleep(0);
    expect(progress).toEqual([{ type: "progress", version: 3 }]);
    subscription.close();
    expect(watch.count()).toBe(0);
    watch.stop();
  });

  test("a stream opens with progress at its start even when a change came before its first read, so a client knows where it started (found in review)", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch(defaultWatch, clock, 0);
    apply(watch, [putEntry(1, "cfg/a", "x")]);
    const stream = watch.subscribe({ prefix: "cfg/" }, watch.lastVersion());
    apply(watch, [putEntry(2, "cfg/b", "y")]);
    // Before, the change came first: a checker reading where the stream started from its first
    // event could not tell a change dropped between the start and it.
    expect(await stream.next()).toEqual([{ type: "progress", version: 1 }]);
    expect((await stream.next())?.map((item) => (item.type === "change" ? item.change.version : item.type))).toEqual([2]);
    stream.close();
    watch.stop();
  });

  test("a stream whose client does not read ends with slow_watcher past its buffer, and a resume after its last id loses nothing", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, bufferEventsMax: 3 }, clock, 0);
    const slow = watch.subscribe({ prefix: "" }, 0);
    expect(await slow.next()).toEqual([{ type: "progress", version: 0 }]);
    apply(watch, [putEntry(1, "a", "1")]);
    const first = await slow.next();
    expect(first).toEqual([{ type: "change", change: put(1, "a", "1") }]);
    apply(watch, [2, 3, 4, 5].map((index) => putEntry(index, "a", String(index))));
    const end = await slow.next();
    expect(end).toHaveLength(1);
    expect(end?.[0]).toMatchObject({ type: "error", error: "slow_watcher" });
    expect(await slow.next()).toBeUndefined();
    expect(watch.count()).toBe(0);
    const resumed = watch.subscribe({ prefix: "" }, 1);
    const items = await drain(resumed, 5);
    expect(items.map((item) => (item.type === "change" ? item.change.version : -1))).toEqual([-1, 2, 3, 4, 5]); // it opens with progress at 1
    resumed.close();
    watch.stop();
  });

  test("a key filter sees only its key, and the session space is never shown", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch(defaultWatch, clock, 0);
    const everything = watch.subscribe({ prefix: "" }, 0);
    const one = watch.subscribe({ key: "b" }, 0);
    apply(watch, [putEntry(1, "\u0000session/x", "s"), putEntry(2, "b", "1"), putEntry(3, "bc", "2")]);
    const seen = (items: WatchItem[]) => items.filter((item) => item.type === "change").map((item) => (item.type === "change" ? item.change.key : ""));
    expect(seen(await drain(everything, 2))).toEqual(["b", "bc"]);
    expect(seen(await drain(one, 2))).toEqual(["b"]); // after its opening progress
    watch.stop();
  });
});

describe("NodeWatch when the history turns over faster than its streams send", () => {
  const apply = (watch: NodeWatch, entries: Entry[]) =>
    watch.applied(
      entries,
      entries.map((entry) => ({ kind: "put", index: entry.index, version: entry.index }) as ApplyResult),
    );
  /** Resolves with the next `next()` once the clock has moved `ms` (ticks of the watch's ticker). */
  async function nextAfter(clock: ManualClock, subscription: WatchSubscription, ms: number): Promise<WatchItem[] | undefined> {
    let got: WatchItem[] | undefined;
    let settled = false;
    void subscription.next().then((items) => {
      got = items;
      settled = true;
    });
    for (let waited = 0; waited < ms && !settled; waited += 10) {
      clock.advance(10);
      await Bun.sleep(0);
    }
    expect(settled).toBe(true);
    return got;
  }

  test("an idle stream is not cut off when writes elsewhere push its position out of the history: nothing it waits for was dropped", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 10, progressMs: 1_000 }, clock, 0);
    const idle = watch.subscribe({ key: "lock/1" }, 0);
    expect(await idle.next()).toEqual([{ type: "progress", version: 0 }]);
    apply(watch, Array.from({ length: 20 }, (_, i) => putEntry(i + 1, `other/${i}`, "x")));
    // Before, it ended with slow_watcher, and its resume after 0 was compacted on every node.
    expect(await nextAfter(clock, idle, 2_000)).toEqual([{ type: "progress", version: 20 }]);
    apply(watch, [putEntry(21, "lock/1", "mine")]);
    expect(await idle.next()).toEqual([{ type: "change", change: { kind: "put", key: "lock/1", value: new TextEncoder().encode("mine"), version: 21 } }]);
    idle.close();
    watch.stop();
  });

  test("a stream whose own waiting changes are all still kept goes on past the compaction; one whose waiting change was dropped ends", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 10 }, clock, 0);
    const kept = watch.subscribe({ key: "a" }, 0);
    const lost = watch.subscribe({ key: "b" }, 0);
    expect(await kept.next()).toEqual([{ type: "progress", version: 0 }]);
    expect(await lost.next()).toEqual([{ type: "progress", version: 0 }]);
    // "b" changes first and is pushed out; "a" changes last, after the others, and is kept.
    apply(watch, [putEntry(1, "b", "1"), ...Array.from({ length: 12 }, (_, i) => putEntry(i + 2, `other/${i}`, "x")), putEntry(14, "a", "2")]);
    const items = await kept.next();
    expect(items?.map((item) => (item.type === "change" ? item.change.version : item.type))).toEqual([14]);
    const end = await lost.next();
    // Its last id is compacted here: it ends as compacted, saying where this node's history starts
    // (found in a black-box review: it ended with slow_watcher, whose documented advice is to resume
    // from the last id, which is answered 410 here), and the message must not promise that a resume
    // here loses nothing (found in a code review).
    expect(end?.[0]).toMatchObject({ type: "error", error: "compacted", compactVersion: 5 });
    const message = end?.[0]?.type === "error" ? end[0].message : "";
    expect(message).toContain("another node");
    expect(message).not.toContain("nothing is lost");
    kept.close();
    watch.stop();
  });

  test("one version of more changes than the history's bounds is kept whole until the next one: its streams get all of it, and a resume before it is served", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 3 }, clock, 0);
    const live = watch.subscribe({ prefix: "svc/" }, 0);
    expect(await live.next()).toEqual([{ type: "progress", version: 0 }]);
    // A lease's expiry deleting four keys at version 1: before, the history dropped it as it was
    // recorded, so the stream ended with slow_watcher and its resume was compacted everywhere.
    const keys = ["svc/a", "svc/b", "svc/c", "svc/d"];
    watch.applied([{ index: 1, term: 1, type: EntryType.Normal, data: new Uint8Array([1]) }], [{ kind: "lease-expired", index: 1, ids: [7], deletedKeys: keys } as ApplyResult]);
    const items = await live.next();
    expect(items?.map((item) => (item.type === "change" ? `${item.change.kind} ${item.change.key} ${item.change.version}` : item.type))).toEqual(keys.map((key) => `delete ${key} 1`));
    const resumed = watch.subscribe({ prefix: "svc/" }, 0);
    expect(await resumed.next()).toEqual([{ type: "progress", version: 0 }]);
    expect((await resumed.next())?.length).toBe(4);
    resumed.close();
    live.close();
    watch.stop();
  });

  test("a stream's last id is kept resumable: progress comes early once the history has moved past half the way to it", async () => {
    const clock = new ManualClock();
    const watch = new NodeWatch({ ...defaultWatch, historyEntriesMax: 10, progressMs: 60_000 }, clock, 0);
    const idle = watch.subscribe({ key: "lock/1" }, 0);
    expect(await idle.next()).toEqual([{ type: "progress", version: 0 }]);
    for (let round = 1; round <= 5; round++) {
      const from = (round - 1) * 8;
      apply(watch, Array.from({ length: 8 }, (_, i) => putEntry(from + i + 1, `other/${i}`, "x")));
      // Long before the 60 s progress period: the last id it sent (from) would soon be compacted.
      expect(await nextAfter(clock, idle, 500)).toEqual([{ type: "progress", version: from + 8 }]);
      // A client resuming from it is served.
      watch.subscribe({ key: "lock/1" }, from + 8).close();
    }
    idle.close();
    watch.stop();
  });
});

describe("what the history keeps of a value", () => {
  const putEntry = (index: number, data: Uint8Array): Entry => ({ index, term: 1, type: EntryType.Normal, data });
  const result = (index: number): ApplyResult => ({ kind: "put", index, version: index });
  const keptValue = (history: WatchHistory, version: number): Uint8Array => {
    const [change] = history.scan(version - 1, all, 1, 1).changes;
    if (change?.kind !== "put") throw new Error(`no put at ${version}`);
    return change.value;
  };

  test("a small value is copied out of the entry it came in, so the history never pins a whole batch of entries", () => {
    // Entries arrive as views into one large buffer (a peer's append carries up to 1 MiB of them).
    const batch = new Uint8Array(1 << 20);
    const data = encodeCommand({ op: "put", key: "k", value: new TextEncoder().encode("v") });
    batch.set(data, 4096);
    const history = new WatchHistory(limits, 6);
    history.record(7, changesOf(putEntry(7, batch.subarray(4096, 4096 + data.byteLength)), result(7)), 0);
    batch.fill(0); // the batch's buffer is reused or freed: the history's value must not change
    const value = keptValue(history, 7);
    expect(new TextDecoder().decode(value)).toBe("v");
    expect(value.buffer).not.toBe(batch.buffer);
  });

  test("a large value in an entry that owns its buffer is kept as a view; one inside a larger buffer (a peer's whole append) is copied", () => {
    const own = encodeCommand({ op: "put", key: "a", value: new Uint8Array(100_000).fill(1) });
    const history = new WatchHistory(limits, 0);
    history.record(1, changesOf(putEntry(1, own), result(1)), 0);
    expect(keptValue(history, 1).buffer).toBe(own.buffer);
    // The same entry as a view into a 4 MiB request body: the history must not keep the body alive.
    const body = new Uint8Array(4 << 20);
    body.set(own, 1_000);
    history.record(2, changesOf(putEntry(2, body.subarray(1_000, 1_000 + own.byteLength)), result(2)), 0);
    const copied = keptValue(history, 2);
    expect(copied.buffer).not.toBe(body.buffer);
    expect(copied.buffer.byteLength).toBe(100_000);
    expect(copied.every((byte) => byte === 1)).toBe(true);
  });

  test("the value log's chunks go once the changes in them are dropped", () => {
    const history = new WatchHistory({ ...limits, entriesMax: 100 }, 0);
    const value = new Uint8Array(4_000).fill(7);
    for (let version = 1; version <= 1_000; version++) history.record(version, [{ kind: "put", key: `k${version}`, value, version }], 0);
    // 100 changes of 4,000 bytes need 2 chunks of 256 KiB; the 1,000 written needed 16.
    expect(history.valueLogBytes()).toBeLessThanOrEqual(3 * 256 * 1024);
    expect(history.scan(900, all, 1_000, 1_000).changes.map((change) => change.version)).toEqual(Array.from({ length: 100 }, (_, i) => 901 + i));
    history.reset(1_000);
    expect(history.valueLogBytes()).toBe(0);
  });
});

describe("the history's own memory", () => {
  test("one version of very many changes grows the ring; once it is dropped the ring shrinks back", () => {
    const history = new WatchHistory({ ...limits, entriesMax: 1_000 }, 0);
    // A lease revoked with 100,000 keys: one entry, 100,000 deletes, kept whole while it is the
    // newest version, then dropped together at once.
    const deletes: WatchChange[] = Array.from({ length: 100_000 }, (_, i) => ({ kind: "delete", key: `k${i}`, version: 1, reason: "delete" }));
    history.record(1, deletes, 0);
    expect(history.size()).toBe(100_000);
    expect(history.compactedThrough()).toBe(0);
    history.record(2, [put(2, "a")], 0);
    expect(history.size()).toBe(1);
    expect(history.compactedThrough()).toBe(1);
    expect(history.slots()).toBeLessThanOrEqual(16);
    for (let version = 3; version <= 901; version++) history.record(version, [put(version, "a")], 0);
    expect(history.slots()).toBe(1_024);
    history.reset(1_000);
    expect(history.slots()).toBeLessThanOrEqual(16);
  });

  test("values that fill a chunk exactly, an empty value at its end, and one that does not fit come back whole", () => {
    const history = new WatchHistory({ ...limits, bytesMax: 64 << 20 }, 0);
    // 64 values of 4 KiB fill a 256 KiB chunk to its last byte; then an empty one, then one more.
    const values = [...Array.from({ length: 64 }, (_, i) => new Uint8Array(4_096).fill(i)), new Uint8Array(0), new Uint8Array(4_096).fill(200)];
    values.forEach((value, i) => history.record(i + 1, [{ kind: "put", key: `k${i}`, value, version: i + 1 }], 0));
    const got = history.scan(0, all, 1_000, 1_000).changes;
    expect(got.map((change) => (change.kind === "put" ? [change.value.byteLength, change.value[0] ?? -1, change.value.at(-1) ?? -1] : []))).toEqual(
      values.map((value) => [value.byteLength, value[0] ?? -1, value.at(-1) ?? -1]),
    );
    expect(history.valueLogBytes()).toBe(2 * 256 * 1024);
  });

  test("a small byte bound takes small chunks for values", () => {
    const history = new WatchHistory({ ...limits, bytesMax: 64 * 1024 }, 0);
    history.record(1, [put(1, "a", "x")], 0);
    expect(history.valueLogBytes()).toBeLessThanOrEqual(16 * 1024);
  });
});

describe("WatchHistory against a model", () => {
  // The history keeps its changes packed in columns and a value log; the model keeps them as
  // objects in an array. Both see the same records, trims and resets: every scan must agree.
  test("random records, trims, scans and resets agree with an array of changes, over many seeds", () => {
    for (let seed = 1; seed <= 30; seed++) {
      const prng = createPrng(seed);
      const bounds = { entriesMax: prng.intInclusive(1, 300), retentionMs: prng.intInclusive(0, 2_000), bytesMax: prng.intInclusive(200, 400_000) };
      const history = new WatchHistory(bounds, 0);
      let model: { change: WatchChange; atMs: number }[] = [];
      let compacted = 0;
      let version = 0;
      let nowMs = 0;
      let bytes = 0;
      const modelTrim = () => {
        while (model.length > 0) {
          const oldest = model[0]!;
          if (!(model.length > bounds.entriesMax || nowMs - oldest.atMs > bounds.retentionMs || bytes > bounds.bytesMax)) break;
          const dropped = oldest.change.version;
          if (dropped === model[model.length - 1]!.change.version) break; // the newest version stays whole
          while (model.length > 0 && model[0]!.change.version === dropped) bytes -= changeBytes(model.shift()!.change);
          compacted = dropped;
        }
      };
      for (let step = 0; step < 1_500; step++) {
        nowMs += prng.intInclusive(0, 20);
        const roll = prng.next();
        if (roll < 0.8) {
          version += prng.intInclusive(1, 3);
          const changes: WatchChange[] = [];
          for (let n = prng.intInclusive(0, 3); n > 0; n--) {
            const key = `k${prng.intInclusive(0, 50)}`;
            const sizes = [0, 1, 100, 4_096, 4_097, 20_000];
            if (prng.chance(0.7)) {
              // Sometimes a view into a larger buffer, as values in a peer's append are.
              const size = prng.pick(sizes);
              const offset = prng.chance(0.5) ? 0 : prng.intInclusive(1, 10_000);
              const value = new Uint8Array(offset + size + prng.intInclusive(0, 10_000)).subarray(offset, offset + size);
              for (let i = 0; i < size; i++) value[i] = prng.intInclusive(0, 255);
              changes.push({ kind: "put", key, value, version });
            } else {
              changes.push({ kind: "delete", key, version, reason: prng.chance(0.5) ? "delete" : "lease_expired" });
            }
          }
          history.record(version, changes, nowMs);
          for (const change of changes) model.push({ change, atMs: nowMs });
          bytes += changes.reduce((sum, change) => sum + changeBytes(change), 0);
          modelTrim();
        } else if (roll < 0.9) {
          history.trim(nowMs);
          modelTrim();
        } else if (roll < 0.99) {
          const after = prng.intInclusive(compacted, version);
          const changesMax = prng.intInclusive(1, 50);
          const scanMax = prng.intInclusive(1, 50);
          const wanted = prng.intInclusive(0, 50);
          const matches = (key: string) => Number(key.slice(1)) <= wanted;
          const got = history.scan(after, matches, changesMax, scanMax);
          // The model's scan: whole versions, stopping once either bound is reached.
          const expected: WatchChange[] = [];
          let scanned = 0;
          let through = after;
          let stopped = false;
          for (let i = model.findIndex((kept) => kept.change.version > after); i !== -1 && i < model.length; ) {
            const at = model[i]!.change.version;
            if (expected.length >= changesMax || scanned >= scanMax) {
              stopped = true;
              break;
            }
            for (; i < model.length && model[i]!.change.version === at; i++, scanned++) if (matches(model[i]!.change.key)) expected.push(model[i]!.change);
            through = at;
          }
          expect(got.changes).toEqual(expected);
          expect(got.scanned).toBe(scanned);
          expect(got.throughVersion).toBe(stopped ? through : Math.max(through, version));
        } else {
          version += prng.intInclusive(0, 5);
          history.reset(version);
          model = [];
          bytes = 0;
          compacted = version;
        }
        expect(history.size()).toBe(model.length);
        expect(history.compactedThrough()).toBe(compacted);
        expect(history.lastVersion()).toBe(version);
      }
    }
  }, 30_000); // bounds a hung run; takes 2.5-6 s (the default 5 s cut it on a busy machine)
});
