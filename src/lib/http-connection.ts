import type { Socket } from "bun";
import { assert } from "./assert.ts";

/**
 * A minimal keep-alive HTTP/1.1 client connection: one request in flight at a time (no
 * pipelining), Content-Length and chunked bodies, reconnect on demand. Used by the load generator,
 * by the peer transport's calls over plain http, and (through {@link sendOnce}) by kv chaos to put
 * requests into a stopped process's socket: kv's one raw HTTP client.
 *
 * Why not fetch: on this machine Bun's fetch tops out near 18k requests/s with 64 in flight, while
 * a plain Bun.serve answers ~74k/s, and fetch's own call was a tenth to a fifth of a node's CPU
 * under load. This client over Bun.connect runs on the calling thread and reaches well over twice
 * fetch's rate (see BENCHMARKS.md, the noop ceiling).
 */

/** A complete answer: the status, the raw head (status line and headers) and the body's bytes. */
export interface HttpResponse {
  readonly status: number;
  readonly head: string;
  readonly body: Uint8Array;
}

/** The value of header `name` in a response, or undefined. */
export function responseHeader(response: HttpResponse, name: string): string | undefined {
  const lowerHead = response.head.toLowerCase();
  const at = lowerHead.indexOf(`\r\n${name.toLowerCase()}:`);
  if (at < 0) return undefined;
  const from = at + name.length + 3;
  const lineEnd = lowerHead.indexOf("\r\n", from);
  return response.head.slice(from, lineEnd < 0 ? undefined : lineEnd).trim();
}

/**
 * A request that got no complete answer. `kind` is `timeout`, `abandoned` (the run stopped),
 * `protocol` (a malformed answer) or `network:<code>` (refused, reset, closed).
 */
export class HttpConnectionError extends Error {
  override name = "HttpConnectionError";
  constructor(
    readonly kind: string,
    message: string,
  ) {
    super(message);
  }
}

/** Responses larger than this are refused as a protocol error: bounded memory per connection. */
export const RESPONSE_BYTES_MAX = 64 * 1024 * 1024;

interface Pending {
  /** Called once every byte of the request is in the socket's hands. */
  readonly onWritten: (() => void) | undefined;
  readonly resolve: (response: HttpResponse) => void;
  readonly reject: (error: HttpConnectionError) => void;
  readonly startedMs: number;
}

/** What a socket carries: its connection and the epoch it belongs to (older epochs are ignored). */
interface SocketTag {
  readonly connection: HttpConnection;
  readonly epoch: number;
}

type Parsed = { readonly response: HttpResponse; readonly consumed: number; readonly close: boolean } | undefined;

const EMPTY = Buffer.alloc(0);
const EMPTY_BODY = new Uint8Array(0);
const STATUS_LINE = /^HTTP\/1\.[01] ([1-5]\d\d)(?: |\r|$)/;
const HEADER_END = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");

/** Socket handlers shared by every connection (Bun recommends one handler object). */
const handlers = {
  open(socket: Socket<SocketTag>) {
    socket.data.connection.onOpen(socket);
  },
  data(socket: Socket<SocketTag>, chunk: Buffer) {
    socket.data.connection.onData(socket.data.epoch, chunk);
  },
  drain(socket: Socket<SocketTag>) {
    socket.data.connection.onDrain(socket.data.epoch);
  },
  end(socket: Socket<SocketTag>) {
    socket.data.connection.onClose(socket.data.epoch, "network:closed");
  },
  close(socket: Socket<SocketTag>) {
    socket.data.connection.onClose(socket.data.epoch, "network:closed");
  },
  error(socket: Socket<SocketTag>, error: Error) {
    socket.data.connection.onClose(socket.data.epoch, `network:${errorCode(error)}`);
  },
  connectError(socket: Socket<SocketTag>, error: Error) {
    socket.data.connection.onClose(socket.data.epoch, `network:${errorCode(error)}`);
  },
};

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && code !== "" ? code : "error";
}

/** One TCP connection to one origin, reopened as needed. */
export class HttpConnection {
  /** Bumped whenever the socket is dropped: events from an older socket are ignored. */
  private epoch = 0;
  private socket: Socket<SocketTag> | undefined;
  private connecting = false;
  private pending: Pending | undefined;
  /** Request bytes the socket has not taken yet (written on open or drain). */
  private unsent: Uint8Array = EMPTY;
  /** Response bytes received so far. */
  private received: Buffer = EMPTY;

  constructor(
    readonly hostname: string,
    readonly port: number,
  ) {}

  /** When the request in flight was sent (performance.now() ms), or undefined when idle. */
  get inFlightSinceMs(): number | undefined {
    return this.pending?.startedMs;
  }

  /**
   * Sends one complete request (see {@link buildRequest}) and resolves with its answer.
   * `onWritten` is called once every byte has been handed to the kernel (not called if that fails).
   * Once the promise settles no byte of `bytes` is written any more: the caller may reuse them.
   */
  request(bytes: Uint8Array, onWritten?: () => void): Promise<HttpResponse> {
    assert(this.pending === undefined, "one request at a time per connection");
    return new Promise<HttpResponse>((resolve, reject) => {
      this.pending = { onWritten, resolve, reject, startedMs: performance.now() };
      this.unsent = bytes;
      try {
        if (this.socket !== undefined) this.flush();
        else if (!this.connecting) this.connect();
      } catch (error) {
        // Settled with nothing left to write later.
        this.fail("protocol", error instanceof Error ? error.message : String(error));
      }
    });
  }

  /** Fails the request in flight with `timeout` if it was sent more than `timeoutMs` before `nowMs`. */
  expire(nowMs: number, timeoutMs: number): void {
    if (this.pending !== undefined && nowMs - this.pending.startedMs > timeoutMs) this.timeOut(timeoutMs);
  }

  /** Fails the request in flight (if any) with `timeout` now: its caller's deadline of `timeoutMs` passed. */
  timeOut(timeoutMs: number): void {
    if (this.pending !== undefined) this.fail("timeout", `no answer within ${timeoutMs} ms`);
  }

  /** Fails the request in flight (if any) with `abandoned` and closes the socket. */
  abandon(): void {
    if (this.pending !== undefined) this.fail("abandoned", "the run stopped");
  }

  /** Closes the socket; a later request reconnects. */
  close(): void {
    if (this.pending !== undefined) this.fail("abandoned", "the connection was closed");
    else this.drop();
  }

  private connect(): void {
    this.connecting = true;
    const tag: SocketTag = { connection: this, epoch: this.epoch };
    Bun.connect<SocketTag>({ hostname: this.hostname, port: this.port, data: tag, socket: handlers }).catch((error: unknown) => {
      this.onClose(tag.epoch, `network:${errorCode(error)}`);
    });
  }

  /** @internal socket handler */
  onOpen(socket: Socket<SocketTag>): void {
    if (socket.data.epoch !== this.epoch) {
      socket.terminate();
      return;
    }
    this.connecting = false;
    this.socket = socket;
    this.flush();
  }

  /** @internal socket handler */
  onDrain(epoch: number): void {
    if (epoch === this.epoch) this.flush();
  }

  /** @internal socket handler */
  onData(epoch: number, chunk: Buffer): void {
    if (epoch !== this.epoch) return;
    if (this.pending === undefined) {
      this.fail("protocol", "bytes arrived with no request in flight");
      return;
    }
    // The chunk may be reused by the runtime after this call: keep a copy when it must wait.
    this.received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
    let parsed: Parsed;
    try {
      parsed = parseResponse(this.received);
    } catch (error) {
      this.fail("protocol", error instanceof Error ? error.message : String(error));
      return;
    }
    if (parsed === undefined) {
      if (this.received === chunk) this.received = Buffer.from(chunk);
      if (this.received.length > RESPONSE_BYTES_MAX) this.fail("protocol", `response over ${RESPONSE_BYTES_MAX} bytes`);
      return;
    }
    if (parsed.consumed !== this.received.length) {
      this.fail("protocol", "bytes after the end of the response");
      return;
    }
    const pending = this.pending;
    this.pending = undefined;
    this.received = EMPTY;
    // Answered before every byte of the request was written (an error answer, sent early): the
    // socket goes. Writing on would leave the server's reading and ours out of step (the next
    // request read as the rest of this one, or the reverse).
    if (parsed.close || this.unsent.length > 0) this.drop();
    pending.resolve(parsed.response);
  }

  /** @internal socket handler: the socket closed or failed. */
  onClose(epoch: number, kind: string): void {
    if (epoch !== this.epoch) return;
    if (this.pending !== undefined) this.fail(kind, `connection to ${this.hostname}:${this.port} lost (${kind})`);
    else this.drop();
  }

  private flush(): void {
    const socket = this.socket;
    if (socket === undefined || this.unsent.length === 0) return;
    const written = socket.write(this.unsent);
    this.unsent = written >= this.unsent.length ? EMPTY : this.unsent.subarray(Math.max(0, written));
    if (this.unsent.length === 0) this.pending?.onWritten?.();
  }

  private fail(kind: string, message: string): void {
    const pending = this.pending;
    this.pending = undefined;
    this.drop();
    pending?.reject(new HttpConnectionError(kind, message));
  }

  /** Forgets the socket (closing it) so the next request opens a new one. */
  private drop(): void {
    this.epoch += 1;
    const socket = this.socket;
    this.socket = undefined;
    this.connecting = false;
    this.unsent = EMPTY;
    this.received = EMPTY;
    socket?.terminate();
  }
}

/** The value of header `name` (lower case) in a lower-cased head, or undefined. */
function headerValue(lowerHead: string, name: string): string | undefined {
  const at = lowerHead.indexOf(`\r\n${name}:`);
  if (at < 0) return undefined;
  const from = at + name.length + 3;
  const lineEnd = lowerHead.indexOf("\r\n", from);
  return lowerHead.slice(from, lineEnd < 0 ? undefined : lineEnd).trim();
}

/** A copy of bytes [from, to) (the socket's buffer may be reused once its callback returns). */
function copyOf(bytes: Buffer, from: number, to: number): Uint8Array {
  return to <= from ? EMPTY_BODY : new Uint8Array(bytes.buffer, bytes.byteOffset + from, to - from).slice();
}

/**
 * Parses one HTTP/1.1 response at the start of `bytes`: undefined while incomplete. Supports
 * Content-Length and chunked bodies (trailers skipped); 1xx/204/304 have no body. Throws on bytes
 * that are not HTTP. Kept lean: it runs once per request of the load generator.
 */
export function parseResponse(bytes: Buffer): Parsed {
  const headerEnd = bytes.indexOf(HEADER_END);
  if (headerEnd < 0) {
    if (bytes.length > 64 * 1024) throw new Error("response header over 64 KiB");
    return undefined;
  }
  const head = bytes.toString("latin1", 0, headerEnd);
  const statusMatch = STATUS_LINE.exec(head);
  if (statusMatch === null) throw new Error(`not an HTTP/1.x status line: ${JSON.stringify(head.slice(0, 40))}`);
  const status = Number(statusMatch[1]);
  const lowerHead = head.toLowerCase();
  const close = headerValue(lowerHead, "connection") === "close";
  const bodyStart = headerEnd + HEADER_END.length;
  if ((status >= 100 && status < 200) || status === 204 || status === 304) {
    return { response: { status, head, body: EMPTY_BODY }, consumed: bodyStart, close };
  }
  if ((headerValue(lowerHead, "transfer-encoding") ?? "").includes("chunked")) {
    return parseChunked(bytes, bodyStart, status, head, close);
  }
  const lengthText = headerValue(lowerHead, "content-length");
  if (lengthText === undefined) throw new Error("response has neither Content-Length nor chunked encoding");
  const length = Number(lengthText);
  if (!Number.isSafeInteger(length) || length < 0) throw new Error(`bad Content-Length ${JSON.stringify(lengthText)}`);
  if (length > RESPONSE_BYTES_MAX) throw new Error(`Content-Length ${length} over ${RESPONSE_BYTES_MAX}`);
  if (bytes.length < bodyStart + length) return undefined;
  return { response: { status, head, body: copyOf(bytes, bodyStart, bodyStart + length) }, consumed: bodyStart + length, close };
}

function parseChunked(bytes: Buffer, bodyStart: number, status: number, head: string, close: boolean): Parsed {
  const pieces: Uint8Array[] = [];
  let position = bodyStart;
  for (;;) {
    const lineEnd = bytes.indexOf(CRLF, position);
    if (lineEnd < 0) return undefined;
    const sizeText = bytes.toString("latin1", position, lineEnd).split(";")[0]?.trim() ?? "";
    if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) throw new Error(`bad chunk size ${JSON.stringify(sizeText.slice(0, 20))}`);
    const size = parseInt(sizeText, 16);
    position = lineEnd + CRLF.length;
    if (size === 0) {
      // Trailers (possibly none), then an empty line.
      if (bytes.length < position + CRLF.length) return undefined;
      let end: number;
      if (bytes[position] === 13 && bytes[position + 1] === 10) end = position + CRLF.length;
      else {
        const trailersEnd = bytes.indexOf(HEADER_END, position);
        if (trailersEnd < 0) return undefined;
        end = trailersEnd + HEADER_END.length;
      }
      return { response: { status, head, body: Buffer.concat(pieces) }, consumed: end, close };
    }
    if (bytes.length < position + size + CRLF.length) return undefined;
    pieces.push(copyOf(bytes, position, position + size));
    position += size + CRLF.length;
  }
}

const encoder = new TextEncoder();

/**
 * The bytes of one request: `path` must be ASCII (percent-encode anything else). A body gets a
 * Content-Length; `contentType` is sent when given.
 */
export function buildRequest(method: string, path: string, host: string, body?: Uint8Array, contentType?: string, extraHead = ""): Uint8Array {
  let head = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${extraHead}`;
  if (contentType !== undefined) head += `Content-Type: ${contentType}\r\n`;
  if (body !== undefined) head += `Content-Length: ${body.length}\r\n`;
  head += "\r\n";
  const bytes = new Uint8Array(head.length + (body?.length ?? 0));
  const { written } = encoder.encodeInto(head, bytes);
  assert(written === head.length, "request line and headers must be ASCII");
  if (body !== undefined) bytes.set(body, head.length);
  return bytes;
}

/** The connections of one closed-loop client: one per origin, opened on first use. */
export class ClientConnections {
  private readonly byOrigin = new Map<string, HttpConnection>();

  constructor(private readonly onOpen: (connection: HttpConnection) => void) {}

  /** The connection to `origin` (`http://host:port`). */
  to(origin: string): HttpConnection {
    let connection = this.byOrigin.get(origin);
    if (connection === undefined) {
      const url = new URL(origin);
      const hostname = url.hostname.replace(/^\[|\]$/g, "");
      connection = new HttpConnection(hostname, Number(url.port || 80));
      this.byOrigin.set(origin, connection);
      this.onOpen(connection);
    }
    return connection;
  }

  closeAll(): void {
    for (const connection of this.byOrigin.values()) connection.close();
  }
}

/** A request on a connection of its own: `sent` tells when it was written, `response` brings its answer. */
export interface SentOnce {
  /** Resolves true once every byte of the request is in the kernel's hands, false if that failed first. */
  readonly sent: Promise<boolean>;
  /** The answer; rejects with an {@link HttpConnectionError} (`timeout`, `protocol`, `network:<code>`). */
  readonly response: Promise<HttpResponse>;
}

/**
 * Sends one request on a fresh connection, closed once answered, and tells when it has been written.
 * Unlike fetch, whose connect and write happen later on the event loop, the connection is opened at
 * once: kv chaos puts requests into a stopped process's socket (the kernel completes the handshake
 * and buffers the bytes) before it sends SIGCONT, so they are waiting the moment the process wakes.
 * `request` is built by {@link buildRequest}; no answer within `timeoutMs` fails with `timeout`.
 */
export function sendOnce(origin: string, request: Uint8Array, timeoutMs: number): SentOnce {
  const url = new URL(origin);
  const connection = new HttpConnection(url.hostname.replace(/^\[|\]$/g, ""), Number(url.port || 80));
  let resolveSent: (sent: boolean) => void = () => {};
  const sent = new Promise<boolean>((resolve) => {
    resolveSent = resolve;
  });
  const timer = setTimeout(() => connection.timeOut(timeoutMs), timeoutMs);
  const response = connection.request(request, () => resolveSent(true)).finally(() => {
    clearTimeout(timer);
    resolveSent(false); // a no-op once it resolved true
    connection.close();
  });
  return { sent, response };
}

/** `host:port` for the Host header of an origin such as `http://127.0.0.1:8001`. */
export function hostOf(origin: string): string {
  return new URL(origin).host;
}
