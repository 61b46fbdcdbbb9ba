import { Database, type Statement } from "bun:sqlite";
import { closeSync, existsSync, fchmodSync, fchownSync, fdatasync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { assert } from "../lib/assert.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { CLUSTER_ID_FILE } from "../lib/cluster-id.ts";
import { fsyncPath, mkdirDurably } from "../lib/fsync-path.ts";
import { prefixUpperBound } from "../lib/utf8-order.ts";
import { type Entry, emptyHardState, type HardState, hardStateEqual, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import { type ApplyResult, type ApplyStep, executeStep, type KvTable, planApply, resultFor, startSessionClock } from "../kv/apply-plan.ts";
import { addressesAfterInstall, type MemberAddress, type Membership, membershipAfter, sameMembers, withMissingAddresses } from "../kv/membership.ts";
import { isLeaseRowShaped } from "../kv/leases.ts";
import { hardStateChecksum, rowChecksum, snapshotChecksum } from "./entry-checksum.ts";
import {
  type ImageRow,
  type KvImageReader,
  type KvStorage,
  type ListedValue,
  DAMAGED_DATA_DIR_ADVICE,
  StorageError,
  type StoredValue,
} from "./kv-storage.ts";
import {
  type CheckedRow,
  checkedRow,
  checkStoredIndex,
  corruptError,
  loadAddresses,
  loadMeta,
  openImageReader,
  parseIds,
  parseSnapshotMeta,
  parseVoters,
  SqliteReads,
  type ImageRowRow,
  type KvRow,
  type LogRow,
  verifiedEntry,
} from "./sqlite-reads.ts";
import { checkSave } from "./save-checks.ts";
import {
  checkCompact,
  checkInstall,
  idsText,
  snapshotConfiguration,
  stagedImageBytesMaxDefault,
  type StagingState,
} from "./snapshot-checks.ts";
import type { TermRun } from "./term-cache.ts";
import { checkVotersMatch, normalizeVoters } from "./voters.ts";
import { type CheckpointReport, type Checkpointer, createCheckpointer } from "./checkpointer.ts";
import { LogTail } from "./log-tail.ts";
import { type AppendPlace, type LogPositions, type SegmentFiles, SegmentLog, type SegmentLogOptions, type TornCut } from "./segment-log.ts";
import { ImageStaging, removeStaleStaging, StagingFile } from "./staging-file.ts";

/**
 * Durable storage: the Raft log and hard state in segment files (`SegmentLog`, in `kv.db-log/`
 * beside the database), the voters and the key-value state machine in one bun:sqlite database.
 * (Until schema 4 the log was in the database too; schema 5 moved it out: every entry was written
 * four times, twice into the WAL and twice by checkpoints, and each save was a B-tree transaction.)
 *
 * Durability:
 * - `save(..., sync=true)` appends and fdatasyncs the log: durable when it returns.
 * - `save(..., sync=false)` appends (one write, no fsync), and `applyEntries` commits with
 *   synchronous=NORMAL (no fsync). They survive a process crash but not an OS crash or power loss
 *   until `sync()` has fdatasynced the log's segments and the WAL. The node loop saves this way and
 *   calls `sync()` in the background, holding back whatever promises the writes until it settles.
 * - The log and the database are two files, made durable by one `sync` but reaching the disk each
 *   in its own order. So the node applies an entry only once its own copy is durable (the Raft
 *   core's rule, src/raft/log.ts): the applied index recorded is never ahead of the durable
 *   log. The hard state's commit index may be (an apply reached the disk, the hard state saved
 *   with it did not): it is raised to the applied index at open.
 * - A compaction is recorded in meta at once and deletes the log's segments only after the next
 *   sync made that record durable (`logCompactedTo`); an install commits the state machine (one
 *   fsynced transaction) and only then resets the log, and a log found at open not going on from
 *   the snapshot meta records is the one from before such an install: it is reset then (`loadLog`).
 *
 * Snapshots: `compact` records where the log was cut in meta (with a checksum). `openImage` reads the kv table on a second, read-only connection inside one read
 * transaction: WAL gives it snapshot isolation, so the image and its applied index are one
 * consistent state while the node goes on writing (the WAL cannot be checkpointed past the
 * reader's snapshot meanwhile: it grows for as long as the image stays open). A received image is
 * staged chunk by chunk, so memory stays bounded whatever its size, in a file of its own beside the
 * database (`kv.db-staging`, see `StagingFile`): staging is not durable and the file is deleted on
 * open. `installSnapshot` attaches that file and copies the image into `kv` with one fsynced
 * transaction, then deletes the file. Staged in the database itself (the `kv_staging` table, as
 * before), the image's pages stayed in the file once freed: a joined node's data dir was 1.9x the
 * others'.
 *
 * Exclusion: the storage holds an exclusive lock on a sidecar file (`kv.db-lock`, an empty
 * database in EXCLUSIVE locking mode inside a transaction that never ends) for as long as it is
 * open, so a second process (say, a node restarted before its predecessor died) cannot write the
 * same log; it waits `lockWaitMs` and then fails with `StorageError` `locked`. The operating
 * system drops the lock when the process dies. The database itself is in NORMAL locking mode, so
 * the checkpointer's connection (checkpointer.ts: WAL checkpoints on a worker thread, off the
 * node's loop) and image readers share the WAL; with `checkpoints: "inline"` it is in EXCLUSIVE
 * mode (faster for single-row transactions) except while an image is open.
 */

/** Options of `openSqliteStorage`. */
export interface SqliteStorageOptions {
  /** Voters to record on first open, or to verify against those recorded (see `bootstrap`). */
  readonly voters?: readonly NodeId[];
  /**
   * The node opening the database: recorded on its first open by a node, and a database recorded
   * as another node's is refused (`node_mismatch`) before anything is written. Omitted (tools
   * reading a data dir), nothing is recorded or checked.
   */
  readonly nodeId?: NodeId;
  /** Database file name inside the directory. Default `kv.db`. */
  readonly fileName?: string;
  /** How long to wait for another holder of the database to let go. Default 2000 ms. */
  readonly lockWaitMs?: number;
  /** Term runs ThreadedStorage's mirror keeps in memory (see TermCache; this storage has every term in memory). Default 1024. */
  readonly termCacheRunsMax?: number;
  /** The terms of at most this many newest entries go to ThreadedStorage's mirror at open. Default 100 000. */
  readonly termCacheLoadEntriesMax?: number;
  /** A received image staged beyond this many bytes (keys, values, overhead) is refused. Default 64 GiB. */
  readonly stagedImageBytesMax?: number;
  /**
   * Where WAL checkpoints run: `worker` (default), on a second connection on a worker thread, asked
   * for about every `checkpointPages` pages written (see checkpointer.ts); `inline`, inside the
   * commit that crosses SQLite's autocheckpoint threshold, on the caller's thread.
   */
  readonly checkpoints?: "worker" | "inline";
  /** With `checkpoints: "worker"`: pages (4 KiB) written, by estimate, between two requests. Default 4096 (16 MiB). */
  readonly checkpointPages?: number;
  /** With `checkpoints: "worker"`: a WAL this many frames long is made to start over (see checkpointer.ts). Default 16384 (64 MiB). */
  readonly walRestartFrames?: number;
  /** With `checkpoints: "worker"`: called on the caller's thread after each round of checkpoints. */
  readonly onCheckpoint?: (report: CheckpointReport) => void;
  /**
   * Bytes of the newest log entries kept in memory after their save (see LogTail), besides those
   * saved and not yet applied, which stay up to `logTailKeptBytesMax` (default 8 MiB) so that
   * an apply reads them from memory. Default 4 MiB; the storage thread keeps a small one (its
   * entries are read back only to apply them).
   */
  readonly logTailBytesMax?: number;
  readonly logTailKeptBytesMax?: number;
  /** A log segment is not written past this many bytes (see SegmentLog); for tests. Default 64 MiB. */
  readonly logSegmentBytesMax?: number;
  /** For tests: the file operations the log uses instead of node:fs's (see SegmentLogOptions.files). */
  readonly logFiles?: Partial<SegmentFiles>;
  /**
   * Refuse (`schema`, before anything is written) a database of an older release rather than
   * migrate it: `kv defrag`, which must leave a data dir of another release as it found it.
   */
  readonly refuseOlderSchema?: boolean;
  /**
   * Run SQLite's `integrity_check` once the lock is held and before anything is written, and refuse
   * a damaged database (`corrupt`) untouched: `kv defrag`, which says "nothing changed" when it
   * refuses (found in a black-box review: the open that met the damage later had bumped the header's
   * counters). Not `quick_check`: that reads the pages but not whether each row's index entries match
   * it, and a key whose index entry was damaged read as absent on a node, while defrag copied it
   * over (found in a black-box review).
   */
  readonly integrityCheckFirst?: boolean;
}

const schemaVersion = 8;
const lockWaitMsMax = 60_000;
const walBytesLimit = 64 * 1024 * 1024;
/** WAL pages (4 KiB each) after which a commit checkpoints them into the database file (inline checkpoints). */
const walCheckpointPages = 10_000;
/**
 * With checkpoints on the worker: the backstop, reached only if the worker falls this far behind,
 * at which a commit on the node's thread checkpoints after all (about 400 MB of WAL).
 */
const walCheckpointPagesBackstop = 100_000;
/**
 * With checkpoints on the worker: a WAL this long (frames of 4 KiB, 64 MiB) is made to start over
 * once a round has caught up (see checkpointer.ts).
 */
const walRestartFrames = 16_384;
/**
 * With checkpoints on the worker: the most pages (by estimate) written since a round began that the
 * caller's thread checkpoints itself to let the WAL start over (1 MiB); more, and the worker runs
 * another round first.
 */
const restartTailPagesMax = 256;
/** With checkpoints on the worker: estimated pages written between two requests, by default. */
const checkpointPagesDefault = 4_096;
/**
 * The page cache of the node's connection, in KiB: 4 MiB. It was 16 MiB while the Raft log was in
 * SQLite too; with only the state machine here, 4 MiB held 15 MB less per node at 16 KB values and
 * wrote 100 B values as fast (BENCHMARKS.md, twenty-fourth session).
 */
const pageCacheKib = 4 * 1024;
/** Bytes of the newest log entries kept in memory after their save (see LogTail), by default: as threaded-storage.ts. */
const logTailBytesMaxDefault = 4 << 20;
/** Entries saved and not yet applied are kept up to this many bytes, by default (see LogTail). */
const logTailKeptBytesMaxDefault = 8 << 20;
/** Version 1: log, hard state, meta, kv. Later versions are migrations applied on top. */
const schemaSql = `
CREATE TABLE raft_log (
  idx INTEGER PRIMARY KEY,  -- Raft index, contiguous from meta.snapshot_index + 1
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

/** Version 1 -> 2: log compaction and snapshot staging. */
const migrationToV2Sql = `
ALTER TABLE meta ADD COLUMN learners TEXT NOT NULL DEFAULT '';          -- comma-separated, as of applied_index
ALTER TABLE meta ADD COLUMN snapshot_index INTEGER NOT NULL DEFAULT 0;   -- the log holds entries after it
ALTER TABLE meta ADD COLUMN snapshot_term INTEGER NOT NULL DEFAULT 0;    -- term of the entry at snapshot_index
ALTER TABLE meta ADD COLUMN snapshot_voters TEXT NOT NULL DEFAULT '';    -- configuration as of snapshot_index
ALTER TABLE meta ADD COLUMN snapshot_learners TEXT NOT NULL DEFAULT '';
ALTER TABLE meta ADD COLUMN snapshot_crc INTEGER NOT NULL DEFAULT 0;     -- snapshotChecksum of the four above
CREATE TABLE kv_staging (   -- unused since staging moved to its own file (StagingFile); emptied on open
  key TEXT PRIMARY KEY,
  value BLOB NOT NULL,
  version INTEGER NOT NULL
) STRICT;
`;

/**
 * Version 2 -> 3: membership. The configuration (meta.voters, meta.learners) and every member's
 * addresses move with the applied index, in the same transaction as it.
 */
const migrationToV3Sql = `
ALTER TABLE meta ADD COLUMN config_index INTEGER NOT NULL DEFAULT 0;   -- last applied membership change; 0: as bootstrapped
CREATE TABLE members (      -- where each member is reached, as of applied_index
  id INTEGER PRIMARY KEY,
  peer_url TEXT NOT NULL,
  http_url TEXT             -- NULL when unknown
) STRICT;
`;

/**
 * Session rows (see src/kv/apply-plan.ts): keys after the session prefix, NUL + "session/", up to
 * NUL + "session0" ("0" follows "/"); the prefix itself, the session clock, is not one. Written the
 * same, character for character, in the index and in every query that must use it.
 */
const sessionRowsWhere = "key > char(0) || 'session/' AND key < char(0) || 'session0'";

/**
 * Version 3 -> 4: sessions by time. Sessions are found oldest first (expiry, the cap) through a
 * partial index holding only session rows, by version. A data dir of 0.1.0 holding sessions gets
 * the session clock (not started, its sessions counted): see `startSessionClock`.
 */
const migrationToV4Sql = `
CREATE INDEX kv_sessions_by_version ON kv (version) WHERE ${sessionRowsWhere};
`;

/**
 * Version 4 -> 5: the log and hard state move out to segment files (segment-log.ts, in the
 * directory `<db>-log`), written and fsynced before these tables go in the same transaction; meta
 * records the term at the applied index, which an image read from the log before.
 */
const migrationToV5Sql = `
ALTER TABLE meta ADD COLUMN applied_term INTEGER NOT NULL DEFAULT 0;  -- term of the entry at applied_index; 0 when nothing is applied
DROP TABLE raft_log;
DROP TABLE hard_state;
`;

/**
 * Version 5 -> 6: each row of the state machine carries its checksum (`rowChecksum`), checked
 * wherever it is read. Rows written before stay NULL, unchecked, until they are written again: the
 * migration rewrites nothing.
 */
const migrationToV6Sql = `
ALTER TABLE kv ADD COLUMN crc INTEGER;  -- rowChecksum(key, value, version); NULL in rows written before schema 6
ALTER TABLE meta ADD COLUMN node_id INTEGER NOT NULL DEFAULT 0;  -- the node this database belongs to (see ownDatabase); 0 until a node opens it
`;

/**
 * Version 6 -> 7: each member's address records the index of the entry that added it there
 * (`MemberAddress.addedIndex`), which tells an older process of a re-added id from the member
 * (src/transport/peer-identity.ts). Unknown (NULL) for members recorded before, except in a data dir
 * whose configuration never changed: every member there is a founding one (0).
 */
const migrationToV7Sql = `
ALTER TABLE members ADD COLUMN added_index INTEGER;  -- NULL: unknown
UPDATE members SET added_index = 0 WHERE (SELECT config_index FROM meta WHERE id = 1) = 0;
`;

/**
 * Version 7 -> 8: how much of the log's last segment completed syncs had made durable, recorded by
 * every transaction that applies entries (`SegmentLog.durableMark`), so the log's replay refuses
 * damage there instead of cutting it off as a torn write (see `DurableMark`). 0: nothing recorded.
 */
const migrationToV8Sql = `
ALTER TABLE meta ADD COLUMN log_durable_segment INTEGER NOT NULL DEFAULT 0;  -- sequence of the log's segment
ALTER TABLE meta ADD COLUMN log_durable_bytes INTEGER NOT NULL DEFAULT 0;    -- bytes of it durable
`;

/** Log rows the migration to segments reads per query. */
const migrationRowsPerQuery = 1024;

interface HardStateRow {
  term: number;
  vote: number;
  commit_index: number;
  crc: number;
}

/**
 * Opens (creating when absent) the storage in `dir`, creating the directory too. Throws
 * `StorageError` when the database is locked, of an unknown schema, inconsistent, or when
 * `options.voters` differs from the voters recorded at bootstrap.
 */
/** The database's file in a data dir, unless `SqliteStorageOptions.fileName` says otherwise. */
export const DATABASE_FILE = "kv.db";
/** Beside the database, the compact copy a defrag writes before it replaces the database. */
const defragCopySuffix = "-defrag";

/**
 * A defrag that failed after its copy had replaced the database: the data is whole, in the
 * compact copy, but what followed the rename (removing the old WAL and index, the directory's
 * fsync) did not all happen.
 */
export class DefragReplacedError extends Error {
  constructor(file: string, cause: unknown) {
    super(`${file} was replaced by its compact copy (the data is whole), but what follows did not finish: ${cause instanceof Error ? cause.message : String(cause)}; run kv defrag again before starting the node`, { cause });
    this.name = "DefragReplacedError";
  }
}

/** What `SqliteStorage.defragAndClose` did: the database and its WAL before, the database after, and the free pages it held. */
export interface DefragResult {
  readonly bytesBefore: number;
  readonly bytesAfter: number;
  readonly freeBytesBefore: number;
}

export function openSqliteStorage(dir: string, options: SqliteStorageOptions = {}): SqliteStorage {
  const lockWaitMs = options.lockWaitMs ?? 2000;
  assert(Number.isSafeInteger(lockWaitMs) && lockWaitMs >= 0 && lockWaitMs <= lockWaitMsMax, `lockWaitMs ${lockWaitMs}`);
  mkdirDurably(dir);
  const file = join(dir, options.fileName ?? DATABASE_FILE);
  // Before anything is written (the lock's file, stale staging, a checkpoint at close).
  refuseBeforeWriting(file, options.nodeId, options.refuseOlderSchema ?? false, options.logFiles === undefined ? {} : { files: options.logFiles });
  let lock: Database | undefined;
  let db: Database | undefined;
  let log: SegmentLog | undefined;
  try {
    lock = holdLock(`${file}-lock`, lockWaitMs);
    // An image staged before a restart can never be installed: its transfer died with the process.
    removeStaleStaging(`${file}-staging`);
    removeStaleStaging(`${file}-staging-install`); // see ThreadedStorage.installSnapshot
    // A compact copy a defrag left unfinished (see SqliteStorage.defragAndClose), and its journal.
    rmSync(`${file}${defragCopySuffix}`, { force: true });
    rmSync(`${file}${defragCopySuffix}-journal`, { force: true });
    if (!existsSync(file)) refuseLostDatabase(file, logDirOf(file), options.logFiles === undefined ? {} : { files: options.logFiles });
    db = new Database(file, { create: true, strict: true });
    db.run(`PRAGMA busy_timeout = ${lockWaitMs}`);
    const journal = db.query<{ journal_mode: string }, []>("PRAGMA journal_mode = WAL").get();
    if (journal?.journal_mode !== "wal") throw new Error(`journal_mode is ${journal?.journal_mode}, expected wal`);
    db.run("PRAGMA synchronous = FULL");
    // Bound the WAL file left on disk after a checkpoint (it is reused, not shrunk, otherwise).
    db.run(`PRAGMA journal_size_limit = ${walBytesLimit}`);
    // Checkpoint every ~40 MB of WAL instead of SQLite's 4 MB, and keep up to 4 MiB of pages
    // cached instead of 2 MiB (16 MiB until the log left SQLite; see pageCacheKib). A checkpoint
    // runs inside a commit on the node's loop and writes the newest copy of each page once, so a
    // longer WAL rewrites a hot page once where it was ten times; the cache spares re-reading pages
    // a commit evicted. The pause a checkpoint takes
    // grows less than its interval (1M keys, random writes: worst 144 ms against 93 ms at the
    // default). Measured A B A B, 14 rounds of 64-client writes: more writes/s in 11 of them,
    // about a tenth more at the median.
    const checkpoints = options.checkpoints ?? "worker";
    db.run(`PRAGMA wal_autocheckpoint = ${checkpoints === "worker" ? walCheckpointPagesBackstop : walCheckpointPages}`);
    db.run(`PRAGMA cache_size = -${pageCacheKib}`);
    if (options.integrityCheckFirst === true) refuseDamaged(db, file);
    log = migrate(db, file, options.nodeId, {
      ...(options.logSegmentBytesMax === undefined ? {} : { segmentBytesMax: options.logSegmentBytesMax }),
      ...(options.logFiles === undefined ? {} : { files: options.logFiles }),
    });
    // WAL was entered in NORMAL mode, so its index lives in shared memory that a reader connection
    // can use later (see openImage) and the checkpointer's connection always does. With inline
    // checkpoints, EXCLUSIVE spares every transaction its lock calls until an image is opened:
    // single-row transactions run about twice as fast.
    if (checkpoints === "inline") db.run("PRAGMA locking_mode = EXCLUSIVE");
    const storage = new SqliteStorage(db, lock, log, file, {
      termCacheLoadEntriesMax: options.termCacheLoadEntriesMax ?? 100_000,
      stagedImageBytesMax: options.stagedImageBytesMax ?? stagedImageBytesMaxDefault,
      lockWaitMs,
      logTailBytesMax: options.logTailBytesMax ?? logTailBytesMaxDefault,
      logTailKeptBytesMax: Math.max(options.logTailKeptBytesMax ?? logTailKeptBytesMaxDefault, options.logTailBytesMax ?? logTailBytesMaxDefault),
      checkpointer:
        checkpoints === "worker"
          ? { pages: options.checkpointPages ?? checkpointPagesDefault, restartFrames: options.walRestartFrames ?? walRestartFrames, ...(options.onCheckpoint === undefined ? {} : { onCheckpoint: options.onCheckpoint }) }
          : undefined,
    });
    if (options.voters !== undefined) storage.bootstrap(options.voters);
    return storage;
  } catch (error: unknown) {
    log?.close();
    if (db !== undefined) closeDatabase(db);
    if (lock !== undefined) closeDatabase(lock);
    if (error instanceof Error && /database is locked|SQLITE_BUSY/i.test(`${error.message} ${(error as { code?: string }).code}`)) {
      throw new StorageError("locked", `database held by another process for over ${lockWaitMs} ms`, file, undefined, {
        cause: error,
      });
    }
    throw error;
  }
}

/**
 * Takes the exclusive lock on the sidecar file `path`: an empty database in EXCLUSIVE locking mode
 * whose BEGIN EXCLUSIVE never commits, so the lock lasts until the connection closes (or the
 * process dies). A holder elsewhere makes this wait `lockWaitMs` and then throw SQLITE_BUSY.
 */
function holdLock(path: string, lockWaitMs: number): Database {
  const lock = new Database(path, { create: true, strict: true });
  try {
    lock.run(`PRAGMA busy_timeout = ${lockWaitMs}`);
    lock.run("PRAGMA locking_mode = EXCLUSIVE");
    lock.run("BEGIN EXCLUSIVE");
    return lock;
  } catch (error: unknown) {
    closeDatabase(lock);
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

/** The directory of the log's segments beside the database `file`. */
export function logDirOf(file: string): string {
  return `${file}-log`;
}

/**
 * A database of schema version 0 is new, and gets kv's schema: unless it is someone else's (it holds
 * tables), or this node's log or cluster id survive beside it. Then the node's database was lost or
 * emptied, and starting afresh would forget the node's vote and its log, acknowledged entries
 * included, as the log's directory was removed here before (a log that outlives its database is
 * otherwise only a first start's that died before its database committed: it holds no entry and no
 * vote, and goes).
 */
function refuseToStartAfresh(db: Database, file: string, logDir: string, logOptions: SegmentLogOptions): void {
  const objects = db.query<{ n: number }, []>("SELECT count(*) AS n FROM sqlite_master").get()?.n ?? 0;
  if (objects > 0) throw foreignDatabase(file, objects);
  refuseLostDatabase(file, logDir, logOptions);
}

/** The refusal of a SQLite database that is not kv's: `objects` schema objects and no kv schema version. */
function foreignDatabase(file: string, objects: number): StorageError {
  return new StorageError("corrupt", `${file} is a SQLite database that is not kv's (${objects} schema objects, no kv schema version): kv writes nothing into it; give kv a data dir of its own`, file);
}

/**
 * The part of `refuseToStartAfresh` that needs no database: run before a missing `kv.db` is
 * created, so that a refused start leaves the data dir as it found it (it created an empty one).
 */
function refuseLostDatabase(file: string, logDir: string, logOptions: SegmentLogOptions): void {
  const whatToDo =
    "the node's state machine was lost, and starting afresh would forget its vote and its log. Remove the data dir and add the node again (kv member remove, then kv serve --join), or restore it from a backup (kv snapshot restore); nothing was removed";
  if (existsSync(logDir)) {
    const log = SegmentLog.open(logDir, logOptions);
    let last = 0;
    let term = 0;
    try {
      last = log.lastIndex() ?? 0;
      term = log.hardState()?.term ?? 0;
    } finally {
      log.close();
    }
    if (last > 0 || term > 0) {
      throw new StorageError("corrupt", `${file} is missing or empty, but this node's log ${logDir} survives (last index ${last}, term ${term}): ${whatToDo}`, file);
    }
  }
  if (existsSync(join(dirname(file), CLUSTER_ID_FILE))) {
    throw new StorageError("corrupt", `${file} is missing or empty, but the data dir holds this node's ${CLUSTER_ID_FILE}: ${whatToDo}`, file);
  }
}

/**
 * Creates the schema or brings an older one up to date, in one transaction (the log's segments
 * are written and fsynced inside it: see migrationToV5Sql); drops stale staging. Returns the log,
 * open and replayed.
 */
function migrate(db: Database, file: string, nodeId: NodeId | undefined, logOptions: SegmentLogOptions): SegmentLog {
  const logDir = logDirOf(file);
  let log: SegmentLog | undefined;
  let from = 0;
  try {
    db.transaction(() => {
      let version = db.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? 0;
      from = version;
      if (version > schemaVersion) throw newerSchema(file, version);
      if (version === 0) refuseToStartAfresh(db, file, logDir, logOptions);
      if (version >= 1 && version <= 4) refuseClientKeysUnderLeasePrefix(db, file, version);
      // Segments a migration wrote before it could commit (the process died): written again.
      if (version < 5) rmSync(logDir, { recursive: true, force: true });
      if (version === 0) {
        db.run(schemaSql);
        db.query("INSERT INTO hard_state (id, term, vote, commit_index, crc) VALUES (1, ?, ?, ?, ?)").run(
          emptyHardState.term,
          emptyHardState.vote,
          emptyHardState.commit,
          hardStateChecksum(emptyHardState),
        );
        version = 1;
      }
      if (version === 1) {
        db.run(migrationToV2Sql);
        db.query("UPDATE meta SET snapshot_crc = ? WHERE id = 1").run(snapshotChecksum(0, 0, "", ""));
        version = 2;
      }
      if (version === 2) {
        db.run(migrationToV3Sql);
        version = 3;
      }
      if (version === 3) {
        db.run(migrationToV4Sql);
        const applied = db.query<{ applied_index: number }, []>("SELECT applied_index FROM meta WHERE id = 1").get()?.applied_index ?? 0;
        startSessionClock(rawKvTable(db), countSessionRows(db), applied);
        version = 4;
      }
      if (version === 4) {
        log = moveLogToSegments(db, file, logDir, logOptions);
        version = 5;
      }
      if (version === 5) {
        db.run(migrationToV6Sql);
        version = 6;
      }
      if (version === 6) {
        db.run(migrationToV7Sql);
        version = 7;
      }
      if (version === 7) {
        db.run(migrationToV8Sql);
        version = 8;
      }
      db.run(`PRAGMA user_version = ${version}`);
      if (nodeId !== undefined) ownDatabase(db, file, nodeId);
      // Staging rows a release before the staging file left behind (see StagingFile).
      db.run("DELETE FROM kv_staging");
    }).immediate();
  } catch (error) {
    (log as SegmentLog | undefined)?.close();
    // SQLite's own words ("duplicate column name: config_index") said nothing of what to do (found
    // in a black-box review, of a 0.1.0 database marked schema 2): a migration SQLite refused on
    // what it found (a column or table there or not where expected; a constraint) is said as one,
    // with what to do. Its I/O errors, a damaged file, a lock and the OS's errors are said as they
    // are, and a full disk is waited out (a review: a first pattern took every SQLite error so).
    const code = (error as { code?: unknown } | undefined)?.code;
    if (error instanceof Error && from >= 1 && from < schemaVersion && !(error instanceof StorageError) && !isDiskFull(error) && (code === "SQLITE_ERROR" || code === "SQLITE_CONSTRAINT" || (typeof code === "string" && code.startsWith("SQLITE_CONSTRAINT_")))) {
      throw new StorageError(
        "schema",
        `migrating the data dir from schema ${from} to ${schemaVersion} failed on what the database holds (${error.message}), which is not what kv wrote at schema ${from}; the database was left as it was, the migration being one transaction: ${DAMAGED_DATA_DIR_ADVICE}`,
        file,
        undefined,
        { cause: error },
      );
    }
    throw error;
  }
  const migrated = log as SegmentLog | undefined;
  if (migrated !== undefined) return migrated;
  if (!existsSync(logDir)) throw corruptError(file, `the log's directory ${logDir} is missing`);
  const durable = db.query<{ log_durable_segment: number; log_durable_bytes: number }, []>("SELECT log_durable_segment, log_durable_bytes FROM meta WHERE id = 1").get();
  return SegmentLog.open(logDir, durable === null ? logOptions : { ...logOptions, durable: { segment: durable.log_durable_segment, bytes: durable.log_durable_bytes } });
}

/**
 * Refuses (inside the migration's transaction, so the data dir is left as it was) a data dir of a
 * release before 0.3.0 holding a client's key under `NUL lease/`: those releases reserved only
 * `NUL session/`, and from 0.3.0 on leases live under that prefix, so such a key would be read as a
 * lease's row, and the node would stop applying at the first grant, or at a write of a key the row
 * names (found in a review). Schema 3 is 0.1.0's, which had no leases: any row there is a client's.
 * Schema 4 is 0.2.0's to 0.4.0's: rows of the lease rows' shapes are taken for 0.3.0's and 0.4.0's.
 */
function refuseClientKeysUnderLeasePrefix(db: Database, file: string, version: number): void {
  // Row by row: a 0.3.0 or 0.4.0 data dir may hold millions of keys on leases.
  const rows = db.query<{ key: string; value: Uint8Array }, []>(`SELECT key, value FROM kv WHERE key >= char(0) || 'lease/' AND key < char(0) || 'lease0' ORDER BY key`);
  let count = 0;
  const named: string[] = [];
  for (const row of rows.iterate()) {
    if (version >= 4 && isLeaseRowShaped(row.key, row.value)) continue;
    count++;
    if (named.length < 3) named.push(JSON.stringify(row.key));
  }
  if (count === 0) return;
  throw new StorageError(
    "schema",
    `the data dir holds ${count} key(s) beginning with a NUL byte and "lease/" (${named.join(", ")}${count > 3 ? ", ..." : ""}), written through a release before 0.3.0, ` +
      `which this release would read as leases' rows (from 0.3.0 on, leases live under that prefix): ` +
      `run the release that wrote this data dir, delete those keys (they are listed by GET /kv?prefix=%00lease%2F), then start this release; the data dir was left unchanged`,
    file,
  );
}

/** The refusal of a database of a newer release (its `user_version` past `schemaVersion`). */
function newerSchema(file: string, version: number): StorageError {
  return new StorageError(
    "schema",
    `the data dir holds schema ${version}, written by a newer release of kv (this one reads schemas up to ${schemaVersion}): run that release or a later one; the data dir was left unchanged`,
    file,
  );
}

/** Refuses (`corrupt`) a database SQLite's `integrity_check` finds damaged: none of its pages is written first. */
function refuseDamaged(db: Database, file: string): void {
  const verdicts = db.query<{ integrity_check: string }, []>("PRAGMA integrity_check(3)").all().flatMap((row) => row.integrity_check.split("\n"));
  // One line, as every refusal is: SQLite's own lines joined.
  if (verdicts.length !== 1 || verdicts[0] !== "ok") throw new StorageError("corrupt", `the database is damaged (integrity_check: ${verdicts.join("; ")})`, file);
}

/**
 * Refuses, on a read-only connection and before anything is written (the lock's file, stale
 * staging, the journal mode), a database of a newer release, and one recorded as another node's
 * (`node_mismatch`, schema 6 on, with `nodeId`). A database opened for writing, even only to be
 * refused, had its WAL checkpointed into it when it closed and the lock's file made, and a newer
 * one was set to WAL before migrate refused it "left unchanged" (both found in review). Anything
 * this cannot read is left to the open, which says what is wrong; `ownDatabase` checks again there.
 */
function refuseBeforeWriting(file: string, nodeId: NodeId | undefined, refuseOlderSchema: boolean, logOptions: SegmentLogOptions): void {
  if (!existsSync(file)) return;
  // A reader of a WAL database makes its shared-memory index when there is none: removed after,
  // when this made it (a node running on the data dir has one, and holds the lock).
  const shm = `${file}-shm`;
  const shmBefore = existsSync(shm);
  // And an empty WAL file, which a reader leaves behind too (found in a black-box review: a refusal
  // said "left unchanged" beside a new kv.db-wal).
  const wal = `${file}-wal`;
  const walBefore = existsSync(wal);
  let owner: number | undefined;
  let members: readonly NodeId[] = [];
  let version = 0;
  let objects = 0;
  let db: Database | undefined;
  try {
    db = new Database(file, { readonly: true });
    version = db.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? 0;
    if (version === 0) objects = db.query<{ n: number }, []>("SELECT count(*) AS n FROM sqlite_master").get()?.n ?? 0;
    if (nodeId !== undefined && version >= 6 && version <= schemaVersion) owner = db.query<{ node_id: number }, []>("SELECT node_id FROM meta WHERE id = 1").get()?.node_id;
    // Before schema 6 no node was recorded: the configuration says which nodes it can be.
    if (nodeId !== undefined && version >= 1 && version < 6) members = recordedMembers(db, version >= 2);
  } catch {
    return;
  } finally {
    db?.close();
    if (!shmBefore) rmSync(shm, { force: true });
    if (!walBefore && existsSync(wal) && statSync(wal).size === 0) rmSync(wal, { force: true });
  }
  if (version > schemaVersion) throw newerSchema(file, version);
  if (refuseOlderSchema && version === 0) {
    throw new StorageError("schema", "the file is empty or no database of kv's (schema 0): nothing to defragment, and it was left unchanged", file);
  }
  if (refuseOlderSchema && version < schemaVersion) {
    throw new StorageError(
      "schema",
      `the data dir holds schema ${version}, written by an older release of kv (this one writes schema ${schemaVersion}): start the node once with kv serve of this release, which migrates it, then stop it and try again; the data dir was left unchanged`,
      file,
    );
  }
  if (nodeId !== undefined && owner !== undefined && owner !== 0 && owner !== nodeId) throw nodeMismatch(file, owner, nodeId);
  if (nodeId !== undefined && members.length > 0 && !members.includes(nodeId)) throw notAMember(file, members, nodeId);
  // Someone else's database, or an empty one beside a log that outlived kv's: refused before the
  // open below switches it to WAL and rewrites its header (found in a black-box review: the refusal
  // said "kv writes nothing into it" of a file whose journal mode it had changed).
  if (version === 0 && objects > 0) throw foreignDatabase(file, objects);
  if (version === 0) refuseLostDatabase(file, logDirOf(file), logOptions);
}

/**
 * The voters and learners recorded in `meta` (none before a bootstrap). Before schema 2 there were
 * no learners.
 */
function recordedMembers(db: Database, withLearners: boolean): NodeId[] {
  const row = db.query<{ voters: string | null; learners?: string }, []>(`SELECT voters${withLearners ? ", learners" : ""} FROM meta WHERE id = 1`).get();
  const ids = (text: string | null | undefined) => (text ?? "").split(",").filter((id) => id !== "").map(Number);
  return [...ids(row?.voters), ...ids(row?.learners)];
}

/**
 * A database no node has claimed (from before schema 6), whose configuration does not hold
 * `nodeId`: another node's, or (once removed) of no use to any. Claimed, it was that node's for
 * good, its own refused on it after (found in a black-box review: a start as node 2 on node 1's
 * data dir, refused later for its voters, left it claimed for node 2).
 */
function notAMember(file: string, members: readonly NodeId[], nodeId: NodeId): StorageError {
  return new StorageError(
    "node_mismatch",
    `this database records a cluster of nodes [${members.join(",")}], and node ${nodeId} is not among them: start the node it belongs to on it, or give node ${nodeId} a data dir of its own (a copy of another node's carries that node's vote and log, which a node must never take for its own; a node removed from the cluster starts again empty); the data dir was left unchanged`,
    file,
  );
}

function nodeMismatch(file: string, owner: number, nodeId: NodeId): StorageError {
  return new StorageError(
    "node_mismatch",
    `this database is node ${owner}'s, not node ${nodeId}'s: start node ${owner} on it, or give node ${nodeId} a data dir of its own (a copy of another node's carries that node's vote and log, which a node must never take for its own); the data dir was left unchanged`,
    file,
  );
}

/**
 * Records that the database belongs to node `nodeId` or, when it is recorded as another's, throws
 * `node_mismatch` (inside migrate's transaction, so a refused database is left as it was). The
 * data dir's `node-id` file (src/lib/node-id-file.ts) says the same; this record is inside the
 * database, so a data dir whose file was deleted, or a copy of only `kv.db` and its log, is refused
 * too: the log beside it holds that node's vote.
 */
function ownDatabase(db: Database, file: string, nodeId: NodeId): void {
  const owner = db.query<{ node_id: number }, []>("SELECT node_id FROM meta WHERE id = 1").get()?.node_id;
  if (owner === undefined) throw corruptError(file, "meta row missing");
  if (owner === nodeId) return;
  if (owner !== 0) throw nodeMismatch(file, owner, nodeId);
  const members = recordedMembers(db, true);
  if (members.length > 0 && !members.includes(nodeId)) throw notAMember(file, members, nodeId);
  db.query("UPDATE meta SET node_id = ? WHERE id = 1").run(nodeId);
}

/**
 * The migration to schema 5 (inside its transaction): the log's rows and the hard state written
 * to segments in `logDir` (a new directory, made durable), fsynced, and only then the tables
 * dropped. A log compacted before starts after its snapshot (a reset).
 */
function moveLogToSegments(db: Database, file: string, logDir: string, logOptions: SegmentLogOptions): SegmentLog {
  const row = db.query<HardStateRow, []>("SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 1").get();
  if (row === null) throw corruptError(file, "hard state row missing");
  const hardState: HardState = { term: row.term, vote: row.vote, commit: row.commit_index };
  if (hardStateChecksum(hardState) !== row.crc) throw corruptError(file, "hard state checksum mismatch");
  const meta = db.query<{ applied_index: number; snapshot_index: number; snapshot_term: number }, []>("SELECT applied_index, snapshot_index, snapshot_term FROM meta WHERE id = 1").get();
  if (meta === null) throw corruptError(file, "meta row missing");
  const applied = checkStoredIndex(file, meta.applied_index, "applied index");
  const snapshotIndex = checkStoredIndex(file, meta.snapshot_index, "snapshot index");
  const snapshotTerm = checkStoredIndex(file, meta.snapshot_term, "snapshot term");
  mkdirSync(logDir);
  fsyncPath(dirname(logDir));
  const log = SegmentLog.open(logDir, logOptions);
  try {
    if (snapshotIndex > 0) log.reset(snapshotIndex, snapshotTerm, hardState);
    const select = db.query<LogRow, [number, number]>("SELECT idx, term, type, data, crc FROM raft_log WHERE idx > ? ORDER BY idx LIMIT ?");
    let last = snapshotIndex;
    for (;;) {
      const rows = select.all(last, migrationRowsPerQuery);
      if (rows.length === 0) break;
      const entries = rows.map((entryRow, position) => verifiedEntry(file, entryRow, last + 1 + position));
      log.append(entries);
      last += entries.length;
    }
    log.append([], hardState);
    const appliedTerm = applied === 0 ? 0 : applied === snapshotIndex ? snapshotTerm : log.term(applied);
    if (appliedTerm === undefined) throw corruptError(file, "the entry at the applied index is missing from the log", applied);
    log.syncNow();
    db.run(migrationToV5Sql);
    db.query("UPDATE meta SET applied_term = ? WHERE id = 1").run(appliedTerm);
    return log;
  } catch (error) {
    log.close();
    throw error;
  }
}


/** `prefixUpperBound` of one of the state machine's own prefixes, which always has one. */
function prefixEnd(prefix: string): string {
  const end = prefixUpperBound(prefix);
  assert(end !== undefined, `prefix ${JSON.stringify(prefix)} has no upper bound`);
  return end;
}


/** The larger of two keys in UTF-8 byte order (where `range` starts: after both). */
function maxKey(a: string, b: string): string {
  return Buffer.compare(Buffer.from(a), Buffer.from(b)) >= 0 ? a : b;
}

/** How many session rows the kv table holds (through the partial index). */
function countSessionRows(db: Database): number {
  return db.query<{ n: number }, []>(`SELECT COUNT(*) AS n FROM kv INDEXED BY kv_sessions_by_version WHERE ${sessionRowsWhere}`).get()?.n ?? 0;
}

/** The kv table through unprepared statements: for one-off uses (a migration). */
function rawKvTable(db: Database): KvTable {
  return {
    get: (key) => db.query<KvRow, [string]>("SELECT value, version FROM kv WHERE key = ?").get(key) ?? undefined,
    put: (key, value, version) =>
      void db
        .query("INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version")
        .run(key, value, version),
    delete: (key) => db.query("DELETE FROM kv WHERE key = ?").run(key).changes > 0,
    oldestSessions: (limit) =>
      db.query<ImageRowRow, [number]>(`SELECT key, value, version FROM kv INDEXED BY kv_sessions_by_version WHERE ${sessionRowsWhere} ORDER BY version LIMIT ?`).all(limit),
    range: (prefix, after, limit) =>
      db.query<ImageRowRow, [string, string, number]>("SELECT key, value, version FROM kv WHERE key > ? AND key < ? ORDER BY key LIMIT ?").all(maxKey(after, prefix), prefixEnd(prefix), limit),
    keysFrom: (from, end, limit) =>
      (end === undefined
        ? db.query<{ key: string }, [string, number]>("SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?").all(from, limit)
        : db.query<{ key: string }, [string, string, number]>("SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?").all(from, end, limit)
      ).map((row) => row.key),
  };
}

/** See `SqliteStorage.mirrorState`. */
export interface SqliteMirrorState {
  readonly file: string;
  readonly hardState: HardState;
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
  readonly addresses: readonly MemberAddress[];
  readonly changedIndex: number;
  readonly applied: number;
  readonly snapshot: SnapshotMetadata;
  readonly lastIndex: number;
  readonly termRuns: readonly TermRun[];
  /** The log's segment directory, and where each entry after the snapshot is in it (see SegmentReader). */
  readonly logDir: string;
  readonly logPositions: LogPositions;
  /** The torn record the log's replay cut off at open, if any (SegmentLog.tornCut). */
  readonly tornCut: TornCut | undefined;
}

/** Sizes and limits of one open storage. */
interface SqliteStorageSettings {
  readonly termCacheLoadEntriesMax: number;
  readonly stagedImageBytesMax: number;
  readonly lockWaitMs: number;
  readonly logTailBytesMax: number;
  readonly logTailKeptBytesMax: number;
  /** Checkpoints on a worker: request one every `pages` pages written (estimated). Undefined: inline. */
  readonly checkpointer: { readonly pages: number; readonly restartFrames: number; readonly onCheckpoint?: (report: CheckpointReport) => void } | undefined;
}

/**
 * The durable `KvStorage`. Open it with `openSqliteStorage`. Single-threaded: one node loop calls
 * it. Log reads (`entries`) verify each record's checksum, index and term and throw
 * `StorageError` `corrupt` naming the segment and index on a mismatch (terms come from memory);
 * kv rows carry no checksum (they can be rebuilt by replaying the log).
 */
export class SqliteStorage implements KvStorage {
  private hardStateValue: HardState;
  private voters: readonly NodeId[];
  private learners: readonly NodeId[];
  /** Members' addresses and the index of the last membership change, as of `applied` (see `Membership`). */
  private addresses: readonly MemberAddress[];
  private changedIndex: number;
  private applied: number;
  /** Where the log was last compacted or a snapshot installed; index 0 when never. */
  private snap: SnapshotMetadata;
  private last: number;
  /** See `SqliteStorageOptions.termCacheLoadEntriesMax`: what `mirrorState` sends of the terms. */
  private readonly termRunsLoadEntriesMax: number;
  /** Images open on their own connections: closed with the storage. */
  private readonly images = new Set<KvImageReader>();
  private closed = false;

  private readonly updateApplied: Statement<unknown, [number, number, number, number]>;
  private readonly selectValue: Statement<CheckedRow, [string]>;
  private readonly selectOldestSessions: Statement<CheckedRow, [number]>;
  private readonly selectPrefixRange: Statement<CheckedRow, [string, string, number]>;
  /** Keys only (a delete-prefix's, `KvTable.keysFrom`): from a key on, with and without an end. */
  private readonly selectKeysFrom: Statement<{ key: string }, [string, number]>;
  private readonly selectKeysBetween: Statement<{ key: string }, [string, string, number]>;
  /** The kv table as `executeStep` sees it, through the prepared statements. */
  private readonly kvTable: KvTable;
  private readonly upsertValue: Statement<unknown, [string, Uint8Array, number, number]>;
  private readonly deleteValue: Statement<unknown, [string]>;
  /** The WAL, open for `sync` from its first call until `close` (see `walDescriptor`), and its inode. */
  private walFd: number | undefined;
  private walInode = 0;
  /** Descriptors of WAL files that were replaced, closed once no fsync uses them. */
  private readonly retiredWalFds: number[] = [];
  /** fsyncs on Bun's thread pool that have not returned: `close` leaves `walFd` open for them. */
  private syncsRunning = 0;
  /** Called once `syncsRunning` is back to 0 (see `released`). */
  private syncsIdleWaiters: (() => void)[] = [];
  /** The checkpointer's end, from `close` (see `released`). */
  private checkpointerClosed: Promise<void> | undefined;
  private readonly synchronousNormal: Statement<unknown, []>;
  private readonly synchronousFull: Statement<unknown, []>;
  private readonly updateSnapshot: Statement<unknown, [number, number, string, string, number]>;
  private readonly updateConfiguration: Statement<unknown, [string, string]>;
  private readonly updateConfigIndex: Statement<unknown, [number]>;
  private readonly clearMembers: Statement<unknown, []>;
  private readonly insertMember: Statement<unknown, [number, string, string | null, number | null]>;
  /** The image being received (see StagingFile). */
  private readonly imageStaging: ImageStaging;
  private readonly stagingFile: StagingFile;
  private readonly clearKv: Statement<unknown, []>;
  private readonly touchMeta: Statement<unknown, []>;
  private readonly applyTransaction: (steps: readonly ApplyStep[], appliedIndex: number, appliedTerm: number, membership: Membership | undefined) => ApplyResult[];
  private readonly membershipTransaction: (membership: Membership) => void;
  private readonly compactTransaction: (snapshot: SnapshotMetadata) => void;
  private readonly installTransaction: (snapshot: SnapshotMetadata, membership: Membership) => void;
  private readonly lockWaitMs: number;
  private readonly pageBytes: number;
  /** Kv and size reads on the node's connection (sqlite-reads.ts, shared with ThreadedStorage's reader). */
  private readonly reads: SqliteReads;
  /** Checkpoints on a worker thread (undefined: SQLite's autocheckpoint, inline, in EXCLUSIVE mode). */
  private readonly checkpointer: Checkpointer | undefined;
  private readonly checkpointPages: number;
  private readonly walCheckpoint: Statement<{ busy: number; log: number; checkpointed: number }, []>;
  private readonly walTruncate: Statement<{ busy: number; log: number; checkpointed: number }, []>;
  /** Pages written since the last checkpoint request, by estimate (see `notePagesWritten`). */
  private pagesSinceCheckpoint = 0;
  /**
   * How far the log's segments were compacted. A compaction is recorded in meta (`snap`) first,
   * and its segments go only after a sync made that record durable (see `sync`): a power loss
   * could otherwise take the record back and leave the state machine behind the log's first entry.
   */
  private logCompactedTo = 0;
  /** Syncs not yet settled (`released` waits for them). */
  private readonly syncsPending = new Set<Promise<void>>();

  /** Use `openSqliteStorage`. */
  constructor(
    private readonly db: Database,
    /** Holds the sidecar lock file for as long as the storage is open. */
    private readonly lock: Database,
    /** The Raft log and hard state (segment files in `<file>-log`): closed with the storage. */
    private readonly log: SegmentLog,
    /** The database file, named in every error. */
    readonly file: string,
    settings: SqliteStorageSettings,
  ) {
    const { termCacheLoadEntriesMax } = settings;
    assert(Number.isSafeInteger(termCacheLoadEntriesMax) && termCacheLoadEntriesMax >= 1, "termCacheLoadEntriesMax");
    assert(Number.isSafeInteger(settings.stagedImageBytesMax) && settings.stagedImageBytesMax >= 1, "stagedImageBytesMax");
    this.lockWaitMs = settings.lockWaitMs;
    this.tail = new LogTail(settings.logTailBytesMax, settings.logTailKeptBytesMax);
    const checkpointing = settings.checkpointer;
    this.checkpointPages = checkpointing?.pages ?? 0;
    this.walCheckpoint = db.prepare("PRAGMA wal_checkpoint(PASSIVE)");
    this.walTruncate = db.prepare("PRAGMA wal_checkpoint(TRUNCATE)");
    assert(checkpointing === undefined || (Number.isSafeInteger(checkpointing.pages) && checkpointing.pages >= 1), "checkpointPages");
    this.checkpointer =
      checkpointing === undefined
        ? undefined
        : createCheckpointer(file, {
            busyTimeoutMs: settings.lockWaitMs,
            onCheckpoint: (report) => {
              checkpointing.onCheckpoint?.(report);
              if (this.closed) return;
              const caughtUp = report.error === undefined && report.checkpointedFrames >= report.walFrames;
              if (caughtUp && report.walFrames >= checkpointing.restartFrames) {
                // Only a short tail is checkpointed here: what was written during the round. A
                // long one (a round of 300 ms under 16 KB writes left 100-250 ms of work here)
                // goes to the worker first, in another round, until the tail is short.
                // Past half the backstop the tail is taken here anyway: steady writes must not
                // keep the WAL from starting over until the backstop checkpoints all of it here.
                if (this.pagesSinceCheckpoint > restartTailPagesMax && report.walFrames < walCheckpointPagesBackstop / 2) {
                  this.pagesSinceCheckpoint = 0;
                  this.checkpointer?.request();
                  return;
                }
                // A WAL far past its usual length (an install wrote a whole image into it) is also
                // cut to zero bytes, or its file would keep that space until the next commit, which
                // an idle node may not make; none of our images may be reading it then.
                const truncate = report.walFrames > 4 * checkpointing.restartFrames && this.images.size === 0;
                this.checkpointHere(checkpointing.onCheckpoint, truncate);
              }
              // What was written during the round is asked for as soon as it ends.
              this.maybeCheckpoint();
            },
          });
    this.updateApplied = db.prepare("UPDATE meta SET applied_index = ?, applied_term = ?, log_durable_segment = ?, log_durable_bytes = ? WHERE id = 1");
    this.selectValue = db.prepare("SELECT key, value, version, crc FROM kv WHERE key = ?");
    this.selectPrefixRange = db.prepare("SELECT key, value, version, crc FROM kv WHERE key > ? AND key < ? ORDER BY key LIMIT ?");
    this.selectKeysFrom = db.prepare("SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?");
    this.selectKeysBetween = db.prepare("SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?");
    // INDEXED BY: the planner would rather scan the primary key's range (and sort every session).
    this.selectOldestSessions = db.prepare(
      `SELECT key, value, version, crc FROM kv INDEXED BY kv_sessions_by_version WHERE ${sessionRowsWhere} ORDER BY version LIMIT ?`,
    );
    // What the apply reads is checked as a client's read is: a damaged row is never applied from.
    const checked = (row: CheckedRow) => {
      checkedRow(file, row);
      return { key: row.key, value: row.value, version: row.version };
    };
    this.kvTable = {
      get: (key) => {
        const row = this.selectValue.get(key);
        return row === null ? undefined : checked(row);
      },
      put: (key, value, version) => void this.upsertValue.run(key, value, version, rowChecksum(key, value, version)),
      delete: (key) => this.deleteValue.run(key).changes > 0,
      oldestSessions: (limit) => this.selectOldestSessions.all(limit).map(checked),
      // Bounded above by the first key past the prefix: a page reads no row outside it.
      range: (prefix, after, limit) => this.selectPrefixRange.all(maxKey(after, prefix), prefixEnd(prefix), limit).map(checked),
      keysFrom: (from, end, limit) =>
        (end === undefined ? this.selectKeysFrom.all(from, limit) : this.selectKeysBetween.all(from, end, limit)).map((row) => row.key),
    };
    this.upsertValue = db.prepare(
      "INSERT INTO kv (key, value, version, crc) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, crc = excluded.crc",
    );
    this.deleteValue = db.prepare("DELETE FROM kv WHERE key = ?");
    this.synchronousNormal = db.prepare("PRAGMA synchronous = NORMAL");
    this.synchronousFull = db.prepare("PRAGMA synchronous = FULL");
    this.updateSnapshot = db.prepare(
      "UPDATE meta SET snapshot_index = ?, snapshot_term = ?, snapshot_voters = ?, snapshot_learners = ?, snapshot_crc = ? WHERE id = 1",
    );
    this.updateConfiguration = db.prepare("UPDATE meta SET voters = ?, learners = ? WHERE id = 1");
    this.updateConfigIndex = db.prepare("UPDATE meta SET config_index = ? WHERE id = 1");
    this.clearMembers = db.prepare("DELETE FROM members");
    this.insertMember = db.prepare("INSERT INTO members (id, peer_url, http_url, added_index) VALUES (?, ?, ?, ?)");
    this.imageStaging = new ImageStaging(`${file}-staging`, settings.stagedImageBytesMax, file);
    this.stagingFile = this.imageStaging.file;
    this.clearKv = db.prepare("DELETE FROM kv");
    this.touchMeta = db.prepare("SELECT applied_index FROM meta WHERE id = 1");
    this.reads = new SqliteReads(db, file);
    this.pageBytes = this.reads.pageBytes;
    this.compactTransaction = db.transaction((snapshot: SnapshotMetadata) => this.writeSnapshotMeta(snapshot));
    this.installTransaction = db.transaction((snapshot: SnapshotMetadata, membership: Membership) => this.writeInstall(snapshot, membership));
    this.membershipTransaction = db.transaction((membership: Membership) => this.writeMembership(membership));
    this.applyTransaction = db.transaction((steps: readonly ApplyStep[], appliedIndex: number, appliedTerm: number, membership: Membership | undefined) =>
      this.writeApply(steps, appliedIndex, appliedTerm, membership),
    );

    const meta = loadMeta(file, db);
    this.voters = parseVoters(file, meta.voters);
    this.learners = parseIds(file, meta.learners, "learners");
    this.addresses = loadAddresses(db);
    this.changedIndex = checkStoredIndex(file, meta.config_index, "config index");
    this.applied = checkStoredIndex(file, meta.applied_index, "applied index");
    this.tail.keepFrom(this.applied + 1);
    this.snap = parseSnapshotMeta(file, meta);
    const loaded = this.loadLog();
    this.hardStateValue = loaded.hardState;
    this.last = loaded.last;
    this.termRunsLoadEntriesMax = termCacheLoadEntriesMax;

    // Invariant: snapshot <= applied <= commit <= lastIndex, as persisted (see the durability notes above).
    if (this.hardStateValue.commit > this.last) {
      // The commit index is saved only with the entries up to it (fsynced first): the log lost records it had.
      throw corruptError(logDirOf(file), `the log ends at index ${this.last}, before the commit index ${this.hardStateValue.commit} saved with it: records it had fsynced are gone (a segment cut short or removed)`);
    }
    if (this.applied > this.last) throw this.corrupt(`applied ${this.applied} beyond last index ${this.last}`);
    if (this.snap.index > this.applied) throw this.corrupt(`snapshot ${this.snap.index} beyond applied ${this.applied}`);
  }

  // --- RaftStorage ---

  /**
   * Term, vote and commit as last saved, and the configuration: the voters recorded at bootstrap
   * ([] before it) or by the last snapshot installed, with its learners when it had any.
   */
  initialState(): { hardState: HardState; voters: readonly NodeId[]; learners?: readonly NodeId[] } {
    this.assertOpen();
    return { hardState: this.hardStateValue, voters: this.voters, ...(this.learners.length > 0 ? { learners: this.learners } : {}) };
  }

  /** Entry records read back from the log's segments by `entries` since open. */
  get logEntriesRead(): number {
    return this.log.recordsRead;
  }
  /** The newest entries saved, and those not yet applied, served without a query (see LogTail). */
  private readonly tail: LogTail;

  /** Entries in [lo, hi), at most `maxBytes` of data but at least one when lo < hi; each verified. */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    this.assertOpen();
    assert(lo >= this.firstIndex() && hi <= this.last + 1 && lo <= hi, `entries(${lo}, ${hi}) out of range`);
    // The tail runs to the last entry saved, so what it holds from `lo` on is all there is to read.
    const kept = this.tail.slice(lo, hi, maxBytes);
    if (kept !== undefined) return kept;
    return this.log.entries(lo, hi, maxBytes);
  }

  /** Term at `index` for firstIndex()-1 <= index <= lastIndex(); from memory near the end of the log. */
  term(index: number): number {
    this.assertOpen();
    if (index === this.snap.index) return this.snap.term; // term(0) is 0
    assert(index >= this.firstIndex() - 1 && index <= this.last, `term(${index}) out of range`);
    // The log keeps every entry's term in memory (its positions).
    const term = this.log.term(index);
    if (term === undefined) throw this.corrupt("entry missing from the log", index);
    return term;
  }

  /** The first index the log holds: one past the snapshot (1 for a log never compacted). */
  firstIndex(): number {
    return this.snap.index + 1;
  }

  /** Where the log was last compacted or a snapshot installed; the empty snapshot (index 0, current voters) when never. */
  snapshot(): SnapshotMetadata {
    this.assertOpen();
    if (this.snap.index === 0) return { index: 0, term: 0, voters: this.voters };
    return this.snap;
  }

  /**
   * The state machine as applied now, which `openImage` will read (at this index or a later one):
   * undefined before anything is applied.
   */
  snapshotForSend(): SnapshotMetadata | undefined {
    this.assertOpen();
    if (this.applied === 0) return undefined;
    return { index: this.applied, term: this.term(this.applied), voters: this.voters, ...this.learnersField() };
  }

  /** Index of the last saved entry; the snapshot's index when the log after it is empty. */
  lastIndex(): number {
    this.assertOpen();
    return this.last;
  }

  // --- RaftLogWriter ---

  /**
   * Appends `entries` and then `hardState` (when given) to the log, one write. Entries from
   * entries[0].index on replace any saved there (a new leader overwrote a conflicting suffix).
   * With `sync` they are fdatasynced before returning; without, durable once a later `sync()`
   * resolves. Broken Raft invariants (see checkSave) throw an AssertionError before anything is
   * written.
   */
  save(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): void {
    this.saveAt(hardState, entries, sync);
  }

  /** `save`, returning where its entries went in the log (undefined when it wrote none): ThreadedStorage's reader needs it. */
  saveAt(hardState: HardState | undefined, entries: readonly Entry[], sync: boolean): AppendPlace | undefined {
    this.assertOpen();
    // An unchanged hard state costs no write.
    const changed = hardState !== undefined && hardStateEqual(hardState, this.hardStateValue) ? undefined : hardState;
    const lastIndexAfter = checkSave(
      { hardState: this.hardStateValue, firstIndex: this.firstIndex(), lastIndex: this.last, term: (index) => this.term(index) },
      changed,
      entries,
    );
    if (entries.length === 0 && changed === undefined) return undefined;
    const place = this.log.append(entries, changed);
    if (sync) this.log.syncNow();
    // Written: now memory may follow the disk.
    const first = entries[0];
    if (first !== undefined) {
      this.tail.saved(entries);
      this.last = lastIndexAfter;
    }
    if (changed !== undefined) this.hardStateValue = { term: changed.term, vote: changed.vote, commit: changed.commit };
    return place;
  }

  // --- State machine ---

  /**
   * Records the voters on first call; afterwards verifies the same set is configured
   * (`StorageError` `voters_mismatch` otherwise). Durable when it returns.
   */
  bootstrap(voters: readonly NodeId[], addresses: readonly MemberAddress[] = []): void {
    this.assertOpen();
    const normalized = normalizeVoters(voters, this.file);
    // Before any membership change, --cluster must name the voters recorded at bootstrap (a typo
    // there would otherwise split the cluster); after one, the recorded configuration wins.
    if (this.voters.length > 0 && this.changedIndex === 0) checkVotersMatch(this.voters, normalized, this.file);
    const membership: Membership = {
      voters: this.voters.length > 0 ? this.voters : normalized,
      learners: this.learners,
      addresses: withMissingAddresses(this.addresses, addresses),
      changedIndex: this.changedIndex,
    };
    this.membershipTransaction(membership);
    this.adoptMembership(membership);
  }

  /** See `KvStorage.bootstrapJoined`: durable when it returns. */
  bootstrapJoined(configuration: Omit<Membership, "changedIndex">, changedIndex: number): void {
    this.assertOpen();
    assert(this.voters.length === 0 && this.applied === 0 && this.last === 0, "bootstrapJoined on storage that is not empty");
    assert(Number.isSafeInteger(changedIndex) && changedIndex >= 1, `joined at index ${changedIndex}`);
    const membership: Membership = {
      voters: normalizeVoters(configuration.voters, this.file),
      learners: [...configuration.learners].sort((a, b) => a - b),
      addresses: withMissingAddresses([], configuration.addresses),
      changedIndex,
    };
    this.membershipTransaction(membership);
    this.adoptMembership(membership);
  }

  /** See `KvStorage.membership`. */
  membership(): Membership {
    this.assertOpen();
    return { voters: this.voters, learners: this.learners, addresses: this.addresses, changedIndex: this.changedIndex };
  }

  private writeMembership(membership: Membership): void {
    this.updateConfiguration.run(idsText(membership.voters), idsText(membership.learners));
    this.updateConfigIndex.run(membership.changedIndex);
    this.clearMembers.run();
    for (const address of membership.addresses) this.insertMember.run(address.id, address.peerUrl, address.httpUrl ?? null, address.addedIndex ?? null);
  }

  private adoptMembership(membership: Membership): void {
    this.voters = membership.voters;
    this.learners = membership.learners;
    this.addresses = membership.addresses;
    this.changedIndex = membership.changedIndex;
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
        appliedIndex: this.applied,
        commitIndex: this.hardStateValue.commit,
        lastIndex: this.last,
        term: (index) => this.term(index),
        badCommand: (message, index, cause) => new StorageError("bad_command", message, this.file, index, { cause }),
      },
      entries,
    );
    if (plan.appliedIndex === this.applied) return plan.steps.map((step) => resultFor(step, false));
    let membership: Membership | undefined;
    for (const step of plan.steps) if (step.kind === "conf-change") membership = membershipAfter(membership ?? this.membership(), step.change, step.index);
    const appliedTerm = this.term(plan.appliedIndex);
    const results = this.withSynchronous(false, () => this.applyTransaction(plan.steps, plan.appliedIndex, appliedTerm, membership));
    this.notePagesWritten(entries);
    this.applied = plan.appliedIndex;
    this.tail.keepFrom(this.applied + 1);
    if (membership !== undefined) this.adoptMembership(membership);
    return results;
  }

  private writeApply(steps: readonly ApplyStep[], appliedIndex: number, appliedTerm: number, membership: Membership | undefined): ApplyResult[] {
    // The configuration as of the new applied index commits with it (or not at all).
    if (membership !== undefined) this.writeMembership(membership);
    const results: ApplyResult[] = [];
    for (const step of steps) results.push(executeStep(step, this.kvTable));
    this.recordApplied(appliedIndex, appliedTerm);
    return results;
  }

  /** The applied index and its term, with how much of the log is durable (see `migrationToV8Sql`), in the transaction running. */
  private recordApplied(index: number, term: number): void {
    const durable = this.log.durableMark();
    this.updateApplied.run(index, term, durable.segment, durable.bytes);
  }

  /** The index of the last applied entry, as stored with the kv data. */
  appliedIndex(): number {
    this.assertOpen();
    return this.applied;
  }

  /**
   * See `KvStorage.dataBytes`: the database's pages in use, (page_count - freelist_count) ×
   * page_size, as the newest transaction left them (the WAL included, checkpointed or not). Pages
   * freed by deletes and compaction are reused before the file grows, so this is what new data
   * would add to; the WAL file itself is not counted (bounded by walBytesLimit after a checkpoint).
   */
  dataBytes(): number {
    this.assertOpen();
    return this.reads.dataBytes();
  }

  /** The value of `key` and its version, read from disk (a fresh copy each call). */
  get(key: string): StoredValue | undefined {
    this.assertOpen();
    return this.reads.get(key);
  }

  /** See `KvStorage.stateVersion`: applies run on this connection, so what they confirmed. */
  stateVersion(): number {
    this.assertOpen();
    return this.applied;
  }

  /** See `KvStorage.valueBytes`. */
  valueBytes(key: string): number | undefined {
    this.assertOpen();
    return this.reads.valueBytes(key);
  }

  /** Rows of the kv table read out of SQLite by `list` since open (each one copied into memory). */
  get kvRowsRead(): number {
    return this.reads.kvRowsRead;
  }

  /** See `KvStorage.list`: an index range scan from the prefix, stopping at the first key past it. */
  list(prefix: string, after: string | undefined, limit: number, bytesMax?: number): ListedValue[] {
    this.assertOpen();
    return this.reads.list(prefix, after, limit, bytesMax);
  }

  // --- Snapshots ---

  /**
   * See `KvStorage.compact`: recorded in meta (one transaction, no fsync); the log's segments
   * holding only entries up to `index` are deleted after the next `sync` (see `logCompactedTo`).
   */
  compact(index: number): void {
    this.assertOpen();
    if (!checkCompact({ snapshotIndex: this.snap.index, appliedIndex: this.applied, lastIndex: this.last }, index)) return;
    const snapshot: SnapshotMetadata = { index, term: this.term(index), voters: this.voters, ...this.learnersField() };
    this.withSynchronous(false, () => this.compactTransaction(snapshot));
    this.snap = snapshot;
  }

  /**
   * Opens a read-only connection and a read transaction on it: the applied index and its term,
   * the configuration and the kv rows it reads are one committed state, whatever the node writes
   * meanwhile.
   */
  openImage(): KvImageReader {
    this.assertOpen();
    if (this.images.size === 0) this.shareDatabase(true);
    try {
      const image = openImageReader(this.file, this.lockWaitMs, (closed) => this.imageClosed(closed));
      this.images.add(image);
      return image;
    } catch (error: unknown) {
      if (this.images.size === 0) this.shareDatabase(false);
      throw error;
    }
  }

  private imageClosed(image: KvImageReader): void {
    this.images.delete(image);
    if (this.images.size === 0 && !this.closed) this.shareDatabase(false);
  }

  /**
   * NORMAL locking while images are open (a reader connection shares the WAL index), EXCLUSIVE
   * otherwise. Leaving EXCLUSIVE takes effect at the next access, hence the read after it.
   */
  private shareDatabase(share: boolean): void {
    if (this.checkpointer !== undefined) return; // always NORMAL: the checkpointer shares the WAL
    // Not prepared statements: locking_mode takes effect when the pragma is compiled, not when it runs.
    this.db.run(`PRAGMA locking_mode = ${share ? "NORMAL" : "EXCLUSIVE"}`);
    if (share) this.touchMeta.get();
  }

  /** See `KvStorage.stageImageChunk`: one transaction per chunk, no fsync (staging is not durable). */
  stageImageChunk(imageId: string, rows: readonly ImageRow[], first: boolean): void {
    this.assertOpen();
    this.imageStaging.stage(imageId, rows, first);
  }

  /** See `KvStorage.installSnapshot`: one fsynced transaction. */
  installSnapshot(metadata: SnapshotMetadata, imageId: string, addresses: readonly MemberAddress[] = []): void {
    this.assertOpen();
    this.installFrom(this.stagingFile, this.imageStaging.state(), metadata, imageId, addresses);
  }

  /**
   * Installs an image another connection staged (ThreadedStorage stages on the node's thread and
   * its writer thread installs): the file at `path`, no longer open elsewhere, staged as
   * `staging` says. Otherwise as `installSnapshot`; the file is deleted once the install committed.
   */
  installStagedFile(path: string, staging: StagingState, metadata: SnapshotMetadata, imageId: string, addresses: readonly MemberAddress[] = []): void {
    this.assertOpen();
    this.installFrom(new StagingFile(path), staging, metadata, imageId, addresses);
  }

  private installFrom(
    stagingFile: StagingFile,
    staging: StagingState,
    metadata: SnapshotMetadata,
    imageId: string,
    addresses: readonly MemberAddress[],
  ): void {
    checkInstall(staging, this.applied, metadata, imageId);
    const { voters, learners } = snapshotConfiguration(metadata, this.file);
    const membership: Membership = {
      voters,
      learners,
      addresses: addressesAfterInstall(addresses, this.addresses, voters, learners),
      changedIndex: sameMembers({ voters, learners }, this.membership()) ? this.changedIndex : metadata.index,
    };
    const snapshot: SnapshotMetadata = { index: metadata.index, term: metadata.term, voters, ...(learners.length > 0 ? { learners } : {}) };
    // Invariant: applied <= commit. The core commits a snapshot's index as it restores it.
    const hardState: HardState = { ...this.hardStateValue, commit: Math.max(this.hardStateValue.commit, snapshot.index) };
    // The staged file is attached for the install's one transaction (ATTACH and DETACH cannot run
    // inside one), read by it, and deleted once it committed. Should the install fail (a full
    // disk), the file stays staged for the next try.
    stagingFile.release();
    this.db.run("ATTACH DATABASE ? AS staging", [stagingFile.path]);
    try {
      this.withSynchronous(true, () => this.installTransaction(snapshot, membership));
    } finally {
      this.db.run("DETACH DATABASE staging");
    }
    stagingFile.discard();
    // Then the log starts after the image (durable when it returns). Should that fail, the node
    // must stop: at the next open the log, found older than the snapshot recorded, is reset then.
    try {
      this.log.reset(snapshot.index, snapshot.term, hardState);
    } catch (error) {
      // Not a full disk to wait out (its message must not read as one: isDiskFull), but the end.
      throw new Error(`the log could not be reset after installing the snapshot at ${snapshot.index}; restart the node (the log is reset at open)`, { cause: error });
    }
    this.logCompactedTo = Math.max(this.logCompactedTo, snapshot.index);
    // Committed: now memory may follow the disk.
    this.hardStateValue = hardState;
    this.adoptMembership(membership);
    this.applied = snapshot.index;
    this.snap = snapshot;
    this.last = snapshot.index;
    this.tail.clear();
    this.tail.keepFrom(this.applied + 1);
    // The image went into the WAL whole: its checkpoint is asked for now, not after later writes.
    this.notePages(Math.ceil(staging.bytes / this.pageBytes));
    if (stagingFile === this.stagingFile) this.imageStaging.forget();
  }

  private writeInstall(snapshot: SnapshotMetadata, membership: Membership): void {
    this.clearKv.run();
    // In key order, as the image was staged: pages are filled in order, none split half empty.
    this.db.run("INSERT INTO kv (key, value, version, crc) SELECT key, value, version, crc FROM staging.kv_staging ORDER BY key");
    // An image from a 0.1.0 leader has sessions but no session clock.
    startSessionClock(this.kvTable, countSessionRows(this.db), snapshot.index);
    this.writeMembership(membership);
    this.recordApplied(snapshot.index, snapshot.term);
    this.writeSnapshotMeta(snapshot);
  }

  private writeSnapshotMeta(snapshot: SnapshotMetadata): void {
    const votersText = idsText(snapshot.voters);
    const learnersText = idsText(snapshot.learners ?? []);
    this.updateSnapshot.run(snapshot.index, snapshot.term, votersText, learnersText, snapshotChecksum(snapshot.index, snapshot.term, votersText, learnersText));
  }

  /** Drops the staged image, if any. */
  discardStagedImage(): void {
    this.assertOpen();
    this.imageStaging.discard();
  }

  /**
   * See `KvStorage.sync`: fdatasyncs the log's segments written since the last sync and the WAL
   * (applies and the other commits), both on Bun's thread pool; then deletes the segments a
   * compaction recorded before it left behind (see `logCompactedTo`).
   */
  sync(): Promise<void> {
    this.assertOpen();
    const compactTo = this.snap.index;
    // Both settled before it does: `released` counts on no fdatasync still running after it.
    const synced = Promise.allSettled([this.log.sync(), this.syncWal()]).then((outcomes) => {
      for (const outcome of outcomes) if (outcome.status === "rejected") throw outcome.reason;
      if (this.closed || compactTo <= this.logCompactedTo) return;
      this.logCompactedTo = compactTo;
      this.log.compact(compactTo);
    });
    this.syncsPending.add(synced);
    const forget = () => void this.syncsPending.delete(synced);
    synced.then(forget, forget);
    return synced;
  }

  /**
   * Fdatasyncs the WAL file (where every commit since the last checkpoint is) on Bun's thread pool. SQLite syncs the database file itself when it checkpoints, so the
   * WAL holds all that is not yet durable. fdatasync, as SQLite and PostgreSQL use for their logs:
   * it flushes the data and whatever metadata reading it back needs (the size, when the WAL grew),
   * and skips timestamps (A B A B, 6 rounds: 1.00-1.13x the writes/s of fsync, never below).
   * The WAL stays open between calls (`walFd`); a close meanwhile waits for the fsyncs using it.
   */
  private syncWal(): Promise<void> {
    let fd: number;
    let owned = false;
    try {
      try {
        fd = this.walDescriptor();
      } catch (error) {
        // No WAL file: everything was checkpointed into the database file (or nothing written
        // since it was opened), so that file is what there is to sync, with its name.
        if ((error as { code?: string }).code !== "ENOENT") throw error;
        fd = this.openDurably(this.file);
        owned = true;
      }
    } catch (error) {
      return Promise.reject(error);
    }
    this.syncsRunning++;
    return new Promise<void>((resolve, reject) => {
      fdatasync(fd, (error) => {
        this.syncsRunning--;
        if (owned) closeSync(fd);
        this.closeWalWhenIdle();
        if (this.syncsRunning === 0) for (const wake of this.syncsIdleWaiters.splice(0)) wake();
        if (error !== null) reject(error);
        else resolve();
      });
    });
  }

  /**
   * The WAL's descriptor for `sync`, opened on first use. SQLite keeps one WAL file while the
   * database is open (it truncates it past `journal_size_limit`) and deletes it only when the last
   * connection closes; should a new file ever take its name, the stat (one call, where opening
   * anew took three) sees another inode and the new file is opened (`openDurably`).
   */
  private walDescriptor(): number {
    const path = `${this.file}-wal`;
    if (this.walFd !== undefined) {
      if (statSync(path).ino === this.walInode) return this.walFd;
      this.retiredWalFds.push(this.walFd);
      this.walFd = undefined;
      this.closeWalWhenIdle();
    }
    const fd = this.openDurably(path);
    this.walInode = fstatSync(fd).ino;
    this.walFd = fd;
    return fd;
  }

  /**
   * Opens `path` for an fsync and fsyncs its directory, or a power loss could take a new file's
   * name, and every commit in it, away.
   */
  private openDurably(path: string): number {
    const fd = openSync(path, "r");
    try {
      const dirFd = openSync(dirname(path), "r");
      try {
        fsyncSync(dirFd);
      } finally {
        closeSync(dirFd);
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return fd;
  }

  /** Closes WAL descriptors no fsync uses any more: replaced ones, and the current one after `close`. */
  private closeWalWhenIdle(): void {
    if (this.syncsRunning > 0) return;
    for (const fd of this.retiredWalFds.splice(0)) closeSync(fd);
    if (this.closed && this.walFd !== undefined) {
      closeSync(this.walFd);
      this.walFd = undefined;
    }
  }

  /** Closes the database (checkpointing the WAL into it) and any open images, then releases the lock. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closeAllButLock();
    closeDatabase(this.lock);
  }

  private closeAllButLock(): void {
    this.closed = true;
    for (const image of [...this.images]) image.close();
    this.stagingFile.discard();
    this.checkpointerClosed = this.checkpointer?.close();
    this.log.close();
    closeDatabase(this.db);
    this.closeWalWhenIdle();
  }

  /**
   * `kv defrag` (src/cli/defrag.ts), on a stopped node's data dir: the database rewritten without
   * its free pages, which deletes and compactions leave inside it (SQLite reuses them, but never
   * gives them back to the file system), as etcd's defrag does for its backend. The WAL is
   * checkpointed into the database and emptied; a compact copy is written beside it (`VACUUM INTO`
   * `<db>-defrag`: the same pages' contents, header and `user_version`, at about the size of the
   * data) and fsynced; then, every connection closed but the data dir's lock, it is renamed over the
   * database and the directory fsynced. A crash leaves one whole file or the other (a copy left
   * behind is removed at the next open). The log's segments are not touched. Leaves this storage
   * closed. Needs free space for the copy: short of it, the copy fails and nothing changes. The
   * copy is checked (`quick_check`, and its row count) and given the database's owner and mode
   * before it replaces it.
   * Open with `checkpoints: "inline"`, so that no other connection holds the database.
   */
  defragAndClose(): DefragResult {
    this.assertOpen();
    assert(this.checkpointer === undefined && this.images.size === 0, "defrag needs the database to itself: open it with inline checkpoints");
    const copy = `${this.file}${defragCopySuffix}`;
    let replaced = false;
    try {
      // Written beside the real file, and renamed over a link it would replace the link alone.
      assert(!lstatSync(this.file).isSymbolicLink(), "defrag of a database that is a symbolic link (src/cli/defrag.ts refuses it)");
      const wal = `${this.file}-wal`;
      const bytesBefore = statSync(this.file).size + (existsSync(wal) ? statSync(wal).size : 0);
      const checkpoint = this.db.query<{ busy: number }, []>("PRAGMA wal_checkpoint(TRUNCATE)").get();
      if (checkpoint?.busy !== 0) throw new StorageError("locked", "the WAL could not be checkpointed: another connection reads the database", this.file);
      const pageBytes = this.reads.pageBytes;
      const freeBytesBefore = (this.db.query<{ freelist_count: number }, []>("PRAGMA freelist_count").get()?.freelist_count ?? 0) * pageBytes;
      const rows = this.db.query<{ rows: number }, []>("SELECT count(*) AS rows FROM kv").get()?.rows ?? 0;
      rmSync(copy, { force: true });
      this.db.run("VACUUM INTO ?", [copy]);
      // The copy is checked before it replaces anything: whole, and holding every row.
      const check = new Database(copy, { readonly: true });
      try {
        const verdict = check.query<{ quick_check: string }, []>("PRAGMA quick_check").get()?.quick_check;
        const copied = check.query<{ rows: number }, []>("SELECT count(*) AS rows FROM kv").get()?.rows;
        if (verdict !== "ok" || copied !== rows) throw new StorageError("corrupt", `the compact copy did not check out (quick_check: ${verdict}; ${copied} rows of ${rows}): the database was left as it was`, this.file);
      } finally {
        check.close(true);
      }
      // The node's service user must still own it, with the same permissions.
      const { uid, gid, mode } = statSync(this.file);
      const fd = openSync(copy, "r");
      try {
        fchownSync(fd, uid, gid);
        fchmodSync(fd, mode & 0o7777);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      this.closeAllButLock();
      // The last connection closed: its WAL (emptied above, nothing written since) is gone or empty.
      if (existsSync(wal) && statSync(wal).size > 0) throw new StorageError("corrupt", "the WAL was written to during the defrag: the database was left as it was", this.file);
      renameSync(copy, this.file);
      replaced = true;
      rmSync(wal, { force: true });
      rmSync(`${this.file}-shm`, { force: true });
      fsyncPath(dirname(this.file));
      return { bytesBefore, bytesAfter: statSync(this.file).size, freeBytesBefore };
    } catch (error) {
      if (!replaced) {
        rmSync(copy, { force: true });
        rmSync(`${copy}-journal`, { force: true });
        throw error;
      }
      throw new DefragReplacedError(this.file, error);
    } finally {
      if (!this.closed) this.closeAllButLock();
      closeDatabase(this.lock);
    }
  }


  /**
   * After `close`: resolves once nothing of this storage holds a descriptor any more, that is once
   * the checkpointer's worker has ended (its own connection closed) and no fsync on Bun's thread
   * pool still uses the WAL. A process that opens storages again and again (a test running servers
   * in-process, test/server-stop.test.ts) waits for it; one that exits need not.
   */
  async released(): Promise<void> {
    assert(this.closed, "released() is for a closed storage");
    const syncsIdle = this.syncsRunning === 0 ? undefined : new Promise<void>((resolve) => this.syncsIdleWaiters.push(resolve));
    // The log closes its segments once its own fdatasyncs have returned, which these wait for.
    await Promise.all([this.checkpointerClosed, syncsIdle, ...[...this.syncsPending].map((synced) => synced.catch(() => undefined))]);
  }

  /**
   * What ThreadedStorage's node-side mirror starts from (the storage runs on its writer thread):
   * the state as persisted, the snapshot as recorded (index 0 when never) and the newest entries' term runs.
   */
  mirrorState(): SqliteMirrorState {
    this.assertOpen();
    return {
      file: this.file,
      hardState: this.hardStateValue,
      voters: this.voters,
      learners: this.learners,
      addresses: this.addresses,
      changedIndex: this.changedIndex,
      applied: this.applied,
      snapshot: this.snap,
      lastIndex: this.last,
      termRuns: this.loadTermRuns(this.termRunsLoadEntriesMax),
      logDir: this.log.dir,
      logPositions: this.log.positionsOf(this.snap.index + 1, this.last + 1),
      tornCut: this.log.tornCut(),
    };
  }

  /** The torn record the log's replay cut off at open, if any (SegmentLog.tornCut). */
  tornCut(): TornCut | undefined {
    return this.log.tornCut();
  }

  /**
   * For tests: bounds the database to `pages` pages (at least those it has), as a full disk would:
   * a write that needs more fails with SQLITE_FULL. Returns the bound now in force.
   */
  limitPages(pages: number): number {
    this.assertOpen();
    assert(Number.isSafeInteger(pages) && pages >= 1, `limitPages(${pages})`);
    return this.db.query<{ max_page_count: number }, []>(`PRAGMA max_page_count = ${pages}`).get()?.max_page_count ?? 0;
  }

  private learnersField(): { learners?: readonly NodeId[] } {
    return this.learners.length > 0 ? { learners: this.learners } : {};
  }

  // --- helpers ---

  /**
   * Counts, by estimate, the WAL pages a commit of `entries` (saved, or applied: each writes about
   * its data again) wrote: each row dirties at least one page, and a large value one per 4 KiB.
   * Rows that share a page count twice, so checkpoints come early rather than late.
   */
  private notePagesWritten(entries: readonly Entry[]): void {
    if (this.checkpointer === undefined) return;
    let pages = 1;
    for (const entry of entries) pages += 1 + Math.floor(entry.data.length / this.pageBytes);
    this.notePages(pages);
  }

  /** Counts `pages` written to the WAL (by estimate) toward the next checkpoint request. */
  private notePages(pages: number): void {
    if (this.checkpointer === undefined) return;
    this.pagesSinceCheckpoint += pages;
    this.maybeCheckpoint();
  }

  /**
   * Checkpoints on this thread what was written since the worker's last round (little, as it had
   * caught up), so that the next commit finds the WAL wholly checkpointed and starts it over.
   */
  private checkpointHere(onCheckpoint: ((report: CheckpointReport) => void) | undefined, truncate: boolean): void {
    const startedMs = performance.now();
    try {
      // A truncate waits for every reader of the WAL to finish: an image's reader on another
      // connection (a backup, a snapshot sent) that this storage does not count (the storage thread
      // never sees the loop's images), or the loop's read transaction. It is tried without waiting:
      // busy, it does what a passive round does, and a later round truncates (found in review: the
      // writer's thread stood still for the whole busy timeout, 2 s, behind a backup's read).
      if (truncate) this.db.run("PRAGMA busy_timeout = 0");
      let result: { busy: number; log: number; checkpointed: number } | null;
      try {
        result = (truncate ? this.walTruncate : this.walCheckpoint).get();
      } finally {
        if (truncate) this.db.run(`PRAGMA busy_timeout = ${this.lockWaitMs}`);
      }
      // Every page written so far is in the database file now (unless an image's read held some
      // back): none of them is left for the next round, which would otherwise come early, at once
      // when the tail was longer than `checkpointPages`, with nothing to copy.
      if (result !== null && result.log >= 0 && result.checkpointed >= result.log) this.pagesSinceCheckpoint = 0;
      onCheckpoint?.({ durationMs: performance.now() - startedMs, walFrames: result?.log ?? -1, checkpointedFrames: result?.checkpointed ?? -1, thread: "caller" });
    } catch (error) {
      // Not fatal: the WAL goes on growing until a later round, or the backstop, catches up.
      const message = error instanceof Error ? error.message : String(error);
      onCheckpoint?.({ durationMs: performance.now() - startedMs, walFrames: -1, checkpointedFrames: -1, error: message, thread: "caller" });
    }
  }

  private maybeCheckpoint(): void {
    if (this.checkpointer === undefined || this.pagesSinceCheckpoint < this.checkpointPages || this.checkpointer.running()) return;
    this.pagesSinceCheckpoint = 0;
    this.checkpointer.request();
  }

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

  /**
   * The hard state and last index, from the log as replayed, reconciled with the snapshot meta
   * records. An install commits the state machine first and then resets the log: a log found not
   * going on from the snapshot is the one from before such an install, and is reset now. Entries at or below the snapshot (a compaction recorded, its segments not yet deleted)
   * are skipped; they go at the first sync (see `logCompactedTo`). The commit index is raised to
   * the applied one: an apply may reach the disk before the hard state saved with it (two files).
   */
  private loadLog(): { hardState: HardState; last: number } {
    const stored = this.log.hardState();
    if (stored === undefined) throw this.corrupt("the log holds no hard state");
    let hardState: HardState = { ...stored, commit: Math.max(stored.commit, this.applied) };
    const first = this.log.firstIndex();
    const floor = this.log.logFloor();
    let goesOn: boolean;
    if (first === undefined) {
      // No entries: it goes on from the snapshot if it was reset (or compacted) to exactly there.
      goesOn = floor.index === this.snap.index && floor.term === this.snap.term;
    } else if (first <= this.snap.index) {
      // Holding the snapshot's entry: if of the same term (or else it is from before an install).
      goesOn = (this.log.lastIndex() as number) >= this.snap.index && this.log.term(this.snap.index) === this.snap.term;
    } else if (first === this.snap.index + 1) {
      // Right after it: reset there (the floor says of which term), or compacted there (the
      // segment holding the snapshot's entry deleted; the floor is not known).
      goesOn = floor.index !== this.snap.index || floor.term === this.snap.term;
    } else {
      throw this.corrupt(`the log starts at ${first}, after the snapshot at ${this.snap.index}: entries are missing`, this.snap.index + 1);
    }
    if (!goesOn) {
      // The log from before an install holds nothing applied past the snapshot (an install applies
      // exactly to it). If more was applied, this log is not that one: resetting would delete what
      // went on from the snapshot, fsynced and applied. Refuse, and leave every byte.
      if (this.applied > this.snap.index) {
        throw this.corrupt(`the log does not go on from the snapshot at ${this.snap.index} (term ${this.snap.term}), yet entries up to ${this.applied} were applied after it`, this.snap.index + 1);
      }
      hardState = { ...hardState, commit: Math.max(hardState.commit, this.snap.index) };
      this.log.reset(this.snap.index, this.snap.term, hardState);
    }
    return { hardState, last: this.log.lastIndex() ?? this.log.logFloor().index };
  }

  /** Runs of the newest entries' terms (up to `loadEntriesMax` of them), from the log's positions. */
  private loadTermRuns(loadEntriesMax: number): TermRun[] {
    const runs: TermRun[] = [];
    const from = Math.max(this.snap.index + 1, this.last - loadEntriesMax + 1);
    for (let index = from; index <= this.last; index++) {
      const term = this.log.term(index);
      if (term === undefined) throw this.corrupt("entry missing from the log", index);
      const previous = runs[runs.length - 1];
      if (previous === undefined || previous.term !== term) runs.push({ startIndex: index, term });
    }
    return runs;
  }

  private corrupt(message: string, index?: number, cause?: unknown): StorageError {
    return corruptError(this.file, message, index, cause);
  }

  private assertOpen(): void {
    assert(!this.closed, `storage ${this.file} used after close`);
  }
}
