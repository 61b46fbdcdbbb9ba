/**
 * The two errors a kv client call throws. A call either succeeds, is refused (`KvClientError`: the
 * server's `{error, message}` code and HTTP status, or a code of the client's own such as
 * `unreachable`), or ends without knowing whether a write took effect (`UnknownOutcomeError`).
 * They are separate classes on purpose: code that catches refusals must not mistake an unknown
 * outcome for one.
 */

/** Codes the client itself gives, with status 0 (no HTTP answer said so). */
export type ClientSideCode =
  /** No endpoint could be reached (refused connections), or a read got no answer in time: nothing was done. */
  | "unreachable"
  /** Redirects went round in circles, pointed nowhere, or pointed where the client does not follow (not http(s), https to http, a URL with a user or password). */
  | "too_many_redirects"
  /**
   * Every endpoint failed its TLS handshake on the server's certificate (not trusted: give the CA;
   * expired; issued for another name) or spoke plain HTTP to an https:// URL: nothing was sent, and
   * retrying would not change it.
   */
  | "tls_failed"
  /** The server answered something that is not kv's API (not JSON where JSON was due, missing fields). */
  | "bad_answer"
  /** A lease keeper got no keepalive answered within the lease's TTL: the lease may have run out (a lock's `lost` reason). */
  | "lease_expired"
  /** Another client deleted or wrote a lock holder's key: another contender may hold the lock (a lock's `lost` reason). */
  | "lock_key_changed"
  /**
   * A watch (or a lock, which holds one) would take this process past the streams it may hold open:
   * Bun's fetch runs at most `BUN_CONFIG_MAX_HTTP_REQUESTS` (256) requests at once, and past that
   * every other call of the process waits. Nothing was sent.
   */
  | "too_many_streams"
  /**
   * A `deletePrefix` aborted by its signal after some of its requests applied: `details.deleted`
   * keys went, up to `details.version`; the next request was not sent.
   */
  | "aborted"
  /**
   * A `deletePrefix` whose later request was refused, or ended of unknown outcome, after some
   * applied: `details.deleted` keys went, up to `details.version`; `details.cause` is the error.
   */
  | "partial"
  /** The client was closed (`client.close()`): nothing more is sent; a call under way when it closed ended with this. */
  | "closed"
  /** `lock(name, { wait: false })` found another contender ahead (etcd's TryLock `ErrLocked`): its key and lease were removed. */
  | "locked";

/**
 * A call that certainly did not take effect, or a read that failed. `code` is the server's stable
 * error code (`version_mismatch`, `not_found`, `no_leader`, `too_large`, `bad_request`,
 * `unauthenticated`, `idempotency_key_reused`, ... as listed in README.md's error table) or one of
 * {@link ClientSideCode}; `status` is the HTTP status (0 when no answer carried one); `details` holds
 * the rest of the server's JSON body (for example `version` on `version_mismatch`).
 */
export class KvClientError extends Error {
  override name = "KvClientError";
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

/**
 * A write whose outcome stayed unknown after every retry the call's budget allowed: it may or may
 * not have been applied (the connection dropped after the request was sent, or the leader answered
 * 503 `timeout`, and no retry got a definite answer). The write carried
 * `idempotencyKey`: sending it again with the same key, the same request and within the cluster's
 * idempotency window, applies it at most once and answers what the first one did.
 */
export class UnknownOutcomeError extends Error {
  override name = "UnknownOutcomeError";
  constructor(
    message: string,
    /** The `Idempotency-Key` the write was sent with (undefined for requests that carry none). */
    readonly idempotencyKey: string | undefined,
    /** What each attempt ended with, oldest first (at most the last few). */
    readonly attempts: readonly string[],
  ) {
    super(message);
  }
}
