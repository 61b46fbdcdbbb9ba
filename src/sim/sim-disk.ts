import { assert, AssertionError } from "../lib/assert.ts";
import { checkCompact } from "../storage/snapshot-checks.ts";
import type { Entry, HardState, NodeId, SnapshotMetadata } from "../raft/types.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import type { MemberAddress, Membership } from "../kv/membership.ts";
import type { ImageRow, KvImageReader, KvStorage, ListedValue, StoredValue } from "../storage/kv-storage.ts";
import { MemoryKvStorage } from "../storage/memory-storage.ts";

/** How the simulator runs a disk's fsyncs: when one started now finishes, on the simulated clock. */
export interface SimDiskScheduler {
  /** Calls `done` after the fsync latency the simulator draws (never synchronously). */
  fsync(done: () => void): void;
  /**
   * When given, the disk answers applies and installs as a storage writing on its own thread does
   * (src/storage/kv-storage.ts, `applyEntries`): with a promise, settled in order, each one this
   * long after the one before (`done` is never called synchronously).
   */
  storageThread?(done: () => void): void;
  /**
   * Hands `fn` to the node's process: at once while it runs, else once it runs again. What the
   * kernel or the storage thread finished while the process stood still (a stall: GC, SIGSTOP) is
   * seen only then (found in review: a stalled node's fsyncs and applies were answered, and ran its
   * turns, answered its clients and sent its messages meanwhile).
   */
  deliver(fn: () => void): void;
  /**
   * How many of `unsynced` saves (written since the last finished fsync, in order) a power loss
   * keeps, as pages the kernel had written back before the power went: 0 to `unsynced`.
   */
  keptOnPowerLoss?(unsynced: number): number;
  /** Told what each apply did, entry by entry, as the apply runs (for the simulator's checks). */
  applied?(entries: readonly Entry[], results: readonly ApplyResult[]): void;
  /** A request failed on the storage thread's copy where it had gone through on the caller's: a simulator bug, failing the run. */
  raise?(error: unknown): void;
}

/**
 * The node's storage on a simulated disk: the in-memory twin of sqlite (`MemoryKvStorage`, which
 * runs the same save checks, apply plan and codec), with the two things a real disk adds that the
 * node loop must survive:
 * - **fsync in the background**: `sync()` settles only when the simulator says the fsync finished,
 *   and covers what was written before it began (`durable` is that image);
 * - **a full disk**: while `full`, every write throws SQLite's "database or disk is full" (a log
 *   segment's write would throw ENOSPC: the node treats both alike, src/lib/disk-full.ts).
 *
 * A crash keeps what was written (the page cache survived) or, on power loss, only `durable`, or
 * every other time that log with the state machine as written (see `afterCrash`). With a storage
 * thread, what was written is what the thread ran of the requests posted to it, in order: a crash
 * loses the rest (see `afterCrash`).
 *
 * With a storage thread (`SimDiskScheduler.storageThread`), an apply or install is written at once
 * but committed by the thread later, in order, and confirmed later still: reads (`get`, `list`,
 * `stateVersion`, `valueBytes`, `openImage`) see it from the thread's commit, as the real storage's
 * read connection sees only what its thread committed (src/storage/sqlite-reads.ts), which may be
 * before the node heard of it or after it handed it over; the applied index and configuration the
 * node sees move, and its promise resolves, only once the answer reaches the node (found in a
 * review: reads saw an apply the moment it was handed over, so a node serving reads at the index it
 * had handed over, not the one confirmed, passed every seed). A full disk
 * there behaves as on ThreadedStorage (src/storage/threaded-storage.ts): the first write to meet
 * it is taken (posted) and blocks the thread, which retries it until space returns; the writes
 * after it are refused with the disk-full error, and syncs, applies and installs answer only once
 * the thread has gone on. A crash meanwhile loses the blocked write (it never committed). A sync
 * starts only once the thread's earlier applies and installs are done, as the real one is posted
 * behind them; the ones after it run while it does.
 */
export class SimDisk implements KvStorage {
  /** What an fsync that finished made durable: a power loss comes back to this. */
  private durableImage: MemoryKvStorage;
  /** While true, writes fail as on a full disk (see the class comment for a storage thread). */
  get full(): boolean {
    return this.fullNow;
  }
  set full(full: boolean) {
    this.fullNow = full;
    if (!full && this.threadBlocked !== undefined) {
      // Space again: the thread's retry of the blocked write goes through, and its queue moves on.
      const blocked = this.threadBlocked;
      this.threadBlocked = undefined;
      blocked.resume();
    }
  }
  private fullNow = false;
  /**
   * With a storage thread: set while a write met the full disk and the thread retries it;
   * `resumed` settles when the thread goes on (the write, and the queue after it).
   */
  private threadBlocked: { op: string; resumed: Promise<void>; resume: () => void } | undefined;
  /** With a storage thread: an install was posted and its answer has not come (one at a time, as on ThreadedStorage). */
  private installPending = false;
  /** Writes a storage thread took while the disk was full and retried until space returned. */
  threadBlockedWrites = 0;
  /** Writes refused because the disk was full: proof the path was exercised. */
  fullRefusals = 0;
  /** Snapshot image chunks staged and snapshots installed: proof the paths were exercised. */
  chunksStaged = 0;
  snapshotsInstalled = 0;
  /** Power losses, and those that kept state machine writes the log's durable image is behind (see `afterCrash`). */
  powerLosses = 0;
  stateMachineAhead = 0;
  /** Power losses that kept some saves written after the last finished fsync (see `afterCrash`). */
  unsyncedSavesKept = 0;
  /** Crashes without power loss that lost requests (saves, applies, installs...) the storage thread had not run (see `afterCrash`). */
  threadWorkLost = 0;
  /**
   * The saves written since the durable image, in order, numbered among the writes to the log;
   * `durableSeq` is the last of those writes the durable image holds, `barrierSeq` the last that was
   * not a save (a compaction, an install, a bootstrap): saves after the durable image are kept by a
   * power loss only while none is unsynced, as they could not be replayed on it.
   */
  private unsyncedSaves: { readonly seq: number; readonly hardState: HardState | undefined; readonly entries: readonly Entry[] }[] = [];
  private logWrites = 0;
  private durableSeq = 0;
  private barrierSeq = 0;
  /** The last of the log's writes the storage thread ran (every one, without a thread). */
  private threadRanSeq = 0;
  /** Fsyncs started and finished. */
  syncsStarted = 0;
  syncsFinished = 0;

  /** Applies and installs answered later by the storage thread, and of those the installs. */
  threadAnswers = 0;
  threadInstalls = 0;
  /** The applied index and configuration as the storage's thread has confirmed them (see the class comment). */
  private confirmedApplied: number;
  private confirmedMembership: Membership;
  /** The storage thread's queue: settles once the last request posted has run. */
  private threadTail: Promise<void> = Promise.resolve();
  /**
   * With a storage thread: the storage as the thread has written it, request by request in the
   * order posted (ThreadedStorage's worker runs each to its end, in order). Reads see it, as the real
   * read connection sees what the thread committed; a crash without power loss comes back to it.
   * `current` is the caller's side: what the node sees of its writes at once (ThreadedStorage's mirror).
   */
  private threadStorage: MemoryKvStorage | undefined;

  constructor(
    private current: MemoryKvStorage,
    private readonly scheduler: SimDiskScheduler,
  ) {
    this.durableImage = current.clone();
    this.confirmedApplied = current.appliedIndex();
    this.confirmedMembership = current.membership();
    if (scheduler.storageThread !== undefined) this.threadStorage = current.clone();
  }

  /** What reads see: without a storage thread what was written, with one what the thread committed. */
  private get readable(): MemoryKvStorage {
    return this.threadStorage ?? this.current;
  }

  /**
   * The storage a node restarts from after a crash: everything written, or on power loss what was
   * fsynced. The log and the state machine are two files (src/storage/sqlite-storage.ts), whose
   * unsynced pages a power loss keeps or drops each on its own: every other power loss on this
   * disk keeps all the state machine wrote (its pages had reached the disk) with only the log's
   * durable image, which the storage reconciles at open (`MemoryKvStorage.reopened`).
   */
  afterCrash(powerLoss: boolean): MemoryKvStorage {
    // As written: with a storage thread, what it ran of the requests posted to it (the real thread
    // dies with the process; the node applies again from its log what it had not).
    const written = this.threadStorage ?? this.current;
    if (!powerLoss) {
      if (written !== this.current && (written.appliedIndex() !== this.current.appliedIndex() || written.lastIndex() !== this.current.lastIndex() || written.snapshot().index !== this.current.snapshot().index)) {
        this.threadWorkLost++;
      }
      return written.clone();
    }
    this.powerLosses++;
    const log = this.logAfterPowerLoss();
    if (this.powerLosses % 2 === 0) {
      if (written.appliedIndex() > this.durableImage.appliedIndex()) this.stateMachineAhead++;
      return MemoryKvStorage.reopened(written, log);
    }
    return log;
  }

  /**
   * The durable image, with the first of the saves written since that the simulator says reached
   * the disk anyway (`keptOnPowerLoss`): the log's segment is appended in order, so what a crash
   * keeps of it is a prefix of what was written (the segment log cuts a torn last record at open).
   */
  private logAfterPowerLoss(): MemoryKvStorage {
    const image = this.durableImage.clone();
    // Only saves the thread ran can have reached the disk.
    const saves = this.threadBlocked === undefined && this.barrierSeq <= this.durableSeq ? this.unsyncedSaves.filter((save) => save.seq <= this.threadRanSeq) : [];
    const kept = saves.length === 0 ? 0 : (this.scheduler.keptOnPowerLoss?.(saves.length) ?? 0);
    if (kept > 0) this.unsyncedSavesKept++;
    for (const save of saves.slice(0, kept)) image.save(save.hardState, save.entries, false);
    return image;
  }

  /** Starts over from `storage` (a restart after a crash): what is on it is durable. */
  restartFrom(storage: MemoryKvStorage): void {
    this.current = storage;
    this.durableImage = storage.clone();
    this.unsyncedSaves = [];
    this.durableSeq = this.logWrites;
    // The dead process's thread answers nobody: its requests never settle (see onThread).
    this.confirmedApplied = storage.appliedIndex();
    this.confirmedMembership = storage.membership();
    this.threadRanSeq = this.logWrites;
    if (this.threadStorage !== undefined) this.threadStorage = storage.clone();
    this.threadTail = Promise.resolve();
    this.threadBlocked = undefined; // its thread died retrying; its promises never settle
    this.installPending = false;
  }

  /** What the last finished fsync made durable (for checkers): what a power loss would come back to. */
  durable(): MemoryKvStorage {
    return this.durableImage;
  }

  /** The state as written so far (for checkers). */
  contents(): MemoryKvStorage {
    return this.current;
  }

  /**
   * Runs a write on `current`; with a storage thread, posts `replay` (the same write) to it, which
   * runs it on `threadStorage` once the requests before it ran (without a drawn latency: applies
   * and installs take theirs in `onThread`, which they post themselves).
   */
  private write<T>(op: string, run: () => T, replay?: (thread: MemoryKvStorage) => unknown): T {
    const threaded = this.scheduler.storageThread !== undefined;
    if ((this.full && !threaded) || this.threadBlocked !== undefined) {
      this.fullRefusals++;
      throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
    }
    if (this.full) {
      // Posted to the thread, which meets the full disk and retries it until space returns.
      let resume = () => {};
      const resumed = new Promise<void>((resolve) => (resume = resolve));
      this.threadBlocked = { op, resumed, resume };
      this.threadBlockedWrites++;
      this.threadTail = this.threadTail.then(() => resumed);
    }
    const result = run();
    if (threaded && replay !== undefined) this.postToThread(replay);
    return result;
  }

  /** Posts `replay` to the storage thread: it runs once the requests before it ran, unless this process died first. */
  private postToThread(replay: (thread: MemoryKvStorage) => unknown): void {
    const storage = this.current;
    this.threadTail = this.threadTail.then(() => {
      if (this.current === storage) this.runOnThread(replay);
    });
  }

  /** Runs a request on the thread's storage; a failure there is the simulator's (the same write went through on `current`). */
  private runOnThread(replay: (thread: MemoryKvStorage) => unknown): void {
    try {
      replay(this.threadStorage as MemoryKvStorage);
    } catch (error: unknown) {
      this.scheduler.raise?.(error);
    }
  }

  /** See `KvStorage.isDiskFull`: with a storage thread, while a write waits on the full disk. */
  isDiskFull(): boolean {
    return this.threadBlocked !== undefined;
  }

  /** See `KvStorage.diskFullWrite`. */
  diskFullWrite(): { readonly op: string; readonly error: Error } | undefined {
    return this.threadBlocked === undefined ? undefined : { op: this.threadBlocked.op, error: new Error("database or disk is full") };
  }

  // ---- Reads: straight through ----------------------------------------------------------------
  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners?: readonly NodeId[] } {
    return this.current.initialState();
  }
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    return this.current.entries(lo, hi, maxBytes);
  }
  term(index: number): number {
    return this.current.term(index);
  }
  firstIndex(): number {
    return this.current.firstIndex();
  }
  lastIndex(): number {
    return this.current.lastIndex();
  }
  snapshot(): SnapshotMetadata {
    return this.current.snapshot();
  }
  snapshotForSend(): SnapshotMetadata | undefined {
    return this.current.snapshotForSend();
  }
  membership(): Membership {
    return this.scheduler.storageThread === undefined ? this.current.membership() : this.confirmedMembership;
  }
  appliedIndex(): number {
    return this.scheduler.storageThread === undefined ? this.current.appliedIndex() : this.confirmedApplied;
  }
  /** As the real storage reads it: with a storage thread, of what the thread committed. */
  dataBytes(): number {
    return this.readable.dataBytes();
  }
  get(key: string): StoredValue | undefined {
    return this.readable.get(key);
  }
  /** What `get` reads: with a storage thread, what it committed, confirmed to the node or not. */
  stateVersion(): number {
    return this.readable.stateVersion();
  }
  valueBytes(key: string): number | undefined {
    return this.readable.valueBytes(key);
  }
  list(prefix: string, after: string | undefined, limit: number, bytesMax?: number): ListedValue[] {
    return this.readable.list(prefix, after, limit, bytesMax);
  }
  openImage(): KvImageReader {
    return this.readable.openImage();
  }

  // ---- Writes: refused while the disk is full -------------------------------------------------
  save(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): void {
    const seq = this.logWrites + 1;
    this.write(
      "save",
      () => this.current.save(hardState, entries, sync),
      (thread) => {
        thread.save(hardState, entries, false);
        this.threadRanSeq = seq;
      },
    );
    this.logWrites = seq;
    this.unsyncedSaves.push({ seq, hardState, entries });
    if (this.threadStorage === undefined) this.threadRanSeq = seq;
  }
  bootstrap(voters: readonly NodeId[], addresses?: readonly MemberAddress[]): void {
    this.write("bootstrap", () => this.current.bootstrap(voters, addresses), (thread) => thread.bootstrap(voters, addresses));
    this.noteLogBarrier();
    this.confirmedMembership = this.current.membership(); // before any apply: nothing to wait for
  }
  bootstrapJoined(configuration: Omit<Membership, "changedIndex">, changedIndex: number): void {
    this.write("bootstrap-joined", () => this.current.bootstrapJoined(configuration, changedIndex), (thread) => thread.bootstrapJoined(configuration, changedIndex));
    this.noteLogBarrier();
    this.confirmedMembership = this.current.membership(); // before any apply: nothing to wait for
  }
  applyEntries(entries: readonly Entry[]): ApplyResult[] | Promise<ApplyResult[]> {
    this.checkDurable(entries[entries.length - 1]);
    const results = this.write("apply", () => this.current.applyEntries(entries));
    this.scheduler.applied?.(entries, results);
    return this.onThread(results, (thread) => thread.applyEntries(entries));
  }
  /** Compaction steps taken (a compaction of more entries than a step takes several). */
  compactSteps = 0;
  compact(index: number): void {
    // As ThreadedStorage checks it: against the applied index the thread confirmed, not the one handed over.
    if (this.scheduler.storageThread !== undefined) checkCompact({ snapshotIndex: this.current.snapshot().index, appliedIndex: this.confirmedApplied, lastIndex: this.current.lastIndex() }, index);
    this.compactSteps++;
    this.write("compact", () => this.current.compact(index), (thread) => thread.compact(index));
    this.noteLogBarrier();
  }

  /**
   * The node applies only entries on its own disk (src/raft/log.ts): with the log and the state
   * machine in two files, a state machine ahead of the log could outlive a power loss that took the
   * log's tail. So the last entry of an apply must be in the durable image, term for term (or
   * below its snapshot).
   */
  private checkDurable(last: Entry | undefined): void {
    if (last === undefined) return;
    const durable = this.durableImage;
    if (last.index <= durable.snapshot().index) return;
    if (last.index > durable.lastIndex() || durable.term(last.index) !== last.term) {
      throw new AssertionError(`applied entry ${last.index} (term ${last.term}) before an fsync made it durable (durable log ends at ${durable.lastIndex()})`);
    }
  }
  stageImageChunk(imageId: string, rows: readonly ImageRow[], first: boolean): void {
    try {
      this.write("stage", () => this.current.stageImageChunk(imageId, rows, first), (thread) => thread.stageImageChunk(imageId, rows, first));
    } catch (error) {
      // As the server's staging (src/storage/staging-file.ts): a chunk of the image being staged
      // that meets the full disk ends that image, and its rows go with it.
      if (first || this.current.stagedImageId() === imageId) this.discardStagedImage();
      throw error;
    }
    this.chunksStaged++;
  }
  installSnapshot(metadata: SnapshotMetadata, imageId: string, addresses?: readonly MemberAddress[]): void | Promise<void> {
    // As ThreadedStorage: one install at a time (the node waits for it before its next Ready).
    assert(!this.installPending, "an install while another is pending");
    this.write("install", () => this.current.installSnapshot(metadata, imageId, addresses));
    this.noteLogBarrier();
    this.snapshotsInstalled++;
    if (this.scheduler.storageThread !== undefined) {
      this.installPending = true;
      return (this.onThread(undefined, (thread) => thread.installSnapshot(metadata, imageId, addresses)) as Promise<void>).then(() => {
        this.installPending = false;
        this.threadInstalls++;
      });
    }
  }

  /**
   * `value` at once without a storage thread; with one, a promise of it that resolves once the
   * thread ran `replay` (after the requests before it, and its own drawn latency) and the answer
   * reached the process, confirming the applied index as it was when posted. The thread goes on to
   * its next request meanwhile, whether or not the process runs.
   */
  private onThread<T>(value: T, replay: (thread: MemoryKvStorage) => unknown): T | Promise<T> {
    const thread = this.scheduler.storageThread;
    if (thread === undefined) return value;
    const storage = this.current;
    const applied = storage.appliedIndex();
    const membership = storage.membership();
    let ran = () => {};
    const done = new Promise<void>((resolve) => (ran = resolve));
    const answered = new Promise<void>((resolve) => {
      void this.threadTail.then(() =>
        thread(() => {
          // A crash since then replaced the storage: the request died with its process.
          if (this.current !== storage) return;
          this.runOnThread(replay);
          ran();
          this.scheduler.deliver(() => this.current === storage && resolve());
        }),
      );
    });
    this.threadTail = done;
    return answered.then(() => {
      if (applied >= this.confirmedApplied) {
        this.confirmedApplied = applied;
        this.confirmedMembership = membership;
      }
      this.threadAnswers++;
      return value;
    });
  }
  discardStagedImage(): void {
    this.current.discardStagedImage();
    if (this.threadStorage !== undefined) this.postToThread((thread) => thread.discardStagedImage());
  }

  /** A write to the log that is not a save (not replayed as one): until synced, a power loss keeps no save after it. */
  private noteLogBarrier(): void {
    this.barrierSeq = ++this.logWrites;
  }

  /** Covers what was written before it began; settles when the simulator finishes it. */
  sync(): Promise<void> {
    const image = this.current.clone();
    const storage = this.current;
    const covered = this.logWrites;
    this.syncsStarted++;
    const fsync = () =>
      new Promise<void>((resolve) => {
        this.scheduler.fsync(() => {
          // A crash since then replaced the storage: this fsync belonged to the process that died.
          if (this.current !== storage) return;
          // Durable when the kernel is done; the process learns it when it runs.
          this.durableImage = image;
          this.durableSeq = covered;
          this.unsyncedSaves = this.unsyncedSaves.filter((save) => save.seq > covered);
          this.syncsFinished++;
          this.scheduler.deliver(() => this.current === storage && resolve());
        });
      });
    if (this.scheduler.storageThread === undefined) return fsync();
    // Posted behind the thread's earlier requests: its fdatasync starts once they are done (and once
    // a write blocked by a full disk went through); the requests after it run meanwhile, as on the
    // real thread (src/storage/storage-thread.ts).
    return this.threadTail.then(() => (this.current === storage ? fsync() : new Promise<void>(() => {})));
  }

  close(): void {
    // The simulated disk outlives the process: a restart opens it again.
  }
}
