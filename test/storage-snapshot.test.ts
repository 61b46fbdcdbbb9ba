// Proves both KvStorage implementations compact the log, read a consistent image while writes go on, stage a received image in bounded chunks refusing bad ones, and install it atomically, identically, and that all of it survives a reopen (sqlite also drops stale staging, leaves no staged pages behind after an install, runs no needless checkpoint round after its own, and migrates a version 1 database).
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { cpSync, existsSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AssertionError } from "../src/lib/assert.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { type ImageRow, type KvImageReader, type KvStorage, StorageError } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { ImageStaging, StagingFile } from "../src/storage/staging-file.ts";
import { imageRowsPerPageMax, openImageReader } from "../src/storage/sqlite-reads.ts";
import type { CheckpointReport } from "../src/storage/checkpointer.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";
import { storageError } from "./helpers/thrown.ts";

const tempDir = tempDirs("kv-storage-snapshot-");

const bytes = (text: string) => new TextEncoder().encode(text);

function put(index: number, term: number, key: string, value: string): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: bytes(value) }) };
}
function del(index: number, term: number, key: string): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "delete", key }) };
}

/** A storage and how to get the state it restarts from (reopen for sqlite, clone for memory). */
interface Harness {
  readonly storage: KvStorage;
  reopen(): KvStorage;
}

interface Implementation {
  open(options?: { stagedImageBytesMax?: number }): Harness;
}

const implementations: [string, Implementation][] = [
  [
    "sqlite",
    {
      open(options = {}) {
        const dir = tempDir();
        let storage: KvStorage = openSqliteStorage(dir, { voters: [1, 2, 3], ...options });
        const harness = {
          get storage() {
            return storage;
          },
          reopen() {
            storage.close();
            storage = openSqliteStorage(dir, options);
            return storage;
          },
        };
        return harness;
      },
    },
  ],
  [
    "memory",
    {
      open(options = {}) {
        let storage = createMemoryKvStorage({ voters: [1, 2, 3], ...options });
        return {
          get storage() {
            return storage;
          },
          reopen() {
            storage = (storage as MemoryKvStorage).clone();
            return storage;
          },
        };
      },
    },
  ],
];

/** Saves and applies `count` puts of keys `k0..k{keys-1}` (cycling) from the next index, in `term`. */
function writePuts(storage: KvStorage, count: number, term: number, keys = count, valueOf = (index: number) => `v${index}`): number {
  const first = storage.lastIndex() + 1;
  const entries = Array.from({ length: count }, (_, offset) => put(first + offset, term, `k${(first + offset) % keys}`, valueOf(first + offset)));
  const last = first + count - 1;
  storage.save({ term, vote: 1, commit: last }, entries, true);
  storage.applyEntries(entries);
  return last;
}

/** Reads a whole image in pages of `bytesMax`, then closes it. */
function readAll(image: KvImageReader, bytesMax: number): ImageRow[] {
  const rows: ImageRow[] = [];
  for (let page = image.next(bytesMax); page.length > 0; page = image.next(bytesMax)) rows.push(...page);
  expect(image.next(bytesMax)).toEqual([]);
  image.close();
  return rows;
}

/** What `get` answers for every key of `keys`, as one comparable list. */
function contents(storage: KvStorage, keys: readonly string[]): (string | undefined)[] {
  return keys.map((key) => {
    const got = storage.get(key);
    return got === undefined ? undefined : `${new TextDecoder().decode(got.value)}@${got.version}`;
  });
}

function storageErrorCode(run: () => unknown): string {
  return storageError(run).code;
}

describe.each(implementations)("%s storage snapshots", (_name, implementation) => {
  test("compact drops the prefix, keeps term and entries after it, and survives a reopen", () => {
    const harness = implementation.open();
    let storage = harness.storage;
    writePuts(storage, 10, 1);
    const last = writePuts(storage, 10, 2); // entries 11..20 in term 2
    expect(storage.snapshotForSend()).toEqual({ index: 20, term: 2, voters: [1, 2, 3] });
    storage.compact(12);
    const expectCompacted = (s: KvStorage) => {
      expect(s.firstIndex()).toBe(13);
      expect(s.lastIndex()).toBe(last);
      expect(s.snapshot()).toEqual({ index: 12, term: 2, voters: [1, 2, 3] });
      expect(s.term(12)).toBe(2);
      expect(s.term(13)).toBe(2);
      expect(s.entries(13, 21, Number.MAX_SAFE_INTEGER).map((e) => e.index)).toEqual([13, 14, 15, 16, 17, 18, 19, 20]);
      expect(s.get("k3")).toEqual({ value: bytes("v13"), version: 13 }); // the state machine is untouched
    };
    expectCompacted(storage);
    storage.compact(5); // at or below the snapshot: nothing
    expectCompacted(storage);
    storage = harness.reopen();
    expectCompacted(storage);
    expect(storage.appliedIndex()).toBe(20);

    // Up to the applied (and last) index: the log is empty, lastIndex is the snapshot's.
    storage.compact(20);
    expect([storage.firstIndex(), storage.lastIndex(), storage.term(20)]).toEqual([21, 20, 2]);
    storage = harness.reopen();
    expect([storage.firstIndex(), storage.lastIndex(), storage.term(20)]).toEqual([21, 20, 2]);
    // The log goes on after it.
    writePuts(storage, 3, 3);
    expect(storage.entries(21, 24, 1_000).map((e) => e.term)).toEqual([3, 3, 3]);
    storage = harness.reopen();
    expect(storage.lastIndex()).toBe(23);
    storage.close();
  });

  test("compacting past what is applied, or past the log, is a bug; before anything is applied nothing can be sent", () => {
    const { storage } = implementation.open();
    expect(storage.snapshotForSend()).toBeUndefined();
    const entries = [put(1, 1, "a", "1"), put(2, 1, "b", "2"), put(3, 1, "c", "3")];
    storage.save({ term: 1, vote: 1, commit: 3 }, entries, true);
    storage.applyEntries(entries.slice(0, 2));
    expect(() => storage.compact(3)).toThrow(AssertionError);
    expect(() => storage.compact(9)).toThrow(AssertionError);
    expect(() => storage.term(0)).not.toThrow();
    storage.compact(2);
    expect(() => storage.term(1)).toThrow(AssertionError); // compacted away
    expect(() => storage.entries(1, 3, 100)).toThrow(AssertionError);
    storage.close();
  });

  test("an image is one consistent state at its applied index while writes, deletes and compaction go on", () => {
    const harness = implementation.open();
    const storage = harness.storage;
    const applied = writePuts(storage, 600, 1, 300, (index) => `value-${index}-`.padEnd(100, "x"));
    const keys = Array.from({ length: 320 }, (_, i) => `k${i}`);
    const before = contents(storage, keys);

    const image = storage.openImage();
    expect(image.metadata).toEqual({ index: applied, term: 1, voters: [1, 2, 3] });
    const firstPage = image.next(2_000);
    expect(firstPage.length).toBeGreaterThan(1);
    expect(firstPage.length).toBeLessThan(30);

    // The writer goes on, unblocked: overwrites, deletes, new keys, a compaction.
    const next = storage.lastIndex() + 1;
    const more = [put(next, 2, "k0", "changed"), del(next + 1, 2, "k1"), put(next + 2, 2, "k310", "new"), del(next + 3, 2, "k299")];
    storage.save({ term: 2, vote: 1, commit: next + 3 }, more, true);
    storage.applyEntries(more);
    storage.compact(next + 3);
    expect(contents(storage, ["k0", "k1", "k310", "k299"])).toEqual([`changed@${next}`, undefined, `new@${next + 2}`, undefined]);

    const rows = [...firstPage, ...readAll(image, 2_000)];
    expect(rows.length).toBe(300);
    const imageContents = new Map(rows.map((row) => [row.key, `${new TextDecoder().decode(row.value)}@${row.version}`]));
    expect(keys.map((key) => imageContents.get(key))).toEqual(before);
    const sortedKeys = rows.map((row) => row.key);
    expect(sortedKeys).toEqual([...sortedKeys].sort());

    // A second image sees the new state, its term from the snapshot now that the log is compacted to it.
    const second = storage.openImage();
    expect(second.metadata).toEqual({ index: next + 3, term: 2, voters: [1, 2, 3] });
    const secondRows = readAll(second, 1 << 20);
    expect(secondRows.length).toBe(299); // k1 and k299 gone, k310 new
    expect(secondRows.find((row) => row.key === "k0")?.version).toBe(next);
    // A row larger than the page still comes, alone.
    const third = storage.openImage();
    expect(third.next(1).length).toBe(1);
    third.close();
    storage.close();
  });

  test("a staged image installs atomically: state machine, applied index, empty log, snapshot, commit; and survives a reopen", () => {
    const source = implementation.open().storage;
    writePuts(source, 40, 3, 25);
    const image = source.openImage();
    const metadata = image.metadata;
    expect(metadata.index).toBe(40);

    const harness = implementation.open();
    let target = harness.storage;
    const entries = [put(1, 1, "only-here", "x"), put(2, 1, "k1", "old"), put(3, 1, "k2", "older")];
    target.save({ term: 2, vote: 2, commit: 2 }, entries, true);
    target.applyEntries(entries.slice(0, 2));

    let first = true;
    for (let page = image.next(300); page.length > 0; page = image.next(300)) {
      target.stageImageChunk("img-1", page, first);
      first = false;
    }
    image.close();
    // Staging changes nothing visible.
    expect(target.get("only-here")?.version).toBe(1);
    expect(target.appliedIndex()).toBe(2);

    target.installSnapshot(metadata, "img-1");
    const keys = ["only-here", ...Array.from({ length: 25 }, (_, i) => `k${i}`)];
    const expectInstalled = (s: KvStorage) => {
      expect(contents(s, keys)).toEqual(contents(source, keys));
      expect(s.get("only-here")).toBeUndefined();
      expect(s.appliedIndex()).toBe(40);
      expect(s.snapshot()).toEqual({ index: 40, term: 3, voters: [1, 2, 3] });
      expect([s.firstIndex(), s.lastIndex(), s.term(40)]).toEqual([41, 40, 3]);
      expect(s.initialState().hardState).toEqual({ term: 2, vote: 2, commit: 40 });
    };
    expectInstalled(target);
    target = harness.reopen();
    expectInstalled(target);
    // The log continues right after the snapshot.
    target.save({ term: 3, vote: 0, commit: 42 }, [put(41, 3, "k1", "after"), put(42, 3, "z", "z")], true);
    target.applyEntries([put(41, 3, "k1", "after"), put(42, 3, "z", "z")]);
    expect(target.get("k1")).toEqual({ value: bytes("after"), version: 41 });
    target = harness.reopen();
    expect(target.get("z")?.version).toBe(42);
    expect(target.appliedIndex()).toBe(42);
    source.close();
    target.close();
  });

  test("an install carries the snapshot's configuration, learners included", () => {
    const harness = implementation.open();
    let storage = harness.storage;
    storage.stageImageChunk("conf", [{ key: "a", value: bytes("1"), version: 3 }], true);
    storage.installSnapshot({ index: 9, term: 2, voters: [3, 1, 2], learners: [4] }, "conf");
    expect(storage.initialState()).toEqual({ hardState: { term: 0, vote: 0, commit: 9 }, voters: [1, 2, 3], learners: [4] });
    expect(storage.snapshot()).toEqual({ index: 9, term: 2, voters: [1, 2, 3], learners: [4] });
    storage = harness.reopen();
    expect(storage.initialState().learners).toEqual([4]);
    expect(storage.snapshotForSend()).toEqual({ index: 9, term: 2, voters: [1, 2, 3], learners: [4] });
    storage.close();
  });

  test("staging refuses chunks that do not continue the staged image, keys staged twice and images over the limit", () => {
    const { storage } = implementation.open({ stagedImageBytesMax: 1_000 });
    const row = (key: string, size = 10): ImageRow => ({ key, value: new Uint8Array(size), version: 1 });
    // A later chunk of an image never begun.
    expect(storageErrorCode(() => storage.stageImageChunk("a", [row("x")], false))).toBe("image_refused");
    storage.stageImageChunk("a", [row("a1")], true);
    // A stray chunk of another image is refused and leaves image a staged.
    expect(storageErrorCode(() => storage.stageImageChunk("b", [row("b1")], false))).toBe("image_refused");
    storage.stageImageChunk("a", [row("a2")], false);
    // A key twice ends image a.
    expect(storageErrorCode(() => storage.stageImageChunk("a", [row("a2")], false))).toBe("image_refused");
    expect(storageErrorCode(() => storage.stageImageChunk("a", [row("a3")], false))).toBe("image_refused");
    expect(() => storage.installSnapshot({ index: 5, term: 1, voters: [1, 2, 3] }, "a")).toThrow(AssertionError);
    // Twice within one chunk too.
    expect(storageErrorCode(() => storage.stageImageChunk("c", [row("c1"), row("c1")], true))).toBe("image_refused");
    // Bad rows and ids.
    expect(storageErrorCode(() => storage.stageImageChunk("d", [{ key: "", value: new Uint8Array(0), version: 1 }], true))).toBe("image_refused");
    expect(storageErrorCode(() => storage.stageImageChunk("d", [{ key: "k", value: new Uint8Array(0), version: 0 }], true))).toBe("image_refused");
    expect(storageErrorCode(() => storage.stageImageChunk("", [row("k")], true))).toBe("image_refused");
    // Over the limit: refused and dropped.
    storage.stageImageChunk("e", [row("e1", 600)], true);
    expect(storageErrorCode(() => storage.stageImageChunk("e", [row("e2", 600)], false))).toBe("image_refused");
    expect(storageErrorCode(() => storage.stageImageChunk("e", [row("e3")], false))).toBe("image_refused");
    // A first chunk replaces whatever was staged; discard drops it.
    storage.stageImageChunk("f", [row("f1")], true);
    storage.stageImageChunk("g", [row("g1")], true);
    expect(storageErrorCode(() => storage.stageImageChunk("f", [row("f2")], false))).toBe("image_refused");
    storage.discardStagedImage();
    expect(() => storage.installSnapshot({ index: 5, term: 1, voters: [1, 2, 3] }, "g")).toThrow(AssertionError);
    // Nothing of it reached the state machine.
    expect(storage.appliedIndex()).toBe(0);
    expect(["a1", "a2", "e1", "f1", "g1"].map((key) => storage.get(key))).toEqual([undefined, undefined, undefined, undefined, undefined]);
    // An install not past the applied index is a bug.
    storage.stageImageChunk("h", [row("h1")], true);
    storage.installSnapshot({ index: 5, term: 1, voters: [1, 2, 3] }, "h");
    storage.stageImageChunk("i", [row("i1")], true);
    expect(() => storage.installSnapshot({ index: 5, term: 1, voters: [1, 2, 3] }, "i")).toThrow(AssertionError);
    storage.close();
  });

  test("staging does not survive a restart", () => {
    const harness = implementation.open();
    harness.storage.stageImageChunk("s", [{ key: "k", value: bytes("v"), version: 1 }], true);
    const storage = harness.reopen();
    expect(storageErrorCode(() => storage.stageImageChunk("s", [{ key: "k2", value: bytes("v"), version: 1 }], false))).toBe("image_refused");
    expect(() => storage.installSnapshot({ index: 3, term: 1, voters: [1, 2, 3] }, "s")).toThrow(AssertionError);
    storage.close();
  });
});

describe("sqlite snapshot files", () => {
  test("a chunk of the staged image that fails on a full disk drops the image and deletes its file (found in a code review: its rows stayed on the disk they filled, named by nothing that would drop them, and a follower frozen there took no image again until a restart)", () => {
    const dir = tempDir();
    const path = join(dir, "kv.db-staging");
    const staging = new ImageStaging(path, 1 << 30, join(dir, "kv.db"));
    staging.stage("img", [{ key: "a", value: bytes("1"), version: 1 }], true);
    expect(existsSync(path)).toBe(true);
    const append = staging.file.append.bind(staging.file);
    staging.file.append = () => {
      throw Object.assign(new Error("database or disk is full"), { name: "SQLiteError", code: "SQLITE_FULL" });
    };
    expect(() => staging.stage("img", [{ key: "b", value: bytes("2"), version: 1 }], false)).toThrow("database or disk is full");
    expect(existsSync(path)).toBe(false);
    expect(staging.state().imageId).toBeUndefined();
    // The next image stages from nothing.
    staging.file.append = append;
    staging.stage("next", [{ key: "c", value: bytes("3"), version: 1 }], true);
    expect(staging.state()).toMatchObject({ imageId: "next" });
    staging.discard();
  });

  test("stale staging rows are deleted on open, and a damaged snapshot record is caught", () => {
    const dir = tempDir();
    const storage = openSqliteStorage(dir, { voters: [1] });
    storage.stageImageChunk("s", [{ key: "k", value: bytes("v"), version: 1 }], true);
    writePuts(storage, 5, 1);
    storage.compact(3);
    storage.close();
    writeFileSync(join(dir, "kv.db-staging"), "left by a process that died while staging");
    const reopened = openSqliteStorage(dir);
    expect(existsSync(join(dir, "kv.db-staging"))).toBe(false);
    reopened.close();
    const raw = new Database(join(dir, "kv.db"));
    expect(raw.query<{ n: number }, []>("SELECT COUNT(*) AS n FROM kv_staging").get()?.n).toBe(0);
    raw.run("UPDATE meta SET snapshot_term = 7");
    raw.close(true);
    let thrown: unknown;
    try {
      openSqliteStorage(dir).close();
    } catch (error: unknown) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(StorageError);
    expect((thrown as StorageError).code).toBe("corrupt");
  });

  test("a first chunk of a new image that fails (a full disk) forgets the image staged before it, whose file it emptied: its install is refused, not made with no rows (found in review)", () => {
    const storage = openSqliteStorage(tempDir(), { voters: [1, 2, 3], checkpoints: "inline" });
    storage.stageImageChunk("A", [{ key: "a1", value: bytes("x"), version: 5 }], true);
    storage.stageImageChunk("A", [{ key: "a2", value: bytes("y"), version: 7 }], false);
    const append = StagingFile.prototype.append;
    StagingFile.prototype.append = () => {
      throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
    };
    try {
      expect(() => storage.stageImageChunk("B", [{ key: "b1", value: bytes("q"), version: 3 }], true)).toThrow(/disk is full/);
    } finally {
      StagingFile.prototype.append = append;
    }
    expect(() => storage.installSnapshot({ index: 10, term: 2, voters: [1, 2, 3] }, "A")).toThrow(AssertionError);
    expect(storage.appliedIndex()).toBe(0);
    storage.close();
  });

  test("a log that does not go on from the snapshot is reset only when nothing past the snapshot was applied: else the open is refused and the log kept (found in review)", () => {
    const dir = tempDir();
    const logDir = join(dir, "kv.db-log");
    const storage = openSqliteStorage(dir, { voters: [1, 2, 3], checkpoints: "inline" });
    storage.save({ term: 1, vote: 1, commit: 0 }, Array.from({ length: 60 }, (_, i) => put(i + 1, 1, `old${i}`, "x")), true);
    const oldLog = tempDir();
    cpSync(logDir, oldLog, { recursive: true });
    storage.stageImageChunk("img", [{ key: "k", value: bytes("from-snapshot"), version: 50 }], true);
    storage.installSnapshot({ index: 50, term: 2, voters: [1, 2, 3] }, "img");
    const after = [put(51, 2, "k", "a"), put(52, 2, "k", "b")];
    storage.save({ term: 2, vote: 1, commit: 52 }, after, true);
    storage.applyEntries(after);
    storage.close();
    // The log from before the install comes back in place of the one that went on from it.
    rmSync(logDir, { recursive: true });
    cpSync(oldLog, logDir, { recursive: true });
    const files = () => readdirSync(logDir).map((name) => `${name}:${statSync(join(logDir, name)).size}`).sort();
    const kept = files();
    // The database records that the reset's segment (2) was durable: it is missing.
    const missing = storageError(() => openSqliteStorage(dir, { checkpoints: "inline" }).close());
    expect([missing.code, missing.message]).toEqual(["corrupt", expect.stringContaining("the segment is missing, though a completed sync had made")]);
    expect(files()).toEqual(kept);
    // Without that record (a data dir of schema 7, before any apply since): refused all the same.
    const raw = new Database(join(dir, "kv.db"));
    raw.run("UPDATE meta SET log_durable_segment = 0, log_durable_bytes = 0");
    raw.close();
    const thrown = storageError(() => openSqliteStorage(dir, { checkpoints: "inline" }).close());
    expect(thrown.code).toBe("corrupt");
    expect(thrown.message).toContain("yet entries up to 52 were applied after it");
    expect(files()).toEqual(kept);
  });

  test("with inline checkpoints the database is shared with a reader only while an image is open, and exclusive again after", () => {
    const dir = tempDir();
    const storage = openSqliteStorage(dir, { voters: [1], checkpoints: "inline" });
    writePuts(storage, 3, 1);
    const readerCount = () => {
      const raw = new Database(join(dir, "kv.db"), { readonly: true });
      try {
        raw.run("PRAGMA busy_timeout = 0");
        return raw.query<{ n: number }, []>("SELECT COUNT(*) AS n FROM kv").get()?.n;
      } finally {
        raw.close(true);
      }
    };
    expect(readerCount).toThrow(/locked/);
    const image = storage.openImage();
    expect(readerCount()).toBe(3);
    writePuts(storage, 2, 1); // the writer goes on while shared
    image.close();
    writePuts(storage, 2, 1); // the next write takes the exclusive lock again
    expect(readerCount).toThrow(/locked/);
    storage.close();
  });

  test("a node that installs an image of 8 MB ends with a data dir at most 1.2x the source's (the staged pages are not left behind)", () => {
    const dirSize = (dir: string) => readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
    const sourceDir = tempDir();
    const source = openSqliteStorage(sourceDir, { voters: [1] });
    const value = "v".repeat(4_000);
    // 2,000 keys of 4 KB, the log compacted as it goes (its pages are reused, as on a running node).
    for (let batch = 0; batch < 40; batch++) {
      writePuts(source, 50, 1, 100_000, () => value);
      source.compact(source.appliedIndex());
    }
    const targetDir = tempDir();
    const target = openSqliteStorage(targetDir, { voters: [1] });
    const image = source.openImage();
    let first = true;
    for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) {
      target.stageImageChunk("big", page, first);
      first = false;
    }
    target.installSnapshot(image.metadata, "big");
    image.close();
    expect(target.get("k1")?.value.byteLength).toBe(4_000);
    source.close();
    target.close(); // both checkpoint their WAL into the database file and delete it
    const sourceBytes = dirSize(sourceDir);
    expect(sourceBytes).toBeGreaterThan(8_000_000);
    expect(dirSize(targetDir)).toBeLessThanOrEqual(1.2 * sourceBytes);
    const reopened = openSqliteStorage(targetDir, { voters: [1] });
    expect(reopened.appliedIndex()).toBe(image.metadata.index);
    expect(reopened.list("k", undefined, 1_000).length).toBe(1_000);
    reopened.close();
  });

  test("with checkpoints on the worker, an install is checkpointed and its WAL space given back without waiting for later writes", async () => {
    const sourceDir = tempDir();
    const source = openSqliteStorage(sourceDir, { voters: [1] });
    const value = "v".repeat(4_000);
    // 4.8 MB: an image past four times the WAL's restart length (walRestartFrames below), which is cut to zero.
    for (let batch = 0; batch < 12; batch++) writePuts(source, 100, 1, 100_000, () => value);
    const reports: CheckpointReport[] = [];
    const targetDir = tempDir();
    const target = openSqliteStorage(targetDir, { voters: [1], checkpointPages: 64, walRestartFrames: 256, onCheckpoint: (report) => reports.push(report) });
    const image = source.openImage();
    let first = true;
    for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) {
      target.stageImageChunk("img", page, first);
      first = false;
    }
    target.installSnapshot(image.metadata, "img");
    image.close();
    source.close();
    // Nothing is written after the install: a round must still copy the image's frames (about 1,000 pages).
    const deadline = Date.now() + 10_000;
    while (!reports.some((r) => r.thread === "worker" && r.checkpointedFrames >= 900) && Date.now() < deadline) await Bun.sleep(10);
    expect(reports.filter((r) => r.error !== undefined)).toEqual([]);
    expect(reports.some((r) => r.thread === "worker" && r.checkpointedFrames >= 900)).toBe(true);
    // And the WAL file, which held the whole image, gives its space back: the data dir is not twice
    // the image while the node runs on without writing.
    const walFile = join(targetDir, "kv.db-wal");
    while (existsSync(walFile) && statSync(walFile).size > 0 && Date.now() < deadline) await Bun.sleep(10);
    expect(existsSync(walFile) ? statSync(walFile).size : 0).toBe(0);
    expect(target.get("k1")?.value.byteLength).toBe(4_000);
    target.close();
  }, 15_000);

  test("the WAL's truncate does not wait for a reader on another connection (a backup's, which the storage thread does not count): it leaves the WAL for a later round (found in review: the writer's thread stood still for the busy timeout)", () => {
    const dir = tempDir();
    // A busy timeout past the test's own: a truncate that waits for the reader fails the test.
    const storage = openSqliteStorage(dir, { voters: [1], checkpointPages: 1_000_000, lockWaitMs: 60_000 });
    writePuts(storage, 50, 1, 100_000, () => "v".repeat(100));
    // The reader's transaction reads the frames in the WAL (none checkpointed yet).
    const reader = new Database(join(dir, "kv.db"), { readonly: true });
    reader.run("BEGIN");
    expect(reader.query<{ n: number }, []>("SELECT COUNT(*) AS n FROM kv").get()?.n).toBe(50);
    // The round that truncates (after a worker's round caught up with a WAL far past its restart
    // length, as after an install): reached through its private method, as its trigger is a race.
    const reports: CheckpointReport[] = [];
    (storage as unknown as { checkpointHere(onCheckpoint: (report: CheckpointReport) => void, truncate: boolean): void }).checkpointHere((report) => reports.push(report), true);
    expect(reports.length).toBe(1);
    expect(reports[0]?.error).toBeUndefined();
    // Not truncated: the reader still reads the WAL. Once it is done, a later round can.
    expect(statSync(join(dir, "kv.db-wal")).size).toBeGreaterThan(0);
    reader.run("COMMIT");
    reader.close();
    (storage as unknown as { checkpointHere(onCheckpoint: (report: CheckpointReport) => void, truncate: boolean): void }).checkpointHere((report) => reports.push(report), true);
    expect(statSync(join(dir, "kv.db-wal")).size).toBe(0);
    storage.close();
  }, 20_000);

  test("with checkpoints on the worker, the caller's thread checkpoints only a short tail, the WAL still starts over, and nothing written is lost", async () => {
    const dir = tempDir();
    const reports: CheckpointReport[] = [];
    let storage = openSqliteStorage(dir, { voters: [1], checkpointPages: 64, walRestartFrames: 256, onCheckpoint: (report) => reports.push(report) });
    const big = "x".repeat(16_000);
    // Heavy writes (about 8 MB of applies a turn, 40 MB in all): rounds on the worker overlap
    // turns, so each leaves a long tail of frames written while it ran.
    for (let turn = 0; turn < 5; turn++) {
      writePuts(storage, 512, 1, 4_000, () => big); // each key once: every put is new pages in the WAL
      await Bun.sleep(1); // lets the worker's answers in
    }
    // Then quiet, until the caller's thread has let the WAL start over.
    const deadline = Date.now() + 4_000;
    while (!reports.some((r) => r.thread === "caller") && Date.now() < deadline) await Bun.sleep(5);
    expect(reports.filter((r) => r.error !== undefined)).toEqual([]);
    expect(reports.some((r) => r.thread === "worker" && r.checkpointedFrames > 0)).toBe(true);
    // Each checkpoint on the caller's thread copied few frames: those past the worker's round before it.
    const tails = reports.flatMap((report, i) => (report.thread === "caller" ? [report.checkpointedFrames - (reports[i - 1]?.checkpointedFrames ?? 0)] : []));
    expect(tails.length).toBeGreaterThanOrEqual(1);
    for (const tail of tails) expect(tail).toBeLessThanOrEqual(512);
    // The next commit starts the WAL over: it then holds only that commit's frames.
    const last = writePuts(storage, 1, 1, 4_000, () => "small");
    const raw = new Database(join(dir, "kv.db"));
    const wal = raw.query<{ log: number }, []>("PRAGMA wal_checkpoint(PASSIVE)").get();
    expect(wal?.log).toBeLessThan(64);
    expect(raw.query<{ n: number }, []>("SELECT COUNT(*) AS n FROM kv").get()?.n).toBe(2_561);
    raw.close(true);
    storage.close();
    storage = openSqliteStorage(dir, { voters: [1] });
    expect(storage.appliedIndex()).toBe(last);
    expect(storage.list("k", undefined, 3_000).length).toBe(2_561);
    expect(new TextDecoder().decode(storage.get("k5")?.value)).toBe(big);
    storage.close();
  });

  test("with checkpoints on the worker, the pages the caller's thread checkpointed do not count toward the next round: no needless round right after it", async () => {
    const dir = tempDir();
    const reports: CheckpointReport[] = [];
    const storage = openSqliteStorage(dir, { voters: [1], checkpointPages: 64, walRestartFrames: 8, onCheckpoint: (report) => reports.push(report) });
    try {
      // About 82 pages of applies by the storage's estimate: a round is asked for. Then, while it
      // runs, about 92 more: past checkpointPages, yet a short enough tail for the caller's thread to take.
      writePuts(storage, 80, 1);
      writePuts(storage, 90, 1);
      const deadline = Date.now() + 10_000;
      while (!reports.some((r) => r.thread === "caller") && Date.now() < deadline) await Bun.sleep(5); // polling interval
      const callerAt = reports.findIndex((r) => r.thread === "caller");
      expect(callerAt).toBeGreaterThan(0);
      expect(reports.filter((r) => r.error !== undefined)).toEqual([]);
      // Everything written is checkpointed now. Before the fix the pages written during the round
      // still counted, so a worker round was asked for at once, with nothing to copy. No round is
      // awaited here: a window in which one would have come, then the count.
      await Bun.sleep(300);
      expect(reports.slice(callerAt + 1)).toEqual([]);
      // The next round comes after checkpointPages more pages, as any.
      writePuts(storage, 80, 1);
      while (reports.length === callerAt + 1 && Date.now() < deadline) await Bun.sleep(5); // polling interval
      expect(reports[callerAt + 1]?.thread).toBe("worker");
    } finally {
      storage.close();
    }
  });

  test("an image of large values reads each row out of SQLite once, however small its chunks", () => {
    const dir = tempDir();
    const storage = openSqliteStorage(dir, { voters: [1, 2, 3] });
    const rowCount = 40;
    writePuts(storage, rowCount, 1, rowCount, (index) => `${index}:`.padEnd(64 * 1024, "v"));
    const image = openImageReader(join(dir, "kv.db"), 2000, () => {});
    const chunks: ImageRow[][] = [];
    for (let page = image.next(64 * 1024); page.length > 0; page = image.next(64 * 1024)) chunks.push(page);
    // Each row is a chunk of its own, as before, and every row comes once, in key order.
    expect(chunks.every((chunk) => chunk.length === 1)).toBe(true);
    const keys = chunks.map((chunk) => (chunk[0] as ImageRow).key);
    expect(keys).toEqual(Array.from({ length: rowCount }, (_, i) => `k${i}`).sort());
    // It fetched 256 rows a query and kept one: 40 rows cost 820 reads of 64 KiB.
    expect(image.rowsRead).toBe(rowCount);
    image.close();
    storage.close();
  });

  test("an image of many small rows comes in pages of at most imageRowsPerPageMax rows, every row once, in key order (found in review)", () => {
    const dir = tempDir();
    const storage = openSqliteStorage(dir, { voters: [1, 2, 3] });
    const rowCount = 10_000;
    writePuts(storage, rowCount, 1, rowCount, () => "v");
    const image = openImageReader(join(dir, "kv.db"), 2000, () => {});
    const pages: ImageRow[][] = [];
    for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) pages.push(page);
    // A 1 MiB page held all 10,000 (30,000 in a cluster that lost its leader sending them).
    expect(pages.map((page) => page.length)).toEqual([imageRowsPerPageMax, imageRowsPerPageMax, rowCount - 2 * imageRowsPerPageMax]);
    const keys = pages.flat().map((row) => row.key);
    expect(keys).toEqual([...keys].sort());
    expect(new Set(keys).size).toBe(rowCount);
    image.close();
    storage.close();
  });

  test("a version 1 database (before snapshots) is migrated in place", () => {
    const dir = tempDir();
    const raw = new Database(join(dir, "kv.db"), { create: true });
    raw.run(`
      CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL) STRICT;
      CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL) STRICT;
      CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), voters TEXT, applied_index INTEGER NOT NULL) STRICT;
      CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL) STRICT;
      INSERT INTO meta (id, voters, applied_index) VALUES (1, '1,2,3', 0);
      INSERT INTO kv (key, value, version) VALUES ('old', X'6869', 1);
      PRAGMA user_version = 1;
    `);
    // The hard state row with its checksum, as version 1 wrote it (commit 0).
    raw.run("INSERT INTO hard_state (id, term, vote, commit_index, crc) VALUES (1, 0, 0, 0, ?)", [Bun.hash.crc32(new Uint8Array(24))]);
    raw.close(true);
    const storage = openSqliteStorage(dir, { voters: [1, 2, 3] });
    expect(storage.get("old")).toEqual({ value: bytes("hi"), version: 1 });
    expect(storage.snapshot()).toEqual({ index: 0, term: 0, voters: [1, 2, 3] });
    writePuts(storage, 4, 1);
    storage.compact(2);
    storage.close();
    const again = openSqliteStorage(dir, { voters: [1, 2, 3] });
    expect(again.firstIndex()).toBe(3);
    again.close();
  });
});
