/**
 * `kv bench --watchers N`: N watch streams on the prefix the writers write under, spread over the
 * endpoints, open before the first write. Each acknowledged put is recorded with its version and
 * when its answer arrived; each stream's events are matched to them as they come: events delivered,
 * latency from acknowledgement to event (0 when the event came first), and at the end the events
 * lost (an acknowledged put some stream never delivered: must be 0).
 *
 * Streams are raw sockets, not fetch: Bun's fetch runs at most 256 requests at once, and a watch
 * stream is a request that never ends. Two protocols: kv's `GET /watch` (Server-Sent Events, parsed
 * with src/lib/sse-reader.ts; a change's version is read from its data without parsing the JSON, as
 * the SSE `id` is on only the last change of a version) and etcd's
 * gateway `POST /v3/watch` with a `create_request` on the prefix (one JSON object per line; each
 * event's `mod_revision` is its version, read without parsing the line unless it holds a delete).
 */
import type { Socket } from "bun";
import { SseParser, type SseEvent } from "../lib/sse-reader.ts";
import { authHeaders, BenchTargetUnavailableError } from "./bench-target.ts";
import { LatencyHistogram } from "./latency-histogram.ts";

export interface WatchLoadOptions {
  readonly endpoints: readonly string[];
  readonly watchers: number;
  /** The prefix every stream watches (the writers' keys are under it). */
  readonly prefix: string;
  /** Whose watch API the streams speak (default kv). */
  readonly protocol?: WatchProtocolKind;
  /** kv only: sent as `Authorization: Bearer` when a stream opens (`kv serve --auth-token`). */
  readonly authToken?: string;
}

/** kv's `GET /watch` (SSE) or etcd's gateway `POST /v3/watch` (JSON lines). */
export type WatchProtocolKind = "kv" | "etcd";

/** What a stream said, whatever its protocol. */
export type WatchSignal =
  | { readonly kind: "opened" }
  | { readonly kind: "progress"; readonly version: number }
  | { readonly kind: "change"; readonly version: number; readonly put: boolean }
  | { readonly kind: "error"; readonly reason: string };

/** How one protocol opens a stream and reads its body. */
interface WatchProtocol {
  /** The request bytes: a watch of `prefix` on `origin`, after `lastVersion` when given; `auth`: header lines to add ("" for none). */
  request(origin: string, prefix: string, lastVersion: number | undefined, auth: string): Uint8Array;
  /** A fresh decoder of one stream's body text. */
  decoder(): (text: string) => WatchSignal[];
}

/** Characters one SSE line or one etcd JSON line may hold at most. */
const LINE_CHARS_MAX = 4 * 1024 * 1024;

const kvProtocol: WatchProtocol = {
  request(origin, prefix, lastVersion, auth) {
    const path = `/watch?${new URLSearchParams({ prefix })}`;
    const resume = lastVersion === undefined ? "" : `Last-Event-ID: ${lastVersion}\r\n`;
    return new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${new URL(origin).host}\r\nAccept: text/event-stream\r\n${auth}${resume}\r\n`);
  },
  decoder: kvSignalDecoder,
};

/** A fresh decoder of one kv watch stream's body text (SSE) into signals. */
export function kvSignalDecoder(): (text: string) => WatchSignal[] {
  const parser = new SseParser({ charsMax: LINE_CHARS_MAX });
  return (text) => parser.push(text).map(sseSignal);
}

/** `"version":N` in a change's JSON: a quote inside a key or value is escaped, so only the field matches. */
const versionField = /"version":(\d+)/;

function sseSignal(event: SseEvent): WatchSignal {
  switch (event.event) {
    case "progress":
      return { kind: "progress", version: Number(event.id) };
    case "put":
    case "delete":
      return { kind: "change", version: Number(versionField.exec(event.data)?.[1]), put: event.event === "put" };
    case "error":
      return { kind: "error", reason: `event: error ${event.data.slice(0, 60)}` };
    default:
      return { kind: "opened" };
  }
}

/** The key just past every key that starts with `prefix` (etcd's `range_end` for a prefix). */
export function prefixRangeEnd(prefix: string): Uint8Array {
  const bytes = new TextEncoder().encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if ((bytes[i] as number) < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i] = (end[i] as number) + 1;
      return end;
    }
  }
  return new Uint8Array([0]); // every key: etcd's "\0" range end
}

const etcdProtocol: WatchProtocol = {
  request(origin, prefix, lastVersion) {
    const create = {
      key: Buffer.from(prefix).toString("base64"),
      range_end: Buffer.from(prefixRangeEnd(prefix)).toString("base64"),
      ...(lastVersion === undefined ? {} : { start_revision: String(lastVersion + 1) }),
    };
    const body = new TextEncoder().encode(JSON.stringify({ create_request: create }));
    const head = `POST /v3/watch HTTP/1.1\r\nHost: ${new URL(origin).host}\r\nContent-Type: application/json\r\nContent-Length: ${body.byteLength}\r\n\r\n`;
    const bytes = new Uint8Array(head.length + body.byteLength);
    bytes.set(new TextEncoder().encode(head));
    bytes.set(body, head.length);
    return bytes;
  },
  decoder() {
    let pending = "";
    return (text) => {
      pending += text;
      const signals: WatchSignal[] = [];
      let at: number;
      while ((at = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, at);
        pending = pending.slice(at + 1);
        if (line.trim() !== "") signals.push(...etcdSignals(line));
      }
      if (pending.length > LINE_CHARS_MAX) throw new Error(`an etcd watch line longer than ${LINE_CHARS_MAX} characters`);
      return signals;
    };
  },
};

const MOD_REVISION = /"mod_revision":"(\d+)"/g;

/**
 * The signals of one line of etcd's gateway watch stream: `{"result":{"header":...,"created":true}}`
 * opens it, `{"result":{...,"events":[{"kv":{...,"mod_revision":"N"}},{"type":"DELETE",...}]}}`
 * carries changes (a put's `type` is left out: it is the enum's zero), `"canceled":true` or an
 * `{"error":...}` ends it.
 */
export function etcdSignals(line: string): WatchSignal[] {
  if (line.includes('"canceled":true') || line.startsWith('{"error"')) return [{ kind: "error", reason: `etcd: ${line.slice(0, 80)}` }];
  const signals: WatchSignal[] = [];
  if (line.includes('"created":true')) signals.push({ kind: "opened" });
  if (!line.includes('"events"')) return signals;
  if (line.includes('"DELETE"')) {
    // Rare in the bench (its writers put): parse the line to tell puts from deletes.
    const parsed = JSON.parse(line) as { result?: { events?: Array<{ type?: string; kv?: { mod_revision?: string } }> } };
    for (const event of parsed.result?.events ?? []) signals.push({ kind: "change", version: Number(event.kv?.mod_revision), put: event.type !== "DELETE" });
    return signals;
  }
  for (const match of line.matchAll(MOD_REVISION)) signals.push({ kind: "change", version: Number(match[1]), put: true });
  return signals;
}

const PROTOCOLS: Readonly<Record<WatchProtocolKind, WatchProtocol>> = { kv: kvProtocol, etcd: etcdProtocol };

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
  /** Openings refused before the stream's first answer (a 307 from a node that lost its leadership, ...) and tried again. */
  readonly openRetries: number;
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
  private readonly decode: (text: string) => WatchSignal[];
  private ended = false;

  constructor(
    private readonly origin: string,
    /** The whole request (see WatchProtocol.request). */
    private readonly request: Uint8Array,
    protocol: WatchProtocol,
    private readonly onSignal: (signal: WatchSignal) => void,
    private readonly onEnd: (reason: string) => void,
  ) {
    this.decode = protocol.decoder();
  }

  open(): void {
    const url = new URL(this.origin);
    const request = this.request;
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
    for (const signal of this.decode(this.decoder.decode(bytes, { stream: true }))) this.onSignal(signal);
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

/** Streams connecting at once while `open` runs. */
const OPENING_STREAMS_MAX = 250;
/** Pause before a stream refused at opening tries again. */
const OPEN_RETRY_PAUSE_MS = 200;

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
  /** Set once `open` returned: a stream that never answered may no longer try again (it would start after writes it must deliver). */
  private openDone = false;
  /** Opening attempts that were refused (307 from a node that lost its leadership meanwhile, 503, ...) and tried again. */
  private openRetries = 0;

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
    const deadlineMs = performance.now() + timeoutMs;
    const answered = (s: StreamState) => s.opened || s.ended !== undefined;
    // In waves: thousands of connects at once overflow the node's accept backlog (refused, reset).
    for (let from = 0; from < this.opts.watchers; from += OPENING_STREAMS_MAX) {
      const wave: StreamState[] = [];
      for (let i = from; i < Math.min(this.opts.watchers, from + OPENING_STREAMS_MAX); i++) {
        const origin = this.opts.endpoints[i % this.opts.endpoints.length] as string;
        const state: StreamState = { stream: this.connect(origin, undefined, () => state), origin, lastVersion: 0, opened: false, ended: undefined, resumes: 0 };
        this.streams.push(state);
        wave.push(state);
        state.stream.open();
      }
      if (!(await this.until(() => wave.every(answered), Math.max(0, deadlineMs - performance.now())))) break;
    }
    this.openDone = true;
    if (this.streams.length < this.opts.watchers || this.streams.some((s) => !s.opened)) {
      const failed = [...this.streams.filter((s) => !s.opened), ...Array.from({ length: this.opts.watchers - this.streams.length }, () => undefined)];
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
      openRetries: this.openRetries,
    };
  }

  /** Closes every stream (safe to call more than once). */
  close(): void {
    this.closing = true;
    for (const s of this.streams) s.stream.close();
  }

  /** A stream for a watcher: when it ends, the watcher resumes after its last version (the contract), or gives up. */
  private connect(origin: string, lastVersion: number | undefined, state: () => StreamState): RawWatchStream {
    const protocol = PROTOCOLS[this.opts.protocol ?? "kv"];
    const request = protocol.request(origin, this.opts.prefix, lastVersion, authHeaders(this.opts.authToken).head);
    return new RawWatchStream(origin, request, protocol, (signal) => this.onSignal(state(), signal), (reason) => {
      const watcher = state();
      this.ends.set(reason, (this.ends.get(reason) ?? 0) + 1);
      if (!this.closing && !watcher.opened && !this.openDone && watcher.resumes < RESUMES_PER_WATCHER_MAX) {
        // Refused before its first answer while `open` still waits: try again, after a pause, from "now".
        watcher.resumes++;
        this.openRetries++;
        setTimeout(() => {
          if (this.closing || this.openDone) {
            watcher.ended = reason;
            this.changed?.();
            return;
          }
          watcher.stream = this.connect(watcher.origin, undefined, state);
          watcher.stream.open();
        }, OPEN_RETRY_PAUSE_MS);
      } else if (this.closing || !watcher.opened || watcher.resumes >= RESUMES_PER_WATCHER_MAX) {
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

  private onSignal(state: StreamState, signal: WatchSignal): void {
    switch (signal.kind) {
      case "opened":
        state.opened = true;
        break;
      case "progress":
        state.opened = true;
        if (Number.isSafeInteger(signal.version) && signal.version > state.lastVersion) state.lastVersion = signal.version;
        break;
      case "change": {
        state.opened = true;
        const version = signal.version;
        const nowMs = performance.now();
        this.eventsDelivered++;
        this.lastEventMs = nowMs;
        if (!Number.isSafeInteger(version) || version <= state.lastVersion) {
          this.misordered++;
        } else {
          state.lastVersion = version;
          this.deliveries.set(version, (this.deliveries.get(version) ?? 0) + 1);
          const ackedMs = this.ackedAtMs.get(version);
          if (signal.put) {
            // An event may come before its write's answer (the watcher's node applied it first): a
            // latency of 0, counted once the answer arrives (a put never acknowledged has no latency).
            if (ackedMs === undefined) this.early.set(version, (this.early.get(version) ?? 0) + 1);
            else this.latency.record(Math.max(0, (nowMs - ackedMs) * 1000));
          }
        }
        break;
      }
      case "error":
        state.stream.end(signal.reason);
        break;
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
