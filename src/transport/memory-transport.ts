import type { Message, NodeId } from "../raft/types.ts";
import type { MessageHandler, Transport } from "./transport.ts";

/**
 * The in-memory twin of the Connect transport: every node's `send` lands in one queue that the
 * test delivers when it chooses (`deliver()`), so a cluster of real KvNodes runs deterministically
 * in one process. Links can be cut in either direction.
 */
export class MemoryNetwork {
  private readonly handlers = new Map<NodeId, { handler: MessageHandler; httpUrl: string }>();
  private queue: { from: NodeId; to: NodeId; messages: Message[] }[] = [];
  private readonly cut = new Set<string>();

  /** The transport for node `id`, delivering to `handler`. */
  connect(id: NodeId, httpUrl: string, handler: MessageHandler): Transport {
    this.handlers.set(id, { handler, httpUrl });
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
      peerHttpUrl: (peer) => this.handlers.get(peer)?.httpUrl,
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

  /** Delivers everything queued so far; returns how many calls were delivered. */
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
    return delivered;
  }

  pending(): number {
    return this.queue.length;
  }
}
