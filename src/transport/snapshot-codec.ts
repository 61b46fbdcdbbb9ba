/**
 * Converts snapshot chunks between the transport's `SnapshotChunk` and the generated
 * `SendSnapshotChunkRequest`. Encoding asserts (the image comes from our own storage); decoding
 * checks every field and throws `TransportDecodeError`, as `fromSendRequest` does for messages.
 */
import { create } from "@bufbuild/protobuf";
import { ImageRowSchema, MemberAddressSchema, SendSnapshotChunkRequestSchema, SnapshotMetadataSchema } from "../gen/kv/v1/raft_pb.ts";
import type { ImageRow as ProtoImageRow, SendSnapshotChunkRequest } from "../gen/kv/v1/raft_pb.ts";
import { assert } from "../lib/assert.ts";
import type { NodeId, SnapshotMetadata } from "../raft/types.ts";
import { TransportDecodeError, count, flag, nodeId, snapshotMetadataFromFields, text } from "./codec.ts";
import type { PeerAddress, SnapshotChunk, SnapshotRow } from "./transport.ts";

/** Limits on one incoming chunk; anything beyond them is refused as absurd. */
export interface SnapshotDecodeLimits {
  /** Rows in one chunk. */
  readonly rowsPerChunkMax: number;
  /** Length of a key, in UTF-16 code units. */
  readonly keyLengthMax: number;
}

/**
 * Defaults well above what a sender produces: a 1 MiB chunk holds at most ~62k rows (each costs at
 * least its 16-byte overhead), and the client API bounds keys at 4 KiB.
 */
export const defaultSnapshotDecodeLimits: SnapshotDecodeLimits = {
  rowsPerChunkMax: 131_072,
  keyLengthMax: 65_536,
};

/** Image ids are short names made by the sender. */
export const imageIdLengthMax = 128;

/** Bounds on the member addresses a first chunk carries. */
const addressesMax = 128;
const urlLengthMax = 2_048;

/** A chunk's sequence number travels as uint32. */
const seqMax = 0xffff_ffff;

/** Encodes one chunk of an image read from our own storage. */
export function toSendSnapshotChunkRequest(chunk: SnapshotChunk): SendSnapshotChunkRequest {
  assert(chunk.imageId !== "" && chunk.imageId.length <= imageIdLengthMax, `image id ${chunk.imageId}`);
  assert(Number.isSafeInteger(chunk.seq) && chunk.seq >= 0 && chunk.seq <= seqMax, `chunk seq ${chunk.seq}`);
  assert((chunk.seq === 0) === (chunk.metadata !== undefined), "metadata goes with the first chunk, and only with it");
  const metadata = chunk.metadata;
  return create(SendSnapshotChunkRequestSchema, {
    from: chunk.from,
    to: chunk.to,
    term: u64(chunk.term),
    imageId: chunk.imageId,
    seq: chunk.seq,
    ...(metadata === undefined ? {} : { metadata: metadataToProto(metadata) }),
    rows: chunk.rows.map(rowToProto),
    done: chunk.done,
    addresses: (chunk.addresses ?? []).map((address) =>
      create(MemberAddressSchema, {
        id: address.id,
        peerUrl: address.peerUrl,
        httpUrl: address.httpUrl ?? "",
        ...(address.addedIndex === undefined ? {} : { addedIndex: u64(address.addedIndex) }),
      }),
    ),
  });
}

function metadataToProto(metadata: SnapshotMetadata) {
  return create(SnapshotMetadataSchema, {
    index: u64(metadata.index),
    term: u64(metadata.term),
    voters: [...metadata.voters],
    learners: [...(metadata.learners ?? [])],
  });
}

function rowToProto(row: SnapshotRow): ProtoImageRow {
  return create(ImageRowSchema, { key: row.key, value: row.value, version: u64(row.version) });
}

function u64(value: number): bigint {
  assert(Number.isSafeInteger(value) && value >= 0, `not a uint64 below 2^53: ${value}`);
  return BigInt(value);
}

/**
 * Decodes and validates one chunk: ids (from != to), a term of at least 1, an image id of 1 to 128
 * characters, metadata present exactly on seq 0 (index >= 1, its term within the sender's, voters
 * and learners as for InstallSnapshot), and rows with a non-empty key, value bytes and a version of
 * at least 1 (and at most the image's index, when the metadata is in this chunk). Row values are
 * views into the request body: the receiver stages them at once.
 */
export function fromSendSnapshotChunkRequest(
  request: SendSnapshotChunkRequest,
  limits: SnapshotDecodeLimits = defaultSnapshotDecodeLimits,
): SnapshotChunk {
  const from: NodeId = nodeId(request.from, "chunk.from");
  const to: NodeId = nodeId(request.to, "chunk.to");
  if (from === to) throw new TransportDecodeError(`chunk from node ${from} to itself`);
  const term = count(request.term, "chunk.term");
  if (term === 0) throw new TransportDecodeError("chunk.term is 0: only a leader sends images");
  const imageId = text(request.imageId, "chunk.imageId", imageIdLengthMax);
  if (imageId === "") throw new TransportDecodeError("chunk.imageId is empty");
  const seq = request.seq;
  if (typeof seq !== "number" || !Number.isInteger(seq) || seq < 0 || seq > seqMax) {
    throw new TransportDecodeError(`chunk.seq is ${String(seq)}, not a uint32`);
  }
  let metadata: SnapshotMetadata | undefined;
  if (seq === 0) {
    if (request.metadata === undefined) throw new TransportDecodeError("the first chunk carries no metadata");
    metadata = snapshotMetadataFromFields(request.metadata, term, "chunk.metadata");
    if (metadata.index === 0) throw new TransportDecodeError("chunk.metadata.index is 0: an image holds at least one entry");
  } else if (request.metadata !== undefined) {
    throw new TransportDecodeError(`chunk ${seq} carries metadata, which only the first chunk may`);
  }
  if (!Array.isArray(request.rows)) throw new TransportDecodeError("chunk.rows is not a list");
  if (request.rows.length > limits.rowsPerChunkMax) {
    throw new TransportDecodeError(`chunk carries ${request.rows.length} rows, more than ${limits.rowsPerChunkMax}`);
  }
  const rows: SnapshotRow[] = [];
  for (const proto of request.rows) {
    const key = text(proto.key, "row.key", limits.keyLengthMax);
    if (key === "") throw new TransportDecodeError("row.key is empty");
    if (!(proto.value instanceof Uint8Array)) throw new TransportDecodeError(`row ${JSON.stringify(key.slice(0, 64))} has no value bytes`);
    const version = count(proto.version, "row.version");
    if (version === 0) throw new TransportDecodeError(`row ${JSON.stringify(key.slice(0, 64))} has version 0`);
    if (metadata !== undefined && version > metadata.index) {
      throw new TransportDecodeError(`row ${JSON.stringify(key.slice(0, 64))} has version ${version}, past the image's index ${metadata.index}`);
    }
    rows.push({ key, value: proto.value, version });
  }
  const addresses = addressesFromProto(request.addresses, seq, metadata?.index ?? 0);
  return { from, to, term, imageId, seq, metadata, ...(addresses.length > 0 ? { addresses } : {}), rows, done: flag(request.done, "chunk.done") };
}

/**
 * Members' addresses of a first chunk: at most 128, ids valid and distinct, URLs of 1 to 2048
 * characters (http URL may be empty), the index that added each (when given) at most the image's.
 */
function addressesFromProto(list: unknown, seq: number, imageIndex: number): PeerAddress[] {
  if (list === undefined) return [];
  if (!Array.isArray(list)) throw new TransportDecodeError("chunk.addresses is not a list");
  if (list.length > 0 && seq !== 0) throw new TransportDecodeError(`chunk ${seq} carries addresses, which only the first chunk may`);
  if (list.length > addressesMax) throw new TransportDecodeError(`chunk carries ${list.length} member addresses, more than ${addressesMax}`);
  const addresses: PeerAddress[] = [];
  const seen = new Set<NodeId>();
  for (const proto of list as { id: unknown; peerUrl: unknown; httpUrl: unknown; addedIndex?: unknown }[]) {
    const id = nodeId(proto.id, "address.id");
    if (seen.has(id)) throw new TransportDecodeError(`chunk.addresses names node ${id} twice`);
    seen.add(id);
    const peerUrl = text(proto.peerUrl, "address.peerUrl", urlLengthMax);
    if (peerUrl === "") throw new TransportDecodeError(`chunk.addresses: node ${id} has no peer URL`);
    const httpUrl = text(proto.httpUrl, "address.httpUrl", urlLengthMax);
    const addedIndex = proto.addedIndex === undefined ? undefined : count(proto.addedIndex, "address.addedIndex");
    if (addedIndex !== undefined && addedIndex > imageIndex) {
      throw new TransportDecodeError(`chunk.addresses: node ${id} was added at index ${addedIndex}, past the image's index ${imageIndex}`);
    }
    addresses.push({ id, peerUrl, ...(httpUrl === "" ? {} : { httpUrl }), ...(addedIndex === undefined ? {} : { addedIndex }) });
  }
  return addresses;
}
