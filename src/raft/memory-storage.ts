import { assert } from "../lib/assert.ts";
import type { RaftLogWriter, RaftStorage } from "./storage.ts";
import { emptyHardState, type Entry, type HardState, type NodeId } from "./types.ts";

/**
 * The in-memory twin of durable Raft storage, used by the simulator and unit tests.
 * `save` is atomic, as one sqlite transaction is: a simulated crash loses a whole Ready or none of it.
 */
export class MemoryStorage implements RaftStorage, RaftLogWriter {
  private hardState: HardState = emptyHardState;
  /** entries[0] is the entry at index 1 (no compaction yet). */
  private log: Entry[] = [];

  constructor(private readonly voters: readonly NodeId[]) {}

  initialState(): { hardState: HardState; voters: readonly NodeId[] } {
    return { hardState: this.hardState, voters: this.voters };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
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

  term(index: number): number {
    if (index === 0) return 0;
    assert(index >= 1 && index <= this.lastIndex(), `term(${index}) out of range`);
    return (this.log[index - 1] as Entry).term;
  }

  firstIndex(): number {
    return 1;
  }

  lastIndex(): number {
    return this.log.length;
  }

  save(hardState: HardState | undefined, entries: readonly Entry[], _sync: boolean): void {
    const first = entries[0];
    if (first !== undefined) {
      assert(first.index >= 1 && first.index <= this.lastIndex() + 1, `save: gap before index ${first.index}`);
      this.log.length = first.index - 1; // a new leader overwrote a conflicting suffix
      for (const entry of entries) {
        assert(entry.index === this.log.length + 1, "save: entries not contiguous");
        this.log.push(entry);
      }
    }
    if (hardState !== undefined) this.hardState = hardState;
  }

  /** A copy holding exactly what was persisted: the state a node restarts from after a crash. */
  clone(): MemoryStorage {
    const copy = new MemoryStorage(this.voters);
    copy.hardState = this.hardState;
    copy.log = this.log.slice();
    return copy;
  }
}
