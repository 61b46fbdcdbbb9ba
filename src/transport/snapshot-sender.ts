/**
 * The sending side of a snapshot transfer: reads an image a bounded chunk at a time and sends each
 * chunk as its own `SendSnapshotChunk` call, waiting for one to be staged before reading the next.
 * At most two chunks are in memory (the one in flight and the one read ahead to know which is last).
 * It shares nothing with the peer's message sender, so a long transfer never delays `Send` calls.
 */
import type { Client } from "@connectrpc/connect";
import type { RaftService } from "../gen/kv/v1/raft_pb.ts";
import { assert } from "../lib/assert.ts";
import type { NodeId } from "../raft/types.ts";
import { toSendSnapshotChunkRequest } from "./snapshot-codec.ts";
import type { SendSnapshotOptions, SnapshotChunk, SnapshotImage } from "./transport.ts";

/** Bounds of snapshot transfers. */
export interface SnapshotSendLimits {
  /** Keys and values in one chunk (a single larger row still goes, alone). */
  readonly snapshotChunkBytesMax: number;
  /** Deadline of each chunk's call: a transfer fails when one chunk is not staged in time. */
  readonly snapshotChunkTimeoutMs: number;
}

export const defaultSnapshotSendLimits: SnapshotSendLimits = {
  snapshotChunkBytesMax: 1 << 20,
  snapshotChunkTimeoutMs: 10_000,
};

/** Reads `image` in chunks and sends them to `to` in order; see `Transport.sendSnapshot`. */
export async function streamSnapshot(
  client: Client<typeof RaftService>,
  from: NodeId,
  to: NodeId,
  image: SnapshotImage,
  options: SendSnapshotOptions,
  limits: SnapshotSendLimits,
): Promise<void> {
  assert(limits.snapshotChunkBytesMax >= 1 && limits.snapshotChunkTimeoutMs >= 1, "snapshot limits must be positive");
  for (const chunk of chunksOf(from, to, image, options, limits.snapshotChunkBytesMax)) {
    options.signal?.throwIfAborted();
    await client.sendSnapshotChunk(toSendSnapshotChunkRequest(chunk), {
      timeoutMs: limits.snapshotChunkTimeoutMs,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
  }
}

/**
 * The chunks of one image in order: seq 0 carries the metadata, the last has `done` (an empty image
 * is one empty chunk with both). Reads one chunk ahead, lazily, so the caller holds at most two.
 */
export function* chunksOf(from: NodeId, to: NodeId, image: SnapshotImage, options: SendSnapshotOptions, chunkBytesMax: number): Generator<SnapshotChunk> {
  let seq = 0;
  let rows = image.next(chunkBytesMax);
  for (;;) {
    const following = rows.length === 0 ? [] : image.next(chunkBytesMax);
    const done = following.length === 0;
    yield {
      from,
      to,
      term: options.term,
      imageId: options.imageId,
      seq,
      metadata: seq === 0 ? image.metadata : undefined,
      ...(seq === 0 && image.addresses !== undefined ? { addresses: image.addresses } : {}),
      rows,
      done,
    };
    if (done) return;
    rows = following;
    seq++;
  }
}
