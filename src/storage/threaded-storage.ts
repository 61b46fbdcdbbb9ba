import { Database } from "bun:sqlite";
import { renameSync } from "node:fs";
import { assert } from "../lib/assert.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import { type MemberAddress, type Membership, withMissingAddresses } from "../kv/membership.ts";
import { type Entry, type HardState, hardStateEqual, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import type { CheckpointReport } from "./checkpointer.ts";
import type { ImageRow, KvImageReader, KvStorage, ListedValue, StoredValue } from "./kv-storage.ts";
import { LogTail } from "./log-tail.ts";
import { PackRing } from "./pack-ring.ts";
import { type AppendPlace, SegmentReader, type TornCut } from "./segment-log.ts";
import { checkSave } from "./save-checks.ts";
import { checkCompact, checkInstall, snapshotConfiguration, stagedImageBytesMaxDefault } from "./snapshot-checks.ts";
import { corruptError, openImageReader, SqliteReads } from "./sqlite-reads.ts";
import type { SqliteMirrorState } from "./sqlite-storage.ts";
import { ImageStaging } from "./staging-file.ts";
import {
  deserializeError,
  type FromStorageThread,
  packEntries,
  type StorageDone,
  type StorageRequest,
  type StorageThreadOpenOptions,
  type ToStorageThread,
} from "./storage-thread-messages.ts";
import { TermCache } from "./term-cache.ts";
import { checkVotersMatch, normalizeVoters } from "./voters.ts";

/**
 * Durable storage whose writes run on a worker thread ("threaded storage"), so the node's loop
 * never waits on the disk: a follower's save of a few MB, an apply of large values, and the WAL's
 * checkpoints (100-500 ms at 16 KB values, BENCHMARKS.md) held the loop's thread, and with it the
 * heartbeats, for that long.
 *
 * The worker (storage-thread.ts) owns an ordinary SqliteStorage and runs every write strictly in
 * the order posted: saves, applies, compactions, installs, bootstraps, and syncs (so a sync covers
 * every write posted before it, and an apply commits after the save of the entries it applies).
 *
 * This side keeps a mirror of what the Raft core reads synchronously (hard state, last index,
 * snapshot, term cache, log tail), changed when a write is posted: the core sees its own writes at
 * once. Raft-invariant checks (`checkSave`, `checkCompact`, `checkInstall`) run here before posting,
 * so a violation still throws an AssertionError in the caller. Entries posted and not yet written
 * by the worker stay in the log tail (pinned); older ones are read from the log's segment files
 * with descriptors of this thread's own (`SegmentReader`: the worker answers each save with where
 * its entries went). `get`, `list`, `openImage` and `dataBytes` are read on a read-only
 * connection to the database (sqlite-reads.ts: in WAL mode readers never block the writer).
 *
 * Applies and installs return promises that settle in call order; the applied index and the
 * configuration (`appliedIndex()`, `membership()`) change when they resolve.
 *
 * Durability: `save(..., sync)` returns before anything is written; what it wrote is durable once a
 * later `sync()` has resolved (the node loop saves with sync false and calls `sync()` anyway).
 *
 * A full disk: the worker retries the write that met it until it succeeds; meanwhile `save`,
 * `applyEntries`, `compact` and `installSnapshot` throw that disk-full error without posting (the
 * node parks its Ready and retries), and `sync()` stays pending until the queue has drained. Any
 * other failure on the worker is fatal: every pending promise and every later `sync()` rejects with
 * it, and writes throw it.
 */

/** Options of `openThreadedStorage`: those of `openSqliteStorage` and reports of the writer's work. */
export interface ThreadedStorageOptions extends StorageThreadOpenOptions {
  /** Called after each round of checkpoints on the writer (thread "worker": the checkpointer's; "caller": the writer's own). */
  readonly onCheckpoint?: (report: CheckpointReport) => void;
  /** Called with each write's (and sync's) own duration on the writer thread. */
  readonly onRequestDone?: (report: StorageRequestReport) => void;
  /**
   * Bytes of the newest log entries kept in memory beyond those pinned (see LogTail). Default 4
   * MiB: the entries not yet handed to apply are kept besides (up to 8 MiB), so what the tail
   * serves from here is a follower behind by up to that much; one further behind is read from
   * the log's segments.
   */
  readonly logTailBytesMax?: number;
  /** Bytes up to which the entries not yet handed to apply are kept besides (see LogTail.keepFrom). Default 8 MiB. */
  readonly logTailKeptBytesMax?: number;
  /** Bytes of the pack ring saves' entry data crosses to the thread through (PackRing); 0: none. Default 4 MiB. */
  readonly packRingBytes?: number;
}

/** How long one request took on the writer thread (see `ThreadedStorageOptions.onRequestDone`). */
export interface StorageRequestReport {
  readonly op: StorageRequest["op"];
  readonly durationMs: number;
  /** For saves: whether it was written with an fsync. */
  readonly sync?: boolean;
}

/** How long `close` waits for the writer to close its storage and end before terminating it. */
const workerCloseWaitMsMax = 10_000;
/**
 * The loop's log tail, 4 MiB, and the entries not yet handed to apply kept besides up to 8 MiB (see
 * LogTail.keepFrom). These, the pack ring below, the SQLite page cache (sqlite-storage.ts) and the
 * watch history (src/node/watch.ts) were each four times larger in 0.5.0: at 16 KB values the
 * larger sizes held 70-90 MB more per node at peak (BENCHMARKS.md, twenty-fourth session), and
 * 256 KB values went as fast or faster with the smaller ones. The segments' reads are cheap where
 * SQLite's were not (at 4 MiB with the log in SQLite, a leader writing 256 KB values spent 7% of its
 * loop reading entries back).
 */
const logTailBytesMaxDefault = 4 << 20;
const logTailKeptBytesMaxDefault = 8 << 20;
/**
 * The pack ring's size. It holds the data of the saves not yet applied: at 64 clients writing 16 KB
 * values 1-3 MiB; a batch that does not fit (at 256 KB values, often) takes a buffer of its own, as
 * before the ring. Memory the ring cycles through stays resident: all of it, whatever its size.
 */
const packRingBytesDefault = 4 << 20;

/**
 * The writer thread's entry point. Inside the compiled executable (build.ts gives it to `bun build
 * --compile` as a second entry point) it sits at its path under src/, the entry points' common
 * root, beside the executable's own module (`/$bunfs/root/kv`); run from source, beside this file.
 */
const storageThreadUrl = import.meta.url.startsWith("file:///$bunfs/")
  ? new URL("./storage/storage-thread.ts", import.meta.url).href
  : new URL("./storage-thread.ts", import.meta.url).href;

/**
 * Opens the storage in `dir` on a new writer thread: the thread opens the database (taking its
 * lock, migrating, checking it), and the promise rejects with the same `StorageError` (`locked`,
 * `schema`, `corrupt`, `voters_mismatch`, ...) that `openSqliteStorage` would throw.
 */
export function openThreadedStorage(dir: string, options: ThreadedStorageOptions = {}): Promise<ThreadedStorage> {
  const { onCheckpoint: _onCheckpoint, onRequestDone: _onRequestDone, logTailBytesMax: _logTailBytesMax, logTailKeptBytesMax: _kept, packRingBytes: _ring, ...openOptions } = options;
  // Before the worker: a bad size throws with no thread left behind.
  const ring = options.packRingBytes === 0 ? undefined : new PackRing(options.packRingBytes ?? packRingBytesDefault);
  const worker = new Worker(storageThreadUrl);
  return new Promise<ThreadedStorage>((resolve, reject) => {
    const ended = new Promise<void>((resolveEnded) => worker.addEventListener("close", () => resolveEnded()));
    worker.onmessage = (event: MessageEvent<FromStorageThread>) => {
      const message = event.data;
      if (message.type === "opened") {
        try {
          resolve(new ThreadedStorage(worker, ended, message.state, options, ring));
        } catch (error) {
          worker.postMessage({ type: "close" } satisfies ToStorageThread);
          reject(error);
        }
      } else if (message.type === "open-failed") {
        reject(deserializeError(message.error));
      }
    };
    worker.onerror = (event) => {
      reject(new Error(`storage thread failed to start: ${event.message}`));
      worker.terminate();
    };
    worker.postMessage({ type: "open", dir, options: openOptions, ...(ring === undefined ? {} : { ring: ring.buffer }) } satisfies ToStorageThread);
  });
}

/** A request posted and not yet answered: what to do with its answer, or with a fatal error. */
interface Waiting {
  readonly done: (reply: StorageDone) => void;
  readonly fail: (error: Error) => void;
  /** Whether someone awaits it (the process is kept alive for those). */
  readonly awaited: boolean;
}

/** The `KvStorage` whose writes run on a worker thread: see the notes above. Open it with `openThreadedStorage`. */
export class ThreadedStorage implements KvStorage {
  /** The database file, named in errors. */
  readonly file: string;
  private hardStateValue: HardState;
  private voters: readonly NodeId[];
  private learners: readonly NodeId[];
  private addresses: readonly MemberAddress[];
  private changedIndex: number;
  /** The applied index as of the last apply (or install) the writer confirmed. */
  private applied: number;
  /** The last index handed to the writer to apply (or installed): the next apply continues it. */
  private applyPostedTo: number;
  private snap: SnapshotMetadata;
  private last: number;
  private readonly terms: TermCache;
  private readonly tail: LogTail;
  /**
   * Saves of entries posted and not yet written, oldest first: the tail keeps their entries.
   * `replaced`: an install was posted after it, which resets the log (their place is gone).
   */
  private readonly unconfirmedSaves: { seq: number; entries: readonly Entry[]; replaced: boolean; inRing: boolean }[] = [];
  /** Reads entries behind the tail from the log's segments, where the writer's answers say they are. */
  private readonly logReader: SegmentReader;
  private readonly staging: ImageStaging;
  private readonly readDb: Database;
  private readonly reads: SqliteReads;
  private readonly images = new Set<KvImageReader>();
  private readonly waiting = new Map<number, Waiting>();
  private awaitedCount = 0;
  private seq = 0;
  private installing = false;
  /** Set while the writer waits for space (the write and its error); cleared once the write went through. */
  private diskFull: { readonly op: string; readonly error: Error } | undefined;
  /** The writer's failure: nothing more runs. */
  private fatal: Error | undefined;
  private closed = false;
  private ended: Promise<void> | undefined;
  private limitWaiters: ((pages: number) => void)[] = [];
  /** Requests posted since the last flush (see `post`), and the buffers they move to the thread. */
  private outbox: StorageRequest[] = [];
  private outboxTransfers: ArrayBuffer[] = [];
  private flushScheduled = false;
  private readonly tornCutAtOpen: TornCut | undefined;

  /** Use `openThreadedStorage`. */
  constructor(
    private readonly worker: Worker,
    private readonly workerEnded: Promise<void>,
    state: SqliteMirrorState,
    private readonly options: ThreadedStorageOptions,
    /** Where saves' entry data crosses to the thread (see PackRing); undefined: in buffers of their own. */
    private readonly ring: PackRing | undefined,
  ) {
    this.file = state.file;
    this.tornCutAtOpen = state.tornCut;
    this.hardStateValue = state.hardState;
    this.voters = state.voters;
    this.learners = state.learners;
    this.addresses = state.addresses;
    this.changedIndex = state.changedIndex;
    this.applied = state.applied;
    this.applyPostedTo = state.applied;
    this.snap = state.snapshot;
    this.last = state.lastIndex;
    this.terms = new TermCache(options.termCacheRunsMax ?? 1024);
    this.terms.reset(state.termRuns, state.lastIndex);
    const tailBytesMax = options.logTailBytesMax ?? logTailBytesMaxDefault;
    this.tail = new LogTail(tailBytesMax, Math.max(tailBytesMax, options.logTailKeptBytesMax ?? logTailKeptBytesMaxDefault));
    this.tail.keepFrom(this.applyPostedTo + 1);
    this.staging = new ImageStaging(`${this.file}-staging`, options.stagedImageBytesMax ?? stagedImageBytesMaxDefault, this.file);
    this.logReader = new SegmentReader(state.logDir, state.logPositions);
    // The writer holds the database open (and its WAL and shared-memory index exist) for as long
    // as this connection lives.
    this.readDb = new Database(this.file, { readonly: true, strict: true });
    try {
      this.readDb.run(`PRAGMA busy_timeout = ${options.lockWaitMs ?? 2000}`);
      this.reads = new SqliteReads(this.readDb, this.file, { batchKvReads: true });
    } catch (error) {
      this.readDb.close(true);
      throw error;
    }
    worker.onmessage = (event: MessageEvent<FromStorageThread>) => this.received(event.data);
    worker.onerror = (event) => this.failed(new Error(`storage thread: ${event.message}`));
    // A thread that ends unasked (not by close) would leave every sync and apply pending for ever.
    void workerEnded.then(() => {
      if (!this.closed) this.failed(new Error(`the storage thread of ${this.file} ended`));
    });
    // Only awaited requests keep the process alive (see `post`).
    worker.unref();
  }

  // --- RaftStorage ---

  /** See `RaftStorage.initialState`: the hard state as last posted, the configuration as last applied. */
  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners?: readonly NodeId[] } {
    this.assertOpen();
    return { hardState: this.hardStateValue, voters: this.voters, ...(this.learners.length > 0 ? { learners: this.learners } : {}) };
  }

  /** Entries read back from the log's segments by `entries` since open. */
  get logEntriesRead(): number {
    return this.logReader.entriesRead;
  }

  /** Entries in [lo, hi), at most `maxBytes` of data but at least one when lo < hi: from the tail, else the log's segments. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
    assert(lo >= this.firstIndex() && hi <= this.last + 1 && lo <= hi, `entries(${lo}, ${hi}) out of range`);
    if (lo === hi) return [];
    const kept = this.tail.slice(lo, hi, maxBytes);
    if (kept !== undefined) return kept;
    // Below the tail everything is written; from the tail's first entry on, the disk may not hold
    // what this side posted (a suffix rewritten), so the rest comes from the tail.
    const tailFirst = this.tail.firstKeptIndex();
    const diskHi = tailFirst === undefined ? hi : Math.min(hi, tailFirst);
    const result = this.logReader.entries(lo, diskHi, maxBytes);
    if (diskHi === hi || lo + result.length < diskHi) return result;
    let bytes = result.reduce((sum, entry) => sum + entry.data.byteLength, 0);
    for (const entry of this.tail.slice(diskHi, hi, Number.MAX_SAFE_INTEGER) ?? []) {
      bytes += entry.data.byteLength;
      if (bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  /** Term at `index` for firstIndex()-1 <= index <= lastIndex(): from memory near the end of the log. */
  term(index: number): number {
    this.assertOpen();
    if (index === this.snap.index) return this.snap.term; // term(0) is 0
    assert(index >= this.firstIndex() - 1 && index <= this.last, `term(${index}) out of range`);
    const term = this.terms.term(index) ?? this.tail.slice(index, index + 1, 0)?.[0]?.term ?? this.logReader.term(index);
    if (term === undefined) throw corruptError(this.file, "entry missing from the log", index);
    return term;
  }

  /** The first index the log holds: one past the snapshot. */
  firstIndex(): number {
    return this.snap.index + 1;
  }

  /** Index of the last entry posted; the snapshot's index when the log after it is empty. */
  lastIndex(): number {
    this.assertOpen();
    return this.last;
  }

  /** Where the log was last compacted or a snapshot installed (as posted). */
  snapshot(): SnapshotMetadata {
    this.assertOpen();
    if (this.snap.index === 0) return { index: 0, term: 0, voters: this.voters };
    return this.snap;
  }

  /**
   * The state machine as applied (confirmed) now; undefined before anything is applied, and while
   * an install is posted and not yet confirmed (the log before it is gone, the image not yet in).
   */
  snapshotForSend(): SnapshotMetadata | undefined {
    this.assertOpen();
    if (this.applied === 0 || this.applied < this.snap.index) return undefined;
    return { index: this.applied, term: this.term(this.applied), voters: this.voters, ...this.learnersField() };
  }

  // --- Writes: checked here, posted to the writer ---

  /**
   * Checks the save (AssertionError for a broken invariant), posts it, and updates the mirror: the
   * core reads its entries at once (from the tail until the writer has written them). Durable
   * once a `sync()` called after it has resolved, whatever `sync` says.
   */
  save(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): void {
    this.assertWritable();
    const changed = hardState !== undefined && hardStateEqual(hardState, this.hardStateValue) ? undefined : hardState;
    const lastIndexAfter = checkSave(
      { hardState: this.hardStateValue, firstIndex: this.firstIndex(), lastIndex: this.last, term: (index) => this.term(index) },
      changed,
      entries,
    );
    if (entries.length === 0 && changed === undefined) return;
    const packed = packEntries(entries, this.ring);
    const seq = this.post({ op: "save", hardState: changed, entries: packed, sync }, false, (reply) => this.saveWritten(seq, reply.logPlace));
    const first = entries[0];
    if (first !== undefined) {
      if (first.index <= this.last) this.terms.truncateFrom(first.index);
      for (const entry of entries) this.terms.append(entry.index, entry.term);
      this.unconfirmedSaves.push({ seq, entries, replaced: false, inRing: !(packed.data instanceof Uint8Array) });
      this.pinUnconfirmed();
      this.tail.saved(entries);
      this.last = lastIndexAfter;
    }
    if (changed !== undefined) this.hardStateValue = { term: changed.term, vote: changed.vote, commit: changed.commit };
  }

  /**
   * Posts the apply; resolves with its results once committed, after `appliedIndex()` and
   * `membership()` follow. The entries must be the log's (checked here, term for term, where the
   * log still holds them): the writer applies its own copies.
   */
  applyEntries(entries: readonly Entry[]): Promise<ApplyResult[]> {
    this.assertWritable();
    const first = entries[0];
    if (first === undefined) return this.request({ op: "apply", firstIndex: 1, lastIndex: 0 }, () => []);
    // As SqliteStorage checks (planApply), but here, at the call: entries at or below what was
    // handed over already are skipped, the rest continue it, and all are committed.
    assert(first.index <= this.applyPostedTo + 1, `apply: entry ${first.index} skips past ${this.applyPostedTo + 1}`);
    assert(first.index + entries.length - 1 <= this.hardStateValue.commit, `apply: entry ${first.index + entries.length - 1} beyond commit ${this.hardStateValue.commit}`);
    entries.forEach((entry, position) => {
      assert(entry.index === first.index + position, `apply: entry ${entry.index} breaks contiguity`);
      assert(entry.index <= this.last, `apply: entry ${entry.index} beyond last index ${this.last}`);
      // Below the snapshot the log no longer holds it: applied before, the writer skips it.
      if (entry.index > this.snap.index) assert(this.term(entry.index) === entry.term, `apply: entry ${entry.index} term ${entry.term} differs from the log's`);
    });
    const lastIndex = first.index + entries.length - 1;
    this.applyPostedTo = Math.max(this.applyPostedTo, lastIndex);
    this.tail.keepFrom(this.applyPostedTo + 1);
    return this.request({ op: "apply", firstIndex: first.index, lastIndex }, (reply) => {
      this.adoptApplied(reply.applied);
      return [...(reply.results ?? [])];
    });
  }

  /** See `KvStorage.compact`: checked here against the applied index confirmed so far, then posted. */
  compact(index: number): void {
    this.assertWritable();
    if (!checkCompact({ snapshotIndex: this.snap.index, appliedIndex: this.applied, lastIndex: this.last }, index)) return;
    const snapshot: SnapshotMetadata = { index, term: this.term(index), voters: this.voters, ...this.learnersField() };
    this.post({ op: "compact", index }, false);
    this.snap = snapshot;
    // Before the writer may delete a segment of them (see SegmentReader).
    this.logReader.compacted(index);
  }

  /**
   * See `KvStorage.installSnapshot`. The staged file is closed here and moved aside
   * (`<db>-staging-install`) for the writer to install, so a next image may be staged meanwhile;
   * the log, snapshot and terms change now, the applied index and configuration when it resolves.
   * One install at a time: the node waits for it before its next Ready.
   */
  installSnapshot(metadata: SnapshotMetadata, imageId: string, addresses: readonly MemberAddress[] = []): Promise<void> {
    this.assertWritable();
    assert(!this.installing, "an install while another is pending");
    const staging = this.staging.state();
    checkInstall(staging, this.applied, metadata, imageId);
    const { voters, learners } = snapshotConfiguration(metadata, this.file);
    const snapshot: SnapshotMetadata = { index: metadata.index, term: metadata.term, voters, ...(learners.length > 0 ? { learners } : {}) };
    // The staging connection commits every chunk; closing it lets go of the file before the writer attaches it.
    this.staging.file.release();
    const path = `${this.file}-staging-install`;
    renameSync(this.staging.file.path, path);
    this.staging.forget();
    this.installing = true;
    const done = this.request({ op: "install", path, staging, metadata, imageId, addresses: [...addresses] }, (reply) => {
      this.installing = false;
      this.adoptApplied(reply.applied);
    });
    // Invariant: applied <= commit. The core commits a snapshot's index as it restores it.
    this.hardStateValue = { ...this.hardStateValue, commit: Math.max(this.hardStateValue.commit, snapshot.index) };
    this.snap = snapshot;
    this.last = snapshot.index;
    this.applyPostedTo = Math.max(this.applyPostedTo, snapshot.index);
    this.tail.clear();
    this.tail.keepFrom(this.applyPostedTo + 1);
    this.terms.reset([], snapshot.index);
    this.logReader.clear();
    // Saves posted before it and answered after it wrote entries the install's reset deletes.
    for (const save of this.unconfirmedSaves) save.replaced = true;
    return done;
  }

  /** See `KvStorage.bootstrap`: checked here (`voters_mismatch` thrown at once), then posted. */
  bootstrap(voters: readonly NodeId[], addresses: readonly MemberAddress[] = []): void {
    this.assertWritable();
    const normalized = normalizeVoters(voters, this.file);
    if (this.voters.length > 0 && this.changedIndex === 0) checkVotersMatch(this.voters, normalized, this.file);
    const membership: Membership = {
      voters: this.voters.length > 0 ? this.voters : normalized,
      learners: this.learners,
      addresses: withMissingAddresses(this.addresses, addresses),
      changedIndex: this.changedIndex,
    };
    this.post({ op: "bootstrap", voters: [...voters], addresses: [...addresses] }, false);
    this.adoptMembership(membership);
  }

  /** See `KvStorage.bootstrapJoined`. */
  bootstrapJoined(configuration: Omit<Membership, "changedIndex">, changedIndex: number): void {
    this.assertWritable();
    assert(this.voters.length === 0 && this.applied === 0 && this.last === 0, "bootstrapJoined on storage that is not empty");
    assert(Number.isSafeInteger(changedIndex) && changedIndex >= 1, `joined at index ${changedIndex}`);
    const membership: Membership = {
      voters: normalizeVoters(configuration.voters, this.file),
      learners: [...configuration.learners].sort((a, b) => a - b),
      addresses: withMissingAddresses([], configuration.addresses),
      changedIndex,
    };
    this.post({ op: "bootstrap-joined", configuration: { voters: [...configuration.voters], learners: [...configuration.learners], addresses: [...configuration.addresses] }, changedIndex }, false);
    this.adoptMembership(membership);
  }

  /**
   * Resolves once every write posted before it is written and the log's segments and the WAL
   * fdatasynced (on the writer's side). Stays pending while the disk is full; rejects once the writer has failed.
   */
  sync(): Promise<void> {
    this.assertOpen();
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    return this.request({ op: "sync" }, () => undefined);
  }

  // --- Reads of the state machine, on the read connection ---

  /** See `KvStorage.membership`: as of the applied index confirmed (and bootstraps posted). */
  membership(): Membership {
    this.assertOpen();
    return { voters: this.voters, learners: this.learners, addresses: this.addresses, changedIndex: this.changedIndex };
  }

  /** The pack ring's bytes and regions in use (see PackRing); undefined when saves do not use one. */
  packRingUse(): { readonly bytes: number; readonly regions: number } | undefined {
    return this.ring === undefined ? undefined : { bytes: this.ring.usedBytes(), regions: this.ring.regionCount() };
  }

  /** The applied index of the last apply or install the writer confirmed. */
  appliedIndex(): number {
    this.assertOpen();
    return this.applied;
  }

  /** See `KvStorage.dataBytes`, as the newest commit left the database. */
  dataBytes(): number {
    this.assertOpen();
    return this.reads.dataBytes();
  }

  /** The value of `key` as committed now (at least the state of every apply that resolved). */
  get(key: string): StoredValue | undefined {
    this.assertOpen();
    return this.reads.get(key);
  }

  /** See `KvStorage.stateVersion`: read in the task's read transaction, with `get` and `list`. */
  stateVersion(): number {
    this.assertOpen();
    return this.reads.stateVersion();
  }

  /** See `KvStorage.valueBytes`, as committed now. */
  valueBytes(key: string): number | undefined {
    this.assertOpen();
    return this.reads.valueBytes(key);
  }

  /** Rows of the kv table read by `list` since open. */
  get kvRowsRead(): number {
    return this.reads.kvRowsRead;
  }

  /** See `KvStorage.list`, as committed now. */
  list(prefix: string, after: string | undefined, limit: number, bytesMax?: number): ListedValue[] {
    this.assertOpen();
    return this.reads.list(prefix, after, limit, bytesMax);
  }

  /** See `KvStorage.openImage`: an image of the state machine as committed now, on its own connection. */
  openImage(): KvImageReader {
    this.assertOpen();
    const image = openImageReader(this.file, this.options.lockWaitMs ?? 2000, (closed) => this.images.delete(closed));
    this.images.add(image);
    return image;
  }

  /** See `KvStorage.stageImageChunk`: staged on this thread, in `<db>-staging`. */
  stageImageChunk(imageId: string, rows: readonly ImageRow[], first: boolean): void {
    this.assertOpen();
    this.staging.stage(imageId, rows, first);
  }

  /** Drops the staged image, if any. */
  discardStagedImage(): void {
    this.assertOpen();
    this.staging.discard();
  }

  /** For tests: see `SqliteStorage.limitPages` (run on the writer at once, ahead of its queue). */
  limitPages(pages: number): Promise<number> {
    this.assertOpen();
    const answered = new Promise<number>((resolve) => this.limitWaiters.push(resolve));
    this.flush();
    this.worker.postMessage({ type: "limit-pages", pages } satisfies ToStorageThread);
    this.worker.ref();
    return answered.finally(() => this.updateRef());
  }

  /** Whether the writer is waiting for disk space (writes throw meanwhile). */
  isDiskFull(): boolean {
    return this.diskFull !== undefined;
  }

  /** See `KvStorage.diskFullWrite`. */
  diskFullWrite(): { readonly op: string; readonly error: Error } | undefined {
    return this.diskFull;
  }

  /**
   * Asks the writer to run what was posted, close its storage (a clean close checkpoints the WAL)
   * and end; images and the read connection close now. Writes stuck behind a full disk are
   * dropped. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const image of [...this.images]) image.close();
    this.staging.discard();
    this.reads.finalize();
    this.readDb.close(true);
    this.logReader.close();
    this.worker.ref();
    this.flush();
    this.worker.postMessage({ type: "close" } satisfies ToStorageThread);
    this.ended = (async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        this.workerEnded.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), workerCloseWaitMsMax))),
      ]);
      clearTimeout(timer);
      if (!ended) this.worker.terminate();
      const closedError = this.fatal ?? new Error(`storage ${this.file} closed`);
      for (const waiting of this.takeWaiting()) waiting.fail(closedError);
    })();
  }

  /** The torn record the log's replay cut off at open, if any (SegmentLog.tornCut). */
  tornCut(): TornCut | undefined {
    return this.tornCutAtOpen;
  }

  /** After `close`: resolves once the writer has ended, its storage closed and every descriptor with it. */
  async released(): Promise<void> {
    assert(this.closed, "released() is for a closed storage");
    await this.ended;
  }

  // --- the writer's answers ---

  private received(message: FromStorageThread): void {
    // The writer may have committed since the batch's snapshot: reads from here on see it.
    this.reads.endBatch();
    switch (message.type) {
      case "done":
        this.answered(message);
        this.updateRef();
        return;
      case "dones":
        for (const done of message.dones) this.answered(done);
        this.updateRef();
        return;
      case "disk-full":
        this.diskFull = { op: message.op, error: deserializeError(message.error) };
        return;
      case "disk-space":
        this.diskFull = undefined;
        return;
      case "fatal":
        this.failed(deserializeError(message.error));
        return;
      case "checkpoint":
        this.options.onCheckpoint?.(message.report);
        return;
      case "limited":
        this.limitWaiters.shift()?.(message.pages);
        return;
      case "closed":
      case "opened":
      case "open-failed":
        return;
      default:
        message satisfies never;
    }
  }

  private answered(done: StorageDone): void {
    const waiting = this.waiting.get(done.seq);
    if (waiting === undefined) return; // failed already
    this.waiting.delete(done.seq);
    if (waiting.awaited) this.awaitedCount--;
    waiting.done(done);
  }

  private failed(error: Error): void {
    if (this.fatal !== undefined) return;
    this.fatal = error;
    for (const waiting of this.takeWaiting()) waiting.fail(error);
  }

  private takeWaiting(): Waiting[] {
    const all = [...this.waiting.values()];
    this.waiting.clear();
    this.awaitedCount = 0;
    this.updateRef();
    return all;
  }

  /** Posts a request whose answer someone awaits: the promise settles with `onDone`'s value. */
  private request<T>(request: DistributiveOmit<StorageRequest, "seq">, onDone: (reply: StorageDone) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.post(request, true, (reply) => resolve(onDone(reply)), reject);
    });
  }

  /** Posts a request; returns its sequence number. */
  private post(
    request: DistributiveOmit<StorageRequest, "seq">,
    awaited: boolean,
    done?: (reply: StorageDone) => void,
    fail: (error: Error) => void = () => {},
  ): number {
    const seq = ++this.seq;
    const full = { ...request, seq } as StorageRequest;
    const report = this.options.onRequestDone;
    this.waiting.set(seq, {
      done: (reply) => {
        report?.({ op: full.op, durationMs: reply.durationMs, ...(full.op === "save" ? { sync: full.sync } : {}) });
        done?.(reply);
      },
      fail,
      awaited,
    });
    if (awaited && this.awaitedCount++ === 0) this.updateRef();
    // A save's packed entries are moved to the thread, not copied again.
    this.outbox.push(full);
    if (full.op === "save" && full.entries.data instanceof Uint8Array) this.outboxTransfers.push(full.entries.data.buffer as ArrayBuffer);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // Once the loop's turn is done: its requests (a save, an apply, a sync...) go in one message.
      queueMicrotask(() => this.flush());
    }
    return seq;
  }

  /** Posts the requests made since the last flush, in order, as one message. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.outbox.length === 0) return;
    const requests = this.outbox;
    const transfers = this.outboxTransfers;
    this.outbox = [];
    this.outboxTransfers = [];
    this.worker.postMessage({ type: "requests", requests } satisfies ToStorageThread, transfers);
  }

  /** The worker keeps the process alive only while someone awaits an answer from it. */
  private updateRef(): void {
    if (this.closed) return;
    if (this.awaitedCount > 0 || this.limitWaiters.length > 0) this.worker.ref();
    else this.worker.unref();
  }

  private saveWritten(seq: number, place: AppendPlace | undefined): void {
    const oldest = this.unconfirmedSaves[0];
    if (oldest === undefined || oldest.seq !== seq) return; // a save of no entries
    this.unconfirmedSaves.shift();
    if (oldest.inRing) {
      // Its region may go once its entries are applied too (see PackRing), perhaps already.
      this.ring?.written();
      this.ring?.release(this.applied);
    }
    assert(place !== undefined, `save ${seq} of entries answered without where they went`);
    if (!oldest.replaced) this.logReader.appended(place, oldest.entries);
    this.pinUnconfirmed();
  }

  /** Pins in the tail every entry from the first one a save not yet written wrote. */
  private pinUnconfirmed(): void {
    let from: number | undefined;
    for (const save of this.unconfirmedSaves) {
      const first = (save.entries[0] as Entry).index;
      from = from === undefined ? first : Math.min(from, first);
    }
    this.tail.pinFrom(from);
  }

  private adoptApplied(applied: StorageDone["applied"]): void {
    assert(applied !== undefined, "apply answered without its applied index");
    // Invariant: the applied index never decreases (answers come in call order).
    assert(applied.index >= this.applied, `applied ${applied.index} below ${this.applied}`);
    this.applied = applied.index;
    // The thread read the entries up to here for the last time (see PackRing).
    this.ring?.release(this.applied);
    // Sent only when it changed (see StorageDone.applied).
    if (applied.membership !== undefined) this.adoptMembership(applied.membership);
  }

  private adoptMembership(membership: Membership): void {
    this.voters = membership.voters;
    this.learners = membership.learners;
    this.addresses = membership.addresses;
    this.changedIndex = membership.changedIndex;
  }

  private learnersField(): { learners?: readonly NodeId[] } {
    return this.learners.length > 0 ? { learners: this.learners } : {};
  }

  private assertOpen(): void {
    assert(!this.closed, `storage ${this.file} used after close`);
  }

  /** Writes are refused while the disk is full (its error, as SqliteStorage would throw it) and after a failure. */
  private assertWritable(): void {
    this.assertOpen();
    if (this.fatal !== undefined) throw this.fatal;
    if (this.diskFull !== undefined) throw this.diskFull.error;
  }
}

/** Omit over each member of a union. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
