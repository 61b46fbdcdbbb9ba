// Proves the simulated disk models what a node's reads see with a storage thread: an apply handed to
// the thread is seen by reads only once the thread committed it (as the real storage's read
// connection sees only what its thread committed: src/storage/sqlite-reads.ts), and the applied
// index the node sees moves only once the answer reached it (found in a review: reads saw an apply
// the moment it was handed over, so a node serving reads at the index it had handed over passed
// every swarm seed); and that a crash without power loss comes back to what the real storage thread
// (src/storage/threaded-storage.ts) leaves: the requests it ran, in the order posted, and none after
// (found in a code review: saves posted behind an apply the thread had not run survived such a crash,
// a state the server never comes back to).
import { expect, test } from "bun:test";
import { encodeCommand } from "../src/kv/command.ts";
import { EntryType, type Entry } from "../src/raft/types.ts";
import { SimDisk } from "../src/sim/sim-disk.ts";
import { createMemoryKvStorage, MemoryKvStorage } from "../src/storage/memory-storage.ts";

test("with a storage thread, reads see an apply once the thread commits it, and the applied index once the node hears of it", async () => {
  const threadDone: (() => void)[] = [];
  const delivered: (() => void)[] = [];
  const storage = new MemoryKvStorage();
  storage.bootstrap([1]);
  const disk = new SimDisk(storage, {
    fsync: (done) => queueMicrotask(done),
    storageThread: (done) => threadDone.push(done),
    deliver: (fn) => delivered.push(fn),
  });
  const entry: Entry = { term: 1, index: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "k", value: new TextEncoder().encode("v") }) };
  disk.save({ term: 1, vote: 1, commit: 1 }, [entry], true);
  const synced = disk.sync();
  // The fsync starts once the thread ran the save posted before it, and its answer then waits to be delivered.
  while (delivered.length === 0) await Promise.resolve();
  delivered.shift()?.();
  await synced;

  const applied = disk.applyEntries([entry]);
  expect(applied).toBeInstanceOf(Promise);
  // Handed over, not yet committed by the thread: reads see the state before it.
  expect(disk.get("k")).toBeUndefined();
  expect(disk.list("", undefined, 10)).toEqual([]);
  expect(disk.stateVersion()).toBe(0);
  expect(disk.appliedIndex()).toBe(0);
  // The thread committed it: reads see it, though the node has not heard (its process is stalled).
  while (threadDone.length === 0) await Promise.resolve();
  threadDone.shift()?.();
  expect(new TextDecoder().decode(disk.get("k")?.value)).toBe("v");
  expect(disk.stateVersion()).toBe(1);
  expect(disk.appliedIndex()).toBe(0);
  // The answer reaches the node.
  delivered.shift()?.();
  await applied;
  expect(disk.appliedIndex()).toBe(1);
});

test("the in-memory twin's image lists rows in SQLite's order, by UTF-8 bytes: U+FFFD before U+1F600, where UTF-16 units put it after (a backup's rows must be in that order)", () => {
  const storage = new MemoryKvStorage();
  storage.bootstrap([1]);
  const put = (index: number, key: string): Entry => ({ term: 1, index, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: new TextEncoder().encode("v") }) });
  const entries = [put(1, "\u{1f600}"), put(2, "\ufffd")];
  storage.save({ term: 1, vote: 1, commit: 2 }, entries, true);
  storage.applyEntries(entries);
  const image = storage.openImage();
  expect(image.next(1 << 20).map((row) => row.key)).toEqual(["\ufffd", "\u{1f600}"]);
  image.close();
});

/**
 * A disk whose storage thread runs an apply or install only when the test says so (`runThread`), and
 * whose fsyncs finish at once, or, with `holdFsyncs`, when the test says so (`finishFsync`).
 */
function diskWithManualThread(holdFsyncs = false) {
  const thread: (() => void)[] = [];
  const fsyncs: (() => void)[] = [];
  const disk = new SimDisk(createMemoryKvStorage(), {
    fsync: (done) => (holdFsyncs ? void fsyncs.push(done) : queueMicrotask(done)),
    storageThread: (done) => void thread.push(done),
    deliver: (fn) => fn(),
  });
  return {
    disk,
    /** Runs the thread's oldest waiting apply or install, then lets the requests queued behind it run. */
    async runThread(): Promise<void> {
      await settle();
      const next = thread.shift();
      if (next === undefined) throw new Error("nothing waits on the storage thread");
      next();
      await settle();
    },
    async finishFsync(): Promise<void> {
      await settle();
      const next = fsyncs.shift();
      if (next === undefined) throw new Error("no fsync under way");
      next();
      await settle();
    },
  };
}

/** Lets every promise continuation run (the thread's queue is a promise chain). */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function put(index: number, key: string): Entry {
  return { term: 1, index, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: new TextEncoder().encode(`v${index}`) }) };
}

test("a crash without power loss keeps the requests the storage thread ran, in order, and loses an apply it had not run and every save posted behind it", async () => {
  const { disk, runThread } = diskWithManualThread();
  disk.bootstrap([1]);
  disk.save({ term: 1, vote: 1, commit: 2 }, [put(1, "a"), put(2, "b")], false);
  await disk.sync();
  const applied = disk.applyEntries([put(1, "a")]); // waits on the thread
  disk.save({ term: 1, vote: 1, commit: 4 }, [put(3, "c"), put(4, "d")], false); // posted behind it
  await settle();
  // What the node sees of its own writes at once (ThreadedStorage's mirror)...
  expect(disk.contents().lastIndex()).toBe(4);
  expect(disk.contents().appliedIndex()).toBe(1);
  // ...and what a crash now leaves: the thread ran neither the apply nor the save behind it.
  const crashed = disk.afterCrash(false);
  expect(crashed.appliedIndex()).toBe(0);
  expect(crashed.lastIndex()).toBe(2);
  expect(crashed.get("a")).toBeUndefined();
  expect(disk.threadWorkLost).toBe(1);
  // Once the thread ran the apply, the save behind it ran too: a crash keeps both.
  await runThread();
  expect(await applied).toHaveLength(1);
  const later = disk.afterCrash(false);
  expect(later.appliedIndex()).toBe(1);
  expect(later.lastIndex()).toBe(4);
  expect(later.get("a")?.version).toBe(1);
  expect(disk.threadWorkLost).toBe(1);
});

test("a sync posted behind an apply starts once the thread ran the apply, and the thread runs the requests after it meanwhile", async () => {
  const { disk, runThread, finishFsync } = diskWithManualThread(true);
  disk.bootstrap([1]);
  disk.save({ term: 1, vote: 1, commit: 2 }, [put(1, "a"), put(2, "b")], false);
  const first = disk.sync();
  await finishFsync();
  await first;
  void disk.applyEntries([put(1, "a")]);
  const synced = { done: false };
  disk.save({ term: 1, vote: 1, commit: 3 }, [put(3, "c")], false);
  void disk.sync().then(() => (synced.done = true));
  const second = disk.applyEntries([put(2, "b")]);
  // The sync waits for the apply before it: no fsync is under way yet.
  await expect(finishFsync()).rejects.toThrow("no fsync under way");
  await runThread();
  // Its fsync runs now; the apply posted after it does not wait for it.
  expect(synced.done).toBe(false);
  await runThread();
  expect(await second).toHaveLength(1);
  expect(synced.done).toBe(false);
  await finishFsync();
  expect(synced.done).toBe(true);
  expect(disk.durable().lastIndex()).toBe(3);
});

test("a chunk of the staged image that meets the full disk drops the image, as the server's staging does (src/storage/staging-file.ts); a stray chunk of another image leaves it be", () => {
  const storage = new MemoryKvStorage();
  storage.bootstrap([1]);
  const disk = new SimDisk(storage, { fsync: (done) => queueMicrotask(done), deliver: (fn) => fn() });
  const row = (key: string) => ({ key, value: new TextEncoder().encode("v"), version: 1 });
  disk.stageImageChunk("img", [row("a")], true);
  disk.full = true;
  expect(() => disk.stageImageChunk("other", [row("x")], false)).toThrow("database or disk is full");
  expect(storage.stagedImageId()).toBe("img");
  expect(() => disk.stageImageChunk("img", [row("b")], false)).toThrow("database or disk is full");
  expect(storage.stagedImageId()).toBeUndefined();
  disk.full = false;
  disk.stageImageChunk("next", [row("c")], true);
  expect(storage.stagedImageId()).toBe("next");
});
