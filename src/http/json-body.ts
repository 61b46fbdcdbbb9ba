import { KvError } from "../lib/kv-error.ts";

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
