import { assert } from "../lib/assert.ts";
import type { Entry, HardState } from "../raft/types.ts";

/** One entry's data larger than this is a bug upstream: the HTTP layer bounds values far below it. */
export const entryDataBytesMax = 64 * 1024 * 1024;

/** What `checkSave` needs to know about the log as persisted before the save. */
export interface PersistedLogView {
  readonly hardState: HardState;
  readonly firstIndex: number;
  readonly lastIndex: number;
  /** Term at `index` for firstIndex-1 <= index <= lastIndex; term(0) is 0. */
  term(index: number): number;
}

/**
 * Asserts that a save keeps the Raft invariants a durable log must hold (Figure 2, §5.3, §5.4):
 * entries are contiguous and follow the log (a suffix may be overwritten, never a committed entry
 * with another term), terms never decrease along the log nor exceed the current term, the term
 * never decreases, a vote is never changed within a term, and commit never decreases nor passes
 * the last index. Any failure is a bug in the caller: it throws an AssertionError before writing.
 * Returns the last index the log will have after the save.
 */
export function checkSave(log: PersistedLogView, hardState: HardState | undefined, entries: readonly Entry[]): number {
  const next = hardState ?? log.hardState;
  if (hardState !== undefined) {
    const previous = log.hardState;
    assert(Number.isSafeInteger(next.term) && next.term >= previous.term, `save: term ${next.term} below ${previous.term}`);
    assert(Number.isSafeInteger(next.vote) && next.vote >= 0, `save: bad vote ${next.vote}`);
    assert(
      next.term > previous.term || previous.vote === 0 || next.vote === previous.vote,
      `save: vote changed from ${previous.vote} to ${next.vote} within term ${next.term}`,
    );
    assert(Number.isSafeInteger(next.commit) && next.commit >= previous.commit, `save: commit ${next.commit} below ${previous.commit}`);
  }

  let lastIndexAfter = log.lastIndex;
  const first = entries[0];
  if (first !== undefined) {
    assert(
      first.index >= log.firstIndex && first.index <= log.lastIndex + 1,
      `save: entries start at ${first.index}, outside [${log.firstIndex}, ${log.lastIndex + 1}]`,
    );
    let previousTerm = log.term(first.index - 1);
    for (let position = 0; position < entries.length; position++) {
      const entry = entries[position] as Entry;
      assert(entry.index === first.index + position, `save: entry ${entry.index} breaks contiguity after ${first.index + position - 1}`);
      assert(Number.isSafeInteger(entry.term) && entry.term >= 1, `save: entry ${entry.index} has bad term ${entry.term}`);
      assert(entry.term >= previousTerm, `save: entry ${entry.index} term ${entry.term} below the previous ${previousTerm}`);
      assert(entry.term <= next.term, `save: entry ${entry.index} term ${entry.term} beyond current term ${next.term}`);
      assert(entry.data.byteLength <= entryDataBytesMax, `save: entry ${entry.index} data of ${entry.data.byteLength} bytes`);
      // A committed entry is never overwritten with another term (Log Matching, §5.3; Leader Completeness, §5.4).
      if (entry.index <= log.lastIndex && entry.index <= log.hardState.commit) {
        assert(log.term(entry.index) === entry.term, `save: overwrites committed entry ${entry.index} with another term`);
      }
      previousTerm = entry.term;
    }
    lastIndexAfter = first.index + entries.length - 1;
  }
  // Invariant: commit <= lastIndex, on disk as in memory.
  assert(next.commit <= lastIndexAfter, `save: commit ${next.commit} beyond last index ${lastIndexAfter}`);
  return lastIndexAfter;
}
