/**
 * The client port: bounds how many connections a node holds and how long a connection may take to
 * send a request, which `Bun.serve` (1.4.5) does not let a program set. Measured on Bun 1.4.5:
 * a connection that sends nothing, or trickles its headers, is closed ~12 s after it opened whatever
 * `idleTimeout` says; a trickled body and a handler still working are cut at `idleTimeout` with no
 * answer; and nothing limits the number of connections, nor tells the program when one opens or
 * closes.
 *
 * So, with a connection cap, a `Bun.listen` TCP layer owns the public port: it accepts, closes a
 * connection at once past `connectionsMax`, and forwards bytes both ways to the HTTP server, which
 * listens on an OS-chosen loopback port (TLS passes through untouched). A request reaching the
 * handler is matched to its connection by the forwarding socket's port (`server.requestIP`). Each
 * connection has a deadline while no request of it is in the handler: `requestReadTimeoutMs` from
 * its opening or from its last answer, covering a silent connection, trickled headers, and an idle
 * keep-alive. The body's own deadline is the routes' (`bodyReadTimeoutMs`, 408 `request_timeout`).
 * The forwarding costs about 20 µs of CPU per request (measured here with a handler that answers
 * "ok": 15-16 µs per request for `Bun.serve` alone, 36-37 µs through this layer, of which ~4 µs is
 * the tracking). On a 2-core machine, where the leader's one thread also runs Raft, `kv bench` with
 * 64 clients against 3 nodes measured 15-50% fewer writes and stale reads per second (noisy: other
 * processes were busy). `connectionsMax` 0 serves directly: no cap, no layer.
 */
import type { Server, Socket, TCPSocketListener } from "bun";
import { assert } from "../lib/assert.ts";
import type { MetricsRegistry } from "../lib/metrics.ts";
import { createRateLimitedLog } from "../lib/rate-limited-log.ts";
import { BACKUP_CONTENT_TYPE } from "../kv/backup-format.ts";
import { untilStreamEnds } from "./stream-end.ts";

/**
 * Default `--max-client-connections`: 0, no cap and no layer. The layer's cost (above) would give
 * up a good part of the 100-byte write and read throughput kv is chosen for; an operator who needs
 * the cap (a node facing untrusted clients) turns it on and pays for it.
 */
export const CLIENT_CONNECTIONS_MAX_DEFAULT = 0;
/** Default `--request-read-timeout`. */
export const REQUEST_READ_TIMEOUT_MS_DEFAULT = 10_000;
/** How long `stop(true)` lets answers already given reach their clients before it cuts connections. */
const STOP_GRACE_MS = 500;
/** Bytes waiting to be written to one side of a connection; past it, reading the other side pauses. */
const FORWARD_BACKLOG_BYTES_MAX = 1 << 20;

/**
 * Content types of answers whose body is produced while it is sent, for as long as the route keeps
 * it open: a watch's events (`GET /watch`, src/http/app.ts) and a backup's batches (`GET /snapshot`,
 * src/http/snapshot-route.ts). Such an answer counts as a request still in the handler until its
 * body ends, so `--request-read-timeout` does not cut it; each route bounds its own idle client
 * (a watch's bounded buffer, then `slow_watcher`; a snapshot's `SNAPSHOT_IDLE_MS_MAX`).
 */
const STREAMED_CONTENT_TYPES: readonly string[] = ["text/event-stream", BACKUP_CONTENT_TYPE];

/** Whether `response` is one of the `STREAMED_CONTENT_TYPES`, with a body. */
function isStreamed(response: Response): boolean {
  if (response.body === null) return false;
  const contentType = response.headers.get("content-type");
  return contentType !== null && STREAMED_CONTENT_TYPES.some((streamed) => contentType.startsWith(streamed));
}

/** How to serve the client API. */
export interface ClientListenerOptions {
  readonly hostname: string;
  /** 0: the OS picks. */
  readonly port: number;
  readonly tls?: { readonly cert: string; readonly key: string };
  /** Answers one request; never rejects. */
  readonly handle: (request: Request) => Promise<Response>;
  /** Called when `handle` threw after all (a bug); answers a 500. */
  readonly onInternalError: (error: Error) => Response;
  /** Open client connections at most; past it new ones are closed at once. 0: no cap (and no forwarding layer). */
  readonly connectionsMax: number;
  /** Told of connections closed at the cap (rate-limited here: one line a minute at most, with how many since). */
  readonly logRefusedConnection?: (line: string) => void;
  /** How long a connection may go without a request in the handler (silent, trickling headers, idle keep-alive) (an answer waiting in the layer for a slow client has `idleTimeoutS` between the client's reads). */
  readonly requestReadTimeoutMs: number;
  /** Seconds `Bun.serve` lets a connection sit silent (1-255); it also cuts a handler still working, so keep it long. */
  readonly idleTimeoutS: number;
  /** Where `kv_http_connections*` go. */
  readonly metrics?: MetricsRegistry;
}

/** The running client port. */
export interface ClientListener {
  /** The public port (the one clients connect to). */
  readonly port: number;
  /** Client connections open now (0 without a cap: they are not counted then). */
  connections(): number;
  /** The address `request` came from (the client's, through the forwarding layer too), when known. */
  addressOf(request: Request): string | undefined;
  /** Stops accepting; with `closeActive`, closes every connection now (as `Server.stop`). */
  stop(closeActive: boolean): Promise<void>;
}

/** One side of a forwarded connection. */
interface End {
  socket: Socket<End> | undefined;
  /** Bytes waiting to be written to this side. */
  backlog: Uint8Array[];
  backlogBytes: number;
  peer: End | undefined;
  closed: boolean;
  /** The other side sent its FIN: pass it on (`shutdown()`) once the backlog is written. */
  finPending: boolean;
  /** Set on both ends of one connection. */
  connection: ClientConnection;
}

/** What the layer knows about one client connection. */
interface ClientConnection {
  /** Requests of this connection in the handler now (more than one only when pipelined). */
  requestsInHandler: number;
  /** When (performance.now() ms) the connection is closed unless a request of it reaches the handler first. */
  deadlineMs: number;
  /** The local port of the socket to the HTTP server: how `requestIP` names this connection. */
  upstreamPort: number | undefined;
  /** The client's address, as it connected. */
  readonly remoteAddress: string;
  client: End;
}

/** Starts serving the client API; resolves once the port is bound. */
export function createClientListener(options: ClientListenerOptions): ClientListener {
  assert(Number.isSafeInteger(options.connectionsMax) && options.connectionsMax >= 0, "connectionsMax must be a whole number");
  assert(options.requestReadTimeoutMs > 0, "requestReadTimeoutMs must be positive");
  const serveCommon = {
    ...(options.tls === undefined ? {} : { tls: { cert: options.tls.cert, key: options.tls.key } }),
    error: options.onInternalError,
    // Bodies are bounded by the routes (413, then a lingering close), so Bun's own cap, which
    // answers an empty 413 and resets the connection, is set out of the way.
    maxRequestBodySize: 2 ** 40,
    idleTimeout: options.idleTimeoutS,
  };
  if (options.connectionsMax === 0) {
    const server = Bun.serve({ ...serveCommon, hostname: options.hostname, port: options.port, fetch: (request) => options.handle(request) });
    return {
      port: server.port ?? options.port,
      connections: () => 0,
      addressOf: (request) => server.requestIP(request)?.address,
      stop: (closeActive) => server.stop(closeActive),
    };
  }

  const byUpstreamPort = new Map<number, ClientConnection>();
  const open = new Set<ClientConnection>();
  let refusedTotal = 0;
  const logRefused = options.logRefusedConnection === undefined ? undefined : createRateLimitedLog<"cap">(options.logRefusedConnection, 60_000, "connections");
  let timedOutTotal = 0;
  const metrics = options.metrics;
  metrics?.collected("kv_http_connections", "Client API connections open now.", "gauge", [], () => [[{}, open.size]]);
  metrics?.collected(
    "kv_http_connections_refused_total",
    "Client API connections closed at once because --max-client-connections were already open.",
    "counter",
    [],
    () => [[{}, refusedTotal]],
  );
  metrics?.collected(
    "kv_http_connections_timed_out_total",
    "Client API connections closed because no request arrived within --request-read-timeout (silent, trickling headers, or idle).",
    "counter",
    [],
    () => [[{}, timedOutTotal]],
  );

  const server: Server<undefined> = Bun.serve({
    ...serveCommon,
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request, self) {
      const upstreamPort = self.requestIP(request)?.port;
      const connection = upstreamPort === undefined ? undefined : byUpstreamPort.get(upstreamPort);
      if (connection === undefined) return options.handle(request); // not through the layer: nothing to track
      connection.requestsInHandler++;
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        connection.requestsInHandler--;
        if (connection.requestsInHandler === 0) connection.deadlineMs = performance.now() + options.requestReadTimeoutMs;
      };
      let response: Response;
      try {
        response = await options.handle(request);
      } catch (error) {
        release();
        throw error;
      }
      // A streamed answer is still being produced after its headers: its connection has no read
      // deadline until the stream ends, or `--request-read-timeout` would cut every watch and backup.
      if (!isStreamed(response)) {
        release();
        return response;
      }
      return new Response(untilStreamEnds(response.body as ReadableStream<Uint8Array>, release), response);
    },
  });
  const innerPort = server.port;
  assert(innerPort !== undefined, "the HTTP server listens on a port");

  // One sweep for every connection rather than a timer per request: a request then costs an
  // assignment, not a setTimeout and a clearTimeout. A deadline is kept within a sweep's interval.
  const answerStallMs = Math.max(options.requestReadTimeoutMs, options.idleTimeoutS * 1000);
  const sweepIntervalMs = Math.max(10, Math.min(250, Math.floor(options.requestReadTimeoutMs / 10)));
  const sweeper = setInterval(() => {
    const nowMs = performance.now();
    for (const connection of open) {
      if (connection.requestsInHandler === 0 && nowMs >= connection.deadlineMs) {
        timedOutTotal++;
        closeEnd(connection.client, true);
      }
    }
  }, sweepIntervalMs);
  sweeper.unref();

  /**
   * An answer (its bytes already out of the handler) reaching a client slower than it, a large value
   * read slowly, is no idle connection: while bytes of it wait in this layer, the deadline runs from
   * the last time the client took some, and allows `answerStallMs`, Bun's own idle cut
   * (`idleTimeoutS`; the kernel signals room only once a good part of a socket's buffer is free, so
   * "took some" is seen coarsely). A client that takes nothing for that long is cut, as Bun cuts a
   * stalled reader without the layer; streamed answers are in the handler until they end.
   */
  function answerProgressed(connection: ClientConnection, allowMs: number): void {
    if (connection.requestsInHandler === 0) connection.deadlineMs = performance.now() + allowMs;
  }

  function forward(to: End, chunk: Uint8Array): void {
    if (to.closed) return;
    if (to.socket === undefined || to.backlog.length > 0) {
      queue(to, chunk.slice());
      return;
    }
    const written = to.socket.write(chunk);
    if (written < chunk.byteLength) queue(to, chunk.slice(Math.max(0, written)));
  }

  function queue(to: End, bytes: Uint8Array): void {
    // An answer waits for a client slower than it: the connection is not idle but still answering.
    if (to.backlog.length === 0 && to === to.connection.client) answerProgressed(to.connection, answerStallMs);
    to.backlog.push(bytes);
    to.backlogBytes += bytes.byteLength;
    // Backpressure: stop reading the sender until this side drains.
    if (to.backlogBytes > FORWARD_BACKLOG_BYTES_MAX) to.peer?.socket?.pause();
  }

  function flush(end: End): void {
    const socket = end.socket;
    if (socket === undefined) return;
    // The client took some of its answer (a drain): it has `answerStallMs` again to take more.
    const answerWaiting = end.backlog.length > 0 && end === end.connection.client;
    if (answerWaiting) answerProgressed(end.connection, answerStallMs);
    while (end.backlog.length > 0) {
      const bytes = end.backlog[0] as Uint8Array;
      const written = socket.write(bytes);
      if (written < bytes.byteLength) {
        end.backlog[0] = bytes.subarray(Math.max(0, written));
        end.backlogBytes -= Math.max(0, written);
        return;
      }
      end.backlog.shift();
      end.backlogBytes -= bytes.byteLength;
    }
    // The answer is all written: the connection idles from its last answer, as after any other.
    if (answerWaiting) answerProgressed(end.connection, options.requestReadTimeoutMs);
    end.peer?.socket?.resume();
    if (end.finPending) {
      end.finPending = false;
      socket.shutdown();
    }
    // The other side is gone and everything it said is delivered: finish this side too.
    if (end.peer?.closed === true) closeEnd(end, false);
  }

  /** Closes `end` (after its unsent backlog, unless `now`) and then its peer. */
  function closeEnd(end: End, now: boolean): void {
    if (end.closed) return;
    if (!now && end.backlog.length > 0) return; // flush() closes it once drained
    end.closed = true;
    end.socket?.end();
    if (end === end.connection.client) forget(end.connection);
    if (end.peer !== undefined && !end.peer.closed) closeEnd(end.peer, now);
  }

  /**
   * The client side is closed: the connection no longer counts. Its requests already forwarded are
   * still matched to it (by `byUpstreamPort`) until the upstream side closes too: a client that sent
   * and hung up at once is still named in the log (found in review).
   */
  function forget(connection: ClientConnection): void {
    open.delete(connection);
  }

  const handlers = {
    data(socket: Socket<End>, chunk: Uint8Array) {
      const peer = socket.data.peer;
      if (peer !== undefined) forward(peer, chunk);
    },
    drain(socket: Socket<End>) {
      flush(socket.data);
    },
    close(socket: Socket<End>) {
      const end = socket.data;
      if (end.peer === undefined) return; // refused past the cap: never counted
      if (!end.closed) {
        end.closed = true;
        if (end === end.connection.client) forget(end.connection);
      }
      if (end !== end.connection.client && end.connection.upstreamPort !== undefined) byUpstreamPort.delete(end.connection.upstreamPort);
      // What this side still had to say reaches the other side first.
      closeEnd(end.peer, false);
    },
    error() {
      // close follows
    },
  };

  /**
   * A client that sends its request and then its FIN (`Connection: close` clients, `nc -q`) still
   * gets its answer: the FIN is passed on to the HTTP server after the request's bytes, and the
   * client's side is closed once the server has answered and closed its side.
   */
  function clientFinished(socket: Socket<End>): void {
    const upstream = socket.data.peer;
    if (upstream === undefined || upstream.closed) return;
    upstream.finPending = true;
    if (upstream.socket !== undefined && upstream.backlog.length === 0) flush(upstream);
  }

  const listener: TCPSocketListener<End> = Bun.listen<End>({
    hostname: options.hostname,
    port: options.port,
    allowHalfOpen: true,
    socket: {
      ...handlers,
      end: clientFinished,
      open(client) {
        if (open.size >= options.connectionsMax) {
          refusedTotal++;
          // Said, not only counted: a scrape or probe past the cap is refused too, and the operator
          // saw nothing but the target going down (found in a black-box review).
          logRefused?.("cap", () => `closed a client connection from ${client.remoteAddress} at once: ${open.size} are open, the most --max-client-connections allows`);
          client.data = { socket: client, backlog: [], backlogBytes: 0, peer: undefined, closed: true, finPending: false, connection: undefined as never }; // never read: `close` sees no peer
          client.end();
          return;
        }
        const connection: ClientConnection = {
          requestsInHandler: 0,
          deadlineMs: performance.now() + options.requestReadTimeoutMs,
          upstreamPort: undefined,
          remoteAddress: client.remoteAddress,
          client: undefined as never,
        };
        const downstream: End = { socket: client, backlog: [], backlogBytes: 0, peer: undefined, closed: false, finPending: false, connection };
        const upstream: End = { socket: undefined, backlog: [], backlogBytes: 0, peer: downstream, closed: false, finPending: false, connection };
        connection.client = downstream;
        downstream.peer = upstream;
        client.data = downstream;
        client.setNoDelay(true);
        open.add(connection);
        Bun.connect<End>({
          hostname: "127.0.0.1",
          port: innerPort,
          data: upstream,
          socket: {
            ...handlers,
            open(socket) {
              socket.setNoDelay(true);
              upstream.socket = socket;
              if (downstream.closed) return closeEnd(upstream, true);
              connection.upstreamPort = socket.localPort;
              byUpstreamPort.set(socket.localPort, connection);
              flush(upstream);
            },
            connectError() {
              closeEnd(downstream, true);
            },
          },
        }).catch(() => closeEnd(downstream, true));
      },
    },
  });

  return {
    port: listener.port,
    connections: () => open.size,
    addressOf(request) {
      // Through the layer, the HTTP server sees the layer's socket: the client's is the one it forwards.
      const upstreamPort = server.requestIP(request)?.port;
      const connection = upstreamPort === undefined ? undefined : byUpstreamPort.get(upstreamPort);
      return connection?.remoteAddress;
    },
    async stop(closeActive) {
      clearInterval(sweeper);
      listener.stop(false);
      if (!closeActive) return server.stop(false);
      // Answers the handler has just returned are still on their way through this layer: let the
      // HTTP server finish them and close its side (each close reaches its client after the bytes
      // before it), then cut what is left.
      await Promise.race([server.stop(false), Bun.sleep(STOP_GRACE_MS)]);
      await server.stop(true);
      const deadlineMs = performance.now() + STOP_GRACE_MS;
      while (open.size > 0 && performance.now() < deadlineMs) await Bun.sleep(10); // polling interval while the last answers drain
      listener.stop(true);
    },
  };
}
