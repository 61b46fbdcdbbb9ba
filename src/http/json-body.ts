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

/** Bounds on a JSON body's shape, checked before it is parsed (see `parseJsonBody`). */
export interface JsonShapeLimits {
  /** Objects and arrays nested at most this deep. */
  readonly depthMax: number;
  /** Values at most: objects and arrays opened, plus separating commas. */
  readonly valuesMax: number;
}

/** A body of a few fields (a lease's grant, a member's address): room to spare, nothing more. */
export const smallJsonShape: JsonShapeLimits = { depthMax: 4, valuesMax: 64 };

const utf8Fatal = new TextDecoder("utf-8", { fatal: true });
/** For a member name: a U+FEFF it starts with is part of it (found in review: "\uFEFF" and "" read as one name). */
const nameDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * A request body parsed as JSON, or a 400 `bad_request`: `notJson` when it is not JSON (or not
 * UTF-8), and before any parsing when it is nested past `limits.depthMax` or holds more than
 * `limits.valuesMax` values. JSON.parse of a 2.4 MB body of brackets, inside the size cap, held the
 * loop's thread for 0.3-0.9 s, past an election timeout (found in a black-box review); the check is
 * one pass that stops at the bound, and strings are skipped by a native search for their quote.
 * A member name given twice in one object is refused too: JSON.parse keeps the last one silently,
 * so a transaction's first `success` branch was dropped (same review).
 */
export function parseJsonBody(bytes: Uint8Array, what: string, limits: JsonShapeLimits, notJson = `${what} is not JSON`): unknown {
  checkJsonShape(bytes, what, limits);
  try {
    return JSON.parse(utf8Fatal.decode(bytes));
  } catch {
    throw new KvError("bad_request", notJson);
  }
}

/** Throws for nesting or values past `limits` and for a repeated name; anything else malformed is left to JSON.parse. */
function checkJsonShape(bytes: Uint8Array, what: string, limits: JsonShapeLimits): void {
  // One entry per open container: the names seen so far in an object, or null for an array.
  const open: (Set<string> | null)[] = [];
  let expectName = false;
  let values = 0;
  const counted = () => {
    if (++values > limits.valuesMax) throw new KvError("bad_request", `${what} holds more than ${limits.valuesMax} values`);
  };
  for (let at = 0; at < bytes.length; at++) {
    switch (bytes[at]) {
      case 0x22: {
        const end = stringEnd(bytes, at);
        if (end === -1) return; // unterminated: JSON.parse says so
        const names = open.at(-1);
        if (names instanceof Set && expectName) {
          const name = stringAt(bytes, at, end);
          if (name === undefined) return; // a bad escape or bad UTF-8: JSON.parse says so
          if (names.has(name)) throw new KvError("bad_request", `${what} gives '${name.slice(0, 64)}' twice in one object`);
          names.add(name);
          expectName = false;
        }
        at = end;
        break;
      }
      case 0x7b: // {
      case 0x5b: // [
        counted();
        open.push(bytes[at] === 0x7b ? new Set() : null);
        expectName = bytes[at] === 0x7b;
        if (open.length > limits.depthMax) throw new KvError("bad_request", `${what} is nested deeper than ${limits.depthMax} levels`);
        break;
      case 0x7d: // }
      case 0x5d: // ]
        open.pop();
        expectName = false;
        break;
      case 0x2c: // ,
        counted();
        expectName = open.at(-1) instanceof Set;
        break;
    }
  }
}

/** The index of the quote that ends the string whose opening quote is at `start`, or -1. */
function stringEnd(bytes: Uint8Array, start: number): number {
  for (let from = start + 1; ; ) {
    const quote = bytes.indexOf(0x22, from);
    if (quote === -1) return -1;
    let backslashes = 0;
    while (bytes[quote - 1 - backslashes] === 0x5c) backslashes++;
    if (backslashes % 2 === 0) return quote;
    from = quote + 1;
  }
}

/** The string between the quotes at `start` and `end`, escapes resolved; undefined if it is not valid. */
function stringAt(bytes: Uint8Array, start: number, end: number): string | undefined {
  try {
    const raw = nameDecoder.decode(bytes.subarray(start + 1, end));
    return raw.includes("\\") ? (JSON.parse(`"${raw}"`) as string) : raw;
  } catch {
    return undefined;
  }
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
