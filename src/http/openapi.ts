/**
 * The OpenAPI 3.1 description of the client HTTP API, served at GET /openapi.json. A test checks it
 * against the routes the app really serves, in both directions.
 */

const errorBody = {
  type: "object",
  required: ["error", "message"],
  properties: {
    error: { type: "string", description: "A stable code: not_leader, no_leader, timeout, too_large, bad_request, ..." },
    message: { type: "string" },
    leaderId: { type: "integer" },
    leaderUrl: { type: "string" },
    version: { type: "integer" },
    compactVersion: { type: "integer" },
  },
} as const;

const errors = (...statuses: number[]) =>
  Object.fromEntries(
    statuses.map((status) => [String(status), { description: errorDescriptions[status] ?? "error", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } }]),
  );

const errorDescriptions: Record<number, string> = {
  307: "not_leader: the same request on the leader (Location); nothing was proposed",
  400: "bad_request",
  401: "unauthenticated (with --auth-token)",
  404: "not_found, or lease_not_found (the lease expired, was revoked or never existed; nothing was written)",
  405: "method_not_allowed",
  408: "request_timeout: the body did not arrive within --request-read-timeout",
  409: "version_mismatch (compare-and-set) or conf_change_pending",
  422: "idempotency_key_reused: the Idempotency-Key was first sent with another request; nothing changed",
  413: "too_large",
  429: "overloaded",
  503: "no_leader (nothing proposed), proposal_dropped (proposed, never applied: safe to retry), timeout (outcome unknown) or unavailable",
  507: "insufficient_storage (the node's disk is full; stale reads are still served) or, for a put, quota_exceeded (past --quota-bytes)",
};

const keyParameter = { name: "key", in: "path", required: true, description: "Any non-empty UTF-8 string, percent-encoded (a%2Fb is a/b)", schema: { type: "string" } };
const consistencyParameter = {
  name: "consistency",
  in: "query",
  description: "linearizable (default: ReadIndex), lease (leader lease, thesis 6.4.1) or stale (local state)",
  schema: { type: "string", enum: ["linearizable", "lease", "stale"] },
};
const idempotencyParameter = {
  name: "Idempotency-Key",
  in: "header",
  description:
    "Exactly-once retries: a retry of the same request under a key seen within the session window (default 10 minutes) applies once and answers the first answer; the key sent with another request gets 422 idempotency_key_reused",
  schema: { type: "string", maxLength: 256 },
};
const ifVersionParameter = {
  name: "ifVersion",
  in: "query",
  description: "Compare-and-set: apply only if the key's version is this (0: only if absent)",
  schema: { type: "integer", minimum: 0 },
};

const txnValue = { oneOf: [{ type: "string" }, { type: "object", required: ["base64"], properties: { base64: { type: "string" } }, additionalProperties: false }] };
const txnKeyed = (extra: Record<string, unknown> = {}, required: string[] = []) => ({
  type: "object",
  required: ["key", ...required],
  properties: { key: { type: "string", minLength: 1 }, ...extra },
  additionalProperties: false,
});
const txnRequestSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    compare: {
      type: "array",
      items: {
        oneOf: [
          txnKeyed({ version: { type: "integer", minimum: 0 } }, ["version"]),
          txnKeyed({ value: txnValue }, ["value"]),
          txnKeyed({ exists: { type: "boolean" } }, ["exists"]),
        ],
      },
    },
    ...Object.fromEntries(
      ["success", "failure"].map((branch) => [
        branch,
        {
          type: "array",
          items: {
            oneOf: [
              { type: "object", required: ["put"], additionalProperties: false, properties: { put: txnKeyed({ value: txnValue, lease: { description: "not supported yet: 400" } }, ["value"]) } },
              { type: "object", required: ["delete"], additionalProperties: false, properties: { delete: txnKeyed() } },
              { type: "object", required: ["get"], additionalProperties: false, properties: { get: txnKeyed() } },
            ],
          },
        },
      ]),
    ),
  },
} as const;
const txnAnswerSchema = {
  type: "object",
  required: ["succeeded", "version", "results"],
  properties: { succeeded: { type: "boolean" }, version: { type: "integer" }, results: { type: "array", items: { type: "object" } } },
} as const;

/** The document. Paths use OpenAPI templates; `/kv/{key}` also matches keys with slashes in them. */
export const openApiDocument = {
  openapi: "3.1.0",
  info: { title: "kv", version: "1", description: "A replicated key-value store on Raft. Every error body is JSON {error, message}." },
  paths: {
    "/kv/{key}": {
      get: {
        summary: "Read a value",
        parameters: [keyParameter, consistencyParameter],
        responses: {
          "200": { description: "The value's raw bytes; X-Kv-Version is the Raft index of the write", content: { "application/octet-stream": {} } },
          ...errors(307, 400, 401, 404, 503, 507),
        },
      },
      put: {
        summary: "Write a value (committed on a majority and applied before the answer)",
        parameters: [
          keyParameter,
          ifVersionParameter,
          idempotencyParameter,
          {
            name: "lease",
            in: "query",
            description: "Attach the key to this lease (its decimal id): the key is deleted when the lease expires or is revoked. A put without it detaches the key. An unknown lease is 404 lease_not_found and nothing is written",
            schema: { type: "string", pattern: "^[1-9][0-9]*$" },
          },
        ],
        requestBody: { required: true, content: { "application/octet-stream": {} } },
        responses: {
          "200": { description: "{key, version}", content: { "application/json": { schema: { type: "object", properties: { key: { type: "string" }, version: { type: "integer" } } } } } },
          ...errors(307, 400, 401, 404, 409, 413, 422, 429, 503, 507),
        },
      },
      delete: {
        summary: "Delete a key",
        parameters: [keyParameter, ifVersionParameter, idempotencyParameter],
        responses: {
          "200": { description: "{deleted, version}", content: { "application/json": { schema: { type: "object", properties: { deleted: { type: "boolean" }, version: { type: "integer" } } } } } },
          ...errors(307, 400, 401, 409, 422, 429, 503, 507),
        },
      },
    },
    "/kv": {
      get: {
        summary: "List keys under a prefix, in UTF-8 byte order",
        parameters: [
          { name: "prefix", in: "query", schema: { type: "string" } },
          { name: "after", in: "query", description: "Start after this key (the last key of the previous page)", schema: { type: "string" } },
          { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 1000, default: 100 } },
          consistencyParameter,
        ],
        responses: {
          "200": {
            description: "{items:[{key, value (UTF-8 text or {base64}), version}], more}",
            content: { "application/json": { schema: { type: "object", properties: { items: { type: "array" }, more: { type: "boolean" } } } } },
          },
          ...errors(400, 401, 503, 507),
        },
      },
    },
    "/status": { get: { summary: "This node's role, term, leader, indexes and members", responses: { "200": { description: "JSON status" }, ...errors(401) } } },
    "/health": { get: { summary: "200 when a leader is known and everything committed is applied (quotaExceeded: true past the quota); 503 unhealthy, or disk_full while the disk is full", responses: { "200": { description: "healthy" }, ...errors(503) } } },
    "/metrics": { get: { summary: "Prometheus text format", responses: { "200": { description: "metrics", content: { "text/plain": {} } }, ...errors(401) } } },
    "/leader/transfer": {
      post: {
        summary: "Hand leadership to ?to=N (or the most caught-up voter)",
        parameters: [{ name: "to", in: "query", schema: { type: "integer", minimum: 1 } }],
        responses: { "200": { description: "{leaderId, previousLeaderId}" }, ...errors(307, 400, 401, 503) },
      },
    },
    "/members": {
      get: { summary: "The configuration: voters and learners with their URLs", responses: { "200": { description: "{members:[{id, peerUrl, httpUrl, role}], leaderId}" }, ...errors(401, 503) } },
      post: {
        summary: "Add a learner (JSON {id, peerUrl}); it is promoted once caught up",
        requestBody: { required: true, content: { "application/json": {} } },
        responses: { "200": { description: "the member list once the change is applied" }, ...errors(307, 400, 401, 409, 503) },
      },
    },
    "/members/{id}": {
      delete: { summary: "Remove a member (the leader hands over first when it is the one removed)", responses: { "200": { description: "the member list" }, ...errors(307, 400, 401, 404, 409, 503) } },
    },
    "/members/{id}/promote": {
      post: { summary: "Promote a learner to voter", responses: { "200": { description: "the member list" }, ...errors(307, 400, 401, 404, 409, 503) } },
    },
    "/watch": {
      get: {
        summary: "Stream changes to a prefix or a key as Server-Sent Events: put and delete (id: the version), progress while idle, error (slow_watcher) at the end",
        parameters: [
          { name: "prefix", in: "query", description: "Watch the keys starting with this (exactly one of prefix and key)", schema: { type: "string" } },
          { name: "key", in: "query", description: "Watch this one key", schema: { type: "string" } },
          { name: "fromVersion", in: "query", description: "Start with the changes at this version and later (default: after a linearizable read)", schema: { type: "integer", minimum: 1 } },
          { name: "Last-Event-ID", in: "header", description: "Resume after this version (takes precedence over fromVersion)", schema: { type: "integer", minimum: 0 } },
        ],
        responses: {
          "200": {
            description:
              'text/event-stream: "event: put" data {key, value (UTF-8 text or {base64}), version}; "event: delete" data {key, version, reason}; "event: progress" data {version}; "event: error" data {error: slow_watcher|compacted|unavailable, message}',
            content: { "text/event-stream": {} },
          },
          "410": { description: "compacted: the start is older than the history this node keeps; compactVersion is the oldest start it serves", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } },
          ...errors(400, 401, 413, 429, 503),
        },
      },
    },
    "/snapshot": {
      get: {
        summary:
          "Stream a backup: a consistent image of the state machine (sessions and every reserved row included), membership and applied index, taken after a linearizable read, with a SHA-256; writes go on meanwhile. Format: src/kv/backup-format.ts; save it with kv snapshot save",
        responses: {
          "200": {
            description: 'The backup file ("KVSNAP", format version, header, row frames, trailer); X-Kv-Snapshot-Index is the image\'s applied index',
            content: { "application/vnd.kv.snapshot": {} },
          },
          ...errors(401, 429, 503, 507),
        },
      },
    },
    "/txn": {
      post: {
        summary:
          "A multi-key transaction, decided and applied atomically at one version (one Raft entry): if every comparison holds, the success operations run, else the failure ones, in order",
        parameters: [idempotencyParameter],
        requestBody: {
          required: true,
          description:
            'JSON {compare: [{key, version} | {key, value} | {key, exists}], success: [op], failure: [op]}, op = {put: {key, value}} | {delete: {key}} | {get: {key}}; a value is a string (UTF-8) or {base64}; version 0 means absent. At most 128 comparisons and operations in all, a key written at most once per branch; "lease" in a put is refused (400) for now',
          content: { "application/json": { schema: { $ref: "#/components/schemas/TxnRequest" } } },
        },
        responses: {
          "200": {
            description:
              "{succeeded, version (the entry's index), results: one per operation of the branch taken: {put: {key, version}} | {delete: {key, deleted}} | {get: {key, found, value (UTF-8 text or {base64}), version}}}",
            content: { "application/json": { schema: { $ref: "#/components/schemas/TxnAnswer" } } },
          },
          ...errors(307, 400, 401, 413, 422, 429, 503, 507),
        },
      },
    },
    "/leases": {
      post: {
        summary: "Grant a lease (through the log) with JSON {ttlMs}; a TTL below twice the longest election timeout is raised to it (raisedFromMs says so)",
        requestBody: { required: true, content: { "application/json": { schema: { type: "object", required: ["ttlMs"], properties: { ttlMs: { type: "integer", minimum: 1 } } } } } },
        responses: {
          "200": { description: "{id (decimal string), ttlMs, raisedFromMs?}", content: { "application/json": { schema: { type: "object", properties: { id: { type: "string" }, ttlMs: { type: "integer" }, raisedFromMs: { type: "integer" } } } } } },
          ...errors(307, 400, 401, 413, 429, 503, 507),
        },
      },
    },
    "/leases/{id}": {
      get: {
        summary: "A lease on the leader: {id, ttlMs, remainingMs (the leader's countdown), keys, keysTruncated}",
        responses: { "200": { description: "the lease" }, ...errors(307, 400, 401, 404, 503) },
      },
      delete: {
        summary: "Revoke a lease (through the log): its keys are deleted at one version (watch reason delete)",
        responses: { "200": { description: "{id, version, deletedKeys}" }, ...errors(307, 400, 401, 404, 503, 507) },
      },
    },
    "/leases/{id}/keepalive": {
      post: {
        summary: "Restart the lease's countdown on the leader (not through the log)",
        responses: { "200": { description: "{id, ttlMs}" }, ...errors(307, 400, 401, 404, 503) },
      },
    },
    "/openapi.json": { get: { summary: "This document", responses: { "200": { description: "OpenAPI 3.1" } } } },
  },
  components: { schemas: { Error: errorBody, TxnRequest: txnRequestSchema, TxnAnswer: txnAnswerSchema } },
} as const;
