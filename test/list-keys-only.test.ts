// Proves keys-only listings (GET /kv?keysOnly=true, KvClient.listKeys, kv list --keys-only): items are {key, version} with no value read or sent, so a page is bounded by its count and not by values' bytes; every storage answers them alike; a bad keysOnly is a 400.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "../src/client/index.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import type { KvStorage } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";
import { runKvCommand } from "./helpers/kv-binary.ts";

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

describe.each([
  ["sqlite", (): KvStorage => openSqliteStorage(tempDir("kv-keys-only-"), { voters: [1] })],
  ["memory", (): KvStorage => createMemoryKvStorage({ voters: [1] })],
] as const)("%s storage", (_name, open) => {
  test("a keys-only listing gives each key and version with an empty value, and counts no value toward its bytes", async () => {
    const storage = open();
    try {
      const big = new Uint8Array(1 << 20).fill(7);
      const entries: Entry[] = ["b/1", "b/2", "b/3", "c"].map((key, i) => ({ index: i + 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key, value: big }) }));
      storage.save({ term: 1, vote: 1, commit: entries.length }, entries, true);
      await storage.applyEntries(entries);
      const keys = storage.list("b/", undefined, 10, 1 << 20, true);
      expect(keys.map((item) => [item.key, item.version, item.value.byteLength])).toEqual([
        ["b/1", 1, 0],
        ["b/2", 2, 0],
        ["b/3", 3, 0],
      ]);
      // With values, the same bound stops after the first item.
      expect(storage.list("b/", undefined, 10, 1 << 20).map((item) => item.key)).toEqual(["b/1"]);
    } finally {
      storage.close();
    }
  });
});

describe("through a node", () => {
  let dir: string;
  let cluster: ServerCluster;
  beforeAll(async () => {
    dir = tempDir("kv-keys-only-node-");
    cluster = createServerCluster({ size: 1, baseDir: dir });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.stop();
  });

  test("GET /kv?keysOnly=true answers {key, version} items in one page where values would take several; the client's listKeys and kv list --keys-only ask for it; a bad keysOnly is a 400", async () => {
    const url = cluster.node(1).httpUrl;
    const kv = createClient({ endpoints: [url] });
    const big = new Uint8Array(1 << 20).fill(1);
    const versions: number[] = [];
    for (let i = 0; i < 6; i++) versions.push((await kv.put(`big/${i}`, big)).version);
    const keysOnly = (await (await fetch(`${url}/kv?prefix=big/&keysOnly=true`)).json()) as { items: unknown[]; more: boolean };
    expect(keysOnly).toEqual({ items: versions.map((version, i) => ({ key: `big/${i}`, version })), more: false });
    const withValues = (await (await fetch(`${url}/kv?prefix=big/`)).json()) as { items: unknown[]; more: boolean };
    expect(withValues.more).toBe(true);
    expect(withValues.items.length).toBeLessThan(6);
    const pages = [];
    for await (const page of kv.listKeys("big/", { pageSize: 4 })) pages.push(page.items);
    expect(pages).toEqual([versions.slice(0, 4).map((version, i) => ({ key: `big/${i}`, version })), versions.slice(4).map((version, i) => ({ key: `big/${i + 4}`, version }))]);
    const bad = await fetch(`${url}/kv?prefix=big/&keysOnly=yes`);
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toContain("keysOnly must be true or false");
    const cli = await runKvCommand(["list", "big/", "--keys-only", "--json", "--endpoints", url]);
    expect(cli.code).toBe(0);
    expect(JSON.parse(cli.out)).toEqual(versions.map((version, i) => ({ key: `big/${i}`, version })));
  });
});
