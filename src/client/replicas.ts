/**
 * Comparing replicas by their state's hash (`GET /hash` on each node): what `kv hash` and every
 * `kv chaos` scenario's last check do. Two nodes at one applied index must hold the same rows; a
 * node behind the others cannot be compared until it catches up, so the comparison asks again
 * until every answering node stands at one index (a quiet cluster gets there at once).
 */
import { KvClientError } from "./errors.ts";
import type { KvClient, StateHash } from "./client.ts";

/** One endpoint's answer: its hash, or why there is none. */
export interface HashAnswer {
  readonly endpoint: string;
  readonly hash?: StateHash;
  readonly error?: string;
  /** The HTTP status of a node's refusal (a 401 without the token, a 429 while another hash runs). */
  readonly status?: number;
  /** Why no answer came, when none did: `tls_failed` for a certificate this client does not trust (src/client/errors.ts). */
  readonly code?: string;
}

/**
 * `consistent`: at least two nodes answered, all at one index, with one hash (or the one endpoint
 * asked is a cluster's only member, and answered). `diverged`: two nodes
 * at one index answered different hashes (a bug, or a data dir altered behind its node). Anything
 * else is `incomparable`: fewer than two answers, or indexes that never met within the time given.
 */
export type ReplicaVerdict = "consistent" | "diverged" | "incomparable";

export interface ReplicaCheck {
  readonly verdict: ReplicaVerdict;
  /** The last round of answers, one per endpoint, in the endpoints' order. */
  readonly answers: readonly HashAnswer[];
  /** What the verdict rests on, in a sentence. */
  readonly message: string;
}

/** How long to wait between rounds while the nodes stand at different indexes. */
const ROUND_PAUSE_MS = 100;

/**
 * The verdict on one round of answers, or undefined when it cannot be given yet: the answering
 * nodes stand at different indexes and none of them disagree at one.
 */
export function judgeHashes(answers: readonly HashAnswer[], soleMember = false): ReplicaCheck | undefined {
  const answered = answers.filter(hasHash);
  const byIndex = groupByIndex(answered);
  for (const [index, group] of byIndex) {
    const first = group[0] as Hashed;
    const other = group.find((answer) => answer.hash.hash !== first.hash.hash);
    if (other !== undefined) {
      return { verdict: "diverged", answers, message: `at index ${index}, ${first.endpoint} holds ${first.hash.hash} and ${other.endpoint} holds ${other.hash.hash}` };
    }
  }
  const unanswered = answers.filter((answer) => answer.hash === undefined).map((answer) => `${answer.endpoint} (${answer.error ?? "no answer"})`);
  const notHeard = unanswered.length === 0 ? "" : `; no hash from ${unanswered.join(", ")}`;
  const [lone] = answered;
  if (soleMember && answers.length === 1 && lone !== undefined) {
    return { verdict: "consistent", answers, message: `the cluster's one member holds ${lone.hash.hash} at index ${lone.hash.index}: nothing else to compare` };
  }
  if (answered.length < 2) {
    return { verdict: "incomparable", answers, message: `${answered.length === 0 ? "no node" : "only one node"} answered: nothing to compare${notHeard}` };
  }
  if (byIndex.size > 1) return undefined;
  const [only] = answered;
  return { verdict: "consistent", answers, message: `${answered.length} nodes hold ${only?.hash.hash} at index ${only?.hash.index}${notHeard}` };
}

/**
 * Asks each of `endpoints` (default: the client's) for its hash (`stale`: what it applied) until
 * `judgeHashes` gives a verdict, or `timeoutMs` passes. A hash reads a node's whole state, so the
 * nodes are asked for one only once their `/status` reports one applied index (under writes that may
 * never happen: found in review, every round hashed every node in full), and once more at the end:
 * nodes at one index that disagree are `diverged` then too; otherwise `incomparable`, saying which
 * agreed where.
 */
export async function compareReplicas(client: KvClient, options: { readonly timeoutMs: number; readonly endpoints?: readonly string[] }): Promise<ReplicaCheck> {
  const endpoints = options.endpoints ?? client.endpoints;
  const deadline = performance.now() + options.timeoutMs;
  for (;;) {
    const statuses = await Promise.all(endpoints.map((endpoint) => client.statusOf(endpoint).then((status) => status, () => undefined)));
    const applied = statuses.map((status) => status?.appliedIndex);
    // One endpoint, of a cluster of one: every member answered, so its answer alone is the verdict.
    const soleMember = endpoints.length === 1 && statuses[0]?.members.length === 1;
    const last = performance.now() + ROUND_PAUSE_MS > deadline;
    if (last || new Set(applied.filter((index) => index !== undefined)).size <= 1) {
      const answers = await Promise.all(endpoints.map((endpoint) => hashAnswer(client, endpoint)));
      // A node busy with another hash (429) answers once it is done: asked again while time is left.
      const busy = !last && answers.some((answer) => answer.status === 429);
      const verdict = judgeHashes(answers, soleMember);
      if (verdict !== undefined && (verdict.verdict === "diverged" || !busy)) return verdict;
      if (last) return { verdict: "incomparable", answers, message: `the nodes stood at different indexes for ${options.timeoutMs} ms (writes going on?): ${groupsAt(answers)}` };
    }
    await new Promise((resolve) => setTimeout(resolve, ROUND_PAUSE_MS));
  }
}

type Hashed = HashAnswer & { readonly hash: StateHash };

function hasHash(answer: HashAnswer): answer is Hashed {
  return answer.hash !== undefined;
}

/** The answers that carry a hash, by the index they stand at, in answer order. */
function groupByIndex(answered: readonly Hashed[]): Map<number, Hashed[]> {
  const byIndex = new Map<number, Hashed[]>();
  for (const answer of answered) byIndex.set(answer.hash.index, [...(byIndex.get(answer.hash.index) ?? []), answer]);
  return byIndex;
}

/** `A and B agree at index 7; C at 9`: the answers grouped by index (a group disagreeing is judged diverged before this). */
function groupsAt(answers: readonly HashAnswer[]): string {
  return [...groupByIndex(answers.filter(hasHash))]
    .sort(([a], [b]) => a - b)
    .map(([index, group]) => (group.length > 1 ? `${group.map((answer) => answer.endpoint).join(" and ")} agree at index ${index}` : `${group[0]?.endpoint} at ${index}`))
    .join("; ");
}

async function hashAnswer(client: KvClient, endpoint: string): Promise<HashAnswer> {
  try {
    return { endpoint, hash: await client.hashOf(endpoint) };
  } catch (error) {
    if (!(error instanceof KvClientError)) throw error;
    if (error.status === 0) return { endpoint, error: error.message, code: error.code };
    return { endpoint, error: `HTTP ${error.status} ${error.code}: ${error.message}`, status: error.status };
  }
}
