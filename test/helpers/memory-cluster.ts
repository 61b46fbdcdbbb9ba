// The in-memory cluster the node-level suites share: real KvNodes over the in-memory twins of storage
// (MemoryKvStorage), transport (MemoryNetwork) and clock (ManualClock), with loop turns queued and
// drained by hand, so a whole cluster runs deterministically in one process.
import { expect } from "bun:test";
import { COMMAND_LEVEL } from "../../src/kv/command.ts";
import { ManualClock, type Clock } from "../../src/lib/clock.ts";
import { createPrng } from "../../src/lib/prng.ts";
import { KvNode, type KvNodeConfig } from "../../src/node/kv-node.ts";
import type { RawNode } from "../../src/raft/raw-node.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../../src/storage/memory-storage.ts";
import { MemoryNetwork } from "../../src/transport/memory-transport.ts";
import type { SnapshotChunk } from "../../src/transport/transport.ts";

export const tickMs = 10;

export interface MemoryClusterOptions {
  /** Node settings over the defaults below (electionTicks 10, heartbeatTicks 2, ...). */
  readonly node?: Partial<Pick<KvNodeConfig, "requestTimeoutMs" | "pendingRequestsMax" | "snapshotEntries" | "snapshotCatchUpEntries" | "compactStepEntries" | "quotaBytes" | "watch">>;
  /** Snapshot chunk size of the memory network (small ones make a transfer take many deliveries). */
  readonly chunkBytesMax?: number;
  /** Sees every snapshot chunk a node receives, before the node does. */
  readonly onChunk?: (id: number, chunk: SnapshotChunk) => void;
  /** The level of log commands node `id` tells its peers it applies (default: this release's). */
  readonly commandLevelOf?: (id: number) => number;
}

/** Three KvNodes (1, 2, 3) on a memory network; more can be started with `startNode`. */
export function createMemoryCluster(options: MemoryClusterOptions = {}) {
  const clock = new ManualClock();
  const network = options.chunkBytesMax === undefined ? new MemoryNetwork() : new MemoryNetwork(options.chunkBytesMax);
  let turns: { id: number; turn: () => void }[] = [];
  /** Turns run so far, by node. */
  const turnsRunById = new Map<number, number>();
  /** Nodes paused as by SIGSTOP: their timers do not fire and their turns wait, while time runs on. */
  const paused = new Set<number>();
  /** Node `id`'s view of the shared clock: the same time, but no timer fires while it is paused. */
  const clockOf = (id: number): Clock => ({
    nowMs: () => clock.nowMs(),
    wallMs: () => clock.wallMs(),
    // Like setInterval after a stall, the firings missed while paused are not made up.
    every: (intervalMs, fn) => clock.every(intervalMs, () => paused.has(id) || fn()),
  });
  const nodes = new Map<number, KvNode>();
  const storages = new Map<number, MemoryKvStorage>();
  const fatal: Error[] = [];
  const events: { id: number; event: string; fields: Record<string, unknown> }[] = [];
  const peers = new Map([1, 2, 3].map((id) => [id, `mem://peer-${id}`] as [number, string]));

  const startNode = (id: number, nodePeers: ReadonlyMap<number, string>, storage: MemoryKvStorage): KvNode => {
    storages.set(id, storage);
    const node = new KvNode({
      id,
      peers: nodePeers,
      httpUrl: `http://node-${id}`,
      storage,
      clock: clockOf(id),
      prng: createPrng(id * 7 + nodes.size),
      tickMs,
      electionTicks: 10,
      heartbeatTicks: 2,
      requestTimeoutMs: 1_000,
      pendingRequestsMax: 1_000,
      inboxMessagesMax: 10_000,
      ...options.node,
      schedule: (turn) => turns.push({ id, turn }),
      onFatal: (error) => fatal.push(error),
      log: (event, fields) => events.push({ id, event, fields }),
    });
    nodes.set(id, node);
    node.start(
      network.connect(id, `http://node-${id}`, (messages) => node.receive(messages), (chunk) => {
        options.onChunk?.(id, chunk);
        node.receiveSnapshotChunk(chunk);
      }, options.commandLevelOf?.(id) ?? COMMAND_LEVEL),
    );
    return node;
  };
  for (const id of peers.keys()) startNode(id, peers, createMemoryKvStorage());

  /** Runs scheduled turns and delivers messages and chunks until nothing is left, then lets promises settle. */
  const settle = async () => {
    for (let round = 0; round < 10_000; round++) {
      const due = turns.filter((turn) => !paused.has(turn.id));
      turns = turns.filter((turn) => paused.has(turn.id));
      for (const { id, turn } of due) {
        turnsRunById.set(id, (turnsRunById.get(id) ?? 0) + 1);
        turn();
      }
      const delivered = network.deliver();
      if (due.length === 0 && delivered === 0) break;
    }
    for (let i = 0; i < 5; i++) await Promise.resolve();
  };
  /** Advances time tick by tick, settling after each, until `condition` holds (asserted). */
  const until = async (condition: () => boolean, ticksMax = 1_000) => {
    for (let i = 0; i < ticksMax && !condition(); i++) {
      clock.advance(tickMs);
      await settle();
    }
    expect(condition()).toBe(true);
  };
  /** Keeps the cluster moving until `promise` settles; returns its value or throws its error. */
  const drive = async <T>(promise: Promise<T>, ticksMax = 1_000): Promise<T> => {
    let done = false;
    let value: T | undefined;
    let failure: unknown;
    promise.then(
      (v) => ((done = true), (value = v)),
      (e) => ((done = true), (failure = e)),
    );
    await until(() => done, ticksMax);
    if (failure !== undefined) throw failure;
    return value as T;
  };
  const live = () => [...nodes.values()].filter((node) => node.fatalError() === undefined);
  const leader = () => live().find((n) => n.status().role === "leader");
  const node = (id: number) => nodes.get(id)!;
  const stop = (id: number) => {
    nodes.get(id)!.stop();
    nodes.delete(id);
  };
  /** Pauses node `id` as SIGSTOP would: it runs no turn and no timer until `resume`, while time goes on. */
  const pause = (id: number) => paused.add(id);
  const resume = (id: number) => paused.delete(id);
  /** Scheduled turns node `id` has run (its timer's turns not counted). */
  const turnsRun = (id: number) => turnsRunById.get(id) ?? 0;
  /**
   * The leader, once it has led through a check-quorum round: it knows which voters answer it, and
   * judges a voter's removal (src/node/membership.ts `refuseUnlessQuorumRemains`).
   */
  const steadyLeader = async (): Promise<KvNode> => {
    const steady = () => {
      const found = leader();
      return found !== undefined && (found as unknown as { raw: RawNode }).raw.votersHeardRecently() !== undefined ? found : undefined;
    };
    await until(() => steady() !== undefined);
    return steady() as KvNode;
  };
  return { clock, network, nodes, node, storages, fatal, events, peers, startNode, settle, until, drive, leader, steadyLeader, stop, pause, resume, turnsRun };
}

export type MemoryCluster = ReturnType<typeof createMemoryCluster>;
