import { fnv1a } from "../lib/fnv1a.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import type { NodeId } from "../raft/types.ts";
import { SimCluster } from "./sim-cluster.ts";

/** What one swarm run did, for reports and for tests that want to see faults really happened. */
export interface SwarmResult {
  readonly seed: number;
  readonly nodeCount: number;
  readonly acknowledged: number;
  readonly crashes: number;
  readonly partitions: number;
  readonly ticks: number;
  readonly snapshotsInstalled: number;
  readonly confChanges: number;
  /** Whether the disks fsynced in the background (SimClusterOptions.asyncStorage). */
  readonly asyncStorage: boolean;
  /** Crashes that lost writes not yet fsynced. */
  readonly powerLosses: number;
  /** Process stalls (GC, slow disk, SIGSTOP) that ended, after which the node's lease clock made up the time. */
  readonly stalls: number;
  /**
   * A digest of how the run went (every node's final state, the acknowledged writes, and where the
   * seed's random stream stood at the end): two runs of one seed must give the same digest.
   */
  readonly digest: string;
}

/**
 * Splits `ids` into two non-empty sides at random. Draws exactly `ids.length` numbers from `prng`
 * (a Fisher-Yates shuffle, then the cut), whatever the engine, so a seed replays bit for bit.
 */
export function drawPartition(prng: Prng, ids: readonly NodeId[]): [NodeId[], NodeId[]] {
  const shuffled = prng.shuffle(ids);
  const cut = prng.intInclusive(1, ids.length - 1);
  return [shuffled.slice(0, cut), shuffled.slice(cut)];
}


/**
 * One randomized run in the manner of TigerBeetle's VOPR: the fault settings themselves are drawn
 * from the seed (a "swarm"), a safety phase runs clients against crashes, partitions, loss, delay,
 * reordering and duplication with every Figure 3 property checked after each step, then the
 * network heals, every node restarts, and the cluster must converge within a tick budget.
 * Throws SafetyViolation (or an AssertionError from the core) with the seed in the message.
 */
export function runSwarm(seed: number): SwarmResult {
  const prng = createPrng(seed);
  const nodeCount = prng.pick([3, 3, 5, 5, 7]);
  const electionTicks = prng.intInclusive(5, 15);
  // Drawn apart from `prng`, so that the other settings of a seed are what they were before it existed.
  const asyncStorage = createPrng(seed ^ 0xa5a5).chance(0.5);
  // Clock faults, also drawn apart: stalled processes and clocks that drift within the lease's bound.
  const clockPrng = createPrng(seed ^ 0x57a1);
  const stallRate = clockPrng.pick([0, 0, 0.005, 0.02]);
  const clockDriftMax = clockPrng.pick([0, 0.05, 0.1]);
  const cluster = new SimCluster({
    asyncStorage,
    clockDriftMax,
    nodeCount,
    seed,
    preVote: prng.chance(0.8),
    checkQuorum: prng.chance(0.8),
    electionTicks,
    heartbeatTicks: prng.intInclusive(1, Math.max(1, Math.floor(electionTicks / 3))),
    inflightMessagesMax: prng.pick([1, 4, 256]),
    appendBytesMax: prng.pick([1, 64, 1 << 20]),
  });
  const lossRate = prng.pick([0, 0, 0.05, 0.2, 0.4]);
  const delayTicksMax = prng.pick([0, 1, 3, electionTicks]);
  const duplicateRate = prng.pick([0, 0.05, 0.2]);
  const crashRate = prng.pick([0, 0.002, 0.01, 0.03]);
  const readyCrashRate = prng.pick([0, 0.001, 0.005]);
  const partitionRate = prng.pick([0, 0.01, 0.05]);
  const proposeRate = prng.pick([0.1, 0.5, 1]);
  const transferRate = prng.pick([0, 0.005, 0.02]);
  const compactRate = prng.pick([0, 0, 0.02, 0.1]);
  const membershipRate = prng.pick([0, 0, 0.01, 0.03]);
  const ticks = prng.intInclusive(100, 600);
  cluster.network.faults = { lossRate, delayTicksMax, duplicateRate };
  cluster.crashHook = () => prng.chance(readyCrashRate);
  let crashes = 0;
  let partitions = 0;
  try {
    for (let tick = 0; tick < ticks; tick++) {
      for (const id of cluster.ids) {
        if (cluster.isUp(id) && prng.chance(proposeRate / nodeCount)) cluster.propose(id);
        if (cluster.isUp(id) && prng.chance(0.05)) {
          const lease = prng.chance(0.5);
          if (!cluster.isStalled(id)) cluster.readIndex(id, lease); // a stalled process takes no request
        }
      }
      cluster.tick();
      if (prng.chance(crashRate)) {
        cluster.crash(prng.pick(cluster.ids));
        crashes++;
      }
      if (prng.chance(crashRate * 3)) cluster.restart(prng.pick(cluster.ids));
      if (stallRate > 0 && clockPrng.chance(stallRate)) cluster.stall(clockPrng.pick(cluster.ids), clockPrng.intInclusive(1, 3 * electionTicks));
      if (prng.chance(partitionRate)) {
        partitions++;
        cluster.network.partition(drawPartition(prng, cluster.ids));
      }
      if (prng.chance(partitionRate * 2)) cluster.network.heal();
      if (prng.chance(compactRate)) {
        const id = prng.pick(cluster.ids);
        cluster.compact(id, cluster.applied(id).length - prng.intInclusive(0, 5));
      }
      if (prng.chance(membershipRate)) {
        const leader = cluster.leader();
        if (leader !== undefined) {
          const config = cluster.config();
          const action = prng.pick(["add", "promote", "remove"] as const);
          if (action === "add" && config.voters.length + config.learners.length < 7) {
            cluster.addServer(leader);
          } else if (action === "promote" && config.learners.length > 0) {
            cluster.proposeConfChange(leader, { type: "promote", nodeId: prng.pick(config.learners) });
          } else if (action === "remove" && config.voters.length > 3) {
            cluster.proposeConfChange(leader, { type: "remove", nodeId: prng.pick([...config.voters, ...config.learners]) });
          }
        }
      }
      if (prng.chance(transferRate)) {
        const leader = cluster.leader();
        if (leader !== undefined) cluster.transferLeadership(leader, prng.pick(cluster.ids));
      }
    }
    cluster.healAndConverge(100 * electionTicks);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    const replay = `KV_SWARM_SEED=${seed} bun test test/raft-swarm.test.ts`;
    throw new Error(`swarm seed=${seed} failed: ${detail}\nreplay: ${replay}\n${cluster.describe()}`, { cause: error });
  }
  const acknowledged = cluster.acknowledged.map((proposal) => `${proposal.index}.${proposal.term}`).join(",");
  const digest = fnv1a(`${cluster.describe()}|${acknowledged}|${cluster.nowTick}|${cluster.readsServed}|${prng.next()}`);
  return {
    seed,
    nodeCount,
    acknowledged: cluster.acknowledged.length,
    crashes,
    partitions,
    ticks,
    snapshotsInstalled: cluster.snapshotsInstalled,
    confChanges: cluster.confChangesProposed,
    asyncStorage,
    powerLosses: cluster.powerLosses,
    stalls: cluster.stallsEnded,
    digest,
  };
}
