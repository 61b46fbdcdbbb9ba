import { KvError } from "../lib/kv-error.ts";

/** The route prefix under which every key lives: `/kv/{key}`. */
export const KV_PATH_PREFIX = "/kv/";

const utf8Encoder = new TextEncoder();

/**
 * The most any `--key-bytes-max` allows: keys travel percent-encoded in the request line, which `kv`
 * lets Bun take up to 128 KiB (src/cli/runtime-tuning.ts): room for two such keys (a listing's
 * prefix and after) at three characters a byte, past which Bun answers 431. Only a write of a key is held to the configured limit: a
 * read, a delete, a comparison, a listing's prefix and a watch name keys up to this, so keys written
 * under a higher limit stay readable and deletable after it is lowered (found in a black-box review:
 * they were listed, but every GET and DELETE of them was a 413).
 */
export const KEY_BYTES_MAX_LIMIT = 16_384;

/** `too_large` when `key` is over `keyBytesMax` UTF-8 bytes, the limit on writing a key. */
export function refuseKeyOverLimit(key: string, keyBytesMax: number, what = "the key"): void {
  const keyBytes = utf8Encoder.encode(key).byteLength;
  if (keyBytes > keyBytesMax) throw new KvError("too_large", `${what} is ${keyBytes} bytes; the limit is ${keyBytesMax}`);
}

/**
 * Decodes a key from the raw (still percent-encoded) path that follows `/kv/`.
 * `a%2Fb` and the unencoded `a/b` are both the key `a/b`; `+` is a literal plus (this is a path,
 * not a form). Malformed percent-encoding, invalid UTF-8 (overlong forms, surrogates included) and
 * the empty key are `bad_request`; a key over `keyBytesMax` UTF-8 bytes is `too_large`.
 */
export function decodeKvKey(rawKey: string, keyBytesMax: number): string {
  if (rawKey.length === 0) throw new KvError("bad_request", "the key is empty: use /kv/{key} with a non-empty key");
  // Each decoded byte comes from at most 3 raw characters ("%XX"), so a raw key longer than
  // 3 * keyBytesMax is over the limit whatever it decodes to: refuse it without decoding.
  if (rawKey.length > 3 * keyBytesMax) {
    throw new KvError("too_large", `the key is more than ${keyBytesMax} bytes; the limit is ${keyBytesMax}`);
  }
  let key: string;
  try {
    // decodeURIComponent rejects malformed escapes and every invalid UTF-8 sequence (ECMA-262 Decode).
    key = decodeURIComponent(rawKey);
  } catch {
    throw new KvError("bad_request", "the key is not valid percent-encoded UTF-8");
  }
  refuseKeyOverLimit(key, keyBytesMax);
  return key;
}

/** Listing pages (`GET /kv`, `GET /leases`): 100 items unless asked, at most 1000. */
const PAGE_LIMIT_DEFAULT = 100;
const PAGE_LIMIT_MAX = 1000;

/** A listing's `limit` parameter (null: absent), as a page size; `bad_request` outside 1 to PAGE_LIMIT_MAX. */
export function parsePageLimit(limitText: string | null): number {
  const limit = limitText === null ? PAGE_LIMIT_DEFAULT : Number(limitText);
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > PAGE_LIMIT_MAX) {
    throw new KvError("bad_request", `limit must be a whole number from 1 to ${PAGE_LIMIT_MAX}, got '${limitText}'`);
  }
  return limit;
}

/**
 * A query string's parameters, decoded strictly: as `URLSearchParams` reads them (`+` is a space),
 * but a name or value whose percent-encoding is malformed or is not UTF-8 is `bad_request`, where
 * `URLSearchParams` would keep `%zz` as it is and turn `%ff` into U+FFFD (found in review:
 * `/watch?key=%ff` watched the key "\uFFFD", and `/kv?prefix=%ff` listed it).
 */
export function parseQueryStrictly(search: string): URLSearchParams {
  const pairs: [string, string][] = [];
  const text = search.startsWith("?") ? search.slice(1) : search;
  if (text === "") return new URLSearchParams();
  for (const part of text.split("&")) {
    if (part === "") continue;
    const equals = part.indexOf("=");
    const rawName = equals < 0 ? part : part.slice(0, equals);
    const rawValue = equals < 0 ? "" : part.slice(equals + 1);
    pairs.push([decodeQueryComponent(rawName, rawName), decodeQueryComponent(rawValue, rawName)]);
  }
  return new URLSearchParams(pairs);
}

/**
 * The names, decoded as `parseQueryStrictly` decodes them, of the parameters given without `=`
 * (`?prefix` rather than `?prefix=`): `URLSearchParams` reads both as the empty value.
 */
export function bareQueryNames(search: string): string[] {
  const text = search.startsWith("?") ? search.slice(1) : search;
  return text
    .split("&")
    .filter((part) => part !== "" && !part.includes("="))
    .map((part) => decodeQueryComponent(part, part));
}

/** The value of query parameter `name`, null when absent; given twice, a 400 (the first would be taken silently). */
export function singleParam(query: URLSearchParams, name: string): string | null {
  const values = query.getAll(name);
  if (values.length > 1) throw new KvError("bad_request", `${name} must be given once, got ${values.length} values`);
  return values[0] ?? null;
}

function decodeQueryComponent(raw: string, rawName: string): string {
  try {
    // decodeURIComponent rejects malformed escapes and every invalid UTF-8 sequence (ECMA-262 Decode).
    return decodeURIComponent(raw.replaceAll("+", " "));
  } catch {
    throw new KvError("bad_request", `query parameter '${rawName.slice(0, 64)}' is not valid percent-encoded UTF-8`);
  }
}
