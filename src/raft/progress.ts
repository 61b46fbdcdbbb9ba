import { assert } from "../lib/assert.ts";

/** Heartbeat rounds a leader waits for a follower to install a snapshot before trying again. */
export const snapshotHeartbeatsMax = 100;

/**
 * Heartbeat rounds a follower may answer while none of the appends in flight to it is
 * acknowledged before the leader takes them for lost and probes again. A follower acks an append
 * only once its fsync returns, while it answers heartbeats at once: with one round, every fsync
 * slower than a heartbeat interval (50 ms; 100-500 ms at 256 KB values) made the leader send the
 * whole window again from its disk (BENCHMARKS.md).
 */
export const lostAppendHeartbeatRounds = 10;

/**
 * What a leader knows of one follower's log (etcd's tracker.Progress).
 * `probe`: one AppendEntries at a time until the follower's match point is found.
 * `replicate`: optimistic pipelining, at most `inflightMessagesMax` appends and `inflightBytesMax`
 *   bytes of entries in flight (a follower slower than the others falls behind by a bounded window,
 *   sent from memory, rather than by whatever the sender's queue holds before it drops messages).
 * Invariant: matchIndex < nextIndex.
 */
export class Progress {
  matchIndex = 0;
  nextIndex: number;
  state: "probe" | "replicate" | "snapshot" = "probe";
  /** In snapshot state: the index of the snapshot sent; heartbeats answered since it was sent. */
  pendingSnapshotIndex = 0;
  private heartbeatsSinceSnapshot = 0;
  /** In probe state: an append was sent and no answer or heartbeat response has come since. */
  probeSent = false;
  /** Last index of each append in flight, oldest first (replicate state). */
  private inflight: number[] = [];
  /** Bytes of entry data of each append in flight, parallel to `inflight`, and their sum. */
  private inflightSizes: number[] = [];
  private inflightBytes = 0;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /** Heard from in the check-quorum round before (`recentActive` as the last round ended). */
  activeLastRound = false;
  /** The highest commit index sent to this follower (in an append or a heartbeat). */
  sentCommit = 0;
  /** Heartbeat answers since an append was last acknowledged. */
  private heartbeatsSinceAck = 0;
  /** The leader's tick at which a heartbeat answer last opened flow control (see Raft's handleHeartbeatResponse). */
  heartbeatOpenedTick = Number.NEGATIVE_INFINITY;

  constructor(
    nextIndex: number,
    private readonly inflightMessagesMax: number,
    private readonly inflightBytesMax = Number.POSITIVE_INFINITY,
  ) {
    this.nextIndex = nextIndex;
  }

  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflight.length >= this.inflightMessagesMax || this.inflightBytes >= this.inflightBytesMax;
      case "snapshot":
        return true;
    }
  }

  /** The driver is still streaming the snapshot: keep waiting however long the transfer takes. */
  snapshotStillSending(): void {
    if (this.state === "snapshot") this.heartbeatsSinceSnapshot = 0;
  }

  /** A snapshot at `index` went out: wait for the follower to report it installed (or give up). */
  becomeSnapshot(index: number): void {
    this.state = "snapshot";
    this.pendingSnapshotIndex = index;
    this.heartbeatsSinceSnapshot = 0;
    this.clearInflight();
  }

  private clearInflight(): void {
    this.inflight = [];
    this.inflightSizes = [];
    this.inflightBytes = 0;
  }

  /** Drops the oldest append in flight from the window. */
  private freeOldest(): void {
    this.inflight.shift();
    this.inflightBytes -= this.inflightSizes.shift() ?? 0;
  }

  becomeProbe(): void {
    // Coming back from a snapshot, probe just past it: the follower most likely holds it now.
    const from = this.state === "snapshot" ? Math.max(this.matchIndex, this.pendingSnapshotIndex) : this.matchIndex;
    this.state = "probe";
    this.probeSent = false;
    this.pendingSnapshotIndex = 0;
    this.clearInflight();
    this.nextIndex = from + 1;
  }

  becomeReplicate(): void {
    this.state = "replicate";
    this.probeSent = false;
    this.clearInflight();
    this.nextIndex = this.matchIndex + 1;
  }

  /** An append ending at `lastIndex`, carrying `bytes` of entry data, went out. */
  sentAppend(lastIndex: number | undefined, bytes = 0): void {
    if (this.state === "replicate") {
      if (lastIndex === undefined) return;
      this.nextIndex = lastIndex + 1;
      this.inflight.push(lastIndex);
      this.inflightSizes.push(bytes);
      this.inflightBytes += bytes;
    } else {
      this.probeSent = true;
    }
  }

  /**
   * A heartbeat answer proves the follower alive. If the window is full, free one slot so the next
   * append goes out and, on a gap, the follower's rejection resyncs us.
   */
  heartbeatAnswered(): void {
    this.probeSent = false;
    if (this.state === "snapshot") {
      // A snapshot that was lost, or that the follower could not stage, would pause it for good.
      if (++this.heartbeatsSinceSnapshot > snapshotHeartbeatsMax) this.becomeProbe();
      return;
    }
    const waiting = this.state === "replicate" && this.nextIndex > this.matchIndex + 1;
    this.heartbeatsSinceAck = waiting ? this.heartbeatsSinceAck + 1 : 0;
    if (waiting && this.heartbeatsSinceAck >= lostAppendHeartbeatRounds) {
      // Appends are out but none was answered for many heartbeat rounds while the follower is
      // alive: they were lost. Probe again from the match point rather than wait for a new write.
      this.heartbeatsSinceAck = 0;
      this.becomeProbe();
    } else if (this.state === "replicate" && this.isPaused()) {
      this.freeOldest();
    }
  }

  /** A success answer up to `index`. Returns whether matchIndex moved. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.matchIndex < index) {
      this.matchIndex = index;
      this.probeSent = false;
      this.heartbeatsSinceAck = 0;
      updated = true;
    }
    this.nextIndex = Math.max(this.nextIndex, index + 1);
    while (this.inflight.length > 0 && (this.inflight[0] as number) <= index) this.freeOldest();
    return updated;
  }

  /**
   * A rejection of the append whose prevLogIndex was `rejected`; `matchHint` is the highest index
   * that may still match. Returns false when the rejection is stale (answers an older append).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === "snapshot") return false; // the snapshot's outcome decides where to go next
    if (this.state === "replicate") {
      if (rejected <= this.matchIndex) return false;
      this.becomeProbe();
      return true;
    }
    if (this.nextIndex - 1 !== rejected) return false;
    this.nextIndex = Math.max(Math.min(rejected, matchHint + 1), this.matchIndex + 1);
    assert(this.nextIndex >= 1);
    this.probeSent = false;
    return true;
  }
}
