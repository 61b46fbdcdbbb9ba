/**
 * `client.watch`: the changes under a prefix (or to one key) as an async iterator, over `GET /watch`
 * (Server-Sent Events, read with src/lib/sse-reader.ts). When a stream breaks (its node was killed,
 * paused or cut off, or it ended with `event: error` such as `slow_watcher`), the iterator opens it
 * again on the next endpoint with `Last-Event-ID` = the last version it saw, so no change is skipped
 * and none is given twice. README.md's "Watch" section is the server's side of this contract.
 */
import { readSse, SseTooLargeError } from "../lib/sse-reader.ts";
import { KvClientError } from "./errors.ts";
import { FailureTally } from "./failure-tally.ts";
import type { Transport } from "./transport.ts";
import { fromJsonValue, makeEntry, type KvEntry } from "./values.ts";

/** What to watch: every key starting with `prefix`, or the one `key`. */
export type WatchSelector = { readonly prefix: string } | { readonly key: string };

/** Options of `watch`. */
export interface WatchOptions {
  /** Start with the changes at this version and later (default: after a linearizable read, so every change after now). */
  readonly fromVersion?: number;
  /** Ends the iteration (quietly: the loop just finishes) and closes the stream. */
  readonly signal?: AbortSignal;
  /** Also yield `progress` events: everything up to `version` has been delivered (default false). */
  readonly progress?: boolean;
  /**
   * A stream that sends nothing for this long is taken as broken and resumed on the next endpoint
   * (default 5000 ms; an idle node sends a progress event at least every `--watch-progress-ms`, 1 s
   * by default, so silence means a paused or cut-off node).
   */
  readonly idleTimeoutMs?: number;
  /** Give up (throw `unreachable`) when no endpoint has served the stream for this long (default 30000 ms). */
  readonly reconnectTimeoutMs?: number;
}

/** A key was written: its new value and the version of the write. */
export interface WatchPutEvent extends KvEntry {
  readonly type: "put";
}

/** A key was deleted: by a client (or a lease revoked, `delete`) or by its lease running out (`lease_expired`). */
export interface WatchDeleteEvent {
  readonly type: "delete";
  readonly key: string;
  readonly version: number;
  readonly reason: "delete" | "lease_expired";
}

/** Every change up to `version` has been delivered (only with `progress: true`). */
export interface WatchProgressEvent {
  readonly type: "progress";
  readonly version: number;
}

/** One event of a watch, in version order; several changes of one version come one after the other. */
export type WatchEvent = WatchPutEvent | WatchDeleteEvent | WatchProgressEvent;

const IDLE_TIMEOUT_MS_DEFAULT = 5_000;
const RECONNECT_TIMEOUT_MS_DEFAULT = 30_000;
/** Pause after a pass over every endpoint failed, doubling up to the max (a retry pace while an election runs). */
const BACKOFF_MS_MIN = 20;
const BACKOFF_MS_MAX = 500;
/**
 * A line or one event's data the reader accepts at most: the largest value a node takes (`kv serve
 * --value-bytes-max`, at most 16 MiB) and key (16 KiB), each byte written in JSON as up to six
 * characters (a control character as `\u0000`), and room for the rest. It was 4 Mi characters: a
 * 1 MiB value of NUL bytes (valid UTF-8, so sent as text) made a 6 MB line, and the watch
 * reconnected for it forever (found in a black-box review).
 */
export const watchEventCharsMax = 6 * ((16 << 20) + (16 << 10)) + 4_096;
/** An error answer's body read at most. */
const ERROR_BODY_CHARS_MAX = 4_096;

/** Requests left to calls other than watch streams, of the most Bun's fetch runs at once (BUN_CONFIG_MAX_HTTP_REQUESTS, read at each check: set it before the process starts, as Bun reads it once). */
const STREAMS_RESERVED = 32;
/** Watch streams held in this process (each holds one request of fetch's, or waits to: see `reserveWatchRoom`). */
let watchStreamsOpen = 0;

/**
 * Throws `too_many_streams` when one more watch would leave fewer than `STREAMS_RESERVED` of the
 * requests Bun's fetch runs at once (`BUN_CONFIG_MAX_HTTP_REQUESTS`, 256 by default) for other calls. Past the cap, every other request of the process, of
 * any client, waits behind the open streams: 256 idle watches stopped a put, and a held lock lost
 * its lease when its keepalives could not go out (found in a black-box review). Only the global
 * fetch is counted (a client given a CA sends through it too: found in review); a client given its
 * own `fetch` knows its limits. Otherwise takes the room at once (calls at the same time cannot all
 * pass the check: found in review, 30 locks at once held past a cap of 16), and returns what gives
 * it back: idempotent.
 */
export function reserveWatchRoom(transport: Transport): () => void {
  if (!transport.options.globalFetch) return () => {};
  const configured = Number(process.env.BUN_CONFIG_MAX_HTTP_REQUESTS);
  const requestsMax = Number.isSafeInteger(configured) && configured > 0 ? configured : 256;
  const streamsMax = Math.max(1, requestsMax - STREAMS_RESERVED);
  if (watchStreamsOpen + 1 <= streamsMax) {
    watchStreamsOpen++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      watchStreamsOpen--;
    };
  }
  throw new KvClientError(
    "too_many_streams",
    0,
    `this process holds ${watchStreamsOpen} watch streams (each lock held or waited for holds one), and at most ${streamsMax} may be open: Bun's fetch runs ${requestsMax} requests at once (BUN_CONFIG_MAX_HTTP_REQUESTS), and past that every other call of this process waits. Stop some watches, or start the process with a larger BUN_CONFIG_MAX_HTTP_REQUESTS`,
  );
}

/**
 * The events of one watch, resuming across endpoints. Throws `KvClientError`: `compacted` (410, with
 * `details.compactVersion`, the oldest version a watch may start from) when every endpoint's history
 * is past the start or resume point; `bad_request`/`too_large`/`unauthenticated` as the server says;
 * `unreachable` after `reconnectTimeoutMs` without a serving endpoint.
 */
export async function* watchEvents(
  transport: Transport,
  selector: WatchSelector,
  options: WatchOptions = {},
  /** Whether this watch takes room of its own (a lock's take the room their lock reserved). */
  own: { readonly counted: boolean } = { counted: true },
): AsyncGenerator<WatchEvent, void, undefined> {
  // Checked as GET /watch checks its query (found in a black-box review: both, or a progress that is
  // no boolean, were taken silently from untyped callers).
  if (typeof selector !== "object" || selector === null || ("prefix" in selector) === ("key" in selector)) throw badOption("watch needs exactly one of prefix and key");
  if (options.progress !== undefined && typeof options.progress !== "boolean") throw badOption(`progress must be true or false, got ${JSON.stringify(options.progress)}`);
  const filter: { readonly prefix: string } | { readonly key: string } = "prefix" in selector ? { prefix: selector.prefix } : { key: selector.key };
  if ("key" in filter && (typeof filter.key !== "string" || filter.key === "")) throw badOption("watch needs a non-empty key");
  if ("prefix" in filter && typeof filter.prefix !== "string") throw badOption("watch needs a prefix (a string; empty watches every key)");
  const fromVersion = options.fromVersion;
  if (fromVersion !== undefined && (!Number.isSafeInteger(fromVersion) || fromVersion < 1)) throw badOption(`fromVersion must be a positive whole number, got ${fromVersion}`);
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS_DEFAULT;
  const reconnectTimeoutMs = options.reconnectTimeoutMs ?? RECONNECT_TIMEOUT_MS_DEFAULT;
  if (!(idleTimeoutMs >= 1) || !(reconnectTimeoutMs >= 1)) throw badOption("idleTimeoutMs and reconnectTimeoutMs must be at least 1");
  const release = own.counted ? reserveWatchRoom(transport) : () => {};
  // The caller's signal, or the client's closing: either ends the stream.
  const signal = transport.withClosing(options.signal);
  yield* holdingRoom(release, signal, resumingStream(transport, filter, fromVersion, idleTimeoutMs, reconnectTimeoutMs, { ...options, signal }));
}

/**
 * `events`, giving the room `release` holds back when they end, or at once when `signal` aborts: a
 * generator paused between events runs its `finally` only if resumed (found in a black-box review:
 * "wait for one change, then abort" left the room taken for good, until every watch was refused).
 */
export async function* holdingRoom<T>(release: () => void, signal: AbortSignal | undefined, events: AsyncGenerator<T, void, undefined>): AsyncGenerator<T, void, undefined> {
  signal?.addEventListener("abort", release, { once: true });
  try {
    yield* events;
  } finally {
    signal?.removeEventListener("abort", release);
    release();
  }
}

/** `watchEvents` once its options are checked and its stream counted. */
async function* resumingStream(
  transport: Transport,
  filter: { readonly prefix: string } | { readonly key: string },
  fromVersion: number | undefined,
  idleTimeoutMs: number,
  reconnectTimeoutMs: number,
  options: WatchOptions,
): AsyncGenerator<WatchEvent, void, undefined> {
  const { endpoints } = transport.options;
  const signal = options.signal;

  // Where the caller stands: every change up to `lastVersion` was yielded, except that when
  // `yieldedAtLast` > 0 the changes of `lastVersion` itself may continue (a server batch may split
  // one version's changes; the `id:` line on its last one ends that), so a resume goes back one
  // version and skips the ones already given.
  let lastVersion: number | undefined;
  let yieldedAtLast = 0;
  let endpointAt = transport.streamStart();
  let failedInARow = 0;
  let servedMs = performance.now();
  // Endpoints that answered 410 since the last other answer: all of them means the caller must
  // re-read. One that gave no answer is neither counted nor resets the count (it was not asked: found
  // in review, a node down for a moment was skipped); it is given up on after two passes of 410s.
  const compactedBy = new Set<string>();
  let compactedAnswers = 0;
  /** The oldest start any endpoint that answered 410 serves. */
  let oldestStart: number | undefined;
  // Each distinct failure since the stream was last served.
  const failures = new FailureTally(endpoints.length * 2);

  const aborted = () => signal?.aborted === true;
  while (!aborted()) {
    const endpoint = endpoints[endpointAt % endpoints.length] as string;
    endpointAt++;
    const query = new URLSearchParams("prefix" in filter ? { prefix: filter.prefix } : { key: filter.key });
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (lastVersion !== undefined) headers["last-event-id"] = String(yieldedAtLast > 0 ? lastVersion - 1 : lastVersion);
    else if (fromVersion !== undefined) query.set("fromVersion", String(fromVersion));
    let skipAtLast = yieldedAtLast; // changes of `lastVersion` this stream will send again

    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let idleTimer: ReturnType<typeof setTimeout> | undefined;
    const armIdle = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => controller.abort(new Error("stream idle")), idleTimeoutMs);
    };
    let ended: string | undefined;
    try {
      // `break attempt` ends this attempt; the code after the try then decides how to go on.
      attempt: {
        armIdle();
        let response: Response;
        try {
          response = await transport.fetch(`${endpoint}/watch?${query}`, { headers: transport.withAuthorization(headers), signal: controller.signal, redirect: "manual" });
        } catch (error) {
          ended = `${endpoint}: ${describe(error)}`;
          if (!aborted()) transport.noteSilent(endpoint);
          break attempt;
        }
        if (response.status !== 200) {
          const refusal = await refusalOf(response, endpoint);
          if (refusal.code === "compacted") {
            // Another node's history may still reach back far enough; when none does, the caller must re-read.
            compactedBy.add(endpoint);
            compactedAnswers++;
            const start = refusal.details.compactVersion;
            if (typeof start === "number" && (oldestStart === undefined || start < oldestStart)) oldestStart = start;
            if (compactedBy.size >= endpoints.length || compactedAnswers >= 2 * endpoints.length) {
              // Said of every endpoint asked, with the oldest start any of them serves, not in one
              // node's words ("this node": found in a black-box walkthrough of kv watch).
              if (oldestStart === undefined) throw refusal;
              throw new KvClientError(
                "compacted",
                410,
                `changes at or below version ${oldestStart - 1} are kept on none of the ${compactedBy.size} endpoints that answered (start from version ${oldestStart} or later; re-read and watch again)`,
                { ...refusal.details, compactVersion: oldestStart },
              );
            }
            ended = `${endpoint}: 410 compacted`;
            break attempt;
          }
          compactedBy.clear();
          compactedAnswers = 0;
          if (response.status >= 400 && response.status < 500 && response.status !== 429 && response.status !== 408) throw refusal;
          // A node that answers but knows no leader (cut off, or the cluster lost its majority, which
          // ends every node's streams): not an unreachable cluster. The watch waits on, at the
          // backoff's pace, as etcd's watchers outlive a lost quorum (a code review: it gave up
          // with `unreachable` after reconnectTimeoutMs).
          if (refusal.code === "no_leader") servedMs = performance.now();
          ended = `${endpoint}: ${response.status} ${refusal.code}`;
          break attempt;
        }
        compactedBy.clear();
        compactedAnswers = 0;
        if (response.body === null) {
          ended = `${endpoint}: an answer without a body`;
          break attempt;
        }
        for await (const event of readSse(response.body, { charsMax: watchEventCharsMax })) {
          // A chunk's events come together: those parsed before an abort are not given after it.
          if (aborted()) break attempt;
          armIdle();
          if (event.event === "error") {
            ended = `${endpoint}: event: error ${errorOf(event.data)}`;
            break;
          }
          // Served only once an event other than an error came: a node that answers 200 and ends
          // at once (shutting down) counts as a failure, so the watch backs off and can give up.
          servedMs = performance.now();
          failedInARow = 0;
          failures.clear();
          if (event.event !== "put" && event.event !== "delete" && event.event !== "progress") continue;
          const parsed = parseEvent(event.event, event.data);
          if (parsed === undefined) {
            ended = `${endpoint}: a ${event.event} event that is not kv's: ${event.data.slice(0, 100)}`;
            break;
          }
          if (parsed.type === "progress") {
            if (lastVersion !== undefined && parsed.version < lastVersion) continue;
            if (lastVersion === undefined || parsed.version > lastVersion || yieldedAtLast > 0) {
              lastVersion = parsed.version;
              yieldedAtLast = 0;
              skipAtLast = 0;
              if (options.progress === true) {
                clearTimeout(idleTimer); // the caller's time is not the stream's silence
                yield parsed;
                armIdle();
              }
            }
            continue;
          }
          if (lastVersion !== undefined && parsed.version < lastVersion) continue; // already given (cannot happen on one stream)
          if (lastVersion !== undefined && parsed.version === lastVersion) {
            if (skipAtLast > 0) {
              skipAtLast--;
              continue;
            }
            yieldedAtLast++;
          } else {
            lastVersion = parsed.version;
            yieldedAtLast = 1;
            skipAtLast = 0;
          }
          // The node's `id:` line comes with a version's last change: the version is complete, and a
          // resume starts after it. Without this a resume went back one version, which a node whose
          // history starts right after it answered 410 (found in a black-box review).
          if (event.id === String(parsed.version)) {
            yieldedAtLast = 0;
            skipAtLast = 0;
          }
          clearTimeout(idleTimer);
          yield parsed;
          armIdle();
        }
        ended ??= `${endpoint}: the stream ended`;
      }
    } catch (error) {
      // An abort ends the loop quietly, whatever its reason (a lock's `lost` is a KvClientError).
      if (error instanceof KvClientError && !aborted()) throw error;
      // The same event comes again on every stream: resuming would loop forever.
      if (error instanceof SseTooLargeError && !aborted()) {
        throw new KvClientError("too_large", 0, `${endpoint}: the watch sent an event longer than this client reads (${watchEventCharsMax} characters)`);
      }
      ended = `${endpoint}: ${describe(error)}`;
      // Silent past the idle timeout, though a node sends progress while nothing changes.
      if (!aborted() && controller.signal.aborted) transport.noteSilent(endpoint);
    } finally {
      clearTimeout(idleTimer);
      signal?.removeEventListener("abort", onAbort);
      controller.abort(); // the stream, if the caller stopped iterating or anything above threw
      if (ended !== undefined) {
        failedInARow++;
        failures.note(ended);
      }
    }
    if (aborted()) return;
    if (performance.now() - servedMs > reconnectTimeoutMs) {
      throw new KvClientError("unreachable", 0, `no endpoint served the watch for ${reconnectTimeoutMs} ms: ${failures.lines().join("; ")}`);
    }
    if (failedInARow >= endpoints.length && failedInARow % endpoints.length === 0) {
      await Bun.sleep(Math.min(BACKOFF_MS_MAX, BACKOFF_MS_MIN * 2 ** Math.min(5, failedInARow / endpoints.length - 1))); // retry pace
    }
  }
}

function parseEvent(type: "put" | "delete" | "progress", data: string): WatchEvent | undefined {
  let body: Record<string, unknown>;
  try {
    const value = JSON.parse(data) as unknown;
    if (typeof value !== "object" || value === null) return undefined;
    body = value as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const version = body.version;
  if (typeof version !== "number" || !Number.isSafeInteger(version)) return undefined;
  if (type === "progress") return { type, version };
  if (typeof body.key !== "string") return undefined;
  if (type === "delete") {
    const reason = body.reason === "lease_expired" ? "lease_expired" : "delete";
    return { type, key: body.key, version, reason };
  }
  const bytes = fromJsonValue(body.value);
  if (bytes === undefined) return undefined;
  const entry = makeEntry(body.key, version, bytes);
  return Object.defineProperties({ type: "put" as const }, Object.getOwnPropertyDescriptors(entry)) as WatchPutEvent;
}

function errorOf(data: string): string {
  try {
    const parsed = JSON.parse(data) as { error?: unknown };
    return typeof parsed.error === "string" ? parsed.error : "error";
  } catch {
    return "error";
  }
}

async function refusalOf(response: Response, endpoint: string): Promise<KvClientError> {
  const text = (await response.text().catch(() => "")).slice(0, ERROR_BODY_CHARS_MAX);
  let parsed: Record<string, unknown> = {};
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value === "object" && value !== null && !Array.isArray(value)) parsed = value as Record<string, unknown>;
  } catch {
    // not JSON: the status alone speaks
  }
  const { error, message, ...details } = parsed;
  return new KvClientError(
    typeof error === "string" ? error : `http_${response.status}`,
    response.status,
    typeof message === "string" ? message : `HTTP ${response.status} from ${endpoint}`,
    details,
  );
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function badOption(message: string): KvClientError {
  return new KvClientError("bad_request", 0, message);
}
