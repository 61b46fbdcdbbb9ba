/**
 * A small seeded pseudo-random generator (xoshiro128**, seeded by splitmix32).
 * Raft and the simulator take one of these instead of Math.random so that a seed replays a run.
 */
export interface Prng {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [min, max], both ends included. */
  intInclusive(min: number, max: number): number;
  /** True with probability `p`. */
  chance(p: number): boolean;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
  /**
   * A new array with the elements of `items` in a random order (Fisher-Yates): exactly
   * `items.length - 1` draws, so the stream after it does not depend on anything but the length.
   * Never shuffle with `sort(() => prng.next() - 0.5)`: how often an engine calls the comparator
   * is its own business, and the draws that follow would shift with it.
   */
  shuffle<T>(items: readonly T[]): T[];
}

function splitmix32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** Creates a generator whose whole sequence is fixed by `seed`. */
export function createPrng(seed: number): Prng {
  const init = splitmix32(seed);
  // xoshiro128** state: four 32-bit words, never all zero.
  let a = init() | 1;
  let b = init();
  let c = init();
  let d = init();
  const nextUint32 = (): number => {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return result;
  };
  const prng: Prng = {
    next: () => nextUint32() / 4294967296,
    intInclusive(min, max) {
      if (max < min) throw new RangeError(`intInclusive: max ${max} < min ${min}`);
      return min + Math.floor(prng.next() * (max - min + 1));
    },
    chance: (p) => prng.next() < p,
    pick<T>(items: readonly T[]): T {
      if (items.length === 0) throw new RangeError("pick from an empty array");
      return items[Math.floor(prng.next() * items.length)] as T;
    },
    shuffle<T>(items: readonly T[]): T[] {
      const shuffled = items.slice();
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = prng.intInclusive(0, i);
        const swap = shuffled[i] as T;
        shuffled[i] = shuffled[j] as T;
        shuffled[j] = swap;
      }
      return shuffled;
    },
  };
  return prng;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
