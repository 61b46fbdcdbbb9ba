import { AssertionError, assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { KvError } from "../lib/kv-error.ts";
import type { Prng } from "../lib/prng.ts";
import { defaultRaftLimits } from "../raft/raft.ts";
import { RawNode } from "../raft/raw-node.ts";
import { ProposalRefusedError, waitsForDisk, type Message, type NodeId, type Ready, type SnapshotMetadata, type SnapshotRequest, type SnapshotToInstall } from "../raft/types.ts";
import {
  encodeCommand,
  encodeMembershipChange,
  idempotencyKeyBytesMax,
  sessionKeyPrefix,
  type Command,
  type MembershipChange,
} from "../kv/command.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import type { MemberAddress } from "../kv/membership.ts";
import type { KvStorage } from "../storage/kv-storage.ts";
import { SnapshotChunkRefusedError, type SnapshotChunk, type Transport } from "../transport/transport.ts";
import type { KvNodeApi, KvValue, MembersView, MemberStatus, NodeStatus, ReadConsistency, WriteOptions } from "./api.ts";

/** A Ready being carried out, and how far it got (a full disk stops it between stages). */
interface BlockedReady {
  readonly ready: Ready;
  /** Appends and heartbeats still to send once this Ready's write has its fsync started. */
  early: readonly Message[];
  readonly late: readonly Message[];
  stage: "install" | "save" | "apply";
}

/**
 * A proposal whose index another leader's entry took: the log there is committed with the other
 * entry, so ours can never apply (log matching). Unlike `timeout`, the outcome is known, and
 * unlike `no_leader`, something was proposed; either way a retry cannot apply it twice.
 */
function proposalDropped(what: string): KvError {
  return new KvError("proposal_dropped", `leadership changed before ${what} committed: another leader's entry took its place, so it was not applied and never will be; retrying is safe`, { retryAfterS: 1 });
}

function diskFullError(): KvError {
  return new KvError(
    "insufficient_storage",
    "the disk is full: this node is frozen until space returns (nothing was written; reads with consistency=stale are still served)",
    { retryAfterS: 5 },
  );
}

/** The optional parts of a write command. */
function writeConditions(options: WriteOptions): { ifVersion?: number; idempotencyKey?: string } {
  return {
    ...(options.ifVersion === undefined ? {} : { ifVersion: options.ifVersion }),
    ...(options.idempotencyKey === undefined ? {} : { idempotencyKey: options.idempotencyKey }),
  };
}

/** Keys under the state machine's session prefix are its own: clients can neither read nor write them. */
function checkClientKey(key: string): void {
  if (key.startsWith(sessionKeyPrefix)) throw new KvError("bad_request", "keys starting with NUL + 'session/' are reserved");
}

/** The error an idempotent write gets when its key's session was made by another request. */
function idempotencyKeyReused(idempotencyKey: string | undefined): KvError {
  return new KvError(
    "idempotency_key_reused",
    `Idempotency-Key ${JSON.stringify(idempotencyKey)} was first sent with another request (another method, key, value or ifVersion): nothing was written; send a new request under a new key`,
  );
}

/** The error a conditional write gets when the key's version is not the expected one. */
function versionMismatch(key: string, expected: number | undefined, current: number): KvError {
  return new KvError("version_mismatch", `'${key}' is at version ${current}, not ${expected}: nothing was written`, { version: current });
}

/** How a node is set up. Everything with a unit says it. */
export interface KvNodeConfig {
  readonly id: NodeId;
  /**
   * Peer URLs as this node reaches them (`--cluster`), its own included. On a data dir that has
   * applied no membership change they are the voters, checked against those recorded; once one is
   * applied (or for a node that joined) the recorded configuration decides who is a member, and
   * these only override recorded addresses.
   */
  readonly peers: ReadonlyMap<NodeId, string>;
  /**
   * The transport's peer map, which this node keeps filled with every other member's peer URL as
   * the configuration changes (the transport reads it lazily). Optional: in-memory tests need none.
   */
  readonly peerDirectory?: Map<NodeId, string>;
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
  /** Compact the log once this many entries are applied past the last snapshot. Default 10 000. */
  readonly snapshotEntries?: number;
  /**
   * Entries kept behind the applied index when compacting, so a follower slightly behind still
   * catches up from the log rather than by a snapshot. Below `snapshotEntries`. Default 1 000.
   */
  readonly snapshotCatchUpEntries?: number;
  /**
   * The space quota (etcd's `--quota-backend-bytes`): once the data this node keeps
   * (`KvStorage.dataBytes`) reaches it, the leader refuses puts with `quota_exceeded`; reads and
   * deletes go on, and the log is compacted at every apply until the data is back under it.
   * Undefined: no quota (`kv serve` passes `defaultQuotaBytes` unless told otherwise).
   */
  readonly quotaBytes?: number;
  /**
   * How long an idempotent write's session is remembered, by the wall clock of the leaders that
   * stamp the writes (`kv serve --idempotency-window`). Default `defaultIdempotency.windowMs`.
   */
  readonly idempotencyWindowMs?: number;
  /** Sessions kept at most; past it the oldest are dropped. Default `defaultIdempotency.sessionsMax`. */
  readonly idempotencySessionsMax?: number;
}

/** `kv serve`'s quota when `--quota-bytes` is not given: 2 GiB, etcd's default. */
export const defaultQuotaBytes = 2 * 1024 ** 3;

/**
 * Ticks between two measurements of the data kept (two pragmas). Between them the leader adds what
 * it proposed to the last measurement, so a burst of writes cannot run far past the quota unseen.
 */
const dataMeasureTicks = 10;

/**
 * Idempotent-write sessions: a leader stamps these on each idempotent write it proposes, and the
 * state machine applies them from the log (see src/kv/apply-plan.ts), so every replica decides
 * alike whatever its own flags say.
 */
export const defaultIdempotency = {
  windowMs: 10 * 60_000,
  sessionsMax: 100_000,
} as const;

/** When the log is compacted (see `KvNodeConfig.snapshotEntries`). */
export const defaultSnapshotPolicy = {
  snapshotEntries: 10_000,
  snapshotCatchUpEntries: 1_000,
} as const;

export const defaultNodeTimings = {
  tickMs: 10,
  electionTicks: 12, // 120-240 ms randomized election timeout on loopback
  heartbeatTicks: 5, // 50 ms: a third of the minimum election timeout; idle peers cost less CPU
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

/** A membership change proposed here, waiting to be applied. */
interface PendingConfChange extends Waiter<MembersView> {
  readonly index: number;
  readonly term: number;
}

interface PendingRead extends Waiter<void> {
  /** Set once the read index is known: serve when applied >= readIndex. */
  readIndex: number;
}

/**
 * One kv node: the single loop that drives the Raft core. Each turn it proposes the writes that
 * arrived together, asks for one read index for the reads that arrived together, then carries out
 * every Ready in order: persist (one transaction) → send → apply → advance, and finally answers
 * the clients whose writes applied or whose reads may now be served.
 *
 * The fsync runs in the background (thesis §10.2.1; etcd's asynchronous storage writes): a turn
 * writes its Readies without waiting for the disk, then starts one fsync over all that was
 * written since the last (`storage.sync`), and goes on serving. Until that fsync returns, the
 * messages those Readies produced wait (a vote or an ack promises what is on disk), and a leader
 * does not count its own copy of the new entries toward commit (`RawNode.persisted`). A leader's
 * appends and heartbeats promise nothing about its own disk: they leave without waiting for it,
 * right after the write of the entries they carry has started its fsync.
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
  /**
   * Tells this process's read contexts from those of an earlier one of the same node: a node that
   * restarts numbers its reads from 1 again, and a delayed answer to its previous life's read must
   * not match a new one (it carries a read index from before the new read began).
   */
  private readonly readNonce: string;
  /** Readies whose writes must be durable before their messages leave, written so far. */
  private writtenReadies = 0;
  /** How many of those the last finished fsync covered. */
  private durableReadies = 0;
  /** The last log entry written: reported to the core once an fsync covering it returns. */
  private lastWrittenEntry: { index: number; term: number } | undefined;
  /** Set while an fsync runs on the storage's thread. */
  private syncing = false;
  /** An entry an fsync made durable, for the core at the start of the next turn. */
  private durableEntry: { index: number; term: number } | undefined;
  /**
   * Messages waiting for the fsync that covers the Ready that produced them, oldest first, with
   * how many peer calls had arrived when the turn stepped its inbox: those calls' answers carry them.
   */
  private held: { messages: readonly Message[]; readies: number; calls: number }[] = [];
  /** Peer calls whose messages have been stepped (`Transport.callsArrived` at the last stepInbox). */
  private callsStepped = 0;
  /** A Ready the disk could not take (full): retried before anything else. */
  private blockedReady: BlockedReady | undefined;
  private diskRetryTicks = 0;
  /** Checks to run once after the next turn (e.g. a leadership transfer waiting to finish). */
  private afterTurn: (() => void)[] = [];
  private turnScheduled = false;
  private stopTicking: (() => void) | undefined;
  /** When the clock started (monotonic ms): tick N is due at `ticksStartMs + N * tickMs`. */
  private ticksStartMs = 0;
  /** Ticks given to the core so far. */
  private ticksDone = 0;
  private stopped = false;
  private failure: Error | undefined;
  private httpUrl: string;
  /** Snapshot transfers to followers in flight: at most one per peer. */
  private readonly outgoingSnapshots = new Map<NodeId, AbortController>();
  private snapshotSequence = 0;
  /** The image being received, chunk by chunk; its rows are staged in storage. */
  private incomingSnapshot: { from: NodeId; imageId: string; metadata: SnapshotMetadata; nextSeq: number } | undefined;
  /** The InstallSnapshot of the image staged in full, until it is installed or refused (see settleStagedImage). */
  private imageAwaitingInstall: SnapshotRequest | undefined;
  private readonly snapshotEntries: number;
  private readonly snapshotCatchUpEntries: number;
  /** Every member's addresses as this node reaches them: the recorded ones, overridden by `cfg.peers`. */
  private readonly addresses = new Map<NodeId, MemberAddress>();
  /** Member addresses that came with the image being staged, by image id (at most one image). */
  private stagedAddresses: { imageId: string; addresses: readonly MemberAddress[] } | undefined;
  private pendingConfChange: PendingConfChange | undefined;
  /** Set once this node applied its own removal: it serves no more requests (but keeps running). */
  private removed = false;
  /** `KvStorage.dataBytes` at the last measurement, and what this node proposed since (see `dataMeasureTicks`). */
  private dataBytesMeasured = 0;
  private bytesProposedSinceMeasure = 0;
  private ticksSinceMeasure = 0;
  private quotaExceededLogged = false;
  private readonly idempotencyWindowMs: number;
  private readonly idempotencySessionsMax: number;

  constructor(private readonly cfg: KvNodeConfig) {
    this.httpUrl = cfg.httpUrl;
    this.idempotencyWindowMs = cfg.idempotencyWindowMs ?? defaultIdempotency.windowMs;
    this.idempotencySessionsMax = cfg.idempotencySessionsMax ?? defaultIdempotency.sessionsMax;
    assert(Number.isSafeInteger(this.idempotencyWindowMs) && this.idempotencyWindowMs >= 1, `idempotencyWindowMs ${this.idempotencyWindowMs}`);
    assert(Number.isSafeInteger(this.idempotencySessionsMax) && this.idempotencySessionsMax >= 1, `idempotencySessionsMax ${this.idempotencySessionsMax}`);
    this.snapshotEntries = cfg.snapshotEntries ?? defaultSnapshotPolicy.snapshotEntries;
    this.snapshotCatchUpEntries = cfg.snapshotCatchUpEntries ?? defaultSnapshotPolicy.snapshotCatchUpEntries;
    assert(
      Number.isSafeInteger(this.snapshotCatchUpEntries) && this.snapshotCatchUpEntries >= 0 && this.snapshotEntries > this.snapshotCatchUpEntries,
      "need snapshotEntries > snapshotCatchUpEntries >= 0",
    );
    const flagAddresses = [...cfg.peers].map(([id, peerUrl]) => ({ id, peerUrl }));
    const recorded = cfg.storage.membership();
    if (recorded.changedIndex === 0) {
      // Never changed: --cluster names the voters (checked against those recorded at bootstrap).
      const voters = [...cfg.peers.keys()].sort((a, b) => a - b);
      assert(voters.includes(cfg.id), `node ${cfg.id} is not among the peers`);
      cfg.storage.bootstrap(voters, flagAddresses);
    } else {
      // The recorded configuration (as of the applied index) wins over --cluster from here on.
      const flagVoters = [...cfg.peers.keys()].sort((a, b) => a - b).join(",");
      if (cfg.peers.size > 1 && flagVoters !== recorded.voters.join(",")) {
        cfg.log?.("membership", {
          detail: `using the configuration recorded at index ${recorded.changedIndex} (voters ${recorded.voters.join(",")}, learners ${recorded.learners.join(",") || "none"}), not the voters given by --cluster (${flagVoters})`,
        });
      }
    }
    this.refreshAddresses();
    const now = cfg.storage.membership();
    this.removed = now.changedIndex > 0 && !now.voters.includes(cfg.id) && !now.learners.includes(cfg.id);
    if (this.removed) cfg.log?.("removed", { detail: "the recorded configuration does not include this node: it was removed; it serves no requests" });
    this.raw = new RawNode({
      id: cfg.id,
      storage: cfg.storage,
      electionTicks: cfg.electionTicks,
      heartbeatTicks: cfg.heartbeatTicks,
      prng: cfg.prng,
      applied: cfg.storage.appliedIndex(),
      ...defaultRaftLimits,
    });
    this.readNonce = cfg.prng.intInclusive(0, 2 ** 31 - 1).toString(36);
    assert(cfg.quotaBytes === undefined || (Number.isSafeInteger(cfg.quotaBytes) && cfg.quotaBytes > 0), `quotaBytes ${cfg.quotaBytes}`);
    this.measureData();
  }

  /** Sets the advertised client URL once the HTTP port is known (port 0 listens). */
  setHttpUrl(url: string): void {
    this.httpUrl = url;
  }

  /** Starts the clock and the loop; peers' messages arrive through `receive`. */
  start(transport: Transport): void {
    this.transport = transport;
    this.ticksStartMs = this.cfg.clock.nowMs();
    this.stopTicking = this.cfg.clock.every(this.cfg.tickMs, () => this.onTick());
    // The only voter needs no one's vote: it leads at once instead of waiting out a timeout.
    const voters = this.raw.raft.voters;
    if (voters.length === 1 && voters[0] === this.cfg.id && !this.removed) this.raw.campaign();
    this.scheduleTurn();
  }

  /** Stops the loop: waiting clients get `unavailable`; the storage is left for the caller to close. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopTicking?.();
    for (const transfer of this.outgoingSnapshots.values()) transfer.abort(new Error("the node is stopping"));
    this.failAll(new KvError("unavailable", "the node is shutting down"));
    this.held = []; // never sent: the disk may not hold what they promise
    const checks = this.afterTurn;
    this.afterTurn = [];
    for (const check of checks) check();
    this.transport?.flush();
  }

  /** The transport's handler: queues messages for the next turn. */
  receive(messages: readonly Message[]): void {
    if (this.stopped) return;
    for (const message of messages) {
      // InstallSnapshot arrives only with its image (receiveSnapshotChunk): one without names no staged image.
      if (message.type === "snapshot") continue;
      this.inbox.push(message);
    }
    if (this.inbox.length > this.cfg.inboxMessagesMax) this.inbox.splice(0, this.inbox.length - this.cfg.inboxMessagesMax);
    this.scheduleTurn();
  }

  // ---- Client API ---------------------------------------------------------------------------

  put(key: string, value: Uint8Array, options: WriteOptions = {}): Promise<{ version: number }> {
    const condition = writeConditions(options);
    return this.write({ op: "put", key, value, ...condition }).then((result) => {
      if (result.kind === "reused") throw idempotencyKeyReused(options.idempotencyKey);
      if (result.kind === "conflict") throw versionMismatch(key, options.ifVersion, result.version);
      assert(result.kind === "put", `put applied as ${result.kind}`);
      return { version: result.version };
    });
  }

  delete(key: string, options: WriteOptions = {}): Promise<{ deleted: boolean; version: number }> {
    const condition = writeConditions(options);
    return this.write({ op: "delete", key, ...condition }).then((result) => {
      if (result.kind === "reused") throw idempotencyKeyReused(options.idempotencyKey);
      if (result.kind === "conflict") throw versionMismatch(key, options.ifVersion, result.version);
      assert(result.kind === "delete", `delete applied as ${result.kind}`);
      return { deleted: result.deleted, version: result.version };
    });
  }

  async get(key: string, consistency: ReadConsistency): Promise<KvValue | undefined> {
    checkClientKey(key);
    await this.readBarrier(consistency);
    const stored = this.cfg.storage.get(key);
    return stored === undefined ? undefined : { value: stored.value, version: stored.version };
  }

  async list(prefix: string, after: string | undefined, limit: number, consistency: ReadConsistency): Promise<(KvValue & { key: string })[]> {
    await this.readBarrier(consistency);
    return this.cfg.storage.list(prefix, after, limit);
  }

  /** Resolves once a read may be served from local state with the asked-for consistency. */
  private async readBarrier(consistency: ReadConsistency): Promise<void> {
    if (consistency === "stale") return;
    this.refuseUnlessRunning();
    this.refuseWhenFull();
    const queue = consistency === "lease" ? this.queuedLeaseReads : this.queuedReads;
    await new Promise<void>((resolve, reject) => {
      queue.push({ resolve, reject, deadlineMs: this.deadline(), readIndex: 0 });
      this.scheduleTurn();
    });
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
      snapshotIndex: this.cfg.storage.snapshot().index,
      firstLogIndex: this.cfg.storage.firstIndex(),
      members: this.memberStatuses(),
      storage: {
        dataBytes: this.dataBytesMeasured,
        quotaBytes: this.cfg.quotaBytes ?? 0,
        quotaExceeded: this.overQuota(),
        diskFull: this.blockedReady !== undefined,
      },
    };
  }

  /** Whether the data kept, as last measured plus what was proposed since, has reached the quota. */
  private overQuota(): boolean {
    const quota = this.cfg.quotaBytes;
    return quota !== undefined && this.dataBytesMeasured + this.bytesProposedSinceMeasure >= quota;
  }

  /** Measures the data kept (cheap: see `KvStorage.dataBytes`) and logs crossing the quota either way. */
  private measureData(): void {
    this.dataBytesMeasured = this.cfg.storage.dataBytes();
    this.bytesProposedSinceMeasure = 0;
    this.ticksSinceMeasure = 0;
    const quotaBytes = this.cfg.quotaBytes;
    if (quotaBytes === undefined || this.overQuota() === this.quotaExceededLogged) return;
    this.quotaExceededLogged = !this.quotaExceededLogged;
    const detail = this.quotaExceededLogged
      ? "puts are refused with quota_exceeded; reads and deletes go on (delete keys, or raise --quota-bytes and restart)"
      : "the data is back under the quota: puts are taken again";
    this.cfg.log?.(this.quotaExceededLogged ? "quota exceeded" : "quota ok", { dataBytes: this.dataBytesMeasured, quotaBytes, detail });
  }

  // ---- Membership ---------------------------------------------------------------------------

  members(): MembersView {
    return { members: this.memberStatuses(), leaderId: this.raw.raft.leaderId, configIndex: this.cfg.storage.membership().changedIndex };
  }

  addMember(id: NodeId, peerUrl: string, httpUrl?: string): Promise<MembersView> {
    this.refuseUnlessRunning();
    if (this.raw.raft.members().includes(id)) {
      return Promise.reject(new KvError("member_exists", `node ${id} is already a ${this.raw.raft.isVoter(id) ? "voter" : "learner"}`));
    }
    return this.proposeMembershipChange({ type: "add-learner", nodeId: id, peerUrl, ...(httpUrl === undefined ? {} : { httpUrl }) });
  }

  promoteMember(id: NodeId): Promise<MembersView> {
    this.refuseUnlessRunning();
    if (!this.raw.raft.learners.includes(id)) {
      const what = this.raw.raft.isVoter(id) ? "already a voter" : "not a member";
      return Promise.reject(new KvError(this.raw.raft.isVoter(id) ? "member_exists" : "not_found", `node ${id} is ${what}`));
    }
    return this.proposeMembershipChange({ type: "promote", nodeId: id });
  }

  async removeMember(id: NodeId): Promise<MembersView> {
    this.refuseUnlessRunning();
    const raft = this.raw.raft;
    if (!raft.members().includes(id)) throw new KvError("not_found", `node ${id} is not a member`);
    if (raft.role !== "leader") throw this.notLeader();
    if (raft.isVoter(id) && raft.voters.length === 1) throw new KvError("bad_request", `node ${id} is the last voter`);
    if (id === this.cfg.id) {
      // A leader does not remove itself (it would go on leading a configuration it is not in until
      // the change commits): it hands over, and the caller retries on the new leader (a 307).
      const { leaderId } = await this.transferLeadership(undefined);
      throw this.notLeaderAfterTransfer(leaderId);
    }
    return this.proposeMembershipChange({ type: "remove", nodeId: id });
  }

  private notLeaderAfterTransfer(leaderId: NodeId): KvError {
    const leaderUrl = this.httpUrlOf(leaderId);
    if (leaderId === 0 || leaderUrl === undefined) {
      return new KvError("no_leader", "leadership was handed over to remove this node; retry on the new leader", { retryAfterS: 1 });
    }
    return new KvError("not_leader", `leadership was handed to node ${leaderId}, which will perform the removal`, { leaderId, leaderUrl });
  }

  /** Proposes one change (the core refuses a second while one is unapplied) and waits for it to apply here. */
  private proposeMembershipChange(change: MembershipChange): Promise<MembersView> {
    this.refuseUnlessRunning();
    const raft = this.raw.raft;
    if (raft.role !== "leader") return Promise.reject(this.notLeader());
    if (this.pendingConfChange !== undefined) return Promise.reject(this.confChangePending());
    let index: number;
    try {
      // Outside a turn no Ready is outstanding, so the core may take the proposal now.
      index = raft.proposeConfChange(encodeMembershipChange(change));
    } catch (error: unknown) {
      if (!(error instanceof ProposalRefusedError)) throw error;
      if (error.reason === "conf_change_pending") return Promise.reject(this.confChangePending());
      if (error.reason === "leader_transfer") return Promise.reject(new KvError("unavailable", "leadership is being handed over; retry shortly", { retryAfterS: 1 }));
      return Promise.reject(this.notLeader());
    }
    this.cfg.log?.("membership proposed", { change: change.type, nodeId: change.nodeId, index, ...(change.peerUrl === undefined ? {} : { peerUrl: change.peerUrl }) });
    this.scheduleTurn();
    return new Promise<MembersView>((resolve, reject) => {
      this.pendingConfChange = { resolve, reject, deadlineMs: this.deadline(), index, term: raft.term };
    });
  }

  private confChangePending(): KvError {
    return new KvError("conf_change_pending", "another membership change is not yet applied; retry once it is", { retryAfterS: 1 });
  }

  /** Applies a committed change (already in the recorded configuration) to the core and the peer map. */
  private applyMembershipChange(result: Extract<ApplyResult, { kind: "conf-change" }>, term: number): void {
    const { change, index } = result;
    this.raw.raft.applyConfChange({ type: change.type, nodeId: change.nodeId });
    this.refreshAddresses();
    const raft = this.raw.raft;
    this.cfg.log?.("membership applied", { change: change.type, nodeId: change.nodeId, index, voters: raft.voters, learners: raft.learners });
    if (change.type === "remove" && change.nodeId === this.cfg.id) {
      this.removed = true;
      this.cfg.log?.("removed", { detail: `this node was removed from the cluster at index ${index}; it serves no more requests and may be stopped`, index });
    }
    const pending = this.pendingConfChange;
    if (pending === undefined || index < pending.index) return;
    this.pendingConfChange = undefined;
    if (index === pending.index && term === pending.term) pending.resolve(this.members());
    else pending.reject(proposalDropped("the membership change"));
  }

  /** The leader promotes a learner whose log has caught up with its commit index (one change at a time). */
  private maybePromoteLearner(): void {
    const raft = this.raw.raft;
    if (raft.role !== "leader" || this.pendingConfChange !== undefined || this.stopped) return;
    for (const learner of raft.learners) {
      const match = raft.matchIndexOf(learner);
      if (match === undefined || match < raft.log.committed) continue;
      this.proposeMembershipChange({ type: "promote", nodeId: learner }).then(
        () => this.cfg.log?.("learner promoted", { nodeId: learner }),
        (error: unknown) => this.cfg.log?.("learner promotion failed", { nodeId: learner, error: error instanceof Error ? error.message : String(error) }),
      );
      return;
    }
  }

  /** Rebuilds the address book from storage and flags, and the transport's peer map from it. */
  private refreshAddresses(): void {
    const membership = this.cfg.storage.membership();
    const memberIds = new Set([...membership.voters, ...membership.learners]);
    this.addresses.clear();
    for (const address of membership.addresses) this.addresses.set(address.id, address);
    // This node's own --cluster view of a peer wins (e.g. a proxy in between); never for ex-members.
    for (const [id, peerUrl] of this.cfg.peers) {
      if (memberIds.has(id) || membership.changedIndex === 0) this.addresses.set(id, { ...this.addresses.get(id), id, peerUrl });
    }
    const directory = this.cfg.peerDirectory;
    if (directory === undefined) return;
    for (const id of [...directory.keys()]) if (!memberIds.has(id) && !this.cfg.peers.has(id)) directory.delete(id);
    for (const [id, address] of this.addresses) if (id !== this.cfg.id && directory.get(id) !== address.peerUrl) directory.set(id, address.peerUrl);
  }

  private memberStatuses(): MemberStatus[] {
    const raft = this.raw.raft;
    return raft.members().sort((a, b) => a - b).map((id) => ({
      id,
      peerUrl: this.addresses.get(id)?.peerUrl ?? "",
      httpUrl: this.httpUrlOf(id) ?? this.addresses.get(id)?.httpUrl,
      role: raft.isVoter(id) ? "voter" : "learner",
    }));
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
    const voters = raft.voters.filter((id) => id !== this.cfg.id);
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
    return !this.stopped && this.blockedReady === undefined && raft.leaderId !== 0 && this.cfg.storage.appliedIndex() >= raft.log.committed;
  }

  private httpUrlOf(id: NodeId): string | undefined {
    if (id === 0) return undefined;
    if (id === this.cfg.id) return this.httpUrl;
    return this.transport?.peerHttpUrl(id);
  }

  private write(command: Command): Promise<ApplyResult> {
    checkClientKey(command.key);
    const idem = command.idempotencyKey;
    if (idem !== undefined && (idem === "" || new TextEncoder().encode(idem).byteLength > idempotencyKeyBytesMax || !idem.isWellFormed())) {
      throw new KvError("bad_request", `an idempotency key must be 1 to ${idempotencyKeyBytesMax} bytes of UTF-8`);
    }
    this.refuseUnlessRunning();
    const raft = this.raw.raft;
    if (raft.role !== "leader") throw this.notLeader();
    this.refuseWhenFull();
    // Checked where the write is proposed, on the leader (as etcd's quota): every replica keeps the
    // same state machine, so the leader's size stands for theirs. Deletes pass, so space can be freed.
    if (command.op === "put" && this.overQuota()) {
      throw new KvError(
        "quota_exceeded",
        `this node keeps ${this.dataBytesMeasured + this.bytesProposedSinceMeasure} bytes, at or past its quota of ${this.cfg.quotaBytes} bytes: puts are refused; delete keys, or raise --quota-bytes and restart`,
      );
    }
    // The leader stamps an idempotent write with its wall clock and its session limits: apply
    // decides the session from these alone, the same on every replica.
    const stamped: Command =
      idem === undefined
        ? command
        : { ...command, stamp: { atMs: Math.max(0, Math.floor(this.cfg.clock.wallMs())), windowMs: this.idempotencyWindowMs, sessionsMax: this.idempotencySessionsMax } };
    const data = encodeCommand(stamped);
    // The entry lands in the log, its value in the state machine: counted twice until measured.
    this.bytesProposedSinceMeasure += 2 * data.byteLength;
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
    if (this.blockedReady !== undefined) throw diskFullError();
    if (this.failure !== undefined) throw new KvError("unavailable", `the node stopped: ${this.failure.message}`);
    if (this.stopped || this.transport === undefined) throw new KvError("unavailable", "the node is not running");
    if (this.removed) throw new KvError("unavailable", "this node was removed from the cluster; it serves no requests");
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
    if (++this.ticksSinceMeasure >= dataMeasureTicks) this.measureData();
    if (this.blockedReady !== undefined) {
      // Frozen until the disk takes the Ready: requests still time out, and a retry runs every 10 ticks.
      this.expireWaiters();
      if (++this.diskRetryTicks % 10 === 0) this.turn();
      return;
    }
    this.expireWaiters();
    this.maybePromoteLearner();
    this.turn(); // ticks the core (catchUpTicks)
  }

  /**
   * Gives the core every tick due by the monotonic clock: one per `tickMs` since the start. A timer
   * callback is late or never comes while the process stalls (GC, a slow disk call, SIGSTOP), and a
   * tick lost would stretch the leader's lease (`Raft.leaseValid`) in real time past the followers'
   * election timeout. Made up here instead, at the start of every turn, before any read is judged.
   * After a stall of more than two election timeouts every timer has run out anyway: the rest is skipped.
   */
  private catchUpTicks(): void {
    const due = Math.floor((this.cfg.clock.nowMs() - this.ticksStartMs) / this.cfg.tickMs);
    let missing = due - this.ticksDone;
    const catchUpTicksMax = 2 * this.cfg.electionTicks;
    if (missing > catchUpTicksMax) {
      this.ticksDone += missing - catchUpTicksMax;
      missing = catchUpTicksMax;
    }
    for (; missing > 0; missing--) {
      this.ticksDone++;
      for (const to of this.outgoingSnapshots.keys()) this.raw.raft.reportSnapshotInProgress(to);
      this.raw.tick();
    }
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
      // A full disk freezes the loop, but what was written before it still gets its fsync.
      if (this.blockedReady !== undefined && !this.carryOut(this.blockedReady)) return this.startSync();
      const durable = this.durableEntry;
      if (durable !== undefined) {
        this.durableEntry = undefined;
        this.raw.persisted(durable.index, durable.term);
      }
      // Time first: a lease judged by this turn's reads must have aged by every tick that passed.
      this.catchUpTicks();
      this.stepInbox();
      this.proposeQueuedWrites();
      this.requestReadIndex();
      while (this.raw.hasReady()) if (!this.handleReady(this.raw.ready())) return this.startSync();
      this.serveReads();
      const checks = this.afterTurn;
      this.afterTurn = [];
      for (const check of checks) check();
      this.startSync();
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
    } finally {
      try {
        this.settleStagedImage();
      } catch (error) {
        this.fail(error instanceof Error ? error : new Error(String(error)));
      }
      // Peers' calls whose messages this turn took are answered now, with our replies inside;
      // while replies wait for the disk, the calls wait with them (answered once the fsync returns).
      if (this.held.length === 0 || this.stopped) this.transport?.flush();
    }
  }

  /** Starts an fsync over everything written since the last one, unless one is running. */
  private startSync(): void {
    if (this.syncing || this.stopped || this.writtenReadies === this.durableReadies) return;
    this.syncing = true;
    const readies = this.writtenReadies;
    const entry = this.lastWrittenEntry;
    this.cfg.storage.sync().then(
      () => this.synced(readies, entry),
      (error: unknown) => {
        this.syncing = false;
        if (this.stopped) return;
        const reason = error instanceof Error ? error.message : String(error);
        this.fail(new Error(`fsync failed (what was written may be lost, so the node stops): ${reason}`, { cause: error }));
      },
    );
  }

  /** An fsync returned: the messages it covers leave, and the core hears of its entry next turn. */
  private synced(readies: number, entry: { index: number; term: number } | undefined): void {
    this.syncing = false;
    if (this.stopped) return;
    this.durableReadies = Math.max(this.durableReadies, readies);
    if (entry !== undefined) this.durableEntry = entry;
    let released = 0;
    while (released < this.held.length && this.held[released]!.readies <= this.durableReadies) released++;
    if (released > 0) {
      const batches = this.held.splice(0, released);
      for (const { messages } of batches) this.sendMessages(messages);
      // The calls stepped up to the last of these Readies carry them back; later calls wait on.
      this.transport?.flush(batches[batches.length - 1]!.calls);
    }
    this.turn();
  }

  private stepInbox(): void {
    this.callsStepped = this.transport?.callsArrived() ?? 0;
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
      const context = `${this.cfg.id}.${this.readNonce}.${++this.readSequence}`;
      this.readsByContext.set(context, reads);
      if (lease) this.queuedLeaseReads = [];
      else this.queuedReads = [];
      this.raw.readIndex(context, lease);
    }
  }

  /** Install → write → send → apply → advance, in that order; acks and votes also wait for the fsync (`held`). */
  private handleReady(ready: Ready): boolean {
    // A leader's appends and heartbeats promise nothing about its own disk, so they do not wait for
    // it: the followers' writes overlap the leader's own (thesis §10.2.1). A Ready with new entries
    // of our own is written and its fsync started first, then they leave (the write takes tens of
    // microseconds, each peer's socket write about as long, and the leader's own fsync was as often
    // the last to return as a follower's); otherwise they leave at once. The leader counts its own
    // copy toward commit once the fsync covering it returns; votes and acks wait for that fsync too
    // (`waitsForDisk`, `held`), and the rest leave after the write.
    const early = ready.messages.filter((m) => m.type === "append" || m.type === "heartbeat");
    const late = early.length === 0 ? ready.messages : ready.messages.filter((m) => m.type !== "append" && m.type !== "heartbeat");
    const writeFirst = early.length > 0 && ready.entries.length > 0 && ready.snapshot === undefined;
    if (early.length > 0 && !writeFirst) this.sendEarly(early);
    return this.carryOut({ ready, early: writeFirst ? early : [], late, stage: ready.snapshot !== undefined ? "install" : "save" });
  }

  private sendEarly(early: readonly Message[]): void {
    this.sendMessages(early);
    // A follower's call waiting for its answer would otherwise hold these until after our fsync.
    this.transport?.flush();
  }

  /**
   * Carries out a Ready from `work.stage` on: install, save, then send and apply. A full disk is an
   * operating error, not a crash: the Ready waits in `blockedReady` (the core is neither stepped nor
   * ticked meanwhile, as if paused), writes are refused with `insufficient_storage`, and each retry
   * resumes where it stopped. Returns false while the disk is full.
   */
  private carryOut(work: BlockedReady): boolean {
    const { ready } = work;
    try {
      if (work.stage === "install") {
        this.installSnapshot(ready.snapshot as SnapshotToInstall);
        work.stage = "save";
      }
      if (work.stage === "save") {
        // Written, not yet durable: see the class comment (the fsync runs after the turn).
        this.cfg.storage.save(ready.hardState, ready.entries, false);
        work.stage = "apply";
        if (ready.mustSync) this.writtenReadies++;
        const lastEntry = ready.entries[ready.entries.length - 1];
        if (lastEntry !== undefined) this.lastWrittenEntry = { index: lastEntry.index, term: lastEntry.term };
        if (work.early.length > 0) {
          this.startSync();
          this.sendEarly(work.early);
          work.early = [];
        }
        if (work.late.length > 0) {
          const waiting = this.durableReadies < this.writtenReadies ? work.late.filter(waitsForDisk) : [];
          if (waiting.length > 0) this.held.push({ messages: waiting, readies: this.writtenReadies, calls: this.callsStepped });
          this.sendMessages(waiting.length === 0 ? work.late : work.late.filter((message) => !waitsForDisk(message)));
        }
      }
      if (ready.committedEntries.length > 0) {
        const results = this.cfg.storage.applyEntries(ready.committedEntries);
        results.forEach((result, i) => {
          const entry = ready.committedEntries[i]!;
          const pending = this.pendingConfChange;
          if (pending !== undefined && pending.index === entry.index && pending.term !== entry.term) {
            // Another leader's entry took the index of the change we proposed: ours will never apply.
            this.pendingConfChange = undefined;
            pending.reject(proposalDropped("the membership change"));
          }
          if (result.kind === "conf-change") this.applyMembershipChange(result, entry.term);
          else this.settleWrite(result, entry.term);
        });
      }
    } catch (error) {
      if (!isDiskFull(error)) throw error;
      if (this.blockedReady === undefined) {
        this.cfg.log?.("disk full", { error: error instanceof Error ? error.message : String(error), stage: work.stage });
      }
      this.blockedReady = work;
      for (const write of this.queuedWrites) write.reject(diskFullError());
      this.queuedWrites = [];
      return false;
    }
    if (this.blockedReady !== undefined) {
      this.blockedReady = undefined;
      this.cfg.log?.("disk space back", {});
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
      if (ready.softState.role !== "leader") {
        for (const transfer of this.outgoingSnapshots.values()) transfer.abort(new Error("no longer the leader"));
        // Writes this node proposed as leader may or may not commit under the next one: say so now
        // rather than keep the client waiting for the full request timeout.
        const lost = new KvError("timeout", "leadership was lost before the write committed; its outcome is unknown");
        for (const write of this.pendingWrites.values()) write.reject(lost);
        this.pendingWrites.clear();
        this.pendingConfChange?.reject(new KvError("timeout", "leadership was lost before the membership change committed; its outcome is unknown"));
        this.pendingConfChange = undefined;
      }
    }
    this.raw.advance(ready, false);
    if (ready.committedEntries.length > 0) {
      try {
        this.maybeCompact();
      } catch (error) {
        if (!isDiskFull(error)) throw error; // compaction can wait for space
      }
    }
    return true;
  }

  // ---- Snapshots ----------------------------------------------------------------------------

  /** Ready.snapshot: the staged image replaces the state machine and the log, before anything else is saved. */
  private installSnapshot(snapshot: SnapshotToInstall): void {
    const { index, term } = snapshot.metadata;
    const staged = this.stagedAddresses?.imageId === snapshot.imageId ? this.stagedAddresses.addresses : [];
    this.cfg.storage.installSnapshot(snapshot.metadata, snapshot.imageId, staged);
    this.stagedAddresses = undefined;
    this.refreshAddresses();
    this.cfg.log?.("snapshot installed", { index, term, imageId: snapshot.imageId });
    // Writes proposed here as leader at covered indexes: the image cannot tell whether ours committed there.
    for (const [writeIndex, write] of this.pendingWrites) {
      if (writeIndex > index) continue;
      this.pendingWrites.delete(writeIndex);
      write.reject(new KvError("timeout", "a snapshot replaced this node's log before the write applied here; its outcome is unknown"));
    }
  }

  /** Hands messages to the transport, except InstallSnapshot: its image is streamed on the side. */
  private sendMessages(messages: readonly Message[]): void {
    let others: Message[] | undefined;
    for (const message of messages) {
      if (message.type === "snapshot") {
        others ??= messages.filter((each) => each.type !== "snapshot");
        this.startSnapshotTransfer(message);
      }
    }
    let rest = others ?? messages;
    const directory = this.cfg.peerDirectory;
    // A member whose address this node has not learned cannot be reached (the transport would assert).
    if (directory !== undefined && rest.some((message) => !directory.has(message.to))) {
      const unknown = [...new Set(rest.filter((message) => !directory.has(message.to)).map((message) => message.to))];
      this.cfg.log?.("peer address unknown", { peers: unknown, detail: "messages to these members were dropped" });
      rest = rest.filter((message) => directory.has(message.to));
    }
    if (rest.length > 0) this.transport?.send(rest);
  }

  /**
   * Streams the state machine as applied now to a follower that needs compacted entries. The core
   * asked with the metadata it saw (`imageId` ""); the image sent is read later and may stand at a
   * later index: the receiver's core gets the image's own metadata, which is at or past the one the
   * leader's progress waits for. One transfer per peer at a time: a request while one is in flight
   * is dropped (the one in flight answers it). A transfer that fails, or outlives the term it began
   * in, tells the core (reportSnapshotFailure) so that it probes the follower again.
   */
  private startSnapshotTransfer(message: SnapshotRequest): void {
    const transport = this.transport;
    const to = message.to;
    if (transport === undefined || this.outgoingSnapshots.has(to)) return;
    if (this.cfg.peerDirectory !== undefined && !this.cfg.peerDirectory.has(to)) return; // address unknown (see sendMessages)
    const abort = new AbortController();
    this.outgoingSnapshots.set(to, abort);
    const term = message.term;
    const transfer = async (): Promise<void> => {
      await Promise.resolve(); // begin once this Ready is carried out: the image then holds what it applied
      const image = this.cfg.storage.openImage();
      try {
        if (image.metadata.index === 0) throw new Error("nothing is applied yet");
        const imageId = `${this.cfg.id}.${term}.${++this.snapshotSequence}`;
        this.cfg.log?.("snapshot send", { to, index: image.metadata.index, term: image.metadata.term, imageId });
        await transport.sendSnapshot(to, image, { imageId, term, signal: abort.signal });
        this.cfg.log?.("snapshot sent", { to, index: image.metadata.index, imageId });
      } finally {
        image.close();
      }
    };
    void transfer().then(
      () => this.snapshotTransferEnded(to, term, undefined),
      (error: unknown) => this.snapshotTransferEnded(to, term, error instanceof Error ? error : new Error(String(error))),
    );
  }

  private snapshotTransferEnded(to: NodeId, term: number, error: Error | undefined): void {
    this.outgoingSnapshots.delete(to);
    if (this.stopped) return;
    if (error !== undefined) this.cfg.log?.("snapshot send failed", { to, error: error.message });
    if (error === undefined && this.raw.raft.term === term) return; // the follower's answer moves its progress on
    // Outside any turn, so no Ready is outstanding: the core may be told now.
    this.raw.reportSnapshotFailure(to);
    this.scheduleTurn();
  }

  /**
   * The transport's snapshot handler: stages one chunk of an image a leader streams to us, in order.
   * The last chunk becomes the InstallSnapshot message for the core, stepped at once (one turn, here)
   * so that the image it names is still the one staged when the Ready installs it. Throws
   * SnapshotChunkRefusedError for a chunk of a stale term, of an image not being staged, out of
   * order, or one storage refuses; the sender then gives the image up.
   */
  receiveSnapshotChunk(chunk: SnapshotChunk): void {
    if (this.stopped || this.transport === undefined) throw new SnapshotChunkRefusedError("the node is not running");
    // Frozen by a full disk: a new image would replace one whose install waits, and could not be staged anyway.
    if (this.blockedReady !== undefined) throw new SnapshotChunkRefusedError("the disk is full: no image is taken until space returns");
    const term = this.raw.raft.term;
    if (chunk.term < term) throw new SnapshotChunkRefusedError(`chunk of term ${chunk.term}; this node is in term ${term}`);
    let incoming = this.incomingSnapshot;
    if (chunk.seq === 0) {
      assert(chunk.metadata !== undefined, "the transport checks the first chunk has metadata");
      incoming = { from: chunk.from, imageId: chunk.imageId, metadata: chunk.metadata, nextSeq: 0 };
      this.stagedAddresses = { imageId: chunk.imageId, addresses: chunk.addresses ?? [] };
      this.incomingSnapshot = undefined;
    } else if (incoming === undefined || incoming.imageId !== chunk.imageId || incoming.from !== chunk.from) {
      throw new SnapshotChunkRefusedError(`chunk ${chunk.seq} of image ${chunk.imageId}, which this node is not staging`);
    } else if (chunk.seq !== incoming.nextSeq) {
      throw new SnapshotChunkRefusedError(`chunk ${chunk.seq} of image ${chunk.imageId} out of order: expected ${incoming.nextSeq}`);
    }
    for (const row of chunk.rows) {
      if (row.version > incoming.metadata.index) {
        throw new SnapshotChunkRefusedError(`image ${chunk.imageId} has a row of version ${row.version}, past its index ${incoming.metadata.index}`);
      }
    }
    try {
      this.cfg.storage.stageImageChunk(chunk.imageId, chunk.rows, chunk.seq === 0);
    } catch (error: unknown) {
      this.incomingSnapshot = undefined;
      if (error instanceof AssertionError) {
        this.fail(error);
        throw error;
      }
      throw new SnapshotChunkRefusedError(`staging failed: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (chunk.seq === 0) {
      this.cfg.log?.("snapshot receive", { from: chunk.from, index: incoming.metadata.index, term: incoming.metadata.term, imageId: chunk.imageId });
    }
    incoming.nextSeq = chunk.seq + 1;
    this.incomingSnapshot = chunk.done ? undefined : incoming;
    if (!chunk.done) return;
    const message: SnapshotRequest = {
      type: "snapshot",
      from: chunk.from,
      to: this.cfg.id,
      term: chunk.term,
      snapshot: incoming.metadata,
      imageId: chunk.imageId,
    };
    this.cfg.log?.("snapshot received", { from: chunk.from, index: incoming.metadata.index, imageId: chunk.imageId, chunks: incoming.nextSeq });
    this.inbox.push(message);
    this.imageAwaitingInstall = message;
    this.turn();
  }

  /**
   * After a turn: drops the staged image once it is installed or refused (our log already covered
   * it, or its term was stale). One the turn could not carry out yet is kept: a full disk blocked its
   * install (`blockedReady` at stage "install"), or blocked the turn before its message was stepped.
   */
  private settleStagedImage(): void {
    const awaiting = this.imageAwaitingInstall;
    if (awaiting === undefined || this.stopped) return;
    const blocked = this.blockedReady;
    if (blocked !== undefined && blocked.stage === "install" && blocked.ready.snapshot?.imageId === awaiting.imageId) return;
    if (this.inbox.includes(awaiting)) return;
    this.imageAwaitingInstall = undefined;
    try {
      this.cfg.storage.discardStagedImage();
    } catch (error) {
      // Left staged on a full disk: bounded (one image), and the next image's first chunk drops it.
      if (!isDiskFull(error)) throw error;
    }
  }

  /** Compacts once `snapshotEntries` are applied past the last snapshot, keeping `snapshotCatchUpEntries`. */
  private maybeCompact(): void {
    const storage = this.cfg.storage;
    const applied = storage.appliedIndex();
    const snapshotIndex = storage.snapshot().index;
    const index = applied - this.snapshotCatchUpEntries;
    // Past the quota the log is compacted at every apply: what deletes free then counts at once.
    const dueByQuota = this.overQuota() && index > snapshotIndex;
    if (applied - snapshotIndex < this.snapshotEntries && !dueByQuota) return;
    storage.compact(index);
    this.cfg.log?.("log compacted", { index, applied });
    if (dueByQuota) this.measureData();
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
      write.reject(proposalDropped("the write"));
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
    if (this.pendingConfChange !== undefined && this.pendingConfChange.deadlineMs <= now) {
      this.pendingConfChange.reject(timeout("the membership change"));
      this.pendingConfChange = undefined;
    }
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
    this.pendingConfChange?.reject(unknown);
    this.pendingConfChange = undefined;
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
