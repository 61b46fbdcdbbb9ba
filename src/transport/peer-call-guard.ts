/**
 * Who may call this node's peer service, decided before a call's messages are delivered (src/transport/raft-service.ts,
 * `checkSender`): shared by the server's transport (connect-transport.ts) and the simulator's
 * (src/sim/sim-transport.ts), so the simulator runs the checks the server runs.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { NodeId } from "../raft/types.ts";
import type { CallRefusal } from "./connect-transport.ts";
import { CLUSTER_NONCE_HEADER } from "./peer-auth.ts";
import { REMOVED_REFUSAL_PREFIX, removedCaller, staleIncarnation, staleRecipient } from "./peer-identity.ts";

/** What the guard reads of its node, and where it counts and says what it refused. */
export interface PeerCallGuardOptions {
  readonly selfId: NodeId;
  /** Whether `id` is in this node's peer map (its `--cluster`, or the configuration it applied). */
  readonly knows: (id: NodeId) => boolean;
  /** See `ConnectTransportOptions.memberSince`. */
  readonly memberSince?: (id: NodeId) => number | undefined;
  /** See `ConnectTransportOptions.configuration`. */
  readonly configuration?: { isMember(id: NodeId): boolean; appliedIndex(): number };
  /** The cluster's nonce, once this node applied one. */
  readonly clusterNonce: () => string | undefined;
  /** True once the transport closed (the node's storage may be closed too). */
  readonly closed: () => boolean;
  readonly refused: Record<CallRefusal, number>;
  /** Says a kind of call refused or taken, at most once an interval (`line` is built only then). */
  readonly log: (kind: CallRefusal | "from_non_member", line: string | (() => string)) => void;
  /** A call taken from a node outside the configuration. */
  readonly onNonMember: () => void;
}

/** The check of a call's sender (`leads`: the call holds a leader's message): throws the ConnectError it is refused with, or returns to take it. */
export function createPeerCallGuard(o: PeerCallGuardOptions): (from: NodeId, headers: Headers, leads: boolean) => void {
  /**
   * A call from a node outside this node's configuration is taken, and answered through the call
   * (the reply slots: no address is needed). The configuration is the log's business: a voter that
   * was down while a member was added learns of it only from the log, and after a change of leader
   * only that member may be the one to send it. Refused (0.6.0 and before), such a voter never
   * caught up while the new member led, and a majority that needed its vote never elected anyone
   * (found in a review). A node that is not a member at all (removed, or never added) gets its
   * answers too: Raft keeps it from disrupting the cluster (its stale term is refused; a pre-vote is
   * not granted while a leader is heard from). Said in the log, at most once an interval.
   *
   * Such a caller must carry the cluster's nonce, once this node applied one (peer-auth.ts): a
   * cluster bootstrapped apart with the same voter ids and no token derives the same cluster id,
   * and its first leader calls before it applied its own nonce; taken, such a call's term deposed
   * this cluster's leader (found in a black-box review). A member added while this node was away
   * has applied the nonce before it can lead, so it still gets through.
   */
  function checkSender(from: NodeId, headers: Headers, leads: boolean): void {
    refuseRemoved(from, headers);
    if (o.knows(from)) {
      refuseStaleMember(from, headers);
      if (leads) refuseStaleRecipient(from, headers);
      return;
    }
    const ours = o.clusterNonce();
    if (ours !== undefined && headers.get(CLUSTER_NONCE_HEADER) !== ours) {
      o.refused.not_a_peer++;
      o.log(
        "not_a_peer",
        `refused a call from node ${from}, which is not in this node's configuration and does not carry this cluster's nonce: ` +
          `a node of another cluster bootstrapped with the same ids and no --cluster-token (give each cluster its own token), or a node that never applied this cluster's first entries`,
      );
      throw new ConnectError(`call from node ${from}, outside node ${o.selfId}'s configuration, without this cluster's nonce`, Code.FailedPrecondition);
    }
    if (leads) refuseStaleRecipient(from, headers);
    o.onNonMember();
    o.log(
      "from_non_member",
      `took a call from node ${from}, which is not in this node's configuration (--cluster, or the membership it applied): ` +
        `a member added while this node was away, which it learns of from the log, or one that is not a member (removed, or never added), which gets answers and is sent nothing. ` +
        `If this lasts and node ${from} should be a member, empty its data dir and start it with --join`,
    );
  }
  /**
   * Refuses a call from an older process of member `from`'s id (peer-identity.ts): removed while it
   * was down or cut off, it never heard of it, and the id was added again. Taken, its calls were
   * answered with the member's heartbeats and vote requests, which it answered as the member (a
   * second vote in one term, a quorum that is not one), and its client URL was taken for the
   * member's (found in a review). A member only behind knows its own index, so it is never refused.
   * Refused as a removed caller is (`permission_denied`, see `refuseRemoved`), which it is: its
   * transport tells its node, which then serves no more (unless it leads: src/node/membership.ts
   * `removedByPeer`; cut off, it steps down within two election timeouts). Refused `failed_precondition` before, it
   * went on answering its clients from its state of before its removal, and a watch stream open on
   * it never moved again (found by the simulator, src/sim/node-sim.ts `detach`).
   */
  function refuseStaleMember(from: NodeId, headers: Headers): void {
    const memberSince = o.memberSince;
    if (memberSince === undefined || o.closed()) return; // closed: the node's storage may be too
    const stale = staleIncarnation(headers, () => memberSince(from));
    if (stale === undefined) return;
    o.refused.stale_member++;
    const message =
      `node ${from} was added again at index ${stale.recorded}, and this call comes from a process of it added at index ${stale.since}, before: ` +
      `it was removed while it ran, and never heard of it; stop it (its data dir is not the member's)`;
    o.log("stale_member", `refused a call: ${message}`);
    throw new ConnectError(`${REMOVED_REFUSAL_PREFIX}${message}`, Code.PermissionDenied);
  }
  /**
   * Refuses a leader's call meant for an older process of this node's id (peer-identity.ts
   * `staleRecipient`): the caller has not applied this node's addition again, so what it says of
   * this node's log (a heartbeat's or an append's commit, an image, a transfer's timeout) is what
   * the older process had. A leader cut off in a minority sent this process, new on an empty disk
   * at the old one's address, heartbeats whose commit index said what the old one had
   * acknowledged, and it stopped for lost data (found by the simulator). Only calls holding a
   * leader's messages (`leads`, src/raft/types.ts `fromLeader`) are refused: a follower behind
   * answers this node's appends and votes, and refused, it never caught up while this node led
   * (found in a code review). Refused `failed_precondition`: the caller is not removed, only behind.
   */
  function refuseStaleRecipient(from: NodeId, headers: Headers): void {
    const memberSince = o.memberSince;
    if (memberSince === undefined || o.closed()) return;
    const stale = staleRecipient(headers, () => memberSince(o.selfId));
    if (stale === undefined) return;
    o.refused.stale_recipient++;
    const message =
      `node ${from} calls node ${o.selfId} as added at index ${stale.addressed}, and this process was added at index ${stale.own}: ` +
      `what node ${from} sends was meant for an older process of id ${o.selfId}; it has not applied the addition again yet`;
    o.log("stale_recipient", `refused a call: ${message}`);
    throw new ConnectError(message, Code.FailedPrecondition);
  }
  /**
   * Refuses a call from a node this node knows was removed (see `ConnectTransportOptions.configuration`),
   * with `permission_denied`, which its transport hands to its node (`onRemoved`): the leader's last
   * message to a member it removes reaches only one it replicates to, so a learner removed while its
   * image was on its way named its leader and answered healthy for good (found in a black-box review).
   * Judged by the configuration this node applied, not by whom it calls (`--cluster` keeps
   * addresses of founding members after their removal).
   */
  function refuseRemoved(from: NodeId, headers: Headers): void {
    const configuration = o.configuration;
    // A member's call (nearly every call) is decided by the first test alone.
    if (configuration === undefined || o.closed() || configuration.isMember(from)) return;
    // Only a caller of this cluster (its nonce, once this node applied one) is told it was removed:
    // a node of a cluster bootstrapped apart with the same ids is refused as not_a_peer after this.
    const ourNonce = o.clusterNonce();
    if (ourNonce !== undefined && headers.get(CLUSTER_NONCE_HEADER) !== ourNonce) return;
    const since = removedCaller(headers, configuration.appliedIndex());
    if (since === undefined) return;
    o.refused.removed++;
    const message = `${REMOVED_REFUSAL_PREFIX}node ${from} was added at index ${since}, and the configuration node ${o.selfId} applied since no longer lists it; stop it (to serve again, empty its data dir and start it with --join)`;
    o.log("removed", `refused a call: ${message}`);
    throw new ConnectError(message, Code.PermissionDenied);
  }
  return checkSender;
}
