// Proves the KvStorage implementations (sqlite, its in-memory twin, and the threaded one) apply committed entries to the key-value state machine with the same results: versions are Raft indexes, no-ops only advance the applied index, replays are skipped, and a bad batch changes nothing.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AssertionError } from "../src/lib/assert.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { type KvStorage, StorageError } from "../src/storage/kv-storage.ts";
import { legacySessionWindowEntries } from "../src/kv/apply-plan.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { openThreadedStorage } from "../src/storage/threaded-storage.ts";

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (data: Uint8Array | undefined): string | undefined => (data === undefined ? undefined : new TextDecoder().decode(data));

function put(index: number, key: string, value: string, term = 1): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: bytes(value) }) };
}
function del(index: number, key: string, term = 1): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "delete", key }) };
}
function noop(index: number, term = 1): Entry {
  return { index, term, type: EntryType.Normal, data: new Uint8Array(0) };
}

/** Saves `entries` as committed, as a node's Ready loop does before applying them. */
function saveCommitted(storage: KvStorage, entries: readonly Entry[]): void {
  const last = entries[entries.length - 1];
  if (last === undefined) return;
  storage.save({ term: last.term, vote: 1, commit: last.index }, entries, true);
}

const implementations: [string, () => KvStorage | Promise<KvStorage>][] = [
  [
    "sqlite",
    () => {
      const dir = mkdtempSync(join(tmpdir(), "kv-storage-apply-"));
      tempDirs.push(dir);
      return openSqliteStorage(dir, { voters: [1] });
    },
  ],
  ["memory", () => createMemoryKvStorage({ voters: [1] })],
  // Applies on a worker thread: results come as a promise (threaded-storage.ts).
  [
    "threaded",
    () => {
      const dir = mkdtempSync(join(tmpdir(), "kv-storage-apply-"));
      tempDirs.push(dir);
      return openThreadedStorage(dir, { voters: [1] });
    },
  ],
];

describe.each(implementations)("%s state machine", (name, open) => {
  test("puts, deletes and no-ops report versions and change the data", async () => {
    const storage = await open();
    try {
      const entries = [noop(1), put(2, "a", "one"), put(3, "b", "two"), put(4, "a", "three"), del(5, "b"), del(6, "missing")];
      saveCommitted(storage, entries);
      expect(await storage.applyEntries(entries)).toEqual([
        { kind: "noop", index: 1 },
        { kind: "put", index: 2, version: 2 },
        { kind: "put", index: 3, version: 3 },
        { kind: "put", index: 4, version: 4 },
        { kind: "delete", index: 5, deleted: true, version: 5 },
        { kind: "delete", index: 6, deleted: false, version: 6 },
      ]);
      expect(storage.appliedIndex()).toBe(6);
      expect(text(storage.get("a")?.value)).toBe("three");
      expect(storage.get("a")?.version).toBe(4);
      expect(storage.get("b")).toBeUndefined();
      expect(storage.get("missing")).toBeUndefined();
    } finally {
      storage.close();
    }
  });

  test("entries already applied are skipped, the rest applied once", async () => {
    const storage = await open();
    try {
      saveCommitted(storage, [put(1, "k", "v1"), put(2, "k", "v2"), del(3, "k"), put(4, "k", "v4")]);
      await storage.applyEntries([put(1, "k", "v1"), put(2, "k", "v2")]);
      expect(await storage.applyEntries([put(1, "k", "v1"), put(2, "k", "v2"), del(3, "k")])).toEqual([
        { kind: "skipped", index: 1 },
        { kind: "skipped", index: 2 },
        { kind: "delete", index: 3, deleted: true, version: 3 },
      ]);
      expect(await storage.applyEntries([del(3, "k")])).toEqual([{ kind: "skipped", index: 3 }]);
      expect(storage.get("k")).toBeUndefined();
      await storage.applyEntries([put(4, "k", "v4")]);
      expect(storage.get("k")?.version).toBe(4);
      expect(await storage.applyEntries([])).toEqual([]);
    } finally {
      storage.close();
    }
  });

  test("values keep their bytes exactly, empty included", async () => {
    const storage = await open();
    try {
      const value = Uint8Array.from({ length: 1000 }, (_, offset) => (offset * 31) & 0xff);
      const entries: Entry[] = [
        { index: 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "bin", value }) },
        { index: 2, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "empty", value: new Uint8Array(0) }) },
      ];
      saveCommitted(storage, entries);
      await storage.applyEntries(entries);
      expect(storage.get("bin")?.value).toEqual(value);
      expect(storage.get("empty")).toEqual({ value: new Uint8Array(0), version: 2 });
    } finally {
      storage.close();
    }
  });

  test("an undecodable committed entry fails the whole batch with bad_command and changes nothing", async () => {
    const storage = await open();
    try {
      const garbage: Entry = { index: 2, term: 1, type: EntryType.Normal, data: new Uint8Array([0x09, 0x01]) };
      saveCommitted(storage, [put(1, "k", "v"), garbage]);
      let thrown: unknown;
      try {
        await storage.applyEntries([put(1, "k", "v"), garbage]);
      } catch (error: unknown) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(StorageError);
      expect((thrown as StorageError).code).toBe("bad_command");
      expect((thrown as StorageError).index).toBe(2);
      expect((thrown as StorageError).message).toContain("index 2");
      // After a downgrade, a newer release's command is the likely cause: said, with the way back.
      expect((thrown as StorageError).message).toContain("written by a newer release of kv? run the release the other members run on this node");
      expect(storage.appliedIndex()).toBe(0);
      expect(storage.get("k")).toBeUndefined();
    } finally {
      storage.close();
    }
  });

  // On the threaded storage a bug found on the writer is fatal for it (test/storage-threaded.test.ts checks that).
  test("applying what is not committed, not in the log, out of order, or of another term is a bug", async () => {
    const storage = await open();
    try {
      storage.save({ term: 2, vote: 1, commit: 2 }, [put(1, "a", "1"), put(2, "a", "2"), put(3, "a", "3")], true);
      expect(() => storage.applyEntries([put(2, "a", "2")])).toThrow(AssertionError); // skips index 1
      expect(() => storage.applyEntries([put(1, "a", "1"), put(3, "a", "3")])).toThrow(AssertionError); // a gap
      expect(() => storage.applyEntries([put(1, "a", "1"), put(2, "a", "2"), put(3, "a", "3")])).toThrow(AssertionError); // 3 not committed
      expect(() => storage.applyEntries([put(1, "a", "1", 2)])).toThrow(AssertionError); // the log has term 1 there
      expect(storage.appliedIndex()).toBe(0);
      await storage.applyEntries([put(1, "a", "1"), put(2, "a", "2")]);
      expect(storage.get("a")?.version).toBe(2);
    } finally {
      storage.close();
    }
  });
});

test("an idempotent retry in the 0.1.0 encoding just past its 100,000-entry window gets the same answer on replicas that applied in different batches", () => {
  const retry = (index: number): Entry => ({
    index,
    term: 1,
    type: EntryType.Normal,
    data: encodeCommand({ op: "put", key: "k", value: bytes(`at ${index}`), idempotencyKey: "client-1:7" }),
  });
  const last = legacySessionWindowEntries + 3;
  const log: Entry[] = [retry(1)];
  for (let index = 2; index < last; index++) log.push(noop(index));
  log.push(retry(last));
  const answers: unknown[] = [];
  const values: (string | undefined)[] = [];
  // One replica applies everything at once; the other stops one entry short of the retry, so it
  // expired sessions up to an index the first one never stopped at.
  for (const split of [last - 1, last - 2]) {
    const storage = createMemoryKvStorage({ voters: [1] });
    saveCommitted(storage, log);
    storage.applyEntries(log.slice(0, 1));
    storage.applyEntries(log.slice(1, split));
    answers.push(storage.applyEntries(log.slice(split)).at(-1));
    values.push(text(storage.get("k")?.value));
    storage.close();
  }
  // The session made at index 1 is out of the window at the retry: both apply it anew.
  expect(answers[0]).toEqual(answers[1]);
  expect(values).toEqual([`at ${last}`, `at ${last}`]);
});

describe("sqlite: listing a prefix", () => {
  test("reads only the rows under the prefix, not a page of the keys that sort after it", () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-storage-list-"));
    tempDirs.push(dir);
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      // Two keys under "m/", then 500 keys after them. A new leader lists its leases this way at
      // every election; the rows past the prefix used to be read (values and all) a page at a time.
      const entries = [put(1, "m/1", "x"), put(2, "m/2", "y")];
      for (let i = 0; i < 500; i++) entries.push(put(3 + i, `n/${String(i).padStart(4, "0")}`, "z".repeat(100)));
      saveCommitted(storage, entries);
      storage.applyEntries(entries);
      const before = storage.kvRowsRead;
      expect(storage.list("m/", undefined, 1_000).map((row) => row.key)).toEqual(["m/1", "m/2"]);
      expect(storage.kvRowsRead - before).toBeLessThanOrEqual(3);
      // A prefix whose last character is the highest a UTF-16 unit holds, and one past the BMP.
      const more = [put(503, "\uffff/a", "1"), put(504, "\uffff/b", "2"), put(505, "\u{10ffff}", "3"), put(506, "\u{10ffff}a", "4")];
      saveCommitted(storage, more);
      storage.applyEntries(more);
      expect(storage.list("\uffff", undefined, 10).map((row) => row.key)).toEqual(["\uffff/a", "\uffff/b"]);
      expect(storage.list("\u{10ffff}", undefined, 10).map((row) => row.key)).toEqual(["\u{10ffff}", "\u{10ffff}a"]);
      expect(storage.list("n/04", "n/0497", 10).map((row) => row.key)).toEqual(["n/0498", "n/0499"]);
    } finally {
      storage.close();
    }
  });

  test("a page ended by its bytes reads no row past it", () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-storage-list-"));
    tempDirs.push(dir);
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      const entries = Array.from({ length: 20 }, (_, i) => put(1 + i, `big/${String(i).padStart(2, "0")}`, "v".repeat(256 * 1024)));
      saveCommitted(storage, entries);
      storage.applyEntries(entries);
      const before = storage.kvRowsRead;
      // 1 MiB of keys and values ends the page at its fourth item; it read all 20 rows before.
      const page = storage.list("big/", undefined, 100, 1 << 20);
      expect(page.map((row) => row.key)).toEqual(["big/00", "big/01", "big/02", "big/03"]);
      expect(storage.kvRowsRead - before).toBe(4);
      // The next page goes on after it, and a page past the prefix's last key is empty.
      expect(storage.list("big/", "big/03", 100, 1 << 20).map((row) => row.key)).toEqual(["big/04", "big/05", "big/06", "big/07"]);
      expect(storage.list("big/", "big/19", 100, 1 << 20)).toEqual([]);
    } finally {
      storage.close();
    }
  });
});
