/**
 * The client API's route schemas and the OpenAPI 3.1 document generated from them.
 *
 * Each route in app.ts (and members-routes.ts, lease-routes.ts, snapshot-route.ts) is registered
 * with the hooks below: its query, path parameters and headers as `t` schemas, which Elysia
 * validates (a failure is a 400 `bad_request`, http-error.ts), and a `detail` (summary, answers).
 * `createOpenApiDocument` turns the app's routes into the document with @elysiajs/openapi, so a
 * route, method or validated parameter cannot be served without being documented, nor documented
 * without being served. Served at GET /openapi.json.
 *
 * Three parts are described here but checked by the routes' own code, and the document says so in
 * their descriptions:
 * - request bodies: Elysia's body parsing reads a body whole, however long; the routes read theirs
 *   bounded (read-body.ts: 413 past the limit, 408 when it trickles), then check it;
 * - the `/kv/{key}` hot path (GET, PUT, DELETE): one catch-all route whose query and headers app.ts
 *   parses from the raw target, as before (BENCHMARKS.md, "OpenAPI from route schemas": registered
 *   per method it cost ~1.5 µs more per request in-process; a query schema on top cost nothing
 *   measurable, but would refuse the unknown parameters GET /kv/{key} has always ignored); they
 *   are described in the operations' `parameters`;
 * - answers: described in `responses`, never validated on the way out.
 */
import { toOpenAPISchema } from "@elysiajs/openapi";
import { t, type AnyElysia, type DocumentDecoration } from "elysia";
import { deletePrefixKeysDefault, deletePrefixKeysMax, idempotencyKeyBytesMax } from "../kv/command.ts";
import { leaseTtlMsMax } from "../kv/leases.ts";
import { txnOperationsMax } from "../kv/txn.ts";
import packageJson from "../../package.json" with { type: "json" };

/** Where the document is served. */
export const OPENAPI_PATH = "/openapi.json";

// ---- Validated by Elysia: query, path parameters, headers. --------------------------------------

const positiveNumber = "^[1-9][0-9]{0,15}$";
const consistency = t.Optional(
  t.UnionEnum(["linearizable", "lease", "stale"], {
    description: "linearizable (default: ReadIndex), lease (leader lease, thesis 6.4.1) or stale (local state)",
    error: 'consistency must be given once, as "linearizable" (the default), "lease" or "stale"',
  }),
);

/** `GET /kv?prefix=P&limit=N&after=KEY&consistency=C`. */
export const listQuery = t.Object(
  {
    prefix: t.Optional(t.String({ description: "List the keys starting with this (default: every key)" })),
    after: t.Optional(t.String({ description: "Start after this key (the last key of the previous page)" })),
    limit: t.Optional(
      t.String({ pattern: "^[1-9][0-9]{0,3}$", description: "Items per page, 1 to 1000 (default 100)", error: "limit must be a whole number from 1 to 1000" }),
    ),
    consistency,
  },
  { additionalProperties: false },
);

/** `DELETE /kv?prefix=P[&limit=N]`: delete the keys under a prefix. */
export const deletePrefixQuery = t.Object(
  {
    prefix: t.String({
      description: "Delete the keys starting with this (empty: every key)",
      error: "DELETE /kv needs ?prefix=P: it deletes the keys starting with P (?prefix= with nothing after it: every key); delete one key with DELETE /kv/{key}",
    }),
    limit: t.Optional(
      t.String({
        pattern: "^([1-9][0-9]{0,3}|10000)$",
        description: `Most keys deleted, 1 to ${deletePrefixKeysMax} (default ${deletePrefixKeysDefault}), the first in key order; fewer when their keys pass 4 MiB (then more is true)`,
        error: `limit must be a whole number from 1 to ${deletePrefixKeysMax}`,
      }),
    ),
  },
  { additionalProperties: false },
);

/** `GET /members[?consistency=stale|linearizable]`: stale, this node's as it stands, is the default here. */
export const membersQuery = t.Object(
  {
    consistency: t.Optional(
      t.UnionEnum(["stale", "linearizable"], {
        description:
          "stale (the default here): as this node applied it; linearizable: once this node applied what the leader had committed when the request arrived (the answer then says consistency: linearizable)",
        error: 'consistency must be given once, as "stale" (the default here) or "linearizable"',
      }),
    ),
  },
  { additionalProperties: false },
);

/** `GET /hash?consistency=C`. */
export const hashQuery = t.Object({ consistency }, { additionalProperties: false });

/** `GET /watch?prefix=P|key=K[&fromVersion=N]`. */
export const watchQuery = t.Object(
  {
    prefix: t.Optional(t.String({ description: "Watch the keys starting with this (exactly one of prefix and key)" })),
    key: t.Optional(t.String({ description: "Watch this one key" })),
    fromVersion: t.Optional(
      t.String({
        pattern: positiveNumber,
        description: "Start with the changes at this version and later (default: after a linearizable read)",
        error: "fromVersion must be given once, as a positive whole number",
      }),
    ),
  },
  { additionalProperties: false },
);

/** `Last-Event-ID` on `GET /watch`. */
export const watchHeaders = t.Object({
  "last-event-id": t.Optional(t.String({ description: "Resume after this version (takes precedence over fromVersion)" })),
});

/** `POST /leader/transfer[?to=N]`. */
export const transferQuery = t.Object(
  { to: t.Optional(t.String({ pattern: positiveNumber, description: "The node to hand leadership to (default: the most caught-up voter)", error: "'to' must be a node id" })) },
  { additionalProperties: false },
);

/** `GET /leases?limit=N&after=ID`. */
export const leaseListQuery = t.Object(
  {
    after: t.Optional(t.String({ pattern: positiveNumber, description: "Start after this lease id (the last id of the previous page)", error: "after must be a lease id" })),
    limit: t.Optional(
      t.String({ pattern: "^[1-9][0-9]{0,3}$", description: "Leases per page, 1 to 1000 (default 100)", error: "limit must be a whole number from 1 to 1000" }),
    ),
  },
  { additionalProperties: false },
);

/** A request that takes no query parameters. */
export const noQuery = t.Object({}, { additionalProperties: false, error: "this route takes no query parameters" });

/** `{id}` of `/members/{id}`. */
export const memberParams = t.Object({ id: t.String({ pattern: positiveNumber, description: "A node id", error: "a node id is a positive whole number" }) });

/** `{id}` of `/leases/{id}`. */
export const leaseParams = t.Object({ id: t.String({ pattern: positiveNumber, description: "A lease id, in decimal", error: "a lease id is a positive whole number" }) });

/** `Idempotency-Key` on a write. */
export const idempotencyHeaders = t.Object({
  "idempotency-key": t.Optional(
    t.String({
      minLength: 1,
      maxLength: idempotencyKeyBytesMax,
      description:
        "Exactly-once retries: a retry of the same request under a key seen within the session window (default 10 minutes) applies once and answers the first answer; the key sent with another request gets 422 idempotency_key_reused",
      error: `Idempotency-Key must be 1 to ${idempotencyKeyBytesMax} bytes`,
    }),
  ),
});

// ---- Described only (see above): bodies, the /kv/{key} hot path, answers. ------------------------

const errorBody = t.Object({
  error: t.String({ description: "A stable code: not_leader, no_leader, timeout, too_large, bad_request, ..." }),
  message: t.String(),
  leaderId: t.Optional(t.Integer()),
  leaderUrl: t.Optional(t.String()),
  version: t.Optional(t.Integer()),
  compactVersion: t.Optional(t.Integer()),
});

const errorDescriptions: Readonly<Record<number, string>> = {
  307: "not_leader: the same request on the leader (Location); nothing was proposed",
  400: "bad_request",
  401: "unauthenticated (with --auth-token)",
  404: "not_found, or lease_not_found (the lease expired, was revoked or never existed; nothing was written)",
  405: "method_not_allowed (Allow lists the methods the route serves)",
  408: "request_timeout: the body did not arrive within --request-read-timeout",
  409: "version_mismatch (compare-and-set), conf_change_pending, member_exists, learner_not_ready, no_other_voter, unhealthy_cluster, or upgrade_required (a member runs an older release, or has not answered the leader: nothing was proposed)",
  410: "compacted: the start is older than the history this node keeps; compactVersion is the oldest start it serves",
  413: "too_large",
  422: "idempotency_key_reused: the Idempotency-Key was first sent with another request; nothing changed",
  429: "overloaded",
  503: "no_leader (nothing proposed), proposal_dropped (proposed, never applied: safe to retry), timeout (outcome unknown) or unavailable",
  507: "insufficient_storage (the node's disk is full; stale reads are still served) or, for a put, quota_exceeded (past --quota-bytes)",
};

const json = (schema: unknown) => ({ "application/json": { schema } });
const errors = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((status) => [String(status), { description: errorDescriptions[status] ?? "error", content: json({ $ref: "#/components/schemas/Error" }) }]));
const ok = (description: string, content?: Record<string, unknown>) => ({ "200": { description, ...(content === undefined ? {} : { content }) } });

const keyParameter = { name: "key", in: "path", required: true, description: "Any non-empty UTF-8 string, percent-encoded (a%2Fb is a/b); slashes may also appear as they are", schema: t.String() };
const queryParameter = (name: string, description: string, schema: unknown) => ({ name, in: "query", description, schema });
const idempotencyParameter = { name: "Idempotency-Key", in: "header", description: idempotencyHeaders.properties["idempotency-key"].description, schema: t.String({ minLength: 1, maxLength: idempotencyKeyBytesMax }) };
const ifVersionParameter = queryParameter("ifVersion", "Compare-and-set: apply only if the key's version is this (0: only if absent)", t.Integer({ minimum: 0 }));

const txnValue = t.Union([t.String(), t.Object({ base64: t.String() }, { additionalProperties: false })], { description: "UTF-8 text, or any bytes as {base64}" });
const txnKey = t.String({ minLength: 1 });
const compareOp = t.Union([t.Literal("="), t.Literal("!="), t.Literal("<"), t.Literal(">")], {
  description:
    "How the key's version or value compares to the one given (default =; values byte by byte; an absent key fails every value comparison). Any but = needs every member on 0.9.0 or later: 409 upgrade_required otherwise",
});
const txnOperation = t.Union([
  t.Object({ put: t.Object({ key: txnKey, value: txnValue, lease: t.Optional(t.Union([t.String({ pattern: "^[1-9][0-9]{0,15}$" }), t.Integer({ minimum: 1 })], { description: "Attach the key to this lease (its id, as a decimal string or a JSON number) when the branch runs; a put without it detaches the key. A lease of the branch taken that does not exist when the transaction applies is 404 lease_not_found, with nothing of the transaction applied" })) }, { additionalProperties: false }) }, { additionalProperties: false }),
  t.Object({ delete: t.Object({ key: txnKey }, { additionalProperties: false }) }, { additionalProperties: false }),
  t.Object({ get: t.Object({ key: txnKey }, { additionalProperties: false }) }, { additionalProperties: false }),
]);
const txnRequest = t.Object(
  {
    compare: t.Optional(
      t.Array(
        t.Union([
          t.Object({ key: txnKey, version: t.Integer({ minimum: 0, description: "0: absent" }), op: t.Optional(compareOp) }, { additionalProperties: false }),
          t.Object({ key: txnKey, value: txnValue, op: t.Optional(compareOp) }, { additionalProperties: false }),
          t.Object({ key: txnKey, exists: t.Boolean() }, { additionalProperties: false }),
        ]),
      ),
    ),
    success: t.Optional(t.Array(txnOperation)),
    failure: t.Optional(t.Array(txnOperation)),
  },
  {
    additionalProperties: false,
    description: `At most ${txnOperationsMax} comparisons and operations in all, a key written at most once per branch; a "lease" in a put that is not a lease id is 400, one that does not exist 404 lease_not_found. Checked by the route (src/http/txn-route.ts) after a bounded read of the body`,
  },
);
const txnAnswer = t.Object({
  succeeded: t.Boolean(),
  version: t.Integer({ description: "The transaction's entry's index; for one of gets alone (no entry), the version of the state it read" }),
  results: t.Array(t.Object({}, { additionalProperties: true }), {
    description: "One per operation of the branch taken: {put: {key, version}} | {delete: {key, deleted}} | {get: {key, found, value (UTF-8 text or {base64}), version}}",
  }),
});
const membersAnswer = t.Object({
  members: t.Array(
    t.Object({
      id: t.Integer(),
      peerUrl: t.String(),
      httpUrl: t.Union([t.String(), t.Null()], { description: "Its client URL; null when unknown" }),
      role: t.Union([t.UnionEnum(["voter", "learner"]), t.Null()]),
      addedIndex: t.Union([t.Integer(), t.Null()], { description: "The index of the entry that added it at its address (0: a founding member); null when unknown" }),
    }),
  ),
  leaderId: t.Integer(),
  configIndex: t.Integer(),
  clusterId: t.String(),
  consistency: t.Optional(t.Literal("linearizable", { description: "Present when asked: the configuration as of a linearizable read" })),
});
const bodyOf = (description: string, content: Record<string, unknown>) => ({ required: true, description, content });

const docs = {
  kvGet: {
    summary: "Read a value",
    parameters: [keyParameter, queryParameter("consistency", consistency.description ?? "", t.UnionEnum(["linearizable", "lease", "stale"]))],
    responses: { ...ok("The value's raw bytes; X-Kv-Version is the Raft index of the write", { "application/octet-stream": {} }), ...errors(307, 400, 401, 404, 405, 413, 503, 507) },
  },
  kvPut: {
    summary: "Write a value (committed on a majority and applied before the answer)",
    parameters: [
      keyParameter,
      ifVersionParameter,
      idempotencyParameter,
      queryParameter(
        "lease",
        "Attach the key to this lease (its decimal id): the key is deleted when the lease expires or is revoked. A put without it detaches the key. An unknown lease is 404 lease_not_found and nothing is written",
        t.String({ pattern: positiveNumber }),
      ),
    ],
    requestBody: bodyOf("The value's raw bytes (at most --value-bytes-max)", { "application/octet-stream": {} }),
    responses: { ...ok("{key, version}", json(t.Object({ key: t.String(), version: t.Integer() }))), ...errors(307, 400, 401, 404, 408, 409, 413, 422, 429, 503, 507) },
  },
  kvDelete: {
    summary: "Delete a key",
    parameters: [keyParameter, ifVersionParameter, idempotencyParameter],
    responses: { ...ok("{deleted, version}", json(t.Object({ deleted: t.Boolean(), version: t.Integer() }))), ...errors(307, 400, 401, 409, 413, 422, 429, 503, 507) },
  },
  deletePrefix: {
    summary: "Delete the keys under a prefix, at one version",
    description:
      "Deletes the first `limit` keys starting with `prefix`, in UTF-8 byte order, in one Raft entry (one version; a watch sees each as a delete). `more` means keys under the prefix are left: delete again. 409 upgrade_required, nothing proposed, until every member runs 0.9.0 or later. Idempotency-Key as for writes",
    parameters: [idempotencyParameter],
    responses: {
      ...ok("{deleted, more, version}", json(t.Object({ deleted: t.Integer(), more: t.Boolean(), version: t.Integer() }))),
      ...errors(307, 400, 401, 409, 413, 422, 429, 503, 507),
    },
  },
  list: {
    summary: "List keys under a prefix, in UTF-8 byte order",
    responses: {
      ...ok(
        "{items:[{key, value (UTF-8 text or {base64}), version}], more}: more means ask again with after = the last key",
        json(t.Object({ items: t.Array(t.Object({ key: t.String(), value: txnValue, version: t.Integer() })), more: t.Boolean() })),
      ),
      ...errors(400, 401, 413, 503, 507),
    },
  },
  status: { summary: "This node's role, term, leader, indexes, members and storage", responses: { ...ok("JSON status", json(t.Object({}, { additionalProperties: true }))), ...errors(401) } },
  health: {
    summary: "200 when a leader is known and everything committed is applied (quotaExceeded: true past the quota); 503 unhealthy, or disk_full while the disk is full",
    responses: { ...ok("healthy", json(t.Object({ healthy: t.Literal(true), quotaExceeded: t.Optional(t.Literal(true)) }))), ...errors(503) },
  },
  metrics: { summary: "Prometheus text format", responses: { ...ok("metrics", { "text/plain": {} }), ...errors(401) } },
  transfer: { summary: "Hand leadership to ?to=N (or the most caught-up voter)", responses: { ...ok("{leaderId, previousLeaderId}"), ...errors(307, 400, 401, 409, 413, 503) } },
  watch: {
    summary: "Stream changes to a prefix or a key as Server-Sent Events: put and delete (id: the version, on its last change), progress while idle, error (slow_watcher) at the end",
    responses: {
      ...ok(
        'text/event-stream: "event: put" data {key, value (UTF-8 text or {base64}), version}; "event: delete" data {key, version, reason}; "event: progress" data {version}; "event: error" data {error: slow_watcher|compacted|unavailable, message}',
        { "text/event-stream": {} },
      ),
      ...errors(400, 401, 410, 413, 429, 503),
    },
  },
  snapshot: {
    summary:
      "Stream a backup: a consistent image of the state machine (sessions and every reserved row included), membership and applied index, taken after a linearizable read, with a SHA-256; writes go on meanwhile. Format: src/kv/backup-format.ts; save it with kv snapshot save",
    responses: {
      ...ok('The backup file ("KVSNAP", format version, header, row frames, trailer); X-Kv-Snapshot-Index is the image\'s applied index', { "application/vnd.kv.snapshot": {} }),
      ...errors(401, 429, 503, 507),
    },
  },
  hash: {
    summary:
      "A SHA-256 of the state machine's rows (every key and reserved row, as in a backup) at this node's applied index, read after the consistency's barrier (stale: this node's own state): nodes answering at one index must answer one hash (src/kv/state-hash.ts); compare them with kv hash",
    responses: {
      ...ok("{index, term, hash, rows, bytes}", json(t.Object({ index: t.Integer(), term: t.Integer(), hash: t.String(), rows: t.Integer(), bytes: t.Integer() }))),
      ...errors(400, 401, 429, 503),
    },
  },
  txn: {
    summary: "A multi-key transaction, decided and applied atomically at one version (one Raft entry, on the leader; one of gets alone is a linearizable read, no entry, served by any member): if every comparison holds, the success operations run, else the failure ones, in order",
    requestBody: bodyOf("JSON {compare, success, failure}; version 0 means absent", json({ $ref: "#/components/schemas/TxnRequest" })),
    responses: { ...ok("{succeeded, version, results}", json({ $ref: "#/components/schemas/TxnAnswer" })), ...errors(307, 400, 401, 404, 408, 409, 413, 422, 429, 503, 507) },
  },
  leaseGrant: {
    summary: "Grant a lease (through the log) with JSON {ttlMs}; a TTL below twice the longest election timeout is raised to it (raisedFromMs says so)",
    requestBody: bodyOf("JSON {ttlMs}", json(t.Object({ ttlMs: t.Integer({ minimum: 1, maximum: leaseTtlMsMax }) }))),
    responses: {
      ...ok("{id (decimal string), ttlMs, raisedFromMs?}", json(t.Object({ id: t.String(), ttlMs: t.Integer(), raisedFromMs: t.Optional(t.Integer()) }))),
      ...errors(307, 400, 401, 408, 413, 429, 503, 507),
    },
  },
  leaseGet: {
    summary: "A lease on the leader: {id, ttlMs, remainingMs (the leader's countdown), keys, keysTruncated}",
    responses: { ...ok("the lease"), ...errors(307, 400, 401, 404, 503) },
  },
  leaseList: {
    summary:
      "Every lease, a page at a time, on the leader: {leases: [{id, ttlMs, remainingMs}], more}, in the order of the ids' decimal text (10 before 9); after = the last id of the previous page",
    responses: {
      ...ok(
        "a page of leases",
        json(t.Object({ leases: t.Array(t.Object({ id: t.String(), ttlMs: t.Integer(), remainingMs: t.Integer() })), more: t.Boolean() })),
      ),
      ...errors(307, 400, 401, 503),
    },
  },
  leaseRevoke: {
    summary: "Revoke a lease (through the log): its keys are deleted at one version (watch reason delete)",
    responses: { ...ok("{id, version, deletedKeys}"), ...errors(307, 400, 401, 404, 413, 503, 507) },
  },
  leaseKeepAlive: { summary: "Restart the lease's countdown on the leader (not through the log)", responses: { ...ok("{id, ttlMs}"), ...errors(307, 400, 401, 404, 413, 503) } },
  members: { summary: "The configuration: voters and learners with their URLs", responses: { ...ok("the members", json(membersAnswer)), ...errors(400, 401, 503) } },
  memberAdd: {
    summary: "Add a learner (JSON {id, peerUrl[, httpUrl]}); it is promoted once caught up",
    requestBody: bodyOf(
      "JSON {id, peerUrl[, httpUrl][, clusterTokenProof]} (the proof: kv serve --join's, see docs/api.md)",
      json(t.Object({ id: t.Integer({ minimum: 1 }), peerUrl: t.String(), httpUrl: t.Optional(t.String()), clusterTokenProof: t.Optional(t.String({ pattern: "^[0-9a-f]{64}$" })) })),
    ),
    responses: { ...ok("the member list once the change is applied", json(membersAnswer)), ...errors(307, 400, 401, 408, 409, 413, 503) },
  },
  memberRemove: {
    summary: "Remove a member (the leader hands over first when it is the one removed)",
    responses: { ...ok("the member list", json(membersAnswer)), ...errors(307, 400, 401, 404, 409, 413, 503) },
  },
  memberPromote: { summary: "Promote a learner to voter", responses: { ...ok("the member list", json(membersAnswer)), ...errors(307, 400, 401, 404, 409, 413, 503) } },
  openapi: { summary: "This document", responses: ok("OpenAPI 3.1") },
};

/**
 * The `detail` (OpenAPI operation fields) of each route and method, by route. Their schemas are
 * TypeBox's, which are JSON Schema; OpenAPI's own types (DocumentDecoration) do not know TypeBox's
 * types, hence the one cast.
 */
export const routeDocs = docs as unknown as Readonly<Record<keyof typeof docs, DocumentDecoration>>;

/**
 * The OpenAPI document of `app`'s routes (HEAD and OPTIONS left out, as every GET route also
 * answers HEAD). The hot path `/kv/{key}` is one hidden catch-all route (`/kv/*`, app.ts): its
 * three operations are added here from `routeDocs`.
 */
export function createOpenApiDocument(app: AnyElysia) {
  const generated = toOpenAPISchema(app, { methods: ["options", "head"], staticFile: false }, undefined, undefined, "3.1.0");
  const paths = {
    "/kv/{key}": {
      get: { ...routeDocs.kvGet, operationId: "getKvByKey" },
      put: { ...routeDocs.kvPut, operationId: "putKvByKey" },
      delete: { ...routeDocs.kvDelete, operationId: "deleteKvByKey" },
    },
    ...generated.paths,
  };
  return {
    openapi: "3.1.0",
    // The release (package.json, as `kv --version` prints it): the API is versioned with kv itself.
    info: { title: "kv", version: packageJson.version, description: "A replicated key-value store on Raft. Every error body is JSON {error, message}." },
    paths,
    components: { schemas: { ...generated.components.schemas, Error: errorBody, TxnRequest: txnRequest, TxnAnswer: txnAnswer } },
  };
}
