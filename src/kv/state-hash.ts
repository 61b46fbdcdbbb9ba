/**
 * A digest of the state machine's rows (`GET /hash`, `kv hash`): what etcd's `endpoint hashkv`
 * gives its operators. Every node that applied the same entries holds the same rows, so two nodes
 * answering at one applied index must answer one hash; a difference is a replica that diverged
 * (a bug, or a data dir altered behind the node's back).
 *
 * The rows are those of a backup (src/kv/backup-format.ts), in key order: every client key and every
 * reserved row (leases, sessions) but the two below. Each adds to a SHA-256 its key's UTF-8 length (4 bytes, big
 * endian), the key, its version (8 bytes), its value's length (4 bytes) and the value: lengths
 * first, so no two row sets share a digest by moving bytes between a key and a value. The session
 * clock's row (src/kv/apply-plan.ts) counts with version 0: a data dir upgraded from 0.1.0 wrote it at
 * its own applied index when it migrated, which differs from node to node until the next
 * idempotent write rewrites it at that write's index (found in review: such a cluster answered
 * "diverged"); its value is the same on every node. The cluster's nonce (src/kv/cluster-nonce.ts)
 * is left out: it names the cluster, not its data, and a cluster restored from a backup draws its
 * own, so a backup (`kv snapshot status`) and the cluster made from it answer one hash until it
 * takes writes (found in review: they differed by that row alone). So is the level of commands the
 * cluster applied (`commandLevelKey`): what the leaders know of their members, not data, and the
 * first build of 0.9.0 did not record it (found in review: replicas of the two builds answered
 * "diverged" over a state their clients see alike).
 */
import { commandLevelKey, sessionClockKey, type KvRow } from "./apply-plan.ts";
import { clusterNonceKey } from "./cluster-nonce.ts";

/** What a node answers: the digest, and where its state stood. */
export interface StateHash {
  /** The applied index the rows were read at. */
  readonly index: number;
  /** The log's term at that index. */
  readonly term: number;
  /** `sha256:` and 64 hex digits. */
  readonly hash: string;
  /** Rows hashed (client keys and reserved rows, the cluster's nonce aside). */
  readonly rows: number;
  /** Bytes of keys and values hashed. */
  readonly bytes: number;
}

/** Hashes rows fed in key order (see the file comment). */
export class StateHasher {
  private readonly hasher = new Bun.CryptoHasher("sha256");
  private readonly frame = new DataView(new ArrayBuffer(12));
  private readonly encoder = new TextEncoder();
  private rowCount = 0;
  private byteCount = 0;

  add(row: KvRow): void {
    if (row.key === clusterNonceKey || row.key === commandLevelKey) return;
    const key = this.encoder.encode(row.key);
    this.frame.setUint32(0, key.byteLength);
    this.hasher.update(new Uint8Array(this.frame.buffer, 0, 4));
    this.hasher.update(key);
    // Versions are Raft indexes: below 2^53, so the high word is exact.
    const version = row.key === sessionClockKey ? 0 : row.version;
    this.frame.setUint32(0, Math.floor(version / 2 ** 32));
    this.frame.setUint32(4, version >>> 0);
    this.frame.setUint32(8, row.value.byteLength);
    this.hasher.update(new Uint8Array(this.frame.buffer, 0, 12));
    this.hasher.update(row.value);
    this.rowCount++;
    this.byteCount += key.byteLength + row.value.byteLength;
  }

  /** The digest of the rows added; the hasher is done after this. */
  finish(at: { readonly index: number; readonly term: number }): StateHash {
    return { index: at.index, term: at.term, hash: `sha256:${this.hasher.digest("hex")}`, rows: this.rowCount, bytes: this.byteCount };
  }
}
