// Proves the peer client's own fetch (src/transport/peer-fetch.ts): a POST carries its headers and
// body and gets the status, headers and body back over a reused socket; a call on a kept-alive
// socket the peer dropped goes again on a new one; an aborted call rejects with the signal's
// reason and the next call still works; an unreachable peer is a TypeError, as with Bun's fetch;
// and close() fails later calls.
import { afterAll, describe, expect, test } from "bun:test";
import { createPeerFetch } from "../src/transport/peer-fetch.ts";

/** Holds the answer to /slow until the suite ends: a peer that never answers in time. */
let releaseSlow: () => void = () => {};
const slowAnswer = new Promise<void>((resolve) => (releaseSlow = resolve));
const seen: { method: string; path: string; header: string | null; body: string; port: number }[] = [];
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(request, bunServer) {
    const url = new URL(request.url);
    const body = await request.text();
    seen.push({ method: request.method, path: `${url.pathname}${url.search}`, header: request.headers.get("x-test"), body, port: bunServer.requestIP(request)?.port ?? 0 });
    if (url.pathname === "/slow") await slowAnswer;
    return new Response(`echo:${body}`, { status: url.pathname === "/missing" ? 404 : 200, headers: { "content-type": "text/plain", "x-answer": "yes" } });
  },
});
afterAll(async () => {
  releaseSlow();
  await server.stop(true);
});
const base = `http://127.0.0.1:${server.port}`;

describe("peer fetch", () => {
  test("sends method, path, headers and body; returns status, headers and body; reuses its socket", async () => {
    const peer = createPeerFetch(base, 2);
    try {
      const first = await peer.fetch(`${base}/kv.v1.RaftService/Send?x=1`, { method: "POST", headers: { "x-test": "one" }, body: new TextEncoder().encode("hello") });
      expect(first.status).toBe(200);
      expect(first.headers.get("x-answer")).toBe("yes");
      expect(await first.text()).toBe("echo:hello");
      const second = await peer.fetch(`${base}/missing`, { method: "POST", headers: new Headers({ "x-test": "two" }), body: new Uint8Array([0, 255]) });
      expect(second.status).toBe(404);
      const [a, b] = seen.slice(-2);
      expect(a).toMatchObject({ method: "POST", path: "/kv.v1.RaftService/Send?x=1", header: "one", body: "hello" });
      expect(b).toMatchObject({ path: "/missing", header: "two" });
      expect(b!.port).toBe(a!.port); // the same kept-alive socket
    } finally {
      peer.close();
    }
  });

  test("a call on a kept-alive socket the peer dropped goes again, once, on a new socket", async () => {
    // Each socket answers one request, then closes on the next without answering.
    const answered = new Set<number>();
    let requests = 0;
    let sockets = 0;
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
          socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        },
      },
    });
    const origin = `http://127.0.0.1:${listener.port}`;
    const peer = createPeerFetch(origin, 1);
    try {
      expect(await (await peer.fetch(`${origin}/a`, { method: "POST", body: new Uint8Array(1) })).text()).toBe("ok");
      expect(await (await peer.fetch(`${origin}/b`, { method: "POST", body: new Uint8Array(1) })).text()).toBe("ok");
      expect(requests).toBe(3); // /a, /b refused on the old socket, /b again on a new one
      expect(answered.size).toBe(2);
    } finally {
      peer.close();
      listener.stop(true);
    }
  });

  test("an aborted call rejects with the signal's reason, and the next call still works", async () => {
    const peer = createPeerFetch(base, 1);
    try {
      const abort = new AbortController();
      const call = peer.fetch(`${base}/slow`, { method: "POST", body: new Uint8Array(1), signal: abort.signal });
      const reason = new Error("deadline");
      // Abort once the server has the request, so the call is really in flight.
      while (!seen.some((each) => each.path === "/slow")) await Bun.sleep(1);
      abort.abort(reason);
      await expect(call).rejects.toBe(reason);
      const next = await peer.fetch(`${base}/after`, { method: "POST", body: new TextEncoder().encode("x") });
      expect(await next.text()).toBe("echo:x");
    } finally {
      peer.close();
    }
  });

  test("an unreachable peer is a TypeError; a closed fetch refuses calls", async () => {
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const deadPort = probe.port;
    await probe.stop(true);
    const dead = createPeerFetch(`http://127.0.0.1:${deadPort}`, 1);
    await expect(dead.fetch(`http://127.0.0.1:${deadPort}/x`, { method: "POST", body: new Uint8Array(1) })).rejects.toBeInstanceOf(TypeError);
    dead.close();
    const peer = createPeerFetch(base, 1);
    peer.close();
    await expect(peer.fetch(`${base}/x`, { method: "POST", body: new Uint8Array(1) })).rejects.toBeInstanceOf(TypeError);
  });
});
