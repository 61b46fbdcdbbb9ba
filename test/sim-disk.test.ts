// Proves the simulated disk models what a node's reads see with a storage thread: an apply handed to
// the thread is seen by reads only once the thread committed it (as the real storage's read
// connection sees only what its thread committed: src/storage/sqlite-reads.ts), and the applied
// index the node sees moves only once the answer reached it (found in a review: reads saw an apply
// the moment it was handed over, so a node serving reads at the index it had handed over passed
// every swarm seed).
import { expect, test } from "bun:test";
import { encodeCommand } from "../src/kv/command.ts";
import { EntryType, type Entry } from "../src/raft/types.ts";
import { SimDisk } from "../src/sim/sim-disk.ts";
import { MemoryKvStorage } from "../src/storage/memory-storage.ts";

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
  await Promise.resolve();
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
