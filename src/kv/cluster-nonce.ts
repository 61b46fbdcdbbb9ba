/**
 * The cluster's nonce: 16 hex digits that the first leader of a cluster draws at random and writes
 * through the log (a put only if absent, so the first one applied stays), so that two clusters
 * bootstrapped apart never share it. Their cluster ids may: an id hashes only the voter ids and the
 * cluster token (src/lib/cluster-id.ts), so two clusters with the same ids and no token got the same
 * one, and a data dir copied from one into the other was taken for a member and served the other
 * cluster's state machine (found by an operator's review). Once a node applied the nonce, its peer
 * calls carry it, and a node that applied another refuses them (src/transport/peer-auth.ts).
 *
 * It lives in the state machine, so it is replicated, snapshotted and kept in backups, under the
 * lease prefix: releases up to 0.5.0 already hide every key there from listings and watches, so a
 * cluster of mixed versions shows clients nothing new while it upgrades.
 */
import { leaseKeyPrefix } from "./command.ts";

export { isClusterNonce } from "../lib/cluster-id.ts";

/** The state machine's row that holds the nonce. */
export const clusterNonceKey = `${leaseKeyPrefix}cluster-nonce`;
