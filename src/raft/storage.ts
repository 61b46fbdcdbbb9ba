import type { Entry, HardState, NodeId, SnapshotMetadata } from "./types.ts";

/**
 * What the core reads from durable storage (etcd's Storage interface). The core never writes it:
 * the driver persists each Ready and then tells the core by `advance`. Reads are synchronous, which
 * bun:sqlite makes cheap; an implementation keeps what it returns consistent with what it persisted.
 */
export interface RaftStorage {
  /**
   * Term, vote and commit as last persisted, and the configuration as of the applied index (the
   * state machine keeps it). A server that is joining starts with no voters at all and learns the
   * configuration from its leader's snapshot.
   */
  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners?: readonly NodeId[] };
  /** Entries in [lo, hi), lo >= firstIndex(), hi <= lastIndex() + 1. At least one entry when lo < hi even past `maxBytes`. */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** Term of the entry at `index`, for firstIndex()-1 <= index <= lastIndex(); term(0) is 0. */
  term(index: number): number;
  /** Index of the first entry still held (1 for a log never compacted): snapshot().index + 1. */
  firstIndex(): number;
  /** Index of the last persisted entry; snapshot().index when the log after it is empty. */
  lastIndex(): number;
  /** Where the log was last compacted (or a snapshot installed): index 0 when never. */
  snapshot(): SnapshotMetadata;
  /**
   * What a leader can send a follower that is behind its first index: the state machine as applied
   * now. Undefined when no image can be made right now (the leader then retries later).
   */
  snapshotForSend(): SnapshotMetadata | undefined;
}

/** What the driver writes: one call per Ready, atomic (one transaction, one fsync when `sync`). */
export interface RaftLogWriter {
  save(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): void;
}
