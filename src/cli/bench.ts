import { defineCommand } from "citty";
import {
  BenchInputError,
  CLIENTS_MAX,
  IDLE_WATCH_PREFIX,
  KEYS_MAX,
  parseDurationMs,
  parseEndpoints,
  parseMix,
  parseWholeNumber,
  REQUESTS_MAX,
  VALUE_BYTES_MAX,
  WATCHERS_MAX,
  type BenchOptions,
  type BenchTargetKind,
  type ReadConsistency,
} from "../bench/bench-options.ts";
import { benchReport, formatBenchReport } from "../bench/bench-report.ts";
import { runBench, type BenchProgress } from "../bench/bench-runner.ts";
import { BENCH_KEY_PREFIX, BenchTargetUnavailableError, type BenchTarget } from "../bench/bench-target.ts";
import { createEtcdTarget } from "../bench/etcd-target.ts";
import { createKvTarget } from "../bench/kv-target.ts";
import { createNoopTarget, startNoopServerProcess } from "../bench/noop-target.ts";
import { formatLeaseChurnReport, LEASE_CHURN_MAX, LEASE_TTL_MS_MAX, LEASE_TTL_MS_MIN, runLeaseChurn, type LeaseChurnOptions } from "../bench/lease-churn.ts";
import { WatchLoad } from "../bench/watch-load.ts";
import { UsageError } from "./usage-error.ts";

const DEFAULT_ENDPOINTS = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003";
/** How long --watchers' streams may take to open, and to deliver the last acknowledged put after the run. */
const WATCH_OPEN_TIMEOUT_MS = 30_000;
const WATCH_DRAIN_TIMEOUT_MS = 30_000;

/** The flags as citty hands them over. */
interface BenchArgs {
  endpoints?: string;
  target?: string;
  clients?: string;
  duration?: string;
  requests?: string;
  "value-bytes"?: string;
  keys?: string;
  mix?: string;
  consistency?: string;
  timeout?: string;
  seed?: string;
  watchers?: string;
  "idle-watchers"?: string;
  "idle-endpoint"?: string;
  "idle-settle"?: string;
  "lease-churn"?: string;
  "lease-ttl"?: string;
  "auth-token"?: string;
  json?: boolean;
}

/** `--auth-token`, else `$KV_AUTH_TOKEN` (as the client commands), for --target kv only. */
function benchAuthToken(args: BenchArgs, target: string): string | undefined {
  const token = args["auth-token"] ?? (process.env.KV_AUTH_TOKEN === "" ? undefined : process.env.KV_AUTH_TOKEN);
  if (args["auth-token"] !== undefined && target !== "kv") throw new BenchInputError(`--auth-token is kv's bearer token: it goes with --target kv, not ${target}`);
  if (token !== undefined && /[\r\n]/.test(token)) throw new BenchInputError("--auth-token must be one line");
  return target === "kv" ? token : undefined;
}

/** Turns flags into options; any bad value is a usage error (exit 2) before anything starts. */
export function benchOptionsFromArgs(args: BenchArgs, endpoints: readonly string[]): BenchOptions {
  try {
    const target = (args.target ?? "kv") as BenchTargetKind;
    if (!["kv", "etcd", "noop"].includes(target)) throw new BenchInputError(`--target must be kv, etcd or noop, got '${args.target}'`);
    const consistency = (args.consistency ?? "linearizable") as ReadConsistency;
    if (consistency !== "linearizable" && consistency !== "lease" && consistency !== "stale") {
      throw new BenchInputError(`--consistency must be linearizable, lease or stale, got '${args.consistency}'`);
    }
    if (consistency === "lease" && target === "etcd") throw new BenchInputError("--consistency lease is kv's; etcd reads are linearizable or stale (serializable)");
    if (args.duration !== undefined && args.requests !== undefined) throw new BenchInputError("give --duration or --requests, not both");
    const watchers = args.watchers === undefined ? 0 : parseWholeNumber("watchers", args.watchers, 0, WATCHERS_MAX);
    if (watchers > 0 && target === "noop") throw new BenchInputError("--watchers needs a store that watches: --target kv (GET /watch) or etcd (POST /v3/watch)");
    const idleWatchers = args["idle-watchers"] === undefined ? 0 : parseWholeNumber("idle-watchers", args["idle-watchers"], 0, WATCHERS_MAX);
    if (idleWatchers > 0 && target === "noop") throw new BenchInputError("--idle-watchers needs a store that watches: --target kv or etcd");
    if (idleWatchers === 0 && (args["idle-endpoint"] !== undefined || args["idle-settle"] !== undefined)) {
      throw new BenchInputError("--idle-endpoint and --idle-settle go with --idle-watchers N");
    }
    const idleEndpoint = args["idle-endpoint"] === undefined ? (endpoints[0] as string) : onlyOne("idle-endpoint", parseEndpoints(args["idle-endpoint"], "idle-endpoint"));
    const idleSettleMs = args["idle-settle"] === undefined || args["idle-settle"].trim() === "0" ? 0 : parseDurationMs("idle-settle", args["idle-settle"]);
    const authToken = benchAuthToken(args, target);
    return {
      ...(authToken === undefined ? {} : { authToken }),
      target,
      endpoints,
      clients: args.clients === undefined ? 16 : parseWholeNumber("clients", args.clients, 1, CLIENTS_MAX),
      stop:
        args.requests !== undefined
          ? { kind: "requests", requests: parseWholeNumber("requests", args.requests, 1, REQUESTS_MAX) }
          : { kind: "duration", durationMs: parseDurationMs("duration", args.duration ?? "15s") },
      valueBytes: args["value-bytes"] === undefined ? 100 : parseWholeNumber("value-bytes", args["value-bytes"], 0, VALUE_BYTES_MAX),
      keys: args.keys === undefined ? 10_000 : parseWholeNumber("keys", args.keys, 1, KEYS_MAX),
      mix: parseMix(args.mix ?? "put=1"),
      consistency,
      requestTimeoutMs: args.timeout === undefined ? 10_000 : parseDurationMs("timeout", args.timeout),
      seed: args.seed === undefined ? 1 : parseWholeNumber("seed", args.seed, 0, 2 ** 31),
      watchers,
      idleWatchers,
      idleEndpoint,
      idleSettleMs,
    };
  } catch (error) {
    if (error instanceof BenchInputError) throw new UsageError(error.message);
    throw error;
  }
}

/**
 * `--lease-churn N [--lease-ttl 10s]`: the lease-churn mode's options, or undefined without
 * `--lease-churn`. It replaces the closed-loop run: --watchers, --idle-watchers, --mix, --requests
 * and --duration do not go with it.
 */
export function leaseChurnOptionsFromArgs(args: BenchArgs): LeaseChurnOptions | undefined {
  try {
    if (args["lease-churn"] === undefined) {
      if (args["lease-ttl"] !== undefined) throw new BenchInputError("--lease-ttl goes with --lease-churn N");
      return undefined;
    }
    const target = args.target ?? "kv";
    if (target !== "kv" && target !== "etcd") throw new BenchInputError(`--lease-churn needs a store with leases: --target kv or etcd, got '${target}'`);
    for (const flag of ["watchers", "idle-watchers", "mix", "requests", "duration"] as const) {
      if (args[flag] !== undefined) throw new BenchInputError(`--${flag} does not go with --lease-churn (a run of its own: grant, refresh, wait for expiry)`);
    }
    const ttlMs = args["lease-ttl"] === undefined ? 10_000 : parseDurationMs("lease-ttl", args["lease-ttl"]);
    if (ttlMs < LEASE_TTL_MS_MIN || ttlMs > LEASE_TTL_MS_MAX || (target === "etcd" && ttlMs % 1000 !== 0)) {
      throw new BenchInputError(`--lease-ttl must be from 1s to 24h${target === "etcd" ? " in whole seconds (etcd's TTLs are seconds)" : ""}, got '${args["lease-ttl"]}'`);
    }
    const authToken = benchAuthToken(args, target);
    return {
      ...(authToken === undefined ? {} : { authToken }),
      target,
      leases: parseWholeNumber("lease-churn", args["lease-churn"], 1, LEASE_CHURN_MAX),
      ttlMs,
      clients: args.clients === undefined ? 64 : parseWholeNumber("clients", args.clients, 1, CLIENTS_MAX),
      requestTimeoutMs: args.timeout === undefined ? 10_000 : parseDurationMs("timeout", args.timeout),
    };
  } catch (error) {
    if (error instanceof BenchInputError) throw new UsageError(error.message);
    throw error;
  }
}

function onlyOne(flag: string, endpoints: readonly string[]): string {
  if (endpoints.length !== 1) throw new BenchInputError(`--${flag} takes one URL, got ${endpoints.length}`);
  return endpoints[0] as string;
}

function parseEndpointsFlag(text: string, flag = "endpoints"): string[] {
  try {
    return parseEndpoints(text, flag);
  } catch (error) {
    if (error instanceof BenchInputError) throw new UsageError(error.message);
    throw error;
  }
}

function createTarget(options: BenchOptions, watch: WatchLoad | undefined): BenchTarget {
  const common = { endpoints: options.endpoints, valueBytes: options.valueBytes, consistency: options.consistency, discoverTimeoutMs: options.requestTimeoutMs };
  switch (options.target) {
    case "kv":
      return createKvTarget({ ...common, ...(options.authToken === undefined ? {} : { authToken: options.authToken }), ...(watch === undefined ? {} : { onPutAcknowledged: watch.acknowledged }) });
    case "etcd":
      return createEtcdTarget({ ...common, ...(watch === undefined ? {} : { onPutAcknowledged: watch.acknowledged }) });
    case "noop":
      return createNoopTarget(common);
  }
}

/** A one-line progress bar on stderr, redrawn in place (terminals only). */
function renderProgress(progress: BenchProgress): void {
  const width = 30;
  const filled = Math.round(progress.fraction * width);
  const rate = progress.elapsedMs > 0 ? Math.round(progress.completed / (progress.elapsedMs / 1000)) : 0;
  const line =
    `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${Math.floor(progress.fraction * 100)
      .toString()
      .padStart(3)}% ` + `${(progress.elapsedMs / 1000).toFixed(1)} s  ${progress.completed.toLocaleString("en-US")} ok  ${rate.toLocaleString("en-US")}/s  ${progress.errors} errors`;
  process.stderr.write(`\r${line}\x1b[K`);
}

/** `kv bench`: a closed-loop load generator for kv, etcd (JSON gateway) or any HTTP server. */
export const benchCommand = defineCommand({
  meta: { name: "bench", description: "Measure throughput and latency of kv (or etcd) under a closed-loop load" },
  args: {
    endpoints: {
      type: "string",
      description: `Comma-separated client URLs (default: kv, $KV_ENDPOINTS or ${DEFAULT_ENDPOINTS}; etcd, ${DEFAULT_ENDPOINTS}; noop: a server it starts)`,
      valueHint: "URL,URL",
    },
    target: { type: "string", description: "kv, etcd (its JSON gateway /v3/kv/*) or noop (any server; measures this tool's ceiling) (default kv)", valueHint: "kv|etcd|noop" },
    clients: { type: "string", description: "Concurrent closed-loop clients, one request in flight each (default 16)", valueHint: "N" },
    duration: { type: "string", description: "How long to run, e.g. 15s, 500ms, 2m (default 15s)", valueHint: "DURATION" },
    requests: { type: "string", description: "Stop after N requests instead of a duration", valueHint: "N" },
    "value-bytes": { type: "string", description: "Size of each written value (default 100)", valueHint: "BYTES" },
    keys: { type: "string", description: "Key space: keys are drawn uniformly from N names (default 10000)", valueHint: "N" },
    mix: { type: "string", description: "Weights of put, get and delete (default put=1)", valueHint: "put=1,get=0,delete=0" },
    consistency: { type: "string", description: "Reads: linearizable, lease (kv only) or stale (etcd: serializable) (default linearizable)", valueHint: "MODE" },
    timeout: {
      type: "string",
      description: "A request unanswered this long counts as a timeout error; also the longest wait for a leader (default 10s)",
      valueHint: "DURATION",
    },
    seed: { type: "string", description: "Seed of the key and operation choices (default 1)", valueHint: "N" },
    watchers: {
      type: "string",
      description: "Open N watch streams on the writers' prefix (spread over the endpoints) and report events/s, acknowledgement-to-event latency and events lost (kv: GET /watch; etcd: POST /v3/watch; default 0)",
      valueHint: "N",
    },
    "idle-watchers": {
      type: "string",
      description: `Also open N watch streams on a prefix nobody writes (${IDLE_WATCH_PREFIX}), all on one node, before the writes and through them (kv or etcd; default 0)`,
      valueHint: "N",
    },
    "idle-endpoint": { type: "string", description: "The node the idle watchers connect to (default: the first endpoint)", valueHint: "URL" },
    "idle-settle": { type: "string", description: "Pause between opening the idle watchers and the first write, e.g. 2s (default 0)", valueHint: "DURATION" },
    "lease-churn": {
      type: "string",
      description:
        "Instead of the load: grant N leases with one key each, keep each alive once so all run out within about a second, and report the time until every key is gone (target: TTL + 1 s) and leader changes (kv or etcd; exit 1 on a miss)",
      valueHint: "N",
    },
    "lease-ttl": { type: "string", description: "TTL of --lease-churn's leases, 1s to 24h (etcd: whole seconds) (default 10s)", valueHint: "DURATION" },
    "auth-token": { type: "string", description: "kv's bearer token (kv serve --auth-token), sent with every request (or env KV_AUTH_TOKEN)", valueHint: "SECRET" },
    json: { type: "boolean", description: "Print one JSON object instead of the text report" },
  },
  async run({ args }) {
    // kv's own client commands take $KV_ENDPOINTS when --endpoints is not given, and so does a run
    // against kv (found in a review: one with it exported measured the local cluster instead).
    // An empty variable is an unset one, as $KV_AUTH_TOKEN's is.
    const fromEnv = (args.target ?? "kv") === "kv" && process.env.KV_ENDPOINTS !== "" ? process.env.KV_ENDPOINTS : undefined;
    const explicitEndpoints = args.endpoints === undefined ? (fromEnv === undefined ? undefined : parseEndpointsFlag(fromEnv, "$KV_ENDPOINTS")) : parseEndpointsFlag(args.endpoints);
    // Validate every flag before starting anything.
    const leaseChurn = leaseChurnOptionsFromArgs(args);
    let options = benchOptionsFromArgs(args, explicitEndpoints ?? parseEndpoints(DEFAULT_ENDPOINTS));
    if (leaseChurn !== undefined) {
      const churnAbort = new AbortController();
      const onChurnSignal = () => churnAbort.abort();
      process.on("SIGINT", onChurnSignal);
      process.on("SIGTERM", onChurnSignal);
      try {
        const report = await runLeaseChurn(leaseChurn, createTarget(options, undefined), churnAbort.signal);
        console.log(args.json === true ? JSON.stringify(report) : formatLeaseChurnReport(report));
        if (!report.met) process.exitCode = 1;
        if (churnAbort.signal.aborted) process.exitCode = 130;
      } catch (error) {
        if (!(error instanceof BenchTargetUnavailableError)) throw error;
        console.error(`kv: bench: ${options.target} at ${options.endpoints.join(",")}: ${error.message}`);
        process.exitCode = 1;
      } finally {
        process.off("SIGINT", onChurnSignal);
        process.off("SIGTERM", onChurnSignal);
      }
      return;
    }
    let noopServer: Awaited<ReturnType<typeof startNoopServerProcess>> | undefined;
    let watch: WatchLoad | undefined;
    let idle: WatchLoad | undefined;
    let idleOpenMs = 0;
    const abort = new AbortController();
    let interrupts = 0;
    const onSignal = () => {
      interrupts += 1;
      if (interrupts === 1) abort.abort(); // stop and report what was measured
      else void noopServer?.stop().finally(() => process.exit(130));
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      if (options.target === "noop" && explicitEndpoints === undefined) {
        noopServer = await startNoopServerProcess();
        options = { ...options, endpoints: [noopServer.origin] };
      }
      const showProgress = process.stderr.isTTY === true;
      const auth = options.authToken === undefined ? {} : { authToken: options.authToken };
      idle =
        options.idleWatchers > 0
          ? new WatchLoad({ endpoints: [options.idleEndpoint], watchers: options.idleWatchers, prefix: IDLE_WATCH_PREFIX, protocol: options.target === "etcd" ? "etcd" : "kv", ...auth })
          : undefined;
      watch = options.watchers > 0 ? new WatchLoad({ endpoints: options.endpoints, watchers: options.watchers, prefix: BENCH_KEY_PREFIX, protocol: options.target === "etcd" ? "etcd" : "kv", ...auth }) : undefined;
      const target = createTarget(options, watch);
      let result: Awaited<ReturnType<typeof runBench>>;
      try {
        if (idle !== undefined) {
          const openedAtMs = performance.now();
          await idle.open(WATCH_OPEN_TIMEOUT_MS);
          idleOpenMs = Math.round(performance.now() - openedAtMs);
          // bench:compare reads the node's memory on this line, before the first write.
          console.error(`kv bench: ${options.idleWatchers} idle watchers open on ${options.idleEndpoint} in ${idleOpenMs} ms`);
          if (options.idleSettleMs > 0) await Bun.sleep(options.idleSettleMs); // a pause the user asked for, not a wait for a condition
        }
        // Every stream is open (answered) before the first write, so each must deliver every put.
        await watch?.open(WATCH_OPEN_TIMEOUT_MS);
        result = await runBench(options, target, { signal: abort.signal, onProgress: showProgress ? renderProgress : undefined });
      } catch (error) {
        if (!(error instanceof BenchTargetUnavailableError)) throw error;
        console.error(`kv: bench: ${options.target} at ${options.endpoints.join(",")}: ${error.message}`);
        process.exitCode = 1;
        return;
      }
      if (showProgress) process.stderr.write("\r\x1b[K");
      const watchReport = await watch?.finish(WATCH_DRAIN_TIMEOUT_MS);
      const idleReport = idle === undefined ? undefined : await idle.finish(0);
      const report = benchReport(
        result,
        watchReport,
        idleReport === undefined ? undefined : { watchers: idleReport.watchers, endpoint: options.idleEndpoint, prefix: IDLE_WATCH_PREFIX, openMs: idleOpenMs, streamsEnded: idleReport.streamsEnded, openRetries: idleReport.openRetries },
      );
      console.log(args.json === true ? JSON.stringify(report) : formatBenchReport(report));
      // Nothing succeeded: the target is down or refuses everything.
      if (report.ok === 0) process.exitCode = 1;
      // A lost event is a broken guarantee, not a slow run.
      if (watchReport !== undefined && (watchReport.lost > 0 || watchReport.misordered > 0)) process.exitCode = 1;
      if (result.interrupted) process.exitCode = 130;
    } finally {
      watch?.close();
      idle?.close();
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      await noopServer?.stop();
    }
  },
});
