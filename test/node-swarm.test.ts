// Proves the node loop the server runs (KvNode) keeps every acknowledged write and answers clients
// linearizably under crashes with power loss, stalled processes, full disks, partitions, loss, delay,
// drifting clocks and leadership transfers, over a network that runs the real transport's sender,
// peer service and reply slots: 500 seeded runs on a simulated disk, network
// and clock, with one leader per term and log matching checked after every event, then healing and
// convergence. Each seed replays bit for bit.
// Replay one seed: KV_NODE_SWARM_SEED=N bun test test/node-swarm.test.ts ; more: KV_NODE_SWARM_SEEDS=5000 ;
// longer runs (simulated ms each, e.g. thousands of election timeouts): KV_SWARM_MS=600000.
import { expect, test } from "bun:test";
import { nodeSwarmReplay, runNodeSwarm, type NodeSwarmResult } from "../src/sim/node-swarm.ts";

const single = process.env.KV_NODE_SWARM_SEED;
const seedCount = Number(process.env.KV_NODE_SWARM_SEEDS ?? 500);
const runMs = process.env.KV_SWARM_MS === undefined ? undefined : Number(process.env.KV_SWARM_MS);
const seeds = single !== undefined ? [Number(single)] : Array.from({ length: seedCount }, (_, i) => i + 1);
const batchSize = 100;
/** Long runs (KV_SWARM_MS) take minutes of real time per seed: no timeout to speak of then. */
const longMode = runMs !== undefined;

const totals = { runs: 0, operations: 0, acknowledgedWrites: 0, crashes: 0, powerLosses: 0, stalls: 0, diskFullEpisodes: 0, partitions: 0, snapshotsInstalled: 0, repliesCarried: 0 };

function add(result: NodeSwarmResult): void {
  totals.runs++;
  totals.operations += result.operations;
  totals.acknowledgedWrites += result.acknowledgedWrites;
  totals.crashes += result.crashes;
  totals.powerLosses += result.powerLosses;
  totals.stalls += result.stalls;
  totals.diskFullEpisodes += result.diskFullEpisodes;
  totals.partitions += result.partitions;
  totals.snapshotsInstalled += result.snapshotsInstalled;
  totals.repliesCarried += result.repliesCarried;
}

for (let from = 0; from < seeds.length; from += batchSize) {
  const batch = seeds.slice(from, from + batchSize);
  test(`node swarm: seeds ${batch[0]}..${batch[batch.length - 1]} keep every acknowledged write, answer linearizably and converge`, async () => {
    for (const seed of batch) {
      const result = await runNodeSwarm(seed, runMs);
      add(result);
      console.log(`seed=${seed} ok: ${result.operations} operations (${result.acknowledgedWrites} writes acknowledged), ${result.crashes} crashes, ${result.stalls} stalls, ${result.partitions} partitions in ${result.simulatedMs} ms; replay: ${nodeSwarmReplay(seed, runMs)}`);
    }
  }, longMode ? 24 * 3_600_000 : 600_000);
}

test("node swarm: the runs really exercised the faults and made progress", () => {
  expect(totals.runs).toBe(seeds.length);
  expect(totals.acknowledgedWrites).toBeGreaterThan(seeds.length * 10);
  // Replies rode the answers to the calls that asked for them, as on the real transport.
  expect(totals.repliesCarried).toBeGreaterThan(seeds.length * 10);
  if (seeds.length >= 100) {
    expect(totals.crashes).toBeGreaterThan(seeds.length / 4);
    expect(totals.powerLosses).toBeGreaterThan(seeds.length / 10);
    expect(totals.stalls).toBeGreaterThan(seeds.length / 4);
    expect(totals.diskFullEpisodes).toBeGreaterThan(seeds.length / 10);
    expect(totals.partitions).toBeGreaterThan(seeds.length / 4);
    // Followers behind a compaction caught up from streamed images.
    expect(totals.snapshotsInstalled).toBeGreaterThan(seeds.length / 20);
  }
});

test("node swarm: a seed replays bit for bit (20 seeds run twice give the same digests)", async () => {
  const replayed = single !== undefined ? [Number(single)] : Array.from({ length: 20 }, (_, i) => 9_000 + i);
  // One seed given: it replays as it ran above, at its length (KV_SWARM_MS) too.
  const durationMs = single !== undefined ? runMs : undefined;
  for (const seed of replayed) {
    const first = await runNodeSwarm(seed, durationMs);
    const second = await runNodeSwarm(seed, durationMs);
    expect({ seed, digest: second.digest }).toEqual({ seed, digest: first.digest });
  }
}, longMode ? 24 * 3_600_000 : 120_000);
