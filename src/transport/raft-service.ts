/**
 * The server side of the peer service: validates each call and hands its messages to the node.
 * It answers as soon as the messages are queued; the Raft loop processes them later, and its
 * answers travel back as messages in calls of its own.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectRouter } from "@connectrpc/connect";
import { RaftService } from "../gen/kv/v1/raft_pb.ts";
import type { NodeId } from "../raft/types.ts";
import { TransportDecodeError, defaultDecodeLimits, fromSendRequest } from "./codec.ts";
import type { DecodeLimits, DecodedSendRequest } from "./codec.ts";
import type { MessageHandler } from "./transport.ts";

/** What the peer service needs to know. */
export interface RaftServiceOptions {
  /** This server's node id: every incoming message must be addressed to it. */
  readonly selfId: NodeId;
  /** Receives each call's validated messages, synchronously, before the call is answered. */
  readonly onMessages: MessageHandler;
  readonly decodeLimits?: DecodeLimits;
}

/**
 * Returns the router registration for `kv.v1.RaftService`, for a real server (`createPeerServer`)
 * or for connect-es's in-memory `createRouterTransport`. A call that fails validation is refused
 * whole with `invalid_argument` and delivers nothing.
 */
export function createRaftServiceRoutes(options: RaftServiceOptions): (router: ConnectRouter) => void {
  const limits = options.decodeLimits ?? defaultDecodeLimits;
  return (router) => {
    router.service(RaftService, {
      send(request) {
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
        for (const message of decoded.messages) {
          if (message.to !== options.selfId) {
            // A peer whose configuration maps our address to another id: refuse rather than
            // let the core silently ignore every message.
            throw new ConnectError(`message to node ${message.to} reached node ${options.selfId}`, Code.InvalidArgument);
          }
        }
        options.onMessages(decoded.messages, decoded.from, decoded.fromHttpUrl);
        return {};
      },
    });
  };
}
