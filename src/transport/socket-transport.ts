/**
 * A connect-es `Transport` for peers on plain http: Connect unary calls in the binary format, each
 * over a kept-alive Bun.connect socket on this thread (`HttpConnection`), one call per socket at a
 * time. It runs a call's interceptors, deadline and cancellation itself (as connect-es's
 * `runUnaryCall` does, without its per-call AbortControllers: see `unary`) and carries the request
 * and its answer, as connect-web's transport does over `fetch`, without
 * the Request, Response and Headers objects a fetch needs on each side (Bun's own fetch was 10-20%
 * of a node's CPU under load: the request is built on this thread, handed to an HTTP thread, and
 * the answer handed back).
 *
 * Failures are Connect errors: a refused, reset or closed connection is `unavailable`, a call past
 * its deadline `deadline_exceeded`, a cancelled one `canceled`, and an error answer carries the
 * code the peer sent (or the one its HTTP status maps to).
 */
import { create, fromBinary, isMessage } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues } from "@connectrpc/connect";
import type { ContextValues, Interceptor, Transport, UnaryRequest, UnaryResponse } from "@connectrpc/connect";
import { createMethodUrl } from "@connectrpc/connect/protocol";
import { codeFromHttpStatus, contentTypeUnaryJson, contentTypeUnaryProto, errorFromJsonBytes, trailerDemux } from "@connectrpc/connect/protocol-connect";
import { HttpConnection, HttpConnectionError, responseHeader } from "../lib/http-connection.ts";
import { neverAborted } from "../lib/never-aborted.ts";
import type { HttpResponse } from "../lib/http-connection.ts";
import { uninitializedBytes } from "../lib/bytes.ts";
import { measureMessage, type MeasuredMessage } from "./proto-writer.ts";
import { wireBoundsProblem } from "./wire-bounds.ts";

export interface SocketTransportOptions {
  /** The peer's `http://` origin, possibly with a path prefix. */
  readonly baseUrl: string;
  /** Idle sockets kept for later calls; more calls at once open more, closed when they end. */
  readonly idleConnectionsMax: number;
  /** A call's deadline when the caller gives none (sent as Connect-Timeout-Ms, enforced here). */
  readonly defaultTimeoutMs?: number;
  readonly interceptors?: Interceptor[];
  /** Told the size of each request body sent (for metrics). */
  readonly onRequestBytes?: (bytes: number) => void;
}

/** A transport bound to one peer, and how to close its sockets. */
export interface SocketTransport extends Transport {
  /** Closes every socket: calls in flight fail with `canceled`, later calls at once with `unavailable`. */
  close(): void;
}

const encoder = new TextEncoder();

/**
 * One call on its way: the connection carrying it (set by `exchangeOn`), and the error it ended with
 * once its deadline passed or its caller cancelled it (the connection is then abandoned).
 */
interface CallState {
  connection: HttpConnection | undefined;
  ended: ConnectError | undefined;
}

export function createSocketTransport(options: SocketTransportOptions): SocketTransport {
  const origin = new URL(options.baseUrl);
  if (origin.protocol !== "http:") throw new Error(`createSocketTransport takes http URLs, not ${origin.protocol}`);
  const hostname = origin.hostname.replace(/^\[|\]$/g, "");
  const port = Number(origin.port || 80);
  const idle: HttpConnection[] = [];
  const open = new Set<HttpConnection>();
  const buffers = new RequestBuffers(options.idleConnectionsMax);
  let closed = false;

  function take(fresh: boolean): HttpConnection {
    const connection = (fresh ? undefined : idle.pop()) ?? new HttpConnection(hostname, port);
    open.add(connection);
    return connection;
  }

  function release(connection: HttpConnection): void {
    if (!closed && idle.length < options.idleConnectionsMax) idle.push(connection);
    else {
      open.delete(connection);
      connection.close();
    }
  }

  /** Sends `request` on an idle socket or a new one; a kept-alive socket the peer closed while idle fails at once, so that call goes again, once, on a new socket (Raft messages may arrive twice). */
  async function exchange(request: Uint8Array, call: CallState): Promise<HttpResponse> {
    if (closed) throw new ConnectError("the transport is closed", Code.Unavailable);
    const reused = idle.length > 0;
    try {
      return await exchangeOn(take(false), request, call);
    } catch (error: unknown) {
      if (!reused || call.ended !== undefined || closed || !(error instanceof HttpConnectionError) || !error.kind.startsWith("network:")) throw error;
      return exchangeOn(take(true), request, call);
    }
  }

  /** Only for a call not ended: `send` checks before the first attempt, `exchange` before the retry. */
  async function exchangeOn(connection: HttpConnection, request: Uint8Array, call: CallState): Promise<HttpResponse> {
    call.connection = connection;
    try {
      return await connection.request(request);
    } finally {
      // Back in the pool, the connection may carry another call: this call's deadline or
      // cancellation, if it comes later, must not abandon it.
      if (call.connection === connection) call.connection = undefined;
      release(connection);
    }
  }

  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const deadlineMs = timeoutMs === undefined ? options.defaultTimeoutMs : timeoutMs <= 0 ? undefined : timeoutMs;
      const url = createMethodUrl(options.baseUrl, method);
      const requestHeader = new Headers(header);
      requestHeader.set("content-type", contentTypeUnaryProto);
      requestHeader.set("connect-protocol-version", "1");
      if (deadlineMs !== undefined) requestHeader.set("connect-timeout-ms", String(deadlineMs));
      const call: CallState = { connection: undefined, ended: undefined };
      const send = async (req: UnaryRequest<I, O>): Promise<UnaryResponse<I, O>> => {
        if (call.ended !== undefined) throw call.ended; // past its deadline (or cancelled) before it was sent
        const body = measureMessage(method.input, isMessage(req.message, method.input) ? req.message : create(method.input, req.message as MessageInitShape<I>));
        options.onRequestBytes?.(body.bytes);
        let response: HttpResponse;
        try {
          const request = encodeRequest(new URL(req.url), origin.host, req.header, body, buffers);
          try {
            response = await exchange(request, call);
          } finally {
            // Settled: no connection writes a byte of it any more (HttpConnection.request).
            buffers.giveBack(request);
          }
        } catch (error: unknown) {
          // The deadline or a cancellation abandoned the connection: the call ends with its reason.
          if (call.ended !== undefined) throw call.ended;
          if (!(error instanceof HttpConnectionError)) throw error;
          throw new ConnectError(error.message, codeOf(error));
        }
        return answer(method, response);
      };
      // Interceptors wrap the call as connect-es's runUnaryCall has them do (the first outermost),
      // but the deadline and cancellation act on the socket itself: runUnaryCall's two linked
      // AbortControllers, their listeners, and the abort (with a new DOMException) that ended every
      // call were a few percent of a leader's loop under 100 B writes (BENCHMARKS.md).
      type Unary = (req: UnaryRequest<I, O>) => Promise<UnaryResponse<I, O>>;
      const next = (options.interceptors ?? []).reduceRight<Unary>((inner, interceptor) => interceptor(inner as never) as unknown as Unary, send);
      const end = (error: ConnectError) => {
        if (call.ended !== undefined) return;
        call.ended = error;
        call.connection?.abandon();
      };
      if (signal?.aborted) return Promise.reject(ConnectError.from(signal.reason ?? new Error("the call was cancelled"), Code.Canceled));
      const timer = deadlineMs === undefined ? undefined : setTimeout(() => end(new ConnectError("the operation timed out", Code.DeadlineExceeded)), deadlineMs);
      const onAbort = () => end(ConnectError.from(signal?.reason ?? new Error("the call was cancelled"), Code.Canceled));
      signal?.addEventListener("abort", onAbort);
      // An interceptor that throws at once rejects the call like one that fails later.
      return new Promise<UnaryResponse<I, O>>((resolve) => resolve(next({
        stream: false,
        service: method.parent,
        method,
        requestMethod: "POST",
        url,
        header: requestHeader,
        contextValues: contextValues ?? createContextValues(),
        message: isMessage(input, method.input) ? input : create(method.input, input),
        // Neither signal carries the call's deadline nor is aborted when the call ends: the deadline
        // and cancellation act on the socket, and a signal an interceptor sets is not looked at
        // (interceptors here only set headers: src/transport/peer-auth.ts).
        signal: signal ?? neverAborted,
      }))).then(
        (response: UnaryResponse<I, O>) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          return response;
        },
        (error: unknown) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          // As runUnaryCall: anything not a Connect error is `unknown`.
          throw call.ended ?? ConnectError.from(error);
        },
      );
    },
    stream() {
      return Promise.reject(new ConnectError("the socket transport carries unary calls only", Code.Unimplemented));
    },
    close() {
      closed = true;
      buffers.clear();
      for (const connection of open) connection.close();
      open.clear();
      idle.length = 0;
    },
  };
}

/** The Connect code for a call that got no complete answer. */
function codeOf(error: HttpConnectionError): Code {
  if (error.kind.startsWith("network:")) return Code.Unavailable;
  if (error.kind === "timeout") return Code.DeadlineExceeded;
  if (error.kind === "abandoned") return Code.Canceled;
  return Code.Internal; // protocol: the peer's answer was not HTTP we can read
}

/** A unary call's answer, as connect-web reads it: the message, or the Connect error the peer sent. */
function answer<I extends DescMessage, O extends DescMessage>(method: DescMethodUnary<I, O>, response: HttpResponse): UnaryResponse<I, O> {
  const headers = headersOf(response.head);
  const contentType = responseHeader(response, "content-type");
  if (response.status !== 200) {
    const fromStatus = new ConnectError(`HTTP ${response.status}`, codeFromHttpStatus(response.status), headers);
    if (contentType !== contentTypeUnaryJson) throw fromStatus;
    throw errorFromJsonBytes(response.body, headers, fromStatus);
  }
  if (contentType !== contentTypeUnaryProto) {
    throw new ConnectError(`unsupported content type ${contentType}`, contentType === undefined ? Code.Unknown : Code.Internal, headers);
  }
  // A peer's answer is bounded as its calls are (wire-bounds.ts): whoever answers at its address.
  const tooMuch = wireBoundsProblem(method.output, response.body);
  if (tooMuch !== undefined) throw new ConnectError(`parse binary: ${tooMuch}`, Code.Internal);
  let message: MessageShape<O>;
  try {
    message = fromBinary(method.output, response.body);
  } catch (error: unknown) {
    throw new ConnectError(`parse binary: ${error instanceof Error ? error.message : String(error)}`, Code.Internal);
  }
  const [header, trailer] = trailerDemux(headers);
  return { stream: false, service: method.parent, method, header, message, trailer };
}

/**
 * The buffers calls' requests are written into, kept for the next calls once a call settled: a
 * leader writes every entry it sends into one (one per follower), and a fresh buffer each time was,
 * at 16 KB values, two of the five value-sized allocations per write its heap collected. Up to
 * `spareMax` are kept, each of at most `spareBytesMax` (so at most 5 MiB per peer with the
 * transport's defaults, for as long as the node runs); sizes are rounded up to powers of two so that
 * one fits the requests after it, and a request takes the smallest that fits.
 */
export class RequestBuffers {
  private spare: Uint8Array[] = [];

  constructor(
    private readonly spareMax: number,
    private readonly spareBytesMax = 1 << 20,
  ) {}

  /** A view of `length` bytes, over a kept buffer when one is large enough; contents undefined. */
  take(length: number): Uint8Array {
    let best = -1;
    for (let i = 0; i < this.spare.length; i++) {
      const size = (this.spare[i] as Uint8Array).byteLength;
      if (size >= length && (best < 0 || size < (this.spare[best] as Uint8Array).byteLength)) best = i;
    }
    if (best >= 0) {
      const buffer = this.spare[best] as Uint8Array;
      this.spare.splice(best, 1);
      return buffer.subarray(0, length);
    }
    const capacity = length <= this.spareBytesMax ? Math.max(16 * 1024, 2 ** Math.ceil(Math.log2(Math.max(length, 1)))) : length;
    return uninitializedBytes(capacity).subarray(0, length);
  }

  /** `bytes` (from `take`) is no longer used: its buffer may serve a later request. */
  giveBack(bytes: Uint8Array): void {
    const whole = new Uint8Array(bytes.buffer, 0, bytes.buffer.byteLength);
    if (whole.byteLength > this.spareBytesMax || this.spare.length >= this.spareMax) return;
    this.spare.push(whole);
  }

  /** Forgets every buffer kept (the transport closed). */
  clear(): void {
    this.spare = [];
  }

  /** How many buffers are kept (for tests). */
  spareCount(): number {
    return this.spare.length;
  }
}

/** One HTTP/1.1 request: head (every header given, a Content-Length) and body, written once into one buffer. */
function encodeRequest(url: URL, host: string, headers: Headers, body: MeasuredMessage, buffers: RequestBuffers): Uint8Array {
  let head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${host}\r\n`;
  // Headers refuses values with CR or LF, so none can split the head.
  for (const [name, value] of headers) if (name !== "host" && name !== "content-length") head += `${name}: ${value}\r\n`;
  head += `Content-Length: ${body.bytes}\r\n\r\n`;
  const headBytes = encoder.encode(head);
  const bytes = buffers.take(headBytes.byteLength + body.bytes);
  bytes.set(headBytes, 0);
  body.write(bytes, headBytes.byteLength);
  return bytes;
}

/** The headers of a raw response head (its status line skipped). */
function headersOf(head: string): Headers {
  const headers = new Headers();
  const lines = head.split("\r\n");
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return headers;
}
