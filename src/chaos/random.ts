/**
 * `kv chaos random`: concurrent clients run gets, puts and deletes on a handful of keys against
 * random nodes while a seeded nemesis kills, pauses and partitions nodes, one fault at a time. The
 * whole history is then checked for linearizability (which covers lost acknowledged writes: the run
 * ends with a linearizable read of every key, recorded in the history), and the healed cluster for
 * convergence: every node applies the same index and holds the same value for every key.
 */
import { writeFileSync } from "node:fs";
import { createPrng, type Prng } from "../lib/prng.ts";
import { readValue, request, type Outcome } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import { checkLinearizable, describeOperation, type CheckResult, type Operation, type OperationKind } from "./linearizability.ts";
import type { LiveDisplay, LoadCounters } from "./live-display.ts";
import { clock, describePlannedFault, Nemesis, planSchedule, type FaultKind, type FaultWindow, type NemesisMode, type PlannedFault } from "./nemesis.ts";
import { renderReport, type ReportCheck } from "./report.ts";
import { kvPath } from "./write-load.ts";

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
  /** Wall-clock budget of the linearizability check. */
  readonly checkTimeBudgetMs?: number;
  readonly display: LiveDisplay;
}

/** Share of operations that are gets, and of puts; the rest are deletes. */
const GET_SHARE = 0.5;
const PUT_SHARE = 0.4;
/** A write to a follower is answered 307; the client follows that many redirects itself. */
const REDIRECTS_FOLLOWED_MAX = 1;
/** Pause after a refused or unanswered operation, so a client does not spin on a down node. */
const BACKOFF_MS = 10;
/** Operations a run records at most: the history must fit in memory and in the checker's budget. */
const OPERATIONS_MAX = 200_000;
/** How long healing, the final reads and convergence may each take. */
const PHASE_TIMEOUT_MS = 30_000;
/** The client id of the runner's own final reads in the history. */
export const FINAL_READER_ID = 0;

/** The keys of a run: `k0`..`k{n-1}`. */
export function keyNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `k${i}`);
}

/** Parses `60s`, `500ms`, `2m` or a bare number of seconds; undefined when it is none of those. */
export function parseDurationMs(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  if (match === null) return undefined;
  const amount = Number(match[1]);
  const unitMs = match[2] === "ms" ? 1 : match[2] === "m" ? 60_000 : 1_000;
  const ms = Math.round(amount * unitMs);
  return Number.isSafeInteger(ms) ? ms : undefined;
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
  readonly seed: number;
  readonly replay: string;
  readonly durationMs: number;
  readonly clients: number;
  readonly keys: number;
  readonly readConsistency: ReadConsistency;
  readonly nemesis: NemesisMode;
  readonly schedule: PlannedFault[];
  readonly faults: FaultWindow[];
  readonly operations: OperationCounts;
  /** key → what the final linearizable read returned (undefined when it was never answered). */
  readonly finalReads: Record<string, string | null | undefined>;
  readonly linearizability: { verdict: CheckResult; checkMs: number; evidence?: string[] };
  readonly convergence: Convergence;
  readonly reportPath?: string;
}

export interface OperationCounts {
  readonly total: number;
  readonly byKind: Record<OperationKind, number>;
  readonly ok: number;
  readonly failed: number;
  readonly unknown: number;
}

/** Counts a history's operations by kind and outcome. */
export function countOperations(history: readonly Operation[]): OperationCounts {
  const byKind: Record<OperationKind, number> = { get: 0, put: 0, delete: 0 };
  let ok = 0;
  let failed = 0;
  let unknown = 0;
  for (const op of history) {
    byKind[op.kind]++;
    if (op.outcome === "ok") ok++;
    else if (op.outcome === "fail") failed++;
    else unknown++;
  }
  return { total: history.length, byKind, ok, failed, unknown };
}

/** A per-client generator, fixed by the run's seed and the client's id. */
function clientPrng(seed: number, clientId: number): Prng {
  return createPrng((seed ^ Math.imul(clientId + 1, 0x9e3779b9)) >>> 0);
}

/**
 * The clients of a run and the history they record. Each client sends one operation at a time to
 * a node it picks at random (a dead node is skipped; a paused or isolated one is not), and follows a
 * 307 to the leader itself, once; the operation spans from before its first request to after its
 * final answer. A refusal (307 not followed, 503 `no_leader`, 4xx) is `fail`: no request of it was
 * proposed. An answer that never came, or a 503 `timeout`, is `unknown` — also after a followed
 * redirect, since the second request may have been proposed.
 */
class RandomWorkload implements LoadCounters {
  readonly history: Operation[] = [];
  /** When the client gave up on each unknown operation (for drawing; the checker ignores it). */
  readonly gaveUpMs = new Map<number, number>();
  ok = 0;
  failed = 0;
  unknown = 0;
  private nextId = 1;
  private stopping = false;
  private running: Promise<void>[] = [];

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly opts: {
      readonly seed: number;
      readonly clients: number;
      readonly keys: readonly string[];
      readonly readConsistency: ReadConsistency;
      readonly requestTimeoutMs: number;
      readonly nowMs: () => number;
    },
  ) {}

  start(): void {
    this.running = Array.from({ length: this.opts.clients }, (_, i) => this.client(i + 1));
  }

  /** Stops starting operations and waits for those in flight to be answered or given up on. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.running);
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
    while (!this.stopping && this.history.length < OPERATIONS_MAX) {
      const roll = prng.next();
      const kind: OperationKind = roll < GET_SHARE ? "get" : roll < GET_SHARE + PUT_SHARE ? "put" : "delete";
      const key = prng.pick(this.opts.keys);
      const node = this.pickNode(prng);
      if (node === undefined) {
        await Bun.sleep(BACKOFF_MS); // every node is down: cannot happen with one fault at a time
        continue;
      }
      // Unique in the whole run: the checker relies on it.
      const value = kind === "put" ? `c${clientId}-w${++writes}` : undefined;
      const op = await this.perform(clientId, kind, key, value, node, this.opts.readConsistency);
      if (op.outcome !== "ok" && !this.stopping) await Bun.sleep(BACKOFF_MS);
    }
  }

  /** The reachable node whose client URL a Location header points at. */
  private nodeAt(location: string | undefined): number | undefined {
    if (location === undefined) return undefined;
    return this.cluster.nodes.find((n) => this.reachable(n.id) && n.httpUrl !== "" && location.startsWith(`${n.httpUrl}/`))?.id;
  }

  /** Runs one operation from `node` on, records it in the history and returns it. */
  async perform(
    clientId: number,
    kind: OperationKind,
    key: string,
    value: string | undefined,
    node: number,
    consistency: ReadConsistency,
  ): Promise<Operation> {
    const id = this.nextId++;
    const method = kind === "get" ? "GET" : kind === "put" ? "PUT" : "DELETE";
    const path = kind === "get" ? `${kvPath(key)}?consistency=${consistency}` : kvPath(key);
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
    const op = toOperation({ id, clientId, kind, key, value, callMs, endMs }, outcome);
    if (op.outcome === "unknown") this.gaveUpMs.set(id, endMs);
    if (op.outcome === "ok") this.ok++;
    else if (op.outcome === "fail") this.failed++;
    else this.unknown++;
    this.history.push(op);
    return op;
  }
}

/** The history entry for an operation whose last answer was `outcome`. */
export function toOperation(
  call: { id: number; clientId: number; kind: OperationKind; key: string; value: string | undefined; callMs: number; endMs: number },
  outcome: Outcome,
): Operation {
  const base = { id: call.id, clientId: call.clientId, kind: call.kind, key: call.key, callMs: call.callMs, ...(call.value === undefined ? {} : { value: call.value }) };
  switch (outcome.kind) {
    case "unknown":
      return { ...base, outcome: "unknown" };
    case "fail":
      return { ...base, outcome: "fail", returnMs: call.endMs };
    case "ok": {
      if (call.kind === "get") return { ...base, outcome: "ok", returnMs: call.endMs, output: readValue(outcome) ?? null };
      if (call.kind === "delete") {
        let deleted: boolean | undefined;
        try {
          const parsed = JSON.parse(new TextDecoder().decode(outcome.body)) as { deleted?: unknown };
          if (typeof parsed.deleted === "boolean") deleted = parsed.deleted;
        } catch {
          // no JSON body: the answer does not say whether the key was there
        }
        return { ...base, outcome: "ok", returnMs: call.endMs, ...(deleted === undefined ? {} : { deleted }) };
      }
      return { ...base, outcome: "ok", returnMs: call.endMs };
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
  const keys = keyNames(opts.keys);
  const schedule = planSchedule({ seed: opts.seed, durationMs: opts.durationMs, nodeCount: cluster.nodes.length, mode: opts.nemesis });

  print(`Seed: ${opts.seed} (replay: ${opts.replayCommand})`);
  print(`Nemesis schedule (${opts.nemesis}): ${schedule.length} fault${schedule.length === 1 ? "" : "s"}`);
  for (const planned of schedule) print(`         ${describePlannedFault(planned)}`);
  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  print(`         Leader elected: Node ${await cluster.waitForLeader(undefined, 20_000)}`);

  print(
    `[Step 3] ${opts.clients} clients on ${keys.length} keys against random nodes for ${formatDuration(opts.durationMs)} ` +
      `(reads: ${opts.readConsistency}), nemesis: ${opts.nemesis}...`,
  );
  const startedMs = performance.now();
  const nowMs = () => performance.now() - startedMs;
  const workload = new RandomWorkload(cluster, {
    seed: opts.seed,
    clients: opts.clients,
    keys,
    readConsistency: opts.readConsistency,
    requestTimeoutMs: opts.requestTimeoutMs,
    nowMs,
  });
  const nemesis = new Nemesis(cluster, { schedule, nowMs, display });
  display.track(() => workload);
  workload.start();
  nemesis.start();
  await Bun.sleep(opts.durationMs); // the run's length: a timer, not a condition
  const faults = await nemesis.stop();
  await workload.stop();
  const workloadEndMs = Math.ceil(nowMs());
  display.untrack();
  const counts = countOperations(workload.history);
  print(`${clock(workloadEndMs)} clients stopped: ${describeCounts(counts)}`);

  print("[Step 4] Healing: every link restored, every node running...");
  await makeWhole(cluster);

  print("[Step 5] Reading every key linearizably through the leader (recorded in the history)...");
  const finalReads: Record<string, string | null | undefined> = {};
  const unanswered: string[] = [];
  for (const key of keys) {
    const read = await finalRead(cluster, workload, key);
    finalReads[key] = read;
    if (read === undefined) unanswered.push(key);
  }
  print(`         ${keys.map((key) => `${key}=${finalReads[key] === undefined ? "(no answer)" : JSON.stringify(finalReads[key])}`).join(" ")}`);

  print("[Step 6] Waiting until every node applies the same index, then reading every key on each (stale reads)...");
  const convergence = await checkConvergence(cluster, keys);
  print(`         Applied index per node: ${Object.entries(convergence.appliedIndex).map(([id, index]) => `node ${id}: ${index}`).join(", ")}`);

  const history = workload.history;
  print(`[Step 7] Checking ${history.length} operations for linearizability...`);
  const checkStartedMs = performance.now();
  const verdict = checkLinearizable(history, { timeBudgetMs: opts.checkTimeBudgetMs });
  const checkMs = Math.round(performance.now() - checkStartedMs);

  print("");
  print("=== Results ===");
  print(`Seed: ${opts.seed}`);
  print(`Operations: ${describeCounts(countOperations(history))}`);
  print(`Faults injected: ${faults.length}${faults.length === 0 ? "" : ` (${describeFaultKinds(faults)})`}`);
  print(`Final linearizable reads answered: ${keys.length - unanswered.length} of ${keys.length}${unanswered.length === 0 ? "" : ` (no answer: ${unanswered.join(", ")})`}`);
  const evidence = verdict.ok === false ? verdict.evidence.map(describeOperation) : undefined;
  printVerdict(verdict, checkMs, print);
  if (convergence.ok) {
    print(`Convergence: ✅ all ${cluster.nodes.length} nodes applied index ${Object.values(convergence.appliedIndex)[0]} and hold the same value for each of the ${keys.length} keys`);
  } else {
    print("Convergence: ❌ the replicas disagree");
    for (const problem of convergence.problems.slice(0, 20)) print(`  ${problem}`);
  }

  const ok = verdict.ok === true && convergence.ok && unanswered.length === 0;
  let reportPath: string | undefined;
  if (opts.reportPath !== undefined) {
    const checks: ReportCheck[] = [
      {
        name: "Final linearizable reads",
        ok: unanswered.length === 0,
        detail: keys.map((key) => `${key}=${finalReads[key] === undefined ? "(no answer)" : JSON.stringify(finalReads[key])}`).join("  "),
      },
      {
        name: "Convergence",
        ok: convergence.ok,
        detail: convergence.ok
          ? `every node applied index ${Object.values(convergence.appliedIndex)[0]} and holds the same value for every key`
          : convergence.problems.join("\n"),
      },
    ];
    const html = renderReport({
      title: `kv chaos random, seed ${opts.seed}`,
      subtitle: `${opts.clients} clients, ${keys.length} keys, ${formatDuration(opts.durationMs)}, reads: ${opts.readConsistency}, nemesis: ${opts.nemesis}`,
      replayCommand: opts.replayCommand,
      generatedAt: new Date().toISOString(),
      endMs: history.reduce((end, op) => Math.max(end, op.returnMs ?? op.callMs), workloadEndMs),
      history,
      gaveUpMs: workload.gaveUpMs,
      clientLabels: new Map([[FINAL_READER_ID, "final"]]),
      faults: faults.map((f) => ({ startMs: f.startMs, endMs: f.endMs, kind: f.kind, label: f.description })),
      verdict,
      checkMs,
      checks,
    });
    try {
      writeFileSync(opts.reportPath, html);
      reportPath = opts.reportPath;
      print(`Report written to ${opts.reportPath} (${Math.round(html.length / 1024)} KiB)`);
    } catch (error) {
      print(`❌ ERROR: could not write the report ${opts.reportPath}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  const allOk = ok && (opts.reportPath === undefined || reportPath !== undefined);
  print("");
  print(
    allOk
      ? `✅ SUCCESS: ${history.length} operations under ${faults.length} fault${faults.length === 1 ? "" : "s"} are linearizable, and every replica converged!`
      : "❌ FAILURE: see the evidence above",
  );
  print(`Replay this schedule: ${opts.replayCommand}`);
  return {
    ok: allOk,
    seed: opts.seed,
    replay: opts.replayCommand,
    durationMs: opts.durationMs,
    clients: opts.clients,
    keys: keys.length,
    readConsistency: opts.readConsistency,
    nemesis: opts.nemesis,
    schedule,
    faults,
    operations: countOperations(history),
    finalReads,
    linearizability: { verdict, checkMs, ...(evidence === undefined ? {} : { evidence }) },
    convergence,
    ...(reportPath === undefined ? {} : { reportPath }),
  };
}

/** A linearizable read of `key` through the leader, retried until answered; recorded in the history. */
async function finalRead(cluster: ChaosCluster, workload: RandomWorkload, key: string): Promise<string | null | undefined> {
  const deadlineMs = performance.now() + PHASE_TIMEOUT_MS;
  while (performance.now() < deadlineMs) {
    const leader = await cluster.waitForLeader(undefined, Math.max(1, deadlineMs - performance.now())).catch(() => undefined);
    if (leader === undefined) return undefined;
    const op = await workload.perform(FINAL_READER_ID, "get", key, undefined, leader, "linearizable");
    if (op.outcome === "ok") return op.output;
    await Bun.sleep(BACKOFF_MS); // leadership moved under the read: ask again
  }
  return undefined;
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
    `${counts.ok} ok, ${counts.failed} refused, ${counts.unknown} unknown`
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
export function printVerdict(verdict: CheckResult, checkMs: number, print: (line: string) => void): void {
  if (verdict.ok === true) {
    print(`Linearizability: ✅ linearizable (${verdict.keysChecked} keys, checked in ${checkMs} ms)`);
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
