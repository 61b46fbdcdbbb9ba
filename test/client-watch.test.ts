// Proves client.watch (src/client/watch.ts) against real in-process nodes and a scripted fake: a stream whose node is killed, or whose connection is cut, resumes on the next endpoint with Last-Event-ID and delivers every acknowledged change exactly once, in order; a resume in the middle of one version's changes neither skips nor repeats any of them; a node whose history does not reach the start (410) is passed over for one that does, and a start older than every node's history is a KvClientError `compacted` with its compactVersion; a stream gone silent (a paused node) is resumed elsewhere after idleTimeoutMs, and progress events are yielded when asked; bad selectors are refused before any request.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTcpProxy } from "../src/chaos/tcp-proxy.ts";
import { createClient, KvClientError, type WatchEvent } from "../src/client/index.ts";
import { watchEventCharsMax } from "../src/client/watch.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

/** Polls `condition` until it holds; fails after `timeoutMs`. */
async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10); // polling interval
  }
}

/** A fetch answering every watch with `events` in one chunk, the stream then open until the request is aborted (which errors it with the abort's reason); counts the requests in `requests`. */
function openStream(events: string, requests = { count: 0 }): typeof fetch {
  return (async (_input: string | URL | Request, init?: RequestInit) => {
    requests.count++;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(events));
        init?.signal?.addEventListener("abort", () => controller.error(init.signal?.reason));
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  }) as typeof fetch;
}

/**
 * How a watch that is meant to deliver nothing ends: its error, or undefined; `aborted` says whether
 * the 10 s guard had to stop it (a watch that would never give up).
 */
async function endOfSilentWatch(kv: ReturnType<typeof createClient>, selector: { prefix: string } | { key: string }, options: { reconnectTimeoutMs: number }): Promise<{ error: unknown; aborted: boolean }> {
  const stop = new AbortController();
  const guard = setTimeout(() => stop.abort(), 10_000);
  let error: unknown;
  try {
    for await (const _event of kv.watch(selector, { ...options, signal: stop.signal })) {
      // nothing is delivered
    }
  } catch (caught) {
    error = caught;
  } finally {
    clearTimeout(guard);
  }
  return { error, aborted: stop.signal.aborted };
}

/** Runs a watch in the background, collecting its change events. */
function collect(iterator: AsyncIterableIterator<WatchEvent>): { events: WatchEvent[]; done: Promise<unknown> } {
  const events: WatchEvent[] = [];
  const done = (async () => {
    for await (const event of iterator) events.push(event);
  })().catch((error: unknown) => error);
  return { events, done };
}

/** A fetch that records each /watch request's URL and Last-Event-ID before passing it on. */
function recordingFetch(log: { url: string; lastEventId: string | null }[]): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const url = String(input);
    if (url.includes("/watch?")) log.push({ url, lastEventId: new Headers(init?.headers).get("last-event-id") });
    return fetch(input, init);
  }) as typeof fetch;
}

describe("against a 3-node cluster", () => {
  let dir: string;
  let cluster: ServerCluster;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kv-client-watch-"));
    cluster = createServerCluster({ size: 3, baseDir: dir, config: () => ({ watch: { progressMs: 200 } }) });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const url = (id: number) => cluster.node(id).httpUrl;

  test("a stream whose node is killed resumes on the next endpoint: every change once, in order", async () => {
    const leader = await cluster.waitForLeader();
    const [follower, other] = cluster.nodes.map((n) => n.id).filter((id) => id !== leader) as [number, number];
    const writer = createClient({ endpoints: [url(leader), url(other)] });
    const log: { url: string; lastEventId: string | null }[] = [];
    const stop = new AbortController();
    const watcher = createClient({ endpoints: [url(follower), url(other), url(leader)], fetch: recordingFetch(log) });
    const { events, done } = collect(watcher.watch({ prefix: "kill/" }, { signal: stop.signal }));
    try {
      await until(() => log.length === 1, "the stream to open");
      const acked: { key: string; version: number; kind: string }[] = [];
      // The first stream opens after a linearizable read: only writes after it are promised.
      await until(async () => {
        const { version } = await writer.put("kill/probe", "p");
        return events.some((e) => e.version === version);
      }, "the stream to deliver");
      const seenBefore = events.length;
      const firstVersion = events[seenBefore - 1]?.version as number;
      for (let i = 0; i < 10; i++) acked.push({ key: `kill/${i}`, version: (await writer.put(`kill/${i}`, `a${i}`)).version, kind: "put" });
      await until(() => events.some((e) => e.version === acked[acked.length - 1]?.version), "the first half");
      await cluster.kill(follower);
      for (let i = 0; i < 10; i++) acked.push({ key: `kill/${i}`, version: (await writer.put(`kill/${i}`, `b${i}`)).version, kind: "put" });
      acked.push({ key: "kill/0", version: (await writer.delete("kill/0")).version, kind: "delete" });
      await until(() => events.some((e) => e.version === acked[acked.length - 1]?.version), "the second half on another node");
      const after = events.filter((e) => e.version > firstVersion).map((e): { key: string; version: number; kind: string } => ({ key: "key" in e ? e.key : "", version: e.version, kind: e.type }));
      expect(after).toEqual(acked);
      expect(events.at(-1)).toMatchObject({ type: "delete", reason: "delete" });
      expect(log.length).toBeGreaterThanOrEqual(2);
      expect(log[0]?.url.startsWith(url(other))).toBe(false);
      expect(log[1]?.url.startsWith(url(other))).toBe(true);
      // The resume names the last version seen, or the one before when that version's changes might
      // not all have come (the client then skips the ones it already gave).
      expect(Number(log[1]?.lastEventId)).toBeGreaterThanOrEqual((acked[9]?.version as number) - 1);
    } finally {
      stop.abort();
      await done;
      await cluster.startNode(follower);
    }
  });

  test("a stream whose connection is cut resumes with Last-Event-ID, nothing missing or doubled", async () => {
    const leader = await cluster.waitForLeader();
    await until(() => cluster.nodes.every((n) => cluster.status(n.id) !== undefined), "every node running");
    const proxy = createTcpProxy(cluster.node(leader).httpPort);
    const writer = createClient({ endpoints: cluster.nodes.map((n) => url(n.id)) });
    const log: { url: string; lastEventId: string | null }[] = [];
    const stop = new AbortController();
    const others = cluster.nodes.map((n) => n.id).filter((id) => id !== leader);
    const watcher = createClient({ endpoints: [`http://127.0.0.1:${proxy.port}`, ...others.map(url)], fetch: recordingFetch(log) });
    const start = (await writer.put("cut/start", "s")).version;
    const { events, done } = collect(watcher.watch({ prefix: "cut/" }, { fromVersion: start, signal: stop.signal }));
    try {
      const acked: number[] = [start];
      for (let i = 0; i < 8; i++) acked.push((await writer.put(`cut/${i % 3}`, `v${i}`)).version);
      await until(() => events.some((e) => e.version === acked.at(-1)), "the first changes");
      proxy.cut();
      for (let i = 0; i < 8; i++) acked.push((await writer.put(`cut/${i % 3}`, `w${i}`)).version);
      await until(() => events.some((e) => e.version === acked.at(-1)), "the changes after the cut");
      expect(events.map((e) => e.version)).toEqual(acked);
      expect(log[0]?.url).toContain(`fromVersion=${start}`);
      expect(log[1]?.lastEventId).not.toBeNull();
    } finally {
      stop.abort();
      await done;
      proxy.close();
    }
  });

  test("a node that answers 410 (it restarted, its history is short) is passed over for one that still has the start", async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.map((n) => n.id).find((id) => id !== leader) as number;
    const writer = createClient({ endpoints: [url(leader)] });
    const start = (await writer.put("restart/a", "1")).version;
    await writer.put("restart/a", "2");
    await until(() => (cluster.status(follower)?.appliedIndex ?? 0) > start, "the follower to apply both");
    await cluster.kill(follower);
    await cluster.startNode(follower);
    const log: { url: string; lastEventId: string | null }[] = [];
    const others = cluster.nodes.map((n) => n.id).filter((id) => id !== follower);
    const watcher = createClient({ endpoints: [url(follower), ...others.map(url)], fetch: recordingFetch(log) });
    const iterator = watcher.watch({ prefix: "restart/" }, { fromVersion: start });
    const first = await iterator.next();
    await iterator.return?.(); // closes the stream
    expect(first.value).toMatchObject({ type: "put", key: "restart/a", text: "1", version: start });
    expect(log.map((entry) => new URL(entry.url).origin)).toEqual([url(follower), url(others[0] as number)]);
  });

  test("bad selectors and options are refused before any request", async () => {
    const kv = createClient({ endpoints: [url(await cluster.waitForLeader())] });
    for (const [selector, options] of [
      [{ key: "" }, {}],
      [{ prefix: "x/" }, { fromVersion: 0 }],
      [{ prefix: "x/" }, { fromVersion: 1.5 }],
      // As GET /watch refuses them (found in a black-box review: taken silently from untyped callers).
      [{ prefix: "a", key: "b" }, {}],
      [{}, {}],
      [{ prefix: "x/" }, { progress: "yes" }],
    ] as const) {
      const error = await kv.watch(selector as never, options as never).next().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(KvClientError);
      expect((error as KvClientError).code).toBe("bad_request");
    }
  });
});

describe("a start older than the history", () => {
  let dir: string;
  let cluster: ServerCluster;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kv-client-watch-compacted-"));
    cluster = createServerCluster({ size: 1, baseDir: dir, config: () => ({ watch: { historyEntriesMax: 5 } }) });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("is a KvClientError `compacted` carrying the compactVersion", async () => {
    const kv = createClient({ endpoints: [cluster.node(1).httpUrl] });
    let last = 0;
    for (let i = 0; i < 20; i++) last = (await kv.put(`old/${i}`, "x")).version;
    const error = await kv.watch({ prefix: "old/" }, { fromVersion: 1 }).next().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KvClientError);
    expect((error as KvClientError).code).toBe("compacted");
    expect((error as KvClientError).status).toBe(410);
    const compactVersion = (error as KvClientError).details.compactVersion as number;
    expect(compactVersion).toBeGreaterThan(1);
    expect(compactVersion).toBeLessThanOrEqual(last);
    // From there the watch works.
    const iterator = kv.watch({ prefix: "old/" }, { fromVersion: compactVersion });
    const first = await iterator.next();
    await iterator.return?.(); // closes the stream
    expect(first.value?.version).toBe(compactVersion);
  });
});

describe("against a scripted stream", () => {
  test("a resume in the middle of one version's changes neither skips nor repeats any of them", async () => {
    const requests: { url: string; lastEventId: string | null }[] = [];
    const sse = (events: string[], end: "close" | "error") => {
      const text = events.join("") + (end === "error" ? 'event: error\ndata: {"error":"slow_watcher"}\n\n' : "");
      return new Response(text, { status: 200, headers: { "content-type": "text/event-stream" } });
    };
    // As the node frames them: `id:` only on a version's last change (docs/api.md).
    const put = (key: string, version: number, last = true) => `${last ? `id: ${version}\n` : ""}event: put\ndata: ${JSON.stringify({ key, value: key, version })}\n\n`;
    const answers = [
      // Version 5 holds three changes; the first stream ends after two of them.
      () => sse([`id: 4\nevent: progress\ndata: {"version":4}\n\n`, put("p/a", 5, false), put("p/b", 5, false)], "error"),
      () => sse([put("p/a", 5, false), put("p/b", 5, false), put("p/c", 5), put("p/d", 6)], "close"),
    ];
    const fake = (async (input: string | URL | Request, init?: RequestInit) => {
      requests.push({ url: String(input), lastEventId: new Headers(init?.headers).get("last-event-id") });
      const answer = answers[requests.length - 1];
      return answer === undefined ? new Promise<Response>(() => {}) : answer();
    }) as typeof fetch;
    const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
    const stop = new AbortController();
    const seen: string[] = [];
    for await (const event of kv.watch({ prefix: "p/" }, { signal: stop.signal })) {
      if (event.type === "put") seen.push(`${event.key}@${event.version}`);
      if (seen.length === 4) stop.abort();
    }
    expect(seen).toEqual(["p/a@5", "p/b@5", "p/c@5", "p/d@6"]);
    expect(requests.map((r) => r.lastEventId)).toEqual([null, "4"]);
    expect(requests[1]?.url.startsWith("http://127.0.0.1:2/watch?")).toBe(true);
  });
});

describe("a resume after a version's last change (found in a black-box review: a restarted node answered 410 to a watch that lost nothing)", () => {
  test("starts after that version (its id: line says it is complete), not one before it", async () => {
    const requests: (string | null)[] = [];
    const put = (key: string, version: number) => `id: ${version}\nevent: put\ndata: ${JSON.stringify({ key, value: key, version })}\n\n`;
    const answers = [
      () => new Response(put("s/3", 129), { status: 200, headers: { "content-type": "text/event-stream" } }),
      // A node whose history starts at 130 (restarted just after 129): only a start after 129 is served.
      (lastEventId: string | null) =>
        lastEventId === "129"
          ? new Response(put("s/4", 130), { status: 200, headers: { "content-type": "text/event-stream" } })
          : Response.json({ error: "compacted", message: "changes at or below version 129 are no longer kept", compactVersion: 130 }, { status: 410 }),
    ];
    const fake = (async (_input: string | URL | Request, init?: RequestInit) => {
      const lastEventId = new Headers(init?.headers).get("last-event-id");
      requests.push(lastEventId);
      const answer = answers[Math.min(requests.length - 1, answers.length - 1)] as (lastEventId: string | null) => Response;
      return answer(lastEventId);
    }) as typeof fetch;
    const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: fake });
    const stop = new AbortController();
    const seen: string[] = [];
    for await (const event of kv.watch({ prefix: "s/" }, { signal: stop.signal })) {
      if (event.type === "put") seen.push(`${event.key}@${event.version}`);
      if (seen.length === 2) stop.abort();
    }
    expect(seen).toEqual(["s/3@129", "s/4@130"]);
    expect(requests).toEqual([null, "129"]);
  });
});

describe("a watch aborted by its caller (found in review)", () => {
  const put = (key: string, version: number) => `id: ${version}\nevent: put\ndata: ${JSON.stringify({ key, value: key, version })}\n\n`;

  test("gives nothing after the abort, though the events after it came in the same chunk", async () => {
    // One transaction's four changes, in one chunk; the stream then stays open until aborted.
    const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: openStream(["p/a", "p/b", "p/c", "p/d"].map((key) => put(key, 5)).join("")) });
    const stop = new AbortController();
    const seen: string[] = [];
    for await (const event of kv.watch({ prefix: "p/" }, { signal: stop.signal })) {
      if (event.type === "put") seen.push(event.key);
      stop.abort();
    }
    expect(seen).toEqual(["p/a"]);
  });

  test("ends quietly whatever the abort's reason, a KvClientError too (a lock's lost signal)", async () => {
    const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: openStream(put("p/a", 5)) });
    const stop = new AbortController();
    const seen: string[] = [];
    const ended = (async () => {
      for await (const event of kv.watch({ prefix: "p/" }, { signal: stop.signal })) {
        if (event.type === "put") seen.push(event.key);
        stop.abort(new KvClientError("lease_expired", 0, "the holder's lease may have run out"));
      }
    })();
    expect(await ended.then(() => "ended", (error: unknown) => error)).toBe("ended");
    expect(seen).toEqual(["p/a"]);
  });
});

describe("against nodes that answer 200 and end at once", () => {
  test("a stream that ends with an error before any event is not served: the watch backs off and gives up after reconnectTimeoutMs", async () => {
    let requests = 0;
    // A node shutting down: 200, then `event: error` unavailable, then the end.
    const fake = (async () => {
      requests++;
      return new Response('event: error\ndata: {"error":"unavailable"}\n\n', { status: 200, headers: { "content-type": "text/event-stream" } });
    }) as unknown as typeof fetch;
    const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
    const { error, aborted } = await endOfSilentWatch(kv, { prefix: "p/" }, { reconnectTimeoutMs: 300 });
    expect(aborted).toBe(false);
    expect(error instanceof KvClientError && error.code).toBe("unreachable");
    // Backed off between rounds of endpoints rather than spinning.
    expect(requests).toBeLessThan(50);
  });
});

describe("against nodes that know no leader", () => {
  test("nodes answering 503 no_leader (the cluster lost its majority) are no unreachable cluster: the watch waits past reconnectTimeoutMs, and goes on once a node serves it (a code review: it gave up with unreachable)", async () => {
    let requests = 0;
    // No leader for the first 12 requests (past reconnectTimeoutMs at the backoff's pace), then a stream with a change.
    const fake = (async () => {
      requests++;
      if (requests <= 12) return Response.json({ error: "no_leader", message: "this node has known no leader for 700 ms" }, { status: 503, headers: { "retry-after": "1" } });
      return new Response('event: progress\ndata: {"version":7}\n\nevent: put\nid: 8\ndata: {"key":"p/a","version":8,"value":"eA=="}\n\n', { status: 200, headers: { "content-type": "text/event-stream" } });
    }) as unknown as typeof fetch;
    const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
    const stop = new AbortController();
    const guard = setTimeout(() => stop.abort(), 20_000);
    const got: WatchEvent[] = [];
    try {
      for await (const event of kv.watch({ prefix: "p/" }, { reconnectTimeoutMs: 300, signal: stop.signal })) {
        got.push(event);
        break;
      }
    } finally {
      clearTimeout(guard);
    }
    expect(stop.signal.aborted).toBe(false);
    expect(got.map((event) => [event.type, event.version])).toEqual([["put", 8]]);
    expect(requests).toBe(13);
  });
});

describe("against a silent stream", () => {
  test("a stream that goes silent (a paused node) is resumed elsewhere after idleTimeoutMs; progress is yielded when asked", async () => {
    const requests: { url: string; lastEventId: string | null }[] = [];
    const encoder = new TextEncoder();
    const fake = (async (input: string | URL | Request, init?: RequestInit) => {
      requests.push({ url: String(input), lastEventId: new Headers(init?.headers).get("last-event-id") });
      if (requests.length === 1) {
        // One progress event, then nothing ever again: the connection stays open, as to a paused node.
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(encoder.encode(`id: 7\nevent: progress\ndata: {"version":7}\n\n`));
            init?.signal?.addEventListener("abort", () => controller.error(new Error("aborted")));
          },
        });
        return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
      }
      return new Response(`id: 8\nevent: delete\ndata: {"key":"s/a","version":8,"reason":"lease_expired"}\n\n`, { status: 200 });
    }) as typeof fetch;
    const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"], fetch: fake });
    const stop = new AbortController();
    const seen: WatchEvent[] = [];
    for await (const event of kv.watch({ key: "s/a" }, { signal: stop.signal, progress: true, idleTimeoutMs: 200 })) {
      seen.push(event);
      if (event.type === "delete") stop.abort();
    }
    expect(seen).toEqual([
      { type: "progress", version: 7 },
      { type: "delete", key: "s/a", version: 8, reason: "lease_expired" },
    ]);
    expect(requests.map((r) => [new URL(r.url).port, r.lastEventId])).toEqual([
      ["1", null],
      ["2", "7"],
    ]);
  });
});

describe("an event as large as a value can make it (found in a black-box review)", () => {
  /** A fetch answering every watch with a progress event and then `event`, the stream then open until aborted. */
  const progressThen = (event: string, requests: { count: number }) => openStream(`event: progress\ndata: {"version":22}\n\n${event}`, requests);

  test("a 1 MiB value of control characters (JSON escapes each in six: a 6 MB line) is delivered", async () => {
    const value = "\u0000".repeat(1 << 20);
    const requests = { count: 0 };
    const kv = createClient({
      endpoints: ["http://127.0.0.1:1"],
      fetch: progressThen(`id: 23\nevent: put\ndata: ${JSON.stringify({ key: "sz/big", value, version: 23 })}\n\n`, requests),
    });
    const stop = new AbortController();
    const guard = setTimeout(() => stop.abort(), 10_000); // bounds a watch that would loop
    let got: WatchEvent | undefined;
    try {
      for await (const event of kv.watch({ key: "sz/big" }, { fromVersion: 23, signal: stop.signal })) {
        got = event;
        break;
      }
    } finally {
      clearTimeout(guard);
    }
    expect(got?.type === "put" && got.bytes.byteLength).toBe(1 << 20);
    expect(requests.count).toBe(1);
  });

  test("an event past what the client reads at all is a too_large error, not a reconnect after each progress event forever", async () => {
    const requests = { count: 0 };
    const kv = createClient({ endpoints: ["http://127.0.0.1:1"], fetch: progressThen(`data: ${"x".repeat(watchEventCharsMax + 1)}`, requests) });
    const { error, aborted } = await endOfSilentWatch(kv, { key: "sz/big" }, { reconnectTimeoutMs: 60_000 });
    expect(aborted).toBe(false);
    expect(error instanceof KvClientError && error.code).toBe("too_large");
    expect(requests.count).toBe(1);
  });
});

/**
 * How a watch from version 10 ends when every endpoint answers 410 but port 2, which refuses its
 * first `port2DownFor` connections: its error, and the ports asked, in order.
 */
async function watchEndWithPort2Down(port2DownFor: number): Promise<{ error: unknown; asked: string[] }> {
  const asked: string[] = [];
  let downFor = port2DownFor;
  const fake = (async (input: string | URL | Request) => {
    const port = new URL(String(input)).port;
    asked.push(port);
    if (port === "2" && downFor-- > 0) throw Object.assign(new Error("Unable to connect"), { code: "ECONNREFUSED" });
    return Response.json({ error: "compacted", message: "changes at or below version 129 are no longer kept", compactVersion: 130 }, { status: 410 });
  }) as unknown as typeof fetch;
  const kv = createClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"], fetch: fake });
  const error = await (async () => {
    for await (const _ of kv.watch({ prefix: "p/" }, { fromVersion: 10, reconnectTimeoutMs: 10_000 })) {
      // nothing is delivered
    }
  })().catch((e: unknown) => e);
  return { error, asked };
}

test("`compacted` only once every endpoint answered 410: one that was down for a moment is asked again first (found in review)", async () => {
  const { error, asked } = await watchEndWithPort2Down(2);
  expect((error as KvClientError).code).toBe("compacted");
  // Said of every endpoint asked, not of "this node" (found in a black-box walkthrough: kv watch printed the node's words).
  expect((error as KvClientError).message).toBe("changes at or below version 129 are kept on none of the 3 endpoints that answered (start from version 130 or later; re-read and watch again)");
  expect((error as KvClientError).details.compactVersion).toBe(130);
  // Node 2 answered (410) before the watch gave up.
  expect(asked.filter((port) => port === "2").length).toBe(3);
  expect(asked.at(-1)).toBe("2");
});

test("an endpoint that never answers does not keep a watch from `compacted` once the others said 410 through two passes", async () => {
  const { error } = await watchEndWithPort2Down(Number.POSITIVE_INFINITY);
  expect((error as KvClientError).code).toBe("compacted");
});
