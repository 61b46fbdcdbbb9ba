// NOT USED BY kv: the hand-written histogram kv bench had until src/bench/latency-histogram.ts moved
// to hdr-histogram-js. Kept as the A side of test/bench/latency-histogram-lib.ts.
/**
 * An HDR-style latency histogram: fixed log-linear buckets over microseconds, so memory is one
 * counter per bucket however long the run, and any percentile is off by at most 1/64 (~1.6%).
 *
 * Values below {@link EXACT_US} land in a bucket of their own (exact). Above, each power of two
 * [2^k, 2^(k+1)) is split into {@link SUB_BUCKETS} equal buckets: the top 7 significant bits of the
 * value pick the bucket, as in HdrHistogram with a precision of two significant decimal digits.
 */
const SUB_BUCKET_BITS = 7;
/** Values below this many microseconds are counted exactly. */
export const EXACT_US = 1 << SUB_BUCKET_BITS; // 128
/** Buckets per power of two above EXACT_US. */
const SUB_BUCKETS = EXACT_US / 2; // 64
/** The largest value with its own bucket: 2^40 µs (~12.7 days); larger values share the last one. */
export const TRACKED_US_MAX = 2 ** 40;
const BUCKET_COUNT = indexOf(TRACKED_US_MAX - 1) + 1;

/** floor(log2(n)) for a whole n >= 1, corrected where Math.log2 rounds across a power of two. */
function floorLog2(n: number): number {
  let exponent = Math.floor(Math.log2(n));
  if (2 ** exponent > n) exponent -= 1;
  else if (2 ** (exponent + 1) <= n) exponent += 1;
  return exponent;
}

/** Bucket index of a whole, non-negative number of microseconds below TRACKED_US_MAX. */
function indexOf(valueUs: number): number {
  if (valueUs < EXACT_US) return valueUs;
  // exponent = how far the value moves right so that its top bits fall in [64, 128).
  const exponent = floorLog2(valueUs) - (SUB_BUCKET_BITS - 1);
  const top = Math.floor(valueUs / 2 ** exponent);
  return EXACT_US + (exponent - 1) * SUB_BUCKETS + (top - SUB_BUCKETS);
}

/** The smallest and largest microsecond values that fall in bucket `index`. */
function boundsOf(index: number): { lowUs: number; highUs: number } {
  if (index < EXACT_US) return { lowUs: index, highUs: index };
  const exponent = Math.floor((index - EXACT_US) / SUB_BUCKETS) + 1;
  const top = ((index - EXACT_US) % SUB_BUCKETS) + SUB_BUCKETS;
  return { lowUs: top * 2 ** exponent, highUs: (top + 1) * 2 ** exponent - 1 };
}

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

/** Records latencies in microseconds; O(1) per record, fixed memory. */
export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKET_COUNT);
  private total = 0;
  private sumUs = 0;
  private minUs = Number.POSITIVE_INFINITY;
  private maxUs = 0;

  /** Counts one latency; fractions are rounded to the nearest microsecond, negatives to 0. */
  record(valueUs: number): void {
    const value = Math.max(0, Math.round(valueUs));
    const index = value >= TRACKED_US_MAX ? BUCKET_COUNT - 1 : indexOf(value);
    this.counts[index] = (this.counts[index] as number) + 1;
    this.total += 1;
    this.sumUs += value;
    if (value < this.minUs) this.minUs = value;
    if (value > this.maxUs) this.maxUs = value;
  }

  /** Adds every count of `other` to this histogram. */
  add(other: LatencyHistogram): void {
    for (let i = 0; i < BUCKET_COUNT; i++) this.counts[i] = (this.counts[i] as number) + (other.counts[i] as number);
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
   * ceil(p/100 × count), clamped to the recorded min and max. Exact below {@link EXACT_US}; above,
   * at most 1/64 higher than the true sample. 0 when nothing was recorded.
   */
  valueAtPercentileUs(percentile: number): number {
    if (!(percentile > 0 && percentile <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${percentile}`);
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil((percentile / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKET_COUNT; i++) {
      seen += this.counts[i] as number;
      if (seen >= rank) return Math.min(this.maxUs, Math.max(this.minUs, boundsOf(i).highUs));
    }
    return this.maxUs;
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
    const rowOf = (us: number) => (us < 1 ? 0 : floorLog2(us) + 1); // row 0 holds 0 µs
    const rowCounts = new Map<number, number>();
    for (let i = 0; i < BUCKET_COUNT; i++) {
      const count = this.counts[i] as number;
      if (count === 0) continue;
      const row = rowOf(boundsOf(i).lowUs);
      rowCounts.set(row, (rowCounts.get(row) ?? 0) + count);
    }
    const rows: HistogramRow[] = [];
    for (let row = rowOf(this.minValueUs); row <= rowOf(this.maxValueUs); row++) {
      const fromUs = row === 0 ? 0 : 2 ** (row - 1);
      rows.push({ fromUs, toUs: 2 ** row, count: rowCounts.get(row) ?? 0 });
    }
    return rows;
  }
}
