/**
 * Which process of a node id is calling. Ids are the operator's, so a member removed and added
 * again under its id may leave its old process running (it was partitioned when it was removed, or
 * nobody stopped it); that process still calls its peers as that id. Every member's address records
 * the index of the entry that added it there (`MemberAddress.addedIndex` in src/kv/membership.ts: 0
 * for a founding member), the same on every node that applied it, and every call carries the
 * caller's own. A caller whose index is below the one this node records for its id is a process
 * from before that id was added again (`staleIncarnation`): a member only behind knows its own
 * index all the same (from its join, its own add, or an image), whatever address it is reached at.
 *
 * The other way round, every call also carries the index the caller records for the node it calls
 * (`RECIPIENT_SINCE_HEADER`). A caller whose record is below the receiver's own index has not
 * applied the receiver's addition again: what it says as a leader of the receiver's log was meant
 * for the older process of that id (`staleRecipient`). A leader cut off in a minority, which never
 * applied the removal nor the addition, sent the new process at the old address heartbeats whose
 * commit index said what the old one had acknowledged; the new one, on an empty disk, stopped for
 * lost data (src/node/kv-node.ts `lostLogError`; found by the simulator, test/node-sim.test.ts).
 */
import type { Interceptor } from "@connectrpc/connect";

/** The header with the index of the entry that added the caller at its address, as the caller records it. */
export const MEMBER_SINCE_HEADER = "kv-member-since";

/** The header with the index of the entry that added the called node at its address, as the caller records it. */
export const RECIPIENT_SINCE_HEADER = "kv-recipient-since";

/**
 * Adds the caller's own `addedIndex` to every outgoing call, and the one it records for the peer it
 * calls (`recipientSince`); nothing for either while it has none (unknown).
 */
export function peerIdentityInterceptor(ownSince: () => number | undefined, recipientSince: () => number | undefined): Interceptor {
  return (next) => (request) => {
    setIdentityHeaders(request.header, ownSince(), recipientSince());
    return next(request);
  };
}

/**
 * What a caller records for the node it calls, for `RECIPIENT_SINCE_HEADER`: `recorded()` while it
 * records one, else the last it recorded. A peer just removed stays reachable for a while, and what
 * was queued for it was meant for the process of that index: sent with no index, such a message
 * reached a new process at the old address unchecked (found in a code review).
 */
export function rememberedSince(recorded: () => number | undefined): () => number | undefined {
  let last: number | undefined;
  return () => {
    const since = recorded();
    if (since !== undefined) last = since;
    return since ?? last;
  };
}

/** Sets the two headers of `peerIdentityInterceptor` (the simulated transport sets them so too). */
export function setIdentityHeaders(headers: Headers, since: number | undefined, recipientSince: number | undefined): void {
  if (since !== undefined) headers.set(MEMBER_SINCE_HEADER, String(since));
  if (recipientSince !== undefined) headers.set(RECIPIENT_SINCE_HEADER, String(recipientSince));
}

/**
 * The caller's index and the one this node records for the caller's id (`recordedSince`, asked only
 * when the call carries one) when the caller's is below it: an older process of that id. Undefined
 * when either is unknown (no header: a release before this one, or a caller that does not know its
 * own; none recorded here) or the caller's is as recent or more (this node may be the one behind).
 */
export function staleIncarnation(headers: Headers, recordedSince: () => number | undefined): { readonly since: number; readonly recorded: number } | undefined {
  const since = callerSince(headers);
  if (since === undefined) return undefined;
  const recorded = recordedSince();
  return recorded !== undefined && since < recorded ? { since, recorded } : undefined;
}

/** The index the caller says it was added at, or undefined when it does not say. */
export function callerSince(headers: Headers): number | undefined {
  return indexHeader(headers, MEMBER_SINCE_HEADER);
}

function indexHeader(headers: Headers, name: string): number | undefined {
  const text = headers.get(name);
  return text === null || !/^\d{1,15}$/.test(text) ? undefined : Number(text);
}

/**
 * The index the caller records for this node and this node's own (`ownSince`) when the caller's is
 * below it: the call was meant for an older process of this node's id. Undefined when either is
 * unknown (no header: a release before this one, or a caller that records none) or the caller's is
 * as recent or more.
 */
export function staleRecipient(headers: Headers, ownSince: () => number | undefined): { readonly addressed: number; readonly own: number } | undefined {
  const addressed = indexHeader(headers, RECIPIENT_SINCE_HEADER);
  if (addressed === undefined) return undefined;
  const own = ownSince();
  return own !== undefined && addressed < own ? { addressed, own } : undefined;
}

/**
 * Whether the caller says it was added at an index above the one this node records for its id
 * (`recordedSince`): this node has not applied the caller's addition again, so its leader messages
 * for that id were meant for an older process of it, and ride no answer to this one
 * (src/raft/types.ts `fromLeader`).
 */
export function callerAhead(headers: Headers, recordedSince: number | undefined): boolean {
  const since = callerSince(headers);
  return since !== undefined && recordedSince !== undefined && since > recordedSince;
}

/**
 * Whether a caller outside this node's configuration was removed from it: it says it was added at
 * an index this node has applied (`appliedIndex`), so the entry that added it is in this node's
 * configuration's history, and a later one took it out. A caller added at an index this node has
 * not reached yet (this node is behind), or that does not say, is not judged.
 */
export function removedCaller(headers: Headers, appliedIndex: number): number | undefined {
  const since = callerSince(headers);
  return since !== undefined && since <= appliedIndex ? since : undefined;
}

/**
 * How a peer's refusal of a removed caller begins (with `permission_denied`): the caller takes
 * itself for removed only on this, never on a bare 403, which a proxy or a policy in between may
 * answer (found in review).
 */
export const REMOVED_REFUSAL_PREFIX = "removed from the cluster: ";
