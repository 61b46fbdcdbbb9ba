import { setUint53 } from "../lib/uint53.ts";
import type { HardState } from "../raft/types.ts";

/**
 * Checksums written beside each log entry and the hard state in the SQLite tables of schema 4 and
 * before (verified by the migration that moves the log to segments), and beside the snapshot
 * metadata in meta (verified at open).
 * CRC-32 (Bun.hash.crc32, zlib's polynomial) over a fixed header then the data: the header binds
 * the entry to its index and term, so a row copied to the wrong place or a flipped term is caught,
 * not only a damaged payload.
 */

const entryHeader = new DataView(new ArrayBuffer(17));
const entryHeaderBytes = new Uint8Array(entryHeader.buffer);
const hardStateBytes = new Uint8Array(24);
const hardStateView = new DataView(hardStateBytes.buffer);

/** CRC-32 of (index, term, type, data): what the `crc` column of the log holds. */
export function entryChecksum(index: number, term: number, type: number, data: Uint8Array): number {
  setUint53(entryHeader, 0, index);
  setUint53(entryHeader, 8, term);
  entryHeader.setUint8(16, type);
  return Bun.hash.crc32(data, Bun.hash.crc32(entryHeaderBytes));
}

/** CRC-32 of (term, vote, commit): what the `crc` column of the hard state holds. */
export function hardStateChecksum(hardState: HardState): number {
  setUint53(hardStateView, 0, hardState.term);
  setUint53(hardStateView, 8, hardState.vote);
  setUint53(hardStateView, 16, hardState.commit);
  return Bun.hash.crc32(hardStateBytes);
}

const snapshotHeader = new DataView(new ArrayBuffer(16));
const snapshotHeaderBytes = new Uint8Array(snapshotHeader.buffer);
const utf8 = new TextEncoder();

/**
 * CRC-32 of where the log was compacted: (index, term) and the configuration as meta stores it
 * (comma-separated voters and learners). What meta's `snapshot_crc` column holds.
 */
export function snapshotChecksum(index: number, term: number, votersText: string, learnersText: string): number {
  setUint53(snapshotHeader, 0, index);
  setUint53(snapshotHeader, 8, term);
  return Bun.hash.crc32(utf8.encode(`${votersText};${learnersText}`), Bun.hash.crc32(snapshotHeaderBytes));
}

const rowHeader = new DataView(new ArrayBuffer(8));
const rowHeaderBytes = new Uint8Array(rowHeader.buffer);

/**
 * CRC-32 of a row of the state machine (key, value, version): what the kv table's `crc` column
 * holds (schema 6). SQLite keeps no checksum of its pages: a byte flipped on disk inside a value
 * was served, and backed up, as it read (found in a black-box review).
 */
export function rowChecksum(key: string, value: Uint8Array, version: number): number {
  setUint53(rowHeader, 0, version);
  return Bun.hash.crc32(value, Bun.hash.crc32(key, Bun.hash.crc32(rowHeaderBytes)));
}
