import { Database, type Statement } from "bun:sqlite";
import { assert } from "../lib/assert.ts";
import { type Entry, EntryType, type NodeId, type SnapshotMetadata } from "../raft/types.ts";
import { isReservedKey } from "../kv/command.ts";
import type { MemberAddress } from "../kv/membership.ts";
import { entryChecksum, rowChecksum, snapshotChecksum } from "./entry-checksum.ts";
import { itemBytes } from "../lib/page-bytes.ts";
import { prefixUpperBound } from "../lib/utf8-order.ts";
import { type ImageRow, type KvImageReader, type ListedValue, StorageError, type StoredValue } from "./kv-storage.ts";
import { imageRowBytes } from "./snapshot-checks.ts";
import { normalizeVoters } from "./voters.ts";

/**
 * The read side of the sqlite storage, in one place: the kv table's reads, the database's size,
 * and the parsing of what meta records (the log is in segment files since schema 5: segment-log.ts). Used by
 * `SqliteStorage` (sqlite-storage.ts) on its own connection, and by `ThreadedStorage`
 * (threaded-storage.ts) on a read-only connection to the same file while a worker writes it.
 */

/** A row of the raft_log table (schema 4 and before: read once, by the migration to segments). */
export interface LogRow {
  idx: number;
  term: number;
  type: number;
  data: Uint8Array;
  crc: number;
}

/** The meta row's columns (see `metaColumns`). */
export interface MetaRow {
  voters: string | null;
  learners: string;
  applied_index: number;
  /** Term of the entry at applied_index (0 when nothing is applied). */
  applied_term: number;
  snapshot_index: number;
  snapshot_term: number;
  snapshot_voters: string;
  snapshot_learners: string;
  snapshot_crc: number;
  config_index: number;
}

/** The columns of `MetaRow`, for a SELECT. */
export const metaColumns = "voters, learners, applied_index, applied_term, snapshot_index, snapshot_term, snapshot_voters, snapshot_learners, snapshot_crc, config_index";

interface MemberRow {
  id: number;
  peer_url: string;
  http_url: string | null;
  added_index: number | null;
}
/** A row of the kv table as its queries return it. */
export interface ImageRowRow {
  key: string;
  value: Uint8Array;
  version: number;
}

/** A row of the kv table with its checksum (`rowChecksum`; NULL in rows written before schema 6). */
export interface CheckedRow extends ImageRowRow {
  crc: number | null;
}

/**
 * `row` as read, after checking it against its checksum: a mismatch is damage on disk, thrown as
 * `corrupt` naming the key, never served.
 */
export function checkedRow<T extends CheckedRow>(file: string, row: T): T {
  if (row.crc !== null && row.crc !== rowChecksum(row.key, row.value, row.version)) {
    throw corruptError(file, `the row of key ${JSON.stringify(row.key.length > 200 ? `${row.key.slice(0, 200)}...` : row.key)} does not match its checksum: damaged on disk`);
  }
  return row;
}
/** A kv row's value and version (a query by key). */
export interface KvRow {
  value: Uint8Array;
  version: number;
}

/** A `StorageError` `corrupt` about `file`. */
export function corruptError(file: string, message: string, index?: number, cause?: unknown): StorageError {
  return new StorageError("corrupt", message, file, index, cause === undefined ? undefined : { cause });
}

/** A log row as an entry, after checking its index, checksum and type (the migration to segments reads them). */
export function verifiedEntry(file: string, row: LogRow, expectedIndex: number): Entry {
  if (row.idx !== expectedIndex) throw corruptError(file, `found index ${row.idx} where ${expectedIndex} belongs`, expectedIndex);
  if (entryChecksum(row.idx, row.term, row.type, row.data) !== row.crc) throw corruptError(file, "log entry checksum mismatch", row.idx);
  if (row.type !== EntryType.Normal && row.type !== EntryType.ConfChange) throw corruptError(file, `unknown entry type ${row.type}`, row.idx);
  return { index: row.idx, term: row.term, type: row.type, data: row.data };
}

/** A stored index (or term) checked to be a whole number >= 0. */
export function checkStoredIndex(file: string, value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw corruptError(file, `${what} ${String(value)} invalid`);
  return value;
}

/** The recorded voters (NULL before bootstrap: none), checked. */
export function parseVoters(file: string, text: string | null): readonly NodeId[] {
  if (text === null) return [];
  const voters = text.split(",").map(Number);
  try {
    return normalizeVoters(voters, file);
  } catch (error: unknown) {
    throw corruptError(file, `recorded voters "${text}" invalid`, undefined, error);
  }
}

/** Comma-separated ids that may be empty (learners), checked. */
export function parseIds(file: string, text: string, what: string): readonly NodeId[] {
  if (text === "") return [];
  const ids = text.split(",").map(Number);
  if (!ids.every((id, position) => Number.isSafeInteger(id) && id >= 1 && (position === 0 || id > (ids[position - 1] as number)))) {
    throw corruptError(file, `recorded ${what} "${text}" invalid`);
  }
  return ids;
}

/** The snapshot recorded in meta, checksum verified. */
export function parseSnapshotMeta(file: string, meta: MetaRow): SnapshotMetadata {
  if (snapshotChecksum(meta.snapshot_index, meta.snapshot_term, meta.snapshot_voters, meta.snapshot_learners) !== meta.snapshot_crc) {
    throw corruptError(file, "snapshot metadata checksum mismatch");
  }
  const index = checkStoredIndex(file, meta.snapshot_index, "snapshot index");
  const term = checkStoredIndex(file, meta.snapshot_term, "snapshot term");
  if (index === 0) return { index: 0, term: 0, voters: [] };
  const learners = parseIds(file, meta.snapshot_learners, "snapshot learners");
  return { index, term, voters: parseIds(file, meta.snapshot_voters, "snapshot voters"), ...(learners.length > 0 ? { learners } : {}) };
}

/** The meta row, read on `db`. */
export function loadMeta(file: string, db: Database): MetaRow {
  const meta = db.query<MetaRow, []>(`SELECT ${metaColumns} FROM meta WHERE id = 1`).get();
  if (meta === null) throw corruptError(file, "meta row missing");
  return meta;
}

/** Every member's recorded addresses, read on `db`. */
export function loadAddresses(db: Database): MemberAddress[] {
  return db
    .query<MemberRow, []>("SELECT id, peer_url, http_url, added_index FROM members ORDER BY id")
    .all()
    .map((row) => ({
      id: row.id,
      peerUrl: row.peer_url,
      ...(row.http_url === null ? {} : { httpUrl: row.http_url }),
      ...(row.added_index === null ? {} : { addedIndex: row.added_index }),
    }));
}


/** Options of `SqliteReads`. */
export interface SqliteReadsOptions {
  /**
   * Key-value reads (`get`, `list`) made in one pass of the event loop share one read transaction
   * (see `SqliteReads`). Only for a read-only connection beside the writer's: the writer's own
   * connection cannot hold a read transaction between its writes.
   */
  readonly batchKvReads?: boolean;
}

/**
 * Reads of one connection to a node's database (the writer's own, or a read-only one beside it):
 * the kv table and the database's size. Every read
 * sees the newest committed state: each statement runs in its own read transaction, except with
 * `batchKvReads`.
 *
 * With `batchKvReads`, the first `get` or `list` begins a read transaction and the ones after it
 * join it until the microtasks queued before that first read have run (so never past the event
 * loop's current task), or until `endBatch()`, whichever comes first. Reads a few awaits deeper
 * begin a batch of their own. On its own each statement takes and drops a lock
 * on the shared-memory WAL index, two `fcntl` calls: in a read transaction a point read cost about
 * 1.5 µs against 8 µs (BENCHMARKS.md). The snapshot is the newest committed state when the batch's
 * first read ran; the owner calls `endBatch()` whenever it learns of a newer commit (ThreadedStorage
 * does on every answer from its writer, though no batch outlives the task it began in), so a read
 * never sees less than what its caller knows was committed. The database's size ends the batch
 * and reads the newest state. While a batch is open, a checkpoint that must wait for
 * every reader (TRUNCATE, on the writer) waits for it: for the rest of the loop's task at most.
 */
export class SqliteReads {
  /** Rows of the kv table read out of SQLite by `list` since open (each one copied into memory). */
  kvRowsRead = 0;
  private readonly selectValue: Statement<CheckedRow, [string]>;
  private readonly selectValueBytes: Statement<{ bytes: number }, [string]>;
  private readonly selectApplied: Statement<{ applied_index: number }, []>;
  private readonly selectRange: Statement<CheckedRow, [string, string, number]>;
  private readonly selectBoundedRange: Statement<CheckedRow, [string, string, string, number]>;
  private readonly pageCount: Statement<{ page_count: number }, []>;
  private readonly freelistCount: Statement<{ freelist_count: number }, []>;
  /** The database's page size in bytes. */
  readonly pageBytes: number;
  /** With `batchKvReads` only: the statements that begin and end a batch. */
  private readonly beginBatch: Statement<unknown, []> | undefined;
  private readonly commitBatch: Statement<unknown, []> | undefined;
  /** A batch's read transaction is open (see `batchKvReads`). */
  private inBatch = false;
  /** Numbers batches, so that a batch's end queued for its task ends no later batch. */
  private batchNumber = 0;

  /**
   * @param db the connection to read on
   * @param file the database file, named in every error
   */
  constructor(
    private readonly db: Database,
    readonly file: string,
    options: SqliteReadsOptions = {},
  ) {
    this.selectValue = db.prepare("SELECT key, value, version, crc FROM kv WHERE key = ?");
    // length() of a BLOB does not read the BLOB (1 µs against 229 µs for a 1 MiB value, measured).
    this.selectValueBytes = db.prepare("SELECT length(value) AS bytes FROM kv WHERE key = ?");
    this.selectApplied = db.prepare("SELECT applied_index FROM meta WHERE id = 1");
    // Keys are TEXT compared with BINARY collation: UTF-8 byte order, the order `list` promises.
    this.selectRange = db.prepare("SELECT key, value, version, crc FROM kv WHERE key > ? AND key >= ? ORDER BY key LIMIT ?");
    this.selectBoundedRange = db.prepare("SELECT key, value, version, crc FROM kv WHERE key > ? AND key >= ? AND key < ? ORDER BY key LIMIT ?");
    this.pageCount = db.prepare("PRAGMA page_count");
    this.freelistCount = db.prepare("PRAGMA freelist_count");
    this.pageBytes = db.query<{ page_size: number }, []>("PRAGMA page_size").get()?.page_size ?? 4096;
    const batched = options.batchKvReads ?? false;
    this.beginBatch = batched ? db.prepare("BEGIN") : undefined;
    this.commitBatch = batched ? db.prepare("COMMIT") : undefined;
  }

  /** Ends the batch's read transaction, if one is open: the next read sees the newest committed state. */
  endBatch(): void {
    if (!this.inBatch) return;
    this.inBatch = false;
    // A read that failed (an I/O error) may have rolled the transaction back already. Ending it
    // must not throw: from the microtask below a throw would end the process.
    if (!this.db.inTransaction) return;
    try {
      this.commitBatch?.run();
    } catch {
      try {
        this.db.run("ROLLBACK");
      } catch {
        // Nothing left to end; the next read reports whatever is wrong with the database.
      }
    }
  }

  /** With `batchKvReads`: joins the open batch, or begins one that ends with the current task. */
  private joinBatch(): void {
    if (this.beginBatch === undefined || this.inBatch) return;
    this.beginBatch.run();
    this.inBatch = true;
    const batch = ++this.batchNumber;
    queueMicrotask(() => {
      if (batch === this.batchNumber) this.endBatch();
    });
  }

  /** The value of `key` and its version (a fresh copy each call). */
  get(key: string): StoredValue | undefined {
    this.joinBatch();
    const row = this.selectValue.get(key);
    if (row === null) return undefined;
    checkedRow(this.file, row);
    return { value: row.value, version: row.version };
  }

  /** See `KvStorage.stateVersion`: the applied index the kv table is at, as this read sees it (in the batch, with `batchKvReads`). */
  stateVersion(): number {
    this.joinBatch();
    return this.selectApplied.get()?.applied_index ?? 0;
  }

  /** See `KvStorage.valueBytes`. */
  valueBytes(key: string): number | undefined {
    this.joinBatch();
    return this.selectValueBytes.get(key)?.bytes ?? undefined;
  }

  /** See `KvStorage.list`: an index range scan from the prefix, stopping at the first key past it (or at `bytesMax`). */
  list(prefix: string, after: string | undefined, limit: number, bytesMax = Number.POSITIVE_INFINITY): ListedValue[] {
    this.joinBatch();
    const items: ListedValue[] = [];
    let bytes = 0;
    // Scan in pages: rows past the prefix end the scan, so a page is rarely wasted.
    let from = after ?? "";
    // Bounded above too: without it each page read up to 1,000 rows past the prefix (values and
    // all) before the first one stopped the scan, as a new leader's lease scan did at every election.
    const end = prefixUpperBound(prefix);
    for (;;) {
      const pageRows = Math.min(limit - items.length, 1_000) + 1;
      // Stepped a row at a time: leaving the loop stops the query, so a page ended by its bytes
      // reads no row past it (fetched whole, a page of 100 rows of 1 MiB values read 100 MiB to
      // answer 4).
      const rows = end === undefined ? this.selectRange.iterate(from, prefix, pageRows) : this.selectBoundedRange.iterate(from, prefix, end, pageRows);
      let stepped = 0;
      for (const row of rows) {
        stepped++;
        this.kvRowsRead++;
        if (!row.key.startsWith(prefix) || items.length >= limit) return items;
        from = row.key;
        // The state machine's own rows: listed only when asked for by their prefix (the node's lease scans).
        if (isReservedKey(row.key) && !isReservedKey(prefix)) continue;
        checkedRow(this.file, row);
        const item = { key: row.key, value: row.value, version: row.version };
        items.push(item);
        // As withinBytes stops (src/lib/page-bytes.ts), without reading the rows past the bound.
        bytes += itemBytes(item);
        if (bytes >= bytesMax) return items;
      }
      if (stepped === 0) return items;
    }
  }

  /**
   * See `KvStorage.dataBytes`: the database's pages in use, (page_count - freelist_count) ×
   * page_size, as the newest transaction left them (the WAL included, checkpointed or not). Pages
   * freed by deletes and compaction are reused before the file grows, so this is what new data
   * would add to; the WAL file itself is not counted (bounded by journal_size_limit after a checkpoint).
   */
  dataBytes(): number {
    this.endBatch();
    const pages = this.pageCount.get()?.page_count ?? 0;
    const free = this.freelistCount.get()?.freelist_count ?? 0;
    return Math.max(0, pages - free) * this.pageBytes;
  }

  /** Finalizes the statements (the caller closes the connection). */
  finalize(): void {
    this.endBatch();
    for (const statement of [this.selectValue, this.selectValueBytes, this.selectRange, this.selectBoundedRange, this.pageCount, this.freelistCount]) {
      statement.finalize();
    }
    this.beginBatch?.finalize();
    this.commitBatch?.finalize();
  }
}

/**
 * Opens a read-only connection to `file` and a read transaction on it: the applied index,
 * configuration and kv rows the image reads are one committed state, whatever is written
 * meanwhile; so is the term at the applied index, which meta records beside it. `onClose` runs
 * when the image is closed.
 */
export function openImageReader(file: string, lockWaitMs: number, onClose: (image: KvImageReader) => void): SqliteImageReader {
  let reader: Database | undefined;
  try {
    reader = new Database(file, { readonly: true, strict: true });
    reader.run(`PRAGMA busy_timeout = ${lockWaitMs}`);
    reader.run("BEGIN");
    const meta = loadMeta(file, reader);
    const applied = checkStoredIndex(file, meta.applied_index, "applied index");
    const term = checkStoredIndex(file, meta.applied_term, "applied term");
    if ((applied === 0) !== (term === 0)) throw corruptError(file, `applied index ${applied} of term ${term}`);
    const learners = parseIds(file, meta.learners, "learners");
    const metadata: SnapshotMetadata = {
      index: applied,
      term,
      voters: parseVoters(file, meta.voters),
      ...(learners.length > 0 ? { learners } : {}),
    };
    return new SqliteImageReader(file, reader, metadata, loadAddresses(reader), onClose);
  } catch (error: unknown) {
    reader?.close(true);
    throw error;
  }
}

/**
 * Rows one page of an image holds at most, whatever its bytes allow. Reading a row checks its
 * checksum and copies it: a 1 MiB page of small rows was 30,000 rows, 18-39 ms to read on an idle
 * machine, and read with the next one ahead and encoded on the leader's loop it held the loop past
 * the election timeout (a black-box review: 2 of 5 joins of a cluster of 79,000 small keys lost the
 * leadership as the image went out).
 */
export const imageRowsPerPageMax = 4_096;

/**
 * An image read on its own read-only connection inside one read transaction (see `openImageReader`),
 * in key order, by one scan that steps a row at a time: a chunk reads the rows it returns and at
 * most one more, kept for the next. (It fetched 256 rows a query and kept what fitted: with 1 MiB
 * values each 1 MiB chunk read 256 MiB on the loop's thread, which lost the leadership for every
 * leader that began sending the image, found in a black-box review.)
 */
export class SqliteImageReader implements KvImageReader {
  private readonly scan: Statement<CheckedRow, []>;
  private readonly rows: IterableIterator<CheckedRow>;
  /** A row read past the last chunk's bound: the next chunk's first. */
  private pending: ImageRow | undefined;
  private done = false;
  private closed = false;
  /** Rows stepped out of SQLite since open (each one copied into memory). */
  rowsRead = 0;

  constructor(
    private readonly file: string,
    private readonly reader: Database,
    readonly metadata: SnapshotMetadata,
    readonly addresses: readonly MemberAddress[],
    private readonly onClose: (image: KvImageReader) => void,
  ) {
    this.scan = reader.prepare("SELECT key, value, version, crc FROM kv ORDER BY key");
    this.rows = this.scan.iterate();
  }

  next(bytesMax: number): ImageRow[] {
    assert(!this.closed, "image read after close");
    assert(Number.isSafeInteger(bytesMax) && bytesMax >= 1, `image page of ${bytesMax} bytes`);
    const rows: ImageRow[] = [];
    let bytes = 0;
    while (bytes < bytesMax && rows.length < imageRowsPerPageMax) {
      const row = this.pending ?? this.step();
      this.pending = undefined;
      if (row === undefined) break;
      const rowBytes = imageRowBytes(row);
      if (rows.length > 0 && bytes + rowBytes > bytesMax) {
        this.pending = row;
        break;
      }
      rows.push(row);
      bytes += rowBytes;
    }
    return rows;
  }

  /** The scan's next row, or undefined at its end. */
  private step(): ImageRow | undefined {
    if (this.done) return undefined;
    const next = this.rows.next();
    if (next.done === true) {
      this.done = true;
      return undefined;
    }
    this.rowsRead++;
    const row = checkedRow(this.file, next.value);
    return { key: row.key, value: row.value, version: row.version };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.rows.return?.();
    this.scan.finalize();
    this.reader.close(true); // ends the read transaction: the WAL may be checkpointed past it again
    this.onClose(this);
  }
}
