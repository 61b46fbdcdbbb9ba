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
 *
 * Under the client rows, on the same clock, lanes for watchers' streams (kv chaos watch) and for lock
 * tenures (kv chaos lock), when the run has them.
 *
 * The page is JSX rendered to a string (preact-render-to-string): every text child and attribute
 * value is escaped by the renderer, so a key, value or label cannot turn into markup.
 */
import { Fragment, h, renderToString, type ComponentChildren, type VNode } from "./jsx.ts";
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
  /** Lock tenures (kv chaos lock), drawn under the timeline: one lane per client, a bar per tenure. */
  readonly tenures?: readonly ReportTenure[];
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

/** Lock tenures of `kv chaos lock`, drawn as lanes: one per client, a bar per tenure labelled with its fence. */
export interface ReportTenure {
  /** The client that believed it held the lock. */
  readonly client: number;
  /** Its fencing token (the version at which its lock key was created). */
  readonly fence: number;
  /** When it learned it held the lock, ms on the history's clock. */
  readonly acquiredMs: number;
  /** When it let go (or learned it had lost it); absent: it still held it when the run ended. */
  readonly releasedMs?: number;
}

/**
 * Escapes text exactly as the renderer escapes every text child and attribute value: the page is
 * built from JSX (preact-render-to-string), so nothing reaches it unescaped except the constant
 * STYLE and SCRIPT below.
 */
export function escapeHtml(text: string): string {
  return renderToString(<>{text}</>);
}

/** Renders the whole report as one HTML document. Pure: the same input gives the same bytes. */
export function renderReport(input: ReportInput): string {
  return `<!doctype html>\n${renderToString(<ReportPage input={input} />)}\n`;
}

function ReportPage({ input }: { input: ReportInput }): VNode {
  const startMs = input.startMs ?? 0;
  const endMs = Math.max(
    startMs + 1,
    input.endMs,
    ...input.faults.map((f) => f.endMs),
    ...(input.tenures ?? []).map((t) => t.releasedMs ?? t.acquiredMs),
  );
  const span: Span = { startMs, endMs };
  const evidence = input.verdict.ok === false ? input.verdict.evidence : [];
  const evidenceIds = new Set(evidence.map((op) => op.id));
  const detailNote = input.detailNote === undefined ? "" : ` ${input.detailNote}`;
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <title>{input.title}</title>
        <style dangerouslySetInnerHTML={{ __html: STYLE }} />
      </head>
      <body>
        <Header input={input} />
        <Verdict input={input} />
        <Summary input={input} />
        {input.epochs === undefined ? null : <Epochs epochs={input.epochs} />}
        <Section
          title="Timeline"
          note={`Each row is one client; a bar spans an operation from its call to its answer (or to when the client gave up). Fault windows are shaded across every row.${detailNote}`}
        >
          <Legend faults={input.faults} />
          <Zoomable name="timeline">
            <Timeline input={input} span={span} evidenceIds={evidenceIds} />
          </Zoomable>
        </Section>
        {input.streams === undefined ? null : (
          <Section
            title="Watch streams"
            note="Each lane is one watcher, on the timeline's clock; a bar is one stream it had open, colored by the node that served it and labelled with the node and the change events it delivered, from its connect (▲ green) or resume with Last-Event-ID (▲ blue) to its end (■ red when the stream failed: cut, stalled, an error event; grey when the watcher left on its own). Fault windows are shaded across every lane."
          >
            <Zoomable name="streams">
              <Streams streams={input.streams} faults={input.faults} span={span} />
            </Zoomable>
          </Section>
        )}
        {input.tenures === undefined ? null : (
          <Section
            title="Lock tenures"
            note="Each lane is one lock client, on the timeline's clock; a bar spans a tenure, from when the client learned it held the lock to when it let go (an open end: still held when the run ended), labelled with its fencing token. Red bands mark where two clients believed they held the lock at once; fault windows are shaded across every lane."
          >
            <Zoomable name="tenures">
              <Tenures tenures={input.tenures} faults={input.faults} span={span} />
            </Zoomable>
          </Section>
        )}
        <Section
          title="Latency over time"
          note="Each dot is an answered operation (a sample of them on long runs); the dark line is the median per time slice, the light one the slowest. Operations never answered are ticks along the top."
        >
          <Zoomable name="latency">
            <Latency input={input} span={span} />
          </Zoomable>
        </Section>
        {evidence.length > 0 ? <Evidence input={input} evidence={evidence} /> : null}
        <script dangerouslySetInnerHTML={{ __html: SCRIPT }} />
      </body>
    </html>
  );
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
function Epochs({ epochs }: { epochs: readonly ReportEpoch[] }): VNode {
  const heads = ["epoch", "keys", "from", "to", "operations", "ok", "refused", "unknown", "faults", "verdict", "check"];
  return (
    <Section title="Epochs" note="Every so many operations the clients move on to fresh keys; each epoch is checked on its own as soon as it is over, and its history dropped.">
      <div class="scroll epochs">
        <table>
          <tr>
            {heads.map((head) => (
              <th>{head}</th>
            ))}
          </tr>
          {epochs.map((e) => {
            const cls = e.verdict === "linearizable" ? "ok" : e.verdict === "undecided" ? "unknown" : "bad";
            const cells = [String(e.index), e.keys, formatSeconds(e.startMs), formatSeconds(e.endMs), String(e.operations), String(e.ok), String(e.failed), String(e.unknown), String(e.faults), e.verdict, `${e.checkMs} ms`];
            return (
              <tr class={`epoch ${cls}`}>
                {cells.map((c) => (
                  <td>{c}</td>
                ))}
              </tr>
            );
          })}
        </table>
      </div>
    </Section>
  );
}

function Section({ title, note, children }: { title: string; note: string; children: ComponentChildren }): VNode {
  return (
    <section>
      <h2>{title}</h2>
      <p class="note">{note}</p>
      {children}
    </section>
  );
}

function Zoomable({ name, children }: { name: string; children: ComponentChildren }): VNode {
  return (
    <>
      <div class="zoom">
        zoom{" "}
        {[1, 2, 4, 8].map((z) => (
          <button data-zoom={String(z)} data-target={name} class={z === 1 ? "on" : undefined}>
            {z}×
          </button>
        ))}
      </div>
      <div class="scroll" id={name}>
        {children}
      </div>
    </>
  );
}

function Header({ input }: { input: ReportInput }): VNode {
  return (
    <header>
      <h1>{input.title}</h1>
      {input.subtitle === undefined ? null : <p class="sub">{input.subtitle}</p>}
      {input.replayCommand === undefined ? null : (
        <p class="sub">
          replay: <code>{input.replayCommand}</code>
        </p>
      )}
      {input.generatedAt === undefined ? null : <p class="sub">generated {input.generatedAt}</p>}
    </header>
  );
}

function Checks({ checks }: { checks: readonly ReportCheck[] | undefined }): VNode | null {
  if (checks === undefined || checks.length === 0) return null;
  return (
    <ul class="checks">
      {checks.map((c) => (
        <li class={c.ok ? "ok" : "bad"}>
          <strong>
            {c.ok ? "✔" : "✘"} {c.name}
          </strong>
          : <span class="detail">{c.detail}</span>
        </li>
      ))}
    </ul>
  );
}

function Verdict({ input }: { input: ReportInput }): VNode {
  const { verdict } = input;
  let banner: VNode;
  if (input.banner !== undefined) {
    const b = input.banner;
    banner = (
      <div class={`verdict ${b.ok ? "ok" : "bad"}`} id="verdict">
        <strong>{b.title}</strong>: {b.text}
      </div>
    );
  } else {
    const took = input.checkMs === undefined ? "" : ` (checked in ${input.checkMs} ms)`;
    if (verdict.ok === true) {
      const scope =
        input.epochCount === undefined
          ? `the ${input.history.length} operations on ${verdict.keysChecked} keys fit`
          : `the ${input.operationsTotal ?? input.history.length} operations on ${verdict.keysChecked} keys in ${input.epochCount} epoch${input.epochCount === 1 ? "" : "s"} (each checked on its own) fit`;
      banner = (
        <div class="verdict ok" id="verdict">
          <strong>Linearizable</strong>: {scope} one sequential order consistent with real time{took}.
        </div>
      );
    } else if (verdict.ok === "unknown") {
      banner = (
        <div class="verdict unknown" id="verdict">
          <strong>Undecided</strong>: {verdict.reason}
          {verdict.key === undefined ? "" : ` (key ${verdict.key})`}
          {took}.
        </div>
      );
    } else {
      banner = (
        <div class="verdict bad" id="verdict">
          <strong>Not linearizable</strong> on key <code>{verdict.key}</code>
          {took}: {verdict.reason}. <a href="#evidence">{verdict.evidence.length} operations of evidence below</a>.
        </div>
      );
    }
  }
  return (
    <section>
      {banner}
      <Checks checks={input.checks} />
    </section>
  );
}

function Swatch({ color, extra }: { color: string; extra?: string }): VNode {
  return <span class={extra === undefined ? "swatch" : `swatch ${extra}`} style={`background:${color}`} />;
}

function Summary({ input }: { input: ReportInput }): VNode {
  const kinds = ["get", "put", "delete"] as const;
  const outcomes: readonly OperationOutcome[] = ["ok", "fail", "unknown"];
  const count = (kind: string, outcome: OperationOutcome) => input.history.filter((op) => op.kind === kind && op.outcome === outcome).length;
  return (
    <section class="summary">
      <div>
        <h2>Operations{input.epochCount === undefined ? "" : " (the epoch drawn below)"}</h2>
        <table>
          <tr>
            <th />
            {outcomes.map((o) => (
              <th>
                <Swatch color={OUTCOME_COLORS[o]} />
                {o === "fail" ? "refused" : o}
              </th>
            ))}
            <th>total</th>
          </tr>
          {kinds.map((kind) => {
            const cells = outcomes.map((o) => count(kind, o));
            return (
              <tr>
                <th>{kind}</th>
                {cells.map((n) => (
                  <td>{n}</td>
                ))}
                <td>{cells.reduce((a, b) => a + b, 0)}</td>
              </tr>
            );
          })}
        </table>
      </div>
      <div>
        <h2>Faults ({input.faults.length})</h2>
        {input.faults.length === 0 ? (
          <p>none</p>
        ) : (
          <ul class="faults">
            {input.faults.map((f) => (
              <li>
                <Swatch color={faultColor(f.kind)} />
                {formatSeconds(f.startMs)}–{formatSeconds(f.endMs)} {f.label}
              </li>
            ))}
          </ul>
        )}
      </div>
    </section>
  );
}

function Legend({ faults }: { faults: readonly ReportFault[] }): VNode {
  return (
    <div class="legend">
      {(["ok", "fail", "unknown"] as const).map((o) => (
        <span>
          <Swatch color={OUTCOME_COLORS[o]} />
          {o === "fail" ? "refused (not applied)" : o === "unknown" ? "unknown (no answer)" : "ok"}
        </span>
      ))}
      {[...new Set(faults.map((f) => f.kind))].map((k) => (
        <span>
          <Swatch color={faultColor(k)} extra="faint" />
          {k}
        </span>
      ))}
      <span>
        <span class="swatch outline" />
        evidence
      </span>
    </div>
  );
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

function TimeAxis(props: { x: (ms: number) => number; fromMs: number; toMs: number; top: number; bottom: number; left: number; right: number }): VNode {
  const { x, fromMs, toMs, top, bottom, left, right } = props;
  const step = tickStepMs(toMs - fromMs, 12);
  const ticks: VNode[] = [];
  for (let t = Math.ceil(fromMs / step) * step; t <= toMs; t += step) {
    const tx = num(x(t));
    const label = step < 1000 && toMs - fromMs < 10_000 ? `${t}ms` : `${num(t / 1000)}s`;
    ticks.push(
      <>
        <line x1={tx} y1={top} x2={tx} y2={bottom} class="grid" />
        <text x={tx} y={top - 6} class="tick">
          {label}
        </text>
      </>,
    );
  }
  return (
    <>
      <line x1={left} y1={top} x2={right} y2={top} class="axis" />
      {ticks}
    </>
  );
}

function FaultShading(props: { faults: readonly ReportFault[]; x: (ms: number) => number; top: number; bottom: number; withLabels: boolean }): VNode {
  const { faults, x, top, bottom, withLabels } = props;
  return (
    <>
      {faults.map((f) => {
        const x0 = x(f.startMs);
        const width = Math.max(1, x(f.endMs) - x0);
        const title = `${formatSeconds(f.startMs)}–${formatSeconds(f.endMs)} ${f.label}`;
        return (
          <>
            <rect x={num(x0)} y={top} width={num(width)} height={bottom - top} fill={faultColor(f.kind)} fill-opacity="0.13" class="fault">
              <title>{title}</title>
            </rect>
            {withLabels ? (
              <>
                <rect x={num(x0)} y={top} width={num(width)} height={FAULT_BAND_HEIGHT - 2} fill={faultColor(f.kind)} fill-opacity="0.75">
                  <title>{title}</title>
                </rect>
                <text x={num(x0 + 3)} y={top + 11} class="faultlabel">
                  {width > 60 ? f.label : f.kind}
                </text>
              </>
            ) : null}
          </>
        );
      })}
    </>
  );
}

/** The frame every lane chart shares with the timeline: its axis, fault bands, lane labels and stripes. */
function Lanes(props: {
  span: Span;
  faults: readonly ReportFault[];
  labels: readonly { text: string; title?: string; bad?: boolean }[];
  className: string;
  data: Record<string, string>;
  children: (x: (ms: number) => number, barY: (row: number) => number) => ComponentChildren;
}): VNode {
  const { span, faults, labels } = props;
  const top = AXIS_HEIGHT + FAULT_BAND_HEIGHT;
  const height = top + labels.length * ROW_HEIGHT + 8;
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const barY = (row: number) => top + row * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2;
  return (
    <svg xmlns="http://www.w3.org/2000/svg" viewBox={`0 0 ${WIDTH} ${height}`} class={`chart ${props.className}`} {...props.data}>
      <TimeAxis x={x} fromMs={span.startMs} toMs={span.endMs} top={AXIS_HEIGHT} bottom={height - 8} left={GUTTER_LEFT} right={GUTTER_LEFT + PLOT_WIDTH} />
      <FaultShading faults={faults} x={x} top={AXIS_HEIGHT} bottom={height - 8} withLabels={true} />
      {labels.map((label, row) => {
        const y = top + row * ROW_HEIGHT;
        return (
          <>
            {row % 2 === 1 ? <rect x={GUTTER_LEFT} y={y} width={PLOT_WIDTH} height={ROW_HEIGHT} class="stripe" /> : null}
            <text x={GUTTER_LEFT - 6} y={y + 14} class={label.bad === true ? "rowlabel badlabel" : "rowlabel"}>
              {label.title === undefined ? null : <title>{label.title}</title>}
              {label.text}
            </text>
          </>
        );
      })}
      {props.children(x, barY)}
    </svg>
  );
}

const NODE_COLORS: readonly string[] = ["#1f6fb2", "#3a9d5d", "#b5651d", "#7b2cbf", "#0b9a8d"];
const STREAM_MARK_COLORS = { connect: "#2a9d4a", resume: "#1d6fd6", failed: "#d62828", left: "#8b98a9" } as const;
/** Width of one character of the 10px monospace lane text, in SVG units. */
const CHAR_WIDTH = 6;

/** One lane per watcher: its streams as bars colored by node, labelled with node and events, with start and end marks. */
function Streams({ streams, faults, span }: { streams: readonly ReportStream[]; faults: readonly ReportFault[]; span: Span }): VNode {
  const nodesShown = Math.max(1, ...streams.flatMap((s) => s.segments.map((g) => g.node)));
  return (
    <>
      <div class="legend">
        {NODE_COLORS.slice(0, nodesShown).map((color, i) => (
          <span>
            <Swatch color={color} />
            node {i + 1}
          </span>
        ))}
      </div>
      <Lanes
        span={span}
        faults={faults}
        labels={streams.map((s) => ({ text: shortLabel(s.label), title: s.detail, bad: !s.ok }))}
        className="streams"
        data={{ "data-streams": String(streams.length) }}
      >
        {(x, barY) =>
          streams.map((stream, row) =>
            stream.segments.map((segment) => {
              const y = barY(row);
              const x0 = x(segment.fromMs);
              const x1 = Math.max(x0 + 1, x(segment.toMs));
              const color = NODE_COLORS[(segment.node - 1) % NODE_COLORS.length] ?? "#777";
              const title = `${stream.detail}: node ${segment.node}, ${segment.start} at ${formatSeconds(segment.fromMs)}, ${segment.events} events, ended at ${formatSeconds(segment.toMs)}: ${segment.end}`;
              const endColor = segment.endedByWatcher ? STREAM_MARK_COLORS.left : STREAM_MARK_COLORS.failed;
              const label = fitLabel([`n${segment.node} · ${segment.events} ev`, `${segment.events}`], x1 - x0 - 10);
              return (
                <>
                  <rect x={num(x0)} y={num(y + 3)} width={num(x1 - x0)} height={BAR_HEIGHT - 6} fill={color} fill-opacity="0.55" class="op">
                    <title>{title}</title>
                  </rect>
                  {label === undefined ? null : (
                    <text x={num(x0 + 6)} y={num(y + 10.5)} class="lanelabel">
                      {label}
                    </text>
                  )}
                  <path d={`M${num(x0)} ${num(y)}l4 ${BAR_HEIGHT}h-8z`} fill={STREAM_MARK_COLORS[segment.start]}>
                    <title>{`${segment.start} on node ${segment.node} at ${formatSeconds(segment.fromMs)}`}</title>
                  </path>
                  <rect x={num(x1 - 2)} y={num(y + 2)} width="4" height={BAR_HEIGHT - 4} fill={endColor}>
                    <title>{`ended at ${formatSeconds(segment.toMs)}: ${segment.end}`}</title>
                  </rect>
                </>
              );
            }),
          )
        }
      </Lanes>
    </>
  );
}

/** The first of `candidates` that fits in `widthMax` SVG units of lane text, if any. */
function fitLabel(candidates: readonly string[], widthMax: number): string | undefined {
  return candidates.find((text) => text.length * CHAR_WIDTH <= widthMax);
}

const TENURE_COLOR = "#1f6fb2";
const OVERLAP_COLOR = "#d62828";

/** Where two or more tenures overlap in time: each window with the tenures in it. */
export function tenureOverlaps(tenures: readonly ReportTenure[], endMs: number): { fromMs: number; toMs: number; holders: ReportTenure[] }[] {
  // A sweep over starts and ends; an end at the same instant as a start comes first (a hand-over, not an overlap).
  const edges = tenures.flatMap((t, i) => [
    { ms: t.acquiredMs, open: true, i },
    { ms: t.releasedMs ?? endMs, open: false, i },
  ]);
  edges.sort((a, b) => a.ms - b.ms || Number(a.open) - Number(b.open) || a.i - b.i);
  const holding = new Set<number>();
  const windows: { fromMs: number; toMs: number; holders: ReportTenure[] }[] = [];
  let since = 0;
  let seen = new Set<number>();
  for (const edge of edges) {
    if (holding.size >= 2 && edge.ms > since) {
      const last = windows[windows.length - 1];
      if (last !== undefined && last.toMs === since) last.toMs = edge.ms;
      else windows.push({ fromMs: since, toMs: edge.ms, holders: [] });
      for (const i of holding) seen.add(i);
    }
    if (edge.open) holding.add(edge.i);
    else holding.delete(edge.i);
    if (holding.size < 2 && seen.size > 0) {
      const last = windows[windows.length - 1];
      if (last !== undefined) last.holders = [...seen].sort((a, b) => a - b).map((i) => tenures[i] as ReportTenure);
      seen = new Set();
    }
    since = edge.ms;
  }
  return windows;
}

/** One lane per lock client: its tenures as bars labelled with their fences; overlaps banded in red. */
function Tenures({ tenures, faults, span }: { tenures: readonly ReportTenure[]; faults: readonly ReportFault[]; span: Span }): VNode {
  const clients = [...new Set(tenures.map((t) => t.client))].sort((a, b) => a - b);
  const rowOf = new Map(clients.map((c, i) => [c, i]));
  const overlaps = tenureOverlaps(tenures, span.endMs);
  const top = AXIS_HEIGHT + FAULT_BAND_HEIGHT;
  const bottom = top + clients.length * ROW_HEIGHT;
  return (
    <>
      <div class="legend">
        <span>
          <Swatch color={TENURE_COLOR} />
          tenure (fence)
        </span>
        <span>
          <Swatch color={OVERLAP_COLOR} extra="faint" />
          two holders at once ({overlaps.length})
        </span>
      </div>
      <Lanes
        span={span}
        faults={faults}
        labels={clients.map((c) => ({ text: `lock c${c}`, title: `lock client ${c}` }))}
        className="tenures"
        data={{ "data-tenures": String(tenures.length), "data-overlaps": String(overlaps.length) }}
      >
        {(x, barY) => (
          <>
            {overlaps.map((o) => {
              const x0 = x(o.fromMs);
              const who = o.holders.map((t) => `client ${t.client} (fence ${t.fence})`).join(", ");
              return (
                <rect x={num(x0)} y={top} width={num(Math.max(2, x(o.toMs) - x0))} height={bottom - top} fill={OVERLAP_COLOR} fill-opacity="0.22" class="overlap">
                  <title>{`${formatSeconds(o.fromMs)}–${formatSeconds(o.toMs)}: two holders at once: ${who}`}</title>
                </rect>
              );
            })}
            {tenures.map((t) => {
              const y = barY(rowOf.get(t.client) ?? 0);
              const x0 = x(t.acquiredMs);
              const x1 = Math.max(x0 + 2, x(t.releasedMs ?? span.endMs));
              const held = t.releasedMs === undefined ? "still held at the end" : `released at ${formatSeconds(t.releasedMs)}`;
              const label = fitLabel([`fence ${t.fence}`, `${t.fence}`], x1 - x0 - 4);
              return (
                <>
                  <rect x={num(x0)} y={num(y)} width={num(x1 - x0)} height={BAR_HEIGHT} fill={TENURE_COLOR} fill-opacity="0.8" class={t.releasedMs === undefined ? "op open" : "op"}>
                    <title>{`client ${t.client}, fence ${t.fence}: acquired at ${formatSeconds(t.acquiredMs)}, ${held}`}</title>
                  </rect>
                  {label === undefined ? null : (
                    <text x={num(x0 + 3)} y={num(y + 10.5)} class="oplabel">
                      {label}
                    </text>
                  )}
                </>
              );
            })}
          </>
        )}
      </Lanes>
    </>
  );
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

function Timeline({ input, span, evidenceIds }: { input: ReportInput; span: Span; evidenceIds: ReadonlySet<number> }): VNode {
  const { startMs, endMs } = span;
  const rows = clientRows(input);
  const rowOf = new Map(rows.map((id, i) => [id, i]));
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const parts: VNode[] = [];

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
  return (
    <Lanes
      span={span}
      faults={input.faults}
      labels={rows.map((id) => ({ text: input.clientLabels?.get(id) ?? `client ${id}` }))}
      className="timeline"
      data={{ "data-ops": String(input.history.length) }}
    >
      {(_, rowY) => {
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
              <rect x={num(x0)} y={num(rowY(row))} width={num(Math.max(width, 1))} height={BAR_HEIGHT} fill={OUTCOME_COLORS[RANK_OUTCOME[r] ?? "ok"]} class="strip">
                <title>{title}</title>
              </rect>,
            );
            c = end;
          }
        });
        const drawOne = (op: Operation, x0: number, x1: number, isEvidence: boolean) => {
          const row = rowOf.get(op.clientId) ?? 0;
          const width = Math.max(isEvidence ? 3 : 1, x1 - x0);
          parts.push(
            <rect x={num(x0)} y={num(rowY(row))} width={num(width)} height={BAR_HEIGHT} fill={OUTCOME_COLORS[op.outcome]} class={isEvidence ? "op evidence" : "op"}>
              <title>{`#${op.id} ${describeOperation(op)}`}</title>
            </rect>,
          );
          if (width >= LABEL_WIDTH_MIN) {
            const room = Math.floor((width - 4) / CHAR_WIDTH);
            const text = shortCall(op);
            const label = text.length <= room ? text : op.kind === "delete" ? "del" : op.kind;
            if (label.length <= room) {
              parts.push(
                <text x={num(x0 + 3)} y={num(rowY(row) + 10.5)} class="oplabel">
                  {label}
                </text>,
              );
            }
          }
        };
        for (const s of spans) if (individual.has(s.op.id)) drawOne(s.op, s.x0, s.x1, false);
        for (const s of spans) if (evidenceIds.has(s.op.id)) drawOne(s.op, s.x0, s.x1, true);
        return parts;
      }}
    </Lanes>
  );
}

function Latency({ input, span }: { input: ReportInput; span: Span }): VNode {
  const { startMs, endMs } = span;
  const x = scaleX(span, GUTTER_LEFT, PLOT_WIDTH);
  const answered = input.history.filter((op) => op.returnMs !== undefined && op.outcome !== "unknown");
  const latency = (op: Operation) => Math.max(1, (op.returnMs ?? op.callMs) - op.callMs);
  const maxLatency = answered.reduce((max, op) => Math.max(max, latency(op)), 10);
  const decades = Math.ceil(Math.log10(maxLatency));
  const y = (ms: number) => LATENCY_BOTTOM - (Math.log10(Math.max(1, ms)) / decades) * (LATENCY_BOTTOM - LATENCY_TOP);
  const parts: VNode[] = [<FaultShading faults={input.faults} x={x} top={LATENCY_TOP} bottom={LATENCY_BOTTOM} withLabels={false} />];
  for (let d = 0; d <= decades; d++) {
    const yy = num(y(10 ** d));
    parts.push(<line x1={GUTTER_LEFT} y1={yy} x2={GUTTER_LEFT + PLOT_WIDTH} y2={yy} class="grid" />);
    parts.push(
      <text x={GUTTER_LEFT - 6} y={num(y(10 ** d) + 4)} class="rowlabel">
        {10 ** d >= 1000 ? `${10 ** d / 1000}s` : `${10 ** d}ms`}
      </text>,
    );
  }
  const step = tickStepMs(endMs - startMs, 12);
  for (let t = Math.ceil(startMs / step) * step; t <= endMs; t += step) {
    parts.push(
      <text x={num(x(t))} y={LATENCY_HEIGHT - 8} class="tick">
        {`${num(t / 1000)}s`}
      </text>,
    );
  }
  // A deterministic sample of the points: every k-th answered operation in call order.
  const sorted = answered.slice().sort((a, b) => a.callMs - b.callMs || a.id - b.id);
  const stride = Math.max(1, Math.ceil(sorted.length / LATENCY_POINTS_MAX));
  for (let i = 0; i < sorted.length; i += stride) {
    const op = sorted[i] as Operation;
    parts.push(<circle cx={num(x(op.callMs))} cy={num(y(latency(op)))} r="1.6" fill={KIND_COLORS[op.kind] ?? "#333"} fill-opacity={op.outcome === "ok" ? "0.55" : "0.25"} />);
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
  for (const line of slowest) if (line.length > 1) parts.push(<polyline points={line.join(" ")} class="slowest" />);
  for (const line of median) if (line.length > 1) parts.push(<polyline points={line.join(" ")} class="median" />);
  // Unanswered operations: a tick per column at the top, with how many.
  const unanswered = new Map<number, number>();
  for (const op of input.history) {
    if (op.outcome !== "unknown") continue;
    const column = Math.floor((x(op.callMs) - GUTTER_LEFT) / COLUMN_WIDTH);
    unanswered.set(column, (unanswered.get(column) ?? 0) + 1);
  }
  for (const [column, n] of unanswered) {
    parts.push(
      <rect x={num(GUTTER_LEFT + column * COLUMN_WIDTH)} y={LATENCY_TOP - 10} width={COLUMN_WIDTH} height="8" fill={OUTCOME_COLORS.unknown}>
        <title>{`${n} operation${n === 1 ? "" : "s"} never answered`}</title>
      </rect>,
    );
  }
  return (
    <svg xmlns="http://www.w3.org/2000/svg" viewBox={`0 0 ${WIDTH} ${LATENCY_HEIGHT}`} class="chart latency">
      {parts}
    </svg>
  );
}

function Evidence({ input, evidence }: { input: ReportInput; evidence: readonly Operation[] }): VNode {
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
  const note =
    "The smallest piece of the history the checker found that no sequential order explains on its own: each bar is one operation from call to answer (an open bar never got one). Times are ms since the run began." +
    (ops.length > drawn.length ? ` The first ${drawn.length} are drawn; all ${ops.length} are listed.` : "");
  return (
    <Section title="Evidence" note={note}>
      <div class="scroll">
        <svg xmlns="http://www.w3.org/2000/svg" viewBox={`0 0 ${textLeft + 520} ${height}`} class="chart evidence-chart">
          <TimeAxis x={x} fromMs={spanFrom} toMs={spanTo} top={20} bottom={height} left={plotLeft} right={plotLeft + plotWidth} />
          <FaultShading faults={input.faults.filter((f) => f.endMs >= spanFrom && f.startMs <= spanTo)} x={x} top={20} bottom={height} withLabels={false} />
          {drawn.map((op, i) => {
            const y = top + i * rowHeight;
            const x0 = x(op.callMs);
            const open = op.returnMs === undefined;
            const x1 = open ? plotLeft + plotWidth : x(op.returnMs ?? op.callMs);
            const label = input.clientLabels?.get(op.clientId) ?? `client ${op.clientId}`;
            return (
              <>
                <text x={plotLeft - 6} y={y + 14} class="rowlabel">{`#${op.id} ${label}`}</text>
                <rect x={num(x0)} y={y + 3} width={num(Math.max(2, x1 - x0))} height="15" fill={OUTCOME_COLORS[op.outcome]} class={open ? "op evidence open" : "op evidence"}>
                  <title>{`#${op.id} ${describeOperation(op)}`}</title>
                </rect>
                <text x={textLeft} y={y + 14} class="evtext">
                  {describeOperation(op)}
                </text>
              </>
            );
          })}
        </svg>
      </div>
      <ol class="evidence-list" id="evidence">
        {ops.map((op) => (
          <li>
            <code>#{op.id}</code> <code class={`op-${op.outcome}`}>{describeOperation(op)}</code>
          </li>
        ))}
      </ol>
    </Section>
  );
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
.chart .oplabel{fill:#fff;pointer-events:none}.chart .lanelabel{fill:#1d232b;pointer-events:none}.chart .badlabel{fill:#b42020;font-weight:600}.chart .evtext{fill:#1d232b}
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
