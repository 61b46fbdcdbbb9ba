import { assert } from "../lib/assert.ts";
import { Raft, type RaftConfig } from "./raft.ts";
import { hardStateEqual, type ConfChange, type ConfState, type HardState, type LostLog, type Message, type NodeId, type Ready, type Role, type SoftState } from "./types.ts";

/** What a driver may know of the core at a glance (etcd's BasicStatus): a copy, safe to keep. */
export interface BasicStatus {
  readonly id: NodeId;
  readonly role: Role;
  /** A follower running the pre-vote round (thesis §9.6): its term is not raised yet. */
  readonly preCandidate: boolean;
  readonly term: number;
  readonly vote: NodeId;
  /** 0 when no leader is known. */
  readonly leaderId: NodeId;
  /** Leader: the voter leadership is being handed to, or 0. */
  readonly leadTransferee: NodeId;
  readonly commit: number;
  /**
   * The highest commit index known to the cluster as far as this server knows: a leader's own, a
   * follower's leader's as its appends of this term named it (0 before one). A follower catching
   * up (by the log or by an image) is as far behind as `leaderCommit - commit` says, while its own
   * `commit` only reaches as far as its log.
   */
  readonly leaderCommit: number;
  /** The first index still in the log (entries before it were compacted into the snapshot). */
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/**
 * The synchronous driver-facing API of the core (etcd's RawNode): `tick`, `step`, `propose`,
 * `readIndex`, then `ready()` for the work to do and `advance(ready)` once it is done.
 * At most one Ready is outstanding: no step or tick may run between `ready()` and `advance()`
 * other than what the driver does to carry that Ready out.
 *
 * The core itself (`Raft`) is private: a driver sees it only through these methods, so what the
 * node loop (src/node/kv-node.ts) may do to the core is written down here, in one place.
 */
export class RawNode {
  private readonly raft: Raft;
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

  /** A tick whose time `elapse` already counted: the election and check-quorum timers move, the clock does not (see Raft.tickCaughtUp). */
  tickCaughtUp(): void {
    this.raft.tickCaughtUp();
  }

  /** Time passed without ticks (see Raft.elapse): the lease clock and a leader's heartbeat timer move. */
  elapse(ticks: number): void {
    this.raft.elapse(ticks);
  }

  /** The current term alone: read without the log (so without storage, which may be closed). */
  term(): number {
    return this.raft.term;
  }

  /** The core's role, term, leader, commit and configuration, as of now. */
  basicStatus(): BasicStatus {
    const raft = this.raft;
    return {
      id: raft.id,
      role: raft.role,
      preCandidate: raft.preCandidate,
      term: raft.term,
      vote: raft.vote,
      leaderId: raft.leaderId,
      leadTransferee: raft.leadTransferee,
      commit: raft.log.committed,
      leaderCommit: raft.role === "leader" ? raft.log.committed : Math.max(raft.leaderCommit, raft.log.committed),
      firstIndex: raft.log.firstIndex(),
      lastIndex: raft.log.lastIndex(),
      voters: raft.voters,
      learners: raft.learners,
    };
  }

  /** The term of the entry at `index`, or undefined when the log no longer (or not yet) holds it. */
  logTerm(index: number): number | undefined {
    return this.raft.log.term(index);
  }

  /** Leader: whether its lease holds now, so a lease read may be answered without a round (thesis §6.4.1). */
  leaseValid(): boolean {
    return this.raft.leaseValid();
  }

  isVoter(id: NodeId): boolean {
    return this.raft.isVoter(id);
  }

  /** Voters and learners. */
  members(): NodeId[] {
    return this.raft.members();
  }

  /** Leader: how far `id` has replicated, or undefined. */
  matchIndexOf(id: NodeId): number | undefined {
    return this.raft.matchIndexOf(id);
  }

  /** See Raft.confChangePending. */
  confChangePending(): boolean {
    return this.raft.confChangePending();
  }

  /** Leader: the other voter with the highest match index, among those it heard from recently first (see Raft.mostCaughtUpFollower). */
  mostCaughtUpFollower(): NodeId | undefined {
    return this.raft.mostCaughtUpFollower();
  }

  /** See Raft.votersHeardRecently. */
  votersHeardRecently(): NodeId[] | undefined {
    return this.raft.votersHeardRecently();
  }

  /** Leader: `id` answered in this check-quorum round or the last (false elsewhere). */
  heardRecently(id: NodeId): boolean {
    return this.raft.heardRecently(id);
  }

  /** See Raft.proposeConfChange: returns the change's index; throws ProposalRefusedError. */
  proposeConfChange(data: Uint8Array): number {
    return this.raft.proposeConfChange(data);
  }

  /** The committed membership change at `index` was applied: see Raft.applyConfChange. */
  applyConfChange(change: ConfChange, index: number): ConfState {
    return this.raft.applyConfChange(change, index);
  }

  /** Hands leadership to `target` (thesis §3.10). */
  transferLeadership(target: NodeId): void {
    this.raft.transferLeadership(target);
  }

  /** The driver is still streaming a snapshot to `to`. */
  reportSnapshotInProgress(to: NodeId): void {
    this.raft.reportSnapshotInProgress(to);
  }

  step(message: Message): void {
    this.raft.step(message);
  }

  /** See Raft.votesHeld: whether this server, started with an empty log, still holds its vote until it caught up. */
  votesHeld(): boolean {
    return this.raft.votesHeld();
  }

  /** How many votes (and campaigns of its own) the hold refused so far (see Raft.votesHeld). */
  heldVoteRefusals(): number {
    return this.raft.heldVoteRefusals;
  }

  /** See Raft.lostLog: set once a heartbeat showed this node lost log entries it had acknowledged. */
  lostLog(): LostLog | undefined {
    return this.raft.lostLog();
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

  /**
   * Whether there is work for the driver. Not a pure query: a heartbeat round that pending reads
   * wait for is sent first (`Raft.sendReadRound`), so the Ready that follows carries it.
   */
  hasReady(): boolean {
    const raft = this.raft;
    raft.sendReadRound();
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
    raft.sendReadRound();
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
   * disk too; without, they are only written, and the driver calls `persisted` once they are. With
   * `applyConfirmedLater` its committed entries were handed to an apply still under way: the next
   * Ready goes on after them, but the core counts them applied (a membership change among them
   * included) only once the driver calls `confirmApplied`.
   */
  advance(ready: Ready, durable = true, applyConfirmedLater = false): void {
    assert(this.outstanding === ready, "advance() with a Ready that is not the outstanding one");
    this.outstanding = undefined;
    if (ready.hardState !== undefined) this.previousHardState = ready.hardState;
    if (ready.snapshot !== undefined) this.raft.log.snapshotInstalled(ready.snapshot.metadata.index);
    const lastEntry = ready.entries[ready.entries.length - 1];
    if (lastEntry !== undefined) this.raft.log.stableTo(lastEntry.index, lastEntry.term);
    const lastCommitted = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastCommitted !== undefined) {
      this.raft.log.handedTo(lastCommitted.index);
      if (!applyConfirmedLater) this.raft.log.appliedTo(lastCommitted.index);
    }
    if (durable && lastEntry !== undefined) this.raft.persisted(lastEntry.index, lastEntry.term);
  }

  /**
   * The apply of entries up to `index`, handed over in a Ready advanced with `applyConfirmedLater`,
   * is done. Any time, a Ready outstanding or not; confirmations come in log order (an older one
   * than the last changes nothing).
   */
  confirmApplied(index: number): void {
    this.raft.log.appliedTo(index);
  }

  /** The log is on disk up to (`index`, `term`), written by Readies advanced without `durable`. */
  persisted(index: number, term: number): void {
    this.raft.persisted(index, term);
  }
}
