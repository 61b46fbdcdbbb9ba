// Proves the sqlite storage recovers everything on reopen (hard state, voters, log, kv data, applied index), that re-applying after a reopen has no double effect, and that it refuses a wrong voter set, a second opener and an unknown schema.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { StorageError } from "../src/storage/kv-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";
import { storageError } from "./helpers/thrown.ts";

let dir = "";
const opened: SqliteStorage[] = [];
afterEach(() => {
  for (const storage of opened.splice(0)) storage.close();
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
  dir = "";
});

function open(voters: readonly number[] | undefined = [1, 2, 3]): SqliteStorage {
  if (dir === "") dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
  const storage = openSqliteStorage(dir, voters === undefined ? {} : { voters });
  opened.push(storage);
  return storage;
}

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
function put(index: number, term: number, key: string, value: string): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: bytes(value) }) };
}
function del(index: number, term: number, key: string): Entry {
  return { index, term, type: EntryType.Normal, data: encodeCommand({ op: "delete", key }) };
}

describe("sqlite storage recovery", () => {
  test("reopen recovers hard state, voters, log, kv data and applied index", () => {
    const first = open();
    const entries = [put(1, 1, "a", "1"), { index: 2, term: 2, type: EntryType.Normal, data: new Uint8Array(0) }, put(3, 2, "b", "2"), del(4, 2, "a"), put(5, 2, "c", "3")];
    first.save({ term: 2, vote: 3, commit: 4 }, entries, true);
    first.applyEntries(entries.slice(0, 4));
    first.close();

    const second = open(undefined);
    expect(second.initialState()).toEqual({ hardState: { term: 2, vote: 3, commit: 4 }, voters: [1, 2, 3] });
    expect(second.lastIndex()).toBe(5);
    expect(second.entries(1, 6, Number.MAX_SAFE_INTEGER)).toEqual(entries);
    expect([0, 1, 2, 5].map((index) => second.term(index))).toEqual([0, 1, 2, 2]);
    expect(second.appliedIndex()).toBe(4);
    expect(second.get("a")).toBeUndefined();
    expect(second.get("b")).toEqual({ value: bytes("2"), version: 3 });
    expect(second.get("c")).toBeUndefined(); // saved but not committed, so not applied
  });

  test("apply is idempotent across reopen: replaying the same entries has no double effect", () => {
    const entries = [put(1, 1, "k", "v1"), put(2, 1, "k", "v2"), del(3, 1, "gone"), put(4, 1, "gone", "back"), del(5, 1, "k")];
    const first = open();
    first.save({ term: 1, vote: 1, commit: 5 }, entries, true);
    first.save(undefined, [put(6, 1, "later", "x")], true);
    expect(first.applyEntries(entries.slice(0, 3)).map((result) => result.kind)).toEqual(["put", "put", "delete"]);
    first.close();

    // After a restart the node replays from its last snapshot of progress: here, from index 1.
    const second = open();
    expect(second.appliedIndex()).toBe(3);
    expect(second.applyEntries(entries)).toEqual([
      { kind: "skipped", index: 1 },
      { kind: "skipped", index: 2 },
      { kind: "skipped", index: 3 },
      { kind: "put", index: 4, version: 4 },
      { kind: "delete", index: 5, deleted: true, version: 5 },
    ]);
    second.close();

    const third = open();
    expect(third.applyEntries(entries).every((result) => result.kind === "skipped")).toBe(true);
    expect(third.appliedIndex()).toBe(5);
    expect(third.get("k")).toBeUndefined();
    expect(third.get("gone")).toEqual({ value: bytes("back"), version: 4 });
    expect(third.lastIndex()).toBe(6);
  });

  test("overwritten suffixes stay overwritten after reopen", () => {
    const first = open();
    first.save({ term: 1, vote: 1, commit: 1 }, [put(1, 1, "a", "1"), put(2, 1, "a", "2"), put(3, 1, "a", "3")], true);
    first.save({ term: 2, vote: 2, commit: 1 }, [put(2, 2, "b", "new")], true);
    first.close();
    const second = open();
    expect(second.lastIndex()).toBe(2);
    expect(second.entries(1, 3, 1000).map((entry) => entry.term)).toEqual([1, 2]);
    second.save({ term: 2, vote: 2, commit: 3 }, [put(3, 2, "c", "3")], true);
    expect(second.term(3)).toBe(2);
  });

  test("reopening with other voters fails with voters_mismatch", () => {
    open([1, 2, 3]).close();
    expect(() => open([3, 1, 2])).not.toThrow(); // same set, other order
    opened.splice(0).forEach((storage) => storage.close());
    expect(() => open([1, 2, 4])).toThrow(/voters_mismatch/);
  });

  test("a database belongs to the node that first opened it: another node's open is refused, and changes nothing", () => {
    const first = openSqliteStorage((dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"))), { voters: [1, 2, 3], nodeId: 1 });
    first.save({ term: 4, vote: 1, commit: 0 }, [], true);
    first.close();
    const readMeta = () => {
      const raw = new Database(join(dir, "kv.db"), { readonly: true });
      try {
        return raw.query("SELECT * FROM meta").all();
      } finally {
        raw.close();
      }
    };
    const before = readMeta();
    const thrown = storageError(() => openSqliteStorage(dir, { nodeId: 3 }).close());
    expect(thrown.code).toBe("node_mismatch");
    expect(thrown.message).toContain("node 1's, not node 3's");
    expect(readMeta()).toEqual(before);
    // Its own node, and a tool that names no node, open it.
    for (const options of [{ nodeId: 1 }, {}]) {
      const again = openSqliteStorage(dir, options);
      expect(again.initialState().hardState).toMatchObject({ term: 4, vote: 1 });
      again.close();
    }
  });

  test("a copy of another node's database with its WAL is refused without a byte of it changed: no checkpoint, no lock file (found in review)", () => {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
    const first = openSqliteStorage(join(dir, "node-1"), { voters: [1, 2, 3], nodeId: 1 });
    const entries = [put(1, 4, "a", "1")];
    first.save({ term: 4, vote: 1, commit: 1 }, entries, true);
    first.applyEntries(entries);
    // A copy taken while the node runs (between two writes): kv.db with frames in kv.db-wal, and the log.
    const copy = join(dir, "copy");
    cpSync(join(dir, "node-1"), copy, { recursive: true, filter: (source) => !source.endsWith("-shm") && !source.endsWith("-lock") && !source.endsWith("-journal") });
    first.close();
    expect(readFileSync(join(copy, "kv.db-wal")).byteLength).toBeGreaterThan(0);
    const snapshot = () => Object.fromEntries(readdirSync(copy).filter((name) => name !== "kv.db-log").map((name) => [name, readFileSync(join(copy, name)).toString("base64")]));
    const before = snapshot();
    expect(() => openSqliteStorage(copy, { nodeId: 3 })).toThrow(/node_mismatch/);
    expect(snapshot()).toEqual(before);
  });

  test("a second opener of a held database fails with locked", () => {
    const holder = open();
    let thrown: unknown;
    try {
      openSqliteStorage(dir, { lockWaitMs: 50 }).close();
    } catch (error: unknown) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(StorageError);
    expect((thrown as StorageError).code).toBe("locked");
    holder.close();
    expect(open().lastIndex()).toBe(0); // free again once the holder closed
  });

  test("a database from an unknown schema version is refused", () => {
    open().close();
    const raw = new Database(join(dir, "kv.db"));
    raw.run("PRAGMA user_version = 99");
    raw.close();
    expect(() => open()).toThrow(/schema 99.*newer release of kv.*left unchanged/);
  });

  test("a database of a newer release in WAL mode is refused with no file added beside it (found in a black-box review: an empty kv.db-wal)", () => {
    open().close();
    const raw = new Database(join(dir, "kv.db"));
    raw.run("PRAGMA user_version = 9");
    raw.close();
    for (const leftover of ["kv.db-wal", "kv.db-shm"]) rmSync(join(dir, leftover), { force: true });
    const before = readdirSync(dir).sort();
    expect(() => open()).toThrow(/schema 9.*newer release of kv.*left unchanged/);
    expect(readdirSync(dir).sort()).toEqual(before);
  });

  test("a database of a newer release in another journal mode is refused with every byte as it was, no lock file made (found in review: set to WAL first)", () => {
    open().close();
    const raw = new Database(join(dir, "kv.db"));
    raw.run("PRAGMA journal_mode = DELETE");
    raw.run("PRAGMA user_version = 9");
    raw.close();
    rmSync(join(dir, "kv.db-lock"), { force: true });
    const files = () => readdirSync(dir).sort().map((name) => [name, name === "kv.db-log" ? "" : readFileSync(join(dir, name)).toString("base64")]);
    const before = files();
    expect(() => open()).toThrow(/schema 9.*newer release of kv.*left unchanged/);
    expect(files()).toEqual(before);
  });
});

describe("a data dir of a release before 0.3.0 with a client's key under NUL lease/ (leases' prefix from 0.3.0 on)", () => {
  /** A copy of `release`'s fixture data dir with `rows` added to its kv table as that release would have written them. */
  function fixtureWith(release: string, rows: readonly (readonly [string, string])[]): string {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
    cpSync(join(import.meta.dir, "fixtures", release, "node-1"), dir, { recursive: true });
    const raw = new Database(join(dir, "kv.db"));
    for (const [key, value] of rows) raw.query("INSERT INTO kv (key, value, version) VALUES (?, ?, 7)").run(key, bytes(value));
    raw.close();
    return dir;
  }
  const schemaOf = (dataDir: string): number => {
    const raw = new Database(join(dataDir, "kv.db"), { readonly: true });
    try {
      return raw.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? -1;
    } finally {
      raw.close();
    }
  };

  test("0.2.0's: refused with what to do, and left as it was (it opened, and the node stopped applying at the first lease grant)", () => {
    const dataDir = fixtureWith("v0.2.0", [["\u0000lease/", "my own value"], ["\u0000lease/a/config", "not an id"]]);
    const error = storageError(() => openSqliteStorage(dataDir, {}));
    expect(error.code).toBe("schema");
    expect(error.message).toContain('holds 2 key(s) beginning with a NUL byte and "lease/"');
    expect(error.message).toContain("run the release that wrote this data dir, delete those keys");
    expect(error.message).toContain("left unchanged");
    expect(schemaOf(dataDir)).toBe(4);
  });

  test("0.1.0's (no leases at all): even a key shaped like a lease's row is a client's", () => {
    const dataDir = fixtureWith("v0.1.0", [["\u0000lease/l/5", JSON.stringify({ ttlMs: 1000 })]]);
    expect(storageError(() => openSqliteStorage(dataDir, {})).message).toContain('"\\u0000lease/l/5"');
    expect(schemaOf(dataDir)).toBe(3);
  });

  test("0.3.0's real lease rows open (the same schema as 0.2.0's)", () => {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
    cpSync(join(import.meta.dir, "fixtures", "v0.3.0", "node-1"), dir, { recursive: true });
    const storage = openSqliteStorage(dir, {});
    opened.push(storage);
    expect(storage.list("\u0000lease/l/", undefined, 100).length).toBe(1);
  });
});

describe("a data dir whose database was lost or is not kv's", () => {
  /** The segment files' names and bytes: what must survive a refusal unchanged. */
  function logFiles(): Map<string, string> {
    const logDir = join(dir, "kv.db-log");
    return new Map(readdirSync(logDir).map((name) => [name, readFileSync(join(logDir, name)).toString("hex")]));
  }
  function removeDatabase(how: "emptied" | "deleted"): void {
    for (const suffix of ["-wal", "-shm"]) rmSync(join(dir, `kv.db${suffix}`), { force: true });
    if (how === "deleted") rmSync(join(dir, "kv.db"));
    else writeFileSync(join(dir, "kv.db"), "");
  }

  for (const how of ["emptied", "deleted"] as const) {
    test(`kv.db ${how} beside a log holding entries and a vote: refused, the log untouched (before: the log and the vote were wiped and the node started empty)`, () => {
      const first = open();
      first.save({ term: 2, vote: 3, commit: 1 }, [put(1, 2, "a", "1"), put(2, 2, "b", "2")], true);
      first.applyEntries([put(1, 2, "a", "1")]);
      first.close();
      opened.splice(0);
      removeDatabase(how);
      const before = logFiles();
      let error: unknown;
      try {
        open(undefined);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(StorageError);
      expect((error as StorageError).code).toBe("corrupt");
      expect((error as StorageError).message).toContain("kv.db-log");
      expect((error as StorageError).message).toContain("last index 2, term 2");
      expect(logFiles()).toEqual(before);
      // The refusal leaves the data dir as it found it: a deleted kv.db stays deleted, with no WAL
      // beside it (found in a review: the refused start created an empty one).
      expect(existsSync(join(dir, "kv.db"))).toBe(how === "emptied");
      // An emptied one stays empty (found in a black-box review: it grew to a page, its header written).
      if (how === "emptied") expect(statSync(join(dir, "kv.db")).size).toBe(0);
      expect(existsSync(join(dir, "kv.db-wal"))).toBe(false);
    });
  }

  test("a cluster-id beside a new database (a data dir from before segment files, its kv.db lost) is refused", () => {
    const first = open();
    first.close();
    opened.splice(0);
    writeFileSync(join(dir, "cluster-id"), "0123456789abcdef\n");
    removeDatabase("deleted");
    rmSync(join(dir, "kv.db-log"), { recursive: true });
    expect(() => open(undefined)).toThrow(/cluster-id/);
  });

  test("someone else's SQLite database is not written into: every byte as it was (found in a black-box review: its journal mode was switched to WAL)", () => {
    dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
    const foreign = new Database(join(dir, "kv.db"));
    foreign.run("CREATE TABLE foo (x INTEGER)");
    foreign.close();
    const before = readFileSync(join(dir, "kv.db")).toString("base64");
    expect(() => open()).toThrow(/not kv's/);
    expect(readFileSync(join(dir, "kv.db")).toString("base64")).toBe(before);
    const check = new Database(join(dir, "kv.db"), { readonly: true });
    const tables = check.query<{ name: string }, []>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all().map((row) => row.name);
    check.close();
    expect(tables).toEqual(["foo"]);
  });

  test("a first start that died before its database committed leaves an empty log: the next start begins afresh", () => {
    const first = open();
    first.close();
    opened.splice(0);
    // As if the process died inside the creating transaction: the log's segment is on disk, the
    // database not yet (its schema version 0).
    removeDatabase("deleted");
    const again = open();
    expect(again.lastIndex()).toBe(0);
    expect(again.initialState().hardState).toEqual({ term: 0, vote: 0, commit: 0 });
  });
});

test("a migration that fails on what an older database holds says so, with what to do, and changes nothing (found in a black-box review: SQLite's 'duplicate column name' alone)", () => {
  dir = mkdtempSync(join(tmpdir(), "kv-storage-recovery-"));
  cpSync(join(import.meta.dir, "fixtures", "v0.1.0", "node-1"), dir, { recursive: true });
  // 0.1.0's tables, marked as schema 2: the migration from 2 adds a column 0.1.0's tables already have.
  const raw = new Database(join(dir, "kv.db"));
  raw.run("PRAGMA user_version = 2");
  raw.close();
  const before = readFileSync(join(dir, "kv.db")).toString("base64");
  let error: unknown;
  try {
    openSqliteStorage(dir, { nodeId: 1 }).close();
  } catch (caught) {
    error = caught;
  }
  expect(error).toBeInstanceOf(StorageError);
  expect((error as StorageError).code).toBe("schema");
  expect((error as StorageError).message).toContain("migrating the data dir from schema 2 to");
  expect((error as StorageError).message).toContain("kv member remove");
  const check = new Database(join(dir, "kv.db"), { readonly: true });
  expect(check.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(2);
  check.close();
  expect(readFileSync(join(dir, "kv.db")).toString("base64")).toBe(before);
});
