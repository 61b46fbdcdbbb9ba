/**
 * The checker of `kv chaos lock` (src/chaos/lock.ts). Lock clients take a lock, then update one
 * protected counter key with a compare-and-set (`ifVersion`), carrying their fencing token in the
 * value and refusing to write over a larger one. Pausing a holder past its lease's TTL lets a second
 * client take the lock while the first still believes it holds it; that is expected, and this
 * checker counts it honestly. What must hold anyway is that the resource stayed safe:
 * - the committed updates of the counter carry strictly increasing fences;
 * - each committed update adds one to the count before it, so the counter equals the number of
 *   updates accepted;
 * - every acknowledged update is among the committed ones, and every committed one was sent by a
 *   client (acknowledged or with an unknown outcome);
 * - no two tenures share a fence;
 * - mutual exclusion, as far as a client can know it: no client takes the lock while an earlier
 *   holder's lease is known alive and that holder has not begun to release it. A holder knows its
 *   lease lives until the send time of its last keepalive answered plus the TTL (`LockHandle.aliveUntilMs`):
 *   the leader restarted the countdown after that send. So a holder paused past that time may be
 *   overtaken (an overlap, counted but not a failure), and one whose lease was still alive may not.
 */

/** The value every update writes to the counter key (JSON). */
export interface CounterValue {
  readonly count: number;
  readonly fence: number;
  /** The client that wrote it (0: the runner's initial value). */
  readonly client: number;
  /** That client's update number, so that no two updates write the same value. */
  readonly n: number;
}

/** Parses a counter value; undefined when it is not one. */
export function parseCounterValue(text: string): CounterValue | undefined {
  try {
    const value = JSON.parse(text) as Partial<CounterValue>;
    const ints = [value.count, value.fence, value.client, value.n];
    if (!ints.every((v) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0)) return undefined;
    return value as CounterValue;
  } catch {
    return undefined;
  }
}

/** One time a client held the lock, as it believed: from acquiring it to releasing it or noticing its loss. */
export interface LockTenure {
  readonly client: number;
  readonly fence: number;
  readonly acquiredMs: number;
  readonly endMs: number;
  /** How the tenure ended: released, the client noticed the lease was gone, or the run ended. */
  readonly end: "released" | "lost" | "run_end";
  /** When it began to release the lock (known only for a tenure it released). */
  readonly releaseStartMs?: number;
  /**
   * Until when its lease was known alive, as it began to release or noticed the lease gone (see the
   * file comment); unknown for a tenure the run's end cut short.
   */
  readonly aliveUntilMs?: number;
}

/**
 * How far before an earlier holder's `aliveUntilMs` a later one may report taking the lock without
 * a `mutual_exclusion` problem: the clients' wall clocks are one machine's, but each converts its
 * own monotonic times, and the leader counts the TTL on its own clock.
 */
export const EXCLUSION_TOLERANCE_MS = 50;

/**
 * One update a client tried. `fenced`: it read a larger fence than its own and wrote nothing;
 * `conflict`: the compare-and-set was refused (another update came between its read and write);
 * `refused`: another definite refusal; `unknown`: no definite answer (it may have been applied).
 */
export interface CounterWrite {
  readonly client: number;
  readonly fence: number;
  /** The value it wrote (absent for `fenced`). */
  readonly value?: string;
  readonly outcome: "ok" | "fenced" | "conflict" | "refused" | "unknown";
  /** The version an `ok` update was applied at. */
  readonly version?: number;
  readonly callMs: number;
  readonly returnMs: number;
}

/** A put of the counter key as committed (read back from the node's change history). */
export interface CommittedUpdate {
  readonly version: number;
  readonly value: string;
}

export interface LockCheckInput {
  readonly tenures: readonly LockTenure[];
  readonly writes: readonly CounterWrite[];
  /** Every committed put of the counter key after its initial value, in version order. */
  readonly committed: readonly CommittedUpdate[];
  /** The counter's initial value (count 0, fence 0). */
  readonly initial: CounterValue;
  /** The counter's value read linearizably after the run. */
  readonly finalValue: string | null;
}

export const LOCK_PROBLEM_KINDS = ["fence_order", "count", "lost_ack", "phantom", "final_value", "shared_fence", "mutual_exclusion"] as const;
export type LockProblemKind = (typeof LOCK_PROBLEM_KINDS)[number];

export interface LockProblem {
  readonly kind: LockProblemKind;
  readonly detail: string;
}

/** Two tenures of different clients that overlapped in time: both believed they held the lock. */
export interface TenureOverlap {
  readonly first: LockTenure;
  readonly second: LockTenure;
  readonly overlapMs: number;
}

export interface LockCheckResult {
  readonly ok: boolean;
  readonly problems: readonly LockProblem[];
  readonly counts: Record<LockProblemKind, number>;
  /** Updates that took effect (committed), which the counter must equal. */
  readonly acceptedUpdates: number;
  readonly overlaps: readonly TenureOverlap[];
  readonly overlapMsTotal: number;
}

/** Every pair of tenures of different clients that overlap, by their start. */
export function tenureOverlaps(tenures: readonly LockTenure[]): TenureOverlap[] {
  const sorted = [...tenures].sort((a, b) => a.acquiredMs - b.acquiredMs || a.fence - b.fence);
  const overlaps: TenureOverlap[] = [];
  for (let i = 0; i < sorted.length; i++) {
    const first = sorted[i] as LockTenure;
    for (let j = i + 1; j < sorted.length; j++) {
      const second = sorted[j] as LockTenure;
      if (second.acquiredMs >= first.endMs) break;
      if (second.client === first.client) continue;
      overlaps.push({ first, second, overlapMs: Math.min(first.endMs, second.endMs) - second.acquiredMs });
    }
  }
  return overlaps;
}

/** Checks a run (see the file comment). */
export function checkLock(input: LockCheckInput): LockCheckResult {
  const problems: LockProblem[] = [];
  const problem = (kind: LockProblemKind, detail: string) => problems.push({ kind, detail });

  let previous = input.initial;
  let previousVersion = 0;
  const committedByValue = new Map<string, number>();
  for (const update of input.committed) {
    committedByValue.set(update.value, update.version);
    const value = parseCounterValue(update.value);
    if (value === undefined) {
      problem("phantom", `version ${update.version} wrote ${JSON.stringify(update.value)}, not a counter value`);
      continue;
    }
    if (update.version <= previousVersion) problem("fence_order", `version ${update.version} follows version ${previousVersion}: the history is out of order`);
    if (value.fence <= previous.fence) {
      problem("fence_order", `version ${update.version} (client ${value.client}, fence ${value.fence}) was accepted after fence ${previous.fence} (client ${previous.client}): a stale holder wrote`);
    }
    if (value.count !== previous.count + 1) {
      problem("count", `version ${update.version} (client ${value.client}) set the count to ${value.count} after ${previous.count}: an update was lost or doubled`);
    }
    previous = value;
    previousVersion = update.version;
  }

  const sent = new Set<string>();
  for (const write of input.writes) {
    if (write.value === undefined) continue;
    if (write.outcome === "ok" || write.outcome === "unknown") sent.add(write.value);
    if (write.outcome !== "ok") continue;
    const version = committedByValue.get(write.value);
    if (version === undefined) problem("lost_ack", `client ${write.client}'s update ${write.value} was acknowledged at version ${write.version} but is not in the counter's history`);
    else if (write.version !== undefined && version !== write.version) {
      problem("lost_ack", `client ${write.client}'s update ${write.value} was acknowledged at version ${write.version} but committed at ${version}`);
    }
  }
  for (const update of input.committed) {
    if (!sent.has(update.value)) problem("phantom", `version ${update.version} holds ${update.value}, which no client sent (or it was refused)`);
  }

  const lastValue = input.committed.length === 0 ? JSON.stringify(input.initial) : (input.committed[input.committed.length - 1] as CommittedUpdate).value;
  if (input.finalValue !== lastValue) {
    problem("final_value", `the counter reads ${JSON.stringify(input.finalValue)} after the run, but its last committed update is ${lastValue}`);
  }

  const holderOfFence = new Map<number, LockTenure>();
  for (const tenure of input.tenures) {
    const other = holderOfFence.get(tenure.fence);
    if (other !== undefined) {
      problem("shared_fence", other.client === tenure.client ? `client ${tenure.client} held the lock twice with fence ${tenure.fence}` : `clients ${other.client} and ${tenure.client} both held the lock with fence ${tenure.fence}`);
    }
    holderOfFence.set(tenure.fence, tenure);
  }

  for (const { earlier, later } of exclusionBreaches(input.tenures)) {
    problem(
      "mutual_exclusion",
      `client ${later.client} took the lock (fence ${later.fence}) at ${Math.round(later.acquiredMs)} ms, while client ${earlier.client}'s lease (fence ${earlier.fence}) was known alive until ${Math.round(earlier.aliveUntilMs as number)} ms` +
        (earlier.releaseStartMs === undefined ? ` (it noticed the lease gone at ${Math.round(earlier.endMs)} ms)` : ` and it began to release it at ${Math.round(earlier.releaseStartMs)} ms`),
    );
  }

  const counts = Object.fromEntries(LOCK_PROBLEM_KINDS.map((k) => [k, problems.filter((p) => p.kind === k).length])) as Record<LockProblemKind, number>;
  const overlaps = tenureOverlaps(input.tenures);
  return {
    ok: problems.length === 0,
    problems,
    counts,
    acceptedUpdates: input.committed.length,
    overlaps,
    overlapMsTotal: overlaps.reduce((sum, o) => sum + o.overlapMs, 0),
  };
}

/**
 * Tenures taken while an earlier one (by fence: its key was ahead in the queue) still had the lock
 * to itself: before both that holder's `aliveUntilMs` (less the tolerance) and the start of its
 * release. Each later tenure is named once, with the earlier tenure that it breached the furthest.
 */
export function exclusionBreaches(tenures: readonly LockTenure[]): { earlier: LockTenure; later: LockTenure }[] {
  const byFence = [...tenures].sort((a, b) => a.fence - b.fence);
  const breaches: { earlier: LockTenure; later: LockTenure }[] = [];
  // The earlier tenure whose exclusive time reaches furthest, among those of smaller fences.
  let furthest: { tenure: LockTenure; untilMs: number } | undefined;
  for (let i = 0; i < byFence.length; ) {
    // Tenures sharing a fence are shared_fence's to report: none is "earlier" than another.
    let j = i;
    while (j < byFence.length && (byFence[j] as LockTenure).fence === (byFence[i] as LockTenure).fence) j++;
    for (let k = i; k < j; k++) {
      const later = byFence[k] as LockTenure;
      if (furthest !== undefined && later.acquiredMs < furthest.untilMs) breaches.push({ earlier: furthest.tenure, later });
    }
    for (let k = i; k < j; k++) {
      const tenure = byFence[k] as LockTenure;
      // A tenure that ended lost counts too: an early expiry is what hands the lock to a second client.
      if (tenure.aliveUntilMs === undefined) continue;
      const untilMs = Math.min(tenure.aliveUntilMs - EXCLUSION_TOLERANCE_MS, tenure.releaseStartMs ?? Number.POSITIVE_INFINITY);
      if (furthest === undefined || untilMs > furthest.untilMs) furthest = { tenure, untilMs };
    }
    i = j;
  }
  return breaches;
}
