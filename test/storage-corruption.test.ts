// Proves the sqlite storage detects damage done to its log's segments behind its back (a changed entry, an entry moved, a damaged segment, a missing one, a missing log) and fails with a StorageError naming the file (and the index where one is concerned) instead of serving bad data, while a torn write at the log's end (a crash's) is cut off.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Database } from "bun:sqlite";
import { encodeCommand } from "../src/kv/command.ts";
import { openImageReader } from "../src/storage/sqlite-reads.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { logDirOf, openSqliteStorage, type SqliteStorage, type SqliteStorageOptions } from "../src/storage/sqlite-storage.ts";
import { storageError } from "./helpers/thrown.ts";

let dir = "";
const opened: SqliteStorage[] = [];
afterEach(() => {
  for (const storage of opened.splice(0)) storage.close();
  rmSync(dir, { recursive: true, force: true });
});

function open(options: SqliteStorageOptions = {}): SqliteStorage {
  const storage = openSqliteStorage(dir, options);
  opened.push(storage);
  return storage;
}

function entry(index: number, term = 1): Entry {
  return { index, term, type: EntryType.Normal, data: new TextEncoder().encode(`entry ${String(index).padStart(3, "0")}`) };
}

/** A storage holding entries 1..count of term 1, committed up to `commit`, saved `perSave` at a time. */
function prepare(count: number, options: SqliteStorageOptions & { perSave?: number; commit?: number } = {}): SqliteStorage {
  dir = mkdtempSync(join(tmpdir(), "kv-storage-corruption-"));
  const storage = open({ voters: [1], ...options });
  const perSave = options.perSave ?? count;
  for (let first = 1; first <= count; first += perSave) {
    const entries = Array.from({ length: Math.min(perSave, count - first + 1) }, (_, offset) => entry(first + offset));
    storage.save({ term: 1, vote: 1, commit: Math.min(options.commit ?? 2, first + entries.length - 1) }, entries, true);
  }
  return storage;
}

function segments(): string[] {
  const logDir = logDirOf(join(dir, "kv.db"));
  return readdirSync(logDir).sort().map((name) => join(logDir, name));
}

/** Changes a segment file the way a bad disk would: the byte at `needle`'s first occurrence, plus `at`. */
function flipByteOf(needle: string, at = 0): string {
  for (const path of segments()) {
    const bytes = readFileSync(path);
    const found = bytes.indexOf(needle);
    if (found < 0) continue;
    bytes[found + at] = (bytes[found + at] as number) ^ 0xff;
    writeFileSync(path, bytes);
    return path;
  }
  throw new Error(`${needle} is in no segment`);
}

describe("sqlite storage corruption", () => {
  test("a changed entry payload is caught when read back, naming the segment and the index", () => {
    // No tail in memory: every read goes to the segment.
    const storage = prepare(10, { logTailBytesMax: 0, logTailKeptBytesMax: 0 });
    const segment = flipByteOf("entry 005", 8);
    expect(storage.entries(1, 5, Number.MAX_SAFE_INTEGER).length).toBe(4);
    const error = storageError(() => storage.entries(1, 11, Number.MAX_SAFE_INTEGER));
    expect(error.code).toBe("corrupt");
    expect(error.index).toBe(5);
    expect(error.file).toBe(segment);
    expect(error.message).toContain(segment);
    expect(error.message).toContain("index 5");
    expect(error.message).toContain("checksum");
    expect(storageError(() => storage.entries(5, 6, 0)).index).toBe(5);
  });

  test("an entry record copied over another's place is caught when read back", () => {
    const storage = prepare(6, { logTailBytesMax: 0, logTailKeptBytesMax: 0 });
    const [segment] = segments();
    const bytes = readFileSync(segment as string);
    // Records of the same length: entry 2's, checksum and all, over entry 3's.
    const recordOf = (index: number) => bytes.indexOf(`entry 00${index}`) - 9 - 17;
    const length = bytes.indexOf("entry 003") - bytes.indexOf("entry 002");
    bytes.copy(bytes, recordOf(3), recordOf(2), recordOf(2) + length);
    writeFileSync(segment as string, bytes);
    const error = storageError(() => storage.entries(1, 7, 1000));
    expect(error.index).toBe(3);
    expect(error.message).toContain("found entry 2");
  });

  test("damage in a segment before the last is caught on open, naming it", () => {
    // Segments of 1 KiB hold a few entries each: 100 entries take several.
    const storage = prepare(100, { perSave: 2, logSegmentBytesMax: 1024 });
    storage.close();
    expect(segments().length).toBeGreaterThan(3);
    const segment = flipByteOf("entry 003", 8);
    expect(segment).not.toBe(segments().at(-1));
    const error = storageError(() => open({ logSegmentBytesMax: 1024 }));
    expect(error.code).toBe("corrupt");
    expect(error.file).toBe(segment);
    expect(error.message).toContain("not the last");
  });

  test("a segment missing from the middle of the log is caught on open", () => {
    const storage = prepare(100, { perSave: 2, logSegmentBytesMax: 1024 });
    storage.close();
    const all = segments();
    expect(all.length).toBeGreaterThan(3);
    rmSync(all[Math.floor(all.length / 2)] as string);
    expect(storageError(() => open({ logSegmentBytesMax: 1024 })).message).toContain("hole");
  });

  test("the first segment missing (the log starting after entries the state machine has not applied) is caught on open", () => {
    const storage = prepare(100, { perSave: 2, logSegmentBytesMax: 1024 });
    storage.close();
    rmSync(segments()[0] as string);
    const error = storageError(() => open({ logSegmentBytesMax: 1024 }));
    expect(error.code).toBe("corrupt");
    expect(error.message).toContain("entries are missing");
  });

  test("a changed byte in the last segment is refused at open, naming the segment and the entry", () => {
    const storage = prepare(10, { perSave: 5, commit: 8 });
    storage.close();
    const segment = flipByteOf("entry 007", 8);
    const error = storageError(() => open());
    expect(error.code).toBe("corrupt");
    expect(error.file).toBe(segment);
    expect(error.index).toBe(7);
  });

  test("a torn write at the end of the log is cut off: the log keeps what preceded it, with the hard state written before it", () => {
    // Two saves: entries 1..5 with commit 5, then 6..10 with commit 8. A second save torn by a
    // crash before its sync returned (never acknowledged) leaves the first whole and a prefix of
    // the second.
    const storage = prepare(10, { perSave: 5, commit: 8 });
    storage.close();
    const segment = segments().at(-1) as string;
    const bytes = readFileSync(segment);
    writeFileSync(segment, bytes.subarray(0, bytes.indexOf("entry 007") + 4));
    const reopened = open();
    expect(reopened.lastIndex()).toBe(6);
    expect(reopened.initialState().hardState).toEqual({ term: 1, vote: 1, commit: 5 });
    expect(reopened.entries(1, 7, Number.MAX_SAFE_INTEGER).map((read) => read.index)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test("damage to a durable record that holds a sector of zeros is refused at open, not cut as a torn write with the vote saved after it (found in review)", () => {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-corruption-"));
    const storage = open({ voters: [1] });
    const first: Entry = { index: 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "a", value: new TextEncoder().encode("entry 001") }) };
    const blob: Entry = { index: 2, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "blob", value: new Uint8Array(2048) }) };
    storage.save({ term: 1, vote: 1, commit: 2 }, [first, blob], true);
    storage.applyEntries([first, blob]);
    // The node votes for node 3 in term 2 (fsynced before the vote leaves), and applies the next
    // leader's first entry: that transaction records how much of the log was durable.
    storage.save({ term: 2, vote: 3, commit: 2 }, [], true);
    storage.save({ term: 2, vote: 3, commit: 3 }, [{ index: 3, term: 2, type: EntryType.Normal, data: new Uint8Array(0) }], true);
    storage.applyEntries(storage.entries(3, 4, Number.MAX_SAFE_INTEGER));
    storage.close();
    const segment = segments().at(-1) as string;
    const bytes = readFileSync(segment);
    const blobRecord = bytes.indexOf("entry 001") + "entry 001".length;
    expect(bytes.readUInt32LE(blobRecord + 4)).toBe(17 + blob.data.byteLength);
    bytes[blobRecord + 9 + 8] = (bytes[blobRecord + 9 + 8] as number) ^ 0x01; // a bit of entry 2's term
    writeFileSync(segment, bytes);
    const error = storageError(() => open());
    expect([error.code, error.file, error.index]).toEqual(["corrupt", segment, 2]);
    expect(error.message).toContain("damage, not a torn write");
    expect(readFileSync(segment)).toEqual(bytes);
  });

  test("a data dir whose log directory is gone is refused at open", () => {
    const storage = prepare(3);
    storage.close();
    rmSync(logDirOf(join(dir, "kv.db")), { recursive: true });
    const error = storageError(() => open());
    expect(error.code).toBe("corrupt");
    expect(error.message).toContain("missing");
  });
});

describe("sqlite: the state machine's rows carry checksums (schema 6)", () => {
  const put = (index: number, key: string, value: string): Entry => ({
    index,
    term: 1,
    type: EntryType.Normal,
    data: encodeCommand({ op: "put", key, value: new TextEncoder().encode(value) }),
  });

  /** Applies puts of `rows`, closes, and flips a byte of `needle`'s first occurrence in kv.db. */
  function damaged(rows: [string, string][], needle: string): string {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-corruption-"));
    const storage = open({ voters: [1] });
    const entries = rows.map(([key, value], i) => put(i + 1, key, value));
    storage.save({ term: 1, vote: 1, commit: entries.length }, entries, true);
    storage.applyEntries(entries);
    opened.splice(0);
    storage.close(); // the last connection: the WAL goes into kv.db
    const file = join(dir, "kv.db");
    const bytes = readFileSync(file);
    const at = bytes.indexOf(needle);
    expect(at).toBeGreaterThan(0);
    bytes[at + 10] = (bytes[at + 10] as number) ^ 0x01;
    writeFileSync(file, bytes);
    return file;
  }

  test("a value damaged on disk is refused as corrupt, naming its key, by a read, a listing, an image and an apply; its neighbours read", () => {
    const file = damaged(
      [
        ["a", "fine-a"],
        ["b", `bad-${"x".repeat(64)}`],
        ["c", "fine-c"],
      ],
      "bad-",
    );
    const storage = open();
    // It came back with the flipped bit, as a 200, before.
    const read = storageError(() => storage.get("b"));
    expect(read.code).toBe("corrupt");
    expect(read.message).toContain('key "b"');
    expect(new TextDecoder().decode(storage.get("a")?.value)).toBe("fine-a");
    expect(storageError(() => storage.list("", undefined, 10)).code).toBe("corrupt");
    expect(storage.list("c", undefined, 10).map((row) => row.key)).toEqual(["c"]);
    const image = openImageReader(file, 2000, () => {});
    try {
      expect(storageError(() => image.next(1 << 20)).code).toBe("corrupt");
    } finally {
      image.close();
    }
    // A compare-and-set reads the row at apply: it fails rather than compare against damage.
    const cas: Entry = { index: 4, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "b", value: new TextEncoder().encode("new"), ifVersion: 2 }) };
    storage.save({ term: 1, vote: 1, commit: 4 }, [cas], true);
    expect(storageError(() => storage.applyEntries([cas])).code).toBe("corrupt");
  });

  test("rows written before schema 6 (no checksum) still read, and a write gives them one", () => {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-corruption-"));
    let storage = open({ voters: [1] });
    const entries = [put(1, "old", "before")];
    storage.save({ term: 1, vote: 1, commit: 1 }, entries, true);
    storage.applyEntries(entries);
    opened.splice(0);
    storage.close();
    // As a 0.5.0 node left it: no checksum in the row.
    const raw = new Database(join(dir, "kv.db"));
    raw.run("UPDATE kv SET crc = NULL");
    raw.close();
    storage = open();
    expect(new TextDecoder().decode(storage.get("old")?.value)).toBe("before");
    const again = [put(2, "old", "after")];
    storage.save({ term: 1, vote: 1, commit: 2 }, again, true);
    storage.applyEntries(again);
    opened.splice(0);
    storage.close();
    const check = new Database(join(dir, "kv.db"), { readonly: true });
    expect(check.query<{ crc: number | null }, []>("SELECT crc FROM kv WHERE key = 'old'").get()?.crc).toBeNumber();
    check.close();
  });
});
