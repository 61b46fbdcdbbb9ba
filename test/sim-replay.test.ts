// Proves that a simulator seed replays bit for bit: a seed's random choices are drawn in a fixed
// order (no engine-dependent comparator shuffles), so running it twice gives the same digest.
import { expect, test } from "bun:test";
import { createPrng, type Prng } from "../src/lib/prng.ts";
import { drawPartition, runSwarm } from "../src/sim/swarm.ts";

/** A generator that counts its draws. */
function countingPrng(seed: number): { prng: Prng; draws: () => number } {
  const inner = createPrng(seed);
  let draws = 0;
  const prng: Prng = {
    next: () => {
      draws++;
      return inner.next();
    },
    intInclusive: (min, max) => min + Math.floor(prng.next() * (max - min + 1)),
    chance: (p) => prng.next() < p,
    pick: (items) => items[Math.floor(prng.next() * items.length)] as (typeof items)[number],
    shuffle: (items) => {
      const shuffled = items.slice();
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = prng.intInclusive(0, i);
        [shuffled[i], shuffled[j]] = [shuffled[j] as (typeof items)[number], shuffled[i] as (typeof items)[number]];
      }
      return shuffled;
    },
  };
  return { prng, draws: () => draws };
}

test("a partition draws exactly one number per node, whatever the outcome", () => {
  for (const size of [2, 3, 5, 7]) {
    const ids = Array.from({ length: size }, (_, i) => i + 1);
    for (let seed = 1; seed <= 200; seed++) {
      const { prng, draws } = countingPrng(seed);
      const [left, right] = drawPartition(prng, ids);
      expect(draws()).toBe(size);
      expect(left.length).toBeGreaterThan(0);
      expect(right.length).toBeGreaterThan(0);
      expect([...left, ...right].sort((a, b) => a - b)).toEqual(ids);
    }
  }
});

test("Prng.shuffle is a Fisher-Yates permutation drawing length - 1 numbers", () => {
  const seen = new Set<string>();
  for (let seed = 1; seed <= 500; seed++) {
    const { prng, draws } = countingPrng(seed);
    const real = createPrng(seed).shuffle([1, 2, 3, 4]);
    const counted = prng.shuffle([1, 2, 3, 4]);
    expect(real).toEqual(counted); // the real shuffle draws exactly as the counted one does
    expect(draws()).toBe(3);
    seen.add(real.join(""));
  }
  expect(seen.size).toBe(24); // every order of four comes up
});

test("300 swarm seeds run twice give the same digest", () => {
  const seeds = Array.from({ length: 300 }, (_, i) => 700_001 + i);
  const first = seeds.map((seed) => runSwarm(seed).digest);
  const second = seeds.map((seed) => runSwarm(seed).digest);
  const differing = seeds.filter((_, i) => first[i] !== second[i]);
  expect(differing).toEqual([]);
  expect(new Set(first).size).toBeGreaterThan(290); // digests really depend on the run
}, 120_000);
