import { assert } from "../lib/assert.ts";
import { type Entry, EntryType } from "../raft/types.ts";
import type { ApplyResult } from "./apply-plan.ts";
import { decodeCommand } from "./command.ts";
import { takenOps } from "./txn.ts";

/** Why a key went away: a client's delete, or (later) the expiry of the lease it was attached to. */
export type WatchReason = "delete" | "lease_expired";

/** One change to the key-value state, at `version` (the Raft index of the entry that made it). */
export type WatchChange =
  | { readonly kind: "put"; readonly key: string; readonly value: Uint8Array; readonly version: number }
  | { readonly kind: "delete"; readonly key: string; readonly version: number; readonly reason: WatchReason };

/**
 * The change an applied entry made, if any. A put or delete answered from an idempotency session
 * (a retry) reports the first write's version, below its own index: it changed nothing. A conflict
 * (compare-and-set mismatch), a reused idempotency key, a noop, a membership change, an entry
 * skipped as already applied, and a delete of an absent key change nothing either.
 */
export function changeOf(entry: Entry, result: ApplyResult): WatchChange | undefined {
  assert(entry.index === result.index, `watch: result for ${result.index} paired with entry ${entry.index}`);
  if (result.kind !== "put" && result.kind !== "delete") return undefined;
  if (result.version !== result.index) return undefined; // a retry answered from its session
  if (result.kind === "delete" && !result.deleted) return undefined;
  assert(entry.type === EntryType.Normal, `watch: a ${result.kind} from entry ${entry.index} of another type`);
  const command = decodeCommand(entry.data); // it decoded at apply: it decodes again
  assert(command.op === result.kind, `watch: entry ${entry.index} is not the ${result.kind} applied`);
  return command.op === "put"
    ? { kind: "put", key: command.key, value: keptValue(command.value), version: entry.index }
    : { kind: "delete", key: command.key, version: entry.index, reason: "delete" };
}

/** Bytes beyond a value its buffer may hold for the history to keep the value as a view. */
const keptViewSlackBytes = 4 * 1024;

/**
 * A value the history may keep: the decoded value is a view into the entry's data. When that is
 * the entry's own buffer (read from storage, or proposed here), the view keeps only the entry alive;
 * when it is a view into something larger (a peer's whole append, src/transport/codec.ts), it is
 * copied, or the history would keep every batch it came in alive. Copying every value was a tenth
 * of a node's CPU at 256 KB values (BENCHMARKS.md).
 */
export function keptValue(value: Uint8Array): Uint8Array {
  return value.buffer.byteLength > value.byteLength + keptViewSlackBytes ? value.slice() : value;
}

/**
 * Every change an applied entry made, all at its index, in order: `changeOf`'s one; a
 * transaction's puts and deletes of present keys, in the order of its operations (a transaction
 * answered from its session, a retry, changed nothing); or for a revoked or expired lease the
 * deletes of its keys (reason `delete` for a revoke, `lease_expired` for an expiry).
 */
export function changesOf(entry: Entry, result: ApplyResult): WatchChange[] {
  if (result.kind === "lease-revoked" || result.kind === "lease-expired") {
    assert(entry.index === result.index, `watch: result for ${result.index} paired with entry ${entry.index}`);
    const reason: WatchReason = result.kind === "lease-expired" ? "lease_expired" : "delete";
    return result.deletedKeys.map((key) => ({ kind: "delete", key, version: entry.index, reason }));
  }
  if (result.kind !== "txn") {
    const change = changeOf(entry, result);
    return change === undefined ? [] : [change];
  }
  assert(entry.index === result.index, `watch: result for ${result.index} paired with entry ${entry.index}`);
  if (result.version !== result.index) return [];
  const command = decodeCommand(entry.data);
  assert(command.op === "txn", `watch: entry ${entry.index} is not the transaction applied`);
  const changes: WatchChange[] = [];
  for (const { op, result: done } of takenOps(command, result)) {
    if (op.op === "put") changes.push({ kind: "put", key: op.key, value: keptValue(op.value), version: entry.index });
    else if (op.op === "delete" && done.op === "delete" && done.deleted) changes.push({ kind: "delete", key: op.key, version: entry.index, reason: "delete" });
  }
  return changes;
}

/** How much change history a node keeps (`kv serve --watch-history-entries`, `--watch-history-ms`). */
export interface WatchHistoryLimits {
  /** Changes kept at most: past it the oldest are dropped. */
  readonly entriesMax: number;
  /** Changes older than this (by the node's monotonic clock at apply) are dropped. */
  readonly retentionMs: number;
  /** Bytes of keys and values kept at most (plus `changeOverheadBytes` each): a hard memory bound. */
  readonly bytesMax: number;
}

/** What one change is counted as against byte bounds, on top of its key and value. */
export const changeOverheadBytes = 64;

/** Bytes a change is counted as against `WatchHistoryLimits.bytesMax` and a stream's buffer. */
export function changeBytes(change: WatchChange): number {
  return change.key.length * 3 + (change.kind === "put" ? change.value.byteLength : 0) + changeOverheadBytes;
}

interface Kept {
  readonly change: WatchChange;
  readonly atMs: number;
  readonly bytes: number;
}

/** The result of `WatchHistory.scan`. */
export interface ScanResult {
  /** Matching changes after the start, in version order; all of a version or none of it. */
  readonly changes: WatchChange[];
  /** Every change up to this version has been looked at (at least the start). */
  readonly throughVersion: number;
  /** Changes looked at. */
  readonly scanned: number;
}

/**
 * A node's bounded, in-memory history of the changes it applied, in version order, from which
 * watches start and resume. It covers every version after `compactedThrough()` up to
 * `lastVersion()` (the applied index): a watch may resume after any version in that range; an older
 * start is compacted. It starts empty at the applied index the node opened with (what happened
 * before is not known here), and an installed snapshot empties it again at the snapshot's index.
 *
 * Invariant: compactedThrough <= (version of every change kept) <= lastVersion, versions non-decreasing.
 */
export class WatchHistory {
  private kept: Kept[] = [];
  /** Index in `kept` of the oldest change still kept (dropped ones are spliced out in bulk). */
  private first = 0;
  private bytes = 0;
  private compacted: number;
  private last: number;

  constructor(
    private readonly limits: WatchHistoryLimits,
    startVersion: number,
  ) {
    assert(Number.isSafeInteger(limits.entriesMax) && limits.entriesMax >= 1, `watch history entriesMax ${limits.entriesMax}`);
    assert(Number.isSafeInteger(limits.retentionMs) && limits.retentionMs >= 0, `watch history retentionMs ${limits.retentionMs}`);
    assert(Number.isSafeInteger(limits.bytesMax) && limits.bytesMax >= 1, `watch history bytesMax ${limits.bytesMax}`);
    assert(Number.isSafeInteger(startVersion) && startVersion >= 0, `watch history start ${startVersion}`);
    this.compacted = startVersion;
    this.last = startVersion;
  }

  /** Changes at or below this version may be missing: a watch must start after it. */
  compactedThrough(): number {
    return this.compacted;
  }

  /** The last version recorded (the applied index). */
  lastVersion(): number {
    return this.last;
  }

  /** Changes kept now. */
  size(): number {
    return this.kept.length - this.first;
  }

  /** Records that the entry at `version` applied, with the changes it made (often none), at `nowMs`. */
  record(version: number, changes: readonly WatchChange[], nowMs: number): void {
    assert(version > this.last, `watch history: version ${version} recorded after ${this.last}`);
    this.last = version;
    for (const change of changes) {
      assert(change.version === version, `watch history: change at ${change.version} recorded as ${version}`);
      const bytes = changeBytes(change);
      this.kept.push({ change, atMs: nowMs, bytes });
      this.bytes += bytes;
    }
    this.trim(nowMs);
  }

  /** A snapshot installed at `version`: what came before it is not known here. */
  reset(version: number): void {
    assert(version >= this.last, `watch history: snapshot at ${version} behind ${this.last}`);
    this.kept = [];
    this.first = 0;
    this.bytes = 0;
    this.compacted = version;
    this.last = version;
  }

  /**
   * Drops the oldest changes while more than `entriesMax` are kept, the oldest is older than
   * `retentionMs`, or the bytes are over `bytesMax`: all the changes of a version together.
   */
  trim(nowMs: number): void {
    const { entriesMax, retentionMs, bytesMax } = this.limits;
    while (this.first < this.kept.length) {
      const oldest = this.kept[this.first] as Kept;
      const over = this.size() > entriesMax || nowMs - oldest.atMs > retentionMs || this.bytes > bytesMax;
      if (!over) break;
      const version = oldest.change.version;
      while (this.first < this.kept.length && (this.kept[this.first] as Kept).change.version === version) {
        this.bytes -= (this.kept[this.first] as Kept).bytes;
        this.first++;
      }
      this.compacted = version;
    }
    // Splice out the dropped ones once they are half the array: amortized O(1) per change.
    if (this.first > 1024 && this.first * 2 > this.kept.length) {
      this.kept = this.kept.slice(this.first);
      this.first = 0;
    }
  }

  /**
   * Up to about `changesMax` changes after `afterVersion` that `matches` accepts, looking at no more
   * than about `scanMax` changes; a version's changes are never split. `afterVersion` must not be
   * compacted (asserted: callers check `compactedThrough` first).
   */
  scan(afterVersion: number, matches: (key: string) => boolean, changesMax: number, scanMax: number): ScanResult {
    assert(afterVersion >= this.compacted, `watch history: scan after ${afterVersion}, compacted through ${this.compacted}`);
    const changes: WatchChange[] = [];
    let position = this.firstAfter(afterVersion);
    let scanned = 0;
    let through = Math.max(afterVersion, this.compacted);
    while (position < this.kept.length) {
      const version = (this.kept[position] as Kept).change.version;
      if (changes.length >= changesMax || scanned >= scanMax) return { changes, throughVersion: through, scanned };
      while (position < this.kept.length && (this.kept[position] as Kept).change.version === version) {
        const change = (this.kept[position] as Kept).change;
        if (matches(change.key)) changes.push(change);
        position++;
        scanned++;
      }
      through = version;
    }
    return { changes, throughVersion: Math.max(through, this.last), scanned };
  }

  /** The position of the first kept change with a version above `version` (binary search). */
  private firstAfter(version: number): number {
    let low = this.first;
    let high = this.kept.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((this.kept[middle] as Kept).change.version <= version) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}
