/**
 * `kv defrag --data-dir DIR`: gives back to the file system the free pages inside a stopped node's
 * database (see `SqliteStorage.defragAndClose`), as `etcdutl defrag --data-dir` does for etcd's.
 * Deletes and log compactions leave pages free inside `kv.db`: SQLite reuses them as data grows
 * again, but the file never shrinks on its own. Run it on one node at a time, each stopped, then
 * started again; the others serve meanwhile.
 * Exit codes: 0 done, 1 not done (the data dir is held by a running node, is missing, damaged, of
 * another release or a link, or the copy found no space or did not check out: nothing changed; or,
 * rarely, the copy replaced the database and what follows failed: it says so), 2 a usage error.
 */
import { defineCommand } from "citty";
import { existsSync, lstatSync, statSync } from "node:fs";
import { join } from "node:path";
import { DATABASE_FILE, DefragReplacedError, type DefragResult, openSqliteStorage } from "../storage/sqlite-storage.ts";
import { ClientExit } from "./client.ts";
import { parseDataDir } from "./usage-error.ts";
import { printLine } from "./output.ts";

/** Bytes for the text line: in MB with one decimal, under a megabyte in kB (a small database read "0.0 MB -> 0.0 MB"). */
function megabytes(bytes: number): string {
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

export const defragCommand = defineCommand({
  meta: {
    name: "defrag",
    description: "Shrink a STOPPED node's database to its data (free pages given back to the file system); then start the node again",
  },
  args: {
    "data-dir": { type: "string", description: "The stopped node's data dir", valueHint: "DIR", required: true },
    json: { type: "boolean", description: "Print JSON instead of text" },
  },
  run({ args }) {
    const dir = parseDataDir(args["data-dir"]);
    const file = join(dir, DATABASE_FILE);
    if (!existsSync(file)) throw new ClientExit(1, `cannot defragment: ${file} does not exist (is ${dir} a node's data dir?)`);
    // The copy is written beside the file and renamed over it: over a link, it would replace the
    // link with a file here, and leave the database it named behind (found in a review).
    if (lstatSync(file).isSymbolicLink()) throw new ClientExit(1, `cannot defragment, nothing changed: ${file} is a symbolic link; defragment the data dir the database is in`);
    // Whatever it writes (the copy, a lock or log file it must create) would be this user's: a node
    // running as the data dir's owner could not open them (found in a review: run as root on a
    // service user's data dir).
    const owner = statSync(file).uid;
    if (process.getuid !== undefined && process.getuid() !== owner) {
      throw new ClientExit(1, `cannot defragment, nothing changed: ${file} belongs to uid ${owner}; run kv defrag as that user (sudo -u, or the service's user), so that every file it writes stays theirs`);
    }
    // Measured before the database is opened: opening it writes to its WAL (found in a black-box
    // review: a compact database reported 454,760 -> 442,368 bytes every time).
    const wal = `${file}-wal`;
    const bytesOnDisk = statSync(file).size + (existsSync(wal) ? statSync(wal).size : 0);
    const startedMs = performance.now();
    let result: DefragResult;
    try {
      // Inline checkpoints: no connection but this one holds the database while it is copied. A
      // data dir of an older release is refused, not migrated: its node may still go back to it.
      result = { ...openSqliteStorage(dir, { checkpoints: "inline", lockWaitMs: 200, refuseOlderSchema: true, integrityCheckFirst: true }).defragAndClose(), bytesBefore: bytesOnDisk };
    } catch (error) {
      if (error instanceof DefragReplacedError) throw new ClientExit(1, `defragmented only in part: ${error.message}`);
      if (!(error instanceof Error)) throw error;
      const code = (error as { code?: string }).code;
      if (error.name === "StorageError" && code === "locked") throw new ClientExit(1, `cannot defragment, nothing changed: ${dir} is in use by a running node or another kv defrag (stop the node first): ${error.message}`);
      if (/SQLITE_FULL|disk is full|ENOSPC/i.test(`${error.message} ${code}`)) {
        throw new ClientExit(1, `cannot defragment, nothing changed: no space for the compact copy beside ${file} (it needs about the size of the data): ${error.message}`);
      }
      // Anything else before the copy replaced the database (a damaged one, a read-only disk, I/O errors) left it as it was.
      throw new ClientExit(1, `cannot defragment ${file}, nothing changed: ${error.message}`);
    }
    const durationMs = Math.round(performance.now() - startedMs);
    printLine(
      args.json === true
        ? JSON.stringify({ file, ...result, durationMs })
        : `defragmented ${file}: ${megabytes(result.bytesBefore)} with its WAL -> ${megabytes(result.bytesAfter)} (${megabytes(result.freeBytesBefore)} of free pages before) in ${durationMs} ms`,
    );
  },
});
