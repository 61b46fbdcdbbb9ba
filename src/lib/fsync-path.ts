import { closeSync, fsyncSync, mkdirSync, openSync } from "node:fs";
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
 * already existed. `fsyncDirectory` is for tests.
 */
export function mkdirDurably(path: string, fsyncDirectory: (directory: string) => void = fsyncPath): void {
  const first = mkdirSync(path, { recursive: true });
  if (first === undefined) return;
  const top = resolve(first);
  for (let directory = resolve(path); ; directory = dirname(directory)) {
    fsyncDirectory(dirname(directory));
    if (directory === top) return;
  }
}
