import { closeSync, existsSync, fsyncSync, mkdirSync, openSync } from "node:fs";
import { dirname, resolve } from "node:path";

/**
 * fsyncs the file or directory at `path`. For a directory: a file created, renamed or deleted in
 * it survives a power loss only once the directory itself is fsynced.
 */
export function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Creates the directory `path` and any missing parents, and makes their entries durable: each new
 * directory's parent is fsynced, from the deepest up (mkdir alone leaves a new data dir's entry in
 * its parent to the file system's next flush, so a power loss soon after a first start could lose
 * the whole data dir, and what its node had acknowledged with it). Nothing is fsynced when `path`
 * already existed. The missing directories are found before mkdir, on the resolved path (a path
 * through `..` names directories mkdir's answer would not: found in a review, where the walk up
 * to mkdir's answer never met it). `fsyncDirectory` is for tests.
 */
export function mkdirDurably(path: string, fsyncDirectory: (directory: string) => void = fsyncPath, mode?: number): void {
  const missing: string[] = [];
  for (let directory = resolve(path); !existsSync(directory); directory = dirname(directory)) {
    missing.push(directory);
    if (dirname(directory) === directory) break;
  }
  mkdirSync(path, { recursive: true, ...(mode === undefined ? {} : { mode }) });
  for (const directory of missing) fsyncDirectory(dirname(directory));
}
