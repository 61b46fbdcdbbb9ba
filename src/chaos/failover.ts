import type { ChaosCluster } from "./cluster.ts";
import { readValue, request } from "./client.ts";

export interface FailoverOptions {
  /** Keys in each of the two batches. */
  readonly keys: number;
  /** Writers running at once. */
  readonly concurrency: number;
  readonly print: (line: string) => void;
}

export interface FailoverResult {
  readonly ok: boolean;
  readonly acknowledged: number;
  readonly missing: string[];
  readonly wrong: { key: string; expected: string; got: string | null }[];
  readonly killedLeader: number;
  readonly newLeader: number;
  /** `failed`: refused by a node (not applied); `redirected`: a follower's 307, which this writer does not follow (not applied either). */
  readonly inFlight: { acknowledged: number; failed: number; redirected: number; unknown: number };
}

/**
 * Leader failover during writes: write a batch, SIGKILL the leader while a writer keeps writing
 * through the kill, write a second batch through the new leader, then read every acknowledged
 * write back linearizably from the new leader and from every live replica once converged.
 */
export async function runFailover(cluster: ChaosCluster, opts: FailoverOptions): Promise<FailoverResult> {
  const { print } = opts;
  const runId = Date.now().toString(36);
  const acked = new Map<string, string>();

  let knownLeader: number | undefined;
  /** Writes one key until it is acknowledged (through the current leader); false if it never is. */
  const writeUntilAcked = async (key: string, value: string, deadlineMs: number): Promise<boolean> => {
    while (performance.now() < deadlineMs) {
      if (knownLeader === undefined || cluster.node(knownLeader).state !== "running") {
        knownLeader = await cluster.waitForLeader(liveIds(cluster), Math.max(1, deadlineMs - performance.now())).catch(() => undefined);
        if (knownLeader === undefined) return false;
      }
      const outcome = await request(cluster.node(knownLeader).httpUrl, "PUT", `/kv/${encodeURIComponent(key)}`, value);
      if (outcome.kind === "ok") {
        acked.set(key, value);
        return true;
      }
      knownLeader = undefined; // refused or unknown: find the leader again and retry the same unique value
    }
    return false;
  };

  const writeBatch = async (batch: string, count: number): Promise<number> => {
    const deadline = performance.now() + 30_000;
    let next = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: opts.concurrency }, async () => {
        while (next < count) {
          const i = next++;
          const key = `failover-${runId}-${batch}-${i}`;
          if (await writeUntilAcked(key, `${batch}-value-${i}`, deadline)) done++;
        }
      }),
    );
    return done;
  };

  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  const leader = await cluster.waitForLeader();
  print(`         Leader elected: Node ${leader}`);

  print(`[Step 3] Writing first batch (${opts.keys} keys)...`);
  const first = await writeBatch("first", opts.keys);
  print(`         Acknowledged ${first} writes before crash`);

  // A writer that keeps going through the kill: its writes are in flight when the SIGKILL lands.
  const inFlight = { acknowledged: 0, failed: 0, redirected: 0, unknown: 0 };
  let stopInFlight = false;
  let inFlightSeq = 0;
  const inFlightWriters = Array.from({ length: opts.concurrency }, async () => {
    while (!stopInFlight) {
      const i = inFlightSeq++;
      const key = `failover-${runId}-inflight-${i}`;
      const value = `inflight-value-${i}`;
      const target = cluster.nodes.find((n) => n.state === "running" && n.id === leader) ?? cluster.nodes.find((n) => n.state === "running");
      if (target === undefined) break;
      const outcome = await request(target.httpUrl, "PUT", `/kv/${encodeURIComponent(key)}`, value, 2_000);
      if (outcome.kind === "ok") {
        acked.set(key, value);
        inFlight.acknowledged++;
      } else if (outcome.kind === "fail") {
        // A follower's 307 to the leader is no refusal of the write (this writer does not follow it).
        if (outcome.status === 307) inFlight.redirected++;
        else inFlight.failed++;
        await Bun.sleep(5); // a refused write: back off briefly before the next one
      } else {
        inFlight.unknown++;
      }
    }
  });
  // Let the in-flight writers get going, then kill while they are mid-request.
  while (inFlight.acknowledged < opts.concurrency) await Bun.sleep(1); // wait for writes to be flowing

  print(`[Step 4] Killing leader (Node ${leader})...`);
  await cluster.kill(leader);
  print("         Leader killed!");

  print("[Step 5] Waiting for new leader election...");
  const killedAt = performance.now();
  const newLeader = await cluster.waitForLeader(liveIds(cluster), 15_000);
  print(`         New leader elected: Node ${newLeader} (${Math.round(performance.now() - killedAt)} ms after the kill)`);

  print(`[Step 6] Writing second batch (${opts.keys} keys)...`);
  const second = await writeBatch("second", opts.keys);
  stopInFlight = true;
  await Promise.all(inFlightWriters);
  print(`         Acknowledged ${second} writes after failover`);
  print(
    `         Writes in flight through the kill: ${inFlight.acknowledged} acknowledged, ${inFlight.failed} refused, ${inFlight.unknown} unknown` +
      (inFlight.redirected === 0 ? "" : `; ${inFlight.redirected} sent to a follower were redirected to the leader (not followed, not applied)`),
  );
  print(`         Total acknowledged writes: ${acked.size}`);

  print("[Step 7] Verifying all acknowledged writes...");
  const missing: string[] = [];
  const wrong: FailoverResult["wrong"] = [];
  const check = (key: string, expected: string, got: string | null | undefined, where: string) => {
    if (got === null) missing.push(`${key} (${where})`);
    else if (got !== expected) wrong.push({ key: `${key} (${where})`, expected, got: got ?? "<no answer>" });
  };
  const verifier = await cluster.waitForLeader(liveIds(cluster), 15_000);
  for (const [key, value] of acked) {
    check(key, value, readValue(await request(cluster.node(verifier).httpUrl, "GET", `/kv/${encodeURIComponent(key)}`)), `leader ${verifier}`);
  }
  const status = await cluster.status(verifier);
  await cluster.waitForConvergence(status?.commitIndex ?? 0, 15_000);
  for (const node of cluster.nodes.filter((n) => n.state === "running")) {
    for (const [key, value] of acked) {
      const outcome = await request(node.httpUrl, "GET", `/kv/${encodeURIComponent(key)}?consistency=stale`);
      check(key, value, readValue(outcome), `replica ${node.id}`);
    }
  }

  print("");
  print("=== Results ===");
  print(`Total acknowledged writes: ${acked.size}`);
  print(`Missing keys: ${missing.length}`);
  print(`Wrong values: ${wrong.length}`);
  for (const key of missing.slice(0, 20)) print(`  missing: ${key}`);
  for (const w of wrong.slice(0, 20)) print(`  wrong: ${w.key}: expected ${JSON.stringify(w.expected)}, got ${JSON.stringify(w.got)}`);
  const ok = missing.length === 0 && wrong.length === 0 && first === opts.keys && second === opts.keys;
  if (first !== opts.keys || second !== opts.keys) print(`Unavailable: only ${first} + ${second} of ${2 * opts.keys} batch writes were acknowledged`);
  print("");
  print(ok ? "✅ SUCCESS: All acknowledged writes survived leader failover!" : "❌ FAILURE: acknowledged writes were lost or changed");
  return { ok, acknowledged: acked.size, missing, wrong, killedLeader: leader, newLeader, inFlight };
}

/** Ids of the nodes whose process is running. */
export function liveIds(cluster: ChaosCluster): number[] {
  return cluster.nodes.filter((n) => n.state === "running").map((n) => n.id);
}
