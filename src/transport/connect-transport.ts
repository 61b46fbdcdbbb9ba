/**
 * The `Transport` the node uses in production: a Connect server on its own peer port, and one
 * bounded sender per peer whose Connect client (binary format: over our own kept-alive sockets
 * for http peers, see socket-transport.ts; connect-web over Bun's fetch for https ones) puts a
 * timeout on every call.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createConnectTransport as createFetchConnectTransport } from "@connectrpc/connect-web";
import type { DescMessage } from "@bufbuild/protobuf";
import { RaftService } from "../gen/kv/v1/raft_pb.ts";
import { assert } from "../lib/assert.ts";
import { RESPONSE_BYTES_MAX } from "../lib/http-connection.ts";
import { createRateLimitedLog } from "../lib/rate-limited-log.ts";
import type { Message, NodeId } from "../raft/types.ts";
import { defaultDecodeLimits } from "./codec.ts";
import type { DecodeLimits } from "./codec.ts";
import { createPeerSender } from "./peer-sender.ts";
import type { PeerSender, PeerSenderLimits, PeerSenderStats } from "./peer-sender.ts";
import { checkPeerCall, peerAuthInterceptor } from "./peer-auth.ts";
import { createPeerCallGuard } from "./peer-call-guard.ts";
import { peerIdentityInterceptor, rememberedSince, REMOVED_REFUSAL_PREFIX } from "./peer-identity.ts";
import type { PeerAuth, PeerRefusal } from "./peer-auth.ts";
import { createPeerServer } from "./peer-server.ts";
import { createRaftServiceRoutes } from "./raft-service.ts";
import { createReplySlots, dispatchToPeer, replyWaitMs } from "./reply-slots.ts";
import { createSocketTransport } from "./socket-transport.ts";
import { wireBoundsProblem } from "./wire-bounds.ts";
import type { SocketTransport } from "./socket-transport.ts";
import { defaultSnapshotDecodeLimits } from "./snapshot-codec.ts";
import type { SnapshotDecodeLimits } from "./snapshot-codec.ts";
import { defaultSnapshotSendLimits, streamSnapshot } from "./snapshot-sender.ts";
import type { SnapshotSendLimits } from "./snapshot-sender.ts";
import type { MessageHandler, SendSnapshotOptions, SnapshotChunkHandler, SnapshotImage, Transport } from "./transport.ts";

/** Every bound of the Connect transport, sending and receiving. */
export interface ConnectTransportLimits extends PeerSenderLimits, DecodeLimits, SnapshotSendLimits, SnapshotDecodeLimits {
  /** Largest request body the peer server accepts. Must exceed `callBytesMax` and the largest append. */
  readonly requestBytesMax: number;
}

/** Each RaftService method's answer type, by the path connect-web calls it at. */
const answerTypes = new Map<string, DescMessage>(RaftService.methods.map((method) => [`/${RaftService.typeName}/${method.name}`, method.output]));

/**
 * An https peer's answer, read whole under the bounds the plain-http calls have
 * (socket-transport.ts): at most `RESPONSE_BYTES_MAX` bytes, and a protobuf body within the wire
 * bounds (wire-bounds.ts). Without them whatever answered at a peer's TLS address could make this
 * node read any number of bytes, and decode them into any number of objects (found in a review).
 * Throws past either bound, as the plain-http calls do (an internal error: the peer's answer is wrong).
 */
async function boundedAnswer(response: Response, input: string | URL | Request): Promise<Response> {
  const body = response.body;
  if (body === null) return response;
  const declared = Number(response.headers.get("content-length") ?? "0");
  if (declared > RESPONSE_BYTES_MAX) {
    await body.cancel();
    throw new ConnectError(`the answer of ${declared} bytes is over ${RESPONSE_BYTES_MAX}`, Code.Internal);
  }
  const chunks: Uint8Array[] = [];
  let length = 0;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    length += chunk.byteLength;
    if (length > RESPONSE_BYTES_MAX) throw new ConnectError(`the answer is over ${RESPONSE_BYTES_MAX} bytes`, Code.Internal);
    chunks.push(chunk);
  }
  const bytes = Buffer.concat(chunks, length);
  const path = new URL(input instanceof Request ? input.url : String(input)).pathname;
  const answerType = answerTypes.get(path);
  if (response.status === 200 && answerType !== undefined && response.headers.get("content-type") === "application/proto") {
    const tooMuch = wireBoundsProblem(answerType, bytes);
    if (tooMuch !== undefined) throw new ConnectError(`parse binary: ${tooMuch}`, Code.Internal);
  }
  return new Response(bytes, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/**
 * Defaults sized for the core's defaults (`appendBytesMax` 1 MiB, `inflightMessagesMax` 256): a
 * call holds at most 4 MiB of entries unless a single message is larger, and a peer's queue at most
 * 64 MiB; the server takes bodies up to 32 MiB.
 */
export const defaultConnectTransportLimits: ConnectTransportLimits = {
  ...defaultDecodeLimits,
  ...defaultSnapshotSendLimits,
  ...defaultSnapshotDecodeLimits,
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
   * The level of log commands this server applies (src/kv/command.ts), sent in every call and
   * answer; absent, none is sent, and peers take this server for one of a release before 0.9.0.
   */
  readonly commandLevel?: number;
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
  /** Stages each valid incoming snapshot chunk; see `SnapshotChunkHandler`. Without it, chunks are refused. */
  readonly onSnapshotChunk?: SnapshotChunkHandler;
  /** Deadline of every outgoing call. */
  readonly rpcTimeoutMs: number;
  readonly limits?: Partial<ConnectTransportLimits>;
  /**
   * Receives rare operational lines (a peer's reachability changed, calls refused: at most one line
   * per kind of refusal per {@link REFUSAL_LOG_INTERVAL_MS}). Defaults to console.warn.
   */
  readonly log?: (line: string) => void;
  /** Cluster id and token: sent on every call, and required of every call received. None: no checks. */
  readonly auth?: PeerAuth;
  /**
   * TLS for the peer port and for calls to peers (whose URLs are then https). With `ca`, mutual
   * TLS: the server requires callers' certificates signed by `ca`, and calls verify servers against
   * `ca` and present `cert`. Without `ca`, servers are verified against the system's CAs.
   */
  readonly tls?: ConnectTransportTls;
  /**
   * The index of the entry that added member `id` at its address, as this node records it (0: a
   * founding member; undefined: unknown), this node's own included (peer-identity.ts): sent on every
   * call, and a caller whose own is below the one recorded for it is refused (an older process of a
   * re-added id). None: nothing sent, nothing refused for it.
   */
  readonly memberSince?: (id: NodeId) => number | undefined;
  /**
   * Whether `id` is in the configuration this node applied, and the index it applied up to: a caller
   * outside it that says it was added at an index this node applied was removed since, and is told
   * so (`permission_denied`; peer-identity.ts `removedCaller`). None: not judged.
   */
  readonly configuration?: { isMember(id: NodeId): boolean; appliedIndex(): number };
  /**
   * A peer refused a call of ours as from a node removed from the configuration it applied (see
   * `configuration`): this node was removed, and may never hear of it otherwise (a learner removed
   * while its image was on its way).
   */
  readonly onRemoved?: (by: NodeId, detail: string) => void;
}

/** PEM contents (not paths) of this node's certificate, its key, and the peers' CA. */
export interface ConnectTransportTls {
  readonly cert: string;
  readonly key: string;
  readonly ca?: string;
}

/** Counters of the peer server, for metrics. */
export interface PeerServerStats {
  /** Requests answered, by HTTP status. */
  readonly requestsByStatus: ReadonlyMap<number, number>;
  /** Sum of the requests' declared body sizes. */
  readonly receivedBytes: number;
  /** Calls refused before they were delivered, by reason (see `CallRefusal`). */
  readonly refused: Readonly<Record<CallRefusal, number>>;
  /** Calls taken from nodes outside this node's configuration (see `checkSender`). */
  readonly callsFromNonMembers: number;
}

/** Per-peer counters: the sender's, plus the bytes of request bodies sent to that peer. */
export interface PeerStats extends PeerSenderStats {
  readonly sentBytes: number;
}

/** The longest a peer's call waits for its answer (see reply-slots.ts). */
export { REPLY_WAIT_MS_MAX } from "./reply-slots.ts";

/**
 * The deadline of a peer call for a node ticking every `tickMs` with `electionTicks` per election
 * timeout: one election timeout, and never below 200 ms (a loaded loopback answers within that).
 */
export function peerRpcTimeoutMs(tickMs: number, electionTicks: number): number {
  return Math.max(200, tickMs * electionTicks);
}

/**
 * Why the peer server refused a call before delivering it: its authentication (before its body was
 * read), a node outside this node's configuration without the cluster's nonce, or a message in it
 * addressed to another node (a peer whose configuration gives our address to another id), or an
 * older process of a member's id (`stale_member`: peer-identity.ts), or a call meant for an older
 * process of this node's id (`stale_recipient`: peer-identity.ts).
 */
export type CallRefusal = PeerRefusal | "not_a_peer" | "misaddressed" | "stale_member" | "stale_recipient" | "removed";

/** What the peer server logs at most once an interval: a kind of refused call, or calls from non-members. */
type PeerCallNote = CallRefusal | "from_non_member" | "peer_address_unknown";

/** Client URLs of peers kept at most (members' always). */
const peerHttpUrlsMax = 1_024;

/** The shortest time between two log lines about refused calls of one kind. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** A running Connect transport. */
export interface ConnectTransportHandle {
  readonly transport: Transport;
  /** The peer port actually bound. */
  readonly port: number;
  /** Per-peer counters (queue, window, deliveries, failures, drops, bytes) for peers sent to so far. */
  stats(): PeerStats[];
  /** The peer server's counters. */
  serverStats(): PeerServerStats;
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
  // As peerHttpUrls: each peer's command level as it last stated it, in a call or an answer.
  const peerCommandLevels = new Map<NodeId, number>();
  const notePeerCommandLevel = (from: NodeId, level: number): void => {
    if (!closed && (options.peers.has(from) || peerCommandLevels.has(from) || peerCommandLevels.size < peerHttpUrlsMax)) peerCommandLevels.set(from, level);
  };
  // Bounded: HTTP statuses are a small set, and refusals have two kinds.
  const requestsByStatus = new Map<number, number>();
  let receivedBytes = 0;
  const refused: Record<CallRefusal, number> = { unauthenticated: 0, cluster_mismatch: 0, not_a_peer: 0, misaddressed: 0, stale_member: 0, stale_recipient: 0, removed: 0 };
  let callsFromNonMembers = 0;
  const refusalLog = createRateLimitedLog<PeerCallNote>(log, REFUSAL_LOG_INTERVAL_MS, "calls");
  const auth = options.auth;
  const onSnapshotChunk = options.onSnapshotChunk;
  // Who may call, and who is told it was removed (src/transport/peer-call-guard.ts).
  const checkSender = createPeerCallGuard({
    selfId: options.selfId,
    knows: (id) => options.peers.has(id),
    ...(options.memberSince === undefined ? {} : { memberSince: options.memberSince }),
    ...(options.configuration === undefined ? {} : { configuration: options.configuration }),
    clusterNonce: () => auth?.clusterNonce?.(),
    closed: () => closed,
    refused,
    log: refusalLog,
    onNonMember: () => callsFromNonMembers++,
  });
  function noteMisaddressed(from: NodeId, to: NodeId): void {
    refused.misaddressed++;
    refusalLog("misaddressed", `refused a call from node ${from} with a message for node ${to}: node ${from}'s configuration gives this node's address (node ${options.selfId}) to node ${to}; check its --cluster`);
  }
  /**
   * Peers' calls waiting for their answer (reply-slots.ts): `send` puts messages for such a peer in
   * its oldest call's answer (up to one call's bounds), and `flush` answers them. A call the loop
   * does not flush in time (it stopped, or its replies wait for a slow fsync) is answered with what
   * it has well before its caller's deadline (`replyWaitMs`).
   */
  const replySlots = createReplySlots({
    callMessagesMax: limits.callMessagesMax,
    callBytesMax: limits.callBytesMax,
    waitMsMax: replyWaitMs(options.rpcTimeoutMs),
    nowMs: () => performance.now(),
    after: (delayMs, fn) => {
      const timer = setTimeout(fn, delayMs);
      return () => clearTimeout(timer);
    },
  });

  const server = createPeerServer({
    hostname: options.listen.hostname,
    port: options.listen.port,
    requestBytesMax: limits.requestBytesMax,
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    ...(auth === undefined
      ? {}
      : {
          authorize(headers: Headers, remoteAddress: string | undefined) {
            const refusal = checkPeerCall(auth, headers);
            if (refusal === undefined) return undefined;
            refused[refusal.reason]++;
            refusalLog(refusal.reason, `refused a peer call from ${remoteAddress ?? "an unknown address"}: ${refusal.error.rawMessage}`);
            return refusal.error;
          },
        }),
    onRequest(requestBytes, status) {
      receivedBytes += requestBytes;
      requestsByStatus.set(status, (requestsByStatus.get(status) ?? 0) + 1);
    },
    routes: createRaftServiceRoutes({
      selfId: options.selfId,
      selfHttpUrl: options.selfHttpUrl,
      ...(options.commandLevel === undefined ? {} : { commandLevel: options.commandLevel }),
      onCommandLevel: notePeerCommandLevel,
      decodeLimits: limits,
      onMessages(messages, from, fromHttpUrl) {
        // A non-member's URL is kept too (a member added while this node was away may lead: clients
        // are redirected to it), but not without bound: any id may call.
        if (!closed && fromHttpUrl !== "" && (options.peers.has(from) || peerHttpUrls.has(from) || peerHttpUrls.size < peerHttpUrlsMax)) peerHttpUrls.set(from, fromHttpUrl);
        if (!closed) options.onMessages(messages, from, fromHttpUrl);
      },
      awaitReply: (from) => replySlots.awaitReply(from),
      ...(options.memberSince === undefined ? {} : { memberSince: (id: NodeId) => (closed ? undefined : options.memberSince?.(id)) }),
      checkSender,
      onMisaddressed: noteMisaddressed,
      snapshotDecodeLimits: limits,
      ...(onSnapshotChunk === undefined ? {} : { onSnapshotChunk }),
    }),
  });

  // Created on first use, so that `peers` may still be completed after this returns: servers that
  // listen on OS-chosen ports learn each other's URLs only once all of them are up.
  const senders = new Map<NodeId, PeerSender>();
  // Each peer's Connect client, shared by its message sender and its snapshot transfers.
  const clients = new Map<NodeId, Client<typeof RaftService>>();
  // Aborts every snapshot transfer on close.
  const transfersAbort = new AbortController();
  const transfers = new Set<Promise<void>>();
  const sentBytes = new Map<NodeId, number>();
  const socketTransports = new Map<NodeId, SocketTransport>();
  /** The address each sender was made for (see `senderFor`). */
  const senderUrls = new Map<NodeId, string>();
  const clientTls = options.tls === undefined ? undefined : { cert: options.tls.cert, key: options.tls.key, ...(options.tls.ca === undefined ? {} : { ca: options.tls.ca }) };
  function senderFor(peerId: NodeId): PeerSender {
    let sender = senders.get(peerId);
    const baseUrl = options.peers.get(peerId);
    if (sender !== undefined) {
      if (senderUrls.get(peerId) === baseUrl) return sender;
      // The peer's address changed (removed, then added again elsewhere): before, its old sender
      // kept calling the old address. What it still held is dropped, as a lost call's would be.
      dropSender(peerId);
    }
    // The core addresses only voters, and the peers map is built from the same configuration.
    assert(baseUrl !== undefined && peerId !== options.selfId, `message to node ${peerId}, which is not a configured peer`);
    // Plain http peers are called over our own kept-alive sockets (socket-transport.ts); https
    // ones through connect-web over Bun's fetch, which takes client certificates and CAs in a
    // `tls` option. Both count the encoded request bodies they send.
    const countBytes = (bytes: number) => sentBytes.set(peerId, (sentBytes.get(peerId) ?? 0) + bytes);
    const interceptors = [
      ...(auth === undefined ? [] : [peerAuthInterceptor(auth)]),
      ...(options.memberSince === undefined
        ? []
        : [peerIdentityInterceptor(() => (closed ? undefined : options.memberSince?.(options.selfId)), rememberedSince(() => (closed ? undefined : options.memberSince?.(peerId))))]),
    ];
    let transport;
    // With TLS, every peer is called over TLS, whatever its URL says: an http URL (a member added
    // before members' schemes were checked) sent the cluster token and the log in cleartext, and
    // took whatever answered there for the peer (found in a review). Its peer port serves https.
    const target = clientTls !== undefined && baseUrl.startsWith("http:") ? `https:${baseUrl.slice("http:".length)}` : baseUrl;
    if (target.startsWith("http:")) {
      const socketTransport = createSocketTransport({
        baseUrl: target,
        idleConnectionsMax: limits.inflightCallsMax + 1,
        defaultTimeoutMs: options.rpcTimeoutMs,
        interceptors,
        onRequestBytes: countBytes,
      });
      socketTransports.set(peerId, socketTransport);
      transport = socketTransport;
    } else {
      const tlsFetch: typeof fetch = Object.assign(
        async (input: string | URL | Request, init?: RequestInit) => {
          if (init?.body instanceof Uint8Array) countBytes(init.body.byteLength);
          return boundedAnswer(await fetch(input, clientTls === undefined ? init : { ...init, tls: clientTls }), input);
        },
        { preconnect: fetch.preconnect },
      );
      transport = createFetchConnectTransport({ baseUrl: target, useBinaryFormat: true, defaultTimeoutMs: options.rpcTimeoutMs, fetch: tlsFetch, interceptors });
    }
    const client = createClient(RaftService, transport);
    clients.set(peerId, client);
    sender = createPeerSender({
      peerId,
      selfId: options.selfId,
      selfHttpUrl: options.selfHttpUrl,
      ...(options.commandLevel === undefined ? {} : { commandLevel: options.commandLevel }),
      client,
      rpcTimeoutMs: options.rpcTimeoutMs,
      limits,
      log,
      replyLimits: limits,
      onReply(messages) {
        if (!closed) options.onMessages(messages, peerId, "");
      },
      // A follower that never campaigns never calls us: its answers are where we learn its URL.
      onPeerHttpUrl(url) {
        if (!closed) peerHttpUrls.set(peerId, url);
      },
      onPeerCommandLevel: (level) => notePeerCommandLevel(peerId, level),
      onRefused(error) {
        if (!closed && error.code === Code.PermissionDenied && error.rawMessage.startsWith(REMOVED_REFUSAL_PREFIX)) options.onRemoved?.(peerId, error.rawMessage);
      },
    });
    senders.set(peerId, sender);
    senderUrls.set(peerId, baseUrl);
    return sender;
  }
  /** Closes peer `peerId`'s sender (its queue dropped, its calls aborted) and its connections: the next message makes new ones. */
  function dropSender(peerId: NodeId): void {
    const sender = senders.get(peerId);
    if (sender === undefined) return;
    void sender.close();
    senders.delete(peerId);
    senderUrls.delete(peerId);
    clients.delete(peerId);
    socketTransports.get(peerId)?.close();
    socketTransports.delete(peerId);
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
      for (const [peerId, group] of byPeer) {
        if (options.peers.has(peerId)) {
          dispatchToPeer(replySlots, peerId, group, (messages) => senderFor(peerId).enqueue(messages));
        } else if (!replySlots.reply(peerId, group)) {
          // A node whose address this one has not learned (see `checkSender`): it can only be
          // answered through a call of its own, and none waits.
          refusalLog("peer_address_unknown", `dropped ${group.length} message(s) to node ${peerId}, whose address this node has not learned (not in its configuration), with no call of its to answer`);
        }
      }
    },
    flush(callsUpTo?: number): void {
      replySlots.flush(callsUpTo);
    },
    callsArrived(): number {
      return replySlots.callsArrived();
    },
    sendSnapshot(to: NodeId, image: SnapshotImage, sendOptions: SendSnapshotOptions): Promise<void> {
      if (closed) return Promise.reject(new Error("the transport is closed"));
      senderFor(to); // creates the peer's client
      const client = clients.get(to) as Client<typeof RaftService>;
      const signal = sendOptions.signal === undefined ? transfersAbort.signal : AbortSignal.any([sendOptions.signal, transfersAbort.signal]);
      // A chunk must fit the body limit of a peer configured like us, with room for framing.
      const chunkLimits = { ...limits, snapshotChunkBytesMax: Math.min(limits.snapshotChunkBytesMax, Math.floor(limits.requestBytesMax / 2)) };
      const transfer = streamSnapshot(client, options.selfId, to, image, { ...sendOptions, signal }, chunkLimits);
      const tracked = transfer.then(
        () => {},
        () => {},
      );
      transfers.add(tracked);
      void tracked.finally(() => transfers.delete(tracked));
      return transfer;
    },
    peerHttpUrl(id: NodeId): string | undefined {
      return peerHttpUrls.get(id);
    },
    peerCommandLevel(id: NodeId): number | undefined {
      return peerCommandLevels.get(id);
    },
    forgetPeerCommandLevel(id: NodeId): void {
      peerCommandLevels.delete(id);
    },
    resetPeer(id: NodeId): void {
      if (closed) return;
      dropSender(id);
      // The old process's client URL: redirects and GET /members named it until the new one called.
      peerHttpUrls.delete(id);
    },
    close(): Promise<void> {
      if (closing === undefined) {
        closed = true;
        replySlots.close();
        transfersAbort.abort(new Error("the transport is closing"));
        closing = Promise.all([server.stop(), ...[...senders.values()].map((sender) => sender.close()), ...transfers]).then(() => {
          for (const socketTransport of socketTransports.values()) socketTransport.close();
        });
      }
      return closing;
    },
  };

  return {
    transport,
    port: server.port,
    stats: () =>
      [...senders.values()].map((sender) => {
        const stats = sender.stats();
        return { ...stats, sentBytes: sentBytes.get(stats.peerId) ?? 0 };
      }),
    serverStats: () => ({ requestsByStatus: new Map(requestsByStatus), receivedBytes, refused: { ...refused }, callsFromNonMembers }),
  };
}
