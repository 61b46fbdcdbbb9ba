import { readValue, request, type Outcome } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { LoadCounters } from "./live-display.ts";
import type { AbsentWrite } from "./verify.ts";

/** Redirects one attempt may follow before it counts as refused. */
const REDIRECT_HOPS_MAX = 3;
/** Pause after a refusal (no leader yet) before the next attempt, so writers do not spin. */
const REFUSED_BACKOFF_MS = 10;

/**
 * A client of the whole cluster that finds the leader the way a user's client would: it asks the
 * node it believes leads, follows 307 redirects, and on no answer moves on to another live node.
 */
export class LeaderClient {
  /** The node believed to lead; shared by every caller, so one redirect teaches all of them. */
  leaderHint: number | undefined;
  /** Nodes not to send to (a scenario's faulted node, which it probes on its own). */
  readonly avoid = new Set<number>();
  private rotation = 0;

  constructor(
    private readonly cluster: ChaosCluster,
    /** Per-request client timeout: shorter than the nodes' own 5 s so scenarios stay quick. */
    readonly requestTimeoutMs: number,
  ) {}

  /** The node to ask next: the hinted leader when it is running, else the next running node. */
  private target(): number | undefined {
    const hint = this.leaderHint;
    if (hint !== undefined && this.cluster.node(hint).state === "running" && !this.avoid.has(hint)) return hint;
    const running = this.cluster.nodes.filter((n) => n.state === "running" && !this.avoid.has(n.id));
    if (running.length === 0) return undefined;
    const chosen = running[this.rotation++ % running.length] as { id: number };
    return chosen.id;
  }

  /** The node whose client URL a Location header points at. */
  private nodeAt(location: string | undefined): number | undefined {
    if (location === undefined) return undefined;
    return this.cluster.nodes.find(
      (n) => n.state === "running" && !this.avoid.has(n.id) && n.httpUrl !== "" && location.startsWith(`${n.httpUrl}/`),
    )?.id;
  }

  /**
   * One attempt: send to the believed leader, follow up to three redirects. The outcome is the last
   * answer; `node` is the node that gave it (undefined when no node was running).
   */
  async send(method: "GET" | "PUT" | "DELETE", path: string, body?: string): Promise<{ outcome: Outcome; node: number | undefined }> {
    let node = this.target();
    for (let hop = 0; ; hop++) {
      if (node === undefined) return { outcome: { kind: "unknown", reason: "no node is running" }, node };
      const outcome = await request(this.cluster.node(node).httpUrl, method, path, body, this.requestTimeoutMs);
      if (outcome.kind === "ok") {
        this.leaderHint = node;
        return { outcome, node };
      }
      const redirectedTo = outcome.kind === "fail" && outcome.status === 307 ? this.nodeAt(outcome.location) : undefined;
      if (redirectedTo === undefined || hop + 1 >= REDIRECT_HOPS_MAX) {
        if (this.leaderHint === node) this.leaderHint = undefined; // it did not serve: look elsewhere next time
        return { outcome, node };
      }
      this.leaderHint = redirectedTo;
      node = redirectedTo;
    }
  }

  /** Writes `value` under `key` until acknowledged or `deadlineMs` (performance.now()) passes. */
  async putUntilAcked(key: string, value: string, deadlineMs: number): Promise<boolean> {
    while (performance.now() < deadlineMs) {
      const { outcome } = await this.send("PUT", kvPath(key), value);
      if (outcome.kind === "ok") return true;
      // Retrying the same unique value is safe: an earlier unknown attempt can only have written it.
      if (outcome.kind === "fail") await Bun.sleep(REFUSED_BACKOFF_MS); // no leader yet: back off
    }
    return false;
  }

  /**
   * A linearizable read through the leader, retried until answered or `deadlineMs`: the value,
   * null when absent, undefined when no node answered in time.
   */
  async readUntilAnswered(key: string, deadlineMs: number): Promise<string | null | undefined> {
    while (performance.now() < deadlineMs) {
      const { outcome } = await this.send("GET", kvPath(key));
      if (outcome.kind === "ok") return readValue(outcome);
      if (outcome.kind === "fail") await Bun.sleep(REFUSED_BACKOFF_MS); // no leader yet: back off
    }
    return undefined;
  }
}

/** `/kv/<key>`, percent-encoded. */
export function kvPath(key: string): string {
  return `/kv/${encodeURIComponent(key)}`;
}

export interface WriteLoadOptions {
  readonly client: LeaderClient;
  /** Writers running at once, each one request at a time. */
  readonly concurrency: number;
  /** Keys are `<keyPrefix>-<n>`; every write goes to its own key with a value no other write uses. */
  readonly keyPrefix: string;
}

/** One write of the load that was not acknowledged. */
export interface UnackedWrite {
  readonly key: string;
  readonly value: string;
  readonly why: string;
}

/**
 * Continuous write load: `concurrency` writers, each sending one write at a time to the leader (as a
 * LeaderClient finds it), every write to a fresh key, so each key's fate is known: acknowledged,
 * refused (certainly not applied) or unknown. Records when each acknowledgement arrived.
 */
export class WriteLoad implements LoadCounters {
  /** Acknowledged writes: key → value. */
  readonly acked = new Map<string, string>();
  /** Writes refused before anything was proposed: each must be absent afterwards. */
  readonly refused: UnackedWrite[] = [];
  /** Writes with no answer (or a timeout): either outcome is allowed. */
  readonly unknowns: UnackedWrite[] = [];
  /** performance.now() when each acknowledgement arrived, in arrival order. */
  readonly ackTimesMs: number[] = [];
  startedMs = 0;
  stoppedMs = 0;
  private stopping = false;
  private sequence = 0;
  private writers: Promise<void>[] = [];
  private ackWaiters: { count: number; resolve: () => void }[] = [];

  constructor(private readonly opts: WriteLoadOptions) {}

  get ok(): number {
    return this.acked.size;
  }
  get failed(): number {
    return this.refused.length;
  }
  get unknown(): number {
    return this.unknowns.length;
  }
  /** Every write attempt that has been answered or given up on. */
  get attempts(): number {
    return this.ok + this.failed + this.unknown;
  }

  start(): void {
    this.startedMs = performance.now();
    this.writers = Array.from({ length: this.opts.concurrency }, () => this.writer());
  }

  /** Stops sending and waits for the writes in flight to be answered (or to time out). */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.writers);
    this.stoppedMs = performance.now();
    for (const waiter of this.ackWaiters) waiter.resolve();
    this.ackWaiters = [];
  }

  /** Resolves once `count` writes in all are acknowledged; rejects after `timeoutMs`. */
  waitForAcks(count: number, timeoutMs: number): Promise<void> {
    if (this.ok >= count) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${this.ok} of ${count} writes acknowledged within ${timeoutMs} ms`)), timeoutMs);
      this.ackWaiters.push({
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  private async writer(): Promise<void> {
    while (!this.stopping) {
      const n = this.sequence++;
      const key = `${this.opts.keyPrefix}-${n}`;
      const value = `value-${n}`; // unique: the key itself is never written again
      const { outcome } = await this.opts.client.send("PUT", kvPath(key), value);
      if (outcome.kind === "ok") {
        this.acked.set(key, value);
        this.ackTimesMs.push(performance.now());
        this.wakeAckWaiters();
      } else if (outcome.kind === "fail") {
        this.refused.push({ key, value, why: `${outcome.status} ${outcome.error}` });
        if (!this.stopping) await Bun.sleep(REFUSED_BACKOFF_MS); // refused (no leader yet): back off
      } else {
        this.unknowns.push({ key, value, why: outcome.reason });
        // A refused connection (node down) answers at once: back off rather than spin.
        if (!this.stopping) await Bun.sleep(REFUSED_BACKOFF_MS);
      }
    }
  }

  private wakeAckWaiters(): void {
    const still: typeof this.ackWaiters = [];
    for (const waiter of this.ackWaiters) {
      if (this.ok >= waiter.count) waiter.resolve();
      else still.push(waiter);
    }
    this.ackWaiters = still;
  }
}

/** What the availability of a load was: how many attempts were acknowledged and the worst silence. */
export interface Availability {
  readonly attempts: number;
  readonly acknowledged: number;
  /** acknowledged / attempts (1 when nothing was attempted). */
  readonly ratio: number;
  /** The longest stretch of the load with no acknowledged write, and where it was (ms since the load began). */
  readonly longestGapMs: number;
  readonly longestGapFromMs: number;
  readonly longestGapToMs: number;
}

/**
 * The longest interval within [startMs, endMs] holding no acknowledgement, counting the stretch
 * before the first one and after the last one. `ackTimesMs` need not be sorted; times outside the
 * window are clamped into it.
 */
export function longestGap(ackTimesMs: readonly number[], startMs: number, endMs: number): { gapMs: number; fromMs: number; toMs: number } {
  const times = ackTimesMs.map((t) => Math.min(endMs, Math.max(startMs, t))).sort((a, b) => a - b);
  let best = { gapMs: 0, fromMs: startMs, toMs: startMs };
  let previous = startMs;
  for (const t of [...times, endMs]) {
    if (t - previous > best.gapMs) best = { gapMs: t - previous, fromMs: previous, toMs: t };
    previous = t;
  }
  return best;
}

/** Availability of a finished load. */
export function availability(attempts: number, ackTimesMs: readonly number[], startMs: number, endMs: number): Availability {
  const gap = longestGap(ackTimesMs, startMs, endMs);
  return {
    attempts,
    acknowledged: ackTimesMs.length,
    ratio: attempts === 0 ? 1 : ackTimesMs.length / attempts,
    longestGapMs: Math.round(gap.gapMs),
    longestGapFromMs: Math.round(gap.fromMs - startMs),
    longestGapToMs: Math.round(gap.toMs - startMs),
  };
}

/**
 * What a scenario's writes came to: the acknowledged ones (to read back), the refused ones that must
 * never appear, and counts of answers by kind. `putAcked` writes through the leader until acknowledged.
 */
export function createLedger(client: LeaderClient) {
  const acked = new Map<string, string>();
  const mustBeAbsent: AbsentWrite[] = [];
  const counters = { ok: 0, failed: 0, unknown: 0 };
  const count = (outcome: Outcome): void => {
    if (outcome.kind === "ok") counters.ok++;
    else if (outcome.kind === "fail") counters.failed++;
    else counters.unknown++;
  };
  const putAcked = async (key: string, value: string): Promise<void> => {
    if (!(await client.putUntilAcked(key, value, performance.now() + 30_000))) throw new Error(`no leader acknowledged ${key} within 30 s`);
    counters.ok++;
    acked.set(key, value);
  };
  return { acked, mustBeAbsent, counters, count, putAcked };
}
