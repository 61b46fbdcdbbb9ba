/**
 * The peer port: `Bun.serve` in front of a Connect router, apart from the client HTTP API so that
 * peer traffic and client traffic never share a listener or a limit.
 */
import { create, fromBinary, isMessage } from "@bufbuild/protobuf";
import type { DescMessage, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createConnectRouter, createContextValues, createMethodImplSpec, createServiceImplSpec } from "@connectrpc/connect";
import type { ConnectRouter, HandlerContext, MethodImplSpec } from "@connectrpc/connect";
import { codeToHttpStatus, contentTypeUnaryJson, contentTypeUnaryProto, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { createAsyncIterable, createMethodUrl, readAllBytes } from "@connectrpc/connect/protocol";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import { neverAborted } from "../lib/never-aborted.ts";
import { assert } from "../lib/assert.ts";
import { encodeMessage } from "./proto-writer.ts";
import { wireBoundsProblem } from "./wire-bounds.ts";

/** Largest body, once decompressed, of a call that is not plain binary (see `createPeerServer`). */
const universalReadBytesMax = 256 << 10;

/** Where and how the peer server listens. */
export interface PeerServerOptions {
  readonly hostname: string;
  /** 0 lets the OS pick a free port; `PeerServer.port` tells which. */
  readonly port: number;
  /** Registers the services to serve, e.g. `createRaftServiceRoutes(...)`. */
  readonly routes: (router: ConnectRouter) => void;
  /** Largest request body accepted; larger ones are refused before they are parsed. */
  readonly requestBytesMax: number;
  /** Serve TLS; with `ca`, also require a client certificate signed by it (mutual TLS). */
  readonly tls?: PeerServerTls;
  /**
   * Checks a request's headers before its body is read; a ConnectError refuses the call with that
   * error and nothing else happens. `remoteAddress` is the caller's IP, for logs.
   */
  readonly authorize?: (headers: Headers, remoteAddress: string | undefined) => ConnectError | undefined;
  /** Told about every request answered: its declared body size and the HTTP status. For metrics. */
  readonly onRequest?: (requestBytes: number, status: number) => void;
}

/** The peer server's certificate and, for mutual TLS, the CA that must have signed callers' certificates. */
export interface PeerServerTls {
  /** PEM certificate chain. */
  readonly cert: string;
  /** PEM private key. */
  readonly key: string;
  /** PEM CA certificate(s): when set, a caller without a certificate signed by one of them cannot connect. */
  readonly ca?: string;
}

/** A running peer server. */
export interface PeerServer {
  /** The port actually bound. */
  readonly port: number;
  /** Stops listening and closes open connections. */
  stop(): Promise<void>;
}

/** Starts serving the given routes over the Connect protocol (binary or JSON) on HTTP/1.1. */
export function createPeerServer(options: PeerServerOptions): PeerServer {
  assert(options.requestBytesMax > 0, "requestBytesMax must be positive");
  // gRPC needs HTTP trailers, which Bun.serve cannot send; gRPC-web has no client here.
  // No `maxTimeoutMs`: the handler answers at once whatever the caller's deadline, and a cap
  // would make servers configured with different timeouts refuse each other's calls.
  // Calls in JSON, compressed, or otherwise not plain binary (see `isPlainBinaryUnaryCall`) go
  // through connect-es, whose decoding no wire bounds precede: peers never send them (a person
  // may, by hand), so their bodies are bounded tightly, decompressed (a JSON body of 32 MiB is as
  // many objects as bytes / 3; see wire-bounds.ts).
  const router = createConnectRouter({ grpc: false, grpcWeb: false, connect: true, readMaxBytes: Math.min(options.requestBytesMax, universalReadBytesMax) });
  const direct = new Map<string, UnarySpec>();
  options.routes(recordUnaryMethods(router, direct));
  const handlers = new Map<string, UniversalHandler>(router.handlers.map((handler) => [handler.requestPath, handler]));

  const tls = options.tls;
  const server = Bun.serve({
    hostname: options.hostname,
    port: options.port,
    maxRequestBodySize: options.requestBytesMax,
    ...(tls === undefined
      ? {}
      : {
          tls: {
            cert: tls.cert,
            key: tls.key,
            ...(tls.ca === undefined ? {} : { ca: tls.ca, requestCert: true, rejectUnauthorized: true }),
          },
        }),
    async fetch(request, bunServer) {
      const response = await serve(request, bunServer.requestIP(request)?.address);
      options.onRequest?.(declaredBytes(request), response.status);
      return response;
    },
    error() {
      // Bun's default error page would echo the stack; a peer only needs the status.
      return new Response("internal error", { status: 500 });
    },
  });
  async function serve(request: Request, remoteAddress: string | undefined): Promise<Response> {
    const path = new URL(request.url).pathname;
    const handler = handlers.get(path);
    if (handler === undefined) return new Response("not found", { status: 404 });
    const refusal = options.authorize?.(request.headers, remoteAddress);
    if (refusal !== undefined) return connectErrorResponse(refusal);
    const unary = direct.get(path);
    if (unary !== undefined && isPlainBinaryUnaryCall(request)) return serveUnary(unary, request);
    // Unary calls only: the body is read whole (Bun.serve already bounds it) and the answer is
    // sent as one buffer. The universal fetch adapters would pipe both through ReadableStreams,
    // which cost a fifth of a node's CPU under load.
    const body = new Uint8Array(await request.arrayBuffer());
    const response = await handler({
      httpVersion: "1.1",
      method: request.method,
      url: request.url,
      header: request.headers,
      body: createAsyncIterable([body]),
      signal: neverAborted,
    });
    const answer = response.body === undefined ? undefined : await readAllBytes(response.body, Number.MAX_SAFE_INTEGER);
    return toFetchResponse(answerParseFailureAsInvalidArgument(response.status, response.header, answer));
  }

  const port = server.port;
  assert(port !== undefined && port > 0, "peer server bound no port");
  return {
    port,
    stop: () => server.stop(true),
  };
}

/** A unary method's implementation, as registered with the router. */
type UnarySpec = Extract<MethodImplSpec, { kind: "unary" }>;

/**
 * Passes every registration on to `router`, and notes each unary method's implementation in
 * `direct` by its path, for {@link serveUnary}.
 */
function recordUnaryMethods(router: ConnectRouter, direct: Map<string, UnarySpec>): ConnectRouter {
  const recorder: ConnectRouter = {
    get handlers() {
      return router.handlers;
    },
    service(service, implementation, handlerOptions) {
      for (const method of Object.values(createServiceImplSpec(service as DescService, implementation).methods)) remember(method);
      router.service(service, implementation, handlerOptions);
      return recorder;
    },
    rpc(method, impl, handlerOptions) {
      remember(createMethodImplSpec(method, impl as never));
      router.rpc(method, impl, handlerOptions);
      return recorder;
    },
  };
  // The path the router's own handler answers at (its `requestPath`).
  const remember = (spec: MethodImplSpec) => {
    if (spec.kind === "unary") direct.set(createMethodUrl("/", spec.method), spec);
  };
  return recorder;
}

/**
 * Whether `request` is the one kind of call peers send: a Connect unary POST with a binary body,
 * uncompressed. Anything else (JSON, compression, GET, a malformed timeout) goes through
 * connect-es's universal handler, which knows every rule of the protocol.
 */
function isPlainBinaryUnaryCall(request: Request): boolean {
  if (request.method !== "POST" || request.headers.get("content-type") !== contentTypeUnaryProto) return false;
  const encoding = request.headers.get("content-encoding");
  if (encoding !== null && encoding !== "identity") return false;
  const timeout = request.headers.get("connect-timeout-ms");
  return timeout === null || /^[0-9]{1,10}$/.test(timeout);
}

/**
 * Serves a plain binary unary call (see {@link isPlainBinaryUnaryCall}) straight to the method's
 * implementation: decode, call, encode, with the answers connect-es gives (a body that does not
 * parse is `invalid_argument`, as {@link answerParseFailureAsInvalidArgument} makes it). The
 * universal handler's chain of async iterables and promises cost 0.1-0.2 ms of a follower's time
 * per call at one client, 0.4-0.6 ms when idle, on the path of every write. A deadline is not
 * enforced: the peer service answers at once, as noted in `createPeerServer`.
 */
async function serveUnary(spec: UnarySpec, request: Request): Promise<Response> {
  const body = new Uint8Array(await request.arrayBuffer());
  // Before decoding: what the body would build (see wire-bounds.ts).
  const tooMuch = wireBoundsProblem(spec.method.input, body);
  if (tooMuch !== undefined) return connectErrorResponse(new ConnectError(`parse binary: ${tooMuch}`, Code.InvalidArgument), false);
  let input;
  try {
    input = fromBinary(spec.method.input, body);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return connectErrorResponse(new ConnectError(`parse binary: ${reason}`, Code.InvalidArgument), false);
  }
  // A context of its own rather than connect-es's createHandlerContext, which makes two linked
  // AbortControllers per call, copies the request's headers, and is ended by an abort that builds
  // a DOMException: on every call a follower answers (as socket-transport.ts found on the calling
  // side). Nothing here can be aborted (see `neverAborted`).
  const context: HandlerContext = {
    service: spec.method.parent,
    method: spec.method,
    protocolName: "connect",
    requestMethod: request.method,
    url: request.url,
    signal: neverAborted,
    timeoutMs: noTimeout,
    requestHeader: request.headers,
    responseHeader: new Headers({ "content-type": contentTypeUnaryProto }),
    responseTrailer: new Headers(),
    values: createContextValues(),
  };
  let output: Uint8Array<ArrayBuffer>;
  try {
    output = encode(spec.method.output, await spec.impl(input, context));
  } catch (error) {
    const connectError = error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error);
    return connectErrorResponse(connectError, false);
  }
  return new Response(output, { status: 200, headers: context.responseHeader });
}

/** A method's answer, a message or an init shape of one (as implementations may return), as bytes. */
function encode<Desc extends DescMessage>(schema: Desc, output: Parameters<typeof create<Desc>>[1]): Uint8Array<ArrayBuffer> {
  const message = isMessage(output, schema) ? output : create(schema, output);
  return encodeMessage(schema, message) as Uint8Array<ArrayBuffer>;
}

/**
 * A unary Connect error answer (status from the code, JSON body). With `close` (a refusal built
 * without reading the request), the connection closes after it, so the refused body is not read
 * and discarded either.
 */
function connectErrorResponse(error: ConnectError, close = true): Response {
  return new Response(errorToJsonBytes(error, {}), {
    status: codeToHttpStatus(error.code),
    headers: { "content-type": contentTypeUnaryJson, ...(close ? { connection: "close" } : {}) },
  });
}

/** The request's declared Content-Length, or 0 when absent or not a number. */
function declaredBytes(request: Request): number {
  const bytes = Number(request.headers.get("content-length") ?? 0);
  return Number.isSafeInteger(bytes) && bytes >= 0 ? bytes : 0;
}

/** A handler's `timeoutMs()`: no deadline is enforced here (see `createPeerServer`). */
const noTimeout = (): undefined => undefined;

/** A universal response, its body already read whole. */
interface BufferedResponse {
  readonly status: number;
  readonly header: Headers | undefined;
  readonly body: Uint8Array | undefined;
}

function toFetchResponse(response: BufferedResponse): Response {
  return new Response(response.body ?? null, { status: response.status, ...(response.header === undefined ? {} : { headers: response.header }) });
}

/**
 * connect-es 2.2 answers a request body that is not valid protobuf with `internal` (HTTP 500): its
 * serialization wraps the parse failure as Code.Internal ("parse binary: ..."). For a peer server
 * that is bad input from outside, not our fault: answer `invalid_argument` (HTTP 400), as for any
 * other malformed call. Every other response passes through untouched.
 */
function answerParseFailureAsInvalidArgument(status: number, header: Headers | undefined, body: Uint8Array | undefined): BufferedResponse {
  if (status !== 500 || body === undefined || header?.has("content-encoding") === true) return { status, header, body };
  const message = parseFailureMessage(body);
  if (message === undefined) return { status, header, body };
  const json = new TextEncoder().encode(JSON.stringify({ code: "invalid_argument", message }));
  const headers = new Headers(header);
  headers.set("content-length", String(json.byteLength));
  return { status: 400, header: headers, body: json };
}

/** The message of a Connect error body that reports a request that failed to parse, else undefined. */
function parseFailureMessage(body: Uint8Array): string | undefined {
  let error: { code?: unknown; message?: unknown };
  try {
    error = JSON.parse(new TextDecoder().decode(body)) as { code?: unknown; message?: unknown };
  } catch {
    return undefined;
  }
  if (typeof error !== "object" || error === null || error.code !== "internal") return undefined;
  if (typeof error.message !== "string" || !error.message.startsWith("parse binary:")) return undefined;
  return error.message;
}
