/**
 * `kv serve --join`: asks a running cluster, through any member's client API, to add this server as
 * a learner, and returns the configuration the leader answered with once the change was applied.
 * The new server records it as its initial configuration (as the simulator's `addServer` does out
 * of band) and then follows the leader, which promotes it once it has caught up.
 */
import { createClient, KvClientError, UnknownOutcomeError, type MembersView, type NewMember } from "../client/index.ts";
import { joinProof } from "../lib/join-proof.ts";
import { configurationOfMembers, type ListedMember } from "../kv/membership.ts";
import type { Logger } from "../lib/logger.ts";

/** What the leader answered (`POST /members`): the configuration right after this server's addition. */
export interface JoinAnswer {
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly addresses: readonly { id: number; peerUrl: string; httpUrl?: string; addedIndex?: number }[];
  readonly configIndex: number;
  readonly clusterId: string | undefined;
}

export interface JoinOptions {
  readonly endpoints: readonly string[];
  readonly id: number;
  readonly peerUrl: string;
  readonly httpUrl: string | undefined;
  readonly authToken: string | undefined;
  /** This node's cluster token (undefined: none): the join carries a proof of it (src/lib/join-proof.ts). */
  readonly clusterToken: string | undefined;
  /** PEM CA certificates to trust for https:// endpoints instead of the system's (see ClientOptions.ca). */
  readonly ca?: readonly string[];
  /** Give up after this long (the cluster may be electing, or busy with another change). */
  readonly timeoutMs: number;
  readonly logger: Logger;
}

/** Thrown when the cluster refused the join for good (bad input, id taken by another address) or never answered. */
export class JoinError extends Error {
  override name = "JoinError";
}

/** Budget of one request to the cluster (the client's own retries included). */
const REQUEST_TIMEOUT_MS_MAX = 10_000;

/** How long a join retries before each retry is said at warn (a leader's election takes well under it). */
const JOIN_QUIET_MS = 5_000;

/**
 * Asks the cluster through the client library (src/client: it tries every endpoint in turn and
 * follows redirects to the leader with the token) until the change is applied. An addition whose
 * outcome was unknown is simply asked again: if it was applied, the cluster answers
 * `member_exists`, and this server checks the configuration holds it at its own address.
 */
export async function joinCluster(options: JoinOptions): Promise<JoinAnswer> {
  const deadline = Date.now() + options.timeoutMs;
  const client = createClient({
    endpoints: options.endpoints,
    timeoutMs: Math.min(REQUEST_TIMEOUT_MS_MAX, options.timeoutMs),
    ...(options.authToken === undefined ? {} : { authToken: options.authToken }),
    ...(options.ca === undefined ? {} : { ca: options.ca }),
  });
  const plain = { id: options.id, peerUrl: options.peerUrl, ...(options.httpUrl === undefined ? {} : { httpUrl: options.httpUrl }) };
  let member: NewMember = { ...plain, clusterTokenProof: joinProof(options.clusterToken, options.id, options.peerUrl) };
  let lastProblem = "no endpoint tried";
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    try {
      return parseAnswer(await client.membership.add(member), options.id);
    } catch (error) {
      if (error instanceof JoinError) throw error;
      // A leader of a release before the proof refuses the field it does not know: asked again without it.
      if (error instanceof KvClientError && error.code === "bad_request" && error.message.includes("'clusterTokenProof'") && "clusterTokenProof" in member && error.message.includes("unknown field")) {
        member = plain;
        // Said: such a leader records a joiner whatever its token, and one with a wrong token can
        // never connect after (found in a black-box review of a rolling upgrade).
        options.logger.log("warn", "join", {
          detail:
            "the cluster's leader runs a release that does not check a joiner's cluster token (0.10.0 or earlier): this node joins without its token checked; if its token is not the cluster's, its peer calls will be refused, and it must be removed (kv member remove) and started again with the right one",
        });
        continue;
      }
      if (error instanceof KvClientError && error.code === "member_exists") {
        // Already added (an earlier attempt's answer was lost): fine if it is at our address.
        // Read linearizably: the configuration then holds every change committed before, the
        // addition this server joins as among them (of this id, the latest).
        const current = await client.members({ consistency: "linearizable" }).catch((problem: unknown) => problem);
        if (current instanceof Error) {
          if (!(current instanceof KvClientError) && !(current instanceof UnknownOutcomeError)) throw current;
          lastProblem = `reading the members: ${current.message}`;
        } else {
          // An earlier attempt of this join added a learner, which cannot have caught up and been
          // promoted before this server started. A voter here is one whose data dir was emptied:
          // joining again with an empty log would make it a voter that forgot what it acknowledged.
          // (Checked before the configuration index: a cluster that never changed has none.)
          const listed = (current as MembersView).members;
          if (Array.isArray(listed) && listed.some((member: ListedMember) => member.id === options.id && member.role === "voter")) {
            throw new JoinError(
              `node ${options.id} is already a voter of this cluster, and this data dir is empty: if it lost its data, remove it first (kv member remove ${options.id}), then start it again with --join; if it never ran, start it with --cluster, as the other voters were, without --join`,
            );
          }
          // Any node answers GET /members, with the configuration it has applied: one behind the
          // leader may not list this node yet (or have no configuration index): ask again.
          let parsed: JoinAnswer | undefined;
          try {
            parsed = parseAnswer(current as MembersView, options.id);
          } catch (problem) {
            if (!(problem instanceof JoinError)) throw problem;
            lastProblem = `reading the members after member_exists: ${problem.message}`;
          }
          if (parsed !== undefined) {
            const self = parsed.addresses.find((address) => address.id === options.id);
            if (self?.peerUrl === options.peerUrl) {
              // Read linearizably, the index listed for this server is its own addition's: it sends it
              // on its calls, and peers refuse an older process of the id by it. A node that did not
              // read so (0.8.0 and earlier ignore the ask) may be behind, listing an earlier addition
              // of this id at this address, whose index would make peers refuse this server (found in
              // a review): unknown instead, until an image tells it. (It was always unknown, and a
              // member added with kv member add before its --join never learned it: found in a
              // black-box review.)
              if ((current as MembersView).consistency === "linearizable") return parsed;
              const withoutOwnIndex = ({ addedIndex: _, ...address }: JoinAnswer["addresses"][number]) => address;
              return { ...parsed, addresses: parsed.addresses.map((address) => (address.id === options.id ? withoutOwnIndex(address) : address)) };
            }
            throw new JoinError(`node ${options.id} is already a member at ${self?.peerUrl ?? "an unknown address"}, not ${options.peerUrl}`);
          }
        }
      } else {
        if (error instanceof KvClientError && error.code === "http_404") {
          // No kv answer at all (a peer port answers a bare 404): found in a black-box review, where
          // the join pointed at a peer URL said only "404 HTTP 404 from ...".
          throw new JoinError(`${error.message}, without kv's JSON: is it a peer URL, or behind a proxy's other path? --join takes a member's client URL (what its --listen-http or --advertise-http serves)`);
        }
        if (error instanceof KvClientError && error.status === 401) {
          // Which flag the joiner needs (found in a black-box walkthrough: the 401's own words only).
          const fix =
            options.authToken === undefined
              ? "start this node with the cluster's --auth-token (or --auth-token-file, or $KV_AUTH_TOKEN): its join asks through the client API"
              : "the --auth-token this node was given is not the cluster's";
          throw new JoinError(`the cluster refused the join: 401 ${error.message}: ${fix}`);
        }
        if (error instanceof KvClientError && (error.status === 400 || error.status === 404)) {
          throw new JoinError(`the cluster refused the join: ${error.status} ${error.message}`);
        }
        if (!(error instanceof KvClientError) && !(error instanceof UnknownOutcomeError)) throw error;
        lastProblem = error instanceof KvClientError ? `${error.code}: ${error.message}` : error.message;
      }
    }
    // A join still failing after a while is an operator's to look at (found in a review: a minute of
    // retries to an unreachable URL said so at info only).
    const waitedMs = Date.now() - (deadline - options.timeoutMs);
    options.logger.log(waitedMs >= JOIN_QUIET_MS ? "warn" : "info", "join", { detail: `retrying: ${lastProblem}`, waitedMs, givesUpInMs: Math.max(0, deadline - Date.now()) });
    await Bun.sleep(Math.min(1_000, 100 * 2 ** Math.min(attempt, 4)));
  }
  throw new JoinError(`could not join within ${options.timeoutMs} ms: ${lastProblem}`);
}

function parseAnswer(answer: MembersView, id: number): JoinAnswer {
  const members: unknown = answer.members;
  const configIndex: unknown = answer.configIndex;
  if (!Array.isArray(members) || typeof configIndex !== "number" || configIndex < 1) {
    throw new JoinError(`the cluster answered without a configuration: ${JSON.stringify(answer).slice(0, 200)}`);
  }
  const list = members as ListedMember[];
  if (!list.some((member) => member.id === id)) throw new JoinError(`the configuration answered does not include node ${id}`);
  return {
    ...configurationOfMembers(list),
    configIndex,
    clusterId: typeof answer.clusterId === "string" ? answer.clusterId : undefined,
  };
}
