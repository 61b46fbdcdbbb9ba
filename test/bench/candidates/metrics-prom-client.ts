/**
 * NOT USED BY kv: the B side of test/bench/metrics-lib.ts. src/lib/metrics.ts (hand-written) stays,
 * because prom-client cost 3.5-5.5x as much per observe, inc and scrape, far beyond the noise (see
 * BENCHMARKS.md, "Library swaps"). This is what the swap would be, kept so the measurement can be
 * repeated: the same MetricsRegistry interface (render() becomes async, as prom-client's get() is).
 *
 * prom-client's Counter, Gauge and Histogram keep the series (label hashing, bucket counts, sums),
 * in a registry of their own (never prom-client's global one). What kv needs is added on top:
 * - Bounded: each metric keeps at most `seriesMax` label combinations; further ones are dropped and
 *   counted in `kv_metrics_series_dropped_total`.
 * - Samples read at scrape time from elsewhere (`collected`), as counters or gauges.
 * - The text format exactly as src/lib/metrics.ts writes it (labels in declared order, `le` last,
 *   no blank lines between metrics): prom-client's own renderer puts `le` first and a blank line
 *   between metrics, which would change every scrape's bytes (test/metrics.test.ts).
 * prom-client's default process metrics are not registered: they would add series to /metrics.
 */
import { Counter as PromCounter, Gauge as PromGauge, Histogram as PromHistogram, Registry as PromRegistry } from "prom-client";
import { assert } from "../../../src/lib/assert.ts";

/** The Content-Type of the text exposition format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Label values by label name; every declared label must be given. */
export type Labels<L extends string> = { readonly [K in L]: string };

/** A value that only goes up (resets when the process restarts). */
export interface Counter<L extends string = never> {
  inc(labels: Labels<L>, by?: number): void;
}

/** A value that goes up and down. */
export interface Gauge<L extends string = never> {
  set(labels: Labels<L>, value: number): void;
}

/** Counts observations into cumulative buckets, with their sum and count. */
export interface Histogram<L extends string = never> {
  observe(labels: Labels<L>, value: number): void;
}

/** Where metrics are declared, refreshed and rendered. */
export interface MetricsRegistry {
  counter<L extends string = never>(name: string, help: string, labelNames?: readonly L[]): Counter<L>;
  gauge<L extends string = never>(name: string, help: string, labelNames?: readonly L[]): Gauge<L>;
  /** `buckets` are upper bounds, strictly increasing; `+Inf` is added. */
  histogram<L extends string = never>(name: string, help: string, buckets: readonly number[], labelNames?: readonly L[]): Histogram<L>;
  /**
   * A counter or gauge whose samples are read from elsewhere at each render (counters another
   * component keeps, state read at scrape time). `read` must return a bounded number of samples.
   */
  collected<L extends string = never>(
    name: string,
    help: string,
    type: "counter" | "gauge",
    labelNames: readonly L[],
    read: () => Iterable<readonly [Labels<L>, number]>,
  ): void;
  /** Runs `collect` before each render: for gauges read from elsewhere at scrape time. */
  onCollect(collect: () => void): void;
  /** Every metric in the text format, in the order declared. */
  render(): Promise<string>;
}

/** Bucket bounds in seconds for latencies from 100 µs to 10 s. */
export const LATENCY_BUCKETS_S: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

const metricNamePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelNamePattern = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** One sample as prom-client's `get()` reports it (histogram buckets carry `le` among the labels). */
interface PromSample {
  readonly labels: Partial<Record<string, string | number>>;
  readonly value: number;
  readonly metricName?: string;
}

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  render(lines: string[]): void | Promise<void>;
}

/** Creates a registry. `seriesMax` bounds the label combinations of each metric. */
export function createMetricsRegistry(options: { seriesMax?: number } = {}): MetricsRegistry {
  const seriesMax = options.seriesMax ?? 1_000;
  assert(Number.isSafeInteger(seriesMax) && seriesMax >= 1, "seriesMax must be a positive whole number");
  const promRegistry = new PromRegistry();
  const metrics: Metric[] = [];
  const names = new Set<string>();
  const collectors: (() => void)[] = [];
  let droppedSeries = 0;

  function declare(name: string, labelNames: readonly string[]): void {
    assert(metricNamePattern.test(name), `bad metric name ${name}`);
    assert(!names.has(name), `metric ${name} declared twice`);
    for (const label of labelNames) assert(labelNamePattern.test(label) && label !== "le", `bad label name ${label} on ${name}`);
    assert(new Set(labelNames).size === labelNames.length, `label names repeat on ${name}`);
    names.add(name);
  }

  /**
   * The labels object handed to prom-client for `labels`, in declared order (prom-client keeps the
   * first object it sees per series), or undefined when the series would pass `seriesMax`.
   */
  function createSeriesGate(name: string, labelNames: readonly string[]) {
    const known = new Map<string, Record<string, string>>();
    const none: Record<string, string> = {};
    return (labels: Record<string, string>): Record<string, string> | undefined => {
      if (labelNames.length === 0) return none;
      let key = "";
      for (const label of labelNames) {
        const value = labels[label];
        assert(typeof value === "string", `metric ${name} needs label ${label}`);
        key += `${value}\u0000`;
      }
      let ordered = known.get(key);
      if (ordered === undefined) {
        if (known.size >= seriesMax) {
          droppedSeries++;
          return undefined;
        }
        ordered = {};
        for (const label of labelNames) ordered[label] = labels[label] as string;
        known.set(key, ordered);
      }
      return ordered;
    };
  }

  /** Renders what a prom-client metric holds, labels in declared order and `le` last. */
  function promMetric(name: string, help: string, type: Metric["type"], labelNames: readonly string[], source: { get(): Promise<{ values: PromSample[] }> }): Metric {
    return {
      name,
      help,
      type,
      async render(lines) {
        for (const sample of (await source.get()).values) {
          const parts: string[] = [];
          for (const label of labelNames) parts.push(`${label}="${escapeLabelValue(String(sample.labels[label]))}"`);
          const le = sample.labels.le;
          if (le !== undefined) parts.push(`le="${typeof le === "number" ? formatNumber(le) : le}"`);
          lines.push(sampleLine(sample.metricName ?? name, parts.join(","), sample.value));
        }
      },
    };
  }

  const registry: MetricsRegistry = {
    counter<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
      declare(name, labelNames);
      const counter = new PromCounter<string>({ name, help, labelNames: [...labelNames], registers: [promRegistry] });
      const gate = createSeriesGate(name, labelNames);
      metrics.push(promMetric(name, help, "counter", labelNames, counter as unknown as { get(): Promise<{ values: PromSample[] }> }));
      return {
        inc(labels, by = 1) {
          assert(by >= 0, `counter ${name} cannot go down`);
          const ordered = gate(labels);
          if (ordered !== undefined) counter.inc(ordered, by);
        },
      };
    },

    gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Gauge<L> {
      declare(name, labelNames);
      const gauge = new PromGauge<string>({ name, help, labelNames: [...labelNames], registers: [promRegistry] });
      const gate = createSeriesGate(name, labelNames);
      metrics.push(promMetric(name, help, "gauge", labelNames, gauge as unknown as { get(): Promise<{ values: PromSample[] }> }));
      return {
        set(labels, value) {
          const ordered = gate(labels);
          if (ordered !== undefined) gauge.set(ordered, value);
        },
      };
    },

    histogram<L extends string = never>(name: string, help: string, buckets: readonly number[], labelNames: readonly L[] = []): Histogram<L> {
      declare(name, labelNames);
      assert(buckets.length >= 1, `histogram ${name} needs buckets`);
      for (let i = 1; i < buckets.length; i++) assert((buckets[i] as number) > (buckets[i - 1] as number), `buckets of ${name} must increase`);
      const histogram = new PromHistogram<string>({ name, help, labelNames: [...labelNames], buckets: [...buckets], registers: [promRegistry] });
      const gate = createSeriesGate(name, labelNames);
      metrics.push(promMetric(name, help, "histogram", labelNames, histogram as unknown as { get(): Promise<{ values: PromSample[] }> }));
      return {
        observe(labels, observed) {
          // prom-client throws on a value that is not finite; a NaN or infinite duration is a bug of
          // the clock, not of the request: it is not counted.
          if (!Number.isFinite(observed)) return;
          const ordered = gate(labels);
          if (ordered !== undefined) histogram.observe(ordered, observed);
        },
      };
    },

    collected<L extends string = never>(
      name: string,
      help: string,
      type: "counter" | "gauge",
      labelNames: readonly L[],
      read: () => Iterable<readonly [Labels<L>, number]>,
    ): void {
      declare(name, labelNames);
      metrics.push({
        name,
        help,
        type,
        render(lines) {
          let count = 0;
          for (const [labels, value] of read()) {
            if (++count > seriesMax) {
              droppedSeries++;
              continue;
            }
            const rendered = labelNames
              .map((label) => {
                const labelValue = (labels as Record<string, string>)[label];
                assert(typeof labelValue === "string", `metric ${name} needs label ${label}`);
                return `${label}="${escapeLabelValue(labelValue)}"`;
              })
              .join(",");
            lines.push(sampleLine(name, rendered, value));
          }
        },
      });
    },

    onCollect(collect) {
      collectors.push(collect);
    },

    async render() {
      for (const collect of collectors) collect();
      const lines: string[] = [];
      for (const metric of metrics) {
        lines.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
        lines.push(`# TYPE ${metric.name} ${metric.type}`);
        await metric.render(lines);
      }
      lines.push("# HELP kv_metrics_series_dropped_total Observations dropped because a metric reached its limit of label combinations.");
      lines.push("# TYPE kv_metrics_series_dropped_total counter");
      lines.push(sampleLine("kv_metrics_series_dropped_total", "", droppedSeries));
      return `${lines.join("\n")}\n`;
    },
  };
  return registry;
}

function sampleLine(name: string, labels: string, value: number): string {
  return labels === "" ? `${name} ${formatNumber(value)}` : `${name}{${labels}} ${formatNumber(value)}`;
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}
