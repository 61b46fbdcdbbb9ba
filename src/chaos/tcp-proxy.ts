import type { Socket, TCPSocketListener } from "bun";

/**
 * A TCP proxy the chaos runner owns for one directed link between two nodes. It listens on a port
 * the OS picks and forwards to a target that may change (a restarted node binds a new port).
 * `cut()` closes every connection and refuses new ones until `heal()`: a network partition.
 */
export interface TcpProxy {
  readonly port: number;
  setTarget(port: number | undefined): void;
  cut(): void;
  heal(): void;
  isCut(): boolean;
  close(): void;
}

/**
 * One side of a proxied connection: bytes it could not take yet wait in `backlog` until drain.
 * Once `closed` (the link was cut or either side hung up) nothing more is forwarded either way, so
 * no byte sent after a cut can cross it, not even one already in the proxy's hands.
 */
interface End {
  socket: Socket<End> | undefined;
  backlog: Uint8Array[];
  peer: End | undefined;
  closed: boolean;
}

function writeTo(end: End, chunk: Uint8Array): void {
  if (end.closed) return;
  if (end.socket === undefined || end.backlog.length > 0) {
    end.backlog.push(chunk.slice());
    return;
  }
  const written = end.socket.write(chunk);
  if (written < chunk.byteLength) end.backlog.push(chunk.slice(written));
}

function flush(end: End): void {
  const socket = end.socket;
  if (socket === undefined) return;
  while (end.backlog.length > 0) {
    const chunk = end.backlog[0] as Uint8Array;
    const written = socket.write(chunk);
    if (written < chunk.byteLength) {
      end.backlog[0] = chunk.slice(written);
      return;
    }
    end.backlog.shift();
  }
}

/** Ends both sides. A cut (`discard`) also drops bytes still waiting in the proxy. */
function closeBoth(end: End, discard = false): void {
  for (const side of end.peer === undefined ? [end] : [end, end.peer]) {
    side.closed = true;
    if (discard) side.backlog = [];
    side.socket?.end();
  }
}

const handlers = {
  data(socket: Socket<End>, chunk: Uint8Array) {
    const peer = socket.data.peer;
    if (peer !== undefined && !socket.data.closed) writeTo(peer, chunk);
  },
  drain(socket: Socket<End>) {
    flush(socket.data);
  },
  close(socket: Socket<End>) {
    closeBoth(socket.data);
  },
  error(socket: Socket<End>) {
    closeBoth(socket.data);
  },
};

/** Starts a proxy on 127.0.0.1 (port 0: the OS picks) forwarding to 127.0.0.1:`targetPort`. */
export function createTcpProxy(targetPort?: number): TcpProxy {
  let target = targetPort;
  let cut = false;
  const open = new Set<End>();

  const listener: TCPSocketListener<End> = Bun.listen<End>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      ...handlers,
      open(client) {
        const downstream: End = { socket: client, backlog: [], peer: undefined, closed: false };
        client.data = downstream;
        if (cut || target === undefined) {
          client.end();
          return;
        }
        const upstream: End = { socket: undefined, backlog: [], peer: downstream, closed: false };
        downstream.peer = upstream;
        open.add(downstream);
        Bun.connect<End>({
          hostname: "127.0.0.1",
          port: target,
          data: upstream,
          socket: {
            ...handlers,
            open(socket) {
              upstream.socket = socket;
              if (cut || upstream.closed) return closeBoth(upstream, true);
              flush(upstream);
            },
            connectError() {
              client.end();
            },
          },
        }).catch(() => client.end());
      },
      close(client) {
        open.delete(client.data);
        closeBoth(client.data);
      },
    },
  });

  const dropAll = () => {
    for (const end of open) closeBoth(end, true);
    open.clear();
  };

  return {
    port: listener.port,
    setTarget(port) {
      target = port;
      dropAll();
    },
    cut() {
      cut = true;
      dropAll();
    },
    heal() {
      cut = false;
    },
    isCut: () => cut,
    close() {
      dropAll();
      listener.stop(true);
    },
  };
}
