// Proves `kv txn` of the built executable against three real nodes: it reads the transaction from a file or standard input, reaches the leader through a follower, prints the JSON answer, and exits 0 when the comparisons held, 1 when the failure branch ran, 2 for a refused request (an unknown lease among them) or a usage error; a put on a lease, sent by `kv txn` or the client library's `txn`, attaches its key.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { createClient } from "../src/client/index.ts";
import { kvCommand, runKvCommand } from "./helpers/kv-binary.ts";
import { txnStandIn } from "./helpers/txn-stand-in.ts";

let cluster: ChaosCluster;
let baseDir: string;
let endpoints: string;

beforeAll(async () => {
  baseDir = mkdtempSync(join(tmpdir(), "kv-txn-cli-test-"));
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

test("kv txn FILE through a follower: exit 0 and the answer when the comparisons hold, exit 1 when the failure branch ran", async () => {
  const leader = await cluster.waitForLeader();
  const follower = cluster.nodes.find((n) => n.id !== leader)!;
  const list = [follower.httpUrl, ...cluster.nodes.filter((n) => n !== follower).map((n) => n.httpUrl)].join(",");
  const file = join(baseDir, "create.json");
  writeFileSync(
    file,
    JSON.stringify({
      compare: [{ key: "cfg/lock", exists: false }],
      success: [{ put: { key: "cfg/lock", value: "me" } }, { put: { key: "cfg/n", value: "1" } }, { get: { key: "cfg/n" } }],
      failure: [{ get: { key: "cfg/lock" } }],
    }),
  );
  const first = await kv(["txn", file, "--endpoints", list]);
  expect([first.code, first.err]).toEqual([0, ""]);
  const answer = JSON.parse(first.out) as { succeeded: boolean; version: number; results: unknown[] };
  expect(answer).toEqual({
    succeeded: true,
    version: answer.version,
    results: [
      { put: { key: "cfg/lock", version: answer.version } },
      { put: { key: "cfg/n", version: answer.version } },
      { get: { key: "cfg/n", found: true, value: "1", version: answer.version } },
    ],
  });
  expect((await kv(["get", "cfg/lock", "--endpoints", endpoints])).out).toBe("me");
  // The same file again: the lock exists now, so the failure branch runs and the exit code says so.
  const second = await kv(["txn", file, "--endpoints", list]);
  expect(second.code).toBe(1);
  expect(JSON.parse(second.out)).toMatchObject({ succeeded: false, results: [{ get: { key: "cfg/lock", found: true, value: "me", version: answer.version } }] });
  // The server's metrics count transactions as their own op, and time their route.
  const metrics = await Promise.all(cluster.nodes.map(async (n) => (await fetch(`${n.httpUrl}/metrics`)).text()));
  const committed = metrics.map((text) => Number(/kv_proposals_committed_total\{op="txn"\} (\d+)/.exec(text)?.[1] ?? 0));
  expect(committed.reduce((sum, count) => sum + count, 0)).toBe(2);
  expect(metrics.some((text) => text.includes('route="/txn"'))).toBe(true);
});

test("kv txn - and kv txn with no FILE read standard input", async () => {
  const body = JSON.stringify({ success: [{ put: { key: "stdin/a", value: { base64: "/wA=" } } }, { get: { key: "stdin/a" } }] });
  for (const args of [["txn", "-"], ["txn"]]) {
    const result = await kv([...args, "--endpoints", endpoints], body);
    expect(result.code).toBe(0);
    expect((JSON.parse(result.out) as { results: unknown[] }).results[1]).toMatchObject({ get: { key: "stdin/a", found: true, value: { base64: "/wA=" } } });
  }
});

test("a refused transaction or a usage error exits 2 with the reason", async () => {
  const bad = await kv(["txn", "-", "--endpoints", endpoints], "{not json");
  expect(bad.code).toBe(2);
  expect(bad.err).toContain("bad_request");
  const lease = await kv(["txn", "--endpoints", endpoints], JSON.stringify({ success: [{ put: { key: "a", value: "1", lease: "987654" } }] }));
  expect(lease.code).toBe(2);
  expect(lease.err).toContain("lease_not_found");
  const missing = await kv(["txn", join(baseDir, "no-such.json"), "--endpoints", endpoints]);
  expect(missing.code).toBe(2);
  expect(missing.err).toContain("no such file");
  expect((await kv(["get", "a", "--endpoints", endpoints])).code).toBe(1);
});

test("a put on a lease in kv txn or the client's txn attaches its key: the lease lists it, and revoking it deletes the key", async () => {
  const client = createClient({ endpoints: endpoints.split(","), timeoutMs: 10_000 });
  const lease = await client.leases.grant(60_000);
  const viaCli = await kv(["txn", "--endpoints", endpoints], JSON.stringify({ success: [{ put: { key: "svc/cli", value: "1", lease: String(lease.id) } }] }));
  expect([viaCli.code, viaCli.err]).toEqual([0, ""]);
  const viaClient = await client.txn({ compare: [{ key: "svc/lib", exists: false }], success: [{ put: { key: "svc/lib", value: "2", lease: lease.id } }] });
  expect(viaClient.succeeded).toBe(true);
  expect((await client.leases.get(lease.id)).keys).toEqual(["svc/cli", "svc/lib"]);
  expect((await client.leases.revoke(lease.id)).deletedKeys).toBe(2);
  expect(await client.get("svc/lib")).toBeNull();
});

test("kv txn sends a transaction that only reads without an Idempotency-Key, and one that may write with one (found in review: the README said so, the CLI did not)", async () => {
  const server = txnStandIn({ succeeded: true, version: 3, results: [] });
  const keys = server.keys;
  try {
    const endpoint = `--endpoints=${server.url}`;
    const reads = JSON.stringify({ compare: [{ key: "a", exists: true }], success: [{ get: { key: "a" } }], failure: [{ get: { key: "b" } }] });
    expect((await kv(["txn", endpoint], reads)).code).toBe(0);
    const writes = JSON.stringify({ success: [{ get: { key: "a" } }], failure: [{ delete: { key: "a" } }] });
    expect((await kv(["txn", endpoint], writes)).code).toBe(0);
    expect(keys[0]).toBeNull();
    expect(keys[1]).toMatch(/^kv-txn-[0-9a-f-]{36}$/);
  } finally {
    server.stop();
  }
});
