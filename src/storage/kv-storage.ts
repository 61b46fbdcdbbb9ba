import type { RaftLogWriter, RaftStorage } from "../raft/storage.ts";
import type { Entry, NodeId, SnapshotMetadata } from "../raft/types.ts";
import type { ApplyResult, KvRow } from "../kv/apply-plan.ts";
import type { MemberAddress, Membership } from "../kv/membership.ts";

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
   * Records the cluster's voters (and the peer URLs given, for members that have none recorded) the
   * first time. On later calls, while no membership change has been applied (`membership()
   * .changedIndex` is 0), verifies they are the same set (order does not matter) and throws
   * `StorageError` `voters_mismatch` otherwise; once one has, the recorded configuration is
   * authoritative and `voters` is not checked (only missing peer URLs are recorded).
   */
  bootstrap(voters: readonly NodeId[], addresses?: readonly MemberAddress[]): void;
  /**
   * A server joining a running cluster (`kv serve --join`) records the configuration the cluster
   * answered with, as of the change at `changedIndex` that added it. Only on empty storage.
   */
  bootstrapJoined(configuration: Omit<Membership, "changedIndex">, changedIndex: number): void;
  /** The configuration as of the applied index, with every member's recorded addresses. */
  membership(): Membership;
  /**
   * Applies committed entries, in index order, atomically with the new applied index. Entries at
   * or below `appliedIndex()` are skipped (so replay after a crash has no double effect); the
   * rest must follow it contiguously, be committed and be in the log with the same term.
   *
   * A storage that writes on another thread returns a promise of the results instead. Its
   * promises (of applies and installs) settle in call order, and `appliedIndex()`, `membership()`,
   * `get`, `list` and `openImage` show the entries only once it has resolved (and at least that
   * state from then on). Rejects only for what would have thrown (the node then stops).
   */
  applyEntries(entries: readonly Entry[]): ApplyResult[] | Promise<ApplyResult[]>;
  /** The index of the last entry whose effect is in the state machine; 0 when none. */
  appliedIndex(): number;
  /**
   * Bytes of data this storage keeps now (the state machine, a staged image and their overhead;
   * not the log, which compaction bounds, as etcd's quota counts its backend and not its WAL), what
   * `--quota-bytes` bounds. Cheap enough for every tick, not meant for every write.
   */
  dataBytes(): number;
  /**
   * Whether this storage's own writer thread is waiting for disk space (it retries meanwhile): a
   * write on it, an install say, is held while the caller's thread goes on. Absent where writes
   * fail on the caller's thread instead (with an error `isDiskFull` recognizes).
   */
  isDiskFull?(): boolean;
  /** While `isDiskFull()`: the write the writer thread is held at (`save`, `apply`, ...) and the error it met. */
  diskFullWrite?(): { readonly op: string; readonly error: Error } | undefined;
  /** The current value of `key` and the index of the put that wrote it. */
  get(key: string): StoredValue | undefined;
  /**
   * The applied index of the state `get` and `list` read now: every entry up to it, none after.
   * Where another thread applies, the reads of one task share a read transaction, and this is read
   * in it (it may be past `appliedIndex()`, which waits for the writer's answer).
   */
  stateVersion(): number;
  /** The size in bytes of `key`'s current value, without reading it; undefined when absent. */
  valueBytes(key: string): number | undefined;
  /**
   * Up to `limit` keys that start with `prefix` and sort after `after` (UTF-8 byte order), with
   * their values, in key order. Reads the applied state as it is now. With `bytesMax`, it also stops
   * after the item that brings the keys' and values' sizes (a key's counted in UTF-16 units) to
   * `bytesMax` or past it: at least one item (src/lib/page-bytes.ts).
   */
  list(prefix: string, after: string | undefined, limit: number, bytesMax?: number): ListedValue[];
  /**
   * Log compaction: drops every entry up to `index` (at most the applied and the last index) and
   * records where the log now starts, so `firstIndex()` is index + 1 and `term(index)` still answers.
   * Asks for no fsync: a compaction lost in a crash only leaves entries that are still valid.
   * An index at or below the current snapshot's changes nothing.
   */
  compact(index: number): void;
  /**
   * A consistent image of the state machine as of one applied index, read while writes go on.
   * The caller must `close()` it. Throws `StorageError` `corrupt` when its term cannot be known.
   */
  openImage(): KvImageReader;
  /**
   * Receiver side of InstallSnapshot: stages rows of image `imageId` apart from the state machine.
   * `first` starts a new image (dropping whatever was staged); later chunks must name the same image.
   * Throws `StorageError` `image_refused` for a chunk of another image, a key staged twice, a bad
   * row, or an image beyond the staging limit (the staging is then dropped).
   */
  stageImageChunk(imageId: string, rows: readonly ImageRow[], first: boolean): void;
  /**
   * Installs the image staged as `imageId` (all of it: the caller staged its last chunk), durably:
   * the state machine becomes the image, the applied index `metadata.index`, the log empties, the
   * snapshot is `metadata`, and commit rises to at least `metadata.index`. (The sqlite storage
   * commits the state machine, then resets the log, and reconciles the two at open.)
   * Installing an image that is not staged, or one not past the applied index, is a bug. A storage
   * that writes on another thread returns a promise, settled in order with its applies (see
   * `applyEntries`): the log, snapshot and hard state change at once, the applied index and what
   * reads see once it resolves.
   */
  installSnapshot(metadata: SnapshotMetadata, imageId: string, addresses?: readonly MemberAddress[]): void | Promise<void>;
  /** Drops whatever image is staged (a transfer that failed or was not needed). */
  discardStagedImage(): void;
  /**
   * Makes every write so far durable (`save` with `sync` false, applies, compactions) without
   * holding up the caller: the fsync runs on another thread, and the promise settles once it has
   * returned. Writes made meanwhile are not covered. Rejects when the disk reports an error: the
   * node must then stop, since what it wrote may be lost (an fsync is not retried).
   */
  sync(): Promise<void>;
  /** Releases the storage; any later call is a bug. Idempotent. */
  close(): void;
}

/** One key of the state machine as an image carries it: a row of the kv table. */
export type ImageRow = KvRow;

/**
 * Reads one image in key order, a bounded batch at a time. `metadata` says where the image stands:
 * its index is the applied index it was read at, its term the log's term there, and its voters the
 * configuration then.
 */
export interface KvImageReader {
  readonly metadata: SnapshotMetadata;
  /** Every member's recorded addresses as of the image's index (sent with it: see `installSnapshot`). */
  readonly addresses: readonly MemberAddress[];
  /** The next rows, about `bytesMax` bytes of keys and values (at least one row); [] once done. */
  next(bytesMax: number): ImageRow[];
  /** Ends the read. Idempotent. */
  close(): void;
}

/** One item of `KvStorage.list`. */
export interface ListedValue extends StoredValue {
  readonly key: string;
}

/** A value in the state machine with its version: the Raft index of the put that wrote it. */
export interface StoredValue {
  readonly value: Uint8Array;
  readonly version: number;
}

/** Why storage refused to open or to go on: all are operating errors except where noted. */
export type StorageErrorCode =
  | "corrupt" // a checksum mismatch, a hole in the log, or a stored value out of range
  | "bad_command" // a committed entry does not decode: corruption, or a bug in whoever proposed it
  | "voters_mismatch" // the configured voters differ from those recorded at bootstrap (before any membership change)
  | "voters_invalid" // not a non-empty set of distinct positive integers
  | "schema" // the database (or a log segment) was written by an unknown schema (or format) version
  | "locked" // another process (or connection) holds the database
  | "node_mismatch" // the database belongs to another node (see SqliteStorageOptions.nodeId)
  | "image_refused"; // a snapshot chunk that does not continue the staged image, or exceeds its limit

/**
 * What to do about a data dir found damaged (docs/operations.md, "Running a cluster"): said when a
 * node refuses to start on one (src/cli/main.ts) or stops on meeting the damage (src/node/kv-node.ts).
 */
export const DAMAGED_DATA_DIR_ADVICE =
  "the data dir is damaged and is left as it is. To bring the node back: remove it from the cluster (kv member remove ID, on a running member), move the data dir aside, and start the node empty with --join; or restore it from a backup (kv snapshot restore)";

/**
 * The one error class storage throws for operating errors (programmer errors are AssertionErrors).
 * `file` names the database or the log segment concerned (or "memory"), `index` the log entry
 * concerned when there is one.
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
