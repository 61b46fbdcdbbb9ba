import { KvError } from "../lib/kv-error.ts";
import type { RawNode } from "../raft/raw-node.ts";
import { ProposalRefusedError } from "../raft/types.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import type { Waiter } from "./waiter.ts";

/** A write proposed to the core, waiting for its entry to apply. */
interface PendingWrite extends Waiter<ApplyResult> {
  readonly index: number;
  readonly term: number;
  /** Bytes of its encoded command (the entry's data; not kept here). */
  readonly bytes: number;
}

/**
 * Bytes of writes one turn proposes at most (a single larger write still goes, alone): what is
 * queued beyond it waits for the next turn. One batch is saved, sent and applied within the turn
 * that proposed it, on the loop's thread; at 256 KB values 64 writes arrived together (16 MB) and
 * held the loop 100-500 ms, past the election timeout (BENCHMARKS.md). A batch this size also fits
 * one append (`defaultRaftLimits.appendBytesMax`), so it goes to the followers from memory.
 */
export const proposalBytesPerTurnMax = 1 << 20;

/**
 * Bytes of proposed writes not yet applied here beyond which the queue waits (a single write still
 * goes when none is pending). Clients wait either way; this keeps what is proposed and not yet
 * applied within the log's tail kept in memory (src/storage/log-tail.ts), so applying and sending
 * it reads nothing back from disk. At 256 KB values, 64 clients had 16 MB proposed at once.
 */
export const pendingBytesMax = 8 << 20;

/** See `QueuedWrite.check`. */
export type WriteCheck = () => KvError | Uint8Array | undefined;

/** A write waiting for the next turn to be proposed. */
interface QueuedWrite extends Waiter<ApplyResult> {
  readonly data: Uint8Array;
  /**
   * Asked right before the write is handed to the core: an error refuses it then, nothing
   * proposed (a command only some members apply: what they said may have changed since it queued);
   * bytes are proposed in place of `data` (the form every member applies, for a write that needs no
   * newer one).
   */
  readonly check?: WriteCheck;
}

/**
 * A proposal whose index another leader's entry took: the log there is committed with the other
 * entry, so ours can never apply (log matching). Unlike `timeout`, the outcome is known, and
 * unlike `no_leader`, something was proposed; either way a retry cannot apply it twice.
 */
export function proposalDropped(what: string): KvError {
  return new KvError("proposal_dropped", `leadership changed before ${what} committed: another leader's entry took its place, so it was not applied and never will be; retrying is safe`, { retryAfterS: 1 });
}

/**
 * The node's writes: queued until the next turn proposes all that arrived together as one batch,
 * then pending by index until their entry applies. How each settles:
 * - applied with the term it was proposed in: the state machine's answer;
 * - another leader's entry applied at its index: `proposal_dropped` (certainly never applied);
 * - leadership lost, a snapshot covered it, the node stopped, or its deadline passed: `timeout`
 *   (the outcome is unknown: it may still commit under another leader).
 */
export class Proposals {
  private queued: QueuedWrite[] = [];
  /** Proposed writes by index, in index order. */
  private readonly pending = new Map<number, PendingWrite>();
  /** Bytes of the writes in `pending`. */
  private pendingBytes = 0;

  /** Writes waiting, queued or proposed. */
  count(): number {
    return this.queued.length + this.pending.size;
  }

  /** A write carrying `data` (an encoded command), settled when its entry applies; `check` as `QueuedWrite.check`. */
  enqueue(data: Uint8Array, deadlineMs: number, check?: WriteCheck): Promise<ApplyResult> {
    return new Promise<ApplyResult>((resolve, reject) => {
      this.queued.push({ resolve, reject, deadlineMs, data, ...(check === undefined ? {} : { check }) });
    });
  }

  /**
   * Proposes the queued writes as one batch, oldest first, up to `proposalBytesPerTurnMax`. A
   * refusal (not the leader, too much uncommitted) fails that batch with `refusal(reason)`: nothing
   * of it was proposed. What stays queued goes in a later turn (`canProposeQueued`).
   */
  proposeQueued(raw: RawNode, refusal: (error: ProposalRefusedError) => KvError): void {
    // Nothing queued, or held back by what is pending: the applies that settle it run turns of their own.
    if (!this.canProposeQueued()) return;
    if (this.queued.some((write) => write.check !== undefined)) {
      this.queued = this.queued.flatMap((write) => {
        const judged = write.check?.();
        if (judged instanceof Uint8Array) return [{ resolve: write.resolve, reject: write.reject, deadlineMs: write.deadlineMs, data: judged }];
        if (judged !== undefined) write.reject(judged);
        return judged === undefined ? [write] : [];
      });
      // The head may have been refused: the one now first is judged anew (found in review: it went
      // as "the oldest, however large", past pendingBytesMax).
      if (!this.canProposeQueued()) return;
    }
    const budget = this.budget();
    let taken = 0;
    let bytes = 0;
    // The oldest goes (canProposeQueued), however large; the others while they fit.
    while (taken < this.queued.length) {
      const size = (this.queued[taken] as QueuedWrite).data.byteLength;
      if (taken > 0 && bytes + size > budget) break;
      bytes += size;
      taken++;
    }
    const writes = taken === this.queued.length ? this.queued : this.queued.slice(0, taken);
    this.queued = taken === this.queued.length ? [] : this.queued.slice(taken);
    let firstIndex: number;
    try {
      firstIndex = raw.propose(writes.map((write) => write.data));
    } catch (error) {
      if (!(error instanceof ProposalRefusedError)) throw error;
      const refused = refusal(error);
      for (const write of writes) write.reject(refused);
      return;
    }
    const term = raw.basicStatus().term;
    writes.forEach((write, i) =>
      this.addPending({ resolve: write.resolve, reject: write.reject, deadlineMs: write.deadlineMs, index: firstIndex + i, term, bytes: write.data.byteLength }),
    );
  }

  /** The entry at `result.index`, of `term`, applied: answers the write proposed there, if any. */
  settle(result: ApplyResult, term: number): void {
    const write = this.pending.get(result.index);
    if (write === undefined) return;
    this.removePending(write);
    if (write.term !== term) {
      // Another leader's entry took this index: ours was truncated before it committed and never applied.
      write.reject(proposalDropped("the write"));
      return;
    }
    write.resolve(result);
  }

  /** Fails the writes not yet proposed (nothing of them was written). */
  refuseQueued(error: KvError): void {
    for (const write of this.queued) write.reject(error);
    this.queued = [];
  }

  /**
   * This node stopped leading: its proposed writes past `committedIndex` may or may not commit
   * under the next leader. Say so now rather than keep the clients waiting for the full request
   * timeout. Those at or below it committed, and their results are on their way (a storage that
   * applies on its own thread answers after the turn that handed them over): they wait for them.
   */
  leadershipLost(committedIndex: number): void {
    const lost = new KvError("timeout", "leadership was lost before the write committed; its outcome is unknown");
    for (const [index, write] of this.pending) {
      if (index <= committedIndex) continue;
      this.removePending(write);
      write.reject(lost);
    }
  }

  /** A snapshot replaced the log up to `index`: it cannot tell whether our writes there committed. */
  coveredBySnapshot(index: number): void {
    for (const [writeIndex, write] of this.pending) {
      if (writeIndex > index) continue;
      this.removePending(write);
      write.reject(new KvError("timeout", "a snapshot replaced this node's log before the write applied here; its outcome is unknown"));
    }
  }

  /**
   * Whether a turn would propose a queued write: the oldest fits what the pending bytes leave (or
   * nothing is pending); `proposeQueued` asks the same. When it does not, the applies that make room
   * run the turn: a turn scheduled meanwhile would propose nothing and schedule the next, and the
   * event loop would spin (at 256 KB values, ~8,000 empty turns a second on the leader).
   */
  canProposeQueued(): boolean {
    const next = this.queued[0];
    return next !== undefined && (this.pendingBytes === 0 || next.data.byteLength <= this.budget());
  }

  /** Bytes a turn may propose now: its own bound, within what the pending writes leave of theirs. */
  private budget(): number {
    return Math.min(proposalBytesPerTurnMax, pendingBytesMax - this.pendingBytes);
  }

  /**
   * Fails the writes whose deadline has passed: proposed ones with `timeout()` (their outcome is
   * unknown), queued ones (held back by `pendingBytesMax`, never proposed) with `overloaded`: they
   * certainly did not apply, so a retry is safe.
   */
  expire(nowMs: number, timeout: () => KvError): void {
    if (this.queued.some((write) => write.deadlineMs <= nowMs)) {
      const overloaded = new KvError("overloaded", "too many writes were waiting to commit: this one was not proposed (it did not apply; retrying is safe)", { retryAfterS: 1 });
      for (const write of this.queued) if (write.deadlineMs <= nowMs) write.reject(overloaded);
      this.queued = this.queued.filter((write) => write.deadlineMs > nowMs);
    }
    for (const write of this.pending.values()) {
      if (write.deadlineMs <= nowMs) {
        this.removePending(write);
        write.reject(timeout());
      }
    }
  }

  /** The node stops: queued writes fail with `error`; proposed ones may still commit elsewhere (`timeout`). */
  failAll(error: KvError): void {
    this.refuseQueued(error);
    const unknown = new KvError("timeout", `${error.message}; a write already proposed may still commit`);
    for (const write of this.pending.values()) write.reject(unknown);
    this.clearPending();
  }

  private addPending(write: PendingWrite): void {
    this.pending.set(write.index, write);
    this.pendingBytes += write.bytes;
  }

  private removePending(write: PendingWrite): void {
    this.pending.delete(write.index);
    this.pendingBytes -= write.bytes;
  }

  private clearPending(): void {
    this.pending.clear();
    this.pendingBytes = 0;
  }
}
