/**
 * The peer transport's metrics, read from its counters at scrape time: calls and bytes per peer,
 * failures by Connect code, messages dropped at the queue's limits, and the peer server's requests
 * by status and refusals by reason.
 */
import type { MetricsRegistry } from "../lib/metrics.ts";
import type { ConnectTransportHandle } from "./connect-transport.ts";

/** Declares the transport's metrics on `registry`; they read `handle`'s counters at each scrape. */
export function registerTransportMetrics(
  registry: MetricsRegistry,
  handle: Pick<ConnectTransportHandle, "stats" | "serverStats">,
  /** Whether this node leads now: only a leader calls every member, so only its reachability is current. */
  leading: () => boolean = () => true,
): void {
  registry.collected("kv_peer_sent_bytes_total", "Bytes of request bodies sent to each peer.", "counter", ["peer"], () =>
    handle.stats().map((peer) => [{ peer: String(peer.peerId) }, peer.sentBytes] as const),
  );
  registry.collected("kv_peer_calls_delivered_total", "Calls each peer answered OK.", "counter", ["peer"], () =>
    handle.stats().map((peer) => [{ peer: String(peer.peerId) }, peer.deliveredCalls] as const),
  );
  registry.collected(
    "kv_peer_rpc_errors_total",
    "Calls to each peer that failed, by Connect code (unknown/unavailable/deadline_exceeded: unreachable; unauthenticated/failed_precondition/permission_denied: refused).",
    "counter",
    ["peer", "code"],
    () => handle.stats().flatMap((peer) => Object.entries(peer.failedCallsByCode).map(([code, count]) => [{ peer: String(peer.peerId), code }, count] as const)),
  );
  registry.collected("kv_peer_messages_dropped_total", "Messages to each peer dropped at the queue's limits, never sent.", "counter", ["peer"], () =>
    handle.stats().map((peer) => [{ peer: String(peer.peerId) }, peer.droppedMessages] as const),
  );
  registry.collected(
    "kv_peer_reachable",
    "On the leader only (it calls every member; another node's last call may be from an earlier term): 1 while its last call to the peer was answered, 0 while the peer is unreachable or refuses its calls.",
    "gauge",
    ["peer"],
    () =>
      leading()
        ? handle.stats().flatMap((peer) => (peer.reachability === "unknown" ? [] : [[{ peer: String(peer.peerId) }, peer.reachability === "reachable" ? 1 : 0] as const]))
        : [],
  );
  registry.collected("kv_peer_queued_messages", "Messages waiting to be sent to each peer.", "gauge", ["peer"], () =>
    handle.stats().map((peer) => [{ peer: String(peer.peerId) }, peer.queuedMessages] as const),
  );
  registry.collected("kv_peer_received_bytes_total", "Bytes of request bodies received on the peer port (as declared by Content-Length).", "counter", [], () => [
    [{}, handle.serverStats().receivedBytes],
  ]);
  registry.collected("kv_peer_requests_total", "Requests answered on the peer port, by HTTP status.", "counter", ["status"], () =>
    [...handle.serverStats().requestsByStatus].map(([status, count]) => [{ status: String(status) }, count] as const),
  );
  registry.collected(
    "kv_peer_requests_refused_total",
    "Peer calls refused before they were delivered: unauthenticated (no or wrong cluster token) or cluster_mismatch (another cluster id or nonce, or a token sent to a node started without one), before the body was read; not_a_peer (from outside this node's configuration, without its cluster nonce), misaddressed (a message for another node), stale_member (an older process of a member's id, added again since), stale_recipient (a leader's call meant for an older process of this node's id: the caller has not applied its addition again) or removed (a node this node knows was removed: it applied the entry that added it, and no longer lists it; told so, it stops serving).",
    "counter",
    ["reason"],
    () => Object.entries(handle.serverStats().refused).map(([reason, count]) => [{ reason }, count] as const),
  );
  registry.collected(
    "kv_peer_requests_from_non_members_total",
    "Peer calls taken from nodes outside this node's configuration: a member added while it was away (until it applies the change), or a node that is not a member.",
    "counter",
    [],
    () => [[{}, handle.serverStats().callsFromNonMembers]],
  );
}
