/**
 * `kv bench --watchers N`: N watch streams on the prefix the writers write under, spread over the
 * endpoints, open before the first write. Each acknowledged put is recorded with its version and
 * when its answer arrived; each stream's events are matched to them as they come: events delivered,
 * latency from acknowledgement to event (0 when the event came first), and at the end the events
 * lost (an acknowledged put some stream never delivered: must be 0).
 *
 * Streams are raw sockets, not fetch: Bun's fetch runs at most 256 requests at once, and a watch
 * stream is a request that never ends. Each stream parses its events with src/lib/sse-reader.ts and
 * uses the SSE `id` (the version), so no event's JSON is parsed.
 */
import type { Socket } from "bun";
import { SseParser, type SseEvent } from "../lib/sse-reader.ts";
import { BenchTargetUnavailableError } from "./bench-target.ts";
import { LatencyHistogram } from "./latency-histogram.ts";

export interface WatchLoadOptions {
  readonly endpoints: readonly string[];
  readonly watchers: number;
  /** The prefix every stream watches (the writers' keys are under it). */
  readonly prefix: string;
}

/** What the watchers measured, in the bench's JSON report. */
export interface WatchBenchReport {
  readonly watchers: number;
  /** put and delete events delivered, all streams together. */
  readonly eventsDelivered: number;
  /** eventsDelivered over the time from the first write to the last event. */
  readonly eventsPerSec: number;
  /** From a put's acknowledgement to its event on a stream (one sample per stream and put). */
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
  /** Acknowledged puts (each must reach every stream). */
  readonly acknowledgedPuts: number;
  /** Acknowledged puts a stream never delivered, summed over streams: must be 0. */
  readonly lost: number;
  /** Events that came twice or out of version order on one stream: must be 0. */
  readonly misordered: number;
  /** Streams that ended before the run did (`slow_watcher`, a cut connection, ...), by reason. */
  readonly streamsEnded: Readonly<Record<string, number>>;
  /** Streams opened again after one ended, with `Last-Event-ID` (the contract: nothing is lost). */
  readonly resumes: number;
}

/** Bytes of a response head, and of one chunk-size line, a stream accepts at most. */
const HEAD_BYTES_MAX = 16 * 1024;
const CHUNK_LINE_BYTES_MAX = 1_024;

/** One watch stream over its own socket: HTTP/1.1 GET, then a chunked (or close-delimited) event stream. */
class RawWatchStream {
  private socket: Socket<undefined> | undefined;
  private head = new Uint8Array(0);
  private headDone = false;
  private chunked = false;
  /** Chunked decoding: `size` reads a size line, `data` a chunk's bytes, `crlf` the CRLF after them. */
  private state: "size" | "data" | "crlf" | "end" = "size";
  private line = "";
  private remaining = 0;
  private crlfLeft = 2;
  private readonly decoder = new TextDecoder();
  private readonly parser = new SseParser({ charsMax: 4 * 1024 * 1024 });
  private ended = false;

  constructor(
    private readonly origin: string,
    private readonly path: string,
    /** Resume after this version (`Last-Event-ID`), or start after a linearizable read when undefined. */
    private readonly lastEventId: number | undefined,
    private readonly onEvent: (event: SseEvent) => void,
    private readonly onEnd: (reason: string) => void,
  ) {}

  open(): void {
    const url = new URL(this.origin);
    const resume = this.lastEventId === undefined ? "" : `Last-Event-ID: ${this.lastEventId}\r\n`;
    const request = new TextEncoder().encode(`GET ${this.path} HTTP/1.1\r\nHost: ${url.host}\r\nAccept: text/event-stream\r\n${resume}\r\n`);
    Bun.connect({
      hostname: url.hostname,
      port: Number(url.port),
      socket: {
        open: (socket) => {
          this.socket = socket;
          socket.write(request);
        },
        data: (_socket, chunk) => this.receive(chunk),
        close: () => this.end("connection closed"),
        error: (_socket, error) => this.end(`error: ${error.message}`),
        connectError: (_socket, error) => this.end(`connect: ${error.message}`),
      },
    }).catch((error: unknown) => this.end(`connect: ${error instanceof Error ? error.message : String(error)}`));
  }

  close(): void {
    this.ended = true;
    this.socket?.end();
  }

  /** Ends the stream (once): closes the socket and reports `reason`. */
  end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.socket?.end();
    this.onEnd(reason);
  }

  private receive(chunk: Uint8Array): void {
    if (this.ended) return;
    try {
      let body = chunk;
      if (!this.headDone) {
        const joined = new Uint8Array(this.head.byteLength + chunk.byteLength);
        joined.set(this.head);
        joined.set(chunk, this.head.byteLength);
        const at = indexOfHeadEnd(joined);
        if (at < 0) {
          if (joined.byteLength > HEAD_BYTES_MAX) return this.end("response head too large");
          this.head = joined;
          return;
        }
        const head = new TextDecoder("latin1").decode(joined.subarray(0, at)).toLowerCase();
        const status = Number(/^http\/1\.[01] (\d{3})/.exec(head)?.[1]);
        if (status !== 200) return this.end(`http ${Number.isNaN(status) ? "?" : status}`);
        this.chunked = /\r\ntransfer-encoding:[^\r]*chunked/.test(head);
        this.headDone = true;
        body = joined.subarray(at + 4);
      }
      if (!this.chunked) return this.text(body);
      this.dechunk(body);
    } catch (error) {
      this.end(`bad stream: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private dechunk(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.byteLength && this.state !== "end") {
      switch (this.state) {
        case "size": {
          const byte = bytes[at++] as number;
          if (byte === 10) {
            const size = Number.parseInt(this.line.split(";")[0]?.trim() ?? "", 16);
            this.line = "";
            if (!Number.isInteger(size) || size < 0) throw new Error("bad chunk size");
            if (size === 0) {
              this.state = "end";
              this.end("stream ended by the node");
              return;
            }
            this.remaining = size;
            this.state = "data";
          } else if (byte !== 13) {
            this.line += String.fromCharCode(byte);
            if (this.line.length > CHUNK_LINE_BYTES_MAX) throw new Error("chunk size line too long");
          }
          break;
        }
        case "data": {
          const take = Math.min(this.remaining, bytes.byteLength - at);
          this.text(bytes.subarray(at, at + take));
          at += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            this.state = "crlf";
            this.crlfLeft = 2;
          }
          break;
        }
        case "crlf":
          at++;
          if (--this.crlfLeft === 0) this.state = "size";
          break;
        default:
          return;
      }
    }
  }

  private text(bytes: Uint8Array): void {
    for (const event of this.parser.push(this.decoder.decode(bytes, { stream: true }))) this.onEvent(event);
  }
}

function indexOfHeadEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.byteLength; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}

/** Per watcher: its current stream, the highest version delivered, whether it has answered at all. */
interface StreamState {
  stream: RawWatchStream;
  readonly origin: string;
  lastVersion: number;
  opened: boolean;
  /** Set when it ended for good (could not resume, or ended before it ever answered). */
  ended: string | undefined;
  resumes: number;
}

/** A watcher whose stream ends resumes from its last version, at most this many times. */
const RESUMES_PER_WATCHER_MAX = 100;

/** The watchers of one bench run (see the file comment). */
export class WatchLoad {
  /** Acknowledged put version → when its answer arrived (performance.now()). */
  private readonly ackedAtMs = new Map<number, number>();
  /** Version → how many streams delivered it. */
  private readonly deliveries = new Map<number, number>();
  /** Version → deliveries that came before its put's answer (each a latency of 0 once it is acknowledged). */
  private readonly early = new Map<number, number>();
  private readonly streams: StreamState[] = [];
  private readonly latency = new LatencyHistogram();
  private eventsDelivered = 0;
  private misordered = 0;
  private maxAckedVersion = 0;
  private firstWriteMs: number | undefined;
  private lastEventMs: number | undefined;
  private changed: (() => void) | undefined;
  /** Stream ends by reason (each followed by a resume unless the run was over). */
  private readonly ends = new Map<string, number>();
  private resumes = 0;
  private closing = false;

  constructor(private readonly opts: WatchLoadOptions) {}

  /** Called as each put is acknowledged, with the version its answer gave. */
  readonly acknowledged = (version: number): void => {
    const nowMs = performance.now();
    this.firstWriteMs ??= nowMs;
    this.ackedAtMs.set(version, nowMs);
    this.maxAckedVersion = Math.max(this.maxAckedVersion, version);
    const early = this.early.get(version);
    if (early !== undefined) {
      for (let i = 0; i < early; i++) this.latency.record(0);
      this.early.delete(version);
    }
  };

  /** Opens every stream and waits until each has answered (its first progress event); throws when not all do in time. */
  async open(timeoutMs: number): Promise<void> {
    for (let i = 0; i < this.opts.watchers; i++) {
      const origin = this.opts.endpoints[i % this.opts.endpoints.length] as string;
      const state: StreamState = { stream: this.connect(origin, undefined, () => state), origin, lastVersion: 0, opened: false, ended: undefined, resumes: 0 };
      this.streams.push(state);
      state.stream.open();
    }
    const allOpen = () => this.streams.every((s) => s.opened || s.ended !== undefined);
    if (!(await this.until(allOpen, timeoutMs)) || this.streams.some((s) => !s.opened)) {
      const failed = this.streams.filter((s) => !s.opened);
      this.close();
      throw new BenchTargetUnavailableError(`${failed.length} of ${this.opts.watchers} watch streams did not open within ${timeoutMs} ms (${failed[0]?.ended ?? "no answer"})`);
    }
  }

  /** Waits (up to `timeoutMs`) for every open stream to pass the last acknowledged put, closes them and reports. */
  async finish(timeoutMs: number): Promise<WatchBenchReport> {
    const target = this.maxAckedVersion;
    await this.until(() => this.streams.every((s) => s.ended !== undefined || s.lastVersion >= target), timeoutMs);
    this.close();
    let lost = 0;
    for (const version of this.ackedAtMs.keys()) lost += this.streams.length - (this.deliveries.get(version) ?? 0);
    const streamsEnded = Object.fromEntries(this.ends);
    const spanMs = this.firstWriteMs === undefined || this.lastEventMs === undefined ? 0 : this.lastEventMs - this.firstWriteMs;
    const round3 = (n: number) => Math.round(n * 1000) / 1000;
    return {
      watchers: this.streams.length,
      eventsDelivered: this.eventsDelivered,
      eventsPerSec: spanMs <= 0 ? 0 : Math.round((this.eventsDelivered / spanMs) * 1000 * 10) / 10,
      latencyMs: {
        p50: round3(this.latency.valueAtPercentileUs(50) / 1000),
        p99: round3(this.latency.valueAtPercentileUs(99) / 1000),
        max: round3(this.latency.valueAtPercentileUs(100) / 1000),
      },
      acknowledgedPuts: this.ackedAtMs.size,
      lost,
      misordered: this.misordered,
      streamsEnded,
      resumes: this.resumes,
    };
  }

  /** Closes every stream (safe to call more than once). */
  close(): void {
    this.closing = true;
    for (const s of this.streams) s.stream.close();
  }

  /** A stream for a watcher: when it ends, the watcher resumes after its last version (the contract), or gives up. */
  private connect(origin: string, lastEventId: number | undefined, state: () => StreamState): RawWatchStream {
    const path = `/watch?${new URLSearchParams({ prefix: this.opts.prefix })}`;
    return new RawWatchStream(origin, path, lastEventId, (event) => this.onEvent(state(), event), (reason) => {
      const watcher = state();
      this.ends.set(reason, (this.ends.get(reason) ?? 0) + 1);
      if (this.closing || !watcher.opened || watcher.resumes >= RESUMES_PER_WATCHER_MAX) {
        watcher.ended = reason;
      } else {
        watcher.resumes++;
        this.resumes++;
        watcher.stream = this.connect(watcher.origin, watcher.lastVersion, state);
        watcher.stream.open();
      }
      this.changed?.();
    });
  }

  private onEvent(state: StreamState, event: SseEvent): void {
    const version = Number(event.id);
    if (event.event === "progress") {
      state.opened = true;
      if (Number.isSafeInteger(version) && version > state.lastVersion) state.lastVersion = version;
    } else if (event.event === "put" || event.event === "delete") {
      state.opened = true;
      const nowMs = performance.now();
      this.eventsDelivered++;
      this.lastEventMs = nowMs;
      if (!Number.isSafeInteger(version) || version <= state.lastVersion) {
        this.misordered++;
      } else {
        state.lastVersion = version;
        this.deliveries.set(version, (this.deliveries.get(version) ?? 0) + 1);
        const ackedMs = this.ackedAtMs.get(version);
        if (event.event === "put") {
          // An event may come before its write's answer (the watcher's node applied it first): a
          // latency of 0, counted once the answer arrives (a put never acknowledged has no latency).
          if (ackedMs === undefined) this.early.set(version, (this.early.get(version) ?? 0) + 1);
          else this.latency.record(Math.max(0, (nowMs - ackedMs) * 1000));
        }
      }
    } else if (event.event === "error") {
      state.stream.end(`event: error ${event.data.slice(0, 60)}`);
    }
    this.changed?.();
  }

  /** Resolves true once `condition` holds (re-checked whenever a stream reports), false after `timeoutMs`. */
  private until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
    if (condition()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.changed = undefined;
        resolve(condition());
      }, timeoutMs);
      this.changed = () => {
        if (!condition()) return;
        clearTimeout(timer);
        this.changed = undefined;
        resolve(true);
      };
    });
  }
}
