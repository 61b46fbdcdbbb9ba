import type { RaftLogWriter, RaftStorage } from "../raft/storage.ts";
import type { Entry, NodeId } from "../raft/types.ts";

/**
 * What a node persists: the Raft log and hard state (read by the core through `RaftStorage`,
 * written by the driver through `RaftLogWriter`) plus the key-value state machine and its applied
 * index. `openSqliteStorage` (sqlite-storage.ts) is the durable one,
 * `MemoryKvStorage` (memory-storage.ts) its in-memory twin.
 *
 * Invariant, kept across crashes: appliedIndex() <= hardState.commit <= lastIndex().
 */
export interface KvStorage extends RaftStorage, RaftLogWriter {
  /**
   * Records the cluster's voters the first time; on later calls verifies they are the same set
   * (order does not matter) and throws `StorageError` `voters_mismatch` otherwise.
   */
  bootstrap(voters: readonly NodeId[]): void;
  /**
   * Applies committed entries, in index order, atomically with the new applied index. Entries at
   * or below `appliedIndex()` are skipped (so replay after a crash has no double effect); the
   * rest must follow it contiguously, be committed and be in the log with the same term.
   */
  applyEntries(entries: readonly Entry[]): ApplyResult[];
  /** The index of the last entry whose effect is in the state machine; 0 when none. */
  appliedIndex(): number;
  /** The current value of `key` and the index of the put that wrote it. */
  get(key: string): StoredValue | undefined;
  /** Releases the storage; any later call is a bug. Idempotent. */
  close(): void;
}

/** A value in the state machine with its version: the Raft index of the put that wrote it. */
export interface StoredValue {
  readonly value: Uint8Array;
  readonly version: number;
}

/**
 * The outcome of one entry handed to `applyEntries`, in the same order. `version` is the entry's
 * index. `noop` is a leader's empty entry; `skipped` an entry already applied before (its effect
 * is not reported again).
 */
export type ApplyResult =
  | { readonly kind: "put"; readonly index: number; readonly version: number }
  | { readonly kind: "delete"; readonly index: number; readonly deleted: boolean; readonly version: number }
  | { readonly kind: "noop"; readonly index: number }
  | { readonly kind: "skipped"; readonly index: number };

/** Why storage refused to open or to go on: all are operating errors except where noted. */
export type StorageErrorCode =
  | "corrupt" // a checksum mismatch, a hole in the log, or a stored value out of range
  | "bad_command" // a committed entry does not decode: corruption, or a bug in whoever proposed it
  | "voters_mismatch" // the configured voters differ from those recorded at bootstrap
  | "voters_invalid" // not a non-empty set of distinct positive integers
  | "schema" // the database was written by an unknown schema version
  | "locked"; // another process (or connection) holds the database

/**
 * The one error class storage throws for operating errors (programmer errors are AssertionErrors).
 * `file` names the database (or "memory"), `index` the log entry concerned when there is one.
 */
export class StorageError extends Error {
  override name = "StorageError";
  constructor(
    readonly code: StorageErrorCode,
    message: string,
    readonly file: string,
    readonly index?: number,
    options?: ErrorOptions,
  ) {
    super(`${message} (${code}; ${file}${index === undefined ? "" : `, index ${index}`})`, options);
  }
}
