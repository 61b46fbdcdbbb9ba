/**
 * `client.leases`: grant, keep alive, read and revoke leases (`/leases`, README.md "Leases"), and a
 * keeper that keeps one lease alive until stopped and says promptly when it is lost.
 */
import { KvClientError } from "./errors.ts";
import { callOptions, errorFromAnswer, type Answer, type CallOptions, type Transport } from "./transport.ts";

/** A lease id: the number `grant` returns, or the decimal string the HTTP API answers (`{"id": "67"}`). */
export type LeaseId = number | string;

/** `id` as a number: a positive whole one, or a string of its decimal digits; else `bad_request`. */
export function leaseIdOf(id: LeaseId): number {
  const number = typeof id === "string" && /^[1-9][0-9]{0,15}$/.test(id) ? Number(id) : id;
  if (typeof number !== "number" || !Number.isSafeInteger(number) || number < 1) {
    throw new KvClientError("bad_request", 0, `a lease id is a positive whole number or its decimal string, got ${JSON.stringify(id) ?? String(id)}`);
  }
  return number;
}

/** What `leases.grant` answers. */
export interface LeaseGrant {
  /** The lease's id (the Raft index of its grant): pass it as `put(key, value, { lease: id })`. */
  readonly id: number;
  /** The TTL granted: at least twice the cluster's longest election timeout. */
  readonly ttlMs: number;
  /** The TTL asked for, when the cluster raised it to its minimum. */
  readonly raisedFromMs?: number;
}

/** What `leases.get` answers: the leader's countdown and the keys attached. */
export interface LeaseInfo {
  readonly id: number;
  readonly ttlMs: number;
  readonly remainingMs: number;
  /** The keys attached (at most 1,000 listed; `keysTruncated` says whether there are more). */
  readonly keys: readonly string[];
  readonly keysTruncated: boolean;
}

/** One lease of a `leases.list` page: its TTL and what is left of the leader's countdown. */
export interface LeaseSummary {
  readonly id: number;
  readonly ttlMs: number;
  readonly remainingMs: number;
}

/** What `leases.list` answers: a page of leases, and whether more follow it. */
export interface LeasePage {
  readonly leases: readonly LeaseSummary[];
  readonly more: boolean;
}

/** What `leases.revoke` answers: the version its keys were deleted at. */
export interface LeaseRevoked {
  readonly id: number;
  readonly version: number;
  readonly deletedKeys: number;
}

/** Options of `leases.keep`. */
export interface LeaseKeepOptions {
  /** The lease's TTL (as granted): the keeper sends a keepalive every third of it. */
  readonly ttlMs: number;
  /**
   * When the grant (or the last keepalive answered) was sent, by `performance.now()`. The leader
   * started the countdown after that, so the lease lives at least until `sentAtMs + ttlMs`, and no
   * longer can be assumed: the keeper's `lost` fires then unless a later keepalive was answered.
   * Default: now, which is right only when `keep` is called as soon as the grant was sent.
   */
  readonly sentAtMs?: number;
}

/**
 * Keeps one lease alive: a keepalive every `ttlMs / 3`. `lost` aborts, with a `KvClientError` as its
 * reason, as soon as the lease is known gone (`lease_not_found`: it expired or was revoked) or may
 * be (`lease_expired`: no keepalive was answered within one TTL of being sent, so the leader's
 * countdown may have run out). After `lost`, the keeper stops by itself.
 */
export interface LeaseKeeper {
  readonly id: number;
  readonly lost: AbortSignal;
  /**
   * Until when, by `performance.now()`, the lease is known to live (unless revoked): the send time of
   * the grant or of the last keepalive answered, plus the TTL. The leader started its countdown after
   * that send, and a new leader restarts every countdown at the full TTL, so until then no one else
   * can see the lease run out, as long as the leader's clock runs no faster than this process's (it
   * counts the TTL on its own: docs/client.md). `lost` fires at this time unless a later keepalive is
   * answered first.
   */
  aliveUntilMs(): number;
  /** Stops sending keepalives (the lease then runs out by itself, unless revoked). Idempotent. */
  stop(): void;
}

/** The lease calls of a client. */
export interface LeasesApi {
  /**
   * Grants a lease of `ttlMs` through the log. Retried after an unknown outcome: a retry may leave
   * an extra lease behind, which holds no keys and runs out by itself.
   *
   * ```ts
   * const lease = await client.leases.grant(10_000);
   * await client.put("services/api-1", "http://10.0.0.5:9000", { lease: lease.id });
   * const keeper = client.leases.keep(lease.id, { ttlMs: lease.ttlMs });
   * keeper.lost.addEventListener("abort", () => console.error("registration lost:", keeper.lost.reason));
   * ```
   */
  grant(ttlMs: number, options?: CallOptions): Promise<LeaseGrant>;
  /** Restarts the lease's countdown on the leader; `KvClientError` `lease_not_found` once it expired or was revoked. */
  keepAlive(id: LeaseId, options?: CallOptions): Promise<{ readonly id: number; readonly ttlMs: number }>;
  /** Revokes the lease through the log, deleting its keys at one version; `lease_not_found` when already gone. */
  revoke(id: LeaseId, options?: CallOptions): Promise<LeaseRevoked>;
  /** The leader's view of the lease; `lease_not_found` when gone. */
  get(id: LeaseId, options?: CallOptions): Promise<LeaseInfo>;
  /**
   * A page of every lease (`limit`, 1 to 1,000, default 100), on the leader, in the order of the
   * ids' decimal text (`10` before `9`, as the cluster keeps them). For the next page pass the last
   * id as `after`, while `more` says there are more.
   */
  list(options?: { readonly after?: LeaseId; readonly limit?: number } & CallOptions): Promise<LeasePage>;
  /** Starts a keeper that keeps lease `id` alive until `stop()` (see `LeaseKeeper`). */
  keep(id: LeaseId, options: LeaseKeepOptions): LeaseKeeper;
}

/** The shortest keepalive interval a keeper uses, whatever the TTL. */
const KEEPALIVE_INTERVAL_MS_MIN = 20;
/** No keepalive is sent with less budget than this. */
const KEEPALIVE_CALL_MS_MIN = 50;

/** The lease calls over `transport` (shared with the rest of the client). */
export function createLeasesApi(transport: Transport): LeasesApi {
  const json = <T>(answer: Answer): T => {
    if (answer.status !== 200) throw errorFromAnswer(answer);
    try {
      return JSON.parse(new TextDecoder().decode(answer.body)) as T;
    } catch {
      throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered something that is not JSON`);
    }
  };
  const idOf = (value: unknown, answer: Answer): number => {
    const id = typeof value === "string" ? Number(value) : value;
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 1) throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered a lease without an id`);
    return id;
  };

  /** A keepalive; a keeper's (`shareBudget`) cuts each attempt at a quarter of its budget, the lease's time left. */
  const keepAlive = async (leaseId: LeaseId, timeoutMs?: number, signal?: AbortSignal, shareBudget = true) => {
    const id = leaseIdOf(leaseId);
    // A keeper's budget is what is left of the lease, each attempt at most a quarter of it (and at
    // most the client's attemptTimeoutMs): capped at the client's timeoutMs, a 400 ms one cut every
    // attempt to 100 ms whatever the TTL, and a lease on a slow link was reported lost while every
    // other call went through (found in a code review).
    const budget = timeoutMs === undefined ? {} : { timeoutMs };
    const answer = await transport.send({ method: "POST", path: `/leases/${id}/keepalive`, safety: "idempotent", ...budget, attemptsShareBudget: shareBudget, ...(signal === undefined ? {} : { signal }) });
    const body = json<{ id?: unknown; ttlMs?: unknown }>(answer);
    return { id: idOf(body.id, answer), ttlMs: Number(body.ttlMs) };
  };

  return {
    async grant(ttlMs, options = {}) {
      if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) throw new KvClientError("bad_request", 0, `ttlMs must be a whole number of milliseconds, got ${ttlMs}`);
      const answer = await transport.send({
        method: "POST",
        path: "/leases",
        body: JSON.stringify({ ttlMs }),
        headers: { "content-type": "application/json" },
        safety: "idempotent",
        ...callOptions(options),
      });
      const body = json<{ id?: unknown; ttlMs?: unknown; raisedFromMs?: unknown }>(answer);
      if (typeof body.ttlMs !== "number") throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered a grant without ttlMs`);
      return { id: idOf(body.id, answer), ttlMs: body.ttlMs, ...(typeof body.raisedFromMs === "number" ? { raisedFromMs: body.raisedFromMs } : {}) };
    },

    keepAlive: (id, options = {}) => {
      const { timeoutMs, signal } = callOptions(options);
      return keepAlive(id, timeoutMs, signal, false);
    },

    async revoke(leaseId, options = {}) {
      const id = leaseIdOf(leaseId);
      const answer = await transport.send({ method: "DELETE", path: `/leases/${id}`, safety: "idempotent", refusedOnceApplied: true, ...callOptions(options) });
      const body = json<{ id?: unknown; version?: unknown; deletedKeys?: unknown }>(answer);
      return { id: idOf(body.id, answer), version: Number(body.version), deletedKeys: Number(body.deletedKeys) };
    },

    async get(leaseId, options = {}) {
      const id = leaseIdOf(leaseId);
      const answer = await transport.send({ method: "GET", path: `/leases/${id}`, safety: "read", ...callOptions(options) });
      const body = json<{ id?: unknown; ttlMs?: unknown; remainingMs?: unknown; keys?: unknown; keysTruncated?: unknown }>(answer);
      return {
        id: idOf(body.id, answer),
        ttlMs: Number(body.ttlMs),
        remainingMs: Number(body.remainingMs),
        keys: Array.isArray(body.keys) ? body.keys.filter((k): k is string => typeof k === "string") : [],
        keysTruncated: body.keysTruncated === true,
      };
    },

    async list(options = {}) {
      const params = new URLSearchParams();
      if (options.after !== undefined) params.set("after", String(leaseIdOf(options.after)));
      if (options.limit !== undefined) {
        if (!Number.isSafeInteger(options.limit) || options.limit < 1 || options.limit > 1_000) {
          throw new KvClientError("bad_request", 0, `limit must be a whole number from 1 to 1000, got ${options.limit}`);
        }
        params.set("limit", String(options.limit));
      }
      const search = params.size === 0 ? "" : `?${params}`;
      const answer = await transport.send({ method: "GET", path: `/leases${search}`, safety: "read", ...callOptions(options) });
      const body = json<{ leases?: unknown; more?: unknown }>(answer);
      if (!Array.isArray(body.leases)) throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered a lease list without leases`);
      const leases = (body.leases as { id?: unknown; ttlMs?: unknown; remainingMs?: unknown }[]).map((lease) => ({
        id: idOf(lease.id, answer),
        ttlMs: Number(lease.ttlMs),
        remainingMs: Number(lease.remainingMs),
      }));
      return { leases, more: body.more === true };
    },

    keep(leaseId, options) {
      const id = leaseIdOf(leaseId);
      if (typeof options !== "object" || options === null) throw new KvClientError("bad_request", 0, "keep(id, { ttlMs }) needs the lease's TTL, as grant answered it");
      const ttlMs = options.ttlMs;
      if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) throw new KvClientError("bad_request", 0, `ttlMs must be a whole number of milliseconds, got ${ttlMs}`);
      const sentAtMs = options.sentAtMs ?? performance.now();
      if (!Number.isFinite(sentAtMs)) throw new KvClientError("bad_request", 0, `sentAtMs must be a performance.now() time, got ${sentAtMs}`);
      return startKeeper(id, ttlMs, sentAtMs, keepAlive, transport.closedSignal);
    },
  };
}

/**
 * The longest delay a timer takes (2^31 - 1 ms, about 24.8 days): a longer one fires at once, so a
 * lease of a month was reported lost 26 ms after it was kept (found in review).
 */
const TIMER_MS_MAX = 2 ** 31 - 1;

/** `ms` as a timer's delay: at least 0, at most TIMER_MS_MAX (a beat that comes early does no harm). */
function timerDelay(ms: number): number {
  return Math.min(TIMER_MS_MAX, Math.max(0, ms));
}

/**
 * The keeper's loop. Invariant: the lease is alive at least until `sentMs + ttlMs` of the last
 * keepalive answered (the leader restarted its countdown after we sent it), so `lost` fires at that
 * deadline unless a later keepalive was answered first: early rather than late, which is the safe
 * side for a lock holder.
 */
function startKeeper(
  id: number,
  ttlMs: number,
  sentAtMs: number,
  keepAlive: (id: number, timeoutMs: number, signal: AbortSignal) => Promise<unknown>,
  /** The client's closing: a keeper still running then stops, and `lost` fires with `closed` (its lease runs out at its TTL). */
  closed: AbortSignal,
): LeaseKeeper {
  const lostController = new AbortController();
  // Ends a keepalive still retrying once the keeper stops or loses the lease: its budget is the
  // lease's time left, which may be long, and nothing waits for it then.
  const calls = new AbortController();
  let stopped = false;
  let aliveUntilMs = sentAtMs + ttlMs;
  let deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  let intervalTimer: ReturnType<typeof setTimeout> | undefined;
  const intervalMs = Math.max(KEEPALIVE_INTERVAL_MS_MIN, Math.floor(ttlMs / 3));

  const onClosed = () => lose(closed.reason instanceof KvClientError ? closed.reason : new KvClientError("closed", 0, "the client was closed"));
  const lose = (reason: KvClientError) => {
    if (stopped) return;
    stopped = true;
    closed.removeEventListener("abort", onClosed);
    clearTimeout(deadlineTimer);
    clearTimeout(intervalTimer);
    calls.abort();
    lostController.abort(reason);
  };
  const armDeadline = () => {
    clearTimeout(deadlineTimer);
    deadlineTimer = setTimeout(() => {
      // A timer holds at most TIMER_MS_MAX: a longer TTL is waited out in steps.
      if (performance.now() < aliveUntilMs) armDeadline();
      else lose(new KvClientError("lease_expired", 0, `lease ${id}: no keepalive was answered within its TTL of ${ttlMs} ms; it may have expired`));
    }, timerDelay(aliveUntilMs - performance.now()));
  };
  const beat = async () => {
    if (stopped) return;
    const sentMs = performance.now();
    try {
      await keepAlive(id, Math.max(KEEPALIVE_CALL_MS_MIN, aliveUntilMs - sentMs), calls.signal);
      if (stopped) return;
      aliveUntilMs = Math.max(aliveUntilMs, sentMs + ttlMs);
      armDeadline();
    } catch (error) {
      if (error instanceof KvClientError && error.code === "lease_not_found") {
        lose(new KvClientError("lease_not_found", error.status, `its keepalive was refused: ${error.message}`));
        return;
      }
      // Unreachable, no leader, an unknown outcome: try again at the next beat; the deadline decides.
    }
    // A third of the TTL after this beat was sent, not after its answer: a slow answer must not
    // push the next keepalive toward the deadline.
    if (!stopped) intervalTimer = setTimeout(() => void beat(), timerDelay(sentMs + intervalMs - performance.now()));
  };
  armDeadline();
  // The first beat comes a third of the TTL after the grant was sent (at once if that is past).
  intervalTimer = setTimeout(() => void beat(), timerDelay(sentAtMs + intervalMs - performance.now()));
  if (closed.aborted) onClosed();
  else closed.addEventListener("abort", onClosed, { once: true });
  return {
    id,
    lost: lostController.signal,
    aliveUntilMs: () => aliveUntilMs,
    stop() {
      stopped = true;
      closed.removeEventListener("abort", onClosed);
      clearTimeout(deadlineTimer);
      clearTimeout(intervalTimer);
      calls.abort();
    },
  };
}
