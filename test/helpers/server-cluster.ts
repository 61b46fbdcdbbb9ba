// Shared by the suites that need real nodes but not real processes: a cluster of servers made by
// createServer (src/server/create-server.ts) in the test's own process, each reaching the others
// through a TCP proxy of its own, so a restarted node keeps its peer address.
import { afterAll, beforeAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTcpProxy, type TcpProxy } from "../../src/chaos/tcp-proxy.ts";
import { KEY_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_DEFAULT } from "../../src/http/app.ts";
import { CLIENT_CONNECTIONS_MAX_DEFAULT, REQUEST_READ_TIMEOUT_MS_DEFAULT } from "../../src/http/client-listener.ts";
import { createLogger, type LogLevel } from "../../src/lib/logger.ts";
import type { NodeStatus } from "../../src/node/api.ts";
import { defaultIdempotency, defaultNodeTimings, defaultSnapshotPolicy } from "../../src/node/kv-node.ts";
import { createServer, type KvServer, type ServerConfig } from "../../src/server/create-server.ts";

export interface ServerClusterOptions {
  readonly size: number;
  /** Node N keeps its data in `<baseDir>/node-N`. */
  readonly baseDir: string;
  /** Settings over the defaults below, per node. */
  readonly config?: (id: number) => Partial<ServerConfig>;
  /** `https` when the nodes serve TLS on their peer ports (give `tls` in `config`). */
  readonly peerScheme?: "http" | "https";
  /** The lowest level kept in each node's log (`logs`); default `error`. Error lines also go to stderr. */
  readonly logLevel?: LogLevel;
}

/** Log lines kept per node at most (the oldest are dropped first): a bound on a long test's memory. */
const LOG_LINES_MAX = 100_000;

/** A cluster of in-process servers, with the parts of ChaosCluster's interface the suites use. */
export interface ServerCluster {
  readonly nodes: readonly { readonly id: number }[];
  /** The running server of node `id` (throws if it is stopped). */
  node(id: number): KvServer;
  start(): Promise<void>;
  /** (Re)starts node `id`, optionally with settings over the cluster's. */
  startNode(id: number, override?: Partial<ServerConfig>): Promise<KvServer>;
  /** Stops node `id` at once, as a crash would look to its peers (no hand-over). */
  kill(id: number): Promise<void>;
  status(id: number): NodeStatus | undefined;
  /** Cuts every link to and from node `id` (its server keeps running). */
  isolate(id: number): void;
  /** Restores every link. */
  heal(): void;
  /** Until a majority of `among` follow one leader in one term; returns its id. */
  waitForLeader(among?: readonly number[], timeoutMs?: number): Promise<number>;
  /** Node `id`'s JSON log lines so far, every start of it included, one per line. */
  logs(id: number): string;
  /** Resolves with the first log line of node `id` that contains `text` (polls: a condition, not a sleep). */
  waitForLog(id: number, text: string, timeoutMs?: number): Promise<string>;
  /** The error node `id` stopped on by itself (its `onFatal`), if it did: a crash in a process. */
  fatal(id: number): Error | undefined;
  stop(): Promise<void>;
}

/**
 * The settings every in-process node starts from: a one-voter cluster of its own on OS-picked ports
 * (`peers` names only itself), `kv serve`'s defaults for timings and limits (src/cli/serve.ts reads
 * the same constants) but no space quota, and a logger that prints errors only. A test that moved
 * from `kv serve` to in-process gives what its flags set over these; one that starts a node outside
 * a cluster (a joining node) spreads it and sets `peers` and `join`.
 */
export function baseServerConfig(id: number, dataDir: string): ServerConfig {
  return {
    id,
    peers: new Map([[id, "http://127.0.0.1:0"]]),
    listenPeer: { hostname: "127.0.0.1", port: 0 },
    listenHttp: { hostname: "127.0.0.1", port: 0 },
    dataDir,
    tickMs: defaultNodeTimings.tickMs,
    electionTicks: defaultNodeTimings.electionTicks,
    heartbeatTicks: defaultNodeTimings.heartbeatTicks,
    requestTimeoutMs: defaultNodeTimings.requestTimeoutMs,
    snapshotEntries: defaultSnapshotPolicy.snapshotEntries,
    snapshotCatchUpEntries: defaultSnapshotPolicy.snapshotCatchUpEntries,
    idempotencyWindowMs: defaultIdempotency.windowMs,
    idempotencySessionsMax: defaultIdempotency.sessionsMax,
    metricsOpen: false,
    keyBytesMax: KEY_BYTES_MAX_DEFAULT,
    valueBytesMax: VALUE_BYTES_MAX_DEFAULT,
    requestReadTimeoutMs: REQUEST_READ_TIMEOUT_MS_DEFAULT,
    clientConnectionsMax: CLIENT_CONNECTIONS_MAX_DEFAULT,
    logger: createLogger(id, "error", { format: "json" }),
  };
}

/** A cluster of `size` in-process servers, not started yet (see `ServerCluster.start`). */
export function createServerCluster(options: ServerClusterOptions): ServerCluster {
  const ids = Array.from({ length: options.size }, (_, i) => i + 1);
  const proxies = new Map<string, TcpProxy>();
  for (const from of ids) for (const to of ids) if (from !== to) proxies.set(`${from}>${to}`, createTcpProxy());
  const servers = new Map<number, KvServer>();
  const logLines = new Map<number, string[]>(ids.map((id) => [id, []]));
  const fatals = new Map<number, Error>();
  const scheme = options.peerScheme ?? "http";

  const configOf = (id: number): ServerConfig => ({
    ...baseServerConfig(id, join(options.baseDir, `node-${id}`)),
    peers: new Map(ids.map((peer) => [peer, `${scheme}://127.0.0.1:${peer === id ? 0 : proxies.get(`${id}>${peer}`)!.port}`] as [number, string])),
    logger: createLogger(id, options.logLevel ?? "error", {
      format: "json",
      write(line) {
        const lines = logLines.get(id)!;
        lines.push(line);
        if (lines.length > LOG_LINES_MAX) lines.shift();
        if (line.includes('"level":"error"') && !line.includes('"reason":"killed by the test"')) process.stderr.write(line);
      },
    }),
    onFatal: (error) => fatals.set(id, error),
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
    async startNode(id, override = {}) {
      const server = await createServer({ ...configOf(id), ...override });
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
    isolate(id) {
      for (const [link, proxy] of proxies) {
        const [from, to] = link.split(">").map(Number);
        if (from === id || to === id) proxy.cut();
      }
    },
    heal() {
      for (const proxy of proxies.values()) proxy.heal();
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
    logs(id) {
      return (logLines.get(id) ?? []).join("");
    },
    async waitForLog(id, text, timeoutMs = 10_000) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const line = (logLines.get(id) ?? []).find((candidate) => candidate.includes(text));
        if (line !== undefined) return line.trimEnd();
        if (performance.now() > deadline) throw new Error(`node ${id} logged no line with ${JSON.stringify(text)} within ${timeoutMs} ms`);
        await Bun.sleep(10); // polling interval between looks at the log
      }
    },
    fatal(id) {
      return fatals.get(id);
    },
    async stop() {
      await Promise.all([...servers.keys()].map((id) => cluster.kill(id)));
      for (const proxy of proxies.values()) proxy.close();
    },
  };
  return cluster;
}

/**
 * For a `describe` block: a cluster of `size` in-process servers in a fresh directory, started and
 * led before its tests (`beforeAll`) and stopped and removed after them (`afterAll`). Returns the
 * running cluster's getter.
 */
export function serverClusterForSuite(options: { readonly size: number; readonly dirPrefix: string } & Omit<ServerClusterOptions, "size" | "baseDir">): () => ServerCluster {
  let dir: string | undefined;
  let cluster: ServerCluster | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), options.dirPrefix));
    const { dirPrefix: _, ...rest } = options;
    cluster = createServerCluster({ ...rest, baseDir: dir });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    if (cluster === undefined) throw new Error("the suite's cluster is not started yet");
    return cluster;
  };
}
