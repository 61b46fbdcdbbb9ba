/**
 * A tiny Prometheus registry with no dependencies: counters, gauges and histograms with labels,
 * rendered in Prometheus's text exposition format 0.0.4.
 *
 * Bounded: each metric keeps at most `seriesMax` label combinations; observations for further ones
 * are dropped and counted in `kv_metrics_series_dropped_total`, never stored. Callers keep label
 * values to small fixed sets (route templates, status codes, peer ids), never raw input.
 */
import { assert } from "./assert.ts";

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
  render(): string;
}

/** Bucket bounds in seconds for latencies from 100 µs to 10 s. */
export const LATENCY_BUCKETS_S: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

const metricNamePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelNamePattern = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  render(lines: string[]): void;
}

/** Creates a registry. `seriesMax` bounds the label combinations of each metric. */
export function createMetricsRegistry(options: { seriesMax?: number } = {}): MetricsRegistry {
  const seriesMax = options.seriesMax ?? 1_000;
  assert(Number.isSafeInteger(seriesMax) && seriesMax >= 1, "seriesMax must be a positive whole number");
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

  /** One map of series per metric, keyed by the label values in declared order. */
  function createSeries<T>(name: string, labelNames: readonly string[], create: () => T) {
    const series = new Map<string, { labels: string; value: T }>();
    const store = {
      series,
      get(labels: Record<string, string>): T | undefined {
        const values = labelNames.map((label) => {
          const value = labels[label];
          assert(typeof value === "string", `metric ${name} needs label ${label}`);
          return value;
        });
        const key = values.join("\u0000");
        let entry = series.get(key);
        if (entry === undefined) {
          if (series.size >= seriesMax) {
            droppedSeries++;
            return undefined;
          }
          entry = { labels: labelNames.map((label, i) => `${label}="${escapeLabelValue(values[i] as string)}"`).join(","), value: create() };
          series.set(key, entry);
        }
        return entry.value;
      },
    };
    // A metric without labels has exactly one series: show it from the start, at zero.
    if (labelNames.length === 0) store.get({});
    return store;
  }

  const registry: MetricsRegistry = {
    counter<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
      declare(name, labelNames);
      const store = createSeries(name, labelNames, () => ({ value: 0 }));
      metrics.push({
        name,
        help,
        type: "counter",
        render(lines) {
          for (const { labels, value } of store.series.values()) lines.push(sample(name, labels, value.value));
        },
      });
      return {
        inc(labels, by = 1) {
          assert(by >= 0, `counter ${name} cannot go down`);
          const cell = store.get(labels);
          if (cell !== undefined) cell.value += by;
        },
      };
    },

    gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Gauge<L> {
      declare(name, labelNames);
      const store = createSeries(name, labelNames, () => ({ value: 0 }));
      metrics.push({
        name,
        help,
        type: "gauge",
        render(lines) {
          for (const { labels, value } of store.series.values()) lines.push(sample(name, labels, value.value));
        },
      });
      return {
        set(labels, value) {
          const cell = store.get(labels);
          if (cell !== undefined) cell.value = value;
        },
      };
    },

    histogram<L extends string = never>(name: string, help: string, buckets: readonly number[], labelNames: readonly L[] = []): Histogram<L> {
      declare(name, labelNames);
      assert(buckets.length >= 1, `histogram ${name} needs buckets`);
      for (let i = 1; i < buckets.length; i++) assert((buckets[i] as number) > (buckets[i - 1] as number), `buckets of ${name} must increase`);
      const store = createSeries(name, labelNames, () => ({ counts: new Array<number>(buckets.length).fill(0), sum: 0, count: 0 }));
      metrics.push({
        name,
        help,
        type: "histogram",
        render(lines) {
          for (const { labels, value } of store.series.values()) {
            const prefix = labels === "" ? "" : `${labels},`;
            let cumulative = 0;
            buckets.forEach((bound, i) => {
              cumulative += value.counts[i] as number;
              lines.push(sample(`${name}_bucket`, `${prefix}le="${formatNumber(bound)}"`, cumulative));
            });
            lines.push(sample(`${name}_bucket`, `${prefix}le="+Inf"`, value.count));
            lines.push(sample(`${name}_sum`, labels, value.sum));
            lines.push(sample(`${name}_count`, labels, value.count));
          }
        },
      });
      return {
        observe(labels, observed) {
          if (Number.isNaN(observed)) return;
          const cell = store.get(labels);
          if (cell === undefined) return;
          const bucket = buckets.findIndex((bound) => observed <= bound);
          if (bucket !== -1) cell.counts[bucket] = (cell.counts[bucket] as number) + 1;
          cell.sum += observed;
          cell.count += 1;
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
            lines.push(sample(name, rendered, value));
          }
        },
      });
    },

    onCollect(collect) {
      collectors.push(collect);
    },

    render() {
      for (const collect of collectors) collect();
      const lines: string[] = [];
      for (const metric of metrics) {
        lines.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
        lines.push(`# TYPE ${metric.name} ${metric.type}`);
        metric.render(lines);
      }
      lines.push("# HELP kv_metrics_series_dropped_total Observations dropped because a metric reached its limit of label combinations.");
      lines.push("# TYPE kv_metrics_series_dropped_total counter");
      lines.push(sample("kv_metrics_series_dropped_total", "", droppedSeries));
      return `${lines.join("\n")}\n`;
    },
  };
  return registry;
}

function sample(name: string, labels: string, value: number): string {
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
