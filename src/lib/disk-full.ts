/**
 * SQLite's "database or disk is full" (SQLITE_FULL), the OS's ENOSPC, or SQLite failing to grow a
 * WAL's shared-memory file (SQLITE_IOERR_SHMSIZE, which SQLite's documentation gives as a sign the
 * volume is out of space; "disk I/O error" is all its message says: found in a black-box review,
 * where a node opening a data dir with 20 KB free stopped on it rather than waiting): an operating
 * error a node waits out (src/node/kv-node.ts while running, src/cli/serve.ts while starting),
 * never a crash.
 */
export function isDiskFull(error: unknown): boolean {
  if (isNotDiskFull(error)) return false;
  const code = (error as { code?: unknown } | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return code === "SQLITE_FULL" || code === "ENOSPC" || code === "SQLITE_IOERR_SHMSIZE" || /database or disk is full|ENOSPC|no space left/i.test(message);
}

/**
 * An error that is never a full disk to wait out, whatever its message or cause says: a failed
 * fsync (ENOSPC included) may have dropped the pages it covered, so the storage that met it is
 * unusable, and the node must stop rather than retry (found in review: an fsync's ENOSPC parked
 * the write for a retry that could never succeed, and the node hung answering 507).
 */
export class NotDiskFullError extends Error {
  override name = "NotDiskFullError";
}

/**
 * Whether `error`, or an error it was made from (its `cause`s), is a `NotDiskFullError`, by class or
 * by name: one that crossed from the storage thread is a plain Error named so (found in review: a
 * failed fsync at start, so copied, read as a full disk again and was waited out).
 */
function isNotDiskFull(error: unknown): boolean {
  let current: unknown = error;
  for (let depth = 0; depth < 8 && current instanceof Error; depth++) {
    if (current instanceof NotDiskFullError || current.name === "NotDiskFullError") return true;
    current = current.cause;
  }
  return false;
}
