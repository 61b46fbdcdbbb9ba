/**
 * The data the Raft core consumes and produces. Everything here is plain data: no I/O, no clocks.
 * Terms and indexes are JavaScript numbers; they stay far below 2^53 for any real cluster.
 */

/** A server's identity in the cluster: a small positive integer. */
export type NodeId = number;

/** What a log entry carries. A leader's no-op on taking office is a `normal` entry with no data. */
export enum EntryType {
  Normal = 0,
  /** A membership change (thesis §4.1): data is the driver's encoding of a ConfChange. */
  ConfChange = 1,
}

/**
 * One single-server membership change (thesis §4.1). A new server joins as a learner (it replicates
 * but neither votes nor counts toward a quorum) and is promoted to voter once caught up.
 * It takes effect when the driver applies its committed entry and calls `applyConfChange`.
 */
export interface ConfChange {
  readonly type: "add-learner" | "promote" | "remove";
  readonly nodeId: NodeId;
}

/** Who is in the cluster: voters decide, learners follow. */
export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/** One log entry (paper §5.3). `index` starts at 1; index 0 with term 0 is the empty log's sentinel. */
export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** The state that must be on disk before any message that depends on it leaves the node (Figure 2). */
export interface HardState {
  readonly term: number;
  /** The candidate voted for in `term`, or 0 for none. */
  readonly vote: NodeId;
  readonly commit: number;
}

export const emptyHardState: HardState = { term: 0, vote: 0, commit: 0 };

export function hardStateEqual(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

export type Role = "follower" | "candidate" | "leader";

/** State that need not be persisted but that callers want to see when it changes. */
export interface SoftState {
  readonly leaderId: NodeId; // 0 when unknown
  readonly role: Role;
}

/**
 * Messages between Raft servers, one variant per RPC and response.
 * `term` is the sender's current term; every message carries `from` and `to`.
 */
export type Message =
  | VoteRequest
  | VoteResponse
  | AppendRequest
  | AppendResponse
  | HeartbeatRequest
  | HeartbeatResponse
  | ReadIndexRequest
  | ReadIndexResponse
  | TimeoutNowRequest
  | SnapshotRequest;

/**
 * Whether `message` is a leader's: it says what its sender holds of the receiver's log (a heartbeat's
 * or an append's commit, an image, a transfer's order to campaign), or names its sender the leader
 * (a read index granted; a rejected one comes from a leader deposed by the very term it carries).
 * A receiver at a lower term follows its sender; the peer transport refuses such a message meant
 * for an older process of the receiver's id (src/transport/peer-call-guard.ts `refuseStaleRecipient`).
 */
export function fromLeader(message: Message): boolean {
  switch (message.type) {
    case "append":
    case "heartbeat":
    case "snapshot":
    case "timeout-now":
      return true;
    case "read-index-response":
      return !message.rejected;
    default:
      return false;
  }
}

/**
 * Whether `message` promises something about its sender's disk, and so may leave only once the
 * Ready that produced it is durable (etcd's msgsAfterAppend): an append response acknowledges
 * entries, and a vote, granted or asked for (a candidate counts its own vote at once), rests on
 * the term and vote saved. Everything else may leave as soon as it is made: heartbeats and their
 * answers, read index traffic (a commit index is on a majority's disks already), TimeoutNow and
 * snapshots. Drivers that fsync in the background hold back exactly these.
 */
export function waitsForDisk(message: Message): boolean {
  switch (message.type) {
    case "append-response":
    case "vote":
    case "pre-vote":
    case "vote-response":
    case "pre-vote-response":
      return true;
    default:
      return false;
  }
}

interface MessageBase {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
}

/**
 * RequestVote (§5.2, §5.4.1), or its pre-vote rehearsal (thesis §9.6): a pre-vote carries the term
 * the candidate would campaign in, changes no one's term or vote, and is granted only by servers
 * that have not heard from a leader within an election timeout and whose logs are no newer.
 */
export interface VoteRequest extends MessageBase {
  readonly type: "vote" | "pre-vote";
  readonly lastLogIndex: number;
  readonly lastLogTerm: number;
  /** An election a leader asked for by TimeoutNow (thesis §3.10): voters set aside their leader lease. */
  readonly transfer: boolean;
  /**
   * A pre-vote's round: every round of one candidate in one term asks for the same term, so its
   * answers echo the round, and one from an earlier round is not counted (absent: a vote, or a
   * peer of a release before rounds).
   */
  readonly round?: number;
}

/** A granted pre-vote response carries the pre-vote's term; a rejection carries the voter's term. */
export interface VoteResponse extends MessageBase {
  readonly type: "vote-response" | "pre-vote-response";
  readonly granted: boolean;
  /** The request's `round`, echoed. */
  readonly round?: number;
}

/**
 * Where a snapshot stands in the log: the state machine image includes every entry up to `index`
 * (whose term was `term`), and `voters` is the configuration as of that index.
 */
export interface SnapshotMetadata {
  readonly index: number;
  readonly term: number;
  readonly voters: readonly NodeId[];
  /** Learners as of `index` (absent means none). */
  readonly learners?: readonly NodeId[];
}

export const emptySnapshot: SnapshotMetadata = { index: 0, term: 0, voters: [] };

/**
 * InstallSnapshot (thesis §5.1) as the core sees it: the metadata and `imageId`, a handle to the
 * state machine image. The core never touches image bytes: the driver streams them between peers
 * in bounded chunks and delivers this message once the image is staged on the receiver.
 */
export interface SnapshotRequest extends MessageBase {
  readonly type: "snapshot";
  readonly snapshot: SnapshotMetadata;
  readonly imageId: string;
}

/** A snapshot the driver must install before anything else in the Ready (replacing the state machine). */
export interface SnapshotToInstall {
  readonly metadata: SnapshotMetadata;
  readonly imageId: string;
}

/** A leader handing over tells its chosen, caught-up successor to campaign at once (thesis §3.10). */
export interface TimeoutNowRequest extends MessageBase {
  readonly type: "timeout-now";
}

/** AppendEntries with entries (§5.3). */
export interface AppendRequest extends MessageBase {
  readonly type: "append";
  readonly prevLogIndex: number;
  readonly prevLogTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}

/**
 * The answer to an AppendRequest. On success `index` is the last index now known to match.
 * On rejection `index` echoes the rejected prevLogIndex and the hint lets the leader skip back
 * a whole term at a time (thesis §5.3's "fast backtracking"): `hintIndex` is the largest index
 * the follower has at or below prevLogIndex whose term is <= `hintTerm`, the term at that index.
 */
export interface AppendResponse extends MessageBase {
  readonly type: "append-response";
  readonly success: boolean;
  readonly index: number;
  readonly hintIndex: number;
  readonly hintTerm: number;
}

/**
 * A heartbeat is an AppendEntries with no entries that needs no log check (etcd's MsgHeartbeat).
 * `commit` is never beyond what the follower is known to have. `readContext` carries the latest
 * pending ReadIndex request id so one round of acks confirms leadership for every read before it.
 */
export interface HeartbeatRequest extends MessageBase {
  readonly type: "heartbeat";
  readonly commit: number;
  readonly readContext: string;
}

export interface HeartbeatResponse extends MessageBase {
  readonly type: "heartbeat-response";
  readonly readContext: string;
}

/** A follower asks the leader for a read index on behalf of its clients (thesis §6.4). */
export interface ReadIndexRequest extends MessageBase {
  readonly type: "read-index";
  readonly readContext: string;
}

/** `index` is the leader's commit index once its leadership was confirmed; 0 with `rejected`. */
export interface ReadIndexResponse extends MessageBase {
  readonly type: "read-index-response";
  readonly readContext: string;
  readonly index: number;
  readonly rejected: boolean;
}

export type MessageType = Message["type"];

/** A read that may be served once the state machine has applied `index` (thesis §6.4). */
export interface ReadState {
  readonly readContext: string;
  readonly index: number;
}

/**
 * Evidence that this node lost log entries it had acknowledged: its leader's heartbeat says it holds
 * entries up to `acknowledged` (a heartbeat's commit is at most what the follower acknowledged, see
 * Raft.broadcastHeartbeat), but its log ends at `lastIndex`. Its data dir was wiped, or replaced by an
 * older copy: it may also have forgotten votes it cast, so it must not take part again as it is.
 */
export interface LostLog {
  readonly leaderId: NodeId;
  readonly term: number;
  readonly acknowledged: number;
  readonly lastIndex: number;
  /**
   * Set when the evidence is the other way round: the leader's log differs from this node's at an
   * index this node has committed (the term there, ours and the leader's). Committed entries are in
   * every later leader's log, so the cluster lost entries this node committed: a member lost its
   * data, and elected a leader without them.
   */
  readonly conflict?: { readonly index: number; readonly ourTerm: number; readonly leaderTerm: number };
}

/** A read the core could not serve (no leader, or leadership lost): the caller should retry or fail it. */
export interface ReadFailure {
  readonly readContext: string;
  readonly reason: "no_leader" | "not_leader";
}

/**
 * Everything the core asks its driver to do, in this order (etcd's Ready): install `snapshot` if
 * any, persist `hardState` and `entries` in one transaction (fsync when `mustSync`), then send
 * `messages`, then apply `committedEntries`, then call `advance(ready)`.
 */
export interface Ready {
  readonly softState: SoftState | undefined;
  readonly hardState: HardState | undefined;
  /** Install first, atomically: replaces the state machine and drops the whole log before it. */
  readonly snapshot: SnapshotToInstall | undefined;
  readonly entries: readonly Entry[];
  readonly committedEntries: readonly Entry[];
  readonly messages: readonly Message[];
  readonly readStates: readonly ReadState[];
  readonly readFailures: readonly ReadFailure[];
  readonly mustSync: boolean;
}

/** Thrown to a proposer when the core cannot take a proposal; nothing was appended. */
export class ProposalRefusedError extends Error {
  override name = "ProposalRefusedError";
  constructor(
    readonly reason: "not_leader" | "no_leader" | "too_many_uncommitted" | "leader_transfer" | "conf_change_pending",
    readonly leaderId: NodeId,
  ) {
    super(`proposal refused: ${reason}`);
  }
}
