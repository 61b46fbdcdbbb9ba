// Proves conditional writes (compare-and-set) round-trip through the command codec and are decided by
// the state machine alone, identically in sqlite and its in-memory twin, including across a reopen.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EntryType, type Entry } from "../src/raft/types.ts";
import { decodeCommand, encodeCommand, CommandCodecError } from "../src/kv/command.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";

/** The storages that apply on the caller's thread, returning their results at once. */
type KvStorage = SqliteStorage | MemoryKvStorage;

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe("codec", () => {
  test("ifVersion round-trips for put and delete, up to 2^53 - 1", () => {
    for (const ifVersion of [0, 1, 127, 128, 2 ** 31, Number.MAX_SAFE_INTEGER]) {
      expect(decodeCommand(encodeCommand({ op: "put", key: "k", value: new Uint8Array([1, 2]), ifVersion }))).toEqual({
        op: "put",
        key: "k",
        value: new Uint8Array([1, 2]),
        ifVersion,
      });
      expect(decodeCommand(encodeCommand({ op: "delete", key: "k", ifVersion }))).toEqual({ op: "delete", key: "k", ifVersion });
    }
    // Unconditional writes keep their original encoding.
    expect(encodeCommand({ op: "delete", key: "k" })[0]).toBe(0x02);
  });

  test("a truncated or overlong version is refused", () => {
    const bytes = encodeCommand({ op: "delete", key: "k", ifVersion: 300 });
    expect(() => decodeCommand(bytes.subarray(0, bytes.length - 1))).toThrow(CommandCodecError);
    expect(() => decodeCommand(new Uint8Array([0x04, 1, 0x6b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(CommandCodecError);
  });
});

for (const [name, open] of [
  ["sqlite", () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-cas-"));
    dirs.push(dir);
    return { storage: openSqliteStorage(dir, { voters: [1] }) as KvStorage, reopen: () => openSqliteStorage(dir, { voters: [1] }) as KvStorage };
  }],
  ["memory", () => ({ storage: createMemoryKvStorage({ voters: [1] }) as KvStorage, reopen: undefined })],
] as const) {
  test(`${name}: the state machine applies a conditional write only at the expected version`, () => {
    const { storage, reopen } = open();
    const entries: Entry[] = [
      { index: 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "k", value: new Uint8Array([1]), ifVersion: 0 }) },
      { index: 2, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "k", value: new Uint8Array([2]), ifVersion: 0 }) },
      { index: 3, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: "k", value: new Uint8Array([3]), ifVersion: 1 }) },
      { index: 4, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "delete", key: "k", ifVersion: 1 }) },
      { index: 5, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "delete", key: "k", ifVersion: 3 }) },
    ];
    storage.save({ term: 1, vote: 1, commit: 5 }, entries, true);
    const results = storage.applyEntries(entries);
    expect(results.map((r) => r.kind)).toEqual(["put", "conflict", "put", "conflict", "delete"]);
    expect(results[1]).toEqual({ kind: "conflict", index: 2, version: 1 });
    expect(results[3]).toEqual({ kind: "conflict", index: 4, version: 3 });
    expect(storage.get("k")).toBeUndefined();
    expect(storage.appliedIndex()).toBe(5);
    storage.close();
    if (reopen !== undefined) {
      const again = reopen();
      expect(again.appliedIndex()).toBe(5);
      expect(again.get("k")).toBeUndefined();
      again.close();
    }
  });
}

for (const [name, open] of [
  ["sqlite", () => {
    const dir = mkdtempSync(join(tmpdir(), "kv-idem-"));
    dirs.push(dir);
    return { storage: openSqliteStorage(dir, { voters: [1] }) as KvStorage, reopen: () => openSqliteStorage(dir, { voters: [1] }) as KvStorage };
  }],
  ["memory", () => ({ storage: createMemoryKvStorage({ voters: [1] }) as KvStorage, reopen: undefined })],
] as const) {
  test(`${name}: an idempotent write retried under the same key applies once and answers the first answer (thesis 6.3)`, () => {
    const { storage, reopen } = open();
    const put = (index: number, value: number, idempotencyKey?: string): Entry => ({
      index,
      term: 1,
      type: EntryType.Normal,
      data: encodeCommand({ op: "put", key: "k", value: new Uint8Array([value]), ...(idempotencyKey === undefined ? {} : { idempotencyKey }) }),
    });
    const entries = [put(1, 1, "req-1"), put(2, 2), put(3, 1, "req-1"), put(4, 3, "req-2")];
    storage.save({ term: 1, vote: 1, commit: 4 }, entries, true);
    const results = storage.applyEntries(entries);
    // The retry at index 3 answers like index 1 did and changes nothing: the value stays 2.
    expect(results[2]).toEqual({ kind: "put", index: 3, version: 1 });
    expect(storage.get("k")).toEqual({ value: new Uint8Array([3]), version: 4 });
    // Sessions live in the state machine but are never listed or readable as keys.
    expect(storage.list("", undefined, 100).map((item) => item.key)).toEqual(["k"]);
    storage.close();
    if (reopen !== undefined) {
      const again = reopen();
      const retry = put(5, 9, "req-2");
      again.save({ term: 1, vote: 1, commit: 5 }, [retry], true);
      expect(again.applyEntries([retry])).toEqual([{ kind: "put", index: 5, version: 4 }]);
      expect(again.get("k")?.version).toBe(4);
      again.close();
    }
  });
}

test("codec: the idempotency key wraps any write and round-trips; bad keys are refused", () => {
  const command = { op: "delete" as const, key: "k", ifVersion: 7, idempotencyKey: "retry-✓" };
  expect(decodeCommand(encodeCommand(command))).toEqual(command);
  expect(() => encodeCommand({ op: "delete", key: "k", idempotencyKey: "" })).toThrow(CommandCodecError);
  expect(() => encodeCommand({ op: "delete", key: "k", idempotencyKey: "x".repeat(257) })).toThrow(CommandCodecError);
});
