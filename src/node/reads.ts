import type { KvError } from "../lib/kv-error.ts";
import type { RawNode } from "../raft/raw-node.ts";
import type { NodeId, ReadFailure, ReadState } from "../raft/types.ts";
import type { Waiter } from "./waiter.ts";

/** A read waiting to be served from local state. */
interface PendingRead extends Waiter<void> {
  /** Set once the read index is known: serve when applied >= readIndex. */
  readIndex: number;
}

/**
 * The node's reads (thesis §6.4): linearizable and lease reads queue here, each turn asks the core
 * for one read index per kind for all that arrived together, and a read is served once the state
 * machine has applied up to its index. Stale reads never come here.
 */
export class Reads {
  private queued: PendingRead[] = [];
  private queuedLease: PendingRead[] = [];
  /** Reads waiting for a read index, by the context of their batch: whether they are lease reads, and when it was asked. */
  private readonly byContext = new Map<string, { readonly lease: boolean; readonly reads: PendingRead[]; readonly askedMs: number }>();
  /** Reads with a read index, waiting to be applied up to it. */
  private waitingApply: PendingRead[] = [];
  private sequence = 0;

  /**
   * `nonce` tells this process's read contexts from those of an earlier one of the same node: a
   * node that restarts numbers its reads from 1 again, and a delayed answer to its previous life's
   * read must not match a new one (it carries a read index from before the new read began).
   */
  constructor(
    private readonly id: NodeId,
    private readonly nonce: string,
  ) {}

  /** Reads waiting, of every kind. */
  count(): number {
    let batched = 0;
    for (const { reads } of this.byContext.values()) batched += reads.length;
    return this.queued.length + this.queuedLease.length + batched + this.waitingApply.length;
  }

  /** A read of the given kind, resolved once it may be served from local state. */
  enqueue(lease: boolean, deadlineMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      (lease ? this.queuedLease : this.queued).push({ resolve, reject, deadlineMs, readIndex: 0 });
    });
  }

  /** One read index for every read that arrived together (and one for the lease reads), asked at `nowMs`. */
  requestReadIndex(raw: RawNode, nowMs: number): void {
    for (const lease of [false, true]) {
      const reads = lease ? this.queuedLease : this.queued;
      if (reads.length === 0) continue;
      const context = `${this.id}.${this.nonce}.${++this.sequence}`;
      this.byContext.set(context, { lease, reads, askedMs: nowMs });
      if (lease) this.queuedLease = [];
      else this.queued = [];
      raw.readIndex(context, lease);
    }
  }

  /** A Ready's read states and failures: indexes to wait for, or refusals. */
  onReady(states: readonly ReadState[], failures: readonly ReadFailure[], refusal: () => KvError): void {
    for (const state of states) {
      const reads = this.byContext.get(state.readContext)?.reads;
      if (reads === undefined) continue; // timed out, or asked again, already
      this.byContext.delete(state.readContext);
      for (const read of reads) {
        read.readIndex = state.index;
        this.waitingApply.push(read);
      }
    }
    for (const failure of failures) {
      const reads = this.byContext.get(failure.readContext)?.reads;
      if (reads === undefined) continue;
      this.byContext.delete(failure.readContext);
      const error = refusal();
      for (const read of reads) read.reject(error);
    }
  }

  /**
   * The leader changed (or this node's role did): a read index asked of the leader before may never
   * come (the leader died, or this node was deposed and the heartbeat round confirming it ended with
   * it), so the reads still waiting for one are asked again in the next turn, of the leader known
   * then; with none known they are refused at once as retryable (no_leader), as a new read would be.
   * A late answer to the old request is ignored (its context is forgotten). Returns whether any were
   * put back, for the node to take a turn.
   */
  leaderChanged(): boolean {
    return this.askAgain(() => true);
  }

  /**
   * Asks again, in the next turn, for the read indexes asked `ageMs` or longer ago and not answered:
   * a request or its answer lost between peers (a connection broken, a peer paused) would otherwise
   * hold its reads until their deadline. Returns whether any were put back.
   */
  askAgainOlderThan(nowMs: number, ageMs: number): boolean {
    return this.askAgain((batch) => nowMs - batch.askedMs >= ageMs);
  }

  private askAgain(which: (batch: { readonly askedMs: number }) => boolean): boolean {
    const again = { lease: [] as PendingRead[], linearizable: [] as PendingRead[] };
    for (const [context, batch] of this.byContext) {
      if (!which(batch)) continue;
      this.byContext.delete(context);
      (batch.lease ? again.lease : again.linearizable).push(...batch.reads);
    }
    if (again.lease.length === 0 && again.linearizable.length === 0) return false;
    this.queued = [...again.linearizable, ...this.queued];
    this.queuedLease = [...again.lease, ...this.queuedLease];
    return true;
  }

  /** Serves the reads whose index the state machine has applied. */
  serve(appliedIndex: number): void {
    if (this.waitingApply.length === 0) return;
    const stillWaiting: PendingRead[] = [];
    for (const read of this.waitingApply) {
      if (read.readIndex <= appliedIndex) read.resolve();
      else stillWaiting.push(read);
    }
    this.waitingApply = stillWaiting;
  }

  /** Fails, with `timeout(...)`, the reads whose deadline has passed. */
  expire(nowMs: number, timeout: () => KvError): void {
    for (const [context, batch] of this.byContext) {
      // Reads asked again after a leader change share a batch with later ones: each has its own deadline.
      const live = batch.reads.filter((read) => read.deadlineMs > nowMs);
      if (live.length === batch.reads.length) continue;
      const error = timeout();
      for (const read of batch.reads) if (read.deadlineMs <= nowMs) read.reject(error);
      if (live.length === 0) this.byContext.delete(context);
      else this.byContext.set(context, { ...batch, reads: live });
    }
    // Queued reads wait one turn, or longer while the loop is frozen (a full disk, an install).
    const live = (read: PendingRead): boolean => {
      if (read.deadlineMs > nowMs) return true;
      read.reject(timeout());
      return false;
    };
    this.queued = this.queued.filter(live);
    this.queuedLease = this.queuedLease.filter(live);
    this.waitingApply = this.waitingApply.filter(live);
  }

  /** Fails every read (the node stops). */
  failAll(error: KvError): void {
    for (const read of [...this.queued, ...this.queuedLease]) read.reject(error);
    this.queued = [];
    this.queuedLease = [];
    for (const { reads } of this.byContext.values()) for (const read of reads) read.reject(error);
    this.byContext.clear();
    for (const read of this.waitingApply) read.reject(error);
    this.waitingApply = [];
  }
}
