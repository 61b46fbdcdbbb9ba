/**
 * What a benchmark run is asked to do, and the parsers for the text forms the CLI accepts. A parser
 * throws {@link BenchInputError} on bad input; the CLI turns it into a usage error (exit 2).
 */
import { parseDuration } from "../lib/duration.ts";

/** Bad input to a benchmark parser: the message names the flag and what it expects. */
export class BenchInputError extends Error {
  override name = "BenchInputError";
}

/** The operations a run mixes. */
export const OPERATION_KINDS = ["put", "get", "delete"] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

/** Relative weights of each operation (only the ratios matter). */
export type OperationMix = Readonly<Record<OperationKind, number>>;

/** What the load is sent to: kv's HTTP API, etcd's JSON gateway, or any server that answers 2xx. */
export type BenchTargetKind = "kv" | "etcd" | "noop";
/** kv's read modes (`lease`: a leader answers from its lease without a heartbeat round; kv only). */
export type ReadConsistency = "linearizable" | "lease" | "stale";

/** A run stops after a fixed time or after a fixed number of requests. */
export type BenchStop = { readonly kind: "duration"; readonly durationMs: number } | { readonly kind: "requests"; readonly requests: number };

export interface BenchOptions {
  readonly target: BenchTargetKind;
  /** Origins such as `http://127.0.0.1:8001`, without a trailing slash. */
  readonly endpoints: readonly string[];
  /** Closed-loop clients: each has one request in flight at a time on its own connection. */
  readonly clients: number;
  readonly stop: BenchStop;
  readonly valueBytes: number;
  /** Keys are drawn uniformly from `keys` distinct names. */
  readonly keys: number;
  readonly mix: OperationMix;
  readonly consistency: ReadConsistency;
  /** A request unanswered for this long fails with the error kind `timeout` and its connection is dropped. */
  readonly requestTimeoutMs: number;
  /** Seed of the key and operation choices (client i uses seed + i). */
  readonly seed: number;
  /** Watch streams on the writers' prefix, open during the run (0: none). */
  readonly watchers: number;
  /** Watch streams on a prefix nobody writes, all on `idleEndpoint`, open during the run (0: none). */
  readonly idleWatchers: number;
  /** Where the idle watchers connect (default: the first endpoint). */
  readonly idleEndpoint: string;
  /** Pause between the idle watchers' opening and the first write, so the node's memory can be read (0: none). */
  readonly idleSettleMs: number;
  /** kv: the bearer token its client API requires (`kv serve --auth-token`), sent with every request. */
  readonly authToken?: string;
}

/** What `--idle-watchers` watch: a prefix outside the writers' (BENCH_KEY_PREFIX), so they stay idle. */
export const IDLE_WATCH_PREFIX = "idle-watch/";

/** Limits on what a run may ask for. */
export const CLIENTS_MAX = 10_000;
export const VALUE_BYTES_MAX = 1024 * 1024;
export const KEYS_MAX = 1_000_000_000;
export const REQUESTS_MAX = 1_000_000_000;
export const DURATION_MS_MAX = 24 * 3_600_000;
/** A node serves at most 10,000 watch streams (src/node/watch.ts); the bench opens at most that many. */
export const WATCHERS_MAX = 10_000;

/**
 * Parses a duration such as `15s`, `500ms`, `1.5s`, `2m` or `1m30s` (units ms, s, m, h; a unit is
 * required) into milliseconds, which must be positive and at most a day.
 */
export function parseDurationMs(flag: string, text: string): number {
  const totalMs = parseDuration(text);
  if (totalMs === undefined) {
    throw new BenchInputError(`--${flag} must be a duration such as 15s, 500ms or 2m, got '${text}'`);
  }
  if (!(totalMs > 0 && totalMs <= DURATION_MS_MAX)) {
    throw new BenchInputError(`--${flag} must be more than 0 and at most 24h, got '${text}'`);
  }
  return totalMs;
}

/**
 * Parses `put=1,get=0,delete=0` into weights. Operations left out weigh 0; weights are non-negative
 * numbers and at least one must be positive.
 */
export function parseMix(text: string): OperationMix {
  const mix: Record<OperationKind, number> = { put: 0, get: 0, delete: 0 };
  const named = new Set<string>();
  for (const part of text.split(",")) {
    const match = /^\s*([a-z]+)\s*=\s*(\d+(?:\.\d+)?)\s*$/.exec(part);
    if (match === null) throw new BenchInputError(`--mix must be op=weight pairs such as put=1,get=3, got '${part}'`);
    const name = match[1] as string;
    if (!(OPERATION_KINDS as readonly string[]).includes(name)) {
      throw new BenchInputError(`--mix: unknown operation '${name}' (use ${OPERATION_KINDS.join(", ")})`);
    }
    if (named.has(name)) throw new BenchInputError(`--mix names '${name}' twice`);
    named.add(name);
    mix[name as OperationKind] = Number(match[2]);
  }
  if (mix.put + mix.get + mix.delete <= 0) throw new BenchInputError(`--mix needs at least one positive weight, got '${text}'`);
  return mix;
}

/** Parses comma-separated http(s) origins given to `--flag`; paths and trailing slashes are dropped. */
export function parseEndpoints(text: string, flag = "endpoints"): string[] {
  // A flag's name, or an environment variable's ("$KV_ENDPOINTS") as it is.
  const name = flag.startsWith("$") ? flag : `--${flag}`;
  const endpoints: string[] = [];
  for (const part of text.split(",")) {
    const trimmed = part.trim();
    let url: URL;
    try {
      url = new URL(trimmed);
    } catch {
      throw new BenchInputError(`${name}: '${trimmed}' is not a URL (e.g. http://127.0.0.1:8001)`);
    }
    if (url.protocol !== "http:") throw new BenchInputError(`${name}: '${trimmed}' must be http:// (the benchmark client speaks plain HTTP/1.1)`);
    if (!endpoints.includes(url.origin)) endpoints.push(url.origin);
  }
  return endpoints;
}

/** Parses a whole number within [min, max]. */
export function parseWholeNumber(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
    throw new BenchInputError(`--${flag} must be a whole number from ${min} to ${max}, got '${text}'`);
  }
  return n;
}

/** `put=1,get=0,delete=0` as the run reports it (operations with weight 0 left out). */
export function formatMix(mix: OperationMix): string {
  return OPERATION_KINDS.filter((kind) => mix[kind] > 0)
    .map((kind) => `${kind}=${mix[kind]}`)
    .join(",");
}
