import { describeOutcome, readValue, request, sendRaw, tally, type Outcome } from "./client.ts";
import type { ChaosCluster, StatusView } from "./cluster.ts";
import type { LiveDisplay } from "./live-display.ts";
import { forEachLimit, printVerification, verificationHolds, verifyWrites, type AbsentWrite, type Verification } from "./verify.ts";
import { createLedger, kvPath, LeaderClient } from "./write-load.ts";

export interface PauseOptions {
  /** Pauses to provoke, each of the leader of the moment. */
  readonly rounds: number;
  /** Writes acknowledged through the new leader while the old one is paused, per round. */
  readonly keys: number;
  /** Linearizable reads, lease reads and writes, each sent to the old leader as it resumes (per wave; two waves). */
  readonly probes: number;
  /** Client timeout per request. */
  readonly requestTimeoutMs: number;
  readonly display: LiveDisplay;
}

/** What one pause round saw. */
export interface PauseRound {
  readonly round: number;
  readonly pausedLeader: number;
  readonly pausedTerm: number;
  readonly newLeader: number;
  readonly newTerm: number;
  /** From SIGSTOP to a majority agreeing on a new leader: the pause outlasted the election timeout. */
  readonly electionMs: number;
  /** Each linearizable read of the overwritten key on the resumed leader. */
  readonly reads: string[];
  /**
   * Each lease read (`?consistency=lease`) of it there: the resumed leader still believes it leads,
   * and must know its lease ran out while it was stopped (it is timed by the monotonic clock).
   */
  readonly leaseReads: string[];
  readonly writes: { acknowledged: number; refused: number; unknown: number };
  /** The resumed node's /status once its requests were answered. */
  readonly statusAfter: { role: string; term: number } | undefined;
  readonly problems: string[];
}

export interface PauseResult {
  readonly ok: boolean;
  readonly rounds: PauseRound[];
  readonly acknowledged: number;
  readonly verification: Verification;
}

/**
 * Judges a linearizable read served by a leader that was paused while the key went from
 * `oldValue` to `newValue`: it must return the new value or not answer (refusal, redirect,
 * timeout). Returns the problem, or undefined when the read is allowed.
 */
export function judgeResumedRead(outcome: Outcome, oldValue: string, newValue: string): string | undefined {
  const got = readValue(outcome);
  if (got === undefined || got === newValue) return undefined;
  if (got === oldValue) return `stale read: got ${JSON.stringify(oldValue)} after ${JSON.stringify(newValue)} was acknowledged`;
  if (got === null) return `stale read: the key was absent, though ${JSON.stringify(newValue)} was acknowledged`;
  return `wrong read: got ${JSON.stringify(got)}, expected ${JSON.stringify(newValue)}`;
}

/**
 * Judges a write acknowledged by a leader deposed in `deposedTerm`: allowed only if the node is
 * leader again in a newer term (its /status right after says so). Returns the problem or undefined.
 */
export function judgeResumedWrite(outcome: Outcome, deposedTerm: number, statusAfter: Pick<StatusView, "role" | "term"> | undefined): string | undefined {
  if (outcome.kind !== "ok") return undefined;
  if (statusAfter !== undefined && statusAfter.role === "leader" && statusAfter.term > deposedTerm) return undefined;
  const now = statusAfter === undefined ? "no status" : `${statusAfter.role} in term ${statusAfter.term}`;
  return `the deposed leader (term ${deposedTerm}) acknowledged a write; its status afterwards: ${now}`;
}

/**
 * Pause: SIGSTOP the leader for longer than the election timeout (until the other two agree on a new
 * leader), overwrite a key through the new leader, then SIGCONT the old one and at once send it
 * linearizable reads of that key and new writes (some sent just before SIGCONT, so they are waiting
 * in its socket when it wakes, some just after). No read may return the old value; no write may be
 * acknowledged unless the node is leader again in a newer term. Finally every acknowledged write is
 * read back from every node, and none of the writes it refused took effect.
 */
export async function runPause(cluster: ChaosCluster, opts: PauseOptions): Promise<PauseResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const runId = Date.now().toString(36);
  const client = new LeaderClient(cluster, opts.requestTimeoutMs);
  const { acked, mustBeAbsent, counters, count, putAcked } = createLedger(client);
  const rounds: PauseRound[] = [];

  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  print("[Step 2] Waiting for leader election...");
  print(`         Leader elected: Node ${await cluster.waitForLeader(undefined, 20_000)}`);

  display.track(() => counters);
  for (let round = 1; round <= opts.rounds; round++) {
    const problems: string[] = [];
    const leader = await cluster.waitForLeader(undefined, 20_000);
    const pausedTerm = (await cluster.status(leader, 2_000))?.term ?? 0;
    const probeKey = `pause-${runId}-probe-${round}`;
    const oldValue = `old-${round}`;
    const newValue = `new-${round}`;
    client.leaderHint = leader;
    await putAcked(probeKey, oldValue);

    print(`[Round ${round}] Pausing leader Node ${leader} (term ${pausedTerm}) with SIGSTOP...`);
    cluster.signal(leader, "SIGSTOP");
    const pausedAt = performance.now();
    display.setFault(`node ${leader} paused`);
    client.avoid.add(leader);
    const others = cluster.nodes.map((n) => n.id).filter((id) => id !== leader);
    const newLeader = await cluster.waitForLeader(others, 20_000);
    const electionMs = Math.round(performance.now() - pausedAt);
    const newTerm = (await cluster.status(newLeader, 2_000))?.term ?? 0;
    print(`         Node ${newLeader} elected in term ${newTerm}, ${electionMs} ms into the pause`);
    client.leaderHint = newLeader;
    await putAcked(probeKey, newValue);
    await forEachLimit(range(opts.keys), 4, (i) => putAcked(`pause-${runId}-r${round}-new-leader-${i}`, `new-leader-${i}`));
    print(`         Acknowledged ${opts.keys + 1} writes through Node ${newLeader}, overwriting ${probeKey}`);

    print(`[Round ${round}] Resuming Node ${leader} with SIGCONT and reading from it at once...`);
    const url = cluster.node(leader).httpUrl;
    const writes: { key: string; value: string }[] = [];
    const deposedWrite = (wave: string, i: number) => {
      const write = { key: `pause-${runId}-r${round}-deposed-${wave}-${i}`, value: `deposed-${i}` };
      writes.push(write);
      return write;
    };
    // Wave a goes into its sockets while it is stopped (the kernel accepts and buffers them), so the
    // requests are waiting the instant it wakes, alongside the new leader's messages.
    const leasePath = `${kvPath(probeKey)}?consistency=lease`;
    const waveA = [
      ...range(opts.probes).map(() => sendRaw(url, "GET", kvPath(probeKey), undefined, opts.requestTimeoutMs)),
      ...range(opts.probes).map(() => sendRaw(url, "GET", leasePath, undefined, opts.requestTimeoutMs)),
      ...range(opts.probes).map((i) => {
        const write = deposedWrite("a", i);
        return sendRaw(url, "PUT", kvPath(write.key), write.value, opts.requestTimeoutMs);
      }),
    ];
    const queued = (await Promise.all(waveA.map((r) => r.sent))).filter(Boolean).length;
    cluster.signal(leader, "SIGCONT");
    display.setFault(`node ${leader} resumed`);
    // Wave b right after SIGCONT, through the ordinary client.
    const waveB = [
      ...range(opts.probes).map(() => request(url, "GET", kvPath(probeKey), undefined, opts.requestTimeoutMs)),
      ...range(opts.probes).map(() => request(url, "GET", leasePath, undefined, opts.requestTimeoutMs)),
      ...range(opts.probes).map((i) => {
        const write = deposedWrite("b", i);
        return request(url, "PUT", kvPath(write.key), write.value, opts.requestTimeoutMs);
      }),
    ];
    const [a, b] = await Promise.all([Promise.all(waveA.map((r) => r.outcome)), Promise.all(waveB)]);
    const readOutcomes = [...a.slice(0, opts.probes), ...b.slice(0, opts.probes)];
    const leaseOutcomes = [...a.slice(opts.probes, 2 * opts.probes), ...b.slice(opts.probes, 2 * opts.probes)];
    const writeOutcomes = [...a.slice(2 * opts.probes), ...b.slice(2 * opts.probes)];
    for (const outcome of [...readOutcomes, ...leaseOutcomes, ...writeOutcomes]) count(outcome);
    const statusAfter = await cluster.status(leader, 2_000);

    for (const outcome of readOutcomes) {
      const problem = judgeResumedRead(outcome, oldValue, newValue);
      if (problem !== undefined) problems.push(`${problem} (linearizable read of ${probeKey} on Node ${leader})`);
    }
    for (const outcome of leaseOutcomes) {
      const problem = judgeResumedRead(outcome, oldValue, newValue);
      if (problem !== undefined) problems.push(`${problem} (lease read of ${probeKey} on Node ${leader})`);
    }
    writeOutcomes.forEach((outcome, i) => {
      const write = writes[i] as { key: string; value: string };
      const problem = judgeResumedWrite(outcome, pausedTerm, statusAfter);
      if (problem !== undefined) problems.push(`${problem}: ${write.key}`);
      if (outcome.kind === "ok") acked.set(write.key, write.value);
      if (outcome.kind === "fail") mustBeAbsent.push(write);
    });
    const writeTally = tally(writeOutcomes);
    const readSummary = summarize(readOutcomes.map(describeOutcome));
    print(`         ${queued} of ${3 * opts.probes} requests were waiting in its sockets when it woke; ${3 * opts.probes} more followed at once`);
    print(`         Reads of ${probeKey} on Node ${leader}: ${readSummary}`);
    print(`         Lease reads of ${probeKey} on Node ${leader}: ${summarize(leaseOutcomes.map(describeOutcome))}`);
    print(
      `         Writes to Node ${leader}: ${writeTally.acknowledged} acknowledged, ${writeTally.refused} refused, ${writeTally.unknown} unknown; it is now ${statusAfter?.role ?? "?"} in term ${statusAfter?.term ?? "?"}`,
    );
    for (const problem of problems) print(`         ❌ ${problem}`);
    client.avoid.delete(leader);
    display.setFault("none");
    rounds.push({
      round,
      pausedLeader: leader,
      pausedTerm,
      newLeader,
      newTerm,
      electionMs,
      reads: readOutcomes.map(describeOutcome),
      leaseReads: leaseOutcomes.map(describeOutcome),
      writes: writeTally,
      statusAfter: statusAfter === undefined ? undefined : { role: statusAfter.role, term: statusAfter.term },
      problems,
    });
  }
  display.untrack();

  print("[Step 3] Verifying all acknowledged writes on every node...");
  const verification = await verifyWrites(cluster, client, acked, mustBeAbsent);
  const staleReads = rounds.reduce((sum, r) => sum + r.problems.filter((p) => p.startsWith("stale read") || p.startsWith("wrong read")).length, 0);
  const deposedAcks = rounds.reduce((sum, r) => sum + r.problems.filter((p) => p.startsWith("the deposed leader")).length, 0);

  print("");
  print("=== Results ===");
  print(`Pauses: ${rounds.length}`);
  print(`Stale reads from a resumed leader: ${staleReads}`);
  print(`Writes acknowledged by a deposed leader: ${deposedAcks}`);
  print(`Converged on applied index: ${verification.convergedIndex}`);
  printVerification(verification, print);
  const ok = staleReads === 0 && deposedAcks === 0 && verificationHolds(verification);
  print("");
  print(ok ? "✅ SUCCESS: No stale read and no write acknowledged by a deposed leader!" : "❌ FAILURE: see the evidence above");
  return { ok, rounds, acknowledged: acked.size, verification };
}

/** `3× refused: 503 no_leader, 1× ok: "new-1"`: identical descriptions counted. */
export function summarize(descriptions: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const d of descriptions) counts.set(d, (counts.get(d) ?? 0) + 1);
  return [...counts].map(([d, n]) => `${n}× ${d}`).join(", ");
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
