/**
 * The binary encoding of key-value commands carried in Raft entry data.
 *
 * Layout (no JSON, no base64; the op byte doubles as the format tag):
 * ```
 * put:    [0x01] [key length: unsigned LEB128, minimal] [key: UTF-8] [value: every remaining byte]
 * delete: [0x02] [key length: unsigned LEB128, minimal] [key: UTF-8]
 * ```
 * Empty entry data is a leader's no-op (thesis §6.4), never a command: `decodeCommand` rejects it,
 * callers test `isNoopData` first. A committed entry that does not decode is corruption or a bug,
 * so decoding is strict: unknown op, non-minimal or overlong varint, truncated or invalid UTF-8
 * key, and trailing bytes after a delete all throw a `CommandCodecError`.
 */

/** Keys longer than this (in UTF-8 bytes) cannot be encoded; the HTTP layer should refuse them earlier. */
export const commandKeyBytesMax = 64 * 1024;

/** A 64 KiB key length needs 3 LEB128 bytes (21 bits); anything longer is garbage. */
const keyLengthVarintBytesMax = 3;

const opPut = 0x01;
const opDelete = 0x02;

/** Set `key` to `value`. */
export interface PutCommand {
  readonly op: "put";
  readonly key: string;
  readonly value: Uint8Array;
}

/** Remove `key` (a no-op on the data when absent, but still a versioned write). */
export interface DeleteCommand {
  readonly op: "delete";
  readonly key: string;
}

/** A state-machine command: what a normal, non-empty Raft entry carries. */
export type Command = PutCommand | DeleteCommand;

/** Thrown when a command cannot be encoded (invalid key) or entry data does not decode. */
export class CommandCodecError extends Error {
  override name = "CommandCodecError";
}

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 throws instead of becoming U+FFFD; ignoreBOM: a key starting with U+FEFF keeps it.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** True for a leader's no-op entry, which carries no command. */
export function isNoopData(data: Uint8Array): boolean {
  return data.byteLength === 0;
}

/**
 * Encodes a command into fresh bytes. Throws `CommandCodecError` when the key holds a lone
 * surrogate (it would not round-trip through UTF-8) or is longer than `commandKeyBytesMax`.
 */
export function encodeCommand(command: Command): Uint8Array {
  if (!command.key.isWellFormed()) throw new CommandCodecError("encode: key holds a lone UTF-16 surrogate");
  const keyBytes = utf8Encoder.encode(command.key);
  if (keyBytes.byteLength > commandKeyBytesMax) {
    throw new CommandCodecError(`encode: key of ${keyBytes.byteLength} bytes exceeds ${commandKeyBytesMax}`);
  }
  const valueBytes = command.op === "put" ? command.value.byteLength : 0;
  const out = new Uint8Array(1 + varintByteLength(keyBytes.byteLength) + keyBytes.byteLength + valueBytes);
  switch (command.op) {
    case "put":
      out[0] = opPut;
      break;
    case "delete":
      out[0] = opDelete;
      break;
    default:
      command satisfies never;
      throw new CommandCodecError(`encode: unknown op ${JSON.stringify((command as { op: unknown }).op)}`);
  }
  let offset = writeVarint(out, 1, keyBytes.byteLength);
  out.set(keyBytes, offset);
  offset += keyBytes.byteLength;
  if (command.op === "put") out.set(command.value, offset);
  return out;
}

/**
 * Decodes entry data into a command. A put's `value` is a view into `data` (no copy): do not
 * mutate `data` afterwards. Throws `CommandCodecError` on empty data and on any malformed input.
 */
export function decodeCommand(data: Uint8Array): Command {
  if (data.byteLength === 0) throw new CommandCodecError("decode: empty data is a no-op entry, not a command");
  const op = data[0] as number;
  if (op !== opPut && op !== opDelete) {
    throw new CommandCodecError(`decode: unknown op byte 0x${op.toString(16).padStart(2, "0")} in ${data.byteLength} bytes`);
  }
  const { value: keyLength, next: keyStart } = readVarint(data, 1);
  if (keyLength > commandKeyBytesMax) {
    throw new CommandCodecError(`decode: key length ${keyLength} exceeds ${commandKeyBytesMax}`);
  }
  const keyEnd = keyStart + keyLength;
  if (keyEnd > data.byteLength) {
    throw new CommandCodecError(`decode: key of ${keyLength} bytes runs past the end of ${data.byteLength} bytes`);
  }
  let key: string;
  try {
    key = utf8Decoder.decode(data.subarray(keyStart, keyEnd));
  } catch {
    throw new CommandCodecError("decode: key is not valid UTF-8");
  }
  if (op === opPut) return { op: "put", key, value: data.subarray(keyEnd) };
  if (keyEnd !== data.byteLength) {
    throw new CommandCodecError(`decode: ${data.byteLength - keyEnd} trailing bytes after a delete`);
  }
  return { op: "delete", key };
}

function varintByteLength(value: number): number {
  let length = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    length++;
  }
  return length;
}

/** Writes `value` as unsigned LEB128 at `offset`; returns the offset after it. */
function writeVarint(out: Uint8Array, offset: number, value: number): number {
  while (value >= 0x80) {
    out[offset++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[offset++] = value;
  return offset;
}

/** Reads a minimal unsigned LEB128 of at most `keyLengthVarintBytesMax` bytes. */
function readVarint(data: Uint8Array, offset: number): { value: number; next: number } {
  let value = 0;
  for (let byteCount = 0; byteCount < keyLengthVarintBytesMax; byteCount++) {
    const byte = data[offset + byteCount];
    if (byte === undefined) throw new CommandCodecError("decode: truncated key length");
    value += (byte & 0x7f) * 2 ** (7 * byteCount);
    if ((byte & 0x80) === 0) {
      if (byte === 0 && byteCount > 0) throw new CommandCodecError("decode: non-minimal key length");
      return { value, next: offset + byteCount + 1 };
    }
  }
  throw new CommandCodecError(`decode: key length longer than ${keyLengthVarintBytesMax} bytes`);
}
