/**
 * The Raft log and hard state as records appended to segment files, the shape etcd's WAL has:
 * `SqliteStorage` keeps its log here since schema 5 (BENCHMARKS.md, fifteenth session: with no
 * entry data written to SQLite a 16 KB write cost 28% less CPU, and the cluster did 39% more
 * writes/s at half the p99). `SegmentReader` (at the end) reads it from another thread.
 *
 * A directory holds segments `seg-<sequence, 16 hex digits>.log`. Each is a run of records:
 *
 *     crc u32 | payload bytes u32 | kind u8 | payload
 *
 * little-endian, the CRC-32 over everything after itself. Kinds: a segment header (first in every
 * segment: magic, its sequence, and the index and term a reset started the log after, 0 if none),
 * an entry (index, term, type, data) and a hard state (term, vote, commit). A save is one writev of
 * its entries' records and then its hard state's (data over 4 KiB from the entry's own buffer, the
 * rest copied into one): appended, never rewritten in place.
 *
 * Replay (`open`) reads the segments in sequence order and rebuilds what the appends made:
 * - an entry at index i truncates the log to i - 1 first (a new leader overwrote a suffix), so a
 *   later record always wins over an earlier one at the same or a higher index;
 * - the last hard state read is the hard state;
 * - a header with a reset empties the log: it starts after the reset's index (once a record after
 *   the header is read: a segment holding its header alone is dropped, its reset with it).
 *
 * Torn writes. `sync` fdatasyncs every segment written since the last one (and the directory when
 * segments were deleted since): what was appended before a sync began is durable once it resolves. A
 * crash can leave anything after that point half written, or written with holes (the kernel writes
 * dirty pages back in any order). So in the last segment, the first record that is incomplete or
 * fails its checksum ends the log: it and everything after it are cut off (the file is truncated
 * there), being past every completed sync, provided it reads as torn: cut short by the end of the
 * file, or with a sector's worth of it zeros (pages never written back; see `tornRecord`). Any
 * other bad record is corruption: `open` throws `StorageError` `corrupt`.
 *
 * A new segment is started (when a save would take the current one past `segmentBytesMax`) only
 * after the current one is fdatasynced (whatever a sync still running covers), and its header and
 * hard state are fdatasynced (with the directory) before it becomes the current one: only the last
 * segment can hold records that are not durable, and every segment starts with a hard state no
 * older than any before it. A last segment found holding no more than its header at open was
 * being started when the machine died: it is dropped.
 *
 * After an fsync fails (a retried one may report success for pages it lost), or a failed write
 * cannot be cut off, the log refuses all further use: the node stops.
 *
 * Compaction (`compact`) deletes whole segments, oldest first: segment s goes once a later
 * segment's first entry record (in file order) is at or below index + 1 and durable, because every
 * record in s at or above that entry is superseded by it and every one below it is at or below the
 * compacted index. The caller compacts only entries it applied, which were durable. A reset
 * (`reset`, for an installed snapshot) starts a new segment whose header carries the reset; the
 * older segments are deleted.
 *
 * A save is not atomic across a power loss: the replay may keep a prefix of its records (entries
 * in order, then the hard state), as etcd's WAL may. Its entries precede its hard state, so a commit
 * index read back never points past the entries read back; the node acknowledges nothing before
 * the sync that covers the whole save.
 *
 * Not thread-safe: one owner calls everything; `sync` runs its fdatasyncs on Bun's thread pool.
 */
import * as nodeFs from "node:fs";
import { join } from "node:path";
import { assert } from "../lib/assert.ts";
import { NotDiskFullError } from "../lib/disk-full.ts";
import { getUint53, setUint53 } from "../lib/uint53.ts";
import { type Entry, EntryType, type HardState } from "../raft/types.ts";
import { StorageError } from "./kv-storage.ts";

/** The file operations the log uses: node:fs's, unless a test passes its own to hold or fail some. */
export type SegmentFiles = Pick<
  typeof nodeFs,
  "closeSync" | "fdatasync" | "fdatasyncSync" | "fstatSync" | "fsyncSync" | "ftruncateSync" | "mkdirSync" | "openSync" | "readdirSync" | "readSync" | "unlinkSync" | "writeSync" | "writevSync"
>;

/** Options of `SegmentLog.open`. */
export interface SegmentLogOptions {
  /** A save that would take a segment past this many bytes starts a new one (a save is never split). Default 64 MiB. */
  readonly segmentBytesMax?: number;
  /** For tests: the file operations to use instead of node:fs's. */
  readonly files?: Partial<SegmentFiles>;
  /**
   * Bytes of a segment that a completed sync had made durable, as recorded elsewhere (kv.db's meta,
   * in each transaction that applies entries: see `durableMark`). The replay refuses a bad record
   * below that point as damage, where it would otherwise read a zeroed sector as a torn write.
   */
  readonly durable?: DurableMark;
}

/**
 * A segment's sequence and how many of its first bytes a completed sync had made durable. A
 * record there was on disk whole, so finding it bad later is damage, never a torn write: the
 * zeroed-sector rule of `tornRecord` cannot tell a value holding a sector of zeros, damaged
 * elsewhere, from a write the crash tore, and cut such a record and every one after it, fsynced
 * votes and acknowledged entries with them (found in review). `bytes` 0: nothing recorded.
 */
export interface DurableMark {
  readonly segment: number;
  readonly bytes: number;
}

/** A torn last record cut off at open: in which segment, from which byte, how many bytes, and the index of the entry it began (when it reads as one). */
export interface TornCut {
  readonly segment: string;
  readonly atByte: number;
  readonly bytesCut: number;
  readonly entryIndex: number | undefined;
}

/**
 * The entry just before the log's first, when known: where a reset started it (what a segment
 * header records beyond its sequence), or where it was compacted to. Index 0: not known.
 */
interface LogFloor {
  readonly index: number;
  readonly term: number;
}

const segmentBytesMaxDefault = 64 << 20;
/** An entry's data up to this many bytes is copied into its save's buffer; larger data is written from where it is. */
const inlineDataBytesMax = 4096;
/** Parts per writev (Linux's IOV_MAX). */
const iovecsMax = 1024;
const recordHeaderBytes = 9;
const magic = new TextEncoder().encode("kvseglog");
const formatVersion = 1;
const headerPayloadBytes = magic.byteLength + 4 + 8 + 8 + 8;
const entryFixedBytes = 8 + 8 + 1;
const hardStatePayloadBytes = 24;
/** Larger than any record a save writes: a length past it is damage, not an entry. */
const recordPayloadBytesMax = 1 << 30;

const enum RecordKind {
  SegmentHeader = 1,
  Entry = 2,
  HardState = 3,
}

/** One segment file: its sequence, descriptor and where the next record goes. */
interface Segment {
  readonly sequence: number;
  readonly path: string;
  readonly fd: number;
  /** Bytes of valid records: where the next one is written. */
  end: number;
  /** Index of the first entry record written to it (in file order); undefined while it holds none. */
  firstEntryIndex: number | undefined;
  /** Where that record ends. */
  firstEntryEnd: number;
  /** Bytes known durable: covered by a completed sync (or read back and fsynced at open). */
  syncedEnd: number;
}

/**
 * Where entries [first, first + count) are, as they cross threads (see `SegmentReader`): per
 * entry its segment's sequence, its record's offset and length, and its term.
 */
export interface LogPositions {
  readonly first: number;
  readonly segments: Float64Array;
  readonly offsets: Float64Array;
  readonly lengths: Uint32Array;
  readonly terms: Float64Array;
}

/** Where an append's records went: its segment's sequence and the offset of its first entry record. */
export interface AppendPlace {
  readonly segment: number;
  readonly offset: number;
}

/**
 * Where each entry of the log is, by index: its segment, the offset and length of its record, and
 * its term. Columns in typed arrays (no object per entry), from `first` on.
 */
class EntryPositions {
  first = 0;
  count = 0;
  private segments = new Float64Array(64);
  private offsets = new Float64Array(64);
  private lengths = new Uint32Array(64);
  private terms = new Float64Array(64);
  /** Slots before `first` still in the arrays (dropped by `dropBefore`, reclaimed when they are half). */
  private skipped = 0;

  last(): number {
    return this.first + this.count - 1;
  }

  has(index: number): boolean {
    return this.count > 0 && index >= this.first && index <= this.last();
  }

  slot(index: number): number {
    assert(this.has(index), `entry ${index} not in the log (${this.first}..${this.last()})`);
    return this.skipped + index - this.first;
  }

  segmentOf(index: number): number {
    return this.segments[this.slot(index)] as number;
  }

  offsetOf(index: number): number {
    return this.offsets[this.slot(index)] as number;
  }

  lengthOf(index: number): number {
    return this.lengths[this.slot(index)] as number;
  }

  termOf(index: number): number {
    return this.terms[this.slot(index)] as number;
  }

  /** Keeps the entries up to `index` (none when it is below the first). */
  truncateAfter(index: number): void {
    if (this.count === 0) return;
    this.count = Math.max(0, Math.min(this.count, index - this.first + 1));
  }

  clear(): void {
    this.count = 0;
    this.skipped = 0;
  }

  push(index: number, segment: number, offset: number, length: number, term: number): void {
    if (this.count === 0) {
      this.first = index;
      this.skipped = 0;
    }
    assert(index === this.first + this.count, `entry ${index} does not follow ${this.last()}`);
    if (this.skipped + this.count === this.offsets.length) this.grow();
    const at = this.skipped + this.count;
    this.segments[at] = segment;
    this.offsets[at] = offset;
    this.lengths[at] = length;
    this.terms[at] = term;
    this.count++;
  }

  /** Entries [lo, hi) (all held), copied out. */
  export(lo: number, hi: number): LogPositions {
    if (lo >= hi) return { first: lo, segments: new Float64Array(0), offsets: new Float64Array(0), lengths: new Uint32Array(0), terms: new Float64Array(0) };
    const from = this.slot(lo);
    const to = this.slot(hi - 1) + 1;
    return {
      first: lo,
      segments: this.segments.slice(from, to),
      offsets: this.offsets.slice(from, to),
      lengths: this.lengths.slice(from, to),
      terms: this.terms.slice(from, to),
    };
  }

  /** Appends what `export` gave (the first at most one past the last held: entries from it on are replaced). */
  import(positions: LogPositions): void {
    if (positions.lengths.length === 0) return;
    this.truncateAfter(positions.first - 1);
    for (let at = 0; at < positions.lengths.length; at++) {
      this.push(positions.first + at, positions.segments[at] as number, positions.offsets[at] as number, positions.lengths[at] as number, positions.terms[at] as number);
    }
  }

  /**
   * The segment of the first entry held (undefined when none is): the lowest any is in, since a
   * later index is always in the same segment or a later one (an overwrite replaces every entry
   * after it too).
   */
  lowestSegment(): number | undefined {
    return this.count === 0 ? undefined : (this.segments[this.skipped] as number);
  }

  /** Forgets the entries before `index`. */
  dropBefore(index: number): void {
    if (this.count === 0 || index <= this.first) return;
    const dropped = Math.min(this.count, index - this.first);
    this.first += dropped;
    this.count -= dropped;
    this.skipped += dropped;
    if (this.count === 0) this.skipped = 0;
  }

  private grow(): void {
    // Reclaim the dropped slots first; double only when the live ones fill over half.
    const capacity = this.count * 2 > this.offsets.length ? this.offsets.length * 2 : this.offsets.length;
    const from = this.skipped;
    const to = this.skipped + this.count;
    const move = <T extends Float64Array | Uint32Array>(old: T, make: (n: number) => T): T => {
      const next = make(capacity);
      next.set(old.subarray(from, to));
      return next;
    };
    this.segments = move(this.segments, (n) => new Float64Array(n));
    this.offsets = move(this.offsets, (n) => new Float64Array(n));
    this.lengths = move(this.lengths, (n) => new Uint32Array(n));
    this.terms = move(this.terms, (n) => new Float64Array(n));
    this.skipped = 0;
  }
}

function segmentName(sequence: number): string {
  return `seg-${sequence.toString(16).padStart(16, "0")}.log`;
}

const segmentNamePattern = /^seg-([0-9a-f]{16})\.log$/;

/** Bytes of an entry's record. */
function entryRecordBytes(entry: Entry): number {
  return recordHeaderBytes + entryFixedBytes + entry.data.byteLength;
}

/** Writes a hard state's record into `view` at `offset`: `recordHeaderBytes + hardStatePayloadBytes` bytes. */
function writeHardStateRecord(bytes: Uint8Array, view: DataView, offset: number, hardState: HardState): void {
  setUint53(view, offset + recordHeaderBytes, hardState.term);
  setUint53(view, offset + recordHeaderBytes + 8, hardState.vote);
  setUint53(view, offset + recordHeaderBytes + 16, hardState.commit);
  sealRecord(bytes, view, offset, RecordKind.HardState, hardStatePayloadBytes);
}

/** Writes one record's header (the CRC last, over the rest) into `view` at `offset`. */
function sealRecord(bytes: Uint8Array, view: DataView, offset: number, kind: RecordKind, payloadBytes: number): void {
  view.setUint32(offset + 4, payloadBytes, true);
  view.setUint8(offset + 8, kind);
  view.setUint32(offset, Bun.hash.crc32(bytes.subarray(offset + 4, offset + recordHeaderBytes + payloadBytes)) >>> 0, true);
}

/** See the file comment. */
export class SegmentLog {
  private readonly segments: Segment[] = [];
  private readonly positions = new EntryPositions();
  private hardStateValue: HardState | undefined;
  private floor: LogFloor = { index: 0, term: 0 };
  /** Descriptors written since the last `sync` began, and whether the directory changed. */
  private unsynced = new Set<number>();
  private directoryChanged = false;
  private syncsRunning = 0;
  /** Settles once every sync begun so far has (never rejects): a later sync waits for it. */
  private syncsBegun: Promise<void> = Promise.resolve();
  /** Descriptors of deleted segments, closed once no fdatasync uses them. */
  private retired: number[] = [];
  private closed = false;
  /**
   * An fsync that failed, or a failed write that could not be cut off: the log refuses all use
   * after it (a retried fsync may report success for data that never reached the disk).
   */
  private broken: Error | undefined;
  /** What the replay cut off as a torn last record, if anything (see `tornCut`). */
  private tornCutValue: TornCut | undefined;

  private constructor(
    readonly dir: string,
    private readonly segmentBytesMax: number,
    private readonly fs: SegmentFiles,
    private readonly durableAtOpen: DurableMark | undefined,
  ) {}

  /** Opens (creating if need be) the log in `dir` and replays it; see the file comment. */
  static open(dir: string, options: SegmentLogOptions = {}): SegmentLog {
    const segmentBytesMax = options.segmentBytesMax ?? segmentBytesMaxDefault;
    assert(Number.isSafeInteger(segmentBytesMax) && segmentBytesMax >= 1024, `segmentBytesMax ${segmentBytesMax}`);
    const fs: SegmentFiles = { ...nodeFs, ...options.files };
    fs.mkdirSync(dir, { recursive: true });
    const durable = options.durable;
    assert(durable === undefined || (Number.isSafeInteger(durable.segment) && durable.segment >= 0 && Number.isSafeInteger(durable.bytes) && durable.bytes >= 0), `durable mark ${JSON.stringify(durable)}`);
    const log = new SegmentLog(dir, segmentBytesMax, fs, durable);
    try {
      log.replay();
    } catch (error) {
      log.close();
      throw error;
    }
    return log;
  }

  /**
   * The torn record the replay cut off the last segment, if any: never durable (see the file
   * comment), so nothing acknowledged. Reported at start so an operator learns of it (a zeroed
   * sector that is real damage reads the same way).
   */
  tornCut(): TornCut | undefined {
    return this.tornCutValue;
  }

  /**
   * The last segment and how many of its bytes completed syncs have made durable: recorded with
   * the state machine (src/storage/sqlite-storage.ts), it is given back to `open` as
   * `SegmentLogOptions.durable`. Every segment before the last is durable whole (see `roll`).
   */
  durableMark(): DurableMark {
    const last = this.segments[this.segments.length - 1];
    return last === undefined ? { segment: 0, bytes: 0 } : { segment: last.sequence, bytes: last.syncedEnd };
  }

  /** The hard state last appended; undefined when none ever was. */
  hardState(): HardState | undefined {
    return this.hardStateValue;
  }

  /** The entry just before the first held (or the next appended, when none is): index 0 when not known. */
  logFloor(): LogFloor {
    return this.floor;
  }

  /** Index of the first entry held; undefined when the log holds none. */
  firstIndex(): number | undefined {
    return this.positions.count === 0 ? undefined : this.positions.first;
  }

  /** Index of the last entry held; undefined when the log holds none. */
  lastIndex(): number | undefined {
    return this.positions.count === 0 ? undefined : this.positions.last();
  }

  /** Term of the entry at `index`, or undefined when the log does not hold it (the floor's term at its index). */
  term(index: number): number | undefined {
    if (this.positions.has(index)) return this.positions.termOf(index);
    if (index === this.floor.index) return this.floor.term;
    return undefined;
  }

  /**
   * Appends `entries` (contiguous; the first at most one past the last held, at least the first
   * held: entries from it on are replaced) and then `hardState`, in one writev. Durable once a
   * `sync` begun after it resolves. Throws what the write throws (ENOSPC, ...), having appended
   * nothing the log will read back. Returns where its entries went (undefined when it had none).
   */
  append(entries: readonly Entry[], hardState?: HardState): AppendPlace | undefined {
    this.assertOpen();
    if (entries.length === 0 && hardState === undefined) return undefined;
    const first = entries[0];
    if (first !== undefined) {
      const held = this.positions.count > 0;
      const lowest = held ? this.positions.first : this.floor.index + 1;
      const highest = held ? this.positions.last() + 1 : this.floor.index + 1;
      assert(
        (!held && this.floor.index === 0) || (first.index >= lowest && first.index <= highest),
        `append at ${first.index}: the log holds ${held ? `${this.positions.first}..${this.positions.last()}` : `nothing after ${this.floor.index}`}`,
      );
      entries.forEach((entry, position) => assert(entry.index === first.index + position, `append: entry ${entry.index} breaks contiguity`));
    }
    let bytes = 0;
    for (const entry of entries) bytes += entryRecordBytes(entry);
    if (hardState !== undefined) bytes += recordHeaderBytes + hardStatePayloadBytes;
    let segment = this.current();
    if (segment.end + bytes > this.segmentBytesMax && segment.end > recordHeaderBytes + headerPayloadBytes + recordHeaderBytes + hardStatePayloadBytes) {
      segment = this.roll(this.floor.index === 0 || this.positions.count > 0 ? undefined : this.floor, this.hardStateValue);
    }
    // Headers, and data up to `inlineDataBytesMax`, are copied into one buffer; larger data is
    // written from the entry's own buffer (one writev), not copied again.
    let copiedBytes = hardState === undefined ? 0 : recordHeaderBytes + hardStatePayloadBytes;
    for (const entry of entries) copiedBytes += recordHeaderBytes + entryFixedBytes + (entry.data.byteLength <= inlineDataBytesMax ? entry.data.byteLength : 0);
    const buffer = Buffer.allocUnsafe(copiedBytes);
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    const parts: Uint8Array[] = [];
    const offsets: number[] = [];
    let offset = 0;
    let at = 0;
    let partStart = 0;
    for (const entry of entries) {
      offsets.push(offset);
      const payloadBytes = entryFixedBytes + entry.data.byteLength;
      view.setUint32(at + 4, payloadBytes, true);
      view.setUint8(at + 8, RecordKind.Entry);
      setUint53(view, at + recordHeaderBytes, entry.index);
      setUint53(view, at + recordHeaderBytes + 8, entry.term);
      view.setUint8(at + recordHeaderBytes + 16, entry.type);
      const fixedEnd = at + recordHeaderBytes + entryFixedBytes;
      view.setUint32(at, Bun.hash.crc32(entry.data, Bun.hash.crc32(buffer.subarray(at + 4, fixedEnd))) >>> 0, true);
      if (entry.data.byteLength <= inlineDataBytesMax) {
        buffer.set(entry.data, fixedEnd);
        at = fixedEnd + entry.data.byteLength;
      } else {
        parts.push(buffer.subarray(partStart, fixedEnd), entry.data);
        at = partStart = fixedEnd;
      }
      offset += entryRecordBytes(entry);
    }
    if (hardState !== undefined) {
      writeHardStateRecord(buffer, view, at, hardState);
      at += recordHeaderBytes + hardStatePayloadBytes;
    }
    if (at > partStart) parts.push(buffer.subarray(partStart, at));
    try {
      this.writePartsAt(segment, parts, segment.end);
    } catch (error) {
      // Leave no complete record of a save that failed (the next append writes here). If that
      // fails too, whole records of it may stay past the end, where a shorter append would leave
      // them to be read back: nothing more may be written.
      this.durably(() => this.fs.ftruncateSync(segment.fd, segment.end), error);
    }
    // Written: now memory may follow the file.
    entries.forEach((entry, position) => {
      const recordStart = segment.end + (offsets[position] as number);
      if (position === 0) {
        this.positions.truncateAfter(entry.index - 1);
        if (segment.firstEntryIndex === undefined) {
          segment.firstEntryIndex = entry.index;
          segment.firstEntryEnd = recordStart + entryRecordBytes(entry);
        }
      }
      this.positions.push(entry.index, segment.sequence, recordStart, entryRecordBytes(entry), entry.term);
    });
    if (hardState !== undefined) this.hardStateValue = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
    const place = first === undefined ? undefined : { segment: segment.sequence, offset: segment.end };
    segment.end += bytes;
    return place;
  }

  /** Where entries [lo, hi) are (all held), for a `SegmentReader` on another thread. */
  positionsOf(lo: number, hi: number): LogPositions {
    this.assertOpen();
    return this.positions.export(lo, hi);
  }

  /**
   * Entries in [lo, hi), read back and verified: at most `maxBytes` of data, but at least one when
   * lo < hi. Every index must be held (`firstIndex()..lastIndex()`).
   */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
    return readEntries(this.positions, lo, hi, maxBytes, (sequence, position, length, records) => {
      const segment = this.segmentBySequence(sequence);
      this.recordsRead += records;
      return { bytes: readFully(this.fs, segment.fd, position, length), path: segment.path };
    });
  }

  /** Entry records read from the segments by `entries` since open (a run read whole counts all of it). */
  recordsRead = 0;

  /**
   * Makes every append before this call durable: fdatasyncs each segment written since the last
   * sync began (on Bun's thread pool), and fsyncs the directory first (on the caller's thread)
   * when segments were deleted since (a new segment fsyncs it as it starts). Resolves only after
   * every sync begun before it: those cover the appends written before they began (found in
   * review: a second sync with nothing new to write resolved while the first one's fdatasync ran).
   */
  sync(): Promise<void> {
    try {
      this.assertOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    const fds = [...this.unsynced];
    this.unsynced = new Set();
    const covered = this.segments.filter((segment) => fds.includes(segment.fd)).map((segment) => ({ segment, end: segment.end }));
    try {
      if (this.directoryChanged) this.durably(() => this.fsyncDirectory());
    } catch (error) {
      return Promise.reject(error);
    }
    this.syncsRunning++;
    // A segment written before this call that it does not fdatasync itself, and that is not yet
    // known durable, is in the hands of an earlier sync still running: this one waits for those.
    const earlier = this.segments.some((segment) => !fds.includes(segment.fd) && segment.syncedEnd < segment.end) ? this.syncsBegun : undefined;
    // Settled, every one of them, before the descriptors may be closed (see closeRetiredWhenIdle).
    // (One at most today: a roll fdatasyncs the segment it leaves.)
    const own = Promise.allSettled(
      fds.map(
        (fd) =>
          new Promise<void>((resolve, reject) => {
            this.fs.fdatasync(fd, (error) => (error === null ? resolve() : reject(error)));
          }),
      ),
    ).then((outcomes) => {
      this.syncEnded();
      const failed = outcomes.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
      if (failed !== undefined) {
        const error: unknown = failed.reason;
        this.broken ??= error instanceof Error ? error : new Error(String(error));
        throw this.unusable();
      }
      // An earlier sync failed meanwhile: a later fdatasync of the same file may report success for
      // pages the kernel dropped (it reports a write-back error once; found in review).
      if (this.broken !== undefined) throw this.unusable();
      // A segment deleted from under the node (its data dir's log removed by hand) syncs into a file
      // no name reaches: what it holds is gone at the next start. Acknowledged all the same before
      // (found in a black-box review: a single node answered 200 for writes a restart did not have).
      const deleted = covered.find(({ segment }) => !this.closed && this.fs.fstatSync(segment.fd).nlink === 0);
      if (deleted !== undefined) {
        this.broken ??= new Error(`its segment ${deleted.segment.path} was deleted while the node ran: what was written to it is gone from the data dir`);
        throw this.unusable();
      }
      for (const { segment, end } of covered) segment.syncedEnd = Math.max(segment.syncedEnd, end);
    });
    const whole =
      earlier === undefined
        ? own
        : Promise.allSettled([earlier, own]).then(([, outcome]) => {
            if (outcome.status === "rejected") throw outcome.reason;
            // An earlier one failed: what it was to make durable may not be (the log is broken).
            if (this.broken !== undefined) throw this.unusable();
          });
    this.syncsBegun = Promise.allSettled([this.syncsBegun, whole]).then(() => undefined);
    return whole;
  }

  /** As `sync`, on this thread: every append before it is durable when it returns. */
  syncNow(): void {
    this.assertOpen();
    if (this.directoryChanged) this.durably(() => this.fsyncDirectory());
    for (const segment of this.segments) {
      if (!this.unsynced.has(segment.fd)) continue;
      this.durably(() => this.fs.fdatasyncSync(segment.fd));
      this.unsynced.delete(segment.fd);
      segment.syncedEnd = segment.end;
    }
  }

  /**
   * Deletes the segments holding only entries at or below `index` (see the file comment), and
   * forgets those entries. Never the segment being written.
   */
  compact(index: number): void {
    this.assertOpen();
    const term = this.term(index);
    if (term !== undefined && index >= this.floor.index) this.floor = { index, term };
    this.positions.dropBefore(index + 1);
    while (this.segments.length > 1) {
      // A later segment that starts at or below index + 1, with that first record durable: it and
      // what follows supersede everything in the first segment above the compacted index, and a
      // power loss cannot take that record back.
      const superseding = this.segments
        .slice(1)
        .some((segment) => segment.firstEntryIndex !== undefined && segment.firstEntryIndex <= index + 1 && segment.syncedEnd >= segment.firstEntryEnd);
      if (!superseding) return;
      this.deleteSegment(this.segments[0] as Segment);
    }
  }

  /**
   * Empties the log: it starts after `index` (of `term`), as after a snapshot is installed. A new
   * segment records the reset (with `hardState`), durable when this returns (it is fdatasynced with
   * the directory as it starts); the older ones are deleted (a crash that leaves some of them
   * behind replays them before the reset, which empties the log again).
   */
  reset(index: number, term: number, hardState: HardState): void {
    this.assertOpen();
    assert(Number.isSafeInteger(index) && index >= 1 && Number.isSafeInteger(term) && term >= 1, `reset to ${index} of term ${term}`);
    const mark = { index, term };
    // Durable before the old segments go (see roll): a crash leaves either the old log or the reset one.
    this.roll(mark, hardState);
    this.hardStateValue = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
    this.floor = mark;
    this.positions.clear();
    while (this.segments.length > 1) this.deleteSegment(this.segments[0] as Segment);
  }

  /** Segment files on disk, oldest first (for tests). */
  segmentFiles(): string[] {
    return this.segments.map((segment) => segment.path);
  }

  /** Closes every descriptor (after the fdatasyncs running finish). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const segment of this.segments) this.retired.push(segment.fd);
    this.segments.length = 0;
    this.closeRetiredWhenIdle();
  }

  // --- replay ---

  private replay(): void {
    const sequences = this.fs.readdirSync(this.dir)
      .map((name) => segmentNamePattern.exec(name))
      .filter((match): match is RegExpExecArray => match !== null)
      .map((match) => Number.parseInt(match[1] as string, 16))
      .sort((a, b) => a - b);
    sequences.forEach((sequence, position) => this.replaySegment(sequence, position === sequences.length - 1));
    // Before anything is dropped below: a segment cut short of its durable bytes stays as found.
    this.checkDurableMark();
    // A last segment holding no more than its header was being started when the machine died (a
    // roll makes the header and the hard state after it durable together): it is dropped, so that
    // every segment kept starts with the newest hard state before it. One that never had a hard
    // state to carry holds no record either: dropping it loses nothing.
    const last = this.segments[this.segments.length - 1];
    if (last !== undefined && last.end <= recordHeaderBytes + headerPayloadBytes) {
      this.segments.pop();
      this.fs.closeSync(last.fd);
      this.fs.unlinkSync(last.path);
      this.directoryChanged = true;
    }
    if (this.segments.length === 0) this.roll(undefined, this.hardStateValue);
    // The directory is made durable before anything is appended (a roll just above did it already).
    // A segment dropped above, its unlink not durable, came back after a second power loss ahead of
    // what was appended to the one before it, which then read as damaged; and a segment whose roll
    // was cut off between its fdatasync and its directory's fsync (a killed process) took
    // acknowledged entries with its name on a power loss (both found in a code review).
    else this.durably(() => this.fsyncDirectory());
  }

  /**
   * Refuses a log that ends before what a completed sync had made durable (`SegmentLogOptions.durable`):
   * its segment cut short, or gone while no later one exists. One below the first segment was
   * deleted by a compaction or a reset; a mark of a segment's header alone says nothing (a
   * segment holding only its header is dropped after this).
   */
  private checkDurableMark(): void {
    const mark = this.durableAtOpen;
    if (mark === undefined || mark.bytes <= recordHeaderBytes + headerPayloadBytes) return;
    const segment = this.segments.find((candidate) => candidate.sequence === mark.segment);
    const latest = this.segments[this.segments.length - 1]?.sequence ?? 0;
    if (segment === undefined && mark.segment <= latest) return;
    const path = join(this.dir, segmentName(mark.segment));
    if (segment === undefined) throw this.corrupt(path, `the segment is missing, though a completed sync had made ${mark.bytes} bytes of it durable (recorded in the database)`);
    if (segment.end < mark.bytes) throw this.corrupt(path, `the segment ends at byte ${segment.end}, before the ${mark.bytes} bytes of it a completed sync had made durable (recorded in the database)`);
  }

  private replaySegment(sequence: number, isLast: boolean): void {
    const path = join(this.dir, segmentName(sequence));
    const fd = this.fs.openSync(path, "r+");
    const segment: Segment = { sequence, path, fd, end: 0, firstEntryIndex: undefined, firstEntryEnd: 0, syncedEnd: 0 };
    this.segments.push(segment);
    const size = this.fs.fstatSync(fd).size;
    const bytes = this.readAt(segment, 0, size);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let offset = 0;
    // A header's reset (an install's) takes effect with the first record after it: a segment torn
    // back to its header is dropped below, and the reset must go with it, or the log would start
    // after the snapshot while the segments it was to replace stay (found in review: entries saved
    // after that start went behind the old ones, and a restart reset them away, fsynced and applied).
    let pendingReset: LogFloor | undefined;
    while (offset < size) {
      const problem = recordProblem(bytes, view, offset);
      if (problem !== undefined) {
        if (!isLast) throw this.corrupt(path, `${problem} at byte ${offset} of a segment that is not the last${this.recordPlace()}`, this.plausibleIndexAt(view, offset));
        const durableBytes = this.durableAtOpen?.segment === sequence ? this.durableAtOpen.bytes : 0;
        if (offset < durableBytes) {
          throw this.corrupt(path, `${problem} at byte ${offset} of the last segment${this.recordPlace()}, within the ${durableBytes} bytes of it a completed sync had made durable (recorded in the database): damage, not a torn write`, this.plausibleIndexAt(view, offset));
        }
        if (!tornRecord(bytes, view, offset)) {
          throw this.corrupt(path, `${problem} at byte ${offset} of the last segment${this.recordPlace()}, and no part of the record reads as never written: damage, not a torn write`, this.plausibleIndexAt(view, offset));
        }
        // Past every completed sync (see the file comment): what follows was never durable.
        this.fs.ftruncateSync(fd, offset);
        this.tornCutValue = { segment: segmentName(sequence), atByte: offset, bytesCut: size - offset, entryIndex: this.plausibleIndexAt(view, offset) };
        break;
      }
      const payloadBytes = view.getUint32(offset + 4, true);
      const kind = view.getUint8(offset + 8) as RecordKind;
      const payload = offset + recordHeaderBytes;
      if (offset > 0 && pendingReset !== undefined) {
        this.applyReset(pendingReset);
        pendingReset = undefined;
      }
      if (offset === 0) {
        if (kind !== RecordKind.SegmentHeader) throw this.corrupt(path, "the segment does not start with its header");
        pendingReset = this.replayHeader(path, view, payload, payloadBytes, sequence);
      } else if (kind === RecordKind.Entry) {
        const index = getUint53(view, payload);
        const term = getUint53(view, payload + 8);
        const type = view.getUint8(payload + 16);
        if (!Number.isSafeInteger(index) || index < 1 || !Number.isSafeInteger(term) || term < 1) throw this.corrupt(path, `entry record at byte ${offset} has index ${index}, term ${term}`);
        if (type !== EntryType.Normal && type !== EntryType.ConfChange) throw this.corrupt(path, `unknown entry type ${type}`, index);
        this.replayEntry(path, segment, index, term, offset, recordHeaderBytes + payloadBytes);
      } else if (kind === RecordKind.HardState) {
        if (payloadBytes !== hardStatePayloadBytes) throw this.corrupt(path, `hard state record of ${payloadBytes} bytes`);
        const hardState = { term: getUint53(view, payload), vote: getUint53(view, payload + 8), commit: getUint53(view, payload + 16) };
        if (![hardState.term, hardState.vote, hardState.commit].every(Number.isSafeInteger)) throw this.corrupt(path, `hard state record at byte ${offset} out of range`);
        this.hardStateValue = hardState;
      } else {
        throw this.corrupt(path, `record of unknown kind ${kind} at byte ${offset}`);
      }
      offset += recordHeaderBytes + payloadBytes;
    }
    segment.end = Math.min(offset, size);
    if (segment.end === 0 && !isLast) throw this.corrupt(path, "the segment has no valid header");
    // A segment before the last was made durable whole before the next began: its reset stands.
    if (pendingReset !== undefined && !isLast) this.applyReset(pendingReset);
    // What was read back may be only in the page cache (the process crashed, the machine did not):
    // durable from here, so compaction can count on it.
    this.durably(() => this.fs.fdatasyncSync(fd));
    segment.syncedEnd = segment.end;
  }

  /**
   * The index a record that failed its checks begins, where its bytes name one this replay could
   * come to next: no higher than one past the last entry read, no lower than the log's start. A
   * damaged index (2^40 + 7, say) is not named as the entry's.
   */
  private plausibleIndexAt(view: DataView, offset: number): number | undefined {
    const index = entryIndexAt(view, offset);
    if (index === undefined) return undefined;
    const next = this.positions.count > 0 ? this.positions.last() + 1 : this.floor.index + 1;
    return index <= next && index > this.floor.index ? index : undefined;
  }

  /** Where the replay is, for a refusal's message: the last entry read before a bad record. */
  private recordPlace(): string {
    return this.positions.count > 0 ? `, the record after entry ${this.positions.last()}` : "";
  }

  /** The reset a segment's header records, once it takes effect (see `replaySegment`). */
  private applyReset(reset: LogFloor): void {
    this.floor = reset;
    this.positions.clear();
  }

  /** Checks a segment's header; returns the reset it records (an install's), if any. */
  private replayHeader(path: string, view: DataView, payload: number, payloadBytes: number, sequence: number): LogFloor | undefined {
    if (payloadBytes !== headerPayloadBytes) throw this.corrupt(path, `segment header of ${payloadBytes} bytes`);
    for (let at = 0; at < magic.byteLength; at++) {
      if (view.getUint8(payload + at) !== magic[at]) throw this.corrupt(path, "not a kv log segment");
    }
    const version = view.getUint32(payload + magic.byteLength, true);
    if (version !== formatVersion) {
      throw new StorageError("schema", `log segment format ${version}, this version reads ${formatVersion}: run the kv release that wrote it`, path);
    }
    const headerSequence = getUint53(view, payload + magic.byteLength + 4);
    if (headerSequence !== sequence) throw this.corrupt(path, `segment header says sequence ${headerSequence}`);
    const resetIndex = getUint53(view, payload + magic.byteLength + 12);
    const resetTerm = getUint53(view, payload + magic.byteLength + 20);
    if (!Number.isSafeInteger(resetIndex) || !Number.isSafeInteger(resetTerm)) throw this.corrupt(path, "segment header reset out of range");
    return resetIndex > 0 ? { index: resetIndex, term: resetTerm } : undefined;
  }

  private replayEntry(path: string, segment: Segment, index: number, term: number, offset: number, length: number): void {
    const held = this.positions.count > 0;
    if (held && index > this.positions.last() + 1) {
      throw this.corrupt(path, `entry record at byte ${offset} leaves a hole after ${this.positions.last()}`, index);
    }
    // Below the first entry held: the segments that held those before it were deleted (compacted)
    // while the ones after kept entries this record supersedes.
    if (held && index < this.positions.first) this.positions.clear();
    if (!held && this.floor.index > 0 && index !== this.floor.index + 1) {
      throw this.corrupt(path, `entry record at byte ${offset} in a log that starts after ${this.floor.index}`, index);
    }
    this.positions.truncateAfter(index - 1);
    const previousTerm = this.positions.count > 0 ? this.positions.termOf(index - 1) : this.floor.index === index - 1 ? this.floor.term : 0;
    if (term < previousTerm) throw this.corrupt(path, `entry of term ${term} follows one of term ${previousTerm}`, index);
    this.positions.push(index, segment.sequence, offset, length, term);
    if (segment.firstEntryIndex === undefined) {
      segment.firstEntryIndex = index;
      segment.firstEntryEnd = offset + length;
    }
  }

  // --- segments ---

  private current(): Segment {
    const segment = this.segments[this.segments.length - 1];
    assert(segment !== undefined, "the log has no segment");
    return segment;
  }

  private segmentBySequence(sequence: number): Segment {
    const segment = this.segments.find((candidate) => candidate.sequence === sequence);
    assert(segment !== undefined, `segment ${sequence} is gone`);
    return segment;
  }

  /**
   * Starts a new segment with its header (carrying `reset`, if given) and `hardState`, both durable
   * before it returns, and only then makes it the current one: a failure leaves no segment behind.
   */
  private roll(reset: LogFloor | undefined, hardState: HardState | undefined): Segment {
    const previous = this.segments[this.segments.length - 1];
    if (previous !== undefined) {
      // Only the last segment may end in a torn record (see the file comment): the one before it is
      // made durable now, before anything is written after it, whatever a sync still running
      // covers (its fdatasync may not have run yet).
      if (previous.syncedEnd < previous.end) {
        this.durably(() => this.fs.fdatasyncSync(previous.fd));
        previous.syncedEnd = previous.end;
      }
      this.unsynced.delete(previous.fd);
    }
    const sequence = previous === undefined ? 1 : previous.sequence + 1;
    const path = join(this.dir, segmentName(sequence));
    const bytes = recordHeaderBytes + headerPayloadBytes + (hardState === undefined ? 0 : recordHeaderBytes + hardStatePayloadBytes);
    const buffer = Buffer.alloc(bytes);
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    buffer.set(magic, recordHeaderBytes);
    view.setUint32(recordHeaderBytes + magic.byteLength, formatVersion, true);
    setUint53(view, recordHeaderBytes + magic.byteLength + 4, sequence);
    setUint53(view, recordHeaderBytes + magic.byteLength + 12, reset?.index ?? 0);
    setUint53(view, recordHeaderBytes + magic.byteLength + 20, reset?.term ?? 0);
    sealRecord(buffer, view, 0, RecordKind.SegmentHeader, headerPayloadBytes);
    if (hardState !== undefined) writeHardStateRecord(buffer, view, recordHeaderBytes + headerPayloadBytes, hardState);
    const fd = this.fs.openSync(path, "wx+");
    const segment: Segment = { sequence, path, fd, end: bytes, firstEntryIndex: undefined, firstEntryEnd: 0, syncedEnd: bytes };
    try {
      let written = 0;
      while (written < bytes) written += this.fs.writeSync(fd, buffer, written, bytes - written, written);
      // Durable at once (a roll is rare): every segment then starts with a hard state no older
      // than any before it, which is what lets compaction delete those.
      this.durably(() => this.fs.fdatasyncSync(fd));
      this.directoryChanged = true;
      this.durably(() => this.fsyncDirectory());
    } catch (error) {
      this.fs.closeSync(fd);
      try {
        this.fs.unlinkSync(path);
      } catch {
        // Left behind, it is a last segment holding at most its header: the replay drops it.
      }
      throw error;
    }
    this.segments.push(segment);
    return segment;
  }

  /**
   * Runs an fsync (or the cut-off of a failed write); if it fails, the log is broken (see
   * `broken`) and `unusable()` is thrown. With `failed`, that error goes on when it succeeds.
   */
  private durably(run: () => void, failed?: unknown): void {
    try {
      run();
    } catch (error) {
      this.broken ??= error instanceof Error ? error : new Error(String(error));
      throw this.unusable();
    }
    if (failed !== undefined) throw failed;
  }

  /** The error of a log `broken` by a failed fsync or cut-off: never a full disk to wait out, even for an ENOSPC. */
  private unusable(): NotDiskFullError {
    const broken = this.broken as Error;
    return new NotDiskFullError(`the log in ${this.dir} is unusable after a failed fsync or write: ${broken.message}`, { cause: broken });
  }

  private deleteSegment(segment: Segment): void {
    assert(segment !== this.current(), "the segment being written is never deleted");
    this.fs.unlinkSync(segment.path);
    this.segments.splice(this.segments.indexOf(segment), 1);
    this.unsynced.delete(segment.fd);
    this.retired.push(segment.fd);
    this.directoryChanged = true;
    this.closeRetiredWhenIdle();
  }

  /** Writes `parts` one after another from `position`: writev, IOV_MAX parts at a time, finishing short writes. */
  private writePartsAt(segment: Segment, parts: readonly Uint8Array[], position: number): void {
    let at = position;
    for (let first = 0; first < parts.length; first += iovecsMax) {
      const group = parts.slice(first, first + iovecsMax);
      const written = this.fs.writevSync(segment.fd, group, at);
      // Short (rare for a file): the rest, part by part.
      let partAt = at;
      for (const part of group) {
        let done = Math.max(0, Math.min(part.byteLength, at + written - partAt));
        while (done < part.byteLength) done += this.fs.writeSync(segment.fd, part, done, part.byteLength - done, partAt + done);
        partAt += part.byteLength;
      }
      at = partAt;
    }
    this.unsynced.add(segment.fd);
  }

  private readAt(segment: Segment, position: number, length: number): Uint8Array {
    return readFully(this.fs, segment.fd, position, length);
  }

  private fsyncDirectory(): void {
    this.directoryChanged = false;
    const dirFd = this.fs.openSync(this.dir, "r");
    try {
      this.fs.fsyncSync(dirFd);
    } finally {
      this.fs.closeSync(dirFd);
    }
  }

  private syncEnded(): void {
    this.syncsRunning--;
    this.closeRetiredWhenIdle();
  }

  private closeRetiredWhenIdle(): void {
    if (this.syncsRunning > 0) return;
    for (const fd of this.retired.splice(0)) this.fs.closeSync(fd);
  }

  private corrupt(file: string, message: string, index?: number): StorageError {
    return new StorageError("corrupt", message, file, index);
  }

  private assertOpen(): void {
    assert(!this.closed, `log ${this.dir} used after close`);
    if (this.broken !== undefined) throw this.unusable();
  }
}

/** Why the record at `offset` cannot be read (undefined when it can). */
function recordProblem(bytes: Uint8Array, view: DataView, offset: number): string | undefined {
  if (bytes.byteLength - offset < recordHeaderBytes) return "an incomplete record header";
  const payloadBytes = view.getUint32(offset + 4, true);
  if (payloadBytes > recordPayloadBytesMax || bytes.byteLength - offset - recordHeaderBytes < payloadBytes) return "an incomplete record";
  const crc = Bun.hash.crc32(bytes.subarray(offset + 4, offset + recordHeaderBytes + payloadBytes)) >>> 0;
  if (crc !== view.getUint32(offset, true)) return "a record checksum mismatch";
  const kind = view.getUint8(offset + 8);
  if (kind === RecordKind.Entry && payloadBytes < entryFixedBytes) return "an entry record too short";
  return undefined;
}

/** Bytes of a disk sector: written whole or not at all. */
const sectorBytes = 512;

/**
 * Whether the bad record at `offset` of the last segment reads as a write a crash tore (what
 * `open` cuts off) rather than as damage (refused). A crash leaves the pages the kernel had not
 * yet written back as they were on disk: zeros past the file's old end, which is where the record
 * starts (at or past where the last completed sync ended). So it is torn when:
 * - it runs past the end of the file (the file was cut inside it), and no run of whole records
 *   goes from somewhere after it to the end of the file: a length damaged to point past the end
 *   leaves the records after it readable; or
 * - it ends within the file, and some sector it reaches is all zeros from where the record starts
 *   in it (or the sector's start) to the sector's end (or the file's): a sector never written back.
 *   Zeros within a written record (the high bytes of a term, a value of zeros) stop short of a
 *   sector's end, or are followed in it by the next record's bytes.
 * etcd's WAL tells torn writes from damage in the same way, by zeroed sectors.
 */
function tornRecord(bytes: Uint8Array, view: DataView, offset: number): boolean {
  const size = bytes.byteLength;
  const claimedEnd = size - offset < recordHeaderBytes ? Number.POSITIVE_INFINITY : offset + recordHeaderBytes + view.getUint32(offset + 4, true);
  // Past the end: records that go on whole from some point after it to the end of the file say its
  // length was damaged (looked for first: the sectors up to the end are theirs then, and a value of
  // zeros among them is no sector left unwritten; found in a review). The run must reach the end:
  // a value that holds a record's bytes (a client can write any) makes one whole record inside a
  // write that was really torn, but seldom a run of them to where the crash cut the file (found in
  // review of that fix: a torn write was refused as damage). A value made of chained records can
  // still be cut at one's end, about one crash in the records' size: refused as damage then, and
  // the node says so rather than start.
  if (claimedEnd > size) return !recordsRunToEndAfter(bytes, view, offset);
  for (let sector = Math.floor(offset / sectorBytes) * sectorBytes; sector < claimedEnd; sector += sectorBytes) {
    let zeros = true;
    for (let at = Math.max(offset, sector), end = Math.min(size, sector + sectorBytes); at < end && zeros; at++) zeros = bytes[at] === 0;
    if (zeros) return true;
  }
  return false;
}

/**
 * Whether, from some byte after `offset`, whole records of the log's kinds follow one another to
 * the end of `bytes` exactly. Judged from the end back, each position once (a run from a position
 * is one whole record and a run from where it ends): walking forward from every position was
 * quadratic, minutes for a 1 MiB value of chained tiny records (found in review). A checksum is
 * computed only where the lengths alone would run to the end, within a budget of bytes; past it the
 * bytes were made to look like records (a client's value can hold any), and the write is read as
 * torn, which it then is.
 */
function recordsRunToEndAfter(bytes: Uint8Array, view: DataView, offset: number): boolean {
  const size = bytes.byteLength;
  // runs[p - offset] is 1 when a run goes from p to the end (the end itself: a run of none).
  const runs = new Uint8Array(size - offset + 1);
  runs[size - offset] = 1;
  let checksumBytesLeft = 2 * (size - offset) + (1 << 20);
  let found = false;
  for (let at = size - recordHeaderBytes; at > offset; at--) {
    const kind = view.getUint8(at + 8);
    if (kind !== RecordKind.Entry && kind !== RecordKind.HardState) continue;
    const end = at + recordHeaderBytes + view.getUint32(at + 4, true);
    if (end > size || runs[end - offset] !== 1) continue;
    checksumBytesLeft -= end - at;
    if (checksumBytesLeft < 0) return false;
    if (recordProblem(bytes, view, at) === undefined) {
      runs[at - offset] = 1;
      found = true;
    }
  }
  return found;
}

/** The index a bad entry record at `offset` claims, when it is whole enough to say (for the error). */
function entryIndexAt(view: DataView, offset: number): number | undefined {
  if (view.byteLength - offset < recordHeaderBytes + 8 || view.getUint8(offset + 8) !== RecordKind.Entry) return undefined;
  const index = getUint53(view, offset + recordHeaderBytes);
  return Number.isSafeInteger(index) && index >= 1 ? index : undefined;
}

/** Reads `length` bytes at `position` of `fd` (fewer only at the end of the file). */
function readFully(fs: Pick<SegmentFiles, "readSync">, fd: number, position: number, length: number): Uint8Array {
  const buffer = new Uint8Array(length);
  let read = 0;
  while (read < length) {
    const got = fs.readSync(fd, buffer, read, length - read, position + read);
    if (got === 0) break;
    read += got;
  }
  return read === length ? buffer : buffer.subarray(0, read);
}

/** Bytes read from one segment, and its path (named in errors). */
interface SegmentBytes {
  readonly bytes: Uint8Array;
  readonly path: string;
}

/**
 * Entries [lo, hi) at `positions`, read with `read` (a run of records that lie one after another
 * in one segment in one call) and each verified against its checksum, index and term: at most
 * `maxBytes` of data, but at least one when lo < hi.
 */
function readEntries(
  positions: EntryPositions,
  lo: number,
  hi: number,
  maxBytes: number,
  read: (sequence: number, position: number, length: number, records: number) => SegmentBytes,
): Entry[] {
  const result: Entry[] = [];
  let bytes = 0;
  let index = lo;
  while (index < hi) {
    const sequence = positions.segmentOf(index);
    const start = positions.offsetOf(index);
    let runEnd = index;
    let runBytes = positions.lengthOf(index);
    let dataBytes = runBytes - recordHeaderBytes - entryFixedBytes;
    // Past the budget already: not read at all.
    if (result.length > 0 && bytes + dataBytes > maxBytes) return result;
    while (
      runEnd + 1 < hi &&
      positions.segmentOf(runEnd + 1) === sequence &&
      positions.offsetOf(runEnd + 1) === start + runBytes &&
      bytes + dataBytes + positions.lengthOf(runEnd + 1) - recordHeaderBytes - entryFixedBytes <= maxBytes
    ) {
      runEnd++;
      runBytes += positions.lengthOf(runEnd);
      dataBytes += positions.lengthOf(runEnd) - recordHeaderBytes - entryFixedBytes;
    }
    const { bytes: buffer, path } = read(sequence, start, runBytes, runEnd - index + 1);
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    let offset = 0;
    for (let at = index; at <= runEnd; at++) {
      const entry = verifiedEntry(buffer, view, offset, at, positions.termOf(at), path);
      if (result.length > 0 && bytes + entry.data.byteLength > maxBytes) return result;
      bytes += entry.data.byteLength;
      result.push(entry);
      offset += positions.lengthOf(at);
    }
    index = runEnd + 1;
  }
  return result;
}

/** The entry record at `offset` of `buffer`, checked to be entry `index` of `term`: StorageError `corrupt` otherwise. */
function verifiedEntry(buffer: Uint8Array, view: DataView, offset: number, index: number, term: number, path: string): Entry {
  const problem = recordProblem(buffer, view, offset);
  if (problem !== undefined) throw new StorageError("corrupt", `${problem} reading entry`, path, index);
  const payloadBytes = view.getUint32(offset + 4, true);
  const payload = offset + recordHeaderBytes;
  const recordIndex = getUint53(view, payload);
  const recordTerm = getUint53(view, payload + 8);
  if (view.getUint8(offset + 8) !== RecordKind.Entry || recordIndex !== index || recordTerm !== term) {
    throw new StorageError("corrupt", `found entry ${recordIndex} of term ${recordTerm} where ${index} of term ${term} belongs`, path, index);
  }
  const type = view.getUint8(payload + 16) as EntryType;
  return { index, term, type, data: buffer.subarray(payload + entryFixedBytes, payload + payloadBytes) };
}

/**
 * Reads the log a `SegmentLog` on another thread writes: ThreadedStorage's reads, on the node's
 * thread, of entries behind its in-memory tail (src/storage/threaded-storage.ts). It knows where
 * entries are only as it is told: the writer's positions at open, then where each save went
 * (`appended`, from the writer's answer), and it forgets entries as the log is compacted or reset.
 * It reads with descriptors of its own. The writer deletes a segment only once every entry in it
 * is compacted away or superseded by a later record, so the reader is never sent to one that is
 * gone, provided it is told of compactions and resets no later than the writer runs them (the
 * node's thread posts them, and drops them here, first).
 */
export class SegmentReader {
  private readonly positions = new EntryPositions();
  /** Descriptors by segment sequence, opened on first read. */
  private readonly fds = new Map<number, number>();
  /** Entry records read from the segments since open (a run read whole counts all of it). */
  entriesRead = 0;

  constructor(
    readonly dir: string,
    initial: LogPositions,
  ) {
    this.positions.import(initial);
  }

  /** Term of entry `index`, when known. */
  term(index: number): number | undefined {
    return this.positions.has(index) ? this.positions.termOf(index) : undefined;
  }

  /**
   * The writer appended `entries` at `place` (its answer to their save): they replace what was
   * known from their first index on.
   */
  appended(place: AppendPlace, entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    this.positions.truncateAfter(first.index - 1);
    let offset = place.offset;
    for (const entry of entries) {
      const length = entryRecordBytes(entry);
      this.positions.push(entry.index, place.segment, offset, length, entry.term);
      offset += length;
    }
  }

  /** Forgets the entries up to `index` (the log is compacted there) and closes segments no entry is in any more. */
  compacted(index: number): void {
    this.positions.dropBefore(index + 1);
    this.closeUnused();
  }

  /** Forgets every entry (a snapshot replaces the log). */
  clear(): void {
    this.positions.clear();
    this.closeUnused();
  }

  /** Entries [lo, hi) (all known), read and verified: at most `maxBytes` of data, at least one when lo < hi. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    return readEntries(this.positions, lo, hi, maxBytes, (sequence, position, length, records) => {
      this.entriesRead += records;
      const path = join(this.dir, segmentName(sequence));
      let fd = this.fds.get(sequence);
      if (fd === undefined) {
        fd = nodeFs.openSync(path, "r");
        this.fds.set(sequence, fd);
      }
      return { bytes: readFully(nodeFs, fd, position, length), path };
    });
  }

  /** Closes every descriptor. */
  close(): void {
    this.positions.clear();
    this.closeUnused();
  }

  private closeUnused(): void {
    const lowest = this.positions.lowestSegment() ?? Number.POSITIVE_INFINITY;
    for (const [sequence, fd] of this.fds) {
      if (sequence >= lowest) continue;
      nodeFs.closeSync(fd);
      this.fds.delete(sequence);
    }
  }
}
