import { Database, type Statement } from "bun:sqlite";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { assert } from "../lib/assert.ts";
import { type Entry, EntryType, emptyHardState, type HardState, hardStateEqual, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import { type ApplyStep, planApply, resultFor } from "./apply-plan.ts";
import { entryChecksum, hardStateChecksum } from "./entry-checksum.ts";
import { type ApplyResult, type KvStorage, StorageError, type StoredValue } from "./kv-storage.ts";
import { checkSave } from "./save-checks.ts";
import { type TermRun, TermCache } from "./term-cache.ts";
import { checkVotersMatch, normalizeVoters } from "./voters.ts";

/**
 * Durable storage on bun:sqlite: the Raft log, hard state, voters and the key-value state machine
 * in one database file, so one transaction covers any mix of them.
 *
 * Durability (STACK.md: WAL + synchronous=FULL is one fsync per commit):
 * - `save(..., sync=true)` commits with synchronous=FULL: durable when it returns.
 * - `save(..., sync=false)` and `applyEntries` commit with synchronous=NORMAL: no fsync. They
 *   survive a process crash (the WAL is written before commit returns) but not an OS crash or
 *   power loss, until the next FULL commit or checkpoint fsyncs the WAL, which makes every earlier
 *   commit durable too.
 * - SQLite recovers a WAL as a prefix of its commits, in commit order. An apply commits after the
 *   save of every entry it applies (asserted: applied <= commit <= lastIndex), so after any crash
 *   the applied index is never ahead of the log it applied, and the kv rows always match it
 *   because they commit in the same transaction.
 *
 * The database is opened with locking_mode=EXCLUSIVE: a second process (say, a node restarted
 * before its predecessor died) cannot write the same log; it waits `lockWaitMs` and then fails
 * with `StorageError` `locked`.
 */

/** Options of `openSqliteStorage`. */
export interface SqliteStorageOptions {
  /** Voters to record on first open, or to verify against those recorded (see `bootstrap`). */
  readonly voters?: readonly NodeId[];
  /** Database file name inside the directory. Default `kv.db`. */
  readonly fileName?: string;
  /** How long to wait for another holder of the database to let go. Default 2000 ms. */
  readonly lockWaitMs?: number;
  /** Term runs kept in memory (see TermCache). Default 1024. */
  readonly termCacheRunsMax?: number;
  /** On open, terms of at most this many newest entries are loaded into the cache. Default 100 000. */
  readonly termCacheLoadEntriesMax?: number;
}

const schemaVersion = 1;
const lockWaitMsMax = 60_000;
const walBytesLimit = 64 * 1024 * 1024;
/** Rows fetched per query by `entries`, so a read stops soon after `maxBytes` whatever the range. */
const entriesChunkRowsMax = 256;

const schemaSql = `
CREATE TABLE raft_log (
  idx INTEGER PRIMARY KEY,  -- Raft index, >= 1, contiguous from 1 (no compaction yet)
  term INTEGER NOT NULL,
  type INTEGER NOT NULL,    -- EntryType
  data BLOB NOT NULL,
  crc INTEGER NOT NULL      -- entryChecksum(idx, term, type, data)
) STRICT;
CREATE TABLE hard_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  term INTEGER NOT NULL,
  vote INTEGER NOT NULL,
  commit_index INTEGER NOT NULL,
  crc INTEGER NOT NULL      -- hardStateChecksum(term, vote, commit_index)
) STRICT;
CREATE TABLE meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  voters TEXT,              -- sorted comma-separated ids recorded at bootstrap; NULL before
  applied_index INTEGER NOT NULL
) STRICT;
CREATE TABLE kv (
  key TEXT PRIMARY KEY,
  value BLOB NOT NULL,
  version INTEGER NOT NULL  -- index of the put that wrote the value
) STRICT;
INSERT INTO meta (id, voters, applied_index) VALUES (1, NULL, 0);
`;

interface LogRow {
  idx: number;
  term: number;
  type: number;
  data: Uint8Array;
  crc: number;
}
interface HardStateRow {
  term: number;
  vote: number;
  commit_index: number;
  crc: number;
}
interface MetaRow {
  voters: string | null;
  applied_index: number;
}
interface KvRow {
  value: Uint8Array;
  version: number;
}
interface RunRow {
  term: number;
  lo: number;
  hi: number;
}

/**
 * Opens (creating when absent) the storage in `dir`, creating the directory too. Throws
 * `StorageError` when the database is locked, of an unknown schema, inconsistent, or when
 * `options.voters` differs from the voters recorded at bootstrap.
 */
export function openSqliteStorage(dir: string, options: SqliteStorageOptions = {}): SqliteStorage {
  const lockWaitMs = options.lockWaitMs ?? 2000;
  assert(Number.isSafeInteger(lockWaitMs) && lockWaitMs >= 0 && lockWaitMs <= lockWaitMsMax, `lockWaitMs ${lockWaitMs}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, options.fileName ?? "kv.db");
  const db = new Database(file, { create: true, strict: true });
  try {
    db.run(`PRAGMA busy_timeout = ${lockWaitMs}`);
    // Set before entering WAL so the WAL index lives in process memory and the lock is held until close.
    db.run("PRAGMA locking_mode = EXCLUSIVE");
    const journal = db.query<{ journal_mode: string }, []>("PRAGMA journal_mode = WAL").get();
    if (journal?.journal_mode !== "wal") throw new Error(`journal_mode is ${journal?.journal_mode}, expected wal`);
    db.run("PRAGMA synchronous = FULL");
    // Bound the WAL file left on disk after a checkpoint (it is reused, not shrunk, otherwise).
    db.run(`PRAGMA journal_size_limit = ${walBytesLimit}`);
    migrate(db, file);
    const storage = new SqliteStorage(db, file, options.termCacheRunsMax ?? 1024, options.termCacheLoadEntriesMax ?? 100_000);
    if (options.voters !== undefined) storage.bootstrap(options.voters);
    return storage;
  } catch (error: unknown) {
    closeDatabase(db);
    if (error instanceof Error && /database is locked|SQLITE_BUSY/i.test(`${error.message} ${(error as { code?: string }).code}`)) {
      throw new StorageError("locked", `database held by another process for over ${lockWaitMs} ms`, file, undefined, {
        cause: error,
      });
    }
    throw error;
  }
}

/**
 * Closes for real: close(false) (sqlite3_close_v2) leaves a zombie connection, still holding the
 * EXCLUSIVE lock, while any statement is alive; close(true) finalizes them first.
 */
function closeDatabase(db: Database): void {
  db.close(true);
}

function migrate(db: Database, file: string): void {
  // BEGIN IMMEDIATE takes the write lock first: with EXCLUSIVE locking it is then held until close.
  db.transaction(() => {
    const version = db.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? 0;
    if (version === schemaVersion) return;
    if (version !== 0) throw new StorageError("schema", `unknown schema version ${version}, expected ${schemaVersion}`, file);
    db.run(schemaSql);
    db.query("INSERT INTO hard_state (id, term, vote, commit_index, crc) VALUES (1, ?, ?, ?, ?)").run(
      emptyHardState.term,
      emptyHardState.vote,
      emptyHardState.commit,
      hardStateChecksum(emptyHardState),
    );
    db.run(`PRAGMA user_version = ${schemaVersion}`);
  }).immediate();
}

/**
 * The durable `KvStorage`. Open it with `openSqliteStorage`. Single-threaded: one node loop calls
 * it. Log reads (`entries`, and `term` outside the in-memory cache) verify each entry's checksum
 * and throw `StorageError` `corrupt` naming the file and index on a mismatch; kv rows carry no
 * checksum (they can be rebuilt by replaying the log).
 */
export class SqliteStorage implements KvStorage {
  private hardStateValue: HardState;
  private voters: readonly NodeId[];
  private applied: number;
  private last: number;
  private readonly terms: TermCache;
  private closed = false;

  private readonly selectEntries: Statement<LogRow, [number, number, number]>;
  private readonly selectEntry: Statement<LogRow, [number]>;
  private readonly insertEntry: Statement<unknown, [number, number, number, Uint8Array, number]>;
  private readonly deleteEntriesFrom: Statement<unknown, [number]>;
  private readonly updateHardState: Statement<unknown, [number, number, number, number]>;
  private readonly updateVoters: Statement<unknown, [string]>;
  private readonly updateApplied: Statement<unknown, [number]>;
  private readonly selectValue: Statement<KvRow, [string]>;
  private readonly upsertValue: Statement<unknown, [string, Uint8Array, number]>;
  private readonly deleteValue: Statement<unknown, [string]>;
  private readonly synchronousNormal: Statement<unknown, []>;
  private readonly synchronousFull: Statement<unknown, []>;
  private readonly saveTransaction: (hardState: HardState | undefined, entries: readonly Entry[]) => void;
  private readonly applyTransaction: (steps: readonly ApplyStep[], appliedIndex: number) => ApplyResult[];

  /** Use `openSqliteStorage`. */
  constructor(
    private readonly db: Database,
    /** The database file, named in every error. */
    readonly file: string,
    termCacheRunsMax: number,
    termCacheLoadEntriesMax: number,
  ) {
    assert(Number.isSafeInteger(termCacheLoadEntriesMax) && termCacheLoadEntriesMax >= 1, "termCacheLoadEntriesMax");
    this.selectEntries = db.prepare("SELECT idx, term, type, data, crc FROM raft_log WHERE idx >= ? AND idx < ? ORDER BY idx LIMIT ?");
    this.selectEntry = db.prepare("SELECT idx, term, type, data, crc FROM raft_log WHERE idx = ?");
    this.insertEntry = db.prepare("INSERT INTO raft_log (idx, term, type, data, crc) VALUES (?, ?, ?, ?, ?)");
    this.deleteEntriesFrom = db.prepare("DELETE FROM raft_log WHERE idx >= ?");
    this.updateHardState = db.prepare("UPDATE hard_state SET term = ?, vote = ?, commit_index = ?, crc = ? WHERE id = 1");
    this.updateVoters = db.prepare("UPDATE meta SET voters = ? WHERE id = 1");
    this.updateApplied = db.prepare("UPDATE meta SET applied_index = ? WHERE id = 1");
    this.selectValue = db.prepare("SELECT value, version FROM kv WHERE key = ?");
    this.upsertValue = db.prepare(
      "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
    );
    this.deleteValue = db.prepare("DELETE FROM kv WHERE key = ?");
    this.synchronousNormal = db.prepare("PRAGMA synchronous = NORMAL");
    this.synchronousFull = db.prepare("PRAGMA synchronous = FULL");
    this.saveTransaction = db.transaction((hardState: HardState | undefined, entries: readonly Entry[]) =>
      this.writeSave(hardState, entries),
    );
    this.applyTransaction = db.transaction((steps: readonly ApplyStep[], appliedIndex: number) =>
      this.writeApply(steps, appliedIndex),
    );

    this.hardStateValue = this.loadHardState();
    const meta = db.query<MetaRow, []>("SELECT voters, applied_index FROM meta WHERE id = 1").get();
    if (meta === null) throw this.corrupt("meta row missing");
    this.voters = this.parseVoters(meta.voters);
    this.applied = this.checkStoredIndex(meta.applied_index, "applied index");
    this.last = this.loadLastIndex();
    this.terms = new TermCache(termCacheRunsMax);
    this.terms.reset(this.loadTermRuns(termCacheLoadEntriesMax), this.last);

    // Invariant: applied <= commit <= lastIndex, as persisted (see the durability notes above).
    if (this.hardStateValue.commit > this.last) throw this.corrupt(`commit ${this.hardStateValue.commit} beyond last index ${this.last}`);
    if (this.applied > this.hardStateValue.commit) throw this.corrupt(`applied ${this.applied} beyond commit ${this.hardStateValue.commit}`);
  }

  // --- RaftStorage ---

  /** Term, vote and commit as last saved, and the voters recorded at bootstrap ([] before it). */
  initialState(): { hardState: HardState; voters: readonly NodeId[] } {
    this.assertOpen();
    return { hardState: this.hardStateValue, voters: this.voters };
  }

  /** Entries in [lo, hi), at most `maxBytes` of data but at least one when lo < hi; each verified. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
    assert(lo >= this.firstIndex() && hi <= this.last + 1 && lo <= hi, `entries(${lo}, ${hi}) out of range`);
    const result: Entry[] = [];
    let bytes = 0;
    let next = lo;
    while (next < hi) {
      const rows = this.selectEntries.all(next, hi, Math.min(entriesChunkRowsMax, hi - next));
      if (rows.length === 0) throw this.corrupt("entry missing from the log", next);
      for (const row of rows) {
        const entry = this.verifiedEntry(row, next);
        bytes += entry.data.byteLength;
        if (result.length > 0 && bytes > maxBytes) return result;
        result.push(entry);
        next++;
      }
    }
    return result;
  }

  /** Term at `index` for firstIndex()-1 <= index <= lastIndex(); from memory near the end of the log. */
  term(index: number): number {
    this.assertOpen();
    if (index === 0) return 0;
    assert(index >= this.firstIndex() - 1 && index <= this.last, `term(${index}) out of range`);
    const cached = this.terms.term(index);
    if (cached !== undefined) return cached;
    const row = this.selectEntry.get(index);
    if (row === null) throw this.corrupt("entry missing from the log", index);
    return this.verifiedEntry(row, index).term;
  }

  /** 1: the log is never compacted yet. */
  firstIndex(): number {
    return 1;
  }

  /** Never compacted yet: the empty snapshot at index 0. */
  snapshot(): SnapshotMetadata {
    return { index: 0, term: 0, voters: this.initialState().voters };
  }

  /** No state machine image can be streamed yet (the log is never compacted, so none is needed). */
  snapshotForSend(): SnapshotMetadata | undefined {
    return undefined;
  }

  /** Index of the last saved entry, 0 when the log is empty. */
  lastIndex(): number {
    this.assertOpen();
    return this.last;
  }

  // --- RaftLogWriter ---

  /**
   * Persists `hardState` (when given) and `entries` in one transaction. Entries from
   * entries[0].index on replace any saved there (a new leader overwrote a conflicting suffix).
   * With `sync` the commit is fsynced before returning; without, see the durability notes.
   * Broken Raft invariants (see checkSave) throw an AssertionError before anything is written.
   */
  save(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): void {
    this.assertOpen();
    // An unchanged hard state costs no write (nor, with no entries, a commit).
    const changed = hardState !== undefined && hardStateEqual(hardState, this.hardStateValue) ? undefined : hardState;
    const lastIndexAfter = checkSave(
      { hardState: this.hardStateValue, firstIndex: this.firstIndex(), lastIndex: this.last, term: (index) => this.term(index) },
      changed,
      entries,
    );
    if (entries.length === 0 && changed === undefined) return;
    this.withSynchronous(sync, () => this.saveTransaction(changed, entries));
    // Committed: now memory may follow the disk.
    const first = entries[0];
    if (first !== undefined) {
      if (first.index <= this.last) this.terms.truncateFrom(first.index);
      for (const entry of entries) this.terms.append(entry.index, entry.term);
      this.last = lastIndexAfter;
    }
    if (changed !== undefined) this.hardStateValue = { term: changed.term, vote: changed.vote, commit: changed.commit };
  }

  private writeSave(hardState: HardState | undefined, entries: readonly Entry[]): void {
    const first = entries[0];
    if (first !== undefined && first.index <= this.last) this.deleteEntriesFrom.run(first.index);
    for (const entry of entries) {
      this.insertEntry.run(entry.index, entry.term, entry.type, entry.data, entryChecksum(entry.index, entry.term, entry.type, entry.data));
    }
    if (hardState !== undefined) {
      this.updateHardState.run(hardState.term, hardState.vote, hardState.commit, hardStateChecksum(hardState));
    }
  }

  // --- State machine ---

  /**
   * Records the voters on first call; afterwards verifies the same set is configured
   * (`StorageError` `voters_mismatch` otherwise). Durable when it returns.
   */
  bootstrap(voters: readonly NodeId[]): void {
    this.assertOpen();
    const normalized = normalizeVoters(voters, this.file);
    if (this.voters.length > 0) return checkVotersMatch(this.voters, normalized, this.file);
    this.updateVoters.run(normalized.join(","));
    this.voters = normalized;
  }

  /**
   * Applies committed entries in one transaction that also stores the new applied index, so a
   * replay after a crash skips what was applied. Committed with synchronous=NORMAL (no fsync):
   * the log it applies is already saved and apply is replayable.
   */
  applyEntries(entries: readonly Entry[]): ApplyResult[] {
    this.assertOpen();
    const plan = planApply(
      {
        file: this.file,
        appliedIndex: this.applied,
        commitIndex: this.hardStateValue.commit,
        lastIndex: this.last,
        term: (index) => this.term(index),
      },
      entries,
    );
    if (plan.appliedIndex === this.applied) return plan.steps.map((step) => resultFor(step, false));
    const results = this.withSynchronous(false, () => this.applyTransaction(plan.steps, plan.appliedIndex));
    this.applied = plan.appliedIndex;
    return results;
  }

  private writeApply(steps: readonly ApplyStep[], appliedIndex: number): ApplyResult[] {
    const results: ApplyResult[] = [];
    for (const step of steps) {
      let deleted = false;
      if (step.kind === "put") this.upsertValue.run(step.key, step.value, step.index);
      else if (step.kind === "delete") deleted = this.deleteValue.run(step.key).changes > 0;
      results.push(resultFor(step, deleted));
    }
    this.updateApplied.run(appliedIndex);
    return results;
  }

  /** The index of the last applied entry, as stored with the kv data. */
  appliedIndex(): number {
    this.assertOpen();
    return this.applied;
  }

  /** The value of `key` and its version, read from disk (a fresh copy each call). */
  get(key: string): StoredValue | undefined {
    this.assertOpen();
    const row = this.selectValue.get(key);
    return row === null ? undefined : { value: row.value, version: row.version };
  }

  /** Closes the database (checkpointing the WAL into it) and releases its lock. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeDatabase(this.db);
  }

  // --- helpers ---

  private withSynchronous<T>(sync: boolean, run: () => T): T {
    // synchronous cannot change inside a transaction, so switch around it (~0.5 µs for the pair).
    if (sync) return run();
    this.synchronousNormal.run();
    try {
      return run();
    } finally {
      this.synchronousFull.run();
    }
  }

  private verifiedEntry(row: LogRow, expectedIndex: number): Entry {
    if (row.idx !== expectedIndex) throw this.corrupt(`found index ${row.idx} where ${expectedIndex} belongs`, expectedIndex);
    if (entryChecksum(row.idx, row.term, row.type, row.data) !== row.crc) throw this.corrupt("log entry checksum mismatch", row.idx);
    if (row.type !== EntryType.Normal) throw this.corrupt(`unknown entry type ${row.type}`, row.idx);
    return { index: row.idx, term: row.term, type: EntryType.Normal, data: row.data };
  }

  private loadHardState(): HardState {
    const row = this.db.query<HardStateRow, []>("SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 1").get();
    if (row === null) throw this.corrupt("hard state row missing");
    const hardState: HardState = { term: row.term, vote: row.vote, commit: row.commit_index };
    if (hardStateChecksum(hardState) !== row.crc) throw this.corrupt("hard state checksum mismatch");
    return hardState;
  }

  private parseVoters(text: string | null): readonly NodeId[] {
    if (text === null) return [];
    const voters = text.split(",").map(Number);
    try {
      return normalizeVoters(voters, this.file);
    } catch (error: unknown) {
      throw this.corrupt(`recorded voters "${text}" invalid`, undefined, error);
    }
  }

  private checkStoredIndex(value: unknown, what: string): number {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw this.corrupt(`${what} ${String(value)} invalid`);
    return value;
  }

  /** The last index, after checking the log has no hole: indexes 1..last, each once. */
  private loadLastIndex(): number {
    const row = this.db
      .query<{ lo: number | null; hi: number | null; n: number }, []>("SELECT MIN(idx) AS lo, MAX(idx) AS hi, COUNT(*) AS n FROM raft_log")
      .get();
    if (row === null || row.n === 0) return 0;
    const hi = this.checkStoredIndex(row.hi, "last index");
    if (row.lo !== 1 || row.n !== hi) throw this.corrupt(`log holds ${row.n} entries between ${row.lo} and ${hi}: a hole`);
    return hi;
  }

  /**
   * Runs of the newest entries' terms, checked: runs are contiguous with increasing terms, and the
   * entries at both ends of every run pass their checksum. A corrupt term anywhere in the window
   * either breaks that shape or lands on a run's end, so it is caught here, at open.
   */
  private loadTermRuns(loadEntriesMax: number): TermRun[] {
    if (this.last === 0) return [];
    const from = Math.max(1, this.last - loadEntriesMax + 1);
    const rows = this.db
      .query<RunRow, [number]>("SELECT term, MIN(idx) AS lo, MAX(idx) AS hi FROM raft_log WHERE idx >= ? GROUP BY term ORDER BY lo")
      .all(from);
    const runs: TermRun[] = [];
    let expectedStart = from;
    for (const row of rows) {
      if (row.lo !== expectedStart || row.hi < row.lo) throw this.corrupt(`term ${row.term} spans ${row.lo}..${row.hi}, expected to start at ${expectedStart}`, row.lo);
      const previous = runs[runs.length - 1];
      if (previous !== undefined && row.term <= previous.term) throw this.corrupt(`term ${row.term} follows term ${previous.term}`, row.lo);
      for (const index of row.lo === row.hi ? [row.lo] : [row.lo, row.hi]) {
        const entryRow = this.selectEntry.get(index);
        if (entryRow === null) throw this.corrupt("entry missing from the log", index);
        this.verifiedEntry(entryRow, index);
      }
      runs.push({ startIndex: row.lo, term: row.term });
      expectedStart = row.hi + 1;
    }
    if (expectedStart !== this.last + 1) throw this.corrupt(`term runs end at ${expectedStart - 1}, last index ${this.last}`);
    return runs;
  }

  private corrupt(message: string, index?: number, cause?: unknown): StorageError {
    return new StorageError("corrupt", message, this.file, index, cause === undefined ? undefined : { cause });
  }

  private assertOpen(): void {
    assert(!this.closed, `storage ${this.file} used after close`);
  }
}
