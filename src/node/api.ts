import type { KvRow } from "../kv/apply-plan.ts";
import type { MemberAddress } from "../kv/membership.ts";
import type { TxnAnswer, TxnRequest } from "../kv/txn.ts";
import type { WatchChange } from "../kv/watch-history.ts";
import type { NodeId, Role, SnapshotMetadata } from "../raft/types.ts";

/** Conditions on a write. */
export interface WriteOptions {
  readonly ifVersion?: number;
  /**
   * Exactly-once retries (thesis §6.3): a write carrying a key already seen within the session
   * window (`KvNodeConfig.idempotencyWindowMs`) with the same request changes nothing and answers
   * what the first one answered; with another request it rejects with `idempotency_key_reused`.
   */
  readonly idempotencyKey?: string;
  /**
   * A put attaches its key to this lease (its id), a put without one detaches it. A lease that does
   * not exist when the put applies rejects with `lease_not_found`, and nothing is written.
   */
  readonly lease?: number;
}

/** What a delete-prefix answers: how many keys went, whether keys under the prefix are left, and its version. */
export interface DeletePrefixAnswer {
  readonly deleted: number;
  readonly more: boolean;
  readonly version: number;
}

/** A lease as granted: its id (the index of its grant) and TTL; `raisedFromMs` when the TTL asked for was raised to the minimum. */
export interface LeaseGrant {
  readonly id: number;
  readonly ttlMs: number;
  readonly raisedFromMs?: number;
}

/** A lease as the leader sees it: its countdown and the keys attached to it. */
export interface LeaseInfo {
  readonly id: number;
  readonly ttlMs: number;
  /** What is left of the leader's countdown. */
  readonly remainingMs: number;
  /** The keys attached, in UTF-8 byte order, at most `leaseInfoKeysMax`. */
  readonly keys: readonly string[];
  /** More keys are attached than `keys` lists. */
  readonly keysTruncated: boolean;
}

/** Most keys `leaseInfo` lists. */
export const leaseInfoKeysMax = 1_000;

/** One lease as `listLeases` gives it: its TTL and what is left of the leader's countdown. */
export interface LeaseSummary {
  readonly id: number;
  readonly ttlMs: number;
  readonly remainingMs: number;
}

/**
 * How a read is served: `linearizable` confirms leadership by ReadIndex (a heartbeat round);
 * `lease` lets a leader within its lease answer without one (thesis §6.4.1: safe while clocks
 * drift less than the stated bound; elsewhere it falls back to ReadIndex); `stale` reads local state.
 */
export type ReadConsistency = "linearizable" | "lease" | "stale";

export interface KvValue {
  readonly value: Uint8Array;
  /** The Raft index of the write that produced this value. */
  readonly version: number;
}

export interface MemberStatus {
  readonly id: NodeId;
  readonly peerUrl: string;
  readonly httpUrl: string | undefined;
  /** Voters decide; learners replicate and are promoted once caught up (absent: not known here). */
  readonly role?: "voter" | "learner";
  /** The index of the entry that added it at its address (0: a founding member); absent when unknown. */
  readonly addedIndex?: number;
  /**
   * In a leader's `/status` only, for each other member: the last index of its log known to match
   * the leader's (its replication progress; a follower stopped or cut off falls behind here).
   */
  readonly matchIndex?: number;
}

/** The configuration as a node applied it, and the leader it knows (0: none). */
export interface MembersView {
  readonly members: readonly MemberStatus[];
  readonly leaderId: NodeId;
  /** The index of the last applied membership change (0: none since bootstrap). */
  readonly configIndex: number;
  /** The cluster's id (see src/lib/cluster-id.ts), when the serving layer knows it: a joining server adopts it. */
  readonly clusterId?: string;
}

export interface NodeStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly leaderId: NodeId; // 0 when unknown
  readonly leaderUrl: string | undefined; // the leader's advertised HTTP URL, when known
  readonly commitIndex: number;
  readonly appliedIndex: number;
  readonly lastLogIndex: number;
  /** Where the log was last compacted or a snapshot installed (0: never). */
  readonly snapshotIndex: number;
  /** The first index still in the log: snapshotIndex + 1. */
  readonly firstLogIndex: number;
  readonly members: readonly MemberStatus[];
  /** The data this node keeps against its quota, and whether its disk is full (absent: not known). */
  readonly storage?: StorageStatus;
  /** True once this node applied its own removal from the cluster: it serves nothing (absent otherwise). */
  readonly removed?: true;
  /**
   * True while this node, started with an empty log, grants no vote to a candidate with a log until
   * it has caught up with a leader (src/raft/raft.ts, `votesHeld`; absent otherwise).
   */
  readonly votesHeld?: true;
}

/** See `NodeStatus.storage`. */
export interface StorageStatus {
  /** Bytes of data kept, as last measured (about every ten ticks). */
  readonly dataBytes: number;
  /** `--quota-bytes`; 0: no quota. */
  readonly quotaBytes: number;
  /** At or past the quota: puts are refused with `quota_exceeded`; reads and deletes go on. */
  readonly quotaExceeded: boolean;
  /** The disk refused a write: the node is frozen until space returns (stale reads still served). */
  readonly diskFull: boolean;
  /**
   * A follower installs an image its leader streamed, on the storage's thread: its Raft core waits
   * (no step, no tick) until the install is in.
   */
  readonly installingSnapshot: boolean;
}

/**
 * What the client API needs from a node. Every method either resolves or rejects with a KvError
 * (src/lib/kv-error.ts): `not_leader`/`no_leader` mean nothing was proposed, `timeout` means the
 * outcome is unknown.
 */
export interface KvNodeApi {
  /** Resolves once the write is committed and applied locally; `version` is its Raft index. */
  /**
   * With `ifVersion` the write applies only if the key's version is that (0: only if absent);
   * otherwise it rejects with `version_mismatch` carrying the current version (compare-and-set).
   */
  put(key: string, value: Uint8Array, options?: WriteOptions): Promise<{ version: number }>;
  /**
   * Throws what a write would be refused with before anything about it is known: `not_leader`
   * (or `no_leader`) on a node that does not lead, the disk-full and stopped-node errors, and
   * `overloaded` when too many requests wait. The HTTP routes ask before they read a write's body,
   * so a follower redirects a large write without reading it (the client sends it again, to the
   * leader). `put`, `delete` and `txn` check again.
   */
  refuseWriteUnlessLeader(): void;
  delete(key: string, options?: WriteOptions): Promise<{ deleted: boolean; version: number }>;
  /**
   * Deletes the first `limit` (1 to 10,000) keys that start with `prefix` (every key, for the empty
   * prefix), in key order, all in one entry at one version; `more` when keys under it are left.
   * On the leader (`not_leader` elsewhere); `upgrade_required` (nothing proposed) until every member
   * said it runs a release that applies it (src/node/cluster-level.ts). `idempotencyKey` as for writes.
   */
  deletePrefix?(prefix: string, limit: number, options?: Pick<WriteOptions, "idempotencyKey">): Promise<DeletePrefixAnswer>;
  get(key: string, consistency: ReadConsistency): Promise<KvValue | undefined>;
  /**
   * A multi-key transaction (src/kv/txn.ts): compares, then the success or failure operations, all
   * in one entry, at one version. Resolves once applied here; `idempotencyKey` as for writes. Only
   * the leader serves it (`not_leader` elsewhere); its reads are linearizable. One with a put or a
   * delete in either branch goes through the log; one of gets alone is a linearizable read (no
   * entry: it answers the version of the state it read, as etcd's Txn of ranges alone leaves the
   * revision where it is). A put may name a lease: if the branch taken names one that does not
   * exist when it applies, nothing of the transaction applies and it rejects with `lease_not_found`.
   */
  txn?(request: TxnRequest, options?: Pick<WriteOptions, "idempotencyKey">): Promise<TxnAnswer>;
  /**
   * Up to `limit` keys starting with `prefix` and sorting after `after` (UTF-8 byte order), with
   * their values, read with the same consistency guarantees as `get`; with `bytesMax`, stopping once
   * the keys and values pass it (see `KvStorage.list`).
   */
  list(prefix: string, after: string | undefined, limit: number, consistency: ReadConsistency, bytesMax?: number): Promise<(KvValue & { key: string })[]>;
  status(): NodeStatus;
  /** True when a leader is known and everything committed is applied. */
  healthy(): boolean;
  /**
   * Hands leadership to `target` (or the most caught-up other voter) and resolves with the new
   * leader's id (0 if not yet known) once this node stepped down. `not_leader` on a follower.
   */
  transferLeadership(target: NodeId | undefined): Promise<{ leaderId: NodeId }>;
  /** The configuration this node applied (voters and learners with their addresses). */
  members?(): MembersView;
  /**
   * The configuration as of a linearizable read: this node's, once it applied what the leader had
   * committed when the read arrived (every change acknowledged before it is in).
   */
  currentMembers?(): Promise<MembersView>;
  /**
   * Membership changes (thesis §4.1, one server at a time), on the leader (`not_leader` elsewhere).
   * Each resolves once the change is committed and applied here, with the configuration after it;
   * `conf_change_pending` while another change is unapplied. `addMember` adds a learner (the leader
   * promotes it once caught up); `removeMember` of the leader itself first hands leadership over
   * and then rejects with `not_leader` naming the new leader, which performs the removal.
   */
  addMember?(id: NodeId, peerUrl: string, httpUrl?: string): Promise<MembersView>;
  removeMember?(id: NodeId): Promise<MembersView>;
  promoteMember?(id: NodeId): Promise<MembersView>;
  /**
   * Streams the changes to the keys `filter` selects, from `start` on, in version order, none
   * skipped and none twice, every change of a version together (src/node/watch.ts). Rejects with
   * `compacted` when the start is older than the history this node keeps, `bad_request` for a key
   * in the reserved session space, `overloaded` past the watchers allowed at once.
   */
  watch?(filter: WatchFilter, start: WatchStart): Promise<WatchSubscription>;
  /**
   * Leases (src/kv/leases.ts, src/node/leases.ts), on the leader (`not_leader` elsewhere):
   * `grantLease` through the log, its TTL raised to the minimum the node allows; `keepAliveLease`
   * restarts the leader's countdown (not through the log); `revokeLease` through the log, deleting
   * its keys at one version. Each rejects with `lease_not_found` for a lease that does not exist.
   */
  grantLease?(ttlMs: number): Promise<LeaseGrant>;
  keepAliveLease?(id: number): Promise<{ id: number; ttlMs: number }>;
  leaseInfo?(id: number): Promise<LeaseInfo>;
  /**
   * Up to `limit` leases, on the leader, in the order of their ids' decimal text (as the state
   * machine keeps them), starting after lease `after`'s place in that order; `not_leader` elsewhere.
   */
  listLeases?(after: number | undefined, limit: number): Promise<LeaseSummary[]>;
  revokeLease?(id: number): Promise<{ id: number; version: number; deletedKeys: number }>;
  /** Leases in this node's applied state, and leases whose expiry applied here since it started. */
  leaseStats?(): { leases: number; expiredTotal: number };
  /** Snapshot images this node streamed to followers (and attempts that failed), received whole, and installed, since it started. */
  snapshotStats?(): SnapshotStats;
  /**
   * A consistent image of the state machine for a backup (`GET /snapshot`) or a hash (`GET /hash`),
   * opened after a read barrier of `consistency` (default linearizable: it holds every write
   * acknowledged before the call; `stale`: this node's own state, even cut off from the leader), at
   * one applied index. It is read on the storage's own read transaction, so writes go on meanwhile.
   * The caller must `close()` it.
   */
  openSnapshot?(consistency?: ReadConsistency): Promise<SnapshotImage>;
}

/**
 * One image of the state machine, read in bounded batches: `KvImageReader` (src/storage/kv-storage.ts)
 * as the client API sees it. Every field of every row it yields belongs in a backup.
 */
export interface SnapshotImage {
  /** The applied index it was read at, the log's term there, and the configuration then. */
  readonly metadata: SnapshotMetadata;
  /** Every member's recorded addresses as of the image's index. */
  readonly addresses: readonly MemberAddress[];
  /** The next rows in key order, about `bytesMax` bytes (at least one row); [] once done. */
  next(bytesMax: number): KvRow[];
  /** Ends the read. Idempotent. */
  close(): void;
}

/** See `KvNodeApi.snapshotStats`. */
export interface SnapshotStats {
  readonly sent: number;
  readonly sendFailed: number;
  readonly received: number;
  readonly installed: number;
}

/** Which keys a watch sees: those starting with `prefix`, or the one `key`. Session keys never. */
export type WatchFilter = { readonly prefix: string } | { readonly key: string };

/**
 * Where a watch starts: after version `after` (a resume: `Last-Event-ID`), or at version `from`
 * (`?fromVersion`: the changes at `from` and later), or `now`: after the index of a linearizable
 * read, so a watch opened after a write was acknowledged sees every change after it.
 */
export type WatchStart = { readonly after: number } | { readonly from: number } | "now";

/** What a watch stream carries: changes, progress (everything up to `version` delivered), or its end. */
export type WatchItem =
  | { readonly type: "change"; readonly change: WatchChange }
  | { readonly type: "progress"; readonly version: number }
  /**
   * The last item of a stream that ends: `slow_watcher` (its buffer overflowed), `compacted` (a
   * snapshot installed here skipped changes it had not sent), `unavailable` (the node stops, was
   * removed, or has known no leader, or been frozen by a full disk, for five election timeouts).
   * Resume from the last id received.
   */
  | { readonly type: "error"; readonly error: "slow_watcher" | "compacted" | "unavailable"; readonly message: string; readonly compactVersion?: number };

/** One open watch. */
export interface WatchSubscription {
  /** The next items (never empty), waiting until there are some; undefined once the stream ended or was closed. */
  next(): Promise<WatchItem[] | undefined>;
  /** Ends the stream (the client went away); idempotent. */
  close(): void;
}
