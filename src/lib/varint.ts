// Unsigned LEB128 (protobuf varints) for non-negative safe integers: shared by the command codec
// (src/kv/command.ts) and the peer calls' writer (src/transport/proto-writer.ts).

/** Bytes `value` takes as unsigned LEB128. */
export function varintByteLength(value: number): number {
  let length = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    length++;
  }
  return length;
}

/** Writes `value` as unsigned LEB128 at `offset`; returns the offset after it. */
export function writeVarint(out: Uint8Array, offset: number, value: number): number {
  while (value >= 0x80) {
    out[offset++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[offset++] = value;
  return offset;
}

