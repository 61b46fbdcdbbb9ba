import type { Prng } from "../lib/prng.ts";
import type { Message, NodeId } from "../raft/types.ts";

/** Fault settings of the simulated network; a swarm run draws them from its seed. */
export interface NetworkFaults {
  /** Probability that a message is dropped. */
  lossRate: number;
  /** Each message is delayed by a uniform number of ticks in [0, delayTicksMax]; > 0 also reorders. */
  delayTicksMax: number;
  /** Probability that a delivered message is delivered a second time later. */
  duplicateRate: number;
}

export const reliableNetwork: NetworkFaults = { lossRate: 0, delayTicksMax: 0, duplicateRate: 0 };

interface InFlight {
  readonly deliverAtTick: number;
  readonly sequence: number;
  readonly message: Message;
}

/**
 * A deterministic network: messages wait in one queue ordered by delivery tick, then by send order.
 * Directed links can be cut; a cut link drops what is sent over it, as a TCP proxy refusing would.
 */
export class SimNetwork {
  faults: NetworkFaults = reliableNetwork;
  private queue: InFlight[] = [];
  private sequence = 0;
  private readonly cut = new Set<string>();
  /** Messages offered to the network, by type, whether or not they arrive. */
  readonly sentByType = new Map<Message["type"], number>();
  /** Append rejections offered to the network: how hard the leaders had to search back. */
  appendRejections = 0;

  constructor(private readonly prng: Prng) {}

  /** Cuts the link from -> to (one direction). */
  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  /** Splits the nodes into groups that can only talk within themselves. */
  partition(groups: readonly (readonly NodeId[])[]): void {
    this.cut.clear();
    for (const a of groups) {
      for (const b of groups) {
        if (a === b) continue;
        for (const from of a) for (const to of b) this.cutLink(from, to);
      }
    }
  }

  /** Cuts every link to and from `id`. */
  isolate(id: NodeId, all: readonly NodeId[]): void {
    for (const other of all) {
      if (other === id) continue;
      this.cutLink(id, other);
      this.cutLink(other, id);
    }
  }

  /** Restores every link. */
  heal(): void {
    this.cut.clear();
  }

  isCut(from: NodeId, to: NodeId): boolean {
    return this.cut.has(`${from}>${to}`);
  }

  send(message: Message, nowTick: number): void {
    this.sentByType.set(message.type, (this.sentByType.get(message.type) ?? 0) + 1);
    if (message.type === "append-response" && !message.success) this.appendRejections++;
    if (this.isCut(message.from, message.to)) return;
    if (this.faults.lossRate > 0 && this.prng.chance(this.faults.lossRate)) return;
    this.enqueue(message, nowTick);
    if (this.faults.duplicateRate > 0 && this.prng.chance(this.faults.duplicateRate)) this.enqueue(message, nowTick);
  }

  private enqueue(message: Message, nowTick: number): void {
    const delay = this.faults.delayTicksMax > 0 ? this.prng.intInclusive(0, this.faults.delayTicksMax) : 0;
    this.queue.push({ deliverAtTick: nowTick + delay, sequence: this.sequence++, message });
  }

  /** Removes and returns every message due by `nowTick`, in delivery order. */
  due(nowTick: number): Message[] {
    if (this.queue.length === 0) return [];
    const ready: InFlight[] = [];
    const waiting: InFlight[] = [];
    for (const item of this.queue) (item.deliverAtTick <= nowTick ? ready : waiting).push(item);
    this.queue = waiting;
    ready.sort((a, b) => a.deliverAtTick - b.deliverAtTick || a.sequence - b.sequence);
    // A link cut after the send still loses what was in flight on it.
    return ready.filter((item) => !this.isCut(item.message.from, item.message.to)).map((item) => item.message);
  }

  /** Drops everything in flight to `id` (its process died: its sockets are gone). */
  dropTo(id: NodeId): void {
    this.queue = this.queue.filter((item) => item.message.to !== id);
  }

  inFlightCount(): number {
    return this.queue.length;
  }
}
