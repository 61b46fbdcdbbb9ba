// Proves, with nodes on a 48 MB filesystem (issue 13, finding 10), that past its space quota a node refuses puts with 507 quota_exceeded while reads, listings, /health and deletes keep working and the disk never fills, and that a node started on a full filesystem says so in one log line, logs no stack trace, waits, and serves every acknowledged write once space is freed. The nodes run in-process (createServer); one test of the built executable proves --quota-bytes reaches its server.
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, rmSync, statfsSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KvServer } from "../src/server/create-server.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";
import { runKvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

const smallDir = mkdtempSync(join(tmpdir(), "kv-small-"));
// Logs live outside the small filesystem: filling it must not silence the node.
const logDir = mkdtempSync(join(tmpdir(), "kv-small-logs-"));
const mount = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", smallDir], { stderr: "pipe" });
const mounted = mount.exitCode === 0;
if (!mounted) {
  console.warn(`disk-quota.test.ts: skipped: 'mount -t tmpfs' was refused (${mount.stderr.toString().trim()}); these tests need root`);
}

afterAll(async () => {
  await killAllKvProcesses();
  if (mounted) Bun.spawnSync(["umount", smallDir]);
  rmSync(smallDir, { recursive: true, force: true });
  rmSync(logDir, { recursive: true, force: true });
});

/** Polls `probe` until it returns a value (not undefined) or `timeoutMs` passes. */
async function pollFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await Bun.sleep(50); // polling interval
  }
}

/** Waits for /health to answer 200 (a leader is known and everything committed is applied). */
function waitHealthy(node: { readonly httpUrl: string }): Promise<true> {
  return pollFor("healthy", async () => ((await fetch(`${node.httpUrl}/health`)).status === 200 ? true : undefined));
}

/** Fills the filesystem holding `dir` with one file until the OS says ENOSPC; returns that file. */
function fillFilesystem(dir: string): string {
  const file = join(dir, "filler");
  const fd = openSync(file, "w");
  try {
    for (const chunkBytes of [1 << 20, 4096, 512]) {
      const chunk = new Uint8Array(chunkBytes).fill(1);
      for (;;) {
        try {
          writeSync(fd, chunk);
        } catch (error) {
          if ((error as { code?: string }).code !== "ENOSPC") throw error;
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return file;
}

/** One in-process node keeping its data in `<dir>/node-1`, logging at kv serve's default level; not started. */
function singleNode(dir: string, config: Parameters<typeof createServerCluster>[0]["config"] = undefined): ServerCluster {
  return createServerCluster({ size: 1, baseDir: dir, logLevel: "info", ...(config === undefined ? {} : { config }) });
}

/** `kv serve --quota-bytes QUOTA` (the built executable), one node, its data and log under `name`. */
function startQuotaProcess(name: string, quotaBytes: number) {
  return startKvProcess({
    id: 1,
    cluster: "1=http://127.0.0.1:0",
    dataDir: join(logDir, name),
    logFile: join(logDir, `${name}.log`),
    args: ["--quota-bytes", String(quotaBytes)],
  });
}

test("kv serve --quota-bytes (the built executable) reaches the node: /status reports the quota", async () => {
  const node = await startQuotaProcess("flag", 4 << 20);
  try {
    const status = (await (await fetch(`${node.httpUrl}/status`)).json()) as { storage: { quotaExceeded: boolean; quotaBytes: number } };
    expect(status.storage).toMatchObject({ quotaExceeded: false, quotaBytes: 4 << 20 });
  } finally {
    await node.stop();
  }
});

test("kv put past the quota exits 2, a refusal, as the README says (it exited 3, unavailable: found by an operator's review)", async () => {
  const node = await startQuotaProcess("quota-exit", 1 << 20);
  try {
    const value = "x".repeat(64 * 1024);
    for (let i = 0; i < 64; i++) {
      const response = await fetch(`${node.httpUrl}/kv/fill${i}`, { method: "PUT", body: value });
      if (response.status === 507) break;
      expect(response.status).toBe(200);
    }
    const refused = await runKvCommand(["put", "small", "x", "--endpoints", node.httpUrl]);
    expect(refused.err).toContain("quota_exceeded");
    expect(refused.code).toBe(2);
    // kv txn too (it exited 3: found in review).
    const txnFile = join(logDir, "quota-txn.json");
    writeFileSync(txnFile, JSON.stringify({ success: [{ put: { key: "small", value: "x" } }] }));
    const refusedTxn = await runKvCommand(["txn", txnFile, "--endpoints", node.httpUrl]);
    expect(refusedTxn.err).toContain("quota_exceeded");
    expect(refusedTxn.code).toBe(2);
  } finally {
    await node.stop();
  }
});

describe.skipIf(!mounted)("a full disk and the space quota (in-process nodes, 48 MB tmpfs)", () => {
  test("past a 4 MiB quota: puts get 507 quota_exceeded, reads, listings, /health and deletes work, the disk does not fill, and deletes make room again", async () => {
    const dataDir = join(smallDir, "quota");
    // As kv serve --quota-bytes 4194304 --snapshot-entries 20 --snapshot-catchup-entries 5 runs it.
    const cluster = singleNode(dataDir, () => ({ quotaBytes: 4 << 20, snapshotEntries: 20, snapshotCatchUpEntries: 5 }));
    try {
      await cluster.start();
      const node = cluster.node(1);
      await waitHealthy(node);
      const value = new Uint8Array(100_000).map((_, i) => i % 251);
      let written = 0;
      let refusal: { status: number; body: { error?: string; message?: string } } | undefined;
      for (let i = 0; i < 200 && refusal === undefined; i++) {
        const response = await fetch(`${node.httpUrl}/kv/big-${i}`, { method: "PUT", body: value });
        if (response.status === 200) {
          await response.arrayBuffer();
          written++;
        } else {
          refusal = { status: response.status, body: (await response.json()) as { error?: string } };
        }
      }
      expect(refusal?.status).toBe(507);
      expect(refusal?.body.error).toBe("quota_exceeded");
      expect(written).toBeGreaterThanOrEqual(5);
      // The quota kept the disk from filling: most of the 48 MB is still free.
      const fs = statfsSync(smallDir);
      expect(fs.bavail * fs.bsize).toBeGreaterThan(16 << 20);

      // Reads of every kind, a listing and /health still work.
      for (const consistency of ["linearizable", "lease", "stale"]) {
        const response = await fetch(`${node.httpUrl}/kv/big-0?consistency=${consistency}`);
        expect(response.status).toBe(200);
        expect(new Uint8Array(await response.arrayBuffer())).toEqual(value);
      }
      // A page ends at 4 MiB of values (GET /kv): read pages until `more` is false.
      let listed = 0;
      for (let after = "", more = true; more; ) {
        const listing = await fetch(`${node.httpUrl}/kv?prefix=big-&limit=1000${after === "" ? "" : `&after=${after}`}`);
        expect(listing.status).toBe(200);
        const page = (await listing.json()) as { items: { key: string }[]; more: boolean };
        listed += page.items.length;
        more = page.more;
        after = page.items.at(-1)?.key ?? after;
      }
      expect(listed).toBe(written);
      const health = await fetch(`${node.httpUrl}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toEqual({ healthy: true, quotaExceeded: true });
      const status = (await (await fetch(`${node.httpUrl}/status`)).json()) as { storage: { quotaExceeded: boolean; quotaBytes: number } };
      expect(status.storage).toMatchObject({ quotaExceeded: true, quotaBytes: 4 << 20 });

      // Deletes go through, and free room for puts again.
      for (let i = 0; i < written; i++) {
        const response = await fetch(`${node.httpUrl}/kv/big-${i}`, { method: "DELETE" });
        expect(response.status).toBe(200);
        expect(((await response.json()) as { deleted: boolean }).deleted).toBe(true);
      }
      await pollFor("a put accepted after the deletes", async () => {
        const response = await fetch(`${node.httpUrl}/kv/after`, { method: "PUT", body: value });
        await response.arrayBuffer();
        return response.status === 200 ? true : undefined;
      });
      const log = cluster.logs(1);
      expect(log).toContain('"event":"quota exceeded"');
      expect(log).toContain('"event":"quota ok"');
      expect(log).not.toContain('"event":"disk full"');
    } finally {
      await cluster.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);

  test("a running node whose disk fills under writes logs 'disk full' naming the write it was at, not an install (found in a durability review)", async () => {
    const dataDir = join(smallDir, "filling");
    const cluster = singleNode(dataDir);
    let filler: string | undefined;
    try {
      await cluster.start();
      const node = cluster.node(1);
      await waitHealthy(node);
      filler = fillFilesystem(smallDir);
      const value = "x".repeat(64 * 1024);
      // Writes go on (each answered or timed out) until the node logs that the disk is full.
      const fullLine = await pollFor("the 'disk full' log line", async () => {
        const line = cluster.logs(1).split("\n").find((l) => l.includes('"event":"disk full"'));
        if (line !== undefined) return line;
        const puts = Array.from({ length: 8 }, (_, i) => fetch(`${node.httpUrl}/kv/fill-${Math.random()}-${i}`, { method: "PUT", body: value, signal: AbortSignal.timeout(500) }).then((r) => r.arrayBuffer(), () => undefined));
        await Promise.all(puts);
        return undefined;
      });
      const { stage, dataDir: namedDir } = JSON.parse(fullLine) as { stage?: string; dataDir?: string };
      expect(stage).not.toBe("install");
      // It names where, as the same line at start does (found in an operator's review).
      expect(namedDir).toBe(join(dataDir, "node-1"));
      expect(["save", "apply", "compact", "advance"]).toContain(stage ?? "none");
    } finally {
      if (filler !== undefined) rmSync(filler, { force: true });
      await cluster.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);

  test("a node started on a full filesystem logs one line, logs no stack trace, waits, and serves what it had once space is freed", async () => {
    const dataDir = join(smallDir, "full");
    const first = singleNode(dataDir);
    const cluster = singleNode(dataDir);
    let filler: string | undefined;
    let starting: Promise<KvServer> | undefined;
    try {
      await first.start();
      await waitHealthy(first.node(1));
      for (let i = 0; i < 5; i++) expect((await fetch(`${first.node(1).httpUrl}/kv/kept-${i}`, { method: "PUT", body: `v${i}` })).status).toBe(200);
      await first.node(1).stop({ reason: "SIGTERM" }); // a clean stop, as kv serve's on SIGTERM
      await first.stop();

      filler = fillFilesystem(smallDir);
      let failedEarly: unknown;
      starting = cluster.startNode(1);
      starting.catch((error: unknown) => (failedEarly = error));
      // It says so once, whether it is still opening its database or already frozen in its loop.
      const fullLine = await pollFor("the 'disk full' log line (or a failed start)", async () => {
        if (failedEarly !== undefined) return `failed: ${String(failedEarly)}`;
        return cluster.logs(1).split("\n").find((line) => line.includes('"event":"disk full"'));
      });
      expect(fullLine).toContain('"event":"disk full"');
      expect(failedEarly).toBeUndefined();

      rmSync(filler);
      filler = undefined;
      const started = await starting;
      const kept = await pollFor("a read once space is back", async () => {
        const response = await fetch(`${started.httpUrl}/kv/kept-4`);
        return response.status === 200 ? response.text() : undefined;
      });
      expect(kept).toBe("v4");
      for (let i = 0; i < 4; i++) expect(await (await fetch(`${started.httpUrl}/kv/kept-${i}`)).text()).toBe(`v${i}`);
      const log = cluster.logs(1);
      expect(log.split("\n").filter((line) => line.includes('"event":"disk full"')).length).toBe(1);
      expect(log).not.toContain("SQLiteError");
      expect(log).not.toMatch(/^\s+at /m);
      expect(log).not.toContain("    at "); // nor a stack inside a JSON line
    } finally {
      await first.stop();
      if (filler !== undefined) rmSync(filler, { force: true });
      // A start still waiting for space gets it now, and is stopped with the rest.
      await starting?.catch(() => undefined);
      await cluster.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});
