/**
 * Whether `text` is one or more visible ASCII characters (0x21-0x7e): what a token or an
 * idempotency key must be to travel in an HTTP header as it is (no spaces at its ends, no control
 * bytes, no non-ASCII). The node's check of a secret (src/lib/secret.ts), the client library's and
 * the CLI's (src/client/client.ts, src/cli/client.ts) are this one.
 */
export function isVisibleAscii(text: string): boolean {
  return /^[\x21-\x7e]+$/.test(text);
}
