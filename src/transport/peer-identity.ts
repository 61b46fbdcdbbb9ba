/**
 * Which process of a node id is calling. Ids are the operator's, so a member removed and added
 * again under its id may leave its old process running (it was partitioned when it was removed, or
 * nobody stopped it); that process still calls its peers as that id. Every call therefore carries
 * the peer URL the caller's configuration records for itself and the index of the last membership
 * change it applied. A receiver that has the caller's id at another address, as of a later change
 * than the caller's, is talking to a process from before that id was added again
 * (`staleIncarnation`).
 */
import type { Interceptor } from "@connectrpc/connect";

/** The header with the peer URL the caller's configuration records for the caller itself. */
export const PEER_URL_HEADER = "kv-peer-url";
/** The header with the index of the last membership change the caller applied (0: as bootstrapped). */
export const CONFIG_INDEX_HEADER = "kv-config-index";

/** What a node tells its peers of itself on every call. */
export interface MembershipView {
  /** The peer URL its configuration records for it; undefined when it has none (a learner before its join was recorded). */
  readonly peerUrl: string | undefined;
  /** The index of the last membership change it applied (`Membership.changedIndex`). */
  readonly configIndex: number;
}

/** Adds the caller's view of itself to every outgoing call; nothing while `view` has none. */
export function peerIdentityInterceptor(view: () => MembershipView | undefined): Interceptor {
  return (next) => (request) => {
    const own = view();
    if (own !== undefined) {
      if (own.peerUrl !== undefined) request.header.set(PEER_URL_HEADER, own.peerUrl);
      request.header.set(CONFIG_INDEX_HEADER, String(own.configIndex));
    }
    return next(request);
  };
}

/**
 * Whether a call from a member this node reaches at `configuredUrl` comes from an older process of
 * that id: it gives another URL for itself, and it applied an earlier configuration than this node's
 * `ours`. Anything less is not taken for one: no headers (a release before these), a URL spelled
 * otherwise with a configuration as recent (a proxy in this node's --cluster), or a configuration
 * more recent (this node is the one behind: the member moved and it has not applied that yet).
 */
export function staleIncarnation(headers: Headers, configuredUrl: string, ours: () => MembershipView | undefined): StaleIncarnation | undefined {
  const peerUrl = headers.get(PEER_URL_HEADER);
  if (peerUrl === null || peerUrl === configuredUrl) return undefined; // every call of a member at its address: nothing more to read
  const indexText = headers.get(CONFIG_INDEX_HEADER);
  const ourIndex = ours()?.configIndex;
  if (indexText === null || ourIndex === undefined || !/^\d{1,15}$/.test(indexText)) return undefined;
  const configIndex = Number(indexText);
  return configIndex < ourIndex ? { peerUrl, configIndex, ourIndex } : undefined;
}

/** A caller taken for an older process of a member's id: what it said of itself, and this node's configuration index. */
export interface StaleIncarnation {
  readonly peerUrl: string;
  readonly configIndex: number;
  readonly ourIndex: number;
}
