import { AssertionError, assert } from "../lib/assert.ts";
import { NotDiskFullError } from "../lib/disk-full.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import type { MemberAddress, Membership } from "../kv/membership.ts";
import type { Entry, HardState, NodeId, SnapshotMetadata } from "../raft/types.ts";
import type { CheckpointReport } from "./checkpointer.ts";
import { StorageError, type StorageErrorCode } from "./kv-storage.ts";
import type { SqliteMirrorState } from "./sqlite-storage.ts";
import type { StagingState } from "./snapshot-checks.ts";
import type { AppendPlace } from "./segment-log.ts";
import type { PackRing } from "./pack-ring.ts";

/**
 * The messages between ThreadedStorage (threaded-storage.ts, the node's thread) and its writer
 * thread (storage-thread.ts). Requests carry a sequence number; the thread runs them in the order
 * posted and answers each with `done` (a sync's answer comes once its fdatasync returned, so it may
 * follow answers to requests posted after it).
 */

/** Options the thread opens its SqliteStorage with (those that cross threads: no callbacks). */
export interface StorageThreadOpenOptions {
  readonly voters?: readonly NodeId[];
  readonly nodeId?: NodeId;
  readonly fileName?: string;
  readonly lockWaitMs?: number;
  readonly termCacheRunsMax?: number;
  readonly termCacheLoadEntriesMax?: number;
  readonly stagedImageBytesMax?: number;
  readonly checkpointPages?: number;
  readonly walRestartFrames?: number;
  readonly logSegmentBytesMax?: number;
}

/** One write (or sync) for the thread, run in the order posted. */
export type StorageRequest =
  | { readonly seq: number; readonly op: "save"; readonly hardState: HardState | undefined; readonly entries: PackedEntries; readonly sync: boolean }
  /**
   * Applies the entries [firstIndex, lastIndex] of the log (the node's thread checked they are the
   * log's, term for term): the thread reads them from its own log, so their data never crosses again.
   */
  | { readonly seq: number; readonly op: "apply"; readonly firstIndex: number; readonly lastIndex: number }
  | { readonly seq: number; readonly op: "compact"; readonly index: number }
  | {
      readonly seq: number;
      readonly op: "install";
      readonly path: string;
      readonly staging: StagingState;
      readonly metadata: SnapshotMetadata;
      readonly imageId: string;
      readonly addresses: readonly MemberAddress[];
    }
  | { readonly seq: number; readonly op: "bootstrap"; readonly voters: readonly NodeId[]; readonly addresses: readonly MemberAddress[] }
  | { readonly seq: number; readonly op: "bootstrap-joined"; readonly configuration: Omit<Membership, "changedIndex">; readonly changedIndex: number }
  | { readonly seq: number; readonly op: "sync" };

/** What the node's thread posts to the storage thread. */
export type ToStorageThread =
  /** `ring`: the pack ring's memory (src/storage/pack-ring.ts), where saves' entries may be. */
  | { readonly type: "open"; readonly dir: string; readonly options: StorageThreadOpenOptions; readonly ring?: SharedArrayBuffer }
  /** The requests of one turn of the node's loop, in order: one message, not one per request. */
  | { readonly type: "requests"; readonly requests: readonly StorageRequest[] }
  /** For tests, run at once (not queued): see `SqliteStorage.limitPages`. */
  | { readonly type: "limit-pages"; readonly pages: number }
  | { readonly type: "close" };

/** What the storage thread posts back. */
export type FromStorageThread =
  | { readonly type: "opened"; readonly state: SqliteMirrorState }
  | { readonly type: "open-failed"; readonly error: SerializedError }
  | StorageDone
  /** The answers of the requests one pass over the queue ran, in order: one message, not one per request. */
  | { readonly type: "dones"; readonly dones: readonly StorageDone[] }
  /** A request failed for lack of space: it is retried (first in the queue) until it succeeds. */
  | { readonly type: "disk-full"; readonly seq: number; readonly op: StorageRequest["op"]; readonly error: SerializedError }
  /** The request that met a full disk succeeded after all. */
  | { readonly type: "disk-space" }
  /** Any other failure: the thread runs nothing more. */
  | { readonly type: "fatal"; readonly seq: number; readonly error: SerializedError }
  | { readonly type: "checkpoint"; readonly report: CheckpointReport }
  | { readonly type: "limited"; readonly pages: number }
  | { readonly type: "closed" };

/** A request's answer. */
export interface StorageDone {
  readonly type: "done";
  readonly seq: number;
  /** The request's own duration on the thread (for a sync, its fdatasync's). */
  readonly durationMs: number;
  /** Saves of entries: where in the log they went (for the node's thread's SegmentReader). */
  readonly logPlace?: AppendPlace;
  /** Applies: the results, in entry order. */
  readonly results?: readonly ApplyResult[];
  /**
   * Applies and installs: the applied index after the request, and the configuration when it
   * changed since the last answer that carried one (cloning it at every apply cost the loop's thread).
   */
  readonly applied?: { readonly index: number; readonly membership?: Membership };
}

/**
 * Entries as they cross to the thread: their data packed one after another, either into the pack
 * ring both threads share (src/storage/pack-ring.ts: `ringOffset`) or, when the ring has no room,
 * into one buffer of the save's own, transferred rather than cloned (Bun's structured clone of a
 * Uint8Array took about 2.7 ms per MiB on the node's thread, a copy into a fresh buffer about a
 * third of that); and per entry its index, term, type and length.
 */
export interface PackedEntries {
  readonly data: Uint8Array | { readonly ringOffset: number; readonly byteLength: number };
  /** index, term, type, byte length: four numbers per entry. */
  readonly fields: Float64Array;
}

/**
 * Packs `entries` (see `PackedEntries`): one copy of their data, into `ring` when it has room. The
 * caller transfers `data.buffer` when it is not in the ring.
 */
export function packEntries(entries: readonly Entry[], ring?: PackRing): PackedEntries {
  let bytes = 0;
  for (const entry of entries) bytes += entry.data.byteLength;
  const last = entries[entries.length - 1];
  const inRing = bytes > 0 && last !== undefined ? ring?.allocate(bytes, last.index) : undefined;
  // Not zero-filled, and a buffer of its own (never a pooled one): it is transferred.
  const data = inRing ?? new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes);
  const fields = new Float64Array(entries.length * 4);
  let offset = 0;
  entries.forEach((entry, position) => {
    data.set(entry.data, offset);
    offset += entry.data.byteLength;
    fields.set([entry.index, entry.term, entry.type, entry.data.byteLength], position * 4);
  });
  return { data: inRing === undefined ? data : { ringOffset: inRing.byteOffset, byteLength: bytes }, fields };
}

/** The entries again, their data views into the packed buffer or into `ring` (no copy). */
export function unpackEntries(packed: PackedEntries, ring: SharedArrayBuffer | undefined): Entry[] {
  const entries: Entry[] = [];
  const where = packed.data;
  let data: Uint8Array;
  if (where instanceof Uint8Array) data = where;
  else {
    assert(ring !== undefined, "entries packed into a ring the thread was not given");
    data = new Uint8Array(ring, where.ringOffset, where.byteLength);
  }
  let offset = 0;
  for (let field = 0; field < packed.fields.length; field += 4) {
    const length = packed.fields[field + 3] as number;
    entries.push({
      index: packed.fields[field] as number,
      term: packed.fields[field + 1] as number,
      type: packed.fields[field + 2] as Entry["type"],
      data: data.subarray(offset, offset + length),
    });
    offset += length;
  }
  return entries;
}

/** An error as it crosses threads (structured clone keeps neither its class nor a StorageError's code). */
export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly stack?: string;
  /** A system or SQLite error's code (SQLITE_FULL, ENOSPC, ...). */
  readonly code?: string;
  /** A StorageError's code, file and index. */
  readonly storageCode?: StorageErrorCode;
  readonly file?: string;
  readonly index?: number;
}

/** See `SerializedError`. */
export function serializeError(error: unknown): SerializedError {
  if (!(error instanceof Error)) return { name: "Error", message: String(error) };
  const code = (error as { code?: unknown }).code;
  return {
    name: error.name,
    message: error.message,
    ...(error.stack === undefined ? {} : { stack: error.stack }),
    ...(typeof code === "string" ? { code } : {}),
    ...(error instanceof StorageError
      ? { storageCode: error.code, file: error.file, ...(error.index === undefined ? {} : { index: error.index }) }
      : {}),
  };
}

/** The error again, of its class (StorageError with its code, AssertionError, or Error with its `code`). */
export function deserializeError(serialized: SerializedError): Error {
  let error: Error;
  if (serialized.storageCode !== undefined) {
    error = new StorageError(serialized.storageCode, "", serialized.file ?? "", serialized.index);
    error.message = serialized.message; // already carries the code, file and index
  } else if (serialized.name === "AssertionError") {
    error = new AssertionError(serialized.message);
  } else if (serialized.name === "NotDiskFullError") {
    error = new NotDiskFullError(serialized.message); // a failed fsync: never a full disk to wait out
  } else {
    error = new Error(serialized.message);
    if (serialized.name !== "Error") error.name = serialized.name;
    if (serialized.code !== undefined) Object.assign(error, { code: serialized.code });
  }
  if (serialized.stack !== undefined) error.stack = serialized.stack;
  return error;
}
