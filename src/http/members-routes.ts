/**
 * The membership routes of the client API (thesis §4.1, one server at a time):
 * - `GET /members[?consistency=linearizable]` → `{members:[{id, peerUrl, httpUrl, role, addedIndex}],
 *   leaderId, configIndex}`: as this node applied it, or (linearizable) once it applied what the
 *   leader had committed when the request arrived.
 * - `POST /members` JSON `{id, peerUrl[, httpUrl]}` → adds a learner; answers once the change is
 *   applied on the leader, with the configuration after it (what `kv serve --join` records).
 * - `DELETE /members/{id}` → removes a member (of the leader itself: 307 to the leader it handed over to).
 * - `POST /members/{id}/promote` → makes a learner a voter (the leader also does it on its own once
 *   the learner has caught up).
 * On a follower a change is a 307 to the leader; `conf_change_pending` (409) while another change is
 * in flight, `member_exists` (409) for an id already in the configuration, 400 for bad input.
 */
import { Elysia } from "elysia";
import { membershipNodeIdMax, membershipUrlBytesMax } from "../kv/command.ts";
import { KvError } from "../lib/kv-error.ts";
import { isAddressOnly, isUnspecifiedHost } from "../lib/address-url.ts";
import type { KvNodeApi, MembersView } from "../node/api.ts";
import { errorResponse, headOf, jsonResponse } from "./http-error.ts";
import { jsonObject, parseJsonBody, refuseBody, smallJsonShape } from "./json-body.ts";
import { joinProofHolds } from "../lib/join-proof.ts";
import { memberParams, membersQuery, noQuery, routeDocs } from "./openapi.ts";
import { readBodyBytesMax } from "./read-body.ts";
import { parseQueryStrictly, singleParam } from "./kv-key.ts";
import { rawTarget } from "./raw-target.ts";

/** A join request is a few hundred bytes of JSON. */
const MEMBER_BODY_BYTES_MAX = 16 * 1024;

/** The routes as an Elysia plugin: `app.use(createMembersRoutes(node))`; a body must arrive within `bodyReadTimeoutMs`. */
export function createMembersRoutes(node: KvNodeApi, bodyReadTimeoutMs?: number, joinCheck?: { readonly token: string | undefined }) {
  const change = <T,>(method: T | undefined): T => {
    if (method === undefined) throw new KvError("not_found", "this node does not support membership changes");
    return method;
  };
  const list = async (request: Request): Promise<Response> => {
    // Its value and any other parameter were refused by the route's schema (membersQuery, openapi.ts).
    const consistency = singleParam(parseQueryStrictly(rawTarget(request.url).search), "consistency") ?? "stale";
    // A removed node's configuration is the one it last applied, stale from then on: clients would
    // trust it (found in a black-box review: kv member list through one showed an old membership).
    if (node.status().removed === true) throw new KvError("unavailable", "this node was removed from the cluster: ask another member for the configuration");
    let view: MembersView;
    if (consistency === "linearizable") {
      const current = node.currentMembers?.bind(node);
      if (current === undefined) throw new KvError("not_found", "this node does not report its members after a linearizable read");
      view = await current();
    } else {
      view = requireMembers(node)();
    }
    // Said in the answer, so a caller can tell it from an older node's, which ignores the parameter.
    const response = jsonResponse({ ...membersJson(view), ...(consistency === "linearizable" ? { consistency } : {}) }, 200);
    return request.method === "HEAD" ? headOf(response) : response;
  };
  const add = async (request: Request): Promise<Response> => {
    const { id, peerUrl, httpUrl, clusterTokenProof } = parseAddBody(await readBodyBytesMax(request, MEMBER_BODY_BYTES_MAX, bodyReadTimeoutMs, "the body"));
    // The leader calls a member with the cluster token: added without proof of holding it, a URL
    // of anyone's could be sent it (found in a security review: the client token alone got it).
    if (clusterTokenProof === undefined && joinCheck?.token !== undefined) {
      throw new KvError(
        "bad_request",
        `this cluster has a cluster token, so adding node ${id} needs 'clusterTokenProof', the proof of holding it: kv serve --join sends it, and kv member add sends it given --cluster-token (or $KV_CLUSTER_TOKEN); nothing was changed`,
      );
    }
    if (clusterTokenProof !== undefined && joinCheck !== undefined && !joinProofHolds(clusterTokenProof, joinCheck.token, id, peerUrl)) {
      throw new KvError(
        "bad_request",
        `node ${id} joins with ${joinCheck.token === undefined ? "a cluster token, and this cluster has none: start it without --cluster-token" : "another cluster token than this cluster's (or none): start it with the cluster's --cluster-token"}; nothing was changed`,
      );
    }
    return jsonResponse(membersJson(await change(node.addMember?.bind(node))(id, peerUrl, httpUrl)), 200);
  };
  const remove = async (request: Request, id: string): Promise<Response> => {
    await refuseBody(request, "DELETE /members/{id}", bodyReadTimeoutMs);
    return jsonResponse(membersJson(await change(node.removeMember?.bind(node))(parseId(id))), 200);
  };
  const promote = async (request: Request, id: string): Promise<Response> => {
    await refuseBody(request, "POST /members/{id}/promote", bodyReadTimeoutMs);
    return jsonResponse(membersJson(await change(node.promoteMember?.bind(node))(parseId(id))), 200);
  };
  /** Anything a route throws goes through the one error mapping. */
  const guarded =
    (handler: (context: RouteContext) => Promise<Response> | Response) =>
    async (context: RouteContext): Promise<Response> => {
      try {
        return await handler(context);
      } catch (error) {
        return errorResponse(error, context.request);
      }
    };
  const raw = { parse: "none" } as const;
  return new Elysia({ name: "kv-members" })
    .get("/members", guarded(({ request }) => list(request)), { ...raw, query: membersQuery, detail: routeDocs.members })
    .head("/members", guarded(({ request }) => list(request)), { ...raw, query: membersQuery })
    .post("/members", guarded(({ request }) => add(request)), { ...raw, query: noQuery, detail: routeDocs.memberAdd })
    .delete("/members/:id", guarded(({ request, params }) => remove(request, params.id ?? "")), { ...raw, query: noQuery, params: memberParams, detail: routeDocs.memberRemove })
    .post("/members/:id/promote", guarded(({ request, params }) => promote(request, params.id ?? "")), { ...raw, query: noQuery, params: memberParams, detail: routeDocs.memberPromote });
}

/** What a route here reads of Elysia's context: the request, and `{id}` where the path has one. */
interface RouteContext {
  readonly request: Request;
  readonly params: Readonly<Record<string, string | undefined>>;
}

function requireMembers(node: KvNodeApi): () => MembersView {
  const members = node.members?.bind(node);
  if (members === undefined) throw new KvError("not_found", "this node does not report its members");
  return members;
}

/** The JSON shape of a configuration (null for an unknown URL). */
export function membersJson(view: MembersView) {
  return {
    members: view.members.map((member) => ({ id: member.id, peerUrl: member.peerUrl, httpUrl: member.httpUrl ?? null, role: member.role ?? null, addedIndex: member.addedIndex ?? null })),
    leaderId: view.leaderId,
    configIndex: view.configIndex,
    ...(view.clusterId === undefined ? {} : { clusterId: view.clusterId }),
  };
}

function parseId(text: string): number {
  const id = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(id) || id < 1 || id > membershipNodeIdMax) {
    throw new KvError("bad_request", `a member id is a whole number from 1 to ${membershipNodeIdMax}, got '${text.slice(0, 32)}'`);
  }
  return id;
}

function parseAddBody(bytes: Uint8Array): { id: number; peerUrl: string; httpUrl?: string; clusterTokenProof?: string } {
  const body = parseJsonBody(bytes, "the body", smallJsonShape, 'the body must be JSON {"id": N, "peerUrl": "http://host:port"}');
  const { id, peerUrl, httpUrl, clusterTokenProof } = jsonObject(body, 'the body {"id", "peerUrl", "httpUrl"}', ["id", "peerUrl", "httpUrl", "clusterTokenProof"]);
  if (typeof id !== "number") throw new KvError("bad_request", "'id' must be a number");
  if (clusterTokenProof !== undefined && (typeof clusterTokenProof !== "string" || !/^[0-9a-f]{64}$/.test(clusterTokenProof))) {
    throw new KvError("bad_request", "'clusterTokenProof' must be 64 hex digits (kv serve --join sends it)");
  }
  return {
    id: parseId(String(id)),
    peerUrl: parseUrl("peerUrl", peerUrl),
    ...(httpUrl === undefined || httpUrl === null ? {} : { httpUrl: parseUrl("httpUrl", httpUrl) }),
    ...(clusterTokenProof === undefined ? {} : { clusterTokenProof }),
  };
}

function parseUrl(name: string, value: unknown): string {
  if (typeof value !== "string" || !URL.canParse(value)) throw new KvError("bad_request", `'${name}' must be an http(s) URL`);
  // The URL parser drops them, so a URL that holds them reads as another: it was recorded as typed,
  // nothing reached it, and its --join was refused as another address (found in a black-box review).
  if (/[\u0000-\u0020\u007f]/.test(value)) throw new KvError("bad_request", `'${name}' must not hold spaces or control characters, got ${JSON.stringify(value)}`);
  const url = new URL(value);
  if ((url.protocol !== "http:" && url.protocol !== "https:") || new TextEncoder().encode(value).byteLength > membershipUrlBytesMax) {
    throw new KvError("bad_request", `'${name}' must be an http(s) URL of at most ${membershipUrlBytesMax} bytes`);
  }
  // An address, as etcd takes one: a member is reached at its host and port, and the rest would be
  // stored, shown and sent as it came (credentials in /members, a path no peer serves).
  if (!isAddressOnly(url, value)) {
    throw new KvError("bad_request", `'${name}' must be only a scheme, host and port (http(s)://host:port), without a user, path, query or fragment`);
  }
  // A listening address, not one to reach: from another host it names that host (found in a
  // black-box review: a member recorded at http://0.0.0.0:port was reachable only on the same host).
  if (isUnspecifiedHost(url.hostname)) {
    throw new KvError("bad_request", `'${name}' names ${url.hostname}, which is where a node listens, not an address others reach it at: give its host name or IP (kv serve --advertise-peer, --advertise-http)`);
  }
  if (url.port === "0") throw new KvError("bad_request", `'${name}' names port 0, where a node listens on a port the OS picks, not one others reach it at`);
  return value.replace(/\/+$/, "");
}
