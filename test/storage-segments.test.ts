// Proves the sqlite storage keeps its log in segment files correctly around the state machine's
// own database: a schema 4 data dir's log moves into segments in its migration (again if a first
// try died), an install that died between the state machine's commit and the log's reset opens
// with the log reset, a compaction deletes segments only once a sync made it durable, and the
// node's-thread reader of ThreadedStorage reads entries behind its tail from segments and lets go
// of the ones compaction deleted; a save that meets a full disk in the log leaves nothing behind
// and goes through when retried.
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { cpSync, mkdirSync, readdirSync, readlinkSync, rmSync, writeFileSync, writevSync } from "node:fs";
import { isDiskFull } from "../src/lib/disk-full.ts";
import { join } from "node:path";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { entryChecksum, hardStateChecksum, snapshotChecksum } from "../src/storage/entry-checksum.ts";
import type { SegmentFiles } from "../src/storage/segment-log.ts";
import { logDirOf, openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";
import { openThreadedStorage } from "../src/storage/threaded-storage.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

const tempDir = tempDirs("kv-storage-segments-");
const bytes = (text: string) => new TextEncoder().encode(text);

function put(index: number, term: number, key: string, value: string): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: bytes(value) }) };
}

/** Saves (fsynced) and applies puts from the next index: `count` of them in `term`. */
function writePuts(storage: SqliteStorage, count: number, term: number): number {
  const first = storage.lastIndex() + 1;
  const entries = Array.from({ length: count }, (_, offset) => put(first + offset, term, `k${first + offset}`, `v${first + offset}`));
  const last = first + count - 1;
  storage.save({ term, vote: 1, commit: last }, entries, true);
  storage.applyEntries(entries);
  return last;
}

/** Terms of the log a schema 4 data dir below holds after its snapshot at 3 (term 1): entries 4..8. */
const v4Terms = [1, 1, 2, 2, 2];

/**
 * Writes a data dir as release 0.4.0 left it (schema 4): the log compacted up to 3 (term 1) and
 * holding 4..8, the hard state (term 2, vote 1, commit 7), applied up to 6, voters 1.
 */
function schema4DataDir(): string {
  const dir = tempDir();
  const db = new Database(join(dir, "kv.db"), { create: true });
  db.run(`
    CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL) STRICT;
    CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL) STRICT;
    CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), voters TEXT, applied_index INTEGER NOT NULL,
      learners TEXT NOT NULL DEFAULT '', snapshot_index INTEGER NOT NULL DEFAULT 0, snapshot_term INTEGER NOT NULL DEFAULT 0,
      snapshot_voters TEXT NOT NULL DEFAULT '', snapshot_learners TEXT NOT NULL DEFAULT '', snapshot_crc INTEGER NOT NULL DEFAULT 0,
      config_index INTEGER NOT NULL DEFAULT 0) STRICT;
    CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL) STRICT;
    CREATE TABLE kv_staging (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL) STRICT;
    CREATE TABLE members (id INTEGER PRIMARY KEY, peer_url TEXT NOT NULL, http_url TEXT) STRICT;
    CREATE INDEX kv_sessions_by_version ON kv (version) WHERE key > char(0) || 'session/' AND key < char(0) || 'session0';
  `);
  db.run("INSERT INTO meta (id, voters, applied_index, snapshot_index, snapshot_term, snapshot_voters, snapshot_crc) VALUES (1, '1', 6, 3, 1, '1', ?)", [
    snapshotChecksum(3, 1, "1", ""),
  ]);
  const hardState = { term: 2, vote: 1, commit: 7 };
  db.run("INSERT INTO hard_state (id, term, vote, commit_index, crc) VALUES (1, ?, ?, ?, ?)", [hardState.term, hardState.vote, hardState.commit, hardStateChecksum(hardState)]);
  v4Terms.forEach((term, offset) => {
    const entry = put(4 + offset, term, `k${4 + offset}`, `v${4 + offset}`);
    db.run("INSERT INTO raft_log (idx, term, type, data, crc) VALUES (?, ?, ?, ?, ?)", [entry.index, entry.term, entry.type, entry.data, entryChecksum(entry.index, entry.term, entry.type, entry.data)]);
  });
  for (let index = 1; index <= 6; index++) db.run("INSERT INTO kv (key, value, version) VALUES (?, ?, ?)", [`k${index}`, bytes(`v${index}`), index]);
  db.run("PRAGMA user_version = 4");
  db.close(true);
  return dir;
}

function expectSchema4LogMoved(storage: SqliteStorage): void {
  expect([storage.firstIndex(), storage.lastIndex()]).toEqual([4, 8]);
  expect(storage.initialState().hardState).toEqual({ term: 2, vote: 1, commit: 7 });
  expect(storage.entries(4, 9, Number.MAX_SAFE_INTEGER)).toEqual(v4Terms.map((term, offset) => put(4 + offset, term, `k${4 + offset}`, `v${4 + offset}`)));
  expect(storage.term(3)).toBe(1);
  expect(storage.snapshotForSend()).toMatchObject({ index: 6, term: 2 });
}

describe("the log in segments", () => {
  test("a schema 4 data dir's log moves into segments at open: the same entries and hard state, the term at the applied index kept in meta", () => {
    const dir = schema4DataDir();
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      expectSchema4LogMoved(storage);
      const image = storage.openImage();
      expect(image.metadata).toMatchObject({ index: 6, term: 2 });
      image.close();
      // Applies go on from it.
      storage.applyEntries(storage.entries(7, 8, Number.MAX_SAFE_INTEGER));
      expect(storage.snapshotForSend()).toMatchObject({ index: 7, term: 2 });
    } finally {
      storage.close();
    }
    const raw = new Database(join(dir, "kv.db"), { readonly: true });
    try {
      expect(raw.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(8);
      expect(raw.query<{ n: number }, []>("SELECT COUNT(*) AS n FROM sqlite_master WHERE name IN ('raft_log', 'hard_state')").get()?.n).toBe(0);
      expect(raw.query<{ applied_term: number }, []>("SELECT applied_term FROM meta").get()?.applied_term).toBe(2);
    } finally {
      raw.close(true);
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      expect(reopened.lastIndex()).toBe(8);
      expect(reopened.appliedIndex()).toBe(7);
    } finally {
      reopened.close();
    }
  });

  test("a migration that died before it committed (segments written, schema still 4) is done again", () => {
    const dir = schema4DataDir();
    // What a first try left: segments, one of them cut short mid-record, beside a schema 4 database.
    const logDir = logDirOf(join(dir, "kv.db"));
    mkdirSync(logDir);
    writeFileSync(join(logDir, "seg-0000000000000001.log"), new Uint8Array(100).fill(7));
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      expectSchema4LogMoved(storage);
    } finally {
      storage.close();
    }
  });

  test("an install that died after the state machine's commit and before the log's reset opens with the log reset", () => {
    const sourceDir = tempDir();
    const targetDir = tempDir();
    const before = join(tempDir(), "log-before");
    const source = openSqliteStorage(sourceDir, { voters: [1] });
    let target = openSqliteStorage(targetDir, { voters: [1] });
    try {
      writePuts(source, 20, 3);
      // The target's own log: entries 1..5 of term 1, one committed, none applied, that the image supersedes.
      target.save({ term: 1, vote: 1, commit: 1 }, [1, 2, 3, 4, 5].map((index) => put(index, 1, `old${index}`, "x")), true);
      cpSync(logDirOf(join(targetDir, "kv.db")), before, { recursive: true });
      const image = source.openImage();
      target.stageImageChunk("img", image.next(1 << 20), true);
      target.installSnapshot(image.metadata, "img");
      image.close();
    } finally {
      source.close();
      target.close();
    }
    // The crash: the log as it was before the install's reset.
    rmSync(logDirOf(join(targetDir, "kv.db")), { recursive: true });
    cpSync(before, logDirOf(join(targetDir, "kv.db")), { recursive: true });
    target = openSqliteStorage(targetDir, { voters: [1] });
    try {
      expect(target.appliedIndex()).toBe(20);
      expect([target.firstIndex(), target.lastIndex()]).toEqual([21, 20]);
      expect(target.term(20)).toBe(3);
      expect(target.initialState().hardState.commit).toBe(20);
      expect(new TextDecoder().decode(target.get("k20")?.value)).toBe("v20");
      // And it takes the leader's next entries after the image.
      target.save({ term: 3, vote: 1, commit: 21 }, [put(21, 3, "next", "y")], true);
      target.applyEntries([put(21, 3, "next", "y")]);
    } finally {
      target.close();
    }
    const again = openSqliteStorage(targetDir, { voters: [1] });
    try {
      expect([again.firstIndex(), again.lastIndex(), again.appliedIndex()]).toEqual([21, 21, 21]);
    } finally {
      again.close();
    }
  });

  test("a compaction deletes the log's segments only after a sync made it durable, and the log reopens from the snapshot", async () => {
    const dir = tempDir();
    const segmentFiles = () => readdirSync(logDirOf(join(dir, "kv.db"))).length;
    const storage = openSqliteStorage(dir, { voters: [1], logSegmentBytesMax: 1024 });
    try {
      for (let round = 0; round < 20; round++) writePuts(storage, 5, 1);
      const before = segmentFiles();
      expect(before).toBeGreaterThan(4);
      storage.compact(80);
      expect(segmentFiles()).toBe(before);
      await storage.sync();
      expect(segmentFiles()).toBeLessThan(before);
      expect(storage.entries(81, 101, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual(Array.from({ length: 20 }, (_, i) => 81 + i));
    } finally {
      storage.close();
    }
    const reopened = openSqliteStorage(dir, { voters: [1], logSegmentBytesMax: 1024 });
    try {
      expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([81, 100]);
      expect(reopened.entries(81, 101, Number.MAX_SAFE_INTEGER).length).toBe(20);
    } finally {
      reopened.close();
    }
  });

  test("a save that meets a full disk in the log's segment throws disk-full, leaves nothing behind, and goes through when retried", () => {
    let full = false;
    const dir = tempDir();
    const storage = openSqliteStorage(dir, {
      voters: [1],
      logFiles: {
        writevSync: ((fd: number, buffers: readonly NodeJS.ArrayBufferView[], position?: number) => {
          if (full) throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
          return writevSync(fd, buffers, position);
        }) as SegmentFiles["writevSync"],
      },
    });
    try {
      full = true; // after the open, which wrote the log's first hard state
      const entries = [put(1, 1, "a", "1"), put(2, 1, "b", "2")];
      let thrown: unknown;
      try {
        storage.save({ term: 1, vote: 1, commit: 2 }, entries, true);
      } catch (error) {
        thrown = error;
      }
      expect(isDiskFull(thrown)).toBe(true);
      expect(storage.lastIndex()).toBe(0);
      full = false;
      storage.save({ term: 1, vote: 1, commit: 2 }, entries, true);
      expect(storage.applyEntries(entries).map((result) => result.kind)).toEqual(["put", "put"]);
    } finally {
      storage.close();
    }
    const reopened = openSqliteStorage(dir, { voters: [1] });
    try {
      expect([reopened.lastIndex(), reopened.initialState().hardState.commit]).toEqual([2, 2]);
      expect(reopened.entries(1, 3, Number.MAX_SAFE_INTEGER)).toEqual([put(1, 1, "a", "1"), put(2, 1, "b", "2")]);
    } finally {
      reopened.close();
    }
  });

  test("ThreadedStorage reads entries behind its tail from the segments, and lets go of the segments compaction deleted", async () => {
    const dir = tempDir();
    const logDir = logDirOf(join(dir, "kv.db"));
    /** Descriptors of this process (both threads) open on the log's segments: fd number to target. */
    const openSegments = () =>
      new Map(
        readdirSync("/proc/self/fd").flatMap((fd) => {
          try {
            const target = readlinkSync(`/proc/self/fd/${fd}`);
            return target.startsWith(logDir) ? [[fd, target] as const] : [];
          } catch {
            return [];
          }
        }),
      );
    // No tail beyond what is not yet written: reads go to the segments.
    const storage = await openThreadedStorage(dir, { voters: [1], logTailBytesMax: 0, logTailKeptBytesMax: 0, logSegmentBytesMax: 1024 });
    try {
      let index = 0;
      for (let round = 0; round < 20; round++) {
        const entries = Array.from({ length: 5 }, () => put(++index, 1, `k${index}`, `v${index}`));
        storage.save({ term: 1, vote: 1, commit: index }, entries, false);
        await storage.applyEntries(entries);
      }
      await storage.sync();
      // The writer's own descriptors (one per segment), before the reader opened any.
      const writers = new Set(openSegments().keys());
      expect(storage.entries(1, 101, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
      expect(storage.logEntriesRead).toBe(100);
      const readers = [...openSegments().keys()].filter((fd) => !writers.has(fd));
      expect(readers.length).toBeGreaterThan(4);
      storage.compact(80);
      await storage.sync();
      // Entries after the compaction still read back; the reader let go of the segments before
      // them, and no descriptor is left on a deleted segment.
      expect(storage.entries(81, 101, Number.MAX_SAFE_INTEGER).map((entry) => entry.index)).toEqual(Array.from({ length: 20 }, (_, i) => 81 + i));
      const after = openSegments();
      expect([...after.values()].filter((target) => target.endsWith("(deleted)"))).toEqual([]);
      expect(readers.filter((fd) => after.has(fd)).length).toBeLessThan(readers.length);
    } finally {
      storage.close();
      await storage.released();
    }
  });
});
