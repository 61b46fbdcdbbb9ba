import { assert } from "../lib/assert.ts";
import type { RaftLogWriter, RaftStorage } from "./storage.ts";
import { emptyHardState, type ConfState, type Entry, type HardState, type NodeId, type SnapshotMetadata } from "./types.ts";

/**
 * The in-memory twin of durable Raft storage, used by the simulator and unit tests.
 * `save` is atomic: a simulated crash loses a whole Ready or none of it (a real save may leave a
 * prefix of its records after a power loss, src/storage/segment-log.ts: the simulator is kinder).
 * The log can be compacted up to a snapshot; the image itself is the simulator's business.
 */
export class MemoryStorage implements RaftStorage, RaftLogWriter {
  private hardState: HardState = emptyHardState;
  private snapshotMeta: SnapshotMetadata;
  /** log[0] is the entry at snapshotMeta.index + 1. */
  private log: Entry[] = [];
  /** Answers `snapshotForSend`: the simulator knows what its state machine has applied. */
  snapshotSource: (() => SnapshotMetadata | undefined) | undefined;

  /** The configuration as of what the state machine applied (kept with it, as the node's storage does). */
  private conf: ConfState;

  constructor(voters: readonly NodeId[], learners: readonly NodeId[] = []) {
    this.conf = { voters, learners };
    this.snapshotMeta = { index: 0, term: 0, voters, learners };
  }

  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners: readonly NodeId[] } {
    return { hardState: this.hardState, voters: this.conf.voters, learners: this.conf.learners };
  }

  /** Records the configuration a membership change produced, as the apply that made it. */
  setConfState(conf: ConfState): void {
    this.conf = conf;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    assert(lo >= this.firstIndex() && hi <= this.lastIndex() + 1 && lo <= hi, `entries(${lo}, ${hi}) out of range`);
    const result: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < hi; index++) {
      const entry = this.log[index - this.firstIndex()] as Entry;
      bytes += entry.data.byteLength;
      if (result.length > 0 && bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  term(index: number): number {
    if (index === this.snapshotMeta.index) return this.snapshotMeta.term;
    assert(index > this.snapshotMeta.index && index <= this.lastIndex(), `term(${index}) out of range`);
    return (this.log[index - this.firstIndex()] as Entry).term;
  }

  firstIndex(): number {
    return this.snapshotMeta.index + 1;
  }

  lastIndex(): number {
    return this.snapshotMeta.index + this.log.length;
  }

  snapshot(): SnapshotMetadata {
    return this.snapshotMeta;
  }

  snapshotForSend(): SnapshotMetadata | undefined {
    return this.snapshotSource?.();
  }

  save(hardState: HardState | undefined, entries: readonly Entry[], _sync: boolean): void {
    const first = entries[0];
    if (first !== undefined) {
      assert(first.index > this.snapshotMeta.index, `save: entry ${first.index} is inside the snapshot`);
      assert(first.index <= this.lastIndex() + 1, `save: gap before index ${first.index}`);
      this.log.length = first.index - this.firstIndex(); // a new leader overwrote a conflicting suffix
      for (const entry of entries) {
        assert(entry.index === this.lastIndex() + 1, "save: entries not contiguous");
        this.log.push(entry);
      }
    }
    if (hardState !== undefined) this.hardState = hardState;
  }

  /** Drops every entry up to `index` (which the state machine has applied). */
  compact(index: number): void {
    if (index <= this.snapshotMeta.index) return;
    assert(index <= this.lastIndex(), `compact(${index}) beyond last index ${this.lastIndex()}`);
    const term = this.term(index);
    this.log = this.log.slice(index - this.snapshotMeta.index);
    this.snapshotMeta = { index, term, voters: this.conf.voters, learners: this.conf.learners };
  }

  /** Installs a received snapshot: the whole log is replaced by its position. */
  installSnapshot(metadata: SnapshotMetadata): void {
    this.snapshotMeta = metadata;
    this.conf = { voters: metadata.voters, learners: metadata.learners ?? [] };
    this.log = [];
  }

  /** A copy holding exactly what was persisted: the state a node restarts from after a crash. */
  clone(): MemoryStorage {
    const copy = new MemoryStorage(this.conf.voters, this.conf.learners);
    copy.hardState = this.hardState;
    copy.snapshotMeta = this.snapshotMeta;
    copy.log = this.log.slice();
    return copy;
  }
}
