// Proves the peer client's own Connect transport (src/transport/socket-transport.ts): a call carries
// the Connect headers, the interceptors' headers and its binary body, and gets the decoded answer,
// headers and trailers over a reused socket; a peer's error answer becomes a ConnectError with the
// peer's code (or the one its HTTP status maps to); a call on a kept-alive socket the peer dropped
// goes again on a new one; a deadline, a cancellation, an unreachable peer and a closed transport
// each fail with their Connect code, and the next call still works; request buffers are reused
// only once their call settled.
import { afterAll, describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { EntryType, RaftService, SendRequestSchema, SendResponseSchema } from "../src/gen/kv/v1/raft_pb.ts";
import { createSocketTransport, RequestBuffers } from "../src/transport/socket-transport.ts";
import type { SocketTransportOptions } from "../src/transport/socket-transport.ts";

/** What the test server saw of each call. */
interface Seen {
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly from: number;
  readonly port: number;
}

const seen: Seen[] = [];
/** Entries of calls from node 55: how many arrived, and how many not as sent (each byte is its entry's term). */
const largeEntries = { checked: 0, corrupt: 0, terms: new Set<number>() };
const largeEntryBytes = 300 * 1024;
/** Calls to node 99 wait here until released: a peer that never answers in time. */
let releaseSlow: () => void = () => {};
const slowAnswer = new Promise<void>((resolve) => (releaseSlow = resolve));
let slowArrived: () => void = () => {};
const slowArrival = new Promise<void>((resolve) => (slowArrived = resolve));

/** Answers Send with one empty-bodied vote response from node `from + 1`; `from` picks other answers. */
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(request, bunServer) {
    const url = new URL(request.url);
    const body = fromBinary(SendRequestSchema, new Uint8Array(await request.arrayBuffer()));
    seen.push({ path: url.pathname, headers: Object.fromEntries(request.headers), from: body.from, port: bunServer.requestIP(request)?.port ?? 0 });
    if (body.from === 99) {
      slowArrived();
      await slowAnswer;
    }
    if (body.from === 55) {
      for (const message of body.messages) {
        if (message.body.case !== "append") continue;
        for (const entry of message.body.value.entries) {
          largeEntries.checked++;
          largeEntries.terms.add(Number(entry.term));
          if (entry.data.byteLength !== largeEntryBytes || entry.data.some((byte) => byte !== Number(entry.term))) largeEntries.corrupt++;
        }
      }
    }
    if (body.from === 125) await Bun.sleep(80);
    if (body.from === 7) {
      return new Response(JSON.stringify({ code: "failed_precondition", message: "not a peer" }), { status: 400, headers: { "content-type": "application/json" } });
    }
    if (body.from === 8) return new Response("overloaded", { status: 503, headers: { "content-type": "text/plain" } });
    if (body.from === 9) return new Response(new Uint8Array([0xff, 0xff]), { headers: { "content-type": "application/proto" } });
    const answer = create(SendResponseSchema, { messages: [{ from: body.from + 1, to: body.from, term: 5n, body: { case: "timeoutNow", value: {} } }] });
    return new Response(toBinary(SendResponseSchema, answer), { headers: { "content-type": "application/proto", "x-answer": "yes", "trailer-kv-note": "t" } });
  },
});
afterAll(async () => {
  releaseSlow();
  await server.stop(true);
});
const base = `http://127.0.0.1:${server.port}`;

function clientFor(baseUrl: string, options: Partial<SocketTransportOptions> = {}) {
  const transport = createSocketTransport({ baseUrl, idleConnectionsMax: 2, defaultTimeoutMs: 5_000, ...options });
  return { transport, client: createClient(RaftService, transport) };
}

const request = (from: number) => create(SendRequestSchema, { from, fromHttpUrl: "", messages: [] });

/** The Connect error a call failed with. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
}

describe("socket transport", () => {
  test("a call carries the Connect headers, the interceptors' and its body, gets the answer, and reuses its socket", async () => {
    const sent: number[] = [];
    const { transport, client } = clientFor(base, {
      interceptors: [(next) => (call) => (call.header.set("kv-cluster-id", "c-1"), next(call))],
      onRequestBytes: (bytes) => sent.push(bytes),
    });
    try {
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const answer = await client.send(request(1), { timeoutMs: 1_234, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) });
      expect([header?.get("x-answer"), header?.has("trailer-kv-note"), trailer?.get("kv-note")]).toEqual(["yes", false, "t"]);
      expect(answer.messages).toEqual([expect.objectContaining({ from: 2, to: 1, term: 5n, body: { case: "timeoutNow", value: expect.anything() } })]);
      await client.send(request(3), { headers: { "x-call": "two" } });
      const [first, second] = seen.slice(-2);
      expect(first).toMatchObject({ path: "/kv.v1.RaftService/Send", from: 1 });
      expect(first!.headers).toMatchObject({
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        "connect-timeout-ms": "1234",
        "kv-cluster-id": "c-1",
      });
      expect(second!.headers).toMatchObject({ "connect-timeout-ms": "5000", "x-call": "two" });
      expect(second!.port).toBe(first!.port); // the same kept-alive socket
      expect(sent).toEqual([toBinary(SendRequestSchema, request(1)).byteLength, toBinary(SendRequestSchema, request(3)).byteLength]);
    } finally {
      transport.close();
    }
  });

  test("large calls at once and one after another each arrive as sent", async () => {
    const { transport, client } = clientFor(base, { idleConnectionsMax: 4 });
    try {
      let term = 1;
      for (let round = 0; round < 6; round++) {
        const calls = Array.from({ length: 4 }, () => {
          const entryTerm = term++;
          const entry = { term: BigInt(entryTerm), index: 1n, type: EntryType.NORMAL, data: new Uint8Array(largeEntryBytes).fill(entryTerm) };
          const append = { prevLogIndex: 0n, prevLogTerm: 0n, commit: 0n, entries: [entry] };
          return client.send(create(SendRequestSchema, { from: 55, fromHttpUrl: "", messages: [{ from: 55, to: 1, term: 1n, body: { case: "append", value: append } }] }));
        });
        await Promise.all(calls);
      }
      // Each call's own entry, not another's written over its buffer before it was sent.
      expect(largeEntries).toEqual({ checked: 24, corrupt: 0, terms: new Set(Array.from({ length: 24 }, (_, i) => i + 1)) });
    } finally {
      transport.close();
    }
  });

  test("an error answer is a ConnectError with the peer's code, or the code of its HTTP status", async () => {
    const { transport, client } = clientFor(base);
    try {
      const refused = await failure(client.send(request(7)));
      expect({ code: refused.code, message: refused.rawMessage }).toEqual({ code: Code.FailedPrecondition, message: "not a peer" });
      expect((await failure(client.send(request(8)))).code).toBe(Code.Unavailable);
      const garbled = await failure(client.send(request(9)));
      expect(garbled.code).toBe(Code.Internal);
      expect(garbled.rawMessage).toStartWith("parse binary:");
      expect((await client.send(request(1))).messages).toHaveLength(1);
    } finally {
      transport.close();
    }
  });

  test("a call on a kept-alive socket the peer dropped goes again, once, on a new socket", async () => {
    // Each socket answers one request, then closes on the next without answering.
    const answered = new Set<number>();
    let requests = 0;
    let sockets = 0;
    const reply = toBinary(SendResponseSchema, create(SendResponseSchema, { messages: [] }));
    const listener = Bun.listen<{ id: number }>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(socket) {
          socket.data = { id: ++sockets };
        },
        data(socket) {
          requests++;
          if (answered.has(socket.data.id)) {
            socket.end();
            return;
          }
          answered.add(socket.data.id);
          socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: ${reply.byteLength}\r\n\r\n`);
          socket.write(reply);
        },
      },
    });
    const { transport, client } = clientFor(`http://127.0.0.1:${listener.port}`, { idleConnectionsMax: 1 });
    try {
      await client.send(request(1));
      await client.send(request(1));
      expect(requests).toBe(3); // the first, the second refused on the old socket, the second again on a new one
      expect(answered.size).toBe(2);
    } finally {
      transport.close();
      listener.stop(true);
    }
  });

  test("a deadline fails with deadline_exceeded and a cancellation with canceled; the next call still works", async () => {
    const { transport, client } = clientFor(base, { idleConnectionsMax: 1 });
    try {
      const late = await failure(client.send(request(99), { timeoutMs: 50 }));
      expect(late.code).toBe(Code.DeadlineExceeded);
      const abort = new AbortController();
      const call = client.send(request(99), { signal: abort.signal });
      await slowArrival; // the call is really in flight
      abort.abort(new Error("stop"));
      expect((await failure(call)).code).toBe(Code.Canceled);
      expect((await client.send(request(1))).messages).toHaveLength(1);
    } finally {
      transport.close();
    }
  });

  test("a call whose interceptor holds it past its deadline fails with deadline_exceeded and is never sent; one cancelled before it starts fails with canceled", async () => {
    const { transport, client } = clientFor(base, {
      interceptors: [(next) => async (call) => (await Bun.sleep(60), next(call))],
    });
    try {
      const late = await failure(client.send(request(123), { timeoutMs: 20 }));
      expect(late.code).toBe(Code.DeadlineExceeded);
      const abort = new AbortController();
      abort.abort(new Error("stop"));
      expect((await failure(client.send(request(123), { signal: abort.signal }))).code).toBe(Code.Canceled);
      // Each call settled only after its interceptor handed it on: none was sent.
      expect(seen.filter((call) => call.from === 123)).toEqual([]);
      expect((await client.send(request(1))).messages).toHaveLength(1);
    } finally {
      transport.close();
    }
  });

  test("a call's deadline passing after its answer came, while an interceptor still holds it, leaves alone the socket another call took meanwhile", async () => {
    let answered = false;
    const { transport, client } = clientFor(base, {
      idleConnectionsMax: 1,
      interceptors: [
        (next) => async (call) => {
          const response = await next(call);
          if ((call.message as { from?: number }).from === 124) {
            answered = true;
            await Bun.sleep(60); // past the call's 20 ms deadline
          }
          return response;
        },
      ],
    });
    try {
      const first = client.send(request(124), { timeoutMs: 20 });
      while (!answered) await Bun.sleep(1);
      // The second call takes the first one's socket, and the server holds it past that deadline.
      const second = client.send(request(125), { timeoutMs: 2_000 });
      expect((await second).messages).toHaveLength(1);
      expect((await first).messages).toHaveLength(1);
    } finally {
      transport.close();
    }
  });

  test("an unreachable peer is unavailable; a closed transport refuses calls", async () => {
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const deadPort = probe.port;
    await probe.stop(true);
    const dead = clientFor(`http://127.0.0.1:${deadPort}`);
    expect((await failure(dead.client.send(request(1)))).code).toBe(Code.Unavailable);
    dead.transport.close();
    const { transport, client } = clientFor(base);
    transport.close();
    expect((await failure(client.send(request(1)))).code).toBe(Code.Unavailable);
  });
});

describe("request buffers", () => {
  test("a buffer given back serves the next request that fits, up to the number and size kept; larger requests get buffers of their own", () => {
    const buffers = new RequestBuffers(2, 64 * 1024);
    const first = buffers.take(20_000);
    expect(first.byteLength).toBe(20_000);
    expect(first.buffer.byteLength).toBe(32 * 1024); // rounded up to a power of two
    buffers.giveBack(first);
    expect(buffers.spareCount()).toBe(1);
    const second = buffers.take(30_000);
    expect(second.buffer).toBe(first.buffer); // reused: it fits
    expect(buffers.spareCount()).toBe(0);
    // Taken and not given back: the next request gets a buffer of its own.
    expect(buffers.take(100).buffer).not.toBe(first.buffer);
    const large = buffers.take(100_000);
    expect(large.buffer.byteLength).toBe(100_000); // past the size kept: exactly its length, never kept
    buffers.giveBack(large);
    expect(buffers.spareCount()).toBe(0);
    buffers.giveBack(second);
    buffers.giveBack(buffers.take(1));
    buffers.giveBack(buffers.take(40_000));
    expect(buffers.spareCount()).toBe(2);
    buffers.giveBack(new RequestBuffers(1).take(10));
    expect(buffers.spareCount()).toBe(2); // no more than two kept
    // The smallest that fits: a small request leaves the larger buffer for a larger one.
    expect(buffers.take(100).buffer.byteLength).toBe(32 * 1024);
    expect(buffers.take(40_000).buffer.byteLength).toBe(64 * 1024);
    expect(buffers.spareCount()).toBe(0);
  });
});
