// A/B/A/B harness for the library-swap micro benchmarks (test/bench/*-lib.ts): runs each side's
// workload in alternating rounds in one process and prints ns per operation per round, so a
// difference can be judged against the spread between rounds of the same side (the noise).
import { parseArgs } from "node:util";

/** One side of a comparison: `run(n)` performs n operations (awaited when it returns a promise) and returns a value kept alive (so the work is not optimised away). */
export interface MicroSide {
  readonly name: string;
  readonly run: (operations: number) => unknown;
}

/** One measured workload: a label, how many operations per round, and the two sides. */
export interface MicroCase {
  readonly label: string;
  readonly operations: number;
  readonly a: MicroSide;
  readonly b: MicroSide;
}

/** ns per operation of each round, in the order run (A, B, A, B, ...). */
export interface MicroResult {
  readonly label: string;
  readonly aNs: number[];
  readonly bNs: number[];
}

let sink: unknown;

async function timeNsPerOp(side: MicroSide, operations: number): Promise<number> {
  const start = Bun.nanoseconds();
  sink = await side.run(operations);
  return (Bun.nanoseconds() - start) / operations;
}

/** `--rounds N` (pairs of A B; default 2, so A B A B) and `--scale X` (multiplies every case's operations; default 1). */
export function microOptions(): { rounds: number; scale: number } {
  const { values } = parseArgs({ options: { rounds: { type: "string" }, scale: { type: "string" } } });
  return { rounds: Number(values.rounds ?? 2), scale: Number(values.scale ?? 1) };
}

/** Runs every case A B A B (after one untimed warm-up round of each side) and prints a table. */
export async function runMicro(cases: readonly MicroCase[], options = microOptions()): Promise<MicroResult[]> {
  const results: MicroResult[] = [];
  for (const micro of cases) {
    const operations = Math.max(1, Math.round(micro.operations * options.scale));
    await micro.a.run(Math.max(1, Math.floor(operations / 4)));
    await micro.b.run(Math.max(1, Math.floor(operations / 4)));
    const aNs: number[] = [];
    const bNs: number[] = [];
    for (let round = 0; round < options.rounds; round++) {
      Bun.gc(true);
      aNs.push(await timeNsPerOp(micro.a, operations));
      Bun.gc(true);
      bNs.push(await timeNsPerOp(micro.b, operations));
    }
    results.push({ label: micro.label, aNs, bNs });
    const spread = (xs: number[]) => (Math.max(...xs) - Math.min(...xs)) / Math.min(...xs);
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(x < 10 ? 2 : 0)).join(" / ");
    const ratio = Math.min(...bNs) / Math.min(...aNs);
    console.log(
      `${micro.label}: A ${micro.a.name} ${fmt(aNs)} ns/op (spread ${(spread(aNs) * 100).toFixed(0)}%); ` +
        `B ${micro.b.name} ${fmt(bNs)} ns/op (spread ${(spread(bNs) * 100).toFixed(0)}%); B/A (best of each) ${ratio.toFixed(2)}x`,
    );
  }
  if (sink === Symbol.for("never")) console.log(sink);
  return results;
}
