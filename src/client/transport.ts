/**
 * The client's request engine: sends one logical call to a kv cluster, finding the leader (following
 * 307s by hand, so the Authorization header goes along: fetch drops it on a cross-origin redirect),
 * remembering it, moving to the next endpoint when one does not answer, and retrying only what is
 * safe to retry. Talks to nodes over HTTP only.
 */
import { KvClientError, UnknownOutcomeError } from "./errors.ts";
import { answerOutcome, errorCodeOf, isRetryableRefusal } from "./outcome.ts";
import { FailureTally } from "./failure-tally.ts";
import { describeInput } from "./values.ts";

/**
 * How a call may be retried:
 * - `read`: changes nothing; retried freely.
 * - `idempotent`: a write carrying an `Idempotency-Key`, retried after an unknown outcome too, since
 *   the cluster applies one key's request at most once; or one whose repeat does no harm (a lease's
 *   grant, keepalive or revoke). A revoke's retry is refused `lease_not_found` if an earlier attempt
 *   applied, so there (`refusedOnceApplied`) a refusal after an unknown outcome is unknown too.
 * - `once`: a write without one (membership, leadership transfer); retried only after a refusal that
 *   proves nothing was done, and reported as unknown at the first unknown outcome.
 */
export type CallSafety = "read" | "idempotent" | "once";

/** One logical call. */
export interface Call {
  readonly method: "GET" | "PUT" | "POST" | "DELETE";
  /** Path and query, starting with `/`. */
  readonly path: string;
  readonly body?: Uint8Array | string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly safety: CallSafety;
  /** The `Idempotency-Key` sent with an `idempotent` call (reported in `UnknownOutcomeError`). */
  readonly idempotencyKey?: string;
  /** This call's budget, retries included, in place of the client's `timeoutMs` (a caller's own, or a lease keepalive racing its TTL). */
  readonly timeoutMs?: number;
  /**
   * Each attempt gets at most a quarter of `timeoutMs` (a keepalive racing its lease's TTL: a
   * leader that stopped answering must leave time to reach the next one). Not for a caller's own
   * budget, whose attempts wait as long as the client's (found in review: a 400 ms budget cut each
   * attempt to 100 ms, and a healthy node answering in 150 ms made a put of unknown outcome).
   */
  readonly attemptsShareBudget?: boolean;
  /**
   * The caller's abort: the call stops at once. A read, or a write no attempt of which may have
   * reached a node, rejects with the signal's reason; a write that may have is of unknown outcome.
   */
  readonly signal?: AbortSignal;
  /**
   * An earlier attempt that applied makes a retry refused (a lease's revoke: `lease_not_found`), and
   * the call carries no key to be answered the first answer again: a refusal after an attempt whose
   * outcome is unknown is then unknown too.
   */
  readonly refusedOnceApplied?: boolean;
}

/**
 * What every call of the key-value API takes besides its own options: a budget and an abort, as a
 * context's deadline and cancellation in etcd's clients.
 */
export interface CallOptions {
  /** This call's budget, retries included, in place of the client's `timeoutMs` (for `deletePrefix`, each of its requests'). */
  readonly timeoutMs?: number;
  /**
   * Stops the call at once. A read, or a write none of whose attempts may have reached a node,
   * rejects with the signal's reason; a write that may have been applied throws
   * `UnknownOutcomeError`, as when its budget runs out.
   */
  readonly signal?: AbortSignal;
}

/** A call's `timeoutMs` and `signal`, checked, as the transport takes them. */
export function callOptions(options: CallOptions): { timeoutMs?: number; signal?: AbortSignal } {
  const { timeoutMs, signal } = options;
  if (timeoutMs !== undefined && !(Number.isSafeInteger(timeoutMs) && timeoutMs >= 1)) throw new KvClientError("bad_request", 0, `timeoutMs must be a whole number of milliseconds, at least 1, got ${String(timeoutMs)}`);
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new KvClientError("bad_request", 0, `signal must be an AbortSignal, got ${describeInput(signal)}`);
  return { ...(timeoutMs === undefined ? {} : { timeoutMs }), ...(signal === undefined ? {} : { signal }) };
}

/** A complete HTTP answer, with the origin that gave it. */
export interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Uint8Array;
  readonly origin: string;
}

/** Settings of a transport, checked by `createTransport`. */
export interface TransportOptions {
  readonly endpoints: readonly string[];
  readonly authToken: string | undefined;
  /** Budget of one call, retries included. */
  readonly timeoutMs: number;
  /** Longest wait for one answer before the call moves to the next endpoint. */
  readonly attemptTimeoutMs: number;
  /** The fetch to send with (default: the global one). */
  readonly fetch?: typeof fetch;
  /**
   * Whether `fetch` sends through Bun's global fetch, whose requests at once are capped (true
   * unless the caller gave its own fetch: one made only to trust a CA still is the global one).
   */
  readonly globalFetch: boolean;
  /** See `RESENT_WITHIN_MS` (the default); tests shorten it. */
  readonly resentWithinMs?: number;
}

/**
 * When each origin last answered a request of this process: Bun's fetch may hold a kept-alive
 * connection to it (its pool is the process's, shared by every client), and a write refused there
 * within `RESENT_WITHIN_MS` may have gone out on that connection first (see `exchange`).
 */
const answeredOrigins = new Map<string, number>();
/**
 * How long after an origin's last answer a refused write there may be Bun's second try of it. The
 * second try comes when a connection closes under a request just written on it: a node that died
 * during the traffic. Long after, its connections' closes were seen and the pool holds none, and a
 * refusal is certain again (found in review: marked for good, a long-running client's writes in an
 * outage all ended of unknown outcome, no_leader answers included).
 */
const RESENT_WITHIN_MS = 5_000;

/**
 * Where a 307 from `from` naming `location` may be followed, with the client's token, or why not:
 * only to an http(s) URL without a user or password in it, and never from https to plain http.
 * (Found in a security review: a Location of `file:///...` made a get answer a local file's bytes as
 * the key's value, and one to `http://` from an `https://` endpoint sent the token in clear.)
 */
export function redirectTarget(from: string, location: string): URL | string {
  let next: URL;
  try {
    next = new URL(location, from);
  } catch {
    return `307 to an unusable Location '${location.slice(0, 100)}'`;
  }
  if (next.protocol !== "http:" && next.protocol !== "https:") return `307 to a ${next.protocol.slice(0, 20)} URL, not followed (only http and https)`;
  if (next.protocol === "http:" && new URL(from).protocol === "https:") return `307 from https to plain http (${next.origin}), not followed: the token would go in clear`;
  if (next.username !== "" || next.password !== "") return "307 to a URL holding a user or password, not followed";
  return next;
}

/** Redirects one attempt follows before giving up on it. */
const REDIRECT_HOPS_MAX = 5;
/** Pause between passes over the endpoints (an election here takes a few hundred ms), doubling to the max. */
const BACKOFF_MS_MIN = 10;
const BACKOFF_MS_MAX = 200;
/**
 * No attempt starts with less time left than this: a timeout cannot tell a request never sent from
 * one sent and not answered, so an attempt cut off before it could connect would make a write's
 * outcome look unknown for nothing.
 */
const ATTEMPT_MS_MIN = 50;
/**
 * How long an endpoint that gave no answer (refused, timed out, cut off) is asked only after the
 * others. Followers serve reads, so a read-only client never learns a leader to ask first: without
 * this, it waited a whole attempt on a paused node once every pass round the endpoints (found in
 * review).
 */
const SUSPECT_MS = 3_000;
/** Attempt descriptions kept for error messages. */
const ATTEMPTS_KEPT_MAX = 8;

/** Sends calls to a cluster; shared by every call of one client, so one redirect teaches all of them. */
export class Transport {
  /** The origin believed to lead (learned from a redirect or a served write); asked first. */
  leaderOrigin: string | undefined;
  private rotation = 0;
  /** Endpoints that gave no answer lately, until when they are asked last (`SUSPECT_MS`). */
  private readonly suspects = new Map<string, number>();

  /** Aborted by `close()`, with a `closed` error as its reason: every call and stream of the client ends. */
  private readonly closing = new AbortController();
  constructor(readonly options: TransportOptions) {}

  /**
   * Closes the transport: calls under way end as their signal's abort does (a read, or a write no
   * attempt of which may have reached a node, rejects with `closed`; one that may have is of
   * unknown outcome), streams and lease keepers (which watch `closedSignal`) end, and every later
   * call is refused `closed` before anything is sent.
   */
  close(): void {
    if (!this.closing.signal.aborted) this.closing.abort(new KvClientError("closed", 0, "the client was closed: nothing more is sent"));
  }

  /** Aborts once the transport is closed. */
  get closedSignal(): AbortSignal {
    return this.closing.signal;
  }

  /** `signal` joined with the transport's own closing: aborts when either does. */
  withClosing(signal: AbortSignal | undefined): AbortSignal {
    return signal === undefined ? this.closing.signal : AbortSignal.any([signal, this.closing.signal]);
  }

  /**
   * Sends `call` until it is served or refused for good, within `timeoutMs`. Resolves with the
   * answer of a served call (200, or 404 to a read) or a refusal that retrying would not change
   * (4xx); throws `UnknownOutcomeError` when a write's outcome stays unknown, and `KvClientError`
   * when nothing answered (`unreachable`) or a passing refusal (`no_leader`) outlasted the budget.
   */
  async send(call: Call): Promise<Answer> {
    const timeoutMs = call.timeoutMs ?? this.options.timeoutMs;
    this.closing.signal.throwIfAborted(); // closed: nothing sent
    call.signal?.throwIfAborted(); // nothing sent
    // Every attempt ends when the caller aborts or the client closes.
    const signal = this.withClosing(call.signal);
    call = { ...call, signal };
    const deadlineMs = performance.now() + timeoutMs;
    const noted = new FailureTally(ATTEMPTS_KEPT_MAX);
    let uncertain = false; // some attempt of this write may have been applied
    let onlyRedirectLoops = true; // every attempt so far ended in a redirect loop
    let lastRefusal: Answer | undefined;
    // Every attempt so far failed its TLS handshake on a certificate or scheme: retrying changes nothing.
    let onlyTlsFailures = true;
    // ... on a certificate: final at once. A TLS alert (EPROTO: plain HTTP on the port, or a server's
    // passing error during a restart) is final only when a second pass meets it too (found in review).
    let onlyCertificateFailures = true;
    const attemptMsMin = Math.min(ATTEMPT_MS_MIN, timeoutMs);
    for (let pass = 0; ; pass++) {
      // The longest `Retry-After` an overloaded node (429) asked for in this pass.
      let retryAfterMs = 0;
      for (const [i, endpoint] of this.order().entries()) {
        if ((pass > 0 || i > 0) && deadlineMs - performance.now() < attemptMsMin) break; // the first attempt always goes
        if (aborted(signal)) throw abortedCall(call, signal, uncertain, noted);
        const result = await this.attempt(call, endpoint, deadlineMs);
        // The caller gave up (an attempt it cut short comes back lost, and proves nothing of the
        // endpoint): a write an attempt may have delivered is of unknown outcome, anything else ends
        // with the signal's reason, at once (found in review: the pass's backoff, up to a
        // Retry-After, ran first).
        if (aborted(signal) && result.kind !== "answer") {
          if (result.kind === "lost" && call.safety !== "read") uncertain = true;
          throw abortedCall(call, signal, uncertain, noted);
        }
        // Only an endpoint's own handshake counts: a leader a redirect named may be the one with the
        // bad certificate, and leadership moves on (found in review).
        if (result.kind !== "unreachable" || result.tls === undefined || (result.origin !== undefined && result.origin !== endpoint)) onlyTlsFailures = false;
        else if (result.tls !== "certificate") onlyCertificateFailures = false;
        switch (result.kind) {
          case "answer": {
            onlyRedirectLoops = false;
            this.suspects.delete(endpoint);
            this.suspects.delete(result.answer.origin);
            const answer = result.answer;
            const code = answer.status === 200 ? undefined : errorCodeOf(answer.body);
            const outcome = answerOutcome(call.method, answer.status, code);
            if (outcome === "done") {
              if (call.safety !== "read" && answer.status === 200) this.leaderOrigin = answer.origin;
              return answer;
            }
            if (outcome === "unknown") {
              noted.note(`${answer.origin}: ${answer.status} ${code ?? ""}`.trimEnd());
              this.forget(answer.origin);
              if (call.safety === "once") throw unknownOutcome(call, noted.lines());
              if (call.safety === "idempotent") uncertain = true;
              continue;
            }
            if (isRetryableRefusal(answer.status, code)) {
              noted.note(`${answer.origin}: ${answer.status} ${code ?? ""}`.trimEnd());
              lastRefusal = answer;
              // Only an overloaded node's: a 503 no_leader's names a second, and an election takes less.
              if (answer.status === 429) retryAfterMs = Math.max(retryAfterMs, retryAfterMsOf(answer.headers));
              if (code === "no_leader") this.forget(answer.origin);
              continue;
            }
            // Without a key, an earlier attempt that may have applied can be what this refuses. With
            // one, a refusal the leader makes before it looks at the key's session can be too: the
            // session of an attempt that applied may not be applied on the leader yet (or gone).
            if (uncertain && ((call.refusedOnceApplied === true && call.idempotencyKey === undefined) || (code !== undefined && refusedBeforeSession.has(code)))) {
              noted.note(`${answer.origin}: ${answer.status} ${code ?? ""}`.trimEnd());
              throw unknownOutcome(call, noted.lines());
            }
            return answer; // a refusal for good: the caller turns it into a KvClientError
          }
          case "unreachable":
            onlyRedirectLoops = false;
            this.suspects.set(result.origin ?? endpoint, performance.now() + SUSPECT_MS);
            noted.note(`${result.origin ?? endpoint}: ${result.reason}`);
            this.forget(endpoint);
            continue;
          case "lost":
            onlyRedirectLoops = false;
            this.suspects.set(result.origin ?? endpoint, performance.now() + SUSPECT_MS);
            noted.note(`${endpoint}: ${result.reason}`);
            this.forget(endpoint);
            if (call.safety === "once") throw unknownOutcome(call, noted.lines());
            if (call.safety === "idempotent") uncertain = true;
            continue;
          case "redirect_loop":
            noted.note(`${endpoint}: ${result.reason}`);
            continue;
        }
      }
      // Every endpoint refused by its certificate, or spoke another scheme: said at once, not after
      // the whole budget of retries (found in a black-box review: 5 s and "×29" for a missing --cacert).
      if (onlyTlsFailures && noted.size > 0 && (onlyCertificateFailures || pass > 0)) {
        throw new KvClientError("tls_failed", 0, `no endpoint could be reached over TLS (${call.method} ${pathOnly(call.path)}): ${noted.lines().join("; ")}`);
      }
      const leftMs = deadlineMs - performance.now() - attemptMsMin;
      // Too little left for a pause worth the name: pausing for it only made a burst of attempts
      // at the budget's end, microseconds apart (seen in review).
      if (leftMs < BACKOFF_MS_MIN) break;
      // Let an election settle; or wait as long as a refusal asked (found in review: a node
      // answering 429 with Retry-After: 1 was asked again every 170 ms).
      await pause(Math.min(leftMs, Math.max(retryAfterMs, Math.min(BACKOFF_MS_MIN * 2 ** Math.min(pass, 5), BACKOFF_MS_MAX))), signal);
      if (aborted(signal)) throw abortedCall(call, signal, uncertain, noted);
    }
    if (aborted(signal)) throw abortedCall(call, signal, uncertain, noted);
    if (uncertain) throw unknownOutcome(call, noted.lines());
    if (lastRefusal !== undefined) throw errorFromAnswer(lastRefusal);
    if (onlyRedirectLoops && noted.size > 0) {
      throw new KvClientError("too_many_redirects", 0, `every endpoint answered ${call.method} ${pathOnly(call.path)} with redirects the client does not follow: ${noted.lines().join("; ")}`);
    }
    throw new KvClientError(
      "unreachable",
      0,
      `no endpoint could serve the request (${call.method} ${pathOnly(call.path)}) within ${timeoutMs} ms: ${noted.lines().join("; ")}`,
    );
  }

  /**
   * Sends `GET path` to one endpoint only (no redirects, no failover), for questions about that node
   * itself (`/status`). Throws `KvClientError` `unreachable` when it does not answer.
   */
  async sendTo(endpoint: string, path: string): Promise<Answer> {
    this.closing.signal.throwIfAborted(); // closed: nothing sent
    const result = await this.exchange("GET", endpoint, `${endpoint}${path}`, undefined, {}, performance.now() + this.options.timeoutMs, this.closing.signal, false);
    // Closed while it waited: ended at once, as calls are (found in review: it ran on to its timeout).
    this.closing.signal.throwIfAborted();
    if (result.kind === "answer") return result.answer;
    // Refused by its certificate: a setting no retry changes, said as `send` says it.
    if (result.kind === "unreachable" && result.tls === "certificate") throw new KvClientError("tls_failed", 0, `${endpoint}: ${result.reason}`);
    throw new KvClientError("unreachable", 0, `${endpoint}: ${result.reason}`);
  }

  /**
   * Where a stream (a watch) starts in the list: from a rotating place, so a process's streams spread
   * over the nodes, the first endpoint there not silent lately (as calls order them). Every watch
   * began at the first endpoint, and with it paused each waited out its idle timeout first (found in
   * a code review). A stream that breaks goes on to the next in the list, silent or not (a node down
   * for a moment may be the one whose history still reaches back far enough).
   */
  streamStart(): number {
    const { endpoints } = this.options;
    const from = this.rotation++ % endpoints.length;
    const nowMs = performance.now();
    for (let i = 0; i < endpoints.length; i++) {
      if ((this.suspects.get(endpoints[(from + i) % endpoints.length] as string) ?? 0) <= nowMs) return from + i;
    }
    return from;
  }

  /** An endpoint a stream found silent (no answer, or nothing within its idle timeout): tried last for a while, by calls and streams. */
  noteSilent(endpoint: string): void {
    this.suspects.set(endpoint, performance.now() + SUSPECT_MS);
  }

  /** The headers every request carries: `headers`, and the bearer token when the client has one. */
  withAuthorization(headers: Readonly<Record<string, string>>): Record<string, string> {
    return this.options.authToken === undefined ? { ...headers } : { ...headers, authorization: `Bearer ${this.options.authToken}` };
  }

  /** The fetch this transport sends with (streams such as `GET /watch` use it directly). */
  get fetch(): typeof fetch {
    return this.options.fetch ?? fetch;
  }

  /**
   * The endpoints to try this pass: the believed leader first, then the list from a rotating start,
   * those that gave no answer lately last.
   */
  private order(): string[] {
    const { endpoints } = this.options;
    const start = this.rotation++ % endpoints.length;
    const rotated = [...endpoints.slice(start), ...endpoints.slice(0, start)];
    const leader = this.leaderOrigin;
    const ordered = leader === undefined ? rotated : [leader, ...rotated.filter((endpoint) => endpoint !== leader)];
    if (this.suspects.size === 0) return ordered;
    const nowMs = performance.now();
    for (const [endpoint, untilMs] of this.suspects) if (untilMs <= nowMs) this.suspects.delete(endpoint);
    return [...ordered.filter((endpoint) => !this.suspects.has(endpoint)), ...ordered.filter((endpoint) => this.suspects.has(endpoint))];
  }

  /**
   * How long one attempt of `call` may wait: the client's `attemptTimeoutMs`, and for a call whose
   * attempts share its budget (a keepalive racing its lease's TTL) at most a quarter of that budget,
   * so a leader that stopped answering leaves time to reach the next one (an election takes a few
   * hundred ms); one attempt could otherwise spend the whole budget on it.
   */
  private attemptTimeoutMs(call: Call): number {
    const { attemptTimeoutMs } = this.options;
    if (call.timeoutMs === undefined || call.attemptsShareBudget !== true) return attemptTimeoutMs;
    return Math.min(attemptTimeoutMs, Math.max(ATTEMPT_MS_MIN, call.timeoutMs / 4));
  }

  private forget(origin: string): void {
    if (this.leaderOrigin === origin) this.leaderOrigin = undefined;
  }

  /** One attempt at one endpoint, following redirects to the leader. */
  private async attempt(call: Call, endpoint: string, deadlineMs: number): Promise<AttemptResult> {
    let origin = endpoint;
    let url = `${endpoint}${call.path}`;
    const attemptDeadlineMs = Math.min(deadlineMs, performance.now() + this.attemptTimeoutMs(call));
    for (let hop = 0; hop <= REDIRECT_HOPS_MAX; hop++) {
      const result = await this.exchange(call.method, origin, url, call.body, call.headers ?? {}, attemptDeadlineMs, call.signal, call.safety === "once");
      if (result.kind !== "answer") {
        if (hop > 0) this.forget(origin); // the leader a redirect named does not answer
        return result.kind === "redirect_loop" ? result : { ...result, origin };
      }
      const location = result.answer.headers.get("location");
      if (result.answer.status !== 307 || location === null) return result;
      const next = redirectTarget(url, location);
      if (typeof next === "string") return { kind: "redirect_loop", reason: next };
      // A 307 means a follower refused before proposing anything: following it is always safe.
      this.leaderOrigin = next.origin;
      origin = next.origin;
      url = next.toString();
    }
    return { kind: "redirect_loop", reason: `more than ${REDIRECT_HOPS_MAX} redirects` };
  }

  /** One HTTP exchange, classified by what it proves about delivery. */
  private async exchange(
    method: string,
    origin: string,
    url: string,
    body: Uint8Array | string | undefined,
    headers: Readonly<Record<string, string>>,
    deadlineMs: number,
    callerSignal: AbortSignal | undefined,
    /** On a connection of its own (a call that must not be sent twice: see below). */
    fresh: boolean,
  ): Promise<AttemptResult> {
    let response: Response;
    const timeout = AbortSignal.timeout(Math.max(1, deadlineMs - performance.now()));
    try {
      response = await this.fetch(url, {
        method,
        body,
        redirect: "manual",
        headers: this.withAuthorization(headers),
        signal: callerSignal === undefined ? timeout : AbortSignal.any([timeout, callerSignal]),
        ...(fresh ? { keepalive: false } : {}),
      });
    } catch (error) {
      // A refused connection carried nothing: the request certainly did not arrive. Anything else
      // (a timeout, a reset) may have come after the request was sent.
      const reason = describe(error) + (errorCode(error) === "ECONNRESET" && url.startsWith("http://") ? RESET_ON_HTTP_HINT : "");
      if (!isConnectionRefused(error)) return { kind: "lost", reason };
      const tls = tlsFailure(error);
      // Except that Bun's fetch, when a kept-alive connection closes under a request it sent there,
      // sends it again on a new connection and reports only how that one failed: refused, though the
      // first copy arrived (found in a black-box review: a put reported refused was applied). So a
      // write refused by a node this process had a connection with may have been delivered. A call on
      // a fresh connection has no such copy.
      if (tls === undefined && method !== "GET" && !fresh && performance.now() - (answeredOrigins.get(origin) ?? Number.NEGATIVE_INFINITY) < (this.options.resentWithinMs ?? RESENT_WITHIN_MS)) {
        return { kind: "lost", reason: `${reason} (refused on a new connection, after the request may have gone out on a kept-alive one)` };
      }
      return tls === undefined ? { kind: "unreachable", reason } : { kind: "unreachable", reason, tls };
    }
    answeredOrigins.set(origin, performance.now());
    try {
      return { kind: "answer", answer: { status: response.status, headers: response.headers, body: new Uint8Array(await response.arrayBuffer()), origin } };
    } catch (error) {
      return { kind: "lost", reason: `answer cut: ${describe(error)}` };
    }
  }
}

type AttemptResult =
  | { readonly kind: "answer"; readonly answer: Answer }
  /**
   * Nothing was delivered (connection refused) to `origin` (the endpoint, or a leader a redirect
   * named); `tls`: because its TLS handshake failed on the certificate or the scheme, which no
   * retry changes.
   */
  | { readonly kind: "unreachable"; readonly reason: string; readonly origin?: string; readonly tls?: "certificate" | "alert" }
  /** The request may have been delivered to `origin`, but no answer came (timeout, reset, cut body). */
  | { readonly kind: "lost"; readonly reason: string; readonly origin?: string }
  | { readonly kind: "redirect_loop"; readonly reason: string };

/**
 * Refusals the leader makes before it looks at a write's idempotency session (src/node/kv-node.ts:
 * the quota, a transaction's gets past what one answer carries; src/http/read-body.ts: a body that
 * did not arrive in time, 408). It skips the first two for a retry whose session it has applied, so
 * the retry gets the first answer; one whose session it has not applied yet can still get them while
 * an earlier attempt applied (found in review: the client reported a stored value as refused
 * `quota_exceeded`). A retry's slow body is refused whatever the session holds (found in review).
 * `upgrade_required` too (src/node/cluster-level.ts): a member restarted on an older release after
 * a first attempt applied has the retry refused whatever its session holds (found in review).
 */
const refusedBeforeSession: ReadonlySet<string> = new Set(["quota_exceeded", "too_large", "request_timeout", "upgrade_required"]);

/**
 * Whether nothing of the request left: the name did not resolve, the connection was refused, or
 * the TLS handshake failed before any of the request was sent, on the server's certificate (not
 * trusted, expired, another name) or on the server itself (`EPROTO`: an https:// URL for a port
 * that speaks plain HTTP). A write that met one certainly did not apply (it was reported as of
 * unknown outcome: found in review, and for the wrong scheme in a black-box review).
 */
function isConnectionRefused(error: unknown): boolean {
  const code = errorCode(error);
  return code === "ECONNREFUSED" || (code !== undefined && unresolvedCodes.has(code)) || tlsFailure(error) !== undefined;
}

/** How the TLS handshake failed, if it did: on the server's certificate (not trusted, expired, another name), or on an alert (`EPROTO`: most often a port that speaks plain HTTP). */
export function tlsFailure(error: unknown): "certificate" | "alert" | undefined {
  const code = errorCode(error);
  if (code === "EPROTO") return "alert";
  return code !== undefined && tlsCertificateCodes.test(code) ? "certificate" : undefined;
}

function errorCode(error: unknown): string | undefined {
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === "string" ? code : undefined;
}

/** Said with a reset connection to an http:// URL (found in a black-box review: nothing hinted at the scheme). */
const RESET_ON_HTTP_HINT = " (a node serving HTTPS resets a plain-HTTP connection: if it does, use its https:// URL, with --cacert for a private CA)";

/**
 * The codes of a name that did not resolve (getaddrinfo): no connection was even tried. A headless
 * service's DNS drops a stopped pod's name, so one endpoint of several can be this while the others
 * serve (found in review: a membership change gave up there as of unknown outcome). Not
 * `EHOSTUNREACH`: a connection that carried the request can end in it too, once retransmits fail.
 */
const unresolvedCodes: ReadonlySet<string> = new Set(["ENOTFOUND", "EAI_AGAIN", "EAI_NONAME", "EAI_FAIL"]);

/** The codes Bun's fetch gives a failed verification of the server's certificate (OpenSSL's names). */
const tlsCertificateCodes = /^(ERR_TLS_CERT_ALTNAME_INVALID|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|CERT_[A-Z_]+)$/;

function describe(error: unknown): string {
  if (error instanceof Error) return error.name === "TimeoutError" ? "no answer in time" : error.message;
  return String(error);
}

function pathOnly(path: string): string {
  const query = path.indexOf("?");
  return query < 0 ? path : path.slice(0, query);
}

function unknownOutcome(call: Call, attempts: readonly string[]): UnknownOutcomeError {
  return new UnknownOutcomeError(
    `the outcome of ${call.method} ${pathOnly(call.path)} is unknown: it may or may not have been applied (${attempts.join("; ")})` +
      (call.idempotencyKey === undefined ? "" : `; resend it with Idempotency-Key ${call.idempotencyKey} to apply it at most once`),
    call.idempotencyKey,
    attempts,
  );
}

/** Whether the caller's signal has aborted (a function: the compiler would take the flag read before an await for its value after). */
function aborted(signal: AbortSignal | undefined): signal is AbortSignal {
  return signal?.aborted === true;
}

/** What a call its caller aborted throws: unknown outcome when an attempt of a write may have been applied, else the signal's reason. */
function abortedCall(call: Call, signal: AbortSignal, uncertain: boolean, noted: FailureTally): unknown {
  if (!uncertain) return signal.reason;
  noted.note("then the call's signal aborted it");
  return unknownOutcome(call, noted.lines());
}

/** Sleeps `ms`, or until `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return Bun.sleep(ms); // backoff between passes
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A `Retry-After` of whole seconds (what kv sends) in ms, at most a minute; 0 when there is none. */
function retryAfterMsOf(headers: Headers): number {
  const text = headers.get("retry-after");
  if (text === null || !/^\d{1,6}$/.test(text.trim())) return 0;
  return Math.min(60_000, Number(text.trim()) * 1000);
}

/** A `KvClientError` from an error answer's JSON `{error, message, ...details}`. */
export function errorFromAnswer(answer: Answer): KvClientError {
  let parsed: Record<string, unknown> = {};
  try {
    const value = JSON.parse(new TextDecoder().decode(answer.body)) as unknown;
    if (typeof value === "object" && value !== null && !Array.isArray(value)) parsed = value as Record<string, unknown>;
  } catch {
    // not JSON: the status alone speaks
  }
  const { error, message, ...details } = parsed;
  const code = typeof error === "string" ? error : `http_${answer.status}`;
  return new KvClientError(code, answer.status, typeof message === "string" ? message : `HTTP ${answer.status} from ${answer.origin}`, details);
}
