import { assert } from "../lib/assert.ts";
import { compareUtf8 } from "../lib/utf8-order.ts";
import { type Entry, emptyHardState, type HardState, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import { type ApplyResult, executeStep, type KvTable, planApply, sessionClockKey, startSessionClock } from "../kv/apply-plan.ts";
import { isReservedKey, sessionKeyPrefix } from "../kv/command.ts";
import { addressesAfterInstall, type MemberAddress, type Membership, membershipAfter, sameMembers, withMissingAddresses } from "../kv/membership.ts";
import {
  type ImageRow,
  type KvImageReader,
  type KvStorage,
  type ListedValue,
  StorageError,
  type StoredValue,
} from "./kv-storage.ts";
import { withinBytes } from "../lib/page-bytes.ts";
import { checkSave } from "./save-checks.ts";
import {
  checkCompact,
  checkInstall,
  imageRowBytes,
  planStage,
  snapshotConfiguration,
  stagedImageBytesMaxDefault,
  type StagingState,
} from "./snapshot-checks.ts";
import { checkVotersMatch, normalizeVoters } from "./voters.ts";

/** Options of `createMemoryKvStorage`. */
export interface MemoryKvStorageOptions {
  /** Voters to record at creation, as `bootstrap` would. */
  readonly voters?: readonly NodeId[];
  /** As `SqliteStorageOptions.stagedImageBytesMax`. */
  readonly stagedImageBytesMax?: number;
}

/** Named in errors where the sqlite storage names its file. */
const memoryFile = "memory";

/**
 * Creates the in-memory twin of `openSqliteStorage`, for fast tests of the node loop. It runs
 * the same save checks, apply plan and command codec; only the tables are Maps and arrays.
 */
export function createMemoryKvStorage(options: MemoryKvStorageOptions = {}): MemoryKvStorage {
  const storage = new MemoryKvStorage(options.stagedImageBytesMax ?? stagedImageBytesMaxDefault);
  if (options.voters !== undefined) storage.bootstrap(options.voters);
  return storage;
}

/**
 * A `KvStorage` held in memory. `save` and `applyEntries` are atomic (all checks and decoding run
 * before any change), as one sqlite transaction is (a save is kinder than a real one, whose
 * records a power loss may keep a prefix of); `clone()` is the state a node restarts from
 * after a crash. Saved entry data is copied, so callers may reuse their buffers; values returned
 * by `get` are shared views: do not mutate them. Staging is not durable here either: `clone()`
 * (a restart) drops it.
 */
export class MemoryKvStorage implements KvStorage {
  private hardState: HardState = emptyHardState;
  private voters: readonly NodeId[] = [];
  private learners: readonly NodeId[] = [];
  private addresses: readonly MemberAddress[] = [];
  private changedIndex = 0;
  /** Where the log was compacted or a snapshot installed; index 0 when never. */
  private snap: SnapshotMetadata = { index: 0, term: 0, voters: [] };
  /** log[0] is the entry at snap.index + 1. */
  private log: Entry[] = [];
  private values = new Map<string, StoredValue>();
  /**
   * The session keys of `values` (not the session clock), oldest version first: a Set keeps
   * insertion order, and a put's version is the index being applied, above every one there.
   */
  private sessionOrder = new Set<string>();
  /** The kv map as `executeStep` sees it. */
  private readonly kvTable: KvTable = {
    get: (key) => this.values.get(key),
    put: (key, value, version) => {
      this.values.set(key, { value, version });
      if (isSessionKey(key)) {
        this.sessionOrder.delete(key);
        this.sessionOrder.add(key);
      }
    },
    delete: (key) => {
      this.sessionOrder.delete(key);
      return this.values.delete(key);
    },
    oldestSessions: (limit) => {
      const rows: ImageRow[] = [];
      for (const key of this.sessionOrder) {
        if (rows.length >= limit) break;
        const stored = this.values.get(key) as StoredValue;
        rows.push({ key, value: stored.value, version: stored.version });
      }
      return rows;
    },
    // A scan of every key: the in-memory twin holds what tests hold.
    range: (prefix, after, limit) =>
      [...this.values.keys()]
        .filter((key) => key.startsWith(prefix) && compareUtf8(key, after) > 0)
        .sort(compareUtf8)
        .slice(0, limit)
        .map((key) => ({ key, ...(this.values.get(key) as StoredValue) })),
    keysFrom: (from, end, limit) =>
      [...this.values.keys()]
        .filter((key) => compareUtf8(key, from) >= 0 && (end === undefined || compareUtf8(key, end) < 0))
        .sort(compareUtf8)
        .slice(0, limit),
  };
  private applied = 0;
  private staged = new Map<string, StoredValue>();
  private staging: StagingState = { imageId: undefined, bytes: 0 };
  private closed = false;

  /** Use `createMemoryKvStorage`. */
  constructor(private readonly stagedImageBytesMax: number = stagedImageBytesMaxDefault) {}

  /** As `SqliteStorage.initialState`. */
  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners?: readonly NodeId[] } {
    this.assertOpen();
    return { hardState: this.hardState, voters: this.voters, ...this.learnersField() };
  }

  /** Entries in [lo, hi), at most `maxBytes` of data but at least one when lo < hi. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
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

  /** Term at `index` for firstIndex()-1 <= index <= lastIndex(); term(0) is 0. */
  term(index: number): number {
    this.assertOpen();
    if (index === this.snap.index) return this.snap.term;
    assert(index >= this.firstIndex() && index <= this.lastIndex(), `term(${index}) out of range`);
    return (this.log[index - this.firstIndex()] as Entry).term;
  }

  /** One past the snapshot (1 for a log never compacted). */
  firstIndex(): number {
    return this.snap.index + 1;
  }

  /** As `SqliteStorage.snapshot`. */
  snapshot(): SnapshotMetadata {
    this.assertOpen();
    if (this.snap.index === 0) return { index: 0, term: 0, voters: this.voters };
    return this.snap;
  }

  /** As `SqliteStorage.snapshotForSend`. */
  snapshotForSend(): SnapshotMetadata | undefined {
    this.assertOpen();
    if (this.applied === 0) return undefined;
    return { index: this.applied, term: this.term(this.applied), voters: this.voters, ...this.learnersField() };
  }

  /** Index of the last saved entry; the snapshot's index when none follows it. */
  lastIndex(): number {
    this.assertOpen();
    return this.snap.index + this.log.length;
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
      this.log.length = first.index - this.firstIndex(); // a new leader overwrote a conflicting suffix
      for (const entry of entries) {
        this.log.push({ index: entry.index, term: entry.term, type: entry.type, data: entry.data.slice() });
      }
    }
    if (hardState !== undefined) this.hardState = { term: hardState.term, vote: hardState.vote, commit: hardState.commit };
  }

  /** As `SqliteStorage.bootstrap`. */
  bootstrap(voters: readonly NodeId[], addresses: readonly MemberAddress[] = []): void {
    this.assertOpen();
    const normalized = normalizeVoters(voters, memoryFile);
    if (this.voters.length > 0 && this.changedIndex === 0) checkVotersMatch(this.voters, normalized, memoryFile);
    if (this.voters.length === 0) this.voters = normalized;
    this.addresses = withMissingAddresses(this.addresses, addresses);
  }

  /** As `SqliteStorage.bootstrapJoined`. */
  bootstrapJoined(configuration: Omit<Membership, "changedIndex">, changedIndex: number): void {
    this.assertOpen();
    assert(this.voters.length === 0 && this.applied === 0 && this.lastIndex() === 0, "bootstrapJoined on storage that is not empty");
    assert(Number.isSafeInteger(changedIndex) && changedIndex >= 1, `joined at index ${changedIndex}`);
    this.voters = normalizeVoters(configuration.voters, memoryFile);
    this.learners = [...configuration.learners].sort((a, b) => a - b);
    this.addresses = withMissingAddresses([], configuration.addresses);
    this.changedIndex = changedIndex;
  }

  /** As `SqliteStorage.membership`. */
  membership(): Membership {
    this.assertOpen();
    return { voters: this.voters, learners: this.learners, addresses: this.addresses, changedIndex: this.changedIndex };
  }

  /** As `SqliteStorage.applyEntries`: atomic, skips entries at or below the applied index. */
  applyEntries(entries: readonly Entry[]): ApplyResult[] {
    this.assertOpen();
    const plan = planApply(
      {
        appliedIndex: this.applied,
        commitIndex: this.hardState.commit,
        lastIndex: this.lastIndex(),
        term: (index) => this.term(index),
        badCommand: (message, index, cause) => new StorageError("bad_command", message, memoryFile, index, { cause }),
      },
      entries,
    );
    const results: ApplyResult[] = [];
    let membership = this.membership();
    for (const step of plan.steps) {
      if (step.kind === "conf-change") membership = membershipAfter(membership, step.change, step.index);
      results.push(executeStep(step, this.kvTable));
    }
    // The configuration moves with the applied index, atomically (as sqlite's one transaction).
    this.voters = membership.voters;
    this.learners = membership.learners;
    this.addresses = membership.addresses;
    this.changedIndex = membership.changedIndex;
    this.applied = plan.appliedIndex;
    return results;
  }

  /** The index of the last applied entry. */
  appliedIndex(): number {
    this.assertOpen();
    return this.applied;
  }

  /** As `SqliteStorage.dataBytes`: keys and values (the log is not counted), counted each call (tests only hold a few). */
  dataBytes(): number {
    this.assertOpen();
    let bytes = 0;
    for (const [key, stored] of this.values) bytes += key.length + stored.value.byteLength + 8;
    for (const [key, stored] of this.staged) bytes += key.length + stored.value.byteLength + 8;
    return bytes;
  }

  /** The value of `key` and its version; the bytes are shared, not copied. */
  get(key: string): StoredValue | undefined {
    this.assertOpen();
    return this.values.get(key);
  }

  /** See `KvStorage.stateVersion`. */
  stateVersion(): number {
    this.assertOpen();
    return this.applied;
  }

  /** See `KvStorage.valueBytes`. */
  valueBytes(key: string): number | undefined {
    this.assertOpen();
    return this.values.get(key)?.value.byteLength;
  }

  /** As `SqliteStorage.list` (UTF-8 byte order, as sqlite's BINARY collation compares). */
  list(prefix: string, after: string | undefined, limit: number, bytesMax = Number.POSITIVE_INFINITY): ListedValue[] {
    this.assertOpen();
    const keys = [...this.values.keys()]
      // The state machine's own rows are listed only when asked for by their prefix (the node's lease scans).
      .filter((key) => key.startsWith(prefix) && (!isReservedKey(key) || isReservedKey(prefix)) && (after === undefined || compareUtf8(key, after) > 0))
      .sort(compareUtf8)
      .slice(0, limit);
    return withinBytes(
      keys.map((key) => ({ key, ...(this.values.get(key) as StoredValue) })),
      bytesMax,
    );
  }

  /** As `SqliteStorage.compact`. */
  compact(index: number): void {
    this.assertOpen();
    if (!checkCompact({ snapshotIndex: this.snap.index, appliedIndex: this.applied, lastIndex: this.lastIndex() }, index)) return;
    const term = this.term(index);
    this.log = this.log.slice(index - this.snap.index);
    this.snap = { index, term, voters: this.voters, ...this.learnersField() };
  }

  /**
   * As `SqliteStorage.openImage`. Values are never changed in place (a put replaces the Map's
   * entry), so a sorted copy of the entries at open is a consistent image whatever happens after.
   */
  openImage(): KvImageReader {
    this.assertOpen();
    const metadata: SnapshotMetadata = { index: this.applied, term: this.term(this.applied), voters: this.voters, ...this.learnersField() };
    const rows: ImageRow[] = [...this.values]
      .map(([key, stored]) => ({ key, value: stored.value, version: stored.version }))
      .sort((a, b) => compareUtf8(a.key, b.key)); // as SQLite orders TEXT: UTF-8 bytes
    let position = 0;
    let closed = false;
    return {
      metadata,
      addresses: this.addresses,
      next(bytesMax: number): ImageRow[] {
        assert(!closed, "image read after close");
        assert(Number.isSafeInteger(bytesMax) && bytesMax >= 1, `image page of ${bytesMax} bytes`);
        const page: ImageRow[] = [];
        let bytes = 0;
        while (position < rows.length) {
          const row = rows[position] as ImageRow;
          const rowBytes = imageRowBytes(row);
          if (page.length > 0 && bytes + rowBytes > bytesMax) break;
          page.push(row);
          bytes += rowBytes;
          position++;
        }
        return page;
      },
      close(): void {
        closed = true;
      },
    };
  }

  /** As `SqliteStorage.stageImageChunk`; value bytes are copied. */
  stageImageChunk(imageId: string, rows: readonly ImageRow[], first: boolean): void {
    this.assertOpen();
    const ownsStaging = first || imageId === this.staging.imageId;
    try {
      const next = planStage(this.staging, imageId, rows, first, this.stagedImageBytesMax, memoryFile);
      const keys = new Set<string>();
      for (const row of rows) {
        if (keys.has(row.key) || (!first && this.staged.has(row.key))) {
          throw new StorageError("image_refused", `image carries key ${JSON.stringify(row.key.slice(0, 64))} twice`, memoryFile);
        }
        keys.add(row.key);
      }
      if (first) this.staged = new Map();
      for (const row of rows) this.staged.set(row.key, { value: row.value.slice(), version: row.version });
      this.staging = next;
    } catch (error: unknown) {
      if (ownsStaging) this.discardStagedImage(); // as ImageStaging.stage: whatever the error
      throw error;
    }
  }

  /** As `SqliteStorage.installSnapshot`. */
  installSnapshot(metadata: SnapshotMetadata, imageId: string, addresses: readonly MemberAddress[] = []): void {
    this.assertOpen();
    checkInstall(this.staging, this.applied, metadata, imageId);
    const { voters, learners } = snapshotConfiguration(metadata, memoryFile);
    if (!sameMembers({ voters, learners }, this.membership())) this.changedIndex = metadata.index;
    this.addresses = addressesAfterInstall(addresses, this.addresses, voters, learners);
    this.snap = { index: metadata.index, term: metadata.term, voters, ...(learners.length > 0 ? { learners } : {}) };
    this.values = this.staged;
    this.sessionOrder = new Set(
      [...this.values]
        .filter(([key]) => isSessionKey(key))
        .sort(([, a], [, b]) => a.version - b.version)
        .map(([key]) => key),
    );
    startSessionClock(this.kvTable, this.sessionOrder.size, metadata.index);
    this.staged = new Map();
    this.staging = { imageId: undefined, bytes: 0 };
    this.log = [];
    this.voters = voters;
    this.learners = learners;
    this.applied = metadata.index;
    this.hardState = { ...this.hardState, commit: Math.max(this.hardState.commit, metadata.index) };
  }

  /** The image being staged, if any (the simulated disk drops it as the server's does when a chunk of it fails there). */
  stagedImageId(): string | undefined {
    return this.staging.imageId;
  }

  /** As `SqliteStorage.discardStagedImage`. */
  discardStagedImage(): void {
    this.assertOpen();
    this.staged = new Map();
    this.staging = { imageId: undefined, bytes: 0 };
  }

  /** In memory a write is as durable as it gets once made: settles at once. */
  sync(): Promise<void> {
    return Promise.resolve();
  }

  /** Marks the storage closed; later calls are bugs. Idempotent. */
  close(): void {
    this.closed = true;
  }

  /** A copy holding exactly what was saved and applied: what a node restarts from after a crash. */
  clone(): MemoryKvStorage {
    const copy = new MemoryKvStorage(this.stagedImageBytesMax);
    copy.hardState = this.hardState;
    copy.voters = this.voters;
    copy.learners = this.learners;
    copy.addresses = this.addresses;
    copy.changedIndex = this.changedIndex;
    copy.snap = this.snap;
    copy.log = this.log.slice();
    copy.values = new Map(this.values);
    copy.sessionOrder = new Set(this.sessionOrder);
    copy.applied = this.applied;
    return copy;
  }

  /**
   * What the sqlite storage reopens as when its two files came back from different moments (a
   * power loss after the database's pages reached the disk and the log's did not): the state
   * machine, its applied index, configuration and snapshot record as `stateMachine` holds them,
   * and the log and hard state as `log` holds them, reconciled as `SqliteStorage` does at open
   * (src/storage/sqlite-storage.ts, `loadLog`): a log that does not go on from the snapshot is from
   * before an install, and starts after it instead; the commit index is raised to the applied one.
   * `log` must be the older of the two (the log's durable image): the node applies only what its
   * log holds durably.
   */
  static reopened(stateMachine: MemoryKvStorage, log: MemoryKvStorage): MemoryKvStorage {
    const reopened = stateMachine.clone();
    const snap = stateMachine.snap;
    assert(snap.index >= log.snap.index, `the log's image is compacted past the state machine's snapshot (${log.snap.index} > ${snap.index})`);
    const goesOn = snap.index <= log.lastIndex() && log.term(snap.index) === snap.term;
    reopened.log = goesOn ? log.log.slice(snap.index - log.snap.index) : [];
    const commit = Math.max(log.hardState.commit, reopened.applied, goesOn ? 0 : snap.index);
    reopened.hardState = { term: log.hardState.term, vote: log.hardState.vote, commit };
    assert(reopened.applied <= reopened.lastIndex(), `applied ${reopened.applied} beyond the durable log's last index ${reopened.lastIndex()}`);
    assert(commit <= reopened.lastIndex(), `commit ${commit} beyond the durable log's last index ${reopened.lastIndex()}`);
    return reopened;
  }

  private learnersField(): { learners?: readonly NodeId[] } {
    return this.learners.length > 0 ? { learners: this.learners } : {};
  }

  private assertOpen(): void {
    assert(!this.closed, "memory storage used after close");
  }
}

/** A session's key: under the session prefix, and not the session clock. */
function isSessionKey(key: string): boolean {
  return key.startsWith(sessionKeyPrefix) && key !== sessionClockKey;
}

