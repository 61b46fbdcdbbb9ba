import { createClient, KvClientError, UnknownOutcomeError, type KvClient, type MembersView } from "../client/index.ts";
import type { ChaosCluster } from "./cluster.ts";
import type { LiveDisplay } from "./live-display.ts";
import { printVerification, verificationHolds, verifyWrites, type Verification } from "./verify.ts";
import { LeaderClient, WriteLoad } from "./write-load.ts";

export interface MembershipOptions {
  /** Members replaced one after another (the leader every other round). */
  readonly rounds: number;
  /** Concurrent writers throughout. */
  readonly concurrency: number;
  /** Client timeout per request. */
  readonly requestTimeoutMs: number;
  readonly display: LiveDisplay;
}

/** One replacement: which node, whether it led, and how long each step took. */
export interface MembershipRound {
  readonly node: number;
  readonly wasLeader: boolean;
  /** From the removal's request to its answer. */
  readonly removeMs: number;
  /** From the empty node's start with --join to its promotion to voter. */
  readonly joinToVoterMs: number;
  /** Entries it received meanwhile: the applied index it reached, caught up. */
  readonly caughtUpIndex: number;
  /** Snapshot images it installed on the way (kv_snapshots_installed_total): 0 when the log reached back far enough. */
  readonly imagesInstalled: number;
}

export interface MembershipResult {
  readonly ok: boolean;
  readonly rounds: readonly MembershipRound[];
  readonly acknowledged: number;
  readonly refused: number;
  readonly unknown: number;
  readonly verification: Verification;
}

/** How long one step of a round (a removal, a join until promoted) may take. */
const STEP_TIMEOUT_MS = 60_000;
/** Acknowledged writes before the first replacement, and between two. */
const WRITES_BETWEEN_ROUNDS = 30;

/**
 * Membership: under continuous writes, replace members one at a time as an operator would a failed
 * machine: remove it through the API (a leader hands over first), stop it, empty its data dir, and
 * start it again with `--join`; the cluster adds it as a learner, streams it what it lacks (its log,
 * or an image), and promotes it once caught up. Every other round replaces the leader. At the end
 * every acknowledged write is read back, linearizably and from every replica, and the replicas'
 * state hashes are compared (ChaosCluster.waitForConvergence).
 */
export async function runMembership(cluster: ChaosCluster, opts: MembershipOptions): Promise<MembershipResult> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  const writes = new LeaderClient(cluster, opts.requestTimeoutMs);
  const load = new WriteLoad({ client: writes, concurrency: opts.concurrency, keyPrefix: `members-${Date.now().toString(36)}` });

  print("[Step 1] Starting 3-node cluster...");
  await cluster.start();
  const leader = await cluster.waitForLeader(undefined, 20_000);
  writes.leaderHint = leader;
  print(`         Leader elected: Node ${leader}`);
  print(`[Step 2] Writing with ${opts.concurrency} concurrent writers throughout...`);
  display.track(() => load);
  load.start();
  await load.waitForAcks(WRITES_BETWEEN_ROUNDS, STEP_TIMEOUT_MS);

  const rounds: MembershipRound[] = [];
  try {
    await replaceMembers(cluster, opts, load, rounds);
  } finally {
    // Also when a step failed: no writer goes on against nodes the runner stops next.
    await load.stop();
    display.untrack();
  }
  print(`[Step 4] Verifying all acknowledged writes (${load.ok} acknowledged, ${load.failed} refused, ${load.unknown} unknown)...`);
  const verification = await verifyWrites(cluster, writes, load.acked, load.refused);

  print("");
  print("=== Results ===");
  print(`Members replaced: ${rounds.length} (${rounds.filter((r) => r.wasLeader).length} of them leading)`);
  printVerification(verification, print);
  const ok = verificationHolds(verification) && cluster.unexpectedExits.length === 0;
  for (const exit of cluster.unexpectedExits) print(`  node ${exit.id} exited unexpectedly (code ${exit.code}${exit.signal === undefined ? "" : `, ${exit.signal}`})`);
  print("");
  // As many as the rounds replaced: one round replaces one member, not every one (found in a review).
  const replaced = rounds.length === 1 ? "a member was replaced" : `${rounds.length} members were replaced in turn`;
  print(ok ? `✅ SUCCESS: ${replaced} under writes, and no acknowledged write was lost!` : "❌ FAILURE: acknowledged writes were lost or wrong, or a node exited on its own");
  return { ok, rounds, acknowledged: load.ok, refused: load.failed, unknown: load.unknown, verification };
}

/**
 * The rounds: odd ones replace a follower (each follower in turn, never the one replaced just
 * before), even ones the leader. Each waits until the others' logs were compacted, so the empty
 * joiner is streamed an image rather than the whole log.
 */
async function replaceMembers(cluster: ChaosCluster, opts: MembershipOptions, load: WriteLoad, rounds: MembershipRound[]): Promise<void> {
  const { display } = opts;
  const print = (line: string) => display.print(line);
  let lastReplaced: number | undefined;
  for (let round = 1; round <= opts.rounds; round++) {
    const leader = await cluster.waitForLeader(runningIds(cluster), STEP_TIMEOUT_MS);
    const followers = runningIds(cluster).filter((id) => id !== leader && id !== lastReplaced);
    const victim = round % 2 === 0 || followers.length === 0 ? leader : (followers[Math.floor(round / 2) % followers.length] as number);
    const others = runningIds(cluster).filter((id) => id !== victim);
    const client = createClient({ endpoints: others.map((id) => cluster.node(id).httpUrl), timeoutMs: 10_000 });
    print(`[Step 3.${round}] Replacing node ${victim}${victim === leader ? " (the leader)" : ""}: remove it, empty its data dir, start it again with --join...`);
    display.setFault(`replacing node ${victim}`);

    await untilCompacted(cluster, others);
    const removeStarted = performance.now();
    await removeMember(client, victim);
    const removeMs = Math.round(performance.now() - removeStarted);
    await cluster.kill(victim);
    cluster.wipe(victim);
    const newLeader = await cluster.waitForLeader(others, STEP_TIMEOUT_MS);
    print(`         Removed in ${removeMs} ms; node ${newLeader} leads the two left`);

    const joinStarted = performance.now();
    await cluster.startNode(victim, { join: others.map((id) => cluster.node(id).httpUrl) });
    const view = await untilVoter(client, victim);
    const joinToVoterMs = Math.round(performance.now() - joinStarted);
    const caughtUpIndex = (await cluster.status(victim, 2_000))?.appliedIndex ?? 0;
    const imagesInstalled = await metricOf(cluster.node(victim).httpUrl, "kv_snapshots_installed_total");
    print(
      `         Node ${victim} joined empty and was promoted to voter in ${joinToVoterMs} ms (applied index ${caughtUpIndex}; configuration at ${view.configIndex}; images installed: ${imagesInstalled})`,
    );
    display.setFault("none");
    rounds.push({ node: victim, wasLeader: victim === leader, removeMs, joinToVoterMs, caughtUpIndex, imagesInstalled });
    lastReplaced = victim;
    await load.waitForAcks(load.ok + WRITES_BETWEEN_ROUNDS, STEP_TIMEOUT_MS);
  }
}

/** Waits until every node in `ids` has compacted its log (its first index past 1). */
async function untilCompacted(cluster: ChaosCluster, ids: readonly number[]): Promise<void> {
  const deadline = performance.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const firsts = await Promise.all(ids.map(async (id) => (await cluster.status(id, 2_000))?.firstLogIndex ?? 0));
    if (firsts.every((first) => first > 1)) return;
    if (performance.now() > deadline) throw new Error(`the logs of nodes ${ids.join(", ")} were not compacted within ${STEP_TIMEOUT_MS} ms (first indexes ${firsts.join(", ")})`);
    await Bun.sleep(50); // polling interval between status probes; the writes go on meanwhile
  }
}

/** One counter of a node's /metrics (0 when it does not answer or has none). */
async function metricOf(httpUrl: string, name: string): Promise<number> {
  try {
    const text = await (await fetch(`${httpUrl}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line === undefined ? 0 : Number(line.slice(name.length + 1));
  } catch {
    return 0;
  }
}

function runningIds(cluster: ChaosCluster): number[] {
  return cluster.nodes.filter((n) => n.state === "running").map((n) => n.id);
}

/**
 * Removes `id` through the API, asking again after an unknown outcome or a passing refusal until
 * the configuration no longer lists it.
 */
async function removeMember(client: KvClient, id: number): Promise<void> {
  const deadline = performance.now() + STEP_TIMEOUT_MS;
  for (;;) {
    try {
      await client.membership.remove(id);
      return;
    } catch (error) {
      if (!(error instanceof UnknownOutcomeError || error instanceof KvClientError)) throw error;
      // A removal already applied answers not_found: the outcome was the one wanted.
      if (error instanceof KvClientError && error.code === "not_found") return;
      if (performance.now() > deadline) throw new Error(`node ${id} could not be removed within ${STEP_TIMEOUT_MS} ms: ${error.message}`);
      const members = await client.members().catch(() => undefined);
      if (members !== undefined && !members.members.some((member) => member.id === id)) return;
      await Bun.sleep(50); // a hand-over or an election under way: ask again shortly
    }
  }
}

/** Waits until the configuration lists `id` as a voter; the answer is that configuration. */
async function untilVoter(client: KvClient, id: number): Promise<MembersView> {
  const deadline = performance.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const view = await client.members().catch(() => undefined);
    if (view?.members.some((member) => member.id === id && member.role === "voter") === true) return view;
    if (performance.now() > deadline) throw new Error(`node ${id} was not promoted to voter within ${STEP_TIMEOUT_MS} ms: members ${JSON.stringify(view?.members ?? "unanswered")}`);
    await Bun.sleep(50); // polling interval between members probes
  }
}
