import { formatMix, OPERATION_KINDS, type OperationKind } from "./bench-options.ts";
import type { BenchResult, LeaderEvent } from "./bench-runner.ts";
import type { LatencySummaryMs } from "./latency-histogram.ts";
import type { WatchBenchReport } from "./watch-load.ts";

/** Per-kind figures in the JSON report. */
export interface KindReport {
  readonly ok: number;
  readonly notFound: number;
  readonly errors: number;
  readonly opsPerSec: number;
  readonly latencyMs: LatencySummaryMs;
}

/** The `--json` report: stable field names, milliseconds and operations per second. */
export interface BenchReport {
  readonly target: string;
  readonly description: string;
  readonly endpoints: readonly string[];
  readonly clients: number;
  readonly durationMs: number | null;
  readonly requests: number | null;
  readonly valueBytes: number;
  readonly keys: number;
  readonly mix: string;
  readonly consistency: string;
  readonly elapsedMs: number;
  readonly ok: number;
  readonly errors: number;
  readonly opsPerSec: number;
  readonly latencyMs: LatencySummaryMs;
  readonly byKind: Readonly<Partial<Record<OperationKind, KindReport>>>;
  /** Log-scale histogram of successful latencies: [fromMs, toMs) and count. */
  readonly histogram: ReadonlyArray<{ readonly fromMs: number; readonly toMs: number; readonly count: number }>;
  readonly errorsByKind: Readonly<Record<string, number>>;
  readonly redirects: number;
  /** null for a target without a leader. */
  readonly leaderChanges: number | null;
  readonly leaders: readonly LeaderEvent[] | null;
  readonly interrupted: boolean;
  /** With `--watchers N`: what the watch streams delivered. */
  readonly watch?: WatchBenchReport;
  /** With `--idle-watchers N`: the idle streams held open through the run. */
  readonly idleWatch?: IdleWatchReport;
}

/** The idle watchers of a run (`--idle-watchers N`). */
export interface IdleWatchReport {
  readonly watchers: number;
  readonly endpoint: string;
  readonly prefix: string;
  /** From the first connect to the last stream's first answer. */
  readonly openMs: number;
  /** Streams that ended before the run did, by reason (each resumed). */
  readonly streamsEnded: Readonly<Record<string, number>>;
  /** Openings refused before the first answer and tried again. */
  readonly openRetries: number;
}

const round3 = (n: number) => Math.round(n * 1000) / 1000;

function roundSummary(summary: LatencySummaryMs): LatencySummaryMs {
  return {
    min: round3(summary.min),
    mean: round3(summary.mean),
    p50: round3(summary.p50),
    p90: round3(summary.p90),
    p99: round3(summary.p99),
    p999: round3(summary.p999),
    max: round3(summary.max),
  };
}

/** The machine-readable report of a run. */
export function benchReport(result: BenchResult, watch?: WatchBenchReport, idleWatch?: IdleWatchReport): BenchReport {
  const seconds = result.elapsedMs / 1000;
  const byKind: Partial<Record<OperationKind, KindReport>> = {};
  let ok = 0;
  let errors = 0;
  for (const kind of OPERATION_KINDS) {
    const counts = result.byKind[kind];
    ok += counts.ok;
    errors += counts.errors;
    if (counts.ok + counts.errors === 0) continue;
    byKind[kind] = {
      ok: counts.ok,
      notFound: counts.notFound,
      errors: counts.errors,
      opsPerSec: Math.round((counts.ok / seconds) * 10) / 10,
      latencyMs: roundSummary(counts.latency.summaryMs()),
    };
  }
  const options = result.options;
  return {
    target: options.target,
    description: result.description,
    endpoints: options.endpoints,
    clients: options.clients,
    durationMs: options.stop.kind === "duration" ? options.stop.durationMs : null,
    requests: options.stop.kind === "requests" ? options.stop.requests : null,
    valueBytes: options.valueBytes,
    keys: options.keys,
    mix: formatMix(options.mix),
    consistency: options.consistency,
    elapsedMs: Math.round(result.elapsedMs),
    ok,
    errors,
    opsPerSec: Math.round((ok / seconds) * 10) / 10,
    latencyMs: roundSummary(result.latency.summaryMs()),
    byKind,
    histogram: result.latency.rowsByPowerOfTwo().map((row) => ({ fromMs: row.fromUs / 1000, toMs: row.toUs / 1000, count: row.count })),
    errorsByKind: Object.fromEntries([...result.errors].sort((a, b) => b[1] - a[1])),
    redirects: result.redirects,
    leaderChanges: result.leaders === undefined ? null : Math.max(0, result.leaders.length - 1),
    leaders: result.leaders ?? null,
    interrupted: result.interrupted,
    ...(watch === undefined ? {} : { watch }),
    ...(idleWatch === undefined ? {} : { idleWatch }),
  };
}

const fmtMs = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const fmtCount = (n: number) => Math.round(n).toLocaleString("en-US");
const BAR_WIDTH_MAX = 40;

/** The human-readable report, in the spirit of etcd's benchmark and redis-benchmark. */
export function formatBenchReport(report: BenchReport): string {
  const lines: string[] = [];
  const stopText = report.durationMs !== null ? `${report.durationMs / 1000} s` : `${fmtCount(report.requests ?? 0)} requests`;
  lines.push(`kv bench: ${report.description}`);
  lines.push(
    `workload: ${report.mix}, ${report.clients} client${report.clients === 1 ? "" : "s"}, ${stopText}, ${report.valueBytes} B values, ` +
      `${fmtCount(report.keys)} keys, ${report.consistency} reads${report.interrupted ? " (interrupted)" : ""}`,
  );
  lines.push("");
  lines.push("Summary:");
  lines.push(`  Total:       ${(report.elapsedMs / 1000).toFixed(2)} s, ${fmtCount(report.ok)} ok, ${fmtCount(report.errors)} errors`);
  lines.push(`  Throughput:  ${fmtCount(report.opsPerSec)} ops/s`);
  const l = report.latencyMs;
  lines.push(
    `  Latency ms:  min ${fmtMs(l.min)}  p50 ${fmtMs(l.p50)}  p90 ${fmtMs(l.p90)}  p99 ${fmtMs(l.p99)}  p99.9 ${fmtMs(l.p999)}  max ${fmtMs(l.max)}  mean ${fmtMs(l.mean)}`,
  );
  const kinds = Object.entries(report.byKind);
  if (kinds.length > 1 || kinds.some(([, kind]) => kind.notFound > 0)) {
    for (const [name, kind] of kinds) {
      const absent = kind.notFound > 0 ? `, ${fmtCount(kind.notFound)} of them of absent keys` : "";
      lines.push(
        `  ${`${name}:`.padEnd(12)} ${fmtCount(kind.opsPerSec)} ops/s (${fmtCount(kind.ok)} ok${absent}, ${fmtCount(kind.errors)} errors), p50 ${fmtMs(kind.latencyMs.p50)} ms, p99 ${fmtMs(kind.latencyMs.p99)} ms`,
      );
    }
  }
  lines.push("");
  lines.push("Latency histogram (ms, successful operations):");
  const peak = Math.max(1, ...report.histogram.map((row) => row.count));
  let cumulative = 0;
  for (const row of report.histogram) {
    cumulative += row.count;
    const bar = "∎".repeat(Math.round((row.count / peak) * BAR_WIDTH_MAX));
    const range = `${fmtMs(row.fromMs)} - ${fmtMs(row.toMs)}`.padStart(17);
    const share = report.ok === 0 ? 0 : (cumulative / report.ok) * 100;
    lines.push(`  ${range} [${fmtCount(row.count).padStart(9)}] ${share.toFixed(2).padStart(6)}% |${bar}`);
  }
  if (report.histogram.length === 0) lines.push("  (no successful operation)");
  lines.push("");
  const errorEntries = Object.entries(report.errorsByKind);
  lines.push(errorEntries.length === 0 ? "Errors: none" : "Errors:");
  for (const [kind, count] of errorEntries) lines.push(`  ${fmtCount(count).padStart(9)}  ${kind}`);
  if (report.redirects > 0) lines.push(`Redirects followed (307, leader re-discovered): ${fmtCount(report.redirects)}`);
  if (report.leaders !== null) {
    const seen = report.leaders.map((event) => `${event.leaderId}@term ${event.term} (+${(event.atMs / 1000).toFixed(1)} s)`).join(" -> ");
    lines.push(`Leader changes: ${report.leaderChanges ?? 0}${seen === "" ? "" : ` (${seen})`}`);
  }
  const watch = report.watch;
  if (watch !== undefined) {
    lines.push("");
    lines.push(`Watchers: ${fmtCount(watch.watchers)} streams on the writers' prefix`);
    lines.push(`  Delivered:   ${fmtCount(watch.eventsDelivered)} events, ${fmtCount(watch.eventsPerSec)} events/s`);
    lines.push(`  Latency ms:  p50 ${fmtMs(watch.latencyMs.p50)}  p99 ${fmtMs(watch.latencyMs.p99)}  max ${fmtMs(watch.latencyMs.max)} (from a put's acknowledgement to its event)`);
    lines.push(`  Lost:        ${fmtCount(watch.lost)} (of ${fmtCount(watch.acknowledgedPuts)} acknowledged puts × ${fmtCount(watch.watchers)} streams)${watch.misordered > 0 ? `, ${fmtCount(watch.misordered)} out of order or repeated` : ""}`);
    const ended = Object.entries(watch.streamsEnded);
    if (ended.length > 0) lines.push(`  Streams ended early: ${ended.map(([why, n]) => `${n} ${why}`).join(", ")}; resumed with Last-Event-ID: ${fmtCount(watch.resumes)}`);
  }
  const idle = report.idleWatch;
  if (idle !== undefined) {
    const ended = Object.entries(idle.streamsEnded);
    lines.push("");
    lines.push(
      `Idle watchers: ${fmtCount(idle.watchers)} streams on ${idle.endpoint} (prefix ${idle.prefix}), opened in ${fmtCount(idle.openMs)} ms${idle.openRetries > 0 ? ` (${fmtCount(idle.openRetries)} openings refused and tried again)` : ""}; ` +
        (ended.length === 0 ? "none ended early" : `ended early: ${ended.map(([why, n]) => `${n} ${why}`).join(", ")}`),
    );
  }
  return lines.join("\n");
}
