// What a call throws, for tests that assert on the error itself rather than only that one came.
import { StorageError } from "../../src/storage/kv-storage.ts";

/** What `run` throws; undefined when it returns. */
export function thrownBy(run: () => unknown): unknown {
  try {
    run();
  } catch (error: unknown) {
    return error;
  }
  return undefined;
}

/** What the promise `run` returns rejects with; undefined when it resolves. */
export async function rejectionOf(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run();
  } catch (error: unknown) {
    return error;
  }
  return undefined;
}

/** The `StorageError` `run` throws; throws itself when `run` throws anything else or nothing. */
export function storageError(run: () => unknown): StorageError {
  const error = thrownBy(run);
  if (error instanceof StorageError) return error;
  if (error === undefined) throw new Error("expected a StorageError, nothing was thrown");
  throw error;
}
