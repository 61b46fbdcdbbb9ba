import type { Prng } from "../lib/prng.ts";
import type { Message, NodeId } from "../raft/types.ts";
import { chunksOf } from "../transport/snapshot-sender.ts";
import type { MessageHandler, SendSnapshotOptions, SnapshotChunk, SnapshotChunkHandler, SnapshotImage, Transport } from "../transport/transport.ts";

/** Fault settings of the simulated network, drawn from a run's seed. */
export interface SimNetworkFaults {
  /** Probability that a batch of messages (one call) is lost. */
  lossRate: number;
  /** A call takes a uniform [delayMsMin, delayMsMax] to arrive; different delays reorder calls. */
  delayMsMin: number;
  delayMsMax: number;
  /** Probability that a delivered call is delivered a second time later. */
  duplicateRate: number;
}

/** The simulator's side of the network: when to run something, and whether a node can take it now. */
export interface SimNetworkHost {
  /** Runs `fn` `delayMs` from now on the simulated clock. */
  at(delayMs: number, fn: () => void): void;
  /** False while node `id` is stalled: a chunk for it waits (a message batch is queued in its inbox). */
  running(id: NodeId): boolean;
}

interface Endpoint {
  readonly httpUrl: string;
  readonly handler: MessageHandler;
  readonly snapshotHandler: SnapshotChunkHandler;
}

/** Bytes of keys and values per snapshot chunk: small, so a transfer takes many calls and can fail midway. */
const snapshotChunkBytesMax = 256;

/**
 * The in-memory network of a simulated cluster. Each `send` is one call per peer that arrives after
 * a drawn delay, or is lost, or arrives twice; links can be cut in either direction. A snapshot
 * streams one chunk per call, with the same delays, and fails as the real transport's does: when a
 * link is cut, the receiver is down, refuses a chunk, or the sender aborts. Replies travel as calls
 * of their own (`flush` has nothing to answer), which is one of the orders the real transport allows.
 */
export class SimNetwork {
  faults: SimNetworkFaults = { lossRate: 0, delayMsMin: 0, delayMsMax: 1, duplicateRate: 0 };
  private readonly endpoints = new Map<NodeId, Endpoint>();
  private readonly cut = new Set<string>();
  /** Calls delivered and lost: proof the faults were exercised. */
  delivered = 0;
  lost = 0;

  constructor(
    private readonly prng: Prng,
    private readonly host: SimNetworkHost,
  ) {}

  /** The transport node `id` uses while this process runs. */
  connect(id: NodeId, httpUrl: string, handler: MessageHandler, snapshotHandler: SnapshotChunkHandler): Transport {
    const endpoint: Endpoint = { httpUrl, handler, snapshotHandler };
    this.endpoints.set(id, endpoint);
    return {
      send: (messages) => {
        const byPeer = new Map<NodeId, Message[]>();
        for (const message of messages) {
          const list = byPeer.get(message.to);
          if (list === undefined) byPeer.set(message.to, [message]);
          else list.push(message);
        }
        for (const [to, list] of byPeer) this.call(id, to, list);
      },
      sendSnapshot: (to, image, options) => this.sendSnapshot(id, to, image, options),
      flush: () => {},
      callsArrived: () => 0,
      peerHttpUrl: (peer) => this.endpoints.get(peer)?.httpUrl,
      close: async () => {
        if (this.endpoints.get(id) === endpoint) this.endpoints.delete(id);
      },
    };
  }

  /** The process of node `id` died: nothing reaches it until it connects again. */
  disconnectProcess(id: NodeId): void {
    this.endpoints.delete(id);
  }

  isCut(from: NodeId, to: NodeId): boolean {
    return this.cut.has(`${from}>${to}`);
  }

  /** Splits the nodes into groups that reach only their own. */
  partition(groups: readonly (readonly NodeId[])[]): void {
    this.cut.clear();
    for (const a of groups) {
      for (const b of groups) {
        if (a === b) continue;
        for (const from of a) for (const to of b) this.cut.add(`${from}>${to}`);
      }
    }
  }

  heal(): void {
    this.cut.clear();
  }

  private delay(): number {
    return this.prng.intInclusive(this.faults.delayMsMin, this.faults.delayMsMax);
  }

  private call(from: NodeId, to: NodeId, messages: Message[]): void {
    if (this.isCut(from, to) || (this.faults.lossRate > 0 && this.prng.chance(this.faults.lossRate))) {
      this.lost++;
      return;
    }
    const copies = this.faults.duplicateRate > 0 && this.prng.chance(this.faults.duplicateRate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      this.host.at(this.delay(), () => {
        // A link cut while the call was in flight loses it, as a proxy closing the connection would.
        const target = this.endpoints.get(to);
        if (target === undefined || this.isCut(from, to)) {
          this.lost++;
          return;
        }
        this.delivered++;
        target.handler(messages, from, this.endpoints.get(from)?.httpUrl ?? "");
      });
    }
  }

  private sendSnapshot(from: NodeId, to: NodeId, image: SnapshotImage, options: SendSnapshotOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const chunks = chunksOf(from, to, image, options, snapshotChunkBytesMax);
      const next = (): void => {
        if (options.signal?.aborted) return reject(new Error("snapshot transfer aborted"));
        let chunk: SnapshotChunk;
        try {
          const item = chunks.next();
          if (item.done === true) return resolve();
          chunk = item.value;
        } catch (error: unknown) {
          return reject(error instanceof Error ? error : new Error(String(error)));
        }
        const deliver = (): void => {
          if (options.signal?.aborted) return reject(new Error("snapshot transfer aborted"));
          const target = this.endpoints.get(to);
          if (target === undefined || this.isCut(from, to)) return reject(new Error(`node ${to} is unreachable`));
          if (!this.host.running(to)) return this.host.at(1, deliver); // a stalled receiver answers later
          try {
            target.snapshotHandler(chunk);
          } catch (error: unknown) {
            return reject(error instanceof Error ? error : new Error(String(error)));
          }
          if (chunk.done) resolve();
          else next();
        };
        this.host.at(this.delay(), deliver);
      };
      next();
    });
  }
}
