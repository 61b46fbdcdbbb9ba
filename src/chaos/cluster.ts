import { createWriteStream, mkdirSync, rmSync, type WriteStream } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { compareReplicas, createClient, type ReplicaCheck } from "../client/index.ts";
import { createTcpProxy, type TcpProxy } from "./tcp-proxy.ts";

/** How the chaos runner (and the integration tests) start a cluster of real kv processes. */
export interface ClusterOptions {
  readonly size: number;
  /** The command that runs kv: `[execPath]` when compiled, `[bun, "src/cli/main.ts"]` from source. */
  readonly command: readonly string[];
  /** Each node keeps its data in `<baseDir>/node-N` and its log in `<baseDir>/node-N.log`. */
  readonly baseDir: string;
  /** Classic layout: peers on basePort+i-1, HTTP on basePort+3000+i-1, no proxies. Omit for OS-chosen ports. */
  readonly basePort?: number;
  /** Extra `kv serve` flags for every node (timings, limits). */
  readonly serveArgs?: readonly string[];
  /** How long a node may take to print its "started" line. */
  readonly startTimeoutMs?: number;
}

/** One node of the cluster as the runner sees it. */
export interface ClusterNode {
  readonly id: number;
  /** Current client URL (changes when a node restarts on an OS-chosen port). */
  httpUrl: string;
  peerPort: number;
  pid: number | undefined;
  /** `starting` until its "started" line names its ports: `httpUrl` is not yet valid then. */
  state: "starting" | "running" | "paused" | "dead";
  readonly logFile: string;
  readonly dataDir: string;
}

/** What GET /status answers (the fields the runner uses). */
export interface StatusView {
  id: number;
  role: string;
  term: number;
  leaderId: number;
  commitIndex: number;
  appliedIndex: number;
  lastLogIndex: number;
  /** The first index still in the log: past 1 once the log was compacted. */
  firstLogIndex: number;
}

/** What a node's "started" log line says about where it listens. */
export interface StartedLine {
  readonly httpUrl: string;
  readonly peerPort: number;
  readonly clusterId?: string;
}

/** What `pipeNodeOutput` gives: the "started" line once it appears, and what was seen before it. */
export type NodeOutput = Promise<StartedLine> & {
  /** Settles once both streams ended (the process closed them: it exited). */
  readonly ended: Promise<void>;
  /** The reason of a `stopping` line before the "started" one (a node that could not start), if any. */
  stoppingReason(): string | undefined;
};

/**
 * Copies a `kv serve` process's stdout and stderr into `log`; resolves with its "started" line once
 * it appears (the ports it bound, which the OS chose).
 */
export function pipeNodeOutput(proc: Subprocess<"ignore", "pipe", "pipe">, log: WriteStream): NodeOutput {
  let stopping: string | undefined;
  let ended: Promise<void> = Promise.resolve();
  const started = new Promise<StartedLine>((resolve) => {
    let resolved = false;
    const pump = async (stream: ReadableStream<Uint8Array>, scan: boolean) => {
      const decoder = new TextDecoder();
      let partial = "";
      for await (const chunk of stream) {
        log.write(chunk);
        if (!scan || resolved) continue;
        partial += decoder.decode(chunk, { stream: true });
        const lines = partial.split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) {
          const stoppingLine = line.includes('"event":"stopping"');
          if (!stoppingLine && !line.includes('"event":"started"')) continue;
          try {
            const parsed = JSON.parse(line) as StartedLine & { reason?: unknown };
            if (stoppingLine) {
              if (typeof parsed.reason === "string") stopping = parsed.reason;
              continue;
            }
            resolve(parsed);
            resolved = true;
          } catch {
            // not our line
          }
        }
      }
    };
    ended = Promise.all([pump(proc.stdout, false), pump(proc.stderr, true)]).then(() => undefined);
  });
  return Object.assign(started, { ended, stoppingReason: () => stopping });
}

/**
 * A base port for the classic layout (`ClusterOptions.basePort`) whose `size` peer ports and `size`
 * client ports (base + 3000 + i) are free on 127.0.0.1 now: for scenarios that need every node at one
 * address for all (a member joining through the API). Another program may take one before the
 * nodes bind it; the node then fails to start, and says why.
 */
export function freeBasePort(size: number): number {
  for (let attempt = 0; attempt < 200; attempt++) {
    // Below Linux's ephemeral range (32768-60999 by default), where outgoing connections could take
    // a port while its node is down (found in review); client ports are base + 3000 + i.
    const base = 10_000 + Math.floor(Math.random() * 19_000);
    const ports = Array.from({ length: size }, (_, i) => [base + i, base + 3000 + i]).flat();
    if (ports.every(portIsFree)) return base;
  }
  throw new Error("found no free ports for a cluster in 200 tries");
}

function portIsFree(port: number): boolean {
  try {
    const listener = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
    listener.stop(true);
    return true;
  } catch {
    return false;
  }
}

/** The least time a replica comparison is given, however little of the convergence's budget is left. */
const REPLICA_CHECK_MS_MIN = 5_000;

/**
 * A cluster of real `kv serve` processes. Without `basePort`, every node listens on ports the OS
 * picks and reaches each peer through a TCP proxy the runner owns, one per directed link, so links
 * can be cut (partitions) and a restarted node keeps its peer address.
 */
export class ChaosCluster {
  readonly nodes: ClusterNode[] = [];
  private readonly processes = new Map<number, Subprocess>();
  /** Every comparison of the running nodes' state hashes, in order (`replicasAgree`). */
  readonly replicaChecks: ReplicaCheck[] = [];
  /** Processes this runner told to exit (SIGKILL, SIGTERM): their exits are expected. */
  private readonly exitsExpected = new WeakSet<Subprocess>();
  /** Nodes that exited without being told to (a crash, or a kill from outside the run). */
  readonly unexpectedExits: { id: number; code: number; signal: string | undefined }[] = [];
  private readonly logs = new Map<number, WriteStream>();
  /** `${from}>${to}` → the proxy `from` dials to reach `to`. */
  private readonly links = new Map<string, TcpProxy>();
  /** Other processes a scenario started (lock clients, `kv defrag` runs): `stop` kills them too. */
  private readonly helpers = new Set<Subprocess>();
  /** Set by `stop`: nothing is started after it (the run is ending, perhaps on Ctrl-C). */
  private stopped = false;

  /** The command that runs kv (this executable), for the tools a scenario runs on a stopped node's data dir. */
  get command(): readonly string[] {
    return this.opts.command;
  }

  constructor(private readonly opts: ClusterOptions) {
    mkdirSync(opts.baseDir, { recursive: true });
    for (let id = 1; id <= opts.size; id++) {
      this.nodes.push({
        id,
        httpUrl: "",
        peerPort: 0,
        pid: undefined,
        state: "dead",
        logFile: join(opts.baseDir, `node-${id}.log`),
        dataDir: join(opts.baseDir, `node-${id}`),
      });
    }
    if (opts.basePort === undefined) {
      for (let from = 1; from <= opts.size; from++) {
        for (let to = 1; to <= opts.size; to++) if (from !== to) this.links.set(`${from}>${to}`, createTcpProxy());
      }
    }
  }

  node(id: number): ClusterNode {
    const node = this.nodes[id - 1];
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }

  /** Starts every node and waits until each has bound its ports. */
  async start(): Promise<void> {
    try {
      await Promise.all(this.nodes.map((node) => this.startNode(node.id)));
    } catch (error) {
      // Only what the machine refused (a port in use): a node that crashes as it starts is a finding.
      if (error instanceof NodeStartError && /cannot listen|in use/.test(error.message)) throw new ClusterStartError(`the cluster could not start: ${error.message}`);
      throw error;
    }
  }

  private clusterFlag(id: number): string {
    const base = this.opts.basePort;
    return this.nodes
      .map((node) => {
        if (base !== undefined) return `${node.id}=http://127.0.0.1:${base + node.id - 1}`;
        if (node.id === id) return `${node.id}=http://127.0.0.1:0`;
        return `${node.id}=http://127.0.0.1:${(this.links.get(`${id}>${node.id}`) as TcpProxy).port}`;
      })
      .join(",");
  }

  /**
   * Spawns node `id` (again) on its data dir and waits for its "started" line; with `join`, it asks
   * those client URLs to add it (`kv serve --join`): an empty data dir joins as a new member.
   */
  async startNode(id: number, options: { readonly join?: readonly string[] } = {}): Promise<void> {
    const node = this.node(id);
    if (this.stopped) throw new ChaosClusterStopped();
    if (node.state !== "dead") throw new Error(`node ${id} is already running`);
    const base = this.opts.basePort;
    const args = [
      ...this.opts.command,
      "serve",
      "--id",
      String(id),
      "--cluster",
      this.clusterFlag(id),
      "--listen-peer",
      base === undefined ? "127.0.0.1:0" : `127.0.0.1:${base + id - 1}`,
      "--listen-http",
      base === undefined ? "127.0.0.1:0" : `127.0.0.1:${base + 3000 + id - 1}`,
      "--data-dir",
      node.dataDir,
      ...(options.join === undefined ? [] : ["--join", options.join.join(",")]),
      ...(this.opts.serveArgs ?? []),
    ];
    let log = this.logs.get(id);
    if (log === undefined) {
      log = createWriteStream(node.logFile, { flags: "a" });
      this.logs.set(id, log);
    }
    const proc = Bun.spawn(args, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    this.processes.set(id, proc);
    node.pid = proc.pid;
    node.state = "starting";
    const started = pipeNodeOutput(proc, log);
    const timeoutMs = this.opts.startTimeoutMs ?? 15_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const info = await Promise.race([
      started,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`node ${id} did not start within ${timeoutMs} ms; see ${node.logFile}`)), timeoutMs);
      }),
      proc.exited.then(async (code) => {
        // Why, from its own last words (found in a black-box walkthrough: only the log said "port in use").
        await Promise.race([started.ended, Bun.sleep(1_000)]);
        const reason = started.stoppingReason();
        throw new NodeStartError(`node ${id} exited with code ${code} before starting${reason === undefined ? "" : `: ${reason}`}; see ${node.logFile}`);
      }),
    ]).finally(() => clearTimeout(timer));
    node.httpUrl = info.httpUrl;
    node.peerPort = info.peerPort;
    node.state = "running";
    // A node that exits without being told to (a crash, or something outside the run killed it)
    // is marked dead at once, so no fault acts on a process that is gone, and the run reports it.
    void proc.exited.then((code) => {
      if (this.processes.get(id) !== proc || this.exitsExpected.has(proc)) return;
      this.unexpectedExits.push({ id, code, signal: proc.signalCode === null ? undefined : String(proc.signalCode) });
      this.processes.delete(id);
      node.pid = undefined;
      node.state = "dead";
    });
    for (const from of this.nodes) if (from.id !== id) this.links.get(`${from.id}>${id}`)?.setTarget(info.peerPort);
  }

  /** Sends `signal` to node `id` by pid. SIGKILL marks it dead at once; a node already gone is left alone. */
  signal(id: number, signal: "SIGKILL" | "SIGTERM" | "SIGSTOP" | "SIGCONT"): void {
    const node = this.node(id);
    const proc = this.processes.get(id);
    if (proc === undefined || node.pid === undefined) return;
    if (signal === "SIGKILL" || signal === "SIGTERM") this.exitsExpected.add(proc);
    try {
      process.kill(node.pid, signal);
    } catch (error: unknown) {
      // ESRCH: it exited between our last look and now; its exit is recorded (unexpectedExits).
      if ((error as { code?: unknown }).code !== "ESRCH") throw error;
      return;
    }
    if (signal === "SIGSTOP") node.state = "paused";
    if (signal === "SIGCONT") node.state = "running";
  }

  /** SIGKILLs node `id` and waits until the process is gone. */
  async kill(id: number): Promise<void> {
    const node = this.node(id);
    const proc = this.processes.get(id);
    if (proc === undefined) return;
    this.exitsExpected.add(proc);
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await proc.exited;
    this.processes.delete(id);
    node.pid = undefined;
    node.state = "dead";
  }

  /**
   * SIGKILLs every node in `ids` at the same instant (one synchronous loop of kill(2) calls, no await
   * between them), then waits until every process is gone.
   */
  async killAll(ids: readonly number[] = this.nodes.map((n) => n.id)): Promise<void> {
    for (const id of ids) {
      const proc = this.processes.get(id);
      if (proc === undefined) continue;
      this.exitsExpected.add(proc);
      try {
        process.kill(proc.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await Promise.all(ids.map((id) => this.kill(id)));
  }

  /**
   * SIGTERMs node `id` and waits for it to exit; a node still running after `timeoutMs` is SIGKILLed
   * (the answer is then null: it did not shut down cleanly).
   */
  async terminate(id: number, timeoutMs = 15_000): Promise<number | null> {
    const proc = this.processes.get(id);
    if (proc === undefined) return null;
    this.exitsExpected.add(proc);
    process.kill(proc.pid, "SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const exited = await Promise.race([proc.exited, timedOut]).finally(() => clearTimeout(timer));
    if (exited === null) {
      await this.kill(id);
      return null;
    }
    const code = exited;
    this.processes.delete(id);
    const node = this.node(id);
    node.pid = undefined;
    node.state = "dead";
    return code;
  }

  /** Deletes the data dir of node `id`, which must not be running: it starts again empty. */
  wipe(id: number): void {
    const node = this.node(id);
    if (node.state !== "dead") throw new Error(`node ${id} is ${node.state}: stop it before wiping its data dir`);
    rmSync(node.dataDir, { recursive: true, force: true });
  }

  /** Cuts every link to and from `id` (the process keeps running). */
  isolate(id: number): void {
    this.requireProxies();
    for (const [name, proxy] of this.links) {
      const [from, to] = name.split(">").map(Number);
      if (from === id || to === id) proxy.cut();
    }
  }

  /** Cuts the link `from` → `to` only. */
  cutLink(from: number, to: number): void {
    this.requireProxies();
    this.links.get(`${from}>${to}`)?.cut();
  }

  /** Restores every link. */
  heal(): void {
    for (const proxy of this.links.values()) proxy.heal();
  }

  private requireProxies(): void {
    if (this.links.size === 0) throw new Error("link faults need the runner's proxies: run without --base-port");
  }

  /** GET /status of one node, or undefined when it does not answer in time. */
  async status(id: number, timeoutMs = 1_000): Promise<StatusView | undefined> {
    const node = this.node(id);
    if (node.state !== "running") return undefined;
    try {
      const response = await fetch(`${node.httpUrl}/status`, { signal: AbortSignal.timeout(timeoutMs) });
      if (!response.ok) return undefined;
      return (await response.json()) as StatusView;
    } catch {
      return undefined;
    }
  }

  /**
   * Waits until the running nodes among `among` agree on one leader in their highest term; returns
   * its id. Polls /status (a condition, not a sleep) until `timeoutMs`.
   */
  async waitForLeader(among: readonly number[] = this.nodes.map((n) => n.id), timeoutMs = 10_000): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const statuses = (await Promise.all(among.map((id) => this.status(id, 500)))).filter((s) => s !== undefined);
      const leaders = statuses.filter((s) => s.role === "leader");
      const top = leaders.sort((a, b) => b.term - a.term)[0];
      if (top !== undefined && statuses.filter((s) => s.leaderId === top.id && s.term === top.term).length * 2 > this.nodes.length) {
        return top.id;
      }
      if (performance.now() > deadline) {
        throw new Error(`no leader among ${among.join(",")} within ${timeoutMs} ms: ${JSON.stringify(statuses)}`);
      }
      await Bun.sleep(20); // polling interval between status probes
    }
  }

  /**
   * Waits until every running node has applied the same index, at least `index`; then compares
   * their state's hashes (`replicasAgree`), and throws if two nodes at one index hold different state.
   */
  async waitForConvergence(index: number, timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const running = this.nodes.filter((n) => n.state === "running");
      const statuses = await Promise.all(running.map((n) => this.status(n.id, 500)));
      const applied = statuses.map((s) => s?.appliedIndex ?? -1);
      if (applied.every((a) => a >= index && a === applied[0])) {
        await this.replicasAgree(running, Math.max(deadline - performance.now(), REPLICA_CHECK_MS_MIN));
        return;
      }
      if (performance.now() > deadline) throw new Error(`nodes did not converge on index ${index}: applied ${applied.join(",")}`);
      await Bun.sleep(20); // polling interval between status probes
    }
  }
  /**
   * Compares the state hashes of `nodes` (`GET /hash`, src/client/replicas.ts), asking again while
   * they stand at different indexes (an expiring lease is a write of its own). Two nodes at one index
   * with different state is a divergence no read of the checked keys would show (a key nobody
   * checks, a lease, a session): it throws. A comparison that could not be made (fewer than two
   * answers, indexes that kept moving) is recorded in `replicaChecks` but proves nothing either way.
   */
  async replicasAgree(nodes: readonly ClusterNode[], timeoutMs: number): Promise<ReplicaCheck | undefined> {
    if (nodes.length < 2) return undefined;
    const client = createClient({ endpoints: nodes.map((n) => n.httpUrl), timeoutMs: 2_000 });
    const check = await compareReplicas(client, { timeoutMs });
    this.replicaChecks.push(check);
    if (check.verdict === "diverged") throw new Error(`replicas diverged: ${check.message}`);
    return check;
  }


  /**
   * Takes `proc`, a process a scenario just started beside the nodes, into the cluster's care:
   * `stop` resumes and kills it if it still runs (found in a black-box review: Ctrl-C during `kv
   * chaos lock` left its lock clients running, one of them stopped for good). A process adopted
   * after `stop` is killed at once, and the scenario stopped with `ChaosClusterStopped`.
   */
  adopt<P extends Subprocess>(proc: P): P {
    if (this.stopped) {
      proc.kill("SIGKILL");
      throw new ChaosClusterStopped();
    }
    this.helpers.add(proc);
    void proc.exited.then(() => this.helpers.delete(proc));
    return proc;
  }

  /** Kills every process by pid (the nodes and what `adopt` took) and closes every proxy. Safe to call more than once. */
  async stop(): Promise<void> {
    this.stopped = true;
    // Every process is signalled before anything is awaited: a run cut short may end while this waits.
    const helpers = [...this.helpers];
    for (const proc of helpers) {
      for (const signal of ["SIGCONT", "SIGKILL"] as const) {
        try {
          proc.kill(signal);
        } catch {
          // gone
        }
      }
    }
    for (const node of this.nodes) {
      if (node.state === "paused" && node.pid !== undefined) {
        try {
          process.kill(node.pid, "SIGCONT");
        } catch {
          // gone
        }
      }
    }
    const nodesKilled = Promise.all(this.nodes.map((node) => this.kill(node.id)));
    await Promise.all(helpers.map((proc) => proc.exited));
    await nodesKilled;
    for (const proxy of this.links.values()) proxy.close();
    for (const log of this.logs.values()) log.end();
    this.logs.clear();
  }
}

/** A node that exited before its "started" line: it could not start (a port in use, a damaged data dir). */
export class NodeStartError extends Error {
  override name = "NodeStartError";
}

/** The cluster's first start failed (see `NodeStartError`): no scenario ran, so nothing was found. */
export class ClusterStartError extends Error {
  override name = "ClusterStartError";
}

/** Thrown at a scenario that starts a process after its cluster was stopped (the run is ending). */
export class ChaosClusterStopped extends Error {
  override name = "ChaosClusterStopped";
  constructor() {
    super("the run is ending: the cluster was stopped");
  }
}
