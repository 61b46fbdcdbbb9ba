import { assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { KvError } from "../lib/kv-error.ts";
import type { Prng } from "../lib/prng.ts";
import { defaultRaftLimits } from "../raft/raft.ts";
import { RawNode } from "../raft/raw-node.ts";
import { type Entry, type LostLog, waitsForDisk, type Message, type NodeId, type Ready, type SnapshotToInstall } from "../raft/types.ts";
import {
  COMMAND_LEVEL_RELEASES,
  DELETE_PREFIX_LEVEL,
  TXN_GETS_BOUNDED_LEVEL,
  deletePrefixKeyBytesMax,
  deletePrefixKeysMax,
  encodeCommand,
  idempotencyKeyBytesMax,
  isReservedKey,
  sessionKeyPrefix,
  type Command,
} from "../kv/command.ts";
import { type ApplyResult, commandLevelKey, commandLevelOf, sessionAnswersRetry, sessionClockKey, sessionClockMsOf } from "../kv/apply-plan.ts";
import { SessionStamps } from "./session-stamps.ts";
import { clusterNonceKey, isClusterNonce } from "../kv/cluster-nonce.ts";
import type { Membership } from "../kv/membership.ts";
import { checkTxnRequest, evaluateTxn, type TxnAnswer, txnCommandLevel, txnGets, type TxnOp, txnPuts, type TxnRequest, txnSessionGetBytesMax, txnWrites } from "../kv/txn.ts";
import { DAMAGED_DATA_DIR_ADVICE, type KvStorage, type StoredValue } from "../storage/kv-storage.ts";
import { isStorageCorruption } from "../lib/storage-damage.ts";
import type { SnapshotChunk, Transport } from "../transport/transport.ts";
import { belowLevelRefusal } from "./cluster-level.ts";
import type {
  DeletePrefixAnswer,
  KvNodeApi,
  KvValue,
  LeaseGrant,
  LeaseInfo,
  LeaseSummary,
  MembersView,
  NodeStatus,
  ReadConsistency,
  SnapshotImage,
  SnapshotStats,
  WatchFilter,
  WatchStart,
  WatchSubscription,
  WriteOptions,
} from "./api.ts";
import { checkLeaseId, leaseNotFound, leaseTtlMsMin, NodeLeases } from "./leases.ts";
import { NodeMembership } from "./membership.ts";
import { Proposals, type WriteCheck } from "./proposals.ts";
import { Reads } from "./reads.ts";
import { SnapshotTransfer } from "./snapshot-transfer.ts";
import { readTimeoutError, timeoutError } from "./waiter.ts";
import { defaultWatch, NodeWatch, type WatchConfig } from "./watch.ts";

/**
 * A Ready being carried out, and how far it got: a full disk stops it between stages, and so does
 * an install on the storage's thread (`parked`, until it resolves).
 */
interface BlockedReady {
  readonly ready: Ready;
  /** Appends and heartbeats still to send once this Ready's write has its fsync started. */
  early: readonly Message[];
  readonly late: readonly Message[];
  stage: "install" | "save" | "apply" | "advance";
  /** Every message of it waits for the fsync, not only votes and acks (a new term or vote not yet on disk: see `handleReady`). */
  readonly holdAll?: boolean;
  /** Its committed entries went to an apply answered later: the core counts them applied when it answers. */
  applyConfirmedLater?: boolean;
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

/** Keys under the state machine's session and lease prefixes are its own: clients can neither read nor write them. */
function checkClientKey(key: string): void {
  if (isReservedKey(key)) throw new KvError("bad_request", "keys starting with NUL + 'session/' or NUL + 'lease/' are reserved");
}


/** The error an idempotent write gets when its key's session was made by another request. */
function idempotencyKeyReused(idempotencyKey: string | undefined): KvError {
  return new KvError(
    "idempotency_key_reused",
    `Idempotency-Key ${JSON.stringify(idempotencyKey)} was first sent with another request (another method, key, value, ifVersion, lease, prefix, limit or transaction): nothing was written; send a new request under a new key`,
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
  /**
   * Draws the cluster's nonce (src/kv/cluster-nonce.ts) when this node, leading, finds none applied:
   * 16 hex digits. Default: from `prng` (the simulator's replay); the server draws from the system's
   * random source, so clusters started in the same millisecond differ.
   */
  readonly drawClusterNonce?: () => string;
  /** Called for events worth a log line. */
  readonly log?: (event: string, fields: Record<string, unknown>) => void;
  /** Called once if the loop stops on its own (storage failure or a bug); the process should exit. */
  readonly onFatal?: (error: Error) => void;
  /**
   * Where the node records that it holds its votes (src/raft/raft.ts, `votesHeld`), beside its
   * storage: `recorded` at start, `record(true)` durable when it returns (called while the node is
   * constructed, before it can acknowledge an entry), `record(false)` when the hold ends. Without
   * it a restart before the hold ended does not hold again.
   */
  readonly voteHold?: { readonly recorded: boolean; record(held: boolean): void };
  /** Runs a loop turn soon (default setImmediate); tests pass a queue they drain by hand. */
  readonly schedule?: (turn: () => void) => void;
  /** Compact the log once this many entries are applied past the last snapshot. Default 10 000. */
  readonly snapshotEntries?: number;
  /** Entries one compaction step deletes at most (one step per apply or tick until done). Default 512. */
  readonly compactStepEntries?: number;
  /**
   * Entries kept behind the applied index when compacting, so a follower slightly behind still
   * catches up from the log rather than by a snapshot. Below `snapshotEntries`. Default 1 000.
   */
  readonly snapshotCatchUpEntries?: number;
  /**
   * The space quota (etcd's `--quota-backend-bytes`): once the data this node keeps
   * (`KvStorage.dataBytes`) reaches it, the leader refuses puts with `quota_exceeded`; reads and
   * deletes go on until the data is back under it (the log is not counted: compaction bounds it).
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
  /** Watch streams and the change history they read (src/node/watch.ts); each field defaults to `defaultWatch`'s. */
  readonly watch?: Partial<WatchConfig>;
}

/** `kv serve`'s quota when `--quota-bytes` is not given: 2 GiB, etcd's default. */
export const defaultQuotaBytes = 2 * 1024 ** 3;

/**
 * Ticks between two measurements of the data kept (two pragmas). Between them the leader adds what
 * it proposed to the last measurement, so a burst of writes cannot run far past the quota unseen.
 */
const dataMeasureTicks = 10;
/** A read index asked of the leader and not answered this long is asked again (src/node/reads.ts). */
const readIndexRetryMs = 500;
/** A write transaction with gets, in the form that bounds them where it applies (for a refusal's message). */
const boundedGets = "a transaction whose gets are bounded where it applies";
/**
 * How long a node started with an empty log holds its vote from candidates with a log at most,
 * unless it caught up with a leader first (src/raft/raft.ts, `votesHeld`): longer than a member's
 * restart takes, short enough that a cluster waiting on a new member's vote is not held up long.
 */
const voteHoldMsMax = 10_000;
/**
 * Entries committed and not yet applied (or handed to apply) a healthy node may have. A leader
 * applies an entry only once its own copy is durable, which may be after a quorum of followers
 * made it committed: under steady 16 KB writes a leader answered /health 503 a quarter of the time
 * when any lag counted (a review's readiness probe would have flapped). A node catching up (a
 * restart, a join) is thousands behind, and still unhealthy.
 */
export const healthApplyLagMax = 1_000;
/** Log entries one compaction deletes at most, by default (see `maybeCompact`). */
const compactStepEntriesDefault = 512;

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
  /** Writes, from the client's call until their entry applies (src/node/proposals.ts). */
  private readonly proposals = new Proposals();
  /** Linearizable and lease reads, until they may be served (src/node/reads.ts). */
  private readonly reads: Reads;
  /** Readies whose writes must be durable before their messages leave, written so far. */
  private writtenReadies = 0;
  /** How many of those the last finished fsync covered. */
  private durableReadies = 0;
  /** The last log entry written: reported to the core once an fsync covering it returns. */
  private lastWrittenEntry: { index: number; term: number } | undefined;
  /** The term and vote last written (a Ready's hard state), to tell a Ready that changes them. */
  private writtenTermVote: { term: number; vote: NodeId } | undefined;
  /**
   * `writtenReadies` once the newest term or vote was written: until `durableReadies` reaches it,
   * no message leaves (see `handleReady`).
   */
  private termVoteDurableAt = 0;
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
  /**
   * A Ready waiting for the storage's thread to finish its snapshot install (see `awaitStorage`):
   * the core is neither stepped nor ticked meanwhile, as no Ready may be outstanding then. (Applies
   * are not waited for: the core goes on, and counts them applied when they answer.)
   */
  private parkedReady: BlockedReady | undefined;
  /** The role and term last logged (`role`): a leader stepping down in its own term is said as `quorum lost`. */
  private loggedRole: { readonly role: string; readonly term: number } | undefined;
  /** Whether the last `disk full` or `disk space back` logged was `disk full` (see `noteDiskFull`). */
  private loggedDiskFull = false;
  /** What `noteVotesHeld` logged last. */
  private loggedVotesHeld = false;
  /** Whether the hold is recorded beside the storage (see `KvNodeConfig.voteHold`). */
  private voteHoldRecorded: boolean;
  /** The last index handed to `applyEntries`, whose results may still be on their way. */
  private appliedHandedIndex = 0;
  private diskRetryTicks = 0;
  /** Checks to run once after the next turn (e.g. a leadership transfer waiting to finish). */
  private afterTurn: (() => void)[] = [];
  /**
   * Leadership transfers waiting for their outcome, by deadline. Their checks run after turns, and
   * a loop frozen by a full disk or a parked install runs none: `expireWaiters` settles the overdue
   * ones (found in review: a transfer begun as the disk filled waited as long as the disk stayed full).
   */
  private readonly transferWaiters = new Set<{ readonly deadline: number; readonly check: () => void }>();
  private turnScheduled = false;
  private stopTicking: (() => void) | undefined;
  /** When the clock started (monotonic ms): tick N is due at `ticksStartMs + N * tickMs`. */
  private ticksStartMs = 0;
  /** Ticks the core's lease clock has been moved by so far: timer ticks, and time made up (catchUpClock). */
  private ticksAccounted = 0;
  private stopped = false;
  private failure: Error | undefined;
  private httpUrl: string;
  /** Snapshot transfer in and out (src/node/snapshot-transfer.ts). */
  private readonly snapshots: SnapshotTransfer;
  private readonly snapshotEntries: number;
  private readonly snapshotCatchUpEntries: number;
  /** The configuration, its changes and the members' addresses (src/node/membership.ts). */
  private readonly membership: NodeMembership;
  /** `KvStorage.dataBytes` at the last measurement, and what this node proposed since (see `dataMeasureTicks`). */
  private dataBytesMeasured = 0;
  private bytesProposedSinceMeasure = 0;
  private ticksSinceMeasure = 0;
  private quotaExceededLogged = false;
  /** Where the log compaction under way stops (see `maybeCompact`); at or below the snapshot when none is. */
  private compactTarget = 0;
  private readonly idempotencyWindowMs: number;
  /** The time stamped on idempotent writes (see src/node/session-stamps.ts). */
  private readonly sessionStamps: SessionStamps;
  private readonly idempotencySessionsMax: number;
  /** Watch streams and the change history, fed after each apply (src/node/watch.ts). */
  private readonly watches: NodeWatch;
  /** Leases: the client calls, and the leader's countdowns and expiries (src/node/leases.ts). */
  private readonly leases: NodeLeases;
  /** The cluster's nonce once applied here (it never changes after). */
  private clusterNonceApplied: string | undefined;
  /** The applied index at which `clusterNonce` last found none (so it does not look again until more applies). */
  private clusterNonceMissedAt = -1;
  /** The term this node last proposed a nonce in, and the tick before which it does not propose again in it. */
  private clusterNonceTerm = 0;
  private clusterNonceRetryTick = 0;
  /**
   * Since when, on its clock, this node has known no leader, as its Readies said (see
   * `standingStill`); undefined while it knows one. Its start until it first knows one.
   */
  private leaderLostMs: number | undefined;
  private leaderEverKnown = false;
  /** Since when, on its clock, a full disk has frozen this node's loop (see `frozenByDisk`); undefined while it is not. */
  private frozenSinceMs: number | undefined;

  constructor(private readonly cfg: KvNodeConfig) {
    this.httpUrl = cfg.httpUrl;
    this.leaderLostMs = cfg.clock.nowMs();
    this.idempotencyWindowMs = cfg.idempotencyWindowMs ?? defaultIdempotency.windowMs;
    // Read again only once more is applied: one read per applied batch at most.
    let sessionClock = { applied: -1, ms: 0 };
    this.sessionStamps = new SessionStamps(cfg.clock, () => {
      const applied = cfg.storage.appliedIndex();
      if (applied !== sessionClock.applied) sessionClock = { applied, ms: sessionClockMsOf(cfg.storage.get(sessionClockKey)) };
      return sessionClock.ms;
    });
    this.idempotencySessionsMax = cfg.idempotencySessionsMax ?? defaultIdempotency.sessionsMax;
    assert(Number.isSafeInteger(this.idempotencyWindowMs) && this.idempotencyWindowMs >= 1, `idempotencyWindowMs ${this.idempotencyWindowMs}`);
    assert(Number.isSafeInteger(this.idempotencySessionsMax) && this.idempotencySessionsMax >= 1, `idempotencySessionsMax ${this.idempotencySessionsMax}`);
    this.snapshotEntries = cfg.snapshotEntries ?? defaultSnapshotPolicy.snapshotEntries;
    this.snapshotCatchUpEntries = cfg.snapshotCatchUpEntries ?? defaultSnapshotPolicy.snapshotCatchUpEntries;
    assert(
      Number.isSafeInteger(this.snapshotCatchUpEntries) && this.snapshotCatchUpEntries >= 0 && this.snapshotEntries > this.snapshotCatchUpEntries,
      "need snapshotEntries > snapshotCatchUpEntries >= 0",
    );
    this.membership = new NodeMembership({
      id: cfg.id,
      peers: cfg.peers,
      peerDirectory: cfg.peerDirectory,
      storage: cfg.storage,
      ...(cfg.log === undefined ? {} : { log: cfg.log }),
      raw: () => this.raw,
      refuseUnlessRunning: () => this.refuseUnlessRunning(),
      notLeader: () => this.notLeader(),
      confirmLeadership: () => this.confirmLeadership(),
      transferLeadership: () => this.transferLeadership(undefined),
      httpUrlOf: (id) => this.httpUrlOf(id),
      deadline: () => this.deadline(),
      scheduleTurn: () => this.scheduleTurn(),
      stopped: () => this.stopped,
      tickMs: cfg.tickMs,
      removed: () => this.watches.endAll("this node was removed from the cluster; resume from your last id on another node"),
    });
    this.raw = new RawNode({
      id: cfg.id,
      storage: cfg.storage,
      electionTicks: cfg.electionTicks,
      heartbeatTicks: cfg.heartbeatTicks,
      prng: cfg.prng,
      applied: cfg.storage.appliedIndex(),
      ...defaultRaftLimits,
      // An empty data dir may be a voter's whose data was lost: see docs/operations.md.
      holdVotesTicksMax: Math.ceil(voteHoldMsMax / cfg.tickMs),
      votesHeldAtStart: cfg.voteHold?.recorded === true,
    });
    // As the disk holds them (the core starts from its hard state).
    const startedAt = this.raw.basicStatus();
    this.writtenTermVote = { term: startedAt.term, vote: startedAt.vote };
    this.voteHoldRecorded = cfg.voteHold?.recorded === true;
    if (this.raw.votesHeld() && cfg.voteHold !== undefined && !this.voteHoldRecorded) {
      cfg.voteHold.record(true);
      this.voteHoldRecorded = true;
    }
    this.reads = new Reads(cfg.id, cfg.prng.intInclusive(0, 2 ** 31 - 1).toString(36));
    this.snapshots = new SnapshotTransfer({
      id: cfg.id,
      storage: cfg.storage,
      ...(cfg.log === undefined ? {} : { log: cfg.log }),
      transport: () => this.transport,
      peerKnown: (id) => cfg.peerDirectory === undefined || cfg.peerDirectory.has(id),
      term: () => this.raw.basicStatus().term,
      stopped: () => this.stopped || this.transport === undefined,
      // The staged image stays until its install has finished: on a full disk, or on the storage's thread.
      blockedInstall: () =>
        this.blockedReady?.stage === "install"
          ? this.blockedReady.ready.snapshot?.imageId
          : this.parkedReady?.ready.snapshot !== undefined && this.parkedReady.stage === "save"
            ? this.parkedReady.ready.snapshot.imageId
            : undefined,
      diskFull: () => this.frozenByDisk(),
      transferFailed: (to) => {
        // Outside any turn, so no Ready is outstanding unless one is parked or blocked: then the
        // core hears of it after the next turn's Readies.
        if (this.parkedReady !== undefined || this.blockedReady !== undefined) {
          this.afterTurn.push(() => this.raw.reportSnapshotFailure(to));
          return;
        }
        this.raw.reportSnapshotFailure(to);
        this.scheduleTurn();
      },
      install: (message) => {
        this.inbox.push(message);
        this.turn();
      },
      waitsInInbox: (message) => this.inbox.includes(message),
      fail: (error) => this.fail(error),
    });
    assert(cfg.quotaBytes === undefined || (Number.isSafeInteger(cfg.quotaBytes) && cfg.quotaBytes > 0), `quotaBytes ${cfg.quotaBytes}`);
    this.measureData();
    // The history starts at what is applied now: what came before (another run) is not known here.
    this.watches = new NodeWatch({ ...defaultWatch, ...cfg.watch }, cfg.clock, cfg.storage.appliedIndex(), cfg.schedule ?? setImmediate);
    this.leases = new NodeLeases({
      storage: cfg.storage,
      clock: cfg.clock,
      ttlMsMin: leaseTtlMsMin(cfg.electionTicks, cfg.tickMs),
      coreStatus: () => this.raw.basicStatus(),
      refuseUnlessRunning: () => this.refuseUnlessRunning(),
      refuseWhenFull: () => this.refuseWhenFull(),
      notLeader: () => this.notLeader(),
      readBarrier: () => this.readBarrier("lease"),
      propose: (data, check) => {
        const applied = this.proposals.enqueue(data, this.deadline(), check);
        this.scheduleTurn();
        return applied;
      },
      requestTimeoutMs: cfg.requestTimeoutMs,
    });
  }

  /**
   * The cluster's nonce (src/kv/cluster-nonce.ts) once this node applied it; undefined until then
   * (looked up again only once more is applied: peer calls ask on every send). A row there that is no
   * nonce (a client's key of a release before the prefix was reserved) counts as none.
   */
  clusterNonce(): string | undefined {
    if (this.clusterNonceApplied !== undefined) return this.clusterNonceApplied;
    const applied = this.cfg.storage.appliedIndex();
    if (applied === this.clusterNonceMissedAt) return undefined;
    let row: StoredValue | undefined;
    try {
      row = this.cfg.storage.get(clusterNonceKey);
    } catch (error: unknown) {
      // This node's own storage damaged (a page SQLite cannot read): fatal, as when an apply meets
      // it. Peer calls ask from inside the transport (src/transport/peer-auth.ts), which took the
      // throw for the peer's fault: the node ran on as a candidate for ever, logging its peers
      // unreachable (found in a black-box review). So the node fails in a task of its own (before
      // the call's answer can be handled), and the call goes without a nonce. Any other error is
      // thrown as before: the call fails, and the next one asks again.
      if (!isStorageCorruption(error)) throw error;
      queueMicrotask(() => this.failUnlessStopped(error));
      return undefined;
    }
    const text = row === undefined ? undefined : new TextDecoder().decode(row.value);
    if (text !== undefined && isClusterNonce(text)) this.clusterNonceApplied = text;
    else this.clusterNonceMissedAt = applied;
    return this.clusterNonceApplied;
  }

  /**
   * A leader whose state machine holds no nonce proposes one once it applied every entry committed
   * before its term (so it sees a nonce an earlier leader wrote), and again every few election
   * timeouts while none applied (a proposal refused or dropped: found in review, it waited for the
   * next term). It is a put only if absent: should two nonces both commit, the first applied stays.
   */
  private maybeProposeClusterNonce(): void {
    const raft = this.raw.basicStatus();
    if (raft.role !== "leader" || this.membership.removed()) return;
    if (raft.term === this.clusterNonceTerm && this.ticksAccounted < this.clusterNonceRetryTick) return;
    if (this.raw.logTerm(raft.commit) !== raft.term || this.cfg.storage.appliedIndex() < raft.commit || this.clusterNonce() !== undefined) return;
    if (this.cfg.storage.get(clusterNonceKey) !== undefined) return; // a row that is no nonce: leave it be
    this.clusterNonceTerm = raft.term;
    this.clusterNonceRetryTick = this.ticksAccounted + 4 * this.cfg.electionTicks;
    const nonce = this.cfg.drawClusterNonce?.() ?? drawNonce(this.cfg.prng);
    assert(isClusterNonce(nonce), `cluster nonce ${nonce} is not 16 hex digits`);
    const data = encodeCommand({ op: "put", key: clusterNonceKey, value: new TextEncoder().encode(nonce), ifVersion: 0 });
    this.proposals.enqueue(data, this.deadline()).catch(() => undefined); // refused or lost: tried again at clusterNonceRetryTick
    this.scheduleTurn();
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
    const voters = this.raw.basicStatus().voters;
    if (voters.length === 1 && voters[0] === this.cfg.id && !this.membership.removed()) this.raw.campaign();
    this.noteVotesHeld(); // the only voter leads at once, which ends a hold
    this.scheduleTurn();
  }

  /** Stops the loop: waiting clients get `unavailable`; the storage is left for the caller to close. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopTicking?.();
    this.watches.stop();
    this.snapshots.abortAll("the node is stopping");
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
    const lease = options.lease;
    if (lease !== undefined) checkLeaseId(lease);
    return this.write({ op: "put", key, value, ...condition, ...(lease === undefined ? {} : { lease }) }).then((result) => {
      if (result.kind === "lease-not-found") throw leaseNotFound(lease ?? 0, true);
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

  /**
   * On the leader (`not_leader` elsewhere): `upgrade_required` unless every member of its
   * configuration has said it applies commands of `level` (src/node/cluster-level.ts).
   */
  private refuseUnlessMembersApply(what: string, level: number): void {
    this.refuseWriteUnlessLeader();
    const refusal = this.membersRefusal(what, level);
    if (refusal !== undefined) throw refusal;
  }

  /**
   * Why a command of `level` may not be proposed now, if it may not: a membership change pending (a
   * member being added is not in the configuration yet, and may be of an older release), or a
   * member that has not said it applies it (src/node/cluster-level.ts).
   */
  private membersRefusal(what: string, level: number): KvError | undefined {
    if (this.raw.confChangePending()) {
      return new KvError("conf_change_pending", `${what} waits for the membership change in progress to apply (a member being added must say it runs a release that applies it); retry once it is`, { retryAfterS: 1 });
    }
    const status = this.raw.basicStatus();
    const recorded = commandLevelOf(this.cfg.storage.get(commandLevelKey));
    return belowLevelRefusal(what, level, COMMAND_LEVEL_RELEASES[level] ?? "?", [...status.voters, ...status.learners], this.cfg.id, (id) => this.transport?.peerCommandLevel(id), recorded);
  }

  /**
   * The check a write of a command only some members apply makes again when it is proposed (see
   * `QueuedWrite.check`): a membership change may have been proposed since it was queued. Only
   * that: the write is already counted among those waiting (found in review: asking whether the
   * node was full refused a write that took the last place, as overloaded), and a turn proposes only
   * on a leader.
   */
  private membersApplyCheck(what: string, level: number): () => KvError | undefined {
    return () => this.membersRefusal(what, level);
  }

  /**
   * See `KvNodeApi.deletePrefix`: one entry deleting up to `limit` keys under `prefix`, proposed
   * only once every member said it applies the command (src/node/cluster-level.ts).
   */
  deletePrefix(prefix: string, limit: number, options: Pick<WriteOptions, "idempotencyKey"> = {}): Promise<DeletePrefixAnswer> {
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > deletePrefixKeysMax) {
      throw new KvError("bad_request", `limit must be a whole number from 1 to ${deletePrefixKeysMax}, got ${limit}`);
    }
    checkClientKey(prefix);
    this.refuseUnlessMembersApply("deleting by prefix", DELETE_PREFIX_LEVEL);
    const idempotency = options.idempotencyKey === undefined ? {} : { idempotencyKey: options.idempotencyKey };
    return this.write({ op: "delete-prefix", prefix, limit, keyBytesMax: deletePrefixKeyBytesMax, ...idempotency }, this.membersApplyCheck("deleting by prefix", DELETE_PREFIX_LEVEL)).then((result) => {
      if (result.kind === "reused") throw idempotencyKeyReused(options.idempotencyKey);
      assert(result.kind === "delete-prefix", `delete-prefix applied as ${result.kind}`);
      return { deleted: result.deleted, more: result.more, version: result.version };
    });
  }

  /**
   * See `KvNodeApi.txn`: one entry, decided and applied at its index on every replica (src/kv/txn.ts).
   * `bad_request` for a key in the reserved space, more than 128 comparisons and operations, a
   * key written twice in one branch, or a lease id that is not a positive whole number;
   * `lease_not_found` when the branch taken puts on a lease that does not exist when it applies
   * (nothing of it applied).
   */
  txn(request: TxnRequest, options: Pick<WriteOptions, "idempotencyKey"> = {}): Promise<TxnAnswer> {
    checkTxnRequest(request);
    const { compare, success, failure } = request;
    // An answer is built whole on this thread (and crosses from the storage thread first): 120 gets
    // of 1 MiB values answered 168 MB after 4.7 s, and its leader lost the leadership (tried by hand
    // after a review's listing did the same). So, by the values' sizes now, either branch's gets may
    // return at most 4 MiB. A value that grows before the entry applies can pass this, so the entry
    // holds it to that bound when applied too (apply-plan.ts), where every replica decides alike: an
    // idempotent one always, any other once every member applies bounded gets (else every replica
    // copied whatever its gets found, 100 MiB from 100 gets of a value grown to 1 MiB: found in review).
    const getBytes = Math.max(this.txnGetBytes(success), this.txnGetBytes(failure));
    const tooLarge = () =>
      new KvError("too_large", `the transaction's gets would return about ${getBytes} bytes, more than the ${txnSessionGetBytesMax} one answer may carry: nothing was proposed; read large values with GET /kv/{key}`);
    // One that writes nothing in either branch changes nothing however often it runs: a read. It
    // keeps no session (one would hold its gets' values, up to 4 MiB, for the idempotency window,
    // counted against the quota: found in review), so a retry reads anew; and it takes no entry.
    if (!txnWrites(request)) return getBytes > txnSessionGetBytesMax ? Promise.reject(tooLarge()) : this.readOnlyTxn(request);
    const level = txnCommandLevel(request);
    if (level > 1) this.refuseUnlessMembersApply("comparing by operator in a transaction", level);
    const idempotency = options.idempotencyKey === undefined ? {} : { idempotencyKey: options.idempotencyKey };
    if (getBytes > txnSessionGetBytesMax && !this.retryAnsweredBySession(idempotency.idempotencyKey)) return Promise.reject(tooLarge());
    const bounded = options.idempotencyKey === undefined && txnGets(request) && this.membersRefusal(boundedGets, TXN_GETS_BOUNDED_LEVEL) === undefined;
    const operatorCheck = level > 1 ? this.membersApplyCheck("comparing by operator in a transaction", level) : undefined;
    // Bounded when queued, but a member no longer said so (or a membership change began) when it is
    // proposed: then in the form every release applies, as one not bounded would have gone; it was
    // refused `conf_change_pending` (found in a code review). Nothing else of it changes.
    const boundCheck: WriteCheck | undefined = bounded
      ? () => (this.membersRefusal(boundedGets, TXN_GETS_BOUNDED_LEVEL) === undefined ? undefined : encodeCommand({ op: "txn", compare, success, failure }))
      : undefined;
    const check: WriteCheck | undefined = operatorCheck === undefined || boundCheck === undefined ? (operatorCheck ?? boundCheck) : () => operatorCheck() ?? boundCheck();
    return this.write({ op: "txn", compare, success, failure, ...idempotency, ...(bounded ? { getsBounded: true } : {}) }, check).then((result) => {
      if (result.kind === "reused") throw idempotencyKeyReused(options.idempotencyKey);
      // The branch taken puts on a lease that does not exist when the entry applies: nothing applied.
      if (result.kind === "lease-not-found") throw leaseNotFound(result.id ?? 0, true);
      if (result.kind === "txn-too-large") {
        throw new KvError(
          "too_large",
          options.idempotencyKey === undefined
            ? `the transaction's gets would have returned ${result.getBytes} bytes when it applied (a value it reads grew after it was sent), more than the ${txnSessionGetBytesMax} one answer may carry: nothing was applied; read large values with GET /kv/{key}`
            : `the transaction's gets would return ${result.getBytes} bytes when it applied, more than the ${txnSessionGetBytesMax} one answer (and its Idempotency-Key's session) may carry: nothing was applied; read large values with GET /kv/{key}`,
        );
      }
      assert(result.kind === "txn", `transaction applied as ${result.kind}`);
      return { succeeded: result.succeeded, version: result.version, results: result.results };
    });
  }

  /**
   * A transaction of gets alone, served as a linearizable read by any member, as etcd serves a Txn
   * of ranges alone and as a linearizable GET is served: once the state machine has applied up to
   * the read index (a follower asks the leader for it), its comparisons and gets are evaluated in
   * one synchronous step, so in one read transaction of the storage (every read of a task shares
   * one: src/storage/sqlite-reads.ts), and the answer's version is the applied index of that state.
   * Through the log, each took an entry and a version, and cost a write. Nothing is proposed, so
   * comparing by operator needs no member to run a newer release.
   */
  private async readOnlyTxn(request: TxnRequest): Promise<TxnAnswer> {
    await this.readBarrier("linearizable");
    const storage = this.cfg.storage;
    const version = storage.stateVersion();
    const evaluation = evaluateTxn(request, version, storage, () => true, txnSessionGetBytesMax);
    if (evaluation.getResults === undefined) {
      throw new KvError("too_large", `the transaction's gets would return ${evaluation.getBytes} bytes, more than the ${txnSessionGetBytesMax} one answer may carry; read large values with GET /kv/{key}`);
    }
    return { succeeded: evaluation.succeeded, version, results: evaluation.getResults };
  }

  /** What a branch's gets would return now: the keys and the values stored, or put earlier in the branch. */
  private txnGetBytes(ops: readonly TxnOp[]): number {
    const written = new Map<string, number>();
    let bytes = 0;
    for (const op of ops) {
      if (op.op === "put") written.set(op.key, op.value.byteLength);
      else if (op.op === "delete") written.set(op.key, 0);
      else bytes += op.key.length + (written.get(op.key) ?? this.cfg.storage.valueBytes(op.key) ?? 0);
    }
    return bytes;
  }

  async get(key: string, consistency: ReadConsistency): Promise<KvValue | undefined> {
    checkClientKey(key);
    await this.readBarrier(consistency);
    const stored = this.cfg.storage.get(key);
    return stored === undefined ? undefined : { value: stored.value, version: stored.version };
  }

  async list(prefix: string, after: string | undefined, limit: number, consistency: ReadConsistency, bytesMax?: number): Promise<(KvValue & { key: string })[]> {
    // A reserved prefix would list the state machine's own rows (storage lists them for the node's lease scans).
    checkClientKey(prefix);
    await this.readBarrier(consistency);
    return this.cfg.storage.list(prefix, after, limit, bytesMax);
  }

  /**
   * See `KvNodeApi.watch`. Served from this node's own history, followers included; a watch with no
   * start first waits for a linearizable read, and starts after what is applied once it is served.
   */
  async watch(filter: WatchFilter, start: WatchStart): Promise<WatchSubscription> {
    // A reserved prefix is refused as a listing's is (it would match none of the changes a watch carries).
    checkClientKey("key" in filter ? filter.key : filter.prefix);
    if (this.stopped || this.failure !== undefined) throw new KvError("unavailable", "the node is not running");
    // Its streams end (see endStreamsStandingStill): a resume here would stand still too. A removed
    // node is refused as removed, below.
    const stuck = this.membership.removed() ? undefined : this.standingStill();
    if (stuck !== undefined) throw stuck;
    if (start === "now") {
      await this.readBarrier("linearizable");
      // What is applied now is at or past the read index: every write acknowledged before the watch
      // opened is at or below it, and every change after it will be sent.
      return this.subscribeUnlessRemoved(filter, this.watches.lastVersion());
    }
    const after = "after" in start ? start.after : start.from - 1;
    if (after > this.watches.lastVersion()) {
      // Past what this node applied: a resume from a node ahead, or a version that does not exist.
      // Once applied up to the leader's commit index, this node holds every version a client can
      // have seen; a start past that is a mistake, not a position (its progress would name versions
      // that do not exist, and changes before it would never come).
      await this.readBarrier("linearizable");
      const last = this.watches.lastVersion();
      if (after > last) {
        throw new KvError("bad_request", `the start (after version ${after}) is past the last version the cluster applied (${last}): watch from at most ${last + 1}, or without a start`);
      }
    }
    return this.subscribeUnlessRemoved(filter, after);
  }

  /**
   * A stream, unless this node was removed (before the read barrier, which refuses it too, or while
   * it waited): a removed node applies no more changes, so its streams would never see one, and
   * their clients (lock waiters among them) would wait for ever instead of going to another node.
   */
  private subscribeUnlessRemoved(filter: WatchFilter, after: number): WatchSubscription {
    if (this.membership.removed()) throw removedError();
    return this.watches.subscribe(filter, after);
  }

  /** See `KvNodeApi.openSnapshot`: on any node, followers too (the read index comes from the leader). */
  async openSnapshot(consistency: ReadConsistency = "linearizable"): Promise<SnapshotImage> {
    await this.readBarrier(consistency);
    this.refuseUnlessRunning(); // it may have stopped while the read waited
    return this.cfg.storage.openImage();
  }

  /** Watch streams open on this node. */
  watchCount(): number {
    return this.watches.count();
  }

  /** Resolves once a read may be served from local state with the asked-for consistency. */
  private async readBarrier(consistency: ReadConsistency): Promise<void> {
    if (consistency === "stale") {
      // Served even frozen on a full disk, but not by a removed node: it hears of no write again.
      if (this.membership.removed()) throw removedError();
      return;
    }
    this.refuseUnlessRunning();
    this.refuseWhenFull();
    const read = this.reads.enqueue(consistency === "lease", this.deadline());
    this.scheduleTurn();
    await read;
  }

  /** The current term, read from the core alone: valid after `stop()`, when the storage may be closed (logs read it). */
  currentTerm(): number {
    return this.raw.term();
  }

  /**
   * The role, term and indexes of `status()` alone, without the members and storage figures it
   * gathers: cheap enough to read after every simulated event (src/sim/node-sim.ts's checkers).
   */
  raftStatus(): Pick<NodeStatus, "role" | "term" | "leaderId" | "commitIndex" | "appliedIndex" | "lastLogIndex"> {
    const raft = this.raw.basicStatus();
    return { role: raft.role, term: raft.term, leaderId: raft.leaderId, commitIndex: raft.commit, appliedIndex: this.cfg.storage.appliedIndex(), lastLogIndex: raft.lastIndex };
  }

  status(): NodeStatus {
    const raft = this.raw.basicStatus();
    return {
      id: this.cfg.id,
      role: raft.role,
      term: raft.term,
      leaderId: raft.leaderId,
      leaderUrl: this.httpUrlOf(raft.leaderId),
      commitIndex: raft.commit,
      appliedIndex: this.cfg.storage.appliedIndex(),
      lastLogIndex: raft.lastIndex,
      snapshotIndex: this.cfg.storage.snapshot().index,
      firstLogIndex: this.cfg.storage.firstIndex(),
      // A leader tells how far each member's log matches its own (found in a black-box review: a
      // follower down showed nowhere, so no alert could see a cluster running on two of three).
      members: raft.role === "leader" ? this.membership.statuses().map((member) => (member.id === this.cfg.id ? member : { ...member, matchIndex: this.raw.matchIndexOf(member.id) ?? 0 })) : this.membership.statuses(),
      storage: {
        dataBytes: this.dataBytesMeasured,
        quotaBytes: this.cfg.quotaBytes ?? 0,
        quotaExceeded: this.overQuota(),
        diskFull: this.diskFull(),
        installingSnapshot: this.parkedReady !== undefined,
      },
      ...(this.membership.removed() ? { removed: true as const } : {}),
      ...(this.raw.votesHeld() ? { votesHeld: true as const } : {}),
    };
  }

  /**
   * Logs `votes held` the first time the hold refuses a vote (or a campaign of this node's own),
   * and then `votes released` once it ended (see RawNode.votesHeld); removes the record of the hold
   * once it ended. A new node's hold, which refuses nothing, says nothing.
   */
  private noteVotesHeld(): void {
    const held = this.raw.votesHeld();
    if (held && !this.loggedVotesHeld && this.raw.heldVoteRefusals() > 0) {
      this.loggedVotesHeld = true;
      this.cfg.log?.("votes held", {
        detail:
          "this node started with an empty log (or restarted before it caught up since): it votes for a candidate with a log, and campaigns, only once it has caught up with a leader, or after 10 s (a voter whose data dir was emptied must not elect a leader lacking what it acknowledged)",
      });
    }
    if (!held && this.loggedVotesHeld) {
      this.loggedVotesHeld = false;
      this.cfg.log?.("votes released", { commitIndex: this.raw.basicStatus().commit });
    }
    if (held || !this.voteHoldRecorded || this.cfg.voteHold === undefined) return;
    this.voteHoldRecorded = false;
    try {
      this.cfg.voteHold.record(false);
    } catch (error) {
      // The next start holds again for a while: harmless.
      this.cfg.log?.("votes released", { error: `the record of the hold could not be removed: ${error instanceof Error ? error.message : String(error)}` });
    }
  }

  /**
   * A full disk froze the loop: a Ready the disk refused (`blockedReady`), or a write on the
   * storage's thread (an install the loop is parked on) waiting for space; or it refuses the image
   * this node needs (SnapshotTransfer.stagingDiskFull).
   */
  private diskFull(): boolean {
    return this.frozenByDisk() || this.snapshots.stagingDiskFull();
  }

  /** The loop is frozen by a full disk: a Ready the disk refused, or a write waiting on the storage's thread. */
  private frozenByDisk(): boolean {
    return this.blockedReady !== undefined || (this.cfg.storage.isDiskFull?.() ?? false);
  }

  /**
   * Logs `disk full` and `disk space back` as `diskFull()` turns on and off, whatever part of it
   * did: a Ready the disk refused (`met`: its error and stage), a write waiting on the storage's
   * thread (an install met it unannounced, found in a black-box review), an image refused as it
   * was staged. Called where each of them changes, and every tick.
   */
  private noteDiskFull(met?: { error: unknown; stage: string }): void {
    const full = this.diskFull();
    if (full === this.loggedDiskFull) return;
    this.loggedDiskFull = full;
    if (!full) {
      this.cfg.log?.("disk space back", {});
      return;
    }
    const staging = this.snapshots.stagingDiskFull() ? this.snapshots.stagingError() : undefined;
    const held = this.cfg.storage.diskFullWrite?.();
    const cause =
      met ??
      (staging !== undefined
        ? { error: staging, stage: "stage" }
        : { error: held?.error ?? "the storage's thread waits for disk space", stage: held?.op ?? this.parkedReady?.stage ?? "storage" });
    this.cfg.log?.("disk full", { error: cause.error instanceof Error ? cause.error.message : String(cause.error), stage: cause.stage });
  }

  /** Whether the data kept, as last measured plus what was proposed since, has reached the quota. */
  private overQuota(): boolean {
    const quota = this.cfg.quotaBytes;
    return quota !== undefined && this.dataBytesMeasured + this.bytesProposedSinceMeasure >= quota;
  }

  /** Measures the data kept (cheap: see `KvStorage.dataBytes`) and logs crossing the quota either way. */
  private measureData(): void {
    this.dataBytesMeasured = this.cfg.storage.dataBytes();
    // Writes proposed before and applied after the measure go uncounted until the next one: the
    // estimate errs low, so a put refused is one past the quota by the measure too (counting the
    // writes not yet applied instead counted some twice: the storage's thread may have committed
    // them before the loop heard).
    this.bytesProposedSinceMeasure = 0;
    this.ticksSinceMeasure = 0;
    this.logQuotaCrossing();
  }

  /** Logs the data crossing the quota, either way, once per crossing (at a measure, or at a put refused before one). */
  private logQuotaCrossing(): void {
    const quotaBytes = this.cfg.quotaBytes;
    if (quotaBytes === undefined || this.overQuota() === this.quotaExceededLogged) return;
    this.quotaExceededLogged = !this.quotaExceededLogged;
    const detail = this.quotaExceededLogged
      ? "puts are refused with quota_exceeded; reads and deletes go on (delete keys, or raise --quota-bytes and restart)"
      : "the data is back under the quota: puts are taken again";
    this.cfg.log?.(this.quotaExceededLogged ? "quota exceeded" : "quota ok", { dataBytes: this.dataBytesMeasured + this.bytesProposedSinceMeasure, quotaBytes, detail });
  }

  // ---- Leases (src/node/leases.ts) -----------------------------------------------------------

  grantLease(ttlMs: number): Promise<LeaseGrant> {
    return this.leases.grant(ttlMs);
  }

  keepAliveLease(id: number): Promise<{ id: number; ttlMs: number }> {
    return this.leases.keepAlive(id);
  }

  leaseInfo(id: number): Promise<LeaseInfo> {
    return this.leases.info(id);
  }

  listLeases(after: number | undefined, limit: number): Promise<LeaseSummary[]> {
    return this.leases.list(after, limit);
  }

  revokeLease(id: number): Promise<{ id: number; version: number; deletedKeys: number }> {
    return this.leases.revoke(id);
  }

  /** See `NodeMembership.removedByPeer`: a peer told this node it was removed. */
  removedByPeer(by: NodeId, detail: string): void {
    this.membership.removedByPeer(by, detail);
  }

  leaseStats(): { leases: number; expiredTotal: number } {
    return this.leases.stats();
  }

  snapshotStats(): SnapshotStats {
    return this.snapshots.stats();
  }

  // ---- Membership ---------------------------------------------------------------------------

  async currentMembers(): Promise<MembersView> {
    await this.readBarrier("linearizable");
    return this.members();
  }

  members(): MembersView {
    return this.membership.view();
  }

  addMember(id: NodeId, peerUrl: string, httpUrl?: string): Promise<MembersView> {
    return this.membership.add(id, peerUrl, httpUrl);
  }

  promoteMember(id: NodeId): Promise<MembersView> {
    return this.membership.promote(id);
  }

  removeMember(id: NodeId): Promise<MembersView> {
    return this.membership.remove(id);
  }

  /**
   * Hands leadership to `target`, or to the most caught-up other voter (thesis §3.10). Resolves
   * with the new leader's id once this node has stepped down; rejects with `timeout` if it did not
   * within `timeoutMs`, and with `not_leader` when this node does not lead.
   */
  transferLeadership(target: NodeId | undefined, timeoutMs = this.transferTimeoutMs()): Promise<{ leaderId: NodeId }> {
    // Every refusal is a rejection: callers chain .then/.catch (the server's shutdown does).
    try {
      this.refuseUnlessRunning();
    } catch (error: unknown) {
      return Promise.reject(error);
    }
    const raft = this.raw.basicStatus();
    if (raft.role !== "leader") return Promise.reject(this.notLeader());
    // Asked to hand over to itself: done already (etcd's MoveLeader to the leader does nothing too).
    if (target === this.cfg.id) return Promise.resolve({ leaderId: this.cfg.id });
    // Until the change is applied the core's voters are the old ones: the target could be a voter
    // being removed (proposed, not yet committed: it won, applied its own removal and stepped down,
    // an election for nothing; found in a code review), or one that will not campaign with a change
    // it has not applied.
    if (this.raw.confChangePending()) return Promise.reject(new KvError("unavailable", "a membership change is not yet applied; retry shortly", { retryAfterS: 1 }));
    const voters = raft.voters.filter((id) => id !== this.cfg.id);
    if (target !== undefined && !voters.includes(target)) {
      return Promise.reject(new KvError("bad_request", `node ${target} is not another voter of this cluster`));
    }
    const chosen = target ?? this.raw.mostCaughtUpFollower();
    if (chosen === undefined) return Promise.reject(new KvError("no_other_voter", "there is no other voter to hand over to (add one with kv member add, or --join)"));
    this.raw.transferLeadership(chosen);
    this.scheduleTurn();
    const deadline = this.cfg.clock.nowMs() + timeoutMs;
    return new Promise<{ leaderId: NodeId }>((resolveTransfer, rejectTransfer) => {
      const resolve = (value: { leaderId: NodeId }) => (this.transferWaiters.delete(waiter), resolveTransfer(value));
      const reject = (error: KvError) => (this.transferWaiters.delete(waiter), rejectTransfer(error));
      const check = (): void => {
        const now = this.raw.basicStatus();
        const expired = this.cfg.clock.nowMs() >= deadline;
        // Stepped down: answer once we hear who leads now (0 if still unknown at the deadline).
        if (now.role !== "leader" && (now.leaderId !== 0 || expired)) return resolve({ leaderId: now.leaderId });
        if (this.stopped) return reject(new KvError("timeout", "the node stopped during the transfer: whether leadership moved is unknown"));
        if (now.role === "leader" && (expired || now.leadTransferee === 0)) {
          // The core gives a transfer up one election timeout after it began: well before timeoutMs
          // (said as "within 480 ms" after 120: found in a black-box review). Either way the target
          // may still take over (it may have been sent its go-ahead): the outcome is unknown.
          const why = expired ? `within ${timeoutMs} ms` : "within an election timeout, and this leader gave the transfer up (is it running, reachable and caught up?)";
          return reject(new KvError("timeout", `node ${chosen} did not take over ${why}; it may still, so see who leads (kv status) before retrying`));
        }
        this.afterTurn.push(check);
      };
      const waiter = { deadline, check };
      this.transferWaiters.add(waiter);
      this.afterTurn.push(check);
    });
  }

  /**
   * How long a node may know no leader before it ends its watch streams and refuses new ones (see
   * `endStreamsStandingStill`): two and a half maximum election timeouts, past an election that
   * takes a second round (600 ms at the defaults; 5 s at etcd's timing).
   */
  private leaderlessStreamsMs(): number {
    return 5 * this.cfg.electionTicks * this.cfg.tickMs;
  }

  /**
   * A node that has known no leader for `leaderlessStreamsMs` (cut off from the others, or the
   * cluster lost its majority) applies nothing: its watch streams would send progress at a version
   * that no longer moves while the others commit on, and their clients, hearing progress, would
   * never go elsewhere (found in a black-box review: 12 s behind for as long as the cut lasted).
   * They end with `unavailable`, to resume from their last id on another node, as etcd ends the
   * streams of clients that require a leader. So do they on a node a full disk has frozen as long.
   */
  private endStreamsStandingStill(): void {
    if (!this.frozenByDisk()) this.frozenSinceMs = undefined;
    else this.frozenSinceMs ??= this.cfg.clock.nowMs();
    if (this.watches.count() === 0) return;
    const stuck = this.standingStill();
    if (stuck !== undefined) this.watches.endAll(stuck.message);
  }

  /**
   * Why this node's state stands still, once it has for `leaderlessStreamsMs`: a full disk froze its
   * loop (it keeps its leader, and its streams stood still: found in a review of the leaderless
   * check), or it has known no leader, counted from the Ready that said so, not sampled at ticks (a
   * loop parked on its storage or stalled ticks nothing, and that time was counted as leaderless: a
   * code review). The refusal a new watch gets; undefined while it moves.
   */
  private standingStill(): KvError | undefined {
    const nowMs = this.cfg.clock.nowMs();
    const atLeast = this.leaderlessStreamsMs();
    const then = "so its state stands still: watch on another node (from your last id, if you have one)";
    if (this.frozenSinceMs !== undefined && nowMs - this.frozenSinceMs >= atLeast) {
      const forMs = Math.round(nowMs - this.frozenSinceMs);
      return new KvError("insufficient_storage", `this node's disk has been full for ${forMs} ms and it applies nothing until space returns, ${then}`, { retryAfterS: 1 });
    }
    if (this.leaderLostMs === undefined || this.raw.basicStatus().leaderId !== 0 || nowMs - this.leaderLostMs < atLeast) return undefined;
    const forMs = Math.round(nowMs - this.leaderLostMs);
    const known = this.leaderEverKnown
      ? `this node has known no leader for ${forMs} ms (cut off from the others, or the cluster lost its majority)`
      : `this node has known no leader since it started ${forMs} ms ago (it may be joining, or unable to reach a majority)`;
    return new KvError("no_leader", `${known}, ${then}`);
  }

  /** A Ready's soft state named `leaderId` (0: none). */
  private noteLeader(leaderId: NodeId): void {
    if (leaderId !== 0) {
      this.leaderLostMs = undefined;
      this.leaderEverKnown = true;
    } else {
      this.leaderLostMs ??= this.cfg.clock.nowMs();
    }
  }

  /** Two maximum election timeouts: long enough for a caught-up target to win. */
  private transferTimeoutMs(): number {
    return 4 * this.cfg.electionTicks * this.cfg.tickMs;
  }

  healthy(): boolean {
    const raft = this.raw.basicStatus();
    // Applies handed to a storage that writes on another thread count: their results are on their way.
    const applying = Math.max(this.cfg.storage.appliedIndex(), this.appliedHandedIndex);
    // Behind the leader's commit (as its appends named it, or as the image on its way stands), not
    // only its own: a follower catching up by the log, or waiting for an image, commits only as far
    // as its log goes, and said 200 while far behind.
    const known = Math.max(raft.leaderCommit, this.snapshots.receivingIndex());
    return !this.stopped && !this.membership.removed() && this.blockedReady === undefined && raft.leaderId !== 0 && known - applying <= healthApplyLagMax;
  }

  private httpUrlOf(id: NodeId): string | undefined {
    if (id === 0) return undefined;
    if (id === this.cfg.id) return this.httpUrl;
    return this.transport?.peerHttpUrl(id);
  }

  refuseWriteUnlessLeader(): void {
    this.refuseUnlessRunning();
    if (this.raw.basicStatus().role !== "leader") throw this.notLeader();
    this.refuseWhenFull();
  }

  private write(command: Command, check?: WriteCheck): Promise<ApplyResult> {
    if (command.op === "delete-prefix") checkClientKey(command.prefix);
    else if (command.op !== "txn") checkClientKey(command.key); // a transaction's keys: checkTxnRequest
    const idem = command.idempotencyKey;
    if (idem !== undefined && (idem === "" || new TextEncoder().encode(idem).byteLength > idempotencyKeyBytesMax || !idem.isWellFormed())) {
      throw new KvError("bad_request", `an idempotency key must be 1 to ${idempotencyKeyBytesMax} bytes of UTF-8`);
    }
    this.refuseWriteUnlessLeader();
    // Checked where the write is proposed, on the leader (as etcd's quota): every replica keeps the
    // same state machine, so the leader's size stands for theirs. Deletes pass, so space can be freed.
    if ((command.op === "put" || (command.op === "txn" && txnPuts(command))) && this.overQuota() && !this.retryAnsweredBySession(idem)) {
      this.logQuotaCrossing();
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
        : { ...command, stamp: { atMs: this.sessionStamps.now(), windowMs: this.idempotencyWindowMs, sessionsMax: this.idempotencySessionsMax } };
    const data = encodeCommand(stamped);
    // Its value lands in the state machine (the log is not counted): counted until measured.
    this.bytesProposedSinceMeasure += data.byteLength;
    const applied = this.proposals.enqueue(data, this.deadline(), check);
    this.scheduleTurn();
    return applied;
  }

  /**
   * A retry under `idempotencyKey` that its live session will answer (src/kv/apply-plan.ts's
   * `sessionAnswersRetry`): it goes to the log past the quota and the gets' bound, since applying it
   * changes nothing. Before, a write that crossed the quota had its retry refused `quota_exceeded`,
   * and a client that lost the first answer reported a stored value as refused (found in review).
   */
  private retryAnsweredBySession(idempotencyKey: string | undefined): boolean {
    if (idempotencyKey === undefined) return false;
    return sessionAnswersRetry(this.cfg.storage.get(`${sessionKeyPrefix}${idempotencyKey}`), this.sessionStamps.now(), this.idempotencyWindowMs);
  }

  private notLeader(): KvError {
    const leaderId = this.raw.basicStatus().leaderId;
    const leaderUrl = this.httpUrlOf(leaderId);
    if (leaderId === 0 || leaderId === this.cfg.id || leaderUrl === undefined) {
      return new KvError("no_leader", "no leader is known right now; retry shortly", { retryAfterS: 1 });
    }
    return new KvError("not_leader", `node ${leaderId} is the leader`, { leaderId, leaderUrl });
  }

  private refuseUnlessRunning(): void {
    // Frozen as soon as the storage says its thread met a full disk, not only once a Ready of the
    // loop's was refused: a write that came first was proposed, waited its whole timeout in the
    // blocked Ready, was answered as of unknown outcome, and applied once space returned (found in
    // a black-box review).
    if (this.frozenByDisk()) throw diskFullError();
    if (this.failure !== undefined) throw new KvError("unavailable", `the node stopped: ${this.failure.message}`);
    if (this.stopped || this.transport === undefined) throw new KvError("unavailable", "the node is not running");
    if (this.membership.removed()) throw removedError();
  }

  private refuseWhenFull(): void {
    const waiting = this.proposals.count() + this.reads.count();
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
    this.noteDiskFull();
    this.endStreamsStandingStill();
    this.noteVotesHeld();
    if (++this.ticksSinceMeasure >= dataMeasureTicks) this.measureData();
    if (this.blockedReady !== undefined) {
      // Frozen until the disk takes the Ready: requests still time out, and a retry runs every 10 ticks.
      this.expireWaiters();
      if (++this.diskRetryTicks % 10 === 0) this.turn();
      return;
    }
    if (this.parkedReady !== undefined) {
      // Frozen until the storage's thread answers (see awaitStorage): requests still time out.
      this.expireWaiters();
      return;
    }
    for (const to of this.snapshots.sending()) this.raw.reportSnapshotInProgress(to);
    // A firing that comes late, after a turn made its tick up (catchUpClock), moves the election
    // timers but not the clock: counted again, the clock ran a tick ahead of real time and ended a
    // voter's promise to its leader early (found in a code review: a vote granted 81 ms after an
    // acknowledged heartbeat, where the promise is 90 ms and the leader's lease 70); not ticked at
    // all, the election timer stood still while turns kept coming (found in a review of that fix).
    if (this.ticksDue() > this.ticksAccounted) {
      this.raw.tick();
      this.ticksAccounted++;
    } else {
      this.raw.tickCaughtUp();
    }
    this.expireWaiters();
    // Asked again by the turn below (as etcd's read loop does every 500 ms).
    this.reads.askAgainOlderThan(this.cfg.clock.nowMs(), readIndexRetryMs);
    this.leases.tick();
    this.maybeProposeClusterNonce();
    this.membership.maybePromoteLearner();
    // A compaction under way goes on while no entries are applied.
    if (this.compactTarget > this.cfg.storage.snapshot().index) {
      try {
        this.compactStep();
      } catch (error) {
        return this.fail(error instanceof Error ? error : new Error(String(error)));
      }
    }
    this.turn();
  }

  /**
   * Moves the core's lease clock on by every tick due by the monotonic clock (one per `tickMs`
   * since the start) that no timer firing delivered. A timer callback is late or never comes while
   * the process stalls (GC, a slow disk call, SIGSTOP), and a tick lost would stretch the leader's
   * lease (`Raft.leaseValid`) in real time past the followers' election timeout. Made up here, at the
   * start of every turn, before any read is judged (`RawNode.elapse`: a leader's heartbeat timer
   * moves too, the election timers are left as they are).
   */
  private catchUpClock(): void {
    const due = this.ticksDue();
    if (due <= this.ticksAccounted) return;
    this.raw.elapse(due - this.ticksAccounted);
    this.ticksAccounted = due;
  }

  /**
   * Ticks due by the monotonic clock since the start: one per `tickMs`. A millionth of a tick is
   * allowed for rounding, so a timer firing on a tick's boundary (a simulated clock's, computed
   * through its drift rate) counts that tick rather than the one before.
   */
  private ticksDue(): number {
    return Math.floor((this.cfg.clock.nowMs() - this.ticksStartMs) / this.cfg.tickMs + 1e-6);
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
    if (this.stopped || this.parkedReady !== undefined) return;
    try {
      // A full disk freezes the loop, but what was written before it still gets its fsync.
      if (this.blockedReady !== undefined && !this.carryOut(this.blockedReady)) return this.startSync();
      const durable = this.durableEntry;
      if (durable !== undefined) {
        this.durableEntry = undefined;
        this.raw.persisted(durable.index, durable.term);
      }
      // Time first: a lease judged by this turn's reads must have aged by every tick that passed.
      this.catchUpClock();
      this.stepInbox();
      this.proposals.proposeQueued(this.raw, (refusal) =>
        refusal.reason === "too_many_uncommitted" ? new KvError("overloaded", "too many writes are waiting to commit", { retryAfterS: 1 }) : this.notLeader(),
      );
      this.reads.requestReadIndex(this.raw, this.cfg.clock.nowMs());
      while (this.raw.hasReady()) if (!this.handleReady(this.raw.ready())) return this.startSync();
      // A hold ended in this turn (committed an entry of its leader's term, or led): its record
      // goes now, not at the next tick (a node stopped in between held again at its next start).
      this.noteVotesHeld();
      // Writes still queued (past one turn's bytes, or held back by what was pending and has now
      // applied) go in the next turn, after timers and peers' calls had theirs.
      if (this.proposals.canProposeQueued()) this.afterTurn.push(() => this.scheduleTurn());
      this.reads.serve(this.cfg.storage.appliedIndex());
      const checks = this.afterTurn;
      this.afterTurn = [];
      for (const check of checks) check();
      this.startSync();
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
    } finally {
      try {
        this.snapshots.settleStaged();
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
        // A storage thread reports its own failure (an entry that does not decode, damage met) at the
        // next sync: said as itself, with its advice, not as a failed fsync (found in a black-box
        // review: a newer release's entry read "fsync failed"). Told by name, as isStorageCorruption does.
        if (error instanceof Error && error.name === "StorageError") {
          this.fail(error);
          return;
        }
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
    const lost = this.raw.lostLog();
    if (lost !== undefined) throw lostLogError(this.cfg.id, lost);
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
    // No message leaves before the newest term and vote are on disk, as etcd's Ready contract says:
    // the only voter leads at once, with no vote request to wait for the disk, and its appends left
    // before its new term was durable; a power loss then let it lead that term again, over a learner
    // that held the first life's entries of it, which then committed another entry at the same
    // index and term (found in a code review of the Raft core). Every message then waits (`held`).
    const hard = ready.hardState;
    const termVoteChanges = hard !== undefined && (hard.term !== this.writtenTermVote?.term || hard.vote !== this.writtenTermVote.vote);
    if (termVoteChanges || this.durableReadies < this.termVoteDurableAt) {
      return this.carryOut({ ready, early: [], late: ready.messages, stage: ready.snapshot !== undefined ? "install" : "save", holdAll: true });
    }
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
   * Carries out a Ready from `work.stage` on: install, save, then send and apply, then advance. A
   * full disk is an operating error, not a crash: the Ready waits in `blockedReady` (the core is
   * neither stepped nor ticked meanwhile, as if paused), writes are refused with
   * `insufficient_storage`, and each retry resumes where it stopped. Returns false while the disk is
   * full, or while the Ready waits for the storage's thread (`parkedReady`, see `awaitStorage`).
   */
  private carryOut(work: BlockedReady): boolean {
    const { ready } = work;
    try {
      if (work.stage === "install") {
        const snapshot = ready.snapshot as SnapshotToInstall;
        const before = addedIndexes(this.cfg.storage.membership());
        const installing = this.cfg.storage.installSnapshot(snapshot.metadata, snapshot.imageId, this.snapshots.addressesFor(snapshot.imageId));
        work.stage = "save";
        if (installing !== undefined) return this.awaitStorage(work, installing.then(() => this.snapshotInstalled(snapshot, before)));
        this.snapshotInstalled(snapshot, before);
      }
      if (work.stage === "save") {
        // Written, not yet durable: see the class comment (the fsync runs after the turn).
        this.cfg.storage.save(ready.hardState, ready.entries, false);
        work.stage = "apply";
        if (ready.mustSync) this.writtenReadies++;
        const hard = ready.hardState;
        if (hard !== undefined && (hard.term !== this.writtenTermVote?.term || hard.vote !== this.writtenTermVote.vote)) {
          this.writtenTermVote = { term: hard.term, vote: hard.vote };
          this.termVoteDurableAt = this.writtenReadies;
        }
        const lastEntry = ready.entries[ready.entries.length - 1];
        if (lastEntry !== undefined) this.lastWrittenEntry = { index: lastEntry.index, term: lastEntry.term };
        if (work.early.length > 0) {
          this.startSync();
          this.sendEarly(work.early);
          work.early = [];
        }
        if (work.late.length > 0) {
          const waiting = this.durableReadies >= this.writtenReadies ? [] : work.holdAll === true ? work.late : work.late.filter(waitsForDisk);
          if (waiting.length > 0) this.held.push({ messages: waiting, readies: this.writtenReadies, calls: this.callsStepped });
          if (waiting !== work.late) this.sendMessages(waiting.length === 0 ? work.late : work.late.filter((message) => !waitsForDisk(message)));
        }
      }
      if (work.stage === "apply") {
        const entries = ready.committedEntries;
        const applying = entries.length === 0 ? [] : this.cfg.storage.applyEntries(entries);
        work.stage = "advance";
        const last = entries[entries.length - 1];
        if (last !== undefined) this.appliedHandedIndex = last.index;
        if (Array.isArray(applying)) {
          this.entriesApplied(entries, applying);
        } else if (last !== undefined) {
          // The core goes on (ticks, heartbeats, later entries) meanwhile, but counts these entries
          // applied, a membership change among them included, only once their results are in.
          work.applyConfirmedLater = true;
          applying
            .then((results) => {
              this.entriesApplied(entries, results);
              if (!this.stopped) this.raw.confirmApplied(last.index);
            })
            .then(
              () => this.scheduleTurn(),
              (error: unknown) => this.failUnlessStopped(error),
            );
        }
      }
    } catch (error) {
      if (!isDiskFull(error)) throw error;
      this.blockedReady = work;
      this.noteDiskFull({ error, stage: work.stage });
      this.proposals.refuseQueued(diskFullError());
      return false;
    }
    if (this.blockedReady !== undefined) {
      this.blockedReady = undefined;
      this.noteDiskFull();
    }
    this.reads.onReady(ready.readStates, ready.readFailures, () => this.notLeaderForRead());
    if (ready.softState !== undefined) {
      const term = this.raw.basicStatus().term;
      this.cfg.log?.("role", { role: ready.softState.role, leaderId: ready.softState.leaderId, term });
      this.noteLeader(ready.softState.leaderId);
      // A leader that steps down in its own term with no leader to follow, not removed: check-quorum
      // found no majority answering. Said as such (found in a black-box review: only an info `role`).
      if (this.loggedRole?.role === "leader" && this.loggedRole.term === term && ready.softState.role === "follower" && ready.softState.leaderId === 0 && !this.membership.removed()) {
        this.cfg.log?.("quorum lost", { term, detail: "stepped down: no majority of the voters answered within two election timeouts; it serves no writes or linearizable reads until a leader is elected" });
      }
      this.loggedRole = { role: ready.softState.role, term };
      if (this.reads.leaderChanged()) this.scheduleTurn();
      if (ready.softState.role !== "leader") {
        this.snapshots.abortAll("no longer the leader");
        this.proposals.leadershipLost(this.appliedHandedIndex);
        this.membership.leadershipLost();
      }
      this.leases.roleChanged(ready.softState.role, this.raw.basicStatus().term);
    }
    this.raw.advance(ready, false, work.applyConfirmedLater === true);
    if (ready.committedEntries.length > 0) this.compactStep();
    return true;
  }

  /**
   * What an apply's results do, in log order: recorded in the watch history before any client
   * hears of its write (a watch opened after an answer sees what follows), then leases, membership
   * and the writes waiting for them.
   */
  private entriesApplied(entries: readonly Entry[], results: readonly ApplyResult[]): void {
    if (this.stopped) return;
    this.watches.applied(entries, results);
    results.forEach((result, i) => {
      const entry = entries[i]!;
      this.leases.applied(result);
      this.membership.entryApplied(entry);
      if (result.kind === "conf-change") {
        // An id added (again) or removed: what an earlier process of it said of its release no
        // longer counts, and what was composed for that process must not reach a new one (an add
        // of a member, which keeps its process, resets nothing).
        const id = result.change.nodeId;
        if (result.change.type === "add-learner" && id !== this.cfg.id && !this.raw.members().includes(id)) this.peerAddedAgain(id);
        else if (result.change.type !== "promote") this.transport?.forgetPeerCommandLevel(id);
        this.membership.changeApplied(result, entry.term);
      } else this.proposals.settle(result, entry.term);
    });
  }

  /**
   * Parks `work` until the storage's thread has done what `done` waits for (an install), then
   * carries out the rest of it and takes up the loop again.
   * Returns false, as carryOut does for a Ready it could not finish.
   */
  private awaitStorage(work: BlockedReady, done: Promise<void>): false {
    this.parkedReady = work;
    done.then(
      () => {
        if (this.stopped || this.parkedReady !== work) return;
        this.parkedReady = undefined;
        this.noteDiskFull();
        try {
          if (!this.carryOut(work)) return this.startSync();
        } catch (error) {
          return this.fail(error instanceof Error ? error : new Error(String(error)));
        }
        this.turn();
      },
      (error: unknown) => this.failUnlessStopped(error),
    );
    return false;
  }

  /** A storage answer that failed: fatal, unless the node stopped meanwhile (closing its storage fails what is pending). */
  private failUnlessStopped(error: unknown): void {
    if (this.stopped) return;
    this.fail(error instanceof Error ? error : new Error(String(error)));
  }

  private compactStep(): void {
    try {
      this.maybeCompact();
    } catch (error) {
      if (isDiskFull(error)) return; // compaction can wait for space
      if (this.stopped) return;
      throw error;
    }
  }

  // ---- Snapshots ----------------------------------------------------------------------------

  /** Ready.snapshot: the staged image replaced the state machine and the log, before anything else was saved. */
  private snapshotInstalled(snapshot: SnapshotToInstall, addedBefore: ReadonlyMap<NodeId, number | undefined>): void {
    if (this.stopped) return;
    const { index, term } = snapshot.metadata;
    this.snapshots.installed();
    this.watches.snapshotInstalled(index);
    this.membership.snapshotInstalled();
    // Members the image records as added at another index than before (removed and added again
    // meanwhile): as when the addition applies (see entriesApplied), nothing composed for the
    // earlier process of the id may reach the new one.
    for (const address of this.cfg.storage.membership().addresses) {
      if (address.id !== this.cfg.id && addedBefore.get(address.id) !== address.addedIndex) this.peerAddedAgain(address.id);
    }
    this.cfg.log?.("snapshot installed", { index, term, imageId: snapshot.imageId });
    this.proposals.coveredBySnapshot(index);
  }

  /** Member `id` was added (perhaps again, as a new process): nothing said by or composed for an earlier process of it carries over. */
  private peerAddedAgain(id: NodeId): void {
    this.transport?.forgetPeerCommandLevel(id);
    this.transport?.resetPeer(id);
  }

  /** Hands messages to the transport, except InstallSnapshot: its image is streamed on the side. */
  private sendMessages(messages: readonly Message[]): void {
    let others: Message[] | undefined;
    for (const message of messages) {
      if (message.type === "snapshot") {
        others ??= messages.filter((each) => each.type !== "snapshot");
        this.snapshots.start(message);
      }
    }
    // Messages to a node whose address this one has not learned go too: the transport answers them
    // through that node's own waiting call, if any (a voter that was away answering a member added
    // meanwhile), and drops the rest.
    const rest = others ?? messages;
    if (rest.length > 0) this.transport?.send(rest);
  }

  /** The transport's snapshot handler: see SnapshotTransfer.receiveChunk. */
  receiveSnapshotChunk(chunk: SnapshotChunk): void {
    try {
      this.snapshots.receiveChunk(chunk);
    } finally {
      this.noteDiskFull(); // staging may have met a full disk, or found space again
    }
  }

  /**
   * Compacts once `snapshotEntries` are applied past the last snapshot, keeping
   * `snapshotCatchUpEntries`, at most `compactStepEntries` (config) entries per call: deleting thousands of
   * large entries in one transaction held the loop's thread for 100-250 ms (16 KB values) when the
   * log was in SQLite (a step is now one update of the snapshot record; segments go whole at a
   * sync), and the loop calls this after every apply and every tick until the target is reached.
   */
  private maybeCompact(): void {
    const storage = this.cfg.storage;
    const applied = storage.appliedIndex();
    const snapshotIndex = storage.snapshot().index;
    const index = applied - this.snapshotCatchUpEntries;
    if (applied - snapshotIndex >= this.snapshotEntries) this.compactTarget = Math.max(this.compactTarget, index);
    if (this.compactTarget <= snapshotIndex) return;
    const step = Math.min(this.compactTarget, snapshotIndex + (this.cfg.compactStepEntries ?? compactStepEntriesDefault));
    storage.compact(step);
    if (step >= this.compactTarget) this.cfg.log?.("log compacted", { index: step, applied });
  }

  /** See `MembershipHost.confirmLeadership`: a linearizable read's barrier, its timeout a plain refusal. */
  private async confirmLeadership(): Promise<void> {
    try {
      await this.readBarrier("linearizable");
    } catch (error: unknown) {
      if (!(error instanceof KvError) || error.code !== "timeout") throw error;
      throw new KvError("unavailable", "this node could not confirm in time that it still leads (no majority answered): nothing was proposed; retry", { retryAfterS: 1 });
    }
  }

  private notLeaderForRead(): KvError {
    const leaderId = this.raw.basicStatus().leaderId;
    if (leaderId === 0 || leaderId === this.cfg.id) {
      return new KvError("no_leader", "no leader could confirm the read; retry shortly", { retryAfterS: 1 });
    }
    return this.notLeader();
  }

  private expireWaiters(): void {
    const now = this.cfg.clock.nowMs();
    const timeoutMs = this.cfg.requestTimeoutMs;
    this.membership.expire(now, timeoutMs);
    this.proposals.expire(now, () => timeoutError("the write", timeoutMs));
    this.reads.expire(now, () => readTimeoutError(timeoutMs));
    this.leases.expireRunOutWaiters();
    for (const waiter of [...this.transferWaiters]) if (now >= waiter.deadline) waiter.check();
  }

  private fail(error: Error): void {
    // Once: a storage thread that fails rejects every pending apply with the same error.
    if (this.failure !== undefined) return;
    this.failure = error;
    // A data dir that lost data is the operator's to mend, with the way in the message: no stack trace.
    // One found damaged (a page SQLite cannot read) gets the way back as a start on it does.
    const advice = isStorageCorruption(error) ? { advice: DAMAGED_DATA_DIR_ADVICE } : {};
    this.cfg.log?.("fatal", error instanceof LostLogError ? { error: error.message } : { error: error.message, ...advice, stack: error.stack });
    this.stop();
    this.cfg.onFatal?.(error);
  }

  private failAll(error: KvError): void {
    // Proposed writes may still commit elsewhere: their outcome is unknown, which `timeout` says.
    this.proposals.failAll(error);
    this.membership.failAll(error);
    this.reads.failAll(error);
    this.leases.stopped();
  }

  /** Why the node stopped on its own, if it did (a storage failure or a bug). */
  fatalError(): Error | undefined {
    return this.failure;
  }
}

/**
 * Why a node that lost acknowledged log entries stops (see LostLog): it may also have forgotten a
 * vote, so it must not take part again under its id until the cluster forgets it (as etcd's follower
 * stops on a commit index past its log).
 */
class LostLogError extends Error {
  override name = "LostLogError";
}

/** Each member's `addedIndex` as `membership` records it (undefined: not recorded, see src/kv/membership.ts). */
function addedIndexes(membership: Membership): Map<NodeId, number | undefined> {
  return new Map(membership.addresses.map((address) => [address.id, address.addedIndex]));
}

function lostLogError(id: NodeId, lost: LostLog): Error {
  const conflict = lost.conflict;
  if (conflict !== undefined) {
    return new LostLogError(
      `this node committed the entry at index ${conflict.index} in term ${conflict.ourTerm}, but its leader, node ${lost.leaderId} (term ${lost.term}), holds one of term ${conflict.leaderTerm} there: ` +
        `the cluster lost entries this node committed (up to index ${lost.acknowledged}; a member's data dir emptied or replaced by an older copy, and a leader elected without them), ` +
        `or node ${lost.leaderId} is of another cluster with the same cluster id (two clusters restored from one backup without --cluster-id, the other given this node's address). ` +
        `This data dir may hold the only copy of them: move it aside and keep it. To take part again under id ${id}: remove it from the cluster (kv member remove ${id}), and start it with an empty data dir and --join`,
    );
  }
  return new LostLogError(
    `this node's log ends at index ${lost.lastIndex}, but its leader, node ${lost.leaderId} (term ${lost.term}), holds that it acknowledged entries up to ${lost.acknowledged}: ` +
      `its data dir lost data (wiped, or replaced by an older copy). It cannot take part again under id ${id} as it is: ` +
      `remove it from the cluster (kv member remove ${id}), empty its data dir, and start it with --join to join again`,
  );
}

/** 16 hex digits from `prng`: two draws of 32 bits. */
function drawNonce(prng: Prng): string {
  const half = () => prng.intInclusive(0, 0xffffffff).toString(16).padStart(8, "0");
  return `${half()}${half()}`;
}

function removedError(): KvError {
  return new KvError("unavailable", "this node was removed from the cluster; it serves no requests");
}
