/**
 * The seam between the node loop and the network: the loop hands over each Ready's messages and
 * receives peers' messages through a handler. Raft tolerates lost, duplicated and reordered
 * messages, so a transport may drop what it cannot deliver; it must never block the loop.
 */
import type { Message, NodeId } from "../raft/types.ts";

/** How the node loop sends Raft messages to its peers. */
export interface Transport {
  /** Fire-and-forget: groups by `to`, one RPC per peer per call; never blocks on a slow/dead peer. */
  send(messages: readonly Message[]): void;
  /** Peers' advertised HTTP URLs learned from incoming calls. */
  peerHttpUrl(id: NodeId): string | undefined;
  /** Stops serving and sending; resolves once the listener is closed and calls in flight are over. */
  close(): Promise<void>;
}

/**
 * Receives one call's validated messages, in the sender's order. Runs synchronously inside the
 * RPC handler: it should queue the messages for the Raft loop and return at once.
 */
export type MessageHandler = (messages: Message[], from: NodeId, fromHttpUrl: string) => void;
