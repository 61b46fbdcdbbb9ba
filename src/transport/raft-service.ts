/**
 * The server side of the peer service: validates each call and hands its messages to the node.
 * A Send is answered once the node's loop has taken its messages (see `awaitReply`), with the
 * messages the loop produced for the caller meanwhile. Snapshot chunks are staged by the node's
 * handler before the call is answered, so an OK answer means "staged".
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectRouter } from "@connectrpc/connect";
import { RaftService } from "../gen/kv/v1/raft_pb.ts";
import { fromLeader, type Message, type NodeId } from "../raft/types.ts";
import { TransportDecodeError, defaultDecodeLimits, fromSendRequest, toSendResponse } from "./codec.ts";
import { callerAhead } from "./peer-identity.ts";
import type { DecodeLimits, DecodedSendRequest } from "./codec.ts";
import { defaultSnapshotDecodeLimits, fromSendSnapshotChunkRequest } from "./snapshot-codec.ts";
import type { SnapshotDecodeLimits } from "./snapshot-codec.ts";
import { SnapshotChunkRefusedError } from "./transport.ts";
import type { MessageHandler, SnapshotChunk, SnapshotChunkHandler } from "./transport.ts";

/** What the peer service needs to know. */
export interface RaftServiceOptions {
  /** This server's node id: every incoming message must be addressed to it. */
  readonly selfId: NodeId;
  /** This server's advertised client HTTP URL, sent back in answers (`SendResponse.from_http_url`: see `answersPerUrl`). */
  readonly selfHttpUrl?: string;
  /** Receives each call's validated messages, synchronously, before the call is answered. */
  readonly onMessages: MessageHandler;
  /** This server's command level, sent in every answer (`SendResponse.command_level`; absent: not sent). */
  readonly commandLevel?: number;
  /** Told the command level each valid call states (1 for a caller that does not say). */
  readonly onCommandLevel?: (from: NodeId, level: number) => void;
  /**
   * Called right after `onMessages`: resolves with what the node has to tell the caller once its
   * loop has taken the messages. Without it, calls are answered at once and empty.
   */
  readonly awaitReply?: (from: NodeId) => Promise<readonly Message[]>;
  /**
   * The index this node records for member `id`'s addition (peer-identity.ts): a caller that says
   * it was added after it gets none of this node's leader messages in its answer (`fromLeader`:
   * they were meant for an older process of its id). None: every caller gets all its replies.
   */
  readonly memberSince?: (id: NodeId) => number | undefined;
  readonly decodeLimits?: DecodeLimits;
  /** Stages each validated snapshot chunk; without it, chunks are refused with `unimplemented`. */
  readonly onSnapshotChunk?: SnapshotChunkHandler;
  readonly snapshotDecodeLimits?: SnapshotDecodeLimits;
  /**
   * Checks a decoded call's sender before anything of it is delivered, with the call's headers
   * (connect-transport.ts: a node outside the configuration must carry the cluster's nonce);
   * throws the `ConnectError` that refuses the call.
   */
  readonly checkSender?: (from: NodeId, headers: Headers, leads: boolean) => void;
  /** Told of a call refused because a message in it is addressed to another node (for the refusal count). */
  readonly onMisaddressed?: (from: NodeId, to: NodeId) => void;
}

/** How often an answer carries this server's URL (`SendResponse.from_http_url`): one in this many per caller. */
const answersPerUrl = 256;
/** Callers whose answers are counted at most (see `urlDue`). */
export const callersCountedMax = 1_024;

/**
 * Returns the router registration for `kv.v1.RaftService`, for a real server (`createPeerServer`)
 * or for connect-es's in-memory `createRouterTransport`. A call that fails validation is refused
 * whole with `invalid_argument` and delivers nothing.
 */
export function createRaftServiceRoutes(options: RaftServiceOptions): (router: ConnectRouter) => void {
  const limits = options.decodeLimits ?? defaultDecodeLimits;
  // Our URL rides the first answer to each caller and every `answersPerUrl`-th after: the caller
  // needs it once (and again should it restart), not in each of thousands of answers a second.
  const answered = new Map<NodeId, number>();
  const urlDue = (caller: NodeId): boolean => {
    // Any id that passes the checks may call (non-members too): past `callersCountedMax` callers
    // the counts start over, which only sends each caller our URL once more (found in review: one
    // entry per distinct id, for good).
    if (!answered.has(caller) && answered.size >= callersCountedMax) answered.clear();
    const count = answered.get(caller) ?? 0;
    answered.set(caller, count + 1);
    return count % answersPerUrl === 0;
  };
  return (router) => {
    router.service(RaftService, {
      async send(request, context) {
        let decoded: DecodedSendRequest;
        try {
          decoded = fromSendRequest(request, limits);
        } catch (error: unknown) {
          if (error instanceof TransportDecodeError) throw new ConnectError(error.message, Code.InvalidArgument);
          throw error;
        }
        if (decoded.from === options.selfId) {
          throw new ConnectError(`call from node ${decoded.from}, which is this node`, Code.InvalidArgument);
        }
        let leads = false;
        for (const message of decoded.messages) {
          if (fromLeader(message)) leads = true;
          if (message.to !== options.selfId) {
            // A peer whose configuration maps our address to another id: refuse rather than
            // let the core silently ignore every message.
            options.onMisaddressed?.(decoded.from, message.to);
            throw new ConnectError(`message to node ${message.to} reached node ${options.selfId}`, Code.InvalidArgument);
          }
        }
        options.checkSender?.(decoded.from, context.requestHeader, leads);
        options.onCommandLevel?.(decoded.from, decoded.commandLevel);
        options.onMessages(decoded.messages, decoded.from, decoded.fromHttpUrl);
        let reply = options.awaitReply === undefined ? [] : await options.awaitReply(decoded.from);
        // A caller added after what this node records for its id: this node's leader messages for
        // that id were meant for an older process of it (peer-identity.ts `callerAhead`).
        if (reply.some(fromLeader) && options.memberSince !== undefined && callerAhead(context.requestHeader, options.memberSince(decoded.from))) {
          reply = reply.filter((message) => !fromLeader(message));
        }
        return toSendResponse(reply, urlDue(decoded.from) ? options.selfHttpUrl : undefined, options.commandLevel);
      },
      sendSnapshotChunk(request, context) {
        const onSnapshotChunk = options.onSnapshotChunk;
        if (onSnapshotChunk === undefined) throw new ConnectError("this server does not take snapshots", Code.Unimplemented);
        let chunk: SnapshotChunk;
        try {
          chunk = fromSendSnapshotChunkRequest(request, options.snapshotDecodeLimits ?? defaultSnapshotDecodeLimits);
        } catch (error: unknown) {
          if (error instanceof TransportDecodeError) throw new ConnectError(error.message, Code.InvalidArgument);
          throw error;
        }
        if (chunk.from === options.selfId) throw new ConnectError(`chunk from node ${chunk.from}, which is this node`, Code.InvalidArgument);
        if (chunk.to !== options.selfId) {
          options.onMisaddressed?.(chunk.from, chunk.to);
          throw new ConnectError(`chunk to node ${chunk.to} reached node ${options.selfId}`, Code.InvalidArgument);
        }
        options.checkSender?.(chunk.from, context.requestHeader, true);
        try {
          onSnapshotChunk(chunk);
        } catch (error: unknown) {
          if (error instanceof SnapshotChunkRefusedError) throw new ConnectError(error.message, Code.FailedPrecondition);
          throw error;
        }
        return {};
      },
    });
  };
}
