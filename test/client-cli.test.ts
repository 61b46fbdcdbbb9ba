// Proves the client commands of the built executable against a real cluster: put/get/del/status/members
// follow redirects, skip dead endpoints, print JSON on request, put on a lease, and exit 0 ok, 1 not found, 2 usage or refused (an unknown lease), 3 unavailable.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { createClient } from "../src/client/index.ts";
import { kvCommand, runKvCommand } from "./helpers/kv-binary.ts";

let cluster: ChaosCluster;
let baseDir: string;
let endpoints: string;

beforeAll(async () => {
  baseDir = mkdtempSync(join(tmpdir(), "kv-client-test-"));
  cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir });
  await cluster.start();
  await cluster.waitForLeader();
  endpoints = cluster.nodes.map((n) => n.httpUrl).join(",");
});

afterAll(async () => {
  await cluster?.stop();
  rmSync(baseDir, { recursive: true, force: true });
});

const kv = runKvCommand;

test("put, get and del through any endpoint: redirects are followed; exit 1 when absent", async () => {
  const leader = await cluster.waitForLeader();
  const follower = cluster.nodes.find((n) => n.id !== leader)!;
  // Only a follower's URL first in the list: the write is redirected to the leader.
  const list = [follower.httpUrl, ...cluster.nodes.filter((n) => n !== follower).map((n) => n.httpUrl)].join(",");
  const put = await kv(["put", "greeting", "hello", "--endpoints", list]);
  expect(put.code).toBe(0);
  expect(put.out).toMatch(/^OK greeting version \d+\n$/);
  const get = await kv(["get", "greeting", "--endpoints", list]);
  expect(get.code).toBe(0);
  expect(get.out).toBe("hello");
  const json = await kv(["get", "greeting", "--endpoints", list, "--json"]);
  expect(JSON.parse(json.out)).toMatchObject({ key: "greeting", value: "hello" });
  expect((await kv(["del", "greeting", "--endpoints", list])).code).toBe(0);
  const gone = await kv(["get", "greeting", "--endpoints", list]);
  expect(gone.code).toBe(1);
  expect(gone.err).toContain("not_found");
  expect((await kv(["del", "greeting", "--endpoints", list])).code).toBe(1);
});

test("put - reads the value from standard input, bytes intact", async () => {
  expect((await kv(["put", "from-stdin", "-", "--endpoints", endpoints], "line one\nline two\n")).code).toBe(0);
  expect((await kv(["get", "from-stdin", "--endpoints", endpoints])).out).toBe("line one\nline two\n");
});

test("a dead endpoint first in the list is skipped", async () => {
  const dead = "http://127.0.0.1:1"; // nothing listens on port 1
  const result = await kv(["put", "skip", "v", "--endpoints", `${dead},${endpoints}`]);
  expect(result.code).toBe(0);
});

test("status and members describe the cluster; --json is machine-readable", async () => {
  const status = await kv(["status", "--endpoints", endpoints, "--json"]);
  expect(status.code).toBe(0);
  const parsed = JSON.parse(status.out) as { status: { role: string } }[];
  expect(parsed.filter((s) => s.status.role === "leader")).toHaveLength(1);
  const members = await kv(["members", "--endpoints", endpoints, "--json"]);
  expect((JSON.parse(members.out) as { id: number }[]).map((m) => m.id).sort()).toEqual([1, 2, 3]);
  const text = await kv(["members", "--endpoints", endpoints]);
  expect(text.out).toContain("leader");
});

test("exit 3 when no endpoint answers; exit 2 on a usage error", async () => {
  const down = await kv(["get", "k", "--endpoints", "http://127.0.0.1:1", "--timeout-ms", "300"]);
  expect(down.code).toBe(3);
  expect(down.err).toContain("no endpoint could serve the request");
  const usage = await kv(["put", "--endpoints", endpoints]);
  expect(usage.code).toBe(2);
  const badUrl = await kv(["get", "k", "--endpoints", "ftp://x"]);
  expect(badUrl.code).toBe(2);
});

test("kv put --lease ID attaches the key to the lease; an unknown lease exits 2 saying the lease does not exist, and writes nothing", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const { id } = await client.leases.grant(60_000);
  const put = await kv(["put", "leased", "v", "--lease", String(id), "--endpoints", endpoints]);
  expect(put.code).toBe(0);
  expect((await client.leases.get(id)).keys).toEqual(["leased"]);
  // The id as the HTTP API answers it, a decimal string, is taken too (before: bad_request "got <id>").
  expect((await client.leases.get(String(id))).id).toBe(id);
  await expect(client.leases.get("07")).rejects.toMatchObject({ code: "bad_request", message: expect.stringContaining('got "07"') });
  await client.leases.revoke(id);
  // The revoked lease (and one never granted) is refused: exit 2 as any refused request, not 1
  // ("not found", which would read as the key's), with the server's lease_not_found.
  for (const unknown of [id, 9_007_199_254_740_000]) {
    const refused = await kv(["put", "unleased", "v", "--lease", String(unknown), "--endpoints", endpoints]);
    expect(refused.code).toBe(2);
    expect(refused.err).toContain("lease_not_found");
    expect(refused.err).toContain(`lease ${unknown} does not exist`);
  }
  expect(await client.get("unleased")).toBeNull();
  const usage = await kv(["put", "k", "v", "--lease", "soon", "--endpoints", endpoints]);
  expect(usage.code).toBe(2);
  expect(usage.err).toContain("--lease");
});

test("kv list pages through every key under a prefix, in order, linearizably", async () => {
  // Written through the library (26 `kv put` processes took most of the test's 5 s under load): `kv list` is what is tested.
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  for (let i = 0; i < 25; i++) await client.put(`list/${String(i).padStart(2, "0")}`, `v${i}`);
  await client.put("listless", "x");
  const text = await kv(["list", "list/", "--endpoints", endpoints]);
  expect(text.code).toBe(0);
  const lines = text.out.trim().split("\n");
  expect(lines).toHaveLength(25);
  expect(lines[0]).toBe("list/00\tv0");
  expect(lines[24]).toBe("list/24\tv24");
  const json = await kv(["list", "list/", "--limit", "7", "--json", "--endpoints", endpoints]);
  expect((JSON.parse(json.out) as { key: string }[]).map((i) => i.key)).toEqual(Array.from({ length: 7 }, (_, i) => `list/0${i}`));
});

test("kv leader transfer --to N hands leadership over through whichever endpoint answers", async () => {
  const leader = await cluster.waitForLeader();
  const target = cluster.nodes.find((n) => n.id !== leader)!.id;
  const result = await kv(["leader", "transfer", "--to", String(target), "--endpoints", endpoints, "--json"]);
  expect(result.code).toBe(0);
  expect(JSON.parse(result.out)).toMatchObject({ leaderId: target, previousLeaderId: leader });
  expect(await cluster.waitForLeader()).toBe(target);
});

test("status: endpoints that answer but refuse (401 without the token) are refused, exit 2, not unreachable (exit 3)", async () => {
  const refusing = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => Response.json({ error: "unauthenticated", message: "this node requires a bearer token" }, { status: 401 }),
  });
  try {
    const result = await kv(["status", "--endpoints", `http://127.0.0.1:${refusing.port}`]);
    expect(result.code).toBe(2);
    expect(result.out).toContain("refused (HTTP 401: this node requires a bearer token)");
    expect(result.out).not.toContain("unreachable");
    // A dead endpoint beside it is still unreachable; the refusal decides the exit.
    const mixed = await kv(["status", "--endpoints", `http://127.0.0.1:1,http://127.0.0.1:${refusing.port}`]);
    expect(mixed.code).toBe(2);
    expect(mixed.out).toContain("unreachable");
    expect((await kv(["status", "--endpoints", "http://127.0.0.1:1"])).code).toBe(3);
  } finally {
    refusing.stop(true);
  }
});
