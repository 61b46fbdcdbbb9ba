/**
 * The cluster id: a name for one incarnation of a cluster, carried on every peer call so that a
 * node refuses calls from a node of another cluster that reaches its address.
 *
 * As in etcd (whose cluster id hashes the member ids, which hash the peer URLs and the
 * `--initial-cluster-token`), the id is derived at bootstrap from what every founding node is
 * configured with: the sorted voter ids and the cluster token. Peer URLs are left out because each
 * node names its peers by the address it reaches them at (proxies, NAT), so they differ per node.
 * The id is derived once, when the data dir is new, and kept in `<data dir>/cluster-id`; from then
 * on the file is authoritative, so a node whose data dir comes from another incarnation (the cluster
 * was re-created with a new token, or the data dir was restored from a backup of another cluster)
 * keeps its old id and is refused by the new cluster's nodes. Re-creating a cluster from empty data
 * dirs with the same voters and the same token yields the same id: give a new cluster a new token.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import { fsyncPath } from "./fsync-path.ts";

/** The file, inside the data dir, that holds the cluster id. */
export const CLUSTER_ID_FILE = "cluster-id";

/** 16 lowercase hex digits (64 bits). */
const clusterIdPattern = /^[0-9a-f]{16}$/;

/** Whether `value` has the form of a cluster id. */
export function isClusterId(value: string): boolean {
  return clusterIdPattern.test(value);
}

/** Whether `value` has the form of a cluster nonce (src/kv/cluster-nonce.ts): 16 lowercase hex digits too. */
export function isClusterNonce(value: string): boolean {
  return clusterIdPattern.test(value);
}

/**
 * The id a cluster of these voters sharing this token (or none) gets at bootstrap. Every founding
 * node computes the same one without talking to the others.
 */
export function deriveClusterId(voters: readonly number[], clusterToken: string | undefined): string {
  const sorted = [...voters].sort((a, b) => a - b);
  const hash = createHash("sha256");
  hash.update("kv cluster id v1\n");
  hash.update(`voters=${sorted.join(",")}\n`);
  // The token is hashed first so that the id depends on it without containing it.
  hash.update(`token=${clusterToken === undefined ? "" : createHash("sha256").update(clusterToken, "utf8").digest("hex")}\n`);
  return hash.digest("hex").slice(0, 16);
}

/**
 * The id of a new cluster restored from a backup (`kv snapshot restore`): every node restored from
 * the same file (`backupSha256`, its trailer's checksum) with the same voters gets the same id
 * without talking to the others, and it differs from the id of the cluster the backup came from
 * (whose id hashes other input), so the old cluster's nodes and the new one's refuse each other.
 */
export function deriveRestoredClusterId(backupSha256: string, voters: readonly number[]): string {
  const sorted = [...voters].sort((a, b) => a - b);
  const hash = createHash("sha256");
  hash.update("kv restored cluster id v1\n");
  hash.update(`backup=${backupSha256}\n`);
  hash.update(`voters=${sorted.join(",")}\n`);
  return hash.digest("hex").slice(0, 16);
}

/** The cluster id a node runs with, and where it came from. */
export interface ClusterIdChoice {
  readonly clusterId: string;
  /** `data-dir`: read from the data dir; `derived`: derived now and written to the data dir. */
  readonly source: "data-dir" | "derived";
  /** The id this configuration derives; differs from `clusterId` when the data dir says otherwise. */
  readonly derivedId: string;
}

/** The data dir holds a `cluster-id` file that is not a cluster id: refuse to guess. */
export class ClusterIdFileError extends Error {
  override name = "ClusterIdFileError";
}

/**
 * Reads the data dir's cluster id, or, when the data dir has none yet (bootstrap, or a data dir
 * from before cluster ids), writes `derivedId` there durably (temp file, fsync, rename, fsync of
 * the directory) and returns it.
 */
export function loadOrCreateClusterId(dataDir: string, derivedId: string): ClusterIdChoice {
  const file = join(dataDir, CLUSTER_ID_FILE);
  if (existsSync(file)) {
    const stored = readFileSync(file, "utf8").trim();
    if (!isClusterId(stored)) {
      throw new ClusterIdFileError(`${file} holds ${JSON.stringify(stored.slice(0, 40))}, not a cluster id (16 hex digits)`);
    }
    return { clusterId: stored, source: "data-dir", derivedId };
  }
  writeLineDurably(dataDir, CLUSTER_ID_FILE, derivedId);
  return { clusterId: derivedId, source: "derived", derivedId };
}

/** Writes `line` as `<dir>/<name>` durably: a temp file, fsync, rename, fsync of the directory. */
export function writeLineDurably(dir: string, name: string, line: string): void {
  const file = join(dir, name);
  const temp = `${file}.tmp`;
  const fd = openSync(temp, "w", 0o644);
  try {
    writeSync(fd, `${line}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, file);
  fsyncPath(dir);
}
