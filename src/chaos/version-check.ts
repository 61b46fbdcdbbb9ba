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
 * - **one version, one change**: a version is one entry, which changed one key (no transactions
 *   here): a put of one value, or a delete. Two gets naming one version read one value of one key,
 *   and a get never names the version of another key's write or of a delete;
 * - **real-time order**: an acknowledged write called after an acknowledged write, or after a get of a
 *   present key, returned names a larger version than either. (The get read the state at a commit
 *   index at or past the version it names; the write commits after that read.) And a get of a
 *   present key called after an operation of that key returned that named a version (a write, or a
 *   get of it present) names that version or a later one: the key's state it reads is at least as
 *   new. Without this rule a stale read, or a lost write, passed whenever the value searched for had
 *   been written by a write that overlapped the newer one (found in review: the search reads values
 *   only, and may place two concurrent writes against their versions' order).
 * - **compare-and-set**: a write accepted with `ifVersion` x at version y found the key at version x:
 *   x is below y, no write of that key known (answered, or read by a get) lies between them, and x
 *   is not another key's version nor a delete's. With x = 0 (absent), the key's last known write
 *   before y is not a put, unless a delete of it had no answer (it may be the one that came between).
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

  const changeOf = (op: Versioned): string | undefined => {
    if (op.kind === "delete") return `${op.key}\u0000delete`;
    const value = op.kind === "get" ? op.output : op.value;
    return value === null || value === undefined ? undefined : `${op.key}\u0000put\u0000${value}`;
  };
  const changeAt = new Map<number, { op: Versioned; change: string }>();
  for (const op of versioned) {
    const change = changeOf(op);
    if (change === undefined) continue;
    const other = changeAt.get(op.version);
    if (other === undefined) changeAt.set(op.version, { op, change });
    else if (other.change !== change) return violation(op.key, `version ${op.version} names two changes: ${describeChange(other.op)} and ${describeChange(op)}`, [other.op, op]);
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
  return findStaleVersionRead(versioned, violation) ?? findCompareAndSetViolation(history, versioned, violation);
}

function describeChange(op: Versioned): string {
  if (op.kind === "delete") return `a delete of ${op.key}`;
  return `${op.kind === "get" ? "a get of" : "a put to"} ${op.key} of ${JSON.stringify(op.kind === "get" ? op.output : op.value)}`;
}

/** The real-time rule for gets of a present key (file comment): per key, against what returned before each was called. */
function findStaleVersionRead(versioned: readonly Versioned[], violation: (key: string, reason: string, ops: Operation[]) => VersionViolation): VersionViolation | undefined {
  const present = (op: Versioned) => op.kind !== "get" || (op.output !== null && op.output !== undefined);
  const byKey = new Map<string, Versioned[]>();
  for (const op of versioned) {
    if (!present(op)) continue;
    const ops = byKey.get(op.key);
    if (ops === undefined) byKey.set(op.key, [op]);
    else ops.push(op);
  }
  for (const [key, ops] of byKey) {
    const returned = [...ops].sort((a, b) => (a.returnMs as number) - (b.returnMs as number));
    const gets = ops.filter((op) => op.kind === "get").sort((a, b) => a.callMs - b.callMs);
    let next = 0;
    let highest: Versioned | undefined;
    for (const get of gets) {
      while (next < returned.length && (returned[next]!.returnMs as number) < get.callMs) {
        const op = returned[next]!;
        if (highest === undefined || op.version > highest.version) highest = op;
        next++;
      }
      if (highest !== undefined && get.version < highest.version) {
        const what = highest.kind === "get" ? "a get of it that returned before it was called read version" : `a ${highest.kind} of it that returned before it was called was acknowledged at`;
        return violation(key, `a get read ${JSON.stringify(get.output)} at version ${get.version}, but ${what} ${highest.version}: a stale read`, [highest, get]);
      }
    }
  }
  return undefined;
}

type Versioned = Operation & { version: number };

/** The compare-and-set rule of the file comment, over the ok operations that named a version. */
function findCompareAndSetViolation(
  history: readonly Operation[],
  versioned: readonly Versioned[],
  violation: (key: string, reason: string, ops: Operation[]) => VersionViolation,
): VersionViolation | undefined {
  const compareAndSets = versioned.filter((op) => op.kind !== "get" && op.ifVersion !== undefined);
  if (compareAndSets.length === 0) return undefined;
  // Keys with a delete that may have applied at a version no answer named.
  const deletesOfUnknownVersion = new Set<string>();
  for (const op of history) {
    if (op.kind === "delete" && (op.outcome === "unknown" || (op.outcome === "ok" && op.version === undefined))) deletesOfUnknownVersion.add(op.key);
  }
  // Every write each version is known to be: by its answer, or by a get that read what it wrote.
  const writeOf = new Map<number, Versioned>();
  const writesByKey = new Map<string, Versioned[]>();
  for (const op of versioned) {
    if (op.kind === "get" && (op.output === null || op.output === undefined)) continue;
    if (writeOf.has(op.version)) continue; // the first rules made every naming of one version agree
    writeOf.set(op.version, op);
    const writes = writesByKey.get(op.key);
    if (writes === undefined) writesByKey.set(op.key, [op]);
    else writes.push(op);
  }
  for (const writes of writesByKey.values()) writes.sort((a, b) => a.version - b.version);
  const lastBefore = (key: string, version: number): Versioned | undefined => {
    let last: Versioned | undefined;
    for (const write of writesByKey.get(key) ?? []) {
      if (write.version >= version) break;
      last = write;
    }
    return last;
  };

  for (const op of compareAndSets) {
    const expected = op.ifVersion as number;
    const what = `a ${op.kind} with ifVersion ${expected} was applied at version ${op.version}`;
    if (expected >= op.version) return violation(op.key, `${what}: a version it could not yet have seen`, [op]);
    const before = lastBefore(op.key, op.version);
    if (expected > 0) {
      const named = writeOf.get(expected);
      if (named !== undefined && named.key !== op.key) return violation(op.key, `${what}, but version ${expected} is a write of ${named.key}`, [named, op]);
      if (named !== undefined && named.kind === "delete") return violation(op.key, `${what}, but version ${expected} deleted the key`, [named, op]);
      if (before !== undefined && before.version > expected) {
        return violation(op.key, `${what}, but the key was written at version ${before.version} in between`, [before, op]);
      }
    } else if (before !== undefined && before.kind !== "delete" && !deletesOfUnknownVersion.has(op.key)) {
      return violation(op.key, `${what}, but the key's last write before it, at version ${before.version}, put a value there`, [before, op]);
    }
  }
  return undefined;
}
