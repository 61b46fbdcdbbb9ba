// Proves the client commands of the built executable against a real cluster: put/get/del (by key and by prefix)/status/members
// follow redirects, skip dead endpoints, print JSON on request, put on a lease, and exit 0 ok, 1 not found, 2 usage or refused (an unknown lease), 3 unavailable.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { createTcpProxy } from "../src/chaos/tcp-proxy.ts";
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

test("kv del PREFIX --prefix deletes every key under it and says how many, exit 0 even when none were there; the single-key flags are usage errors", async () => {
  for (const key of ["sweep/a", "sweep/b", "sweep/c", "sweepx", "keep"]) expect((await kv(["put", key, "v", "--endpoints", endpoints])).code).toBe(0);
  const swept = await kv(["del", "sweep/", "--prefix", "--endpoints", endpoints]);
  expect(swept).toMatchObject({ code: 0, out: 'deleted 3 keys under "sweep/"\n' });
  const again = await kv(["del", "sweep/", "--prefix", "--endpoints", endpoints, "--json"]);
  expect(again.code).toBe(0);
  expect(JSON.parse(again.out)).toEqual({ prefix: "sweep/", deleted: 0, version: expect.any(Number) });
  const listed = await kv(["list", "sweep", "--keys-only", "--endpoints", endpoints]);
  expect(listed.out).toBe("sweepx\n");
  const misused = await kv(["del", "sweep/", "--prefix", "--if-version", "3", "--endpoints", endpoints]);
  expect(misused.code).toBe(2);
  expect(misused.err).toContain("--prefix takes neither");
});

test("kv del --prefix that fails midway says how many keys went before, and to run it again, not to resend under a key it refuses (found in a black-box review)", async () => {
  // A node that deletes a first batch, then times out on every later one.
  let calls = 0;
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    fetch() {
      calls++;
      if (calls === 1) return Response.json({ deleted: 1000, more: true, version: 5 });
      return Response.json({ error: "timeout", message: "not known to be committed in time" }, { status: 503 });
    },
  });
  try {
    const failed = await kv(["del", "p/", "--prefix", "--timeout-ms", "1500", "--endpoints", `http://127.0.0.1:${server.port}`]);
    expect(failed.code).toBe(3);
    expect(failed.err).toContain('1000 keys under "p/" deleted before this');
    expect(failed.err).toContain("run the command again to delete the rest");
    expect(failed.err).not.toContain("--idempotency-key");
    expect(failed.err).not.toContain("resend it with Idempotency-Key");
  } finally {
    server.stop(true);
  }
  // A refusal of the first batch is not passed by running again: it says only why.
  const refusing = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    fetch: () => Response.json({ error: "upgrade_required", message: "node 3 runs an older release", members: [3] }, { status: 409 }),
  });
  try {
    const refused = await kv(["del", "p/", "--prefix", "--endpoints", `http://127.0.0.1:${refusing.port}`]);
    expect(refused.code).toBe(2);
    expect(refused.err).toContain("upgrade_required: node 3 runs an older release");
    expect(refused.err).not.toContain("run the command again");
  } finally {
    refusing.stop(true);
  }
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
  const parsed = JSON.parse(status.out) as { status: { role: string; id: number } }[];
  expect(parsed.filter((s) => s.status.role === "leader")).toHaveLength(1);
  const members = await kv(["members", "--endpoints", endpoints, "--json"]);
  const listed = JSON.parse(members.out) as { id: number; leader: boolean }[];
  expect(listed.map((m) => m.id).sort()).toEqual([1, 2, 3]);
  // Each member says whether it leads, as the text's "leader" column does (the JSON had no leader).
  const leaders = listed.filter((m) => m.leader === true).map((m) => m.id);
  expect(leaders).toEqual([parsed.find((s) => s.status.role === "leader")!.status.id]);
  expect(listed.filter((m) => m.leader === false)).toHaveLength(2);
  const text = await kv(["members", "--endpoints", endpoints]);
  expect(text.out).toContain("leader");
});

test("the keys '.' and '..' are usage errors (exit 2), not an unreachable cluster (found in review: exit 3)", async () => {
  for (const args of [["get", ".."], ["put", ".", "x"], ["del", ".."]]) {
    const result = await kv([...args, "--endpoints", endpoints]);
    expect(result.code).toBe(2);
    expect(result.err).toContain("has no /kv/{key} path");
  }
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

test("kv put and kv del --if-version N are compare-and-sets: a mismatch exits 2 with version_mismatch and changes nothing", async () => {
  const created = await kv(["put", "cas", "one", "--if-version", "0", "--endpoints", endpoints, "--json"]);
  expect(created.code).toBe(0);
  const { version } = JSON.parse(created.out) as { version: number };
  const again = await kv(["put", "cas", "two", "--if-version", "0", "--endpoints", endpoints]);
  expect(again.code).toBe(2);
  expect(again.err).toContain("version_mismatch");
  expect((await kv(["get", "cas", "--endpoints", endpoints])).out).toBe("one");
  expect((await kv(["put", "cas", "two", "--if-version", String(version), "--endpoints", endpoints])).code).toBe(0);
  const stale = await kv(["del", "cas", "--if-version", String(version), "--endpoints", endpoints]);
  expect(stale.code).toBe(2);
  expect(stale.err).toContain("version_mismatch");
  const current = JSON.parse((await kv(["get", "cas", "--json", "--endpoints", endpoints])).out) as { version: number };
  expect((await kv(["del", "cas", "--if-version", String(current.version), "--endpoints", endpoints])).code).toBe(0);
  expect((await kv(["put", "cas", "x", "--if-version", "-1", "--endpoints", endpoints])).code).toBe(2);
});

test("kv lease grant, get, keepalive --once and revoke; get of a gone lease exits 1, revoke of one 2", async () => {
  const granted = await kv(["lease", "grant", "30s", "--endpoints", endpoints]);
  expect(granted.code).toBe(0);
  const [idText, ttlText] = granted.out.trim().split("\t");
  expect(ttlText).toBe("30000");
  const id = Number(idText);
  expect((await kv(["put", "leased/a", "v", "--lease", String(id), "--endpoints", endpoints])).code).toBe(0);
  const info = await kv(["lease", "get", String(id), "--endpoints", endpoints]);
  expect(info.code).toBe(0);
  expect(info.out).toMatch(new RegExp(`^lease ${id}\tttl 30000 ms\tremaining \\d+ ms\t1 key\nleased/a\n$`));
  const kept = await kv(["lease", "keepalive", String(id), "--once", "--json", "--endpoints", endpoints]);
  expect(JSON.parse(kept.out)).toEqual({ id, ttlMs: 30_000 });
  const revoked = await kv(["lease", "revoke", String(id), "--endpoints", endpoints]);
  expect(revoked.out).toMatch(new RegExp(`^revoked lease ${id}: 1 key deleted at version \\d+\n$`));
  expect((await kv(["get", "leased/a", "--endpoints", endpoints])).code).toBe(1);
  const gone = await kv(["lease", "get", String(id), "--endpoints", endpoints]);
  expect(gone.code).toBe(1);
  expect(gone.err).toContain("lease_not_found");
  expect((await kv(["lease", "revoke", String(id), "--endpoints", endpoints])).code).toBe(2);
  expect((await kv(["lease", "grant", "soon", "--endpoints", endpoints])).code).toBe(2);
});

test("kv lease list prints every lease (id, TTL, time left), as JSON lines with --json; the client pages with after", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const ours = [await client.leases.grant(40_000), await client.leases.grant(50_000)];
  const listed = await kv(["lease", "list", "--endpoints", endpoints]);
  expect(listed.code).toBe(0);
  const rows = listed.out.trim().split("\n").map((line) => line.split("\t"));
  for (const lease of ours) {
    const row = rows.find(([id]) => id === String(lease.id));
    expect(row?.[1]).toBe(String(lease.ttlMs));
    expect(Number(row?.[2])).toBeGreaterThan(0);
    expect(Number(row?.[2])).toBeLessThanOrEqual(lease.ttlMs);
  }
  const json = (await kv(["lease", "list", "--json", "--endpoints", endpoints])).out.trim().split("\n").map((line) => JSON.parse(line) as { id: number; ttlMs: number });
  expect(json.map((lease) => lease.id)).toEqual(rows.map(([id]) => Number(id)));
  expect(json.find((lease) => lease.id === ours[1]!.id)?.ttlMs).toBe(50_000);
  // A page of one at a time reaches the same leases, in the same order.
  const paged: number[] = [];
  let after: number | undefined;
  for (;;) {
    const page = await client.leases.list({ limit: 1, ...(after === undefined ? {} : { after }) });
    paged.push(...page.leases.map((lease) => lease.id));
    if (!page.more) break;
    after = page.leases[0]!.id;
  }
  expect(paged).toEqual(json.map((lease) => lease.id));
  for (const lease of ours) await client.leases.revoke(lease.id);
  const after2 = (await kv(["lease", "list", "--endpoints", endpoints])).out;
  for (const lease of ours) expect(after2).not.toContain(`${lease.id}\t`);
  expect((await kv(["lease", "list", "extra", "--endpoints", endpoints])).code).toBe(2);
});

test("kv lease keepalive keeps a lease alive until interrupted, then exits 0", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const lease = await client.leases.grant(2_000);
  await client.put("kept/a", "v", { lease: lease.id });
  const proc = Bun.spawn([...kvCommand(), "lease", "keepalive", String(lease.id), "--endpoints", endpoints], { stdout: "pipe", stderr: "pipe" });
  try {
    const reader = proc.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    expect(first).toBe(`${lease.id}\t${lease.ttlMs}\n`);
    // Two and a half TTLs on, the key is still there: only the keeper kept it.
    const info = await client.leases.get(lease.id);
    const startedMs = performance.now();
    while (performance.now() - startedMs < 2.5 * lease.ttlMs) {
      expect(await client.get("kept/a")).not.toBeNull();
      await Bun.sleep(100); // polling interval while time passes
    }
    expect(info.keys).toEqual(["kept/a"]);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill("SIGKILL");
    await client.leases.revoke(lease.id).catch(() => undefined);
  }
});

test("kv lease keepalive interrupted while no node answers exits 0 at once, not after the keepalive's retries (found in a black-box review: 30 s)", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const lease = await client.leases.grant(60_000);
  const leader = await cluster.waitForLeader();
  const proxy = createTcpProxy(Number(new URL(cluster.nodes.find((n) => n.id === leader)!.httpUrl).port));
  const proc = Bun.spawn([...kvCommand(), "lease", "keepalive", String(lease.id), "--timeout-ms", "60000", "--endpoints", `http://127.0.0.1:${proxy.port}`], { stdout: "pipe", stderr: "pipe" });
  try {
    const reader = proc.stdout.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe(`${lease.id}\t${lease.ttlMs}\n`);
    proxy.cut();
    proc.kill("SIGINT");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill("SIGKILL");
    proxy.close();
    await client.leases.revoke(lease.id).catch(() => undefined);
  }
}, 20_000);

test("kv watch prints each change from --from-version on, one line each, and exits 0 after --count; --json prints objects", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const { version: start } = await client.put("watched/a", "first");
  const lines = await kv(["watch", "watched/a", "--from-version", String(start), "--count", "1", "--endpoints", endpoints]);
  expect(lines.code).toBe(0);
  expect(lines.out).toBe(`put\twatched/a\t${start}\tfirst\n`);
  const { version: deleted } = await client.delete("watched/a");
  const json = await kv(["watch", "--prefix", "watched/", "--from-version", String(start), "--count", "2", "--json", "--endpoints", endpoints]);
  expect(json.code).toBe(0);
  expect(json.out.trim().split("\n").map((line) => JSON.parse(line))).toEqual([
    { type: "put", key: "watched/a", value: "first", version: start },
    { type: "delete", key: "watched/a", version: deleted, reason: "delete" },
  ]);
  for (const args of [["watch"], ["watch", "a", "--prefix", "b"], ["watch", "a", "--count", "0"]]) expect((await kv([...args, "--endpoints", endpoints])).code).toBe(2);
});

test("more arguments than a command takes are a usage error, before anything is sent (found in review: put stored the first word, del deleted the first key)", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  await client.put("two/a", "1");
  await client.put("two/b", "2");
  const put = await kv(["put", "two/a", "hello", "world", "--endpoints", endpoints]);
  expect(put.code).toBe(2);
  expect(put.err).toContain("'kv put' takes KEY [VALUE], got 3 arguments (quote a value that has spaces)");
  expect((await client.get("two/a"))?.text).toBe("1");
  const del = await kv(["del", "two/a", "two/b", "--endpoints", endpoints]);
  expect(del.code).toBe(2);
  expect(await client.get("two/a")).not.toBeNull();
  for (const args of [["get", "a", "b"], ["list", "a", "b"], ["lease", "revoke", "1", "2"], ["status", "x"]]) {
    const result = await kv([...args, "--endpoints", endpoints]);
    expect(result.code).toBe(2);
    expect(result.err).toContain("takes");
  }
  // A key after -- is still one argument: `kv put -- -dashed value` works.
  expect((await kv(["put", "--endpoints", endpoints, "--", "-dashed", "v"])).code).toBe(0);
  expect((await client.get("-dashed"))?.text).toBe("v");
});

test("kv watch ends when its reader goes away (exit 141, as under SIGPIPE), and output that cannot be written exits 4 with the reason (found in review)", async () => {
  const client = createClient({ endpoints, timeoutMs: 5_000 });
  const { version } = await client.put("piped/a", "one");
  const proc = Bun.spawn([...kvCommand(), "watch", "piped/a", "--from-version", String(version), "--endpoints", endpoints], { stdout: "pipe", stderr: "pipe" });
  try {
    const reader = proc.stdout.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe(`put\tpiped/a\t${version}\tone\n`);
    await reader.cancel(); // as `| head -1` exits after its line
    await client.put("piped/a", "two"); // the next line has no reader
    expect(await proc.exited).toBe(141);
  } finally {
    proc.kill("SIGKILL");
  }
  const full = Bun.spawn([...kvCommand(), "list", "piped/", "--endpoints", endpoints], { stdout: Bun.file("/dev/full"), stderr: "pipe" });
  try {
    expect(await full.exited).toBe(4);
    expect(await new Response(full.stderr).text()).toContain("kv: cannot write the output");
  } finally {
    full.kill("SIGKILL");
  }
});

test("kv lease grant wants a unit (etcdctl's 60 is seconds); bad arguments are named as arguments; kv watch --timeout-ms bounds how long it goes unserved", async () => {
  const bare = await kv(["lease", "grant", "60", "--endpoints", endpoints]);
  expect(bare.code).toBe(2);
  expect(bare.err).toContain("TTL needs a unit: 60s for 60 seconds, or 60ms");
  const badId = await kv(["lease", "get", "abc", "--endpoints", endpoints]);
  expect(badId.code).toBe(2);
  expect(badId.err).toContain("ID must be a lease id");
  const unserved = await kv(["watch", "k", "--timeout-ms", "300", "--endpoints", "http://127.0.0.1:1"]);
  expect(unserved.code).toBe(3);
  expect(unserved.err).toContain("no endpoint served the watch for 300 ms");
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
  expect(text.err).toBe("");
  const json = await kv(["list", "list/", "--limit", "7", "--json", "--endpoints", endpoints]);
  expect((JSON.parse(json.out) as { key: string }[]).map((i) => i.key)).toEqual(Array.from({ length: 7 }, (_, i) => `list/0${i}`));
  // A listing --limit cut says so apart from it (found in a review: it looked whole); one it did not cut says nothing.
  expect(json.err).toBe('kv: more keys under "list/" than --limit 7: listed the first 7\n');
  expect((await kv(["list", "list/", "--limit", "25", "--endpoints", endpoints])).err).toBe("");
  // A node says `more` of a page its 4 MiB bound ended too, with nothing after it: no notice for a
  // whole listing (found in a review: five values of about 1 MB were called cut).
  for (let i = 0; i < 5; i++) await client.put(`biglist/${i}`, new Uint8Array(1_000_000));
  const whole = await kv(["list", "biglist/", "--keys-only", "--endpoints", endpoints]);
  expect([whole.out.trim().split("\n").length, whole.err]).toEqual([5, ""]);
  // --keys-only: one key a line, as etcdctl get --prefix --keys-only; in JSON keys and versions.
  const keys = await kv(["list", "list/", "--keys-only", "--limit", "3", "--endpoints", endpoints]);
  expect(keys.out).toBe("list/00\nlist/01\nlist/02\n");
  const keysJson = JSON.parse((await kv(["list", "list/", "--keys-only", "--limit", "2", "--json", "--endpoints", endpoints])).out) as object[];
  expect(keysJson).toEqual([
    { key: "list/00", version: expect.any(Number) },
    { key: "list/01", version: expect.any(Number) },
  ]);
});

test("kv leader transfer --to N hands leadership over through whichever endpoint answers", async () => {
  const leader = await cluster.waitForLeader();
  const target = cluster.nodes.find((n) => n.id !== leader)!.id;
  const result = await kv(["leader", "transfer", "--to", String(target), "--endpoints", endpoints, "--json"]);
  expect(result.code).toBe(0);
  expect(JSON.parse(result.out)).toMatchObject({ leaderId: target, previousLeaderId: leader });
  expect(await cluster.waitForLeader()).toBe(target);
});

test("kv leader transfer answered with leaderId 0 says the leader stepped down and no new one was known yet (it printed 'moved to node 0': found in a black-box review)", async () => {
  const stub = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ leaderId: 0, previousLeaderId: 2 }) });
  try {
    const result = await kv(["leader", "transfer", "--to", "3", "--endpoints", `http://127.0.0.1:${stub.port}`]);
    expect(result.code).toBe(0);
    expect(result.out).toBe("node 2 stepped down; no new leader was known when it answered (an election was under way): see kv status\n");
  } finally {
    stub.stop(true);
  }
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
    // Beside one that answers, a refusing one is said as refused, not as silent (found in a review).
    const partly = await kv(["status", "--endpoints", `${endpoints},http://127.0.0.1:${refusing.port}`]);
    expect(partly.code).toBe(2);
    expect(partly.err).toContain(`1 of 4 refused the status: http://127.0.0.1:${refusing.port} (HTTP 401`);
    expect(partly.err).not.toContain("did not answer");
  } finally {
    refusing.stop(true);
  }
});

test("kv txn whose failure branch ran prints its whole answer before exiting 1, even to a reader that is not reading yet (found in review: 64 KiB of it, then exit)", async () => {
  const value = "v".repeat(1 << 20);
  const answer = JSON.stringify({ succeeded: false, version: 9, results: [{ get: { key: "big", found: true, value, version: 9 } }] });
  const fake = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(answer, { headers: { "content-type": "application/json" } }) });
  const dir = mkdtempSync(join(tmpdir(), "kv-txn-out-"));
  try {
    const body = join(dir, "txn.json");
    await Bun.write(body, '{"compare":[{"key":"x","exists":true}],"failure":[{"get":{"key":"big"}}]}');
    // A pipe whose reader starts a second late (Bun's own pipes read eagerly, so a shell's): a build
    // that exits without waiting for its output has exited by then, with the pipe's 64 KiB in it.
    const script = `"$0" txn "$1" --endpoints "$2" | (sleep 1; cat > "$3"); echo "\${PIPESTATUS[0]}"`;
    const run = Bun.spawn(["bash", "-c", script, ...kvCommand(), body, `http://127.0.0.1:${fake.port}`, join(dir, "out")], { stdout: "pipe", stderr: "pipe" });
    const status = (await new Response(run.stdout).text()).trim();
    await run.exited;
    const out = await Bun.file(join(dir, "out")).text();
    expect(status).toBe("1");
    expect(out.length).toBe(answer.length + 1);
    expect(JSON.parse(out).succeeded).toBe(false);
    // Output that cannot be written still exits 4 saying so, as without the wait (found in review: exit 1, silent).
    const full = Bun.spawn(["bash", "-c", `"$0" txn "$1" --endpoints "$2" > /dev/full`, ...kvCommand(), body, `http://127.0.0.1:${fake.port}`], { stdout: "pipe", stderr: "pipe" });
    const [fullErr, fullCode] = await Promise.all([new Response(full.stderr).text(), full.exited]);
    expect([fullCode, fullErr]).toEqual([4, expect.stringContaining("kv: cannot write the output")]);
  } finally {
    await fake.stop(true);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a node that stays overloaded (429) until --timeout-ms runs out exits 3, as other failures that pass by waiting (found in review: exit 2)", async () => {
  let asked = 0;
  const fake = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => {
      asked++;
      return Response.json({ error: "overloaded", message: "too many requests are waiting", retryAfterS: 1 }, { status: 429 });
    },
  });
  try {
    for (const args of [["put", "k", "v"], ["get", "k"]]) {
      const run = await kv([...args, "--endpoints", `http://127.0.0.1:${fake.port}`, "--timeout-ms", "300"]);
      expect(run.code).toBe(3);
      expect(run.err).toContain("overloaded");
    }
    expect(asked).toBeGreaterThan(1);
  } finally {
    await fake.stop(true);
  }
});

test("kv put, del and txn take --idempotency-key: a resend under the key gets the first answer, another write under it is refused; exit 3's message names the flag with the key it sent", async () => {
  const key = `cli-idem-${crypto.randomUUID()}`;
  const first = await kv(["put", "idem/a", "v1", "--idempotency-key", key, "--json", "--endpoints", endpoints]);
  expect(first.code).toBe(0);
  await kv(["put", "idem/a", "v2", "--endpoints", endpoints]);
  // The resend changes nothing: the first answer, and v2 stays.
  const again = await kv(["put", "idem/a", "v1", "--idempotency-key", key, "--json", "--endpoints", endpoints]);
  expect(again.code).toBe(0);
  expect(JSON.parse(again.out)).toEqual(JSON.parse(first.out));
  expect((await kv(["get", "idem/a", "--endpoints", endpoints])).out).toBe("v2");
  const reused = await kv(["del", "idem/a", "--idempotency-key", key, "--endpoints", endpoints]);
  expect(reused.code).toBe(2);
  expect(reused.err).toContain("idempotency_key_reused");
  const txnKey = `cli-idem-${crypto.randomUUID()}`;
  const txn = '{"success":[{"put":{"key":"idem/t","value":"x"}}]}';
  const txnFirst = await kv(["txn", "-", "--idempotency-key", txnKey, "--endpoints", endpoints], txn);
  expect(txnFirst.code).toBe(0);
  const txnAgain = await kv(["txn", "-", "--idempotency-key", txnKey, "--endpoints", endpoints], txn);
  expect(JSON.parse(txnAgain.out)).toEqual(JSON.parse(txnFirst.out));
  for (const bad of ["", "has space", "x".repeat(257)]) {
    const run = await kv(["put", "idem/b", "v", "--idempotency-key", bad, "--endpoints", endpoints]);
    expect(run.code).toBe(2);
    expect(run.err).toContain("--idempotency-key");
  }
  // A write whose outcome stays unknown: the message gives the flag to resend it with.
  const sent: string[] = [];
  const fake = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (request) => {
      sent.push(request.headers.get("idempotency-key") ?? "");
      return Response.json({ error: "timeout", message: "not committed in time" }, { status: 503 });
    },
  });
  try {
    const unknown = await kv(["put", "idem/c", "v", "--endpoints", `http://127.0.0.1:${fake.port}`, "--timeout-ms", "300"]);
    expect(unknown.code).toBe(3);
    expect(sent.length).toBeGreaterThan(0);
    expect(new Set(sent).size).toBe(1);
    expect(unknown.err).toContain(`--idempotency-key ${sent[0]}`);
  } finally {
    await fake.stop(true);
  }
});

test("help and the version that cannot be written exit 4 saying so, as every other command's output (found in a black-box review: exit 0)", async () => {
  for (const args of [["--help"], ["--version"], ["put", "--help"]]) {
    const run = Bun.spawn(["bash", "-c", '"$0" "$@" > /dev/full', ...kvCommand(), ...args], { stdout: "pipe", stderr: "pipe" });
    const [err, code] = await Promise.all([new Response(run.stderr).text(), run.exited]);
    expect([args.join(" "), code, err]).toEqual([args.join(" "), 4, expect.stringContaining("kv: cannot write the output")]);
  }
});

test("status prints every endpoint's release and exits 3 when one of them did not answer, after the others' lines (it exited 0, so a script saw a cluster with a node down as well)", async () => {
  const { version } = (await Bun.file(join(import.meta.dir, "..", "package.json")).json()) as { version: string };
  const all = await kv(["status", "--endpoints", endpoints, "--json"]);
  expect(all.code).toBe(0);
  const parsed = JSON.parse(all.out) as { status: { version: string } }[];
  expect(parsed.map((s) => s.status.version)).toEqual([version, version, version]);
  expect((await kv(["status", "--endpoints", endpoints])).out).toContain(`  release ${version}\n`);
  const dead = "http://127.0.0.1:1";
  const partly = await kv(["status", "--endpoints", `${endpoints},${dead}`]);
  expect(partly.code).toBe(3);
  expect(partly.out.split("\n").filter((line) => line.includes(" term "))).toHaveLength(3);
  expect(partly.out).toContain(`${dead}  unreachable`);
  expect(partly.err).toContain(`1 of 4 endpoints did not answer: ${dead}`);
});

test("an empty $KV_AUTH_TOKEN is an unset one, as kv serve takes it; a token that cannot be sent names where it came from (found in a black-box walkthrough: '--endpoints: authToken must be ...', and kv snapshot save sent an empty bearer)", async () => {
  // Spawned without blocking: the cluster's links run through this process (runKvCommand, with a token).
  const run = async (args: string[], token: string) => {
    const proc = Bun.spawn([...kvCommand(), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: { ...process.env, KV_AUTH_TOKEN: token } });
    try {
      const [err, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      return { code, err };
    } finally {
      if (proc.exitCode === null) proc.kill("SIGKILL");
    }
  };
  expect(await run(["put", "empty-token", "v", "--endpoints", endpoints], "")).toEqual({ code: 0, err: "" });
  expect(await run(["snapshot", "save", join(baseDir, "empty-token.kvbackup"), "--endpoints", endpoints], "")).toMatchObject({ code: 0 });
  const bad = await run(["get", "empty-token", "--endpoints", endpoints], "two words");
  expect(bad.code).toBe(2);
  expect(bad.err).toContain("$KV_AUTH_TOKEN: ");
  expect(bad.err).not.toContain("--endpoints");
  const flag = await run(["get", "empty-token", "--endpoints", endpoints, "--auth-token", "two words"], "");
  expect([flag.code, flag.err]).toEqual([2, expect.stringContaining("--auth-token: ")]);
});
