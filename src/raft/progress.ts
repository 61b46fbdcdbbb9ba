import { assert } from "../lib/assert.ts";

/** Heartbeat rounds a leader waits for a follower to install a snapshot before trying again. */
export const snapshotHeartbeatsMax = 100;

/**
 * What a leader knows of one follower's log (etcd's tracker.Progress).
 * `probe`: one AppendEntries at a time until the follower's match point is found.
 * `replicate`: optimistic pipelining, at most `inflightMessagesMax` appends in flight.
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
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /** The highest commit index sent to this follower (in an append or a heartbeat). */
  sentCommit = 0;
  /** An append was acknowledged since the last heartbeat answer. */
  private ackedSinceHeartbeat = false;

  constructor(
    nextIndex: number,
    private readonly inflightMessagesMax: number,
  ) {
    this.nextIndex = nextIndex;
  }

  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflight.length >= this.inflightMessagesMax;
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
    this.inflight = [];
  }

  becomeProbe(): void {
    // Coming back from a snapshot, probe just past it: the follower most likely holds it now.
    const from = this.state === "snapshot" ? Math.max(this.matchIndex, this.pendingSnapshotIndex) : this.matchIndex;
    this.state = "probe";
    this.probeSent = false;
    this.pendingSnapshotIndex = 0;
    this.inflight = [];
    this.nextIndex = from + 1;
  }

  becomeReplicate(): void {
    this.state = "replicate";
    this.probeSent = false;
    this.inflight = [];
    this.nextIndex = this.matchIndex + 1;
  }

  /** An append ending at `lastIndex` went out. */
  sentAppend(lastIndex: number | undefined): void {
    if (this.state === "replicate") {
      if (lastIndex === undefined) return;
      this.nextIndex = lastIndex + 1;
      this.inflight.push(lastIndex);
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
    if (this.state === "replicate" && this.nextIndex > this.matchIndex + 1 && !this.ackedSinceHeartbeat) {
      // Appends are out but none was answered for a whole heartbeat round while the follower is
      // alive: they were lost. Probe again from the match point rather than wait for a new write.
      this.becomeProbe();
    } else if (this.state === "replicate" && this.inflight.length >= this.inflightMessagesMax) {
      this.inflight.shift();
    }
    this.ackedSinceHeartbeat = false;
  }

  /** A success answer up to `index`. Returns whether matchIndex moved. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.matchIndex < index) {
      this.matchIndex = index;
      this.probeSent = false;
      this.ackedSinceHeartbeat = true;
      updated = true;
    }
    this.nextIndex = Math.max(this.nextIndex, index + 1);
    while (this.inflight.length > 0 && (this.inflight[0] as number) <= index) this.inflight.shift();
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
