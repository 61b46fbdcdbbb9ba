// Measures the latency histogram swap A B A B: the hand-written log-linear histogram (A,
// test/bench/hand-written/latency-histogram.ts) against src/bench/latency-histogram.ts on
// hdr-histogram-js (B): record() of bench-like latencies, and a summary (six percentiles).
// Usage: bun test/bench/latency-histogram-lib.ts [--rounds 2] [--scale 1]
import { LatencyHistogram as HdrHistogram } from "../../src/bench/latency-histogram.ts";
import { createPrng } from "../../src/lib/prng.ts";
import { LatencyHistogram as HandHistogram } from "./hand-written/latency-histogram.ts";
import { runMicro } from "./ab-micro.ts";

// Latencies as a loaded cluster answers them: mostly 0.3-30 ms, log-uniform, with a tail to 2 s.
const prng = createPrng(15);
const samplesUs = Float64Array.from({ length: 1 << 16 }, () => (prng.chance(0.01) ? 30_000 + prng.next() * 2_000_000 : 300 * 100 ** prng.next()));
const mask = samplesUs.length - 1;

function recorder(create: () => { record(us: number): void }) {
  return (operations: number) => {
    const histogram = create();
    for (let i = 0; i < operations; i++) histogram.record(samplesUs[i & mask] as number);
    return histogram;
  };
}

function summarizer(create: () => { record(us: number): void; summaryMs(): unknown }) {
  const histogram = create();
  for (const us of samplesUs) histogram.record(us);
  return (operations: number) => {
    let last: unknown;
    for (let i = 0; i < operations; i++) last = histogram.summaryMs();
    return last;
  };
}

await runMicro([
  {
    label: "histogram record",
    operations: 5_000_000,
    a: { name: "hand-written", run: recorder(() => new HandHistogram()) },
    b: { name: "hdr-histogram-js", run: recorder(() => new HdrHistogram()) },
  },
  {
    label: "histogram summary (min, mean, p50, p90, p99, p99.9, max) of 65,536 samples",
    operations: 20_000,
    a: { name: "hand-written", run: summarizer(() => new HandHistogram()) },
    b: { name: "hdr-histogram-js", run: summarizer(() => new HdrHistogram()) },
  },
]);
