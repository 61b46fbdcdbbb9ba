/**
 * The `Transport` the node uses in production: a Connect server on its own peer port, and one
 * bounded sender per peer whose Connect client (connect-web over Bun's fetch, binary format)
 * puts a timeout on every call.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport as createFetchConnectTransport } from "@connectrpc/connect-web";
import { RaftService } from "../gen/kv/v1/raft_pb.ts";
import { assert } from "../lib/assert.ts";
import type { Message, NodeId } from "../raft/types.ts";
import { defaultDecodeLimits } from "./codec.ts";
import type { DecodeLimits } from "./codec.ts";
import { createPeerSender } from "./peer-sender.ts";
import type { PeerSender, PeerSenderLimits, PeerSenderStats } from "./peer-sender.ts";
import { createPeerServer } from "./peer-server.ts";
import { createRaftServiceRoutes } from "./raft-service.ts";
import type { MessageHandler, Transport } from "./transport.ts";

/** Every bound of the Connect transport, sending and receiving. */
export interface ConnectTransportLimits extends PeerSenderLimits, DecodeLimits {
  /** Largest request body the peer server accepts. Must exceed `callBytesMax` and the largest append. */
  readonly requestBytesMax: number;
}

/**
 * Defaults sized for the core's defaults (`appendBytesMax` 1 MiB, `inflightMessagesMax` 256): a
 * call holds at most 4 MiB of entries unless a single message is larger, and a peer's queue at most
 * 64 MiB; the server takes bodies up to 32 MiB.
 */
export const defaultConnectTransportLimits: ConnectTransportLimits = {
  ...defaultDecodeLimits,
  inflightCallsMax: 4,
  queuedMessagesMax: 4_096,
  queuedBytesMax: 64 << 20,
  callMessagesMax: 1_024,
  callBytesMax: 4 << 20,
  requestBytesMax: 32 << 20,
};

/** How to run the transport. */
export interface ConnectTransportOptions {
  readonly selfId: NodeId;
  /** Our client HTTP URL, sent with every call so that peers can redirect clients to us. */
  readonly selfHttpUrl: string;
  /**
   * Every other server's peer base URL, e.g. `http://127.0.0.1:5002`. Must not include `selfId`.
   * A peer's entry is read when a message is first sent to it, so a caller may add entries after
   * this returns (servers on OS-chosen ports), but must not change one once used.
   */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** Where the peer server listens; port 0 lets the OS pick. */
  readonly listen: { readonly hostname: string; readonly port: number };
  /** Receives each valid incoming call's messages; see `MessageHandler`. */
  readonly onMessages: MessageHandler;
  /** Deadline of every outgoing call. */
  readonly rpcTimeoutMs: number;
  readonly limits?: Partial<ConnectTransportLimits>;
  /** Receives rare operational lines (a peer's reachability changed). Defaults to console.warn. */
  readonly log?: (line: string) => void;
}

/** A running Connect transport. */
export interface ConnectTransportHandle {
  readonly transport: Transport;
  /** The peer port actually bound. */
  readonly port: number;
  /** Per-peer counters (queue, window, deliveries, failures, drops) for peers sent to so far. */
  stats(): PeerSenderStats[];
}

/** Starts the peer server and the per-peer senders. The server is listening when this returns. */
export function createConnectTransport(options: ConnectTransportOptions): ConnectTransportHandle {
  const limits: ConnectTransportLimits = { ...defaultConnectTransportLimits, ...options.limits };
  const log = options.log ?? ((line: string) => console.warn(line));
  assert(options.selfId >= 1, "selfId must be a node id");
  assert(!options.peers.has(options.selfId), `peers include this node (${options.selfId})`);
  assert(limits.requestBytesMax >= limits.callBytesMax, "requestBytesMax must hold a whole call");
  assert(limits.messagesPerRequestMax >= limits.callMessagesMax, "peers must accept the calls we send");

  let closed = false;
  let closing: Promise<void> | undefined;
  // Learned only for configured peers, so the map is bounded by the cluster's size.
  const peerHttpUrls = new Map<NodeId, string>();
  const server = createPeerServer({
    hostname: options.listen.hostname,
    port: options.listen.port,
    requestBytesMax: limits.requestBytesMax,
    routes: createRaftServiceRoutes({
      selfId: options.selfId,
      decodeLimits: limits,
      onMessages(messages, from, fromHttpUrl) {
        if (!closed && options.peers.has(from) && fromHttpUrl !== "") peerHttpUrls.set(from, fromHttpUrl);
        if (!closed) options.onMessages(messages, from, fromHttpUrl);
      },
    }),
  });

  // Created on first use, so that `peers` may still be completed after this returns: servers that
  // listen on OS-chosen ports learn each other's URLs only once all of them are up.
  const senders = new Map<NodeId, PeerSender>();
  function senderFor(peerId: NodeId): PeerSender {
    let sender = senders.get(peerId);
    if (sender !== undefined) return sender;
    const baseUrl = options.peers.get(peerId);
    // The core addresses only voters, and the peers map is built from the same configuration.
    assert(baseUrl !== undefined && peerId !== options.selfId, `message to node ${peerId}, which is not a configured peer`);
    const client = createClient(
      RaftService,
      createFetchConnectTransport({ baseUrl, useBinaryFormat: true, defaultTimeoutMs: options.rpcTimeoutMs }),
    );
    sender = createPeerSender({
      peerId,
      selfId: options.selfId,
      selfHttpUrl: options.selfHttpUrl,
      client,
      rpcTimeoutMs: options.rpcTimeoutMs,
      limits,
      log,
    });
    senders.set(peerId, sender);
    return sender;
  }

  const transport: Transport = {
    send(messages: readonly Message[]): void {
      if (closed) return;
      // Group by receiver, keeping each peer's messages in the order the core produced them.
      const byPeer = new Map<NodeId, Message[]>();
      for (const message of messages) {
        let group = byPeer.get(message.to);
        if (group === undefined) {
          group = [];
          byPeer.set(message.to, group);
        }
        group.push(message);
      }
      for (const [peerId, group] of byPeer) senderFor(peerId).enqueue(group);
    },
    peerHttpUrl(id: NodeId): string | undefined {
      return peerHttpUrls.get(id);
    },
    close(): Promise<void> {
      if (closing === undefined) {
        closed = true;
        closing = Promise.all([server.stop(), ...[...senders.values()].map((sender) => sender.close())]).then(() => {});
      }
      return closing;
    },
  };

  return {
    transport,
    port: server.port,
    stats: () => [...senders.values()].map((sender) => sender.stats()),
  };
}
