// Proves multi-key transactions in the state machine: the 0x10 codec round-trips and refuses malformed bytes, every comparison form decides the branch, all of a transaction applies at its one index, both storages and every batching reach the same state, and an idempotent transaction's retry gets its first answer (get values included).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { ApplyResult } from "../src/kv/apply-plan.ts";
import { type Command, CommandCodecError, decodeCommand, encodeCommand, encodeLeaseCommand, type IdempotencyStamp, type LeaseCommand, sessionKeyPrefix } from "../src/kv/command.ts";
import { decodeTxnBody, type TxnAnswer, type TxnCompare, type TxnOp, txnOpKindsOf030, type TxnRequest, txnOperationsMax, txnSessionGetBytesMax } from "../src/kv/txn.ts";
import { changesOf } from "../src/kv/watch-history.ts";
import { createPrng } from "../src/lib/prng.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import type { ImageRow } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

/** The storages that apply on the caller's thread, returning their results at once. */
type KvStorage = SqliteStorage | MemoryKvStorage;

const tempDir = tempDirs("kv-txn-");

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const stamp = (atMs: number): IdempotencyStamp => ({ atMs, windowMs: 600_000, sessionsMax: 100 });
const txn = (compare: TxnCompare[], success: TxnOp[], failure: TxnOp[] = []): Command => ({ op: "txn", compare, success, failure });

function entry(index: number, command: Command): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand(command) };
}

function leaseEntry(index: number, command: LeaseCommand): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeLeaseCommand(command) };
}

/** Saves `entries` as committed and applies them in one batch. */
function apply(storage: KvStorage, entries: readonly Entry[]): ApplyResult[] {
  const last = entries[entries.length - 1];
  if (last === undefined) return [];
  storage.save({ term: 1, vote: 1, commit: last.index }, entries, false);
  return storage.applyEntries(entries);
}

const implementations: [string, () => KvStorage][] = [
  ["sqlite", () => openSqliteStorage(tempDir(), { voters: [1] })],
  ["memory", () => createMemoryKvStorage({ voters: [1] })],
];

function dump(storage: KvStorage): string[] {
  const image = storage.openImage();
  const rows: ImageRow[] = [];
  for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) rows.push(...page);
  image.close();
  return rows.map((row) => `${JSON.stringify(row.key)}=${Buffer.from(row.value).toString("hex")}@${row.version}`);
}

const sample: TxnRequest = {
  compare: [
    { key: "a", target: "version", version: 0 },
    { key: "b", target: "value", value: Uint8Array.from([0, 255, 1]) },
    { key: "é😀", target: "exists", exists: false },
    { key: "d", target: "exists", exists: true },
  ],
  success: [
    { op: "put", key: "a", value: bytes("1") },
    { op: "delete", key: "b" },
    { op: "get", key: "a" },
  ],
  failure: [{ op: "put", key: "z", value: new Uint8Array(0) }],
};

describe("the transaction codec (op byte 0x10)", () => {
  test("round-trips every comparison and operation, bare and stamped under an idempotency key", () => {
    const plain: Command = { op: "txn", ...sample };
    const encoded = encodeCommand(plain);
    expect(encoded[0]).toBe(0x10);
    expect(decodeCommand(encoded)).toEqual(plain);
    const idempotent: Command = { ...plain, idempotencyKey: "t1", stamp: stamp(1_700_000_000_000) };
    const wrapped = encodeCommand(idempotent);
    expect(wrapped[0]).toBe(0x06);
    expect(decodeCommand(wrapped)).toEqual(idempotent);
    expect(decodeCommand(encodeCommand(txn([], [])))).toEqual(txn([], []));
  });

  test("the layout is the documented one", () => {
    const command = txn([{ key: "k", target: "version", version: 5 }], [{ op: "put", key: "k", value: bytes("v") }], [{ op: "get", key: "k" }]);
    // [0x10] [1 compare] [version=1][len 1]"k"[5] [1 success] [put=1][len 1]"k"[len 1]"v" [1 failure] [get=3][len 1]"k"
    expect(Array.from(encodeCommand(command))).toEqual([0x10, 1, 1, 1, 0x6b, 5, 1, 1, 1, 0x6b, 1, 0x76, 1, 3, 1, 0x6b]);
  });

  test("malformed bytes are refused with a CommandCodecError: truncated, trailing, bad varints, bad tags, too many", () => {
    const good = Array.from(encodeCommand({ op: "txn", ...sample }));
    const garbage: [string, number[], RegExp][] = [
      ["no compare count", [0x10], /truncated compare count/],
      ["truncated in a comparison", good.slice(0, 5), /truncated|runs past the end/],
      ["truncated value", good.slice(0, -1), /runs past the end|truncated/],
      ["trailing bytes", [...good, 0], /1 trailing bytes after a transaction/],
      ["missing failure count", [0x10, 0, 0], /truncated failure count/],
      ["non-minimal count", [0x10, 0x80, 0x00, 0, 0], /non-minimal compare count/],
      ["overlong count", [0x10, 0x80, 0x80, 0x01, 0, 0], /longer than 2 bytes/],
      ["count over the limit", [0x10, 0x81, 0x01, 0, 0], /more than 128/],
      ["counts over the limit together", [0x10, 0, 100, ...Array.from({ length: 100 }, () => [3, 1, 0x6b]).flat(), 29], /more than 128/],
      ["unknown comparison", [0x10, 1, 7, 1, 0x6b, 0, 0], /unknown comparison 0x07/],
      ["unknown comparison operator", [0x10, 1, 5, 1, 0x6b, 0, 1, 0, 0], /unknown comparison operator 0x00/],
      ["comparison tag 0", [0x10, 1, 0, 1, 0x6b, 0, 0], /unknown comparison 0x00/],
      ["unknown operation", [0x10, 0, 1, 5, 1, 0x6b, 0], /unknown operation 0x05/],
      ["a lease put with lease id 0", [0x10, 0, 1, 4, 1, 0x6b, 0, 1, 0x76, 0], /lease id 0 is not a positive safe integer/],
      ["a lease put with a non-minimal lease id", [0x10, 0, 1, 4, 1, 0x6b, 0x87, 0x00, 1, 0x76, 0], /non-minimal lease id/],
      ["a lease put with an overlong lease id", [0x10, 0, 1, 4, 1, 0x6b, ...Array.from({ length: 8 }, () => 0x81), 0x01, 1, 0x76, 0], /lease id longer than 8 bytes/],
      ["non-minimal version", [0x10, 1, 1, 1, 0x6b, 0x85, 0x00, 0, 0], /non-minimal version/],
      ["overlong value length", [0x10, 0, 1, 1, 1, 0x6b, 0x80, 0x80, 0x80, 0x80, 0x01, 0], /value length longer than 4 bytes/],
      ["invalid UTF-8 key", [0x10, 0, 1, 2, 2, 0xc3, 0x28, 0], /not valid UTF-8/],
      ["key past the end", [0x10, 0, 1, 2, 9, 0x6b, 0], /runs past the end/],
      ["a transaction in the 0.1.0 idempotent wrapper", [0x05, 1, 0x6b, 0x10, 0, 0, 0], /0\.1\.0 idempotent encoding/],
    ];
    for (const [name, data, message] of garbage) {
      let thrown: unknown;
      try {
        decodeCommand(new Uint8Array(data));
      } catch (error) {
        thrown = error;
      }
      expect([name, thrown instanceof CommandCodecError]).toEqual([name, true]);
      expect([name, (thrown as Error).message]).toEqual([name, expect.stringMatching(message)]);
    }
    // Every proper prefix of a good encoding is refused.
    for (let length = 1; length < good.length; length++) expect(() => decodeCommand(new Uint8Array(good.slice(0, length)))).toThrow(CommandCodecError);
  });

  test("encode refuses what would not decode", () => {
    const many = Array.from({ length: txnOperationsMax + 1 }, (_, i): TxnOp => ({ op: "get", key: `k${i}` }));
    expect(() => encodeCommand(txn([], many))).toThrow(/exceed 128/);
    expect(() => encodeCommand(txn([{ key: "\uD800", target: "exists", exists: true }], []))).toThrow(/lone UTF-16 surrogate/);
    expect(() => encodeCommand(txn([{ key: "k", target: "version", version: -1 }], []))).toThrow(/not a version/);
    expect(() => encodeCommand({ ...txn([], []), idempotencyKey: "k" } as Command)).toThrow(/needs a stamp/);
    expect(() => encodeCommand(txn([], [{ op: "put", key: "k", value: bytes("v"), lease: 0 }]))).toThrow(/lease id 0/);
    expect(() => encodeCommand(txn([], [{ op: "put", key: "k", value: bytes("v"), lease: 1.5 }]))).toThrow(/lease id 1.5/);
  });
});

describe("leases in the transaction codec (operation 4: a put on a lease)", () => {
  const withLeases: TxnRequest = {
    compare: [{ key: "k", target: "exists", exists: false }],
    success: [
      { op: "put", key: "k", value: bytes("v"), lease: 7 },
      { op: "put", key: "plain", value: bytes("p") },
      { op: "put", key: "big", value: new Uint8Array(0), lease: 2 ** 53 - 1 },
    ],
    failure: [{ op: "get", key: "k" }, { op: "put", key: "f", value: Uint8Array.from([0, 255]), lease: 300 }],
  };

  test("round-trips puts on leases next to puts without, bare and stamped under an idempotency key", () => {
    const plain: Command = { op: "txn", ...withLeases };
    expect(decodeCommand(encodeCommand(plain))).toEqual(plain);
    const idempotent: Command = { ...plain, idempotencyKey: "t1", stamp: stamp(1_700_000_000_000) };
    expect(decodeCommand(encodeCommand(idempotent))).toEqual(idempotent);
  });

  test("a put on a lease has the documented layout: [4] [key length] [key] [lease id] [value length] [value]", () => {
    const command = txn([], [{ op: "put", key: "k", value: bytes("v"), lease: 300 }]);
    // [0x10] [0 compares] [1 success] [put on lease=4][len 1]"k"[300 = 0xac 0x02][len 1]"v" [0 failure]
    expect(Array.from(encodeCommand(command))).toEqual([0x10, 0, 1, 4, 1, 0x6b, 0xac, 0x02, 1, 0x76, 0]);
  });

  test("a transaction without leases is encoded exactly as 0.3.0 wrote it, and 0.3.0's bytes decode to puts without a lease", () => {
    // The bytes 0.3.0 wrote for the fixture's transaction (test/fixtures/v0.3.0/README.md): put cfg/n = 1 and cfg/m = 2 if cfg/n does not exist.
    const written030 = [0x10, 1, 4, 5, ...bytes("cfg/n"), 2, 1, 5, ...bytes("cfg/n"), 1, 0x31, 1, 5, ...bytes("cfg/m"), 1, 0x32, 0];
    const decoded = decodeCommand(new Uint8Array(written030));
    expect(decoded).toEqual(
      txn([{ key: "cfg/n", target: "exists", exists: false }], [{ op: "put", key: "cfg/n", value: bytes("1") }, { op: "put", key: "cfg/m", value: bytes("2") }]),
    );
    expect(decoded.op === "txn" && decoded.success.every((op) => !("lease" in op))).toBe(true);
    expect(Array.from(encodeCommand(decoded))).toEqual(written030);
  });

  test("0.3.0's decoder (operations 1-3 only) refuses a transaction with a put on a lease loudly, rather than misreading it", () => {
    const data = encodeCommand(txn([], [{ op: "put", key: "k", value: bytes("v"), lease: 7 }]));
    // decodeTxnBody is 0.3.0's decoder unchanged, but for operation 4: given the three operations
    // 0.3.0 knew, it reads what a 0.3.0 follower reads (and the apply that called it stops the node).
    expect(() => decodeTxnBody(data, 1, txnOpKindsOf030)).toThrow(CommandCodecError);
    expect(() => decodeTxnBody(data, 1, txnOpKindsOf030)).toThrow("decode: unknown operation 0x04");
    // The same transaction without its lease is one 0.3.0 reads.
    expect(decodeTxnBody(encodeCommand(txn([], [{ op: "put", key: "k", value: bytes("v") }])), 1, txnOpKindsOf030)).toEqual({
      compare: [],
      success: [{ op: "put", key: "k", value: bytes("v") }],
      failure: [],
    });
  });
});

describe.each(implementations)("%s transactions", (_name, open) => {
  test("a put on a lease in the branch taken attaches its key at the transaction's version; a put without one detaches it; the branch not taken attaches nothing; a revoke deletes the key", () => {
    const storage = open();
    try {
      apply(storage, [leaseEntry(1, { op: "lease-grant", ttlMs: 60_000 }), leaseEntry(2, { op: "lease-grant", ttlMs: 60_000 })]);
      const [first] = apply(storage, [
        entry(3, txn([{ key: "x", target: "exists", exists: false }], [{ op: "put", key: "a", value: bytes("1"), lease: 1 }, { op: "put", key: "b", value: bytes("2"), lease: 1 }], [{ op: "put", key: "c", value: bytes("3"), lease: 2 }])),
      ]);
      expect(first).toEqual({ kind: "txn", index: 3, succeeded: true, version: 3, results: [{ op: "put", key: "a", version: 3 }, { op: "put", key: "b", version: 3 }] });
      expect(storage.get("\u0000lease/k/1/a")?.version).toBe(3);
      expect(storage.get("\u0000lease/k/1/b")?.version).toBe(3);
      expect(storage.get("\u0000lease/a/a")).toEqual({ value: bytes("1"), version: 3 });
      expect(storage.get("c")).toBeUndefined();
      expect(storage.get("\u0000lease/k/2/c")).toBeUndefined();
      // The comparison fails: the success branch's lease put is not taken; the failure branch's plain put detaches b.
      const [second] = apply(storage, [entry(4, txn([{ key: "a", target: "exists", exists: false }], [{ op: "put", key: "d", value: bytes("4"), lease: 2 }], [{ op: "put", key: "b", value: bytes("5") }]))]);
      expect(second).toMatchObject({ kind: "txn", succeeded: false });
      expect(storage.get("\u0000lease/k/1/b")).toBeUndefined();
      expect(storage.get("\u0000lease/a/b")).toBeUndefined();
      // A put on another lease moves the key; a delete in a transaction detaches it.
      apply(storage, [
        entry(5, txn([], [{ op: "put", key: "m", value: bytes("6"), lease: 1 }, { op: "put", key: "n", value: bytes("n"), lease: 1 }])),
        entry(6, txn([], [{ op: "put", key: "m", value: bytes("7"), lease: 2 }, { op: "delete", key: "n" }])),
      ]);
      expect([storage.get("\u0000lease/k/1/m"), storage.get("\u0000lease/k/2/m")?.version, storage.get("\u0000lease/k/1/n"), storage.get("\u0000lease/a/n")]).toEqual([undefined, 6, undefined, undefined]);
      const [revoked1, revoked2] = apply(storage, [leaseEntry(7, { op: "lease-revoke", id: 1 }), leaseEntry(8, { op: "lease-revoke", id: 2 })]);
      expect(revoked1).toEqual({ kind: "lease-revoked", index: 7, id: 1, deletedKeys: ["a"] });
      expect(revoked2).toEqual({ kind: "lease-revoked", index: 8, id: 2, deletedKeys: ["m"] });
      // b, detached at 4, outlives its old lease.
      expect(["a", "b", "c", "d", "m"].map((key) => storage.get(key)?.version ?? null)).toEqual([null, 4, null, null, null]);
      expect(dump(storage).filter((row) => row.startsWith('"\\u0000lease/k/') || row.startsWith('"\\u0000lease/a/'))).toEqual([]);
    } finally {
      storage.close();
    }
  });

  test("a lease gone when the transaction applies (revoked after it was proposed): nothing of the branch applies, lease-not-found, no session; a lease only the branch not taken names is not looked at", () => {
    const storage = open();
    try {
      apply(storage, [leaseEntry(1, { op: "lease-grant", ttlMs: 60_000 }), entry(2, { op: "put", key: "x", value: bytes("old") }), entry(3, { op: "put", key: "y", value: bytes("y") })]);
      apply(storage, [leaseEntry(4, { op: "lease-revoke", id: 1 })]);
      const before = dump(storage);
      const vanished = txn([], [{ op: "put", key: "x", value: bytes("new") }, { op: "delete", key: "y" }, { op: "put", key: "z", value: bytes("z"), lease: 1 }]);
      const [plain] = apply(storage, [entry(5, vanished)]);
      expect(plain).toEqual({ kind: "lease-not-found", index: 5, id: 1 });
      expect(changesOf(entry(5, vanished), plain as ApplyResult)).toEqual([]);
      const [idempotent] = apply(storage, [entry(6, { ...vanished, idempotencyKey: "gone", stamp: stamp(1_000) })]);
      expect(idempotent).toEqual({ kind: "lease-not-found", index: 6, id: 1 });
      expect(storage.get(`${sessionKeyPrefix}gone`)).toBeUndefined();
      expect(dump(storage).filter((row) => !row.startsWith(`"\\u0000session/`))).toEqual(before);
      expect(storage.get("x")).toEqual({ value: bytes("old"), version: 2 });
      expect(storage.get("y")?.version).toBe(3);
      // Only the branch taken counts: the vanished lease in the failure branch stops nothing.
      const [taken] = apply(storage, [entry(7, txn([], [{ op: "put", key: "x", value: bytes("new") }], [{ op: "put", key: "z", value: bytes("z"), lease: 1 }]))]);
      expect(taken).toEqual({ kind: "txn", index: 7, succeeded: true, version: 7, results: [{ op: "put", key: "x", version: 7 }] });
    } finally {
      storage.close();
    }
  });

  test("each comparison form decides the branch; a missing key's version is 0", () => {
    const storage = open();
    try {
      apply(storage, [entry(1, { op: "put", key: "x", value: bytes("one") })]);
      const cases: [TxnCompare, boolean][] = [
        [{ key: "x", target: "version", version: 1 }, true],
        [{ key: "x", target: "version", version: 2 }, false],
        [{ key: "missing", target: "version", version: 0 }, true],
        [{ key: "x", target: "version", version: 0 }, false],
        [{ key: "x", target: "value", value: bytes("one") }, true],
        [{ key: "x", target: "value", value: bytes("on") }, false],
        [{ key: "missing", target: "value", value: new Uint8Array(0) }, false],
        [{ key: "missing", target: "exists", exists: false }, true],
        [{ key: "x", target: "exists", exists: false }, false],
        [{ key: "x", target: "exists", exists: true }, true],
      ];
      let index = 2;
      for (const [compare, expected] of cases) {
        const [result] = apply(storage, [entry(index, txn([compare], [{ op: "get", key: "x" }], [{ op: "get", key: "missing" }]))]);
        expect([compare, result]).toEqual([
          compare,
          {
            kind: "txn",
            index,
            succeeded: expected,
            version: index,
            results: [expected ? { op: "get", key: "x", found: true, value: bytes("one"), version: 1 } : { op: "get", key: "missing", found: false }],
          },
        ]);
        index++;
      }
      expect(dump(storage)).toEqual([`"x"=${Buffer.from("one").toString("hex")}@1`]);
    } finally {
      storage.close();
    }
  });

  test("all comparisons must hold; the branch runs in order at the entry's one index, a get seeing the writes before it", () => {
    const storage = open();
    try {
      apply(storage, [entry(1, { op: "put", key: "a", value: bytes("A") }), entry(2, { op: "put", key: "b", value: bytes("B") })]);
      const request = txn(
        [
          { key: "a", target: "version", version: 1 },
          { key: "b", target: "value", value: bytes("B") },
        ],
        [
          { op: "get", key: "c" },
          { op: "put", key: "c", value: bytes("C") },
          { op: "get", key: "c" },
          { op: "delete", key: "a" },
          { op: "delete", key: "nothing" },
          { op: "put", key: "b", value: bytes("B2") },
        ],
        [{ op: "put", key: "failed", value: bytes("x") }],
      );
      const [result] = apply(storage, [entry(3, request)]);
      expect(result).toEqual({
        kind: "txn",
        index: 3,
        succeeded: true,
        version: 3,
        results: [
          { op: "get", key: "c", found: false },
          { op: "put", key: "c", version: 3 },
          { op: "get", key: "c", found: true, value: bytes("C"), version: 3 },
          { op: "delete", key: "a", deleted: true },
          { op: "delete", key: "nothing", deleted: false },
          { op: "put", key: "b", version: 3 },
        ],
      });
      expect(storage.get("a")).toBeUndefined();
      expect(storage.get("b")).toEqual({ value: bytes("B2"), version: 3 });
      expect(storage.get("c")).toEqual({ value: bytes("C"), version: 3 });
      expect(storage.appliedIndex()).toBe(3);
      // One comparison fails (a is gone now): only the failure branch runs, nothing of the success one.
      const [failed] = apply(storage, [entry(4, request)]);
      expect(failed).toEqual({ kind: "txn", index: 4, succeeded: false, version: 4, results: [{ op: "put", key: "failed", version: 4 }] });
      expect(storage.get("c")).toEqual({ value: bytes("C"), version: 3 });
      expect(storage.get("failed")).toEqual({ value: bytes("x"), version: 4 });
      // The watch history gets every change of the transaction at its one version, none of a failed branch's skipped ops.
      expect(changesOf(entry(3, request), result as ApplyResult).map((c) => `${c.kind} ${c.key} @${c.version}`)).toEqual(["put c @3", "delete a @3", "put b @3"]);
    } finally {
      storage.close();
    }
  });

  test("an idempotent transaction's retry gets the first answer, get values included, and changes nothing; another request under its key is reused", () => {
    const storage = open();
    try {
      const first: Command = {
        ...txn([{ key: "n", target: "exists", exists: false }], [{ op: "put", key: "n", value: Uint8Array.from([0xff, 0]) }, { op: "get", key: "n" }]),
        idempotencyKey: "t1",
        stamp: stamp(1_000),
      };
      const [answer] = apply(storage, [entry(1, first)]);
      const expected: TxnAnswer = { succeeded: true, version: 1, results: [{ op: "put", key: "n", version: 1 }, { op: "get", key: "n", found: true, value: Uint8Array.from([0xff, 0]), version: 1 }] };
      expect(answer).toEqual({ kind: "txn", index: 1, ...expected });
      const before = dump(storage);
      // The retry would now fail its comparison (n exists): it answers from the session instead.
      const [retry] = apply(storage, [entry(2, { ...first, stamp: stamp(2_000) })]);
      expect(retry).toEqual({ kind: "txn", index: 2, ...expected });
      expect(changesOf(entry(2, { ...first, stamp: stamp(2_000) }), retry as ApplyResult)).toEqual([]);
      const [reused] = apply(storage, [entry(3, { ...txn([], [{ op: "delete", key: "n" }]), idempotencyKey: "t1", stamp: stamp(3_000) })]);
      expect(reused).toEqual({ kind: "reused", index: 3 });
      const [putReuse] = apply(storage, [entry(4, { op: "put", key: "n", value: bytes("v"), idempotencyKey: "t1", stamp: stamp(4_000) })]);
      expect(putReuse).toEqual({ kind: "reused", index: 4 });
      expect(dump(storage).filter((row) => !row.startsWith('"\\u0000'))).toEqual(before.filter((row) => !row.startsWith('"\\u0000')));
      expect(storage.get("n")).toEqual({ value: Uint8Array.from([0xff, 0]), version: 1 });
    } finally {
      storage.close();
    }
  });

  test("a transaction under the idempotency key of a 0.1.0 session (no fingerprint) is a reuse, even of a conflict's session", () => {
    const storage = open();
    try {
      // Sessions as 0.1.0 wrote them (in an image it sent): no fingerprint, no time; one a conflict's.
      const legacy = (name: string, record: object) => ({ key: `${sessionKeyPrefix}${name}`, value: bytes(JSON.stringify(record)), version: 1 });
      storage.stageImageChunk("image-0.1.0", [legacy("old-conflict", { kind: "conflict", version: 0 }), legacy("old-put", { kind: "put", version: 1 })], true);
      storage.installSnapshot({ index: 5, term: 1, voters: [1] }, "image-0.1.0");
      const under = (index: number, idempotencyKey: string) => entry(index, { ...txn([], [{ op: "put", key: "x", value: bytes("v") }]), idempotencyKey, stamp: stamp(1_000) });
      expect(apply(storage, [under(6, "old-conflict"), under(7, "old-put")])).toEqual([
        { kind: "reused", index: 6 },
        { kind: "reused", index: 7 },
      ]);
      expect(storage.get("x")).toBeUndefined();
    } finally {
      storage.close();
    }
  });

  test("an idempotent transaction whose gets would return more than its session can keep is refused whole, deterministically; without the key it applies", () => {
    const storage = open();
    try {
      const big = new Uint8Array(txnSessionGetBytesMax / 2 + 1).fill(7);
      apply(storage, [entry(1, { op: "put", key: "big1", value: big }), entry(2, { op: "put", key: "big2", value: big })]);
      const reads = txn([], [{ op: "put", key: "w", value: bytes("1") }, { op: "get", key: "big1" }, { op: "delete", key: "big2" }, { op: "get", key: "big2" }, { op: "get", key: "big1" }]);
      const clientRows = () => dump(storage).filter((row) => !row.startsWith('"\\u0000')).map((row) => row.slice(0, 40) + row.slice(-4));
      const before = clientRows();
      const [refused] = apply(storage, [entry(3, { ...reads, idempotencyKey: "big", stamp: stamp(1_000) })]);
      expect(refused).toEqual({ kind: "txn-too-large", index: 3, getBytes: 2 * big.byteLength });
      // Nothing changed (the session clock aside): no write, no session.
      expect(clientRows()).toEqual(before);
      expect(storage.get(`${sessionKeyPrefix}big`)).toBeUndefined();
      // A get after a delete in the branch reads nothing: one big value fits.
      const fits = txn([], [{ op: "delete", key: "big2" }, { op: "get", key: "big2" }, { op: "get", key: "big1" }]);
      expect(apply(storage, [entry(4, { ...fits, idempotencyKey: "fits", stamp: stamp(2_000) })])[0]?.kind).toBe("txn");
      const [plain] = apply(storage, [entry(5, reads)]);
      expect(plain?.kind === "txn" && plain.succeeded && plain.results.length).toBe(5);
      expect(storage.get("w")?.version).toBe(5);
    } finally {
      storage.close();
    }
  });
});

test("deterministic: both storages, applying the same log in any batching, reach the same state and answers", () => {
  const commands: Command[] = [];
  // A seeded mix of puts and transactions on five keys: comparisons often flip between the branches.
  const prng = createPrng(12345);
  const next = (n: number) => prng.intInclusive(0, n - 1);
  const key = () => `k${next(5)}`;
  for (let i = 0; i < 200; i++) {
    if (next(4) === 0) {
      commands.push({ op: "put", key: key(), value: bytes(`p${i}`) });
      continue;
    }
    const compare: TxnCompare[] = [
      next(2) === 0 ? { key: key(), target: "version", version: next(3) === 0 ? 0 : next(i + 1) } : { key: key(), target: "exists", exists: next(2) === 0 },
    ];
    const writes = [...new Set([key(), key()])];
    const success: TxnOp[] = writes.map((k, j) => (j === 0 ? { op: "put", key: k, value: bytes(`s${i}`) } : { op: "delete", key: k }));
    const failure: TxnOp[] = [{ op: "get", key: key() }, { op: "put", key: `f${next(3)}`, value: bytes(`f${i}`) }];
    commands.push({ op: "txn", compare, success, failure, ...(next(3) === 0 ? { idempotencyKey: `t${next(20)}`, stamp: stamp(1_000 + i) } : {}) });
  }
  const entries = commands.map((command, i) => entry(i + 1, command));
  const runs = implementations.flatMap(([, open]) =>
    [1, 7, 200].map((batch) => {
      const storage = open();
      try {
        const results: ApplyResult[] = [];
        for (let i = 0; i < entries.length; i += batch) results.push(...apply(storage, entries.slice(i, i + batch)));
        return JSON.stringify({ state: dump(storage), results: results.map((r) => JSON.stringify(r, (_, v) => (v instanceof Uint8Array ? Array.from(v) : v))) });
      } finally {
        storage.close();
      }
    }),
  );
  expect(new Set(runs).size).toBe(1);
  const first = runs[0] as string;
  expect([first.includes('\\"succeeded\\":false'), first.includes('\\"succeeded\\":true')]).toEqual([true, true]);
});

test("deterministic with leases: grants, revokes, expiries and transactions putting on leases that exist or not reach the same state and answers in both storages and any batching", () => {
  const prng = createPrng(4242);
  const next = (n: number) => prng.intInclusive(0, n - 1);
  const key = () => `k${next(6)}`;
  const granted: number[] = [];
  const entries: Entry[] = [];
  for (let index = 1; index <= 240; index++) {
    const roll = next(10);
    if (roll === 0 || granted.length === 0) {
      entries.push(leaseEntry(index, { op: "lease-grant", ttlMs: 60_000 }));
      granted.push(index);
    } else if (roll === 1) {
      entries.push(leaseEntry(index, { op: "lease-revoke", id: granted[next(granted.length)] as number }));
    } else if (roll === 2) {
      entries.push(leaseEntry(index, { op: "lease-expire", ids: [granted[next(granted.length)] as number] }));
    } else {
      // A lease id granted once (it may have ended since) or one never granted.
      const lease = () => (next(8) === 0 ? 100_000 + index : (granted[next(granted.length)] as number));
      const put = (k: string, tag: string): TxnOp => (next(2) === 0 ? { op: "put", key: k, value: bytes(tag), lease: lease() } : { op: "put", key: k, value: bytes(tag) });
      const writes = [...new Set([key(), key()])];
      const success: TxnOp[] = writes.map((k, j) => (j === 0 ? put(k, `s${index}`) : { op: "delete", key: k }));
      const failure: TxnOp[] = [put(`f${next(3)}`, `f${index}`)];
      const command: Command = { op: "txn", compare: [{ key: key(), target: "exists", exists: next(2) === 0 }], success, failure };
      entries.push(entry(index, next(4) === 0 ? { ...command, idempotencyKey: `t${next(10)}`, stamp: stamp(1_000 + index) } : command));
    }
  }
  const runs = implementations.flatMap(([, open]) =>
    [1, 9, 240].map((batch) => {
      const storage = open();
      try {
        const results: ApplyResult[] = [];
        for (let i = 0; i < entries.length; i += batch) results.push(...apply(storage, entries.slice(i, i + batch)));
        return { state: JSON.stringify(dump(storage)), results: results.map((r) => JSON.stringify(r, (_, v) => (v instanceof Uint8Array ? Array.from(v) : v))) };
      } finally {
        storage.close();
      }
    }),
  );
  expect(new Set(runs.map((run) => run.state + run.results.join())).size).toBe(1);
  const kinds = new Set(runs[0]!.results.map((r) => (JSON.parse(r) as ApplyResult).kind));
  expect([kinds.has("txn"), kinds.has("lease-not-found"), kinds.has("lease-revoked") || kinds.has("lease-expired")]).toEqual([true, true, true]);
  // Some key was attached through a transaction and later deleted with its lease.
  expect(runs[0]!.results.some((r) => /"deletedKeys":\["/.test(r))).toBe(true);
});
