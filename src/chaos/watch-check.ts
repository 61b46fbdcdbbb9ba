/**
 * The checker of `kv chaos watch`: what every watcher received, judged against a reference sequence
 * of committed changes (a fresh watch read after healing, from the earliest start of any watcher, on
 * a node whose history covers it), against the writers' answers and against the final state. Pure:
 * it reads what the run recorded and nothing else.
 *
 * A watcher's events for its prefix must be exactly the reference restricted to its prefix and to the
 * versions after its start: none missing, none twice, none out of order, every value right. Every
 * acknowledged write must be in the reference at the version its answer gave; a write with no answer
 * may or may not be; nothing else may be (a refused write, or a value no writer sent, is a phantom).
 */

/** A change as a watch stream carries it. */
export interface WatchEvent {
  readonly version: number;
  readonly kind: "put" | "delete";
  readonly key: string;
  /** A put's value as text (a non-UTF-8 value as `base64:...`); absent for a delete. */
  readonly value?: string;
}

/** What one watcher received, in arrival order, across every stream it opened and resumed. */
export interface WatcherEvents {
  readonly label: string;
  readonly prefix: string;
  /** The watcher must receive every change of its prefix after this version, and none at or before it. */
  readonly startAfter: number;
  /** Every change event it received, in the order received (duplicates and all, if any came twice). */
  readonly events: readonly WatchEvent[];
  /** The highest version its streams reached (an event's or a progress event's id). */
  readonly reached: number;
}

/** A write the cluster acknowledged, with the version its answer gave. */
export interface AcknowledgedWrite {
  readonly key: string;
  readonly kind: "put" | "delete";
  readonly value?: string;
  readonly version: number;
  /** For a delete: whether the key was there (a delete of an absent key changes nothing and sends nothing). */
  readonly deleted?: boolean;
}

/** A write whose outcome is unknown (no answer) or that was refused (certainly not applied). */
export interface UnansweredWrite {
  readonly key: string;
  readonly kind: "put" | "delete";
  readonly value?: string;
}

export interface WatchCheckInput {
  /** The committed changes of every watched prefix after `referenceAfter`, in version order. */
  readonly reference: readonly WatchEvent[];
  readonly referenceAfter: number;
  /**
   * The commit index once the writers stopped: the version every watcher and the reference must
   * have reached. A watcher's event past it is unexpected (nothing was written then).
   */
  readonly throughVersion: number;
  readonly watchers: readonly WatcherEvents[];
  readonly acknowledged: readonly AcknowledgedWrite[];
  readonly unknown: readonly UnansweredWrite[];
  readonly refused: readonly UnansweredWrite[];
  /** What a linearizable read of each written key returned after healing (null: absent). */
  readonly finalValues?: ReadonlyMap<string, string | null>;
  /**
   * Every write changed one key (no transactions), as `kv chaos watch`'s writers send: then one
   * version is one change, and a second change at a version is a phantom however it is explained.
   */
  readonly singleKeyWrites?: boolean;
}

export const WATCH_PROBLEM_KINDS = [
  "missing",
  "duplicate",
  "out_of_order",
  "wrong_value",
  "unexpected",
  "not_caught_up",
  "ack_missing",
  "phantom",
  "final_state",
  "reference",
] as const;
export type WatchProblemKind = (typeof WATCH_PROBLEM_KINDS)[number];

/** One thing found wrong. */
export interface WatchProblem {
  readonly kind: WatchProblemKind;
  /** The watcher it concerns, if one. */
  readonly watcher?: string;
  readonly version?: number;
  readonly detail: string;
}

export interface WatchCheckResult {
  readonly ok: boolean;
  /** Problems by kind (all of them counted). */
  readonly counts: Record<WatchProblemKind, number>;
  /** The first PROBLEMS_KEPT_MAX problems, in the order found. */
  readonly problems: WatchProblem[];
  /** Events the watchers received (up to `throughVersion`), all compared. */
  readonly eventsChecked: number;
  readonly referenceEvents: number;
  /** Acknowledged writes found in the reference at their version. */
  readonly acknowledgedChecked: number;
}

/** Problems kept for the report; beyond, only counted. */
const PROBLEMS_KEPT_MAX = 200;

/** `put w/a/k1="v" @17`, `delete w/a/k1 @18`. */
export function describeWatchEvent(event: WatchEvent): string {
  return event.kind === "put" ? `put ${event.key}=${JSON.stringify(event.value)} @${event.version}` : `delete ${event.key} @${event.version}`;
}

/** Identifies a change: one version may in principle change several keys (a transaction). */
function changeId(version: number, key: string): string {
  return `${version}\u0000${key}`;
}

function sameChange(a: WatchEvent, b: WatchEvent): boolean {
  return a.kind === b.kind && a.key === b.key && (a.kind === "delete" || a.value === b.value);
}

/** Checks a watch run (see the file comment). */
export function checkWatch(input: WatchCheckInput): WatchCheckResult {
  const counts = Object.fromEntries(WATCH_PROBLEM_KINDS.map((k) => [k, 0])) as Record<WatchProblemKind, number>;
  const problems: WatchProblem[] = [];
  const report = (problem: WatchProblem) => {
    counts[problem.kind]++;
    if (problems.length < PROBLEMS_KEPT_MAX) problems.push(problem);
  };
  const through = input.throughVersion;

  // The reference itself: version order, each change once, nothing at or before its start.
  const reference = new Map<string, WatchEvent>();
  /** The key each version of the reference changed (the first, when it is more than one). */
  const versionsChanged = new Map<number, string>();
  let previous = Number.NEGATIVE_INFINITY;
  for (const event of input.reference) {
    const id = changeId(event.version, event.key);
    if (event.version < previous || reference.has(id) || event.version <= input.referenceAfter) {
      report({ kind: "reference", version: event.version, detail: `the reference stream is itself out of order, repeated or early at ${describeWatchEvent(event)}` });
    }
    previous = Math.max(previous, event.version);
    if (input.singleKeyWrites === true && !reference.has(id) && versionsChanged.has(event.version)) {
      // An unanswered put of that key could explain it below: a version is one entry, one change.
      report({ kind: "phantom", version: event.version, detail: `${describeWatchEvent(event)} is a second change at version ${event.version}, which changed ${JSON.stringify(versionsChanged.get(event.version))} (no write here changes two keys; found in review)` });
    }
    if (!versionsChanged.has(event.version)) versionsChanged.set(event.version, event.key);
    if (event.version <= through && !reference.has(id)) reference.set(id, event);
  }
  const referenceInRange = [...reference.values()];

  // Every watcher against the reference.
  let eventsChecked = 0;
  for (const watcher of input.watchers) {
    const who = watcher.label;
    if (watcher.startAfter < input.referenceAfter) {
      report({ kind: "reference", watcher: who, detail: `${who} started after ${watcher.startAfter}, before the reference (after ${input.referenceAfter}): it cannot be checked` });
      continue;
    }
    if (watcher.reached < through) {
      report({ kind: "not_caught_up", watcher: who, version: watcher.reached, detail: `${who} reached only version ${watcher.reached} of ${through}` });
    }
    // Every event counts for duplicates and order, those past `through` too (they were skipped, and
    // hid a phantom there, or one received before an event it follows: found in review).
    const received = new Map<string, WatchEvent>();
    let last: WatchEvent | undefined;
    for (const event of watcher.events) {
      eventsChecked++;
      const id = changeId(event.version, event.key);
      if (received.has(id)) {
        report({ kind: "duplicate", watcher: who, version: event.version, detail: `${who} received ${describeWatchEvent(event)} twice` });
      } else if (last !== undefined && event.version < last.version) {
        report({ kind: "out_of_order", watcher: who, version: event.version, detail: `${who} received ${describeWatchEvent(event)} after ${describeWatchEvent(last)}` });
      }
      if (!received.has(id)) received.set(id, event);
      if (last === undefined || event.version >= last.version) last = event;
    }
    const expected = new Set<string>();
    for (const event of referenceInRange) {
      if (!event.key.startsWith(watcher.prefix) || event.version <= watcher.startAfter) continue;
      const id = changeId(event.version, event.key);
      expected.add(id);
      const got = received.get(id);
      if (got === undefined) {
        report({ kind: "missing", watcher: who, version: event.version, detail: `${who} never received ${describeWatchEvent(event)}` });
      } else if (!sameChange(got, event)) {
        report({ kind: "wrong_value", watcher: who, version: event.version, detail: `${who} received ${describeWatchEvent(got)} where the committed change is ${describeWatchEvent(event)}` });
      }
    }
    for (const [id, event] of received) {
      if (expected.has(id)) continue;
      // Past `through` nothing was written: the writers had stopped, and it is the commit index then.
      const why =
        event.version <= watcher.startAfter
          ? `at or before its start (after ${watcher.startAfter})`
          : !event.key.startsWith(watcher.prefix)
            ? `outside its prefix ${JSON.stringify(watcher.prefix)}`
            : event.version > through
              ? `past version ${through}, the last commit once the writers had stopped`
              : "which is no committed change";
      report({ kind: "unexpected", watcher: who, version: event.version, detail: `${who} received ${describeWatchEvent(event)}, ${why}` });
    }
  }

  // Every acknowledged write is in the reference at its version.
  let acknowledgedChecked = 0;
  const ackedAt = new Set<string>();
  for (const write of input.acknowledged) {
    const id = changeId(write.version, write.key);
    ackedAt.add(id);
    if (write.version <= input.referenceAfter) continue; // before the reference: nothing to compare with
    const found = reference.get(id);
    const label = write.kind === "put" ? `put ${write.key}=${JSON.stringify(write.value)} @${write.version}` : `delete ${write.key} @${write.version}`;
    if (write.kind === "delete" && write.deleted === false) {
      if (found !== undefined) report({ kind: "phantom", version: write.version, detail: `acknowledged ${label} found nothing to delete, yet the reference has ${describeWatchEvent(found)}` });
      continue;
    }
    if (write.version > through || found === undefined) {
      report({ kind: "ack_missing", version: write.version, detail: `acknowledged ${label} is not among the committed changes` });
    } else if (!sameChange(found, { ...write, kind: write.kind })) {
      report({ kind: "ack_missing", version: write.version, detail: `acknowledged ${label}, but the change at that version is ${describeWatchEvent(found)}` });
    } else {
      acknowledgedChecked++;
    }
  }

  // Nothing in the reference that no writer may have made. Each unanswered write explains at most
  // one committed change (a request applies once): its put's value is used up, its delete counted.
  const mayHavePut = new Map<string, Set<string>>();
  const mayHaveDeleted = new Map<string, number>();
  for (const write of input.unknown) {
    if (write.kind === "put") {
      const values = mayHavePut.get(write.key) ?? new Set<string>();
      values.add(write.value ?? "");
      mayHavePut.set(write.key, values);
    } else {
      mayHaveDeleted.set(write.key, (mayHaveDeleted.get(write.key) ?? 0) + 1);
    }
  }
  const explained = (event: WatchEvent): boolean => {
    if (event.kind === "put") return mayHavePut.get(event.key)?.delete(event.value ?? "") ?? false;
    const left = mayHaveDeleted.get(event.key) ?? 0;
    if (left > 0) mayHaveDeleted.set(event.key, left - 1);
    return left > 0;
  };
  const refusedPuts = new Set(input.refused.filter((w) => w.kind === "put").map((w) => `${w.key}\u0000${w.value ?? ""}`));
  for (const event of referenceInRange) {
    if (ackedAt.has(changeId(event.version, event.key))) continue; // compared above
    if (explained(event)) continue;
    const refused = event.kind === "put" && refusedPuts.has(`${event.key}\u0000${event.value ?? ""}`);
    report({
      kind: "phantom",
      version: event.version,
      detail: `${describeWatchEvent(event)} is a committed change ${refused ? "of a write the cluster refused" : "no writer's unanswered write explains"}`,
    });
  }

  // The last change of each key is what the healed cluster holds.
  if (input.finalValues !== undefined) {
    const lastChange = new Map<string, WatchEvent>();
    for (const event of referenceInRange) lastChange.set(event.key, event);
    for (const [key, value] of input.finalValues) {
      const change = lastChange.get(key);
      const expected = change === undefined || change.kind === "delete" ? null : (change.value ?? null);
      if (expected !== value) {
        report({
          kind: "final_state",
          detail: `${key} holds ${JSON.stringify(value)} after healing, but its last committed change is ${change === undefined ? "none" : describeWatchEvent(change)}`,
        });
      }
    }
  }

  const ok = WATCH_PROBLEM_KINDS.every((k) => counts[k] === 0);
  return { ok, counts, problems, eventsChecked, referenceEvents: referenceInRange.length, acknowledgedChecked };
}
