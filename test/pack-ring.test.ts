// Proves the pack ring (src/storage/pack-ring.ts) never hands out bytes a region still in use holds: allocations wrap to the start only past the oldest region's end, a full ring refuses, and release frees regions oldest first once their saves were answered and the applied index passes their last entry, holding back those after one that is not yet applied or written.
import { describe, expect, test } from "bun:test";
import { createPrng } from "../src/lib/prng.ts";
import { PackRing } from "../src/storage/pack-ring.ts";

describe("pack ring", () => {
  test("regions follow one another, wrap to the start once the oldest are released, and a full ring refuses", () => {
    const ring = new PackRing(100);
    expect(ring.allocate(40, 1)?.byteOffset).toBe(0);
    expect(ring.allocate(40, 2)?.byteOffset).toBe(40);
    // 20 bytes left at the end, none free at the start.
    expect(ring.allocate(30, 3)).toBeUndefined();
    expect(ring.allocate(20, 3)?.byteOffset).toBe(80);
    expect(ring.allocate(1, 4)).toBeUndefined();
    ring.written();
    ring.written();
    ring.written();
    ring.release(1);
    expect(ring.usedBytes()).toBe(60);
    // [0, 40) is free again: the next region starts there; 41 bytes do not fit.
    expect(ring.allocate(41, 4)).toBeUndefined();
    expect(ring.allocate(40, 4)?.byteOffset).toBe(0);
    expect(ring.allocate(1, 5)).toBeUndefined();
    ring.written();
    ring.release(3);
    expect(ring.usedBytes()).toBe(40);
    // Wrapped no longer: what is in use is [0, 40), so the region goes after it.
    expect(ring.allocate(60, 5)?.byteOffset).toBe(40);
    ring.written();
    ring.release(5);
    expect(ring.usedBytes()).toBe(0);
    expect(ring.regionCount()).toBe(0);
    expect(ring.allocate(100, 6)?.byteOffset).toBe(0);
    expect(ring.allocate(101, 7)).toBeUndefined();
  });

  test("a region not yet applied holds back the release of those after it, even when their entries are", () => {
    const ring = new PackRing(100);
    ring.allocate(10, 20); // entries up to 20, say replaced later by shorter ones
    ring.allocate(10, 12);
    ring.written();
    ring.written();
    ring.release(15);
    expect(ring.regionCount()).toBe(2);
    ring.release(20);
    expect(ring.regionCount()).toBe(0);
  });

  test("a region whose save is not yet answered stays, however far the applied index is: an apply answered first may cover entries saved again after it", () => {
    const ring = new PackRing(100);
    ring.allocate(10, 1);
    ring.written();
    ring.allocate(10, 1); // entry 1 saved again (the same term) while its apply was on its way
    ring.release(1);
    expect(ring.regionCount()).toBe(1);
    expect(ring.allocate(90, 2)).toBeUndefined();
    ring.written();
    ring.release(1);
    expect(ring.regionCount()).toBe(0);
    expect(() => ring.written()).toThrow("no region waiting");
  });

  test("random allocations and releases: no two regions in use ever share a byte", () => {
    const prng = createPrng(7);
    const ring = new PackRing(1000);
    const live: { start: number; end: number; last: number; written: boolean }[] = [];
    let index = 0;
    let applied = 0;
    for (let step = 0; step < 20_000; step++) {
      if (prng.intInclusive(0, 2) > 0) {
        const length = prng.intInclusive(1, 300);
        index += prng.intInclusive(1, 5);
        const view = ring.allocate(length, index);
        if (view === undefined) continue;
        const start = view.byteOffset;
        for (const other of live) expect(start + length <= other.start || other.end <= start).toBe(true);
        expect(start + length).toBeLessThanOrEqual(1000);
        live.push({ start, end: start + length, last: index, written: false });
      } else if (prng.intInclusive(0, 1) === 0) {
        const unwritten = live.find((region) => !region.written);
        if (unwritten !== undefined) {
          ring.written();
          unwritten.written = true;
        }
      } else {
        applied = Math.min(index, applied + prng.intInclusive(0, 10));
        ring.release(applied);
        // Released are the oldest regions, those written whose last entry is applied, up to the first that is not.
        while (live.length > 0 && (live[0] as { written: boolean }).written && (live[0] as { last: number }).last <= applied) live.shift();
      }
      expect(ring.regionCount()).toBe(live.length);
      expect(ring.usedBytes()).toBe(live.reduce((sum, region) => sum + region.end - region.start, 0));
    }
  });
});
