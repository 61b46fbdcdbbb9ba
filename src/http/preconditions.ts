/**
 * HTTP's conditional headers on a write. kv gives no ETags and does not evaluate them; ignored,
 * `If-Match: "1"` on a PUT made a compare-and-set a blind overwrite (found in a black-box review),
 * as a misspelt `?ifVersion` once did. A write that carries one is refused, pointing at the query
 * parameter that does compare.
 */
import { KvError } from "../lib/kv-error.ts";

const conditionalHeaders = ["if-match", "if-none-match", "if-unmodified-since", "if-modified-since"] as const;
const names: Record<(typeof conditionalHeaders)[number], string> = {
  "if-match": "If-Match",
  "if-none-match": "If-None-Match",
  "if-unmodified-since": "If-Unmodified-Since",
  "if-modified-since": "If-Modified-Since",
};

/** Throws `bad_request` when a write carries one of HTTP's conditional headers. */
export function refuseConditionalHeaders(request: Request): void {
  for (const header of conditionalHeaders) {
    if (request.headers.get(header) === null) continue;
    throw new KvError(
      "bad_request",
      `${names[header]} is not evaluated on a write (kv gives no ETags): compare with ?ifVersion=N (the version from X-Kv-Version; 0: only if absent), or a transaction's compare`,
    );
  }
}
