// Proves the sqlite storage detects damage done to its file behind its back (a changed entry, a changed term, a hole, a damaged hard state) and fails with a StorageError naming the file and the index instead of serving bad data.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { StorageError } from "../src/storage/kv-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";

let dir = "";
const opened: SqliteStorage[] = [];
afterEach(() => {
  for (const storage of opened.splice(0)) storage.close();
  rmSync(dir, { recursive: true, force: true });
});

function open(): SqliteStorage {
  const storage = openSqliteStorage(dir);
  opened.push(storage);
  return storage;
}

/** A closed storage holding entries 1..terms.length with those terms, committed up to 2. */
function prepare(terms: readonly number[]): string {
  dir = mkdtempSync(join(tmpdir(), "kv-storage-corruption-"));
  const storage = openSqliteStorage(dir, { voters: [1] });
  const entries: Entry[] = terms.map((term, offset) => ({
    index: offset + 1,
    term,
    type: EntryType.Normal,
    data: new TextEncoder().encode(`entry ${offset + 1}`),
  }));
  storage.save({ term: terms[terms.length - 1] ?? 0, vote: 1, commit: 2 }, entries, true);
  storage.close();
  return join(dir, "kv.db");
}

/** Changes the database with a separate connection, as a bad disk or a stray tool would. */
function tamper(file: string, sql: string): void {
  const raw = new Database(file);
  try {
    raw.run(sql);
  } finally {
    raw.close(true);
  }
}

function storageError(run: () => unknown): StorageError {
  try {
    run();
  } catch (error: unknown) {
    if (error instanceof StorageError) return error;
    throw error;
  }
  throw new Error("expected a StorageError, nothing was thrown");
}

describe("sqlite storage corruption", () => {
  test("a changed entry payload is caught when read, naming the file and index", () => {
    const file = prepare([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    tamper(file, "UPDATE raft_log SET data = X'656e74727920ff' WHERE idx = 5");
    const storage = open(); // index 5 is inside a term run, so opening does not read it
    expect(storage.entries(1, 5, Number.MAX_SAFE_INTEGER).length).toBe(4);
    const error = storageError(() => storage.entries(1, 11, Number.MAX_SAFE_INTEGER));
    expect(error.code).toBe("corrupt");
    expect(error.index).toBe(5);
    expect(error.file).toBe(file);
    expect(error.message).toContain(file);
    expect(error.message).toContain("index 5");
    expect(error.message).toContain("checksum");
    expect(storageError(() => storage.entries(5, 6, 0)).index).toBe(5);
  });

  test("a changed term is caught on open", () => {
    // Terms 1,1,1,2,2,2; index 4 rewritten to term 1 keeps the runs' shape but lands on a run's end.
    const file = prepare([1, 1, 1, 2, 2, 2]);
    tamper(file, "UPDATE raft_log SET term = 1 WHERE idx = 4");
    const error = storageError(() => open());
    expect(error.code).toBe("corrupt");
    expect(error.index).toBe(4);
  });

  test("a term out of order is caught on open", () => {
    const file = prepare([1, 1, 1, 1, 1, 1, 1, 1]);
    tamper(file, "UPDATE raft_log SET term = 2 WHERE idx = 5");
    expect(storageError(() => open()).code).toBe("corrupt");
  });

  test("a hole in the log is caught on open", () => {
    const file = prepare([1, 1, 1, 1, 1]);
    tamper(file, "DELETE FROM raft_log WHERE idx = 3");
    expect(storageError(() => open()).message).toContain("hole");
  });

  test("a damaged hard state is caught on open", () => {
    const file = prepare([1, 1, 1]);
    tamper(file, "UPDATE hard_state SET vote = 2");
    expect(storageError(() => open()).message).toContain("hard state checksum mismatch");
  });

  test("an entry moved to another index is caught", () => {
    const file = prepare([1, 1, 1, 1, 1, 1]);
    // Copy entry 2's row, checksum included, over entry 3: only the index binding in the checksum tells.
    tamper(file, "UPDATE raft_log SET data = (SELECT data FROM raft_log WHERE idx = 2), crc = (SELECT crc FROM raft_log WHERE idx = 2) WHERE idx = 3");
    const storage = open();
    expect(storageError(() => storage.entries(1, 7, 1000)).index).toBe(3);
  });

  test("term() of an entry outside the in-memory cache verifies the row it reads", () => {
    const file = prepare([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    tamper(file, "UPDATE raft_log SET data = X'00' WHERE idx = 3");
    const storage = openSqliteStorage(dir, { termCacheLoadEntriesMax: 2 });
    opened.push(storage);
    expect(storage.term(9)).toBe(1);
    expect(storageError(() => storage.term(3)).index).toBe(3);
  });
});
