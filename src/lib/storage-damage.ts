/**
 * Whether `error` reports damage on disk: the storage's StorageError with code `corrupt`
 * (src/storage/kv-storage.ts; told by name, so layers above the storage need not import it), or
 * SQLite's own SQLITE_CORRUPT or SQLITE_NOTADB. The HTTP layer answers such a read 500 `corrupt`;
 * the node stops on one it meets itself.
 */
export function isStorageCorruption(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  return (error.name === "StorageError" && code === "corrupt") || code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB";
}
