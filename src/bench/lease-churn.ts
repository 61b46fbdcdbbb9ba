/**
 * `kv bench --lease-churn N --lease-ttl 10s`: N leases with one key each, all running out within
 * about a second, against kv (`POST /leases`, `PUT /kv/{key}?lease=ID`, `POST /leases/{id}/keepalive`)
 * or etcd's gateway (`/v3/lease/grant`, `/v3/kv/put` with `lease`, `/v3/lease/keepalive`).
 *
 * 1. Setup: `clients` closed loops grant the leases and put one key on each (`lease-churn/<i>`).
 * 2. Refresh: the same loops send one keepalive per lease, as fast as they go, so every lease runs
 *    out within the refresh's spread of the last keepalive plus the TTL (a grant alone cannot: N
 *    grants through the log take longer than a second). A lease gone before its keepalive (the
 *    setup outlasted the TTL) is counted in `expiredEarly`.
 * 3. Expiry: the key count under the prefix is polled on the leader until it is 0. The figure is
 *    the time from the last keepalive's answer until no key is left: the target is TTL + 1 s.
 * Meanwhile the leader is polled, and every change of leader is reported.
 */
import { buildRequest, ClientConnections, HttpConnectionError, type HttpConnection, type HttpResponse } from "../lib/http-connection.ts";
import type { BenchTargetKind } from "./bench-options.ts";
import { authHeaders, BenchTargetUnavailableError, type BenchTarget, type LeaderObservation } from "./bench-target.ts";

/** What every key of a lease-churn run starts with. */
export const LEASE_CHURN_PREFIX = "lease-churn/";
/** Upper bound of `--lease-churn` (kv keeps at most 1,000,000 leases at once). */
export const LEASE_CHURN_MAX = 1_000_000;
/** Bounds of `--lease-ttl`: etcd's TTLs are whole seconds; a day is plenty. */
export const LEASE_TTL_MS_MIN = 1_000;
export const LEASE_TTL_MS_MAX = 24 * 3_600_000;

/** Attempts per request when the answer says the leader moved or the connection failed. */
const ATTEMPTS_MAX = 3;
/** How often the key count and the leader are polled. */
const COUNT_POLL_INTERVAL_MS = 50;
const LEADER_POLL_INTERVAL_MS = 100;
/** After the target (TTL + 1 s) the count is still polled this long, so a miss is measured too. */
const OVERTIME_MS = 30_000;

export interface LeaseChurnOptions {
  readonly target: Exclude<BenchTargetKind, "noop">;
  readonly leases: number;
  readonly ttlMs: number;
  /** Closed loops of the setup and refresh phases. */
  readonly clients: number;
  readonly requestTimeoutMs: number;
  /** kv only: sent as `Authorization: Bearer` with every request (`kv serve --auth-token`). */
  readonly authToken?: string;
}

/** The `--json` report of a lease-churn run. */
export interface LeaseChurnReport {
  readonly mode: "lease-churn";
  readonly target: string;
  readonly description: string;
  readonly leases: number;
  readonly ttlMs: number;
  readonly clients: number;
  /** Grants and puts, from the first request to the last answer. */
  readonly setupMs: number;
  /** Leases granted with their key on them. */
  readonly leasesReady: number;
  /** From the first keepalive's answer to the last: the window the leases run out in. */
  readonly refreshSpreadMs: number;
  /** Leases gone before their keepalive (the setup outlasted the TTL). */
  readonly expiredEarly: number;
  /** From the last keepalive's answer until no key was left; null when keys were still left at the end. */
  readonly goneAfterLastRefreshMs: number | null;
  /** TTL + 1 s (the issue's target for goneAfterLastRefreshMs). */
  readonly targetMs: number;
  readonly met: boolean;
  /** Keys left when polling stopped (0 when all went). */
  readonly keysLeft: number;
  readonly leaderChanges: number;
  readonly leaders: ReadonlyArray<LeaderObservation & { readonly atMs: number }>;
  /** Failed requests by kind. */
  readonly errors: Readonly<Record<string, number>>;
}

/** One store's lease calls over raw HTTP/1.1 (the ids are decimal strings for both). */
interface LeaseApi {
  grant(host: string, ttlMs: number): Uint8Array;
  grantedId(body: string): string | undefined;
  put(host: string, key: string, leaseId: string): Uint8Array;
  keepalive(host: string, leaseId: string): Uint8Array;
  /** Whether a keepalive's 200 answer says the lease still exists. */
  keptAlive(body: string): boolean;
  count(host: string): Uint8Array;
  /** Keys left, from the count answer. */
  keysLeft(body: string): number | undefined;
}

const encoder = new TextEncoder();
const json = (value: unknown) => encoder.encode(JSON.stringify(value));
const b64 = (text: string) => Buffer.from(text).toString("base64");

/** kv's lease API; `auth` is a header line for every request ("" without a token). */
const kvApi = (auth: string): LeaseApi => ({
  grant: (host, ttlMs) => buildRequest("POST", "/leases", host, json({ ttlMs }), "application/json", auth),
  grantedId: (body) => {
    const id = (JSON.parse(body) as { id?: unknown }).id;
    return typeof id === "string" ? id : undefined;
  },
  put: (host, key, leaseId) => buildRequest("PUT", `/kv/${key}?lease=${leaseId}`, host, encoder.encode("x"), undefined, auth),
  keepalive: (host, leaseId) => buildRequest("POST", `/leases/${leaseId}/keepalive`, host, undefined, undefined, auth),
  keptAlive: () => true, // kv answers 404 lease_not_found for a lease that is gone
  count: (host) => buildRequest("GET", `/kv?prefix=${encodeURIComponent(LEASE_CHURN_PREFIX)}&limit=1`, host, undefined, undefined, auth),
  keysLeft: (body) => {
    const items = (JSON.parse(body) as { items?: unknown[] }).items;
    return Array.isArray(items) ? items.length : undefined;
  },
});

/** The key just past every key under LEASE_CHURN_PREFIX ("/" + 1 is "0"). */
const PREFIX_END = `${LEASE_CHURN_PREFIX.slice(0, -1)}0`;

const etcdApi: LeaseApi = {
  grant: (host, ttlMs) => buildRequest("POST", "/v3/lease/grant", host, json({ TTL: Math.ceil(ttlMs / 1000) }), "application/json"),
  grantedId: (body) => {
    const id = (JSON.parse(body) as { ID?: unknown }).ID;
    return typeof id === "string" ? id : undefined;
  },
  put: (host, key, leaseId) => buildRequest("POST", "/v3/kv/put", host, json({ key: b64(key), value: b64("x"), lease: leaseId }), "application/json"),
  keepalive: (host, leaseId) => buildRequest("POST", "/v3/lease/keepalive", host, json({ ID: leaseId }), "application/json"),
  // A lease that is gone is answered 200 with no TTL.
  keptAlive: (body) => /"TTL":"[1-9]/.test(body),
  count: (host) => buildRequest("POST", "/v3/kv/range", host, json({ key: b64(LEASE_CHURN_PREFIX), range_end: b64(PREFIX_END), count_only: true }), "application/json"),
  keysLeft: (body) => {
    const count = (JSON.parse(body) as { count?: unknown }).count;
    return count === undefined ? 0 : Number(count);
  },
};

/** Runs the three phases against `target` (used for leader discovery) and reports. */
export async function runLeaseChurn(options: LeaseChurnOptions, target: BenchTarget, signal?: AbortSignal): Promise<LeaseChurnReport> {
  await target.start();
  const api = options.target === "kv" ? kvApi(authHeaders(options.authToken).head) : etcdApi;
  const errors = new Map<string, number>();
  const fail = (kind: string) => errors.set(kind, (errors.get(kind) ?? 0) + 1);
  const startedMs = performance.now();
  let leader = await target.observeLeader();
  if (leader === undefined) throw new BenchTargetUnavailableError("no leader found");
  const leaders: Array<LeaderObservation & { atMs: number }> = [{ ...leader, atMs: 0 }];
  let stopped = false;
  const poller = (async () => {
    while (!stopped) {
      const seen = await target.observeLeader();
      const last = leaders[leaders.length - 1] as LeaderObservation;
      if (seen !== undefined && (seen.leaderId !== last.leaderId || seen.term !== last.term)) {
        leaders.push({ ...seen, atMs: performance.now() - startedMs });
        leader = seen;
      }
      if (!stopped) await Bun.sleep(LEADER_POLL_INTERVAL_MS); // polling interval, not a wait for a condition
    }
  })();
  const allConnections: ClientConnections[] = [];
  const open = new Set<HttpConnection>();
  const hostOfOrigin = (origin: string) => new URL(origin).host;

  /** Sends `build(host)` to the leader, re-finding it after a 307 or a failed connection; the 2xx/404 answer or undefined. */
  const send = async (connections: ClientConnections, build: (host: string) => Uint8Array, what: string): Promise<HttpResponse | undefined> => {
    for (let attempt = 1; attempt <= ATTEMPTS_MAX; attempt++) {
      const origin = (leader as LeaderObservation).origin;
      try {
        const response = await connections.to(origin).request(build(hostOfOrigin(origin)));
        if (response.status === 200 || response.status === 404) return response;
        fail(`${what}: http_${response.status}`);
      } catch (error) {
        if (!(error instanceof HttpConnectionError)) throw error;
        fail(`${what}: ${error.kind}`);
      }
      leader = (await target.observeLeader()) ?? leader;
    }
    return undefined;
  };

  /** Runs `work(i)` for i in [0, n) over `clients` closed loops, each with its own connections. */
  const loops = async (n: number, work: (connections: ClientConnections, i: number) => Promise<void>) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(options.clients, n) }, async () => {
        const connections = new ClientConnections((connection) => open.add(connection));
        allConnections.push(connections);
        while (next < n && !stopped && signal?.aborted !== true) await work(connections, next++);
      }),
    );
  };

  const decoder = new TextDecoder();
  const ids: Array<string | undefined> = new Array(options.leases);
  const expired: number[] = [];
  let firstRefreshMs = Number.POSITIVE_INFINITY;
  let lastRefreshMs = Number.NEGATIVE_INFINITY;
  let goneAtMs: number | undefined;
  let keysLeft = Number.NaN;
  const sweep = setInterval(() => {
    const nowMs = performance.now();
    for (const connection of open) connection.expire(nowMs, options.requestTimeoutMs);
  }, 100);
  try {
    // 1. Setup: a lease and one key on it, for each i.
    const setupStartMs = performance.now();
    await loops(options.leases, async (connections, i) => {
      const granted = await send(connections, (host) => api.grant(host, options.ttlMs), "grant");
      if (granted === undefined || granted.status !== 200) return;
      const id = api.grantedId(decoder.decode(granted.body));
      if (id === undefined) return void fail("grant: no id in the answer");
      const put = await send(connections, (host) => api.put(host, `${LEASE_CHURN_PREFIX}${i}`, id), "put");
      if (put === undefined) return;
      if (put.status !== 200) return void fail(`put: http_${put.status}`);
      ids[i] = id;
    });
    const setupMs = performance.now() - setupStartMs;
    const ready = ids.filter((id) => id !== undefined).length;

    // 2. Refresh: one keepalive per lease, as fast as the loops go.
    await loops(options.leases, async (connections, i) => {
      const id = ids[i];
      if (id === undefined) return;
      const kept = await send(connections, (host) => api.keepalive(host, id), "keepalive");
      if (kept === undefined) return;
      const nowMs = performance.now();
      if (kept.status === 404 || !api.keptAlive(decoder.decode(kept.body))) {
        expired.push(i);
        return;
      }
      firstRefreshMs = Math.min(firstRefreshMs, nowMs);
      lastRefreshMs = Math.max(lastRefreshMs, nowMs);
    });
    if (!Number.isFinite(lastRefreshMs)) lastRefreshMs = performance.now();

    // 3. Expiry: poll the key count on the leader until it is 0.
    const countConnections = new ClientConnections((connection) => open.add(connection));
    allConnections.push(countConnections);
    const targetMs = options.ttlMs + 1_000;
    const pollUntilMs = lastRefreshMs + targetMs + OVERTIME_MS;
    while (performance.now() < pollUntilMs && signal?.aborted !== true) {
      const answer = await send(countConnections, (host) => api.count(host), "count");
      const atMs = performance.now();
      const left = answer === undefined || answer.status !== 200 ? undefined : api.keysLeft(decoder.decode(answer.body));
      if (left !== undefined) {
        keysLeft = left;
        if (left === 0) {
          goneAtMs = atMs;
          break;
        }
      }
      await Bun.sleep(COUNT_POLL_INTERVAL_MS); // polling interval between counts
    }
    const goneAfterLastRefreshMs = goneAtMs === undefined ? null : Math.round(goneAtMs - lastRefreshMs);
    return {
      mode: "lease-churn",
      target: options.target,
      description: target.describe(),
      leases: options.leases,
      ttlMs: options.ttlMs,
      clients: options.clients,
      setupMs: Math.round(setupMs),
      leasesReady: ready,
      refreshSpreadMs: Number.isFinite(firstRefreshMs) ? Math.round(lastRefreshMs - firstRefreshMs) : 0,
      expiredEarly: expired.length,
      goneAfterLastRefreshMs,
      targetMs,
      met: goneAfterLastRefreshMs !== null && goneAfterLastRefreshMs <= targetMs && leaders.length === 1,
      keysLeft: Number.isNaN(keysLeft) ? -1 : keysLeft,
      leaderChanges: leaders.length - 1,
      leaders,
      errors: Object.fromEntries(errors),
    };
  } finally {
    stopped = true;
    clearInterval(sweep);
    for (const connections of allConnections) connections.closeAll();
    await poller;
  }
}

/** The human-readable report of a lease-churn run. */
export function formatLeaseChurnReport(report: LeaseChurnReport): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const lines = [
    `kv bench --lease-churn: ${report.description}`,
    `${report.leases.toLocaleString("en-US")} leases of ${s(report.ttlMs)}, one key each, ${report.clients} clients`,
    "",
    `  Setup:        ${s(report.setupMs)} (${report.leasesReady.toLocaleString("en-US")} leases with their key)`,
    `  Refresh:      one keepalive each within ${s(report.refreshSpreadMs)}${report.expiredEarly > 0 ? `; ${report.expiredEarly} had expired before it (raise --lease-ttl)` : ""}`,
    `  All gone:     ${report.goneAfterLastRefreshMs === null ? `no, ${report.keysLeft} keys left` : `${s(report.goneAfterLastRefreshMs)} after the last keepalive`} (target ${s(report.targetMs)}: ${report.met ? "met" : "missed"})`,
    `  Leader changes: ${report.leaderChanges}`,
  ];
  const errors = Object.entries(report.errors);
  lines.push(errors.length === 0 ? "  Errors: none" : `  Errors: ${errors.map(([kind, n]) => `${n} ${kind}`).join(", ")}`);
  return lines.join("\n");
}
