/**
 * `kv snapshot restore`: makes the data dir of one node of a **new** cluster from a backup (the
 * format is in src/kv/backup-format.ts), as etcd's `snapshot restore` does. Run once per node with
 * the same file and the same voters; then `kv serve --id N --cluster ... --data-dir DIR` just runs.
 *
 * The data dir is the one `createServer` opens (src/server/create-server.ts): the sqlite storage
 * holds the image as its snapshot (log empty, applied index and commit = the image's index, term =
 * the image's term) with the new voters as its configuration (the image's own membership is left
 * behind: it names the old cluster's nodes), and `cluster-id` holds the new cluster's id, derived
 * from the file's checksum and the voters (src/lib/cluster-id.ts) unless one is given. Nodes of the
 * old cluster keep their id, so the two refuse each other's peer calls.
 *
 * Nothing is half-done: the data dir is built in a temporary directory, moved into place only once
 * the whole file was read and verified and the storage closed; on any failure the temporary
 * directory is removed. An absent data dir is built beside it and renamed into place. One that
 * exists (followed through a symlink) must be empty, a filesystem's `lost+found` aside: a volume's
 * mount point, which cannot be renamed over (found in review: EBUSY and a stack trace for the
 * deployment's own `/data`). It is built inside it, under `.restoring-*`, and its entries are moved
 * up one by one; that directory goes last, so while it is there the data dir is not whole, and
 * `kv serve` refuses it (`refuseUnfinishedRestore`).
 */
import { existsSync, mkdtempSync, readdirSync, realpathSync, renameSync, rmdirSync, rmSync, statSync } from "node:fs";
import { removeStaleTemps } from "../lib/stale-temps.ts";
import { fsyncPath, mkdirDurably } from "../lib/fsync-path.ts";
import { basename, dirname, join } from "node:path";
import { commandLevelKey, type KvRow } from "../kv/apply-plan.ts";
import { type BackupHeader, readBackup } from "../kv/backup-format.ts";
import { clusterNonceKey } from "../kv/cluster-nonce.ts";
import type { MemberAddress } from "../kv/membership.ts";
import { deriveRestoredClusterId, isClusterId, loadOrCreateClusterId } from "../lib/cluster-id.ts";
import { recordNodeId } from "../lib/node-id-file.ts";
import type { NodeId } from "../raft/types.ts";
import { openSqliteStorage, type SqliteStorage } from "../storage/sqlite-storage.ts";

/** What to restore, and as which node of which new cluster. */
export interface RestoreOptions {
  /** The backup's bytes (a file's stream). */
  readonly source: AsyncIterable<Uint8Array>;
  /** The node's data dir to make: absent, or an empty directory. */
  readonly dataDir: string;
  /** This node's id: one of `peers`. */
  readonly id: NodeId;
  /** The new cluster's voters and their peer URLs (`--cluster`), the same on every node. */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** The new cluster's id; default: derived from the backup's checksum and the voters. */
  readonly clusterId?: string;
  /** How a file or directory is fsynced (for tests); default `fsyncPath`. */
  readonly fsync?: (path: string) => void;
}

/** What was restored. */
export interface RestoreResult {
  readonly index: number;
  readonly term: number;
  readonly rowCount: number;
  readonly voters: readonly NodeId[];
  readonly clusterId: string;
  /** The backup's checksum (its trailer's SHA-256). */
  readonly sha256: string;
  readonly dataDir: string;
}

/** A restore refused for a reason other than a damaged file (that is a BackupFormatError). */
export class RestoreError extends Error {
  override name = "RestoreError";
}

/** The entry a restore into an existing data dir builds in (see the file comment). */
const RESTORING_PREFIX = ".restoring-";
/** Entries an empty filesystem holds, that a restore leaves where they are. */
const EMPTY_VOLUME_ENTRIES: ReadonlySet<string> = new Set(["lost+found"]);

/**
 * Throws when `dataDir` holds a restore that did not finish (see the file comment): `kv serve`
 * must not run on part of a data dir.
 */
export function refuseUnfinishedRestore(dataDir: string): void {
  let names: string[];
  try {
    names = readdirSync(dataDir);
  } catch {
    return;
  }
  const unfinished = names.find((name) => name.startsWith(RESTORING_PREFIX));
  if (unfinished !== undefined) {
    throw new RestoreError(
      `${dataDir} holds ${unfinished}: a kv snapshot restore into it did not finish (or is running), so the data dir is not whole. Once no restore runs, empty the directory and restore again`,
    );
  }
}

/** A filesystem error as a refusal that says what to do (found in review: a stack trace). */
function fsRefusal(error: unknown, dataDir: string): unknown {
  const code = (error as { code?: unknown } | undefined)?.code;
  if (!(error instanceof Error) || typeof code !== "string" || !/^E[A-Z]+$/.test(code)) return error;
  return new RestoreError(`cannot make the data dir ${dataDir}: ${error.message}. Check that it (or the directory it is made in) can be written`, { cause: error });
}

/** Image rows are staged in batches of about this many bytes (one sqlite transaction each). */
const STAGE_BATCH_BYTES = 4 * 1024 * 1024;
/** The staging id of the restored image (any non-empty string; only this process stages). */
const RESTORE_IMAGE_ID = "restore";

/** Restores one node's data dir; throws BackupFormatError for a damaged file, RestoreError for a refusal. */
export async function restoreSnapshot(options: RestoreOptions): Promise<RestoreResult> {
  const { dataDir, id, peers } = options;
  const fsync = options.fsync ?? fsyncPath;
  const voters = [...peers.keys()].sort((a, b) => a - b);
  if (!peers.has(id)) throw new RestoreError(`node ${id} is not one of the new cluster's voters (${voters.join(",")})`);
  if (options.clusterId !== undefined && !isClusterId(options.clusterId)) {
    throw new RestoreError(`the cluster id must be 16 lowercase hex digits, got '${options.clusterId}'`);
  }
  const exists = existsSync(dataDir);
  if (exists) {
    if (!statSync(dataDir).isDirectory()) throw new RestoreError(`${dataDir} exists and is not a directory`);
    const entries = readdirSync(dataDir).filter((name) => !EMPTY_VOLUME_ENTRIES.has(name));
    const unfinished = entries.find((name) => name.startsWith(RESTORING_PREFIX));
    if (unfinished !== undefined) {
      throw new RestoreError(`${dataDir} holds ${unfinished}: an earlier restore into it did not finish (or is running). Once no restore runs, empty the directory and restore again`);
    }
    if (entries.length > 0) {
      throw new RestoreError(`${dataDir} is not empty (it holds ${entries.slice(0, 3).join(", ")}${entries.length > 3 ? ", ..." : ""}): restore makes a new data dir; give an absent or empty one`);
    }
  }
  // Into an existing directory (a mount point, or a symlink's target): built inside it. Else beside it.
  const target = exists ? realpathSync(dataDir) : dataDir;
  const parent = exists ? target : dirname(dataDir);
  let temp: string;
  try {
    // Directories made above the data dir are made durable too (found in a review: only the data
    // dir's own entry was, and kv serve syncs nothing for a data dir that exists).
    mkdirDurably(parent, fsync);
    if (!exists) removeStaleTemps(parent, `.${basename(dataDir)}${RESTORING_PREFIX}`);
    temp = mkdtempSync(exists ? join(target, `${RESTORING_PREFIX}${process.pid}-`) : join(parent, `.${basename(dataDir)}${RESTORING_PREFIX}${process.pid}-`));
  } catch (error) {
    throw fsRefusal(error, dataDir);
  }
  let storage: SqliteStorage | undefined;
  let moving = false;
  try {
    storage = openSqliteStorage(temp, { nodeId: options.id });
    // The new cluster's founding members (see MemberAddress.addedIndex).
    const addresses: MemberAddress[] = voters.map((voter) => ({ id: voter, peerUrl: peers.get(voter) as string, addedIndex: 0 }));
    let header: BackupHeader | undefined;
    let staged = false;
    let batch: KvRow[] = [];
    let batchBytes = 0;
    const stage = () => {
      if (batch.length === 0) return;
      (storage as SqliteStorage).stageImageChunk(RESTORE_IMAGE_ID, batch, !staged);
      staged = true;
      batch = [];
      batchBytes = 0;
    };
    let result: RestoreResult | undefined;
    for await (const item of readBackup(options.source)) {
      switch (item.kind) {
        case "header":
          header = item.header;
          break;
        case "rows":
          for (const row of item.rows) {
            // A restored cluster is a new one: its first leader draws a nonce of its own (two clusters
            // restored from one backup would otherwise share the backup's: found in review).
            if (row.key === clusterNonceKey) continue;
            // Nor does it know which releases its members run: the level they applied starts again at 1.
            if (row.key === commandLevelKey) continue;
            batch.push(row);
            batchBytes += row.key.length + row.value.byteLength;
          }
          if (batchBytes >= STAGE_BATCH_BYTES) stage();
          break;
        case "end": {
          if (header === undefined) throw new Error("readBackup ended without a header");
          stage();
          const clusterId = options.clusterId ?? deriveRestoredClusterId(item.trailer.sha256, voters);
          if (header.index === 0) {
            // An image of a cluster that applied nothing: a new cluster as `kv serve` bootstraps it.
            storage.bootstrap(voters, addresses);
          } else {
            // An empty image (every key deleted) still installs: stage nothing, then install it.
            if (!staged) storage.stageImageChunk(RESTORE_IMAGE_ID, [], true);
            storage.installSnapshot({ index: header.index, term: header.term, voters }, RESTORE_IMAGE_ID, addresses);
            // Raise the term to the image's, so the terms of the log this node writes next never
            // fall below the term of the snapshot it follows. Durable when it returns.
            storage.save({ term: header.term, vote: 0, commit: header.index }, [], true);
          }
          result = { index: header.index, term: header.term, rowCount: item.trailer.rowCount, voters, clusterId, sha256: item.trailer.sha256, dataDir };
          break;
        }
      }
    }
    if (result === undefined) throw new Error("readBackup ended without its end item");
    storage.close();
    storage = undefined;
    loadOrCreateClusterId(temp, result.clusterId);
    recordNodeId(temp, options.id);
    fsync(temp);
    if (exists) {
      // Up one by one; the temporary directory, emptied, goes last (see the file comment). Should a
      // move fail, what moved stays beside it, and serve refuses the whole until it is emptied.
      moving = true;
      for (const name of readdirSync(temp)) renameSync(join(temp, name), join(target, name));
      fsync(target);
      rmdirSync(temp);
      fsync(target);
    } else {
      // rename(2) is atomic: the data dir is whole or absent.
      renameSync(temp, dataDir);
      fsync(parent);
    }
    return result;
  } catch (error) {
    storage?.close();
    if (moving) throw new RestoreError(`the restore stopped while moving the data dir into ${dataDir}, which is not whole: empty it and restore again (${error instanceof Error ? error.message : String(error)})`, { cause: error });
    rmSync(temp, { recursive: true, force: true });
    throw fsRefusal(error, dataDir);
  }
}

