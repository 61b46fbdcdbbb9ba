import { Database, type Statement } from "bun:sqlite";
import { rmSync } from "node:fs";
import { rowChecksum } from "./entry-checksum.ts";
import { type ImageRow, StorageError } from "./kv-storage.ts";
import { planStage, type StagingState } from "./snapshot-checks.ts";

/**
 * The image being received and its staging file, as both sqlite storages keep them (SqliteStorage
 * on its one thread, ThreadedStorage on the node's thread while its writer thread installs).
 */
export class ImageStaging {
  private stateValue: StagingState = { imageId: undefined, bytes: 0 };
  /** The staging file, `<db>-staging`. */
  readonly file: StagingFile;

  /**
   * @param path the staging file
   * @param bytesMax an image staged beyond this many bytes is refused
   * @param dbFile the node's database, named in errors
   */
  constructor(
    path: string,
    private readonly bytesMax: number,
    private readonly dbFile: string,
  ) {
    this.file = new StagingFile(path);
  }

  /** The image staged (its id, undefined when none) and its bytes so far. */
  state(): StagingState {
    return this.stateValue;
  }

  /** See `KvStorage.stageImageChunk`: one transaction per chunk, no fsync (staging is not durable). */
  stage(imageId: string, rows: readonly ImageRow[], first: boolean): void {
    const ownsStaging = first || imageId === this.stateValue.imageId;
    try {
      const next = planStage(this.stateValue, imageId, rows, first, this.bytesMax, this.dbFile);
      if (first) this.file.begin();
      const repeated = this.file.append(rows);
      if (repeated !== undefined) throw new StorageError("image_refused", `image carries key ${JSON.stringify(repeated.slice(0, 64))} twice`, this.dbFile);
      this.stateValue = next;
    } catch (error: unknown) {
      // A chunk of the staged image that failed, whatever the error, ends it (the node then takes
      // no later chunk of it); a stray chunk of another image leaves it be. A first chunk that
      // failed ends what was staged before it: `begin` may have emptied that file, and the state
      // still naming it let an install of that image install nothing (found in review). A later
      // chunk that met a full disk left its image's rows on the disk it filled, named by nothing
      // that would drop them: a follower frozen on that disk took no image again until a restart
      // (found in a code review).
      if (ownsStaging) this.discard();
      throw error;
    }
  }

  /** Forgets the image staged (its file was installed and deleted, or moved away to be installed). */
  forget(): void {
    this.stateValue = { imageId: undefined, bytes: 0 };
  }

  /** Drops the staged image and deletes its file; the image is forgotten even when its file cannot be deleted (a full disk). */
  discard(): void {
    try {
      this.file.discard();
    } finally {
      this.forget();
    }
  }
}

/**
 * A received image being staged, in a database file of its own beside the node's database
 * (`<db>-staging`), one chunk per transaction. `SqliteStorage.installSnapshot` attaches the file
 * to the node's connection, copies the rows into `kv` in its install transaction, and deletes it.
 *
 * Why a file of its own: staged in the node's database, the image's pages were written twice (into
 * the staging table, then into `kv`), and those of the staging table, once freed, stayed in the
 * file as free pages for good: a node that joined with an image was 1.9x the size of the others.
 * Deleting this file gives the space back to the file system at once.
 *
 * Staging is not durable (a transfer does not outlive its process), so the file is written with no
 * fsync and its rollback journal kept in memory: a chunk that fails is still rolled back whole, and
 * a crash leaves a file that the next open deletes (`removeStaleStaging`).
 */
export class StagingFile {
  private db: Database | undefined;
  private insert: Statement<unknown, [string, Uint8Array, number, number]> | undefined;
  private appendTransaction: ((rows: readonly ImageRow[]) => string | undefined) | undefined;

  /**
   * @param path the staging file, `<db>-staging`
   */
  constructor(readonly path: string) {}

  /** Starts a new image: an empty file, whatever was staged before. */
  begin(): void {
    this.discard();
    this.connect();
  }

  /**
   * Appends rows in one transaction. Returns the first key already staged (nothing of this call is
   * kept then), or undefined when all were new.
   */
  append(rows: readonly ImageRow[]): string | undefined {
    if (this.appendTransaction === undefined) this.connect();
    return (this.appendTransaction as (rows: readonly ImageRow[]) => string | undefined)(rows);
  }

  /** Closes the connection (the file stays): the node's connection then attaches it to install it. */
  release(): void {
    this.insert?.finalize();
    this.insert = undefined;
    this.appendTransaction = undefined;
    this.db?.close(true);
    this.db = undefined;
  }

  /** Closes the connection and deletes the file. Idempotent. */
  discard(): void {
    this.release();
    removeStaleStaging(this.path);
  }

  private connect(): Database {
    if (this.db !== undefined) return this.db;
    const db = new Database(this.path, { create: true, strict: true });
    try {
      db.run("PRAGMA journal_mode = MEMORY");
      db.run("PRAGMA synchronous = OFF");
      db.run("PRAGMA locking_mode = EXCLUSIVE");
      db.run("PRAGMA cache_size = -16384");
      // crc: rowChecksum, copied into the kv table at install (a staging file never outlives its process).
      db.run("CREATE TABLE IF NOT EXISTS kv_staging (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL, crc INTEGER NOT NULL) STRICT");
      const insert = db.prepare<unknown, [string, Uint8Array, number, number]>(
        "INSERT INTO kv_staging (key, value, version, crc) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
      );
      this.insert = insert;
      const transaction = db.transaction((rows: readonly ImageRow[]) => {
        for (const row of rows) {
          if (insert.run(row.key, row.value, row.version, rowChecksum(row.key, row.value, row.version)).changes === 0) throw new RepeatedKey(row.key);
        }
      });
      this.appendTransaction = (rows) => {
        try {
          transaction(rows);
          return undefined;
        } catch (error) {
          if (error instanceof RepeatedKey) return error.key;
          throw error;
        }
      };
    } catch (error) {
      this.insert = undefined;
      db.close(true);
      throw error;
    }
    this.db = db;
    return db;
  }
}

/** Deletes a staging file and any journal beside it (what a process that died left). */
export function removeStaleStaging(path: string): void {
  rmSync(path, { force: true });
  rmSync(`${path}-journal`, { force: true });
}

/** Thrown inside the append transaction to roll it back. */
class RepeatedKey extends Error {
  constructor(readonly key: string) {
    super(`key staged twice`);
  }
}
