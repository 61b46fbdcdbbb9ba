// Proves the peer client's own fetch (src/transport/peer-fetch.ts): a POST carries its headers and
// body and gets the status, headers and body back over a reused socket; an aborted call rejects
// with the signal's reason and the next call still works; an unreachable peer is a TypeError, as
// with Bun's fetch; and close() fails later calls.
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
