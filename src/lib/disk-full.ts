/**
 * SQLite's "database or disk is full" (SQLITE_FULL) or the OS's ENOSPC: an operating error a node
 * waits out (src/node/kv-node.ts while running, src/cli/serve.ts while starting), never a crash.
 */
export function isDiskFull(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return code === "SQLITE_FULL" || code === "ENOSPC" || /database or disk is full|ENOSPC|no space left/i.test(message);
}
