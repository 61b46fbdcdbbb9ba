// Proves GET /snapshot gives the event loop a turn between the batches it streams: a node's loop
// ticks, sends heartbeats and answers peers on that loop, and a backup read as fast as a client on
// the same machine takes it (curl) held it for the whole stream (found in a black-box review: every
// save from a leader holding 43 MB deposed it, and writes in flight ended with an unknown outcome).
import { afterAll, expect, test } from "bun:test";
import { Elysia } from "elysia";
import type { KvRow } from "../src/kv/apply-plan.ts";
import type { KvNodeApi, SnapshotImage } from "../src/node/api.ts";
import { createSnapshotRoute, SNAPSHOT_BATCH_BYTES } from "../src/http/snapshot-route.ts";

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
