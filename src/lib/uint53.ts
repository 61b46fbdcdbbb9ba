/**
 * Non-negative safe integers as two little-endian uint32 words (no BigInt on the hot path): how
 * the log's checksummed headers (src/storage/entry-checksum.ts) and the segment log's records
 * (src/storage/segment-log.ts) store indexes and terms.
 */

/** Writes `value` (a safe integer >= 0) at `offset`: 8 bytes. */
export function setUint53(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value >>> 0, true);
  view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
}

/** Reads what `setUint53` wrote; NaN when the high word is past 2^53 - 1 (not a value it writes). */
export function getUint53(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  return high >= 2 ** 21 ? Number.NaN : view.getUint32(offset, true) + high * 2 ** 32;
}
