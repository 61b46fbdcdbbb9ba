/** Below this, `uninitializedBytes` allocates as usual (zeroing a few pages costs nothing worth saving). */
const uninitializedBytesMin = 16 * 1024;

/**
 * A plain Uint8Array of `length` bytes whose contents are whatever memory held: for buffers the
 * caller overwrites entirely (an encoded command, a peer call). Zero-filling a fresh buffer was as
 * costly as the copy that fills it: 1 MiB allocated and filled in 150 µs, 80 µs without the zeroing
 * (BENCHMARKS.md, 256 KB values). A plain Uint8Array, not the Buffer it comes from, so `slice`
 * still copies.
 */
export function uninitializedBytes(length: number): Uint8Array {
  if (length < uninitializedBytesMin) return new Uint8Array(length);
  const buffer = Buffer.allocUnsafeSlow(length);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, length);
}
