import type { NodeId } from "../raft/types.ts";
import { StorageError } from "./kv-storage.ts";

/** More voters than this is a configuration mistake: Raft clusters hold 3, 5, sometimes 7. */
export const votersCountMax = 64;

/**
 * Validates a voter list from configuration and returns it sorted, so that two configurations
 * naming the same servers in another order compare equal. Throws `StorageError` `voters_invalid`.
 */
export function normalizeVoters(voters: readonly NodeId[], file: string): readonly NodeId[] {
  if (voters.length === 0 || voters.length > votersCountMax) {
    throw new StorageError("voters_invalid", `expected 1 to ${votersCountMax} voters, got ${voters.length}`, file);
  }
  const sorted = [...voters].sort((a, b) => a - b);
  for (let position = 0; position < sorted.length; position++) {
    const id = sorted[position] as number;
    if (!Number.isSafeInteger(id) || id < 1) {
      throw new StorageError("voters_invalid", `voter id ${id} is not a positive integer`, file);
    }
    if (position > 0 && sorted[position - 1] === id) {
      throw new StorageError("voters_invalid", `voter id ${id} appears twice`, file);
    }
  }
  return sorted;
}

/** True when two normalized voter lists name the same servers. */
export function votersEqual(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  return a.length === b.length && a.every((id, position) => id === b[position]);
}

/** Throws `voters_mismatch` when `configured` differs from the voters recorded at bootstrap. */
export function checkVotersMatch(recorded: readonly NodeId[], configured: readonly NodeId[], file: string): void {
  if (!votersEqual(recorded, configured)) {
    throw new StorageError(
      "voters_mismatch",
      `configured voters [${configured.join(",")}] differ from those recorded at bootstrap [${recorded.join(",")}]`,
      file,
    );
  }
}
