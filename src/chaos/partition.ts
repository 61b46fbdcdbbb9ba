import { describeOutcome, readValue, request, tally, type Outcome } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { LiveDisplay } from "./live-display.ts";
import { forEachLimit, printVerification, verificationHolds, verifyWrites, type AbsentWrite, type Verification } from "./verify.ts";
import { createLedger, kvPath, LeaderClient } from "./write-load.ts";

export interface PartitionOptions {
  /** Partitions to provoke, one after another, each isolating the leader of the moment. */
  readonly rounds: number;
  /** Writes sent straight to the isolated leader, and writes acknowledged through the majority, per round. */
  readonly keys: number;
  /** Client timeout per request; writes to the isolated leader end in it. */
  readonly requestTimeoutMs: number;
  readonly display: LiveDisplay;
}

/** What one partition round saw. */
export interface PartitionRound {
  readonly round: number;
  readonly isolatedLeader: number;
  readonly isolatedTerm: number;
  readonly newLeader: number;
  readonly newTerm: number;
  /** From cutting the links to a majority agreeing on a new leader. */
  readonly electionMs: number;
  /** Writes sent straight to the isolated leader during the partition. */
  readonly isolatedWrites: { acknowledged: number; refused: number; unknown: number };
  /** Keys the isolated leader acknowledged: each is an anomaly. */
  readonly acknowledgedByIsolated: string[];
  readonly majorityAcknowledged: number;
  /** The linearizable read of the probe key on the isolated leader, after the majority overwrote it. */
  readonly isolatedRead: string;
  /** Applied index all three reached after healing, and how long that took. */
  readonly convergedIndex: number;
  readonly convergeMs: number;
  readonly problems: string[];
}

export interface PartitionResult {
  readonly ok: boolean;
  readonly rounds: PartitionRound[];
  readonly acknowledged: number;
  readonly verification: Verification;
}

/**
 * Partition: cut every link between the leader and both followers (through the runner's proxies).
 * During the partition, writes sent straight to the isolated leader must never be acknowledged and a
 * linearizable read on it must not return the value the majority has since overwritten; meanwhile
 * the majority elects a leader and acknowledges writes. Heal: every node converges on the same
 * applied index, every acknowledged write is readable everywhere, and none of the isolated leader's
 * writes took effect (they were only ever in its own log, behind the cut).
 */
export async function runPartition(cluster: ChaosCluster, opts: PartitionOptions): Promise<PartitionResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const runId = Date.now().toString(36);
  const client = new LeaderClient(cluster, opts.requestTimeoutMs);
  const { acked, mustBeAbsent, counters, count, putAcked } = createLedger(client);
  const rounds: PartitionRound[] = [];

  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  const first = await cluster.waitForLeader(undefined, 20_000);
  print(`         Leader elected: Node ${first}`);
  print(`[Step 3] Writing ${opts.keys} keys through the leader...`);
  await forEachLimit(range(opts.keys), 4, (i) => putAcked(`partition-${runId}-before-${i}`, `before-${i}`));
  print(`         Acknowledged ${opts.keys} writes`);

  display.track(() => counters);
  for (let round = 1; round <= opts.rounds; round++) {
    const problems: string[] = [];
    const leader = await cluster.waitForLeader(undefined, 20_000);
    const isolatedTerm = (await cluster.status(leader, 2_000))?.term ?? 0;
    const probeKey = `partition-${runId}-probe-${round}`;
    await putAcked(probeKey, `old-${round}`);
    const others = cluster.nodes.map((n) => n.id).filter((id) => id !== leader);

    print(`[Round ${round}] Isolating leader Node ${leader} (term ${isolatedTerm}) from both followers...`);
    cluster.isolate(leader);
    const cutAt = performance.now();
    display.setFault(`node ${leader} isolated`);
    client.avoid.add(leader);

    // Straight to the isolated leader, all at once, no redirects: none may come back 200.
    const isolatedKeys = range(opts.keys).map((i) => ({ key: `partition-${runId}-r${round}-isolated-${i}`, value: `isolated-${i}` }));
    const isolatedWrites = Promise.all(
      isolatedKeys.map(async ({ key, value }) => {
        const outcome = await request(cluster.node(leader).httpUrl, "PUT", kvPath(key), value, opts.requestTimeoutMs);
        count(outcome);
        return outcome;
      }),
    );

    const newLeader = await cluster.waitForLeader(others, 20_000);
    const electionMs = Math.round(performance.now() - cutAt);
    const newTerm = (await cluster.status(newLeader, 2_000))?.term ?? 0;
    print(`         Majority elected Node ${newLeader} (term ${newTerm}) ${electionMs} ms after the cut`);
    client.leaderHint = newLeader;
    await putAcked(probeKey, `new-${round}`);
    await forEachLimit(range(opts.keys), 4, (i) => putAcked(`partition-${runId}-r${round}-majority-${i}`, `majority-${i}`));
    print(`         Majority acknowledged ${opts.keys + 1} writes during the partition`);

    // The majority has overwritten the probe: the isolated leader must not serve the old value.
    const readOutcome = await request(cluster.node(leader).httpUrl, "GET", kvPath(probeKey), undefined, opts.requestTimeoutMs);
    count(readOutcome);
    const readValueGot = readValue(readOutcome);
    if (readValueGot !== undefined && readValueGot !== `new-${round}`) {
      problems.push(`stale read: the isolated leader answered a linearizable read of ${probeKey} with ${describeOutcome(readOutcome)}, but the majority had acknowledged "new-${round}"`);
    }
    print(`         Linearizable read of the overwritten key on the isolated leader: ${describeOutcome(readOutcome)}`);

    const outcomes = await isolatedWrites;
    const isolatedTally = tally(outcomes);
    const acknowledgedByIsolated = isolatedKeys.filter((_, i) => outcomes[i]?.kind === "ok").map((w) => w.key);
    for (const key of acknowledgedByIsolated) problems.push(`the isolated leader acknowledged a write: ${key}`);
    // Only the isolated leader ever held these (proposed after the cut): none may take effect.
    isolatedKeys.forEach((write, i) => {
      if (outcomes[i]?.kind !== "ok") mustBeAbsent.push(write);
    });
    print(
      `         Writes sent to the isolated leader: ${isolatedTally.acknowledged} acknowledged, ${isolatedTally.refused} refused, ${isolatedTally.unknown} unknown`,
    );

    print(`[Round ${round}] Healing the partition...`);
    cluster.heal();
    client.avoid.delete(leader);
    display.setFault("none");
    const healedAt = performance.now();
    const leaderAfter = await cluster.waitForLeader(undefined, 20_000);
    const commitIndex = (await cluster.status(leaderAfter, 2_000))?.commitIndex ?? 0;
    await cluster.waitForConvergence(commitIndex, 20_000);
    const convergeMs = Math.round(performance.now() - healedAt);
    const oldLeaderStatus = await cluster.status(leader, 2_000);
    const convergedIndex = oldLeaderStatus?.appliedIndex ?? commitIndex;
    print(
      `         All 3 nodes converged on applied index ${convergedIndex} in ${convergeMs} ms; Node ${leader} is now ${oldLeaderStatus?.role ?? "?"} in term ${oldLeaderStatus?.term ?? "?"}`,
    );
    for (const problem of problems) print(`         ❌ ${problem}`);
    rounds.push({
      round,
      isolatedLeader: leader,
      isolatedTerm,
      newLeader,
      newTerm,
      electionMs,
      isolatedWrites: isolatedTally,
      acknowledgedByIsolated,
      majorityAcknowledged: opts.keys + 1,
      isolatedRead: describeOutcome(readOutcome),
      convergedIndex,
      convergeMs,
      problems,
    });
  }
  display.untrack();

  print(`[Step 4] Verifying all acknowledged writes on every node...`);
  const verification = await verifyWrites(cluster, client, acked, mustBeAbsent);
  const isolatedAcks = rounds.reduce((sum, r) => sum + r.acknowledgedByIsolated.length, 0);
  const staleReads = rounds.filter((r) => r.problems.some((p) => p.startsWith("stale read"))).length;

  print("");
  print("=== Results ===");
  print(`Partitions: ${rounds.length}`);
  print(`Writes acknowledged by an isolated leader: ${isolatedAcks}`);
  print(`Stale reads from an isolated leader: ${staleReads}`);
  print(`Converged on applied index: ${verification.convergedIndex}`);
  printVerification(verification, print, "Isolated leader's writes that took effect");
  const ok = isolatedAcks === 0 && staleReads === 0 && verificationHolds(verification);
  print("");
  print(
    ok
      ? "✅ SUCCESS: The isolated leader acknowledged nothing, the majority served, and every node converged with every acknowledged write!"
      : "❌ FAILURE: see the evidence above",
  );
  return { ok, rounds, acknowledged: acked.size, verification };
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
