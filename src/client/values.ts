import { jsonValue } from "../lib/json-value.ts";
import { KvClientError } from "./errors.ts";

/**
 * Values on the wire. PUT and GET `/kv/{key}` carry a value's raw bytes; JSON answers (listings,
 * transactions) carry it as its UTF-8 text, or as `{"base64": ...}` when it is not valid UTF-8
 * (src/http/app.ts, `jsonValue`). The client accepts either a string or bytes and gives back both.
 */

/** A value as a caller gives it: text (sent as UTF-8) or raw bytes. */
export type ValueInput = string | Uint8Array;

/** A value as JSON carries it. */
export type JsonValue = string | { readonly base64: string };

/** A stored key with its value and version, as `get`, `list` and `txn` return it. */
export interface KvEntry {
  readonly key: string;
  /** The Raft index of the write that stored this value. */
  readonly version: number;
  /** The value's bytes, exactly as stored. */
  readonly bytes: Uint8Array;
  /** The value decoded as UTF-8 (bytes that are not UTF-8 become U+FFFD). */
  readonly text: string;
}

const encoder = new TextEncoder();
/** A value starting with U+FEFF keeps it in its text (a TextDecoder drops it unless told not to). */
const lenientUtf8 = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * The bytes of a value given as text or bytes. Anything else, or text with a lone UTF-16 surrogate
 * (which UTF-8 cannot carry), is the caller's mistake: `bad_request`, nothing sent (found in a
 * black-box review: an object was stored as "[object Object]", a lone surrogate as U+FFFD).
 */
export function valueBytes(value: ValueInput): Uint8Array {
  if (typeof value === "string") {
    if (!value.isWellFormed()) throw new KvClientError("bad_request", 0, "the value holds a lone UTF-16 surrogate, which UTF-8 cannot carry: give it as bytes");
    return encoder.encode(value);
  }
  if (!(value instanceof Uint8Array)) throw new KvClientError("bad_request", 0, `a value is a string or a Uint8Array, got ${describeInput(value)}`);
  return value;
}

/** What a caller passed, for an error (its type, and its text when short). */
export function describeInput(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return (value as object).constructor?.name ?? "an object";
  return typeof value === "string" ? JSON.stringify(value.slice(0, 40)) : `${typeof value} ${String(value).slice(0, 40)}`;
}

/** A value as JSON: its text when it is valid UTF-8, else `{"base64": ...}` (as the server writes it). */
export function toJsonValue(value: ValueInput): JsonValue {
  return typeof value === "string" ? value : jsonValue(value);
}

/** The bytes of a JSON value; undefined when it is neither a string nor `{"base64": string}`. */
export function fromJsonValue(value: unknown): Uint8Array | undefined {
  if (typeof value === "string") return encoder.encode(value);
  if (typeof value === "object" && value !== null && typeof (value as { base64?: unknown }).base64 === "string") {
    return new Uint8Array(Buffer.from((value as { base64: string }).base64, "base64"));
  }
  return undefined;
}

/** An entry whose `text` is decoded on first use. */
export function makeEntry(key: string, version: number, bytes: Uint8Array): KvEntry {
  let text: string | undefined;
  return {
    key,
    version,
    bytes,
    get text() {
      text ??= lenientUtf8.decode(bytes);
      return text;
    },
  };
}
