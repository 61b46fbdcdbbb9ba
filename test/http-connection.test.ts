// Proves HttpConnection (src/lib/http-connection.ts) stops writing a request the server answered
// before reading all of it (the rest would be read on that socket as the next request, or the next
// request as the rest of it): the socket is closed, and the next request goes on a new socket and
// is answered. A request that cannot even start fails, and leaves the connection free for the next.
import { afterAll, expect, test } from "bun:test";
import type { Socket } from "bun";
import { buildRequest, HttpConnection, HttpConnectionError } from "../src/lib/http-connection.ts";

/** Per connection: bytes received, and whether the client closed it. */
const connections: { received: number; closed: boolean }[] = [];
/** Answers 413 on each connection's first bytes, reads on, counts what follows, answers later requests 200 when complete. */
const server = Bun.listen<{ index: number; answered: boolean; head: string }>({
  hostname: "127.0.0.1",
  port: 0,
  socket: {
    open(socket) {
      socket.data = { index: connections.length, answered: false, head: "" };
      connections.push({ received: 0, closed: false });
    },
    data(socket: Socket<{ index: number; answered: boolean; head: string }>, chunk) {
      const seen = connections[socket.data.index] as { received: number };
      seen.received += chunk.byteLength;
      if (socket.data.answered) return;
      socket.data.head += chunk.toString("latin1", 0, Math.min(chunk.byteLength, 4096));
      if (socket.data.head.startsWith("POST /big")) {
        socket.data.answered = true;
        socket.write("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
      } else if (socket.data.head.includes("\r\n\r\n")) {
        socket.data.answered = true;
        socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      }
    },
    close(socket) {
      (connections[socket.data.index] as { closed: boolean }).closed = true;
    },
  },
});
afterAll(() => server.stop(true));

test("a request that cannot start (no such port) fails with an HttpConnectionError, and the connection takes the next request", async () => {
  const connection = new HttpConnection("127.0.0.1", 70_000);
  for (let attempt = 0; attempt < 2; attempt++) {
    const failure = await connection.request(buildRequest("GET", "/", "127.0.0.1")).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(HttpConnectionError);
  }
});

test("a request answered before it was all written is not written on, and the next goes on a new socket", async () => {
  const connection = new HttpConnection("127.0.0.1", server.port);
  // Far more than the kernel's socket buffers take at once, so the answer comes while most is unsent.
  const body = new Uint8Array(64 << 20);
  const big = buildRequest("POST", "/big", "127.0.0.1", body);
  const answer = await connection.request(big);
  expect(answer.status).toBe(413);
  // The client closes that socket; what reached the server by then is short of the request.
  const deadline = performance.now() + 10_000;
  while (!(connections[0]?.closed ?? false) && (connections[0]?.received ?? 0) < big.byteLength && performance.now() < deadline) await Bun.sleep(5);
  expect(connections[0]?.closed).toBe(true);
  expect(connections[0]?.received).toBeLessThan(big.byteLength);
  const next = await connection.request(buildRequest("GET", "/small", "127.0.0.1"));
  expect(next.status).toBe(200);
  expect(new TextDecoder().decode(next.body)).toBe("ok");
  expect(connections.length).toBe(2);
  connection.close();
});
