/**
 * Watchers in the node swarm: `kv chaos watch`'s checker (src/chaos/watch-check.ts) judging what
 * the real node loop's watch streams (src/node/watch.ts) carried through crashes, stalls,
 * partitions, snapshot installs and membership changes.
 *
 * Each watcher watches the clients' keys on a node drawn at random, from a linearizable start, and
 * records every change it receives. When its stream ends (its node crashed or stopped, a snapshot
 * overtook it, it fell behind) or its node is no longer running, it resumes on another node after
 * the last version it reached, as an `EventSource` reconnecting with `Last-Event-ID` does. A resume
 * refused as compacted by every running node (none keeps its history any more) ends that watcher
 * honestly: a new one starts from now, and each is checked over what it covered. After healing,
 * every watcher must reach the final commit index; the reference is a fresh watch, from the
 * earliest start, on a member whose history still covers it. When none does (every member
 * restarted or installed a snapshot since), it starts where the member whose history reaches back
 * furthest starts, and every watcher is judged from there on (counted: `referenceUnavailable`).
 */
import { checkWatch, type AcknowledgedWrite, type UnansweredWrite, type WatchEvent, type WatcherEvents } from "../chaos/watch-check.ts";
import { KvError } from "../lib/kv-error.ts";
import type { Prng } from "../lib/prng.ts";
import type { WatchItem, WatchSubscription } from "../node/api.ts";
import type { NodeId } from "../raft/types.ts";
import type { Operation } from "../chaos/history.ts";
import { type NodeSim, SimViolation } from "./node-sim.ts";

/** What the watchers did in a run (for the swarm's result). */
export interface SimWatchStats {
  /** Watchers checked (a compacted resume starts another), streams opened, change events received. */
  readonly watchers: number;
  readonly streams: number;
  readonly events: number;
  /** Resumes refused as compacted (a watcher ended, another started). */
  readonly compactedResumes: number;
  /** Streams that ended because their client lagged: its buffer overflowed (slow_watcher), or the history moved past it (compacted). */
  readonly slowWatcherEnds: number;
  readonly compactedEnds: number;
  /** Runs whose reference could not be read (no member's history covered the earliest start). */
  readonly referenceUnavailable: number;
}

interface Watcher {
  readonly label: string;
  startAfter: number;
  reached: number;
  readonly events: WatchEvent[];
  /** Set once it ended (a compacted resume); it is checked over what it covered. */
  ended: boolean;
  subscription: WatchSubscription | undefined;
  /** Bumped whenever its stream is replaced, so a stale reader stops. */
  generation: number;
  /** Nodes that refused to resume it as compacted at `reached` (another may still keep that history). */
  readonly refusedBy: Set<NodeId>;
  /**
   * A slow client's pause before it takes each batch, drawn up to this (0: it takes them at once):
   * its stream lags, so a small buffer ends it (slow_watcher) and a small history turns over
   * beneath it (compacted), which no prompt reader met (found in a review).
   */
  readonly readPauseMsMax: number;
}

const decoder = new TextDecoder();
/** What a watcher's `subscription` holds while its stream is being opened. */
const opening: WatchSubscription = { next: async () => undefined, close: () => undefined };

function eventOf(item: Extract<WatchItem, { type: "change" }>): WatchEvent {
  const change = item.change;
  return change.kind === "put"
    ? { version: change.version, kind: "put", key: change.key, value: decoder.decode(change.value) }
    : { version: change.version, kind: "delete", key: change.key };
}

/** The watchers of one swarm run. */
export class SimWatchers {
  private readonly watchers: Watcher[] = [];
  private streams = 0;
  private compactedResumes = 0;
  private slowWatcherEnds = 0;
  private compactedEnds = 0;
  private referenceUnavailable = 0;
  private stopped = false;

  constructor(
    private readonly sim: NodeSim,
    private readonly prng: Prng,
    /** The keys' common prefix (the clients' keys, not the bank's: its transactions change two keys at a version). */
    private readonly prefix: string,
  ) {}

  /** Starts `count` watchers, each at a drawn time, and keeps them resuming every tick until `check`. */
  start(count: number, tickMs: number): void {
    for (let i = 0; i < count; i++) this.sim.at(this.prng.intInclusive(0, 200), () => this.open(this.newWatcher(), "now"));
    const keepUp = (): void => {
      if (this.stopped) return;
      for (const watcher of this.watchers) if (!watcher.ended && watcher.subscription === undefined) this.resume(watcher);
      this.sim.at(tickMs, keepUp);
    };
    this.sim.at(tickMs, keepUp);
  }

  private newWatcher(): Watcher {
    const readPauseMsMax = this.prng.pick([0, 0, 100, 1_000]);
    const watcher: Watcher = { label: `w${this.watchers.length + 1}`, startAfter: -1, reached: -1, events: [], ended: false, subscription: undefined, generation: 0, refusedBy: new Set(), readPauseMsMax };
    this.watchers.push(watcher);
    return watcher;
  }

  private resume(watcher: Watcher): void {
    if (watcher.startAfter < 0) this.open(watcher, "now");
    else this.open(watcher, { after: watcher.reached });
  }

  /** Opens `watcher`'s stream on a running node drawn at random (none running: a later tick tries again). */
  private open(watcher: Watcher, start: "now" | { after: number }): void {
    if (this.stopped) return;
    const candidates = this.candidates(watcher, start);
    if (candidates.length === 0) {
      // Every node still running refused it as compacted; those that had not (a removed node,
      // refusing as unavailable until the operator stopped it) stopped. It ends as when the last refuses.
      if (start !== "now" && watcher.refusedBy.size > 0 && this.candidates(watcher, "now").length > 0) this.endCompacted(watcher);
      return;
    }
    const id = this.prng.pick(candidates);
    const node = this.sim.servers.get(id)?.node;
    if (node === undefined) return;
    const generation = ++watcher.generation;
    // Marked as opening: the keep-up tick leaves it alone until this settles.
    watcher.subscription = opening;
    this.streams++;
    node.watch({ prefix: this.prefix }, start).then(
      (subscription) => {
        if (generation !== watcher.generation || this.stopped) {
          subscription.close();
          return;
        }
        watcher.subscription = subscription;
        watcher.refusedBy.clear();
        this.read(watcher, subscription, generation, id, start === "now").catch((error: unknown) => this.sim.raise(error));
      },
      (error: unknown) => {
        if (generation !== watcher.generation) return;
        watcher.subscription = undefined;
        if (error instanceof KvError && error.code === "compacted" && start !== "now") {
          // This node's history does not reach back to where it stopped; another's may. Once every
          // running node refused, no node keeps it: this watcher ends here, and another starts from now.
          watcher.refusedBy.add(id);
          if (this.candidates(watcher, start).length > 0) this.open(watcher, start);
          else this.endCompacted(watcher);
          return;
        }
        if (!(error instanceof KvError)) this.sim.raise(error);
        // Refused (no leader for the linearizable start, stopping, overloaded): the next tick tries again.
      },
    );
  }

  /** No running node keeps the history `watcher` needs: it ends here, and another starts from now. */
  private endCompacted(watcher: Watcher): void {
    this.compactedResumes++;
    watcher.ended = true;
    this.open(this.newWatcher(), "now");
  }

  /** The running nodes `watcher` may open on: for a resume, those that have not refused it as compacted. */
  private candidates(watcher: Watcher, start: "now" | { after: number }): NodeId[] {
    return [...this.sim.servers.keys()].filter((id) => this.sim.isRunning(id) && (start === "now" || !watcher.refusedBy.has(id)));
  }

  private async read(watcher: Watcher, subscription: WatchSubscription, generation: number, id: NodeId, fresh: boolean): Promise<void> {
    let first = fresh;
    for (;;) {
      if (watcher.readPauseMsMax > 0 && !first) {
        const pauseMs = this.prng.intInclusive(0, watcher.readPauseMsMax);
        await new Promise<void>((resolve) => this.sim.at(pauseMs, resolve));
        if (generation !== watcher.generation) return;
      }
      const items = await subscription.next();
      if (generation !== watcher.generation) return;
      if (items === undefined) break;
      let ended = false;
      for (const item of items) {
        if (item.type === "change") {
          watcher.events.push(eventOf(item));
          watcher.reached = Math.max(watcher.reached, item.change.version);
        } else if (item.type === "progress") {
          // A stream's first item is a progress event at the version it starts after.
          if (first) {
            watcher.startAfter = item.version;
            watcher.reached = Math.max(watcher.reached, item.version);
            first = false;
          } else {
            watcher.reached = Math.max(watcher.reached, item.version);
          }
        } else {
          ended = true;
          if (item.error === "slow_watcher") this.slowWatcherEnds++;
          else if (item.error === "compacted") this.compactedEnds++;
        }
      }
      if (first) throw new SimViolation(`watch ${watcher.label} on node ${id}: a fresh stream began with no progress event`);
      if (ended) break;
      // A node no longer running keeps its stream open in this process's memory: leave it.
      if (!this.sim.isRunning(id)) break;
    }
    subscription.close();
    if (generation === watcher.generation) watcher.subscription = undefined;
  }

  /** After healing: every watcher reaches `throughVersion` (resuming as needed) within `budgetMs`. */
  async catchUp(throughVersion: number, budgetMs: number): Promise<void> {
    const ok = await this.sim.runUntilTrue(() => this.watchers.every((w) => w.ended || (w.startAfter >= 0 && w.reached >= throughVersion)), budgetMs);
    if (!ok) {
      const behind = this.watchers.filter((w) => !w.ended && (w.startAfter < 0 || w.reached < throughVersion)).map((w) => `${w.label} at ${w.reached}`);
      throw new SimViolation(`watchers did not reach version ${throughVersion} within ${budgetMs} ms: ${behind.join(", ")}`);
    }
  }

  /**
   * Reads the reference from node `id` (a member, caught up), after `after`, through
   * `throughVersion`: the changes, or the oldest version this node's history may start from when it
   * does not reach back to `after`.
   */
  private async reference(id: NodeId, after: number, throughVersion: number, budgetMs: number): Promise<WatchEvent[] | { compactVersion: number } | undefined> {
    const node = this.sim.servers.get(id)?.node;
    if (node === undefined) return undefined;
    let subscription: WatchSubscription;
    try {
      subscription = await node.watch({ prefix: this.prefix }, { after });
    } catch (error) {
      if (error instanceof KvError && error.code === "compacted" && error.details.compactVersion !== undefined) return { compactVersion: error.details.compactVersion };
      throw error;
    }
    const events: WatchEvent[] = [];
    let reached = after;
    let ended = false;
    const done = this.sim.runUntilTrue(() => ended || reached >= throughVersion, budgetMs);
    void (async () => {
      for (;;) {
        const items = await subscription.next();
        if (items === undefined) break;
        for (const item of items) {
          if (item.type === "change") {
            events.push(eventOf(item));
            reached = Math.max(reached, item.change.version);
          } else if (item.type === "progress") {
            reached = Math.max(reached, item.version);
          } else {
            ended = true;
          }
        }
        if (ended) break;
      }
      ended = true;
    })().catch((error: unknown) => this.sim.raise(error));
    await done;
    subscription.close();
    return reached >= throughVersion ? events : undefined;
  }

  /**
   * Judges every watcher with the watch checker against a reference read on one of `members`, the
   * clients' answers (`history`: ops on keys under the prefix) and `throughVersion`. The reference
   * starts at the earliest start of any watcher, or where the member whose history reaches back
   * furthest starts, if none reaches that far: each watcher is then judged from there on (what it
   * received before is left unjudged, counted in `referenceUnavailable`). Throws a `SimViolation`
   * naming the problems.
   */
  async check(members: readonly NodeId[], history: readonly Operation[], throughVersion: number, budgetMs: number): Promise<SimWatchStats> {
    this.stopped = true;
    for (const watcher of this.watchers) watcher.generation++;
    const checked = this.watchers.filter((w) => w.startAfter >= 0);
    const stats = (): SimWatchStats => ({
      watchers: checked.length,
      streams: this.streams,
      events: checked.reduce((sum, w) => sum + w.events.length, 0),
      compactedResumes: this.compactedResumes,
      slowWatcherEnds: this.slowWatcherEnds,
      compactedEnds: this.compactedEnds,
      referenceUnavailable: this.referenceUnavailable,
    });
    if (checked.length === 0) return stats();
    // Before any reference: every event each watcher got comes once and in version order, those
    // before a reference's start too (a review found a quarter of the events judged by nothing,
    // when no member's history reached back to the earliest start).
    for (const w of checked) {
      const problem = outOfOrderOrRepeated(w.events);
      if (problem !== undefined) throw new SimViolation(`watch check failed: ${w.label} ${problem}`);
    }
    let referenceAfter = Math.min(...checked.map((w) => w.startAfter));
    let reference: WatchEvent[] | undefined;
    let furthest: { id: NodeId; compactVersion: number } | undefined;
    for (const id of members) {
      const read = await this.reference(id, referenceAfter, throughVersion, budgetMs);
      if (Array.isArray(read)) {
        reference = read;
        break;
      }
      if (read !== undefined && (furthest === undefined || read.compactVersion < furthest.compactVersion)) furthest = { id, compactVersion: read.compactVersion };
    }
    if (reference === undefined && furthest !== undefined) {
      referenceAfter = furthest.compactVersion - 1;
      const read = await this.reference(furthest.id, referenceAfter, throughVersion, budgetMs);
      if (Array.isArray(read)) reference = read;
      this.referenceUnavailable++;
    }
    if (reference === undefined) throw new SimViolation(`no member could be read for the watch reference through version ${throughVersion}`);
    const from = referenceAfter;
    const { acknowledged, unknown, refused } = watchedWrites(history, this.prefix, from);
    // Each watcher from the reference's start on (see above).
    const eventsOf = (w: Watcher): WatcherEvents => ({
      label: w.label,
      prefix: this.prefix,
      startAfter: Math.max(w.startAfter, from),
      events: w.events.filter((event) => event.version > from),
      reached: w.reached,
    });
    // Watchers that went on to the end, against everything; each one that ended (every running node
    // refused to resume it as compacted) over what it covered: through the version it reached.
    const runs = [
      { watchers: checked.filter((w) => !w.ended), through: throughVersion },
      ...checked.filter((w) => w.ended && w.reached > from).map((w) => ({ watchers: [w], through: w.reached })),
    ];
    for (const run of runs) {
      if (run.watchers.length === 0) continue;
      const result = checkWatch({
        reference: reference.filter((event) => event.version <= run.through),
        referenceAfter: from,
        throughVersion: run.through,
        watchers: run.watchers.map(eventsOf),
        acknowledged: acknowledged.filter((write) => write.version <= run.through),
        unknown,
        refused,
        singleKeyWrites: true,
      });
      if (!result.ok) {
        const shown = result.problems.slice(0, 10).map((p) => `${p.kind}${p.watcher === undefined ? "" : ` (${p.watcher})`}${p.version === undefined ? "" : ` @${p.version}`}: ${p.detail}`);
        throw new SimViolation(`watch check failed (through version ${run.through}): ${shown.join("; ")}`);
      }
    }
    return stats();
  }

  /** A digest of what the watchers received (for the run's digest: a replay receives the same). */
  digestText(): string {
    return this.watchers.map((w) => `${w.label}:${w.startAfter}:${w.reached}:${w.events.map((e) => `${e.version}${e.kind[0]}${e.key}=${e.value ?? ""}`).join(",")}`).join("|");
  }
}

/** What is wrong with a watcher's events as a stream must give them (versions never going back, no change twice), if anything. */
export function outOfOrderOrRepeated(events: readonly WatchEvent[]): string | undefined {
  let version = 0;
  const atVersion = new Set<string>();
  for (const event of events) {
    if (event.version < version) return `got version ${event.version} (${event.key}) after ${version}`;
    if (event.version > version) atVersion.clear();
    version = event.version;
    if (atVersion.has(event.key)) return `got ${event.key} at version ${version} twice`;
    atVersion.add(event.key);
  }
  return undefined;
}

/**
 * The writes under `prefix` the watch check judges the streams against (src/chaos/watch-check.ts),
 * from the clients' history: acknowledged ones past version `from`, unanswered, refused. A get that
 * read a value names the version of the put that wrote it, so that put is known to have committed
 * there though it had no answer: counted as acknowledged at that version. Without it, an unanswered
 * write's change missing from every stream and from the reference passed the check (found in a code
 * review: a get had read it).
 */
export function watchedWrites(history: readonly Operation[], prefix: string, from: number): { acknowledged: AcknowledgedWrite[]; unknown: UnansweredWrite[]; refused: UnansweredWrite[] } {
  const acknowledged: AcknowledgedWrite[] = [];
  const unknown: UnansweredWrite[] = [];
  const refused: UnansweredWrite[] = [];
  const known = new Set<number>();
  for (const op of history) {
    if (op.kind === "get" || !op.key.startsWith(prefix)) continue;
    const kind = op.kind === "put" ? "put" : "delete";
    const write = { key: op.key, kind, ...(op.value === undefined ? {} : { value: op.value }) } as const;
    if (op.outcome === "ok") {
      known.add(op.version as number);
      if ((op.version as number) > from) acknowledged.push({ ...write, version: op.version as number, ...(kind === "delete" ? { deleted: op.deleted === true } : {}) });
    } else if (op.outcome === "unknown") unknown.push(write);
    else refused.push(write);
  }
  for (const op of history) {
    if (op.kind !== "get" || op.outcome !== "ok" || typeof op.output !== "string" || op.version === undefined || !op.key.startsWith(prefix)) continue;
    if (op.version <= from || known.has(op.version)) continue;
    known.add(op.version);
    acknowledged.push({ key: op.key, kind: "put", value: op.output, version: op.version });
  }
  return { acknowledged, unknown, refused };
}
