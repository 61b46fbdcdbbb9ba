/**
 * `createClient`: the typed client of a kv cluster. Every call finds the leader (following 307s
 * with the Authorization header), remembers it, moves to the next endpoint when one does not
 * answer, and retries only what is safe: reads freely; writes under an `Idempotency-Key` (one random
 * key per logical write unless the caller gives one), so a retry after an unknown outcome cannot
 * apply twice. The request engine is src/client/transport.ts.
 */
import { isAddressOnly } from "../lib/address-url.ts";
import { joinProof } from "../lib/join-proof.ts";
import { isVisibleAscii } from "../lib/visible-ascii.ts";
import { KvClientError, UnknownOutcomeError } from "./errors.ts";
import { createLeasesApi, leaseIdOf, type LeaseId, type LeasesApi } from "./leases.ts";
import { acquire, observeLeaders, type Leadership, type LockDeps, type LockHandle, type LockOptions } from "./lock.ts";
import { callOptions, errorFromAnswer, Transport, type Answer, type CallOptions } from "./transport.ts";
export type { CallOptions } from "./transport.ts";
import { reserveWatchRoom, watchEvents, type WatchEvent, type WatchOptions, type WatchSelector } from "./watch.ts";
import { describeInput, fromJsonValue, makeEntry, toJsonValue, valueBytes, type JsonValue, type KvEntry, type ValueInput } from "./values.ts";

/** Settings of `createClient`. */
export interface ClientOptions {
  /** Client URLs of the cluster's nodes (`http://host:port`), or one comma-separated string of them. */
  readonly endpoints: readonly string[] | string;
  /** The bearer token of a cluster started with `--auth-token`. */
  readonly authToken?: string;
  /** Budget of one call, retries included (default 5000 ms). */
  readonly timeoutMs?: number;
  /**
   * How long one attempt waits for an answer before the call tries the next endpoint (default a
   * third of `timeoutMs`, at least 1000 ms, at most `timeoutMs`).
   */
  readonly attemptTimeoutMs?: number;
  /** The fetch to send requests and open watch streams with (default: the global `fetch`; tests pass a counting one). */
  readonly fetch?: typeof fetch;
  /**
   * PEM certificates of the CAs to trust for `https://` endpoints, instead of the system's (as Bun's
   * fetch takes `tls.ca`: add `tls.rootCertificates` from `node:tls` to keep those too): for a
   * cluster whose certificates a private CA signed (`kv serve --tls-cert` with `--peer-ca`).
   */
  readonly ca?: string | readonly string[];
}

/** How a read is served: `linearizable` (the default), `lease` (leader lease) or `stale` (local state). */
export type ReadConsistency = "linearizable" | "lease" | "stale";

/** Options of `get`. */
export interface GetOptions extends CallOptions {
  readonly consistency?: ReadConsistency;
}

/** Options of `put`. */
export interface PutOptions extends CallOptions {
  /** Compare-and-set: write only if the key's version is this (0: only if absent); else `version_mismatch`. */
  readonly ifVersion?: number;
  /** Attach the key to this lease: its id as `grant` returns it, or its decimal string (sent as `?lease=ID`). */
  readonly lease?: LeaseId;
  /** The write's `Idempotency-Key` (default: a random one, generated per call). */
  readonly idempotencyKey?: string;
}

/** Options of `delete`. */
export interface DeleteOptions extends CallOptions {
  /** Compare-and-delete: delete only if the key's version is this; else `version_mismatch`. */
  readonly ifVersion?: number;
  /** The write's `Idempotency-Key` (default: a random one, generated per call). */
  readonly idempotencyKey?: string;
}

/** Options of `deletePrefix`. */
export interface DeletePrefixOptions extends CallOptions {
  /** Keys deleted per request, 1 to 10,000 (default: the node's, 1,000): each request's keys go at one version. */
  readonly limit?: number;
  /** Told after each request: keys deleted so far in all, and that request's version. */
  readonly onProgress?: (deleted: number, version: number) => void;
  /**
   * Needed with the empty prefix, which deletes every key of the cluster: an empty prefix by
   * accident (a variable not set) is refused `bad_request` rather than taken for it (as etcd's
   * clients ask for an explicit whole range; found in a black-box review).
   */
  readonly all?: boolean;
}

/** What `deletePrefix` did: keys deleted in all, the version of its last request, and how many requests it took. */
export interface DeletePrefixResult {
  readonly deleted: number;
  readonly version: number;
  readonly requests: number;
}

/** Options of `list`. */
export interface ListOptions extends CallOptions {
  /** Stop after this many items in all (default: every key under the prefix). */
  readonly limit?: number;
  /** Items asked for per request, 1-1000 (default 1000). */
  readonly pageSize?: number;
  /** Start after this key (exclusive). */
  readonly after?: string;
  readonly consistency?: ReadConsistency;
}

/** What `put` answers. */
export interface PutResult {
  readonly key: string;
  /** The Raft index of the write: the key's new version. */
  readonly version: number;
}

/** What `delete` answers. */
export interface DeleteResult {
  /** False when the key was absent (nothing changed). */
  readonly deleted: boolean;
  readonly version: number;
}

/** One page of a listing, in key order (UTF-8 byte order). */
export interface ListPage {
  readonly items: readonly KvEntry[];
  /**
   * Whether the node said more keys may follow this page (it also says so of a page its 4 MiB bound
   * ended, though none follows): on the last page of a listing that reached its `limit`, that keys
   * past the limit may remain.
   */
  readonly more: boolean;
}

/** A member as `/status` and `/members` describe it. */
export interface Member {
  readonly id: number;
  readonly peerUrl: string;
  /** Its client URL, when known. */
  readonly httpUrl: string | null;
  /** `voter` or `learner` (absent in older answers). */
  readonly role?: string | null;
  /** The index of the entry that added it at its address (0: a founding member); null when unknown, absent in older answers. */
  readonly addedIndex?: number | null;
}

/** One node's `GET /status`. */
export interface NodeStatus {
  readonly id: number;
  /** The release the node runs (`kv --version`); absent from nodes of 0.10.0 and earlier. */
  readonly version?: string;
  readonly role: string;
  readonly term: number;
  readonly leaderId: number | null;
  readonly leaderUrl: string | null;
  readonly commitIndex: number;
  readonly appliedIndex: number;
  readonly lastLogIndex: number;
  readonly snapshotIndex: number;
  readonly firstLogIndex: number;
  readonly members: readonly Member[];
  readonly storage: unknown;
  /** True once the node applied its own removal from the cluster: it serves nothing. */
  readonly removed?: boolean;
}

/**
 * One node's `GET /hash`: a SHA-256 of its state machine's rows at its applied index. Two nodes
 * answering at one `index` must answer one `hash`; a difference is a replica that diverged.
 */
export interface StateHash {
  readonly index: number;
  readonly term: number;
  /** `sha256:` and 64 hex digits. */
  readonly hash: string;
  readonly rows: number;
  readonly bytes: number;
}

/** `GET /members`: the configuration a node applied. */
export interface MembersView {
  readonly members: readonly Member[];
  readonly leaderId: number;
  readonly configIndex: number;
  readonly clusterId?: string;
  /** `linearizable` when asked so and the node read it so (a node of 0.8.0 or earlier ignores the ask, and leaves it out). */
  readonly consistency?: "linearizable";
}

/** A member to add: `POST /members`. */
export interface NewMember {
  readonly id: number;
  readonly peerUrl: string;
  readonly httpUrl?: string;
  /**
   * Shows the new member's side holds the cluster's token (or, as the cluster, none), without
   * sending it (src/lib/join-proof.ts): `kv serve --join` sends it. A leader refuses a proof that is
   * not its own, and, in a cluster with a cluster token, an addition without one (the leader calls
   * the new member with the token). Give it, or `clusterToken`.
   */
  readonly clusterTokenProof?: string;
  /** The cluster's token: the proof (`clusterTokenProof`) is computed from it and sent in its place; the token itself is never sent. */
  readonly clusterToken?: string;
}

/** Membership changes. Not idempotent: one whose outcome is unknown throws `UnknownOutcomeError` at once. */
export interface MembershipApi {
  /** Adds a learner (promoted by the leader once caught up); answers the configuration after it. */
  add(member: NewMember): Promise<MembersView>;
  /** Removes a member; answers the configuration after it. */
  remove(id: number): Promise<MembersView>;
  /** Makes a learner a voter now. */
  promote(id: number): Promise<MembersView>;
}

/** A value in a transaction: text, bytes, or already in JSON's `{"base64": ...}` form. */
export type TxnValue = ValueInput | { readonly base64: string };

/**
 * One condition of a transaction, on the state before it: the key's version (0: absent), its value
 * (present with exactly these bytes), or whether it exists; a version or value by `op`.
 */
export type TxnCompare =
  | { readonly key: string; readonly version: number; readonly op?: TxnCompareOp }
  | { readonly key: string; readonly value: TxnValue; readonly op?: TxnCompareOp }
  | { readonly key: string; readonly exists: boolean };

/**
 * How a comparison compares the key's version or value to the one given: `=` (the default), `!=`,
 * `<` or `>` (values byte by byte; an absent key fails every value comparison, as etcd's). Any but
 * `=` needs every member on 0.9.0 or later (`upgrade_required` otherwise).
 */
export type TxnCompareOp = "=" | "!=" | "<" | ">";

/**
 * One operation of a transaction's `success` or `failure` branch. A put's `lease` (a lease's id)
 * attaches the key to it when the branch runs; a put without one detaches the key. A lease of the
 * branch taken that does not exist makes the whole transaction fail with `lease_not_found`, nothing
 * applied.
 */
export type TxnOperation =
  | { readonly put: { readonly key: string; readonly value: TxnValue; readonly lease?: LeaseId } }
  | { readonly delete: { readonly key: string } }
  | { readonly get: { readonly key: string } };

/** A transaction: if every `compare` holds, `success` runs, else `failure`; atomically, at one version. */
export interface TxnRequest {
  readonly compare?: readonly TxnCompare[];
  readonly success?: readonly TxnOperation[];
  readonly failure?: readonly TxnOperation[];
  /** The transaction's `Idempotency-Key` (default: a random one, generated per call). */
  readonly idempotencyKey?: string;
}

/**
 * The result of one operation, in the order of the branch that ran: a `get`'s value decoded into an
 * entry (null when the key was absent), a put's version, whether a delete found its key.
 */
export type TxnOperationResult =
  | { readonly get: KvEntry | null }
  | { readonly put: { readonly key: string; readonly version: number } }
  | { readonly delete: { readonly key: string; readonly deleted: boolean } };

/** What `POST /txn` answers. */
export interface TxnResult {
  /** Whether every comparison held (so `success` ran). */
  readonly succeeded: boolean;
  /** The version the transaction was decided (and, if it wrote, applied) at. */
  readonly version: number;
  readonly results: readonly TxnOperationResult[];
}

/** A call to a route the typed methods do not cover (yet): see `KvClient.request`. */
export interface RawRequest {
  readonly method: "GET" | "PUT" | "POST" | "DELETE";
  /** Path and query, starting with `/` (`/leases`, `/kv/a%2Fb?lease=7`). */
  readonly path: string;
  readonly body?: Uint8Array | string;
  /** Extra headers; an `idempotency-key` makes a write safe to retry after an unknown outcome. */
  readonly headers?: Readonly<Record<string, string>>;
  /** It changes nothing (a `POST /txn` with no put or delete in either branch): retried freely, as a GET. */
  readonly readsOnly?: boolean;
}

/** A complete answer to a `RawRequest`: a 200, a 404 to a GET, or a refusal for good (4xx). */
export interface RawAnswer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Uint8Array;
}

/** A client of one kv cluster. Calls may run concurrently; they share what is known of the leader. */
export interface KvClient {
  /** The endpoints, normalized (no trailing slash). */
  readonly endpoints: readonly string[];
  /** The client URL of the node believed to lead, if one is known. */
  readonly leaderEndpoint: string | undefined;
  /** The value under `key`, or null when absent. */
  get(key: string, options?: GetOptions): Promise<KvEntry | null>;
  /** Stores `value` (text is sent as UTF-8) under `key`. */
  put(key: string, value: ValueInput, options?: PutOptions): Promise<PutResult>;
  /** Deletes `key` (`deleted: false` when it was absent). */
  delete(key: string, options?: DeleteOptions): Promise<DeleteResult>;
  /**
   * Deletes every key that starts with `prefix` (`""`: every key): `DELETE /kv?prefix=` again
   * until no key under it is left, each request deleting up to `limit` keys at one version (a
   * watch sees each key's delete). Keys written under the prefix meanwhile may be deleted too. A
   * failure midway leaves the keys deleted so far deleted (`onProgress` counts them): calling it
   * again deletes the rest.
   * `upgrade_required` until every member runs 0.9.0 or later.
   */
  deletePrefix(prefix: string, options?: DeletePrefixOptions): Promise<DeletePrefixResult>;
  /**
   * The keys under `prefix`, in key order, as an async iterator over pages (each one request);
   * `for await (const page of client.list("user/")) for (const item of page.items) ...`.
   */
  list(prefix?: string, options?: ListOptions): AsyncIterableIterator<ListPage>;
  /** Runs a transaction (`POST /txn`). */
  txn(request: TxnRequest, options?: CallOptions): Promise<TxnResult>;
  /**
   * One node's own view of its status (no redirect): the node believed to lead, else the endpoints
   * in turn (each call starts one further along), the first that answers.
   */
  status(): Promise<NodeStatus>;
  /** The status of one node, by its client URL. */
  statusOf(endpoint: string): Promise<NodeStatus>;
  /**
   * The hash of one node's state (`GET /hash`), by its client URL: `stale` (the default here) hashes
   * what that node applied, even cut off from the leader; `linearizable` waits until it holds every
   * write acknowledged before the call.
   */
  hashOf(endpoint: string, options?: GetOptions): Promise<StateHash>;
  /**
   * The configuration as one node applied it (`GET /members`), asked as `status` asks; with
   * `consistency: "linearizable"`, once that node applied what the leader had committed.
   */
  members(options?: { readonly consistency?: "stale" | "linearizable" }): Promise<MembersView>;
  /** Membership changes (`POST /members`, `DELETE /members/{id}`, `POST /members/{id}/promote`). */
  readonly membership: MembershipApi;
  /** Hands leadership to node `to` (or the most caught-up voter): `POST /leader/transfer`. */
  transferLeadership(to?: number): Promise<{ readonly leaderId: number; readonly previousLeaderId: number }>;
  /**
   * Any route, with the same leader following and failover: a GET is retried freely, a write with an
   * `idempotency-key` header after unknown outcomes too, any other write only after refusals that
   * prove nothing was done. Resolves with the final answer (a 4xx is an answer, not an error);
   * throws `UnknownOutcomeError` and `KvClientError` (`unreachable`, or a passing refusal such as
   * `no_leader` that outlasted the budget) as the typed calls do.
   */
  request(request: RawRequest): Promise<RawAnswer>;
  /**
   * The changes to the keys under `prefix` (or to one `key`) as an async iterator of `put` and
   * `delete` events (and `progress` with `{ progress: true }`), in version order. A broken stream
   * (node killed, paused or cut off; `slow_watcher`) resumes on the next endpoint from the last
   * version seen: nothing skipped, nothing twice. A start older than every endpoint's history throws
   * `KvClientError` `compacted` with `details.compactVersion`: re-read, then watch from there.
   *
   * ```ts
   * const stop = new AbortController();
   * for await (const event of client.watch({ prefix: "cfg/" }, { signal: stop.signal })) {
   *   if (event.type === "put") console.log(event.key, "=", event.text, "at", event.version);
   *   else if (event.type === "delete") console.log(event.key, "deleted", event.reason);
   * }
   * ```
   */
  watch(selector: WatchSelector, options?: WatchOptions): AsyncIterableIterator<WatchEvent>;
  /** Leases: `grant`, `keepAlive`, `revoke`, `get`, and `keep` (a keeper that reports loss). */
  readonly leases: LeasesApi;
  /**
   * Waits for the lock `name` and holds it on a lease kept alive until `release()`. Holders follow
   * one another in the order they asked; `fence` strictly increases from holder to holder.
   *
   * ```ts
   * const lock = await client.lock("jobs/nightly", { ttlMs: 10_000 });
   * try {
   *   await client.put("jobs/nightly-state", `run by fence ${lock.fence}`);
   *   if (lock.lost.aborted) throw lock.lost.reason;
   * } finally {
   *   await lock.release();
   * }
   * ```
   */
  lock(name: string, options?: LockOptions): Promise<LockHandle>;
  /**
   * Campaigns in election `name` with `value`: resolves once elected (candidates are elected in the
   * order they campaigned, each when the one before resigns or loses its lease).
   *
   * ```ts
   * const office = await client.elect("scheduler", "node-a:9000");
   * office.lost.addEventListener("abort", () => process.exit(1));
   * // ... lead ...
   * await office.resign();
   * ```
   */
  elect(name: string, value: ValueInput, options?: LockOptions): Promise<Leadership>;
  /**
   * The leaders of election `name` as they change, the current one first: each as the entry of its
   * key (`text`, `bytes`: the value it campaigned with). Runs until `signal` aborts.
   *
   * ```ts
   * for await (const leader of client.observe("scheduler")) console.log("leader is now", leader.text);
   * ```
   */
  observe(name: string, options?: { readonly signal?: AbortSignal }): AsyncIterableIterator<KvEntry>;
  /**
   * Closes the client: every call under way ends as its signal's abort would (a read, or a write no
   * attempt of which may have reached a node, rejects `KvClientError` `closed`; a write that may
   * have applied, `UnknownOutcomeError`), every watch and observation ends, a wait for a lock or a
   * turn rejects `closed`, and every lease keeper stops, its `lost` firing with `closed`: a lease
   * then runs out at its TTL (revoke it first to end it at once), and a lock or leadership held on it
   * with it. Every later call is refused `closed` before anything is sent. Idempotent.
   */
  close(): void;
}

/** Default budget of one call. */
export const CLIENT_TIMEOUT_MS_DEFAULT = 5_000;
/** The server's largest listing page (src/http/app.ts). */
const PAGE_SIZE_MAX = 1000;

/** Creates a client of the cluster at `options.endpoints`. Throws `KvClientError` `bad_request` on bad options. */
export function createClient(options: ClientOptions): KvClient {
  if (typeof options !== "object" || options === null) throw badOption("createClient takes options: { endpoints, ... }");
  const endpoints = normalizeEndpoints(options.endpoints);
  const timeoutMs = options.timeoutMs ?? CLIENT_TIMEOUT_MS_DEFAULT;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 1) throw badOption(`timeoutMs must be at least 1, got ${timeoutMs}`);
  const attemptTimeoutMs = options.attemptTimeoutMs ?? Math.min(timeoutMs, Math.max(1_000, Math.ceil(timeoutMs / 3)));
  if (!Number.isFinite(attemptTimeoutMs) || attemptTimeoutMs < 1) throw badOption(`attemptTimeoutMs must be at least 1, got ${attemptTimeoutMs}`);
  // A node's token is visible ASCII (src/lib/secret.ts): any other cannot be the token, and a line
  // break cannot even travel in the header (found in a black-box review: 5 s of retries, then unreachable).
  if (options.authToken !== undefined && (typeof options.authToken !== "string" || !isVisibleAscii(options.authToken))) {
    throw badOption("authToken must be visible ASCII characters only, as kv serve --auth-token takes it");
  }
  const sendWith = options.ca === undefined ? options.fetch : trustingFetch(options.fetch ?? fetch, options.ca);
  const transport = new Transport({
    endpoints,
    authToken: options.authToken,
    timeoutMs,
    attemptTimeoutMs,
    globalFetch: options.fetch === undefined,
    ...(sendWith === undefined ? {} : { fetch: sendWith }),
  });
  const leases = createLeasesApi(transport);

  const json = <T>(answer: Answer): T => {
    if (answer.status !== 200) throw errorFromAnswer(answer);
    try {
      return JSON.parse(new TextDecoder().decode(answer.body)) as T;
    } catch {
      throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered something that is not JSON`);
    }
  };
  const writeHeaders = (idempotencyKey: string): Record<string, string> => ({ "idempotency-key": idempotencyKeyHeader(idempotencyKey) });
  const membershipCall = async (method: "POST" | "DELETE", path: string, body?: unknown): Promise<MembersView> =>
    json<MembersView>(
      await transport.send({
        method,
        path,
        safety: "once",
        ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
      }),
    );

  const client: KvClient = {
    endpoints,
    get leaderEndpoint() {
      return transport.leaderOrigin;
    },

    async get(key, opts = {}) {
      const answer = await transport.send({ method: "GET", path: `${keyPath(key)}${query({ consistency: opts.consistency })}`, safety: "read", ...callOptions(opts) });
      if (answer.status === 404) {
        if (errorCodeIs(answer, "not_found")) return null;
        throw errorFromAnswer(answer);
      }
      if (answer.status !== 200) throw errorFromAnswer(answer);
      return makeEntry(key, Number(answer.headers.get("x-kv-version")), answer.body);
    },

    async put(key, value, opts = {}) {
      const idempotencyKey = opts.idempotencyKey ?? crypto.randomUUID();
      const answer = await transport.send({
        method: "PUT",
        path: `${keyPath(key)}${query({ ifVersion: opts.ifVersion, lease: opts.lease === undefined ? undefined : leaseIdOf(opts.lease) })}`,
        body: valueBytes(value),
        headers: { ...writeHeaders(idempotencyKey), "content-type": "application/octet-stream" },
        safety: "idempotent",
        idempotencyKey,
        ...callOptions(opts),
      });
      const result = json<{ key?: unknown; version?: unknown }>(answer);
      return { key, version: numberField(result.version, answer) };
    },

    async delete(key, opts = {}) {
      const idempotencyKey = opts.idempotencyKey ?? crypto.randomUUID();
      const answer = await transport.send({
        method: "DELETE",
        path: `${keyPath(key)}${query({ ifVersion: opts.ifVersion })}`,
        headers: writeHeaders(idempotencyKey),
        safety: "idempotent",
        idempotencyKey,
        ...callOptions(opts),
      });
      const result = json<{ deleted?: unknown; version?: unknown }>(answer);
      return { deleted: result.deleted === true, version: numberField(result.version, answer) };
    },

    async deletePrefix(prefix, opts = {}) {
      if (typeof prefix !== "string") throw badOption(`a prefix is a string, got ${describeInput(prefix)}`);
      if (prefix === "" && opts.all !== true) throw badOption("the empty prefix deletes every key of the cluster: say so with { all: true }");
      // URLSearchParams would send a lone surrogate as U+FFFD, and delete under another prefix.
      if (!prefix.isWellFormed()) throw badOption("the prefix holds a lone UTF-16 surrogate: it is not UTF-8, and no key starts with it");
      if (opts.limit !== undefined && !(Number.isSafeInteger(opts.limit) && opts.limit >= 1 && opts.limit <= 10_000)) throw badOption(`limit must be 1 to 10000, got ${opts.limit}`);
      let deleted = 0;
      let requests = 0;
      let lastVersion = 0;
      for (;;) {
        // A key per request: a request whose answer was lost is sent again under it, and applies once.
        const idempotencyKey = crypto.randomUUID();
        let step: { deleted: number; more: boolean; version: number };
        try {
          const answer = await transport.send({
            method: "DELETE",
            path: `/kv${query({ prefix, limit: opts.limit })}`,
            headers: writeHeaders(idempotencyKey),
            safety: "idempotent",
            idempotencyKey,
            ...callOptions(opts),
          });
          const result = json<{ deleted?: unknown; more?: unknown; version?: unknown }>(answer);
          const version = numberField(result.version, answer);
          if (typeof result.deleted !== "number") throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered a delete by prefix without a count`);
          step = { deleted: result.deleted, more: result.more === true, version };
        } catch (error) {
          if (requests === 0) throw error;
          // Aborted before this request was sent, after others applied: the signal's reason alone
          // would read as nothing deleted (found in review).
          if (opts.signal?.aborted === true && error === opts.signal.reason) {
            throw new KvClientError("aborted", 0, `deletePrefix was aborted after ${requests} requests, which deleted ${deleted} keys under the prefix (up to version ${lastVersion}); the rest are as they were`, {
              deleted,
              version: lastVersion,
            });
          }
          // Any other end after requests that applied: a refusal alone reads as nothing deleted, and
          // an unknown outcome as a write to resend under its key, which deletePrefix takes none of
          // (found in a code review). Calling it again deletes what is left.
          const unknown = error instanceof UnknownOutcomeError;
          const cause = error instanceof KvClientError ? error.code : unknown ? "unknown_outcome" : error instanceof Error ? error.name : "error";
          const then = unknown ? "then a request's outcome stayed unknown (it may have deleted more)" : "then a request was refused (it deleted nothing)";
          throw new KvClientError(
            "partial",
            error instanceof KvClientError ? error.status : 0,
            `deletePrefix deleted ${deleted} keys under the prefix in ${requests} requests (up to version ${lastVersion}), ${then}: ${error instanceof Error ? error.message : String(error)}; call it again to delete what is left`,
            { deleted, version: lastVersion, cause },
          );
        }
        requests++;
        deleted += step.deleted;
        lastVersion = step.version;
        opts.onProgress?.(deleted, step.version);
        if (!step.more) return { deleted, version: step.version, requests };
      }
    },

    list(prefix = "", opts = {}) {
      return listPages(prefix, opts);
    },

    async txn(request, opts = {}) {
      const body = JSON.stringify({
        compare: (request.compare ?? []).map((c) => ("value" in c ? { key: c.key, value: txnValueJson(c.value), ...(c.op === undefined ? {} : { op: c.op }) } : c)),
        success: (request.success ?? []).map(txnOperationJson),
        failure: (request.failure ?? []).map(txnOperationJson),
      });
      // One that writes nothing in either branch is a read: retried freely, with no key (the server
      // keeps no session for it, so its gets are not held to a session's 4 MiB either).
      const writes = [...(request.success ?? []), ...(request.failure ?? [])].some((op) => !("get" in op));
      const idempotencyKey = writes ? (request.idempotencyKey ?? crypto.randomUUID()) : undefined;
      const answer = await transport.send({
        method: "POST",
        path: "/txn",
        body,
        headers: { ...(idempotencyKey === undefined ? {} : writeHeaders(idempotencyKey)), "content-type": "application/json" },
        safety: idempotencyKey === undefined ? "read" : "idempotent",
        ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
        ...callOptions(opts),
      });
      const result = json<{ succeeded?: unknown; version?: unknown; results?: unknown }>(answer);
      if (typeof result.succeeded !== "boolean" || !Array.isArray(result.results)) {
        throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered /txn without succeeded and results`);
      }
      return { succeeded: result.succeeded, version: numberField(result.version, answer), results: result.results.map((raw) => txnResultOf(raw, answer)) };
    },

    async status() {
      return json<NodeStatus>(await transport.send({ method: "GET", path: "/status", safety: "read" }));
    },

    async statusOf(endpoint) {
      return json<NodeStatus>(await transport.sendTo(normalizeEndpoints([endpoint])[0] as string, "/status"));
    },

    async hashOf(endpoint, options = {}) {
      const path = `/hash${query({ consistency: options.consistency ?? "stale" })}`;
      return json<StateHash>(await transport.sendTo(normalizeEndpoints([endpoint])[0] as string, path));
    },

    async members(options = {}) {
      return json<MembersView>(await transport.send({ method: "GET", path: `/members${query({ consistency: options.consistency })}`, safety: "read" }));
    },

    membership: {
      add: async (member) => {
        const { clusterToken, ...fields } = member;
        if (clusterToken === undefined) return membershipCall("POST", "/members", fields);
        if (typeof clusterToken !== "string" || !isVisibleAscii(clusterToken)) throw badOption("clusterToken must be visible ASCII characters only, as kv serve --cluster-token takes it");
        // The proof is of the URL as the node records it (a trailing slash dropped).
        const peerUrl = String(fields.peerUrl).replace(/\/+$/, "");
        return membershipCall("POST", "/members", { ...fields, peerUrl, clusterTokenProof: joinProof(clusterToken, fields.id, peerUrl) });
      },
      remove: (id) => membershipCall("DELETE", `/members/${id}`),
      promote: (id) => membershipCall("POST", `/members/${id}/promote`),
    },

    async transferLeadership(to) {
      const answer = await transport.send({ method: "POST", path: `/leader/transfer${query({ to })}`, safety: "once" });
      return json<{ leaderId: number; previousLeaderId: number }>(answer);
    },

    async request(raw) {
      const idempotencyKey = Object.entries(raw.headers ?? {}).find(([name]) => name.toLowerCase() === "idempotency-key")?.[1];
      const answer = await transport.send({
        method: raw.method,
        path: raw.path.startsWith("/") ? raw.path : `/${raw.path}`,
        ...(raw.body === undefined ? {} : { body: raw.body }),
        ...(raw.headers === undefined ? {} : { headers: raw.headers }),
        safety: raw.method === "GET" || raw.readsOnly === true ? "read" : idempotencyKey === undefined ? "once" : "idempotent",
        ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
      });
      return { status: answer.status, headers: answer.headers, body: answer.body };
    },

    watch(selector, watchOptions) {
      return watchEvents(transport, selector, watchOptions);
    },

    leases,

    // Waiting for a lock or a turn, and observing, stop as the client closes (as its own signal would).
    lock(name, lockOptions) {
      return acquire(lockDeps, name, "", closing(lockOptions));
    },

    async elect(name, value, electOptions) {
      const { release, ...held } = await acquire(lockDeps, name, value, closing(electOptions));
      return { ...held, value, resign: release };
    },

    observe(name, observeOptions) {
      return observeLeaders(lockDeps, name, closing(observeOptions));
    },

    close() {
      transport.close();
    },
  };
  /** `options` with its signal joined to the client's closing. */
  const closing = <T extends { readonly signal?: AbortSignal }>(options: T | undefined): T => ({ ...(options ?? ({} as T)), signal: transport.withClosing(options?.signal) });

  const lockDeps: LockDeps = {
    leases,
    put: (key, value, putOptions) => client.put(key, value, putOptions),
    delete: (key) => client.delete(key),
    get: (key) => client.get(key),
    list: (prefix) => client.list(prefix),
    // A lock's watches take the room its acquire reserved for it (see reserveWatchRoom).
    watch: (selector, watchOptions) => watchEvents(transport, selector, watchOptions, { counted: false }),
    reserveWatchRoom: () => reserveWatchRoom(transport),
    timeoutMs: transport.options.timeoutMs,
  };

  async function* listPages(prefix: string, opts: ListOptions): AsyncIterableIterator<ListPage> {
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    const pageSize = opts.pageSize ?? PAGE_SIZE_MAX;
    if (!(limit >= 1)) throw badOption(`limit must be at least 1, got ${limit}`);
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || pageSize > PAGE_SIZE_MAX) throw badOption(`pageSize must be 1 to ${PAGE_SIZE_MAX}, got ${pageSize}`);
    // URLSearchParams would send a lone surrogate as U+FFFD, and list another prefix.
    if (!prefix.isWellFormed() || (opts.after !== undefined && !opts.after.isWellFormed())) throw badOption("the prefix or 'after' holds a lone UTF-16 surrogate: it is not UTF-8");
    let after = opts.after;
    let seen = 0;
    while (seen < limit) {
      const path = `/kv${query({ prefix, limit: Math.min(pageSize, limit - seen), after, consistency: opts.consistency })}`;
      const answer = await transport.send({ method: "GET", path, safety: "read", ...callOptions(opts) });
      const page = json<{ items?: unknown; more?: unknown }>(answer);
      if (!Array.isArray(page.items)) throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered a listing without items`);
      const items = page.items.map((raw) => entryOf(raw, answer));
      seen += items.length;
      if (items.length > 0) yield { items, more: page.more === true };
      const last = items[items.length - 1];
      if (page.more !== true || last === undefined) return;
      after = last.key;
    }
  }

  return client;
}

/**
 * `/kv/{key}`, percent-encoded. The keys `.` and `..` have no such path: a URL's `/kv/..` (or
 * `/kv/%2E%2E`) is `/`, so they are refused here rather than sent somewhere else (found in review:
 * `get("..")` read the 404 of `GET /` as an absent key).
 */
function keyPath(key: string): string {
  // Refused here, in the library's words: nothing is sent (found in a black-box review: a lone
  // surrogate threw a URIError, and an empty key came back as advice about HTTP routes).
  if (typeof key !== "string") throw new KvClientError("bad_request", 0, `a key is a string, got ${describeInput(key)}`);
  if (key === "") throw new KvClientError("bad_request", 0, "a key is at least one character (deletePrefix(prefix) deletes the keys under a prefix)");
  if (!key.isWellFormed()) throw new KvClientError("bad_request", 0, "the key holds a lone UTF-16 surrogate: it is not UTF-8, and no key can hold it");
  if (key === "." || key === "..") {
    throw new KvClientError("bad_request", 0, `the key '${key}' has no /kv/{key} path (a URL reads /kv/${key} as another path); read and write it with txn`);
  }
  return `/kv/${encodeURIComponent(key)}`;
}

/**
 * An `Idempotency-Key` as a header carries it: its UTF-8 bytes, one character each (headers hold
 * byte strings; the server decodes them: src/http/idempotency-key.ts), so any text key is sent as
 * it is. One the header cannot carry (empty, a line break or control character, past the server's
 * bound) is `bad_request` before anything is sent (found in a black-box review: "k-€" was taken for
 * a lost request, retried for 5 s and reported as of unknown outcome).
 */
function idempotencyKeyHeader(key: string): string {
  // Every write carries one (a random UUID by default): visible ASCII travels as it is.
  if (typeof key === "string" && key.length <= IDEMPOTENCY_KEY_BYTES_MAX && isVisibleAscii(key)) return key;
  if (typeof key !== "string" || key === "") throw new KvClientError("bad_request", 0, "an idempotency key is a non-empty string");
  if (!key.isWellFormed() || /[\u0000-\u001f\u007f]/.test(key)) throw new KvClientError("bad_request", 0, "an idempotency key holds no control characters or lone surrogates (it travels in a header)");
  const bytes = utf8.encode(key);
  if (bytes.byteLength > IDEMPOTENCY_KEY_BYTES_MAX) throw new KvClientError("bad_request", 0, `an idempotency key is at most ${IDEMPOTENCY_KEY_BYTES_MAX} bytes of UTF-8, got ${bytes.byteLength}`);
  let header = "";
  for (const byte of bytes) header += String.fromCharCode(byte);
  return header;
}

/** The server's bound on an idempotency key (src/kv/command.ts `idempotencyKeyBytesMax`; the client imports no server code). */
const IDEMPOTENCY_KEY_BYTES_MAX = 256;
const utf8 = new TextEncoder();

/** `?a=1&b=2` from the defined entries (empty when none). */
function query(params: Readonly<Record<string, string | number | undefined>>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== undefined) search.set(name, String(value));
  const text = search.toString();
  return text === "" ? "" : `?${text}`;
}

function errorCodeIs(answer: Answer, code: string): boolean {
  return errorFromAnswer(answer).code === code;
}

function numberField(value: unknown, answer: Answer): number {
  if (typeof value !== "number") throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered without a version`);
  return value;
}

function entryOf(raw: unknown, answer: Answer): KvEntry {
  const item = raw as { key?: unknown; value?: unknown; version?: unknown } | null;
  const bytes = item === null ? undefined : fromJsonValue(item.value);
  if (item === null || typeof item.key !== "string" || bytes === undefined || typeof item.version !== "number") {
    throw new KvClientError("bad_answer", answer.status, `${answer.origin} answered an item without key, value and version`);
  }
  return makeEntry(item.key, item.version, bytes);
}

function txnValueJson(value: TxnValue): JsonValue {
  return typeof value === "string" || value instanceof Uint8Array ? toJsonValue(value) : value;
}

function txnOperationJson(op: TxnOperation): unknown {
  if ("put" in op) {
    const value = txnValueJson(op.put.value);
    return { put: { key: op.put.key, value, ...(op.put.lease === undefined ? {} : { lease: leaseIdOf(op.put.lease) }) } };
  }
  return op;
}

/** One result as the server wrote it (README "Transactions"), a `get`'s value decoded into an entry. */
function txnResultOf(raw: unknown, answer: Answer): TxnOperationResult {
  const bad = () => new KvClientError("bad_answer", answer.status, `${answer.origin} answered a /txn result that is not a put, delete or get: ${JSON.stringify(raw)?.slice(0, 100)}`);
  if (typeof raw !== "object" || raw === null) throw bad();
  const result = raw as { put?: { key?: unknown; version?: unknown }; delete?: { key?: unknown; deleted?: unknown }; get?: { key?: unknown; found?: unknown; value?: unknown; version?: unknown } };
  if (result.put !== undefined) {
    if (typeof result.put.key !== "string" || typeof result.put.version !== "number") throw bad();
    return { put: { key: result.put.key, version: result.put.version } };
  }
  if (result.delete !== undefined) {
    if (typeof result.delete.key !== "string" || typeof result.delete.deleted !== "boolean") throw bad();
    return { delete: { key: result.delete.key, deleted: result.delete.deleted } };
  }
  const got = result.get;
  if (got === undefined || typeof got.key !== "string") throw bad();
  if (got.found === false) return { get: null };
  const bytes = fromJsonValue(got.value);
  if (bytes === undefined || typeof got.version !== "number") throw bad();
  return { get: makeEntry(got.key, got.version, bytes) };
}

/** Splits, trims and checks endpoint URLs: http(s) origins, at least one. */
export function normalizeEndpoints(endpoints: readonly string[] | string): string[] {
  // Callers from JavaScript are not held to the types: anything else is the caller's mistake, said as one.
  // `every` skips an array's holes: a sparse array is checked index by index.
  if (typeof endpoints !== "string" && !(Array.isArray(endpoints) && Array.from(endpoints).every((e) => typeof e === "string"))) {
    throw badOption("endpoints must be a URL, a comma-separated list of URLs, or an array of URLs");
  }
  const list = (typeof endpoints === "string" ? endpoints.split(",") : [...endpoints]).map((e) => e.trim().replace(/\/+$/, "")).filter((e) => e !== "");
  if (list.length === 0) throw badOption("endpoints names no endpoint");
  return list.map((endpoint) => {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw badOption(`endpoint '${endpoint}' is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw badOption(`endpoint '${endpoint}' must be http(s)`);
    // A node answers a path it does not serve 404 not_found, the answer for an absent key: an
    // endpoint with a path (or a query or fragment, which the request's path would drop) read every
    // key as absent (found in a review). Only where the node is, as a member's URL is given.
    if (!isAddressOnly(url, endpoint)) {
      throw badOption(`endpoint '${endpoint}' must be only a scheme, host and port (http(s)://host:port), without a user, path, query or fragment`);
    }
    // As the URL reads it: requests are made by appending their path to it, and `http://h:8001\`
    // (a backslash reads as a slash) appended one to `\`, which reached no route (found in review).
    return url.origin;
  });
}

function badOption(message: string): KvClientError {
  return new KvClientError("bad_request", 0, message);
}

/** `send` that trusts the CAs in `ca` (PEM) for https, instead of the system's: Bun's fetch takes them as `tls.ca`. */
function trustingFetch(send: typeof fetch, ca: string | readonly string[]): typeof fetch {
  const list = typeof ca === "string" ? ca : [...ca];
  const trusting = (input: Parameters<typeof fetch>[0], init?: BunFetchRequestInit) => send(input, { ...init, tls: { ...init?.tls, ca: list } });
  return Object.assign(trusting, { preconnect: send.preconnect }) as typeof fetch;
}
