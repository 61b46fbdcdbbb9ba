import { assert } from "../lib/assert.ts";

/** One run of consecutive log entries sharing a term. */
export interface TermRun {
  readonly startIndex: number;
  readonly term: number;
}

/**
 * The terms of the newest log entries, kept as runs (one per term, since terms never decrease along
 * the log), so `term(i)` near the end of the log costs no disk read and the cache stays tiny: a
 * run is 2 numbers however many entries it spans. At most `runsMax` runs are kept; older indexes
 * fall out of the cache and are read from disk. Covers [coveredFromIndex(), lastIndex].
 */
export class TermCache {
  private runs: TermRun[] = [];
  private lastIndex = 0;
  /** Lowest index whose term the cache holds; lastIndex + 1 when it holds none. */
  private coveredFrom = 1;

  constructor(private readonly runsMax: number) {
    assert(Number.isSafeInteger(runsMax) && runsMax >= 1, `term cache: runsMax ${runsMax}`);
  }

  /** Replaces the content: `runs` cover [runs[0].startIndex, lastIndex] (none: only lastIndex is known). */
  reset(runs: readonly TermRun[], lastIndex: number): void {
    const kept = runs.slice(Math.max(0, runs.length - this.runsMax));
    for (let position = 1; position < kept.length; position++) {
      const previous = kept[position - 1] as TermRun;
      const run = kept[position] as TermRun;
      assert(run.startIndex > previous.startIndex && run.term > previous.term, "term cache: runs out of order");
    }
    const last = kept[kept.length - 1];
    assert(last === undefined || last.startIndex <= lastIndex, "term cache: run past the last index");
    this.runs = kept;
    this.lastIndex = lastIndex;
    this.coveredFrom = kept[0]?.startIndex ?? lastIndex + 1;
  }

  /** The runs held, oldest first (a copy). */
  runsHeld(): TermRun[] {
    return [...this.runs];
  }

  /** The lowest index the cache answers for. */
  coveredFromIndex(): number {
    return this.coveredFrom;
  }

  /** The term at `index`, or undefined when it is not cached (older than the cache, or past the end). */
  term(index: number): number | undefined {
    if (index < this.coveredFrom || index > this.lastIndex) return undefined;
    // Nearly every lookup is in the newest run; otherwise binary search for the last run starting <= index.
    const newest = this.runs[this.runs.length - 1] as TermRun;
    if (index >= newest.startIndex) return newest.term;
    let low = 0;
    let high = this.runs.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >>> 1;
      if ((this.runs[middle] as TermRun).startIndex <= index) low = middle;
      else high = middle - 1;
    }
    return (this.runs[low] as TermRun).term;
  }

  /** Drops every index >= `index` (a suffix was overwritten). */
  truncateFrom(index: number): void {
    assert(index >= 1 && index <= this.lastIndex + 1, `term cache: truncate from ${index}`);
    while (this.runs.length > 0 && (this.runs[this.runs.length - 1] as TermRun).startIndex >= index) this.runs.pop();
    this.lastIndex = index - 1;
    if (this.runs.length === 0) this.coveredFrom = index;
  }

  /** Records the term of the entry at lastIndex + 1. */
  append(index: number, term: number): void {
    assert(index === this.lastIndex + 1, `term cache: append ${index} after ${this.lastIndex}`);
    const newest = this.runs[this.runs.length - 1];
    this.lastIndex = index;
    if (newest !== undefined && newest.term === term) return;
    assert(newest === undefined || term > newest.term, `term cache: term ${term} after ${newest?.term}`);
    this.runs.push({ startIndex: index, term });
    if (this.runs.length > this.runsMax) {
      this.runs.shift(); // O(runsMax), once per new term: rare.
      this.coveredFrom = (this.runs[0] as TermRun).startIndex;
    }
    if (this.runs.length === 1) this.coveredFrom = index;
  }
}
