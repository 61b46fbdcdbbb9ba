/**
 * `kv chaos lock`: several lock clients, each its own process (src/chaos/lock-client.ts), loop:
 * take the lock `chaos-lock-mutex` (the client library's lock: a lease, a create-only key, and a
 * watch on the key just ahead), then update the protected counter `chaos-lock-counter` with a
 * compare-and-set that carries the holder's fence in the value. A seeded nemesis pauses holders
 * (SIGSTOP) for longer than their lease's TTL, between their think time and their update, so another
 * client takes the lock while the paused one still believes it holds it and then updates with its
 * stale fence; with `--nemesis all|kill|pause|partition` it also faults the nodes.
 *
 * After healing, the runner reads the counter's committed updates back from node 1's change history
 * (node 1 is paused rather than killed, so its history covers the run; the nodes run with the
 * watch scenario's flags: no log compaction and a history larger than the run) and the counter's
 * final value, and src/chaos/lock-check.ts checks that the resource stayed safe. The report states
 * how often two clients believed they held the lock at once: under pauses that is expected.
 */
import { createWriteStream, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Subprocess } from "bun";
import { createPrng } from "../lib/prng.ts";
import { selfCommand } from "../lib/self-command.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { Operation } from "./history.ts";
import type { LiveDisplay } from "./live-display.ts";
import { checkLock, LOCK_PROBLEM_KINDS, parseCounterValue, type CounterValue, type CounterWrite, type LockCheckResult, type LockProblemKind, type LockTenure } from "./lock-check.ts";
import type { LockClientEvent } from "./lock-client.ts";
import { clock, Nemesis, planSchedule, describePlannedFault, type FaultWindow, type NemesisMode, type PlannedFault } from "./nemesis.ts";
import { renderReport, type ReportCheck, type ReportFault } from "./report.tsx";
import { makeWhole, quiescentCommitIndex, readReference, REFERENCE_NODE } from "./watch.ts";
import { kvPath, LeaderClient } from "./write-load.ts";

/** The lock the clients contend for, and the counter it protects. */
export const LOCK_NAME = "chaos-lock-mutex";
export const COUNTER_KEY = "chaos-lock-counter";

/** Faults: `holders` pauses lock holders only; the others add the node faults of `kv chaos random`. */
export type LockNemesisMode = "holders" | NemesisMode;
export const LOCK_NEMESIS_MODES: readonly LockNemesisMode[] = ["holders", "all", "partition", "kill", "pause"];

export interface LockOptions {
  /** Fixes the pause schedule (when, how long) and the clients' think times. */
  readonly seed: number;
  readonly durationMs: number;
  readonly clients: number;
  /** The TTL each client asks for its lease (raised by the nodes to their minimum). */
  readonly ttlMs: number;
  readonly nemesis: LockNemesisMode;
  readonly requestTimeoutMs: number;
  readonly replayCommand: string;
  readonly reportPath?: string;
  readonly display: LiveDisplay;
}

/** How long a holder thinks before updating the counter: the window its pause lands in. */
const HOLD_MS_MIN = 50;
const HOLD_MS_MAX = 250;
/** A holder pause lasts the TTL plus a time drawn from this range, so its lease runs out. */
const PAUSE_EXTRA_MS_MIN = 500;
const PAUSE_EXTRA_MS_MAX = 1_500;
/** Time between one holder pause's end and the next one's start, drawn from this range. */
const PAUSE_GAP_MS_MIN = 500;
const PAUSE_GAP_MS_MAX = 2_000;
/** How long healing, the final read and the reference may each take. */
const PHASE_TIMEOUT_MS = 30_000;
/** How long clients get to release their lock and exit once told to stop. */
const CLIENT_EXIT_TIMEOUT_MS = 10_000;
/** Updates kept for the report's timeline (the check keeps every one). */
const REPORT_OPERATIONS_MAX = 20_000;

/** One planned holder pause: at `atMs` (run clock), pause whoever holds the lock then, for `durationMs`. */
export interface PlannedHolderPause {
  readonly atMs: number;
  readonly durationMs: number;
}

/** The holder pauses of a run: a seeded schedule across its first 80%, each outlasting the TTL. */
export function planHolderPauses(seed: number, durationMs: number, ttlMs: number): PlannedHolderPause[] {
  const prng = createPrng((seed ^ 0x27d4eb2f) >>> 0);
  const pauses: PlannedHolderPause[] = [];
  let atMs = prng.intInclusive(PAUSE_GAP_MS_MIN, PAUSE_GAP_MS_MAX);
  while (atMs < durationMs * 0.8) {
    const pauseMs = ttlMs + prng.intInclusive(PAUSE_EXTRA_MS_MIN, PAUSE_EXTRA_MS_MAX);
    pauses.push({ atMs, durationMs: pauseMs });
    atMs += pauseMs + prng.intInclusive(PAUSE_GAP_MS_MIN, PAUSE_GAP_MS_MAX);
  }
  return pauses;
}

/** One lock client process and what it reported. */
class LockClientProcess {
  readonly events: LockClientEvent[] = [];
  /** Its counter updates so far, by outcome (for the live display). */
  readonly outcomes: Record<CounterWrite["outcome"], number> = { ok: 0, fenced: 0, conflict: 0, refused: 0, unknown: 0 };
  /** The fence it holds now, as far as the runner knows from its reports (undefined: not holding). */
  holding: number | undefined;
  paused = false;
  /** Set by `requestPause`: resolves with the fence it holds once it reports that it stopped itself. */
  private pausing: ((fence: number) => void) | undefined;
  exited: Promise<number>;
  private proc: Subprocess<"ignore", "pipe", "pipe">;

  constructor(
    readonly client: number,
    args: readonly string[],
    logFile: string,
    onAcquired: () => void,
    cluster: ChaosCluster,
  ) {
    this.proc = cluster.adopt(Bun.spawn([...selfCommand(), "chaos", "lock-client", ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" }));
    this.exited = this.proc.exited;
    const log = createWriteStream(logFile);
    void this.readLines(this.proc.stdout, (line) => {
      log.write(`${line}\n`);
      let event: LockClientEvent;
      try {
        event = JSON.parse(line) as LockClientEvent;
      } catch {
        return;
      }
      this.events.push(event);
      if (event.type === "acquired") {
        this.holding = event.fence;
        onAcquired();
      } else if (event.type === "pausing") {
        this.paused = true;
        const pausing = this.pausing;
        this.pausing = undefined;
        // Nobody waits for it (the nemesis stopped meanwhile): it must not stay stopped.
        if (pausing === undefined) this.signal("SIGCONT");
        else pausing(event.fence);
      } else if (event.type === "released" || event.type === "exit") this.holding = undefined;
      else if (event.type === "write") this.outcomes[event.write.outcome]++;
    });
    void this.readLines(this.proc.stderr, (line) => log.write(`stderr: ${line}\n`));
  }

  get pid(): number {
    return this.proc.pid;
  }

  /**
   * Asks it to stop itself before its next counter update (SIGUSR2; see lock-client.ts): resolves
   * with the fence it holds once it reports `pausing`, or undefined once `cancelled` resolves first.
   */
  requestPause(cancelled: Promise<void>): Promise<number | undefined> {
    const stopped = new Promise<number>((resolve) => (this.pausing = resolve));
    this.signal("SIGUSR2");
    return Promise.race([stopped, cancelled.then(() => undefined)]);
  }

  signal(signal: "SIGCONT" | "SIGTERM" | "SIGKILL" | "SIGUSR2"): void {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    if (signal === "SIGCONT") this.paused = false;
  }

  private async readLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of stream) {
      buffered += decoder.decode(chunk, { stream: true });
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        onLine(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf("\n");
      }
    }
    if (buffered !== "") onLine(buffered);
  }
}

/** A holder pause as it happened. */
export interface HolderPauseWindow {
  readonly client: number;
  readonly fence: number;
  readonly startMs: number;
  readonly endMs: number;
}

/**
 * Plays the holder-pause schedule: at each planned time, asks the client that holds the lock (or the
 * next to take it) to stop itself before its update, and resumes it `durationMs` after it stopped.
 */
class HolderNemesis {
  readonly windows: HolderPauseWindow[] = [];
  private stopping = false;
  private wake: (() => void) | undefined;
  private acquired: (() => void) | undefined;
  private loop: Promise<void> = Promise.resolve();

  constructor(
    private readonly clients: readonly LockClientProcess[],
    private readonly schedule: readonly PlannedHolderPause[],
    private readonly nowMs: () => number,
    private readonly print: (line: string) => void,
  ) {}

  start(): void {
    this.loop = this.run();
  }

  /** Called when a client reports that it took the lock. */
  onAcquired(): void {
    const acquired = this.acquired;
    this.acquired = undefined;
    acquired?.();
  }

  async stop(): Promise<HolderPauseWindow[]> {
    this.stopping = true;
    this.wake?.();
    await this.loop;
    for (const c of this.clients) if (c.paused) c.signal("SIGCONT");
    return this.windows;
  }

  /** Resolves after `ms`, or at once when stopping. A schedule timer, not a poll. */
  private sleep(ms: number): Promise<void> {
    if (this.stopping || ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private async run(): Promise<void> {
    for (const planned of this.schedule) {
      await this.sleep(planned.atMs - this.nowMs());
      // Whoever holds the lock now; if nobody does, the next to take it.
      let holder = this.clients.find((c) => c.holding !== undefined);
      while (holder === undefined && !this.stopping) {
        await new Promise<void>((resolve) => {
          this.acquired = resolve;
          this.wake = resolve;
        });
        holder = this.clients.find((c) => c.holding !== undefined);
      }
      if (this.stopping || holder === undefined) return;
      // It stops itself at the end of its think time (this tenure's, or its next one's).
      const fence = await holder.requestPause(new Promise<void>((resolve) => (this.wake = resolve)));
      if (fence === undefined || this.stopping) return;
      const startMs = this.nowMs();
      this.print(`${clock(startMs)} paused client ${holder.client} (holding fence ${fence}) for ${planned.durationMs} ms, past its TTL`);
      await this.sleep(planned.durationMs);
      holder.signal("SIGCONT");
      const endMs = this.nowMs();
      this.windows.push({ client: holder.client, fence, startMs, endMs });
      this.print(`${clock(endMs)} resumed client ${holder.client}`);
      if (this.stopping) return;
    }
  }
}

export interface LockClientSummary {
  readonly client: number;
  readonly tenures: number;
  readonly updates: Record<CounterWrite["outcome"], number>;
  readonly lost: number;
  readonly errors: number;
  readonly exitCode: number | null;
}

export interface LockResult {
  readonly ok: boolean;
  readonly seed: number;
  readonly replay: string;
  readonly durationMs: number;
  readonly clients: number;
  readonly ttlMs: number;
  readonly nemesis: LockNemesisMode;
  readonly holderPauses: readonly HolderPauseWindow[];
  readonly schedule: readonly PlannedFault[];
  readonly faults: readonly FaultWindow[];
  readonly tenures: number;
  /** Pairs of tenures of different clients that overlapped: both believed they held the lock. */
  readonly overlaps: number;
  readonly overlapMsTotal: number;
  readonly updates: Record<CounterWrite["outcome"], number>;
  readonly acceptedUpdates: number;
  readonly finalCount: number | undefined;
  readonly problems: Record<LockProblemKind, number>;
  readonly evidence: readonly string[];
  readonly perClient: readonly LockClientSummary[];
  readonly reportPath?: string;
}

const OUTCOMES: readonly CounterWrite["outcome"][] = ["ok", "fenced", "conflict", "refused", "unknown"];
const countOutcomes = (writes: readonly CounterWrite[]) => Object.fromEntries(OUTCOMES.map((o) => [o, writes.filter((w) => w.outcome === o).length])) as Record<CounterWrite["outcome"], number>;

/** Each client's tenures from its reports: acquired until released, lost or the end. */
export function tenuresOf(client: number, events: readonly LockClientEvent[], endMs: number): LockTenure[] {
  const tenures: LockTenure[] = [];
  let open: { fence: number; acquiredMs: number; acquiredAliveUntilMs?: number; lostMs?: number; lostAliveUntilMs?: number } | undefined;
  const close = (atMs: number, end: LockTenure["end"], release?: { releaseStartMs: number; aliveUntilMs: number }) => {
    if (open === undefined) return;
    const lostFirst = open.lostMs !== undefined && open.lostMs <= atMs;
    // Known alive until: as it began to release, or as it noticed the loss (the earlier, if both);
    // with neither (the run ended on it: killed, or still holding), as it took the lock. Without
    // that last, such a tenure was never judged as the earlier holder, and a second client taking
    // the lock while its lease was alive passed (found in a code review).
    const released = release === undefined ? {} : { releaseStartMs: release.releaseStartMs, aliveUntilMs: release.aliveUntilMs };
    let aliveUntilMs = Math.min(release?.aliveUntilMs ?? Number.POSITIVE_INFINITY, open.lostAliveUntilMs ?? Number.POSITIVE_INFINITY);
    if (aliveUntilMs === Number.POSITIVE_INFINITY) aliveUntilMs = open.acquiredAliveUntilMs ?? Number.POSITIVE_INFINITY;
    const known = aliveUntilMs === Number.POSITIVE_INFINITY ? {} : { aliveUntilMs };
    tenures.push({ client, fence: open.fence, acquiredMs: open.acquiredMs, endMs: lostFirst ? (open.lostMs as number) : atMs, end: lostFirst ? "lost" : end, ...released, ...known });
    open = undefined;
  };
  for (const event of events) {
    if (event.type === "acquired") {
      close(event.atMs, "released");
      open = { fence: event.fence, acquiredMs: event.atMs, ...(event.aliveUntilMs === undefined ? {} : { acquiredAliveUntilMs: event.aliveUntilMs }) };
    } else if (event.type === "lost" && open !== undefined && open.fence === event.fence) {
      open.lostMs ??= event.atMs;
      open.lostAliveUntilMs ??= event.aliveUntilMs;
    } else if (event.type === "released") {
      close(event.atMs, "released", open?.fence === event.fence ? event : undefined);
    } else if (event.type === "exit") {
      close(event.atMs, "run_end");
    }
  }
  close(endMs, "run_end");
  return tenures;
}

/** Runs the scenario (see the file comment). */
export async function runLock(cluster: ChaosCluster, opts: LockOptions): Promise<LockResult> {
  const print = (line: string) => opts.display.print(line);
  const holderSchedule = planHolderPauses(opts.seed, opts.durationMs, opts.ttlMs);
  const nodeSchedule = opts.nemesis === "holders" ? [] : planSchedule({ seed: opts.seed, durationMs: opts.durationMs, nodeCount: cluster.nodes.length, mode: opts.nemesis });
  print(`Seed: ${opts.seed} (replay: ${opts.replayCommand})`);
  print(`Holder pauses: ${holderSchedule.length}, each for the TTL (${opts.ttlMs} ms) plus ${PAUSE_EXTRA_MS_MIN}-${PAUSE_EXTRA_MS_MAX} ms`);
  if (nodeSchedule.length > 0) {
    print(`Node faults (${opts.nemesis}; node ${REFERENCE_NODE} is paused rather than killed, it keeps the counter's history): ${nodeSchedule.length}`);
    for (const planned of nodeSchedule) print(`         ${describePlannedFault(planned, REFERENCE_NODE)}`);
  }
  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  const leader = await cluster.waitForLeader(undefined, 20_000);
  print(`         Leader elected: Node ${leader}`);

  const client = new LeaderClient(cluster, opts.requestTimeoutMs);
  client.leaderHint = leader;
  const initial: CounterValue = { count: 0, fence: 0, client: 0, n: 0 };
  const init = await client.send("PUT", kvPath(COUNTER_KEY), JSON.stringify(initial));
  if (init.outcome.kind !== "ok" || init.outcome.version === undefined) throw new Error(`could not write the counter's initial value: ${JSON.stringify(init.outcome)}`);
  const initVersion = init.outcome.version;

  const startedMs = performance.now();
  const startedWallMs = Date.now();
  const nowMs = () => performance.now() - startedMs;
  const logDir = dirname(cluster.node(1).logFile);
  const endpoints = cluster.nodes.map((n) => n.httpUrl).join(",");
  print(`[Step 3] ${opts.clients} lock clients take ${LOCK_NAME} (TTL ${opts.ttlMs} ms) and update ${COUNTER_KEY} for ${seconds(opts.durationMs)}; nemesis: ${opts.nemesis}...`);
  const clients = Array.from({ length: opts.clients }, (_, i) => {
    const id = i + 1;
    const args = [
      "--endpoints", endpoints,
      "--name", LOCK_NAME,
      "--counter", COUNTER_KEY,
      "--ttl-ms", String(opts.ttlMs),
      "--client", String(id),
      "--seed", String((opts.seed ^ Math.imul(id + 31, 0x9e3779b9)) >>> 0),
      "--hold-ms", `${HOLD_MS_MIN},${HOLD_MS_MAX}`,
      "--timeout-ms", String(opts.requestTimeoutMs),
    ];
    return new LockClientProcess(id, args, join(logDir, `lock-client-${id}.log`), () => holders.onAcquired(), cluster);
  });
  const holders: HolderNemesis = new HolderNemesis(clients, holderSchedule, nowMs, print);
  const nemesis = new Nemesis(cluster, { schedule: nodeSchedule, nowMs, display: opts.display, spareFromKill: REFERENCE_NODE });
  const updatesOf = () => clients.flatMap((c) => c.events.flatMap((e) => (e.type === "write" ? [e.write] : [])));
  opts.display.track(() => {
    const sum = (outcome: CounterWrite["outcome"]) => clients.reduce((n, c) => n + c.outcomes[outcome], 0);
    return { ok: sum("ok"), failed: sum("fenced") + sum("conflict") + sum("refused"), unknown: sum("unknown") };
  });
  holders.start();
  nemesis.start();
  try {
    await Bun.sleep(opts.durationMs); // the run's length: a timer, not a condition
  } finally {
    opts.display.untrack();
  }
  const holderPauses = await holders.stop();
  const faults = await nemesis.stop();
  const workloadEndMs = Math.ceil(nowMs());
  print(`${clock(workloadEndMs)} stopping the clients (each releases its lock)...`);
  for (const c of clients) c.signal("SIGTERM");
  const exitCodes = await Promise.all(
    clients.map(async (c) => {
      const timer = setTimeout(() => c.signal("SIGKILL"), CLIENT_EXIT_TIMEOUT_MS);
      try {
        return await c.exited;
      } finally {
        clearTimeout(timer);
      }
    }),
  );

  print("[Step 4] Healing: every link restored, every node running...");
  await makeWhole(cluster);
  client.leaderHint = await cluster.waitForLeader(undefined, PHASE_TIMEOUT_MS);
  const through = await quiescentCommitIndex(cluster, PHASE_TIMEOUT_MS);
  const finalValue = await client.readUntilAnswered(COUNTER_KEY, performance.now() + PHASE_TIMEOUT_MS);
  await cluster.waitForConvergence(through, PHASE_TIMEOUT_MS);
  print(`[Step 5] Reading ${COUNTER_KEY}'s committed updates after version ${initVersion} from node ${REFERENCE_NODE}'s history, through ${through}...`);
  let referenceError: string | undefined;
  let committed: { version: number; value: string }[] = [];
  try {
    const events = await readReference(cluster.node(REFERENCE_NODE).httpUrl, COUNTER_KEY, initVersion, through, PHASE_TIMEOUT_MS);
    committed = events.filter((e) => e.key === COUNTER_KEY && e.kind === "put").map((e) => ({ version: e.version, value: e.value ?? "" }));
  } catch (error) {
    referenceError = error instanceof Error ? error.message : String(error);
  }

  const toRunMs = (wallMs: number) => wallMs - startedWallMs;
  const endWallMs = startedWallMs + workloadEndMs;
  const tenures = clients.flatMap((c) => tenuresOf(c.client, c.events, endWallMs)).map((t) => ({
    ...t,
    acquiredMs: toRunMs(t.acquiredMs),
    endMs: toRunMs(t.endMs),
    ...(t.releaseStartMs === undefined ? {} : { releaseStartMs: toRunMs(t.releaseStartMs) }),
    ...(t.aliveUntilMs === undefined ? {} : { aliveUntilMs: toRunMs(t.aliveUntilMs) }),
  }));
  const writes = updatesOf().map((w) => ({ ...w, callMs: toRunMs(w.callMs), returnMs: toRunMs(w.returnMs) }));
  const check: LockCheckResult = checkLock({ tenures, writes, committed, initial, finalValue: finalValue === undefined ? null : finalValue });
  const finalCount = finalValue === undefined || finalValue === null ? undefined : parseCounterValue(finalValue)?.count;
  const exits = cluster.unexpectedExits;
  const perClient: LockClientSummary[] = clients.map((c, i) => {
    const own = writes.filter((w) => w.client === c.client);
    return {
      client: c.client,
      tenures: tenures.filter((t) => t.client === c.client).length,
      updates: countOutcomes(own),
      lost: c.events.filter((e) => e.type === "lost").length,
      errors: c.events.filter((e) => e.type === "error").length,
      exitCode: exitCodes[i] ?? null,
    };
  });
  const clientFailures = perClient.filter((c) => c.exitCode !== 0);
  const evidence = [
    ...(referenceError === undefined ? [] : [`reference: ${referenceError}`]),
    ...(finalValue === undefined ? [`final read: no answer for ${COUNTER_KEY}`] : []),
    ...check.problems.map((p) => `${p.kind}: ${p.detail}`),
    ...clientFailures.map((c) => `client ${c.client} exited with ${c.exitCode} (see ${join(logDir, `lock-client-${c.client}.log`)})`),
  ];
  const ok = referenceError === undefined && finalValue !== undefined && check.ok && clientFailures.length === 0 && exits.length === 0;
  const updates = countOutcomes(writes);

  print("");
  print("=== Results ===");
  print(`Seed: ${opts.seed}`);
  print(`Tenures: ${tenures.length}; holder pauses: ${holderPauses.length}; node faults: ${faults.length}${faults.length === 0 ? "" : ` (${faults.map((f) => f.description).join("; ")})`}`);
  print(`Two clients believed they held the lock at once: ${check.overlaps.length} pair${check.overlaps.length === 1 ? "" : "s"} of tenures overlapped, ${(check.overlapMsTotal / 1000).toFixed(1)} s in all (expected under pauses: the fence is what keeps the counter safe)`);
  print(`Counter updates: ${updates.ok} accepted, ${updates.fenced} fenced out (a larger fence was there), ${updates.conflict} refused by ifVersion, ${updates.refused} other refusals, ${updates.unknown} unknown`);
  print(`Committed updates: ${check.acceptedUpdates}; the counter reads ${finalCount ?? "nothing"}`);
  print(`Problems: ${LOCK_PROBLEM_KINDS.map((k) => `${k} ${check.counts[k]}`).join(", ")}`);
  for (const line of evidence.slice(0, 40)) print(`  ${line}`);
  for (const exit of exits) print(`Node ${exit.id} exited on its own (code ${exit.code}${exit.signal === undefined ? "" : `, ${exit.signal}`}): see ${cluster.node(exit.id).logFile}`);

  let reportPath: string | undefined;
  if (opts.reportPath !== undefined) {
    const operations: Operation[] = writes
      .filter((w) => w.value !== undefined)
      .slice(0, REPORT_OPERATIONS_MAX)
      .map((w, i) => ({
        id: i + 1,
        clientId: w.client,
        kind: "put",
        key: COUNTER_KEY,
        value: w.value as string,
        callMs: Math.max(0, Math.floor(w.callMs)),
        ...(w.outcome === "unknown" ? {} : { returnMs: Math.max(0, Math.ceil(w.returnMs)) }),
        outcome: w.outcome === "ok" ? "ok" : w.outcome === "unknown" ? "unknown" : "fail",
      }));
    const reportFaults: ReportFault[] = [
      ...holderPauses.map((p) => ({ startMs: p.startMs, endMs: p.endMs, kind: "pause", label: `client ${p.client} paused (fence ${p.fence})` })),
      ...faults.map((f) => ({ startMs: f.startMs, endMs: f.endMs, kind: f.kind, label: f.description })),
    ];
    const checks: ReportCheck[] = [
      { name: "Counter history", ok: referenceError === undefined, detail: referenceError ?? `${committed.length} committed updates after version ${initVersion}, read on node ${REFERENCE_NODE}` },
      ...LOCK_PROBLEM_KINDS.map((kind) => ({
        name: kind.replaceAll("_", " "),
        ok: check.counts[kind] === 0,
        detail: check.counts[kind] === 0 ? "none" : check.problems.filter((p) => p.kind === kind).slice(0, 20).map((p) => p.detail).join("\n"),
      })),
      {
        name: "Overlapping tenures (reported, not a failure)",
        ok: true,
        detail: `${check.overlaps.length} pairs, ${(check.overlapMsTotal / 1000).toFixed(1)} s in all`,
      },
    ];
    const html = renderReport({
      title: `kv chaos lock, seed ${opts.seed}`,
      subtitle: `${opts.clients} clients, TTL ${opts.ttlMs} ms, ${seconds(opts.durationMs)}, nemesis: ${opts.nemesis}`,
      replayCommand: opts.replayCommand,
      generatedAt: new Date().toISOString(),
      startMs: 0,
      endMs: Math.max(1, workloadEndMs),
      history: operations,
      clientLabels: new Map(clients.map((c) => [c.client, `client ${c.client}`])),
      faults: reportFaults,
      verdict: { ok: true, keysChecked: 0 },
      banner: {
        ok,
        title: ok ? "Counter safe" : "Counter unsafe",
        text: ok
          ? `${check.acceptedUpdates} accepted updates with strictly increasing fences; the counter reads ${finalCount}. Two clients believed they held the lock at once: ${check.overlaps.length} pairs of tenures overlapped.`
          : "see the failed checks below.",
      },
      checks,
      tenures: tenures.map((t) => ({
        client: t.client,
        fence: t.fence,
        acquiredMs: Math.max(0, t.acquiredMs),
        ...(t.end === "run_end" ? {} : { releasedMs: Math.max(0, t.endMs) }),
      })),
    });
    try {
      writeFileSync(opts.reportPath, html);
      reportPath = opts.reportPath;
      print(`Report written to ${reportPath} (${Math.round(html.length / 1024)} KiB)`);
    } catch (error) {
      print(`❌ ERROR: could not write the report ${opts.reportPath}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  const allOk = ok && (opts.reportPath === undefined || reportPath !== undefined);
  print("");
  print(
    allOk
      ? `✅ SUCCESS: the counter stayed safe through ${plural(holderPauses.length, "holder pause")} and ${plural(faults.length, "node fault")}: ${check.acceptedUpdates} accepted updates, fences strictly increasing, count ${finalCount}!`
      : "❌ FAILURE: see the evidence above",
  );
  print(`Replay this schedule: ${opts.replayCommand}`);
  return {
    ok: allOk,
    seed: opts.seed,
    replay: opts.replayCommand,
    durationMs: opts.durationMs,
    clients: opts.clients,
    ttlMs: opts.ttlMs,
    nemesis: opts.nemesis,
    holderPauses,
    schedule: nodeSchedule,
    faults,
    tenures: tenures.length,
    overlaps: check.overlaps.length,
    overlapMsTotal: check.overlapMsTotal,
    updates,
    acceptedUpdates: check.acceptedUpdates,
    finalCount,
    problems: check.counts,
    evidence: evidence.slice(0, 1_000),
    perClient,
    ...(reportPath === undefined ? {} : { reportPath }),
  };
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/** `n` and `noun`, the noun plural unless n is 1 ("1 holder pause", "3 node faults"). */
function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}
