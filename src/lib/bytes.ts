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

/** Options of {@link ScratchBuffers}. */
export interface ScratchBuffersOptions {
  /** Requests below this many bytes get a buffer of their own (small ones cost little). */
  readonly lendBytesMin: number;
  /** Requests above this many bytes get a buffer of their own, never kept. */
  readonly bufferBytesMax: number;
  /** Bytes of buffers kept for lending at most; a buffer given back past this is left to the collector. */
  readonly keptBytesMax: number;
}

/** Kept buffers grow in steps of this many bytes, so one fits requests of about its size. */
const scratchStepBytes = 64 * 1024;

/**
 * Buffers lent for bytes that live only until a call completes, then given back for the next call:
 * the encoding of a request to a peer, which the socket writes and then drops. A new buffer for each
 * call was garbage within milliseconds, and the collector frees large garbage late, so each call
 * wrote into pages the kernel had to hand over and zero first (BENCHMARKS.md, 256 KB values: at the
 * leader about 85 page faults a write, and a turn that sent 2-3 MB took 30 ms of its thread's CPU,
 * two thirds in the kernel). A lent buffer's pages stay with the process.
 *
 * Whoever takes a buffer gives it back only once nothing reads it any more.
 */
export class ScratchBuffers {
  private readonly free: Uint8Array[] = [];
  private keptBytes = 0;
  /** The whole buffer behind each view lent, by its ArrayBuffer (only those can be given back). */
  private readonly lent = new WeakMap<ArrayBufferLike, Uint8Array>();

  constructor(private readonly options: ScratchBuffersOptions) {}

  /** `length` bytes, contents arbitrary: from a kept buffer when one fits, else a new one. */
  take(length: number): Uint8Array {
    const { lendBytesMin, bufferBytesMax } = this.options;
    if (length < lendBytesMin || length > bufferBytesMax) return uninitializedBytes(length);
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = (this.free[i] as Uint8Array).byteLength;
      if (size >= length && (best < 0 || size < (this.free[best] as Uint8Array).byteLength)) best = i;
    }
    let whole: Uint8Array;
    if (best >= 0) {
      whole = this.free.splice(best, 1)[0] as Uint8Array;
      this.keptBytes -= whole.byteLength;
    } else {
      whole = uninitializedBytes(Math.min(bufferBytesMax, Math.ceil(length / scratchStepBytes) * scratchStepBytes));
    }
    this.lent.set(whole.buffer, whole);
    return whole.subarray(0, length);
  }

  /** Gives back bytes `take` returned: their buffer may be lent again, so nothing may use them after. */
  give(bytes: Uint8Array): void {
    const whole = this.lent.get(bytes.buffer);
    if (whole === undefined) return; // a buffer of its own
    this.lent.delete(bytes.buffer);
    if (this.keptBytes + whole.byteLength > this.options.keptBytesMax) return;
    this.free.push(whole);
    this.keptBytes += whole.byteLength;
  }

  /** Bytes of the buffers kept for lending. */
  kept(): number {
    return this.keptBytes;
  }
}
