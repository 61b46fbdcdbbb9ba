import { assert } from "../lib/assert.ts";

/**
 * Where the data of saved entries crosses from the node's thread to the storage thread
 * (threaded-storage.ts to storage-thread.ts): one SharedArrayBuffer both threads see, written by
 * the node's thread as a ring of regions, one per save, and read by the storage thread in place.
 *
 * Before it, each save's data was copied into a buffer of its own and transferred. Every such
 * buffer is memory the collector of each thread counts: at 16 KB values a node allocated ~30 MB/s
 * of them, about a fifth of what its loop allocates and nearly all the storage thread does, and
 * each thread's heap was collected (fully, most times) several times a second (BENCHMARKS.md,
 * seventeenth session). The ring is allocated once.
 *
 * A region's bytes are read by the storage thread when it writes the save, and again when it
 * applies the entries (its log tail keeps the entries saved and not yet applied as views into the
 * ring, and nothing applied: see storage-thread.ts). So a region is released once its save was
 * answered (`written`) and the applied index the thread confirmed reaches its last entry: by then
 * every read of it is done, and entries of it replaced before they were applied are never read
 * again (the tail drops them, and the indexes they had are applied with other data). Both are
 * needed: an apply answered after a save was posted may already cover that save's entries (a
 * save of entries the log holds, term for term, is allowed), while the save itself still waits
 * in the thread's queue. Regions are released oldest first; one whose
 * entries stay unapplied (a follower whose entries are not committed yet) holds back those after
 * it, and a save that finds no room takes a buffer of its own, as before.
 */
export class PackRing {
  readonly buffer: SharedArrayBuffer;
  private readonly bytes: Uint8Array;
  /** Regions in use, oldest first (from `first`). */
  private regions: Region[] = [];
  private first = 0;
  /** Regions from `first` on whose saves were answered: always the oldest ones (answers come in order). */
  private writtenCount = 0;
  private used = 0;

  constructor(readonly capacity: number) {
    assert(Number.isSafeInteger(capacity) && capacity > 0, `pack ring capacity ${capacity}`);
    this.buffer = new SharedArrayBuffer(capacity);
    this.bytes = new Uint8Array(this.buffer);
  }

  /**
   * Room for `length` bytes (more than 0) of a save whose last entry is `lastIndex`: a view to
   * write them into, in use until the save was answered (`written`) and `release` passes
   * `lastIndex`; undefined when there is none.
   */
  allocate(length: number, lastIndex: number): Uint8Array | undefined {
    assert(Number.isSafeInteger(length) && length > 0, `pack ring allocation of ${length} bytes`);
    const offset = this.placeFor(length);
    if (offset === undefined) return undefined;
    this.regions.push({ start: offset, end: offset + length, lastIndex });
    this.used += length;
    return this.bytes.subarray(offset, offset + length);
  }

  /** The save of the oldest region not yet written was answered (saves are answered in the order posted). */
  written(): void {
    assert(this.writtenCount < this.regions.length - this.first, "pack ring: a save answered with no region waiting for it");
    this.writtenCount++;
  }

  /** Releases, oldest first, the regions written whose last entry is at or below `applied`. */
  release(applied: number): void {
    while (this.writtenCount > 0) {
      const oldest = this.regions[this.first] as Region;
      if (oldest.lastIndex > applied) break;
      this.used -= oldest.end - oldest.start;
      this.first++;
      this.writtenCount--;
    }
    if (this.first === this.regions.length) {
      this.regions = [];
      this.first = 0;
    } else if (this.first * 2 >= this.regions.length) {
      this.regions = this.regions.slice(this.first);
      this.first = 0;
    }
  }

  /** Bytes of the regions in use. */
  usedBytes(): number {
    return this.used;
  }

  /** Regions in use. */
  regionCount(): number {
    return this.regions.length - this.first;
  }

  /**
   * Where `length` bytes fit after the newest region without reaching into the oldest one: right
   * after it, or from the ring's start when the end has no room (the end's rest is skipped until
   * the regions before it are released).
   */
  private placeFor(length: number): number | undefined {
    const oldest = this.regions[this.first];
    const newest = this.regions[this.regions.length - 1];
    if (oldest === undefined || newest === undefined) return length <= this.capacity ? 0 : undefined;
    if (newest.start >= oldest.start) {
      // Not wrapped: in use is [oldest.start, newest.end).
      if (this.capacity - newest.end >= length) return newest.end;
      return length <= oldest.start ? 0 : undefined;
    }
    // Wrapped: in use are [oldest.start, capacity) and [0, newest.end).
    return oldest.start - newest.end >= length ? newest.end : undefined;
  }
}

interface Region {
  readonly start: number;
  readonly end: number;
  readonly lastIndex: number;
}
