/**
 * The `Idempotency-Key` header of a write (`PUT`/`DELETE /kv/{key}`, `POST /txn`): 1 to
 * `idempotencyKeyBytesMax` bytes of UTF-8.
 *
 * A header value reaches the handler as a byte string (each byte one code unit, as the Fetch
 * standard's headers hold them), so a key sent as UTF-8 arrives with each of its bytes a character
 * of its own: it is decoded here. Measured as it came, a key of 64 Cyrillic letters (128 bytes)
 * counted as 256 and one of 65 was refused, and a 422 echoed the key garbled (found in review).
 */
import { idempotencyKeyBytesMax } from "../kv/command.ts";
import { KvError } from "../lib/kv-error.ts";

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The request's idempotency key, decoded; undefined when it sent none. Throws `bad_request` when malformed. */
export function idempotencyKeyOf(request: Request): string | undefined {
  const raw = request.headers.get("idempotency-key");
  if (raw === null) return undefined;
  // Headers hold byte strings only (a Request refuses any other): every unit is a byte.
  const bytes = Uint8Array.from(raw, (unit) => unit.charCodeAt(0));
  if (bytes.byteLength === 0 || bytes.byteLength > idempotencyKeyBytesMax) throw new KvError("bad_request", `Idempotency-Key must be 1 to ${idempotencyKeyBytesMax} bytes`);
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    throw new KvError("bad_request", "Idempotency-Key must be UTF-8");
  }
}
