// Proves ScratchBuffers (src/lib/bytes.ts): a buffer given back is lent again for a request it fits,
// the smallest that fits first; requests below the lending size or above the largest buffer get
// buffers of their own that are never kept; buffers kept for lending stay within their byte bound;
// and a buffer is lent to one taker at a time.
import { describe, expect, test } from "bun:test";
import { ScratchBuffers } from "../src/lib/bytes.ts";

const KiB = 1024;
const options = { lendBytesMin: 64 * KiB, bufferBytesMax: 1024 * KiB, keptBytesMax: 512 * KiB };

describe("scratch buffers", () => {
  test("a buffer given back is lent again for a request it fits, and never to two takers at once", () => {
    const scratch = new ScratchBuffers(options);
    const first = scratch.take(100 * KiB);
    expect(first.byteLength).toBe(100 * KiB);
    const second = scratch.take(100 * KiB);
    expect(second.buffer).not.toBe(first.buffer); // both lent: two buffers
    scratch.give(first);
    expect(scratch.kept()).toBe(128 * KiB); // rounded up to a 64 KiB step
    const again = scratch.take(120 * KiB);
    expect(again.buffer).toBe(first.buffer);
    expect(again.byteLength).toBe(120 * KiB);
    expect(scratch.kept()).toBe(0);
    // Too big for the kept one: a new buffer.
    scratch.give(again);
    const bigger = scratch.take(200 * KiB);
    expect(bigger.buffer).not.toBe(first.buffer);
    expect(scratch.kept()).toBe(128 * KiB);
  });

  test("the smallest buffer that fits is lent first", () => {
    const scratch = new ScratchBuffers(options);
    const large = scratch.take(300 * KiB);
    const small = scratch.take(70 * KiB);
    scratch.give(large);
    scratch.give(small);
    expect(scratch.take(65 * KiB).buffer).toBe(small.buffer);
    expect(scratch.take(65 * KiB).buffer).toBe(large.buffer);
  });

  test("small and oversized requests get buffers of their own, never kept; kept bytes stay within their bound", () => {
    const scratch = new ScratchBuffers(options);
    const small = scratch.take(1 * KiB);
    const huge = scratch.take(2048 * KiB);
    expect(small.byteLength).toBe(1 * KiB);
    expect(huge.byteLength).toBe(2048 * KiB);
    scratch.give(small);
    scratch.give(huge);
    expect(scratch.kept()).toBe(0);
    // Given back one by one: what passes 512 KiB is left to the collector.
    const lent = [scratch.take(200 * KiB), scratch.take(200 * KiB), scratch.take(200 * KiB)];
    for (const bytes of lent) scratch.give(bytes);
    expect(scratch.kept()).toBe(2 * 256 * KiB);
    // A view given back twice, or one never lent, changes nothing.
    scratch.give(lent[0] as Uint8Array);
    scratch.give(new Uint8Array(100 * KiB));
    expect(scratch.kept()).toBe(2 * 256 * KiB);
  });
});
