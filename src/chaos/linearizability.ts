/**
 * Linearizability checker for kv histories.
 *
 * The model is one register per key (Porcupine's "partitioned by key"): operations on different keys
 * commute, so each key's sub-history is checked on its own, and the whole history is linearizable
 * exactly when every key's is.
 *
 * Each key is checked by Wing & Gong's search with Lowe's just-in-time linearization and memoization,
 * which is Porcupine's `checkSingle`: call and return events sit in one doubly linked list in time
 * order; the search walks it from the head, linearizes (lifts out) any call whose operation the
 * register accepts in its current state, and backtracks when it meets a return whose operation it has
 * not yet linearized. A cache of (set of linearized operations, register state) prunes every
 * configuration already explored, which is what makes the search fast on real histories.
 *
 * Before any search, the versions the answers named are checked against each other and against
 * real time (src/chaos/version-check.ts): the search itself reads values only.
 *
 * Outcomes (see `OperationOutcome`): failed operations are dropped; an unknown get says nothing and is
 * dropped; an unknown put or delete has an infinite return, so it may be linearized at any point after
 * its call or never, and success needs only the other operations placed. Values are unique per put,
 * which lets the checker do better than Porcupine with unknown writes:
 * - a put someone read must have taken effect before the earliest such read returned, so its return is
 *   tightened to that, and an unknown put that was read becomes an ordinary required operation;
 * - an unknown write nothing could observe is dropped;
 * - the rest ("optional" writes) sit in a second list, are tried only after the required calls (so they
 *   are placed where they are needed rather than wherever they happen to fit), and interchangeable ones
 *   (all unknown deletes; all unknown puts nobody read) are tried earliest-called first only;
 * - a write may not overwrite a value that an unplaced get still has to read (nothing can write it
 *   again), so a put placed too early fails at the next write rather than at its reader, far later.
 * - a compare-and-set write applies only where the key can be at its version (see
 *   `compareAndSetRequirements`), and stands in for no other write;
 * Unknown writes nobody read can only explain null reads and `deleted` answers, so a key that has some
 * is first checked without those observations: that check has no optional writes, and its exhaustive
 * search for a violation stays small.
 */
import { assert, unreachable } from "../lib/assert.ts";
import { describeOperation, type Operation } from "./history.ts";
import { findVersionViolation } from "./version-check.ts";

export { describeOperation };
export type { Operation, OperationKind, OperationOutcome } from "./history.ts";

/** How much work a check may do, and what each key held before the history began. */
export interface CheckOptions {
  /** Wall-clock limit for the whole check. Default `checkTimeBudgetMsDefault`. */
  readonly timeBudgetMs?: number;
  /** How a verdict that ran out of time names its budget (default: "its N ms"): a caller that splits a larger budget names that. */
  readonly timeBudgetName?: string;
  /** Limit on search steps for the whole check: a budget that replays exactly. Default: none. */
  readonly searchStepsMax?: number;
  /** Each key's value before the history began; keys not named start absent (null). */
  readonly initial?: ReadonlyMap<string, string | null>;
  /** The clock the time budget is measured on. Default `performance.now`. */
  readonly nowMs?: () => number;
}

/** The verdict on a whole history. */
export type CheckResult =
  | { readonly ok: true; readonly keysChecked: number }
  | {
      readonly ok: false;
      /** The first key (fewest operations first) whose history admits no linearization. */
      readonly key: string;
      readonly reason: string;
      /**
       * Operations of that key, sorted by call time, that are not linearizable on their own. Shrunk by
       * removing only what cannot make a linearizable history fail (a get; a write together with every
       * operation that may have observed it), so it always holds the operation that broke the history.
       */
      readonly evidence: Operation[];
    }
  | {
      readonly ok: "unknown";
      readonly reason: string;
      /** The first key whose search ran out of budget. */
      readonly key?: string;
    };

/** Default wall-clock budget: a pathological history must not hang a chaos run. */
export const checkTimeBudgetMsDefault = 60_000;
/** Shrinking the evidence gets at most this much time, and at most the check's remaining budget. */
const shrinkTimeMsMax = 10_000;
/** Search steps the evidence shrinking may spend at most. */
const shrinkStepsMax = 20_000_000;
/** Configurations one search may remember; beyond this it reports the budget spent, not memory gone. */
const cacheEntriesMax = 4_000_000;
/** How many search steps pass between two looks at the clock. */
const clockCheckIntervalSteps = 1024;

/**
 * Checks that `history` is linearizable against one register per key, with put/get/delete semantics:
 * a get returns the value of the latest put before it, or null when there is none or a delete came
 * later; an ok delete with `deleted` set must find the key present (true) or absent (false).
 *
 * The history is the caller's own record, so malformed operations (a put without a value, an ok op
 * without a return time, two puts of one value on one key) are programmer errors and assert.
 */
export function checkLinearizable(history: readonly Operation[], opts: CheckOptions = {}): CheckResult {
  for (const op of history) validateOperation(op);
  const refusals = refusalsAsReads(history);
  if ("violation" in refusals) return refusals.violation;
  const result = checkJudged(refusals.judged, opts);
  if (result.ok !== false) return result;
  // The evidence names what the clients did: a refusal, not the get it was judged as.
  const evidence = [...new Set(result.evidence.map((op) => refusals.refusalOf.get(op) ?? op))];
  return { ...result, evidence };
}

/**
 * A compare-and-set refused `version_mismatch` read its key: its condition is judged where the write
 * applies, and the answer names the version the key was at there (`refusedAtVersion`). Where the
 * history tells which state that version is (0: absent; a version an answer gave a put or a get of
 * this key: that value), the refusal is also judged as a get of that state over its call and
 * return, by the search and by the version checks (src/chaos/version-check.ts). A version the
 * history gives nothing says nothing. A refusal at the very version it asked for, or at a delete's
 * or another key's version, is wrong on its own. (Before, refusals were dropped: a node that
 * refused a compare-and-set against a stale or wrong version passed every check.)
 */
function refusalsAsReads(
  history: readonly Operation[],
): { readonly judged: readonly Operation[]; readonly refusalOf: ReadonlyMap<Operation, Operation> } | { readonly violation: CheckResult } {
  const refusals = history.filter((op) => op.refusedAtVersion !== undefined);
  if (refusals.length === 0) return { judged: history, refusalOf: new Map() };
  const atVersion = new Map<number, Operation>();
  for (const op of history) {
    if (op.outcome !== "ok" || op.version === undefined) continue;
    if (op.kind === "get" && (op.output === null || op.output === undefined)) continue;
    if (!atVersion.has(op.version)) atVersion.set(op.version, op);
  }
  const judged = [...history];
  const refusalOf = new Map<Operation, Operation>();
  for (const refusal of refusals) {
    const version = refusal.refusedAtVersion ?? 0;
    const wrong = (reason: string, others: Operation[] = []): { violation: CheckResult } => ({
      violation: { ok: false, key: refusal.key, reason: `${describeOperation(refusal)}: ${reason}`, evidence: [...others, refusal].sort(byCallTime) },
    });
    if (version === refusal.ifVersion) return wrong(`refused, though the key was at the version it asked for`);
    let output: string | null;
    if (version === 0) output = null;
    else {
      const there = atVersion.get(version);
      if (there === undefined) continue;
      if (there.key !== refusal.key) return wrong(`version ${version} is a write of another key`, [there]);
      if (there.kind === "delete") return wrong(`version ${version} is a delete, after which a key is at version 0`, [there]);
      output = there.kind === "put" ? (there.value ?? null) : (there.output ?? null);
    }
    const { refusedAtVersion: _, ifVersion: __, value: ___, ...common } = refusal;
    const read: Operation = { ...common, kind: "get", outcome: "ok", output, ...(version === 0 ? {} : { version }) };
    judged.push(read);
    refusalOf.set(read, refusal);
  }
  return { judged, refusalOf };
}

/** `checkLinearizable` of a history whose refusals were given their reads. */
function checkJudged(history: readonly Operation[], opts: CheckOptions): CheckResult {
  const nowMs = opts.nowMs ?? (() => performance.now());
  const budget: Budget = {
    nowMs,
    deadlineMs: nowMs() + (opts.timeBudgetMs ?? checkTimeBudgetMsDefault),
    stepsLeft: opts.searchStepsMax ?? Number.POSITIVE_INFINITY,
  };

  // The versions answers named are checked first: cheap, and a violation there is definite.
  const versions = findVersionViolation(history);
  if (versions !== undefined) return versions;

  const opsByKey = new Map<string, Operation[]>();
  const failedPutsByKey = new Map<string, Operation[]>();
  for (const op of history) {
    if (op.outcome === "fail") {
      if (op.kind === "put") pushTo(failedPutsByKey, op.key, op);
      continue;
    }
    // An unknown get may or may not have run, and its answer never arrived: it constrains nothing.
    if (op.kind === "get" && op.outcome === "unknown") continue;
    pushTo(opsByKey, op.key, op);
  }

  // Cheap keys first, so that a definite violation is found before a hard key eats the budget.
  const keys = [...opsByKey.keys()].sort((a, b) => {
    const bySize = (opsByKey.get(a)?.length ?? 0) - (opsByKey.get(b)?.length ?? 0);
    return bySize !== 0 ? bySize : a < b ? -1 : a > b ? 1 : 0;
  });

  let budgetKey: string | undefined;
  for (const key of keys) {
    const ops = opsByKey.get(key);
    assert(ops !== undefined);
    ops.sort(byCallTime);
    assertUniquePutValues(key, ops);
    const initial = opts.initial?.get(key) ?? null;
    const result = checkOneKey(key, ops, initial, failedPutsByKey.get(key) ?? [], budget);
    if (result === "budget") budgetKey ??= key;
    else if (result !== "linearizable") return result;
  }
  if (budgetKey !== undefined) return { ok: "unknown", reason: budgetReason(budget, opts), key: budgetKey };
  return { ok: true, keysChecked: keys.length };
}

interface Budget {
  readonly nowMs: () => number;
  readonly deadlineMs: number;
  stepsLeft: number;
  /** Which bound a search ran into first, once one did (for the verdict's reason). */
  spent?: "time" | "steps" | "memory";
}

/**
 * `exact` checks every observation. `relaxed` ignores null reads and `deleted` answers: any history
 * linearizable exactly is linearizable relaxed, so a relaxed violation is a real one. Relaxed, an
 * unknown write is either read (so required) or dropped, which keeps an exhaustive search small.
 */
type Mode = "exact" | "relaxed";

type KeyVerdict =
  | { readonly kind: "linearizable" }
  | {
      readonly kind: "violation";
      /** The operation whose return the deepest search could not get past. */
      readonly stuck: Operation;
      /** How many operations the deepest search had linearized when it got stuck. */
      readonly placedCount: number;
      /** The value the register held there when an unplaced get still had to read it, else undefined. */
      readonly pinnedValue: string | undefined;
    }
  | { readonly kind: "budget" };

type Violation = Extract<KeyVerdict, { kind: "violation" }>;

function checkOneKey(
  key: string,
  ops: readonly Operation[],
  initial: string | null,
  failedPuts: readonly Operation[],
  budget: Budget,
): CheckResult | "linearizable" | "budget" {
  const unwritten = findUnwrittenRead(ops, initial, failedPuts);
  if (unwritten !== undefined) return { ok: false, key, reason: unwritten.reason, evidence: unwritten.evidence };

  if (isBudgetSpent(budget)) return "budget";
  const exact = prepareKey(ops, initial, "exact");
  if (exact.optionalCount > 0) {
    const relaxedOps = ops.filter((op) => !isNullRead(op));
    const relaxed = checkKey(relaxedOps, initial, "relaxed", budget);
    if (relaxed.kind === "budget") return "budget";
    if (relaxed.kind === "violation") {
      return explainViolation(key, ops.length, relaxedOps, initial, "relaxed", relaxed, budget);
    }
  }
  const verdict = search(exact, budget);
  switch (verdict.kind) {
    case "linearizable":
    case "budget":
      return verdict.kind;
    case "violation":
      return explainViolation(key, ops.length, ops, initial, "exact", verdict, budget);
    default:
      return unreachable(verdict);
  }
}

function checkKey(ops: readonly Operation[], initial: string | null, mode: Mode, budget: Budget): KeyVerdict {
  if (isBudgetSpent(budget)) return { kind: "budget" };
  return search(prepareKey(ops, initial, mode), budget);
}

function isBudgetSpent(budget: Budget): boolean {
  if (budget.stepsLeft <= 0) budget.spent ??= "steps";
  else if (budget.nowMs() >= budget.deadlineMs) budget.spent ??= "time";
  else return false;
  return true;
}

/** Why a check gave up, in words: which of its bounds the search ran into. */
function budgetReason(budget: Budget, opts: CheckOptions): string {
  switch (budget.spent) {
    case "memory":
      return `budget exceeded: the search remembered more than ${cacheEntriesMax.toLocaleString("en-US")} configurations of the history (too many operations overlap, most often writes whose outcome is unknown)`;
    case "steps":
      return `budget exceeded: the search took its ${(opts.searchStepsMax ?? 0).toLocaleString("en-US")} step${opts.searchStepsMax === 1 ? "" : "s"}`;
    default:
      return `budget exceeded: the search ran past ${opts.timeBudgetName ?? `its ${Math.round(opts.timeBudgetMs ?? checkTimeBudgetMsDefault).toLocaleString("en-US")} ms`}`;
  }
}

function isNullRead(op: Operation): boolean {
  return op.kind === "get" && op.outcome === "ok" && op.output === null;
}

function validateOperation(op: Operation): void {
  assert(Number.isFinite(op.callMs), `operation ${op.id}: callMs must be finite`);
  if (op.outcome === "ok") {
    assert(
      op.returnMs !== undefined && Number.isFinite(op.returnMs) && op.returnMs >= op.callMs,
      `operation ${op.id}: an ok operation needs a returnMs at or after its callMs`,
    );
  }
  if (op.kind === "put") assert(typeof op.value === "string", `operation ${op.id}: a put needs a value`);
  if (op.kind === "get" && op.outcome === "ok") {
    assert(op.output !== undefined, `operation ${op.id}: an ok get needs an output`);
  }
  if (op.refusedAtVersion !== undefined) {
    assert(
      op.outcome === "fail" && op.kind !== "get" && op.ifVersion !== undefined && op.returnMs !== undefined && Number.isSafeInteger(op.refusedAtVersion) && op.refusedAtVersion >= 0,
      `operation ${op.id}: a refusal's version belongs to a compare-and-set that was refused, answered, at a version of 0 or more`,
    );
  }
}

function assertUniquePutValues(key: string, ops: readonly Operation[]): void {
  const seen = new Set<string>();
  for (const op of ops) {
    if (op.kind !== "put") continue;
    assert(op.value !== undefined);
    assert(!seen.has(op.value), `key ${key}: two puts write ${JSON.stringify(op.value)}; values must be unique`);
    seen.add(op.value);
  }
}

/**
 * A get that read a value no put on its key wrote (or only a failed put) is wrong in any order; saying
 * so directly gives a clearer report than the search would.
 */
function findUnwrittenRead(
  ops: readonly Operation[],
  initial: string | null,
  failedPuts: readonly Operation[],
): { reason: string; evidence: Operation[] } | undefined {
  const written = new Set<string>();
  for (const op of ops) if (op.kind === "put" && op.value !== undefined) written.add(op.value);
  for (const op of ops) {
    if (op.kind !== "get" || op.outcome !== "ok") continue;
    const output = op.output;
    if (output === null || output === undefined || output === initial || written.has(output)) continue;
    const failedPut = failedPuts.find((put) => put.value === output);
    if (failedPut !== undefined) {
      return {
        reason: `${describeOperation(op)} read ${JSON.stringify(output)}, which only a failed put tried to write`,
        evidence: [failedPut, op].sort(byCallTime),
      };
    }
    return { reason: `${describeOperation(op)} read ${JSON.stringify(output)}, which no put wrote`, evidence: [op] };
  }
  return undefined;
}

/** Shrinks the failing ops to a self-contained piece and words the verdict. */
function explainViolation(
  key: string,
  keyOpsCount: number,
  ops: readonly Operation[],
  initial: string | null,
  mode: Mode,
  verdict: Violation,
  budget: Budget,
): CheckResult {
  const shrinkBudget: Budget = {
    nowMs: budget.nowMs,
    deadlineMs: Math.min(budget.deadlineMs, budget.nowMs() + shrinkTimeMsMax),
    stepsLeft: Math.min(budget.stepsLeft, shrinkStepsMax),
  };
  const evidence = shrinkEvidence(ops, initial, mode, shrinkBudget);
  const evidenceVerdict = evidence.length === ops.length ? verdict : checkKey(evidence, initial, mode, shrinkBudget);
  const stuck = evidenceVerdict.kind === "violation" ? evidenceVerdict : verdict;
  const initialNote = initial === null ? "" : ` starting from ${JSON.stringify(initial)}`;
  const pinnedNote =
    stuck.pinnedValue === undefined || stuck.stuck.kind === "get"
      ? ""
      : `, which would overwrite ${JSON.stringify(stuck.pinnedValue)} while a get that read it is still unplaced`;
  const reason =
    `no linearization of the ${keyOpsCount} operations on key ${key}${initialNote}; ` +
    `these ${evidence.length} admit none on their own: the deepest search placed ${stuck.placedCount} ` +
    `operation${stuck.placedCount === 1 ? "" : "s"} and then cannot get past ` +
    `${describeOperation(stuck.stuck)}${pinnedNote}`;
  return { ok: false, key, reason, evidence };
}

/**
 * Greedy delta debugging: removes chunks of operations (halving the chunk size down to one) as long as
 * what remains still fails. A removal is sound, meaning it cannot turn a linearizable history into a
 * failing one, when it takes along every remaining operation that may have observed a removed write:
 * then a linearization of the whole, with the removed operations cut out, still explains the rest.
 * Keeps call-time order, which `prepareKey` relies on.
 */
function shrinkEvidence(ops: readonly Operation[], initial: string | null, mode: Mode, budget: Budget): Operation[] {
  let current = ops.slice();
  let observers = createObserverIndex(current);
  let chunkSize = Math.max(1, Math.floor(current.length / 2));
  for (;;) {
    let start = 0;
    while (start < current.length) {
      if (isBudgetSpent(budget)) return current;
      const removal = observers.closeRemoval(current.slice(start, start + chunkSize));
      if (removal.size < current.length) {
        const candidate = current.filter((op) => !removal.has(op));
        if (checkKey(candidate, initial, mode, budget).kind === "violation") {
          current = candidate;
          observers = createObserverIndex(current);
          continue; // The next chunk has slid into place at `start`.
        }
      }
      start += chunkSize;
    }
    if (chunkSize === 1) return current;
    chunkSize = Math.max(1, Math.min(Math.floor(chunkSize / 2), Math.ceil(current.length / 2)));
  }
}

/** The closed [fromMs, toMs] span in which a write's result may be observed. */
interface ObservableSpan {
  readonly fromMs: number;
  readonly toMs: number;
}

/**
 * Who may have observed a write, within one set of operations. A get of `v` observed the put of `v`
 * (values are unique). A null get, or a delete that reported the key present or absent, observed some
 * write it does not name, so any write it may follow directly counts: one whose span meets the
 * observer's interval. A write's span runs from its call until the earliest return of an ok write
 * called after it returned; from then on some write certainly stands between it and any observer.
 */
function createObserverIndex(current: readonly Operation[]): {
  closeRemoval(chunk: readonly Operation[]): Set<Operation>;
} {
  const okWrites = current.filter((op) => op.kind !== "get" && op.outcome === "ok").sort(byCallTime);
  // earliestReturnFrom[i]: the earliest return among okWrites[i..].
  const earliestReturnFrom = new Float64Array(okWrites.length + 1).fill(Number.POSITIVE_INFINITY);
  for (let i = okWrites.length - 1; i >= 0; i--) {
    earliestReturnFrom[i] = Math.min(okWrites[i]?.returnMs ?? Number.POSITIVE_INFINITY, earliestReturnFrom[i + 1] ?? 0);
  }
  const spanOf = (write: Operation): ObservableSpan => {
    const returnMs = write.outcome === "ok" ? (write.returnMs ?? Number.POSITIVE_INFINITY) : Number.POSITIVE_INFINITY;
    // First ok write called strictly after `write` returned (equal times count as concurrent).
    let low = 0;
    let high = okWrites.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((okWrites[middle]?.callMs ?? 0) > returnMs) high = middle;
      else low = middle + 1;
    }
    return { fromMs: write.callMs, toMs: earliestReturnFrom[low] ?? Number.POSITIVE_INFINITY };
  };

  const required = compareAndSetRequirements(current);
  return {
    /**
     * Extends `chunk` to a sound removal: with a put go the gets of its value, the deletes that may
     * have found it present and the compare-and-sets that needed it; with a delete go the null gets,
     * the deletes that may have found the key absent because of it and the compare-and-sets that
     * needed the key absent. Repeats until nothing more is pulled in.
     */
    closeRemoval(chunk) {
      const removal = new Set(chunk);
      for (;;) {
        const removedValues = new Set<string>();
        const putSpans: ObservableSpan[] = [];
        const deleteSpans: ObservableSpan[] = [];
        for (const op of removal) {
          if (op.kind === "put" && op.value !== undefined) {
            removedValues.add(op.value);
            putSpans.push(spanOf(op));
          }
          if (op.kind === "delete") deleteSpans.push(spanOf(op));
        }
        const mayObservePut = createSpanQuery(putSpans);
        const mayObserveDelete = createSpanQuery(deleteSpans);
        let grew = false;
        for (const op of current) {
          if (removal.has(op) || op.outcome !== "ok") continue;
          let observesRemoved = false;
          if (op.kind === "get") {
            observesRemoved =
              op.output === null ? mayObserveDelete(op) : op.output !== undefined && removedValues.has(op.output);
          } else if (op.kind === "delete") {
            observesRemoved =
              (op.deleted === true && mayObservePut(op)) || (op.deleted === false && mayObserveDelete(op));
          }
          const needs = required.get(op);
          if (needs === null) observesRemoved ||= mayObserveDelete(op);
          else if (needs !== undefined && needs !== "never") observesRemoved ||= removedValues.has(needs);
          if (observesRemoved) {
            removal.add(op);
            grew = true;
          }
        }
        if (!grew) return removal;
      }
    },
  };
}

/** Whether an ok operation's [call, return] interval meets any of `spans`. */
function createSpanQuery(spans: ObservableSpan[]): (op: Operation) => boolean {
  spans.sort((a, b) => a.fromMs - b.fromMs);
  // latestToMs[i]: the latest end among spans[0..i].
  const latestToMs = new Float64Array(spans.length);
  let latest = Number.NEGATIVE_INFINITY;
  spans.forEach((span, i) => {
    latest = Math.max(latest, span.toMs);
    latestToMs[i] = latest;
  });
  return (op) => {
    const returnMs = op.returnMs ?? Number.POSITIVE_INFINITY;
    // The last span starting at or before the op's return.
    let low = 0;
    let high = spans.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((spans[middle]?.fromMs ?? 0) <= returnMs) low = middle + 1;
      else high = middle;
    }
    return low > 0 && (latestToMs[low - 1] ?? Number.NEGATIVE_INFINITY) >= op.callMs;
  };
}

/**
 * What each compare-and-set write of one key needs to find, as a value: a write with `ifVersion` x
 * applies only when the key is at version x. At 0 that is the key absent (null). At the version an
 * answer gave a put of `v` (its own, or a get's of `v`), it is the key holding `v`: values are unique,
 * so the key holds `v` exactly while it is at that version. At a delete's version it is never (the key
 * is absent then, at version 0). At a version no answer of this key named, nothing is known: absent
 * from the map, as a write without `ifVersion` is. Without this, a compare-and-set that could not
 * apply (its answer lost) could explain a lost acknowledged write (found in a review).
 */
function compareAndSetRequirements(ops: readonly Operation[]): Map<Operation, string | null | "never"> {
  const requirements = new Map<Operation, string | null | "never">();
  if (!ops.some((op) => op.ifVersion !== undefined)) return requirements;
  const atVersion = new Map<number, string | "deleted">();
  for (const op of ops) {
    if (op.outcome !== "ok" || op.version === undefined) continue;
    if (op.kind === "delete") atVersion.set(op.version, "deleted");
    else if (op.kind === "put" && op.value !== undefined) atVersion.set(op.version, op.value);
    else if (op.kind === "get" && op.output !== null && op.output !== undefined) atVersion.set(op.version, op.output);
  }
  for (const op of ops) {
    if (op.kind === "get" || op.ifVersion === undefined || op.outcome === "fail") continue;
    if (op.ifVersion === 0) {
      requirements.set(op, null);
      continue;
    }
    const there = atVersion.get(op.ifVersion);
    if (there !== undefined) requirements.set(op, there === "deleted" ? "never" : there);
  }
  return requirements;
}

// Register operations as the search sees them.
const KIND_PUT = 0;
const KIND_GET = 1;
const KIND_DELETE = 2;
// `args` of a delete: what its answer says the key was before it.
const DELETE_UNCHECKED = -1;
const DELETE_FOUND_ABSENT = 0;
const DELETE_FOUND_PRESENT = 1;
// The register state is an interned value: 0 is absent, 1 is "some value nobody read", 2.. are values.
const STATE_ABSENT = 0;
const STATE_UNREAD = 1;
const STATE_FIRST_VALUE = 2;
/** The step function's answer when the register cannot perform an operation in its state. */
const STEP_REJECTED = -1;
// A write's precondition besides a state: none, or one no state meets.
const REQUIRE_ANY = -1;
const REQUIRE_NEVER = -2;
// Which list an operation sits in. Optional classes are bit flags so a search node can record which
// interchangeable classes it has tried; a lone optional write has no stand-ins and is always tried.
const REQUIRED = 0;
const OPTIONAL_LONE = 1;
const OPTIONAL_DELETE = 2;
const OPTIONAL_UNREAD_PUT = 4;

/** One key's operations prepared for the search: parallel arrays, values interned to small integers. */
interface PreparedKey {
  /** Search index → the operation as recorded; indexes follow call time. */
  readonly ops: readonly Operation[];
  readonly kinds: Uint8Array;
  /** Put: the state it writes. Get: the state it read. Delete: a DELETE_* constant. */
  readonly args: Int32Array;
  /** A write's precondition: REQUIRE_ANY, REQUIRE_NEVER, or the state it must find (a compare-and-set). */
  readonly requires: Int32Array;
  /** REQUIRED, or the OPTIONAL_* class of a write that may be linearized or left out. */
  readonly classes: Uint8Array;
  /** The operation's bit in the required or the optional bitset. */
  readonly bitIndexes: Int32Array;
  readonly callMs: Float64Array;
  /** The (possibly tightened) return of a required operation; unused for optional ones. */
  readonly returnMs: Float64Array;
  readonly requiredCount: number;
  readonly optionalCount: number;
  readonly initialState: number;
  /** States are 0..stateCount-1. */
  readonly stateCount: number;
  /** State STATE_FIRST_VALUE + i holds values[i]. */
  readonly values: readonly string[];
  /**
   * A write's version when known (its answer named it, or a get named it for the value the put
   * wrote), else 0. Versions are log indexes: writes whose versions are known take effect in their
   * order, and `search` places them so (see `writeVersionOf`).
   */
  readonly writeVersions: Float64Array;
}

interface KeptOperation {
  readonly op: Operation;
  readonly kind: number;
  readonly arg: number;
  readonly requires: number;
  readonly opClass: number;
  readonly returnMs: number;
}

/**
 * Turns outcomes into intervals and classes. Values are unique per put, so a get that read `v` proves
 * the put of `v` took effect before the get returned: the put's return is tightened to the earliest
 * such get's return. A read of the initial value proves nothing about a put of that same value.
 */
function prepareKey(ops: readonly Operation[], initial: string | null, mode: Mode): PreparedKey {
  const relaxed = mode === "relaxed";
  const valueIds = new Map<string, number>();
  const intern = (value: string | null): number => {
    if (value === null) return STATE_ABSENT;
    let id = valueIds.get(value);
    if (id === undefined) {
      id = STATE_FIRST_VALUE + valueIds.size;
      valueIds.set(value, id);
    }
    return id;
  };
  const initialState = intern(initial);
  const required = compareAndSetRequirements(ops);
  // A compare-and-set's precondition as a state. Relaxed, a write that needs the key absent needs
  // nothing: the unknown deletes that could have made it so are left out there.
  const requiresOf = (op: Operation): number => {
    const requirement = required.get(op);
    if (requirement === undefined || (relaxed && requirement === null)) return REQUIRE_ANY;
    return requirement === "never" ? REQUIRE_NEVER : intern(requirement);
  };

  const firstReadReturnMs = new Map<string, number>();
  let absenceObserved = false;
  let presenceObservedByDelete = false;
  let previousCallMs = Number.NEGATIVE_INFINITY;
  for (const op of ops) {
    assert(op.callMs >= previousCallMs, "operations are sorted by call time");
    previousCallMs = op.callMs;
    // A write that needs the key absent may follow an unknown delete: those must be kept.
    if (!relaxed && required.get(op) === null) absenceObserved = true;
    if (op.outcome !== "ok") continue;
    if (op.kind === "get") {
      assert(op.output !== undefined && op.returnMs !== undefined);
      if (op.output === null) {
        if (!relaxed) absenceObserved = true;
      } else {
        const earliest = firstReadReturnMs.get(op.output);
        if (earliest === undefined || op.returnMs < earliest) firstReadReturnMs.set(op.output, op.returnMs);
      }
    } else if (op.kind === "delete" && !relaxed) {
      if (op.deleted === false) absenceObserved = true;
      if (op.deleted === true) presenceObservedByDelete = true;
    }
  }

  const kept: KeptOperation[] = [];
  const infinity = Number.POSITIVE_INFINITY;
  for (const op of ops) {
    assert(op.outcome !== "fail", "failed operations are dropped before the search");
    switch (op.kind) {
      case "get": {
        assert(op.outcome === "ok", "unknown gets are dropped before the search");
        assert(op.output !== undefined && op.returnMs !== undefined);
        if (relaxed && op.output === null) break;
        kept.push({ op, kind: KIND_GET, arg: intern(op.output), requires: REQUIRE_ANY, opClass: REQUIRED, returnMs: op.returnMs });
        break;
      }
      case "put": {
        assert(op.value !== undefined);
        const readReturnMs = op.value === initial ? undefined : firstReadReturnMs.get(op.value);
        const requires = requiresOf(op);
        if (op.outcome === "ok") {
          assert(op.returnMs !== undefined);
          const returnMs =
            readReturnMs === undefined ? op.returnMs : Math.max(op.callMs, Math.min(op.returnMs, readReturnMs));
          kept.push({ op, kind: KIND_PUT, arg: intern(op.value), requires, opClass: REQUIRED, returnMs });
        } else if (readReturnMs !== undefined) {
          // Someone read it, so it took effect; if that read returned before this call, the clamp
          // leaves an interval the search cannot satisfy, which is the violation.
          const returnMs = Math.max(op.callMs, readReturnMs);
          kept.push({ op, kind: KIND_PUT, arg: intern(op.value), requires, opClass: REQUIRED, returnMs });
        } else if (requires === REQUIRE_NEVER) {
          // A compare-and-set on a version the key can no longer be at: it cannot have applied.
        } else if (firstReadReturnMs.has(op.value)) {
          // It writes the initial value, which someone read: that read may or may not be this put's.
          kept.push({ op, kind: KIND_PUT, arg: intern(op.value), requires, opClass: OPTIONAL_LONE, returnMs: infinity });
        } else if (presenceObservedByDelete) {
          // Nobody read it, but a delete that found the key present might have found it. A
          // compare-and-set has its own precondition, so it stands in for no other.
          const opClass = requires === REQUIRE_ANY ? OPTIONAL_UNREAD_PUT : OPTIONAL_LONE;
          kept.push({ op, kind: KIND_PUT, arg: STATE_UNREAD, requires, opClass, returnMs: infinity });
        }
        break;
      }
      case "delete": {
        if (op.outcome === "ok") {
          assert(op.returnMs !== undefined);
          const arg =
            relaxed || op.deleted === undefined
              ? DELETE_UNCHECKED
              : op.deleted
                ? DELETE_FOUND_PRESENT
                : DELETE_FOUND_ABSENT;
          kept.push({ op, kind: KIND_DELETE, arg, requires: requiresOf(op), opClass: REQUIRED, returnMs: op.returnMs });
        } else if (absenceObserved) {
          const requires = requiresOf(op);
          if (requires === REQUIRE_NEVER) break; // a compare-and-set that cannot have applied
          const opClass = requires === REQUIRE_ANY ? OPTIONAL_DELETE : OPTIONAL_LONE;
          kept.push({ op, kind: KIND_DELETE, arg: DELETE_UNCHECKED, requires, opClass, returnMs: infinity });
        }
        break;
      }
      default:
        unreachable(op.kind, "operation kind");
    }
  }

  // The version each value was written at, as gets of it named it (the put may have had no answer).
  const readVersions = new Map<string, number>();
  for (const op of ops) {
    // A read of the initial value names a write from before the history, not a put of that value in it.
    if (op.kind === "get" && op.outcome === "ok" && typeof op.output === "string" && op.output !== initial && op.version !== undefined) readVersions.set(op.output, op.version);
  }
  const count = kept.length;
  const writeVersions = new Float64Array(count);
  kept.forEach((entry, index) => (writeVersions[index] = writeVersionOf(entry.op, readVersions)));
  const kinds = new Uint8Array(count);
  const args = new Int32Array(count);
  const requires = new Int32Array(count);
  const classes = new Uint8Array(count);
  const bitIndexes = new Int32Array(count);
  const callMs = new Float64Array(count);
  const returnMs = new Float64Array(count);
  let requiredCount = 0;
  let optionalCount = 0;
  kept.forEach((entry, index) => {
    kinds[index] = entry.kind;
    args[index] = entry.arg;
    requires[index] = entry.requires;
    classes[index] = entry.opClass;
    bitIndexes[index] = entry.opClass === REQUIRED ? requiredCount++ : optionalCount++;
    callMs[index] = entry.op.callMs;
    returnMs[index] = entry.returnMs;
  });
  return {
    ops: kept.map((entry) => entry.op),
    kinds,
    args,
    requires,
    classes,
    bitIndexes,
    callMs,
    returnMs,
    requiredCount,
    optionalCount,
    initialState,
    stateCount: STATE_FIRST_VALUE + valueIds.size,
    values: [...valueIds.keys()],
    writeVersions,
  };
}

/**
 * The version write `op` was applied at, when the history shows it, else 0: its own ok answer's, or
 * for a put the version a get named for its value (values are unique per put). A version is the
 * index of the write's log entry, so two writes whose versions are known took effect in their
 * versions' order, whatever their intervals: the search, which reads values only, placed two
 * overlapping writes against it, and passed a lost write (a put acknowledged at 6 and a delete at 5,
 * both answered, then a get of nothing) and a delete that said it found a key no write had put there
 * yet (found in a code review).
 */
function writeVersionOf(op: Operation, readVersions: ReadonlyMap<string, number>): number {
  if (op.kind === "get") return 0;
  if (op.outcome === "ok" && op.version !== undefined) return op.version;
  if (op.kind === "put" && op.value !== undefined) return readVersions.get(op.value) ?? 0;
  return 0;
}

/**
 * The register's step function: the state after `op`, or STEP_REJECTED. Beyond the register itself it
 * rejects a write that would overwrite a value some unplaced get still has to read when no unplaced
 * put can write that value again: values are unique, so no completion could place that get. This
 * cuts a wrong early placement of a put at the next write instead of at its reader, far later.
 */
function step(key: PreparedKey, op: number, state: number, readsLeft: Int32Array, writesLeft: Int32Array): number {
  const arg = key.args[op] ?? 0;
  const kind = key.kinds[op];
  if (kind === KIND_GET) return arg === state ? state : STEP_REJECTED;
  const requires = key.requires[op] ?? REQUIRE_ANY;
  if (requires !== REQUIRE_ANY && requires !== state) return STEP_REJECTED;
  if ((readsLeft[state] ?? 0) > 0 && (writesLeft[state] ?? 0) === 0 && state >= STATE_FIRST_VALUE) {
    return STEP_REJECTED;
  }
  switch (kind) {
    case KIND_PUT:
      return arg;
    case KIND_DELETE:
      if (arg === DELETE_UNCHECKED) return STATE_ABSENT;
      return (state !== STATE_ABSENT) === (arg === DELETE_FOUND_PRESENT) ? STATE_ABSENT : STEP_REJECTED;
    default:
      assert(false, `register operation kind ${kind}`);
  }
}

/**
 * A configuration the search has already explored. The required ops' bitset is stored as a window:
 * every word below `lowWord` is full and every word from `lowWord + window.length` on is empty, so a
 * configuration costs a few words however long the history is.
 */
interface CacheEntry {
  readonly hashLow: number;
  readonly state: number;
  readonly lowWord: number;
  readonly window: Uint32Array;
  readonly optional: Uint32Array;
}

/**
 * Porcupine's `checkSingle` on one prepared key, with optional writes in a second list.
 *
 * Entry numbering: entry i is the call of operation i, entry count+i its return (required operations
 * only), entry 2·count heads the required list (calls and returns by time) and 2·count+1 heads the
 * optional list (calls by time). At each search node the walk first tries the required calls before
 * the first return R (phase 1), then the optional calls made before R (phase 2), then backtracks.
 * Trying the earliest-called pending member of an interchangeable optional class is enough: any
 * linearization using others can use the earliest ones instead (each is called no later), so a node
 * tries one per class, and the members used always form a prefix of their class.
 */
function search(key: PreparedKey, budget: Budget): KeyVerdict {
  const count = key.ops.length;
  const requiredHead = 2 * count;
  const optionalHead = 2 * count + 1;
  const none = -1;
  const next = new Int32Array(2 * count + 2).fill(none);
  const prev = new Int32Array(2 * count + 2).fill(none);

  // At equal times calls sort before returns, so operations that touch at one instant count as
  // concurrent: a millisecond clock cannot order them.
  const requiredEvents: number[] = [];
  const optionalCalls: number[] = [];
  for (let op = 0; op < count; op++) {
    if (key.classes[op] === REQUIRED) requiredEvents.push(op, count + op);
    else optionalCalls.push(op);
  }
  const eventTimeMs = (event: number): number =>
    event < count ? (key.callMs[event] ?? 0) : (key.returnMs[event - count] ?? 0);
  requiredEvents.sort((a, b) => eventTimeMs(a) - eventTimeMs(b) || (a < count ? 0 : 1) - (b < count ? 0 : 1) || a - b);
  const link = (head: number, events: readonly number[]): void => {
    let last = head;
    for (const event of events) {
      next[last] = event;
      prev[event] = last;
      last = event;
    }
  };
  link(requiredHead, requiredEvents);
  link(optionalHead, optionalCalls); // Indexes already follow call time.

  const requiredWords = Math.ceil(key.requiredCount / 32);
  const required = new Uint32Array(requiredWords);
  const optional = new Uint32Array(Math.ceil(key.optionalCount / 32));
  const lastWordBits = key.requiredCount % 32;
  const fullWord = (word: number): number =>
    word === requiredWords - 1 && lastWordBits !== 0 ? 0xffffffff >>> (32 - lastWordBits) : 0xffffffff;
  // Invariant: words below lowWord are full; words from highWord on are empty.
  let lowWord = 0;
  let highWord = 0;
  let hashLow = 0;
  let hashHigh = 0;

  const toggle = (op: number): void => {
    const bit = key.bitIndexes[op] ?? 0;
    const word = bit >>> 5;
    const mask = 1 << (bit & 31);
    hashLow ^= zobrist(op, 0x243f6a88);
    hashHigh ^= zobrist(op, 0x85a308d3);
    if (key.classes[op] !== REQUIRED) {
      optional[word] = (optional[word] ?? 0) ^ mask;
      return;
    }
    const after = ((required[word] ?? 0) ^ mask) >>> 0;
    required[word] = after;
    if ((after & mask) !== 0) {
      if (word >= highWord) highWord = word + 1;
      while (lowWord < requiredWords && required[lowWord] === fullWord(lowWord)) lowWord++;
    } else {
      if (word < lowWord) lowWord = word;
      while (highWord > 0 && required[highWord - 1] === 0) highWord--;
    }
  };

  // Per state: unplaced gets that read it, and unplaced puts that write it.
  const readsLeft = new Int32Array(key.stateCount);
  const writesLeft = new Int32Array(key.stateCount);
  const countLeft = (op: number, delta: number): void => {
    const arg = key.args[op] ?? 0;
    if (key.kinds[op] === KIND_GET) readsLeft[arg] = (readsLeft[arg] ?? 0) + delta;
    if (key.kinds[op] === KIND_PUT) writesLeft[arg] = (writesLeft[arg] ?? 0) + delta;
  };
  for (let op = 0; op < count; op++) countLeft(op, 1);

  // Writes of known versions, by version: one may be placed only once every one below it is (its
  // place in `byVersion`, or -1). Which are placed follows from the placed set, so the cache holds.
  const byVersion: number[] = [];
  for (let op = 0; op < count; op++) if ((key.writeVersions[op] ?? 0) > 0) byVersion.push(op);
  byVersion.sort((a, b) => (key.writeVersions[a] ?? 0) - (key.writeVersions[b] ?? 0) || a - b);
  const versionRank = new Int32Array(count).fill(-1);
  byVersion.forEach((op, rank) => (versionRank[op] = rank));
  const versionPlaced = new Uint8Array(byVersion.length);
  /** The rank of the lowest unplaced write of known version (byVersion.length: none). */
  let versionNext = 0;
  const markVersion = (op: number, placed: boolean): void => {
    const rank = versionRank[op] ?? -1;
    if (rank < 0) return;
    versionPlaced[rank] = placed ? 1 : 0;
    if (!placed && rank < versionNext) versionNext = rank;
    while (versionNext < byVersion.length && versionPlaced[versionNext] === 1) versionNext++;
  };

  const cache = new Map<number, CacheEntry[]>();
  let cacheEntries = 0;
  let state = key.initialState;
  /** Records the configuration; false when it was explored before. */
  const remember = (): boolean => {
    const slot = (hashHigh ^ Math.imul(state + 1, 0x9e3779b1)) | 0;
    let bucket = cache.get(slot);
    if (bucket === undefined) {
      bucket = [];
      cache.set(slot, bucket);
    }
    const windowLength = Math.max(0, highWord - lowWord);
    for (const entry of bucket) {
      if (
        entry.hashLow === hashLow &&
        entry.state === state &&
        entry.lowWord === lowWord &&
        entry.window.length === windowLength &&
        sameWords(entry.window, required, lowWord) &&
        sameWords(entry.optional, optional, 0)
      ) {
        return false;
      }
    }
    bucket.push({
      hashLow,
      state,
      lowWord,
      window: required.slice(lowWord, lowWord + windowLength),
      optional: optional.length === 0 ? optional : optional.slice(),
    });
    cacheEntries++;
    return true;
  };

  const unlink = (entry: number): void => {
    const after = next[entry] ?? none;
    const before = prev[entry] ?? none;
    next[before] = after;
    if (after !== none) prev[after] = before;
  };
  // A lifted entry keeps its own links, so re-linking in reverse order of lifting restores the list.
  const relink = (entry: number): void => {
    next[prev[entry] ?? none] = entry;
    const after = next[entry] ?? none;
    if (after !== none) prev[after] = entry;
  };
  const lift = (op: number): void => {
    unlink(op);
    if (key.classes[op] === REQUIRED) unlink(count + op);
  };
  const unlift = (op: number): void => {
    if (key.classes[op] === REQUIRED) relink(count + op);
    relink(op);
  };

  // The search stack: the operation linearized, the state before it, and where its node's walk was.
  const stackOps: number[] = [];
  const stackStates: number[] = [];
  const stackInOptionalPhase: boolean[] = [];
  const stackLimitsMs: number[] = [];
  const stackTriedClasses: number[] = [];
  const stackStuckOps: number[] = [];

  let requiredLeft = key.requiredCount;
  let inOptionalPhase = false;
  let limitMs = 0; // Phase 2: optional calls up to the node's first return R.
  let triedClasses = 0; // Phase 2: interchangeable classes this node has tried.
  let stuckOp = none; // Phase 2: R's operation.
  let deepestPlaced = -1;
  let deepestStuckOp = none;
  let deepestPinnedState = none;
  let stepsSinceClock = 0;

  /** Linearizes `op` next if the register accepts it and the configuration is new. */
  const place = (op: number): boolean => {
    const rank = versionRank[op] ?? -1;
    if (rank >= 0 && rank !== versionNext) return false; // a write of a lower version is not placed yet
    const after = step(key, op, state, readsLeft, writesLeft);
    if (after === STEP_REJECTED) return false;
    const before = state;
    toggle(op);
    state = after;
    if (!remember()) {
      state = before;
      toggle(op);
      return false;
    }
    stackOps.push(op);
    stackStates.push(before);
    stackInOptionalPhase.push(inOptionalPhase);
    stackLimitsMs.push(limitMs);
    stackTriedClasses.push(triedClasses);
    stackStuckOps.push(stuckOp);
    if (key.classes[op] === REQUIRED) requiredLeft--;
    countLeft(op, -1);
    markVersion(op, true);
    lift(op);
    return true;
  };

  let entry = next[requiredHead] ?? none;
  for (;;) {
    // Optional writes never need placing: once every required operation is, the rest may not happen.
    if (requiredLeft === 0) return { kind: "linearizable" };
    budget.stepsLeft--;
    if (budget.stepsLeft < 0 || cacheEntries > cacheEntriesMax) {
      budget.spent ??= budget.stepsLeft < 0 ? "steps" : "memory";
      return { kind: "budget" };
    }
    if (++stepsSinceClock >= clockCheckIntervalSteps) {
      stepsSinceClock = 0;
      if (budget.nowMs() >= budget.deadlineMs) {
        budget.spent ??= "time";
        return { kind: "budget" };
      }
    }

    if (!inOptionalPhase) {
      // Invariant: a required operation's return is still listed, and the walk stops at the first return.
      assert(entry !== none, "walked past every return with required operations left");
      if (entry < count) {
        if (place(entry)) entry = next[requiredHead] ?? none;
        else entry = next[entry] ?? none;
        continue;
      }
      inOptionalPhase = true;
      stuckOp = entry - count;
      limitMs = key.returnMs[stuckOp] ?? 0;
      triedClasses = 0;
      entry = next[optionalHead] ?? none;
      continue;
    }

    if (entry !== none && (key.callMs[entry] ?? 0) <= limitMs) {
      const opClass = key.classes[entry] ?? OPTIONAL_LONE;
      const standIn = opClass !== OPTIONAL_LONE;
      if (!standIn || (triedClasses & opClass) === 0) {
        if (standIn) triedClasses |= opClass;
        if (place(entry)) {
          inOptionalPhase = false;
          entry = next[requiredHead] ?? none;
          continue;
        }
      }
      entry = next[entry] ?? none;
      continue;
    }

    // Nothing at this node leads anywhere new: R cannot be passed from here, so undo the last choice.
    if (stackOps.length > deepestPlaced) {
      deepestPlaced = stackOps.length;
      deepestStuckOp = stuckOp;
      const pinned = (readsLeft[state] ?? 0) > 0 && (writesLeft[state] ?? 0) === 0 && state >= STATE_FIRST_VALUE;
      deepestPinnedState = pinned ? state : none;
    }
    const op = stackOps.pop();
    const before = stackStates.pop();
    if (op === undefined || before === undefined) {
      const stuck = key.ops[deepestStuckOp];
      assert(stuck !== undefined);
      const pinnedValue = deepestPinnedState === none ? undefined : key.values[deepestPinnedState - STATE_FIRST_VALUE];
      return { kind: "violation", stuck, placedCount: deepestPlaced, pinnedValue };
    }
    state = before;
    toggle(op);
    if (key.classes[op] === REQUIRED) requiredLeft++;
    countLeft(op, 1);
    markVersion(op, false);
    unlift(op);
    inOptionalPhase = stackInOptionalPhase.pop() ?? false;
    limitMs = stackLimitsMs.pop() ?? 0;
    triedClasses = stackTriedClasses.pop() ?? 0;
    stuckOp = stackStuckOps.pop() ?? none;
    entry = next[op] ?? none;
  }
}

/** Whether `stored` equals `words` from `offset` on, for stored.length words. */
function sameWords(stored: Uint32Array, words: Uint32Array, offset: number): boolean {
  for (let i = 0; i < stored.length; i++) if (stored[i] !== words[offset + i]) return false;
  return true;
}

/** A fixed pseudo-random 32-bit word per (operation, salt): murmur3's finalizer. */
function zobrist(op: number, salt: number): number {
  let h = Math.imul(op + 1, 0x9e3779b1) ^ salt;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

function byCallTime(a: Operation, b: Operation): number {
  return a.callMs - b.callMs || a.id - b.id;
}

function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list === undefined) map.set(key, [value]);
  else list.push(value);
}
