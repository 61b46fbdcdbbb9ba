/**
 * The one error class users see, with a stable code. src/http maps codes to HTTP statuses in one place;
 * the CLI maps them to exit codes. Anything thrown that is not a KvError is a bug.
 */
export type KvErrorCode =
  | "not_leader" // a write or read reached a follower that will not serve it; nothing was proposed
  | "no_leader" // no leader is known right now; nothing was proposed
  | "proposal_dropped" // proposed, but another leader's entry took its place: it will never apply; a retry is safe
  | "timeout" // proposed but not known to be committed in time: the outcome is unknown
  | "too_large" // a key or value over its limit
  | "bad_request" // malformed input
  | "request_timeout" // the request's body did not arrive within --request-read-timeout; nothing was done
  | "not_found" // no such key or route
  | "method_not_allowed"
  | "unavailable" // the node is shutting down or its storage failed
  | "overloaded" // too many requests waiting; retry later
  | "version_mismatch" // a conditional write found another version: nothing changed
  | "idempotency_key_reused" // an idempotency key with a live session sent with another request: nothing changed
  | "conf_change_pending" // another membership change is not yet applied: nothing was proposed
  | "member_exists" // the node to add is already a member: nothing was proposed
  | "learner_not_ready" // the learner to promote has not caught up with the leader's log: nothing was proposed
  | "no_other_voter" // a leadership transfer with no other voter to hand over to: nothing changed
  | "unhealthy_cluster" // removing the voter would leave no majority the leader hears from: nothing was proposed
  | "insufficient_storage" // the node's disk is full: nothing was written; retry later
  | "quota_exceeded" // the data kept is over --quota-bytes: puts are refused (reads and deletes are not)
  | "lease_not_found" // the lease named does not exist (never granted, expired or revoked): nothing was written
  | "upgrade_required" // a member has not said it runs a release that applies the command (older, or not heard from): nothing was proposed
  | "compacted"; // a watch's start is older than the change history this node keeps: re-read, then watch again

export interface KvErrorDetails {
  leaderId?: number;
  leaderUrl?: string;
  retryAfterS?: number;
  /** The key's current version (0 when absent), on `version_mismatch`. */
  version?: number;
  /** The oldest version a watch may start from on this node, on `compacted`. */
  compactVersion?: number;
  /** The members that have not said they run a release that applies the command, on `upgrade_required`. */
  members?: number[];
}

export class KvError extends Error {
  override name = "KvError";
  constructor(
    readonly code: KvErrorCode,
    message: string,
    readonly details: KvErrorDetails = {},
  ) {
    super(message);
  }
}
