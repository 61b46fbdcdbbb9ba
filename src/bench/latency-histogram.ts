/**
 * The latency histogram of `kv bench`, on `hdr-histogram-js` (HdrHistogram's JavaScript port):
 * log-linear buckets over microseconds with two significant decimal digits, so memory is fixed per
 * histogram however long the run, and any percentile is exact below 256 µs and above it at most
 * 1/128 (~0.8%) higher than the true sample.
 *
 * What HdrHistogram does not keep is kept here: the exact sum (its mean is estimated from bucket
 * midpoints) and counts per power of two for the log-scale picture. Replacing the hand-written
 * histogram cost nothing measurable: see test/bench/latency-histogram.ts and BENCHMARKS.md.
 */
// The Float64 histogram's own module, not the package's index: the index also loads the WebAssembly
// build (a 39 KB base64 string), pako and base64-js, which cost every `kv` command ~5-10 ms of CPU at
// start (src/cli/main.ts loads the bench command eagerly); with this module alone the built
// executable starts as fast as with the hand-written histogram (BENCHMARKS.md, "Library swaps").
import Float64HistogramImport from "hdr-histogram-js/dist/Float64Histogram.js";

/**
 * The class itself. The module is CommonJS (`exports.default = Float64Histogram`): Bun's runtime
 * hands `exports.default` as the default import, but the bundler of `bun build --compile` hands the
 * whole `exports` object, so the built executable must look one level deeper (test/bench.test.ts,
 * "the built executable's kv bench runs").
 */
const Float64Histogram: typeof Float64HistogramImport =
  (Float64HistogramImport as unknown as { default?: typeof Float64HistogramImport }).default ?? Float64HistogramImport;

/** Values below this many microseconds are counted exactly (two significant digits: 2 × 10², rounded up to a power of two). */
export const EXACT_US = 256;
/** Rows of {@link LatencyHistogram.rowsByPowerOfTwo}: row 0 holds 0 µs, row k holds [2^(k-1), 2^k); 2^53 bounds any safe integer. */
const ROWS = 55;

/** One row of the printed histogram: values in [fromUs, toUs). */
export interface HistogramRow {
  readonly fromUs: number;
  readonly toUs: number;
  readonly count: number;
}

/** Latency percentiles and extremes, in milliseconds. */
export interface LatencySummaryMs {
  readonly min: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

/** The row of a whole, non-negative number of microseconds: 0 for 0, floor(log2(us)) + 1 otherwise. */
function rowOf(valueUs: number): number {
  if (valueUs < 1) return 0;
  if (valueUs < 2 ** 31) return 32 - Math.clz32(valueUs);
  let row = Math.floor(Math.log2(valueUs)) + 1;
  // Math.log2 may round across a power of two for large values: correct by one either way.
  if (2 ** (row - 1) > valueUs) row -= 1;
  else if (2 ** row <= valueUs) row += 1;
  return row;
}

/** Records latencies in microseconds; O(1) per record, fixed memory. */
export class LatencyHistogram {
  /** Lowest discernible value 1 µs; an hour in µs covers every run without a resize (it grows on demand); two significant digits. */
  private readonly hdr = Object.assign(new Float64Histogram(1, 3_600_000_000, 2), { autoResize: true });
  private readonly rows = new Float64Array(ROWS);
  private total = 0;
  private sumUs = 0;
  private minUs = Number.POSITIVE_INFINITY;
  private maxUs = 0;

  /** Counts one latency; fractions are rounded to the nearest microsecond, negatives to 0, beyond 2^53 to 2^53 - 1. */
  record(valueUs: number): void {
    const value = Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, Math.round(valueUs)));
    this.hdr.recordValue(value);
    const row = rowOf(value);
    this.rows[row] = (this.rows[row] as number) + 1;
    this.total += 1;
    this.sumUs += value;
    if (value < this.minUs) this.minUs = value;
    if (value > this.maxUs) this.maxUs = value;
  }

  /** Adds every count of `other` to this histogram. */
  add(other: LatencyHistogram): void {
    this.hdr.add(other.hdr);
    for (let i = 0; i < ROWS; i++) this.rows[i] = (this.rows[i] as number) + (other.rows[i] as number);
    this.total += other.total;
    this.sumUs += other.sumUs;
    this.minUs = Math.min(this.minUs, other.minUs);
    this.maxUs = Math.max(this.maxUs, other.maxUs);
  }

  get count(): number {
    return this.total;
  }

  get minValueUs(): number {
    return this.total === 0 ? 0 : this.minUs;
  }

  get maxValueUs(): number {
    return this.maxUs;
  }

  get meanUs(): number {
    return this.total === 0 ? 0 : this.sumUs / this.total;
  }

  /**
   * The value at `percentile` (0-100]: the largest value of the bucket holding the sample of rank
   * ceil(p/100 × count) (HdrHistogram's rule), clamped to the recorded min and max. Exact below
   * {@link EXACT_US}; above, at most 1/128 higher than the true sample. 0 when nothing was recorded.
   */
  valueAtPercentileUs(percentile: number): number {
    if (!(percentile > 0 && percentile <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${percentile}`);
    if (this.total === 0) return 0;
    return Math.min(this.maxUs, Math.max(this.minUs, this.hdr.getValueAtPercentile(percentile)));
  }

  /** min, mean, p50, p90, p99, p99.9 and max in milliseconds. */
  summaryMs(): LatencySummaryMs {
    const ms = (us: number) => us / 1000;
    return {
      min: ms(this.minValueUs),
      mean: ms(this.meanUs),
      p50: ms(this.valueAtPercentileUs(50)),
      p90: ms(this.valueAtPercentileUs(90)),
      p99: ms(this.valueAtPercentileUs(99)),
      p999: ms(this.valueAtPercentileUs(99.9)),
      max: ms(this.maxValueUs),
    };
  }

  /**
   * Counts per power of two of microseconds ([64, 128), [128, 256), ...), from the row holding the
   * minimum to the row holding the maximum, empty rows included: the log-scale picture of the run.
   */
  rowsByPowerOfTwo(): HistogramRow[] {
    if (this.total === 0) return [];
    const rows: HistogramRow[] = [];
    for (let row = rowOf(this.minValueUs); row <= rowOf(this.maxValueUs); row++) {
      const fromUs = row === 0 ? 0 : 2 ** (row - 1);
      rows.push({ fromUs, toUs: 2 ** row, count: this.rows[row] as number });
    }
    return rows;
  }
}
