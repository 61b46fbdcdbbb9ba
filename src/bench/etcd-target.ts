import type { OperationKind, ReadConsistency } from "./bench-options.ts";
import {
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

const STATUS_TIMEOUT_MS = 1_000;

/** What etcd's `POST /v3/maintenance/status` answers (the fields the benchmark reads). */
interface EtcdStatus {
  header?: { member_id?: string };
  leader?: string;
  raftTerm?: string;
}

/** Options of the etcd target. */
export interface EtcdTargetOptions {
  readonly endpoints: readonly string[];
  readonly valueBytes: number;
  /** `stale` sends `serializable: true` (a local read); anything else is etcd's default, linearizable, range. */
  readonly consistency: ReadConsistency;
  readonly discoverTimeoutMs: number;
  /** Called with the revision of each acknowledged put (`kv bench --watchers` matches events to it). */
  readonly onPutAcknowledged?: (version: number) => void;
}

const HEADER_REVISION = /"revision":"(\d+)"/;

/**
 * etcd v3 through its JSON gateway, so the same client measures both stores: `POST /v3/kv/put`,
 * `/v3/kv/range` and `/v3/kv/deleterange` with base64 keys and values. Writes go to the leader
 * (the member whose id equals the `leader` field of `/v3/maintenance/status`), reads are spread
 * over the endpoints like kv's.
 */
export function createEtcdTarget(opts: EtcdTargetOptions): BenchTarget {
  const valueBase64 = Buffer.from(benchValue(opts.valueBytes)).toString("base64");
  const serializable = opts.consistency === "stale" ? ',"serializable":true' : "";
  const hosts = new Map<string, string>();
  const host = (origin: string) => {
    let name = hosts.get(origin);
    if (name === undefined) hosts.set(origin, (name = hostOf(origin)));
    return name;
  };
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const post = (origin: string, path: string, json: string) => buildRequest("POST", path, host(origin), encoder.encode(json), "application/json");

  const observe = async (): Promise<LeaderObservation | undefined> => {
    const statuses = await Promise.all(opts.endpoints.map((endpoint) => fetchJson(`${endpoint}/v3/maintenance/status`, STATUS_TIMEOUT_MS, "{}")));
    let best: LeaderObservation | undefined;
    for (const [i, raw] of statuses.entries()) {
      const status = raw as EtcdStatus | undefined;
      const memberId = status?.header?.member_id;
      if (status === undefined || memberId === undefined || status.leader === undefined || status.leader === "0") continue;
      // Only the leader's own endpoint tells us where to send writes.
      if (memberId !== status.leader) continue;
      const term = Number(status.raftTerm ?? 0);
      if (best === undefined || term > best.term) best = { leaderId: status.leader, term, origin: opts.endpoints[i] as string };
    }
    return best;
  };
  // kv's own status route answering where etcd's does not: the endpoints are kv's.
  const diagnose = async (): Promise<string | undefined> => {
    for (const endpoint of opts.endpoints) {
      const status = (await fetchJson(`${endpoint}/status`, STATUS_TIMEOUT_MS)) as { term?: unknown; role?: unknown } | undefined;
      if (typeof status?.term === "number" && typeof status.role === "string") return `${endpoint} is a kv node, not etcd (--target kv)`;
    }
    return undefined;
  };
  const leader = new LeaderTracker(observe, opts.discoverTimeoutMs, diagnose);

  const send = async (connections: ClientConnections, origin: string, request: Uint8Array, operation: OperationKind): Promise<OperationOutcome> => {
    const isWrite = operation !== "get";
    const isRead = operation === "get";
    let response: HttpResponse;
    try {
      response = await connections.to(origin).request(request);
    } catch (error) {
      const errorKind = errorKindOf(error);
      if (isWrite && errorKind !== "abandoned") await leader.rediscover(origin);
      return { ok: false, errorKind, redirects: 0 };
    }
    if (response.status === 200) {
      if (operation === "put" && opts.onPutAcknowledged !== undefined) {
        // A put's answer is `{"header":{...,"revision":"N",...}}`: N is the put's mod_revision.
        const revision = HEADER_REVISION.exec(decoder.decode(response.body))?.[1];
        if (revision !== undefined) opts.onPutAcknowledged(Number(revision));
      }
      // A range of an absent key answers without "kvs", a delete of one without "deleted".
      const body = decoder.decode(response.body);
      return { ok: true, notFound: (isRead && !body.includes('"kvs"')) || (operation === "delete" && !body.includes('"deleted"')), redirects: 0 };
    }
    if (isWrite) await leader.rediscover(origin);
    return { ok: false, errorKind: httpErrorKind(response), redirects: 0 };
  };

  return {
    hasLeader: true,
    start: () => leader.start(),
    observeLeader: observe,
    stop: () => leader.stop(),
    describe: () => `etcd at ${opts.endpoints.join(",")}; writes to the leader, at the end ${leader.leader?.origin ?? "(unknown)"} (member ${leader.leader?.leaderId ?? "?"})`,
    execute(connections, client, operation: OperationKind, keyIndex): Promise<OperationOutcome> {
      const keyBase64 = Buffer.from(keyName(keyIndex)).toString("base64");
      switch (operation) {
        case "put": {
          const origin = (leader.leader as LeaderObservation).origin;
          return send(connections, origin, post(origin, "/v3/kv/put", `{"key":"${keyBase64}","value":"${valueBase64}"}`), "put");
        }
        case "delete": {
          const origin = (leader.leader as LeaderObservation).origin;
          return send(connections, origin, post(origin, "/v3/kv/deleterange", `{"key":"${keyBase64}"}`), "delete");
        }
        case "get": {
          const origin = opts.endpoints[client % opts.endpoints.length] as string;
          return send(connections, origin, post(origin, "/v3/kv/range", `{"key":"${keyBase64}"${serializable}}`), "get");
        }
      }
    },
  };
}
