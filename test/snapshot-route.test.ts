// Proves GET /snapshot (src/http/snapshot-route.ts) streams a whole, verifiable backup of what the node's image yields, reads the image only as fast as the client takes it, always closes the image (at the end, or when the client goes away), and bounds the streams open at once.
// And that it gives the event loop a turn between the batches it streams: a node's loop ticks, sends
// heartbeats and answers peers on that loop, and a backup read as fast as a client on the same
// machine takes it held it for the whole stream (found in a black-box review: every save from a
// leader holding 43 MB deposed it); a stream the storage breaks is logged by the node.
import { afterAll, expect, test } from "bun:test";
import { Elysia } from "elysia";
import type { KvRow } from "../src/kv/apply-plan.ts";
import { verifyBackup } from "../src/kv/backup-format.ts";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { createSnapshotRoute, SNAPSHOT_BATCH_BYTES, SNAPSHOT_STREAMS_MAX } from "../src/http/snapshot-route.ts";
import { KvError } from "../src/lib/kv-error.ts";
import type { KvNodeApi, SnapshotImage } from "../src/node/api.ts";

/** An image of `batches` batches of one row each, counting reads and closes. */
function fakeImage(batches: number) {
  const stats = { nextCalls: 0, closed: 0 };
  let served = 0;
  const image: SnapshotImage = {
    metadata: { index: 500, term: 4, voters: [1, 2, 3] },
    addresses: [{ id: 1, peerUrl: "http://127.0.0.1:5001" }],
    next() {
      stats.nextCalls++;
      if (served >= batches) return [];
      served++;
      return [{ key: `k-${String(served).padStart(4, "0")}`, value: new Uint8Array(1000).fill(served % 256), version: served, lease: 7 } as KvRow];
    },
    close() {
      stats.closed++;
    },
  };
  return { image, stats };
}

function appWith(openSnapshot: () => Promise<SnapshotImage>) {
  return createHttpApp(Object.assign(new MemoryKvNode(), { openSnapshot }));
}

test("streams a backup that verifies, with every row and every field, and closes the image at the end", async () => {
  const { image, stats } = fakeImage(100);
  const response = await appWith(async () => image).handle(new Request("http://localhost/snapshot"));
  expect(response.status).toBe(200);
  expect(response.headers.get("x-kv-snapshot-index")).toBe("500");
  const summary = await verifyBackup(response.body as ReadableStream<Uint8Array>);
  expect(summary.header).toMatchObject({ index: 500, term: 4, voters: [1, 2, 3], learners: [], addresses: [{ id: 1, peerUrl: "http://127.0.0.1:5001" }] });
  expect(summary.rowCount).toBe(100);
  expect(summary.versionMax).toBe(100);
  expect(stats.closed).toBe(1);
});

test("reads the image only as the client takes it, and closes it when the client goes away", async () => {
  const { image, stats } = fakeImage(100);
  const response = await appWith(async () => image).handle(new Request("http://localhost/snapshot"));
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  for (let i = 0; i < 3; i++) await reader.read();
  // The preamble and two batches asked for: the image was not read ahead of the client.
  expect(stats.nextCalls).toBeLessThanOrEqual(3);
  await reader.cancel();
  expect(stats.closed).toBe(1);
});

test(`at most ${SNAPSHOT_STREAMS_MAX} streams at once: 429 overloaded past it, and a slot frees when one ends`, async () => {
  const images = Array.from({ length: SNAPSHOT_STREAMS_MAX + 1 }, () => fakeImage(5));
  let opened = 0;
  const app = appWith(async () => (images[opened++] as ReturnType<typeof fakeImage>).image);
  const open = [];
  for (let i = 0; i < SNAPSHOT_STREAMS_MAX; i++) open.push(await app.handle(new Request("http://localhost/snapshot")));
  const refused = await app.handle(new Request("http://localhost/snapshot"));
  expect(refused.status).toBe(429);
  expect(((await refused.json()) as { error: string }).error).toBe("overloaded");
  await (open[0]?.body as ReadableStream<Uint8Array>).cancel();
  const accepted = await app.handle(new Request("http://localhost/snapshot"));
  expect(accepted.status).toBe(200);
  await verifyBackup(accepted.body as ReadableStream<Uint8Array>);
  await (open[1]?.body as ReadableStream<Uint8Array>).cancel();
  expect(images.map(({ stats }) => stats.closed)).toEqual(images.map(() => 1));
});

test("a node that cannot open an image answers its error as JSON, and the slot is not lost", async () => {
  let fail = true;
  const { image } = fakeImage(1);
  const app = appWith(async () => {
    if (fail) throw new KvError("no_leader", "no leader is known");
    return image;
  });
  for (let i = 0; i < SNAPSHOT_STREAMS_MAX + 1; i++) {
    const response = await app.handle(new Request("http://localhost/snapshot"));
    expect(response.status).toBe(503);
    expect(((await response.json()) as { error: string }).error).toBe("no_leader");
  }
  fail = false;
  expect((await app.handle(new Request("http://localhost/snapshot"))).status).toBe(200);
});

const servers: { stop(force?: boolean): void }[] = [];
afterAll(() => {
  for (const server of servers) server.stop(true);
});

test("each batch of a backup is read in a later turn of the event loop than the one before", async () => {
  const batches = 12;
  // The loop's turns, counted by a callback that schedules itself again each turn.
  let turns = 0;
  let counting = true;
  const count = () => {
    turns++;
    if (counting) setImmediate(count);
  };
  setImmediate(count);
  const turnAtBatch: number[] = [];
  let served = 0;
  const image: SnapshotImage = {
    metadata: { index: 7, term: 2, voters: [1] },
    addresses: [],
    next(): KvRow[] {
      if (served === batches) return [];
      turnAtBatch.push(turns);
      served++;
      return [{ key: `k${served}`, value: new Uint8Array(SNAPSHOT_BATCH_BYTES), version: served }];
    },
    close() {},
  };
  const node = { openSnapshot: async () => image, status: () => ({ id: 1 }) } as unknown as KvNodeApi;
  const app = new Elysia().use(createSnapshotRoute(node));
  const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: (request) => app.handle(request) });
  servers.push(server);
  // A client in its own process, taking bytes as fast as it can (as curl or kv snapshot save does).
  const script = "const r = await fetch(process.argv[1]); let n = 0; for await (const c of r.body) n += c.byteLength; console.log(`${r.status} ${n}`);";
  const curl = Bun.spawn([process.execPath, "-e", script, `http://127.0.0.1:${server.port}/snapshot`], { stdout: "pipe", stderr: "pipe" });
  try {
    const [text, code] = await Promise.all([new Response(curl.stdout).text(), curl.exited]);
    const out = text.trim();
    expect(code).toBe(0);
    expect(out.split(" ")[0]).toBe("200");
    expect(Number(out.split(" ")[1])).toBeGreaterThan(batches * SNAPSHOT_BATCH_BYTES);
  } finally {
    counting = false;
    if (curl.exitCode === null) curl.kill("SIGKILL");
  }
  expect(turnAtBatch).toHaveLength(batches);
  for (let i = 1; i < batches; i++) expect([i, turnAtBatch[i]! > turnAtBatch[i - 1]!]).toEqual([i, true]);
});

test("a backup stream the storage breaks midway is cut, and the node says why: the client cannot be told (found in a black-box review: only ECONNRESET)", async () => {
  let served = 0;
  const image: SnapshotImage = {
    metadata: { index: 9, term: 2, voters: [1] },
    addresses: [],
    next(): KvRow[] {
      served++;
      if (served === 2) throw new Error("the database disk image is malformed");
      return [{ key: `k${served}`, value: new Uint8Array(SNAPSHOT_BATCH_BYTES), version: 1 }];
    },
    close() {},
  };
  const logged: { event: string; fields: Record<string, unknown> }[] = [];
  const node = { openSnapshot: async () => image, status: () => ({ id: 1 }) } as unknown as KvNodeApi;
  const app = new Elysia().use(createSnapshotRoute(node, (event, fields) => logged.push({ event, fields })));
  const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: (request) => app.handle(request) });
  servers.push(server);
  const response = await fetch(`http://127.0.0.1:${server.port}/snapshot`);
  expect(response.status).toBe(200);
  await expect(response.arrayBuffer()).rejects.toThrow();
  expect(logged).toEqual([{ event: "snapshot stream failed", fields: expect.objectContaining({ error: "the database disk image is malformed", index: 9 }) }]);
});
