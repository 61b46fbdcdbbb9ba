/**
 * What a node's data dir takes on disk, by part: the state machine's database, its WAL, the log's
 * segments and an image being staged. `kv_storage_data_bytes` counts the data against the quota and
 * leaves the log and the WAL out; a disk fills with all of them (found in a black-box review: no
 * metric said how close the disk was, and the log's segments reach gigabytes at 256 KB writes).
 * Read by stat at each scrape: a few files and the log's segments.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { DATABASE_FILE, logDirOf } from "../storage/sqlite-storage.ts";

export interface DiskUsage {
  readonly database: number;
  readonly wal: number;
  readonly log: number;
  readonly staging: number;
}

/** Bytes of each part of the data dir at `dataDir` now; a part that is not there is 0. */
export function diskUsage(dataDir: string): DiskUsage {
  const database = join(dataDir, DATABASE_FILE);
  const logDir = logDirOf(database);
  let log = 0;
  try {
    for (const name of readdirSync(logDir)) if (name.endsWith(".log")) log += sizeOf(join(logDir, name));
  } catch {
    // no log directory yet
  }
  return { database: sizeOf(database), wal: sizeOf(`${database}-wal`), log, staging: sizeOf(`${database}-staging`) };
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}
