/**
 * The `fetch` the peer client (connect-web) calls with, for peers on plain http: each call goes
 * over a kept-alive Bun.connect socket on this thread (`HttpConnection`), one call per socket at a
 * time, instead of through Bun's fetch, whose own call was 10-20% of a node's CPU under load (the
 * request is built on this thread and handed to an HTTP thread, and the answer handed back).
 * Connect still speaks its protocol over it: this only carries one unary POST and its answer.
 *
 * Failures look like fetch's: a network error rejects with a TypeError, an aborted call with the
 * signal's reason (connect-web turns either into a ConnectError).
 */
import { HttpConnection, HttpConnectionError } from "../lib/http-connection.ts";

/** A fetch bound to one peer's origin, and how to close its sockets. */
export interface PeerFetch {
  readonly fetch: typeof fetch;
  /** Closes every socket; calls in flight fail. */
  close(): void;
}

const encoder = new TextEncoder();

/**
 * A fetch for calls to `baseUrl` (an `http://` origin, possibly with a path). Keeps at most
 * `idleConnectionsMax` idle sockets; more calls at once open more, closed when they end.
 */
export function createPeerFetch(baseUrl: string, idleConnectionsMax: number): PeerFetch {
  const origin = new URL(baseUrl);
  if (origin.protocol !== "http:") throw new Error(`createPeerFetch takes http URLs, not ${origin.protocol}`);
  const hostname = origin.hostname.replace(/^\[|\]$/g, "");
  const port = Number(origin.port || 80);
  const idle: HttpConnection[] = [];
  const open = new Set<HttpConnection>();
  let closed = false;

  function take(fresh: boolean): HttpConnection {
    const connection = (fresh ? undefined : idle.pop()) ?? new HttpConnection(hostname, port);
    open.add(connection);
    return connection;
  }

  function release(connection: HttpConnection): void {
    if (!closed && idle.length < idleConnectionsMax) idle.push(connection);
    else {
      open.delete(connection);
      connection.close();
    }
  }

  async function peerFetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const signal = init?.signal ?? undefined;
    const body = init?.body;
    if (closed) throw new TypeError("fetch failed: the transport is closed");
    if (input instanceof Request || !(body instanceof Uint8Array)) throw new TypeError("peer fetch takes a URL and a Uint8Array body");
    signal?.throwIfAborted();
    const url = typeof input === "string" ? new URL(input) : input;
    const request = encodeRequest(init?.method ?? "POST", `${url.pathname}${url.search}`, origin.host, init?.headers instanceof Headers ? init.headers : new Headers(init?.headers), body);
    // A kept-alive socket the peer closed while idle fails at once: that call goes again, once, on
    // a new socket (Raft messages may arrive twice; a peer that is really gone fails that one too).
    const reused = idle.length > 0;
    try {
      return await call(request, signal, false);
    } catch (error: unknown) {
      if (!reused || signal?.aborted || !(error instanceof TypeError) || closed) throw error;
      return call(request, signal, true);
    }
  }

  async function call(request: Uint8Array, signal: AbortSignal | undefined, fresh: boolean): Promise<Response> {
    const connection = take(fresh);
    const onAbort = () => connection.abandon();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const response = await connection.request(request);
      return new Response(response.body, { status: response.status, headers: headersOf(response.head) });
    } catch (error: unknown) {
      if (signal?.aborted) throw signal.reason;
      if (error instanceof HttpConnectionError) throw new TypeError(`fetch failed: ${error.message}`);
      throw error;
    } finally {
      signal?.removeEventListener("abort", onAbort);
      release(connection);
    }
  }

  return {
    fetch: Object.assign(peerFetch, { preconnect: fetch.preconnect }),
    close() {
      closed = true;
      for (const connection of open) connection.close();
      open.clear();
      idle.length = 0;
    },
  };
}

/** One HTTP/1.1 request: head (every header given, a Content-Length) and body. */
function encodeRequest(method: string, path: string, host: string, headers: Headers, body: Uint8Array): Uint8Array {
  let head = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n`;
  // Headers refuses values with CR or LF, so none can split the head.
  for (const [name, value] of headers) if (name !== "host" && name !== "content-length") head += `${name}: ${value}\r\n`;
  head += `Content-Length: ${body.byteLength}\r\n\r\n`;
  const headBytes = encoder.encode(head);
  const bytes = new Uint8Array(headBytes.byteLength + body.byteLength);
  bytes.set(headBytes, 0);
  bytes.set(body, headBytes.byteLength);
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
