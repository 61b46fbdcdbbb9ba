/**
 * What an HTTP answer from a kv node says about whether a request took effect. The one rule shared
 * by the client's retries (src/client/transport.ts) and the chaos tools' histories
 * (src/chaos/client.ts), so both read the server's codes the same way.
 */

/**
 * - `done`: the request was served (200, or a 404 read of an absent key);
 * - `refused`: it certainly did not take effect (307 `not_leader`, 503 `no_leader`, 503
 *   `proposal_dropped`: proposed but replaced by another leader's entry, so it never applies; 503
 *   `unavailable`: a node stopping, stopped or removed, which proposes nothing (a write it had
 *   proposed when it stopped gets `timeout`: src/node/proposals.ts); 507 `insufficient_storage` and
 *   `quota_exceeded`: refused before anything was proposed; any 4xx);
 * - `unknown`: it may or may not have (503 `timeout`: proposed, commit not seen in time; any other 5xx).
 */
export type AnswerOutcome = "done" | "refused" | "unknown";

/** The 5xx codes that say nothing was done (docs/api.md); every other 5xx may have been. */
const serverRefusalCodes: ReadonlySet<string> = new Set(["no_leader", "proposal_dropped", "unavailable", "insufficient_storage", "quota_exceeded"]);

/** Classifies an answer by its status and JSON `error` code (undefined when the body had none). */
export function answerOutcome(method: string, status: number, errorCode: string | undefined): AnswerOutcome {
  if (status === 200) return "done";
  if (errorCode === "timeout") return "unknown";
  if (status >= 500 && (errorCode === undefined || !serverRefusalCodes.has(errorCode))) return "unknown";
  if (status === 404 && (method === "GET" || method === "HEAD")) return "done";
  return "refused";
}

/**
 * Refusals worth sending again (to the leader, or after a pause): nothing was done and the cause
 * passes by itself. 429 `overloaded` asks the client to come back later, 503 `unavailable` to go to
 * another node, 409 `conf_change_pending` to wait for the membership change before it, and 507
 * `insufficient_storage` resumes once the node's disk has room;
 * `quota_exceeded` does not pass by waiting.
 */
export function isRetryableRefusal(status: number, errorCode: string | undefined): boolean {
  return (
    (status === 503 && (errorCode === "no_leader" || errorCode === "proposal_dropped" || errorCode === "unavailable")) ||
    // A membership change waits for the one before it to apply, and a leader just elected for the
    // entries it holds (the removal of a leader meets that on the leader it handed over to: found
    // in a black-box review, refused at once).
    (status === 409 && errorCode === "conf_change_pending") ||
    (status === 507 && errorCode === "insufficient_storage") ||
    status === 429
  );
}

/** The `error` code of a JSON error body, or undefined when the body is not one. */
export function errorCodeOf(body: Uint8Array): string | undefined {
  if (body.byteLength === 0 || body[0] !== 0x7b /* { */) return undefined;
  try {
    const parsed = JSON.parse(new TextDecoder().decode(body)) as { error?: unknown };
    return typeof parsed.error === "string" ? parsed.error : undefined;
  } catch {
    return undefined;
  }
}
