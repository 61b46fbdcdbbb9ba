/**
 * What a node joining with `--join` sends to show it holds the cluster token (or, like the cluster,
 * none), without sending the token: an HMAC-SHA256 of its id and peer URL keyed by the token (by the
 * empty string without one). The leader computes the same with its own and refuses the join when
 * they differ: a joiner with another token was recorded as a learner whose every peer call was then
 * refused, and it stayed, unreachable, in the configuration (found in a black-box review).
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** The proof a joiner with `clusterToken` (undefined: none) sends for member `id` at `peerUrl`: 64 hex digits. */
export function joinProof(clusterToken: string | undefined, id: number, peerUrl: string): string {
  return createHmac("sha256", clusterToken ?? "").update(`kv join v1 ${id} ${peerUrl}`).digest("hex");
}

/** Whether `proof` is what a joiner holding `clusterToken` (undefined: none) sends for `id` at `peerUrl`. */
export function joinProofHolds(proof: string, clusterToken: string | undefined, id: number, peerUrl: string): boolean {
  const expected = Buffer.from(joinProof(clusterToken, id, peerUrl), "utf8");
  const given = Buffer.from(proof, "utf8");
  return given.byteLength === expected.byteLength && timingSafeEqual(given, expected);
}
