import { unreachable } from "../lib/assert.ts";
import { KvError, type KvErrorDetails } from "../lib/kv-error.ts";
import { isStorageCorruption } from "../lib/storage-damage.ts";
import { rawTarget } from "./raw-target.ts";

/** The JSON body of every error response: a stable code, a sentence for people, and the error's details. */
export interface HttpErrorBody extends KvErrorDetails {
  readonly error: string;
  readonly message: string;
}

/** A JSON response with the given status and extra headers. */
export function jsonResponse(body: unknown, status: number, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/**
 * GET's answer made HEAD's: its status and headers, `Content-Length` the length of the body it
 * would send, and no body (a bodiless Response alone says 0). For the small answers built whole.
 */
export async function headOf(response: Response): Promise<Response> {
  const length = (await response.arrayBuffer()).byteLength;
  const headers = new Headers(response.headers);
  headers.set("content-length", String(length));
  return new Response(null, { status: response.status, headers });
}

/** What the route knew when the error happened, for headers the error itself cannot carry. */
export interface ErrorContext {
  /** The methods the matched route accepts, for the `Allow` header of a 405; undefined when no route matched. */
  readonly allow?: string;
}

/**
 * The one place where errors become HTTP responses. A `KvError` maps by its code; anything else
 * thrown is a bug: it is logged to stderr once and answered with a 500 `internal`, never rethrown.
 */
export function errorResponse(error: unknown, request: Request, context: ErrorContext = {}): Response {
  if (!(error instanceof KvError)) return internalErrorResponse(error, request);
  const { code, details } = error;
  switch (code) {
    case "not_leader": {
      const leaderUrl = details.leaderUrl;
      if (leaderUrl === undefined || !URL.canParse(leaderUrl)) {
        return noLeaderResponse(`${error.message} (the leader's URL is not known)`, details);
      }
      // 307, not 302: the client must resend the same method and body to the leader.
      const { path, search } = rawTarget(request.url);
      const location = `${leaderUrl.replace(/\/+$/, "")}${path}${search}`;
      return jsonResponse(body("not_leader", error.message, details), 307, { location });
    }
    case "no_leader":
      return noLeaderResponse(error.message, details);
    case "proposal_dropped": {
      const seconds = retryAfterS(details);
      return jsonResponse(body(code, error.message, { ...details, retryAfterS: seconds }), 503, { "retry-after": String(seconds) });
    }
    case "timeout":
      // A read changes nothing: its timeout says so itself (src/node/waiter.ts).
      if (request.method === "GET" || request.method === "HEAD") return jsonResponse(body("timeout", error.message, details), 503);
      // Said once: most node timeouts already say their outcome is unknown (found in a black-box review).
      return jsonResponse(
        body("timeout", `${error.message} (${error.message.includes("outcome is unknown") ? "" : "the outcome is unknown: "}the operation may or may not have taken effect)`, details),
        503,
      );
    case "too_large":
      return jsonResponse(body(code, error.message, details), 413);
    case "bad_request":
      return jsonResponse(body(code, error.message, details), 400);
    case "request_timeout":
      // The client is still sending (slowly): close rather than wait for the rest of its body.
      return jsonResponse(body(code, error.message, details), 408, { connection: "close" });
    case "not_found":
    case "lease_not_found":
      return jsonResponse(body(code, error.message, details), 404);
    case "method_not_allowed":
      return jsonResponse(
        body(code, error.message, details),
        405,
        context.allow === undefined ? {} : { allow: context.allow },
      );
    case "unavailable":
      return jsonResponse(
        body(code, error.message, details),
        503,
        details.retryAfterS === undefined ? {} : { "retry-after": String(retryAfterS(details)) },
      );
    case "insufficient_storage":
      return jsonResponse(body(code, error.message, details), 507, { "retry-after": String(retryAfterS(details)) });
    case "quota_exceeded":
      // No Retry-After: space is freed by deleting keys or raising the quota, not by waiting.
      return jsonResponse(body(code, error.message, details), 507);
    case "compacted":
      return jsonResponse(body(code, error.message, details), 410);
    case "idempotency_key_reused":
      return jsonResponse(body(code, error.message, details), 422);
    case "version_mismatch":
    case "conf_change_pending":
    case "member_exists":
    case "learner_not_ready":
    case "no_other_voter":
    case "unhealthy_cluster":
    case "upgrade_required":
      return jsonResponse(body(code, error.message, details), 409);
    case "overloaded":
      return jsonResponse(body(code, error.message, { ...details, retryAfterS: retryAfterS(details) }), 429, {
        "retry-after": String(retryAfterS(details)),
      });
    default:
      return unreachable(code, "unknown KvError code");
  }
}

/**
 * 401 for a client API request without the right bearer token. Not a `KvError` code: it is decided
 * before any route runs, and a node never throws it.
 */
export function unauthenticatedResponse(message: string): Response {
  return jsonResponse(body("unauthenticated", message, {}), 401, { "www-authenticate": 'Bearer realm="kv"' });
}

/** 503 `unavailable` for a request that arrives while the node shuts down; the connection is closed after it. */
export function shuttingDownResponse(): Response {
  return jsonResponse(body("unavailable", "the node is shutting down; retry on another node", { retryAfterS: 1 }), 503, {
    "retry-after": "1",
    connection: "close",
  });
}

function noLeaderResponse(message: string, details: KvErrorDetails): Response {
  const seconds = retryAfterS(details);
  return jsonResponse(body("no_leader", message, { ...details, retryAfterS: seconds }), 503, {
    "retry-after": String(seconds),
  });
}

function internalErrorResponse(error: unknown, request: Request): Response {
  const { path } = rawTarget(request.url);
  if (isStorageCorruption(error)) {
    // Damage on disk, not a bug: one line, no stack, and an answer that says so.
    const message = (error as Error).message;
    console.error(`kv http: ${request.method} ${path}: the data dir is damaged: ${message}`);
    return jsonResponse(body("corrupt", `this node's data is damaged on disk: ${message}; read from another node, and replace this one's data dir (docs/operations.md)`, {}), 500);
  }
  // Not a KvError: a bug in this process. Log it (once, here) and keep serving.
  console.error(`kv http: internal error serving ${request.method} ${path}:`, error);
  const message = error instanceof Error ? error.message : String(error);
  return jsonResponse(body("internal", `internal error: ${message}`, {}), 500);
}

/** Retry-After in whole seconds: the node's hint rounded up, or 1 when it gave none. */
function retryAfterS(details: KvErrorDetails): number {
  const seconds = details.retryAfterS;
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return 1;
  return Math.ceil(seconds);
}

function body(error: string, message: string, details: KvErrorDetails): HttpErrorBody {
  return { error, message, ...details };
}
