// Proves leases are replicated state on both KvStorage implementations: the lease commands encode strictly; grants, attachments (put ?lease), detachments, revokes and batched expiries apply from the log alone, the same whatever the batches; a put on an unknown lease writes nothing; and leases ride in snapshot images and survive a restart.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType } from "../src/raft/types.ts";
import {
  type Command,
  CommandCodecError,
  decodeCommand,
  decodeLeaseCommand,
  encodeCommand,
  encodeLeaseCommand,
  isLeaseCommandData,
  type LeaseCommand,
  leaseExpireIdsMax,
} from "../src/kv/command.ts";
import type { ApplyResult } from "../src/kv/apply-plan.ts";
import { changesOf } from "../src/kv/watch-history.ts";
import type { ImageRow } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage, type SqliteStorage } from "../src/storage/sqlite-storage.ts";

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

import type { TxnOp } from "../src/kv/txn.ts";

/** The storages that apply on the caller's thread, returning their results at once. */
type KvStorage = SqliteStorage | MemoryKvStorage;

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function entry(index: number, command: Command | LeaseCommand): Entry {
  const data = command.op.startsWith("lease-") ? encodeLeaseCommand(command as LeaseCommand) : encodeCommand(command as Command);
  return { index, term: 1, type: EntryType.Normal, data };
}
const grant = (index: number, ttlMs: number) => entry(index, { op: "lease-grant", ttlMs });
const put = (index: number, key: string, value: string, lease?: number) =>
  entry(index, { op: "put", key, value: bytes(value), ...(lease === undefined ? {} : { lease }) });
const del = (index: number, key: string) => entry(index, { op: "delete", key });
const revoke = (index: number, id: number) => entry(index, { op: "lease-revoke", id });
const expire = (index: number, ids: number[]) => entry(index, { op: "lease-expire", ids });

function saveCommitted(storage: KvStorage, entries: readonly Entry[]): void {
  const last = entries[entries.length - 1];
  if (last === undefined) return;
  storage.save({ term: last.term, vote: 1, commit: last.index }, entries, true);
}

function newDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "kv-leases-apply-"));
  tempDirs.push(dir);
  return dir;
}

const implementations: [string, () => KvStorage][] = [
  ["sqlite", () => openSqliteStorage(newDir(), { voters: [1] })],
  ["memory", () => createMemoryKvStorage({ voters: [1] })],
];

/** Every row of the state machine, reserved ones included, as an image carries them. */
function allRows(storage: KvStorage): ImageRow[] {
  const image = storage.openImage();
  const rows: ImageRow[] = [];
  try {
    for (let page = image.next(1 << 20); page.length > 0; page = image.next(1 << 20)) rows.push(...page);
  } finally {
    image.close();
  }
  return rows.map((row) => ({ key: row.key, value: row.value.slice(), version: row.version })).sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
}

describe("lease command encoding", () => {
  test("grant, revoke, expire and put on a lease round-trip; an idempotent put keeps its lease", () => {
    const commands: LeaseCommand[] = [
      { op: "lease-grant", ttlMs: 10_000 },
      { op: "lease-revoke", id: 2 ** 40 },
      { op: "lease-expire", ids: [1, 300, 2 ** 50] },
    ];
    for (const command of commands) {
      const data = encodeLeaseCommand(command);
      expect(isLeaseCommandData(data)).toBe(true);
      expect(decodeLeaseCommand(data)).toEqual(command);
    }
    expect([...encodeLeaseCommand({ op: "lease-grant", ttlMs: 5 })]).toEqual([0x07, 5]);
    expect([...encodeLeaseCommand({ op: "lease-revoke", id: 3 })]).toEqual([0x08, 3]);
    expect([...encodeLeaseCommand({ op: "lease-expire", ids: [3, 4] })]).toEqual([0x09, 2, 3, 4]);
    const onLease = encodeCommand({ op: "put", key: "k", value: bytes("v"), lease: 7 });
    expect([...onLease]).toEqual([0x0a, 7, 0x01, 1, 0x6b, 0x76]);
    expect(isLeaseCommandData(onLease)).toBe(false);
    expect(decodeCommand(onLease)).toEqual({ op: "put", key: "k", value: bytes("v"), lease: 7 });
    const conditional = { op: "put", key: "k", value: bytes("v"), ifVersion: 4, lease: 9, idempotencyKey: "r1" } as const;
    expect(decodeCommand(encodeCommand(conditional))).toEqual(conditional);
  });

  test("decoding is strict: trailing bytes, id 0, no ids, too many ids, a put on a lease wrapping a delete", () => {
    const bad = [
      new Uint8Array([0x07, 5, 0]),
      new Uint8Array([0x08, 0]),
      new Uint8Array([0x09, 0]),
      new Uint8Array([0x09, 2, 1]),
      new Uint8Array([0x0a, 1, 0x02, 1, 0x6b]),
      new Uint8Array([0x0a, 0, 0x01, 1, 0x6b]),
    ];
    for (const data of bad) expect(() => (isLeaseCommandData(data) ? decodeLeaseCommand(data) : decodeCommand(data))).toThrow(CommandCodecError);
    expect(() => encodeLeaseCommand({ op: "lease-expire", ids: [] })).toThrow(CommandCodecError);
    expect(() => encodeLeaseCommand({ op: "lease-expire", ids: Array.from({ length: leaseExpireIdsMax + 1 }, (_, i) => i + 1) })).toThrow(CommandCodecError);
    expect(() => encodeLeaseCommand({ op: "lease-grant", ttlMs: 0 })).toThrow(CommandCodecError);
  });
});

describe.each(implementations)("%s leases", (_name, open) => {
  test("a grant's id is its index; a put on it attaches the key; revoke deletes every key at its own version", () => {
    const storage = open();
    try {
      const entries = [grant(1, 5_000), put(2, "svc/a", "1", 1), put(3, "svc/b", "2", 1), put(4, "other", "3"), revoke(5, 1), revoke(6, 1)];
      saveCommitted(storage, entries);
      const results = storage.applyEntries(entries);
      expect(results[0]).toEqual({ kind: "lease-granted", index: 1, id: 1, ttlMs: 5_000, granted: true });
      expect(results.slice(1, 4)).toEqual([
        { kind: "put", index: 2, version: 2 },
        { kind: "put", index: 3, version: 3 },
        { kind: "put", index: 4, version: 4 },
      ]);
      expect(results[4]).toEqual({ kind: "lease-revoked", index: 5, id: 1, deletedKeys: ["svc/a", "svc/b"] });
      expect(results[5]).toEqual({ kind: "lease-not-found", index: 6 });
      expect(storage.get("svc/a")).toBeUndefined();
      expect(storage.get("svc/b")).toBeUndefined();
      expect(storage.get("other")?.version).toBe(4);
      // Only the lease count is left of the lease's rows.
      expect(allRows(storage).map((row) => row.key)).toEqual(["\u0000lease/", "other"]);
      // Watchers see every key of the revoke at its version, reason delete.
      expect(changesOf(entries[4]!, results[4]!)).toEqual([
        { kind: "delete", key: "svc/a", version: 5, reason: "delete" },
        { kind: "delete", key: "svc/b", version: 5, reason: "delete" },
      ]);
    } finally {
      storage.close();
    }
  });

  test("a put on an unknown lease writes nothing; a put without a lease, a delete or a put on another lease detaches", () => {
    const storage = open();
    try {
      const entries = [
        put(1, "k", "before"),
        put(2, "k", "after", 99), // no lease 99
        grant(3, 5_000),
        grant(4, 5_000),
        put(5, "plain", "x", 3),
        put(6, "plain", "y"), // detached from 3
        put(7, "deleted", "x", 3),
        del(8, "deleted"), // detached from 3
        put(9, "moved", "x", 3),
        put(10, "moved", "y", 4), // now on 4 only
        expire(11, [3, 12345]),
      ];
      saveCommitted(storage, entries);
      const results = storage.applyEntries(entries);
      expect(results[1]).toEqual({ kind: "lease-not-found", index: 2 });
      expect(storage.get("k")).toEqual({ value: bytes("before"), version: 1 });
      expect(results[10]).toEqual({ kind: "lease-expired", index: 11, ids: [3], deletedKeys: [] });
      expect(storage.get("plain")?.version).toBe(6);
      expect(storage.get("moved")?.version).toBe(10);
      // Lease 4 still holds "moved"; a client listing sees no lease rows at all.
      expect(storage.list("", undefined, 100).map((item) => item.key)).toEqual(["k", "moved", "plain"]);
      expect(storage.list("\u0000", undefined, 100)).toEqual([]);
      const more = [expire(12, [4])];
      saveCommitted(storage, more);
      expect(storage.applyEntries(more)).toEqual([{ kind: "lease-expired", index: 12, ids: [4], deletedKeys: ["moved"] }]);
      expect(storage.get("moved")).toBeUndefined();
      expect(changesOf(more[0]!, { kind: "lease-expired", index: 12, ids: [4], deletedKeys: ["moved"] })).toEqual([
        { kind: "delete", key: "moved", version: 12, reason: "lease_expired" },
      ]);
    } finally {
      storage.close();
    }
  });

  test("a transaction's put or delete detaches the key: the lease's expiry later leaves it alone", () => {
    const storage = open();
    try {
      const txn = (index: number, success: TxnOp[]) => entry(index, { op: "txn", compare: [], success, failure: [] });
      const entries = [
        grant(1, 5_000),
        put(2, "overwritten", "on lease", 1),
        put(3, "removed", "on lease", 1),
        txn(4, [{ op: "put", key: "overwritten", value: bytes("by txn") }, { op: "delete", key: "removed" }]),
        put(5, "removed", "again, no lease"),
        expire(6, [1]),
      ];
      saveCommitted(storage, entries);
      const results = storage.applyEntries(entries);
      expect(results[5]).toEqual({ kind: "lease-expired", index: 6, ids: [1], deletedKeys: [] });
      expect(storage.get("overwritten")).toEqual({ value: bytes("by txn"), version: 4 });
      expect(storage.get("removed")?.version).toBe(5);
    } finally {
      storage.close();
    }
  });

  test("one expire ends many leases, deleting all their keys at its version", () => {
    const storage = open();
    try {
      const entries: Entry[] = [];
      for (let i = 1; i <= 300; i++) entries.push(grant(i, 1_000));
      for (let i = 1; i <= 300; i++) entries.push(put(300 + i, `k/${i}`, "v", i));
      entries.push(expire(601, Array.from({ length: 300 }, (_, i) => i + 1)));
      saveCommitted(storage, entries);
      const results = storage.applyEntries(entries);
      const last = results[600] as Extract<ApplyResult, { kind: "lease-expired" }>;
      expect(last.kind).toBe("lease-expired");
      expect(last.ids.length).toBe(300);
      expect(last.deletedKeys.length).toBe(300);
      expect(storage.list("k/", undefined, 1000)).toEqual([]);
      expect(allRows(storage).map((row) => [row.key, new TextDecoder().decode(row.value)])).toEqual([["\u0000lease/", '{"count":0}']]);
    } finally {
      storage.close();
    }
  });
});

/** A mixed history of lease commands and writes, with idempotent and conditional writes among them. */
function mixedHistory(): Entry[] {
  const entries: Entry[] = [];
  let index = 0;
  const push = (command: Command | LeaseCommand) => entries.push(entry(++index, command));
  let previous = 0;
  for (let round = 0; round < 6; round++) {
    push({ op: "lease-grant", ttlMs: 1_000 + round });
    const lease = index;
    for (let k = 0; k < 5; k++) push({ op: "put", key: `r${round}/k${k}`, value: bytes(`v${k}`), lease });
    push({ op: "put", key: `r${round}/k0`, value: bytes("plain") });
    push({ op: "put", key: `shared`, value: bytes(`${round}`), lease });
    push({ op: "put", key: `r${round}/k1`, value: bytes("x"), lease: 424242 });
    push({ op: "put", key: `r${round}/k2`, value: bytes("y"), lease, idempotencyKey: `id-${round}`, stamp: { atMs: 1_000 * round, windowMs: 60_000, sessionsMax: 10 } });
    if (round % 2 === 1) push({ op: "lease-revoke", id: previous });
    if (round % 3 === 2) push({ op: "lease-expire", ids: [lease, previous, 7] });
    previous = lease;
  }
  return entries;
}

describe("determinism", () => {
  test("replicas applying the same log in different batches, sqlite and memory alike, hold the same rows and answer the same", () => {
    const entries = mixedHistory();
    const runs: { rows: ImageRow[]; results: ApplyResult[] }[] = [];
    for (const [_name, open] of implementations) {
      for (const batch of [1, 3, 7, entries.length]) {
        const storage = open();
        try {
          saveCommitted(storage, entries);
          const results: ApplyResult[] = [];
          for (let i = 0; i < entries.length; i += batch) results.push(...storage.applyEntries(entries.slice(i, i + batch)));
          runs.push({ rows: allRows(storage), results });
        } finally {
          storage.close();
        }
      }
    }
    // The history does something: leases were revoked and expired, unknown leases refused.
    const kinds = new Set(runs[0]!.results.map((result) => result.kind));
    expect([...kinds].sort()).toEqual(["lease-expired", "lease-granted", "lease-not-found", "lease-revoked", "put"]);
    for (const run of runs.slice(1)) {
      expect(run.results).toEqual(runs[0]!.results);
      expect(run.rows).toEqual(runs[0]!.rows);
    }
  });
});

describe("snapshots and restarts", () => {
  test("an image carries leases and attachments: the installed replica expires them as the source would", () => {
    for (const [_sourceName, openSource] of implementations) {
      for (const [_targetName, openTarget] of implementations) {
        const source = openSource();
        const target = openTarget();
        try {
          const entries = [grant(1, 2_000), put(2, "a", "1", 1), put(3, "b", "2", 1), put(4, "c", "3")];
          saveCommitted(source, entries);
          source.applyEntries(entries);
          const image = source.openImage();
          const metadata = image.metadata;
          let first = true;
          for (let page = image.next(64); page.length > 0; page = image.next(64)) {
            target.stageImageChunk("img", page, first);
            first = false;
          }
          image.close();
          target.installSnapshot(metadata, "img");
          expect(allRows(target)).toEqual(allRows(source));
          const next = [{ ...expire(5, [1]), term: 1 }];
          target.save({ term: 1, vote: 1, commit: 5 }, next, true);
          expect(target.applyEntries(next)).toEqual([{ kind: "lease-expired", index: 5, ids: [1], deletedKeys: ["a", "b"] }]);
          expect(target.list("", undefined, 10).map((item) => item.key)).toEqual(["c"]);
        } finally {
          source.close();
          target.close();
        }
      }
    }
  });

  test("sqlite keeps leases and attachments across a restart", () => {
    const dir = newDir();
    const entries = [grant(1, 3_000), put(2, "a", "1", 1), grant(3, 4_000)];
    let storage = openSqliteStorage(dir, { voters: [1] });
    saveCommitted(storage, entries);
    storage.applyEntries(entries);
    storage.close();
    storage = openSqliteStorage(dir, { voters: [1] });
    try {
      expect(storage.list("\u0000lease/l/", undefined, 10).map((row) => row.key)).toEqual(["\u0000lease/l/1", "\u0000lease/l/3"]);
      const next = [revoke(4, 1)];
      saveCommitted(storage, next);
      expect(storage.applyEntries(next)).toEqual([{ kind: "lease-revoked", index: 4, id: 1, deletedKeys: ["a"] }]);
    } finally {
      storage.close();
    }
  });
});
