/**
 * Who may call the peer service: every call carries the cluster token and the cluster id in
 * headers (as etcd's peers send `X-Etcd-Cluster-ID`), and the server checks both before it reads
 * the body, so a refused call never reaches the codec or the node.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";
import { assert } from "../lib/assert.ts";
import { isClusterId, isClusterNonce } from "../lib/cluster-id.ts";
import { secretsEqual } from "../lib/secret.ts";

/** The header that carries the shared cluster token. */
export const CLUSTER_TOKEN_HEADER = "kv-cluster-token";
/** The header that carries the sender's cluster id. */
export const CLUSTER_ID_HEADER = "kv-cluster-id";
/** The header that carries the cluster's nonce (src/kv/cluster-nonce.ts), once the sender applied it. */
export const CLUSTER_NONCE_HEADER = "kv-cluster-nonce";

/** What identifies this cluster to its peers. */
export interface PeerAuth {
  /** This node's cluster id (see src/lib/cluster-id.ts): calls for another cluster are refused. */
  readonly clusterId: string;
  /** The shared secret; when set, calls without it are refused with `unauthenticated`; unset, calls that carry one are refused (`cluster_mismatch`). */
  readonly clusterToken?: string;
  /**
   * The cluster's nonce as this node applied it (src/kv/cluster-nonce.ts), or undefined before: sent
   * on every call once known, and a call carrying another is refused (the two clusters were
   * bootstrapped apart, whatever their ids). Calls without one, or to a node without one, pass.
   */
  readonly clusterNonce?: () => string | undefined;
}

/** Why a call was refused, for counters and logs. */
export type PeerRefusal = "unauthenticated" | "cluster_mismatch";

/** Adds this node's token and cluster id to every outgoing call. */
export function peerAuthInterceptor(auth: PeerAuth): Interceptor {
  assert(isClusterId(auth.clusterId), `bad cluster id ${auth.clusterId}`);
  return (next) => (request) => {
    if (auth.clusterToken !== undefined) request.header.set(CLUSTER_TOKEN_HEADER, auth.clusterToken);
    request.header.set(CLUSTER_ID_HEADER, auth.clusterId);
    const nonce = auth.clusterNonce?.();
    if (nonce !== undefined) request.header.set(CLUSTER_NONCE_HEADER, nonce);
    return next(request);
  };
}

/** What `checkPeerCall` found wrong with a call, if anything. */
export interface PeerCallRefusal {
  readonly reason: PeerRefusal;
  readonly error: ConnectError;
}

/**
 * Checks a call's headers: the token first (constant-time compare), then the cluster id. Only a
 * caller that holds the token learns which cluster it reached.
 */
export function checkPeerCall(auth: PeerAuth, headers: Headers): PeerCallRefusal | undefined {
  if (auth.clusterToken !== undefined) {
    const presented = headers.get(CLUSTER_TOKEN_HEADER);
    if (presented === null) {
      return { reason: "unauthenticated", error: new ConnectError(`no cluster token: this cluster requires one (${CLUSTER_TOKEN_HEADER})`, Code.Unauthenticated) };
    }
    if (!secretsEqual(presented, auth.clusterToken)) {
      return { reason: "unauthenticated", error: new ConnectError("wrong cluster token", Code.Unauthenticated) };
    }
  } else if (headers.get(CLUSTER_TOKEN_HEADER) !== null) {
    // The caller's cluster runs with a token and this node without one (restarted without it): it
    // must not follow them, nor answer them in terms a forged call without the token could have set
    // (found in a black-box review: such a node took one unauthenticated append at term 100, then
    // deposed the tokened leader through its answers).
    return {
      reason: "cluster_mismatch",
      error: new ConnectError(
        "the caller's cluster uses a cluster token and this node was started without one: start it with the cluster's token (--cluster-token, --cluster-token-file or $KV_CLUSTER_TOKEN)",
        Code.FailedPrecondition,
      ),
    };
  }
  const clusterId = headers.get(CLUSTER_ID_HEADER);
  if (clusterId !== auth.clusterId) {
    const theirs = clusterId === null ? "no cluster id" : isClusterId(clusterId) ? `cluster ${clusterId}` : "a malformed cluster id";
    return {
      reason: "cluster_mismatch",
      error: new ConnectError(
        `cluster id mismatch: the call is from ${theirs}, this node belongs to cluster ${auth.clusterId}` +
          ` (a node keeps the id its data dir was created with, in its cluster-id file: one first started with another --cluster-token or other voters keeps that;` +
          ` if its data is not worth keeping, empty its data dir and start it again; a cluster restored from a snapshot, or grown by --join, has an id no --cluster derives,` +
          ` so a member of it whose data dir was emptied comes back by kv member remove N, then kv serve --join)`,
        Code.FailedPrecondition,
      ),
    };
  }
  const theirNonce = headers.get(CLUSTER_NONCE_HEADER);
  const ourNonce = auth.clusterNonce?.();
  if (theirNonce !== null && ourNonce !== undefined && theirNonce !== ourNonce) {
    return {
      reason: "cluster_mismatch",
      error: new ConnectError(
        `cluster nonce mismatch: the call is from a cluster whose first leader drew ${isClusterNonce(theirNonce) ? theirNonce : "a malformed nonce"}, this node's drew ${ourNonce}:` +
          ` the two clusters were bootstrapped apart, though their cluster ids are the same (was a data dir copied from another cluster?` +
          ` give a node of this cluster its own data dir back, or an empty one and --join)`,
        Code.FailedPrecondition,
      ),
    };
  }
  return undefined;
}
