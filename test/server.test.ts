// Proves createServer(config) assembles a working node in-process: three servers in one test process
// elect a leader, take writes through their HTTP API, hand leadership over on stop(), and a server
// restarted on its data dir still holds what was acknowledged.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTcpProxy, type TcpProxy } from "../src/chaos/tcp-proxy.ts";
import { createLogger } from "../src/lib/logger.ts";
import { createServer, type KvServer, type ServerConfig } from "../src/server/create-server.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-server-"));
const servers = new Map<number, KvServer>();
const proxies = new Map<string, TcpProxy>();
afterAll(async () => {
  await Promise.all([...servers.values()].map((server) => server.stop({ handOver: false })));
  for (const proxy of proxies.values()) proxy.close();
  rmSync(baseDir, { recursive: true, force: true });
});

const ids = [1, 2, 3];
for (const from of ids) for (const to of ids) if (from !== to) proxies.set(`${from}>${to}`, createTcpProxy());

/** Node `id` of the three, on ports the OS picks; each reaches the others through its own proxies. */
function configOf(id: number): ServerConfig {
  const peers = new Map(ids.map((peer) => [peer, `http://127.0.0.1:${peer === id ? 0 : proxies.get(`${id}>${peer}`)!.port}`] as [number, string]));
  const lines: string[] = [];
  return {
    id,
    peers,
    listenPeer: { hostname: "127.0.0.1", port: 0 },
    listenHttp: { hostname: "127.0.0.1", port: 0 },
    dataDir: join(baseDir, `node-${id}`),
    tickMs: 10,
    electionTicks: 12,
    heartbeatTicks: 5,
    requestTimeoutMs: 5_000,
    snapshotEntries: 10_000,
    snapshotCatchUpEntries: 1_000,
    idempotencyWindowMs: 600_000,
    idempotencySessionsMax: 100_000,
    metricsOpen: false,
    keyBytesMax: 4096,
    valueBytesMax: 1 << 20,
    requestReadTimeoutMs: 10_000,
    clientConnectionsMax: 0,
    logger: createLogger(id, "warn", { format: "json", write: (line) => void lines.push(line) }),
  };
}

async function start(id: number): Promise<KvServer> {
  const server = await createServer(configOf(id));
  servers.set(id, server);
  for (const from of ids) if (from !== id) proxies.get(`${from}>${id}`)!.setTarget(server.peerPort);
  return server;
}

/** Until one started server leads and the others follow it. */
async function leader(): Promise<KvServer> {
  const deadline = performance.now() + 10_000;
  for (;;) {
    const leaders = [...servers.values()].filter((server) => server.node.status().role === "leader");
    const only = leaders.length === 1 ? leaders[0]! : undefined;
    if (only !== undefined && [...servers.values()].every((server) => server.node.status().leaderId === only.node.status().id)) return only;
    if (performance.now() > deadline) throw new Error("no leader within 10 s");
    await Bun.sleep(10); // polling interval while the election runs
  }
}

test("three in-process servers elect a leader and serve writes and reads over HTTP; stop() hands over; a restart keeps what was acknowledged", async () => {
  await Promise.all(ids.map((id) => start(id)));
  const first = await leader();
  const put = await fetch(`${first.httpUrl}/kv/greeting`, { method: "PUT", body: "hello" });
  expect(put.status).toBe(200);
  const { version } = (await put.json()) as { version: number };
  for (const server of servers.values()) {
    const read = await fetch(`${server.httpUrl}/kv/greeting`); // linearizable, on followers too
    expect([read.status, await read.text(), read.headers.get("x-kv-version")]).toEqual([200, "hello", String(version)]);
  }

  // A clean stop of the leader hands leadership to another voter first.
  const firstId = first.node.status().id;
  await first.stop();
  servers.delete(firstId);
  const second = await leader();
  expect(second.node.status().id).not.toBe(firstId);
  expect((await fetch(`${second.httpUrl}/kv/greeting`, { method: "PUT", body: "again" })).status).toBe(200);

  // Back on its data dir, the stopped node catches up and serves what was acknowledged.
  const restarted = await start(firstId);
  const deadline = performance.now() + 10_000;
  while (restarted.node.status().appliedIndex < second.node.status().commitIndex && performance.now() < deadline) await Bun.sleep(10); // until caught up
  const read = await fetch(`${restarted.httpUrl}/kv/greeting?consistency=stale`);
  expect(await read.text()).toBe("again");
}, 60_000);
