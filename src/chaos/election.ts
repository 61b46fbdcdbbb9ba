import type { ChaosCluster } from "./cluster.ts";
import { readValue, request, type Outcome } from "./client.ts";
import { liveIds } from "./failover.ts";

export interface ElectionOptions {
  readonly rounds: number;
  readonly print: (line: string) => void;
}

export interface ElectionRound {
  readonly round: number;
  readonly killedLeader: number;
  readonly newLeader: number;
  /** Node id → what its write got. */
  readonly answers: Record<number, string>;
  readonly accepted: number[];
  readonly finalValues: Record<number, string | null>;
  readonly ok: boolean;
  readonly problem: string | undefined;
}

/**
 * Writes during an election: kill the leader, then at once send a write for one key, with a distinct
 * value per node, straight to every surviving node (no redirect following), retrying each while it
 * answers "no leader" so the writes race the election itself. At most one node may accept; once the
 * election settles every node must hold the same value, the accepted one if any was.
 */
export async function runElection(cluster: ChaosCluster, opts: ElectionOptions): Promise<{ ok: boolean; rounds: ElectionRound[] }> {
  const { print } = opts;
  const rounds: ElectionRound[] = [];
  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  for (let round = 1; round <= opts.rounds; round++) {
    const leader = await cluster.waitForLeader(liveIds(cluster), 15_000);
    print(`[Round ${round}] Leader is Node ${leader}; killing it and writing to every survivor at once...`);
    await cluster.kill(leader);
    const key = `election-${Date.now().toString(36)}-${round}`;
    const survivors = liveIds(cluster);
    const answers: Record<number, string> = {};
    const accepted: number[] = [];
    await Promise.all(
      survivors.map(async (id) => {
        const value = `from-node-${id}`;
        const deadline = performance.now() + 10_000;
        let outcome: Outcome;
        for (;;) {
          outcome = await request(cluster.node(id).httpUrl, "PUT", `/kv/${encodeURIComponent(key)}`, value, 3_000);
          // Keep racing the election while this node knows no leader or still points at the dead one.
          const pointsAtDead = outcome.kind === "fail" && outcome.status === 307 && outcome.location?.startsWith(`${cluster.node(leader).httpUrl}/`);
          const noLeader = outcome.kind === "fail" && outcome.error === "no_leader";
          if (!(pointsAtDead || noLeader) || performance.now() > deadline) break;
          await Bun.sleep(2); // retry interval while the election is under way
        }
        answers[id] = outcome.kind === "ok" ? "accepted" : outcome.kind === "fail" ? `${outcome.status} ${outcome.error}` : `unknown (${outcome.reason})`;
        if (outcome.kind === "ok") accepted.push(id);
      }),
    );
    const newLeader = await cluster.waitForLeader(survivors, 15_000);
    const status = await cluster.status(newLeader);
    await cluster.waitForConvergence(status?.commitIndex ?? 0, 15_000);
    const finalValues: Record<number, string | null> = {};
    for (const id of survivors) {
      const got = readValue(await request(cluster.node(id).httpUrl, "GET", `/kv/${encodeURIComponent(key)}?consistency=stale`));
      finalValues[id] = got ?? null;
    }
    const distinct = new Set(Object.values(finalValues));
    let problem: string | undefined;
    if (accepted.length > 1) problem = `${accepted.length} nodes accepted a write during one election: ${accepted.join(", ")}`;
    else if (distinct.size !== 1) problem = `replicas disagree: ${JSON.stringify(finalValues)}`;
    else if (accepted.length === 1 && finalValues[survivors[0] as number] !== `from-node-${accepted[0]}`) {
      problem = `node ${accepted[0]} accepted its write but the replicas hold ${JSON.stringify(finalValues[survivors[0] as number])}`;
    }
    const ok = problem === undefined;
    for (const id of survivors) print(`         Node ${id}: ${answers[id]}`);
    print(`         New leader: Node ${newLeader}; every replica holds ${JSON.stringify([...distinct][0])}${ok ? "" : ` ❌ ${problem}`}`);
    rounds.push({ round, killedLeader: leader, newLeader, answers, accepted, finalValues, ok, problem });
    await cluster.startNode(leader); // back to three nodes for the next round
  }
  const ok = rounds.every((r) => r.ok);
  print("");
  print("=== Results ===");
  print(`Rounds: ${rounds.length}`);
  print(`Rounds with more than one node accepting: ${rounds.filter((r) => r.accepted.length > 1).length}`);
  print(`Rounds where replicas disagreed or lost the accepted write: ${rounds.filter((r) => !r.ok && r.accepted.length <= 1).length}`);
  print("");
  print(ok ? "✅ SUCCESS: At most one node accepted writes in every election, and every replica agrees!" : "❌ FAILURE: see the rounds above");
  return { ok, rounds };
}
