/**
 * `kv chaos random`: concurrent clients run gets, puts and deletes on a handful of keys against
 * random nodes while a seeded nemesis kills, pauses and partitions nodes, one fault at a time, for as
 * long as the run lasts. The clients move on to fresh keys every so many operations (an epoch); each
 * finished epoch is checked for linearizability on its own while the run goes on, then its history is
 * dropped, so memory and each check stay bounded however long the run. Lost acknowledged writes are
 * covered too: each epoch ends with a linearizable read of each of its keys, recorded in its history.
 * After the run the healed cluster is checked for convergence: every node applies the same index and
 * holds the same value for every key of the last epoch. Only faults that met an operation count.
 */
import { writeFileSync } from "node:fs";
import { assert } from "../lib/assert.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import { readValue, request, type Outcome } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import { checkLinearizable, describeOperation, type CheckResult, type Operation, type OperationKind } from "./linearizability.ts";
import { SeenVersions } from "./history.ts";
import type { LiveDisplay, LoadCounters } from "./live-display.ts";
import { clock, describePlannedFault, Nemesis, planSchedule, type FaultKind, type FaultWindow, type NemesisMode, type PlannedFault } from "./nemesis.ts";
import { renderReport, type ReportCheck } from "./report.tsx";
import { kvPath } from "./write-load.ts";
import { type BankSummary, BankWorkload } from "./bank-workload.ts";
import { findVersionViolation } from "./version-check.ts";
import { parseDuration } from "../lib/duration.ts";

/** How reads are served: `linearizable` (ReadIndex, the default), `lease` (leader lease) or `stale` (local state). */
export type ReadConsistency = "linearizable" | "lease" | "stale";
export const READ_CONSISTENCIES: readonly ReadConsistency[] = ["linearizable", "lease", "stale"];

export interface RandomOptions {
  /** Fixes the nemesis schedule and every client's choices of operation, key and node. */
  readonly seed: number;
  /** How long the clients and the nemesis run. */
  readonly durationMs: number;
  readonly clients: number;
  readonly keys: number;
  readonly readConsistency: ReadConsistency;
  readonly nemesis: NemesisMode;
  /** Per-request client timeout; a request with no answer by then is `unknown`. */
  readonly requestTimeoutMs: number;
  /** The command line that replays this run (same seed, same schedule), printed at start and end. */
  readonly replayCommand: string;
  /** Where to write the HTML report, if anywhere. */
  readonly reportPath?: string;
  /** Wall-clock budget of each epoch's linearizability check. */
  readonly checkTimeBudgetMs?: number;
  /** Search steps each key's check may take (a budget that replays exactly); none by default. */
  readonly checkStepsMax?: number;
  /** Client operations per epoch: the clients move on to fresh keys after this many. Default EPOCH_OPS_DEFAULT. */
  readonly epochOps?: number;
  /** Bank clients (src/chaos/bank-workload.ts) besides the others: multi-key transactions, judged by src/chaos/bank.ts. Default 0. */
  readonly bankClients?: number;
  readonly display: LiveDisplay;
}

/** Share of operations that are gets, and of puts; the rest are deletes. */
const GET_SHARE = 0.5;
const PUT_SHARE = 0.4;
/** A write to a follower is answered 307; the client follows that many redirects itself. */
const REDIRECTS_FOLLOWED_MAX = 1;
/** Pause after a refused or unanswered operation, so a client does not spin on a down node. */
const BACKOFF_MS = 10;
/**
 * Client operations per epoch unless --epoch-ops says otherwise: each key's history (about this over
 * the number of keys) stays short enough for the checker to take a few tens of ms per epoch.
 */
export const EPOCH_OPS_DEFAULT = 10_000;
/** Retired epochs that may wait for their closing reads and check while clients go on; beyond, clients wait. */
const EPOCHS_AWAITING_CHECK_MAX = 2;
/** Epoch summaries kept for the result and the report; beyond, the oldest are dropped (and counted). */
const EPOCH_SUMMARIES_MAX = 1_000;
/** Throughput is counted in at most this many buckets over the duration (at least 1 s each)... */
const THROUGHPUT_BUCKETS_MAX = 600;
/** ...plus a few for operations answered after the duration, while the clients stop. */
const THROUGHPUT_BUCKETS_SLACK = 60;
/** Default wall-clock budget of one epoch's check. */
export const EPOCH_CHECK_BUDGET_MS_DEFAULT = 60_000;
/** How long healing, the final reads and convergence may each take. */
const PHASE_TIMEOUT_MS = 30_000;
/** The client id of the runner's own final reads in the history. */
export const FINAL_READER_ID = 0;

/** The keys of a run: `k0`..`k{n-1}`. */
export function keyNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `k${i}`);
}

/** Parses `60s`, `500ms`, `2m`, `1h` or a bare number of seconds; undefined when it is none of those. */
export function parseDurationMs(text: string): number | undefined {
  const bareSeconds = /^\s*(\d+(?:\.\d+)?)\s*$/.exec(text);
  const parsed = bareSeconds === null ? parseDuration(text) : Number(bareSeconds[1]) * 1_000;
  const ms = parsed === undefined ? undefined : Math.round(parsed);
  return ms !== undefined && Number.isSafeInteger(ms) ? ms : undefined;
}

/** `8s`, `1500ms`: a duration as the --duration flag takes it. */
export function formatDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** What the final check of the healed cluster found. */
export interface Convergence {
  readonly ok: boolean;
  /** Each node's applied index once all agreed. */
  readonly appliedIndex: Record<string, number>;
  /** key → node id → the value it holds locally (null: absent; "(no answer)" when it did not answer). */
  readonly values: Record<string, Record<string, string | null>>;
  readonly problems: string[];
}

export interface RandomResult {
  readonly ok: boolean;
  /** Set when nothing failed but a linearizability check ran out of its budget (the runner exits 3). */
  readonly undecided?: boolean;
  readonly seed: number;
  readonly replay: string;
  readonly durationMs: number;
  readonly clients: number;
  readonly keys: number;
  readonly readConsistency: ReadConsistency;
  readonly nemesis: NemesisMode;
  readonly schedule: PlannedFault[];
  /** Every fault injected, and whether a client operation was in flight during it. */
  readonly faults: (FaultWindow & { readonly metOperations: boolean })[];
  /** Faults that met client operations: the only ones the verdict counts. */
  readonly faultsMet: number;
  /** Every operation of the run, in all epochs. */
  readonly operations: OperationCounts;
  readonly epochOps: number;
  /** How many epochs the run had (the summaries below may omit the oldest of a very long run). */
  readonly epochCount: number;
  readonly epochs: EpochSummary[];
  /** Summaries dropped from `epochs` (the oldest), beyond the number kept. */
  readonly epochsDropped: number;
  /** When the clients stopped, ms on the run's clock. */
  readonly workloadEndMs: number;
  /** The most operations held in memory at once: a few epochs' worth, however long the run. */
  readonly operationsHeldMax: number;
  /** Client operations answered or given up on, per bucket of `bucketMs` from the start of the workload. */
  readonly throughput: { readonly bucketMs: number; readonly completed: number[] };
  /** The last epoch's key → what the final linearizable read returned (undefined when it was never answered). */
  readonly finalReads: Record<string, string | null | undefined>;
  /** Closing linearizable reads of retired epochs that got no answer ("key" each). */
  readonly unansweredClosingReads: string[];
  readonly linearizability: { verdict: CheckResult; checkMs: number; evidence?: string[] };
  /** The bank clients' transfers and reads, and the first broken rule of src/chaos/bank.ts. */
  readonly bank: BankSummary;
  readonly convergence: Convergence;
  readonly reportPath?: string;
}

export interface OperationCounts {
  readonly total: number;
  readonly byKind: Record<OperationKind, number>;
  readonly ok: number;
  readonly failed: number;
  /** Of the refused, compare-and-sets refused 409 whose answer named the key's version: each judged as a read of it. */
  readonly refusedCompareAndSets: number;
  readonly unknown: number;
}

/** Counts a history's operations by kind and outcome. */
export function countOperations(history: readonly Operation[]): OperationCounts {
  const byKind: Record<OperationKind, number> = { get: 0, put: 0, delete: 0 };
  let ok = 0;
  let failed = 0;
  let refusedCompareAndSets = 0;
  let unknown = 0;
  for (const op of history) {
    byKind[op.kind]++;
    if (op.outcome === "ok") ok++;
    else if (op.outcome === "fail") failed++;
    else unknown++;
    if (op.refusedAtVersion !== undefined) refusedCompareAndSets++;
  }
  return { total: history.length, byKind, ok, failed, refusedCompareAndSets, unknown };
}

/** A per-client generator, fixed by the run's seed and the client's id. */
function clientPrng(seed: number, clientId: number): Prng {
  return createPrng((seed ^ Math.imul(clientId + 1, 0x9e3779b9)) >>> 0);
}

/**
 * Whether a client operation was in flight at some instant of a fault window, kept as two numbers so
 * that a run of any length needs no history for it: how many client operations are in flight now, and
 * the latest time one ended. Asked when a window closes (`endMs` is now): a window met an operation
 * exactly when one is still in flight (it began before now) or one ended at or after the window began.
 */
export class OperationActivity {
  private inFlight = 0;
  private lastEndMs = Number.NEGATIVE_INFINITY;

  /** A client operation was called. */
  begin(): void {
    this.inFlight++;
  }

  /** A client operation was answered or given up on at `endMs`. */
  end(endMs: number): void {
    assert(this.inFlight > 0, "an operation ended that never began");
    this.inFlight--;
    this.lastEndMs = Math.max(this.lastEndMs, endMs);
  }

  /** Whether a window that closes now met an operation. */
  metBy(window: { readonly startMs: number; readonly endMs: number }): boolean {
    return this.inFlight > 0 || this.lastEndMs >= window.startMs;
  }
}

/**
 * One epoch of a run: the clients' operations on its own keys, from the first call that found the
 * previous epoch full to the last answer. Its keys are never used again once it is retired, so once its
 * operations are all answered or given up on (an unknown write may still take effect later, which the
 * checker allows for) and its keys read once more, its history is complete and can be checked alone.
 */
interface Epoch {
  readonly index: number;
  readonly keys: readonly string[];
  readonly history: Operation[];
  /** When the client gave up on each unknown operation (for drawing; the checker ignores it). */
  readonly gaveUpMs: Map<number, number>;
  /** Operations the clients started in it (the closing reads are not counted). */
  clientOperations: number;
  /** Operations started and not yet answered or given up on. */
  inFlight: number;
  startMs: number;
  endMs: number;
  /** Set once it is retired; resolved when it is retired and nothing is in flight. */
  drained: Promise<void> | undefined;
  resolveDrained: (() => void) | undefined;
}

/** What one finished epoch came to: all that is kept of it once its history is dropped. */
export interface EpochSummary {
  readonly index: number;
  readonly keys: readonly string[];
  /** The first call and the last answer (or give-up) of its operations, ms on the run's clock. */
  readonly startMs: number;
  readonly endMs: number;
  /** Every operation it recorded: the clients' and the closing (or, for the last, final) reads. */
  readonly operations: number;
  /** Operations the clients made in it. */
  readonly clientOperations: number;
  readonly ok: number;
  readonly failed: number;
  readonly unknown: number;
  /** Keys whose closing linearizable read got no answer (the run fails then). */
  readonly unansweredReads: readonly string[];
  readonly verdict: "linearizable" | "not linearizable" | "undecided";
  readonly checkMs: number;
  /** When its check finished, ms on the run's clock: before the workload ended for all but the last few. */
  readonly checkedAtMs: number;
  /** Fault windows that overlapped its span. */
  faults: number;
}

/** The names of an epoch's keys: `k0`..`k{n-1}` in epoch 0, `k0-e7`..`k{n-1}-e7` in epoch 7. */
export function epochKeyNames(count: number, epoch: number): string[] {
  return keyNames(count).map((key) => (epoch === 0 ? key : `${key}-e${epoch}`));
}

/** `k0..k4`, `k0-e3..k4-e3`: an epoch's keys in a few characters. */
function describeKeys(keys: readonly string[]): string {
  return keys.length <= 2 ? keys.join(", ") : `${keys[0]}..${keys[keys.length - 1]}`;
}

/** The run's checks of linearizability, combined: the first violation, else undecided, else linearizable. */
function combineVerdicts(verdicts: readonly CheckResult[]): CheckResult {
  const violation = verdicts.find((v) => v.ok === false);
  if (violation !== undefined) return violation;
  const undecided = verdicts.find((v) => v.ok === "unknown");
  if (undecided !== undefined) return undecided;
  return { ok: true, keysChecked: verdicts.reduce((n, v) => n + (v.ok === true ? v.keysChecked : 0), 0) };
}

/** Yields to the event loop, so that clients' answers are taken in between two keys' checks. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Checks one epoch's history key by key (the checker treats keys independently), yielding between
 * keys so the clients of the next epoch keep running; `budgetMs` bounds the whole epoch's check,
 * `stepsMax` (when given) each key's search.
 */
export async function checkEpoch(history: readonly Operation[], budgetMs: number, stepsMax?: number): Promise<CheckResult> {
  // Versions are the log's indexes, shared by every key: their order is checked over the whole epoch.
  const versions = findVersionViolation(history);
  if (versions !== undefined) return versions;
  const byKey = new Map<string, Operation[]>();
  for (const op of history) {
    const ops = byKey.get(op.key);
    if (ops === undefined) byKey.set(op.key, [op]);
    else ops.push(op);
  }
  // Cheap keys first, as the checker itself does, so a definite violation is found early.
  const keys = [...byKey.keys()].sort((a, b) => (byKey.get(a)?.length ?? 0) - (byKey.get(b)?.length ?? 0) || (a < b ? -1 : 1));
  const deadlineMs = performance.now() + budgetMs;
  const verdicts: CheckResult[] = [];
  for (const key of keys) {
    // Each key is given what is left of the epoch's time: a verdict out of time names the epoch's whole budget.
    const verdict = checkLinearizable(byKey.get(key) ?? [], {
      timeBudgetMs: Math.max(1, deadlineMs - performance.now()),
      timeBudgetName: `the epoch's ${budgetMs.toLocaleString("en-US")} ms (--check-budget)`,
      ...(stepsMax === undefined ? {} : { searchStepsMax: stepsMax }),
    });
    if (verdict.ok === false) return verdict;
    verdicts.push(verdict);
    await yieldToEventLoop();
  }
  return combineVerdicts(verdicts);
}

/** What the workload needs besides the cluster. */
interface WorkloadOptions {
  readonly seed: number;
  readonly clients: number;
  readonly keyCount: number;
  readonly epochOps: number;
  readonly readConsistency: ReadConsistency;
  readonly requestTimeoutMs: number;
  readonly durationMs: number;
  readonly checkTimeBudgetMs: number;
  readonly checkStepsMax: number | undefined;
  readonly nowMs: () => number;
  readonly print: (line: string) => void;
}

/**
 * The epochs' summaries kept for the result and the report: the newest `max`, the oldest dropped
 * (and counted) beyond. What a dropped summary's closing reads left unanswered is kept apart: a very
 * long run forgot it and passed with an old epoch's key never read again (found in a code review).
 */
export class EpochSummaries {
  readonly kept: EpochSummary[] = [];
  /** Summaries dropped beyond `max`. */
  dropped = 0;
  private readonly droppedUnansweredReads: string[] = [];

  constructor(private readonly max = EPOCH_SUMMARIES_MAX) {}

  add(summary: EpochSummary): void {
    this.kept.push(summary);
    if (this.kept.length <= this.max) return;
    const oldest = this.kept.shift();
    this.droppedUnansweredReads.push(...(oldest?.unansweredReads ?? []));
    this.dropped++;
  }

  /** The keys whose closing read had no answer, in every epoch but `lastIndex` (the runner reads that one's keys itself). */
  unansweredClosingReads(lastIndex: number): string[] {
    return [...this.droppedUnansweredReads, ...this.kept.filter((summary) => summary.index !== lastIndex).flatMap((summary) => summary.unansweredReads)];
  }
}

/**
 * The clients of a run and the history they record, one epoch at a time. Each client sends one
 * operation at a time to a node it picks at random (a dead node is skipped; a paused or isolated one
 * is not), and follows a 307 to the leader itself, once; the operation spans from before its first
 * request to after its final answer. A refusal (307 not followed, 503 `no_leader`, 4xx) is `fail`: no
 * request of it was proposed. An answer that never came, or a 503 `timeout`, is `unknown` — also after
 * a followed redirect, since the second request may have been proposed.
 *
 * Every `epochOps` client operations the clients move on to fresh keys. A retired epoch is closed
 * while the clients go on: once its operations are answered or given up on, the runner reads each of
 * its keys linearizably through the leader (recorded in its history, so an acknowledged write lost at
 * its very end is caught), checks its history and drops it, keeping a small summary.
 *
 * Invariant: at most EPOCHS_AWAITING_CHECK_MAX retired epochs wait to be closed; when the checker falls
 * that far behind, clients wait for it rather than hold more history. So memory holds at most
 * EPOCHS_AWAITING_CHECK_MAX + 1 epochs of operations (plus one failing epoch, kept for the report).
 */
class RandomWorkload implements LoadCounters {
  ok = 0;
  failed = 0;
  refusedCompareAndSets = 0;
  unknown = 0;
  readonly byKind: Record<OperationKind, number> = { get: 0, put: 0, delete: 0 };
  readonly activity = new OperationActivity();
  /** Epochs retired and not yet closed, oldest first. */
  private readonly retired: Epoch[] = [];
  current: Epoch;
  readonly summaries = new EpochSummaries();
  readonly verdicts: CheckResult[] = [];
  checkMs = 0;
  /** The first epoch whose check did not say linearizable, with its history (for evidence and report). */
  failing: { epoch: Epoch; verdict: CheckResult } | undefined;
  operationsHeld = 0;
  operationsHeldMax = 0;
  /** Client operations answered or given up on, per `throughputBucketMs` of the run's clock. */
  readonly throughput: number[] = [];
  readonly throughputBucketMs: number;
  private nextId = 1;
  private stopping = false;
  private running: Promise<void>[] = [];
  private closer: Promise<void> = Promise.resolve();
  /** Wakes whoever waits for an epoch to be retired or closed (the closer, clients at the limit). */
  private changed: { promise: Promise<void>; resolve: () => void };

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly opts: WorkloadOptions,
  ) {
    this.current = this.newEpoch(0);
    this.changed = signal();
    this.throughputBucketMs = Math.max(1_000, Math.ceil(opts.durationMs / THROUGHPUT_BUCKETS_MAX / 1_000) * 1_000);
  }

  /** Every operation recorded so far, in all epochs. */
  get total(): number {
    return this.ok + this.failed + this.unknown;
  }

  counts(): OperationCounts {
    return { total: this.total, byKind: { ...this.byKind }, ok: this.ok, failed: this.failed, refusedCompareAndSets: this.refusedCompareAndSets, unknown: this.unknown };
  }

  /** How many epochs the run has had so far. */
  get epochCount(): number {
    return this.current.index + 1;
  }

  start(): void {
    this.running = Array.from({ length: this.opts.clients }, (_, i) => this.client(i + 1));
    this.closer = this.closeRetired();
  }

  /**
   * Stops starting operations, waits for those in flight to be answered or given up on, and closes
   * every retired epoch. The current epoch stays open: the runner closes it with the final reads.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake();
    await Promise.all(this.running);
    await this.closer;
  }

  private newEpoch(index: number): Epoch {
    return {
      index,
      keys: epochKeyNames(this.opts.keyCount, index),
      history: [],
      gaveUpMs: new Map(),
      clientOperations: 0,
      inFlight: 0,
      startMs: Number.POSITIVE_INFINITY,
      endMs: Number.NEGATIVE_INFINITY,
      drained: undefined,
      resolveDrained: undefined,
    };
  }

  private wake(): void {
    const { resolve } = this.changed;
    this.changed = signal();
    resolve();
  }

  /** The epoch the next client operation belongs to, rotating when it is full; undefined: wait. */
  private epochWithRoom(): Epoch | undefined {
    if (this.current.clientOperations < this.opts.epochOps) return this.current;
    if (this.retired.length >= EPOCHS_AWAITING_CHECK_MAX) return undefined;
    const full = this.current;
    full.drained = new Promise((resolve) => {
      full.resolveDrained = resolve;
    });
    if (full.inFlight === 0) full.resolveDrained?.();
    this.retired.push(full);
    this.current = this.newEpoch(full.index + 1);
    this.wake();
    return this.current;
  }

  /** True when a node can be sent requests: running or paused (a paused one just will not answer). */
  private reachable(id: number): boolean {
    const state = this.cluster.node(id).state;
    return state === "running" || state === "paused";
  }

  private pickNode(prng: Prng): number | undefined {
    const ids = this.cluster.nodes.map((n) => n.id);
    const preferred = prng.pick(ids);
    if (this.reachable(preferred)) return preferred;
    const reachable = ids.filter((id) => this.reachable(id));
    return reachable.length === 0 ? undefined : reachable[preferred % reachable.length];
  }

  private async client(clientId: number): Promise<void> {
    const prng = clientPrng(this.opts.seed, clientId);
    let writes = 0;
    const seen = new SeenVersions();
    while (!this.stopping) {
      const epoch = this.epochWithRoom();
      if (epoch === undefined) {
        await this.changed.promise; // the checker is behind: wait for it to close an epoch
        continue;
      }
      const roll = prng.next();
      const kind: OperationKind = roll < GET_SHARE ? "get" : roll < GET_SHARE + PUT_SHARE ? "put" : "delete";
      const key = prng.pick(epoch.keys);
      const node = this.pickNode(prng);
      if (node === undefined) {
        await Bun.sleep(BACKOFF_MS); // every node is down: cannot happen with one fault at a time
        continue;
      }
      // Unique in the whole run: the checker relies on it.
      const value = kind === "put" ? `c${clientId}-w${++writes}` : undefined;
      const ifVersion = seen.ifVersionFor(kind, key, (p) => prng.chance(p));
      const op = await this.perform(epoch, clientId, kind, key, value, node, this.opts.readConsistency, ifVersion);
      seen.note(op);
      if (op.outcome !== "ok" && !this.stopping) await Bun.sleep(BACKOFF_MS);
    }
  }

  /** The reachable node whose client URL a Location header points at. */
  private nodeAt(location: string | undefined): number | undefined {
    if (location === undefined) return undefined;
    return this.cluster.nodes.find((n) => this.reachable(n.id) && n.httpUrl !== "" && location.startsWith(`${n.httpUrl}/`))?.id;
  }

  /** Runs one operation from `node` on, records it in `epoch`'s history and returns it. */
  async perform(
    epoch: Epoch,
    clientId: number,
    kind: OperationKind,
    key: string,
    value: string | undefined,
    node: number,
    consistency: ReadConsistency,
    ifVersion?: number,
  ): Promise<Operation> {
    assert(epoch.keys.includes(key), `key ${key} is not one of epoch ${epoch.index}'s`);
    const isClient = clientId !== FINAL_READER_ID;
    if (isClient) {
      epoch.clientOperations++;
      this.activity.begin();
    }
    epoch.inFlight++;
    const id = this.nextId++;
    const method = kind === "get" ? "GET" : kind === "put" ? "PUT" : "DELETE";
    const path = kind === "get" ? `${kvPath(key)}?consistency=${consistency}` : ifVersion === undefined ? kvPath(key) : `${kvPath(key)}?ifVersion=${ifVersion}`;
    // Floor the call and ceil the return: the recorded interval contains the real one.
    const callMs = Math.floor(this.opts.nowMs());
    let target = node;
    let outcome: Outcome;
    for (let hop = 0; ; hop++) {
      outcome = await request(this.cluster.node(target).httpUrl, method, path, value, this.opts.requestTimeoutMs);
      // Only a 307 is followed: every earlier answer was then a refusal before proposing.
      if (outcome.kind !== "fail" || outcome.status !== 307 || hop >= REDIRECTS_FOLLOWED_MAX) break;
      const next = this.nodeAt(outcome.location);
      if (next === undefined) break;
      target = next;
    }
    const endMs = Math.ceil(this.opts.nowMs());
    const op = toOperation({ id, clientId, kind, key, value, callMs, endMs, ...(ifVersion === undefined ? {} : { ifVersion }) }, outcome);
    if (op.outcome === "unknown") epoch.gaveUpMs.set(id, endMs);
    if (op.outcome === "ok") this.ok++;
    else if (op.outcome === "fail") this.failed++;
    else this.unknown++;
    if (op.refusedAtVersion !== undefined) this.refusedCompareAndSets++;
    this.byKind[kind]++;
    epoch.history.push(op);
    epoch.startMs = Math.min(epoch.startMs, callMs);
    epoch.endMs = Math.max(epoch.endMs, endMs);
    this.operationsHeld++;
    this.operationsHeldMax = Math.max(this.operationsHeldMax, this.operationsHeld);
    if (isClient) {
      this.activity.end(endMs);
      const bucket = Math.min(Math.floor(endMs / this.throughputBucketMs), THROUGHPUT_BUCKETS_MAX + THROUGHPUT_BUCKETS_SLACK);
      while (this.throughput.length <= bucket) this.throughput.push(0);
      this.throughput[bucket] = (this.throughput[bucket] ?? 0) + 1;
    }
    epoch.inFlight--;
    if (epoch.inFlight === 0) epoch.resolveDrained?.();
    return op;
  }

  /** Closes retired epochs in order as they drain, until stopped with none left. */
  private async closeRetired(): Promise<void> {
    for (;;) {
      const epoch = this.retired[0];
      if (epoch === undefined) {
        if (this.stopping) return;
        await this.changed.promise;
        continue;
      }
      await epoch.drained;
      const unanswered: string[] = [];
      for (const key of epoch.keys) if ((await this.readKey(epoch, key)) === undefined) unanswered.push(key);
      await this.check(epoch, unanswered);
      this.retired.shift();
      this.wake();
    }
  }

  /** A linearizable read of `key` through the leader, retried until answered; recorded in `epoch`. */
  async readKey(epoch: Epoch, key: string): Promise<string | null | undefined> {
    const deadlineMs = performance.now() + PHASE_TIMEOUT_MS;
    while (performance.now() < deadlineMs) {
      const leader = await this.cluster.waitForLeader(undefined, Math.max(1, deadlineMs - performance.now())).catch(() => undefined);
      if (leader === undefined) return undefined;
      const op = await this.perform(epoch, FINAL_READER_ID, "get", key, undefined, leader, "linearizable");
      if (op.outcome === "ok") return op.output;
      await Bun.sleep(BACKOFF_MS); // leadership moved under the read: ask again
    }
    return undefined;
  }

  /**
   * Checks a finished epoch (nothing in flight, its keys read once more), keeps its summary, and
   * drops its history, unless it is the first that is not linearizable: that one is kept for the report.
   */
  async check(epoch: Epoch, unansweredReads: readonly string[]): Promise<EpochSummary> {
    assert(epoch.inFlight === 0, `epoch ${epoch.index} is checked with operations in flight`);
    const startedMs = performance.now();
    const verdict = await checkEpoch(epoch.history, this.opts.checkTimeBudgetMs, this.opts.checkStepsMax);
    const checkMs = Math.round(performance.now() - startedMs);
    this.checkMs += checkMs;
    this.verdicts.push(verdict);
    const counts = countOperations(epoch.history);
    const summary: EpochSummary = {
      index: epoch.index,
      keys: epoch.keys,
      startMs: Number.isFinite(epoch.startMs) ? epoch.startMs : 0,
      endMs: Number.isFinite(epoch.endMs) ? epoch.endMs : 0,
      operations: counts.total,
      clientOperations: epoch.clientOperations,
      ok: counts.ok,
      failed: counts.failed,
      unknown: counts.unknown,
      unansweredReads,
      verdict: verdict.ok === true ? "linearizable" : verdict.ok === false ? "not linearizable" : "undecided",
      checkMs,
      checkedAtMs: Math.round(this.opts.nowMs()),
      faults: 0,
    };
    this.summaries.add(summary);
    // The first epoch that is not linearizable keeps its history for the report; a violation found
    // later replaces an undecided one. Every other epoch's history goes with it now.
    const failing = this.failing;
    if (verdict.ok !== true && (failing === undefined || (failing.verdict.ok === "unknown" && verdict.ok === false))) {
      if (failing !== undefined) this.operationsHeld -= failing.epoch.history.length;
      this.failing = { epoch, verdict };
    } else {
      this.operationsHeld -= epoch.history.length;
    }
    const unansweredNote = unansweredReads.length === 0 ? "" : `; closing read unanswered: ${unansweredReads.join(", ")}`;
    this.opts.print(
      `${clock(this.opts.nowMs())} epoch ${epoch.index} checked: ${counts.total} operations on ${describeKeys(epoch.keys)}, ` +
        `${summary.verdict} (${checkMs} ms)${unansweredNote}`,
    );
    return summary;
  }

  /** The run's verdict over every epoch checked. */
  verdict(): CheckResult {
    return this.failing?.verdict ?? combineVerdicts(this.verdicts);
  }
}

/** A promise with its resolver. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** The history entry for an operation whose last answer was `outcome`. */
export function toOperation(
  call: { id: number; clientId: number; kind: OperationKind; key: string; value: string | undefined; callMs: number; endMs: number; ifVersion?: number },
  outcome: Outcome,
): Operation {
  const base = {
    id: call.id,
    clientId: call.clientId,
    kind: call.kind,
    key: call.key,
    callMs: call.callMs,
    ...(call.value === undefined ? {} : { value: call.value }),
    ...(call.ifVersion === undefined ? {} : { ifVersion: call.ifVersion }),
  };
  const version = outcome.kind === "ok" && outcome.version !== undefined && Number.isSafeInteger(outcome.version) ? { version: outcome.version } : {};
  switch (outcome.kind) {
    case "unknown":
      return { ...base, outcome: "unknown" };
    case "fail":
      // A compare-and-set refused where it applied read the key there (judged as a get of it).
      if (call.ifVersion !== undefined && outcome.keyVersion !== undefined) return { ...base, outcome: "fail", returnMs: call.endMs, refusedAtVersion: outcome.keyVersion };
      return { ...base, outcome: "fail", returnMs: call.endMs };
    case "ok": {
      if (call.kind === "get") return { ...base, outcome: "ok", returnMs: call.endMs, output: readValue(outcome) ?? null, ...version };
      if (call.kind === "delete") {
        let deleted: boolean | undefined;
        try {
          const parsed = JSON.parse(new TextDecoder().decode(outcome.body)) as { deleted?: unknown };
          if (typeof parsed.deleted === "boolean") deleted = parsed.deleted;
        } catch {
          // no JSON body: the answer does not say whether the key was there
        }
        return { ...base, outcome: "ok", returnMs: call.endMs, ...(deleted === undefined ? {} : { deleted }), ...version };
      }
      return { ...base, outcome: "ok", returnMs: call.endMs, ...version };
    }
  }
}

/** Restores every link, resumes every paused node and starts every dead one. */
async function makeWhole(cluster: ChaosCluster): Promise<void> {
  cluster.heal();
  for (const node of cluster.nodes) if (node.state === "paused") cluster.signal(node.id, "SIGCONT");
  await Promise.all(cluster.nodes.filter((n) => n.state === "dead").map((n) => cluster.startNode(n.id)));
}

/**
 * The random scenario: start the cluster, run clients and nemesis for the duration, heal, read every
 * key linearizably (into the history), check convergence, check the history. See the file comment.
 */
export async function runRandom(cluster: ChaosCluster, opts: RandomOptions): Promise<RandomResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const schedule = planSchedule({ seed: opts.seed, durationMs: opts.durationMs, nodeCount: cluster.nodes.length, mode: opts.nemesis });

  print(`Seed: ${opts.seed} (replay: ${opts.replayCommand})`);
  print(`Nemesis schedule (${opts.nemesis}): ${schedule.length} fault${schedule.length === 1 ? "" : "s"}`);
  for (const planned of schedule) print(`         ${describePlannedFault(planned)}`);
  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  print(`         Leader elected: Node ${await cluster.waitForLeader(undefined, 20_000)}`);

  print(
    `[Step 3] ${opts.clients} clients on ${opts.keys} keys against random nodes for ${formatDuration(opts.durationMs)} ` +
      `(reads: ${opts.readConsistency}), nemesis: ${opts.nemesis}; fresh keys every ${opts.epochOps ?? EPOCH_OPS_DEFAULT} operations` +
      `${(opts.bankClients ?? 0) === 0 ? "" : `; ${opts.bankClients} bank clients on fresh accounts every ${bankRoundOps(opts.epochOps ?? EPOCH_OPS_DEFAULT)} turns`}...`,
  );
  const startedMs = performance.now();
  const nowMs = () => performance.now() - startedMs;
  const epochOps = opts.epochOps ?? EPOCH_OPS_DEFAULT;
  const workload = new RandomWorkload(cluster, {
    seed: opts.seed,
    clients: opts.clients,
    keyCount: opts.keys,
    epochOps,
    readConsistency: opts.readConsistency,
    requestTimeoutMs: opts.requestTimeoutMs,
    durationMs: opts.durationMs,
    checkTimeBudgetMs: opts.checkTimeBudgetMs ?? EPOCH_CHECK_BUDGET_MS_DEFAULT,
    checkStepsMax: opts.checkStepsMax,
    nowMs,
    print,
  });
  // A fault counts only when a client operation was in flight during it; asked as each window closes.
  const faultsMetOperations = new Set<number>();
  const nemesis = new Nemesis(cluster, {
    schedule,
    nowMs,
    display,
    onHealed: (window) => {
      if (workload.activity.metBy(window)) faultsMetOperations.add(window.index);
    },
  });
  const bankWorkload = new BankWorkload(cluster, {
    seed: opts.seed,
    clients: opts.bankClients ?? 0,
    roundOps: bankRoundOps(epochOps),
    requestTimeoutMs: opts.requestTimeoutMs,
    listConsistency: opts.readConsistency,
    nowMs,
    print,
  });
  display.track(() => workload);
  workload.start();
  bankWorkload.start();
  nemesis.start();
  await Bun.sleep(opts.durationMs); // the run's length: a timer, not a condition
  const faultWindows = await nemesis.stop();
  await workload.stop();
  // Its last round is closed by reads through the leader: after the nemesis, before healing ends them.
  const bank = await bankWorkload.stop();
  const workloadEndMs = Math.ceil(nowMs());
  display.untrack();
  print(`${clock(workloadEndMs)} clients stopped: ${describeCounts(workload.counts())} in ${workload.epochCount} epoch${workload.epochCount === 1 ? "" : "s"}`);

  print("[Step 4] Healing: every link restored, every node running...");
  await makeWhole(cluster);

  const lastEpoch = workload.current;
  const keys = lastEpoch.keys;
  print(`[Step 5] Reading every key of the last epoch (${describeKeys(keys)}) linearizably through the leader (recorded in the history)...`);
  const finalReads: Record<string, string | null | undefined> = {};
  const unanswered: string[] = [];
  for (const key of keys) {
    const read = await workload.readKey(lastEpoch, key);
    finalReads[key] = read;
    if (read === undefined) unanswered.push(key);
  }
  print(`         ${keys.map((key) => `${key}=${finalReads[key] === undefined ? "(no answer)" : JSON.stringify(finalReads[key])}`).join(" ")}`);

  print("[Step 6] Waiting until every node applies the same index, then reading every key on each (stale reads)...");
  const convergence = await checkConvergence(cluster, keys);
  print(`         Applied index per node: ${Object.entries(convergence.appliedIndex).map(([id, index]) => `node ${id}: ${index}`).join(", ")}`);

  print(`[Step 7] Checking the last epoch's ${lastEpoch.history.length} operations for linearizability...`);
  await workload.check(lastEpoch, unanswered);
  const verdict = workload.verdict();
  const checkMs = workload.checkMs;
  const epochs = workload.summaries.kept;
  for (const epoch of epochs) epoch.faults = faultWindows.filter((f) => f.startMs <= epoch.endMs && f.endMs >= epoch.startMs).length;
  const faults = faultWindows.map((f) => ({ ...f, metOperations: faultsMetOperations.has(f.index) }));
  const faultsMet = faults.filter((f) => f.metOperations).length;
  const unansweredClosingReads = workload.summaries.unansweredClosingReads(lastEpoch.index);
  const counts = workload.counts();

  print("");
  print("=== Results ===");
  print(`Seed: ${opts.seed}`);
  print(`Operations: ${describeCounts(counts)}`);
  print(`Epochs: ${workload.epochCount} of ${epochOps} client operations each (the last one partial), each checked on its own`);
  print(`Faults injected: ${faults.length}${faults.length === 0 ? "" : ` (${describeFaultKinds(faults)})`}; met by operations: ${faultsMet}`);
  if (unansweredClosingReads.length > 0) print(`Closing reads of retired epochs unanswered: ${unansweredClosingReads.join(", ")}`);
  print(`Final linearizable reads answered: ${keys.length - unanswered.length} of ${keys.length}${unanswered.length === 0 ? "" : ` (no answer: ${unanswered.join(", ")})`}`);
  const evidence = verdict.ok === false ? verdict.evidence.map(describeOperation) : undefined;
  printVerdict(verdict, checkMs, workload.epochCount, print);
  const bankOk = bank.violation === undefined && bank.unansweredClosingReads === 0;
  if (bank.clients > 0) {
    print(`Bank: ${bankOk ? "✅" : "❌"} ${describeBank(bank)}`);
    if (bank.violation !== undefined) for (const line of bank.violation.evidence) print(`  ${line}`);
  }
  if (convergence.ok) {
    print(`Convergence: ✅ all ${cluster.nodes.length} nodes applied index ${Object.values(convergence.appliedIndex)[0]} and hold the same value for each of the ${keys.length} keys`);
  } else {
    print("Convergence: ❌ the replicas disagree");
    for (const problem of convergence.problems.slice(0, 20)) print(`  ${problem}`);
  }

  for (const exit of cluster.unexpectedExits) {
    print(`Node ${exit.id} exited on its own (code ${exit.code}${exit.signal === undefined ? "" : `, ${exit.signal}`}): see ${cluster.node(exit.id).logFile}`);
  }
  // Every check but linearizability's: with it, the run passed; with it undecided, the run is (once the report is written).
  const othersOk = bankOk && convergence.ok && unanswered.length === 0 && unansweredClosingReads.length === 0 && cluster.unexpectedExits.length === 0;
  const ok = verdict.ok === true && othersOk;
  let reportPath: string | undefined;
  if (opts.reportPath !== undefined) {
    const checks: ReportCheck[] = [
      {
        name: "Final linearizable reads",
        ok: unanswered.length === 0,
        detail: keys.map((key) => `${key}=${finalReads[key] === undefined ? "(no answer)" : JSON.stringify(finalReads[key])}`).join("  "),
      },
      {
        name: "Closing reads of retired epochs",
        ok: unansweredClosingReads.length === 0,
        detail: unansweredClosingReads.length === 0 ? `every key of ${workload.epochCount - 1} retired epochs read once more` : `no answer: ${unansweredClosingReads.join(", ")}`,
      },
      // With its evidence, as the text output lists it (found in a black-box review: only the verdict's line was in the report).
      ...(bank.clients === 0 ? [] : [{ name: "Bank transfers (multi-key transactions)", ok: bankOk, detail: [describeBank(bank), ...(bank.violation?.evidence ?? []).map((line) => `  ${line}`)].join("\n") }]),
      {
        name: "Convergence",
        ok: convergence.ok,
        detail: convergence.ok
          ? `every node applied index ${Object.values(convergence.appliedIndex)[0]} and holds the same value for every key`
          : convergence.problems.join("\n"),
      },
    ];
    // The report details one epoch: the first that is not linearizable, else the last.
    const detail = workload.failing?.epoch ?? lastEpoch;
    const detailStartMs = Number.isFinite(detail.startMs) ? detail.startMs : 0;
    const detailEndMs = Math.max(detailStartMs + 1, Number.isFinite(detail.endMs) ? detail.endMs : workloadEndMs);
    const html = renderReport({
      title: `kv chaos random, seed ${opts.seed}`,
      subtitle: `${opts.clients} clients, ${opts.keys} keys per epoch, ${formatDuration(opts.durationMs)}, reads: ${opts.readConsistency}, nemesis: ${opts.nemesis}`,
      replayCommand: opts.replayCommand,
      generatedAt: new Date().toISOString(),
      startMs: detailStartMs,
      endMs: detailEndMs,
      history: detail.history,
      gaveUpMs: detail.gaveUpMs,
      clientLabels: new Map([[FINAL_READER_ID, "runner"]]),
      faults: faults
        .filter((f) => f.startMs <= detailEndMs && f.endMs >= detailStartMs)
        .map((f) => ({ startMs: f.startMs, endMs: f.endMs, kind: f.kind, label: f.description })),
      verdict,
      checkMs,
      checks,
      ...failedRunBanner(verdict.ok, othersOk, checks),
      operationsTotal: counts.total,
      epochCount: workload.epochCount,
      epochs: epochs.map((e) => ({
        index: e.index,
        keys: describeKeys(e.keys),
        startMs: e.startMs,
        endMs: e.endMs,
        operations: e.operations,
        ok: e.ok,
        failed: e.failed,
        unknown: e.unknown,
        faults: e.faults,
        verdict: e.verdict,
        checkMs: e.checkMs,
      })),
      detailNote:
        `Timeline and latency show epoch ${detail.index} of ${workload.epochCount} ` +
        `(${detail === lastEpoch ? "the last" : "the first that is not linearizable"}); the table lists every epoch` +
        (workload.summaries.dropped === 0 ? "." : ` but the ${workload.summaries.dropped} oldest.`),
    });
    try {
      writeFileSync(opts.reportPath, html);
      reportPath = opts.reportPath;
      print(`Report written to ${opts.reportPath} (${Math.round(html.length / 1024)} KiB)`);
    } catch (error) {
      print(`❌ ERROR: could not write the report ${opts.reportPath}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  const reportOk = opts.reportPath === undefined || reportPath !== undefined;
  const allOk = ok && reportOk;
  // Nothing failed but the check gave up: no anomaly was found, and none was ruled out either.
  const undecided = verdict.ok === "unknown" && othersOk && reportOk;
  print("");
  print(
    allOk
      ? successLine({ operations: counts.total, epochs: workload.epochCount, faultsMet, faultsInjected: faults.length })
      : undecided
        ? `⚠️  UNDECIDED: no anomaly found, but the linearizability check ran out of its budget (above), so that part of the history is not proven; give it more (${opts.checkStepsMax === undefined ? "--check-budget" : `--check-steps, set to ${opts.checkStepsMax} here, or --check-budget`}), or keep it small with fewer writes of a key in flight at once (more --keys, fewer --clients)`
        : "❌ FAILURE: see the evidence above",
  );
  print(`Replay this schedule: ${opts.replayCommand}`);
  return {
    ok: allOk,
    ...(undecided ? { undecided } : {}),
    seed: opts.seed,
    replay: opts.replayCommand,
    durationMs: opts.durationMs,
    clients: opts.clients,
    keys: opts.keys,
    readConsistency: opts.readConsistency,
    nemesis: opts.nemesis,
    schedule,
    faults,
    faultsMet,
    operations: counts,
    epochOps,
    epochCount: workload.epochCount,
    epochs,
    epochsDropped: workload.summaries.dropped,
    workloadEndMs,
    operationsHeldMax: workload.operationsHeldMax,
    throughput: { bucketMs: workload.throughputBucketMs, completed: workload.throughput },
    finalReads,
    unansweredClosingReads,
    linearizability: { verdict, checkMs, ...(evidence === undefined ? {} : { evidence }) },
    bank,
    convergence,
    ...(reportPath === undefined ? {} : { reportPath }),
  };
}

/** The bank clients' turns per round: a fifth of an epoch's operations (they are fewer, and each turn may be two calls). */
function bankRoundOps(epochOps: number): number {
  return Math.max(20, Math.floor(epochOps / 5));
}

/** One line on the bank clients' run: what they did, and what the checker found. */
function describeBank(bank: BankSummary): string {
  const verdict =
    bank.violation !== undefined
      ? `VIOLATION in round ${bank.violation.round}: ${bank.violation.reason}`
      : bank.unansweredClosingReads > 0
        ? `${bank.unansweredClosingReads} round${bank.unansweredClosingReads === 1 ? "'s" : "s'"} closing read unanswered`
        : "no money made or lost, no transaction seen in part, no stale read";
  return `${bank.transfers} transfers by ${bank.clients} clients (${bank.transfersApplied} applied, ${bank.transfersUnknown} unknown), ${bank.reads} reads of several accounts, in ${bank.rounds} round${bank.rounds === 1 ? "" : "s"}: ${verdict}`;
}

/** The last line of a run that found nothing wrong; it counts only the faults that met operations. */
export function successLine(run: { operations: number; epochs: number; faultsMet: number; faultsInjected: number }): string {
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  return (
    `✅ SUCCESS: ${run.operations} operations in ${plural(run.epochs, "epoch")} under ${plural(run.faultsMet, "fault")} ` +
    `(of ${run.faultsInjected} injected) are linearizable, and every replica converged!`
  );
}

/**
 * Waits until every node has applied the same index (at least the leader's commit index), then reads
 * every key from each node's local state: all must hold the same value.
 */
async function checkConvergence(cluster: ChaosCluster, keys: readonly string[]): Promise<Convergence> {
  const problems: string[] = [];
  const appliedIndex: Record<string, number> = {};
  const values: Record<string, Record<string, string | null>> = {};
  try {
    const leader = await cluster.waitForLeader(undefined, PHASE_TIMEOUT_MS);
    const commitIndex = (await cluster.status(leader, 2_000))?.commitIndex ?? 0;
    await cluster.waitForConvergence(commitIndex, PHASE_TIMEOUT_MS);
  } catch (error) {
    problems.push(error instanceof Error ? error.message : String(error));
  }
  for (const node of cluster.nodes) appliedIndex[String(node.id)] = (await cluster.status(node.id, 2_000))?.appliedIndex ?? -1;
  const indexes = new Set(Object.values(appliedIndex));
  if (indexes.size !== 1 || indexes.has(-1)) {
    problems.push(`applied indexes differ: ${Object.entries(appliedIndex).map(([id, index]) => `node ${id}: ${index}`).join(", ")}`);
  }
  for (const key of keys) {
    const perNode: Record<string, string | null> = {};
    await Promise.all(
      cluster.nodes.map(async (node) => {
        const outcome = await request(node.httpUrl, "GET", `${kvPath(key)}?consistency=stale`, undefined, 5_000);
        const value = readValue(outcome);
        perNode[String(node.id)] = value === undefined ? "(no answer)" : value;
        if (value === undefined) problems.push(`${key}: node ${node.id} did not answer a stale read`);
      }),
    );
    values[key] = perNode;
    const distinct = new Set(Object.values(perNode));
    if (distinct.size > 1) {
      const held = Object.keys(perNode)
        .sort()
        .map((id) => `node ${id} ${JSON.stringify(perNode[id])}`)
        .join(", ");
      problems.push(`${key}: ${held}`);
    }
  }
  return { ok: problems.length === 0, appliedIndex, values, problems };
}

function describeCounts(counts: OperationCounts): string {
  const { byKind } = counts;
  return (
    `${counts.total} (get ${byKind.get}, put ${byKind.put}, delete ${byKind.delete}): ` +
    `${counts.ok} ok, ${counts.failed} refused (${counts.refusedCompareAndSets} of them compare-and-sets, judged as reads), ${counts.unknown} unknown`
  );
}

function describeFaultKinds(faults: readonly FaultWindow[]): string {
  const byKind = new Map<FaultKind, number>();
  for (const fault of faults) byKind.set(fault.kind, (byKind.get(fault.kind) ?? 0) + 1);
  return [...byKind].map(([kind, n]) => `${kind} ${n}`).join(", ");
}

/** Evidence lines printed at most (the evidence is shrunk, so this rarely cuts anything). */
const EVIDENCE_LINES_MAX = 60;

/** The checker's verdict, with the shrunken evidence of a violation, one operation per line. */
export function printVerdict(verdict: CheckResult, checkMs: number, epochs: number, print: (line: string) => void): void {
  if (verdict.ok === true) {
    print(`Linearizability: ✅ linearizable (${verdict.keysChecked} keys in ${epochs} epoch${epochs === 1 ? "" : "s"}, checked in ${checkMs} ms)`);
    return;
  }
  if (verdict.ok === "unknown") {
    print(`Linearizability: ⚠️  undecided after ${checkMs} ms: ${verdict.reason}${verdict.key === undefined ? "" : ` (key ${verdict.key})`}`);
    return;
  }
  print(`Linearizability: ❌ NOT linearizable on key ${verdict.key} (checked in ${checkMs} ms)`);
  print(`  ${verdict.reason}`);
  print(`  Evidence: the smallest failing piece of the history (${verdict.evidence.length} operations):`);
  for (const op of verdict.evidence.slice(0, EVIDENCE_LINES_MAX)) print(`    ${describeOperation(op)}`);
  if (verdict.evidence.length > EVIDENCE_LINES_MAX) print(`    ... and ${verdict.evidence.length - EVIDENCE_LINES_MAX} more (see --json or --report)`);
}

/**
 * The report's banner for a run whose linearizability check passed, or ran out of its budget, while
 * another check failed: the run failed (exit 1), and a green "Linearizable" or a yellow "Undecided"
 * over it read as a pass or a shrug (found in black-box and code reviews). Nothing (the
 * linearizability banner) otherwise: a run that is not linearizable has its red banner already.
 */
export function failedRunBanner(linearizable: boolean | "unknown", othersOk: boolean, checks: readonly ReportCheck[]): { banner?: { ok: false; title: string; text: string } } {
  if (linearizable === false || othersOk) return {};
  const failed = checks.filter((check) => !check.ok).map((check) => check.name.toLowerCase());
  const what = failed.length === 0 ? "a node exited on its own" : failed.join(", ");
  const check = linearizable === true ? "the operations were linearizable" : "the linearizability check ran out of its budget (undecided)";
  return { banner: { ok: false, title: "Failed", text: `${check}, but ${what}: see below` } };
}
