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
 * skipped as already applied, and a delete of an absent key change nothing either. A put's value
 * is a view into the entry's data: `WatchHistory.record` decides what of it is kept.
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
    ? { kind: "put", key: command.key, value: command.value, version: entry.index }
    : { kind: "delete", key: command.key, version: entry.index, reason: "delete" };
}

/** Bytes beyond a value its buffer may hold for the history to keep the value as a view. */
const keptViewSlackBytes = 4 * 1024;

/**
 * A large value as the history keeps it: the decoded value is a view into the entry's data. When that is
 * the entry's own buffer (read from storage, or proposed here), the view keeps only the entry alive;
 * when it is a view into something larger (a peer's whole append, src/transport/codec.ts), it is
 * copied, or the history would keep every batch it came in alive. Copying every value was a tenth
 * of a node's CPU at 256 KB values (BENCHMARKS.md).
 */
function keptValue(value: Uint8Array): Uint8Array {
  return value.buffer.byteLength > value.byteLength + keptViewSlackBytes ? value.slice() : value;
}

/**
 * Every change an applied entry made, all at its index, in order: `changeOf`'s one; a
 * transaction's puts and deletes of present keys, in the order of its operations (a transaction
 * answered from its session, a retry, changed nothing); for a revoked or expired lease the
 * deletes of its keys (reason `delete` for a revoke, `lease_expired` for an expiry); for a
 * delete-prefix the deletes of the keys it removed, in key order.
 */
export function changesOf(entry: Entry, result: ApplyResult): WatchChange[] {
  if (result.kind === "lease-revoked" || result.kind === "lease-expired" || result.kind === "delete-prefix") {
    assert(entry.index === result.index, `watch: result for ${result.index} paired with entry ${entry.index}`);
    const reason: WatchReason = result.kind === "lease-expired" ? "lease_expired" : "delete";
    // A delete-prefix answered from its session (a retry) names no keys: it changed nothing.
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
    if (op.op === "put") changes.push({ kind: "put", key: op.key, value: op.value, version: entry.index });
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
  /** Bytes of keys and values kept at most (plus `changeOverheadBytes` each), but for the newest version's (see `trim`). */
  readonly bytesMax: number;
}

/** What one change is counted as against byte bounds, on top of its key and value. */
export const changeOverheadBytes = 64;

/** Bytes a change is counted as against `WatchHistoryLimits.bytesMax` and a stream's buffer. */
export function changeBytes(change: WatchChange): number {
  return countedBytes(change.key, change.kind === "put" ? change.value.byteLength : 0);
}

function countedBytes(key: string, valueBytes: number): number {
  return key.length * 3 + valueBytes + changeOverheadBytes;
}

/** A chunk of the history's value log: its bytes hold the log from `start` on. */
interface ValueChunk {
  readonly start: number;
  readonly bytes: Uint8Array;
  /** The newest change with its value in this chunk. */
  lastSeq: number;
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
  // The changes kept, oldest first, in a ring of columns indexed by sequence number (`seq & mask`):
  // the oldest kept is `firstSeq`, the next recorded gets `nextSeq`. A change takes no object of
  // its own: a node keeps 100,000 changes by default, and as objects (a record, the change, a view,
  // the entry's buffer behind it) they were ~460 bytes of heap each; after a long write phase that
  // heap made every read dearer (BENCHMARKS.md, fourteenth session).
  private mask = 0;
  private versions = new Float64Array(0);
  private atMs = new Float64Array(0);
  /** `kindPut`, `kindDelete` or `kindExpired`. */
  private kinds = new Uint8Array(0);
  private keys: (string | undefined)[] = [];
  /** A small put's value: where it starts in the value log (`valueChunks`), and its length. */
  private valueStarts = new Float64Array(0);
  private valueLengths = new Uint32Array(0);
  /** A large put's value, kept as is (see `packedValueBytesMax`); undefined for every other change. */
  private largeValues: (Uint8Array | undefined)[] = [];
  private firstSeq = 0;
  private nextSeq = 0;
  /**
   * The value log: small values copied end to end into chunks, oldest chunk first. A position is
   * a byte offset into the whole log since the history was made; a value never spans two chunks.
   * Chunks are never written once full nor reused: a view handed out by `scan` stays valid.
   */
  private valueChunks: ValueChunk[] = [];
  private firstChunk = 0;
  /** The log position the next value is written at. */
  private valueEnd = 0;
  private bytes = 0;
  private compacted: number;
  private last: number;
  /** The value log's chunk size: `valueChunkBytes`, less for a small `bytesMax` (never below a small value's). */
  private readonly chunkBytes: number;

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
    this.chunkBytes = Math.max(packedValueBytesMax, Math.min(valueChunkBytes, Math.floor(limits.bytesMax / 4)));
  }

  /** Slots in the ring now (for tests: it grows with what is kept and shrinks back). */
  slots(): number {
    return this.versions.length;
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
    return this.nextSeq - this.firstSeq;
  }

  /** Bytes of small values held in the value log's chunks now, written or not (for tests). */
  valueLogBytes(): number {
    let total = 0;
    for (let i = this.firstChunk; i < this.valueChunks.length; i++) total += (this.valueChunks[i] as ValueChunk).bytes.byteLength;
    return total;
  }

  /** Records that the entry at `version` applied, with the changes it made (often none), at `nowMs`. */
  record(version: number, changes: readonly WatchChange[], nowMs: number): void {
    assert(version > this.last, `watch history: version ${version} recorded after ${this.last}`);
    this.last = version;
    for (const change of changes) {
      assert(change.version === version, `watch history: change at ${change.version} recorded as ${version}`);
      if (this.size() === this.versions.length) this.grow();
      const seq = this.nextSeq++;
      const slot = seq & this.mask;
      this.versions[slot] = version;
      this.atMs[slot] = nowMs;
      this.keys[slot] = change.key;
      if (change.kind === "put") {
        this.kinds[slot] = kindPut;
        if (change.value.byteLength > packedValueBytesMax) {
          this.largeValues[slot] = keptValue(change.value);
        } else {
          this.valueStarts[slot] = this.appendValue(change.value, seq);
          this.valueLengths[slot] = change.value.byteLength;
        }
      } else {
        this.kinds[slot] = change.reason === "lease_expired" ? kindExpired : kindDelete;
      }
      this.bytes += changeBytes(change);
    }
    this.trim(nowMs);
  }

  /** A snapshot installed at `version`: what came before it is not known here. */
  reset(version: number): void {
    assert(version >= this.last, `watch history: snapshot at ${version} behind ${this.last}`);
    while (this.firstSeq < this.nextSeq) this.dropOldest();
    this.shrinkToFit();
    this.compacted = version;
    this.last = version;
  }

  /**
   * Drops the oldest changes while more than `entriesMax` are kept, the oldest is older than
   * `retentionMs`, or the bytes are over `bytesMax`: all the changes of a version together. The
   * newest version's changes are kept whatever the bounds say, so memory may exceed them by one
   * entry's changes until the next is recorded: a version larger than the bounds (a lease expiring
   * with more keys than `entriesMax`) was dropped as it was recorded, ending every stream that
   * watched it and leaving them nothing to resume from.
   */
  trim(nowMs: number): void {
    const { entriesMax, retentionMs, bytesMax } = this.limits;
    while (this.firstSeq < this.nextSeq) {
      const oldest = this.firstSeq & this.mask;
      const over = this.size() > entriesMax || nowMs - (this.atMs[oldest] as number) > retentionMs || this.bytes > bytesMax;
      if (!over) break;
      const version = this.versions[oldest] as number;
      if (version === this.versions[(this.nextSeq - 1) & this.mask]) break;
      while (this.firstSeq < this.nextSeq && this.versions[this.firstSeq & this.mask] === version) this.dropOldest();
      this.compacted = version;
    }
    this.shrinkToFit();
  }

  /**
   * Up to about `changesMax` changes after `afterVersion` that `matches` accepts, holding about
   * `bytesMax` of keys and values at most, looking at no more than about `scanMax` changes; a
   * version's changes are never split. `afterVersion` must not be compacted (asserted: callers check
   * `compactedThrough` first).
   */
  scan(afterVersion: number, matches: (key: string) => boolean, changesMax: number, scanMax: number, bytesMax = Number.POSITIVE_INFINITY): ScanResult {
    assert(afterVersion >= this.compacted, `watch history: scan after ${afterVersion}, compacted through ${this.compacted}`);
    const changes: WatchChange[] = [];
    let seq = this.firstAfter(afterVersion);
    let scanned = 0;
    let bytes = 0;
    let through = Math.max(afterVersion, this.compacted);
    while (seq < this.nextSeq) {
      const version = this.versions[seq & this.mask] as number;
      if (changes.length >= changesMax || scanned >= scanMax || bytes >= bytesMax) return { changes, throughVersion: through, scanned };
      while (seq < this.nextSeq && this.versions[seq & this.mask] === version) {
        if (matches(this.keys[seq & this.mask] as string)) {
          const change = this.changeAt(seq);
          bytes += change.key.length + (change.kind === "put" ? change.value.byteLength : 0);
          changes.push(change);
        }
        seq++;
        scanned++;
      }
      through = version;
    }
    return { changes, throughVersion: Math.max(through, this.last), scanned };
  }

  /** The change kept at `seq`, rebuilt from the columns (a put's small value as a view into its chunk). */
  private changeAt(seq: number): WatchChange {
    const slot = seq & this.mask;
    const key = this.keys[slot] as string;
    const version = this.versions[slot] as number;
    const kind = this.kinds[slot];
    if (kind === kindPut) return { kind: "put", key, value: this.largeValues[slot] ?? this.valueAt(slot), version };
    return { kind: "delete", key, version, reason: kind === kindExpired ? "lease_expired" : "delete" };
  }

  /** Copies `value` to the end of the value log for the change at `seq`; returns its position. */
  private appendValue(value: Uint8Array, seq: number): number {
    let chunk = this.valueChunks[this.valueChunks.length - 1];
    if (chunk === undefined || this.valueEnd + value.byteLength > chunk.start + chunk.bytes.byteLength) {
      // The rest of the current chunk is left unused: at most `packedValueBytesMax` of a chunk.
      chunk = { start: this.valueEnd, bytes: new Uint8Array(this.chunkBytes), lastSeq: seq };
      this.valueChunks.push(chunk);
    }
    const at = this.valueEnd;
    chunk.bytes.set(value, at - chunk.start);
    chunk.lastSeq = seq;
    this.valueEnd += value.byteLength;
    return at;
  }

  /** The small value of the put at `slot`: a view into the chunk holding it. */
  private valueAt(slot: number): Uint8Array {
    const at = this.valueStarts[slot] as number;
    const length = this.valueLengths[slot] as number;
    // Chunks hold consecutive ranges of the log: find the last one starting at or before `at`.
    let low = this.firstChunk;
    let high = this.valueChunks.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >>> 1;
      if ((this.valueChunks[middle] as ValueChunk).start <= at) low = middle;
      else high = middle - 1;
    }
    const chunk = this.valueChunks[low] as ValueChunk;
    return chunk.bytes.subarray(at - chunk.start, at - chunk.start + length);
  }

  /** Drops the oldest change kept, and the value log's oldest chunk once no change kept is in it. */
  private dropOldest(): void {
    const seq = this.firstSeq++;
    const slot = seq & this.mask;
    const key = this.keys[slot] as string;
    const kind = this.kinds[slot];
    const large = this.largeValues[slot];
    const valueBytes = kind !== kindPut ? 0 : large !== undefined ? large.byteLength : (this.valueLengths[slot] as number);
    this.bytes -= countedBytes(key, valueBytes);
    this.keys[slot] = undefined;
    this.largeValues[slot] = undefined;
    // The chunk being written stays (a change recorded next may go into it).
    while (this.firstChunk < this.valueChunks.length - 1 && (this.valueChunks[this.firstChunk] as ValueChunk).lastSeq <= seq) {
      this.firstChunk++;
    }
    // Splice out the dropped chunks once they are half the list: amortized O(1) per chunk.
    if (this.firstChunk > 16 && this.firstChunk * 2 > this.valueChunks.length) {
      this.valueChunks = this.valueChunks.slice(this.firstChunk);
      this.firstChunk = 0;
    }
    if (this.firstSeq === this.nextSeq) {
      // Nothing kept: the chunk being written may go too (it holds nothing kept).
      this.valueChunks = [];
      this.firstChunk = 0;
      assert(this.bytes === 0, `watch history: ${this.bytes} bytes counted with nothing kept`);
    }
  }

  /** Doubles the ring (16 slots at first). */
  private grow(): void {
    this.resize(Math.max(minSlots, this.versions.length * 2));
  }

  /**
   * Halves the ring while a quarter of it would hold what is kept: one version of very many
   * changes (a lease's keys deleted together) must not leave a huge ring behind once it is dropped.
   */
  private shrinkToFit(): void {
    let capacity = this.versions.length;
    while (capacity > minSlots && this.size() * 4 <= capacity) capacity /= 2;
    if (capacity < this.versions.length) this.resize(capacity);
  }

  /** Moves the changes kept into a ring of `capacity` slots (a power of two), in sequence order. */
  private resize(capacity: number): void {
    assert(capacity >= this.size(), `watch history: ${this.size()} changes do not fit ${capacity} slots`);
    const versions = new Float64Array(capacity);
    const atMs = new Float64Array(capacity);
    const kinds = new Uint8Array(capacity);
    const keys: (string | undefined)[] = new Array(capacity).fill(undefined);
    const valueStarts = new Float64Array(capacity);
    const valueLengths = new Uint32Array(capacity);
    const largeValues: (Uint8Array | undefined)[] = new Array(capacity).fill(undefined);
    const mask = capacity - 1;
    for (let seq = this.firstSeq; seq < this.nextSeq; seq++) {
      const from = seq & this.mask;
      const to = seq & mask;
      versions[to] = this.versions[from] as number;
      atMs[to] = this.atMs[from] as number;
      kinds[to] = this.kinds[from] as number;
      keys[to] = this.keys[from];
      valueStarts[to] = this.valueStarts[from] as number;
      valueLengths[to] = this.valueLengths[from] as number;
      largeValues[to] = this.largeValues[from];
    }
    this.versions = versions;
    this.atMs = atMs;
    this.kinds = kinds;
    this.keys = keys;
    this.valueStarts = valueStarts;
    this.valueLengths = valueLengths;
    this.largeValues = largeValues;
    this.mask = mask;
  }

  /** The sequence number of the first kept change with a version above `version` (binary search). */
  private firstAfter(version: number): number {
    let low = this.firstSeq;
    let high = this.nextSeq;
    while (low < high) {
      const middle = low + Math.floor((high - low) / 2);
      if ((this.versions[middle & this.mask] as number) <= version) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}

/** The ring's smallest size: it never shrinks below. */
const minSlots = 16;

const kindPut = 0;
const kindDelete = 1;
const kindExpired = 2;

/**
 * Values up to this size are copied into the history's value log; larger ones are kept as they
 * came (`keptValue`): their own object is small beside them, and copying every 256 KB value was a
 * tenth of a node's CPU (BENCHMARKS.md).
 */
const packedValueBytesMax = 4 * 1024;
/** The value log's chunk size by default: at most `packedValueBytesMax` of each is left unused. */
const valueChunkBytes = 256 * 1024;
