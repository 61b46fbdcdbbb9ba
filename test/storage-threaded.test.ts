// Proves the threaded storage (writes on a worker thread, src/storage/threaded-storage.ts) runs writes in the order posted, serves entries it has not yet seen committed from memory, resolves sync() only once every earlier write is committed, waits out a full disk (throwing disk-full at once meanwhile), stops on any other failure, reports open errors with their StorageError code, reads entries behind its tail from the log's segments, passes entries through a ring whose bytes it reuses only once applied, and leaves nothing of a save answered after an install in its reader.
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createPrng } from "../src/lib/prng.ts";
import { isDiskFull } from "../src/lib/disk-full.ts";
import { decodeCommand, encodeCommand } from "../src/kv/command.ts";
import { type Entry, EntryType, type HardState } from "../src/raft/types.ts";
import { type KvStorage, StorageError } from "../src/storage/kv-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { openThreadedStorage, type ThreadedStorage } from "../src/storage/threaded-storage.ts";
import { readdirSync, readFileSync } from "node:fs";
import { backgroundNiceIncrement } from "../src/lib/background-thread.ts";
import { startKvProcess } from "./helpers/kv-process.ts";
import { crashLoopEntryData, crashLoopKey, crashLoopKeyCount, crashLoopValue } from "./children/save-loop-child.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

const tempDir = tempDirs("kv-storage-threaded-");

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (data: Uint8Array | undefined): string | undefined => (data === undefined ? undefined : new TextDecoder().decode(data));

function put(index: number, key: string, value: string | Uint8Array, term = 1): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: typeof value === "string" ? bytes(value) : value }) };
}

function hard(term: number, commit: number): HardState {
  return { term, vote: 1, commit };
}

/** Polls `condition` until it holds, failing after `deadlineMs`. */
async function until(what: string, condition: () => boolean, deadlineMs = 10_000): Promise<void> {
  const endMs = performance.now() + deadlineMs;
  while (!condition()) {
    if (performance.now() > endMs) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

/** Reads the database on a connection of its own, as a process opening it later would. */
function onDisk<T>(dir: string, read: (db: Database) => T): T {
  const db = new Database(join(dir, "kv.db"), { readonly: true, strict: true });
  try {
    return read(db);
  } finally {
    db.close(true);
  }
}

/** The threads of process `pid`: name and nice value (from /proc; Linux only). */
function threadsOf(pid: number | "self"): { tid: number; name: string; nice: number }[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((task) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, "utf8");
      // Fields after the name, which is in parentheses: the 19th field of the line (nice) is the 17th of these.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return [{ tid: Number(task), name: readFileSync(`/proc/${pid}/task/${task}/comm`, "utf8").trim(), nice: Number(fields[16]) }];
    } catch {
      return []; // the thread ended meanwhile
    }
  });
}

async function closed(storage: ThreadedStorage): Promise<void> {
  storage.close();
  await storage.released();
}

describe("threaded storage", () => {
  test("saves and applies posted back to back run in order; get, list, entries and term read them back; a reopen sees the same", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      const entries = Array.from({ length: 50 }, (_, i) => put(i + 1, `k${i % 7}`, `v${i + 1}`));
      storage.save(hard(1, 0), entries.slice(0, 20), false);
      storage.save(hard(1, 20), entries.slice(20), false);
      // The core sees its own writes at once.
      expect(storage.lastIndex()).toBe(50);
      expect(storage.term(50)).toBe(1);
      expect(storage.initialState().hardState.commit).toBe(20);
      const applied = storage.applyEntries(entries.slice(0, 20));
      // Applied state follows once the promise resolves, not before.
      expect(storage.appliedIndex()).toBe(0);
      const results = await applied;
      expect(results.map((result) => result.kind)).toEqual(Array(20).fill("put"));
      expect(storage.appliedIndex()).toBe(20);
      expect(text(storage.get("k6")?.value)).toBe("v14");
      expect(storage.list("k", undefined, 100).map((item) => item.key)).toEqual(["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
      expect(storage.entries(1, 51, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual(entries.map((entry) => entry.index));
      await storage.sync();
    } finally {
      await closed(storage);
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      expect(reopened.lastIndex()).toBe(50);
      expect(reopened.appliedIndex()).toBe(20);
      expect(reopened.initialState().hardState).toEqual(hard(1, 20));
      expect(text(reopened.get("k6")?.value)).toBe("v14");
    } finally {
      reopened.close();
    }
  });

  test("stateVersion() is the applied index of the state get() reads, in the same read transaction, ahead of the applies the loop has heard of", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      const count = 200;
      const entries = Array.from({ length: count }, (_, i) => put(i + 1, "k", `v${i + 1}`));
      storage.save(hard(1, count), entries, false);
      const applies = entries.map((entry) => storage.applyEntries([entry]));
      // No task runs here: the writer's answers (messages) wait, so the loop hears of no apply while
      // the writer commits them one by one. Each look is one read transaction, ended by the microtask
      // awaited; between looks this thread blocks holding none, or back-to-back reads kept the WAL's
      // checkpointer waiting with the write lock held, and the writer failed SQLITE_BUSY (seen in a
      // full run of the suite).
      const deadline = performance.now() + 30_000;
      let looks = 0;
      for (;;) {
        const version = storage.stateVersion();
        expect([version, storage.get("k")?.version ?? 0]).toEqual([version, version]);
        looks++;
        if (version === count) break;
        if (performance.now() > deadline) throw new Error(`the state stayed at ${version} after ${looks} looks`);
        await Promise.resolve();
        Bun.sleepSync(1); // a poll's interval that lets no task run (see above)
      }
      expect(storage.appliedIndex()).toBe(0);
      await Promise.all(applies);
      expect(storage.appliedIndex()).toBe(count);
      expect(storage.stateVersion()).toBe(count);
    } finally {
      await closed(storage);
    }
  });

  test("sync() resolves only once every write posted before it is committed: a second connection then sees the applies and the compaction, and the log holds the saves", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      const value = new Uint8Array(4096).fill(7);
      let index = 0;
      for (let round = 0; round < 20; round++) {
        const entries = Array.from({ length: 25 }, () => put(++index, `key-${index % 40}`, value));
        storage.save(hard(1, index), entries, false);
        void storage.applyEntries(entries);
      }
      // Not awaited: the compaction is checked against the applied index confirmed so far.
      await until("the applies confirmed", () => storage.appliedIndex() === 500);
      storage.compact(300);
      const more = Array.from({ length: 10 }, () => put(++index, "last", `v${index}`));
      storage.save(hard(1, index), more, false);
      void storage.applyEntries(more);
      await storage.sync();
      const seen = onDisk(dir, (db) => ({
        meta: db.query<{ applied_index: number; applied_term: number; snapshot_index: number }, []>("SELECT applied_index, applied_term, snapshot_index FROM meta").get(),
        last: db.query<{ value: Uint8Array }, []>("SELECT value FROM kv WHERE key = 'last'").get(),
      }));
      expect(seen.meta).toEqual({ applied_index: 510, applied_term: 1, snapshot_index: 300 });
      expect(text(seen.last?.value)).toBe("v510");
      expect(storage.firstIndex()).toBe(301);
      expect(storage.term(300)).toBe(1);
    } finally {
      await closed(storage);
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([301, 510]);
      expect(reopened.entries(301, 511, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual(Array.from({ length: 210 }, (_, i) => 301 + i));
    } finally {
      reopened.close();
    }
  });

  test("a save posted before an install and answered after it leaves nothing of its place behind: the entries after the image save, apply and read back", async () => {
    const leader = await openThreadedStorage(tempDir(), { voters: [1, 2] });
    const follower = await openThreadedStorage(tempDir(), { voters: [1, 2], logTailBytesMax: 0, logTailKeptBytesMax: 0 });
    try {
      const entries = Array.from({ length: 300 }, (_, i) => put(i + 1, `key-${i}`, `value-${i}`, 2));
      leader.save(hard(2, 300), entries, false);
      await leader.applyEntries(entries);
      const image = leader.openImage();
      const pages = [];
      for (let page = image.next(2048); page.length > 0; page = image.next(2048)) pages.push(page);
      image.close();
      // Entries from an old leader, saved; in the same turn (before the writer's answer), the image staged and installed.
      follower.save(hard(1, 0), Array.from({ length: 5 }, (_, i) => put(i + 1, "old", "x", 1)), false);
      pages.forEach((page, i) => follower.stageImageChunk("image-1", page, i === 0));
      await follower.installSnapshot(image.metadata, "image-1", image.addresses);
      const after = [put(301, "after", "install", 2), put(302, "and", "more", 2)];
      follower.save(hard(2, 302), after, false);
      expect((await follower.applyEntries(after)).map((result) => result.kind)).toEqual(["put", "put"]);
      await follower.sync();
      // Read back from the segment (no tail kept), where the writer put them after the reset.
      expect(follower.entries(301, 303, Number.MAX_SAFE_INTEGER)).toEqual(after);
      expect(text(follower.get("after")?.value)).toBe("install");
    } finally {
      await closed(leader);
      await closed(follower);
    }
  });

  test("entries cross to the writer through the pack ring, whose bytes are reused only once they are applied: a save that finds no room takes a buffer of its own", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1], packRingBytes: 1000 });
    try {
      const value = (index: number): Uint8Array => new Uint8Array(300).fill(index);
      const entries = Array.from({ length: 9 }, (_, i) => put(i + 1, `k${i + 1}`, value(i + 1)));
      storage.save(hard(1, 0), entries.slice(0, 3), false);
      // Written (answered) but not applied: the ring still holds them.
      await storage.sync();
      expect(storage.packRingUse()).toEqual({ bytes: 3 * (entries[0] as Entry).data.byteLength, regions: 1 });
      // No room left for three more: in a buffer of their own, not over the three before.
      storage.save(hard(1, 6), entries.slice(3, 6), false);
      expect(storage.packRingUse()?.regions).toBe(1);
      await storage.applyEntries(entries.slice(0, 6));
      expect(storage.packRingUse()).toEqual({ bytes: 0, regions: 0 });
      // The ring is free again.
      storage.save(hard(1, 9), entries.slice(6), false);
      expect(storage.packRingUse()?.regions).toBe(1);
      await storage.applyEntries(entries.slice(6));
      for (let index = 1; index <= 9; index++) expect(storage.get(`k${index}`)?.value).toEqual(value(index));
      expect(storage.entries(1, 10, Number.MAX_SAFE_INTEGER).map((entry) => entry.data)).toEqual(entries.map((entry) => entry.data));
    } finally {
      await closed(storage);
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      for (let index = 1; index <= 9; index++) expect(reopened.get(`k${index}`)?.value).toEqual(new Uint8Array(300).fill(index));
    } finally {
      reopened.close();
    }
  });

  test("random appends, replaced suffixes, saves again of applied entries, commits and applies through a small pack ring: the state machine and the log hold exactly what was saved last, byte for byte, also once reopened", async () => {
    const dir = tempDir();
    const ringBytes = 4096;
    const storage = await openThreadedStorage(dir, { voters: [1], packRingBytes: ringBytes });
    const prng = createPrng(23);
    const next = (n: number) => prng.intInclusive(0, n - 1);
    const log: Entry[] = []; // the model: log[i - 1] is the entry at index i
    const applied = new Map<string, Uint8Array>();
    let term = 1;
    let commit = 0;
    let applyPosted = 0;
    let ringBytesSeen = 0;
    let resaves = 0;
    const applies: Promise<unknown>[] = [];
    const entryAt = (index: number, entryTerm: number): Entry => {
      const value = new Uint8Array(50 + next(700));
      for (let i = 0; i < value.byteLength; i++) value[i] = next(256);
      return put(index, `k${index % 17}`, value, entryTerm);
    };
    const applyThrough = (to: number): void => {
      if (to <= applyPosted) return;
      const entries = log.slice(applyPosted, to);
      for (const entry of entries) {
        const command = decodeCommand(entry.data);
        if (command.op === "put") applied.set(command.key, command.value);
      }
      applies.push(storage.applyEntries(entries));
      applyPosted = to;
    };
    try {
      for (let round = 0; round < 600; round++) {
        const choice = next(10);
        if (choice <= 3 || log.length === 0) {
          const entries = Array.from({ length: 1 + next(4) }, (_, i) => entryAt(log.length + 1 + i, term));
          log.push(...entries);
          storage.save(hard(term, commit), entries, false);
        } else if (choice === 4 && log.length > commit) {
          // A new leader's entries replace an uncommitted suffix.
          term++;
          const from = commit + 1 + next(log.length - commit);
          const entries = Array.from({ length: 1 + next(3) }, (_, i) => entryAt(from + i, term));
          log.length = from - 1;
          log.push(...entries);
          storage.save(hard(term, commit), entries, false);
        } else if (choice === 5) {
          // Entries handed to apply, then saved again as they are (copies of their bytes): the
          // apply's answer may come before this save ran, and must not free its region early.
          commit = log.length;
          storage.save(hard(term, commit), [], false);
          applyThrough(commit);
          if (next(2) === 0) await Promise.resolve();
          const from = Math.max(1, log.length - next(4));
          const again = log.slice(from - 1).map((entry) => ({ ...entry, data: entry.data.slice() }));
          storage.save(hard(term, commit), again, false);
          resaves++;
        } else if (choice === 6 && log.length > commit) {
          commit += 1 + next(log.length - commit);
          storage.save(hard(term, commit), [], false);
        } else if (choice === 7) {
          applyThrough(commit - next(2));
        } else if (choice === 8) {
          await storage.sync();
        } else {
          await Promise.all(applies.splice(0));
        }
        ringBytesSeen = Math.max(ringBytesSeen, storage.packRingUse()?.bytes ?? 0);
      }
      commit = log.length;
      storage.save(hard(term, commit), [], false);
      applyThrough(commit);
      await Promise.all(applies.splice(0));
      await storage.sync();
      // The ring was used, filled past half, and saves were made again while applies were on their way.
      expect(ringBytesSeen).toBeGreaterThan(ringBytes / 2);
      expect(resaves).toBeGreaterThan(5);
      for (const [key, value] of applied) expect(storage.get(key)?.value).toEqual(value);
      expect(storage.entries(1, log.length + 1, Number.MAX_SAFE_INTEGER).map((entry) => entry.data)).toEqual(log.map((entry) => entry.data));
    } finally {
      await closed(storage);
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      expect(reopened.appliedIndex()).toBe(log.length);
      for (const [key, value] of applied) expect(reopened.get(key)?.value).toEqual(value);
      expect(reopened.entries(1, log.length + 1, Number.MAX_SAFE_INTEGER).map((entry) => [entry.index, entry.term, entry.data])).toEqual(log.map((entry) => [entry.index, entry.term, entry.data]));
    } finally {
      reopened.close();
    }
  });

  test("an empty range of entries is empty wherever it starts, in the tail or past its first entry", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      const entries = Array.from({ length: 10 }, (_, i) => put(i + 1, `k${i}`, `v${i}`));
      storage.save(hard(1, 0), entries, false);
      await storage.sync();
      for (const lo of [1, 5, 11]) expect(storage.entries(lo, lo, Number.MAX_SAFE_INTEGER)).toEqual([]);
    } finally {
      await closed(storage);
    }
  });

  test("entries posted and not yet committed are served from memory even past the tail's byte bound", async () => {
    const dir = tempDir();
    // A tail of 64 KiB; the saves below post 8 MB before the writer can have committed them.
    const storage = await openThreadedStorage(dir, { voters: [1], logTailBytesMax: 64 * 1024, logTailKeptBytesMax: 64 * 1024 });
    try {
      const entries = Array.from({ length: 32 }, (_, i) => ({ index: i + 1, term: 1, type: EntryType.Normal, data: new Uint8Array(256 * 1024).fill(i) }));
      for (let i = 0; i < entries.length; i += 4) storage.save(hard(1, 0), entries.slice(i, i + 4), false);
      // Read at once, on this thread, before any answer from the writer can have arrived.
      const read = storage.entries(1, 33, Number.MAX_SAFE_INTEGER);
      expect(read.map((entry) => [entry.index, entry.data[0]])).toEqual(entries.map((entry) => [entry.index, entry.data[0]]));
      expect(storage.logEntriesRead).toBe(0);
      // Once committed they may leave memory (the bound holds again) and are read from the disk.
      await storage.sync();
      await until("the tail evicted", () => storage.entries(1, 2, Number.MAX_SAFE_INTEGER).length === 1 && storage.logEntriesRead > 0);
      expect(storage.entries(1, 33, Number.MAX_SAFE_INTEGER).map((entry) => entry.data[0])).toEqual(entries.map((entry) => entry.data[0]));
    } finally {
      await closed(storage);
    }
  });

  test("entries committed by the writer and not yet handed to apply stay in memory up to the hold's bound; once applied the tail's bound holds", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1], logTailBytesMax: 64 * 1024, logTailKeptBytesMax: 4 << 20 });
    try {
      const put = (index: number): Entry => ({
        index,
        term: 1,
        type: EntryType.Normal,
        data: encodeCommand({ op: "put", key: `k${index}`, value: new Uint8Array(256 * 1024).fill(index) }),
      });
      const entries = Array.from({ length: 8 }, (_, i) => put(i + 1));
      storage.save(hard(1, 8), entries, false);
      await storage.sync();
      // Committed on disk, so no longer pinned; 2 MB, past the 64 KiB bound but within the hold.
      expect(storage.entries(1, 9, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(storage.logEntriesRead).toBe(0);
      await storage.applyEntries(entries);
      // Handed to apply: the hold moved past them, and the oldest are read from the disk.
      expect(storage.entries(1, 2, Number.MAX_SAFE_INTEGER).map((entry) => entry.data.byteLength)).toEqual([entries[0]!.data.byteLength]);
      expect(storage.logEntriesRead).toBeGreaterThan(0);
    } finally {
      await closed(storage);
    }
  });

  test("random saves that replace suffixes, with syncs between: reads mixing the disk and the entries in memory always equal what a fresh open reads", async () => {
    const dir = tempDir();
    // A small tail, so reads cross from the disk into the entries kept in memory.
    const storage = await openThreadedStorage(dir, { voters: [1], logTailBytesMax: 8 * 1024, logTailKeptBytesMax: 8 * 1024 });
    const prng = createPrng(11);
    const next = (n: number) => prng.intInclusive(0, n - 1);
    let term = 1;
    let last = 0;
    try {
      for (let round = 0; round < 300; round++) {
        const from = last > 0 && next(4) === 0 ? Math.max(1, last - next(5)) : last + 1;
        if (from <= last) term++;
        const count = 1 + next(4);
        const entries = Array.from({ length: count }, (_, i) => ({ index: from + i, term, type: EntryType.Normal, data: new Uint8Array(next(3) === 0 ? 3_000 : 100).fill(round % 251) }));
        storage.save(hard(term, 0), entries, false);
        last = from + count - 1;
        // Sometimes the writer catches up first, so older entries leave memory and come from the disk.
        if (next(5) === 0) await storage.sync();
        const lo = Math.max(1, last - next(40));
        const read = storage.entries(lo, last + 1, Number.MAX_SAFE_INTEGER);
        expect(read.map((e) => e.index)).toEqual(Array.from({ length: last + 1 - lo }, (_, i) => lo + i));
        expect(read.map((e) => e.term)).toEqual(read.map((e) => storage.term(e.index)));
      }
      await storage.sync();
      expect(storage.logEntriesRead).toBeGreaterThan(0);
    } finally {
      await closed(storage);
    }
    const expected = await (async () => {
      const reopened = openSqliteStorage(dir, { voters: [1] });
      try {
        return reopened.entries(1, last + 1, Number.MAX_SAFE_INTEGER).map((e) => [e.index, e.term, e.data.byteLength, e.data[0]]);
      } finally {
        reopened.close();
      }
    })();
    const again = await openThreadedStorage(dir, { voters: [1], logTailBytesMax: 8 * 1024, logTailKeptBytesMax: 8 * 1024 });
    try {
      expect(again.entries(1, last + 1, Number.MAX_SAFE_INTEGER).map((e) => [e.index, e.term, e.data.byteLength, e.data[0]])).toEqual(expected);
      expect(expected.length).toBe(last);
    } finally {
      await closed(again);
    }
  });

  test("a full disk: the writer retries, writes throw disk-full at once meanwhile, sync() waits, and everything lands once there is space", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      storage.save(hard(1, 1), [put(1, "a", "one")], false);
      await storage.applyEntries([put(1, "a", "one")]);
      await storage.sync();
      // Bound the writer's database to the pages it has: the next write that needs a page (the apply;
      // the saves go to the log's segment) fails with SQLITE_FULL.
      await storage.limitPages(1);
      const big = Array.from({ length: 4 }, (_, i) => put(2 + i, `big${i}`, new Uint8Array(64 * 1024).fill(i)));
      storage.save(hard(1, 5), big, false);
      const applied = storage.applyEntries(big);
      const synced = storage.sync();
      let syncedYet = false;
      void synced.then(() => (syncedYet = true));
      await until("the writer to report a full disk", () => storage.isDiskFull());
      let thrown: unknown;
      try {
        storage.save(hard(1, 5), [put(6, "later", "x")], false);
      } catch (error) {
        thrown = error;
      }
      expect(isDiskFull(thrown)).toBe(true);
      expect(() => storage.applyEntries(big)).toThrow();
      expect(() => storage.compact(1)).toThrow();
      expect(storage.lastIndex()).toBe(5); // the refused save changed nothing
      // The writer keeps retrying (every ~100 ms): still nothing while there is no space.
      await Bun.sleep(300);
      expect(syncedYet).toBe(false);
      expect(storage.appliedIndex()).toBe(1);
      await storage.limitPages(1_000_000);
      expect((await applied).map((result) => result.kind)).toEqual(["put", "put", "put", "put"]);
      await synced;
      expect(storage.isDiskFull()).toBe(false);
      expect(storage.get("big3")?.value.byteLength).toBe(64 * 1024);
      storage.save(hard(1, 6), [put(6, "later", "x")], false);
      await storage.applyEntries([put(6, "later", "x")]);
      expect(text(storage.get("later")?.value)).toBe("x");
    } finally {
      await closed(storage);
    }
  });

  test("a failure on the writer other than a full disk is fatal: the apply and every later sync reject with it, writes throw it", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      // A committed entry that does not decode: only the writer, applying it, finds out.
      const garbage: Entry = { index: 1, term: 1, type: EntryType.Normal, data: new Uint8Array([0xff, 0xff, 0xff]) };
      storage.save(hard(1, 1), [garbage], false);
      const applied = storage.applyEntries([garbage]);
      const error = await applied.then(
        () => undefined,
        (rejection: unknown) => rejection,
      );
      expect(error).toBeInstanceOf(StorageError);
      expect((error as StorageError).code).toBe("bad_command");
      await expect(storage.sync()).rejects.toBe(error as Error);
      expect(() => storage.save(hard(1, 2), [], false)).toThrow((error as Error).message);
    } finally {
      await closed(storage);
    }
  });

  test("a storage thread that ends unasked fails the storage: a later sync rejects rather than waiting for ever", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    try {
      storage.save(hard(1, 1), [put(1, "a", "one")], false);
      await storage.sync();
      // As if the thread died (a native abort, an exit inside it): no close was asked for.
      (storage as unknown as { worker: Worker }).worker.terminate();
      await expect(storage.sync()).rejects.toThrow(/storage thread .* ended/);
    } finally {
      await closed(storage);
    }
  });

  test("open errors reach the caller as the StorageError openSqliteStorage throws: a second open of the same dir is locked", async () => {
    const dir = tempDir();
    const first = await openThreadedStorage(dir, { voters: [1] });
    try {
      const error = await openThreadedStorage(dir, { voters: [1], lockWaitMs: 50 }).then(
        (second) => {
          second.close();
          return undefined;
        },
        (rejection: unknown) => rejection,
      );
      expect(error).toBeInstanceOf(StorageError);
      expect((error as StorageError).code).toBe("locked");
      expect((error as StorageError).message).toContain("kv.db");
      const mismatch = await openThreadedStorage(tempDir(), { voters: [0] }).catch((rejection: unknown) => rejection);
      expect((mismatch as StorageError).code).toBe("voters_invalid");
    } finally {
      await closed(first);
    }
  });

  test("an image staged on the node's thread is installed by the writer: applied index, configuration and rows follow when the promise resolves", async () => {
    const leaderDir = tempDir();
    const followerDir = tempDir();
    const leader = await openThreadedStorage(leaderDir, { voters: [1, 2] });
    const follower = await openThreadedStorage(followerDir, { voters: [1, 2] });
    try {
      const entries = Array.from({ length: 300 }, (_, i) => put(i + 1, `key-${String(i).padStart(3, "0")}`, `value-${i}`, 2));
      leader.save({ term: 2, vote: 1, commit: 300 }, entries, false);
      await leader.applyEntries(entries);
      // The follower has applied a little of its own before the image arrives.
      const early = entries.slice(0, 5).map((entry) => ({ ...entry, term: 1 }));
      follower.save({ term: 1, vote: 1, commit: 5 }, early, false);
      await follower.applyEntries(early);
      const image = leader.openImage();
      let first = true;
      for (let rows = image.next(2048); rows.length > 0; rows = image.next(2048)) {
        follower.stageImageChunk("image-1", rows, first);
        first = false;
      }
      image.close();
      expect(image.metadata.index).toBe(300);
      const installed = follower.installSnapshot(image.metadata, "image-1", image.addresses);
      // The log and snapshot change at once; the applied state when the install resolves.
      expect(follower.lastIndex()).toBe(300);
      expect(follower.snapshot().index).toBe(300);
      expect(follower.appliedIndex()).toBe(5);
      // No image of the state machine can be offered until the install is in it.
      expect(follower.snapshotForSend()).toBeUndefined();
      // A next image may be staged while the install runs.
      follower.stageImageChunk("image-2", [{ key: "x", value: bytes("y"), version: 1 }], true);
      await installed;
      expect(follower.appliedIndex()).toBe(300);
      expect(follower.snapshotForSend()).toEqual({ index: 300, term: 2, voters: [1, 2] });
      expect(follower.membership().voters).toEqual([1, 2]);
      expect(text(follower.get("key-299")?.value)).toBe("value-299");
      expect(follower.list("key-", undefined, 1000).length).toBe(300);
      expect(existsSync(join(followerDir, "kv.db-staging-install"))).toBe(false);
      follower.discardStagedImage();
      follower.save({ term: 2, vote: 1, commit: 301 }, [put(301, "after", "install", 2)], false);
      await follower.applyEntries([put(301, "after", "install", 2)]);
      expect(text(follower.get("after")?.value)).toBe("install");
    } finally {
      await closed(leader);
      await closed(follower);
    }
  });

  test("close() is idempotent; released() resolves once the writer has ended and the database can be opened again at once", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir, { voters: [1] });
    storage.save(hard(1, 1), [put(1, "a", "one")], false);
    void storage.applyEntries([put(1, "a", "one")]);
    storage.close();
    storage.close();
    await storage.released();
    // The lock is free: a fresh open does not wait for it.
    const reopened = openSqliteStorage(dir, { voters: [1], lockWaitMs: 0 });
    try {
      expect(reopened.appliedIndex()).toBe(1);
    } finally {
      reopened.close();
    }
  });

  test("a process SIGKILLed right after sync() resolved loses none of what it posted before: saves and applies are on disk when reopened", async () => {
    // What this catches: sync() resolving before the writes posted ahead of it were committed. A
    // killed process keeps the page cache, so it cannot tell a missing fdatasync (power loss is
    // the simulator's: src/sim/sim-disk.ts).
    const dir = tempDir();
    const child = Bun.spawn([process.execPath, join(import.meta.dir, "children", "threaded-sync-child.ts"), dir, "17", "1000000"], { stdout: "pipe", stderr: "pipe" });
    let reported = 0;
    try {
      const reader = child.stdout.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      let syncs = 0;
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        pending += decoder.decode(chunk.value, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) {
          const match = /^synced (\d+)$/.exec(line);
          if (match === null) throw new Error(`unexpected child output: ${JSON.stringify(line)}`);
          // Killed the moment the report arrives: the child may be posting more already.
          if (++syncs === 200) child.kill("SIGKILL");
          reported = Math.max(reported, Number(match[1]));
        }
      }
      await child.exited;
      if (child.signalCode !== "SIGKILL") throw new Error(`child ended by itself (exit ${child.exitCode}): ${await new Response(child.stderr).text()}`);
    } finally {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
    }
    expect(reported).toBeGreaterThan(200);
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      const applied = storage.appliedIndex();
      expect(storage.lastIndex()).toBeGreaterThanOrEqual(reported);
      expect(applied).toBeGreaterThanOrEqual(reported);
      // Checksums verified on read; the content is exactly what was posted.
      for (const entry of storage.entries(1, storage.lastIndex() + 1, Number.MAX_SAFE_INTEGER)) expect(entry.data).toEqual(crashLoopEntryData(entry.index));
      // The state machine equals a replay of entries 1..applied.
      const expected = new Map<string, number>();
      for (let index = 1; index <= applied; index++) {
        if (index % 13 === 0) continue;
        if (index % 10 === 0) expected.delete(crashLoopKey(index));
        else expected.set(crashLoopKey(index), index);
      }
      for (let keyNumber = 0; keyNumber < crashLoopKeyCount; keyNumber++) {
        const key = crashLoopKey(keyNumber);
        const version = expected.get(key);
        expect(storage.get(key)).toEqual(version === undefined ? undefined : { value: crashLoopValue(version), version });
      }
    } finally {
      storage.close();
    }
  });

  test("the storage thread and the checkpointer it starts are named, and run at a lower priority than the node's thread; so does a checkpointer the node's thread starts", async () => {
    const ownNice = threadsOf("self").find((thread) => thread.tid === process.pid)?.nice ?? Number.NaN;
    expect(ownNice).toBeGreaterThanOrEqual(-20);
    const lowered = Math.min(19, ownNice + backgroundNiceIncrement);
    /** Threads started since `before` with this name: their nice values. */
    const started = (before: Set<number>, name: string) => threadsOf("self").filter((thread) => !before.has(thread.tid) && thread.name === name).map((thread) => thread.nice);
    const reports: string[] = [];
    /** Writes 40 values of 16 KB (past 64 pages: the checkpointer starts) and waits for a round on the worker reported as `label`. */
    const writeUntilCheckpoint = async (storage: KvStorage, label: string) => {
      const entries = Array.from({ length: 40 }, (_, i) => put(i + 1, `k${i}`, "x".repeat(16_000)));
      storage.save(hard(1, 40), entries, true);
      await storage.applyEntries(entries);
      await until(`a checkpoint on the worker (${label})`, () => reports.includes(label));
    };
    let before = new Set(threadsOf("self").map((thread) => thread.tid));
    const threaded = await openThreadedStorage(tempDir(), { voters: [1], checkpointPages: 64, onCheckpoint: (report) => reports.push(`threaded ${report.thread}`) });
    try {
      await writeUntilCheckpoint(threaded, "threaded worker");
      expect(started(before, "kv-storage")).toEqual([lowered]);
      expect(started(before, "kv-checkpoint")).toEqual([lowered]);
    } finally {
      await closed(threaded);
    }
    // Storage on the node's thread (kv serve --storage-thread=false): its checkpointer lowers itself.
    before = new Set(threadsOf("self").map((thread) => thread.tid));
    const direct = openSqliteStorage(tempDir(), { voters: [1], checkpointPages: 64, onCheckpoint: (report) => reports.push(`direct ${report.thread}`) });
    try {
      await writeUntilCheckpoint(direct, "direct worker");
      expect(started(before, "kv-checkpoint")).toEqual([lowered]);
    } finally {
      direct.close();
      await direct.released();
    }
  });

  test("kv serve (the built executable) writes on its storage thread by default, on the loop's thread with --storage-thread=false, over the same data dir", async () => {
    const dir = tempDir();
    /** The process's storage threads, by name (the checkpointer's starts only after 16 MiB of writes). */
    const workerThreads = (pid: number) => threadsOf(pid).filter((thread) => thread.name === "kv-storage").length;
    for (const [args, writes, workers] of [
      [[], "storage thread", 1],
      [["--storage-thread=false"], "loop's thread", 0],
      [[], "storage thread", 1],
    ] as const) {
      const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir: join(dir, "data"), logFile: join(dir, "serve.log"), args });
      try {
        expect(await node.waitForLog(`"storageWrites":"${writes}"`)).toContain(writes);
        const put = await fetch(`${node.httpUrl}/kv/k-${args.length}`, { method: "PUT", body: writes });
        expect(put.status).toBe(200);
        expect(await (await fetch(`${node.httpUrl}/kv/k-0`)).text()).toBe("storage thread");
        expect(workerThreads(node.pid)).toBe(workers);
        // The storage thread runs at a lower priority; the runtime's JIT and GC helpers, which the
        // loop's code needs too, run at the loop's: its thread started them, before the storage's.
        // (Its I/O pool, "Bun Pool", starts on first use, from whichever thread comes first.)
        const threads = threadsOf(node.pid);
        const loopNice = threads.find((thread) => thread.tid === node.pid)?.nice ?? Number.NaN;
        expect(threads.filter((thread) => thread.name === "kv-storage").map((thread) => thread.nice)).toEqual(workers === 1 ? [Math.min(19, loopNice + backgroundNiceIncrement)] : []);
        const helpers = threads.filter((thread) => thread.name === "JITWorker" || thread.name === "HeapHelper");
        expect(helpers.length).toBeGreaterThan(0);
        expect(helpers.filter((thread) => thread.nice !== loopNice)).toEqual([]);
      } finally {
        expect(await node.terminate()).toBe(0);
        await node.stop();
      }
    }
  });
});
