import { assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { KvError } from "../lib/kv-error.ts";
import type { Prng } from "../lib/prng.ts";
import { defaultRaftLimits } from "../raft/raft.ts";
import { RawNode } from "../raft/raw-node.ts";
import { ProposalRefusedError, type Message, type NodeId, type Ready } from "../raft/types.ts";
import { encodeCommand, type Command } from "../storage/command.ts";
import type { ApplyResult, KvStorage } from "../storage/kv-storage.ts";
import type { Transport } from "../transport/transport.ts";
import type { KvNodeApi, KvValue, NodeStatus, ReadConsistency } from "./api.ts";

/** How a node is set up. Everything with a unit says it. */
export interface KvNodeConfig {
  readonly id: NodeId;
  /** Every voter's peer URL, this node's own included. */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** This node's advertised client URL (for redirects and /status); `setHttpUrl` may set it later. */
  readonly httpUrl: string;
  readonly storage: KvStorage;
  readonly clock: Clock;
  readonly prng: Prng;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** How long a write or linearizable read may wait before it fails with `timeout`. */
  readonly requestTimeoutMs: number;
  /** Writes and reads waiting at once; past it new ones fail with `overloaded`. */
  readonly pendingRequestsMax: number;
  /** Messages from peers queued for the loop; past it the oldest are dropped (Raft tolerates loss). */
  readonly inboxMessagesMax: number;
  /** Called for events worth a log line. */
  readonly log?: (event: string, fields: Record<string, unknown>) => void;
  /** Called once if the loop stops on its own (storage failure or a bug); the process should exit. */
  readonly onFatal?: (error: Error) => void;
  /** Runs a loop turn soon (default setImmediate); tests pass a queue they drain by hand. */
  readonly schedule?: (turn: () => void) => void;
}

export const defaultNodeTimings = {
  tickMs: 10,
  electionTicks: 15, // 150-300 ms randomized election timeout on loopback
  heartbeatTicks: 3, // 30 ms
  requestTimeoutMs: 5_000,
  pendingRequestsMax: 100_000,
  inboxMessagesMax: 100_000,
} as const;

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: KvError): void;
  readonly deadlineMs: number;
}

interface PendingWrite extends Waiter<ApplyResult> {
  readonly index: number;
  readonly term: number;
}

interface QueuedWrite extends Waiter<ApplyResult> {
  readonly data: Uint8Array;
}

interface PendingRead extends Waiter<void> {
  /** Set once the read index is known: serve when applied >= readIndex. */
  readIndex: number;
}

/**
 * One kv node: the single loop that drives the Raft core. Each turn it proposes the writes that
 * arrived together, asks for one read index for the reads that arrived together, then carries out
 * every Ready in order: persist (one transaction, fsync) → send → apply → advance, and finally
 * answers the clients whose writes applied or whose reads may now be served.
 */
export class KvNode implements KvNodeApi {
  private readonly raw: RawNode;
  private transport: Transport | undefined;
  private readonly inbox: Message[] = [];
  private queuedWrites: QueuedWrite[] = [];
  /** Proposed writes by index, in index order. */
  private readonly pendingWrites = new Map<number, PendingWrite>();
  private queuedReads: PendingRead[] = [];
  private queuedLeaseReads: PendingRead[] = [];
  /** Reads waiting for a read index, by the context of their batch. */
  private readonly readsByContext = new Map<string, PendingRead[]>();
  /** Reads with a read index, waiting to be applied up to it. */
  private readsWaitingApply: PendingRead[] = [];
  private readSequence = 0;
  /** Checks to run once after the next turn (e.g. a leadership transfer waiting to finish). */
  private afterTurn: (() => void)[] = [];
  private turnScheduled = false;
  private stopTicking: (() => void) | undefined;
  private stopped = false;
  private failure: Error | undefined;
  private httpUrl: string;

  constructor(private readonly cfg: KvNodeConfig) {
    this.httpUrl = cfg.httpUrl;
    const voters = [...cfg.peers.keys()].sort((a, b) => a - b);
    assert(voters.includes(cfg.id), `node ${cfg.id} is not among the peers`);
    cfg.storage.bootstrap(voters);
    this.raw = new RawNode({
      id: cfg.id,
      storage: cfg.storage,
      electionTicks: cfg.electionTicks,
      heartbeatTicks: cfg.heartbeatTicks,
      prng: cfg.prng,
      applied: cfg.storage.appliedIndex(),
      ...defaultRaftLimits,
    });
  }

  /** Sets the advertised client URL once the HTTP port is known (port 0 listens). */
  setHttpUrl(url: string): void {
    this.httpUrl = url;
  }

  /** Starts the clock and the loop; peers' messages arrive through `receive`. */
  start(transport: Transport): void {
    this.transport = transport;
    this.stopTicking = this.cfg.clock.every(this.cfg.tickMs, () => this.onTick());
    this.scheduleTurn();
  }

  /** Stops the loop: waiting clients get `unavailable`; the storage is left for the caller to close. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopTicking?.();
    this.failAll(new KvError("unavailable", "the node is shutting down"));
    const checks = this.afterTurn;
    this.afterTurn = [];
    for (const check of checks) check();
  }

  /** The transport's handler: queues messages for the next turn. */
  receive(messages: readonly Message[]): void {
    if (this.stopped) return;
    for (const message of messages) this.inbox.push(message);
    if (this.inbox.length > this.cfg.inboxMessagesMax) this.inbox.splice(0, this.inbox.length - this.cfg.inboxMessagesMax);
    this.scheduleTurn();
  }

  // ---- Client API ---------------------------------------------------------------------------

  put(key: string, value: Uint8Array): Promise<{ version: number }> {
    return this.write({ op: "put", key, value }).then((result) => {
      assert(result.kind === "put", `put applied as ${result.kind}`);
      return { version: result.version };
    });
  }

  delete(key: string): Promise<{ deleted: boolean; version: number }> {
    return this.write({ op: "delete", key }).then((result) => {
      assert(result.kind === "delete", `delete applied as ${result.kind}`);
      return { deleted: result.deleted, version: result.version };
    });
  }

  async get(key: string, consistency: ReadConsistency): Promise<KvValue | undefined> {
    if (consistency !== "stale") {
      this.refuseUnlessRunning();
      this.refuseWhenFull();
      const queue = consistency === "lease" ? this.queuedLeaseReads : this.queuedReads;
      await new Promise<void>((resolve, reject) => {
        queue.push({ resolve, reject, deadlineMs: this.deadline(), readIndex: 0 });
        this.scheduleTurn();
      });
    }
    const stored = this.cfg.storage.get(key);
    return stored === undefined ? undefined : { value: stored.value, version: stored.version };
  }

  status(): NodeStatus {
    const raft = this.raw.raft;
    return {
      id: this.cfg.id,
      role: raft.role,
      term: raft.term,
      leaderId: raft.leaderId,
      leaderUrl: this.httpUrlOf(raft.leaderId),
      commitIndex: raft.log.committed,
      appliedIndex: this.cfg.storage.appliedIndex(),
      lastLogIndex: raft.log.lastIndex(),
      members: [...this.cfg.peers].map(([id, peerUrl]) => ({ id, peerUrl, httpUrl: this.httpUrlOf(id) })),
    };
  }

  /**
   * Hands leadership to `target`, or to the most caught-up other voter (thesis §3.10). Resolves
   * with the new leader's id once this node has stepped down; rejects with `timeout` if it did not
   * within `timeoutMs`, and with `not_leader` when this node does not lead.
   */
  transferLeadership(target: NodeId | undefined, timeoutMs = this.transferTimeoutMs()): Promise<{ leaderId: NodeId }> {
    this.refuseUnlessRunning();
    const raft = this.raw.raft;
    if (raft.role !== "leader") return Promise.reject(this.notLeader());
    const voters = [...this.cfg.peers.keys()].filter((id) => id !== this.cfg.id);
    if (target !== undefined && !voters.includes(target)) {
      return Promise.reject(new KvError("bad_request", `node ${target} is not another voter of this cluster`));
    }
    const chosen = target ?? raft.mostCaughtUpFollower();
    if (chosen === undefined) return Promise.reject(new KvError("unavailable", "there is no other voter to hand over to"));
    raft.transferLeadership(chosen);
    this.scheduleTurn();
    const deadline = this.cfg.clock.nowMs() + timeoutMs;
    return new Promise<{ leaderId: NodeId }>((resolve, reject) => {
      const check = () => {
        const now = this.raw.raft;
        const expired = this.cfg.clock.nowMs() >= deadline;
        // Stepped down: answer once we hear who leads now (0 if still unknown at the deadline).
        if (now.role !== "leader" && (now.leaderId !== 0 || expired)) return resolve({ leaderId: now.leaderId });
        if (this.stopped) return reject(new KvError("unavailable", "the node stopped during the transfer"));
        if (now.role === "leader" && (expired || now.leadTransferee === 0)) {
          return reject(new KvError("timeout", `node ${chosen} did not take over within ${timeoutMs} ms`));
        }
        this.afterTurn.push(check);
      };
      this.afterTurn.push(check);
    });
  }

  /** Two maximum election timeouts: long enough for a caught-up target to win. */
  private transferTimeoutMs(): number {
    return 4 * this.cfg.electionTicks * this.cfg.tickMs;
  }

  healthy(): boolean {
    const raft = this.raw.raft;
    return !this.stopped && raft.leaderId !== 0 && this.cfg.storage.appliedIndex() >= raft.log.committed;
  }

  private httpUrlOf(id: NodeId): string | undefined {
    if (id === 0) return undefined;
    if (id === this.cfg.id) return this.httpUrl;
    return this.transport?.peerHttpUrl(id);
  }

  private write(command: Command): Promise<ApplyResult> {
    this.refuseUnlessRunning();
    const raft = this.raw.raft;
    if (raft.role !== "leader") throw this.notLeader();
    this.refuseWhenFull();
    const data = encodeCommand(command);
    return new Promise<ApplyResult>((resolve, reject) => {
      this.queuedWrites.push({ resolve, reject, deadlineMs: this.deadline(), data });
      this.scheduleTurn();
    });
  }

  private notLeader(): KvError {
    const leaderId = this.raw.raft.leaderId;
    const leaderUrl = this.httpUrlOf(leaderId);
    if (leaderId === 0 || leaderId === this.cfg.id || leaderUrl === undefined) {
      return new KvError("no_leader", "no leader is known right now; retry shortly", { retryAfterS: 1 });
    }
    return new KvError("not_leader", `node ${leaderId} is the leader`, { leaderId, leaderUrl });
  }

  private refuseUnlessRunning(): void {
    if (this.failure !== undefined) throw new KvError("unavailable", `the node stopped: ${this.failure.message}`);
    if (this.stopped || this.transport === undefined) throw new KvError("unavailable", "the node is not running");
  }

  private refuseWhenFull(): void {
    const waiting =
      this.queuedWrites.length + this.pendingWrites.size + this.queuedReads.length + this.queuedLeaseReads.length + this.readsWaitingApply.length;
    if (waiting >= this.cfg.pendingRequestsMax) {
      throw new KvError("overloaded", `${waiting} requests are already waiting`, { retryAfterS: 1 });
    }
  }

  private deadline(): number {
    return this.cfg.clock.nowMs() + this.cfg.requestTimeoutMs;
  }

  // ---- The loop -----------------------------------------------------------------------------

  private onTick(): void {
    if (this.stopped) return;
    this.raw.tick();
    this.expireWaiters();
    this.turn();
  }

  private scheduleTurn(): void {
    if (this.turnScheduled || this.stopped) return;
    this.turnScheduled = true;
    // setImmediate lets every request already in the event loop arrive first: they share one Ready.
    (this.cfg.schedule ?? setImmediate)(() => {
      this.turnScheduled = false;
      this.turn();
    });
  }

  /** One turn of the loop. Any exception here is a bug or a storage failure: the node stops serving. */
  private turn(): void {
    if (this.stopped) return;
    try {
      this.stepInbox();
      this.proposeQueuedWrites();
      this.requestReadIndex();
      while (this.raw.hasReady()) this.handleReady(this.raw.ready());
      this.serveReads();
      const checks = this.afterTurn;
      this.afterTurn = [];
      for (const check of checks) check();
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private stepInbox(): void {
    const messages = this.inbox.splice(0, this.inbox.length);
    for (const message of messages) this.raw.step(message);
  }

  private proposeQueuedWrites(): void {
    if (this.queuedWrites.length === 0) return;
    const writes = this.queuedWrites;
    this.queuedWrites = [];
    let firstIndex: number;
    try {
      firstIndex = this.raw.propose(writes.map((write) => write.data));
    } catch (error) {
      if (!(error instanceof ProposalRefusedError)) throw error;
      const refusal =
        error.reason === "too_many_uncommitted"
          ? new KvError("overloaded", "too many writes are waiting to commit", { retryAfterS: 1 })
          : this.notLeader();
      for (const write of writes) write.reject(refusal);
      return;
    }
    const term = this.raw.raft.term;
    writes.forEach((write, i) => {
      this.pendingWrites.set(firstIndex + i, { ...write, index: firstIndex + i, term });
    });
  }

  /** One read index for every read that arrived together (and one for the lease reads). */
  private requestReadIndex(): void {
    for (const lease of [false, true]) {
      const reads = lease ? this.queuedLeaseReads : this.queuedReads;
      if (reads.length === 0) continue;
      const context = `${this.cfg.id}.${++this.readSequence}`;
      this.readsByContext.set(context, reads);
      if (lease) this.queuedLeaseReads = [];
      else this.queuedReads = [];
      this.raw.readIndex(context, lease);
    }
  }

  /** Persist → send → apply → advance, in that order (the order is what makes acks durable). */
  private handleReady(ready: Ready): void {
    this.cfg.storage.save(ready.hardState, ready.entries, ready.mustSync);
    if (ready.messages.length > 0) this.transport?.send(ready.messages);
    if (ready.committedEntries.length > 0) {
      const results = this.cfg.storage.applyEntries(ready.committedEntries);
      results.forEach((result, i) => this.settleWrite(result, ready.committedEntries[i]!.term));
    }
    for (const state of ready.readStates) {
      const reads = this.readsByContext.get(state.readContext);
      if (reads === undefined) continue; // timed out already
      this.readsByContext.delete(state.readContext);
      for (const read of reads) {
        read.readIndex = state.index;
        this.readsWaitingApply.push(read);
      }
    }
    for (const failure of ready.readFailures) {
      const reads = this.readsByContext.get(failure.readContext);
      if (reads === undefined) continue;
      this.readsByContext.delete(failure.readContext);
      const error = this.notLeaderForRead();
      for (const read of reads) read.reject(error);
    }
    if (ready.softState !== undefined) {
      this.cfg.log?.("role", { role: ready.softState.role, leaderId: ready.softState.leaderId, term: this.raw.raft.term });
    }
    this.raw.advance(ready);
  }

  private notLeaderForRead(): KvError {
    const leaderId = this.raw.raft.leaderId;
    if (leaderId === 0 || leaderId === this.cfg.id) {
      return new KvError("no_leader", "no leader could confirm the read; retry shortly", { retryAfterS: 1 });
    }
    return this.notLeader();
  }

  private settleWrite(result: ApplyResult, term: number): void {
    const write = this.pendingWrites.get(result.index);
    if (write === undefined) return;
    this.pendingWrites.delete(result.index);
    if (write.term !== term) {
      // Another leader's entry took this index: ours was truncated before it committed and never applied.
      write.reject(new KvError("no_leader", "leadership changed before the write committed; it was not applied", { retryAfterS: 1 }));
      return;
    }
    write.resolve(result);
  }

  private serveReads(): void {
    if (this.readsWaitingApply.length === 0) return;
    const applied = this.cfg.storage.appliedIndex();
    const stillWaiting: PendingRead[] = [];
    for (const read of this.readsWaitingApply) {
      if (read.readIndex <= applied) read.resolve();
      else stillWaiting.push(read);
    }
    this.readsWaitingApply = stillWaiting;
  }

  private expireWaiters(): void {
    const now = this.cfg.clock.nowMs();
    const timeout = (what: string) => new KvError("timeout", `${what} did not complete in ${this.cfg.requestTimeoutMs} ms; its outcome is unknown`);
    for (const [index, write] of this.pendingWrites) {
      if (write.deadlineMs <= now) {
        this.pendingWrites.delete(index);
        write.reject(timeout("the write"));
      }
    }
    for (const [context, reads] of this.readsByContext) {
      if ((reads[0] as PendingRead).deadlineMs <= now) {
        this.readsByContext.delete(context);
        for (const read of reads) read.reject(timeout("the read"));
      }
    }
    this.readsWaitingApply = this.readsWaitingApply.filter((read) => {
      if (read.deadlineMs > now) return true;
      read.reject(timeout("the read"));
      return false;
    });
  }

  private fail(error: Error): void {
    this.failure = error;
    this.cfg.log?.("fatal", { error: error.message, stack: error.stack });
    this.stop();
    this.cfg.onFatal?.(error);
  }

  private failAll(error: KvError): void {
    for (const write of this.queuedWrites) write.reject(error);
    this.queuedWrites = [];
    // Proposed writes may still commit elsewhere: their outcome is unknown, which `timeout` says.
    const unknown = new KvError("timeout", `${error.message}; a write already proposed may still commit`);
    for (const write of this.pendingWrites.values()) write.reject(unknown);
    this.pendingWrites.clear();
    for (const read of [...this.queuedReads, ...this.queuedLeaseReads]) read.reject(error);
    this.queuedReads = [];
    this.queuedLeaseReads = [];
    for (const reads of this.readsByContext.values()) for (const read of reads) read.reject(error);
    this.readsByContext.clear();
    for (const read of this.readsWaitingApply) read.reject(error);
    this.readsWaitingApply = [];
  }

  /** Why the node stopped on its own, if it did (a storage failure or a bug). */
  fatalError(): Error | undefined {
    return this.failure;
  }
}
