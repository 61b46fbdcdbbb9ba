/**
 * The peer port: `Bun.serve` in front of a Connect router, apart from the client HTTP API so that
 * peer traffic and client traffic never share a listener or a limit.
 */
import { createConnectRouter } from "@connectrpc/connect";
import type { ConnectError, ConnectRouter } from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { createAsyncIterable, readAllBytes } from "@connectrpc/connect/protocol";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import { assert } from "../lib/assert.ts";

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
  const router = createConnectRouter({ grpc: false, grpcWeb: false, connect: true, readMaxBytes: options.requestBytesMax });
  options.routes(router);
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
    const handler = handlers.get(new URL(request.url).pathname);
    if (handler === undefined) return new Response("not found", { status: 404 });
    const refusal = options.authorize?.(request.headers, remoteAddress);
    if (refusal !== undefined) return connectErrorResponse(refusal);
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

/**
 * A unary Connect error answer (status from the code, JSON body), built without reading the
 * request. The connection closes after it, so the refused body is not read and discarded either.
 */
function connectErrorResponse(error: ConnectError): Response {
  return new Response(errorToJsonBytes(error, {}), {
    status: codeToHttpStatus(error.code),
    headers: { "content-type": "application/json", connection: "close" },
  });
}

/** The request's declared Content-Length, or 0 when absent or not a number. */
function declaredBytes(request: Request): number {
  const bytes = Number(request.headers.get("content-length") ?? 0);
  return Number.isSafeInteger(bytes) && bytes >= 0 ? bytes : 0;
}

/**
 * Handlers get this signal: a unary call's body is read before the handler runs and its answer is
 * built in memory, so there is nothing left to abort when a caller goes away.
 */
const neverAborted = new AbortController().signal;

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
