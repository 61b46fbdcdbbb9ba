/** FNV-1a (32 bits) of a string's UTF-16 code units, as 8 hex digits: a cheap, stable digest for replay checks. */
export function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return hash.toString(16).padStart(8, "0");
}

/** The FNV-1a offset basis: where a running `fnv1aMix` digest starts. */
export const fnv1aBasis = 0x811c9dc5;

/** Folds `text` into a running FNV-1a digest `hash` (start from `fnv1aBasis`): for traces too long to keep whole. */
export function fnv1aMix(hash: number, text: string): number {
  let next = hash;
  for (let i = 0; i < text.length; i++) next = Math.imul(next ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return next;
}

/**
 * Folds the whole numbers `values` (each taken as 32 bits) into a running FNV-1a digest `hash`, one
 * step per number: for traces mixed after every simulated event, where building a string costs more.
 */
export function fnv1aMixInts(hash: number, ...values: readonly number[]): number {
  let next = hash;
  for (const value of values) next = Math.imul(next ^ (value | 0), 0x01000193) >>> 0;
  return next;
}
