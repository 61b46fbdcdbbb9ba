/**
 * What stands in front of the client API's routes: the bearer-token check, the request-duration
 * metrics, and shutdown (new requests refused, requests in flight counted so shutdown can wait for
 * their answers). The routes themselves are in app.ts; this wraps `app.handle`.
 */
import type { KvNodeApi } from "../node/api.ts";
import type { MetricsRegistry } from "../lib/metrics.ts";
import { KvError } from "../lib/kv-error.ts";
import { LATENCY_BUCKETS_S } from "../lib/metrics.ts";
import { createRateLimitedLog } from "../lib/rate-limited-log.ts";
import { secretsEqual } from "../lib/secret.ts";
import { createHttpApp, type HttpAppOptions, VALUE_BYTES_MAX_DEFAULT } from "./app.ts";
import { errorResponse, shuttingDownResponse, unauthenticatedResponse } from "./http-error.ts";
import { rawTarget } from "./raw-target.ts";
import { txnBodyBytesMax } from "./txn-route.ts";
import { wasRefusedUnread } from "./unread-refusals.ts";
import { untilStreamEnds } from "./stream-end.ts";

/**
 * After an error answer to a request whose body was left unread (413, 401, a refusal while shutting
 * down), the rest of the body is read and discarded, up to this many bytes, before the connection
 * closes ("lingering close", as nginx and Go's net/http do). Closing with unread bytes in the socket
 * makes the kernel send a reset, and a client that writes its whole body before reading (Node's
 * fetch, Python's http.client) then sees EPIPE or ECONNRESET instead of the answer.
 */
export const LINGER_BYTES_MAX = 16 << 20;
/** How long a lingering close reads and discards before it closes the connection anyway. */
export const LINGER_MS_MAX = 5_000;
const LINGER: Linger = { bytesMax: LINGER_BYTES_MAX, msMax: LINGER_MS_MAX };

/** The client API's options: limits, and who may call it. */
export interface HttpHandlerOptions extends Omit<HttpAppOptions, "renderMetrics"> {
  /**
   * When set, every request but `/health` needs `Authorization: Bearer <authToken>`; without it the
   * answer is 401 `unauthenticated`. `/status` and `/metrics` too, unless `metricsOpen`.
   */
  readonly authToken?: string;
  /** Serve `/status` and `/metrics` without the token (for scrapers and load balancers). */
  readonly metricsOpen?: boolean;
  /** Where request metrics go; also what `/metrics` renders. Without it there is no /metrics route. */
  readonly metrics?: MetricsRegistry;
  /**
   * Where a line goes for each request refused for its bearer token (rate-limited: the first of a
   * kind at once, then one per {@link AUTH_REFUSAL_LOG_INTERVAL_MS}), naming `clientAddress`'s answer.
   */
  readonly logRefusal?: (line: string) => void;
  /** Says what a client cannot be told: a backup stream that broke off midway (see HttpAppOptions). */
  readonly logStreamFailure?: (event: string, fields: Record<string, unknown>) => void;
  /** The address a request came from, when known (only asked for a refused request). */
  readonly clientAddress?: (request: Request) => string | undefined;
}

/** The shortest time between two log lines about client requests refused for one reason. */
export const AUTH_REFUSAL_LOG_INTERVAL_MS = 10_000;

/** The client API as one fetch handler. */
export interface HttpHandler {
  /** Answers one request; never rejects. */
  handle(request: Request): Promise<Response>;
  /** From now on every new request is answered 503 `unavailable` with `Connection: close`. */
  beginShutdown(): void;
  /** Requests being answered right now. */
  inflightRequests(): number;
  /** Event streams (watches) still being sent. */
  openStreams(): number;
  /**
   * Resolves once no request is in flight and no event stream (a watch) is still being sent (at
   * once when none is): a stream's answer leaves the handler with its headers, and its last events
   * after. Shutdown waits for this before closing connections.
   */
  idle(): Promise<void>;
}

/** The routes a request's metrics are labelled with: a fixed set, never the raw path. */
export type RouteLabel =
  | "/kv/{key}"
  | "/kv"
  | "/status"
  | "/hash"
  | "/health"
  | "/metrics"
  | "/leader/transfer"
  | "/watch"
  | "/snapshot"
  | "/txn"
  | "/members"
  | "/members/{id}"
  | "/members/{id}/promote"
  | "/leases"
  | "/leases/{id}"
  | "/leases/{id}/keepalive"
  | "/openapi.json"
  | "other";

/**
 * Elysia 1.4 finds the path by searching for "/" from index 11 of `request.url`, which assumes an
 * authority of at least 4 characters after "http://": with `Host: x` it would route
 * `http://x/kv/big` as `/big`. A request with a shorter authority is re-addressed to a placeholder
 * host (the routes read only the raw path and query, never the host); every other one passes as is.
 */
function withRoutableUrl(request: Request): Request {
  const url = request.url;
  const schemeEnd = url.indexOf("://");
  const pathStart = url.indexOf("/", schemeEnd + 3);
  if (schemeEnd !== -1 && pathStart >= 11) return request;
  const { path, search } = rawTarget(url);
  return new Request(`http://kv.invalid${path}${search}`, request);
}

/** A request's method as a metric label: the ones the API serves, and "other" for the rest (a label's values stay few). */
function methodLabel(method: string): string {
  switch (method) {
    case "GET":
    case "PUT":
    case "POST":
    case "DELETE":
    case "HEAD":
      return method;
    default:
      return "other";
  }
}

/** Whether a request declares a body: a non-zero Content-Length, or chunked transfer. */
function carriesBody(request: Request): boolean {
  const length = request.headers.get("content-length");
  if (length !== null) return length.trim() !== "0";
  return request.headers.has("transfer-encoding");
}

/**
 * Which route a raw path belongs to, for metric labels: every documented route by its template
 * (found in a black-box review: /members, /leases and their ids were "other", and a listing or a
 * delete by prefix, `/kv`, counted as `/kv/{key}`).
 */
export function routeLabel(path: string): RouteLabel {
  if (path.startsWith("/kv/")) return "/kv/{key}";
  const trimmed = path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path;
  switch (trimmed) {
    case "/kv":
    case "/status":
    case "/hash":
    case "/health":
    case "/metrics":
    case "/leader/transfer":
    case "/watch":
    case "/snapshot":
    case "/txn":
    case "/members":
    case "/leases":
    case "/openapi.json":
      return trimmed;
  }
  const member = /^\/members\/[^/]+(\/promote)?$/.exec(trimmed);
  if (member !== null) return member[1] === undefined ? "/members/{id}" : "/members/{id}/promote";
  const lease = /^\/leases\/[^/]+(\/keepalive)?$/.exec(trimmed);
  if (lease !== null) return lease[1] === undefined ? "/leases/{id}" : "/leases/{id}/keepalive";
  return "other";
}

/**
 * `response` with `Connection: close`, whose body ends only once the request's unread body has been
 * read and discarded (up to `linger`'s bytes or time): Bun closes the connection when the response
 * ends, and by then the socket holds no unread bytes that would reset it. The answer's bytes go out
 * at once; only its end waits.
 */
async function lingeringResponse(request: Request, response: Response, linger: Linger): Promise<Response> {
  const headers = new Headers(response.headers);
  headers.set("connection", "close");
  const body = request.body;
  if (body === null || body.locked) return new Response(response.body, { status: response.status, headers });
  const answer = new Uint8Array(await response.arrayBuffer()); // error answers: a few hundred bytes of JSON
  headers.delete("content-length"); // a streamed body goes out chunked
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      if (answer.byteLength > 0) controller.enqueue(answer);
      void discardBody(body, linger).then(() => {
        try {
          controller.close();
        } catch {
          // Bun cancelled the answer's stream already: the client went away.
        }
      });
    },
  });
  return new Response(stream, { status: response.status, headers });
}

/** How much of an unread body a lingering close reads and discards at most. */
export interface Linger {
  readonly bytesMax: number;
  readonly msMax: number;
}

/** Reads and drops a request body until it ends, or `linger`'s bytes or time pass; never rejects. */
async function discardBody(body: ReadableStream<Uint8Array>, linger: Linger): Promise<void> {
  const reader = body.getReader();
  const timer = setTimeout(() => void reader.cancel().catch(() => undefined), linger.msMax);
  let discardedBytes = 0;
  try {
    while (discardedBytes <= linger.bytesMax) {
      const { done, value } = await reader.read();
      if (done) break;
      discardedBytes += value.byteLength;
    }
  } catch {
    // The client hung up, or the deadline cancelled the read: either way there is nothing left to wait for.
  } finally {
    clearTimeout(timer);
  }
}

/**
 * How much of `request`'s unread body its lingering close discards. A write refused before its
 * body was read, within its limits (a follower's redirect of a large one: unread-refusals.ts), is
 * answered with something the client must get whole: the rest of the body is discarded for as
 * long, and as many bytes, as reading it would have been allowed (the largest transaction's body).
 * Any other (a 413, a 401) gets the error's bound.
 */
export function lingerFor(request: Request, options: Pick<HttpHandlerOptions, "valueBytesMax" | "bodyReadTimeoutMs">): Linger {
  if (!wasRefusedUnread(request)) return LINGER;
  return {
    bytesMax: Math.max(LINGER_BYTES_MAX, txnBodyBytesMax(options.valueBytesMax ?? VALUE_BYTES_MAX_DEFAULT)),
    msMax: Math.max(LINGER_MS_MAX, options.bodyReadTimeoutMs ?? 0),
  };
}

export function createHttpHandler(node: KvNodeApi, options: HttpHandlerOptions = {}): HttpHandler {
  const registry = options.metrics;
  const stopping = new AbortController();
  const app = createHttpApp(node, {
    stopping: stopping.signal,
    ...(options.valueBytesMax === undefined ? {} : { valueBytesMax: options.valueBytesMax }),
    ...(options.keyBytesMax === undefined ? {} : { keyBytesMax: options.keyBytesMax }),
    ...(options.bodyReadTimeoutMs === undefined ? {} : { bodyReadTimeoutMs: options.bodyReadTimeoutMs }),
    ...(options.bodyAdmission === undefined ? {} : { bodyAdmission: options.bodyAdmission }),
    ...(options.joinCheck === undefined ? {} : { joinCheck: options.joinCheck }),
    ...(options.logStreamFailure === undefined ? {} : { logStreamFailure: options.logStreamFailure }),
    ...(registry === undefined ? {} : { renderMetrics: () => registry.render() }),
  });
  const requestDuration = registry?.histogram(
    "kv_http_request_duration_seconds",
    "Client API requests by route (its template), method and HTTP status: time from arrival to the response's headers.",
    LATENCY_BUCKETS_S,
    ["route", "method", "status"],
  );
  let inflight = 0;
  /** Event streams whose body has not ended: each ends after its last event (see `idle`). */
  let openStreams = 0;
  let shuttingDown = false;
  let idleWaiters: (() => void)[] = [];
  const wakeIdleWaiters = () => {
    if (inflight !== 0 || openStreams !== 0) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const resolve of waiters) resolve();
  };
  /** `response` (an event stream), counted in `openStreams` until its body ends or is cancelled. */
  const countedStream = (response: Response): Response => {
    const body = response.body;
    if (body === null || response.headers.get("content-type")?.startsWith("text/event-stream") !== true) return response;
    openStreams++;
    let open = true;
    const ended = () => {
      if (!open) return;
      open = false;
      openStreams--;
      wakeIdleWaiters();
    };
    return new Response(untilStreamEnds(body, ended), response);
  };
  registry?.collected("kv_http_requests_inflight", "Client API requests being answered now.", "gauge", [], () => [[{}, inflight]]);

  const authToken = options.authToken;
  // Refused requests are said in the log, by kind and address, so a client with a stale token (or
  // one guessing) shows up there, not only as a count of 401s (found in a black-box review).
  const logRefusal = options.logRefusal === undefined ? undefined : createRateLimitedLog<string>(options.logRefusal, AUTH_REFUSAL_LOG_INTERVAL_MS, "requests");
  function refused(request: Request, why: string, message: string): Response {
    logRefusal?.(why, () => `refused a client request from ${options.clientAddress?.(request) ?? "an unknown address"}: ${why} (${request.method} ${rawTarget(request.url).path.slice(0, 100)})`);
    return unauthenticatedResponse(message);
  }
  function refusal(request: Request, route: RouteLabel): Response | undefined {
    if (authToken === undefined || route === "/health") return undefined;
    if (options.metricsOpen === true && (route === "/status" || route === "/metrics")) return undefined;
    const header = request.headers.get("authorization");
    if (header === null) {
      // curl -L drops the header when a follower's 307 names another host or port (found in a black-box walkthrough).
      return refused(request, "no bearer token", "this node requires a bearer token: send Authorization: Bearer <token> (curl -L drops it on a redirect to another node: use --location-trusted)");
    }
    const match = /^Bearer +(\S+) *$/i.exec(header);
    if (match === null) return refused(request, "an Authorization header that is not Bearer <token>", "the Authorization header must be: Bearer <token>");
    if (!secretsEqual(match[1] as string, authToken)) return refused(request, "a wrong bearer token", "the bearer token is wrong");
    return undefined;
  }

  async function answer(request: Request, route: RouteLabel): Promise<Response> {
    if (shuttingDown) return finish(request, shuttingDownResponse());
    const refused = refusal(request, route);
    if (refused !== undefined) return finish(request, refused);
    // A fragment is never sent by a client that follows HTTP; sent raw, it cut a key short and took
    // its ?ifVersion with it (found in a black-box review).
    if (request.url.includes("#")) return finish(request, errorResponse(new KvError("bad_request", "the request target holds a '#': a fragment is not sent to a server; send '#' in a key as %23"), request));
    const routed = withRoutableUrl(request);
    let response: Response;
    try {
      response = await app.handle(routed);
    } catch (error) {
      // Elysia maps route errors itself (app.ts); reaching here is a bug, answered as one.
      response = errorResponse(error, request);
    }
    return finish(routed, response);
  }

  /**
   * Requests that were waiting on the node when shutdown began get their error, and the connection
   * closes after it so the client does not send more here. An error answer to a request with a body
   * (a refused or oversized upload, whose body may be partly unread) closes it too, after a
   * lingering close: Bun itself would read and discard whatever the client still sends, for as long
   * as it sends.
   */
  async function finish(request: Request, response: Response): Promise<Response> {
    if (carriesBody(request) && (response.status >= 400 || !request.bodyUsed || shuttingDown)) {
      return lingeringResponse(request, response, lingerFor(request, options));
    }
    if (shuttingDown) response.headers.set("connection", "close");
    return response;
  }

  return {
    async handle(request) {
      const startedMs = performance.now();
      const route = routeLabel(rawTarget(request.url).path);
      inflight++;
      try {
        const response = countedStream(await answer(request, route));
        // A client that hung up before its answer (Bun aborts request.signal) is counted as 499, as
        // nginx logs it: its upload failing partway is not a bad request, and nobody reads the answer.
        const status = request.signal.aborted ? "499" : String(response.status);
        requestDuration?.observe({ route, method: methodLabel(request.method), status }, (performance.now() - startedMs) / 1000);
        return response;
      } finally {
        inflight--;
        wakeIdleWaiters();
      }
    },
    beginShutdown() {
      shuttingDown = true;
      stopping.abort();
    },
    inflightRequests: () => inflight,
    openStreams: () => openStreams,
    idle() {
      if (inflight === 0 && openStreams === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
  };
}
