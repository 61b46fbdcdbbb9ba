import type { OperationKind, ReadConsistency } from "./bench-options.ts";
import {
  authHeaders,
  BenchTargetUnavailableError,
  benchValue,
  errorKindOf,
  fetchJson,
  httpErrorKind,
  keyName,
  LeaderTracker,
  type BenchTarget,
  type LeaderObservation,
  type OperationOutcome,
} from "./bench-target.ts";
import { buildRequest, hostOf, type ClientConnections, type HttpResponse } from "../lib/http-connection.ts";

/** Attempts per write when the node answers 307 (not the leader): rediscover, then resend. */
const WRITE_ATTEMPTS_MAX = 3;
const STATUS_TIMEOUT_MS = 1_000;

/** What GET /status answers (the fields the benchmark reads). */
interface KvStatus {
  id: number;
  role: string;
  term: number;
  leaderId: number | null;
  leaderUrl: string | null;
}

/** Options of the kv target. */
export interface KvTargetOptions {
  readonly endpoints: readonly string[];
  readonly valueBytes: number;
  readonly consistency: ReadConsistency;
  /** How long to wait for a leader at the start and after a failed write. */
  readonly discoverTimeoutMs: number;
  /** Called with the version of each acknowledged put (`kv bench --watchers` matches events to it). */
  readonly onPutAcknowledged?: (version: number) => void;
  /** Sent as `Authorization: Bearer` with every request (`kv serve --auth-token`). */
  readonly authToken?: string;
}

/**
 * kv's HTTP API: writes (PUT, DELETE) go to the leader found through GET /status, re-found after a
 * 307 or a failed write; reads are spread over the endpoints (client i reads from endpoint i mod n).
 */
export function createKvTarget(opts: KvTargetOptions): BenchTarget {
  const value = benchValue(opts.valueBytes);
  const readQuery = `?consistency=${opts.consistency}`;
  const auth = authHeaders(opts.authToken);
  const hosts = new Map<string, string>();
  const host = (origin: string) => {
    let name = hosts.get(origin);
    if (name === undefined) hosts.set(origin, (name = hostOf(origin)));
    return name;
  };

  const observe = async (): Promise<LeaderObservation | undefined> => {
    const statuses = await Promise.all(opts.endpoints.map((endpoint) => fetchJson(`${endpoint}/status`, STATUS_TIMEOUT_MS, undefined, auth.fetch)));
    let best: LeaderObservation | undefined;
    for (const [i, raw] of statuses.entries()) {
      const status = raw as KvStatus | undefined;
      if (status === undefined || typeof status.term !== "number") continue;
      // A node that says it leads speaks for itself; others point at the leader they know of.
      const leaderId = status.role === "leader" ? status.id : status.leaderId;
      if (leaderId === null || leaderId === undefined) continue;
      const origin = status.role === "leader" ? (status.leaderUrl ?? (opts.endpoints[i] as string)) : status.leaderUrl;
      if (origin === null) continue;
      if (best === undefined || status.term > best.term) best = { leaderId: String(leaderId), term: status.term, origin: new URL(origin).origin };
    }
    return best;
  };
  // etcd's status route answering where kv's does not: the endpoints are etcd's.
  const diagnose = async (): Promise<string | undefined> => {
    for (const endpoint of opts.endpoints) {
      const status = (await fetchJson(`${endpoint}/v3/maintenance/status`, STATUS_TIMEOUT_MS, "{}")) as { header?: { member_id?: string } } | undefined;
      if (status?.header?.member_id !== undefined) return `${endpoint} is an etcd endpoint, not kv (--target etcd)`;
    }
    return undefined;
  };
  const leader = new LeaderTracker(observe, opts.discoverTimeoutMs, diagnose);

  const write = async (connections: ClientConnections, method: "PUT" | "DELETE", path: string): Promise<OperationOutcome> => {
    let redirects = 0;
    for (let attempt = 1; ; attempt++) {
      const origin = (leader.leader as LeaderObservation).origin;
      let response: HttpResponse;
      try {
        response = await connections.to(origin).request(buildRequest(method, path, host(origin), method === "PUT" ? value : undefined, undefined, auth.head));
      } catch (error) {
        const errorKind = errorKindOf(error);
        if (errorKind !== "abandoned") await leader.rediscover(origin);
        return { ok: false, errorKind, redirects };
      }
      if (response.status === 200) {
        if (method === "PUT" && opts.onPutAcknowledged !== undefined) {
          const version = (JSON.parse(new TextDecoder().decode(response.body)) as { version?: unknown }).version;
          if (typeof version === "number") opts.onPutAcknowledged(version);
        }
        // A delete of an absent key is answered {"deleted": false}: a success that found nothing, as a read's 404.
        return { ok: true, notFound: method === "DELETE" && !deletedSomething(response.body), redirects };
      }
      if (response.status === 307 && attempt < WRITE_ATTEMPTS_MAX) {
        redirects += 1;
        await leader.rediscover(origin);
        continue;
      }
      await leader.rediscover(origin);
      return { ok: false, errorKind: httpErrorKind(response), redirects };
    }
  };

  return {
    hasLeader: true,
    async start() {
      // A cluster that wants a token would look like one with no leader: say which it is.
      const refusals = await Promise.all(
        opts.endpoints.map((endpoint) =>
          fetch(`${endpoint}/status`, { headers: auth.fetch, redirect: "manual", signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) }).then(
            async (response) => (await response.arrayBuffer(), response.status === 401 ? endpoint : undefined),
            () => undefined,
          ),
        ),
      );
      const refused = refusals.find((endpoint) => endpoint !== undefined);
      if (refused !== undefined) {
        const hint = opts.authToken === undefined ? "the cluster requires a token: --auth-token or KV_AUTH_TOKEN" : "the token given is not the cluster's";
        throw new BenchTargetUnavailableError(`${refused} answered 401 unauthenticated (${hint})`);
      }
      return leader.start();
    },
    observeLeader: observe,
    stop: () => leader.stop(),
    // The leader as the run ended: the leader changes along the way are listed below the totals.
    describe: () => `kv at ${opts.endpoints.join(",")}; writes to the leader, at the end ${leader.leader?.origin ?? "(unknown)"} (node ${leader.leader?.leaderId ?? "?"})`,
    async execute(connections, client, operation: OperationKind, keyIndex): Promise<OperationOutcome> {
      const path = `/kv/${keyName(keyIndex)}`;
      switch (operation) {
        case "put":
          return write(connections, "PUT", path);
        case "delete":
          return write(connections, "DELETE", path);
        case "get": {
          const origin = opts.endpoints[client % opts.endpoints.length] as string;
          let response: HttpResponse;
          try {
            response = await connections.to(origin).request(buildRequest("GET", path + readQuery, host(origin), undefined, undefined, auth.head));
          } catch (error) {
            return { ok: false, errorKind: errorKindOf(error), redirects: 0 };
          }
          if (response.status === 200) return { ok: true, notFound: false, redirects: 0 };
          if (response.status === 404) return { ok: true, notFound: true, redirects: 0 };
          return { ok: false, errorKind: httpErrorKind(response), redirects: 0 };
        }
      }
    },
  };
}

/** Whether a DELETE's answer says it deleted the key (`{"deleted": true, ...}`). */
function deletedSomething(body: Uint8Array): boolean {
  try {
    return (JSON.parse(new TextDecoder().decode(body)) as { deleted?: unknown }).deleted === true;
  } catch {
    return true;
  }
}
