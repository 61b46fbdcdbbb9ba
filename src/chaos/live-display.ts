/**
 * What the chaos runner shows while a scenario runs. On a terminal, long phases get one live line,
 * redrawn in place with `\r` (elapsed, ops/s, ok/failed/unknown, the current fault); everywhere
 * else (a pipe, a CI log) the same facts come as plain lines every few seconds.
 */

/** Outcome counters of a running load, read on every refresh. */
export interface LoadCounters {
  readonly ok: number;
  readonly failed: number;
  readonly unknown: number;
}

/** One rendering of the live line. */
export interface ProgressView extends LoadCounters {
  readonly elapsedMs: number;
  readonly opsPerS: number;
  readonly fault: string;
}

/** How scenarios print: whole lines always, and a live progress line during long phases. */
export interface LiveDisplay {
  /** Prints one line (on a terminal, above the live line, which is redrawn after it). */
  print(line: string): void;
  /** Starts the live line for a phase; `counters` is read on every refresh. Replaces any earlier one. */
  track(counters: () => LoadCounters, fault?: string): void;
  /** Names the fault in force now (`none` when the cluster is whole). */
  setFault(fault: string): void;
  /** Ends the live line (clears it on a terminal). */
  untrack(): void;
}

export interface LiveDisplayOptions {
  /** True on a terminal (process.stdout.isTTY): redraw one line in place. */
  readonly tty: boolean;
  readonly write: (text: string) => void;
  readonly nowMs: () => number;
  /** Terminal redraw interval. */
  readonly refreshMs?: number;
  /** Interval between plain progress lines when not on a terminal. */
  readonly plainIntervalMs?: number;
}

/** The rate window: ops/s is measured over about the last second, so it shows dips during a fault. */
const RATE_WINDOW_MS = 1_000;
const CLEAR_LINE = "\r\x1b[K";

/** `3.2s | 412 ops/s | ok 1210 failed 3 unknown 1 | fault: leader 2 paused` */
export function formatProgress(view: ProgressView): string {
  const elapsedS = (view.elapsedMs / 1000).toFixed(1);
  return `${elapsedS}s | ${Math.round(view.opsPerS)} ops/s | ok ${view.ok} failed ${view.failed} unknown ${view.unknown} | fault: ${view.fault}`;
}

/**
 * Ops per second over the samples' window: `(ops now - ops at the oldest sample) / time between`.
 * Zero until two samples are at least 1 ms apart.
 */
export function opsPerSecond(samples: readonly { readonly atMs: number; readonly ops: number }[]): number {
  const first = samples[0];
  const last = samples[samples.length - 1];
  if (first === undefined || last === undefined || last.atMs - first.atMs < 1) return 0;
  return ((last.ops - first.ops) * 1000) / (last.atMs - first.atMs);
}

/** A display writing to `opts.write`; call `untrack` before exiting so no timer is left behind. */
export function createLiveDisplay(opts: LiveDisplayOptions): LiveDisplay {
  const refreshMs = opts.refreshMs ?? 200;
  const plainIntervalMs = opts.plainIntervalMs ?? 2_000;
  let counters: (() => LoadCounters) | undefined;
  let fault = "none";
  let startedMs = 0;
  let samples: { atMs: number; ops: number }[] = [];
  let timer: ReturnType<typeof setInterval> | undefined;
  let lineShown = false;

  const view = (): string | undefined => {
    if (counters === undefined) return undefined;
    const now = opts.nowMs();
    const c = counters();
    // Read each counter explicitly: they may be getters on a class, which a spread would not copy.
    const { ok, failed, unknown } = { ok: c.ok, failed: c.failed, unknown: c.unknown };
    samples.push({ atMs: now, ops: ok + failed + unknown });
    while (samples.length > 2 && now - (samples[1] as { atMs: number }).atMs >= RATE_WINDOW_MS) samples.shift();
    return formatProgress({ ok, failed, unknown, elapsedMs: now - startedMs, opsPerS: opsPerSecond(samples), fault });
  };

  const redraw = () => {
    const line = view();
    if (line === undefined) return;
    if (opts.tty) {
      opts.write(`${CLEAR_LINE}${line}`);
      lineShown = true;
    } else {
      opts.write(`         ... ${line}\n`);
    }
  };

  const stopTimer = () => {
    if (timer !== undefined) clearInterval(timer);
    timer = undefined;
  };

  return {
    print(line) {
      if (opts.tty && lineShown) opts.write(CLEAR_LINE);
      opts.write(`${line}\n`);
      lineShown = false;
      if (opts.tty && counters !== undefined) redraw();
    },
    track(next, initialFault = "none") {
      stopTimer();
      counters = next;
      fault = initialFault;
      startedMs = opts.nowMs();
      const c = next();
      samples = [{ atMs: startedMs, ops: c.ok + c.failed + c.unknown }];
      // A display refresh, not a wait for a condition: it only reads counters.
      timer = setInterval(redraw, opts.tty ? refreshMs : plainIntervalMs);
      if (opts.tty) redraw();
    },
    setFault(next) {
      fault = next;
      if (opts.tty && counters !== undefined) redraw();
    },
    untrack() {
      stopTimer();
      counters = undefined;
      if (opts.tty && lineShown) opts.write(CLEAR_LINE);
      lineShown = false;
    },
  };
}

/** A display for code that has only a `print` (no terminal, no live line). */
export function plainDisplay(print: (line: string) => void): LiveDisplay {
  return { print, track() {}, setFault() {}, untrack() {} };
}
