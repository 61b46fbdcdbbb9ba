/**
 * The backup file (`GET /snapshot`, `kv snapshot save|status|restore`): one consistent image of the
 * state machine with the metadata a new cluster starts from. It lives with the state machine (src/kv)
 * because it is the state machine's rows and configuration, written and read as bytes; it does no
 * I/O of its own (the HTTP route streams what `BackupWriter` makes, the CLI feeds files to
 * `readBackup`).
 *
 * Layout (all integers big-endian; "u53" is a safe integer as two u32 words, high then low):
 *
 *   preamble   "KVSNAP" (6 ASCII bytes), u16 format version (1)
 *   frame*     u8 kind, u32 payload length, payload, u32 CRC-32 of (kind, length, payload)
 *     kind 1   header, exactly once, first: UTF-8 JSON {index, term, voters, learners, addresses,
 *              createdAtMs, source?: {nodeId?, clusterId?}}; unknown fields are ignored, so a later
 *              release may add one without a new version
 *     kind 2   one row of the kv table, in key order: u32 key length, key (UTF-8), u32 value length,
 *              value, u53 version, u32 extra length, extra: UTF-8 JSON of every other field the
 *              image's row carries (a Uint8Array as {"$bytes": base64}), empty when there is none.
 *              Sessions, and whatever else rides in the table under a reserved key, come along.
 *     kind 3   trailer, exactly once, last: u53 row count, then the SHA-256 of every byte of the
 *              file before this frame
 *   end of file right after the trailer
 *
 * A reader refuses (BackupFormatError, with a code saying what is wrong) a wrong magic, an unknown
 * version, a frame cut short, a frame whose CRC does not match, an unknown kind, a row count or
 * SHA-256 that does not match, and bytes after the trailer. `readBackup` yields rows as it reads
 * them, before the trailer is checked: a consumer acts on them for good only after the `end` item
 * (restore stages them apart and installs only then).
 */
import { createHash, type Hash } from "node:crypto";
import type { NodeId } from "../raft/types.ts";
import type { KvRow } from "./apply-plan.ts";
import { isAddedIndex, type MemberAddress } from "./membership.ts";
import { isReservedKey } from "./command.ts";
import { StateHasher } from "./state-hash.ts";

/** The first six bytes of every backup file. */
export const BACKUP_MAGIC = "KVSNAP";
/** The format version this release writes, and the only one it reads. */
export const BACKUP_FORMAT_VERSION = 1;
/** Bytes before the first frame: the magic and the u16 version. */
export const BACKUP_PREAMBLE_BYTES = 8;
/** A frame's payload larger than this is damage: a row holds at most a 16 MiB value and a 16 KiB key. */
export const BACKUP_FRAME_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
/** A header larger than this is damage. */
export const BACKUP_HEADER_BYTES_MAX = 1024 * 1024;
/** The content type `GET /snapshot` answers with. */
export const BACKUP_CONTENT_TYPE = "application/vnd.kv.snapshot";

const FRAME_HEAD_BYTES = 5; // kind + length
const FRAME_CRC_BYTES = 4;
const SHA256_BYTES = 32;
const TRAILER_PAYLOAD_BYTES = 8 + SHA256_BYTES;

/** What kind of frame: see the layout above. */
const FrameKind = { header: 1, row: 2, trailer: 3 } as const;

/** The metadata a backup opens with: where the image stands and the configuration then. */
export interface BackupHeader {
  /** The applied index the image was read at: every row's version is at most this. */
  readonly index: number;
  /** The log's term at `index`. */
  readonly term: number;
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
  /** Every member's recorded addresses as of `index`. */
  readonly addresses: readonly MemberAddress[];
  /** Wall-clock time the image was opened, in ms since the epoch (informational). */
  readonly createdAtMs: number;
  /** The node that served it and its cluster id, when known (informational). */
  readonly source?: { readonly nodeId?: NodeId; readonly clusterId?: string };
}

/** What the trailer says, verified. */
export interface BackupTrailer {
  readonly rowCount: number;
  /** SHA-256 of the file before the trailer, lowercase hex. */
  readonly sha256: string;
}

/** What `readBackup` yields, in this order: one header, rows in batches, one end. */
export type BackupItem =
  | { readonly kind: "header"; readonly formatVersion: number; readonly header: BackupHeader }
  | { readonly kind: "rows"; readonly rows: KvRow[] }
  | { readonly kind: "end"; readonly trailer: BackupTrailer; readonly fileBytes: number };

/** What is wrong with a file that is not a whole, intact backup. */
export type BackupFormatErrorCode =
  | "bad_magic" // not a kv backup at all
  | "unsupported_version" // written by a format version this release does not read
  | "truncated" // the file ends before its trailer
  | "frame_checksum" // a frame's CRC-32 does not match: a damaged byte
  | "bad_frame" // a frame of an unknown kind, out of place, or of an impossible length
  | "bad_header" // the header is not the JSON it must be
  | "bad_row" // a row whose fields do not decode
  | "row_count_mismatch" // the trailer counts another number of rows
  | "checksum_mismatch" // the SHA-256 of the file does not match the trailer's
  | "trailing_bytes"; // bytes after the trailer

/** A backup file refused; `offset` is where in the file the problem was found. */
export class BackupFormatError extends Error {
  override name = "BackupFormatError";
  constructor(
    readonly code: BackupFormatErrorCode,
    message: string,
    readonly offset: number,
  ) {
    super(`${message} (${code}, at byte ${offset})`);
  }
}

const utf8Encoder = new TextEncoder();
/** A key that starts with U+FEFF keeps it (a TextDecoder drops it unless told not to). */
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Writes a safe non-negative integer as two big-endian u32 words. */
function setUint53(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, Math.floor(value / 2 ** 32));
  view.setUint32(offset + 4, value >>> 0);
}

function getUint53(view: DataView, offset: number): number {
  const high = view.getUint32(offset);
  // Above 2^53 - 1 it is no index this release could have written.
  if (high >= 2 ** 21) return Number.NaN;
  return high * 2 ** 32 + view.getUint32(offset + 4);
}

/** The fields of a row beyond key, value and version, as the `extra` JSON carries them. */
function extraJson(row: KvRow): string {
  let extra: Record<string, unknown> | undefined;
  for (const [name, value] of Object.entries(row)) {
    if (name === "key" || name === "value" || name === "version" || value === undefined) continue;
    extra ??= {};
    extra[name] = value instanceof Uint8Array ? { $bytes: Buffer.from(value).toString("base64") } : value;
  }
  return extra === undefined ? "" : JSON.stringify(extra);
}

/**
 * Makes a backup's bytes, in order: `begin()`, `rows()` as many times as needed, `end()`. Each call
 * returns the bytes to append; the writer keeps the running SHA-256 and the row count.
 */
export class BackupWriter {
  private readonly hash: Hash = createHash("sha256");
  private rowCount = 0;
  private state: "new" | "rows" | "ended" = "new";

  constructor(private readonly header: BackupHeader) {}

  /** The preamble and the header frame. */
  begin(): Uint8Array {
    if (this.state !== "new") throw new Error("BackupWriter.begin called twice");
    this.state = "rows";
    const preamble = new Uint8Array(BACKUP_PREAMBLE_BYTES);
    preamble.set(utf8Encoder.encode(BACKUP_MAGIC), 0);
    new DataView(preamble.buffer).setUint16(6, BACKUP_FORMAT_VERSION);
    const header = this.header;
    const json = JSON.stringify({
      index: header.index,
      term: header.term,
      voters: header.voters,
      learners: header.learners,
      addresses: header.addresses,
      createdAtMs: header.createdAtMs,
      ...(header.source === undefined ? {} : { source: header.source }),
    });
    return this.hashed(concat([preamble, frame(FrameKind.header, utf8Encoder.encode(json))]));
  }

  /** One frame per row, every field the row carries. */
  rows(rows: readonly KvRow[]): Uint8Array {
    if (this.state !== "rows") throw new Error("BackupWriter.rows outside begin() ... end()");
    const frames: Uint8Array[] = [];
    for (const row of rows) {
      const key = utf8Encoder.encode(row.key);
      const extra = utf8Encoder.encode(extraJson(row));
      const payload = new Uint8Array(4 + key.byteLength + 4 + row.value.byteLength + 8 + 4 + extra.byteLength);
      const view = new DataView(payload.buffer);
      let at = 0;
      view.setUint32(at, key.byteLength);
      payload.set(key, (at += 4));
      view.setUint32((at += key.byteLength), row.value.byteLength);
      payload.set(row.value, (at += 4));
      setUint53(view, (at += row.value.byteLength), row.version);
      view.setUint32((at += 8), extra.byteLength);
      payload.set(extra, (at += 4));
      frames.push(frame(FrameKind.row, payload));
    }
    this.rowCount += rows.length;
    return this.hashed(concat(frames));
  }

  /** The trailer: the row count and the SHA-256 of everything before it. */
  end(): Uint8Array {
    if (this.state !== "rows") throw new Error("BackupWriter.end outside begin() ... end()");
    this.state = "ended";
    const payload = new Uint8Array(TRAILER_PAYLOAD_BYTES);
    setUint53(new DataView(payload.buffer), 0, this.rowCount);
    payload.set(this.hash.digest(), 8);
    return frame(FrameKind.trailer, payload);
  }

  private hashed(bytes: Uint8Array): Uint8Array {
    this.hash.update(bytes);
    return bytes;
  }
}

function frame(kind: number, payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(FRAME_HEAD_BYTES + payload.byteLength + FRAME_CRC_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, kind);
  view.setUint32(1, payload.byteLength);
  bytes.set(payload, FRAME_HEAD_BYTES);
  view.setUint32(FRAME_HEAD_BYTES + payload.byteLength, Bun.hash.crc32(bytes.subarray(0, FRAME_HEAD_BYTES + payload.byteLength)));
  return bytes;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  let length = 0;
  for (const part of parts) length += part.byteLength;
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.byteLength;
  }
  return bytes;
}

/** Bytes arriving in chunks, read from the front. */
class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0; // offset into chunks[0]
  length = 0;
  /** Bytes consumed so far: the file offset of the front. */
  offset = 0;

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.byteLength;
  }

  /** The next `count` bytes (at most `length`), removed from the queue. */
  take(count: number): Uint8Array {
    const out = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0] as Uint8Array;
      const piece = Math.min(count - filled, chunk.byteLength - this.head);
      out.set(chunk.subarray(this.head, this.head + piece), filled);
      filled += piece;
      this.head += piece;
      if (this.head === chunk.byteLength) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.length -= count;
    this.offset += count;
    return out;
  }
}

/** Options of `readBackup`. */
export interface ReadBackupOptions {
  /** Rows are yielded in batches of about this many key and value bytes (default 1 MiB). */
  readonly batchBytes?: number;
}

/**
 * Reads and verifies a backup from its bytes in chunks (a file's or a response's stream). Yields the
 * header, then rows in batches, then `end` once the trailer matched; throws BackupFormatError at the
 * first problem. Memory stays at about one frame and one batch.
 */
export async function* readBackup(source: AsyncIterable<Uint8Array>, options: ReadBackupOptions = {}): AsyncGenerator<BackupItem> {
  const batchBytes = options.batchBytes ?? 1024 * 1024;
  const chunks = source[Symbol.asyncIterator]();
  const queue = new ByteQueue();
  let ended = false;
  const fill = async (count: number): Promise<boolean> => {
    while (queue.length < count && !ended) {
      const next = await chunks.next();
      if (next.done === true) ended = true;
      else queue.push(next.value);
    }
    return queue.length >= count;
  };
  const hash = createHash("sha256");

  try {
    if (!(await fill(BACKUP_PREAMBLE_BYTES))) {
      const got = queue.length;
      if (got < BACKUP_MAGIC.length || String.fromCharCode(...queue.take(BACKUP_MAGIC.length)) !== BACKUP_MAGIC) {
        throw new BackupFormatError("bad_magic", `not a kv backup: it is ${got} bytes long and does not start with ${BACKUP_MAGIC}`, 0);
      }
      throw new BackupFormatError("truncated", "the file ends inside its preamble", got);
    }
    const preamble = queue.take(BACKUP_PREAMBLE_BYTES);
    hash.update(preamble);
    if (String.fromCharCode(...preamble.subarray(0, 6)) !== BACKUP_MAGIC) {
      throw new BackupFormatError("bad_magic", `not a kv backup: it does not start with ${BACKUP_MAGIC}`, 0);
    }
    const formatVersion = new DataView(preamble.buffer).getUint16(6);
    if (formatVersion !== BACKUP_FORMAT_VERSION) {
      throw new BackupFormatError(
        "unsupported_version",
        `format version ${formatVersion}; this release of kv reads version ${BACKUP_FORMAT_VERSION} only${formatVersion > BACKUP_FORMAT_VERSION ? " (the file is from a newer release)" : ""}`,
        6,
      );
    }

    let header: BackupHeader | undefined;
    let rowCount = 0;
    let previousKey: Uint8Array | undefined;
    let batch: KvRow[] = [];
    let batchSize = 0;
    for (;;) {
      const frameOffset = queue.offset;
      if (!(await fill(FRAME_HEAD_BYTES))) {
        throw new BackupFormatError("truncated", `the file ends after ${rowCount} rows, before its trailer`, frameOffset + queue.length);
      }
      const head = queue.take(FRAME_HEAD_BYTES);
      const headView = new DataView(head.buffer);
      const kind = headView.getUint8(0);
      const length = headView.getUint32(1);
      if (kind !== FrameKind.header && kind !== FrameKind.row && kind !== FrameKind.trailer) {
        throw new BackupFormatError("bad_frame", `a frame of unknown kind ${kind}: the file is damaged`, frameOffset);
      }
      const lengthMax = kind === FrameKind.header ? BACKUP_HEADER_BYTES_MAX : kind === FrameKind.trailer ? TRAILER_PAYLOAD_BYTES : BACKUP_FRAME_PAYLOAD_BYTES_MAX;
      if (length > lengthMax || (kind === FrameKind.trailer && length !== TRAILER_PAYLOAD_BYTES)) {
        throw new BackupFormatError("bad_frame", `a frame of kind ${kind} claims ${length} bytes: the file is damaged`, frameOffset);
      }
      if (!(await fill(length + FRAME_CRC_BYTES))) {
        throw new BackupFormatError("truncated", `the file ends inside a frame (after ${rowCount} rows), before its trailer`, queue.offset + queue.length);
      }
      const payload = queue.take(length);
      const crcBytes = queue.take(FRAME_CRC_BYTES);
      const crc = new DataView(crcBytes.buffer).getUint32(0);
      if (Bun.hash.crc32(payload, Bun.hash.crc32(head)) !== crc) {
        throw new BackupFormatError("frame_checksum", `the CRC-32 of a frame (kind ${kind}, ${length} bytes) does not match: the file is damaged`, frameOffset);
      }

      if (kind === FrameKind.trailer) {
        if (header === undefined) throw new BackupFormatError("bad_frame", "the trailer comes before any header", frameOffset);
        const view = new DataView(payload.buffer);
        const trailerRows = getUint53(view, 0);
        if (trailerRows !== rowCount) {
          throw new BackupFormatError("row_count_mismatch", `the trailer counts ${trailerRows} rows, the file holds ${rowCount}`, frameOffset);
        }
        const expected = Buffer.from(payload.subarray(8)).toString("hex");
        const actual = hash.digest("hex");
        if (actual !== expected) {
          throw new BackupFormatError("checksum_mismatch", `the file's SHA-256 is ${actual}, its trailer says ${expected}: the file is damaged`, frameOffset);
        }
        if (await fill(1)) throw new BackupFormatError("trailing_bytes", "bytes follow the trailer: the file is damaged or two files were joined", queue.offset);
        if (batch.length > 0) yield { kind: "rows", rows: batch };
        yield { kind: "end", trailer: { rowCount, sha256: expected }, fileBytes: queue.offset };
        return;
      }

      hash.update(head);
      hash.update(payload);
      hash.update(crcBytes);
      if (kind === FrameKind.header) {
        if (header !== undefined) throw new BackupFormatError("bad_frame", "a second header", frameOffset);
        header = parseHeader(payload, frameOffset);
        yield { kind: "header", formatVersion, header };
        continue;
      }
      if (header === undefined) throw new BackupFormatError("bad_frame", "a row before the header", frameOffset);
      const row = parseRow(payload, frameOffset);
      if (row.version > header.index) {
        throw new BackupFormatError("bad_row", `key ${JSON.stringify(row.key.slice(0, 64))} has version ${row.version}, past the image's index ${header.index}`, frameOffset);
      }
      // Rows come in the state machine's key order (UTF-8 bytes), each key once: a file that breaks
      // it would restore to another state than its state hash says, or be refused only by the
      // restore (found in a black-box review: kv snapshot status called such files verified).
      const keyBytes = payload.slice(4, 4 + new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0));
      if (previousKey !== undefined && Buffer.compare(previousKey, keyBytes) >= 0) {
        throw new BackupFormatError("bad_row", `key ${JSON.stringify(row.key.slice(0, 64))} does not come after the row before it (${Buffer.compare(previousKey, keyBytes) === 0 ? "the same key twice" : "out of key order"}): the file is damaged`, frameOffset);
      }
      previousKey = keyBytes;
      rowCount++;
      batch.push(row);
      batchSize += length;
      if (batchSize >= batchBytes) {
        yield { kind: "rows", rows: batch };
        batch = [];
        batchSize = 0;
      }
    }
  } finally {
    await chunks.return?.();
  }
}

function isNodeId(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}

function parseHeader(payload: Uint8Array, offset: number): BackupHeader {
  let json: unknown;
  try {
    json = JSON.parse(utf8Decoder.decode(payload));
  } catch (error) {
    throw new BackupFormatError("bad_header", `the header is not UTF-8 JSON: ${error instanceof Error ? error.message : String(error)}`, offset);
  }
  const bad = (what: string): never => {
    throw new BackupFormatError("bad_header", `the header's ${what}`, offset);
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) return bad("JSON is not an object");
  const fields = json as Record<string, unknown>;
  const { index, term, voters, learners, addresses, createdAtMs, source } = fields;
  if (typeof index !== "number" || !Number.isSafeInteger(index) || index < 0) return bad("index is not a whole number");
  if (typeof term !== "number" || !Number.isSafeInteger(term) || term < 0 || (index > 0 && term < 1)) return bad("term is not a whole number (at least 1 past index 0)");
  if (!Array.isArray(voters) || !voters.every(isNodeId) || (index > 0 && voters.length === 0)) return bad("voters are not a list of node ids");
  if (!Array.isArray(learners) || !learners.every(isNodeId)) return bad("learners are not a list of node ids");
  if (!Array.isArray(addresses)) return bad("addresses are not a list");
  const parsedAddresses: MemberAddress[] = addresses.map((address: unknown) => {
    const a = address as Record<string, unknown> | null;
    if (
      typeof a !== "object" ||
      a === null ||
      !isNodeId(a.id) ||
      typeof a.peerUrl !== "string" ||
      (a.httpUrl !== undefined && typeof a.httpUrl !== "string") ||
      (a.addedIndex !== undefined && !isAddedIndex(a.addedIndex, index))
    ) {
      return bad("addresses hold an entry that is not {id, peerUrl[, httpUrl][, addedIndex]}");
    }
    return { id: a.id, peerUrl: a.peerUrl, ...(typeof a.httpUrl === "string" ? { httpUrl: a.httpUrl } : {}), ...(isAddedIndex(a.addedIndex) ? { addedIndex: a.addedIndex } : {}) };
  });
  // A time a Date holds (±8.64e15 ms): `kv snapshot status` prints it (found in review: a RangeError).
  if (typeof createdAtMs !== "number" || !Number.isFinite(createdAtMs) || Math.abs(createdAtMs) > 8.64e15) return bad("createdAtMs is not a time");
  let parsedSource: BackupHeader["source"];
  if (source !== undefined) {
    const s = source as Record<string, unknown> | null;
    if (typeof s !== "object" || s === null || (s.nodeId !== undefined && !isNodeId(s.nodeId)) || (s.clusterId !== undefined && typeof s.clusterId !== "string")) {
      return bad("source is not {nodeId?, clusterId?}");
    }
    parsedSource = { ...(s.nodeId === undefined ? {} : { nodeId: s.nodeId as number }), ...(s.clusterId === undefined ? {} : { clusterId: s.clusterId as string }) };
  }
  return {
    index,
    term,
    voters: voters as number[],
    learners: learners as number[],
    addresses: parsedAddresses,
    createdAtMs,
    ...(parsedSource === undefined ? {} : { source: parsedSource }),
  };
}

function parseRow(payload: Uint8Array, offset: number): KvRow {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const bad = (what: string): never => {
    throw new BackupFormatError("bad_row", `a row ${what}`, offset);
  };
  let at = 0;
  const field = (name: string): Uint8Array => {
    if (at + 4 > payload.byteLength) return bad(`ends before its ${name}`);
    const length = view.getUint32(at);
    at += 4;
    if (at + length > payload.byteLength) return bad(`has a ${name} longer than its frame`);
    const bytes = payload.subarray(at, at + length);
    at += length;
    return bytes;
  };
  let key: string;
  try {
    key = utf8Decoder.decode(field("key"));
  } catch (error) {
    if (error instanceof BackupFormatError) throw error;
    return bad("has a key that is not UTF-8");
  }
  if (key === "") bad("has an empty key");
  const value = field("value").slice();
  if (at + 8 > payload.byteLength) return bad("ends before its version");
  const version = getUint53(view, at);
  at += 8;
  if (!Number.isSafeInteger(version) || version < 1) return bad(`has version ${version}`);
  const extraBytes = field("extra fields");
  if (at !== payload.byteLength) bad("has bytes past its fields");
  if (extraBytes.byteLength === 0) return { key, value, version };
  let extra: unknown;
  try {
    extra = JSON.parse(utf8Decoder.decode(extraBytes));
  } catch {
    return bad("has extra fields that are not UTF-8 JSON");
  }
  if (typeof extra !== "object" || extra === null || Array.isArray(extra)) return bad("has extra fields that are not a JSON object");
  const fields: Record<string, unknown> = {};
  for (const [name, fieldValue] of Object.entries(extra as Record<string, unknown>)) {
    if (name === "key" || name === "value" || name === "version") return bad(`repeats ${name} in its extra fields`);
    const bytes = (fieldValue as { $bytes?: unknown } | null)?.$bytes;
    fields[name] = typeof bytes === "string" ? new Uint8Array(Buffer.from(bytes, "base64")) : fieldValue;
  }
  return { ...fields, key, value, version } as KvRow;
}

/** What a verified backup holds: `verifyBackup`'s answer. */
export interface BackupSummary {
  readonly formatVersion: number;
  readonly header: BackupHeader;
  /** Rows of the kv table, sessions and other reserved rows included. */
  readonly rowCount: number;
  /** Rows whose key is a client's (not under the reserved NUL prefix). */
  readonly keyCount: number;
  /** Bytes of keys and values of all rows. */
  readonly dataBytes: number;
  /** Highest version of any row (at most `header.index`). */
  readonly versionMax: number;
  readonly sha256: string;
  readonly fileBytes: number;
  /** The state hash of its rows (src/kv/state-hash.ts): what `GET /hash` answered at its index, and what a cluster restored from it answers until it takes writes. */
  readonly stateHash: string;
}

/** Reads a whole backup and checks it; throws BackupFormatError when it is not intact. */
export async function verifyBackup(source: AsyncIterable<Uint8Array>): Promise<BackupSummary> {
  let formatVersion = 0;
  let header: BackupHeader | undefined;
  let keyCount = 0;
  let dataBytes = 0;
  let versionMax = 0;
  const hasher = new StateHasher();
  for await (const item of readBackup(source)) {
    switch (item.kind) {
      case "header":
        formatVersion = item.formatVersion;
        header = item.header;
        break;
      case "rows":
        for (const row of item.rows) {
          if (!isReservedKey(row.key)) keyCount++;
          dataBytes += utf8Encoder.encode(row.key).byteLength + row.value.byteLength;
          versionMax = Math.max(versionMax, row.version);
          hasher.add(row);
        }
        break;
      case "end":
        if (header === undefined) throw new Error("readBackup ended without a header");
        return {
          formatVersion,
          header,
          rowCount: item.trailer.rowCount,
          keyCount,
          dataBytes,
          versionMax,
          sha256: item.trailer.sha256,
          fileBytes: item.fileBytes,
          stateHash: hasher.finish(header).hash,
        };
    }
  }
  throw new Error("readBackup ended without its end item");
}
