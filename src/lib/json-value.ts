/**
 * A value's bytes as the client API writes them in JSON (listings, watch events, transaction
 * results, the CLI's --json): its text when it is valid UTF-8, else `{"base64": ...}`.
 */

/** A value in JSON: text, or base64 for bytes that are not valid UTF-8. */
export type JsonValue = string | { base64: string };

/** A leading U+FEFF is part of the value: a TextDecoder drops it unless told not to. */
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** `bytes` as JSON: the UTF-8 text they hold, or `{"base64": ...}` when they are not valid UTF-8. */
export function jsonValue(bytes: Uint8Array): JsonValue {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return { base64: Buffer.from(bytes).toString("base64") };
  }
}
