import { readValue, request } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";
import { kvPath, type LeaderClient } from "./write-load.ts";

/** Reads in flight at once while verifying. */
const VERIFY_READS_IN_FLIGHT = 16;

/** What the final check of a scenario found. */
export interface Verification {
  /** The leader the linearizable reads went through. */
  readonly leader: number;
  /** The applied index every running node reached before the replica reads. */
  readonly convergedIndex: number;
  /** Acknowledged writes checked (each on the leader and on every running replica). */
  readonly checked: number;
  /** `key (where)` of acknowledged writes absent from a node. */
  readonly missing: string[];
  readonly wrong: { key: string; expected: string; got: string }[];
  /** `key (where)` of reads that never got an answer: nothing could be proved for them. */
  readonly unanswered: string[];
  /** Writes that must not have taken effect (refused, or only ever held by a deposed leader) but did. */
  readonly appliedButRefused: { key: string; value: string; where: string }[];
}

/** A write known to have no effect: refused before proposing, or proven never replicated. */
export interface AbsentWrite {
  readonly key: string;
  readonly value: string;
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

/**
 * The end of every scenario: with the cluster whole again, read every acknowledged write back
 * linearizably through the leader, wait until every running node has applied the same index, then
 * read every acknowledged write (and every write that must be absent) from each replica locally.
 */
export async function verifyWrites(
  cluster: ChaosCluster,
  client: LeaderClient,
  acked: ReadonlyMap<string, string>,
  mustBeAbsent: readonly AbsentWrite[] = [],
  timeoutMs = 30_000,
): Promise<Verification> {
  const running = () => cluster.nodes.filter((n) => n.state === "running").map((n) => n.id);
  const leader = await cluster.waitForLeader(running(), timeoutMs);
  client.leaderHint = leader;
  const missing: string[] = [];
  const wrong: Verification["wrong"] = [];
  const unanswered: string[] = [];
  const appliedButRefused: Verification["appliedButRefused"] = [];
  const check = (key: string, expected: string, got: string | null | undefined, where: string) => {
    if (got === undefined) unanswered.push(`${key} (${where})`);
    else if (got === null) missing.push(`${key} (${where})`);
    else if (got !== expected) wrong.push({ key: `${key} (${where})`, expected, got });
  };

  const deadlineMs = performance.now() + timeoutMs;
  const entries = [...acked];
  await forEachLimit(entries, VERIFY_READS_IN_FLIGHT, async ([key, value]) => {
    check(key, value, await client.readUntilAnswered(key, deadlineMs), "linearizable read");
  });

  // Convergence: every running node applies the same index, at least the leader's commit index.
  const leaderNow = await cluster.waitForLeader(running(), timeoutMs);
  const commitIndex = (await cluster.status(leaderNow, 2_000))?.commitIndex ?? 0;
  await cluster.waitForConvergence(commitIndex, timeoutMs);
  const convergedIndex = (await cluster.status(leaderNow, 2_000))?.appliedIndex ?? commitIndex;

  for (const id of running()) {
    const url = cluster.node(id).httpUrl;
    const stale = async (key: string) => readValue(await request(url, "GET", `${kvPath(key)}?consistency=stale`, undefined, 5_000));
    await forEachLimit(entries, VERIFY_READS_IN_FLIGHT, async ([key, value]) => check(key, value, await stale(key), `replica ${id}`));
    await forEachLimit(mustBeAbsent, VERIFY_READS_IN_FLIGHT, async ({ key, value }) => {
      const got = await stale(key);
      if (got === undefined) unanswered.push(`${key} (replica ${id})`);
      else if (got !== null) appliedButRefused.push({ key, value: got, where: `replica ${id}` });
    });
  }
  return { leader, convergedIndex, checked: acked.size, missing, wrong, unanswered, appliedButRefused };
}

/** True when the verification found nothing wrong. */
export function verificationHolds(v: Verification): boolean {
  return v.missing.length === 0 && v.wrong.length === 0 && v.unanswered.length === 0 && v.appliedButRefused.length === 0;
}

/** The Results lines of a verification, with up to 20 pieces of evidence of each kind. */
export function printVerification(v: Verification, print: (line: string) => void, absentLabel = "Refused writes that took effect"): void {
  print(`Total acknowledged writes: ${v.checked}`);
  print(`Missing keys: ${v.missing.length}`);
  print(`Wrong values: ${v.wrong.length}`);
  if (v.unanswered.length > 0) print(`Reads with no answer: ${v.unanswered.length}`);
  print(`${absentLabel}: ${v.appliedButRefused.length}`);
  for (const key of v.missing.slice(0, 20)) print(`  missing: ${key}`);
  for (const w of v.wrong.slice(0, 20)) print(`  wrong: ${w.key}: expected ${JSON.stringify(w.expected)}, got ${JSON.stringify(w.got)}`);
  for (const key of v.unanswered.slice(0, 20)) print(`  no answer: ${key}`);
  for (const a of v.appliedButRefused.slice(0, 20)) print(`  took effect: ${a.key} = ${JSON.stringify(a.value)} (${a.where})`);
}
