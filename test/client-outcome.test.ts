// Proves the one rule for what an answer says about a request's effect (src/client/outcome.ts), which the client's retries and chaos's histories (src/chaos/client.ts) share: only 503 timeout and other 5xx are unknown; 307, 503 no_leader/proposal_dropped/unavailable, 507 insufficient_storage/quota_exceeded and 4xx are refusals; and only passing refusals are retried.
import { expect, test } from "bun:test";
import { classifyResponse } from "../src/chaos/client.ts";
import { answerOutcome, isRetryableRefusal, type AnswerOutcome } from "../src/client/outcome.ts";

const cases: [method: "GET" | "PUT" | "DELETE", status: number, code: string | undefined, outcome: AnswerOutcome, retryable: boolean][] = [
  ["PUT", 200, undefined, "done", false],
  ["GET", 404, "not_found", "done", false],
  ["PUT", 404, "not_found", "refused", false],
  ["PUT", 307, "not_leader", "refused", false],
  ["PUT", 503, "no_leader", "refused", true],
  ["PUT", 503, "proposal_dropped", "refused", true],
  ["PUT", 429, "overloaded", "refused", true],
  ["PUT", 409, "version_mismatch", "refused", false],
  // Found in a black-box review: the removal of a leader, handed over, met the new leader's barrier and was refused at once.
  ["DELETE", 409, "conf_change_pending", "refused", true],
  ["PUT", 408, "request_timeout", "refused", false],
  // Found in review: both were read as unknown (any 5xx), so a client retried a full quota for its whole budget.
  ["PUT", 507, "quota_exceeded", "refused", false],
  ["PUT", 507, "insufficient_storage", "refused", true],
  ["PUT", 507, undefined, "unknown", false],
  ["PUT", 503, "timeout", "unknown", false],
  // Found in a black-box review: a write to a removed node (or one shutting down) was reported of
  // unknown outcome, though such a node proposes nothing (a proposed write that meets a stop is a
  // `timeout`): a refusal, tried on the other endpoints.
  ["DELETE", 503, "unavailable", "refused", true],
  ["PUT", 503, "unavailable", "refused", true],
  ["PUT", 500, "internal", "unknown", false],
  ["PUT", 502, undefined, "unknown", false],
];

test.each(cases)("%s answered %d %s is %s (retried: %p), and chaos records the same", (method, status, code, outcome, retryable) => {
  expect(answerOutcome(method, status, code)).toBe(outcome);
  expect(isRetryableRefusal(status, code)).toBe(retryable);
  const body = new TextEncoder().encode(code === undefined ? "" : JSON.stringify({ error: code, message: "m" }));
  const chaos = classifyResponse(method, status, () => null, body);
  expect(chaos.kind).toBe(({ done: "ok", refused: "fail", unknown: "unknown" } as const)[outcome]);
});
