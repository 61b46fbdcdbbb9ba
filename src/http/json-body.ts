import { KvError } from "../lib/kv-error.ts";
import { readBodyBytesMax } from "./read-body.ts";

/**
 * `value` as a JSON object holding only `allowed` fields, else a 400 `bad_request` naming `what`: a
 * misspelt field is refused rather than ignored (`{"ttlMs": 1000, "ttl": 5}` would grant 1 s).
 */
export function jsonObject(value: unknown, what: string, allowed: readonly string[]): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new KvError("bad_request", `${what} must be a JSON object`);
  for (const name of Object.keys(value)) {
    if (!allowed.includes(name)) throw new KvError("bad_request", `${what} has an unknown field '${name.slice(0, 64)}' (expected ${allowed.map((a) => `'${a}'`).join(", ")})`);
  }
  return value as Record<string, unknown>;
}

/** More than this sent to a route that takes no body is a 413 (it is refused either way). */
const noBodyBytesMax = 4 * 1024;

/**
 * Refuses a body sent to a route that takes none (its parameters are in its path and query), as
 * the API refuses a JSON field a route does not take: `POST /leader/transfer` with `{"to": 99}`
 * moved leadership to whichever voter was most caught up (found in a black-box review). An empty
 * body, or an empty JSON object, passes.
 */
export async function refuseBody(request: Request, route: string, readTimeoutMs?: number, hint = "its parameters go in its path and query"): Promise<void> {
  if (request.body === null) return;
  const text = new TextDecoder().decode(await readBodyBytesMax(request, noBodyBytesMax, readTimeoutMs, "the body")).trim();
  if (text === "") return;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const fields = typeof parsed === "object" && parsed !== null && !Array.isArray(parsed) ? Object.keys(parsed) : undefined;
  if (fields?.length === 0) return;
  const field = fields === undefined ? "" : ` (got a field '${(fields[0] as string).slice(0, 64)}')`;
  throw new KvError("bad_request", `${route} takes no body${field}: ${hint}`);
}
