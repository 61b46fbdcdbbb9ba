import { type AnyElysia, Elysia, ValidationError } from "elysia";
import packageJson from "../../package.json" with { type: "json" };
import { assert, unreachable } from "../lib/assert.ts";
import { KvError } from "../lib/kv-error.ts";
import { deletePrefixKeysDefault } from "../kv/command.ts";
import { PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";
import type { KvNodeApi, NodeStatus, ReadConsistency, WatchFilter, WatchItem, WatchStart, WriteOptions } from "../node/api.ts";
import { errorResponse, headOf, jsonResponse } from "./http-error.ts";
import { bareQueryNames, decodeKvKey, KEY_BYTES_MAX_LIMIT, KV_PATH_PREFIX, parsePageLimit, parseQueryStrictly, singleParam } from "./kv-key.ts";
import { refuseBody } from "./json-body.ts";
import {
  createOpenApiDocument,
  idempotencyHeaders,
  listQuery,
  deletePrefixQuery,
  noQuery,
  OPENAPI_PATH,
  routeDocs,
  transferQuery,
  hashQuery,
  watchHeaders,
  watchQuery,
} from "./openapi.ts";
import { rawTarget } from "./raw-target.ts";
import { admitWriteBody, BodyAdmission } from "./body-admission.ts";
import { readBodyBytesMax } from "./read-body.ts";
import { idempotencyKeyOf } from "./idempotency-key.ts";
import { refuseConditionalHeaders } from "./preconditions.ts";
import { createMembersRoutes } from "./members-routes.ts";
import { createSnapshotRoute } from "./snapshot-route.ts";
import { createHashHandler } from "./hash-route.ts";
import { createTxnRoute } from "./txn-route.ts";
import { createLeaseRoutes, parseLeaseId } from "./lease-routes.ts";
import { jsonValue } from "../lib/json-value.ts";
import { pageBytes } from "../lib/page-bytes.ts";

/** Limits of the client API. */
export interface HttpAppOptions {
  /** Largest value a PUT may store, in bytes. Default {@link VALUE_BYTES_MAX_DEFAULT}. */
  valueBytesMax?: number;
  /** Largest key, in UTF-8 bytes after percent-decoding. Default {@link KEY_BYTES_MAX_DEFAULT}. */
  keyBytesMax?: number;
  /**
   * How long a route waits for a request's body once it starts reading it; past it, 408
   * `request_timeout`. Without it, only Bun's idle timeout bounds a body that trickles in.
   */
  bodyReadTimeoutMs?: number;
  /** Serves `GET /metrics` with this text (Prometheus format); without it, /metrics is an unknown route. */
  renderMetrics?: () => string;
  /**
   * How large write bodies wait their turn to be read (src/http/body-admission.ts). Default: 16 MiB
   * of bodies of 64 KiB or more at once, each waiting at most {@link LARGE_BODY_WAIT_MS_DEFAULT}.
   */
  bodyAdmission?: BodyAdmission;
  /** Aborted once the node begins to stop: long requests (a hash) end with 503 rather than read from closed storage. */
  stopping?: AbortSignal;
  /**
   * The peers' cluster token (`token` undefined: none), to check a joiner's `clusterTokenProof`
   * against (`POST /members`). Without this, a proof is not checked.
   */
  joinCheck?: { readonly token: string | undefined };
  /** Says what a client cannot be told: a backup stream that broke off midway (its answer's 200 was sent). */
  logStreamFailure?: (event: string, fields: Record<string, unknown>) => void;
}

/** Default bound on the bytes of large write bodies read at once and not yet answered: 16 MiB. */
export const LARGE_BODIES_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;
/** Bodies from this size on wait for admission: 64 KiB. */
export const LARGE_BODY_BYTES_MIN = 64 * 1024;
/** Default longest wait of a large body to be read: 5 s, the default request timeout. */
export const LARGE_BODY_WAIT_MS_DEFAULT = 5_000;

/** Default limit on a value's size: 1 MiB. */
export const VALUE_BYTES_MAX_DEFAULT = 1024 * 1024;
/** Default limit on a key's size: 4096 UTF-8 bytes. */
export const KEY_BYTES_MAX_DEFAULT = 4096;
/**
 * A `GET /kv` page also ends after the item that brings its keys and values to 4 MiB (with `more`):
 * a hundred 1 MiB values in one page (the default limit) held a leader's loop for 0.1-0.3 s, and lost
 * it the leadership (found in a black-box review).
 */
export const listPageBytesMax = 4 * 1024 * 1024;


/**
 * Builds the client HTTP API over a node (not listening: the caller runs `.listen`). The contract:
 * - `PUT /kv/{key}`: body = the value's raw bytes → 200 `{"key","version"}`.
 * - `GET /kv/{key}?consistency=linearizable|lease|stale` → 200 raw bytes with `X-Kv-Version`, or 404.
 * - `DELETE /kv/{key}` → 200 `{"deleted","version"}`.
 * - `GET /status` → the node's status; `GET /health` → 200 `{"healthy":true}` (with `"quotaExceeded":true`
 *   past the quota) or 503 (`disk_full` while the disk is full).
 * - `GET /metrics` → Prometheus text, when `renderMetrics` is given.
 * - `GET /watch?prefix=P|key=K[&fromVersion=N]` (or `Last-Event-ID: N`) → a Server-Sent Events stream
 *   of `put`, `delete` and `progress` events (see `watchRoute`).
 * - `GET /snapshot` → a backup of the state machine, streamed (src/http/snapshot-route.ts).
 * - `POST /txn` JSON `{compare, success, failure}` → `{"succeeded","version","results"}` (txn-route.ts).
 * - `/leases`: grant, keep alive, read and revoke leases (src/http/lease-routes.ts); `PUT /kv/{key}?lease=ID`
 *   attaches the key to a lease.
 * Keys are percent-encoded in the path and decoded from the raw URL. Every error is JSON
 * `{error, message, ...details}`, mapped from `KvError` codes in `errorResponse` (http-error.ts).
 */
export function createHttpApp(node: KvNodeApi, opts: HttpAppOptions = {}) {
  const valueBytesMax = opts.valueBytesMax ?? VALUE_BYTES_MAX_DEFAULT;
  const keyBytesMax = opts.keyBytesMax ?? KEY_BYTES_MAX_DEFAULT;
  const admission = opts.bodyAdmission ?? new BodyAdmission(LARGE_BODIES_BYTES_MAX_DEFAULT, LARGE_BODY_BYTES_MIN, LARGE_BODY_WAIT_MS_DEFAULT);
  assert(Number.isSafeInteger(valueBytesMax) && valueBytesMax >= 0, "valueBytesMax must be a whole number of bytes");
  assert(Number.isSafeInteger(keyBytesMax) && keyBytesMax >= 1, "keyBytesMax must be at least 1 byte");

  /** Wraps a route: anything it throws goes through the one error mapping (with `allow` for a 405 it throws itself). */
  const route =
    (handler: (request: Request) => Promise<Response> | Response, allow?: string) =>
    async ({ request }: { request: Request }): Promise<Response> => {
      try {
        return await handler(request);
      } catch (error) {
        return errorResponse(error, request, allow === undefined ? {} : { allow });
      }
    };

  const kvRoute = async (request: Request): Promise<Response> => {
    const { path, search } = rawTarget(request.url);
    const method = request.method;
    if (method !== "GET" && method !== "HEAD" && method !== "PUT" && method !== "DELETE") {
      throw new KvError("method_not_allowed", `${method} is not allowed on /kv/{key}: it serves ${KV_ALLOW}`);
    }
    // Only writing a key is held to --key-bytes-max; a read or delete names one up to the most any limit allows (kv-key.ts).
    const key = decodeKvKey(path.startsWith(KV_PATH_PREFIX) ? path.slice(KV_PATH_PREFIX.length) : "", method === "PUT" ? keyBytesMax : KEY_BYTES_MAX_LIMIT);
    switch (method) {
      case "GET":
      case "HEAD": {
        const found = await node.get(key, parseConsistency(search));
        if (found === undefined) throw new KvError("not_found", "no value is stored under this key");
        const headers = { "content-type": "application/octet-stream", "x-kv-version": String(found.version) };
        // HEAD answers the headers GET would, its length included (a bodiless answer would say 0).
        if (method === "HEAD") return new Response(null, { status: 200, headers: { ...headers, "content-length": String(found.value.byteLength) } });
        return new Response(found.value, { status: 200, headers });
      }
      case "PUT": {
        const query = writeQuery(search, ["ifVersion", "lease"], method);
        const options = { ...parseWriteOptions(query, request), ...parseLeaseOption(query) };
        // A large body is redirected unread by a follower, else read when its turn comes.
        const release = await admitWriteBody(admission, request, valueBytesMax, () => node.refuseWriteUnlessLeader());
        try {
          const value = await readBodyBytesMax(request, valueBytesMax, opts.bodyReadTimeoutMs);
          const { version } = await node.put(key, value, options);
          return jsonResponse({ key, version }, 200);
        } finally {
          release?.();
        }
      }
      case "DELETE": {
        const query = writeQuery(search, ["ifVersion"], method, { lease: "?lease= is for PUT: a delete detaches the key from its lease" });
        await refuseBody(request, "DELETE /kv/{key}", opts.bodyReadTimeoutMs);
        const { deleted, version } = await node.delete(key, parseWriteOptions(query, request));
        return jsonResponse({ deleted, version }, 200);
      }
    }
  };

  /** `POST /leader/transfer[?to=N]`: hand leadership over (thesis §3.10); on a follower, 307 to the leader. */
  const transferRoute = async (request: Request): Promise<Response> => {
    const to = singleParam(parseQueryStrictly(rawTarget(request.url).search), "to");
    await refuseBody(request, "POST /leader/transfer", opts.bodyReadTimeoutMs, "name the node to hand over to as ?to=N");
    let target: number | undefined;
    if (to !== null) {
      target = Number(to);
      if (!positiveInteger.test(to) || !Number.isSafeInteger(target)) throw new KvError("bad_request", `'to' must be a node id, got '${to.slice(0, 32)}'`);
    }
    const previousLeaderId = node.status().id;
    const { leaderId } = await node.transferLeadership(target);
    return jsonResponse({ leaderId, previousLeaderId }, 200);
  };

  /** `GET /kv?prefix=P&limit=N&after=KEY[&consistency=...]` → `{items:[{key, value, version}], more}`. */
  const listRoute = async (request: Request): Promise<Response> => {
    const { path, search } = rawTarget(request.url);
    if (path !== "/kv") return kvRoute(request); // `/kv/` (the router folds the slash) names the empty key
    const query = parseQueryStrictly(search);
    // Unknown parameters were refused by the route's schema (listQuery, openapi.ts).
    const prefix = singleParam(query, "prefix") ?? "";
    const after = singleParam(query, "after") ?? undefined;
    const limit = parsePageLimit(singleParam(query, "limit"));
    for (const [name, value] of [["prefix", prefix], ["after", after ?? ""]] as const) {
      if (new TextEncoder().encode(value).byteLength > KEY_BYTES_MAX_LIMIT) throw new KvError("too_large", `${name} is longer than ${KEY_BYTES_MAX_LIMIT} bytes`);
    }
    const found = await node.list(prefix, after, limit + 1, parseConsistency(search), listPageBytesMax);
    const items = found.slice(0, limit).map((item) => ({ key: item.key, value: jsonValue(item.value), version: item.version }));
    // A page stopped by its bytes may be followed by more (or by an empty last page).
    const response = jsonResponse({ items, more: found.length > limit || pageBytes(found) >= listPageBytesMax }, 200);
    return request.method === "HEAD" ? headOf(response) : response;
  };

  /**
   * `DELETE /kv?prefix=P[&limit=N]` → `{"deleted", "more", "version"}`: the first N (default 1,000,
   * at most 10,000) keys under P, in key order, deleted at one version; `more` when keys under P are
   * left (delete again). `prefix` must be given (empty: every key). On a follower, 307.
   */
  const deletePrefixRoute = async (request: Request): Promise<Response> => {
    const { path, search } = rawTarget(request.url);
    if (path !== "/kv") return kvRoute(request); // `/kv/` (the router folds the slash) names the empty key
    const deletePrefix = node.deletePrefix?.bind(node);
    if (deletePrefix === undefined) throw new KvError("method_not_allowed", "DELETE /kv is not served by this node", {});
    // Unknown parameters were refused by the route's schema (deletePrefixQuery, openapi.ts).
    // `?prefix` without `=` reads as the empty prefix, every key: a wipe one typo away (found in a black-box review).
    if (bareQueryNames(search).includes("prefix")) {
      throw new KvError("bad_request", "?prefix without '=' names no prefix: write ?prefix=P, or ?prefix= (with '=') to delete every key");
    }
    const query = parseQueryStrictly(search);
    const prefix = singleParam(query, "prefix");
    if (prefix === null) {
      throw new KvError("bad_request", "DELETE /kv needs ?prefix=P: it deletes the keys starting with P (?prefix= with nothing after it: every key); delete one key with DELETE /kv/{key}");
    }
    if (new TextEncoder().encode(prefix).byteLength > KEY_BYTES_MAX_LIMIT) throw new KvError("too_large", `prefix is longer than ${KEY_BYTES_MAX_LIMIT} bytes`);
    const limitText = singleParam(query, "limit");
    const limit = limitText === null ? deletePrefixKeysDefault : Number(limitText);
    await refuseBody(request, "DELETE /kv", opts.bodyReadTimeoutMs);
    const answer = await deletePrefix(prefix, limit, parseWriteOptions(undefined, request));
    return jsonResponse({ deleted: answer.deleted, more: answer.more, version: answer.version }, 200);
  };

  /**
   * `GET /watch`: Server-Sent Events, one per change (`id:` its version, on the version's last change;
   * `event: put|delete`, `data:` JSON) and `progress` events while idle; it ends with `event: error` (`slow_watcher`, ...). Errors
   * before the first event are ordinary JSON answers (400, 410 `compacted`, ...).
   */
  const watchRoute = async (request: Request): Promise<Response> => {
    // The router answers HEAD with a GET route's handler: a stream's head would never end.
    if (request.method === "HEAD") throw new KvError("method_not_allowed", "HEAD is not allowed on /watch: it serves GET");
    const { filter, start } = parseWatchRequest(rawTarget(request.url).search, request.headers.get("last-event-id"), KEY_BYTES_MAX_LIMIT);
    const watch = node.watch?.bind(node);
    if (watch === undefined) throw new KvError("not_found", "this node does not serve watches");
    const subscription = await watch(filter, start);
    request.signal.addEventListener("abort", () => subscription.close(), { once: true });
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          const items = await subscription.next();
          if (items === undefined) {
            try {
              controller.close();
            } catch {
              // Bun cancelled the stream already: the client went away.
            }
            return;
          }
          controller.enqueue(encoder.encode(items.map((item, i) => sseEvent(item, endsVersion(items, i))).join("")));
        },
        cancel() {
          subscription.close();
        },
      },
      // Nothing is read ahead of the client: a stream's backlog stays in the node's bounded buffer.
      { highWaterMark: 0 },
    );
    return new Response(body, {
      status: 200,
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" },
    });
  };

  const readOnlyRoute = (handler: () => Response) => (request: Request): Response | Promise<Response> => {
    const response = handler();
    return request.method === "HEAD" ? headOf(response) : response;
  };

  const renderMetrics = opts.renderMetrics;
  /** `GET /metrics`: Prometheus text; without `renderMetrics`, the same 404 as any unknown route. */
  const metricsRoute = (request: Request): Response | Promise<Response> => {
    if (renderMetrics === undefined) {
      throw new KvError("not_found", `no route for ${request.method} ${rawTarget(request.url).path}`);
    }
    return readOnlyRoute(() =>
      new Response(renderMetrics(), { status: 200, headers: { "content-type": PROMETHEUS_CONTENT_TYPE } }),
    )(request);
  };

  const txnRoute = createTxnRoute(node, { keyBytesMax, valueBytesMax, admission, ...(opts.bodyReadTimeoutMs === undefined ? {} : { bodyReadTimeoutMs: opts.bodyReadTimeoutMs }) });
  const statusRoute = readOnlyRoute(() => jsonResponse(statusJson(node.status()), 200));
  const hashHandler = createHashHandler(node, opts.stopping);
  const hashRoute = (request: Request) => {
    // The router answers HEAD with this GET route: it would read the whole state to drop the answer.
    if (request.method === "HEAD") throw new KvError("method_not_allowed", "HEAD is not allowed on /hash: it serves GET");
    return hashHandler(request, parseConsistency(rawTarget(request.url).search));
  };
  const healthRoute = readOnlyRoute(() => healthResponse(node));
  let openApiDocument: ReturnType<typeof createOpenApiDocument> | undefined;
  const openApiRoute = readOnlyRoute(() => jsonResponse((openApiDocument ??= createOpenApiDocument(built.app as AnyElysia)), 200));
  /** The app, once built: the 405 answer and the document read its routes. */
  const built: { app?: AnyElysia } = {};
  // Every route takes its body raw (`parse: "none"`): values are bytes, and bodies are read bounded
  // by the routes themselves (read-body.ts). HEAD is registered beside each GET and answers no body.
  const raw = { parse: "none" } as const;

  // normalize: false makes a query parameter no schema lists a 400, where Elysia would drop it.
  const app = new Elysia({ normalize: false })
    // Registered first so it covers every route below, and routes a caller may add: whatever
    // Elysia itself rejects (no route, a method the route does not serve, unparsable body, failed
    // validation) still answers JSON.
    .onError(({ code, error, request }) => {
      switch (code) {
        case "NOT_FOUND": {
          const path = rawTarget(request.url).path;
          const allow = allowedMethods(built.app?.routes ?? [], path);
          if (allow !== undefined) {
            return errorResponse(new KvError("method_not_allowed", `${request.method} is not allowed on ${path}: it serves ${allow}`), request, { allow });
          }
          return errorResponse(new KvError("not_found", `no route for ${request.method} ${path}`), request);
        }
        case "VALIDATION":
          return errorResponse(new KvError("bad_request", validationMessage(error)), request);
        case "PARSE":
        case "INVALID_COOKIE_SIGNATURE":
        case "INVALID_FILE_TYPE":
          return errorResponse(new KvError("bad_request", errorMessage(error)), request);
        default:
          return errorResponse(error, request);
      }
    })
    // The hot path: one route for every method, which kvRoute dispatches (registered per method,
    // it measured ~1.5 µs more per request in-process: BENCHMARKS.md, "OpenAPI from route
    // schemas"). Its query and headers are parsed from the raw target by kvRoute; its three
    // operations are described in the document by openapi.ts (routeDocs.kvGet/kvPut/kvDelete).
    .all("/kv/*", route(kvRoute, KV_ALLOW), { ...raw, detail: { hide: true } })
    // `GET /kv?prefix=` lists; `/kv/` (the router folds the slash) names the empty key: a 400 from decodeKvKey.
    .get("/kv", route(listRoute), { ...raw, query: listQuery, detail: routeDocs.list })
    .head("/kv", route(listRoute), { ...raw, query: listQuery })
    .delete("/kv", route(deletePrefixRoute), { ...raw, query: deletePrefixQuery, headers: idempotencyHeaders, detail: routeDocs.deletePrefix })
    .get("/status", route(statusRoute), { ...raw, detail: routeDocs.status })
    .head("/status", route(statusRoute), raw)
    .get("/health", route(healthRoute), { ...raw, detail: routeDocs.health })
    .head("/health", route(healthRoute), raw)
    .get("/hash", route(hashRoute, "GET"), { ...raw, query: hashQuery, detail: routeDocs.hash })
    .post("/leader/transfer", route(transferRoute), { ...raw, query: transferQuery, detail: routeDocs.transfer })
    .get("/watch", route(watchRoute, "GET"), { ...raw, query: watchQuery, headers: watchHeaders, detail: routeDocs.watch })
    .post("/txn", route(txnRoute), { ...raw, query: noQuery, headers: idempotencyHeaders, detail: routeDocs.txn })
    .get(OPENAPI_PATH, route(openApiRoute), { ...raw, detail: routeDocs.openapi })
    .head(OPENAPI_PATH, route(openApiRoute), raw)
    .use(createMembersRoutes(node, opts.bodyReadTimeoutMs, opts.joinCheck))
    .use(createSnapshotRoute(node, opts.logStreamFailure))
    .use(createLeaseRoutes(node, opts.bodyReadTimeoutMs));
  // Without renderMetrics, /metrics is no route at all (404 like any unknown path).
  const served = renderMetrics === undefined ? app : app.get("/metrics", route(metricsRoute), { ...raw, detail: routeDocs.metrics }).head("/metrics", route(metricsRoute), raw);
  built.app = served;
  return served;
}

/** The methods `/kv/{key}` serves, as an `Allow` header. */
const KV_ALLOW = "GET, HEAD, PUT, DELETE";
/** The order methods are listed in an `Allow` header. */
const METHOD_ORDER = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"];
/** Elysia paths (`/members/:id`, `/kv/*`) as patterns over raw paths, kept per path. */
const pathPatterns = new Map<string, RegExp>();

function pathPattern(path: string): RegExp {
  let pattern = pathPatterns.get(path);
  if (pattern === undefined) {
    const source = path
      .split("/")
      .map((segment) => (segment === "*" ? ".*" : segment.startsWith(":") ? "[^/]+" : segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
      .join("/");
    pattern = new RegExp(`^${source}/?$`);
    pathPatterns.set(path, pattern);
  }
  return pattern;
}

/**
 * Elysia answers NOT_FOUND both for a path no route serves and for a method the path's routes do
 * not serve: the methods the routes serve on `path`, as an `Allow` header, or undefined when no
 * route serves it (a 404).
 */
function allowedMethods(routes: readonly { method: string; path: string }[], path: string): string | undefined {
  const methods = new Set(routes.filter((r) => pathPattern(r.path).test(path)).map((r) => r.method.toUpperCase()));
  if (methods.size === 0) return undefined;
  return METHOD_ORDER.filter((m) => methods.has(m)).join(", ");
}

/** A failed schema (openapi.ts) as one line: the schema's own message when it has one, else where and what. */
function validationMessage(error: unknown): string {
  if (!(error instanceof ValidationError)) return errorMessage(error);
  if (typeof error.customError === "string") return error.customError;
  const first = error.valueError;
  if (first === undefined) return `invalid ${error.type}`;
  const name = first.path.replace(/^\//, "");
  if (first.message === "Unexpected property") return `unknown ${error.type} parameter '${name}'`;
  return name === "" ? `invalid ${error.type}: ${first.message}` : `invalid ${error.type} parameter '${name}': ${first.message}`;
}

const positiveInteger = /^[1-9][0-9]{0,15}$/;
const nonNegativeInteger = /^(0|[1-9][0-9]{0,15})$/;

/** `/watch`'s query and `Last-Event-ID`: exactly one of prefix and key; the header takes precedence over fromVersion. */
function parseWatchRequest(search: string, lastEventId: string | null, keyBytesMax: number): { filter: WatchFilter; start: WatchStart } {
  const query = parseQueryStrictly(search);
  // Unknown parameters were refused by the route's schema (watchQuery, openapi.ts).
  const prefixes = query.getAll("prefix");
  const keys = query.getAll("key");
  if (prefixes.length + keys.length !== 1) throw new KvError("bad_request", "give exactly one of ?prefix=P and ?key=K, once");
  const filter: WatchFilter = prefixes.length === 1 ? { prefix: prefixes[0] as string } : { key: keys[0] as string };
  const text = "prefix" in filter ? filter.prefix : filter.key;
  if (new TextEncoder().encode(text).byteLength > keyBytesMax) throw new KvError("too_large", `the ${"prefix" in filter ? "prefix" : "key"} is longer than ${keyBytesMax} bytes`);
  if ("key" in filter && filter.key === "") throw new KvError("bad_request", "key must not be empty");
  const fromVersions = query.getAll("fromVersion");
  if (fromVersions.length > 1 || (fromVersions.length === 1 && !positiveInteger.test(fromVersions[0] as string))) {
    throw new KvError("bad_request", `fromVersion must be given once, as a positive whole number, got '${fromVersions.join(",")}'`);
  }
  const fromVersion = fromVersions.length === 1 ? Number(fromVersions[0]) : undefined;
  if (lastEventId !== null) {
    const trimmed = lastEventId.trim();
    if (!nonNegativeInteger.test(trimmed) || !Number.isSafeInteger(Number(trimmed))) {
      throw new KvError("bad_request", `Last-Event-ID must be a version (a whole number), got '${lastEventId}'`);
    }
    return { filter, start: { after: Number(trimmed) } };
  }
  if (fromVersion !== undefined) {
    if (!Number.isSafeInteger(fromVersion)) throw new KvError("bad_request", `fromVersion ${fromVersions[0]} is too large`);
    return { filter, start: { from: fromVersion } };
  }
  return { filter, start: "now" };
}

/**
 * Whether `items[i]` is the last change of its version in the batch, or no change: a batch holds
 * all of a version's changes or none (NodeWatch.next), so it is then the version's last.
 */
function endsVersion(items: readonly WatchItem[], i: number): boolean {
  const item = items[i] as WatchItem;
  const following = items[i + 1];
  return item.type !== "change" || following?.type !== "change" || following.change.version !== item.change.version;
}

/**
 * One SSE event. A change carries its version as `id:` only when it is its version's last (`last`):
 * the earlier changes of a transaction or a lease expiry name none, so an `EventSource` cut off
 * among them still holds the version before and resumes with the whole version again, instead of
 * after it with the rest lost.
 */
function sseEvent(item: WatchItem, last: boolean): string {
  switch (item.type) {
    case "change": {
      const change = item.change;
      const data =
        change.kind === "put"
          ? { key: change.key, value: jsonValue(change.value), version: change.version }
          : { key: change.key, version: change.version, reason: change.reason };
      return `${last ? `id: ${change.version}\n` : ""}event: ${change.kind}\ndata: ${JSON.stringify(data)}\n\n`;
    }
    case "progress":
      return `id: ${item.version}\nevent: progress\ndata: ${JSON.stringify({ version: item.version })}\n\n`;
    case "error": {
      const { type: _, ...data } = item;
      return `event: error\ndata: ${JSON.stringify(data)}\n\n`;
    }
    default:
      return unreachable(item, "unknown watch item");
  }
}

/** `?ifVersion=N` (compare-and-set) and the `Idempotency-Key` header (exactly-once retries) on a write. */
function parseWriteOptions(query: URLSearchParams | undefined, request: Request): WriteOptions {
  refuseConditionalHeaders(request);
  const idempotencyKey = idempotencyKeyOf(request);
  const idempotency = idempotencyKey === undefined ? {} : { idempotencyKey };
  const values = query?.getAll("ifVersion") ?? [];
  if (values.length === 0) return idempotency;
  const [text] = values;
  const version = Number(text);
  // No leading zeros, as every other number in a query (found in review: `ifVersion=0659` matched 659).
  if (values.length !== 1 || !/^(0|[1-9][0-9]{0,15})$/.test(text as string) || !Number.isSafeInteger(version)) {
    throw new KvError("bad_request", `ifVersion must be given once, as a version number (0: only if absent), got '${values.join(",")}'`);
  }
  return { ifVersion: version, ...idempotency };
}

/**
 * A write's query, parsed once (undefined when it has none, the common write), refusing a
 * parameter it does not take (the route's schema cannot list them: each method takes its own), with
 * the sentence of `refusals` where one says why.
 * Ignored, a misspelt `?ifversion=1` made a compare-and-set write unconditional. Reads ignore what
 * they do not take, as they always have (cache-busting parameters): a read cannot do harm by it.
 */
function writeQuery(search: string, taken: readonly string[], method: string, refusals: Readonly<Record<string, string>> = {}): URLSearchParams | undefined {
  if (search === "") return undefined;
  const query = new URLSearchParams(search);
  for (const name of query.keys()) {
    const refusal = Object.hasOwn(refusals, name) ? refusals[name] : undefined;
    if (refusal !== undefined) throw new KvError("bad_request", refusal);
    if (!taken.includes(name)) {
      throw new KvError("bad_request", `unknown parameter '${name.slice(0, 64)}': ${method} /kv/{key} takes ${taken.map((each) => `?${each}=`).join(" and ")}`);
    }
  }
  return query;
}

/** `?lease=ID` on a put: attach the key to that lease (src/kv/leases.ts); given at most once. */
function parseLeaseOption(query: URLSearchParams | undefined): { lease?: number } {
  const values = query?.getAll("lease") ?? [];
  if (values.length === 0) return {};
  if (values.length > 1) throw new KvError("bad_request", "lease must be given once");
  return { lease: parseLeaseId(values[0] as string) };
}

/** The `consistency` query parameter: absent means linearizable; anything but the three names is a 400. */
function parseConsistency(search: string): ReadConsistency {
  const values = new URLSearchParams(search).getAll("consistency");
  if (values.length === 0) return "linearizable";
  const [value] = values;
  if (values.length === 1 && (value === "linearizable" || value === "stale" || value === "lease")) return value;
  throw new KvError("bad_request", 'consistency must be given once, as "linearizable" (the default), "lease" or "stale"');
}


/**
 * /health: 503 `removed` once the node applied its own removal (it serves nothing); 503 `disk_full`
 * while the node is frozen by a full disk (it takes no part in consensus, though it serves stale
 * reads); 503 `unhealthy` without a leader or more than 1,000 committed entries not yet applied
 * (KvNode.healthy); else 200,
 * flagged `quotaExceeded` past the quota (it serves reads and deletes, refuses puts).
 */
function healthResponse(node: KvNodeApi): Response {
  const status = node.status();
  if (status.removed === true) {
    return jsonResponse({ error: "removed", message: "this node was removed from the cluster; it serves no requests (stop it, or add it again with an empty data dir and --join)" }, 503);
  }
  const storage = status.storage;
  if (storage?.diskFull === true) {
    return jsonResponse({ error: "disk_full", message: "the disk is full: the node is frozen until space returns; it serves only stale reads" }, 503);
  }
  if (!node.healthy()) {
    // Which of the two, as far as the status tells (found in a black-box review: one message for both).
    const message =
      status.leaderId === 0
        ? "no leader is known: the cluster may have lost its majority, or be electing"
        : `this node has applied more than 1,000 entries less than its leader committed: it is catching up (applied to ${status.appliedIndex} so far)`;
    return jsonResponse({ error: "unhealthy", message }, 503);
  }
  return jsonResponse({ healthy: true, ...(storage?.quotaExceeded === true ? { quotaExceeded: true } : {}) }, 200);
}

/** The status as JSON with every field present: unknown URLs are `null`, never missing. */
function statusJson(status: NodeStatus) {
  return {
    id: status.id,
    // The release this node runs (as `kv --version` prints it), so a rolling upgrade can be followed.
    version: packageJson.version,
    role: status.role,
    term: status.term,
    leaderId: status.leaderId,
    leaderUrl: status.leaderUrl ?? null,
    commitIndex: status.commitIndex,
    appliedIndex: status.appliedIndex,
    lastLogIndex: status.lastLogIndex,
    snapshotIndex: status.snapshotIndex,
    firstLogIndex: status.firstLogIndex,
    members: status.members.map((member) => ({
      id: member.id,
      peerUrl: member.peerUrl,
      httpUrl: member.httpUrl ?? null,
      ...(member.role === undefined ? {} : { role: member.role }),
      addedIndex: member.addedIndex ?? null,
      // A leader's: how far each other member's log matches its own (absent elsewhere).
      ...(member.matchIndex === undefined ? {} : { matchIndex: member.matchIndex }),
    })),
    storage: status.storage ?? null,
    ...(status.removed === true ? { removed: true } : {}),
    ...(status.votesHeld === true ? { votesHeld: true } : {}),
  };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
