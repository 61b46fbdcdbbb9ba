/**
 * Leases in the replicated state machine: granted, revoked and expired by log entries (see the lease
 * commands in src/kv/command.ts), and the keys attached to them. Everything lives in the kv table
 * under the reserved prefix `leaseKeyPrefix` (as idempotency sessions do under theirs), so leases are
 * replicated, persisted, carried in snapshot images and kept across restarts with the data, and
 * decided from the log alone: every replica, whatever its batches, reaches the same state.
 *
 * Rows (values are UTF-8 JSON or decimal text; each row's version is the entry that wrote it):
 * ```
 * NUL lease/                  {"count": N}          how many leases exist (absent: none yet)
 * NUL lease/l/<id>            {"ttlMs": N}          a lease; its id is the index of its grant
 * NUL lease/k/<id>/<key>      (empty)               a key attached to lease <id>
 * NUL lease/a/<key>           "<id>"                the lease <key> is attached to (at most one)
 * ```
 * The leader's countdowns are not here: they are in-memory, on the leader only (src/node/leases.ts).
 */
import { assert } from "../lib/assert.ts";
import { leaseKeyPrefix } from "./command.ts";
import type { ApplyResult, KvTable } from "./apply-plan.ts";

/** Leases that may exist at once: a grant beyond it changes nothing and is refused. */
export const leasesMax = 1_000_000;
/** Longest lease: one year. */
export const leaseTtlMsMax = 365 * 24 * 60 * 60 * 1000;

const countKey = leaseKeyPrefix;
const leaseRowPrefix = `${leaseKeyPrefix}l/`;
const attachRowPrefix = `${leaseKeyPrefix}a/`;
/** Rows of a lease's keys are found by this prefix, a page at a time. */
const keyRowsPageMax = 256;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
const empty = new Uint8Array(0);

/** The key of lease `id`'s row. */
export function leaseRowKey(id: number): string {
  return `${leaseRowPrefix}${id}`;
}

/** The prefix of the rows naming lease `id`'s keys (the key follows it). */
export function leaseKeysPrefix(id: number): string {
  return `${leaseKeyPrefix}k/${id}/`;
}

/** The prefix under which every lease's row is (for scanning all leases). */
export const leaseRowsPrefix = leaseRowPrefix;

/** The key under which the state machine counts its leases. */
export const leaseCountKey = countKey;

/** A lease as the state machine holds it. */
export interface LeaseRecord {
  readonly id: number;
  readonly ttlMs: number;
}

/** Parses a lease row (`key` under `leaseRowsPrefix`); asserts it is well formed (it is ours). */
export function parseLeaseRow(key: string, value: Uint8Array): LeaseRecord {
  const id = Number(key.slice(leaseRowPrefix.length));
  const { ttlMs } = JSON.parse(textDecoder.decode(value)) as { ttlMs: number };
  assert(Number.isSafeInteger(id) && id >= 1 && Number.isSafeInteger(ttlMs) && ttlMs >= 1, `lease row ${JSON.stringify(key)} invalid`);
  return { id, ttlMs };
}

/**
 * Whether a row under the lease prefix has the shape of one of this file's rows (see the table at
 * the top). Releases before 0.3.0 had no leases and took any key, so a row of theirs under the
 * prefix is a client's key, which this release would read as a lease's (see sqlite-storage.ts's
 * migration).
 */
export function isLeaseRowShaped(key: string, value: Uint8Array): boolean {
  if (key === countKey) return jsonSafeInteger(value, "count", 0);
  const rest = key.slice(leaseKeyPrefix.length);
  if (rest.startsWith("l/")) return /^l\/[1-9]\d{0,15}$/.test(rest) && jsonSafeInteger(value, "ttlMs", 1);
  if (rest.startsWith("k/")) return /^k\/[1-9]\d{0,15}\/./s.test(rest) && value.length === 0;
  if (rest.startsWith("a/")) return rest.length > 2 && /^[1-9]\d{0,15}$/.test(textDecoder.decode(value));
  return false;
}

/** Whether `value` is UTF-8 JSON of one object whose only field `field` is a safe integer of at least `min`. */
function jsonSafeInteger(value: Uint8Array, field: string, min: number): boolean {
  let parsed: unknown;
  try {
    parsed = JSON.parse(textDecoder.decode(value));
  } catch {
    return false;
  }
  if (typeof parsed !== "object" || parsed === null || Object.keys(parsed).length !== 1) return false;
  const number = (parsed as Record<string, unknown>)[field];
  return typeof number === "number" && Number.isSafeInteger(number) && number >= min;
}

/** The lease count as stored (0 when no lease was ever granted). */
export function parseLeaseCount(value: Uint8Array | undefined): number {
  if (value === undefined) return 0;
  const { count } = JSON.parse(textDecoder.decode(value)) as { count: number };
  assert(Number.isSafeInteger(count) && count >= 0, "lease count row invalid");
  return count;
}

function readCount(table: KvTable): number {
  return parseLeaseCount(table.get(countKey)?.value);
}

function writeCount(table: KvTable, count: number, index: number): void {
  table.put(countKey, textEncoder.encode(JSON.stringify({ count })), index);
}

/** True when lease `id` exists in the table. */
export function leaseExists(table: Pick<KvTable, "get">, id: number): boolean {
  return table.get(leaseRowKey(id)) !== undefined;
}

/** Grants a lease with id `index` (the grant's entry), unless `leasesMax` exist already. */
export function grantLease(table: KvTable, index: number, ttlMs: number): ApplyResult {
  const count = readCount(table);
  if (count >= leasesMax) return { kind: "lease-granted", index, id: index, ttlMs, granted: false };
  table.put(leaseRowKey(index), textEncoder.encode(JSON.stringify({ ttlMs })), index);
  writeCount(table, count + 1, index);
  return { kind: "lease-granted", index, id: index, ttlMs, granted: true };
}

/**
 * Detaches `key` from the lease it is attached to, if any (a put without a lease, a delete, or a put
 * on another lease). One point read when the key has no lease.
 */
export function detachKey(table: KvTable, key: string): void {
  const attached = table.get(`${attachRowPrefix}${key}`);
  if (attached === undefined) return;
  const id = Number(textDecoder.decode(attached.value));
  assert(Number.isSafeInteger(id) && id >= 1, `lease attachment of ${JSON.stringify(key)} invalid`);
  table.delete(`${attachRowPrefix}${key}`);
  table.delete(`${leaseKeysPrefix(id)}${key}`);
}

/** Attaches `key` to lease `id` (which exists), detaching it from any other first. */
export function attachKey(table: KvTable, key: string, id: number, index: number): void {
  const attached = table.get(`${attachRowPrefix}${key}`);
  if (attached !== undefined && Number(textDecoder.decode(attached.value)) === id) return;
  detachKey(table, key);
  table.put(`${attachRowPrefix}${key}`, textEncoder.encode(String(id)), index);
  table.put(`${leaseKeysPrefix(id)}${key}`, empty, index);
}

/** Ends lease `id` if it exists: deletes its keys (each appended to `deletedKeys`) and its rows. True when it existed. */
function endLease(table: KvTable, id: number, deletedKeys: string[]): boolean {
  if (!table.delete(leaseRowKey(id))) return false;
  const prefix = leaseKeysPrefix(id);
  for (;;) {
    // Each page's rows are deleted before the next is read, so the scan always starts at the prefix.
    const page = table.range(prefix, prefix, keyRowsPageMax);
    for (const row of page) {
      const key = row.key.slice(prefix.length);
      table.delete(row.key);
      table.delete(`${attachRowPrefix}${key}`);
      if (table.delete(key)) deletedKeys.push(key);
    }
    if (page.length < keyRowsPageMax) return true;
  }
}

/** Revokes lease `id`: all its keys are deleted at `index`. `lease-not-found` when it does not exist. */
export function revokeLease(table: KvTable, index: number, id: number): ApplyResult {
  const deletedKeys: string[] = [];
  if (!endLease(table, id, deletedKeys)) return { kind: "lease-not-found", index };
  writeCount(table, readCount(table) - 1, index);
  return { kind: "lease-revoked", index, id, deletedKeys };
}

/** Expires the leases of `ids` that still exist (others were revoked or expired since the leader proposed it). */
export function expireLeases(table: KvTable, index: number, ids: readonly number[]): ApplyResult {
  const deletedKeys: string[] = [];
  const expired: number[] = [];
  for (const id of ids) if (endLease(table, id, deletedKeys)) expired.push(id);
  if (expired.length > 0) writeCount(table, readCount(table) - expired.length, index);
  return { kind: "lease-expired", index, ids: expired, deletedKeys };
}
