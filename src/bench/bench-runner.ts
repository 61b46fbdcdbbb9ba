import { createPrng, type Prng } from "../lib/prng.ts";
import { OPERATION_KINDS, type BenchOptions, type OperationKind, type OperationMix } from "./bench-options.ts";
import type { BenchTarget, LeaderObservation } from "./bench-target.ts";
import { ClientConnections, type HttpConnection } from "../lib/http-connection.ts";
import { LatencyHistogram } from "./latency-histogram.ts";

/** How often the leader is polled during a run (a few requests a second: no load to speak of). */
const LEADER_POLL_INTERVAL_MS = 100;
/** How often requests in flight are checked against the request timeout. */
const TIMEOUT_SWEEP_INTERVAL_MS = 50;
/**
 * Pause of a client after a network error (refused, reset): without it a client whose endpoint
 * is down spins at tens of thousands of failures a second, stealing CPU from the nodes still up.
 */
const NETWORK_ERROR_BACKOFF_MS = 10;

/** Counts of one operation kind. */
export interface OperationCounts {
  ok: number;
  /** Successful reads and deletes of absent keys (included in `ok`). */
  notFound: number;
  errors: number;
  /** Latencies of successful operations. */
  readonly latency: LatencyHistogram;
}

/** A leader seen by the poller, `atMs` after the start of the run. */
export interface LeaderEvent extends LeaderObservation {
  readonly atMs: number;
}

/** Everything a run measured. */
export interface BenchResult {
  readonly options: BenchOptions;
  /** Where the load went (target-specific, one line). */
  readonly description: string;
  /** From the first request to the end (the deadline, or the last answer in `--requests` mode). */
  readonly elapsedMs: number;
  readonly byKind: Readonly<Record<OperationKind, OperationCounts>>;
  /** Latencies of all successful operations. */
  readonly latency: LatencyHistogram;
  /** Failed operations by kind of error (`http_503:no_leader`, `network:ECONNREFUSED`, `timeout`, ...). */
  readonly errors: ReadonlyMap<string, number>;
  /** Writes resent to a new leader after a 307. */
  readonly redirects: number;
  /** Distinct (leader, term) pairs seen in order; undefined for a target without a leader. */
  readonly leaders: readonly LeaderEvent[] | undefined;
  /** Whether the run was cut short (Ctrl-C). */
  readonly interrupted: boolean;
}

/** A snapshot for a progress bar. */
export interface BenchProgress {
  readonly elapsedMs: number;
  readonly completed: number;
  readonly errors: number;
  /** 0..1 of the way to the end. */
  readonly fraction: number;
}

/** Hooks a caller can attach to a run. */
export interface BenchHooks {
  /** Called every `progressIntervalMs` while the run lasts. */
  readonly onProgress?: (progress: BenchProgress) => void;
  readonly progressIntervalMs?: number;
  /** Aborting stops the run early; what was measured so far is returned, marked interrupted. */
  readonly signal?: AbortSignal;
}

/** Picks operations with the mix's weights. */
function createOperationPicker(mix: OperationMix): (prng: Prng) => OperationKind {
  const total = mix.put + mix.get + mix.delete;
  const only = OPERATION_KINDS.filter((kind) => mix[kind] > 0);
  if (only.length === 1) {
    const kind = only[0] as OperationKind;
    return () => kind;
  }
  return (prng) => {
    let roll = prng.next() * total;
    for (const kind of only) {
      roll -= mix[kind];
      if (roll < 0) return kind;
    }
    return only[only.length - 1] as OperationKind;
  };
}

/**
 * Runs `options.clients` closed loops against `target`: each sends one operation, waits for its
 * answer, records the latency of a success (or the kind of a failure) and sends the next, until
 * the duration ends (requests still in flight then are dropped and not counted) or the request
 * count is reached. Meanwhile it polls the target's leader and reports progress.
 */
export async function runBench(options: BenchOptions, target: BenchTarget, hooks: BenchHooks = {}): Promise<BenchResult> {
  await target.start();
  const byKind = Object.fromEntries(
    OPERATION_KINDS.map((kind) => [kind, { ok: 0, notFound: 0, errors: 0, latency: new LatencyHistogram() } satisfies OperationCounts]),
  ) as Record<OperationKind, OperationCounts>;
  const latency = new LatencyHistogram();
  const errors = new Map<string, number>();
  let redirects = 0;
  let completed = 0;
  let failed = 0;
  let issued = 0;
  let stopped = false;
  let interrupted = false;
  const connections = new Set<HttpConnection>();
  const clientConnections: ClientConnections[] = [];
  const pickOperation = createOperationPicker(options.mix);
  const stop = options.stop;

  const startedMs = performance.now();
  let endedMs: number | undefined;
  const stopRun = () => {
    if (stopped) return;
    stopped = true;
    endedMs ??= performance.now();
    for (const connection of connections) connection.abandon();
    target.stop?.();
  };
  const timers: Array<ReturnType<typeof setInterval>> = [];
  const deadlineTimer = stop.kind === "duration" ? setTimeout(stopRun, stop.durationMs) : undefined;
  const onAbort = () => {
    interrupted = true;
    stopRun();
  };
  hooks.signal?.addEventListener("abort", onAbort);
  timers.push(
    setInterval(() => {
      const nowMs = performance.now();
      for (const connection of connections) connection.expire(nowMs, options.requestTimeoutMs);
    }, Math.min(TIMEOUT_SWEEP_INTERVAL_MS, options.requestTimeoutMs)),
  );
  if (hooks.onProgress !== undefined) {
    const onProgress = hooks.onProgress;
    timers.push(
      setInterval(() => {
        const elapsedMs = performance.now() - startedMs;
        const fraction = stop.kind === "duration" ? elapsedMs / stop.durationMs : (completed + failed) / stop.requests;
        onProgress({ elapsedMs, completed, errors: failed, fraction: Math.min(1, fraction) });
      }, hooks.progressIntervalMs ?? 200),
    );
  }

  // The leader poller: one poll at a time, recording every change of (leader, term).
  const leaders: LeaderEvent[] | undefined = target.hasLeader ? [] : undefined;
  const leaderPoller = (async () => {
    if (leaders === undefined) return;
    while (!stopped) {
      const seen = await target.observeLeader();
      const last = leaders[leaders.length - 1];
      if (seen !== undefined && (last === undefined || last.leaderId !== seen.leaderId || last.term !== seen.term)) {
        leaders.push({ ...seen, atMs: performance.now() - startedMs });
      }
      if (!stopped) await Bun.sleep(LEADER_POLL_INTERVAL_MS); // polling interval, not a wait for a condition
    }
  })();

  const client = async (index: number) => {
    const prng = createPrng(options.seed + index);
    const own = new ClientConnections((connection) => connections.add(connection));
    clientConnections.push(own);
    for (;;) {
      if (stopped) return;
      if (stop.kind === "requests") {
        if (issued >= stop.requests) return;
        issued += 1;
      }
      const operation = pickOperation(prng);
      const keyIndex = Math.floor(prng.next() * options.keys);
      const sentMs = performance.now();
      const outcome = await target.execute(own, index, operation, keyIndex);
      const answeredMs = performance.now();
      // Answers after the deadline (and requests the stop abandoned) are not counted.
      if (stopped && (endedMs === undefined || answeredMs > endedMs)) return;
      const counts = byKind[operation];
      redirects += outcome.redirects;
      if (outcome.ok) {
        const latencyUs = (answeredMs - sentMs) * 1000;
        counts.ok += 1;
        if (outcome.notFound) counts.notFound += 1;
        counts.latency.record(latencyUs);
        latency.record(latencyUs);
        completed += 1;
      } else {
        counts.errors += 1;
        errors.set(outcome.errorKind, (errors.get(outcome.errorKind) ?? 0) + 1);
        failed += 1;
        if (outcome.errorKind.startsWith("network:")) await Bun.sleep(NETWORK_ERROR_BACKOFF_MS); // a back-off, not a wait for a condition
      }
    }
  };

  try {
    await Promise.all(Array.from({ length: options.clients }, (_, i) => client(i)));
  } finally {
    endedMs ??= performance.now();
    stopped = true;
    clearTimeout(deadlineTimer);
    for (const timer of timers) clearInterval(timer);
    hooks.signal?.removeEventListener("abort", onAbort);
    for (const own of clientConnections) own.closeAll();
  }
  await leaderPoller;
  return {
    options,
    description: target.describe(),
    elapsedMs: endedMs - startedMs,
    byKind,
    latency,
    errors,
    redirects,
    leaders,
    interrupted,
  };
}
