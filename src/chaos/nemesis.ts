/**
 * The nemesis of `kv chaos random`: a fault schedule drawn from a seed (pure: the same seed, duration
 * and mode give the same schedule on every machine), and a runner that plays it against a real
 * cluster, one fault at a time, recording when each fault window opened and closed.
 *
 * The schedule names faults, not processes: "kill the leader" is resolved to a node id only when the
 * fault starts, since which node leads depends on the cluster's timing. The resolved node is printed
 * and recorded with the window.
 */
import { unreachable } from "../lib/assert.ts";
import { createPrng } from "../lib/prng.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { LiveDisplay } from "./live-display.ts";

/** Which faults a nemesis may draw: every kind, or one family only. */
export type NemesisMode = "all" | "partition" | "kill" | "pause";
export const NEMESIS_MODES: readonly NemesisMode[] = ["all", "partition", "kill", "pause"];

/** A node named in a schedule: a fixed id, or whichever node leads when the fault starts. */
export type FaultTarget = "leader" | number;

/** One fault, as the schedule names it. */
export type Fault =
  /** SIGKILL, and start it again on its data dir when the window closes. */
  | { readonly kind: "kill"; readonly target: FaultTarget }
  /** SIGSTOP, and SIGCONT when the window closes. */
  | { readonly kind: "pause"; readonly target: FaultTarget }
  /** Cut every link to and from the node (through the runner's proxies); heal when the window closes. */
  | { readonly kind: "isolate"; readonly target: FaultTarget }
  /** Cut these directed links (`[from, to]`: from can no longer reach to); heal when the window closes. */
  | { readonly kind: "cut-links"; readonly links: readonly (readonly [number, number])[] };

export type FaultKind = Fault["kind"];

/** A fault in the schedule: when it starts (ms after the workload starts) and how long it lasts. */
export interface PlannedFault {
  readonly index: number;
  readonly startMs: number;
  readonly durationMs: number;
  readonly fault: Fault;
}

export interface ScheduleOptions {
  readonly seed: number;
  /** How long the workload runs; every fault ends `quietTailMs` before it. */
  readonly durationMs: number;
  readonly nodeCount: number;
  readonly mode: NemesisMode;
}

/** The cluster serves this long (a range, drawn from the seed) before the first fault. */
const FIRST_FAULT_AT_MS_MIN = 1_000;
const FIRST_FAULT_AT_MS_MAX = 2_000;
/** Quiet time between two faults. */
const GAP_MS_MIN = 500;
const GAP_MS_MAX = 2_000;
/** The last fault closes at least this long before the workload stops. */
const QUIET_TAIL_MS = 500;
/** Faults a schedule holds at most, whatever the duration. */
const FAULTS_MAX = 10_000;

/**
 * How long each kind of fault lasts. Every window outlasts the nodes' election timeout (15 ticks of
 * 10 ms, up to twice that), so a faulted leader is replaced while the fault holds.
 */
const FAULT_DURATION_MS: Readonly<Record<FaultKind, readonly [number, number]>> = {
  kill: [1_000, 3_000],
  pause: [600, 2_500],
  isolate: [1_500, 4_000],
  "cut-links": [1_000, 3_000],
};

/** The kinds each mode draws from, with repeats as weights. */
const MODE_KINDS: Readonly<Record<NemesisMode, readonly FaultKind[]>> = {
  all: ["kill", "pause", "isolate", "isolate", "cut-links"],
  partition: ["isolate", "isolate", "cut-links"],
  kill: ["kill"],
  pause: ["pause"],
};

/** Whether a mode may cut links, which needs the runner's TCP proxies. */
export function modeNeedsProxies(mode: NemesisMode): boolean {
  return MODE_KINDS[mode].some((kind) => kind === "isolate" || kind === "cut-links");
}

/**
 * The fault schedule of a seed: faults one after another with quiet gaps, the first after the
 * cluster has served a while, the last closing before the workload stops. Pure and deterministic.
 */
export function planSchedule(opts: ScheduleOptions): PlannedFault[] {
  const prng = createPrng(opts.seed);
  const kinds = MODE_KINDS[opts.mode];
  const faults: PlannedFault[] = [];
  let atMs = prng.intInclusive(FIRST_FAULT_AT_MS_MIN, FIRST_FAULT_AT_MS_MAX);
  while (faults.length < FAULTS_MAX) {
    const kind = prng.pick(kinds);
    const [durationMin, durationMax] = FAULT_DURATION_MS[kind];
    const durationMs = prng.intInclusive(durationMin, durationMax);
    const target: FaultTarget = prng.chance(0.5) ? "leader" : prng.intInclusive(1, opts.nodeCount);
    const fault = drawFault(kind, target, opts.nodeCount, prng);
    // Drawn before the check, so a longer duration does not change the faults before it.
    if (atMs + durationMs > opts.durationMs - QUIET_TAIL_MS) break;
    faults.push({ index: faults.length, startMs: atMs, durationMs, fault });
    atMs += durationMs + prng.intInclusive(GAP_MS_MIN, GAP_MS_MAX);
  }
  return faults;
}

function drawFault(kind: FaultKind, target: FaultTarget, nodeCount: number, prng: ReturnType<typeof createPrng>): Fault {
  switch (kind) {
    case "kill":
    case "pause":
    case "isolate":
      return { kind, target };
    case "cut-links": {
      // One to three distinct directed links: asymmetric cuts are allowed and interesting.
      const all: [number, number][] = [];
      for (let from = 1; from <= nodeCount; from++) {
        for (let to = 1; to <= nodeCount; to++) if (from !== to) all.push([from, to]);
      }
      const count = prng.intInclusive(1, Math.min(3, all.length));
      const links: [number, number][] = [];
      for (let i = 0; i < count; i++) {
        const at = prng.intInclusive(0, all.length - 1);
        links.push(all.splice(at, 1)[0] as [number, number]);
      }
      links.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      return { kind, links };
    }
    default:
      return unreachable(kind, "fault kind");
  }
}

function targetText(target: FaultTarget): string {
  return target === "leader" ? "the leader" : `node ${target}`;
}

/** `kill the leader`, `pause node 2`, `isolate node 3`, `cut links 1→2, 3→1`. */
export function describeFault(fault: Fault): string {
  switch (fault.kind) {
    case "kill":
      return `kill ${targetText(fault.target)}`;
    case "pause":
      return `pause ${targetText(fault.target)}`;
    case "isolate":
      return `isolate ${targetText(fault.target)}`;
    case "cut-links":
      return `cut links ${fault.links.map(([from, to]) => `${from}→${to}`).join(", ")}`;
    default:
      return unreachable(fault, "fault");
  }
}

/**
 * `1.2s +2.1s kill the leader`: one schedule entry on one line. A kill of `spareFromKill` (the node
 * a run keeps alive) is listed as the pause it runs as (found in a black-box review: the listing
 * said kill).
 */
export function describePlannedFault(planned: PlannedFault, spareFromKill?: number): string {
  return `${seconds(planned.startMs)} +${seconds(planned.durationMs)} ${describeFaultAsRun(planned.fault, spareFromKill)}`;
}

/** `describeFault`, but a kill of `spareFromKill` as the pause it runs as. */
export function describeFaultAsRun(fault: Fault, spareFromKill?: number): string {
  return fault.kind === "kill" && fault.target === spareFromKill ? `pause node ${spareFromKill} (spared from kills)` : describeFault(fault);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/** A fault as it happened: which nodes it hit and when (ms on the run's clock, like the history). */
export interface FaultWindow {
  readonly index: number;
  readonly kind: FaultKind;
  /** The schedule's words: `kill the leader`. */
  readonly planned: string;
  /** What was done: `kill node 2 (the leader)`. */
  readonly description: string;
  /** Nodes the fault hit (for cut links: the nodes on either end). */
  readonly nodes: readonly number[];
  readonly startMs: number;
  /** When the fault was healed (for a kill: when the node had started again). */
  readonly endMs: number;
}

export interface NemesisOptions {
  readonly schedule: readonly PlannedFault[];
  /** The run's clock: ms since the workload started. */
  readonly nowMs: () => number;
  readonly display: LiveDisplay;
  /** Called as each window closes (healed), at once: `endMs` is now. */
  readonly onHealed?: (window: FaultWindow) => void;
  /**
   * A node never to kill: a kill aimed at it (by id, or because it leads) pauses it instead. For a
   * scenario that needs one node to keep what it holds in memory (kv chaos watch's history).
   */
  readonly spareFromKill?: number;
}

/** How long a fault may wait to learn which node leads before it picks one from its index. */
const LEADER_LOOKUP_TIMEOUT_MS = 3_000;

/**
 * Plays a schedule against a cluster: waits for each fault's start (or until the previous one is
 * healed, if that took longer), injects it, waits out its duration, heals it. `stop()` cuts the
 * current wait short, heals the fault in force and resolves once the cluster is whole again.
 */
export class Nemesis {
  readonly windows: FaultWindow[] = [];
  private stopping = false;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly opts: NemesisOptions,
  ) {}

  start(): void {
    this.loop = this.run();
    // Seen by `stop`; until then, a fault or heal the cluster refuses because the run is ending
    // (ChaosClusterStopped, after Ctrl-C) must not go unhandled: Bun exits 1 at once on that, with
    // the nodes still running (found in review).
    this.loop.catch(() => undefined);
  }

  /** Stops injecting, heals whatever is in force and returns every window. */
  async stop(): Promise<FaultWindow[]> {
    this.stopping = true;
    this.wake?.();
    await this.loop;
    return this.windows;
  }

  /** Resolves at `atMs` on the run's clock, or at once when stopping. A schedule timer, not a poll. */
  private until(atMs: number): Promise<void> {
    const waitMs = atMs - this.opts.nowMs();
    if (this.stopping || waitMs <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      timer = setTimeout(done, waitMs);
      this.wake = done;
    });
  }

  private async run(): Promise<void> {
    const { display } = this.opts;
    for (const planned of this.opts.schedule) {
      await this.until(planned.startMs);
      if (this.stopping) return;
      const startMs = this.opts.nowMs();
      const applied = await this.inject(planned);
      display.print(`${clock(startMs)} nemesis: ${applied.description}`);
      display.setFault(applied.description);
      await this.until(startMs + planned.durationMs);
      const healed = await applied.heal();
      const endMs = this.opts.nowMs();
      display.print(`${clock(endMs)} nemesis: ${healed} (after ${((endMs - startMs) / 1000).toFixed(1)} s)`);
      display.setFault("none");
      const window: FaultWindow = {
        index: planned.index,
        kind: applied.kind,
        planned: describeFaultAsRun(planned.fault, this.opts.spareFromKill),
        description: applied.description,
        nodes: applied.nodes,
        startMs,
        endMs,
      };
      this.windows.push(window);
      this.opts.onHealed?.(window);
    }
  }

  /** SIGSTOPs node `id`; healing sends SIGCONT (or starts it again if it exited meanwhile). */
  private pause(id: number, wasLeader: boolean, note: string): { kind: FaultKind; description: string; nodes: number[]; heal: () => Promise<string> } {
    this.cluster.signal(id, "SIGSTOP");
    return {
      kind: "pause",
      description: `pause node ${id}${wasLeader ? " (the leader)" : ""}${note} with SIGSTOP`,
      nodes: [id],
      heal: async () => {
        if (this.cluster.node(id).state === "dead") {
          // It exited while stopped (recorded as an unexpected exit, which fails the run): the
          // run goes on testing with the node started again on its data dir.
          await this.cluster.startNode(id);
          return `node ${id} had exited while paused; started again on its data dir`;
        }
        this.cluster.signal(id, "SIGCONT");
        return `node ${id} resumed with SIGCONT`;
      },
    };
  }

  /** The node a target names now. */
  private async resolve(target: FaultTarget, index: number): Promise<{ id: number; wasLeader: boolean }> {
    if (target !== "leader") return { id: target, wasLeader: false };
    const live = this.cluster.nodes.filter((n) => n.state === "running").map((n) => n.id);
    try {
      return { id: await this.cluster.waitForLeader(live, LEADER_LOOKUP_TIMEOUT_MS), wasLeader: true };
    } catch {
      // No agreed leader right now: fall back to a node fixed by the fault's place in the schedule.
      return { id: (index % this.cluster.nodes.length) + 1, wasLeader: false };
    }
  }

  private async inject(planned: PlannedFault): Promise<{ kind: FaultKind; description: string; nodes: number[]; heal: () => Promise<string> }> {
    const fault = planned.fault;
    switch (fault.kind) {
      case "kill": {
        const { id, wasLeader } = await this.resolve(fault.target, planned.index);
        if (id === this.opts.spareFromKill) return this.pause(id, wasLeader, " (spared from kills)");
        await this.cluster.kill(id);
        return {
          kind: "kill",
          description: `kill node ${id}${wasLeader ? " (the leader)" : ""} with SIGKILL`,
          nodes: [id],
          heal: async () => {
            await this.cluster.startNode(id);
            return `node ${id} started again on its data dir`;
          },
        };
      }
      case "pause": {
        const { id, wasLeader } = await this.resolve(fault.target, planned.index);
        return this.pause(id, wasLeader, "");
      }
      case "isolate": {
        const { id, wasLeader } = await this.resolve(fault.target, planned.index);
        this.cluster.isolate(id);
        return {
          kind: "isolate",
          description: `isolate node ${id}${wasLeader ? " (the leader)" : ""} from both peers`,
          nodes: [id],
          heal: async () => {
            this.cluster.heal();
            return `healed: node ${id} reconnected`;
          },
        };
      }
      case "cut-links": {
        for (const [from, to] of fault.links) this.cluster.cutLink(from, to);
        const nodes = [...new Set(fault.links.flat())].sort((a, b) => a - b);
        return {
          kind: "cut-links",
          description: `cut links ${fault.links.map(([from, to]) => `${from}→${to}`).join(", ")}`,
          nodes,
          heal: async () => {
            this.cluster.heal();
            return "healed: every link restored";
          },
        };
      }
      default:
        return unreachable(fault, "fault");
    }
  }
}

/** `[  2.31s]`: a time on the run's clock, for event lines. */
export function clock(ms: number): string {
  return `[${(ms / 1000).toFixed(2).padStart(7)}s]`;
}
