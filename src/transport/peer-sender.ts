/**
 * The client side for one peer: a bounded queue and a bounded window of calls in flight.
 * Each peer has its own sender, so a slow or dead peer never delays another. Raft tolerates lost
 * messages, so this sender never retries and, at its limits, drops the oldest messages queued:
 * the newest messages carry the newest terms and commit indexes, and memory stays bounded.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { RaftService } from "../gen/kv/v1/raft_pb.ts";
import { assert } from "../lib/assert.ts";
import type { Message, NodeId } from "../raft/types.ts";
import { TransportDecodeError, statedCommandLevel, defaultDecodeLimits, fromSendResponse, sendResponseHttpUrl, toSendRequest } from "./codec.ts";
import type { DecodeLimits } from "./codec.ts";

/** Bounds on one peer's sender. */
export interface PeerSenderLimits {
  /** Calls in flight to a reachable peer; an unreachable one gets a single probe call at a time. */
  readonly inflightCallsMax: number;
  /** Messages waiting for a free slot in the window; beyond it the oldest are dropped. */
  readonly queuedMessagesMax: number;
  /** Estimated bytes waiting (entry data plus a per-message allowance); beyond it the oldest are dropped. */
  readonly queuedBytesMax: number;
  /** Messages in one call. */
  readonly callMessagesMax: number;
  /** Estimated bytes in one call; a single larger message still goes, alone. */
  readonly callBytesMax: number;
}

/** Whether the last call to a peer got through. `unknown` until the first call ends. */
export type PeerReachability = "unknown" | "reachable" | "unreachable" | "refusing";

/** Counters for one peer, for status pages and tests. */
export interface PeerSenderStats {
  readonly peerId: NodeId;
  readonly reachability: PeerReachability;
  readonly queuedMessages: number;
  readonly queuedBytes: number;
  readonly inflightCalls: number;
  /** Calls the peer answered OK, and the messages they carried. */
  readonly deliveredCalls: number;
  readonly deliveredMessages: number;
  /** Calls that failed (unreachable, timed out, refused), and the messages they carried. */
  readonly failedCalls: number;
  readonly failedMessages: number;
  /** Failed calls by Connect code (`unavailable`, `unauthenticated`, ...): at most one key per code. */
  readonly failedCallsByCode: Readonly<Record<string, number>>;
  /** Messages dropped from the queue at its limits, never sent. */
  readonly droppedMessages: number;
}

/** What a sender needs: a Connect client bound to the peer's URL, and who we are. */
export interface PeerSenderOptions {
  readonly peerId: NodeId;
  readonly selfId: NodeId;
  readonly selfHttpUrl: string;
  /** Our command level, sent in every call (`SendRequest.command_level`; absent: not sent). */
  readonly commandLevel?: number;
  readonly client: Client<typeof RaftService>;
  readonly rpcTimeoutMs: number;
  readonly limits: PeerSenderLimits;
  /** Receives one line per change of reachability, never one per call. */
  readonly log: (line: string) => void;
  /** Receives the validated messages the peer answered a call with (only when there are some). Default: dropped. */
  readonly onReply?: (messages: Message[]) => void;
  /** Receives the client URL the peer's answer named (only when it named one). */
  readonly onPeerHttpUrl?: (url: string) => void;
  /** Receives the command level each valid answer states (1 for a peer that does not say). */
  readonly onPeerCommandLevel?: (level: number) => void;
  /** A call the peer answered with a refusal (not unreachable, not past its deadline). */
  readonly onRefused?: (error: ConnectError) => void;
  /** Bounds on what an answer may carry (default `defaultDecodeLimits`). */
  readonly replyLimits?: DecodeLimits;
}

/** Sends messages to one peer. */
export interface PeerSender {
  /** Queues messages (all addressed to this peer) and starts calls while the window has room. */
  enqueue(messages: readonly Message[]): void;
  stats(): PeerSenderStats;
  /** Cancels calls in flight, drops the queue, and resolves once every call has ended. */
  close(): Promise<void>;
}

/** Bytes a message costs beyond its entries' data: header, numbers, framing. A rough allowance. */
const messageOverheadBytes = 64;
/** Bytes each entry costs beyond its data. */
const entryOverheadBytes = 24;

/**
 * Bytes per millisecond a call is allowed, on top of `rpcTimeoutMs`, for what it carries: about
 * 10 MB/s, far below loopback and LAN rates, covering a receiver busy with its own disk.
 */
const callBytesPerMsAllowed = 10_000;
/** Calls at or under this size get the bare `rpcTimeoutMs` (heartbeats, votes, small appends). */
const callBytesFree = 64 * 1024;

/**
 * The deadline of a call carrying `bytes`: `rpcTimeoutMs`, plus time for the bytes past the first
 * 64 KiB. A call past its deadline is lost to Raft (the peer is taken for unreachable, the window
 * shrinks to one call, and the follower is probed again from the leader's disk); at 256 KB values
 * a 200 ms deadline cut one call in five of 1-4 MiB appends, each then sent again (BENCHMARKS.md).
 */
export function callDeadlineMs(rpcTimeoutMs: number, bytes: number): number {
  return rpcTimeoutMs + Math.ceil(Math.max(0, bytes - callBytesFree) / callBytesPerMsAllowed);
}

/** A rough size of a message on the wire, to bound queues and calls by bytes, not only by count. */
export function messageBytesEstimate(message: Message): number {
  switch (message.type) {
    case "append": {
      let bytes = messageOverheadBytes;
      for (const entry of message.entries) bytes += entryOverheadBytes + entry.data.byteLength;
      return bytes;
    }
    case "heartbeat":
    case "heartbeat-response":
    case "read-index":
    case "read-index-response":
      return messageOverheadBytes + message.readContext.length * 3; // UTF-8 needs at most 3 bytes per UTF-16 unit
    default:
      return messageOverheadBytes;
  }
}

/**
 * Calls in flight on a peer's control lane (see `createPeerSender`): two, so a heartbeat round
 * need not wait for the answer to the one before, which a follower may hold for up to twice
 * `replyWaitMs` (src/transport/reply-slots.ts) while its acks wait for an fsync.
 */
const controlCallsMax = 2;

/** What a connection cut during its opening most often means between peers on TLS. */
const RESET_HINT = "; with TLS, a peer that refuses this node's certificate (expired, or not signed by its --peer-ca) closes the connection this way";

/** Kinds of reason an unreachable peer's log names at most until it is reachable again. */
const UNREACHABLE_KINDS_SAID_MAX = 8;

/**
 * The kind of an unreachable peer's reason: the socket transport's code ("connection to h:p lost
 * (network:ECONNREFUSED)" is ECONNREFUSED), else its first words ("certificate has expired").
 */
export function reasonKind(detail: string): string {
  const network = /\bnetwork:([A-Za-z0-9_]+)/.exec(detail);
  if (network !== null) return network[1] as string;
  const colon = detail.indexOf(":");
  return (colon === -1 ? detail : detail.slice(0, colon)).trim().slice(0, 80);
}

/** Calls in a row past their deadline before a reachable peer is taken for unreachable. */
export const deadlineMissesMax = 3;

/** Creates the sender for one peer. */
export function createPeerSender(options: PeerSenderOptions): PeerSender {
  const { peerId, limits } = options;
  assert(limits.inflightCallsMax >= 1 && limits.callMessagesMax >= 1, "peer sender needs room for one call of one message");
  assert(limits.queuedMessagesMax >= 1 && limits.queuedBytesMax >= 1 && limits.callBytesMax >= 1, "peer sender bounds must be positive");
  assert(options.rpcTimeoutMs > 0, "rpcTimeoutMs must be positive");

  /**
   * Two lanes, each its own queue and window of calls: appends, and the rest (heartbeats, votes,
   * acks, read-index messages). A heartbeat queued behind
   * a full window of 4 MiB appends to a busy follower waited for them, past the follower's election
   * timeout: at 256 KB values followers campaigned every few seconds (BENCHMARKS.md). The control
   * lane has `controlCallsMax` calls in flight; Raft tolerates the reordering between lanes.
   * Invariant per lane: `bytes` is the sum of `sizes`; both arrays run parallel to `queued`.
   */
  interface Lane {
    queued: Message[];
    sizes: number[];
    bytes: number;
    inflight: number;
    /** Calls in flight at most while the peer is reachable. */
    readonly windowCalls: number;
  }
  const dataLane: Lane = { queued: [], sizes: [], bytes: 0, inflight: 0, windowCalls: limits.inflightCallsMax };
  const controlLane: Lane = { queued: [], sizes: [], bytes: 0, inflight: 0, windowCalls: controlCallsMax };
  const lanes = [controlLane, dataLane] as const;
  let reachability: PeerReachability = "unknown";
  /** Calls past their deadline since the last answered one (see noteFailure). */
  let deadlineMissesInRow = 0;
  /** The client URL the peer last named in an answer (see `onPeerHttpUrl`). */
  let knownPeerHttpUrl = "";
  let lastRefusal = "";
  /** The kinds of reason said since the peer was last reachable (see `setReachability`). */
  const unreachableKindsSaid = new Set<string>();
  let closed = false;
  const abort = new AbortController();
  const calls = new Set<Promise<void>>();
  const counters = { deliveredCalls: 0, deliveredMessages: 0, failedCalls: 0, failedMessages: 0, droppedMessages: 0 };
  const failedCallsByCode: Record<string, number> = {};

  function laneOf(message: Message): Lane {
    // Every append, even one carrying only a commit index, stays in order behind the appends
    // before it: one overtaking them names a previous entry the follower does not have yet, is
    // rejected, and sends the leader back to probing (and resending) from the follower's match.
    return message.type === "append" ? dataLane : controlLane;
  }

  function enqueue(messages: readonly Message[]): void {
    if (closed || messages.length === 0) return;
    for (const message of messages) {
      assert(message.to === peerId, `message to ${message.to} queued for peer ${peerId}`);
      const size = messageBytesEstimate(message);
      const lane = laneOf(message);
      lane.queued.push(message);
      lane.sizes.push(size);
      lane.bytes += size;
    }
    for (const lane of lanes) dropOldestBeyondLimits(lane);
    pump();
  }

  function dropOldestBeyondLimits(lane: Lane): void {
    let dropCount = 0;
    let droppedBytes = 0;
    while (lane.queued.length - dropCount > limits.queuedMessagesMax || lane.bytes - droppedBytes > limits.queuedBytesMax) {
      droppedBytes += lane.sizes[dropCount] as number;
      dropCount++;
    }
    if (dropCount === 0) return;
    lane.queued = lane.queued.slice(dropCount);
    lane.sizes = lane.sizes.slice(dropCount);
    lane.bytes -= droppedBytes;
    counters.droppedMessages += dropCount;
  }

  /** Starts calls while a lane's window has room. A peer not known to be up gets one probe call at a time on each lane. */
  function pump(): void {
    for (const lane of lanes) {
      const window = reachability === "reachable" ? lane.windowCalls : 1;
      while (!closed && lane.queued.length > 0 && lane.inflight < window) startCall(lane, takeBatch(lane));
    }
  }

  /** The oldest queued messages of a lane, up to the per-call bounds, in order; at least one. */
  function takeBatch(lane: Lane): { batch: Message[]; bytes: number } {
    let batchCount = 0;
    let batchBytes = 0;
    while (batchCount < lane.queued.length && batchCount < limits.callMessagesMax) {
      const size = lane.sizes[batchCount] as number;
      if (batchCount > 0 && batchBytes + size > limits.callBytesMax) break;
      batchBytes += size;
      batchCount++;
    }
    assert(batchCount >= 1, "empty batch");
    const batch = lane.queued.slice(0, batchCount);
    lane.queued = lane.queued.slice(batchCount);
    lane.sizes = lane.sizes.slice(batchCount);
    lane.bytes -= batchBytes;
    return { batch, bytes: batchBytes };
  }

  function startCall(lane: Lane, { batch, bytes }: { batch: Message[]; bytes: number }): void {
    lane.inflight++;
    const request = toSendRequest(options.selfId, options.selfHttpUrl, batch, options.commandLevel);
    const call = options.client
      .send(request, { timeoutMs: callDeadlineMs(options.rpcTimeoutMs, bytes), signal: abort.signal })
      .then(
        (response) => {
          counters.deliveredCalls++;
          counters.deliveredMessages += batch.length;
          if (closed) return;
          let replies: Message[];
          let peerHttpUrl = "";
          try {
            replies = fromSendResponse(response, peerId, options.selfId, options.replyLimits ?? defaultDecodeLimits);
            // Checked (a URL parse) only when it says something new.
            if (response.fromHttpUrl !== knownPeerHttpUrl) peerHttpUrl = sendResponseHttpUrl(response, options.replyLimits ?? defaultDecodeLimits);
          } catch (error: unknown) {
            if (!(error instanceof TransportDecodeError)) throw error;
            // The peer took our messages but answered with something we will not hand the core.
            setReachability("refusing", `invalid answer: ${error.message}`);
            return;
          }
          deadlineMissesInRow = 0;
          setReachability("reachable", "");
          if (peerHttpUrl !== "") {
            knownPeerHttpUrl = peerHttpUrl;
            options.onPeerHttpUrl?.(peerHttpUrl);
          }
          options.onPeerCommandLevel?.(statedCommandLevel(response.commandLevel));
          if (replies.length > 0) options.onReply?.(replies);
        },
        (error: unknown) => {
          counters.failedCalls++;
          counters.failedMessages += batch.length;
          const connectError = ConnectError.from(error);
          const code = codeToString(connectError.code);
          failedCallsByCode[code] = (failedCallsByCode[code] ?? 0) + 1;
          if (!closed) noteFailure(connectError);
        },
      )
      .finally(() => {
        lane.inflight--;
        calls.delete(call);
        pump();
      });
    calls.add(call);
  }

  function noteFailure(error: ConnectError): void {
    // A call past its deadline from a peer that answers others is a slow answer, not a dead peer:
    // a follower whose loop lags 250 ms (256 KB values) was taken for unreachable, its window cut
    // to one call, and the leader's heartbeats waited behind it. It takes deadlineMissesMax in a row.
    if (error.code === Code.DeadlineExceeded && reachability === "reachable" && ++deadlineMissesInRow < deadlineMissesMax) return;
    switch (error.code) {
      // connect-web reports a refused connection as Unknown, connect-node as Unavailable; a
      // blackholed peer shows up as DeadlineExceeded. All mean "peer unreachable".
      case Code.Unknown:
      case Code.Unavailable:
      case Code.DeadlineExceeded:
      case Code.Canceled:
        setReachability("unreachable", error.rawMessage);
        return;
      default:
        // The peer answered but refused: a bug or a version or configuration mismatch.
        setReachability("refusing", `${Code[error.code]}: ${error.rawMessage}`);
        options.onRefused?.(error);
        return;
    }
  }

  function setReachability(next: PeerReachability, detail: string): void {
    const previous = reachability;
    const refusalChanged = next === "refusing" && detail !== lastRefusal;
    // An unreachable peer whose reason changes kind (refused, then a certificate failing its
    // check) is said again: its first reason went stale (found in a black-box review: a peer's
    // expired certificate showed only as the ECONNREFUSED of its restart, for as long as it lasted).
    // Each kind once while the peer stays unreachable: reasons that alternate (refused, timed out)
    // are not a line per call (found in review).
    const kind = next === "unreachable" ? reasonKind(detail) : "";
    const unreachableChanged = next === "unreachable" && !unreachableKindsSaid.has(kind);
    reachability = next;
    lastRefusal = next === "refusing" ? detail : "";
    if (next !== "unreachable") unreachableKindsSaid.clear();
    else if (unreachableKindsSaid.size < UNREACHABLE_KINDS_SAID_MAX) unreachableKindsSaid.add(kind);
    if (previous === next && !refusalChanged && !unreachableChanged) return;
    if (next === "reachable") {
      if (previous !== "unknown") options.log(`peer ${peerId}: reachable again`);
    } else if (next === "unreachable") {
      options.log(`peer ${peerId}: unreachable (${detail})${kind === "ECONNRESET" ? RESET_HINT : ""}`);
    } else {
      options.log(`peer ${peerId}: refuses our calls (${detail})`);
    }
  }

  return {
    enqueue,
    stats: () => ({
      peerId,
      reachability,
      queuedMessages: controlLane.queued.length + dataLane.queued.length,
      queuedBytes: controlLane.bytes + dataLane.bytes,
      inflightCalls: controlLane.inflight + dataLane.inflight,
      ...counters,
      failedCallsByCode: { ...failedCallsByCode },
    }),
    async close() {
      if (!closed) {
        closed = true;
        for (const lane of lanes) {
          counters.droppedMessages += lane.queued.length;
          lane.queued = [];
          lane.sizes = [];
          lane.bytes = 0;
        }
        abort.abort();
      }
      await Promise.allSettled([...calls]);
    },
  };
}
