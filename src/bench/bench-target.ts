import type { OperationKind } from "./bench-options.ts";
import { HttpConnectionError, type ClientConnections, type HttpResponse } from "../lib/http-connection.ts";

/** How one operation ended. `notFound` marks a read or delete of an absent key (a success). */
export type OperationOutcome =
  | { readonly ok: true; readonly notFound: boolean; readonly redirects: number }
  | { readonly ok: false; readonly errorKind: string; readonly redirects: number };

/** Who leads, as one poll of the cluster saw it. Ids are strings: etcd's do not fit in a double. */
export interface LeaderObservation {
  readonly leaderId: string;
  readonly term: number;
  /** Where writes go. */
  readonly origin: string;
}

/** The system under load: turns operations into requests and knows how to find its leader. */
export interface BenchTarget {
  /** Readies the target (finds the leader); throws when it cannot within its deadline. */
  start(): Promise<void>;
  /** Runs one operation for client number `client` over its own connections. */
  execute(connections: ClientConnections, client: number, operation: OperationKind, keyIndex: number): Promise<OperationOutcome>;
  /** One poll of who leads now, or undefined when no leader is known (or the target has none). */
  observeLeader(): Promise<LeaderObservation | undefined>;
  /** Whether leader changes mean anything for this target. */
  readonly hasLeader: boolean;
  /**
   * The run is over: operations waiting for a leader return at once, so the run ends at its
   * duration (found in a black-box review: with every node down, a 5 s run took 12 s).
   */
  stop?(): void;
  /** One line on where the load goes (for the report). */
  describe(): string;
}

/** The target cannot be benchmarked (no leader found in time): an operating error, reported in one line. */
export class BenchTargetUnavailableError extends Error {
  override name = "BenchTargetUnavailableError";
}

/** What every key the bench writes starts with (what `--watchers` watch). */
export const BENCH_KEY_PREFIX = "bench-";

/** A bearer token as a request's header line for `buildRequest` ("" without one), and as `fetch` headers. */
export function authHeaders(authToken: string | undefined): { readonly head: string; readonly fetch: Record<string, string> } {
  if (authToken === undefined) return { head: "", fetch: {} };
  return { head: `Authorization: Bearer ${authToken}\r\n`, fetch: { authorization: `Bearer ${authToken}` } };
}

/** The name of key number `index`: ASCII, no characters that need percent-encoding. */
export function keyName(index: number): string {
  return `${BENCH_KEY_PREFIX}${index}`;
}

/** A value of `bytes` printable bytes (so every target stores it unchanged). */
export function benchValue(bytes: number): Uint8Array {
  const value = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) value[i] = 97 + (i % 26);
  return value;
}

/** The error kind of a failed request: `network:*`, `timeout`, `protocol` or `abandoned`. */
export function errorKindOf(error: unknown): string {
  if (error instanceof HttpConnectionError) return error.kind;
  throw error; // anything else is a bug in the benchmark
}

/** `http_<status>:<code>` from a JSON error body (`{"error": ...}` or `{"code": ...}`), else `http_<status>`. */
export function httpErrorKind(response: HttpResponse): string {
  try {
    const parsed = JSON.parse(new TextDecoder().decode(response.body)) as { error?: unknown; code?: unknown };
    const detail = typeof parsed.error === "string" ? parsed.error : typeof parsed.code === "number" ? String(parsed.code) : undefined;
    if (detail !== undefined) return `http_${response.status}:${detail.slice(0, 80)}`;
  } catch {
    // not JSON
  }
  return `http_${response.status}`;
}

/** Polls `probe` every `intervalMs` until it yields a value, `timeoutMs` passes or `stopped()` (then undefined). */
export async function pollUntil<T>(probe: () => Promise<T | undefined>, timeoutMs: number, intervalMs: number, stopped: () => boolean = () => false): Promise<T | undefined> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined || performance.now() >= deadline || stopped()) return value;
    await Bun.sleep(intervalMs); // polling interval between cluster probes
  }
}

/** JSON from `url` (GET, or POST of `body`), or undefined on any failure within `timeoutMs`. */
export async function fetchJson(url: string, timeoutMs: number, body?: string, headers: Record<string, string> = {}): Promise<unknown> {
  try {
    const response = await fetch(url, {
      method: body === undefined ? "GET" : "POST",
      body,
      headers: body === undefined ? headers : { ...headers, "content-type": "application/json" },
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!response.ok) {
      await response.arrayBuffer().catch(() => undefined);
      return undefined;
    }
    return (await response.json()) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * Finds the write origin again when writes fail, once for all clients at a time: concurrent calls
 * share one discovery, and a call about an origin that was already replaced returns at once.
 */
export class LeaderTracker {
  private current: LeaderObservation | undefined;
  private discovering: Promise<void> | undefined;

  constructor(
    private readonly discover: () => Promise<LeaderObservation | undefined>,
    private readonly discoverTimeoutMs: number,
    /** When no leader is found at start: why, if the endpoints say (another kind of store, say). */
    private readonly diagnose: () => Promise<string | undefined> = async () => undefined,
  ) {}

  get leader(): LeaderObservation | undefined {
    return this.current;
  }

  /** Waits for a leader; throws when none is found within the discovery timeout. */
  async start(): Promise<void> {
    this.current = await pollUntil(this.discover, this.discoverTimeoutMs, 25);
    if (this.current === undefined) {
      const why = await this.diagnose();
      throw new BenchTargetUnavailableError(`no leader found within ${this.discoverTimeoutMs} ms${why === undefined ? "" : `: ${why}`}`);
    }
  }

  /** Re-discovers after a write to `failedOrigin` went wrong (keeps the old leader if none is found); at once after `stop`. */
  rediscover(failedOrigin: string): Promise<void> {
    if (this.stopped || (this.current !== undefined && this.current.origin !== failedOrigin)) return Promise.resolve();
    this.discovering ??= pollUntil(this.discover, this.discoverTimeoutMs, 25, () => this.stopped)
      .then((found) => {
        if (found !== undefined) this.current = found;
      })
      .finally(() => {
        this.discovering = undefined;
      });
    return Promise.race([this.discovering, this.stopping.promise]);
  }

  /** The run ended: whoever waits in `rediscover` goes on at once, and no discovery starts again. */
  stop(): void {
    this.stopped = true;
    this.stopping.resolve();
  }

  private stopped = false;
  private readonly stopping = Promise.withResolvers<void>();
}
