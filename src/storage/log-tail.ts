import { assert } from "../lib/assert.ts";
import type { Entry } from "../raft/types.ts";

/** Memory an entry costs beyond its data (the Entry and its Uint8Array), counted against the bound. */
export const entryMemoryBytes = 128;

/**
 * Entries a tail keeps at most (besides those pinned or held), whatever their bytes, by default:
 * about a second of small writes, far more than an apply or a follower just behind reads back. A
 * tail of 100 B entries bounded by bytes alone held ~120,000 of them, three objects each, and made
 * the leader's heap collect more often (BENCHMARKS.md, fourteenth session).
 */
export const logTailEntriesMaxDefault = 8192;

/**
 * The newest log entries saved, kept in memory up to `bytesMax` (their data plus
 * `entryMemoryBytes` each, so a tail of tiny entries is bounded too) and `entriesMax`: what a node reads back
 * soonest (entries applied once they commit, a turn or two after they were saved, and appends to a
 * follower just behind) is served from memory. Reading each entry back out of SQLite to apply it
 * was a fifth of a node's CPU at 256 KB values when the log was there (BENCHMARKS.md). The entries are the ones the
 * node saved, shared, not copies: nothing may change them.
 *
 * Invariant: `entries` are contiguous by index, and each is the log's entry at its index (a save
 * that replaces a suffix truncates here too; anything else that rewrites the log clears it).
 *
 * A pin (`pinFrom`) keeps every entry from an index on, whatever the bound: ThreadedStorage
 * (threaded-storage.ts) pins the entries it posted to its writer and that are not yet written,
 * since it does not yet know where they are on disk; what is pinned is bounded by what the node has
 * posted and not yet seen written.
 *
 * A softer hold (`keepFrom`) keeps entries from an index on past the bound too, but only up to
 * `keptBytesMax`: both storages keep the entries saved and not yet applied (or handed to apply),
 * which are read back soonest, so that a small bound does not evict exactly those first. Past
 * `keptBytesMax` the oldest go anyway (read back from disk if needed), except the next to apply
 * while what follows it fits the bound (so one entry larger than the bound stays until applied).
 */
export class LogTail {
  private entries: Entry[] = [];
  /** Position of the oldest kept entry in `entries` (evicted ones before it are dropped in batches). */
  private start = 0;
  private bytes = 0;
  /** Entries at or past this index are never evicted; undefined: none pinned. */
  private pinnedFrom: number | undefined;
  /** Entries at or past this index are evicted only past `keptBytesMax`; undefined: none held. */
  private keptFrom: number | undefined;

  constructor(
    private readonly bytesMax: number,
    private readonly keptBytesMax = bytesMax,
    private readonly entriesMax = logTailEntriesMaxDefault,
  ) {
    assert(Number.isSafeInteger(entriesMax) && entriesMax >= 0, `log tail entriesMax ${entriesMax}`);
    assert(Number.isSafeInteger(bytesMax) && bytesMax >= 0, `log tail bytesMax ${bytesMax}`);
    assert(Number.isSafeInteger(keptBytesMax) && keptBytesMax >= bytesMax, `log tail keptBytesMax ${keptBytesMax} (bytesMax ${bytesMax})`);
  }

  /** Entries just saved (written to the log): from the first one's index on, they replace what was kept. */
  saved(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    const firstKept = this.firstIndex();
    const next = this.nextIndex();
    if (firstKept === undefined || first.index > next || first.index < firstKept) {
      this.clear();
    } else if (first.index < next) {
      // A new leader's entries replace a conflicting suffix.
      const keep = this.start + (first.index - firstKept);
      for (let i = keep; i < this.entries.length; i++) this.bytes -= costOf(this.entries[i] as Entry);
      this.entries.length = keep;
    }
    for (const entry of entries) {
      this.entries.push(entry);
      this.bytes += costOf(entry);
    }
    this.evict();
  }

  /**
   * Entries in [lo, hi) if the tail holds `lo`, at most `maxBytes` of data but at least one (as
   * `RaftStorage.entries`); undefined when it does not hold `lo`. May end before `hi` where the
   * tail ends.
   */
  slice(lo: number, hi: number, maxBytes: number): Entry[] | undefined {
    const firstKept = this.firstIndex();
    if (firstKept === undefined || lo < firstKept || lo >= this.nextIndex() || lo >= hi) return undefined;
    const result: Entry[] = [];
    let bytes = 0;
    for (let i = this.start + (lo - firstKept); i < this.entries.length && result.length < hi - lo; i++) {
      const entry = this.entries[i] as Entry;
      if (result.length > 0 && bytes + entry.data.byteLength > maxBytes) break;
      bytes += entry.data.byteLength;
      result.push(entry);
    }
    return result;
  }

  /**
   * Keeps every entry from `index` on however many bytes they take (undefined: none), and evicts
   * what the previous pin held past the bound.
   */
  pinFrom(index: number | undefined): void {
    assert(index === undefined || (Number.isSafeInteger(index) && index >= 1), `log tail pin ${index}`);
    this.pinnedFrom = index;
    this.evict();
  }

  /** Keeps entries from `index` on past the bound, up to `keptBytesMax` (undefined: none); see the notes above. */
  keepFrom(index: number | undefined): void {
    assert(index === undefined || (Number.isSafeInteger(index) && index >= 1), `log tail keep ${index}`);
    this.keptFrom = index;
    this.evict();
  }

  /** Forgets every entry (a snapshot installed, the log rewritten). */
  clear(): void {
    this.entries = [];
    this.start = 0;
    this.bytes = 0;
  }

  /** The index of the oldest entry kept; undefined when none is. */
  firstKeptIndex(): number | undefined {
    return this.firstIndex();
  }

  /** Bytes counted for the entries kept (data plus overhead). */
  keptBytes(): number {
    return this.bytes;
  }

  private firstIndex(): number | undefined {
    return this.entries[this.start]?.index;
  }

  private nextIndex(): number {
    const last = this.entries[this.entries.length - 1];
    return last === undefined ? 0 : last.index + 1;
  }

  private evict(): void {
    while ((this.bytes > this.bytesMax || this.entries.length - this.start > this.entriesMax) && this.start < this.entries.length) {
      const oldest = this.entries[this.start] as Entry;
      if (this.pinnedFrom !== undefined && oldest.index >= this.pinnedFrom) break;
      // Held until applied: past keptBytesMax the oldest go, except the next to apply while what
      // follows it fits the bound. One entry larger than the bound (a value of several MiB) was
      // evicted as soon as it was saved, and read back from disk on the loop's thread to be
      // applied: 130 ms for 16 MiB (BENCHMARKS.md).
      if (this.keptFrom !== undefined && oldest.index >= this.keptFrom) {
        if (this.bytes <= this.keptBytesMax) break;
        if (oldest.index === this.keptFrom && this.bytes - costOf(oldest) <= this.keptBytesMax) break;
      }
      this.bytes -= costOf(oldest);
      this.start++;
    }
    // Drop evicted slots once they are half the array, so memory stays bounded by what is kept.
    if (this.start > 0 && this.start * 2 >= this.entries.length) {
      this.entries = this.entries.slice(this.start);
      this.start = 0;
    }
  }
}

function costOf(entry: Entry): number {
  return entry.data.byteLength + entryMemoryBytes;
}
