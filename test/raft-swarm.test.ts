// Proves election safety, log matching, leader completeness and state machine safety hold after every
// step of 500 randomized simulator runs (faults drawn from each seed, half of them with disks that
// fsync in the background and crashes that lose what was not yet fsynced, processes that stall and
// make up their ticks, and clocks that drift within the lease's bound), and that every run converges once healed.
// Replay one seed: KV_SWARM_SEED=N bun test test/raft-swarm.test.ts ; more seeds: KV_SWARM_SEEDS=5000.
import { expect, test } from "bun:test";
import { runSwarm } from "../src/sim/swarm.ts";

const single = process.env.KV_SWARM_SEED;
const seedCount = Number(process.env.KV_SWARM_SEEDS ?? 500);
const seeds = single !== undefined ? [Number(single)] : Array.from({ length: seedCount }, (_, i) => i + 1);

test(`swarm: ${seeds.length} seeded runs keep Raft's safety properties and converge`, () => {
  let acknowledged = 0;
  let crashes = 0;
  let partitions = 0;
  let snapshots = 0;
  let confChanges = 0;
  let asyncRuns = 0;
  let powerLosses = 0;
  let stalls = 0;
  for (const seed of seeds) {
    const result = runSwarm(seed);
    acknowledged += result.acknowledged;
    crashes += result.crashes;
    partitions += result.partitions;
    snapshots += result.snapshotsInstalled;
    confChanges += result.confChanges;
    if (result.asyncStorage) asyncRuns++;
    powerLosses += result.powerLosses;
    stalls += result.stalls;
  }
  // The runs must really have exercised faults and made progress, or they prove nothing.
  expect(acknowledged).toBeGreaterThan(seeds.length);
  if (seeds.length >= 100) {
    expect(crashes).toBeGreaterThan(seeds.length / 10);
    expect(partitions).toBeGreaterThan(seeds.length / 10);
    expect(snapshots).toBeGreaterThan(seeds.length / 20);
    expect(confChanges).toBeGreaterThan(seeds.length / 10);
    // About half the runs fsync in the background, and some of their crashes lose unsynced writes.
    expect(asyncRuns).toBeGreaterThan(seeds.length / 4);
    expect(powerLosses).toBeGreaterThan(seeds.length / 20);
    // Processes stall (and resume, making up their ticks) in about half the runs.
    expect(stalls).toBeGreaterThan(seeds.length / 4);
  }
}, 300_000);

// Seeds that once failed, kept as regressions: each replays the run that found the bug.
const regressions: Record<number, string> = {
  702661: "a voter whose log still held the old configuration kept its dead leader's lease forever and refused every pre-vote",
  813372: "the same stuck election, found before the partition shuffle was made deterministic",
};

for (const [seed, what] of Object.entries(regressions)) {
  test(`swarm regression seed=${seed}: ${what}`, () => {
    expect(runSwarm(Number(seed)).acknowledged).toBeGreaterThan(0);
  });
}
