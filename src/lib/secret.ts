/**
 * Shared secrets (the peers' cluster token, the clients' bearer token): how they are checked and
 * what a usable one looks like.
 */
import { isVisibleAscii } from "./visible-ascii.ts";
import { createHash, timingSafeEqual } from "node:crypto";

/** Shortest secret accepted: a hash of the cluster token is published as the cluster id, so it must not be guessable. */
export const SECRET_LENGTH_MIN = 16;
/** Longest secret accepted: it travels in an HTTP header on every call. */
export const SECRET_LENGTH_MAX = 1_024;

/**
 * Compares a presented secret with the expected one in time that does not depend on where they
 * differ: both are hashed to 32 bytes first, so `timingSafeEqual` compares equal lengths and the
 * length of the expected secret does not leak either.
 */
export function secretsEqual(presented: string, expected: string): boolean {
  return timingSafeEqual(sha256(presented), sha256(expected));
}

/**
 * Why `secret` cannot be used as a token, or undefined when it can: between
 * {@link SECRET_LENGTH_MIN} and {@link SECRET_LENGTH_MAX} characters, all visible ASCII (it is
 * sent as an HTTP header value, which must not hold spaces at its ends, control bytes or non-ASCII).
 */
export function secretProblem(secret: string): string | undefined {
  if (secret.length < SECRET_LENGTH_MIN) return `is ${secret.length} characters; use at least ${SECRET_LENGTH_MIN} random ones (e.g. openssl rand -hex 32)`;
  if (secret.length > SECRET_LENGTH_MAX) return `is ${secret.length} characters; the limit is ${SECRET_LENGTH_MAX}`;
  if (!isVisibleAscii(secret)) return "must be visible ASCII characters only (no spaces, control characters or non-ASCII)";
  return undefined;
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}
