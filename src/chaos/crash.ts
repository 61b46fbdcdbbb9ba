import type { ChaosCluster } from "./cluster.ts";
import type { LiveDisplay } from "./live-display.ts";
import { printVerification, verificationHolds, verifyWrites, type Verification } from "./verify.ts";
import { LeaderClient, WriteLoad } from "./write-load.ts";

export interface CrashOptions {
  /** Acknowledged writes to wait for before the crash. */
  readonly keys: number;
  /** Concurrent writers (each has a write in flight when the SIGKILLs land). */
  readonly concurrency: number;
  /** Client timeout per request. */
  readonly requestTimeoutMs: number;
  readonly display: LiveDisplay;
}

export interface CrashResult {
  readonly ok: boolean;
  readonly killedPids: number[];
  readonly acknowledged: number;
  readonly refused: number;
  readonly unknown: number;
  /** Writes that were in flight at the kill (answered unknown afterwards). */
  readonly inFlightAtKill: number;
  readonly restartedLeader: number;
  /** From the restart of all nodes to a leader everyone agrees on. */
  readonly recoveryMs: number;
  readonly verification: Verification;
}

/**
 * Crash: with writers busy, SIGKILL every node at the same instant (one loop of kill(2), nothing
 * flushed, nothing shut down), restart all three on their data dirs, and read every acknowledged
 * write back, linearizably through the new leader and from every replica once converged. A write
 * is acknowledged only once fsync-ed on a majority, so a whole-cluster power cut may lose none.
 */
export async function runCrash(cluster: ChaosCluster, opts: CrashOptions): Promise<CrashResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const client = new LeaderClient(cluster, opts.requestTimeoutMs);
  const load = new WriteLoad({ client, concurrency: opts.concurrency, keyPrefix: `crash-${Date.now().toString(36)}` });

  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  const leader = await cluster.waitForLeader(undefined, 20_000);
  client.leaderHint = leader;
  print(`         Leader elected: Node ${leader}`);

  print(`[Step 3] Writing with ${opts.concurrency} concurrent writers until ${opts.keys} writes are acknowledged...`);
  display.track(() => load);
  load.start();
  await load.waitForAcks(opts.keys, 60_000);
  const answeredBeforeKill = load.attempts;

  const killedPids = cluster.nodes.map((n) => n.pid).filter((pid): pid is number => pid !== undefined);
  print(`[Step 4] Killing all 3 nodes at the same instant (SIGKILL to pids ${killedPids.join(", ")}) with writes in flight...`);
  const killed = cluster.killAll(); // every SIGKILL is sent before this returns
  const stopped = load.stop(); // and no write starts after them
  display.setFault("all nodes killed");
  await Promise.all([killed, stopped]);
  display.untrack();
  // Everything answered after the kills was in flight when they landed.
  const inFlightAtKill = load.attempts - answeredBeforeKill;
  print(`         Writes in flight at the kill: ${inFlightAtKill}`);
  print(`         Acknowledged before the crash: ${load.ok}; refused: ${load.failed}; unknown: ${load.unknown}`);

  print("[Step 5] Restarting all 3 nodes on their data dirs...");
  const restartedAt = performance.now();
  await cluster.start();
  const restartedLeader = await cluster.waitForLeader(undefined, 30_000);
  const recoveryMs = Math.round(performance.now() - restartedAt);
  print(`         Leader elected after restart: Node ${restartedLeader} (${recoveryMs} ms after the restart began)`);

  print("[Step 6] Verifying all acknowledged writes...");
  const verification = await verifyWrites(cluster, client, load.acked, load.refused);

  print("");
  print("=== Results ===");
  print(`Converged on applied index: ${verification.convergedIndex}`);
  printVerification(verification, print);
  const ok = verificationHolds(verification);
  print("");
  print(ok ? "✅ SUCCESS: All acknowledged writes survived killing every node at once!" : "❌ FAILURE: acknowledged writes were lost or changed");
  return {
    ok,
    killedPids,
    acknowledged: load.ok,
    refused: load.failed,
    unknown: load.unknown,
    inFlightAtKill,
    restartedLeader,
    recoveryMs,
    verification,
  };
}
