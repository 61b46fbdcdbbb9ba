/**
 * The leader's side of leases: one countdown per lease, by the node's monotonic clock, and the
 * expiries it proposes when they run out. The leases themselves are in the replicated state
 * machine (src/kv/leases.ts); followers keep no countdown.
 *
 * A node that becomes leader restarts every lease's countdown at its full TTL, as etcd does: a
 * failover can make a lease last longer, never shorter (the old leader's countdowns are not known
 * here, and counting from less would end a lease its holder kept alive). A keepalive resets the
 * countdown in memory only, without going through the log.
 */
import { assert } from "../lib/assert.ts";
import { leaseExpireIdsMax } from "../kv/command.ts";

/** How expiries are proposed: bounded batches, so thousands of leases running out at once do not stall the loop. */
export interface LeaseExpiryLimits {
  /** Lease ids in one expire command (one log entry). */
  readonly idsPerCommandMax: number;
  /**
   * Expire commands proposed per tick. One: commands proposed together commit and apply together,
   * and one Ready applying thousands of expiries (each deleting its keys) held a loaded node's loop
   * long enough to lose its leadership; one per tick spreads them over Readies.
   */
  readonly commandsPerTickMax: number;
  /** Expire commands proposed and not yet applied, at most: past it, leases wait for the next tick. */
  readonly commandsInFlightMax: number;
}

/** The defaults: up to 25,000 lease expiries a second (10 ms ticks), at most 250 in one apply. */
export const defaultLeaseExpiryLimits: LeaseExpiryLimits = {
  idsPerCommandMax: 250,
  commandsPerTickMax: 1,
  commandsInFlightMax: 4,
};

interface Countdown {
  readonly ttlMs: number;
  deadlineMs: number;
  /** An expire command naming it is proposed and not yet applied (or failed). */
  expiring: boolean;
}

/**
 * The leader's countdowns. Deadlines sit in a binary min-heap with lazy deletion: a keepalive
 * pushes the new deadline and leaves the old one, which is dropped when it surfaces. Stale entries
 * are bounded: when the heap holds more than twice the leases plus a slack, it is rebuilt.
 */
export class LeaseCountdowns {
  private leading = false;
  /** The term this node leads in (0 when it does not lead). */
  private leaderTerm = 0;
  private readonly countdowns = new Map<number, Countdown>();
  private heap: { id: number; deadlineMs: number }[] = [];
  private inFlight = 0;
  /** Bumped whenever leadership starts or ends: an expiry's outcome from an earlier one is ignored. */
  private term = 0;

  constructor(private readonly limits: LeaseExpiryLimits = defaultLeaseExpiryLimits) {
    assert(limits.idsPerCommandMax >= 1 && limits.idsPerCommandMax <= leaseExpireIdsMax, `idsPerCommandMax ${limits.idsPerCommandMax}`);
    assert(limits.commandsInFlightMax >= 1 && limits.commandsPerTickMax >= 1, "lease expiry limits must be at least 1");
  }

  /** True while this node leads (and so counts down). */
  isLeading(): boolean {
    return this.leading;
  }

  /** True while this node leads in `term`: a leader of an earlier term must restart its countdowns (`becameLeader`). */
  isLeadingIn(term: number): boolean {
    return this.leading && this.leaderTerm === term;
  }

  /** Leases counted down now. */
  size(): number {
    return this.countdowns.size;
  }

  /**
   * This node became leader in `term`: every lease in the applied state starts its countdown at its
   * full TTL. (Its countdowns of an earlier term are stale: another leader may have taken keepalives
   * in between.)
   */
  becameLeader(term: number, nowMs: number, leases: Iterable<{ id: number; ttlMs: number }>): void {
    this.clear();
    this.leading = true;
    this.leaderTerm = term;
    for (const lease of leases) this.start(lease.id, lease.ttlMs, nowMs);
  }

  /** This node stopped leading: it counts nothing down (the next leader restarts every countdown). */
  stoppedLeading(): void {
    this.clear();
  }

  /** A lease was granted (applied here): the leader counts it down from its full TTL. */
  granted(id: number, ttlMs: number, nowMs: number): void {
    if (this.leading) this.start(id, ttlMs, nowMs);
  }

  /** Leases ended (revoked or expired, applied here). */
  ended(ids: readonly number[]): void {
    for (const id of ids) this.countdowns.delete(id);
  }

  /**
   * A keepalive for lease `id`, which exists in the applied state with `ttlMs`: its countdown
   * restarts at the full TTL. False when its expiry is already proposed (it is as good as gone).
   */
  keepAlive(id: number, ttlMs: number, nowMs: number): boolean {
    assert(this.leading, "keepalive on a node that does not lead");
    const countdown = this.countdowns.get(id);
    if (countdown?.expiring === true) return false;
    this.start(id, ttlMs, nowMs);
    return true;
  }

  /** Milliseconds left on lease `id`'s countdown (0 once its expiry is proposed); undefined when not counted here. */
  remainingMs(id: number, nowMs: number): number | undefined {
    const countdown = this.countdowns.get(id);
    if (countdown === undefined) return undefined;
    return countdown.expiring ? 0 : Math.max(0, Math.round(countdown.deadlineMs - nowMs));
  }

  /**
   * The leases run out by `nowMs`, in batches of at most `idsPerCommandMax`, as many batches as
   * the commands in flight allow; each batch is marked expiring and counts as in flight until
   * `expirySettled` (applied) or `expiryFailed` (not proposed, or its outcome unknown).
   */
  due(nowMs: number): number[][] {
    const batches: number[][] = [];
    if (!this.leading) return batches;
    let batch: number[] = [];
    while (this.inFlight + batches.length < this.limits.commandsInFlightMax && batches.length < this.limits.commandsPerTickMax) {
      const top = this.heap[0];
      if (top === undefined || top.deadlineMs > nowMs) break;
      this.pop();
      const countdown = this.countdowns.get(top.id);
      // A stale heap entry: the lease ended, or a keepalive moved its deadline (pushed anew).
      if (countdown === undefined || countdown.expiring || countdown.deadlineMs !== top.deadlineMs) continue;
      countdown.expiring = true;
      batch.push(top.id);
      if (batch.length >= this.limits.idsPerCommandMax) {
        batches.push(batch);
        batch = [];
      }
    }
    if (batch.length > 0) batches.push(batch);
    this.inFlight += batches.length;
    return batches;
  }

  /** Which leadership `due` answered in: pass it back to `expirySettled` and `expiryFailed`. */
  generation(): number {
    return this.term;
  }

  /** An expire command applied: its leases that still existed ended (see `ended`). */
  expirySettled(generation: number): void {
    if (generation === this.term) this.inFlight = Math.max(0, this.inFlight - 1);
  }

  /** An expire command was refused or its outcome is unknown: its leases still counted here are due again now. */
  expiryFailed(generation: number, ids: readonly number[], nowMs: number): void {
    if (generation !== this.term || !this.leading) return;
    this.inFlight = Math.max(0, this.inFlight - 1);
    for (const id of ids) {
      const countdown = this.countdowns.get(id);
      if (countdown === undefined || !countdown.expiring) continue;
      countdown.expiring = false;
      countdown.deadlineMs = Math.min(countdown.deadlineMs, nowMs);
      this.push(id, countdown.deadlineMs);
    }
  }

  private start(id: number, ttlMs: number, nowMs: number): void {
    const deadlineMs = nowMs + ttlMs;
    this.countdowns.set(id, { ttlMs, deadlineMs, expiring: false });
    this.push(id, deadlineMs);
    if (this.heap.length > 2 * this.countdowns.size + 1024) this.rebuild();
  }

  private clear(): void {
    this.term++;
    this.leading = false;
    this.leaderTerm = 0;
    this.countdowns.clear();
    this.heap = [];
    this.inFlight = 0;
  }

  /** Drops every stale heap entry: one entry per lease counting down. */
  private rebuild(): void {
    this.heap = [];
    for (const [id, countdown] of this.countdowns) if (!countdown.expiring) this.push(id, countdown.deadlineMs);
  }

  private push(id: number, deadlineMs: number): void {
    const heap = this.heap;
    heap.push({ id, deadlineMs });
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent]!.deadlineMs <= heap[i]!.deadlineMs) break;
      [heap[parent], heap[i]] = [heap[i]!, heap[parent]!];
      i = parent;
    }
  }

  private pop(): void {
    const heap = this.heap;
    const last = heap.pop();
    if (last === undefined || heap.length === 0) return;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && heap[left]!.deadlineMs < heap[smallest]!.deadlineMs) smallest = left;
      if (right < heap.length && heap[right]!.deadlineMs < heap[smallest]!.deadlineMs) smallest = right;
      if (smallest === i) return;
      [heap[smallest], heap[i]] = [heap[i]!, heap[smallest]!];
      i = smallest;
    }
  }
}
