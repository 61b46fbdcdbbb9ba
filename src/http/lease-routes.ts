/**
 * The lease routes of the client API (src/kv/leases.ts, src/node/leases.ts), all served by the
 * leader (a follower answers 307 to it, as for writes):
 * - `POST /leases` JSON `{"ttlMs": N}` → `{"id": "<decimal>", "ttlMs": N}` (plus `"raisedFromMs"`
 *   when N was below the minimum, twice the longest election timeout, and was raised to it).
 * - `POST /leases/{id}/keepalive` → `{"id", "ttlMs"}`: the leader's countdown restarts.
 * - `GET /leases/{id}` → `{"id", "ttlMs", "remainingMs", "keys", "keysTruncated"}`.
 * - `GET /leases?limit=N&after=ID` → `{"leases": [{"id", "ttlMs", "remainingMs"}], "more"}`: a page of
 *   every lease, in the order of the ids' decimal text (as the state machine keeps them: `10` before
 *   `9`); `after` is the last id of the previous page.
 * - `DELETE /leases/{id}` → `{"id", "version", "deletedKeys"}`: revoked, its keys deleted at `version`.
 * A lease that does not exist (expired, revoked, never granted) is 404 `lease_not_found`; bad input 400.
 * Ids are decimal strings in JSON: they are Raft indexes, below 2^53, but clients in other
 * languages need not hold them as floats.
 */
import { Elysia } from "elysia";
import { leaseTtlMsMax } from "../kv/leases.ts";
import { KvError } from "../lib/kv-error.ts";
import type { KvNodeApi } from "../node/api.ts";
import { errorResponse, headOf, jsonResponse } from "./http-error.ts";
import { jsonObject, parseJsonBody, refuseBody, smallJsonShape } from "./json-body.ts";
import { parsePageLimit, parseQueryStrictly, singleParam } from "./kv-key.ts";
import { leaseListQuery, leaseParams, noQuery, routeDocs } from "./openapi.ts";
import { readBodyBytesMax } from "./read-body.ts";

/** A grant's body is a few bytes of JSON. */
const LEASE_BODY_BYTES_MAX = 4 * 1024;

/** The routes as an Elysia plugin: `app.use(createLeaseRoutes(node))`; a body must arrive within `bodyReadTimeoutMs`. */
export function createLeaseRoutes(node: KvNodeApi, bodyReadTimeoutMs?: number) {
  const grant = async (request: Request): Promise<Response> => {
    const ttlMs = parseGrantBody(await readBodyBytesMax(request, LEASE_BODY_BYTES_MAX, bodyReadTimeoutMs, "the body"));
    const granted = await required(node.grantLease?.bind(node))(ttlMs);
    return jsonResponse({ id: String(granted.id), ttlMs: granted.ttlMs, ...(granted.raisedFromMs === undefined ? {} : { raisedFromMs: granted.raisedFromMs }) }, 200);
  };
  // The whole answer to HEAD too: on a route with a parameter the router answers HEAD through the
  // GET handler and sets Content-Length from the body it returns, which headOf had emptied (HEAD
  // said 0: found in a black-box review).
  const info = async (id: string): Promise<Response> => {
    const lease = await required(node.leaseInfo?.bind(node))(parseLeaseId(id));
    return jsonResponse({ ...lease, id: String(lease.id) }, 200);
  };
  const list = async (request: Request): Promise<Response> => {
    // Unknown parameters and malformed values were refused by the route's schema (leaseListQuery, openapi.ts).
    const query = parseQueryStrictly(new URL(request.url).search);
    const afterText = singleParam(query, "after");
    const limit = parsePageLimit(singleParam(query, "limit"));
    const found = await required(node.listLeases?.bind(node))(afterText === null ? undefined : parseLeaseId(afterText), limit + 1);
    const leases = found.slice(0, limit).map((lease) => ({ ...lease, id: String(lease.id) }));
    const response = jsonResponse({ leases, more: found.length > limit }, 200);
    return request.method === "HEAD" ? headOf(response) : response;
  };
  const revoke = async (request: Request, id: string): Promise<Response> => {
    await refuseBody(request, "DELETE /leases/{id}", bodyReadTimeoutMs);
    const revoked = await required(node.revokeLease?.bind(node))(parseLeaseId(id));
    return jsonResponse({ ...revoked, id: String(revoked.id) }, 200);
  };
  const keepAlive = async (request: Request, id: string): Promise<Response> => {
    await refuseBody(request, "POST /leases/{id}/keepalive", bodyReadTimeoutMs, "a keepalive restarts the lease's countdown at the TTL it was granted");
    const kept = await required(node.keepAliveLease?.bind(node))(parseLeaseId(id));
    return jsonResponse({ id: String(kept.id), ttlMs: kept.ttlMs }, 200);
  };
  /** Anything a route throws goes through the one error mapping. */
  const guarded =
    (handler: (context: RouteContext) => Promise<Response>) =>
    async (context: RouteContext): Promise<Response> => {
      try {
        return await handler(context);
      } catch (error) {
        return errorResponse(error, context.request);
      }
    };
  const raw = { parse: "none" } as const;
  return new Elysia({ name: "kv-leases" })
    .post("/leases", guarded(({ request }) => grant(request)), { ...raw, query: noQuery, detail: routeDocs.leaseGrant })
    .get("/leases", guarded(({ request }) => list(request)), { ...raw, query: leaseListQuery, detail: routeDocs.leaseList })
    .head("/leases", guarded(({ request }) => list(request)), { ...raw, query: leaseListQuery })
    .get("/leases/:id", guarded(({ params }) => info(params.id ?? "")), { ...raw, params: leaseParams, detail: routeDocs.leaseGet })
    .head("/leases/:id", guarded(({ params }) => info(params.id ?? "")), { ...raw, params: leaseParams })
    .delete("/leases/:id", guarded(({ request, params }) => revoke(request, params.id ?? "")), { ...raw, query: noQuery, params: leaseParams, detail: routeDocs.leaseRevoke })
    .post("/leases/:id/keepalive", guarded(({ request, params }) => keepAlive(request, params.id ?? "")), { ...raw, query: noQuery, params: leaseParams, detail: routeDocs.leaseKeepAlive });
}

/** What a route here reads of Elysia's context: the request, and `{id}` where the path has one. */
interface RouteContext {
  readonly request: Request;
  readonly params: Readonly<Record<string, string | undefined>>;
}

function required<T>(method: T | undefined): T {
  if (method === undefined) throw new KvError("not_found", "this node does not serve leases");
  return method;
}

const leaseIdPattern = /^[1-9][0-9]{0,15}$/;

/** A lease id as clients send it: a positive decimal integer below 2^53. */
export function parseLeaseId(text: string): number {
  const id = Number(text);
  if (!leaseIdPattern.test(text) || !Number.isSafeInteger(id)) {
    throw new KvError("bad_request", `a lease id is a positive whole number, got '${text.slice(0, 32)}'`);
  }
  return id;
}

function parseGrantBody(bytes: Uint8Array): number {
  const body = parseJsonBody(bytes, "the body", smallJsonShape, 'the body must be JSON {"ttlMs": N}');
  const { ttlMs } = jsonObject(body, 'the body {"ttlMs": N}', ["ttlMs"]);
  if (typeof ttlMs !== "number" || !Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > leaseTtlMsMax) {
    const got = typeof ttlMs === "number" ? String(ttlMs) : (JSON.stringify(ttlMs) ?? "nothing");
    throw new KvError("bad_request", `'ttlMs' must be a whole number of milliseconds from 1 to ${leaseTtlMsMax}, got ${got}`);
  }
  return ttlMs;
}
