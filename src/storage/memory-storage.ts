import { assert } from "../lib/assert.ts";
import { type Entry, emptyHardState, type HardState, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import { planApply, resultFor } from "./apply-plan.ts";
import type { ApplyResult, KvStorage, StoredValue } from "./kv-storage.ts";
import { checkSave } from "./save-checks.ts";
import { checkVotersMatch, normalizeVoters } from "./voters.ts";

/** Options of `createMemoryKvStorage`. */
export interface MemoryKvStorageOptions {
  /** Voters to record at creation, as `bootstrap` would. */
  readonly voters?: readonly NodeId[];
}

/** Named in errors where the sqlite storage names its file. */
const memoryFile = "memory";

/**
 * Creates the in-memory twin of `openSqliteStorage`, for fast tests of the node loop. It runs
 * the same save checks, apply plan and command codec; only the tables are Maps and arrays.
 */
export function createMemoryKvStorage(options: MemoryKvStorageOptions = {}): MemoryKvStorage {
  const storage = new MemoryKvStorage();
  if (options.voters !== undefined) storage.bootstrap(options.voters);
  return storage;
}

/**
 * A `KvStorage` held in memory. `save` and `applyEntries` are atomic (all checks and decoding run
 * before any change), as one sqlite transaction is; `clone()` is the state a node restarts from
 * after a crash. Saved entry data is copied, so callers may reuse their buffers; values returned
 * by `get` are shared views: do not mutate them.
 */
export class MemoryKvStorage implements KvStorage {
  private hardState: HardState = emptyHardState;
  private voters: readonly NodeId[] = [];
  /** log[0] is the entry at index 1 (no compaction yet). */
  private log: Entry[] = [];
  private values = new Map<string, StoredValue>();
  private applied = 0;
  private closed = false;

  /** Term, vote and commit as last saved, and the voters recorded at bootstrap ([] before it). */
  initialState(): { hardState: HardState; voters: readonly NodeId[] } {
    this.assertOpen();
    return { hardState: this.hardState, voters: this.voters };
  }

  /** Entries in [lo, hi), at most `maxBytes` of data but at least one when lo < hi. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
    assert(lo >= this.firstIndex() && hi <= this.lastIndex() + 1 && lo <= hi, `entries(${lo}, ${hi}) out of range`);
    const result: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < hi; index++) {
      const entry = this.log[index - 1] as Entry;
      bytes += entry.data.byteLength;
      if (result.length > 0 && bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  /** Term at `index` for 0 <= index <= lastIndex(); term(0) is 0. */
  term(index: number): number {
    this.assertOpen();
    if (index === 0) return 0;
    assert(index >= 1 && index <= this.lastIndex(), `term(${index}) out of range`);
    return (this.log[index - 1] as Entry).term;
  }

  /** 1: the log is never compacted yet. */
  firstIndex(): number {
    return 1;
  }

  /** Never compacted yet: the empty snapshot at index 0. */
  snapshot(): SnapshotMetadata {
    return { index: 0, term: 0, voters: this.voters };
  }

  /** No state machine image can be streamed yet (the log is never compacted, so none is needed). */
  snapshotForSend(): SnapshotMetadata | undefined {
    return undefined;
  }

  /** Index of the last saved entry, 0 when empty. */
  lastIndex(): number {
    this.assertOpen();
    return this.log.length;
  }

  /** As `SqliteStorage.save`; `sync` changes nothing in memory. */
  save(hardState: HardState | undefined, entries: readonly Entry[], _sync: boolean): void {
    this.assertOpen();
    checkSave(
      { hardState: this.hardState, firstIndex: this.firstIndex(), lastIndex: this.lastIndex(), term: (index) => this.term(index) },
      hardState,
      entries,
    );
    const first = entries[0];
    if (first !== undefined) {
      this.log.length = first.index - 1; // a new leader overwrote a conflicting suffix
      for (const entry of entries) {
        this.log.push({ index: entry.index, term: entry.term, type: entry.type, data: entry.data.slice() });
      }
    }
    if (hardState !== undefined) this.hardState = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
  }

  /** As `SqliteStorage.bootstrap`. */
  bootstrap(voters: readonly NodeId[]): void {
    this.assertOpen();
    const normalized = normalizeVoters(voters, memoryFile);
    if (this.voters.length > 0) return checkVotersMatch(this.voters, normalized, memoryFile);
    this.voters = normalized;
  }

  /** As `SqliteStorage.applyEntries`: atomic, skips entries at or below the applied index. */
  applyEntries(entries: readonly Entry[]): ApplyResult[] {
    this.assertOpen();
    const plan = planApply(
      {
        file: memoryFile,
        appliedIndex: this.applied,
        commitIndex: this.hardState.commit,
        lastIndex: this.lastIndex(),
        term: (index) => this.term(index),
      },
      entries,
    );
    const results: ApplyResult[] = [];
    for (const step of plan.steps) {
      let deleted = false;
      if (step.kind === "put") this.values.set(step.key, { value: step.value, version: step.index });
      else if (step.kind === "delete") deleted = this.values.delete(step.key);
      results.push(resultFor(step, deleted));
    }
    this.applied = plan.appliedIndex;
    return results;
  }

  /** The index of the last applied entry. */
  appliedIndex(): number {
    this.assertOpen();
    return this.applied;
  }

  /** The value of `key` and its version; the bytes are shared, not copied. */
  get(key: string): StoredValue | undefined {
    this.assertOpen();
    return this.values.get(key);
  }

  /** Marks the storage closed; later calls are bugs. Idempotent. */
  close(): void {
    this.closed = true;
  }

  /** A copy holding exactly what was saved and applied: what a node restarts from after a crash. */
  clone(): MemoryKvStorage {
    const copy = new MemoryKvStorage();
    copy.hardState = this.hardState;
    copy.voters = this.voters;
    copy.log = this.log.slice();
    copy.values = new Map(this.values);
    copy.applied = this.applied;
    return copy;
  }

  private assertOpen(): void {
    assert(!this.closed, "memory storage used after close");
  }
}
