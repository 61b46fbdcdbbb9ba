/**
 * `kv serve --join`: asks a running cluster, through any member's client API, to add this server as
 * a learner, and returns the configuration the leader answered with once the change was applied.
 * The new server records it as its initial configuration (as the simulator's `addServer` does out
 * of band) and then follows the leader, which promotes it once it has caught up.
 */
import type { Logger } from "../lib/logger.ts";

/** What the leader answered (`POST /members`): the configuration right after this server's addition. */
export interface JoinAnswer {
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly addresses: readonly { id: number; peerUrl: string; httpUrl?: string }[];
  readonly configIndex: number;
  readonly clusterId: string | undefined;
}

export interface JoinOptions {
  readonly endpoints: readonly string[];
  readonly id: number;
  readonly peerUrl: string;
  readonly httpUrl: string | undefined;
  readonly authToken: string | undefined;
  /** Give up after this long (the cluster may be electing, or busy with another change). */
  readonly timeoutMs: number;
  readonly logger: Logger;
}

/** Thrown when the cluster refused the join for good (bad input, id taken by another address) or never answered. */
export class JoinError extends Error {
  override name = "JoinError";
}

/** Tries every endpoint in turn, following redirects to the leader, until the change is applied. */
export async function joinCluster(options: JoinOptions): Promise<JoinAnswer> {
  const deadline = Date.now() + options.timeoutMs;
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.authToken !== undefined) headers.authorization = `Bearer ${options.authToken}`;
  const body = JSON.stringify({ id: options.id, peerUrl: options.peerUrl, ...(options.httpUrl === undefined ? {} : { httpUrl: options.httpUrl }) });
  let lastProblem = "no endpoint tried";
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    const endpoint = options.endpoints[attempt % options.endpoints.length] as string;
    try {
      // Redirects are followed by hand: fetch drops Authorization across origins.
      let url = `${endpoint.replace(/\/+$/, "")}/members`;
      for (let hop = 0; hop < 5; hop++) {
        const response = await fetch(url, { method: "POST", headers, body, redirect: "manual", signal: AbortSignal.timeout(10_000) });
        const location = response.headers.get("location");
        if (response.status === 307 && location !== null) {
          await response.body?.cancel();
          url = new URL(location, url).toString();
          continue;
        }
        const answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
        if (response.status === 200) return parseAnswer(answer, options.id);
        if (response.status === 409 && answer.error === "member_exists") {
          // Already added (an earlier attempt's answer was lost): fine if it is at our address.
          const current = await (await fetch(url, { headers, signal: AbortSignal.timeout(10_000) })).json();
          const parsed = parseAnswer(current as Record<string, unknown>, options.id);
          const self = parsed.addresses.find((address) => address.id === options.id);
          if (self?.peerUrl === options.peerUrl) return parsed;
          throw new JoinError(`node ${options.id} is already a member at ${self?.peerUrl ?? "an unknown address"}, not ${options.peerUrl}`);
        }
        if (response.status === 400 || response.status === 401 || response.status === 404) {
          throw new JoinError(`${url} refused the join: ${response.status} ${String(answer.message ?? answer.error ?? "")}`);
        }
        lastProblem = `${url}: ${response.status} ${String(answer.error ?? "")}`;
        break;
      }
    } catch (error) {
      if (error instanceof JoinError) throw error;
      lastProblem = `${endpoint}: ${error instanceof Error ? error.message : String(error)}`;
    }
    options.logger.log("info", "join", { detail: `retrying: ${lastProblem}` });
    await Bun.sleep(Math.min(1_000, 100 * 2 ** Math.min(attempt, 4)));
  }
  throw new JoinError(`could not join within ${options.timeoutMs} ms: ${lastProblem}`);
}

function parseAnswer(answer: Record<string, unknown>, id: number): JoinAnswer {
  const members = answer.members;
  const configIndex = answer.configIndex;
  if (!Array.isArray(members) || typeof configIndex !== "number" || configIndex < 1) {
    throw new JoinError(`the cluster answered without a configuration: ${JSON.stringify(answer).slice(0, 200)}`);
  }
  const list = members as { id: number; peerUrl: string; httpUrl: string | null; role: string | null }[];
  if (!list.some((member) => member.id === id)) throw new JoinError(`the configuration answered does not include node ${id}`);
  return {
    voters: list.filter((member) => member.role === "voter").map((member) => member.id),
    learners: list.filter((member) => member.role === "learner").map((member) => member.id),
    addresses: list
      .filter((member) => member.peerUrl !== "")
      .map((member) => ({ id: member.id, peerUrl: member.peerUrl, ...(member.httpUrl === null ? {} : { httpUrl: member.httpUrl }) })),
    configIndex,
    clusterId: typeof answer.clusterId === "string" ? answer.clusterId : undefined,
  };
}
