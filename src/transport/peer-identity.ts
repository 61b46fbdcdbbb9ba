/**
 * Which process of a node id is calling. Ids are the operator's, so a member removed and added
 * again under its id may leave its old process running (it was partitioned when it was removed, or
 * nobody stopped it); that process still calls its peers as that id. Every member's address records
 * the index of the entry that added it there (`MemberAddress.addedIndex` in src/kv/membership.ts: 0
 * for a founding member), the same on every node that applied it, and every call carries the
 * caller's own. A caller whose index is below the one this node records for its id is a process
 * from before that id was added again (`staleIncarnation`): a member only behind knows its own
 * index all the same (from its join, its own add, or an image), whatever address it is reached at.
 */
import type { Interceptor } from "@connectrpc/connect";

/** The header with the index of the entry that added the caller at its address, as the caller records it. */
export const MEMBER_SINCE_HEADER = "kv-member-since";
/** The header with the index the caller records for the node it calls: the process of that id it means. */
export const TARGET_SINCE_HEADER = "kv-member-target-since";

/**
 * Adds the caller's own `addedIndex` and the one it records for the node it calls to every outgoing
 * call; each only while known.
 */
export function peerIdentityInterceptor(ownSince: () => number | undefined, targetSince: () => number | undefined): Interceptor {
  return (next) => (request) => {
    const since = ownSince();
    if (since !== undefined) request.header.set(MEMBER_SINCE_HEADER, String(since));
    const target = targetSince();
    if (target !== undefined) request.header.set(TARGET_SINCE_HEADER, String(target));
    return next(request);
  };
}

/**
 * The caller's index when it is below `recordedSince`, the one this node records for the caller's
 * id: an older process of that id. Undefined when either is unknown (no header: a release before
 * this one, or a caller that does not know its own; none recorded here) or the caller's is as
 * recent or more (this node may be the one behind).
 */
export function staleIncarnation(headers: Headers, recordedSince: () => number | undefined): number | undefined {
  return below(indexIn(headers, MEMBER_SINCE_HEADER), recordedSince);
}

/**
 * This node's own index when the caller means a later process of its id (the index it records for
 * the node it calls is larger): this process was removed while it ran, and the id added again. A
 * node that still reaches the id at the old address (its --cluster says so) calls it there.
 */
export function supersededHere(headers: Headers, ownSince: () => number | undefined): { readonly own: number; readonly meant: number } | undefined {
  const meant = indexIn(headers, TARGET_SINCE_HEADER);
  if (meant === undefined) return undefined;
  const own = ownSince();
  return own !== undefined && own < meant ? { own, meant } : undefined;
}

/** `value` when it is below what `than` gives (both known). */
function below(value: number | undefined, than: () => number | undefined): number | undefined {
  if (value === undefined) return undefined;
  const bound = than();
  return bound !== undefined && value < bound ? value : undefined;
}

/** A header's index: a decimal of at most 15 digits; undefined when absent or malformed. */
function indexIn(headers: Headers, name: string): number | undefined {
  const text = headers.get(name);
  return text === null || !/^\d{1,15}$/.test(text) ? undefined : Number(text);
}
