import type { KvNodeApi, KvValue, NodeStatus, ReadConsistency, WriteOptions } from "../node/api.ts";
import { KvError } from "../lib/kv-error.ts";
import { withinBytes } from "../lib/page-bytes.ts";
import { compareUtf8 } from "../lib/utf8-order.ts";

/** The codes `KvNode.refuseWriteUnlessLeader` throws (src/node/kv-node.ts). */
const refusedBeforeWrites = new Set(["not_leader", "no_leader", "overloaded", "insufficient_storage", "unavailable"]);

/**
 * An in-memory `KvNodeApi` for testing the HTTP layer without Raft: a map and a version counter.
 * Set `failure` to make every data call (put, get, delete, status) throw it, as a real node would
 * throw a `KvError`; set `isHealthy` and `statusNow` to shape /health and /status.
 */
export class MemoryKvNode implements KvNodeApi {
  /** When set, put, get, delete and status throw this instead of doing anything. */
  failure: unknown = undefined;
  /** What `healthy()` answers. */
  isHealthy = true;
  /** What `status()` answers (its indexes follow the writes). */
  statusNow: NodeStatus = {
    id: 1,
    role: "leader",
    term: 1,
    leaderId: 1,
    leaderUrl: "http://127.0.0.1:8001",
    commitIndex: 0,
    appliedIndex: 0,
    lastLogIndex: 0,
    snapshotIndex: 0,
    firstLogIndex: 1,
    members: [{ id: 1, peerUrl: "http://127.0.0.1:5001", httpUrl: "http://127.0.0.1:8001" }],
  };
  /** The consistency of every `get`, in order, so tests can see what the HTTP layer asked for. */
  readonly readConsistencies: ReadConsistency[] = [];
  private readonly values = new Map<string, KvValue>();
  private lastVersion = 0;

  /** Stores a copy of `value`; its version is the next index. */
  async put(key: string, value: Uint8Array, options: WriteOptions = {}): Promise<{ version: number }> {
    this.throwIfFailing();
    this.checkVersion(key, options);
    const version = this.nextVersion();
    this.values.set(key, { value: value.slice(), version });
    return { version };
  }

  /** Deletes `key`; like a Raft log entry, a delete takes an index even when nothing was there. */
  async delete(key: string, options: WriteOptions = {}): Promise<{ deleted: boolean; version: number }> {
    this.throwIfFailing();
    this.checkVersion(key, options);
    const version = this.nextVersion();
    return { deleted: this.values.delete(key), version };
  }

  /** Deletes the first `limit` keys under `prefix` in UTF-8 byte order, at one new version. */
  async deletePrefix(prefix: string, limit: number): Promise<{ deleted: number; more: boolean; version: number }> {
    this.throwIfFailing();
    const keys = [...this.values.keys()].filter((key) => key.startsWith(prefix)).sort(compareUtf8);
    const version = this.nextVersion();
    for (const key of keys.slice(0, limit)) this.values.delete(key);
    return { deleted: Math.min(limit, keys.length), more: keys.length > limit, version };
  }

  /** Throws `failure` when it is a refusal a real node makes before any write (KvNode.refuseWriteUnlessLeader). */
  refuseWriteUnlessLeader(): void {
    if (this.failure instanceof KvError && refusedBeforeWrites.has(this.failure.code)) throw this.failure;
  }

  /** The stored value, or undefined. */
  async get(key: string, consistency: ReadConsistency): Promise<KvValue | undefined> {
    this.throwIfFailing();
    this.readConsistencies.push(consistency);
    return this.values.get(key);
  }

  /** The stored values under `prefix` after `after`, in UTF-8 byte order. */
  async list(prefix: string, after: string | undefined, limit: number, consistency: ReadConsistency, bytesMax = Number.POSITIVE_INFINITY): Promise<(KvValue & { key: string })[]> {
    this.throwIfFailing();
    this.readConsistencies.push(consistency);
    const items = [...this.values.entries()]
      .filter(([key]) => key.startsWith(prefix) && (after === undefined || compareUtf8(key, after) > 0))
      .sort(([a], [b]) => compareUtf8(a, b))
      .slice(0, limit)
      .map(([key, value]) => ({ key, ...value }));
    return withinBytes(items, bytesMax);
  }

  /** `statusNow`, unless `failure` is set. */
  status(): NodeStatus {
    this.throwIfFailing();
    return this.statusNow;
  }

  /** `isHealthy`. */
  healthy(): boolean {
    return this.isHealthy;
  }

  /** Targets asked for by `transferLeadership`, in order. */
  readonly transfers: (number | undefined)[] = [];

  /** Records the target and "hands over" to it (or to node 2). */
  async transferLeadership(target: number | undefined): Promise<{ leaderId: number }> {
    this.throwIfFailing();
    this.transfers.push(target);
    return { leaderId: target ?? 2 };
  }

  private nextVersion(): number {
    this.lastVersion += 1;
    const index = this.lastVersion;
    this.statusNow = { ...this.statusNow, commitIndex: index, appliedIndex: index, lastLogIndex: index };
    return index;
  }

  private checkVersion(key: string, options: WriteOptions): void {
    const current = this.values.get(key)?.version ?? 0;
    if (options.ifVersion !== undefined && options.ifVersion !== current) {
      throw new KvError("version_mismatch", `'${key}' is at version ${current}`, { version: current });
    }
  }

  private throwIfFailing(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
