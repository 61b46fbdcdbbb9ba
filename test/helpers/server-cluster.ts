// Shared by the suites that need real nodes but not real processes: a cluster of servers made by
// createServer (src/server/create-server.ts) in the test's own process, each reaching the others
// through a TCP proxy of its own, so a restarted node keeps its peer address.
import { join } from "node:path";
import { createTcpProxy, type TcpProxy } from "../../src/chaos/tcp-proxy.ts";
import { createLogger } from "../../src/lib/logger.ts";
import type { NodeStatus } from "../../src/node/api.ts";
import { createServer, type KvServer, type ServerConfig } from "../../src/server/create-server.ts";

export interface ServerClusterOptions {
  readonly size: number;
  /** Node N keeps its data in `<baseDir>/node-N`. */
  readonly baseDir: string;
  /** Settings over the defaults below, per node. */
  readonly config?: (id: number) => Partial<ServerConfig>;
}

/** A cluster of in-process servers, with the parts of ChaosCluster's interface the suites use. */
export interface ServerCluster {
  readonly nodes: readonly { readonly id: number }[];
  /** The running server of node `id` (throws if it is stopped). */
  node(id: number): KvServer;
  start(): Promise<void>;
  startNode(id: number): Promise<KvServer>;
  /** Stops node `id` at once, as a crash would look to its peers (no hand-over). */
  kill(id: number): Promise<void>;
  status(id: number): NodeStatus | undefined;
  /** Until a majority of `among` follow one leader in one term; returns its id. */
  waitForLeader(among?: readonly number[], timeoutMs?: number): Promise<number>;
  stop(): Promise<void>;
}

export function createServerCluster(options: ServerClusterOptions): ServerCluster {
  const ids = Array.from({ length: options.size }, (_, i) => i + 1);
  const proxies = new Map<string, TcpProxy>();
  for (const from of ids) for (const to of ids) if (from !== to) proxies.set(`${from}>${to}`, createTcpProxy());
  const servers = new Map<number, KvServer>();

  const configOf = (id: number): ServerConfig => ({
    id,
    peers: new Map(ids.map((peer) => [peer, `http://127.0.0.1:${peer === id ? 0 : proxies.get(`${id}>${peer}`)!.port}`] as [number, string])),
    listenPeer: { hostname: "127.0.0.1", port: 0 },
    listenHttp: { hostname: "127.0.0.1", port: 0 },
    dataDir: join(options.baseDir, `node-${id}`),
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
    logger: createLogger(id, "error", { format: "json" }),
    ...options.config?.(id),
  });

  const cluster: ServerCluster = {
    nodes: ids.map((id) => ({ id })),
    node(id) {
      const server = servers.get(id);
      if (server === undefined) throw new Error(`node ${id} is not running`);
      return server;
    },
    async start() {
      await Promise.all(ids.map((id) => cluster.startNode(id)));
    },
    async startNode(id) {
      const server = await createServer(configOf(id));
      servers.set(id, server);
      for (const from of ids) if (from !== id) proxies.get(`${from}>${id}`)!.setTarget(server.peerPort);
      return server;
    },
    async kill(id) {
      const server = servers.get(id);
      if (server === undefined) return;
      servers.delete(id);
      for (const from of ids) if (from !== id) proxies.get(`${from}>${id}`)!.setTarget(undefined);
      await server.stop({ handOver: false, reason: "killed by the test" });
    },
    status(id) {
      return servers.get(id)?.node.status();
    },
    async waitForLeader(among = ids, timeoutMs = 15_000) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const statuses = among.map((id) => cluster.status(id)).filter((status) => status !== undefined);
        const leader = statuses.filter((status) => status.role === "leader").sort((a, b) => b.term - a.term)[0];
        if (leader !== undefined && statuses.filter((s) => s.term === leader.term && s.leaderId === leader.id).length * 2 > options.size) return leader.id;
        if (performance.now() > deadline) throw new Error(`no leader among ${among.join(",")} within ${timeoutMs} ms`);
        await Bun.sleep(10); // polling interval while an election runs
      }
    },
    async stop() {
      await Promise.all([...servers.keys()].map((id) => cluster.kill(id)));
      for (const proxy of proxies.values()) proxy.close();
    },
  };
  return cluster;
}
