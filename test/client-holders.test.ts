// Proves what a lock holder, a lease keeper and a watch of the client library do at their edges
// (found in a code review of src/client): a release that comes before the holder's own watch saw
// its key written over still deletes the key, so no stray key blocks the queue; the lock says it is
// not held once released; a keeper's keepalive attempts are sized by the lease's time left, not cut
// to a quarter of the client's timeoutMs; and a watch does not begin on an endpoint the client
// found silent.
import { expect, test } from "bun:test";
import { createClient } from "../src/client/index.ts";
import { serverClusterForSuite } from "./helpers/server-cluster.ts";

const clusterOf = serverClusterForSuite({ size: 3, dirPrefix: "kv-client-holders-" });
const urls = () => clusterOf().nodes.map((n) => clusterOf().node(n.id).httpUrl);

/** `fetch`, with `delay` before (or after, for `after`) each request whose URL `matches`. */
function slowFetch(matches: (url: string) => boolean, delayMs: number, after = false): typeof fetch {
  return Object.assign(
    async (input: Parameters<typeof fetch>[0], init?: RequestInit) => {
      const slow = matches(String(input instanceof Request ? input.url : input));
      if (slow && !after) await Bun.sleep(delayMs);
      const response = await fetch(input, init);
      if (slow && after) await Bun.sleep(delayMs);
      return response;
    },
    { preconnect: fetch.preconnect },
  ) as typeof fetch;
}

async function keysUnder(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const page of createClient({ endpoints: urls() }).list(prefix)) keys.push(...page.items.map((item) => item.key));
  return keys;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  while (!condition()) {
    if (performance.now() > 60_000 + started) throw new Error(`never: ${what}`);
    await Bun.sleep(10);
  }
}
const started = performance.now();

test("a holder's key another client wrote over just before release() is deleted by the release: it held no lease, and would have stood ahead of every later contender for ever", async () => {
  // The holder's own watch opens slowly (a loaded node): the write is not seen before release().
  const kv = createClient({ endpoints: urls(), fetch: slowFetch((url) => url.includes("/watch?"), 1_000) });
  const holder = await kv.lock("overwritten", { ttlMs: 5_000 });
  await createClient({ endpoints: urls() }).put(holder.key, "someone else's write"); // detaches it from the lease
  expect(await holder.release()).toBe(true);
  expect(await keysUnder("overwritten/")).toEqual([]);
  const next = await kv.lock("overwritten", { ttlMs: 5_000 });
  expect(await next.release()).toBe(true);
});

test("so too when the holder put a key of its own on the lock's lease: the revoke's count of keys deleted cannot say whether the lock's key went (found in a review of the fix)", async () => {
  const kv = createClient({ endpoints: urls(), fetch: slowFetch((url) => url.includes("/watch?"), 1_000) });
  const holder = await kv.lock("attached", { ttlMs: 5_000 });
  await kv.put("attached-state/owner", "me", { lease: holder.leaseId }); // goes with the lock
  await createClient({ endpoints: urls() }).put(holder.key, "someone else's write");
  expect(await holder.release()).toBe(true);
  expect(await keysUnder("attached-state/")).toEqual([]);
  expect(await keysUnder("attached/")).toEqual([]);
});

test("once released, a lock is not said to be held: aliveUntilMs() is at most now", async () => {
  const kv = createClient({ endpoints: urls() });
  const lock = await kv.lock("released", { ttlMs: 5_000 });
  expect(lock.aliveUntilMs()).toBeGreaterThan(performance.now());
  expect(await lock.release()).toBe(true);
  const other = await kv.lock("released", { ttlMs: 5_000 });
  expect(lock.aliveUntilMs()).toBeLessThanOrEqual(performance.now());
  await other.release();
});

test("a keeper of a client whose timeoutMs is short keeps its lease over a link where each answer comes 150 ms late: its attempts have a quarter of the lease's time left, not of timeoutMs (100 ms each)", async () => {
  // Only the keepalives cross the slow link: the lease is granted by a client of the default budget
  // (granted through the slow one, a loaded CI machine took more than its 400 ms: a flaky setup).
  const kv = createClient({ endpoints: urls(), timeoutMs: 400, fetch: slowFetch((url) => url.includes("/keepalive"), 150, true) });
  const granting = createClient({ endpoints: urls() });
  const sentAtMs = performance.now();
  const lease = await granting.leases.grant(3_000);
  const keeper = kv.leases.keep(lease.id, { ttlMs: lease.ttlMs, sentAtMs });
  try {
    const first = keeper.aliveUntilMs();
    await until(() => keeper.aliveUntilMs() > first || keeper.lost.aborted, "a keepalive answered, or the lease lost");
    expect(keeper.lost.aborted).toBe(false);
  } finally {
    keeper.stop();
    await granting.leases.revoke(lease.id).catch(() => undefined);
  }
});

test("a watch begins on an endpoint that answers, not on one the client found silent (every watch began at the first endpoint, and waited out its idle timeout there)", async () => {
  const watchesAsked: string[] = [];
  const silent = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: { data: (_socket, data) => void watchesAsked.push(...(data.toString().startsWith("GET /watch") ? ["watch"] : [])) },
  });
  try {
    const kv = createClient({ endpoints: [`http://127.0.0.1:${silent.port}`, ...urls()], timeoutMs: 5_000, attemptTimeoutMs: 300 });
    await kv.put("silent/k", "v0"); // finds the first endpoint silent
    const stop = new AbortController();
    const events = kv.watch({ key: "silent/k" }, { fromVersion: 1, signal: stop.signal });
    const first = await events.next();
    stop.abort();
    expect(first.done).toBe(false);
    expect(watchesAsked).toEqual([]);
  } finally {
    silent.stop(true);
  }
});
