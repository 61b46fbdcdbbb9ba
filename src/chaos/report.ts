/**
 * The HTML report of a chaos run with a history (`--report FILE.html`): one self-contained file
 * (inline CSS, SVG and a few lines of JS; nothing fetched) with the checker's verdict, a timeline of
 * every client's operations with the fault windows shaded across it, latency over time, and for a
 * violation the smallest failing piece of history, listed exactly and drawn on its own.
 *
 * The drawing stays small for long runs: operations at least a few pixels wide are drawn one by one
 * (with their kind, and a tooltip naming them); the rest are merged per row into strips of columns,
 * colored by the worst outcome among them, with counts in the tooltip. Evidence is never merged.
 *
 * A long run is checked in epochs, and only one epoch's history is kept: the report then draws that
 * epoch (from `startMs` to `endMs`) and lists every epoch in a small table.
 */
import { unreachable } from "../lib/assert.ts";
import type { CheckResult } from "./linearizability.ts";
import { describeOperation, type Operation, type OperationOutcome } from "./history.ts";

/** A fault window to shade: ms on the history's clock. */
export interface ReportFault {
  readonly startMs: number;
  readonly endMs: number;
  /** `kill`, `pause`, `isolate`, `cut-links` (anything else is drawn grey). */
  readonly kind: string;
  readonly label: string;
}

/** One more check the run made besides linearizability (convergence, final reads). */
export interface ReportCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface ReportInput {
  readonly title: string;
  readonly subtitle?: string;
  readonly replayCommand?: string;
  /** Shown as is (an ISO date); absent in tests, so output is reproducible. */
  readonly generatedAt?: string;
  /** Where the timeline begins, ms on the history's clock (default 0). */
  readonly startMs?: number;
  /** Where the timeline ends, ms on the history's clock. */
  readonly endMs: number;
  readonly history: readonly Operation[];
  /** When the client gave up on each unknown operation (its bar ends there; else at `endMs`). */
  readonly gaveUpMs?: ReadonlyMap<number, number>;
  /** Row labels for special clients (e.g. 0 → `final`); others are `client N`. */
  readonly clientLabels?: ReadonlyMap<number, string>;
  readonly faults: readonly ReportFault[];
  readonly verdict: CheckResult;
  readonly checkMs?: number;
  readonly checks?: readonly ReportCheck[];
  /** Operations in the whole run, when `history` is one epoch of it. */
  readonly operationsTotal?: number;
  /** Epochs in the whole run, when `history` is one epoch of it. */
  readonly epochCount?: number;
  /** One row per epoch (the oldest of a very long run may be left out). */
  readonly epochs?: readonly ReportEpoch[];
  /** Says which part of the run the timeline shows. */
  readonly detailNote?: string;
  /** Replaces the linearizability banner, for a scenario judged by another checker (kv chaos watch). */
  readonly banner?: ReportBanner;
  /** Watch streams, drawn under the timeline: one lane per watcher with its connect, resume and end marks. */
  readonly streams?: readonly ReportStream[];
}

/** The verdict line of a scenario with its own checker. */
export interface ReportBanner {
  readonly ok: boolean;
  /** `Watch streams exact`. */
  readonly title: string;
  readonly text: string;
}

/** One watcher's streams, as its lane shows them. */
export interface ReportStream {
  /** The lane's label, a few characters: `w3 w/a/`. */
  readonly label: string;
  /** Its tooltip: `watcher 3 on w/a/, from node 1, roams`. */
  readonly detail: string;
  /** False when the checker found something wrong with this watcher: its label turns red. */
  readonly ok: boolean;
  readonly segments: readonly ReportStreamSegment[];
}

/** One stream a watcher had open: on which node, from when to when, how it began and ended. */
export interface ReportStreamSegment {
  readonly node: number;
  readonly fromMs: number;
  readonly toMs: number;
  /** `connect` (the watcher's first stream) or `resume` (sent Last-Event-ID). */
  readonly start: "connect" | "resume";
  /** Why it ended: `stalled`, `cut: ...`, `slow_watcher`, `roam`, `done`, ... */
  readonly end: string;
  /** Whether the end was the watcher's own choice (roam, done) rather than a failure of the stream. */
  readonly endedByWatcher: boolean;
  /** Change events it delivered. */
  readonly events: number;
}

/** One epoch of a long run, as the epochs table shows it. */
export interface ReportEpoch {
  readonly index: number;
  /** Its keys, in a few characters (`k0-e3..k4-e3`). */
  readonly keys: string;
  readonly startMs: number;
  readonly endMs: number;
  readonly operations: number;
  readonly ok: number;
  readonly failed: number;
  readonly unknown: number;
  /** Fault windows that overlapped it. */
  readonly faults: number;
  readonly verdict: "linearizable" | "not linearizable" | "undecided";
  readonly checkMs: number;
}

// Geometry of the main timeline (SVG user units; the SVG scales to the page width).
const WIDTH = 1200;
const GUTTER_LEFT = 78;
const GUTTER_RIGHT = 12;
const PLOT_WIDTH = WIDTH - GUTTER_LEFT - GUTTER_RIGHT;
const AXIS_HEIGHT = 22;
const FAULT_BAND_HEIGHT = 16;
const ROW_HEIGHT = 20;
const BAR_HEIGHT = 14;
/** Operations narrower than this are merged into strips. */
const INDIVIDUAL_WIDTH_MIN = 3;
/** Operations drawn one by one at most (the widest); the rest are merged. */
const INDIVIDUAL_OPS_MAX = 3_000;
/** Width of one merge column. */
const COLUMN_WIDTH = 2;
/** Kind labels need this much room. */
const LABEL_WIDTH_MIN = 24;
// Latency chart.
const LATENCY_HEIGHT = 220;
const LATENCY_TOP = 14;
const LATENCY_BOTTOM = 196;
const LATENCY_POINTS_MAX = 2_500;
const LATENCY_BINS = 200;
/** Evidence operations drawn at most (the list below it is always complete). */
const EVIDENCE_DRAWN_MAX = 200;

const OUTCOME_COLORS: Readonly<Record<OperationOutcome, string>> = { ok: "#3a9d5d", fail: "#8b98a9", unknown: "#e3a21a" };
const OUTCOME_RANK: Readonly<Record<OperationOutcome, number>> = { ok: 1, fail: 2, unknown: 3 };
const RANK_OUTCOME: readonly OperationOutcome[] = ["ok", "ok", "fail", "unknown"];
const KIND_COLORS: Readonly<Record<string, string>> = { put: "#1f6fb2", get: "#3a9d5d", delete: "#c2410c" };
const FAULT_COLORS: Readonly<Record<string, string>> = {
  kill: "#d62828",
  pause: "#7b2cbf",
  isolate: "#1d6fd6",
  "cut-links": "#0b9a8d",
};
const EVIDENCE_COLOR = "#d62828";

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Renders the whole report as one HTML document. Pure: the same input gives the same bytes. */
export function renderReport(input: ReportInput): string {
  const startMs = input.startMs ?? 0;
  const endMs = Math.max(startMs + 1, input.endMs, ...input.faults.map((f) => f.endMs));
  const span: Span = { startMs, endMs };
  const evidence = input.verdict.ok === false ? input.verdict.evidence : [];
  const evidenceIds = new Set(evidence.map((op) => op.id));
  const detailNote = input.detailNote === undefined ? "" : ` ${input.detailNote}`;
  const sections = [
    renderHeader(input),
    renderVerdict(input),
    renderSummary(input),
    input.epochs === undefined ? "" : renderEpochs(input.epochs),
    section("Timeline", `Each row is one client; a bar spans an operation from its call to its answer (or to when the client gave up). Fault windows are shaded across every row.${detailNote}`, [
      renderLegend(input.faults),
      zoomable("timeline", renderTimeline(input, span, evidenceIds)),
    ]),
    input.streams === undefined
      ? ""
      : section(
          "Watch streams",
          "Each lane is one watcher; a bar is one stream it had open, colored by the node that served it, from its connect (▲ green) or resume with Last-Event-ID (▲ blue) to its end (■ red when the stream failed: cut, stalled, an error event; grey when the watcher left on its own). Fault windows are shaded across every lane.",
          [zoomable("streams", renderStreams(input.streams, input.faults, span))],
        ),
    section("Latency over time", "Each dot is an answered operation (a sample of them on long runs); the dark line is the median per time slice, the light one the slowest. Operations never answered are ticks along the top.", [
      zoomable("latency", renderLatency(input, span)),
    ]),
    evidence.length > 0 ? renderEvidence(input, evidence) : "",
  ];
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escapeHtml(input.title)}</title>
<style>${STYLE}</style>
</head>
<body>
${sections.join("\n")}
<script>${SCRIPT}</script>
</body>
</html>
`;
}

/** The stretch of the run's clock a chart draws, ms. */
interface Span {
  readonly startMs: number;
  readonly endMs: number;
}

/** Maps a time in the span to an x between `left` and `left + width` (times outside are clamped). */
function scaleX(span: Span, left: number, width: number): (ms: number) => number {
  const length = span.endMs - span.startMs;
  return (ms: number) => left + ((Math.min(Math.max(ms, span.startMs), span.endMs) - span.startMs) / length) * width;
}

/** One row per epoch: its keys, span, operations, faults and verdict. */
function renderEpochs(epochs: readonly ReportEpoch[]): string {
  const head = "<tr><th>epoch</th><th>keys</th><th>from</th><th>to</th><th>operations</th><th>ok</th><th>refused</th><th>unknown</th><th>faults</th><th>verdict</th><th>check</th></tr>";
  const rows = epochs
    .map((e) => {
      const cls = e.verdict === "linearizable" ? "ok" : e.verdict === "undecided" ? "unknown" : "bad";
      const cells = [String(e.index), escapeHtml(e.keys), formatSeconds(e.startMs), formatSeconds(e.endMs), String(e.operations), String(e.ok), String(e.failed), String(e.unknown), String(e.faults), e.verdict, `${e.checkMs} ms`];
      return `<tr class="epoch ${cls}">${cells.map((c) => `<td>${c}</td>`).join("")}</tr>`;
    })
    .join("");
  return section("Epochs", "Every so many operations the clients move on to fresh keys; each epoch is checked on its own as soon as it is over, and its history dropped.", [
    `<div class="scroll epochs"><table>${head}${rows}</table></div>`,
  ]);
}

function section(title: string, note: string, parts: readonly string[]): string {
  return `<section><h2>${escapeHtml(title)}</h2><p class="note">${escapeHtml(note)}</p>${parts.join("")}</section>`;
}

function zoomable(name: string, svg: string): string {
  const buttons = [1, 2, 4, 8].map((z) => `<button data-zoom="${z}" data-target="${name}"${z === 1 ? ' class="on"' : ""}>${z}×</button>`).join("");
  return `<div class="zoom">zoom ${buttons}</div><div class="scroll" id="${name}">${svg}</div>`;
}

function renderHeader(input: ReportInput): string {
  const lines = [`<h1>${escapeHtml(input.title)}</h1>`];
  if (input.subtitle !== undefined) lines.push(`<p class="sub">${escapeHtml(input.subtitle)}</p>`);
  if (input.replayCommand !== undefined) lines.push(`<p class="sub">replay: <code>${escapeHtml(input.replayCommand)}</code></p>`);
  if (input.generatedAt !== undefined) lines.push(`<p class="sub">generated ${escapeHtml(input.generatedAt)}</p>`);
  return `<header>${lines.join("")}</header>`;
}

function renderVerdict(input: ReportInput): string {
  const { verdict } = input;
  if (input.banner !== undefined) {
    const b = input.banner;
    const checks = (input.checks ?? [])
      .map((c) => `<li class="${c.ok ? "ok" : "bad"}"><strong>${c.ok ? "✔" : "✘"} ${escapeHtml(c.name)}</strong>: <span class="detail">${escapeHtml(c.detail)}</span></li>`)
      .join("");
    const banner = `<div class="verdict ${b.ok ? "ok" : "bad"}" id="verdict"><strong>${escapeHtml(b.title)}</strong>: ${escapeHtml(b.text)}</div>`;
    return `<section>${banner}${checks === "" ? "" : `<ul class="checks">${checks}</ul>`}</section>`;
  }
  const took = input.checkMs === undefined ? "" : ` (checked in ${input.checkMs} ms)`;
  let banner: string;
  if (verdict.ok === true) {
    const scope =
      input.epochCount === undefined
        ? `the ${input.history.length} operations on ${verdict.keysChecked} keys fit`
        : `the ${input.operationsTotal ?? input.history.length} operations on ${verdict.keysChecked} keys in ${input.epochCount} epoch${input.epochCount === 1 ? "" : "s"} (each checked on its own) fit`;
    banner = `<div class="verdict ok" id="verdict"><strong>Linearizable</strong>: ${scope} one sequential order consistent with real time${escapeHtml(took)}.</div>`;
  } else if (verdict.ok === "unknown") {
    banner = `<div class="verdict unknown" id="verdict"><strong>Undecided</strong>: ${escapeHtml(verdict.reason)}${verdict.key === undefined ? "" : ` (key ${escapeHtml(verdict.key)})`}${escapeHtml(took)}.</div>`;
  } else {
    banner = `<div class="verdict bad" id="verdict"><strong>Not linearizable</strong> on key <code>${escapeHtml(verdict.key)}</code>${escapeHtml(took)}: ${escapeHtml(verdict.reason)}. <a href="#evidence">${verdict.evidence.length} operations of evidence below</a>.</div>`;
  }
  const checks = (input.checks ?? [])
    .map((c) => `<li class="${c.ok ? "ok" : "bad"}"><strong>${c.ok ? "✔" : "✘"} ${escapeHtml(c.name)}</strong>: <span class="detail">${escapeHtml(c.detail)}</span></li>`)
    .join("");
  return `<section>${banner}${checks === "" ? "" : `<ul class="checks">${checks}</ul>`}</section>`;
}

function renderSummary(input: ReportInput): string {
  const kinds = ["get", "put", "delete"] as const;
  const outcomes: readonly OperationOutcome[] = ["ok", "fail", "unknown"];
  const count = (kind: string, outcome: OperationOutcome) => input.history.filter((op) => op.kind === kind && op.outcome === outcome).length;
  const head = `<tr><th></th>${outcomes.map((o) => `<th><span class="swatch" style="background:${OUTCOME_COLORS[o]}"></span>${o === "fail" ? "refused" : o}</th>`).join("")}<th>total</th></tr>`;
  const rows = kinds
    .map((kind) => {
      const cells = outcomes.map((o) => count(kind, o));
      return `<tr><th>${kind}</th>${cells.map((n) => `<td>${n}</td>`).join("")}<td>${cells.reduce((a, b) => a + b, 0)}</td></tr>`;
    })
    .join("");
  const faults = input.faults
    .map((f) => `<li><span class="swatch" style="background:${faultColor(f.kind)}"></span>${formatSeconds(f.startMs)}–${formatSeconds(f.endMs)} ${escapeHtml(f.label)}</li>`)
    .join("");
  return `<section class="summary"><div><h2>Operations${input.epochCount === undefined ? "" : " (the epoch drawn below)"}</h2><table>${head}${rows}</table></div><div><h2>Faults (${input.faults.length})</h2>${faults === "" ? "<p>none</p>" : `<ul class="faults">${faults}</ul>`}</div></section>`;
}

function renderLegend(faults: readonly ReportFault[]): string {
  const outcome = (["ok", "fail", "unknown"] as const)
    .map((o) => `<span><span class="swatch" style="background:${OUTCOME_COLORS[o]}"></span>${o === "fail" ? "refused (not applied)" : o === "unknown" ? "unknown (no answer)" : "ok"}</span>`)
    .join("");
  const kinds = [...new Set(faults.map((f) => f.kind))]
    .map((k) => `<span><span class="swatch faint" style="background:${faultColor(k)}"></span>${escapeHtml(k)}</span>`)
    .join("");
  return `<div class="legend">${outcome}${kinds}<span><span class="swatch outline"></span>evidence</span></div>`;
}

function faultColor(kind: string): string {
  return FAULT_COLORS[kind] ?? "#777";
}

/** ms → `12.34s`. */
function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)}s`;
}

/** A round tick step giving at most about `ticksMax` ticks over `spanMs`. */
function tickStepMs(spanMs: number, ticksMax: number): number {
  for (const step of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000]) {
    if (spanMs / step <= ticksMax) return step;
  }
  return Math.ceil(spanMs / ticksMax / 600_000) * 600_000;
}

function num(x: number): string {
  return (Math.round(x * 10) / 10).toString();
}

/** The operation's drawn end: its answer, when its client gave up, or the timeline's end. */
function drawnEndMs(op: Operation, input: ReportInput, endMs: number): number {
  return op.returnMs ?? input.gaveUpMs?.get(op.id) ?? endMs;
}

function shortCall(op: Operation): string {
  const clip = (s: string) => (s.length > 14 ? `${s.slice(0, 13)}…` : s);
  switch (op.kind) {
    case "put":
      return `put ${op.key}=${clip(op.value ?? "")}`;
    case "get":
      return op.output === undefined ? `get ${op.key}` : `get ${op.key}→${op.output === null ? "∅" : clip(op.output)}`;
    case "delete":
      return `del ${op.key}`;
    default:
      return unreachable(op.kind, "operation kind");
  }
}

function timeAxis(x: (ms: number) => number, fromMs: number, toMs: number, top: number, bottom: number, left: number, right: number): string {
  const step = tickStepMs(toMs - fromMs, 12);
  const parts: string[] = [`<line x1="${left}" y1="${top}" x2="${right}" y2="${top}" class="axis"/>`];
  for (let t = Math.ceil(fromMs / step) * step; t <= toMs; t += step) {
    const tx = num(x(t));
    parts.push(`<line x1="${tx}" y1="${top}" x2="${tx}" y2="${bottom}" class="grid"/>`);
    const label = step < 1000 && toMs - fromMs < 10_000 ? `${t}ms` : `${num(t / 1000)}s`;
    parts.push(`<text x="${tx}" y="${top - 6}" class="tick">${label}</text>`);
  }
  return parts.join("");
}

function faultShading(faults: readonly ReportFault[], x: (ms: number) => number, top: number, bottom: number, withLabels: boolean): string {
  return faults
    .map((f) => {
      const x0 = x(f.startMs);
      const width = Math.max(1, x(f.endMs) - x0);
      const title = `<title>${escapeHtml(`${formatSeconds(f.startMs)}–${formatSeconds(f.endMs)} ${f.label}`)}</title>`;
      const band = `<rect x="${num(x0)}" y="${top}" width="${num(width)}" height="${bottom - top}" fill="${faultColor(f.kind)}" fill-opacity="0.13" class="fault">${title}</rect>`;
      if (!withLabels) return band;
      const label = `<rect x="${num(x0)}" y="${top}" width="${num(width)}" height="${FAULT_BAND_HEIGHT - 2}" fill="${faultColor(f.kind)}" fill-opacity="0.75">${title}</rect>` +
        `<text x="${num(x0 + 3)}" y="${top + 11}" class="faultlabel">${escapeHtml(width > 60 ? f.label : f.kind)}</text>`;
      return band + label;
    })
    .join("");
}

const NODE_COLORS: readonly string[] = ["#1f6fb2", "#3a9d5d", "#b5651d", "#7b2cbf", "#0b9a8d"];
const STREAM_MARK_COLORS = { connect: "#2a9d4a", resume: "#1d6fd6", failed: "#d62828", left: "#8b98a9" } as const;

/** One lane per watcher: its streams as bars colored by node, with start and end marks. */
function renderStreams(streams: readonly ReportStream[], faults: readonly ReportFault[], span: Span): string {
  const top = AXIS_HEIGHT + FAULT_BAND_HEIGHT;
  const height = top + streams.length * ROW_HEIGHT + 8;
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const parts: string[] = [timeAxis(x, span.startMs, span.endMs, AXIS_HEIGHT, height - 8, GUTTER_LEFT, GUTTER_LEFT + PLOT_WIDTH)];
  parts.push(faultShading(faults, x, AXIS_HEIGHT, height - 8, true));
  streams.forEach((stream, row) => {
    const y = top + row * ROW_HEIGHT;
    const barY = y + (ROW_HEIGHT - BAR_HEIGHT) / 2;
    if (row % 2 === 1) parts.push(`<rect x="${GUTTER_LEFT}" y="${y}" width="${PLOT_WIDTH}" height="${ROW_HEIGHT}" class="stripe"/>`);
    parts.push(`<text x="${GUTTER_LEFT - 6}" y="${y + 14}" class="rowlabel${stream.ok ? "" : " badlabel"}"><title>${escapeHtml(stream.detail)}</title>${escapeHtml(shortLabel(stream.label))}</text>`);
    for (const segment of stream.segments) {
      const x0 = x(segment.fromMs);
      const x1 = Math.max(x0 + 1, x(segment.toMs));
      const color = NODE_COLORS[(segment.node - 1) % NODE_COLORS.length] ?? "#777";
      const title = `${stream.detail}: node ${segment.node}, ${segment.start} at ${formatSeconds(segment.fromMs)}, ${segment.events} events, ended at ${formatSeconds(segment.toMs)}: ${segment.end}`;
      parts.push(`<rect x="${num(x0)}" y="${num(barY + 3)}" width="${num(x1 - x0)}" height="${BAR_HEIGHT - 6}" fill="${color}" fill-opacity="0.55" class="op"><title>${escapeHtml(title)}</title></rect>`);
      const startColor = STREAM_MARK_COLORS[segment.start];
      parts.push(`<path d="M${num(x0)} ${num(barY)}l4 ${BAR_HEIGHT}h-8z" fill="${startColor}"><title>${escapeHtml(`${segment.start} on node ${segment.node} at ${formatSeconds(segment.fromMs)}`)}</title></path>`);
      const endColor = segment.endedByWatcher ? STREAM_MARK_COLORS.left : STREAM_MARK_COLORS.failed;
      parts.push(`<rect x="${num(x1 - 2)}" y="${num(barY + 2)}" width="4" height="${BAR_HEIGHT - 4}" fill="${endColor}"><title>${escapeHtml(`ended at ${formatSeconds(segment.toMs)}: ${segment.end}`)}</title></rect>`);
    }
  });
  const legend = NODE_COLORS.slice(0, Math.max(1, ...streams.flatMap((s) => s.segments.map((g) => g.node))))
    .map((color, i) => `<span><span class="swatch" style="background:${color}"></span>node ${i + 1}</span>`)
    .join("");
  return `<div class="legend">${legend}</div><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${height}" class="chart streams" data-streams="${streams.length}">${parts.join("")}</svg>`;
}

/** A lane label that fits the gutter. */
function shortLabel(label: string): string {
  return label.length > 12 ? `${label.slice(0, 11)}…` : label;
}

/** Client rows in drawing order: ordinary clients by id, special ones (the final reader) last. */
function clientRows(input: ReportInput): number[] {
  const ids = [...new Set(input.history.map((op) => op.clientId))];
  const special = (id: number) => input.clientLabels?.has(id) ?? false;
  return ids.sort((a, b) => Number(special(a)) - Number(special(b)) || a - b);
}

function renderTimeline(input: ReportInput, span: Span, evidenceIds: ReadonlySet<number>): string {
  const { startMs, endMs } = span;
  const rows = clientRows(input);
  const rowOf = new Map(rows.map((id, i) => [id, i]));
  const top = AXIS_HEIGHT + FAULT_BAND_HEIGHT;
  const height = top + rows.length * ROW_HEIGHT + 8;
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const rowY = (row: number) => top + row * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2;
  const parts: string[] = [];
  parts.push(timeAxis(x, startMs, endMs, AXIS_HEIGHT, height - 8, GUTTER_LEFT, GUTTER_LEFT + PLOT_WIDTH));
  parts.push(faultShading(input.faults, x, AXIS_HEIGHT, height - 8, true));
  rows.forEach((id, row) => {
    const y = top + row * ROW_HEIGHT;
    parts.push(`<text x="${GUTTER_LEFT - 6}" y="${y + 14}" class="rowlabel">${escapeHtml(input.clientLabels?.get(id) ?? `client ${id}`)}</text>`);
    if (row % 2 === 1) parts.push(`<rect x="${GUTTER_LEFT}" y="${y}" width="${PLOT_WIDTH}" height="${ROW_HEIGHT}" class="stripe"/>`);
  });

  // Wide operations one by one (the widest first, up to a limit); the rest merged into columns.
  const spans = input.history.map((op) => ({ op, x0: x(op.callMs), x1: x(drawnEndMs(op, input, endMs)) }));
  const wide = spans.filter((s) => s.x1 - s.x0 >= INDIVIDUAL_WIDTH_MIN && !evidenceIds.has(s.op.id));
  wide.sort((a, b) => b.x1 - b.x0 - (a.x1 - a.x0) || a.op.id - b.op.id);
  const individual = new Set(wide.slice(0, INDIVIDUAL_OPS_MAX).map((s) => s.op.id));
  const columns = Math.ceil(PLOT_WIDTH / COLUMN_WIDTH) + 1;
  // Per row: worst outcome rank per column, and counts of operations starting in it.
  const rank = rows.map(() => new Uint8Array(columns));
  const counts = rows.map(() => ({ ok: new Uint32Array(columns), fail: new Uint32Array(columns), unknown: new Uint32Array(columns) }));
  for (const { op, x0, x1 } of spans) {
    if (individual.has(op.id) || evidenceIds.has(op.id)) continue;
    const row = rowOf.get(op.clientId) ?? 0;
    const first = Math.floor((x0 - GUTTER_LEFT) / COLUMN_WIDTH);
    const last = Math.max(first, Math.floor((x1 - GUTTER_LEFT) / COLUMN_WIDTH));
    const rowRank = rank[row] as Uint8Array;
    for (let c = first; c <= last; c++) rowRank[c] = Math.max(rowRank[c] ?? 0, OUTCOME_RANK[op.outcome]);
    const rowCounts = counts[row] as { ok: Uint32Array; fail: Uint32Array; unknown: Uint32Array };
    rowCounts[op.outcome][first] = (rowCounts[op.outcome][first] ?? 0) + 1;
  }
  rows.forEach((_, row) => {
    const rowRank = rank[row] as Uint8Array;
    const rowCounts = counts[row] as { ok: Uint32Array; fail: Uint32Array; unknown: Uint32Array };
    let c = 0;
    while (c < columns) {
      const r = rowRank[c] ?? 0;
      if (r === 0) {
        c++;
        continue;
      }
      let end = c;
      const sum = { ok: 0, fail: 0, unknown: 0 };
      while (end < columns && rowRank[end] === r) {
        sum.ok += rowCounts.ok[end] ?? 0;
        sum.fail += rowCounts.fail[end] ?? 0;
        sum.unknown += rowCounts.unknown[end] ?? 0;
        end++;
      }
      const x0 = GUTTER_LEFT + c * COLUMN_WIDTH;
      const width = Math.min((end - c) * COLUMN_WIDTH, GUTTER_LEFT + PLOT_WIDTH - x0);
      const fromMs = startMs + ((x0 - GUTTER_LEFT) / PLOT_WIDTH) * (endMs - startMs);
      const toMs = startMs + ((x0 + width - GUTTER_LEFT) / PLOT_WIDTH) * (endMs - startMs);
      const total = sum.ok + sum.fail + sum.unknown;
      const title = `${formatSeconds(fromMs)}–${formatSeconds(toMs)}: ${total} operations started (${sum.ok} ok, ${sum.fail} refused, ${sum.unknown} unknown)`;
      parts.push(
        `<rect x="${num(x0)}" y="${num(rowY(row))}" width="${num(Math.max(width, 1))}" height="${BAR_HEIGHT}" fill="${OUTCOME_COLORS[RANK_OUTCOME[r] ?? "ok"]}" class="strip"><title>${escapeHtml(title)}</title></rect>`,
      );
      c = end;
    }
  });
  const drawOne = (op: Operation, x0: number, x1: number, isEvidence: boolean) => {
    const row = rowOf.get(op.clientId) ?? 0;
    const width = Math.max(isEvidence ? 3 : 1, x1 - x0);
    const cls = isEvidence ? "op evidence" : "op";
    const title = `<title>#${op.id} ${escapeHtml(describeOperation(op))}</title>`;
    parts.push(`<rect x="${num(x0)}" y="${num(rowY(row))}" width="${num(width)}" height="${BAR_HEIGHT}" fill="${OUTCOME_COLORS[op.outcome]}" class="${cls}">${title}</rect>`);
    if (width >= LABEL_WIDTH_MIN) {
      const room = Math.floor((width - 4) / 6);
      const text = shortCall(op);
      const label = text.length <= room ? text : op.kind === "delete" ? "del" : op.kind;
      if (label.length <= room) parts.push(`<text x="${num(x0 + 3)}" y="${num(rowY(row) + 10.5)}" class="oplabel">${escapeHtml(label)}</text>`);
    }
  };
  for (const s of spans) if (individual.has(s.op.id)) drawOne(s.op, s.x0, s.x1, false);
  for (const s of spans) if (evidenceIds.has(s.op.id)) drawOne(s.op, s.x0, s.x1, true);
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${height}" class="chart timeline" data-ops="${input.history.length}">${parts.join("")}</svg>`;
}

function renderLatency(input: ReportInput, span: Span): string {
  const { startMs, endMs } = span;
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const answered = input.history.filter((op) => op.returnMs !== undefined && op.outcome !== "unknown");
  const latency = (op: Operation) => Math.max(1, (op.returnMs ?? op.callMs) - op.callMs);
  const maxLatency = answered.reduce((max, op) => Math.max(max, latency(op)), 10);
  const decades = Math.ceil(Math.log10(maxLatency));
  const y = (ms: number) => LATENCY_BOTTOM - (Math.log10(Math.max(1, ms)) / decades) * (LATENCY_BOTTOM - LATENCY_TOP);
  const parts: string[] = [];
  parts.push(faultShading(input.faults, x, LATENCY_TOP, LATENCY_BOTTOM, false));
  for (let d = 0; d <= decades; d++) {
    const yy = num(y(10 ** d));
    parts.push(`<line x1="${GUTTER_LEFT}" y1="${yy}" x2="${GUTTER_LEFT + PLOT_WIDTH}" y2="${yy}" class="grid"/>`);
    parts.push(`<text x="${GUTTER_LEFT - 6}" y="${num(y(10 ** d) + 4)}" class="rowlabel">${10 ** d >= 1000 ? `${10 ** d / 1000}s` : `${10 ** d}ms`}</text>`);
  }
  const step = tickStepMs(endMs - startMs, 12);
  for (let t = Math.ceil(startMs / step) * step; t <= endMs; t += step) {
    parts.push(`<text x="${num(x(t))}" y="${LATENCY_HEIGHT - 8}" class="tick">${num(t / 1000)}s</text>`);
  }
  // A deterministic sample of the points: every k-th answered operation in call order.
  const sorted = answered.slice().sort((a, b) => a.callMs - b.callMs || a.id - b.id);
  const stride = Math.max(1, Math.ceil(sorted.length / LATENCY_POINTS_MAX));
  for (let i = 0; i < sorted.length; i += stride) {
    const op = sorted[i] as Operation;
    parts.push(`<circle cx="${num(x(op.callMs))}" cy="${num(y(latency(op)))}" r="1.6" fill="${KIND_COLORS[op.kind] ?? "#333"}" fill-opacity="${op.outcome === "ok" ? 0.55 : 0.25}"/>`);
  }
  // Median and slowest per time slice.
  const bins: number[][] = Array.from({ length: LATENCY_BINS }, () => []);
  for (const op of answered) {
    const bin = Math.floor(((op.callMs - startMs) / (endMs - startMs)) * LATENCY_BINS);
    bins[Math.min(LATENCY_BINS - 1, Math.max(0, bin))]?.push(latency(op));
  }
  // One polyline per run of non-empty slices: a slice with no answer breaks the line.
  const median: string[][] = [[]];
  const slowest: string[][] = [[]];
  bins.forEach((values, i) => {
    if (values.length === 0) {
      if ((median[median.length - 1] as string[]).length > 0) {
        median.push([]);
        slowest.push([]);
      }
      return;
    }
    values.sort((a, b) => a - b);
    const bx = num(x(startMs + ((i + 0.5) / LATENCY_BINS) * (endMs - startMs)));
    median[median.length - 1]?.push(`${bx},${num(y(values[Math.floor(values.length / 2)] ?? 1))}`);
    slowest[slowest.length - 1]?.push(`${bx},${num(y(values[values.length - 1] ?? 1))}`);
  });
  for (const line of slowest) if (line.length > 1) parts.push(`<polyline points="${line.join(" ")}" class="slowest"/>`);
  for (const line of median) if (line.length > 1) parts.push(`<polyline points="${line.join(" ")}" class="median"/>`);
  // Unanswered operations: a tick per column at the top, with how many.
  const unanswered = new Map<number, number>();
  for (const op of input.history) {
    if (op.outcome !== "unknown") continue;
    const column = Math.floor((x(op.callMs) - GUTTER_LEFT) / COLUMN_WIDTH);
    unanswered.set(column, (unanswered.get(column) ?? 0) + 1);
  }
  for (const [column, n] of unanswered) {
    const cx = num(GUTTER_LEFT + column * COLUMN_WIDTH);
    parts.push(`<rect x="${cx}" y="${LATENCY_TOP - 10}" width="${COLUMN_WIDTH}" height="8" fill="${OUTCOME_COLORS.unknown}"><title>${n} operation${n === 1 ? "" : "s"} never answered</title></rect>`);
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${LATENCY_HEIGHT}" class="chart latency">${parts.join("")}</svg>`;
}

function renderEvidence(input: ReportInput, evidence: readonly Operation[]): string {
  const ops = evidence.slice().sort((a, b) => a.callMs - b.callMs || a.id - b.id);
  const drawn = ops.slice(0, EVIDENCE_DRAWN_MAX);
  const fromMs = Math.min(...drawn.map((op) => op.callMs));
  const lastEnd = Math.max(...drawn.map((op) => op.returnMs ?? op.callMs));
  const pad = Math.max(2, (lastEnd - fromMs) * 0.05);
  const spanFrom = fromMs - pad;
  const spanTo = lastEnd + pad;
  const plotLeft = 150;
  const plotWidth = 700;
  const textLeft = plotLeft + plotWidth + 10;
  const top = 26;
  const rowHeight = 22;
  const height = top + drawn.length * rowHeight + 6;
  const x = (ms: number) => plotLeft + ((Math.min(Math.max(ms, spanFrom), spanTo) - spanFrom) / (spanTo - spanFrom)) * plotWidth;
  const parts: string[] = [timeAxis(x, spanFrom, spanTo, 20, height, plotLeft, plotLeft + plotWidth)];
  parts.push(faultShading(input.faults.filter((f) => f.endMs >= spanFrom && f.startMs <= spanTo), x, 20, height, false));
  drawn.forEach((op, i) => {
    const y = top + i * rowHeight;
    const x0 = x(op.callMs);
    const open = op.returnMs === undefined;
    const x1 = open ? plotLeft + plotWidth : x(op.returnMs ?? op.callMs);
    const label = input.clientLabels?.get(op.clientId) ?? `client ${op.clientId}`;
    parts.push(`<text x="${plotLeft - 6}" y="${y + 14}" class="rowlabel">#${op.id} ${escapeHtml(label)}</text>`);
    parts.push(
      `<rect x="${num(x0)}" y="${y + 3}" width="${num(Math.max(2, x1 - x0))}" height="15" fill="${OUTCOME_COLORS[op.outcome]}" class="op evidence${open ? " open" : ""}"><title>#${op.id} ${escapeHtml(describeOperation(op))}</title></rect>`,
    );
    parts.push(`<text x="${textLeft}" y="${y + 14}" class="evtext">${escapeHtml(describeOperation(op))}</text>`);
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${textLeft + 520} ${height}" class="chart evidence-chart">${parts.join("")}</svg>`;
  const items = ops.map((op) => `<li><code>#${op.id}</code> <code class="op-${op.outcome}">${escapeHtml(describeOperation(op))}</code></li>`).join("");
  const note =
    "The smallest piece of the history the checker found that no sequential order explains on its own: each bar is one operation from call to answer (an open bar never got one). Times are ms since the run began." +
    (ops.length > drawn.length ? ` The first ${drawn.length} are drawn; all ${ops.length} are listed.` : "");
  return section("Evidence", note, [`<div class="scroll">${svg}</div>`, `<ol class="evidence-list" id="evidence">${items}</ol>`]);
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#1d232b;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
.sub{margin:2px 0;color:#57606a}.note{margin:0 0 8px;color:#57606a;font-size:13px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef1f4;padding:1px 4px;border-radius:3px}
section{margin-bottom:18px}
.verdict{padding:12px 14px;border-radius:6px;font-size:15px;border:1px solid}
.verdict.ok{background:#e8f6ee;border-color:#3a9d5d}.verdict.bad{background:#fdecec;border-color:#d62828}.verdict.unknown{background:#fff6e0;border-color:#e3a21a}
.checks{list-style:none;padding:0;margin:8px 0}.checks li{margin:3px 0}.checks .ok strong{color:#2a7a47}.checks .bad strong{color:#b42020}
.checks .detail{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;font-size:12.5px}
.summary{display:flex;gap:40px;flex-wrap:wrap}
table{border-collapse:collapse}th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #e1e4e8}th{font-weight:600}
.epochs{max-height:320px;overflow-y:auto}.epoch.bad td{background:#fdecec}.epoch.unknown td{background:#fff6e0}
.faults{list-style:none;padding:0;margin:0;font-size:13px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.swatch.faint{opacity:.45}.swatch.outline{border:2px solid ${EVIDENCE_COLOR};width:8px;height:8px}
.legend{display:flex;gap:16px;flex-wrap:wrap;font-size:13px;margin-bottom:4px}
.zoom{font-size:12px;color:#57606a;margin:4px 0}.zoom button{font-size:12px;margin-left:3px;border:1px solid #c9d1d9;background:#fff;border-radius:3px;cursor:pointer}
.zoom button.on{background:#1d232b;color:#fff}
.scroll{overflow-x:auto;border:1px solid #e1e4e8;background:#fff;border-radius:4px}
.chart{display:block;width:100%;height:auto}
.chart text{font:10px ui-monospace,Menlo,monospace;fill:#57606a}
.chart .tick{text-anchor:middle}.chart .rowlabel{text-anchor:end}.chart .faultlabel{fill:#fff;font-weight:600}
.chart .oplabel{fill:#fff;pointer-events:none}.chart .badlabel{fill:#b42020;font-weight:600}.chart .evtext{fill:#1d232b}
.chart .axis{stroke:#8b949e}.chart .grid{stroke:#eaeef2}.chart .stripe{fill:#f6f8fa}
.chart .op:hover,.chart .strip:hover{stroke:#1d232b;stroke-width:1}
.chart .evidence{stroke:${EVIDENCE_COLOR};stroke-width:2}.chart .open{stroke-dasharray:4 2}
.chart .median{fill:none;stroke:#1d232b;stroke-width:1.4}.chart .slowest{fill:none;stroke:#d62828;stroke-width:1;stroke-opacity:.55}
.evidence-list{font-size:13px}.evidence-list li{margin:2px 0}
.op-ok{background:#e8f6ee}.op-fail{background:#eef1f4}.op-unknown{background:#fff6e0}
`;

/** Zoom buttons: widen a chart inside its scrolling box. */
const SCRIPT = `
document.querySelectorAll(".zoom button").forEach(function (b) {
  b.addEventListener("click", function () {
    var box = document.getElementById(b.dataset.target);
    box.querySelector("svg").style.width = (100 * Number(b.dataset.zoom)) + "%";
    b.parentNode.querySelectorAll("button").forEach(function (o) { o.classList.toggle("on", o === b); });
  });
});
`;
