// Proves GET /snapshot (src/http/snapshot-route.ts) streams a whole, verifiable backup of what the node's image yields, reads the image only as fast as the client takes it, always closes the image (at the end, or when the client goes away), and bounds the streams open at once.
import { expect, test } from "bun:test";
import type { KvRow } from "../src/kv/apply-plan.ts";
import { verifyBackup } from "../src/kv/backup-format.ts";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { SNAPSHOT_STREAMS_MAX } from "../src/http/snapshot-route.ts";
import { KvError } from "../src/lib/kv-error.ts";
import type { SnapshotImage } from "../src/node/api.ts";

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
