// Proves client.close() (src/client): a watch under way ends, a lease keeper stops with `lost`
// fired as `closed`, a lock held is lost with it and a wait for a lock is refused `closed`, a call
// under way ends `closed` (a read), and every later call is refused `closed` before anything is
// sent, while another client of the same cluster goes on. Noted in earlier sessions: the client had
// no way to stop what it had started, as etcd's Close() does. And lease calls take a call's signal
// and timeoutMs, as the key-value calls do.
import { describe, expect, test } from "bun:test";
import { createClient, KvClientError, type WatchEvent } from "../src/client/index.ts";
import { serverClusterForSuite } from "./helpers/server-cluster.ts";

const cluster = serverClusterForSuite({ size: 3, dirPrefix: "kv-client-close-" });
const urls = () => cluster().nodes.map((n) => cluster().node(n.id).httpUrl);
const codeOf = (error: unknown) => (error instanceof KvClientError ? error.code : String(error));

describe("client.close()", () => {
  test("ends a watch, stops keepers and locks (lost: closed), refuses a wait for a lock and every later call", async () => {
    const client = createClient({ endpoints: urls() });
    const other = createClient({ endpoints: urls() });
    try {
      await client.put("close/a", "1");
      // A watch under way, read in the background.
      const seen: WatchEvent[] = [];
      const watching = (async () => {
        for await (const event of client.watch({ prefix: "close/" })) seen.push(event);
        return "ended";
      })();
      await other.put("close/b", "2");
      await until(() => seen.some((event) => event.type === "put" && event.key === "close/b"));
      // A keeper, a lock held, and a second contender waiting for it.
      const lease = await client.leases.grant(60_000);
      const keeper = client.leases.keep(lease.id, { ttlMs: lease.ttlMs });
      const held = await client.lock("close-lock", { ttlMs: 60_000 });
      const waiting = client.lock("close-lock", { ttlMs: 60_000 }).then(
        () => "acquired",
        (error: unknown) => codeOf(error),
      );

      client.close();
      client.close(); // idempotent

      expect(await watching).toBe("ended");
      expect(keeper.lost.aborted).toBe(true);
      expect(codeOf(keeper.lost.reason)).toBe("closed");
      expect(held.lost.aborted).toBe(true);
      expect(codeOf(held.lost.reason)).toBe("closed");
      expect(await waiting).toBe("closed");
      for (const call of [() => client.get("close/a"), () => client.put("close/c", "3"), () => client.status(), () => client.leases.grant(1_000)]) {
        expect(await call().then(() => "served", codeOf)).toBe("closed");
      }
      // Nothing of it was sent: the other client finds no close/c.
      expect(await other.get("close/c")).toBeNull();
      expect((await other.get("close/a"))?.text).toBe("1");
      // The lease was not revoked: it runs out at its TTL (revoked here by the other client).
      expect((await other.leases.get(lease.id)).id).toBe(lease.id);
      await other.leases.revoke(lease.id);
    } finally {
      client.close();
      other.close();
    }
  });

  test("a read under way when the client closes rejects closed", async () => {
    // An endpoint that accepts and never answers: the read waits there until the close.
    let requests = 0;
    const listener = Bun.listen<undefined>({ hostname: "127.0.0.1", port: 0, socket: { data: () => void requests++ } });
    const client = createClient({ endpoints: [`http://127.0.0.1:${listener.port}`], timeoutMs: 30_000 });
    try {
      const reading = client.get("k").then(() => "served", codeOf);
      // The request arrived (it waits for an answer) before the close.
      await until(() => requests > 0);
      client.close();
      expect(await reading).toBe("closed");
    } finally {
      listener.stop(true);
    }
  });
});

/** Polls `condition` (a condition, not a sleep) until it holds; fails after 10 s. */
async function until(condition: () => boolean): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error("timed out waiting for a condition");
    await Bun.sleep(5); // polling interval
  }
}

describe("lease calls take a call's signal and timeoutMs, as the key-value calls do (noted in earlier sessions: they took none)", () => {
  test("an aborted signal sends nothing; one aborted while the call waits ends it with its reason; a bad option is refused", async () => {
    let requests = 0;
    const listener = Bun.listen<undefined>({ hostname: "127.0.0.1", port: 0, socket: { data: () => void requests++ } });
    const client = createClient({ endpoints: [`http://127.0.0.1:${listener.port}`], timeoutMs: 30_000 });
    try {
      const reason = new Error("the caller gave up");
      for (const call of [
        () => client.leases.grant(1_000, { signal: AbortSignal.abort(reason) }),
        () => client.leases.keepAlive(1, { signal: AbortSignal.abort(reason) }),
        () => client.leases.revoke(1, { signal: AbortSignal.abort(reason) }),
        () => client.leases.get(1, { signal: AbortSignal.abort(reason) }),
        () => client.leases.list({ signal: AbortSignal.abort(reason) }),
      ]) {
        expect(await call().then(() => "served", (error: unknown) => error)).toBe(reason);
      }
      expect(requests).toBe(0);
      const stop = new AbortController();
      const reading = client.leases.get(7, { signal: stop.signal }).then(() => "served", (error: unknown) => error);
      await until(() => requests > 0);
      stop.abort(reason);
      expect(await reading).toBe(reason);
      expect(await client.leases.get(7, { timeoutMs: 0 }).then(() => "served", codeOf)).toBe("bad_request");
    } finally {
      client.close();
      listener.stop(true);
    }
  });
});

test("a statusOf or hashOf under way when the client closes ends at once, closed (found in a review: it ran on to its timeout and rejected unreachable)", async () => {
  let requests = 0;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => {
      requests++;
      return new Promise<Response>(() => {});
    },
  });
  const endpoint = `http://127.0.0.1:${server.port}`;
  const client = createClient({ endpoints: [endpoint], timeoutMs: 60_000 });
  try {
    const calls = [client.statusOf(endpoint), client.hashOf(endpoint)].map((call) => call.then(() => "served", codeOf));
    await until(() => requests === 2);
    client.close();
    expect(await Promise.all(calls)).toEqual(["closed", "closed"]);
  } finally {
    client.close();
    server.stop(true);
  }
});
