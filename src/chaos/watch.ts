/**
 * `kv chaos watch`: writers put and delete keys under a few prefixes (`w/a/`, `w/b/`, ...) while
 * watchers on every node follow them over `GET /watch` (Server-Sent Events), and a seeded nemesis
 * kills, pauses and partitions nodes one at a time. A watcher whose stream is cut (its node killed),
 * stalls (its node paused or cut off: no new version for a while) or ends (`slow_watcher`, ...) resumes
 * on another node with `Last-Event-ID`, the last id it saw; some watchers also move to another node
 * every few seconds on their own. Some watchers start with `fromVersion`, some with no start (after a
 * linearizable read), some join mid-run.
 *
 * After healing, the runner takes the reference sequence of committed changes: a fresh watch from the
 * earliest version any watcher started after, on node 1, which the nemesis never kills (a kill aimed
 * at it pauses it instead), so its in-memory history covers the whole run (the nodes run with no log
 * compaction and a history larger than the run; see WATCH_SERVE_ARGS). src/chaos/watch-check.ts then
 * checks each watcher's events against it, every acknowledged write against it, and it against the
 * final state. A `410 compacted` on resume is allowed only from a node that was killed (restarted with
 * an empty history) before it answered; the watcher then tries the next node.
 */
import { writeFileSync } from "node:fs";
import { createPrng, type Prng } from "../lib/prng.ts";
import { readSse } from "../lib/sse-reader.ts";
import type { Outcome } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { Operation } from "./history.ts";
import type { LiveDisplay } from "./live-display.ts";
import { clock, describePlannedFault, Nemesis, planSchedule, type FaultWindow, type NemesisMode, type PlannedFault } from "./nemesis.ts";
import { renderReport, type ReportCheck, type ReportStream } from "./report.tsx";
import { checkWatch, type AcknowledgedWrite, type UnansweredWrite, type WatchCheckResult, type WatchEvent, type WatchProblemKind, WATCH_PROBLEM_KINDS } from "./watch-check.ts";
import { kvPath, LeaderClient } from "./write-load.ts";

/**
 * `kv serve` flags for this scenario's nodes: no log compaction during a run (a follower that
 * installs a snapshot restarts its history), a history larger than any run the flags allow, and a
 * progress event every 250 ms so a watcher notices a stalled stream within STALL_MS.
 */
export const WATCH_SERVE_ARGS: readonly string[] = [
  "--snapshot-entries",
  "100000000",
  "--watch-history-entries",
  "10000000",
  "--watch-history-ms",
  "86400000",
  "--watch-progress-ms",
  "250",
];

/** The longest run: every event every watcher received is held until the end, for the check. */
export const WATCH_DURATION_MS_MAX = 10 * 60_000;

export interface WatchOptions {
  /** Fixes the nemesis schedule, the writers' choices and the watchers' layout and timing. */
  readonly seed: number;
  readonly durationMs: number;
  readonly writers: number;
  /** Watchers in all: the first `nodes × prefixes` start before the writers, one per node and prefix; the rest join mid-run. */
  readonly watchers: number;
  readonly prefixes: number;
  readonly keysPerPrefix: number;
  readonly nemesis: NemesisMode;
  readonly requestTimeoutMs: number;
  readonly replayCommand: string;
  readonly reportPath?: string;
  readonly display: LiveDisplay;
}

/** The node the nemesis never kills: its history covers the whole run, so the reference is read there. */
export const REFERENCE_NODE = 1;
/** Share of writes that are deletes; the rest are puts, each with a value no other write uses. */
const DELETE_SHARE = 0.15;
/** A stream whose version has not moved for this long is abandoned (its node is paused or cut off). */
const STALL_MS = 1_500;
/** How long a watcher waits for a stream's answer (headers) before trying the next node. */
const OPEN_TIMEOUT_MS = 1_500;
/** A roaming watcher moves to the next node after a time drawn from this range. */
const ROAM_MS_MIN = 1_000;
const ROAM_MS_MAX = 3_000;
/** Pause before retrying after a stream could not be opened, so a watcher does not spin. */
const RETRY_BACKOFF_MS = 50;
/** Pause after a refused or unanswered write. */
const WRITE_BACKOFF_MS = 10;
/** How long healing, the final reads, the watchers' catching up and the reference may each take. */
const PHASE_TIMEOUT_MS = 30_000;
/** Writer operations kept for the report's timeline (the check keeps every write). */
const REPORT_OPERATIONS_MAX = 20_000;
/** Stream segments kept per watcher for the report (counts cover them all). */
const SEGMENTS_MAX = 2_000;

/** The watched prefixes: `w/a/`, `w/b/`, ... */
export function watchPrefixes(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `w/${String.fromCharCode(97 + (i % 26))}${i >= 26 ? String(Math.floor(i / 26)) : ""}/`);
}

/** One watcher's plan. */
interface WatcherSpec {
  readonly index: number;
  readonly label: string;
  readonly prefix: string;
  readonly home: number;
  readonly roams: boolean;
  /**
   * `baseline`: `fromVersion` just after the commit index read before the writers started; `acked`:
   * just after the last acknowledged write when it opens; `now`: no start (after a linearizable read).
   */
  readonly start: "baseline" | "acked" | "now";
  /** When it opens, ms on the run's clock (0: before the writers). */
  readonly openAtMs: number;
}

/** A 410 a watcher was answered when it tried to resume. */
interface CompactedAnswer {
  readonly watcher: string;
  readonly node: number;
  readonly atMs: number;
  readonly lastId: number;
  readonly compactVersion: number | undefined;
}

/** What one watcher did and saw. */
interface StreamSegment {
  node: number;
  fromMs: number;
  toMs: number;
  start: "connect" | "resume";
  end: string;
  endedByWatcher: boolean;
  events: number;
}

/**
 * A watcher that follows its prefix across nodes: it opens a stream on its home node and, whenever
 * the stream fails, resumes on the next node with `Last-Event-ID`; it records every change event in
 * arrival order (duplicates included, had any come) for the checker.
 */
class Follower {
  readonly events: WatchEvent[] = [];
  readonly segments: StreamSegment[] = [];
  segmentsDropped = 0;
  /** The highest id seen (change or progress); undefined before the first. */
  lastId: number | undefined;
  /** After which version it must see every change of its prefix (known once its first stream answered). */
  startAfter: number | undefined;
  /** For a watcher with no start: the highest acknowledged version when its first stream was requested. */
  ackedBeforeOpen: number | undefined;
  resumes = 0;
  slowWatcherEnds = 0;
  stalls = 0;
  cuts = 0;
  openFailures = 0;
  readonly errorEvents: string[] = [];
  readonly compacted: CompactedAnswer[] = [];
  private target = Number.POSITIVE_INFINITY;
  private stopping = false;
  private controller: AbortController | undefined;
  private loop: Promise<void> = Promise.resolve();
  private reachedTarget: (() => void) | undefined;
  /** The `fromVersion` of its first stream (undefined: no start). */
  private fromVersion: number | undefined;
  started = false;

  constructor(
    readonly spec: WatcherSpec,
    private readonly cluster: ChaosCluster,
    private readonly nowMs: () => number,
    private readonly maxAckedVersion: () => number,
    private readonly baseline: number,
    private readonly prng: Prng,
  ) {}

  get reached(): number {
    return this.lastId ?? this.startAfter ?? -1;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    if (this.spec.start !== "now") {
      this.fromVersion = (this.spec.start === "baseline" ? this.baseline : this.maxAckedVersion()) + 1;
      this.startAfter = this.fromVersion - 1;
    }
    this.loop = this.run();
  }

  /** Follows until it has reached `version` (resolves true) or `timeoutMs` passes (false); then stops. */
  async finish(version: number, timeoutMs: number): Promise<boolean> {
    this.target = version;
    if (this.reached < version) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => {
          this.reachedTarget = resolve;
        }),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
    }
    await this.stop();
    return this.reached >= version;
  }

  /** Closes the stream and returns once the follower has stopped. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.controller?.abort("done");
    await this.loop;
  }

  private nextNode(node: number): number {
    return (node % this.cluster.nodes.length) + 1;
  }

  private advance(version: number): boolean {
    if (this.lastId !== undefined && version <= this.lastId) return false;
    this.lastId = version;
    if (version >= this.target) this.reachedTarget?.();
    return true;
  }

  private async run(): Promise<void> {
    let node = this.spec.home;
    while (!this.stopping && this.reached < this.target) {
      const url = this.cluster.node(node).httpUrl;
      const state = this.cluster.node(node).state;
      if (state === "dead" || state === "starting" || url === "") {
        node = this.nextNode(node);
        await Bun.sleep(RETRY_BACKOFF_MS); // a retry pace, not a wait for a condition
        continue;
      }
      const { next, opened } = await this.follow(node, url);
      if (!opened && !this.stopping) await Bun.sleep(RETRY_BACKOFF_MS); // nothing answered: retry pace
      node = next;
    }
  }

  /** One stream on `node`: opens it (resuming after `lastId` if any), reads it until it ends; says where to go next. */
  private async follow(node: number, url: string): Promise<{ next: number; opened: boolean }> {
    const resume = this.lastId !== undefined;
    const query = new URLSearchParams({ prefix: this.spec.prefix });
    if (!resume && this.fromVersion !== undefined) query.set("fromVersion", String(this.fromVersion));
    const headers: Record<string, string> = resume ? { "last-event-id": String(this.lastId) } : {};
    const ackedNow = this.maxAckedVersion();
    const controller = new AbortController();
    this.controller = controller;
    if (this.stopping) controller.abort("done");
    const openTimer = setTimeout(() => controller.abort("no answer"), OPEN_TIMEOUT_MS);
    let response: Response;
    try {
      response = await fetch(`${url}/watch?${query}`, { headers, signal: controller.signal });
    } catch {
      clearTimeout(openTimer);
      this.openFailures++;
      return { next: this.nextNode(node), opened: false };
    }
    clearTimeout(openTimer);
    if (response.status !== 200) {
      const text = await response.text().catch(() => "");
      let body: { error?: string; compactVersion?: number } = {};
      try {
        body = JSON.parse(text) as typeof body;
      } catch {
        // not JSON
      }
      if (response.status === 410) {
        this.compacted.push({ watcher: this.spec.label, node, atMs: this.nowMs(), lastId: this.lastId ?? -1, compactVersion: body.compactVersion });
      } else {
        this.openFailures++;
      }
      return { next: this.nextNode(node), opened: false };
    }
    if (this.startAfter === undefined && this.ackedBeforeOpen === undefined) this.ackedBeforeOpen = ackedNow;
    if (resume) this.resumes++;
    const segment: StreamSegment = { node, fromMs: this.nowMs(), toMs: 0, start: resume ? "resume" : "connect", end: "", endedByWatcher: false, events: 0 };
    if (this.segments.length < SEGMENTS_MAX) this.segments.push(segment);
    else this.segmentsDropped++;
    const openedMs = performance.now();
    let lastAdvanceMs = openedMs;
    const roamMs = this.spec.roams ? this.prng.intInclusive(ROAM_MS_MIN, ROAM_MS_MAX) : Number.POSITIVE_INFINITY;
    let next = this.nextNode(node);
    let end: string | undefined;
    let byWatcher = false;
    // A watchdog, not a wait: it only reads two clocks and aborts the stream.
    const watchdog = setInterval(() => {
      const now = performance.now();
      if (now - lastAdvanceMs > STALL_MS) controller.abort("stalled");
      else if (now - openedMs > roamMs) controller.abort("roam");
    }, 100);
    try {
      if (response.body === null) throw new Error("no body");
      for await (const event of readSse(response.body)) {
        if (event.event === "error") {
          let error = "error";
          try {
            error = (JSON.parse(event.data) as { error?: string }).error ?? error;
          } catch {
            // not JSON
          }
          this.errorEvents.push(error);
          if (error === "slow_watcher") {
            this.slowWatcherEnds++;
            next = node; // the contract: resume from the last id, here as well as elsewhere
          }
          end = `event: error ${error}`;
          break;
        }
        const version = parseVersion(event.data);
        if (version === undefined) {
          end = `bad event ${event.event}: ${event.data.slice(0, 80)}`;
          break;
        }
        if (event.event === "progress") {
          if (this.startAfter === undefined) this.startAfter = version;
        } else if (event.event === "put" || event.event === "delete") {
          if (this.startAfter === undefined) this.startAfter = version - 1;
          this.events.push(parseChange(event.event, event.data, version));
          segment.events++;
        } else {
          continue;
        }
        if (this.advance(version)) lastAdvanceMs = performance.now();
        if (this.reached >= this.target) {
          end = "done";
          byWatcher = true;
          break;
        }
      }
      end ??= "stream ended by the node";
    } catch (error) {
      const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined;
      if (reason === "stalled") this.stalls++;
      else if (reason === undefined) this.cuts++;
      byWatcher = reason === "roam" || reason === "done";
      end = typeof reason === "string" ? reason : `cut: ${error instanceof Error ? error.message : String(error)}`;
    } finally {
      clearInterval(watchdog);
      controller.abort("done"); // close the connection whatever ended the loop
    }
    segment.toMs = this.nowMs();
    segment.end = end ?? "ended";
    segment.endedByWatcher = byWatcher;
    return { next, opened: true };
  }
}

/** The `version` of an event's data, or undefined when it has none. */
function parseVersion(data: string): number | undefined {
  try {
    const version = (JSON.parse(data) as { version?: unknown }).version;
    return typeof version === "number" && Number.isSafeInteger(version) ? version : undefined;
  } catch {
    return undefined;
  }
}

/** A put or delete event's data as a change (a non-UTF-8 value as `base64:...`). */
function parseChange(kind: "put" | "delete", data: string, version: number): WatchEvent {
  const parsed = JSON.parse(data) as { key?: string; value?: string | { base64: string } };
  const key = parsed.key ?? "";
  if (kind === "delete") return { version, kind, key };
  const value = typeof parsed.value === "string" ? parsed.value : `base64:${parsed.value?.base64 ?? ""}`;
  return { version, kind, key, value };
}

/** The writers: puts with unique values and deletes, through the leader, every answer recorded. */
export class Writers {
  readonly acknowledged: AcknowledgedWrite[] = [];
  readonly unknown: UnansweredWrite[] = [];
  /** When each unknown write of `operations` was given up on (for the report). */
  readonly gaveUpMs = new Map<number, number>();
  readonly refused: UnansweredWrite[] = [];
  /** Operations for the report's timeline (the first REPORT_OPERATIONS_MAX). */
  readonly operations: Operation[] = [];
  readonly keysWritten = new Set<string>();
  maxAckedVersion = 0;
  private stopping = false;
  private running: Promise<void>[] = [];
  private nextOperationId = 1;

  constructor(
    private readonly client: LeaderClient,
    private readonly keys: readonly string[],
    private readonly seed: number,
    private readonly count: number,
    private readonly nowMs: () => number,
  ) {}

  get ok(): number {
    return this.acknowledged.length;
  }
  get failed(): number {
    return this.refused.length;
  }
  get unknownCount(): number {
    return this.unknown.length;
  }

  start(): void {
    this.running = Array.from({ length: this.count }, (_, i) => this.writer(i + 1));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.running);
  }

  private async writer(writerId: number): Promise<void> {
    const prng = createPrng((this.seed ^ Math.imul(writerId + 101, 0x9e3779b9)) >>> 0);
    let n = 0;
    while (!this.stopping) {
      const key = prng.pick(this.keys);
      const kind = prng.chance(DELETE_SHARE) ? "delete" : "put";
      const value = kind === "put" ? `wr${writerId}-${++n}` : undefined;
      this.keysWritten.add(key);
      const callMs = Math.floor(this.nowMs());
      const { outcome } = await this.client.send(kind === "put" ? "PUT" : "DELETE", kvPath(key), value);
      const returnMs = Math.ceil(this.nowMs());
      this.record(writerId, kind, key, value, outcome, callMs, returnMs);
      if (outcome.kind !== "ok" && !this.stopping) await Bun.sleep(WRITE_BACKOFF_MS); // refused or no answer: back off
    }
  }

  private record(writerId: number, kind: "put" | "delete", key: string, value: string | undefined, outcome: Outcome, callMs: number, returnMs: number): void {
    const write = value === undefined ? { key, kind } : { key, kind, value };
    if (outcome.kind === "ok" && outcome.version !== undefined) {
      let deleted: boolean | undefined;
      if (kind === "delete") {
        try {
          deleted = (JSON.parse(new TextDecoder().decode(outcome.body)) as { deleted?: boolean }).deleted;
        } catch {
          deleted = undefined;
        }
      }
      this.acknowledged.push({ ...write, version: outcome.version, ...(deleted === undefined ? {} : { deleted }) });
      this.maxAckedVersion = Math.max(this.maxAckedVersion, outcome.version);
    } else if (outcome.kind === "fail") {
      this.refused.push(write);
    } else {
      this.unknown.push(write);
    }
    if (this.operations.length < REPORT_OPERATIONS_MAX) {
      const outcomeKind = outcome.kind === "ok" ? (outcome.version === undefined ? "unknown" : "ok") : outcome.kind;
      const id = this.nextOperationId++;
      // Drawn up to when its writer gave up on it and moved on, not to the end of the run (found in a black-box review).
      if (outcomeKind === "unknown") this.gaveUpMs.set(id, returnMs);
      this.operations.push({
        id,
        clientId: writerId,
        kind,
        key,
        ...(value === undefined ? {} : { value }),
        callMs,
        ...(outcomeKind === "unknown" ? {} : { returnMs }),
        outcome: outcomeKind,
      });
    }
  }
}

/** One watcher in the result. */
export interface WatcherSummary {
  readonly label: string;
  readonly prefix: string;
  readonly home: number;
  readonly roams: boolean;
  readonly start: "baseline" | "acked" | "now";
  readonly startAfter: number | undefined;
  readonly reached: number;
  readonly events: number;
  readonly streams: number;
  readonly resumes: number;
  readonly stalls: number;
  readonly cuts: number;
  readonly slowWatcherEnds: number;
  readonly compacted: number;
  readonly errorEvents: readonly string[];
  readonly ok: boolean;
}

export interface WatchResult {
  readonly ok: boolean;
  readonly seed: number;
  readonly replay: string;
  readonly durationMs: number;
  readonly writers: number;
  readonly prefixes: readonly string[];
  readonly nemesis: NemesisMode;
  readonly schedule: PlannedFault[];
  readonly faults: FaultWindow[];
  readonly writes: { readonly acknowledged: number; readonly refused: number; readonly unknown: number };
  /** The version every watcher and the reference had to reach (the commit index after healing). */
  readonly throughVersion: number;
  readonly referenceAfter: number;
  readonly referenceEvents: number;
  readonly eventsChecked: number;
  readonly acknowledgedChecked: number;
  readonly resumes: number;
  readonly slowWatcherEnds: number;
  /** 410s answered to resuming watchers; `unexpected`: from a node that had not been restarted. */
  readonly compacted: { readonly total: number; readonly unexpected: readonly CompactedAnswer[] };
  readonly problems: Record<WatchProblemKind, number>;
  readonly evidence: string[];
  readonly watchers: WatcherSummary[];
  readonly referenceError?: string;
  readonly reportPath?: string;
}

/** Rounds of final reads at most, when the commit index keeps moving under them. */
const FINAL_READ_ROUNDS_MAX = 5;

/**
 * The leader's commit index once its log holds nothing uncommitted (commit index = last log index):
 * then no write sent earlier can still commit. Polls /status until `timeoutMs`, then takes the
 * commit index as it is.
 */
export async function quiescentCommitIndex(cluster: ChaosCluster, timeoutMs: number): Promise<number> {
  const deadlineMs = performance.now() + timeoutMs;
  for (;;) {
    const leader = await cluster.waitForLeader(undefined, Math.max(1, deadlineMs - performance.now()));
    const status = await cluster.status(leader, 2_000);
    if (status !== undefined && (status.commitIndex === status.lastLogIndex || performance.now() > deadlineMs)) return status.commitIndex;
    await Bun.sleep(20); // polling interval between status probes
  }
}

/** Restores every link, resumes every paused node and starts every dead one. */
export async function makeWhole(cluster: ChaosCluster): Promise<void> {
  cluster.heal();
  for (const node of cluster.nodes) if (node.state === "paused") cluster.signal(node.id, "SIGCONT");
  await Promise.all(cluster.nodes.filter((n) => n.state === "dead").map((n) => cluster.startNode(n.id)));
}

/**
 * The reference: every change under `prefix` after `after`, read with a fresh watch on `node` until
 * the stream passes `through`. Throws when the node answers anything but a stream (410 compacted:
 * the run outgrew its history) or the stream does not get there in time.
 */
export async function readReference(url: string, prefix: string, after: number, through: number, timeoutMs: number): Promise<WatchEvent[]> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort("timeout"), timeoutMs);
  const events: WatchEvent[] = [];
  try {
    const response = await fetch(`${url}/watch?${new URLSearchParams({ prefix, fromVersion: String(after + 1) })}`, { signal: controller.signal });
    if (response.status !== 200) throw new Error(`the reference watch was answered ${response.status} ${await response.text()}`);
    if (response.body === null) throw new Error("the reference watch has no body");
    for await (const event of readSse(response.body)) {
      if (event.event === "error") throw new Error(`the reference watch ended with ${event.data}`);
      const version = parseVersion(event.data);
      if (version === undefined) continue;
      if (event.event === "put" || event.event === "delete") events.push(parseChange(event.event, event.data, version));
      if (version >= through) return events;
    }
    throw new Error("the reference watch ended before reaching the end of the run");
  } catch (error) {
    if (controller.signal.aborted && controller.signal.reason === "timeout") throw new Error(`the reference watch did not reach version ${through} within ${timeoutMs} ms`);
    throw error;
  } finally {
    clearTimeout(timer);
    controller.abort("done");
  }
}

/** Runs the scenario (see the file comment). */
export async function runWatch(cluster: ChaosCluster, opts: WatchOptions): Promise<WatchResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const prefixes = watchPrefixes(opts.prefixes);
  const keys = prefixes.flatMap((prefix) => Array.from({ length: opts.keysPerPrefix }, (_, i) => `${prefix}k${i}`));
  const schedule = planSchedule({ seed: opts.seed, durationMs: opts.durationMs, nodeCount: cluster.nodes.length, mode: opts.nemesis });
  const layout = createPrng((opts.seed ^ 0x5bd1e995) >>> 0);

  print(`Seed: ${opts.seed} (replay: ${opts.replayCommand})`);
  print(`Nemesis schedule (${opts.nemesis}; node ${REFERENCE_NODE} is paused rather than killed, it keeps the reference history): ${schedule.length} fault${schedule.length === 1 ? "" : "s"}`);
  for (const planned of schedule) print(`         ${describePlannedFault(planned, REFERENCE_NODE)}`);
  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  const leader = await cluster.waitForLeader(undefined, 20_000);
  print(`         Leader elected: Node ${leader}`);
  const baseline = (await cluster.status(leader, 2_000))?.commitIndex ?? 0;

  const startedMs = performance.now();
  const nowMs = () => performance.now() - startedMs;
  const client = new LeaderClient(cluster, opts.requestTimeoutMs);
  const writers = new Writers(client, keys, opts.seed, opts.writers, nowMs);

  const initial = Math.min(opts.watchers, cluster.nodes.length * prefixes.length);
  const specs: WatcherSpec[] = Array.from({ length: opts.watchers }, (_, i) => {
    const isInitial = i < initial;
    // Every fourth watcher has no start (after a linearizable read); the others start at the baseline,
    // or, joining mid-run, just after the last acknowledged write.
    const noStart = i % 4 === 3;
    return {
      index: i,
      label: `watcher ${i + 1}`,
      prefix: prefixes[i % prefixes.length] as string,
      // The first nodes × prefixes watchers cover every (prefix, node) pair.
      home: ((i + Math.floor(i / prefixes.length)) % cluster.nodes.length) + 1,
      roams: i % 2 === 1,
      start: noStart ? "now" : isInitial ? "baseline" : "acked",
      openAtMs: isInitial ? 0 : layout.intInclusive(Math.floor(opts.durationMs * 0.2), Math.floor(opts.durationMs * 0.6)),
    };
  });
  const followers = specs.map(
    (spec) => new Follower(spec, cluster, nowMs, () => writers.maxAckedVersion, baseline, createPrng((opts.seed ^ Math.imul(spec.index + 7, 0x85ebca6b)) >>> 0)),
  );
  const lateSpecs = specs.filter((s) => s.openAtMs > 0);
  print(
    `[Step 3] ${opts.writers} writers on ${keys.length} keys under ${prefixes.join(", ")} for ${formatSeconds(opts.durationMs)}; ` +
      `${initial} watchers from version ${baseline + 1} (one per node and prefix; every other one moves on its own), ${lateSpecs.length} joining mid-run; nemesis: ${opts.nemesis}...`,
  );

  const nemesis = new Nemesis(cluster, { schedule, nowMs, display, spareFromKill: REFERENCE_NODE });
  for (const follower of followers) if (follower.spec.openAtMs === 0) follower.start();
  const lateTimers = followers
    .filter((f) => f.spec.openAtMs > 0)
    .map((follower) => setTimeout(() => follower.start(), follower.spec.openAtMs)); // the schedule of joins: timers, not waits
  display.track(() => ({ ok: writers.ok, failed: writers.failed, unknown: writers.unknownCount }));
  writers.start();
  nemesis.start();
  await Bun.sleep(opts.durationMs); // the run's length: a timer, not a condition
  for (const timer of lateTimers) clearTimeout(timer);
  const faults = await nemesis.stop();
  await writers.stop();
  const workloadEndMs = Math.ceil(nowMs());
  display.untrack();
  print(
    `${clock(workloadEndMs)} writers stopped: ${writers.ok} acknowledged, ${writers.failed} refused, ${writers.unknownCount} unknown`,
  );

  print("[Step 4] Healing: every link restored, every node running...");
  await makeWhole(cluster);
  client.leaderHint = await cluster.waitForLeader(undefined, PHASE_TIMEOUT_MS);

  print(`[Step 5] Reading each of the ${writers.keysWritten.size} written keys linearizably through the leader...`);
  // The final values and `through` must describe one state: the reads run while the leader's log
  // holds nothing uncommitted (an unanswered write may still sit there), and again if the commit
  // index moved meanwhile.
  let finalValues = new Map<string, string | null>();
  let unansweredReads: string[] = [];
  let through = 0;
  for (let round = 1; ; round++) {
    const before = await quiescentCommitIndex(cluster, PHASE_TIMEOUT_MS);
    finalValues = new Map();
    unansweredReads = [];
    const readDeadlineMs = performance.now() + PHASE_TIMEOUT_MS;
    for (const key of [...writers.keysWritten].sort()) {
      const value = await client.readUntilAnswered(key, readDeadlineMs);
      if (value === undefined) unansweredReads.push(key);
      else finalValues.set(key, value);
    }
    through = await quiescentCommitIndex(cluster, PHASE_TIMEOUT_MS);
    if (through === before || round === FINAL_READ_ROUNDS_MAX) break;
  }
  await cluster.waitForConvergence(through, PHASE_TIMEOUT_MS);
  print(`         Every node applied index ${through}`);

  print(`[Step 6] Letting every watcher catch up to version ${through}...`);
  const started = followers.filter((f) => f.started);
  for (const follower of followers) if (!started.includes(follower)) await follower.stop();
  const caughtUp = await Promise.all(started.map((f) => f.finish(through, PHASE_TIMEOUT_MS)));
  print(`         ${caughtUp.filter(Boolean).length} of ${started.length} watchers reached it`);

  const starts = started.map((f) => f.startAfter).filter((s): s is number => s !== undefined);
  const referenceAfter = Math.min(baseline, ...starts);
  print(`[Step 7] Reading the reference: a fresh watch of w/ from version ${referenceAfter + 1} on node ${REFERENCE_NODE}, through ${through}...`);
  let reference: WatchEvent[] = [];
  let referenceError: string | undefined;
  try {
    reference = await readReference(cluster.node(REFERENCE_NODE).httpUrl, "w/", referenceAfter, through, PHASE_TIMEOUT_MS);
  } catch (error) {
    referenceError = error instanceof Error ? error.message : String(error);
  }

  const check = checkWatch({
    reference,
    referenceAfter,
    throughVersion: through,
    watchers: started.map((f) => ({ label: f.spec.label, prefix: f.spec.prefix, startAfter: f.startAfter ?? referenceAfter, events: f.events, reached: f.reached })),
    acknowledged: writers.acknowledged,
    unknown: writers.unknown,
    refused: writers.refused,
    finalValues,
    singleKeyWrites: true,
  });
  // A watcher with no start must not see changes at or before a write acknowledged before it opened.
  const startProblems: string[] = [];
  for (const f of started) {
    if (f.spec.start === "now" && f.startAfter !== undefined && f.ackedBeforeOpen !== undefined && f.startAfter < f.ackedBeforeOpen) {
      startProblems.push(`${f.spec.label} opened with no start after version ${f.ackedBeforeOpen} was acknowledged, yet started after ${f.startAfter}`);
    }
  }
  // A 410 is allowed only from a node restarted (killed) before it answered: its history began again.
  const killedAt = (node: number, atMs: number) => faults.some((w) => w.kind === "kill" && w.nodes.includes(node) && w.startMs <= atMs);
  const compactedAll = started.flatMap((f) => f.compacted);
  const compactedUnexpected = compactedAll.filter((c) => !killedAt(c.node, c.atMs));
  const exits = cluster.unexpectedExits;

  const summaries: WatcherSummary[] = started.map((f) => {
    const bad = check.problems.some((p) => p.watcher === f.spec.label) || startProblems.some((p) => p.startsWith(`${f.spec.label} `)) || compactedUnexpected.some((c) => c.watcher === f.spec.label);
    return {
      label: f.spec.label,
      prefix: f.spec.prefix,
      home: f.spec.home,
      roams: f.spec.roams,
      start: f.spec.start,
      startAfter: f.startAfter,
      reached: f.reached,
      events: f.events.length,
      streams: f.segments.length + f.segmentsDropped,
      resumes: f.resumes,
      stalls: f.stalls,
      cuts: f.cuts,
      slowWatcherEnds: f.slowWatcherEnds,
      compacted: f.compacted.length,
      errorEvents: f.errorEvents.slice(0, 50),
      ok: !bad,
    };
  });
  const resumes = summaries.reduce((n, s) => n + s.resumes, 0);
  const slowWatcherEnds = summaries.reduce((n, s) => n + s.slowWatcherEnds, 0);
  const evidence = [
    ...(referenceError === undefined ? [] : [`reference: ${referenceError}`]),
    ...check.problems.map((p) => `${p.kind}: ${p.detail}`),
    ...startProblems.map((p) => `start: ${p}`),
    ...compactedUnexpected.map((c) => `410: ${c.watcher} resuming after ${c.lastId} on node ${c.node} at ${formatSeconds(c.atMs)}, which had not been restarted (compactVersion ${c.compactVersion})`),
    ...unansweredReads.map((k) => `final read: no answer for ${k}`),
  ];
  const ok = referenceError === undefined && check.ok && startProblems.length === 0 && compactedUnexpected.length === 0 && unansweredReads.length === 0 && exits.length === 0;

  print("");
  print("=== Results ===");
  print(`Seed: ${opts.seed}`);
  print(`Writes: ${writers.ok} acknowledged, ${writers.failed} refused, ${writers.unknownCount} unknown`);
  print(`Faults injected: ${faults.length}${faults.length === 0 ? "" : ` (${faults.map((f) => f.description).join("; ")})`}`);
  print(`Reference: ${referenceError === undefined ? `${check.referenceEvents} committed changes after version ${referenceAfter} through ${through}` : `❌ ${referenceError}`}`);
  print(`Watchers: ${started.length}, events checked: ${check.eventsChecked}, resumes with Last-Event-ID: ${resumes}, stalls: ${summaries.reduce((n, s) => n + s.stalls, 0)}, cut streams: ${summaries.reduce((n, s) => n + s.cuts, 0)}, slow_watcher ends: ${slowWatcherEnds}`);
  print(`410 compacted on resume: ${compactedAll.length} (from restarted nodes: ${compactedAll.length - compactedUnexpected.length}; from others: ${compactedUnexpected.length})`);
  // Deletes of absent keys change nothing and send no event: said, so the counts add up (found in a black-box review).
  const noChange = writers.acknowledged.filter((w) => w.kind === "delete" && w.deleted === false).length;
  print(
    `Acknowledged writes among the committed changes: ${check.acknowledgedChecked} of ${writers.acknowledged.length - noChange}` +
      (noChange === 0 ? "" : ` (the other ${noChange} acknowledged ${noChange === 1 ? "was a delete" : "were deletes"} of an absent key, which changes nothing)`),
  );
  print(`Problems: ${WATCH_PROBLEM_KINDS.map((k) => `${k} ${check.counts[k]}`).join(", ")}`);
  for (const line of evidence.slice(0, 40)) print(`  ${line}`);
  if (evidence.length > 40) print(`  ... and ${evidence.length - 40} more (see --json)`);
  for (const exit of exits) {
    print(`Node ${exit.id} exited on its own (code ${exit.code}${exit.signal === undefined ? "" : `, ${exit.signal}`}): see ${cluster.node(exit.id).logFile}`);
  }

  let reportPath: string | undefined;
  if (opts.reportPath !== undefined) {
    reportPath = writeReport(opts, {
      ok,
      check,
      referenceError,
      through,
      referenceAfter,
      faults,
      followers: started,
      summaries,
      writers,
      workloadEndMs,
      compactedUnexpected: compactedUnexpected.length,
      startProblems: startProblems.length,
      unansweredReads,
      resumes,
      print,
    });
  }
  const allOk = ok && (opts.reportPath === undefined || reportPath !== undefined);
  print("");
  print(
    allOk
      ? `✅ SUCCESS: ${started.length} watchers received exactly the ${check.referenceEvents} committed changes of their prefixes (${check.eventsChecked} events, ${resumes} resumes) under ${faults.length} fault${faults.length === 1 ? "" : "s"}; all ${check.acknowledgedChecked} acknowledged changes among them!`
      : "❌ FAILURE: see the evidence above",
  );
  print(`Replay this schedule: ${opts.replayCommand}`);
  return {
    ok: allOk,
    seed: opts.seed,
    replay: opts.replayCommand,
    durationMs: opts.durationMs,
    writers: opts.writers,
    prefixes,
    nemesis: opts.nemesis,
    schedule,
    faults,
    writes: { acknowledged: writers.ok, refused: writers.failed, unknown: writers.unknownCount },
    throughVersion: through,
    referenceAfter,
    referenceEvents: check.referenceEvents,
    eventsChecked: check.eventsChecked,
    acknowledgedChecked: check.acknowledgedChecked,
    resumes,
    slowWatcherEnds,
    compacted: { total: compactedAll.length, unexpected: compactedUnexpected },
    problems: check.counts,
    evidence: evidence.slice(0, 1_000),
    watchers: summaries,
    ...(referenceError === undefined ? {} : { referenceError }),
    ...(reportPath === undefined ? {} : { reportPath }),
  };
}

/** `12.5s`. */
function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

interface ReportFacts {
  readonly ok: boolean;
  readonly check: WatchCheckResult;
  readonly referenceError: string | undefined;
  readonly through: number;
  readonly referenceAfter: number;
  readonly faults: readonly FaultWindow[];
  readonly followers: readonly Follower[];
  readonly summaries: readonly WatcherSummary[];
  readonly writers: Writers;
  readonly workloadEndMs: number;
  readonly compactedUnexpected: number;
  readonly startProblems: number;
  readonly unansweredReads: readonly string[];
  readonly resumes: number;
  readonly print: (line: string) => void;
}

/** Writes the HTML report: writers' operations and watchers' streams on one timeline. Returns its path, or undefined when it could not be written. */
function writeReport(opts: WatchOptions, facts: ReportFacts): string | undefined {
  const path = opts.reportPath as string;
  const { check } = facts;
  const okOf = new Map(facts.summaries.map((s) => [s.label, s.ok]));
  const endMs = Math.max(facts.workloadEndMs, ...facts.followers.flatMap((f) => f.segments.map((s) => s.toMs)));
  const streams: ReportStream[] = facts.followers.map((f) => ({
    label: `w${f.spec.index + 1} ${f.spec.prefix}`,
    detail: `${f.spec.label} on ${f.spec.prefix}, from node ${f.spec.home}, start: ${f.spec.start}${f.spec.roams ? ", roams" : ""}${f.spec.openAtMs > 0 ? `, joined at ${formatSeconds(f.spec.openAtMs)}` : ""}`,
    ok: okOf.get(f.spec.label) ?? false,
    segments: f.segments.map((s) => ({ ...s })),
  }));
  const checks: ReportCheck[] = [
    { name: "Reference", ok: facts.referenceError === undefined, detail: facts.referenceError ?? `${check.referenceEvents} committed changes after version ${facts.referenceAfter} through ${facts.through}, read on node ${REFERENCE_NODE}` },
    ...WATCH_PROBLEM_KINDS.map((kind) => ({
      name: kind.replaceAll("_", " "),
      ok: check.counts[kind] === 0,
      detail: check.counts[kind] === 0 ? "none" : check.problems.filter((p) => p.kind === kind).slice(0, 20).map((p) => p.detail).join("\n"),
    })),
    { name: "Starts with no fromVersion", ok: facts.startProblems === 0, detail: facts.startProblems === 0 ? "each began after the last write acknowledged before it opened" : `${facts.startProblems} began too early` },
    { name: "410 compacted on resume", ok: facts.compactedUnexpected === 0, detail: facts.compactedUnexpected === 0 ? "only from nodes restarted before they answered" : `${facts.compactedUnexpected} from nodes that had not been restarted` },
    { name: "Final reads", ok: facts.unansweredReads.length === 0, detail: facts.unansweredReads.length === 0 ? "every written key read after healing" : `no answer: ${facts.unansweredReads.join(", ")}` },
  ];
  const html = renderReport({
    title: `kv chaos watch, seed ${opts.seed}`,
    subtitle: `${opts.writers} writers, ${facts.followers.length} watchers, ${formatSeconds(opts.durationMs)}, nemesis: ${opts.nemesis}`,
    replayCommand: opts.replayCommand,
    generatedAt: new Date().toISOString(),
    startMs: 0,
    endMs: Math.max(1, endMs),
    history: facts.writers.operations,
    gaveUpMs: facts.writers.gaveUpMs,
    clientLabels: new Map(Array.from({ length: opts.writers }, (_, i) => [i + 1, `writer ${i + 1}`])),
    faults: facts.faults.map((f) => ({ startMs: f.startMs, endMs: f.endMs, kind: f.kind, label: f.description })),
    verdict: { ok: true, keysChecked: 0 },
    banner: {
      ok: facts.ok,
      title: facts.ok ? "Watch streams exact" : "Watch streams wrong",
      text: facts.ok
        ? `${facts.followers.length} watchers received exactly the committed changes of their prefixes (${check.eventsChecked} events, ${facts.resumes} resumes); all ${check.acknowledgedChecked} acknowledged changes are among them.`
        : `see the failed checks below (${facts.check.problems.length} problems listed).`,
    },
    checks,
    streams,
    ...(facts.writers.operations.length >= REPORT_OPERATIONS_MAX ? { detailNote: `The writers' rows show their first ${REPORT_OPERATIONS_MAX} operations.` } : {}),
  });
  try {
    writeFileSync(path, html);
    facts.print(`Report written to ${path} (${Math.round(html.length / 1024)} KiB)`);
    return path;
  } catch (error) {
    facts.print(`❌ ERROR: could not write the report ${path}: ${error instanceof Error ? error.message : String(error)}`);
    return undefined;
  }
}
