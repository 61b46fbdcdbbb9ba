// Shared by the security, metrics and fuzz suites: one `kv serve` process of the built executable on
// OS-chosen ports, with its stderr kept in a log file, for tests that need per-node flags or
// environment that ChaosCluster (one set of flags for every node, plain http) cannot give.
import { createWriteStream } from "node:fs";
import type { Subprocess } from "bun";
import { pipeNodeOutput } from "../../src/chaos/cluster.ts";
import { kvCommand } from "./kv-binary.ts";

/** How to start one node. */
export interface KvProcessOptions {
  readonly id: number;
  /** The --cluster flag; this node's own entry should name port 0 (or `--listen-peer` be given in `args`). */
  readonly cluster: string;
  readonly dataDir: string;
  /** Where stderr and stdout go (appended). */
  readonly logFile: string;
  /** Extra `kv serve` flags. */
  readonly args?: readonly string[];
  /** Extra environment variables (on top of this process's). */
  readonly env?: Readonly<Record<string, string>>;
  /** How long the node may take to print its "started" line. Default 15 s. */
  readonly startTimeoutMs?: number;
}

/** A running node. `stop()` (SIGKILL by pid) is safe to call more than once. */
export interface KvProcess {
  readonly pid: number;
  readonly httpUrl: string;
  readonly peerPort: number;
  readonly clusterId: string;
  readonly exited: Promise<number>;
  /** Everything the process wrote so far. */
  log(): Promise<string>;
  /** Resolves once a log line contains `text` (polls the file; a condition, not a sleep); rejects after `timeoutMs`. */
  waitForLog(text: string, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then the exit code. */
  terminate(): Promise<number>;
  /** SIGKILL by pid, then the exit. */
  stop(): Promise<void>;
}

/** Every process started here, so a test's `finally` (or afterAll) can kill whatever is left. */
const running = new Set<Subprocess>();

/** Kills every process this module started and has not seen exit, by pid. */
export async function killAllKvProcesses(): Promise<void> {
  const procs = [...running];
  for (const proc of procs) {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await Promise.all(procs.map((proc) => proc.exited));
}

/** Spawns `kv serve` and waits for its "started" line; rejects (after killing it) if it exits or is late. */
export async function startKvProcess(options: KvProcessOptions): Promise<KvProcess> {
  const args = [
    ...kvCommand(),
    "serve",
    "--id",
    String(options.id),
    "--cluster",
    options.cluster,
    "--listen-http",
    "127.0.0.1:0",
    "--data-dir",
    options.dataDir,
    ...(options.args ?? []),
  ];
  const proc = Bun.spawn(args, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...options.env } });
  running.add(proc);
  void proc.exited.then(() => running.delete(proc));
  const logStream = createWriteStream(options.logFile, { flags: "a" });
  const started = pipeNodeOutput(proc, logStream).then((line) => ({ ...line, clusterId: line.clusterId ?? "" }));
  const timeoutMs = options.startTimeoutMs ?? 15_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let info: { httpUrl: string; peerPort: number; clusterId: string };
  try {
    info = await Promise.race([
      started,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`node ${options.id} did not start within ${timeoutMs} ms; see ${options.logFile}`)), timeoutMs);
      }),
      proc.exited.then((code) => {
        throw new Error(`node ${options.id} exited with code ${code} before starting; see ${options.logFile}`);
      }),
    ]);
  } catch (error) {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await proc.exited;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  const exited = proc.exited.then(async (code) => {
    await new Promise<void>((resolve) => logStream.end(resolve));
    return code;
  });
  const log = async () => {
    const file = Bun.file(options.logFile);
    return (await file.exists()) ? file.text() : "";
  };
  return {
    pid: proc.pid,
    ...info,
    exited,
    log,
    async waitForLog(text, waitMs = 10_000) {
      const deadline = performance.now() + waitMs;
      for (;;) {
        const line = (await log()).split("\n").find((candidate) => candidate.includes(text));
        if (line !== undefined) return line;
        if (performance.now() > deadline) throw new Error(`no log line with ${JSON.stringify(text)} within ${waitMs} ms in ${options.logFile}`);
        await Bun.sleep(20); // polling interval between reads of the log file
      }
    },
    async terminate() {
      process.kill(proc.pid, "SIGTERM");
      return exited;
    },
    async stop() {
      try {
        process.kill(proc.pid, "SIGKILL");
      } catch {
        // already gone
      }
      await exited;
    },
  };
}

/** How to start a cluster of `kv serve` processes that reach each other through TCP proxies. */
export interface KvClusterOptions {
  readonly size: number;
  /** Node N keeps its data in `<baseDir>/node-N` and its log in `<baseDir>/node-N.log`. */
  readonly baseDir: string;
  /** `https` when the nodes serve TLS on their peer ports. */
  readonly peerScheme?: "http" | "https";
  /** Extra flags and environment per node. */
  readonly args?: (id: number) => readonly string[];
  readonly env?: (id: number) => Readonly<Record<string, string>>;
  /** Extra fetch options for status probes (TLS, Authorization). */
  readonly fetchInit?: BunFetchRequestInit;
}

/** The fields of GET /status the tests read. */
export interface NodeStatusView {
  readonly id: number;
  readonly role: string;
  readonly term: number;
  readonly leaderId: number;
  readonly commitIndex: number;
  readonly appliedIndex: number;
}

/** A cluster: each node dials node M through its own proxy, so a restarted node keeps its peer address. */
export interface KvCluster {
  readonly nodes: Map<number, KvProcess>;
  node(id: number): KvProcess;
  /** (Re)starts node `id`, optionally with other flags than the cluster's. */
  startNode(id: number, override?: { args?: readonly string[]; env?: Readonly<Record<string, string>> }): Promise<KvProcess>;
  /** GET /status of a node, or undefined when it does not answer 200. */
  status(id: number): Promise<NodeStatusView | undefined>;
  /** Waits until a majority of the given nodes follow one leader in one term. */
  waitForLeader(among?: readonly number[], timeoutMs?: number): Promise<number>;
  /** SIGKILLs every node and closes the proxies. */
  stop(): Promise<void>;
}

export async function startKvCluster(options: KvClusterOptions): Promise<KvCluster> {
  const { createTcpProxy } = await import("../../src/chaos/tcp-proxy.ts");
  const { join } = await import("node:path");
  const scheme = options.peerScheme ?? "http";
  const proxies = new Map<string, ReturnType<typeof createTcpProxy>>();
  for (let from = 1; from <= options.size; from++) {
    for (let to = 1; to <= options.size; to++) if (from !== to) proxies.set(`${from}>${to}`, createTcpProxy());
  }
  const nodes = new Map<number, KvProcess>();
  const clusterFlag = (id: number) =>
    Array.from({ length: options.size }, (_, i) => i + 1)
      .map((peer) => `${peer}=${scheme}://127.0.0.1:${peer === id ? 0 : proxies.get(`${id}>${peer}`)!.port}`)
      .join(",");
  const cluster: KvCluster = {
    nodes,
    node(id) {
      const node = nodes.get(id);
      if (node === undefined) throw new Error(`node ${id} is not running`);
      return node;
    },
    async startNode(id, override = {}) {
      const node = await startKvProcess({
        id,
        cluster: clusterFlag(id),
        dataDir: join(options.baseDir, `node-${id}`),
        logFile: join(options.baseDir, `node-${id}.log`),
        args: override.args ?? options.args?.(id) ?? [],
        env: override.env ?? options.env?.(id) ?? {},
      });
      nodes.set(id, node);
      for (let from = 1; from <= options.size; from++) if (from !== id) proxies.get(`${from}>${id}`)!.setTarget(node.peerPort);
      return node;
    },
    async status(id) {
      const node = nodes.get(id);
      if (node === undefined) return undefined;
      try {
        const response = await fetch(`${node.httpUrl}/status`, { ...options.fetchInit, signal: AbortSignal.timeout(1_000) });
        if (response.status !== 200) return undefined;
        return (await response.json()) as NodeStatusView;
      } catch {
        return undefined;
      }
    },
    async waitForLeader(among = [...nodes.keys()], timeoutMs = 15_000) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const statuses = (await Promise.all(among.map((id) => cluster.status(id)))).filter((s) => s !== undefined);
        const leader = statuses.filter((s) => s.role === "leader").sort((a, b) => b.term - a.term)[0];
        if (leader !== undefined && statuses.filter((s) => s.term === leader.term && s.leaderId === leader.id).length * 2 > options.size) {
          return leader.id;
        }
        if (performance.now() > deadline) throw new Error(`no leader among ${among.join(",")} within ${timeoutMs} ms: ${JSON.stringify(statuses)}`);
        await Bun.sleep(20); // polling interval between status probes
      }
    },
    async stop() {
      await Promise.all([...nodes.values()].map((node) => node.stop()));
      for (const proxy of proxies.values()) proxy.close();
    },
  };
  try {
    await Promise.all(Array.from({ length: options.size }, (_, i) => cluster.startNode(i + 1)));
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}
