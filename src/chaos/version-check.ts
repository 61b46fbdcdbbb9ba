/**
 * What the versions in the answers must satisfy, checked besides linearizability of the values
 * (src/chaos/linearizability.ts, which reads values only). A version is the Raft index of the write
 * that made a key's state: every put and delete is an entry of its own, the log's indexes grow in
 * the order writes commit, and a linearizable read sees every write that committed before it began.
 * So, over any history (one key's or many keys'):
 *
 * - **distinct**: two acknowledged writes never name the same version;
 * - **read matches write**: a get that read a value names the version its put was acknowledged with,
 *   and two gets of one value name the same version (the put may have had no answer);
 * - **real-time order**: an acknowledged write called after an acknowledged write, or after a get of a
 *   present key, returned names a larger version than either. (The get read the state at a commit
 *   index at or past the version it names; the write commits after that read.)
 *
 * Times are compared strictly, as the history records them: a history whose intervals contain the
 * real ones (calls floored, returns ceiled) never fails these checks falsely.
 */
import type { Operation } from "./history.ts";

/** A broken rule, as the linearizability checker reports a violation. */
export interface VersionViolation {
  readonly ok: false;
  readonly key: string;
  readonly reason: string;
  /** The operations that cannot all be right, by call time. */
  readonly evidence: Operation[];
}

/** The first broken rule of the file comment in `history`, or undefined when the versions agree. */
export function findVersionViolation(history: readonly Operation[]): VersionViolation | undefined {
  const versioned = history.filter((op): op is Operation & { version: number } => op.outcome === "ok" && op.version !== undefined);
  const violation = (key: string, reason: string, ops: Operation[]): VersionViolation => ({
    ok: false,
    key,
    reason,
    evidence: [...ops].sort((a, b) => a.callMs - b.callMs || a.id - b.id),
  });

  const writeAt = new Map<number, Operation>();
  for (const op of versioned) {
    if (op.kind === "get") continue;
    const other = writeAt.get(op.version);
    if (other !== undefined) return violation(op.key, `two acknowledged writes name version ${op.version}`, [other, op]);
    writeAt.set(op.version, op);
  }

  const writtenValue = (key: string, value: string) => `${key}\u0000${value}`;
  const putOf = new Map<string, Operation & { version: number }>();
  for (const op of versioned) if (op.kind === "put" && op.value !== undefined) putOf.set(writtenValue(op.key, op.value), op);
  const firstReadOf = new Map<string, Operation & { version: number }>();
  for (const op of versioned) {
    if (op.kind !== "get" || op.output === null || op.output === undefined) continue;
    const written = writtenValue(op.key, op.output);
    const put = putOf.get(written);
    if (put !== undefined && put.version !== op.version) {
      return violation(op.key, `a get read ${JSON.stringify(op.output)} at version ${op.version}, but its put was acknowledged at version ${put.version}`, [put, op]);
    }
    const earlier = firstReadOf.get(written);
    if (earlier !== undefined && earlier.version !== op.version) {
      return violation(op.key, `two gets read ${JSON.stringify(op.output)}, one at version ${earlier.version} and one at ${op.version}`, [earlier, op]);
    }
    firstReadOf.set(written, op);
  }

  // Real-time order: sweep the writes by call time, against everything that returned before.
  const returned = versioned.filter((op) => op.kind !== "get" || (op.output !== null && op.output !== undefined)).sort((a, b) => (a.returnMs as number) - (b.returnMs as number));
  const writes = versioned.filter((op) => op.kind !== "get").sort((a, b) => a.callMs - b.callMs);
  let next = 0;
  let highest: (Operation & { version: number }) | undefined;
  for (const write of writes) {
    while (next < returned.length && (returned[next]!.returnMs as number) < write.callMs) {
      const op = returned[next]!;
      if (highest === undefined || op.version > highest.version) highest = op;
      next++;
    }
    if (highest !== undefined && write.version <= highest.version) {
      const what = highest.kind === "get" ? "a get that returned before it was called read version" : "a write that returned before it was called was acknowledged at";
      return violation(write.key, `a ${write.kind} was acknowledged at version ${write.version}, but ${what} ${highest.version}`, [highest, write]);
    }
  }
  return undefined;
}
