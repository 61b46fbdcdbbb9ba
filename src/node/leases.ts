/**
 * The leader's side of leases: one countdown per lease, by the node's monotonic clock, and the
 * expiries it proposes when they run out. The leases themselves are in the replicated state
 * machine (src/kv/leases.ts); followers keep no countdown.
 *
 * A node that becomes leader restarts every lease's countdown at its full TTL, as etcd does: a
 * failover can make a lease last longer, never shorter (the old leader's countdowns are not known
 * here, and counting from less would end a lease its holder kept alive). It reads the leases a page
 * per tick (`leaseScanPageRows`), each counted from its election; a lease not read yet is simply not
 * counted down yet (so it lasts a little longer), and a keepalive or grant meanwhile counts it at
 * once. A keepalive resets the countdown in memory only, without going through the log.
 */
import { assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { KvError } from "../lib/kv-error.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import { encodeLeaseCommand, leaseExpireIdsMax, type LeaseCommand } from "../kv/command.ts";
import { leaseCountKey, leaseKeysPrefix, leaseRowKey, leaseRowsPrefix, leaseTtlMsMax, parseLeaseCount, parseLeaseRow } from "../kv/leases.ts";
import type { Role } from "../raft/types.ts";
import type { KvStorage } from "../storage/kv-storage.ts";
import { type LeaseGrant, type LeaseInfo, leaseInfoKeysMax, type LeaseSummary } from "./api.ts";

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

/**
 * Lease rows a new leader reads per tick to start their countdowns. All at once, a million leases
 * (`leasesMax`) held the turn that elected it for about 2.5 s (100,000 took 163-266 ms, a code
 * review's measurement), past the followers' election timeout: the next leader would start over,
 * and while leadership flapped no lease could expire. A page is a few ms; a million take 10 s of ticks.
 */
export const leaseScanPageRows = 1_000;

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
  becameLeader(term: number, nowMs: number, leases: Iterable<{ id: number; ttlMs: number }> = []): void {
    this.clear();
    this.leading = true;
    this.leaderTerm = term;
    this.resume(leases, nowMs);
  }

  /**
   * Leases of the applied state read after the election (a page at a time): each not counted yet
   * counts from `startMs`, the election. One counted already was granted or kept alive since, and
   * keeps that later deadline.
   */
  resume(leases: Iterable<{ id: number; ttlMs: number }>, startMs: number): void {
    if (!this.leading) return;
    for (const lease of leases) if (!this.countdowns.has(lease.id)) this.start(lease.id, lease.ttlMs, startMs);
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
   * restarts at the full TTL. False once its TTL has run out here: its expiry is proposed (it is as
   * good as gone), or due again after a proposal that failed, whose entry may still commit if it
   * timed out (a keepalive answered then would promise a lease that vanishes next).
   */
  keepAlive(id: number, ttlMs: number, nowMs: number): boolean {
    assert(this.leading, "keepalive on a node that does not lead");
    const countdown = this.countdowns.get(id);
    if (countdown !== undefined && (countdown.expiring || countdown.deadlineMs <= nowMs)) return false;
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

/** What `NodeLeases` needs from the node that hosts it (src/node/kv-node.ts). */
export interface LeasesHost {
  readonly storage: KvStorage;
  readonly clock: Clock;
  /** The shortest TTL a lease gets, in ms (see `leaseTtlMsMin`). */
  readonly ttlMsMin: number;
  /** The core's role and term now. */
  coreStatus(): { role: Role; term: number };
  /** Throws the error a request gets when the node cannot serve (stopped, full disk, removed). */
  refuseUnlessRunning(): void;
  /** Throws `overloaded` when too many requests wait. */
  refuseWhenFull(): void;
  notLeader(): KvError;
  /** Resolves once what was committed when it was called is applied here (a lease read). */
  readBarrier(): Promise<void>;
  /**
   * Queues entry data for the next turn's proposal; resolves with its apply result. `check`, when
   * given, is asked as the queue is proposed: an error refuses the data unproposed.
   */
  propose(data: Uint8Array, check?: () => KvError | undefined): Promise<ApplyResult>;
  /** How long a request may wait for its answer, in ms. */
  readonly requestTimeoutMs: number;
}

/**
 * The shortest TTL a lease gets: twice the longest election timeout (randomized up to twice
 * `electionTicks`), so a lease outlives the election that follows its leader's failure.
 */
export function leaseTtlMsMin(electionTicks: number, tickMs: number): number {
  return 2 * (2 * electionTicks * tickMs);
}

/**
 * The error for a lease that does not exist (never granted, expired or revoked). `refusedWrite`:
 * the answer to a put or transaction on the lease, which then wrote nothing (a read or keepalive
 * writes nothing anyway).
 */
export function leaseNotFound(id: number, refusedWrite = false): KvError {
  return new KvError("lease_not_found", `lease ${id} does not exist (it expired, was revoked, or was never granted)${refusedWrite ? ": nothing was written" : ""}`);
}

/** A lease id from a client: a positive whole number (the index of its grant). */
export function checkLeaseId(id: number): void {
  if (!Number.isSafeInteger(id) || id < 1) throw new KvError("bad_request", `a lease id is a positive whole number, got ${id}`);
}

/**
 * A node's leases: the client calls (`KvNodeApi.grantLease` and the rest, on the leader), the
 * countdowns following what applies, and the expiries proposed as they run out.
 */
export class NodeLeases {
  private readonly countdowns = new LeaseCountdowns();
  /** Leases whose expiry applied here since this node started. */
  private expiredTotal = 0;
  /** Keepalives of leases run out here, waiting for the lease to end or the leadership to change (see `keepAlive`). */
  private readonly runOutWaiters = new Map<number, { readonly deadlineMs: number; readonly resolve: (how: "settled" | "overdue") => void }[]>();
  /** A new leader's read of the applied leases, a page per tick: the next page starts after `after`. */
  private scan: { after: string | undefined; readonly startMs: number } | undefined;

  constructor(private readonly host: LeasesHost) {}

  /** See `KvNodeApi.grantLease`: the grant goes through the log; the lease's id is its entry's index. */
  async grant(ttlMs: number): Promise<LeaseGrant> {
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > leaseTtlMsMax) {
      throw new KvError("bad_request", `ttlMs must be a whole number of milliseconds from 1 to ${leaseTtlMsMax}, got ${ttlMs}`);
    }
    const granted = Math.max(ttlMs, this.host.ttlMsMin);
    const result = await this.propose({ op: "lease-grant", ttlMs: granted });
    assert(result.kind === "lease-granted", `lease grant applied as ${result.kind}`);
    if (!result.granted) throw new KvError("overloaded", "the cluster holds as many leases as it allows: revoke some first", { retryAfterS: 1 });
    return { id: result.id, ttlMs: result.ttlMs, ...(granted === ttlMs ? {} : { raisedFromMs: ttlMs }) };
  }

  /**
   * See `KvNodeApi.keepAliveLease`: on the leader, once its applied state is current; not through the
   * log. A lease whose countdown ran out here is not gone until its expiry applies, and its expiry
   * may never apply (refused during a leadership transfer, or lost with the leadership: the next
   * leader counts the lease from its full TTL). So such a keepalive waits, as etcd's does, until the
   * lease ends here (404), the leadership changes (asked again: `not_leader` elsewhere, kept alive by
   * a new term's countdown), or its deadline (`timeout`, retried by clients). It was answered 404 at
   * once, and the lease then lived on, kept alive by the next keepalive (found in a review).
   */
  async keepAlive(id: number): Promise<{ id: number; ttlMs: number }> {
    const deadlineMs = this.host.clock.nowMs() + this.host.requestTimeoutMs;
    for (;;) {
      const ttlMs = await this.ttlOnLeader(id);
      if (this.countdowns.keepAlive(id, ttlMs, this.host.clock.nowMs())) return { id, ttlMs };
      // The turn that answered the read barrier may have stopped the node: no tick would settle a
      // waiter registered now (found in review).
      this.host.refuseUnlessRunning();
      const settled = await new Promise<"settled" | "overdue">((resolve) => {
        let waiting = this.runOutWaiters.get(id);
        if (waiting === undefined) this.runOutWaiters.set(id, (waiting = []));
        waiting.push({ deadlineMs, resolve });
      });
      if (settled === "overdue") {
        throw new KvError("timeout", `lease ${id} ran out on this leader, and its expiry did not apply within ${this.host.requestTimeoutMs} ms: retry (404 once it has)`);
      }
    }
  }

  /** See `KvNodeApi.leaseInfo`: the leader's countdown and the keys attached. */
  async info(id: number): Promise<LeaseInfo> {
    const ttlMs = await this.ttlOnLeader(id);
    const prefix = leaseKeysPrefix(id);
    const rows = this.host.storage.list(prefix, undefined, leaseInfoKeysMax + 1);
    return {
      id,
      ttlMs,
      remainingMs: this.countdowns.remainingMs(id, this.host.clock.nowMs()) ?? ttlMs,
      keys: rows.slice(0, leaseInfoKeysMax).map((row) => row.key.slice(prefix.length)),
      keysTruncated: rows.length > leaseInfoKeysMax,
    };
  }

  /** See `KvNodeApi.listLeases`: the leader's countdowns of the leases in its applied state. */
  async list(after: number | undefined, limit: number): Promise<LeaseSummary[]> {
    if (after !== undefined) checkLeaseId(after);
    await this.readOnLeader();
    const nowMs = this.host.clock.nowMs();
    return this.host.storage.list(leaseRowsPrefix, after === undefined ? undefined : leaseRowKey(after), limit).map((row) => {
      const { id, ttlMs } = parseLeaseRow(row.key, row.value);
      return { id, ttlMs, remainingMs: this.countdowns.remainingMs(id, nowMs) ?? ttlMs };
    });
  }

  /** See `KvNodeApi.revokeLease`: through the log; its keys are deleted at the revoke's version. */
  async revoke(id: number): Promise<{ id: number; version: number; deletedKeys: number }> {
    checkLeaseId(id);
    const result = await this.propose({ op: "lease-revoke", id });
    if (result.kind === "lease-not-found") throw leaseNotFound(id);
    assert(result.kind === "lease-revoked", `lease revoke applied as ${result.kind}`);
    return { id, version: result.index, deletedKeys: result.deletedKeys.length };
  }

  /** See `KvNodeApi.leaseStats`. */
  stats(): { leases: number; expiredTotal: number } {
    return { leases: parseLeaseCount(this.host.storage.get(leaseCountKey)?.value), expiredTotal: this.expiredTotal };
  }

  /** An entry applied here: the leader's countdowns follow grants, revokes and expiries. */
  applied(result: ApplyResult): void {
    switch (result.kind) {
      case "lease-granted":
        if (result.granted) this.countdowns.granted(result.id, result.ttlMs, this.host.clock.nowMs());
        return;
      case "lease-revoked":
        this.countdowns.ended([result.id]);
        this.wake([result.id]);
        return;
      case "lease-expired":
        this.countdowns.ended(result.ids);
        this.expiredTotal += result.ids.length;
        this.wake(result.ids);
        return;
      default:
        return;
    }
  }

  /**
   * The core's role changed (a Ready's soft state): a new leader restarts every lease's countdown
   * at its full TTL; a node that stopped leading drops them.
   */
  roleChanged(role: Role, term: number): void {
    this.wake([...this.runOutWaiters.keys()]);
    if (role !== "leader") {
      this.countdowns.stoppedLeading();
      this.scan = undefined;
    } else if (!this.countdowns.isLeadingIn(term)) {
      const nowMs = this.host.clock.nowMs();
      this.countdowns.becameLeader(term, nowMs);
      this.scan = { after: undefined, startMs: nowMs };
      this.scanPage();
    }
  }

  /** Each tick, on the leader: reads the next page of leases a new leader counts, and proposes the expiry of those run out, in bounded batches. */
  tick(): void {
    // Soft state reports role changes, not every term: a leader re-elected within one Ready is caught here.
    const raft = this.host.coreStatus();
    if ((raft.role === "leader") !== this.countdowns.isLeadingIn(raft.term)) this.roleChanged(raft.role, raft.term);
    else if (this.scan !== undefined) this.scanPage();
    if (!this.countdowns.isLeading()) return;
    const nowMs = this.host.clock.nowMs();
    const generation = this.countdowns.generation();
    // An expiry still queued when this leadership ends is not proposed by a later one: the leader
    // in between may have kept the lease alive (found in a code review: the queue outlived the
    // leadership while more than the pending bound waited to apply).
    const stillCounting = (): KvError | undefined =>
      this.countdowns.generation() === generation ? undefined : new KvError("not_leader", "the leadership that counted these leases down ended");
    for (const ids of this.countdowns.due(nowMs)) {
      this.host.propose(encodeLeaseCommand({ op: "lease-expire", ids }), stillCounting).then(
        () => this.countdowns.expirySettled(generation),
        () => this.countdowns.expiryFailed(generation, ids, this.host.clock.nowMs()),
      );
    }
  }

  /**
   * Keepalives waiting on leases run out here whose deadline passed get `timeout`. Called by the
   * node's tick, also while its loop is frozen (a full disk).
   */
  expireRunOutWaiters(): void {
    if (this.runOutWaiters.size === 0) return;
    const nowMs = this.host.clock.nowMs();
    for (const [id, waiting] of this.runOutWaiters) {
      const overdue = waiting.filter((waiter) => waiter.deadlineMs <= nowMs);
      if (overdue.length === 0) continue;
      const rest = waiting.filter((waiter) => waiter.deadlineMs > nowMs);
      if (rest.length === 0) this.runOutWaiters.delete(id);
      else this.runOutWaiters.set(id, rest);
      for (const waiter of overdue) waiter.resolve("overdue");
    }
  }

  /** Wakes the keepalives waiting on `ids` (they ask again). On shutdown, every one (they meet the node's refusal). */
  wake(ids: readonly number[]): void {
    for (const id of ids) {
      const waiting = this.runOutWaiters.get(id);
      if (waiting === undefined) continue;
      this.runOutWaiters.delete(id);
      for (const waiter of waiting) waiter.resolve("settled");
    }
  }

  /** The node stopped: waiting keepalives ask again and meet its refusal. */
  stopped(): void {
    this.wake([...this.runOutWaiters.keys()]);
  }

  /** Lease `id`'s TTL, read on the leader once what it committed is applied; `not_leader` elsewhere, `lease_not_found`. */
  private async ttlOnLeader(id: number): Promise<number> {
    checkLeaseId(id);
    await this.readOnLeader();
    const row = this.host.storage.get(leaseRowKey(id));
    if (row === undefined) throw leaseNotFound(id);
    return parseLeaseRow(leaseRowKey(id), row.value).ttlMs;
  }

  /**
   * Resolves on the leader once what it committed is applied and its countdowns are its term's, in
   * the term the barrier was asked in; `not_leader` elsewhere. A barrier asked in one leadership and
   * answered in a later one of this node proves nothing of the time between: another leader may
   * have committed an expiry this node had not applied when it led again (found in a code review).
   */
  private async readOnLeader(): Promise<void> {
    this.host.refuseUnlessRunning();
    const asked = this.host.coreStatus();
    if (asked.role !== "leader") throw this.host.notLeader();
    await this.host.readBarrier();
    const now = this.host.coreStatus();
    if (now.role !== "leader" || now.term !== asked.term || !this.countdowns.isLeadingIn(now.term)) throw this.host.notLeader();
  }

  /** Proposes a lease command on the leader; resolves with its apply result. */
  private propose(command: LeaseCommand): Promise<ApplyResult> {
    this.host.refuseUnlessRunning();
    if (this.host.coreStatus().role !== "leader") throw this.host.notLeader();
    this.host.refuseWhenFull();
    return this.host.propose(encodeLeaseCommand(command));
  }

  /** The next page of the applied leases a new leader counts down (see `leaseScanPageRows`). */
  private scanPage(): void {
    const scan = this.scan;
    if (scan === undefined) return;
    const rows = this.host.storage.list(leaseRowsPrefix, scan.after, leaseScanPageRows);
    this.countdowns.resume(rows.map((row) => parseLeaseRow(row.key, row.value)), scan.startMs);
    if (rows.length < leaseScanPageRows) this.scan = undefined;
    else scan.after = rows[rows.length - 1]!.key;
  }
}
