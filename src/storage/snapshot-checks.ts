import { assert } from "../lib/assert.ts";
import type { NodeId, SnapshotMetadata } from "../raft/types.ts";
import { type ImageRow, StorageError } from "./kv-storage.ts";
import { normalizeVoters, votersCountMax } from "./voters.ts";

/**
 * The checks and bookkeeping of snapshots that the sqlite storage and its in-memory twin share, so
 * both refuse and assert exactly the same things: compaction bounds, staging of a received image,
 * and installing it.
 */

/** Bytes an image row counts for beyond its key and value, in paging and in the staging limit. */
export const imageRowOverheadBytes = 16;

/** An image id longer than this is refused: the sender's ids are short. */
export const imageIdLengthMax = 128;

/** Default bound on the bytes of one staged image (on disk, not in memory): far above any sane state machine. */
export const stagedImageBytesMaxDefault = 64 * 1024 ** 3;

const utf8 = new TextEncoder();

/** What a row costs in paging and staging: UTF-8 key bytes, value bytes, and a fixed overhead. */
export function imageRowBytes(row: ImageRow): number {
  return utf8.encode(row.key).byteLength + row.value.byteLength + imageRowOverheadBytes;
}

/** What `checkCompact` needs to know about the storage. */
export interface CompactView {
  readonly snapshotIndex: number;
  readonly appliedIndex: number;
  readonly lastIndex: number;
}

/**
 * True when compacting to `index` drops something. Asserts (bugs in the caller) that the index is a
 * whole number no beyond what the state machine applied or the log holds: an entry not yet applied
 * must stay, or a restart could not replay it.
 */
export function checkCompact(view: CompactView, index: number): boolean {
  assert(Number.isSafeInteger(index) && index >= 0, `compact(${index}): not an index`);
  if (index <= view.snapshotIndex) return false;
  assert(index <= view.appliedIndex, `compact(${index}) beyond applied index ${view.appliedIndex}`);
  assert(index <= view.lastIndex, `compact(${index}) beyond last index ${view.lastIndex}`);
  return true;
}

/** The image being staged: its id and the bytes staged so far. */
export interface StagingState {
  readonly imageId: string | undefined;
  readonly bytes: number;
}

/**
 * Checks one chunk against the staging and returns the staging after it (the caller then writes the
 * rows). Throws `StorageError` `image_refused` for bad input from a peer: a chunk of an image other
 * than the one staged, a malformed image id or row, or an image past `bytesMax` (the caller should
 * then drop the staging). A key staged twice is found by the storage when it writes.
 */
export function planStage(
  staging: StagingState,
  imageId: string,
  rows: readonly ImageRow[],
  first: boolean,
  bytesMax: number,
  file: string,
): StagingState {
  if (typeof imageId !== "string" || imageId === "" || imageId.length > imageIdLengthMax) {
    throw new StorageError("image_refused", `image id ${JSON.stringify(String(imageId).slice(0, 64))} is not 1 to ${imageIdLengthMax} characters`, file);
  }
  if (!first && staging.imageId !== imageId) {
    const staged = staging.imageId === undefined ? "no image is staged" : `image ${staging.imageId} is staged`;
    throw new StorageError("image_refused", `a later chunk of image ${imageId}, but ${staged}`, file);
  }
  let bytes = first ? 0 : staging.bytes;
  for (const row of rows) {
    if (typeof row.key !== "string" || row.key === "") throw new StorageError("image_refused", `image ${imageId} has a row without a key`, file);
    if (!(row.value instanceof Uint8Array)) throw new StorageError("image_refused", `image ${imageId}: key ${JSON.stringify(row.key)} has no value bytes`, file);
    if (!Number.isSafeInteger(row.version) || row.version < 1) {
      throw new StorageError("image_refused", `image ${imageId}: key ${JSON.stringify(row.key)} has version ${row.version}`, file);
    }
    bytes += imageRowBytes(row);
  }
  if (bytes > bytesMax) {
    throw new StorageError("image_refused", `image ${imageId} is over the staging limit of ${bytesMax} bytes`, file);
  }
  return { imageId, bytes };
}

/** A configuration from a snapshot, checked: voters a valid non-empty set, learners distinct ids that are not voters. */
export function snapshotConfiguration(metadata: SnapshotMetadata, file: string): { voters: readonly NodeId[]; learners: readonly NodeId[] } {
  const voters = normalizeVoters(metadata.voters, file);
  const learners = [...(metadata.learners ?? [])].sort((a, b) => a - b);
  assert(learners.length <= votersCountMax, `snapshot has ${learners.length} learners`);
  learners.forEach((id, position) => {
    assert(Number.isSafeInteger(id) && id >= 1 && learners[position - 1] !== id && !voters.includes(id), `snapshot learner ${id} invalid`);
  });
  return { voters, learners };
}

/**
 * Asserts an install is one the driver may ask for: the image staged is the one named, and its
 * index is past what the state machine applied (the core installs only snapshots past its commit).
 */
export function checkInstall(staging: StagingState, appliedIndex: number, metadata: SnapshotMetadata, imageId: string): void {
  assert(staging.imageId === imageId, `install of image ${imageId}, but ${staging.imageId ?? "none"} is staged`);
  assert(Number.isSafeInteger(metadata.index) && metadata.index > appliedIndex, `install at ${metadata.index}, not past applied ${appliedIndex}`);
  assert(Number.isSafeInteger(metadata.term) && metadata.term >= 1, `install with term ${metadata.term}`);
}

/** Comma-separated ids as meta stores them ("" for none). */
export function idsText(ids: readonly NodeId[]): string {
  return ids.join(",");
}
