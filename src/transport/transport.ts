/**
 * The seam between the node loop and the network: the loop hands over each Ready's messages and
 * receives peers' messages through a handler. Raft tolerates lost, duplicated and reordered
 * messages, so a transport may drop what it cannot deliver; it must never block the loop.
 */
import type { Message, NodeId, SnapshotMetadata } from "../raft/types.ts";

/** How the node loop sends Raft messages to its peers. */
export interface Transport {
  /**
   * Fire-and-forget: groups by `to`, one RPC per peer per call; never blocks on a slow/dead peer.
   * Messages to a peer whose own call is waiting for an answer (see `flush`) go in that answer.
   */
  send(messages: readonly Message[]): void;
  /**
   * The loop is done with the messages it has received so far: each peer call waiting for an
   * answer is answered now, carrying what `send` was given for that peer since the call arrived,
   * so replies ride the call that asked for them (thesis §10.2) instead of costing a call of their
   * own. With `callsUpTo`, only the calls among the first `callsUpTo` to arrive (`callsArrived`)
   * are answered: the loop answers the calls whose replies it has released, while later calls go
   * on waiting for theirs (which wait for an fsync). A call is answered within a bounded time
   * whatever the loop does.
   */
  flush(callsUpTo?: number): void;
  /** How many peer calls have arrived so far (their messages were handed to the handler). */
  callsArrived(): number;
  /**
   * Streams `image` to peer `to` in bounded chunks, one call at a time, apart from `send` (a long
   * transfer never delays messages). Resolves once the peer staged the last chunk (it then hands
   * InstallSnapshot to its core itself); rejects when a chunk fails, times out or is refused, or
   * `options.signal` aborts. The caller owns `image` and closes it after.
   */
  sendSnapshot(to: NodeId, image: SnapshotImage, options: SendSnapshotOptions): Promise<void>;
  /** Peers' advertised HTTP URLs learned from incoming calls. */
  peerHttpUrl(id: NodeId): string | undefined;
  /**
   * The level of log commands peer `id` last said it applies, in a call or an answer (1 for one
   * that does not say: a release before 0.9.0); undefined before it said anything to this server.
   */
  peerCommandLevel(id: NodeId): number | undefined;
  /** Forgets what peer `id` said of its command level (it was added again, or removed): undefined until it says again. */
  forgetPeerCommandLevel(id: NodeId): void;
  /**
   * Node `id` was added to the configuration (again, perhaps): drops what waits to go to it or is
   * on its way, as a lost call's messages are dropped. They were composed for the process the id
   * had before, which may have been removed while cut off: a heartbeat's commit index said what
   * that process had acknowledged, and reaching the new process at the same address on an empty
   * disk, told it that it had lost acknowledged entries (found by the simulator, see
   * src/sim/node-sim.ts `detach`). The client URL learned from the old process is forgotten too.
   */
  resetPeer(id: NodeId): void;
  /** Stops serving and sending; resolves once the listener is closed and calls in flight are over. */
  close(): Promise<void>;
}

/**
 * Receives one call's validated messages, in the sender's order. Runs synchronously inside the
 * RPC handler: it should queue the messages for the Raft loop and return at once.
 */
export type MessageHandler = (messages: Message[], from: NodeId, fromHttpUrl: string) => void;

/** One key of a state machine image (the storage's `ImageRow`). */
export interface SnapshotRow {
  readonly key: string;
  readonly value: Uint8Array;
  readonly version: number;
}

/** Where one member is reached (the state machine's `MemberAddress`, src/kv/membership.ts). */
export interface PeerAddress {
  readonly id: NodeId;
  readonly peerUrl: string;
  readonly httpUrl?: string;
  /** The index of the entry that added it at this address (0: a founding member), when known. */
  readonly addedIndex?: number;
}

/** An image being read for sending (the storage's `KvImageReader`). */
export interface SnapshotImage {
  readonly metadata: SnapshotMetadata;
  /** Every member's addresses as of the image: sent with its first chunk. */
  readonly addresses?: readonly PeerAddress[];
  /** The next rows, about `bytesMax` bytes (at least one row); [] once done. */
  next(bytesMax: number): SnapshotRow[];
}

/** How one image is sent. */
export interface SendSnapshotOptions {
  /** Names the image on the receiver: unique per sender, 1 to 128 characters. */
  readonly imageId: string;
  /** The sender's term: the receiver's InstallSnapshot carries it. */
  readonly term: number;
  /** Aborts the transfer (the leader stepped down, the node stops). */
  readonly signal?: AbortSignal;
}

/**
 * One chunk of an image as the receiver gets it, validated. `metadata` is set on the first chunk
 * (seq 0) only. Row values are views into the request: stage or copy them, do not keep them.
 */
export interface SnapshotChunk {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
  readonly imageId: string;
  readonly seq: number;
  readonly metadata: SnapshotMetadata | undefined;
  /** On the first chunk: where each member of the image's configuration is reached ([] if not sent). */
  readonly addresses?: readonly PeerAddress[];
  readonly rows: readonly SnapshotRow[];
  readonly done: boolean;
}

/**
 * Receives each validated chunk, synchronously, before the call is answered: it stages the rows
 * and, on the last chunk, hands InstallSnapshot to the core. Throws `SnapshotChunkRefusedError` to
 * refuse a chunk (of an image it is not staging, out of order, too big); the call then fails with
 * `failed_precondition` and the sender gives up that image.
 */
export type SnapshotChunkHandler = (chunk: SnapshotChunk) => void;

/** A chunk the receiver will not stage; the message says why. */
export class SnapshotChunkRefusedError extends Error {
  override name = "SnapshotChunkRefusedError";
}
