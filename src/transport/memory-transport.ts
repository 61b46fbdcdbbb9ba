import type { Message, NodeId } from "../raft/types.ts";
import { chunksOf } from "./snapshot-sender.ts";
import type { MessageHandler, SendSnapshotOptions, SnapshotChunk, SnapshotChunkHandler, SnapshotImage, Transport } from "./transport.ts";

/** A snapshot transfer in flight on the memory network: one chunk moves per `deliver()`. */
interface MemoryTransfer {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly chunks: Iterator<SnapshotChunk>;
  readonly signal: AbortSignal | undefined;
  resolve(): void;
  reject(error: Error): void;
}

/**
 * The in-memory twin of the Connect transport: every node's `send` lands in one queue that the
 * test delivers when it chooses (`deliver()`), so a cluster of real KvNodes runs deterministically
 * in one process. Links can be cut in either direction. A snapshot transfer moves one chunk per
 * `deliver()` and fails when its link is cut or its receiver is gone or refuses a chunk.
 */
export class MemoryNetwork {
  private readonly handlers = new Map<
    NodeId,
    { handler: MessageHandler; httpUrl: string; snapshotHandler: SnapshotChunkHandler | undefined; commandLevel: number | undefined }
  >();
  private queue: { from: NodeId; to: NodeId; messages: Message[] }[] = [];
  private transfers: MemoryTransfer[] = [];
  private readonly cut = new Set<string>();

  /** Bytes of keys and values per snapshot chunk. */
  constructor(private readonly snapshotChunkBytesMax = 1 << 20) {}

  /**
   * The transport for node `id`, delivering messages to `handler` and snapshot chunks to
   * `snapshotHandler`; its peers learn `commandLevel` as the level it applies (none: it never says).
   */
  connect(id: NodeId, httpUrl: string, handler: MessageHandler, snapshotHandler?: SnapshotChunkHandler, commandLevel?: number): Transport {
    this.handlers.set(id, { handler, httpUrl, snapshotHandler, commandLevel });
    return {
      send: (messages) => {
        const byPeer = new Map<NodeId, Message[]>();
        for (const message of messages) {
          const list = byPeer.get(message.to) ?? [];
          list.push(message);
          byPeer.set(message.to, list);
        }
        for (const [to, list] of byPeer) this.queue.push({ from: id, to, messages: list });
      },
      sendSnapshot: (to: NodeId, image: SnapshotImage, options: SendSnapshotOptions) =>
        new Promise<void>((resolve, reject) => {
          this.transfers.push({ from: id, to, chunks: chunksOf(id, to, image, options, this.snapshotChunkBytesMax), signal: options.signal, resolve, reject });
        }),
      // Replies travel as calls of their own here: the queue already decides when anything arrives.
      flush: () => {},
      callsArrived: () => 0,
      peerHttpUrl: (peer) => this.handlers.get(peer)?.httpUrl,
      // Each node's level is its transport's, read when asked: nothing said earlier is kept to forget.
      peerCommandLevel: (peer) => this.handlers.get(peer)?.commandLevel,
      forgetPeerCommandLevel: () => {},
      resetPeer: (peer) => {
        this.queue = this.queue.filter((queued) => queued.from !== id || queued.to !== peer);
      },
      close: async () => {
        this.handlers.delete(id);
      },
    };
  }

  /** Drops messages between `a` and `b` in both directions until `heal`. */
  cutBetween(a: NodeId, b: NodeId): void {
    this.cut.add(`${a}>${b}`);
    this.cut.add(`${b}>${a}`);
  }

  heal(): void {
    this.cut.clear();
  }

  /**
   * Delivers everything queued so far and one chunk of each snapshot transfer; returns how many
   * calls (message batches and chunks) were delivered.
   */
  deliver(): number {
    const calls = this.queue;
    this.queue = [];
    let delivered = 0;
    for (const call of calls) {
      const target = this.handlers.get(call.to);
      if (target === undefined || this.cut.has(`${call.from}>${call.to}`)) continue;
      target.handler(call.messages, call.from, this.handlers.get(call.from)?.httpUrl ?? "");
      delivered++;
    }
    const transfers = this.transfers;
    this.transfers = [];
    for (const transfer of transfers) {
      if (this.deliverChunk(transfer)) delivered++;
    }
    return delivered;
  }

  /** Moves one chunk of `transfer`; true when a chunk reached its receiver. Settles the transfer when it ends. */
  private deliverChunk(transfer: MemoryTransfer): boolean {
    const target = this.handlers.get(transfer.to);
    if (transfer.signal?.aborted) {
      transfer.reject(new Error("snapshot transfer aborted"));
      return false;
    }
    if (target === undefined || target.snapshotHandler === undefined || this.cut.has(`${transfer.from}>${transfer.to}`)) {
      transfer.reject(new Error(`node ${transfer.to} is unreachable`));
      return false;
    }
    try {
      const next = transfer.chunks.next();
      if (next.done === true) {
        transfer.resolve();
        return false;
      }
      target.snapshotHandler(next.value);
      if (next.value.done) transfer.resolve();
      else this.transfers.push(transfer);
      return true;
    } catch (error: unknown) {
      transfer.reject(error instanceof Error ? error : new Error(String(error)));
      return false;
    }
  }

  /** Message batches queued and snapshot transfers in flight. */
  pending(): number {
    return this.queue.length + this.transfers.length;
  }
}
