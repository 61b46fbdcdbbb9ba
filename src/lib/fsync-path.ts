import { closeSync, fsyncSync, openSync } from "node:fs";

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
