// Proves the node loop the server runs (KvNode) keeps every acknowledged write and answers clients
// linearizably under crashes with power loss, stalled processes, full disks, partitions, loss, delay,
// drifting clocks, leadership transfers and membership changes (servers joining empty, voters and
// leaders removed, removed servers joining again on a wiped disk) in clusters of 3, 5 and 7, over a
// network that runs the real transport's sender, peer service and reply slots: 500 seeded runs (and
// 20 runs of 20 simulated seconds) on a
// simulated disk, network and clock, with one leader per term and log matching across every server
// that ever ran checked after every event (and from the simulated disks: what a leader commits is
// fsynced on a majority of its voters, a granted vote is fsynced before it leaves), then healing and
// convergence of the members. In most runs
// bank clients also move money between accounts with multi-key transactions, judged by
// src/chaos/bank.ts (no money made or lost, no transaction seen in part, no stale read), and
// watchers follow the clients' keys, resuming on other nodes as their streams end, judged by
// src/chaos/watch-check.ts (none missing, none twice, in order, no phantom). Half the clients' writes
// carry an idempotency key and are retried under it while their outcome is unknown; no key may change
// the state twice, while wall clocks (the leaders' session stamps) step by up to an hour. Lease
// clients keep leases alive and let them run out; none may end before its TTL after a call that was
// answered it was alive. Power losses keep a drawn prefix of the log's unsynced saves. Each seed replays bit for bit.
// Replay one seed: KV_NODE_SWARM_SEED=N bun test test/node-swarm.test.ts ; more: KV_NODE_SWARM_SEEDS=5000 ;
// longer runs (simulated ms each, e.g. thousands of election timeouts): KV_SWARM_MS=600000.
import { expect, test } from "bun:test";
import { nodeSwarmReplay, runNodeSwarm, type NodeSwarmResult } from "../src/sim/node-swarm.ts";

const single = process.env.KV_NODE_SWARM_SEED;
/** A whole number from the environment, or a failure naming the variable (`abc` ran as seed NaN: found in review). */
function wholeNumber(name: string, text: string, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value > max) throw new Error(`${name}=${text}: a whole number from 0 to ${max} is wanted`);
  return value;
}
// Seeds past 2^32 would alias smaller ones in the PRNGs' seeding (>>> 0).
if (single !== undefined) wholeNumber("KV_NODE_SWARM_SEED", single, 2 ** 32 - 1);
const seedCount = wholeNumber("KV_NODE_SWARM_SEEDS", process.env.KV_NODE_SWARM_SEEDS ?? "500", 1_000_000);
const runMs = process.env.KV_SWARM_MS === undefined ? undefined : wholeNumber("KV_SWARM_MS", process.env.KV_SWARM_MS, 86_400_000);
const seeds = single !== undefined ? [Number(single)] : Array.from({ length: seedCount }, (_, i) => i + 1);
const batchSize = 100;
/** Long runs (KV_SWARM_MS) take minutes of real time per seed: no timeout to speak of then. */
const longMode = runMs !== undefined;

const totals = {
  runs: 0,
  operations: 0,
  acknowledgedWrites: 0,
  crashes: 0,
  powerLosses: 0,
  stalls: 0,
  diskFullEpisodes: 0,
  partitions: 0,
  snapshotsInstalled: 0,
  storageThreadAnswers: 0,
  storageThreadInstalls: 0,
  storageThreadBlockedWrites: 0,
  stateMachineAhead: 0,
  unsyncedSavesKept: 0,
  threadWorkLost: 0,
  retries: 0,
  sessionAnswers: 0,
  wallClockJumps: 0,
  leasesGranted: 0,
  leaseKeepalives: 0,
  leasesRevoked: 0,
  leasesExpired: 0,
  repliesCarried: 0,
  fiveNodeRuns: 0,
  sevenNodeRuns: 0,
  joins: 0,
  rejoins: 0,
  removals: 0,
  leaderRemovals: 0,
  bankTransfers: 0,
  bankReads: 0,
  watchers: 0,
  watchStreams: 0,
  watchEvents: 0,
  watchSlowWatcherEnds: 0,
  watchCompactedEnds: 0,
  compactSteps: 0,
  peerCallsRefusedRemoved: 0,
  removedToldByPeer: 0,
  staleProcesses: 0,
  peerCallsRefusedStaleMember: 0,
  olderProcessCalls: 0,
  olderProcessStalls: 0,
  olderProcessPartitions: 0,
  refusedCompareAndSets: 0,
  leaseKeysJudged: 0,
};

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
  totals.storageThreadAnswers += result.storageThreadAnswers;
  totals.storageThreadInstalls += result.storageThreadInstalls;
  totals.storageThreadBlockedWrites += result.storageThreadBlockedWrites;
  totals.stateMachineAhead += result.stateMachineAhead;
  totals.unsyncedSavesKept += result.unsyncedSavesKept;
  totals.threadWorkLost += result.threadWorkLost;
  totals.retries += result.retries;
  totals.sessionAnswers += result.sessionAnswers;
  totals.wallClockJumps += result.wallClockJumps;
  totals.leasesGranted += result.leasesGranted;
  totals.leaseKeepalives += result.leaseKeepalives;
  totals.leasesRevoked += result.leasesRevoked;
  totals.leasesExpired += result.leasesExpired;
  totals.repliesCarried += result.repliesCarried;
  if (result.nodeCount === 5) totals.fiveNodeRuns++;
  if (result.nodeCount === 7) totals.sevenNodeRuns++;
  totals.joins += result.joins;
  totals.rejoins += result.rejoins;
  totals.removals += result.removals;
  totals.leaderRemovals += result.leaderRemovals;
  totals.bankTransfers += result.bankTransfers;
  totals.bankReads += result.bankReads;
  totals.watchers += result.watchers;
  totals.watchStreams += result.watchStreams;
  totals.watchEvents += result.watchEvents;
  totals.watchSlowWatcherEnds += result.watchSlowWatcherEnds;
  totals.watchCompactedEnds += result.watchCompactedEnds;
  totals.compactSteps += result.compactSteps;
  totals.peerCallsRefusedRemoved += result.peerCallsRefusedRemoved;
  totals.removedToldByPeer += result.removedToldByPeer;
  totals.staleProcesses += result.staleProcesses;
  totals.peerCallsRefusedStaleMember += result.peerCallsRefusedStaleMember;
  totals.olderProcessStalls += result.olderProcessStalls;
  totals.olderProcessPartitions += result.olderProcessPartitions;
  totals.olderProcessCalls += result.olderProcessCalls;
  totals.refusedCompareAndSets += result.refusedCompareAndSets;
  totals.leaseKeysJudged += result.leaseKeysJudged;
}

for (let from = 0; from < seeds.length; from += batchSize) {
  const batch = seeds.slice(from, from + batchSize);
  test(`node swarm: seeds ${batch[0]}..${batch[batch.length - 1]} keep every acknowledged write, answer linearizably and converge`, async () => {
    for (const seed of batch) {
      const result = await runNodeSwarm(seed, runMs);
      add(result);
      const membership = result.joins + result.rejoins + result.removals > 0 ? `, ${result.joins} joins, ${result.rejoins} rejoins, ${result.removals} removals (${result.leaderRemovals} of the leader)` : "";
      const watched = result.watchers > 0 ? `, ${result.watchers} watchers (${result.watchEvents} events)` : "";
      console.log(`seed=${seed} ok: ${result.nodeCount} nodes, ${result.operations} operations (${result.acknowledgedWrites} writes acknowledged), ${result.crashes} crashes, ${result.stalls} stalls, ${result.partitions} partitions${membership}${watched} in ${result.simulatedMs} ms, digest ${result.digest}; replay: ${nodeSwarmReplay(seed, runMs)}`);
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
    // Applies and installs answered later, by a storage thread, as the server's are.
    expect(totals.storageThreadAnswers).toBeGreaterThan(seeds.length * 10);
    expect(totals.storageThreadInstalls).toBeGreaterThan(seeds.length / 50);
    // A full disk met by a storage thread: the write it retried, the writes after it refused.
    expect(totals.storageThreadBlockedWrites).toBeGreaterThan(seeds.length / 50);
    // Power losses that kept the state machine's pages and only the log's durable image (two files).
    expect(totals.stateMachineAhead).toBeGreaterThan(seeds.length / 50);
    // Crashes without power loss that lost requests (saves, applies, installs) the storage thread had not
    // run (seeds 1-500: 30).
    expect(totals.threadWorkLost).toBeGreaterThan(seeds.length / 20);
    // Power losses that kept saves written after the last fsync; writes retried under their
    // idempotency key, and applies a session answered; wall clocks stepped; leases granted, kept
    // alive, revoked and run out (seeds 1-1000: 402 / 2,592 / 1,508; 249; 2,652 / 5,675 / 872 / 1,259).
    expect(totals.unsyncedSavesKept).toBeGreaterThan(seeds.length / 10);
    expect(totals.retries).toBeGreaterThan(seeds.length);
    expect(totals.sessionAnswers).toBeGreaterThan(seeds.length / 2);
    expect(totals.wallClockJumps).toBeGreaterThan(seeds.length / 10);
    expect(totals.leasesGranted).toBeGreaterThan(seeds.length);
    expect(totals.leaseKeepalives).toBeGreaterThan(seeds.length);
    expect(totals.leasesRevoked).toBeGreaterThan(seeds.length / 4);
    expect(totals.leasesExpired).toBeGreaterThan(seeds.length / 2);
    // Clusters other than 3, and the configuration changing while the faults ran.
    expect(totals.fiveNodeRuns).toBeGreaterThan(seeds.length / 10);
    expect(totals.sevenNodeRuns).toBeGreaterThan(seeds.length / 20);
    expect(totals.joins).toBeGreaterThan(seeds.length / 10);
    expect(totals.rejoins).toBeGreaterThan(seeds.length / 50);
    expect(totals.removals).toBeGreaterThan(seeds.length / 5);
    expect(totals.leaderRemovals).toBeGreaterThan(seeds.length / 20);
    // The bank's transactions moved money, and its reads of several accounts were judged.
    expect(totals.bankTransfers).toBeGreaterThan(seeds.length * 10);
    expect(totals.bankReads).toBeGreaterThan(seeds.length * 20);
    // Watch streams, resumed across nodes as they ended, judged by kv chaos watch's checker
    // (src/sim/sim-watch.ts).
    expect(totals.watchers).toBeGreaterThan(seeds.length);
    expect(totals.watchStreams).toBeGreaterThan(totals.watchers * 2);
    expect(totals.watchEvents).toBeGreaterThan(seeds.length * 100);
    // Streams whose clients lagged, ended as slow_watcher and as compacted, and resumed (seeds
    // 1-100: 164 and 27); compactions carried on over ticks in steps of 1 or 4 entries (seeds 1-100:
    // 26,089 steps, where steps of 512 alone took 1,933). None happened before these were drawn.
    expect(totals.watchSlowWatcherEnds).toBeGreaterThan(seeds.length / 2);
    expect(totals.watchCompactedEnds).toBeGreaterThan(seeds.length / 20);
    expect(totals.compactSteps).toBeGreaterThan(seeds.length * 50);
    // Calls from removed members, refused by the receivers' guards as the server's transport
    // refuses them (src/transport/peer-call-guard.ts), which tells the caller it was removed (seeds
    // 1-150: 143 in 16 runs; the simulated network ran no guard before).
    expect(totals.peerCallsRefusedRemoved).toBeGreaterThan(seeds.length / 20);
    // And the callers' nodes were told (a code review: seeds 1-150 ran removedByPeer 141 times).
    expect(totals.removedToldByPeer).toBeGreaterThan(seeds.length / 20);
    // Members removed while cut off whose process ran on while their id was added again for a new
    // one, and the calls of those older processes refused as stale_member (seeds 1-500: 70 such
    // processes, 4,663 refusals in 54 runs, and 1,066 client calls to them; none before NodeSim.detach).
    expect(totals.staleProcesses).toBeGreaterThan(seeds.length / 20);
    expect(totals.peerCallsRefusedStaleMember).toBeGreaterThan(seeds.length);
    expect(totals.olderProcessCalls).toBeGreaterThan(seeds.length);
    // Older processes stalled and put on a side of their own in partitions once they reached their
    // peers again (seeds 1-500: 24 stalls, 33 partitions, 2 killed; none before). A leader's calls
    // meant for an older process (stale_recipient) happened in one run of seeds 1-500: the directed
    // scenarios in test/node-sim.test.ts cover them.
    expect(totals.olderProcessStalls).toBeGreaterThan(seeds.length / 50);
    expect(totals.olderProcessPartitions).toBeGreaterThan(seeds.length / 50);
    // Compare-and-sets refused 409, each judged as a read of the version its answer named, and the
    // lease clients' keys judged against the converged state (seeds 1-500: 10,706 and 1,918; both
    // were judged by nothing before).
    expect(totals.refusedCompareAndSets).toBeGreaterThan(seeds.length * 5);
    expect(totals.leaseKeysJudged).toBeGreaterThan(seeds.length);
  }
});

// The swarm found two node bugs: a removed voter joining again under its id stayed "removed"
// (seeds 190, 323, 408), and transferLeadership threw its refusals (seeds 635, 444). Those seeds
// failed before the fixes, but which seeds meet a situation changes with every timing in the node
// and transport, so the regressions are the directed tests in test/node-sim.test.ts and
// test/node.test.ts (which failed before), and the runs above, whose totals count re-joins.

// A few longer runs too (20 s simulated, 40-200 election timeouts each), unless one seed or a length
// was asked for: a lease three times too long was caught by about one 20 s run in 60, never in 150
// short ones (a review's mutation). Replay one: KV_NODE_SWARM_SEED=N KV_SWARM_MS=20000.
const longSeeds = single === undefined && !longMode ? Array.from({ length: 20 }, (_, i) => 20_001 + i) : [];
if (longSeeds.length > 0) {
  test(`node swarm: long runs, seeds ${longSeeds[0]}..${longSeeds[longSeeds.length - 1]} (20 s each)`, async () => {
    for (const seed of longSeeds) {
      const result = await runNodeSwarm(seed, 20_000);
      add(result);
      console.log(`seed=${seed} ok (long): ${result.nodeCount} nodes, ${result.operations} operations (${result.acknowledgedWrites} writes acknowledged), ${result.partitions} partitions, digest ${result.digest}; replay: ${nodeSwarmReplay(seed, 20_000)}`);
    }
  }, 600_000);
}

test("node swarm: a seed replays bit for bit (20 or more seeds run twice give the same digests)", async () => {
  // One seed given: it replays as it ran above, at its length (KV_SWARM_MS) too.
  const durationMs = single !== undefined ? runMs : undefined;
  const covered = { sevenNodes: false, membershipChanges: false };
  // Seeds from 9,000 on: at least 20, and on until the sample holds a 7-node cluster and a run whose
  // configuration changed both ways (at most 60).
  const sampleDone = (count: number): boolean => count >= 60 || (count >= 20 && covered.sevenNodes && covered.membershipChanges);
  for (let count = 0; single !== undefined ? count < 1 : !sampleDone(count); count++) {
    const seed = single !== undefined ? Number(single) : 9_000 + count;
    const first = await runNodeSwarm(seed, durationMs);
    const second = await runNodeSwarm(seed, durationMs);
    expect({ seed, digest: second.digest }).toEqual({ seed, digest: first.digest });
    covered.sevenNodes ||= first.nodeCount === 7;
    covered.membershipChanges ||= first.joins > 0 && first.removals > 0;
  }
  // The sample replays 7-node clusters and runs whose configuration changed.
  if (single === undefined) expect(covered).toEqual({ sevenNodes: true, membershipChanges: true });
}, longMode ? 24 * 3_600_000 : 120_000);

test("node swarm: a node that stops on its own fails the run with its seed, whichever callback its turn ran in (found in a review: some were unhandled rejections, with no seed and no end)", async () => {
  // Node 1's storage fails on its nth apply: turns run from an fsync's or an apply's callback, or a timer.
  for (const nth of [10, 11, 12, 13, 14, 15]) {
    let calls = 0;
    const failure = await runNodeSwarm(7, 2_000, {
      onStart: (sim) => {
        const disk = sim.servers.get(1)?.disk as { applyEntries: (...args: unknown[]) => unknown };
        const apply = disk.applyEntries.bind(disk);
        disk.applyEntries = (...args: unknown[]) => {
          if (++calls === nth) throw new Error(`injected storage failure #${nth}`);
          return apply(...args);
        };
      },
    }).then(
      () => undefined,
      (error: Error) => error,
    );
    expect([nth, failure?.message ?? "the run passed"]).toEqual([nth, expect.stringContaining("node swarm seed=7 failed")]);
    expect(failure?.message).toContain(`node 1 stopped on its own: injected storage failure #${nth}`);
  }
});
