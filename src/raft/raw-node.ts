import { assert } from "../lib/assert.ts";
import { Raft, type RaftConfig } from "./raft.ts";
import { hardStateEqual, type HardState, type Message, type Ready, type SoftState } from "./types.ts";

/**
 * The synchronous driver-facing API of the core (etcd's RawNode): `tick`, `step`, `propose`,
 * `readIndex`, then `ready()` for the work to do and `advance(ready)` once it is done.
 * At most one Ready is outstanding: no step or tick may run between `ready()` and `advance()`
 * other than what the driver does to carry that Ready out.
 */
export class RawNode {
  readonly raft: Raft;
  private previousSoftState: SoftState;
  private previousHardState: HardState;
  private outstanding: Ready | undefined;

  constructor(cfg: RaftConfig) {
    this.raft = new Raft(cfg);
    this.previousSoftState = this.raft.softState();
    this.previousHardState = this.raft.hardState();
  }

  tick(): void {
    this.raft.tick();
  }

  step(message: Message): void {
    this.raft.step(message);
  }

  campaign(): void {
    this.raft.campaign();
  }

  /** See Raft.propose: returns the index of the first entry; throws ProposalRefusedError. */
  propose(data: readonly Uint8Array[]): number {
    return this.raft.propose(data);
  }

  /** A linearizable read index; with `lease`, a leader within its lease answers at once (thesis §6.4.1). */
  readIndex(readContext: string, lease = false): void {
    this.raft.readIndex(readContext, lease);
  }

  /** The driver failed to deliver a snapshot to `to`: the leader probes it again. */
  reportSnapshotFailure(to: number): void {
    this.raft.reportSnapshotFailure(to);
  }

  hasReady(): boolean {
    const raft = this.raft;
    const soft = raft.softState();
    return (
      raft.messages.length > 0 ||
      raft.readStates.length > 0 ||
      raft.readFailures.length > 0 ||
      raft.log.unstableEntries().length > 0 ||
      raft.log.pendingSnapshot() !== undefined ||
      raft.log.hasNextCommittedEntries() ||
      !hardStateEqual(raft.hardState(), this.previousHardState) ||
      soft.leaderId !== this.previousSoftState.leaderId ||
      soft.role !== this.previousSoftState.role
    );
  }

  /** Collects the work the driver must do now. Messages and read states are handed over here. */
  ready(committedBytesMax = Number.POSITIVE_INFINITY): Ready {
    assert(this.outstanding === undefined, "ready() called again before advance()");
    const raft = this.raft;
    const soft = raft.softState();
    const hard = raft.hardState();
    const softChanged = soft.leaderId !== this.previousSoftState.leaderId || soft.role !== this.previousSoftState.role;
    const hardChanged = !hardStateEqual(hard, this.previousHardState);
    const entries = raft.log.unstableEntries().slice();
    const snapshot = raft.log.pendingSnapshot();
    const ready: Ready = {
      softState: softChanged ? soft : undefined,
      hardState: hardChanged ? hard : undefined,
      snapshot,
      entries,
      committedEntries: raft.log.nextCommittedEntries(committedBytesMax),
      messages: raft.messages,
      readStates: raft.readStates,
      readFailures: raft.readFailures,
      // A commit-index change alone can be recovered from the log and need not force an fsync.
      mustSync:
        entries.length > 0 ||
        snapshot !== undefined ||
        hard.term !== this.previousHardState.term ||
        hard.vote !== this.previousHardState.vote,
    };
    raft.messages = [];
    raft.readStates = [];
    raft.readFailures = [];
    if (softChanged) this.previousSoftState = soft;
    this.outstanding = ready;
    return ready;
  }

  /**
   * The driver saved, sent and applied `ready`. With `durable` (the default) its entries are on
   * disk too; without, they are only written, and the driver calls `persisted` once they are.
   */
  advance(ready: Ready, durable = true): void {
    assert(this.outstanding === ready, "advance() with a Ready that is not the outstanding one");
    this.outstanding = undefined;
    if (ready.hardState !== undefined) this.previousHardState = ready.hardState;
    if (ready.snapshot !== undefined) this.raft.log.snapshotInstalled(ready.snapshot.metadata.index);
    const lastEntry = ready.entries[ready.entries.length - 1];
    if (lastEntry !== undefined) this.raft.log.stableTo(lastEntry.index, lastEntry.term);
    const lastCommitted = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastCommitted !== undefined) this.raft.log.appliedTo(lastCommitted.index);
    if (durable && lastEntry !== undefined) this.raft.persisted(lastEntry.index, lastEntry.term);
  }

  /** The log is on disk up to (`index`, `term`), written by Readies advanced without `durable`. */
  persisted(index: number, term: number): void {
    this.raft.persisted(index, term);
  }
}
