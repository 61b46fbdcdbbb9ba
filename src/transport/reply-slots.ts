/**
 * The answers peers' calls wait for (thesis §10.2: replies ride the call that asked for them). A
 * peer's `Send` is answered once the node's loop is done with its messages, carrying what the loop
 * sent that peer meanwhile, instead of each reply costing a call of its own. Shared by the Connect
 * transport (connect-transport.ts) and the simulator's network (src/sim/sim-transport.ts), so the
 * simulator runs the reply rules the server runs; time comes in through `nowMs` and `after`.
 */
import type { Message, NodeId } from "../raft/types.ts";
import { messageBytesEstimate } from "./peer-sender.ts";

/**
 * The longest a peer's call waits for its answer. The loop answers within one turn, or once the
 * fsync its replies wait for returns; this bounds calls that arrive as the node stops, or a disk
 * that stalls.
 */
export const REPLY_WAIT_MS_MAX = 500;

/**
 * How long a call waits for its answer before it is answered with what it has: REPLY_WAIT_MS_MAX,
 * or a quarter of the callers' deadline (`rpcTimeoutMs`, configured alike on every node) if less.
 * The sweep runs every this many ms, so a call may wait up to twice this: half its deadline, with
 * time left for the answer to travel back. A reply that waits longer (its fsync is slower) goes as a
 * call of its own. Waiting up to 500 ms against the default 200 ms deadline answered calls whose
 * callers had given up: the replies in them (acks, votes) were lost, and the peer was taken for down.
 */
export function replyWaitMs(rpcTimeoutMs: number): number {
  return Math.max(1, Math.min(REPLY_WAIT_MS_MAX, Math.floor(rpcTimeoutMs / 4)));
}

/**
 * Hands a peer's messages of one send to the reply slots or the peer's sender: appends always go
 * through the sender, whose data lane keeps them in order (src/transport/peer-sender.ts); riding the
 * answer to the peer's own call, one could overtake appends still in flight, name an entry the
 * follower does not have yet, be rejected, and send the leader back to probing. The rest ride the
 * answer to the peer's waiting call when it has room, or go through the sender too.
 */
export function dispatchToPeer(slots: ReplySlots, peerId: NodeId, group: readonly Message[], enqueue: (messages: readonly Message[]) => void): void {
  if (!group.some((message) => message.type === "append")) {
    if (!slots.reply(peerId, group)) enqueue(group);
    return;
  }
  enqueue(group.filter((message) => message.type === "append"));
  const rest = group.filter((message) => message.type !== "append");
  if (rest.length > 0 && !slots.reply(peerId, rest)) enqueue(rest);
}

/** How reply slots are bounded and timed. */
export interface ReplySlotsOptions {
  /** Messages one answer may carry. */
  readonly callMessagesMax: number;
  /** Estimated bytes one answer may carry (a first group larger than this still goes, alone). */
  readonly callBytesMax: number;
  /** The longest a call waits for its answer (`replyWaitMs`): then it is answered with what it has. */
  readonly waitMsMax: number;
  /** Monotonic milliseconds. */
  readonly nowMs: () => number;
  /** Runs `fn` once, `delayMs` from now; returns what cancels it. */
  readonly after: (delayMs: number, fn: () => void) => () => void;
}

/** Peers' calls waiting for their answers. */
export interface ReplySlots {
  /** A call from `from` arrived and its messages were handed over: resolves with its answer. */
  awaitReply(from: NodeId): Promise<readonly Message[]>;
  /** Puts `group` (all to `peerId`) in the answer to that peer's oldest waiting call; false if none has room. */
  reply(peerId: NodeId, group: readonly Message[]): boolean;
  /** Answers the waiting calls among the first `callsUpTo` to arrive (all without it); see `Transport.flush`. */
  flush(callsUpTo?: number): void;
  /** How many calls have arrived so far (see `Transport.callsArrived`). */
  callsArrived(): number;
  /** Answers every waiting call and takes no more (later calls are answered at once, empty). */
  close(): void;
}

/** A peer's call waiting for the loop to be done with its messages, and what it will answer. */
interface ReplySlot {
  readonly messages: Message[];
  bytes: number;
  readonly resolve: (messages: readonly Message[]) => void;
  readonly sinceMs: number;
  /** The call's place among all calls that arrived. */
  readonly seq: number;
}

/** Creates the reply slots of one node's peer service. */
export function createReplySlots(options: ReplySlotsOptions): ReplySlots {
  // Oldest first per peer; bounded by the peers' windows of calls in flight (peer-sender.ts).
  const slotsByPeer = new Map<NodeId, ReplySlot[]>();
  let arrived = 0;
  let closed = false;
  let cancelSweep: (() => void) | undefined;

  /** Answers each peer's waiting calls that arrived by `olderThanMs` and are among the first `callsUpTo`. */
  function answer(olderThanMs: number, callsUpTo = Number.POSITIVE_INFINITY): void {
    for (const [peerId, slots] of slotsByPeer) {
      let answered = 0;
      while (answered < slots.length && (slots[answered] as ReplySlot).sinceMs <= olderThanMs && (slots[answered] as ReplySlot).seq <= callsUpTo) answered++;
      if (answered === 0) continue;
      const done = slots.splice(0, answered);
      if (slots.length === 0) slotsByPeer.delete(peerId);
      for (const slot of done) slot.resolve(slot.messages);
    }
  }

  /** A call the loop never answers (it stopped, or its disk stalls) is answered with what it has. */
  function sweep(): void {
    cancelSweep = undefined;
    answer(options.nowMs() - options.waitMsMax);
    if (slotsByPeer.size > 0) cancelSweep = options.after(options.waitMsMax, sweep);
  }

  return {
    awaitReply(from) {
      if (closed) return Promise.resolve([]);
      return new Promise((resolve) => {
        let slots = slotsByPeer.get(from);
        if (slots === undefined) {
          slots = [];
          slotsByPeer.set(from, slots);
        }
        slots.push({ messages: [], bytes: 0, resolve, sinceMs: options.nowMs(), seq: ++arrived });
        cancelSweep ??= options.after(options.waitMsMax, sweep);
      });
    },
    reply(peerId, group) {
      const slot = slotsByPeer.get(peerId)?.[0];
      if (slot === undefined || slot.messages.length + group.length > options.callMessagesMax) return false;
      let bytes = 0;
      for (const message of group) bytes += messageBytesEstimate(message);
      if (slot.messages.length > 0 && slot.bytes + bytes > options.callBytesMax) return false;
      slot.messages.push(...group);
      slot.bytes += bytes;
      return true;
    },
    flush(callsUpTo) {
      if (slotsByPeer.size > 0) answer(Number.POSITIVE_INFINITY, callsUpTo);
    },
    callsArrived: () => arrived,
    close() {
      closed = true;
      answer(Number.POSITIVE_INFINITY);
      cancelSweep?.();
      cancelSweep = undefined;
    },
  };
}
