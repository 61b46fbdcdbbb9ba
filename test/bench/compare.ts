// `bun run bench:compare`: kv against etcd 3.4 on this machine, side by side, with the very same
// client (`kv bench`). Starts a 3-node etcd (fsync on, default timings) and a 3-node kv on loopback,
// runs each workload against kv then etcd, round after round (A B A B), and prints a markdown table
// of medians and kv/etcd ratios, CPU per operation, peak RSS per node and how busy the rest of the
// machine was. `--watch`, `--idle-watchers N` and `--lease-churn N` add issue 14's scale sections
// (watchers following the writes, idle watchers on the leader, lease expiry), kv then etcd, each
// with its own table. Kills every process it started (by pid) on success, failure or Ctrl-C.
//
// It lives under test/ because it drives ChaosCluster (src/chaos), which src/bench may not import.
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import packageJson from "../../package.json" with { type: "json" };
import { BenchInputError, parseDurationMs, parseWholeNumber } from "../../src/bench/bench-options.ts";
import type { BenchReport } from "../../src/bench/bench-report.ts";
import { ChaosCluster } from "../../src/chaos/cluster.ts";
import { runLargeData } from "./large-data.ts";

const root = join(import.meta.dir, "..", "..");
const USAGE = `usage: bun run bench:compare [--duration 10s] [--rounds 3] [--sustained 60s] [--value-sizes 1024,16384,262144] [--matrix-only]
                             [--large-data] [--large-keys 2000000] [--large-value-bytes 1024] [--large-only]
                             [--watch [--watchers 1000]] [--idle-watchers 10000] [--lease-churn 10000 [--lease-ttl 10s]] [--scale-only]
                             [--kv-bin dist/kv] [--out FILE] [--keep-data]
  --duration   length of each measured run (default 10s)
  --rounds     rounds of A B (kv, etcd) per workload; figures are medians over rounds (default 3)
  --sustained  length of the final full-load write run (256 clients) on each store, counting
               leader changes (default 60s; 0 skips it)
  --value-sizes  also run the value-size matrix: 64 clients writing values of each size (bytes) over
               50,000 keys, reported with MB/s (the node-loop issue's targets)
  --matrix-only  run only the value-size matrix (no 100 B workloads, no sustained run), each value
               size on fresh clusters, with each size's peak RSS per node
  --large-data also run the large-data set (kv only, on a cluster of its own; see large-data.ts):
               load --large-keys values of --large-value-bytes, then time a follower's restart, a
               node joining with --join (image MB/s, leader changes) and compare data dir sizes
  --large-keys, --large-value-bytes  its size (default 2000000 x 1024: about 2 GB; loading takes minutes)
  --large-only run only the large-data set (no etcd)
  --watch      also run the watch section: 64 clients writing while --watchers streams (default 1000,
               spread over the nodes) follow the writers' prefix; events/s, acknowledgement-to-event
               latency p50/p99 and events lost, each round kv then etcd
  --idle-watchers N  also run the idle-watchers section: N watch streams on a prefix nobody writes,
               all on the leader; the leader's added RSS (VmRSS before, and with them open) and
               64-client writes/s without and with them (A B A B)
  --lease-churn N  also run the lease-churn section: N leases with one key each, all running out
               within about a second (\`kv bench --lease-churn\`); time until every key is gone
               (target TTL + 1 s) and leader changes
  --lease-ttl  TTL of the lease-churn leases (default 10s)
  --scale-only run only the sections above (no 100 B workloads, no sustained run, no client ceiling)
  --kv-bin     the kv executable to measure and to run the client with (default dist/kv, built if missing)
  --out        also write the markdown report to FILE
  --keep-data  keep the temp dir (node data and logs)`;

/** One workload of the comparison: the same `kv bench` flags against both stores. */
interface Workload {
  readonly name: string;
  readonly clients: number;
  readonly mix: string;
  /** Default VALUE_BYTES and KEYS. */
  readonly valueBytes?: number;
  readonly keys?: number;
  /** More `kv bench` flags (`--watchers N`, `--idle-watchers N`, ...). */
  readonly extraArgs?: readonly string[];
}

/** Keys of the value-size matrix: enough that 64 clients rarely write one key at once. */
const MATRIX_KEYS = 50_000;

const WORKLOADS: readonly Workload[] = [
  { name: "writes, 1 client", clients: 1, mix: "put=1" },
  { name: "writes, 16 clients", clients: 16, mix: "put=1" },
  { name: "writes, 64 clients", clients: 64, mix: "put=1" },
  { name: "writes, 256 clients", clients: 256, mix: "put=1" },
  { name: "linearizable reads, 64 clients", clients: 64, mix: "get=1" },
];
/** The final long run at full load: no leader may change while the CPU is saturated (issue 5). */
const SUSTAINED: Workload = { name: "sustained writes, 256 clients", clients: 256, mix: "put=1" };
/** The workload after which peak RSS is recorded against the issue's target. */
const RSS_CHECKPOINT = "writes, 64 clients";
const KEYS = 10_000;
const VALUE_BYTES = 100;

/** The stores compared, and `noop`: the client's ceiling against a server that does nothing. */
type StoreName = "kv" | "etcd" | "noop";

/** One measured run. */
interface RunResult {
  readonly report: BenchReport;
  /** CPU time of the store's three processes during the run, per successful operation, in ms. */
  readonly storeCpuMsPerOp: number;
  /** CPU the rest of the machine used during the run (not the store, not the client), in cores. */
  readonly foreignCores: number;
  /** CPU time of the `kv bench` client per successful operation, in ms. */
  readonly clientCpuMsPerOp: number;
}

/** A store under test: its client URLs, where its leader is, and its node processes. */
interface Store {
  readonly name: StoreName;
  readonly endpoints: () => string[];
  readonly pids: () => number[];
  /** Stops the store's processes (the matrix starts fresh clusters for each value size). */
  readonly stop?: () => Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every child is killed by pid, whatever happens.

const children = new Set<Subprocess>();
const cleanups: Array<() => Promise<void>> = [];
/** Pids started by others on our behalf (the kv nodes ChaosCluster spawns), for the last-resort kill. */
const otherPids: Array<() => number[]> = [];
let cleaningUp: Promise<void> | undefined;

function killChildren(): void {
  const pids = [...[...children].map((child) => child.pid), ...otherPids.flatMap((pidsOf) => pidsOf())];
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

async function cleanup(): Promise<void> {
  cleaningUp ??= (async () => {
    killChildren();
    for (const step of cleanups.reverse()) await step().catch(() => {});
    await Promise.all([...children].map((child) => child.exited));
  })();
  return cleaningUp;
}

process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping every process started...`);
    void cleanup().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  });
}

function spawnTracked(args: string[], opts: { logFile?: string; pipe?: boolean } = {}): Subprocess<"ignore", "pipe" | number, "pipe" | number> {
  const fd = opts.pipe === true ? undefined : openSync(opts.logFile ?? "/dev/null", "a");
  const out = fd ?? "pipe";
  const child = Bun.spawn(args, { stdin: "ignore", stdout: out, stderr: out }) as Subprocess<"ignore", "pipe" | number, "pipe" | number>;
  if (fd !== undefined) closeSync(fd); // the child holds its own copy
  children.add(child);
  void child.exited.then(() => children.delete(child));
  return child;
}

// ---------------------------------------------------------------------------------------------
// /proc readings

const CLOCK_TICKS_PER_S = 100; // USER_HZ on Linux

/** utime + stime of a process, in ms (0 when it is gone). */
function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    return 0;
  }
}

/** Busy CPU time of the whole machine (all cores), in ms. */
function machineBusyMs(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] as string;
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.slice(0, 8).reduce((sum, v) => sum + v, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return ((total - idle) * 1000) / CLOCK_TICKS_PER_S;
}

/** Peak resident set (VmHWM) of a process in MB, or NaN when it is gone. */
function peakRssMb(pid: number): number {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match === null ? Number.NaN : Number(match[1]) / 1024;
  } catch {
    return Number.NaN;
  }
}

// ---------------------------------------------------------------------------------------------
// Setup

/** Ports that nothing listens on right now: `count` consecutive from a base, tried at random. */
async function freePortRange(count: number, gap = 0): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    const ports = [...Array.from({ length: count }, (_, i) => base + i), ...(gap > 0 ? Array.from({ length: count }, (_, i) => base + gap + i) : [])];
    if (ports.some((port) => port > 65_000)) continue;
    const listeners: Array<{ stop: (force?: boolean) => void }> = [];
    let free = true;
    for (const port of ports) {
      try {
        listeners.push(Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }));
      } catch {
        free = false;
        break;
      }
    }
    for (const listener of listeners) listener.stop(true);
    if (free) return base;
  }
  throw new Error("found no free port range");
}

function ensureEtcd(): string {
  const found = Bun.which("etcd");
  if (found !== null) return found;
  console.error("etcd not found: apt-get install -y etcd-server etcd-client");
  const install = Bun.spawnSync(["apt-get", "install", "-y", "etcd-server", "etcd-client"], {
    stdout: "inherit",
    stderr: "inherit",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  const installed = Bun.which("etcd");
  if (install.exitCode !== 0 || installed === null) throw new Error("could not install etcd-server (apt-get install -y etcd-server etcd-client)");
  return installed;
}

/** The kv executable, copied into the run's dir so a rebuild meanwhile cannot change it. */
function prepareKvBinary(requested: string | undefined, dir: string): string {
  const source = requested ?? join(root, "dist", "kv");
  if (!existsSync(source)) {
    if (requested !== undefined) throw new Error(`${requested} does not exist`);
    console.error("dist/kv not found: bun run build");
    const build = Bun.spawnSync([process.execPath, "build.ts"], { cwd: root, stdout: "inherit", stderr: "inherit" });
    if (build.exitCode !== 0) throw new Error("bun run build failed");
  }
  mkdirSync(join(dir, "bin"), { recursive: true });
  const copy = join(dir, "bin", "kv");
  copyFileSync(source, copy);
  Bun.spawnSync(["chmod", "+x", copy]);
  const help = Bun.spawnSync([copy, "bench", "--help"], { stdout: "pipe", stderr: "pipe" });
  if (help.exitCode !== 0 || !help.stdout.toString().includes("--target")) {
    throw new Error(`${source} has no 'bench' command: rebuild it (bun run build)`);
  }
  return copy;
}

/** One progress line for a run of `workload` on `store`. */
function runLine(round: number, rounds: number, workload: Workload, store: Store, result: RunResult): string {
  const r = result.report;
  return (
    `round ${round}/${rounds}  ${workload.name.padEnd(31)} ${store.name.padEnd(4)}  ${fmt(r.opsPerSec).padStart(7)} ops/s  ` +
    `p50 ${fmtMs(r.latencyMs.p50)} ms  p99 ${fmtMs(r.latencyMs.p99)} ms  errors ${r.errors}  leader changes ${r.leaderChanges ?? "-"}  ` +
    `other load ${result.foreignCores.toFixed(2)} cores`
  );
}

async function startEtcd(etcdBin: string, dir: string): Promise<Store> {
  const base = await freePortRange(6);
  const clientUrl = (i: number) => `http://127.0.0.1:${base + i}`;
  const peerUrl = (i: number) => `http://127.0.0.1:${base + 3 + i}`;
  const initialCluster = [0, 1, 2].map((i) => `etcd-${i + 1}=${peerUrl(i)}`).join(",");
  const processes = [0, 1, 2].map((i) =>
    spawnTracked(
      [
        etcdBin,
        "--name",
        `etcd-${i + 1}`,
        "--data-dir",
        join(dir, `etcd-${i + 1}`),
        "--listen-client-urls",
        clientUrl(i),
        "--advertise-client-urls",
        clientUrl(i),
        "--listen-peer-urls",
        peerUrl(i),
        "--initial-advertise-peer-urls",
        peerUrl(i),
        "--initial-cluster",
        initialCluster,
        "--initial-cluster-token",
        `bench-${base}`,
        "--initial-cluster-state",
        "new",
      ],
      { logFile: join(dir, `etcd-${i + 1}.log`) },
    ),
  );
  const endpoints = [0, 1, 2].map(clientUrl);
  // Ready once one member reports itself leader through the gateway.
  const deadline = performance.now() + 30_000;
  for (;;) {
    const statuses = await Promise.all(
      endpoints.map((endpoint) =>
        fetch(`${endpoint}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(1_000) })
          .then((response) => (response.ok ? (response.json() as Promise<{ header?: { member_id?: string }; leader?: string }>) : undefined))
          .catch(() => undefined),
      ),
    );
    if (statuses.some((status) => status?.leader !== undefined && status.leader === status.header?.member_id)) break;
    for (const proc of processes) if (proc.exitCode !== null) throw new Error(`etcd exited with ${proc.exitCode}; see ${dir}/etcd-*.log`);
    if (performance.now() > deadline) throw new Error(`etcd elected no leader within 30 s; see ${dir}/etcd-*.log`);
    await Bun.sleep(50); // polling interval between status probes
  }
  return {
    name: "etcd",
    endpoints: () => endpoints,
    pids: () => processes.map((proc) => proc.pid),
    stop: async () => {
      for (const proc of processes) proc.kill("SIGKILL");
      await Promise.all(processes.map((proc) => proc.exited));
    },
  };
}

async function startKv(kvBin: string, dir: string): Promise<Store> {
  // The classic layout (peers on base..base+2, HTTP on base+3000..): no proxies between the nodes,
  // so peer traffic costs what it costs in production, as etcd's does.
  const basePort = await freePortRange(3, 3_000);
  const cluster = new ChaosCluster({ size: 3, command: [kvBin], baseDir: join(dir, "kv"), basePort });
  cleanups.push(() => cluster.stop());
  otherPids.push(() => cluster.nodes.map((node) => node.pid).filter((pid): pid is number => pid !== undefined));
  await cluster.start();
  await cluster.waitForLeader(undefined, 30_000);
  return {
    name: "kv",
    endpoints: () => cluster.nodes.map((node) => node.httpUrl),
    pids: () => cluster.nodes.map((node) => node.pid).filter((pid): pid is number => pid !== undefined),
    stop: () => cluster.stop(),
  };
}

/** Resident set now (VmRSS) of a process in MB, or NaN when it is gone. */
function rssMb(pid: number): number {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match === null ? Number.NaN : Number(match[1]) / 1024;
  } catch {
    return Number.NaN;
  }
}

/** Which of the store's endpoints (and pids, same order) leads now. */
async function leaderIndex(store: Store): Promise<number> {
  const endpoints = store.endpoints();
  const deadline = performance.now() + 30_000;
  for (;;) {
    const statuses = await Promise.all(
      endpoints.map((endpoint) =>
        (store.name === "etcd" ? fetch(`${endpoint}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(1_000) }) : fetch(`${endpoint}/status`, { signal: AbortSignal.timeout(1_000) }))
          .then((response) => (response.ok ? (response.json() as Promise<{ role?: string; leader?: string; header?: { member_id?: string } }>) : undefined))
          .catch(() => undefined),
      ),
    );
    const index = statuses.findIndex((status) => (store.name === "etcd" ? status?.leader !== undefined && status.leader === status.header?.member_id : status?.role === "leader"));
    if (index >= 0) return index;
    if (performance.now() > deadline) throw new Error(`${store.name}: no leader within 30 s`);
    await Bun.sleep(100); // polling interval between status probes
  }
}

// ---------------------------------------------------------------------------------------------
// Runs

/** Reads `stream` to its end, calling `onLine` with each complete line; returns the whole text. */
async function readLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<string> {
  const decoder = new TextDecoder();
  let all = "";
  let pending = "";
  for await (const chunk of stream) {
    const text = decoder.decode(chunk, { stream: true });
    all += text;
    pending += text;
    let at: number;
    while ((at = pending.indexOf("\n")) >= 0) {
      onLine(pending.slice(0, at));
      pending = pending.slice(at + 1);
    }
  }
  return all;
}

async function runOnce(kvBin: string, store: Store, workload: Workload, duration: string, onStderrLine: (line: string) => void = () => {}): Promise<RunResult> {
  const pids = store.pids();
  const cpuBeforeMs = pids.reduce((sum, pid) => sum + processCpuMs(pid), 0);
  const busyBeforeMs = machineBusyMs();
  const args = [
    kvBin,
    "bench",
    "--target",
    store.name,
    ...(store.endpoints().length > 0 ? ["--endpoints", store.endpoints().join(",")] : []),
    "--clients",
    String(workload.clients),
    "--mix",
    workload.mix,
    "--duration",
    duration,
    "--keys",
    String(workload.keys ?? KEYS),
    "--value-bytes",
    String(workload.valueBytes ?? VALUE_BYTES),
    ...(workload.extraArgs ?? []),
    "--json",
  ];
  const child = spawnTracked(args, { pipe: true });
  const [out, err, code] = await Promise.all([
    new Response(child.stdout as ReadableStream<Uint8Array>).text(),
    readLines(child.stderr as ReadableStream<Uint8Array>, onStderrLine),
    child.exited,
  ]);
  const busyAfterMs = machineBusyMs();
  const cpuAfterMs = pids.reduce((sum, pid) => sum + processCpuMs(pid), 0);
  // Exit 1 with a report is a run that lost watch events: reported, not fatal.
  const parsed = code === 0 || code === 1 ? parseJson(out) : undefined;
  if (parsed === undefined) throw new Error(`kv bench against ${store.name} exited ${code}: ${err.trim()}`);
  const report = parsed as BenchReport;
  const usage = child.resourceUsage();
  const clientCpuMs = usage === undefined ? 0 : Number(usage.cpuTime.user + usage.cpuTime.system) / 1000;
  const storeCpuMs = cpuAfterMs - cpuBeforeMs;
  const foreignMs = Math.max(0, busyAfterMs - busyBeforeMs - storeCpuMs - clientCpuMs);
  return {
    report,
    storeCpuMsPerOp: report.ok === 0 ? Number.NaN : storeCpuMs / report.ok,
    foreignCores: foreignMs / Math.max(1, report.elapsedMs),
    clientCpuMsPerOp: report.ok === 0 ? Number.NaN : clientCpuMs / report.ok,
  };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function median(values: readonly number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–");
const fmtMs = (n: number) => fmt(n, n < 10 ? 2 : 1);
const fmtRatio = (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}×` : "–");

// ---------------------------------------------------------------------------------------------

/** One store's idle-watchers measurement: writes/s without and with N idle streams on the leader, and its RSS. */
interface IdleResult {
  readonly without: RunResult;
  readonly with: RunResult;
  readonly leaderIndex: number;
  readonly rssBeforeMb: number;
  readonly rssOpenMb: number;
  /** How long the N streams took to open (the holder's own figure). */
  readonly openMs: number;
}

/** A `kv bench --lease-churn` report (src/bench/lease-churn.ts), the fields the table shows. */
interface LeaseChurnResult {
  readonly setupMs: number;
  readonly leasesReady: number;
  readonly refreshSpreadMs: number;
  readonly expiredEarly: number;
  readonly goneAfterLastRefreshMs: number | null;
  readonly targetMs: number;
  readonly met: boolean;
  readonly keysLeft: number;
  readonly leaderChanges: number;
  readonly errors: Readonly<Record<string, number>>;
}

async function runLeaseChurn(kvBin: string, store: Store, leases: number, ttl: string): Promise<LeaseChurnResult> {
  const args = [kvBin, "bench", "--target", store.name, "--endpoints", store.endpoints().join(","), "--lease-churn", String(leases), "--lease-ttl", ttl, "--clients", "64", "--json"];
  const child = spawnTracked(args, { pipe: true });
  const [out, err, code] = await Promise.all([
    new Response(child.stdout as ReadableStream<Uint8Array>).text(),
    new Response(child.stderr as ReadableStream<Uint8Array>).text(),
    child.exited,
  ]);
  // Exit 1 with a report is a missed target: reported, not fatal.
  const parsed = code === 0 || code === 1 ? parseJson(out) : undefined;
  if (parsed === undefined) throw new Error(`kv bench --lease-churn against ${store.name} exited ${code}: ${err.trim()}`);
  return parsed as LeaseChurnResult;
}

/**
 * The idle-watchers run on one store: a separate `kv bench` process holds N streams on the leader
 * (their events, progress included, are read there, not in the writers' process), the leader's RSS
 * is read once they are open, then the 64-client write run goes as without them; the holder is
 * killed by pid afterwards.
 */
async function runIdle(kvBin: string, store: Store, idleWatchers: number, duration: string, without: RunResult): Promise<IdleResult> {
  const index = await leaderIndex(store);
  const pid = store.pids()[index] as number;
  const endpoint = store.endpoints()[index] as string;
  const rssBeforeMb = rssMb(pid);
  const holder = spawnTracked(
    [kvBin, "bench", "--target", store.name, "--endpoints", endpoint, "--requests", "1", "--clients", "1", "--idle-watchers", String(idleWatchers), "--idle-settle", "1h", "--json"],
    { pipe: true },
  );
  try {
    let openLine: string | undefined;
    const stderr = readLines(holder.stderr as ReadableStream<Uint8Array>, (line) => {
      if (line.includes("idle watchers open")) openLine ??= line;
    });
    const deadline = performance.now() + 120_000;
    while (openLine === undefined) {
      if (holder.exitCode !== null) throw new Error(`the idle watchers' holder exited ${holder.exitCode}: ${(await stderr).trim()}`);
      if (performance.now() > deadline) throw new Error("the idle watchers did not open within 120 s");
      await Bun.sleep(50); // polling interval while the streams open
    }
    await Bun.sleep(IDLE_SETTLE_MS); // let the leader's memory settle after the openings, before it is read
    const rssOpenMb = rssMb(pid);
    const openMs = Number(/in (\d+) ms/.exec(openLine)?.[1]);
    const result = await runOnce(kvBin, store, { name: "idle", clients: 64, mix: "put=1" }, duration);
    return { without, with: result, leaderIndex: index, rssBeforeMb, rssOpenMb, openMs };
  } finally {
    try {
      process.kill(holder.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await holder.exited;
  }
}

/** The pause between the idle watchers' opening and the RSS reading (and the first write). */
const IDLE_SETTLE_MS = 2_000;

async function main(): Promise<number> {
  let flags: {
    duration?: string;
    rounds?: string;
    sustained?: string;
    "value-sizes"?: string;
    "matrix-only"?: boolean;
    "large-data"?: boolean;
    "large-keys"?: string;
    "large-value-bytes"?: string;
    "large-only"?: boolean;
    watch?: boolean;
    watchers?: string;
    "idle-watchers"?: string;
    "lease-churn"?: string;
    "lease-ttl"?: string;
    "scale-only"?: boolean;
    "kv-bin"?: string;
    out?: string;
    "keep-data"?: boolean;
    help?: boolean;
  };
  let workloads: Workload[];
  let durationText: string;
  let rounds: number;
  let sustainedText: string;
  let large: { keys: number; valueBytes: number } | undefined;
  let watchers: number;
  let idleWatchers: number;
  let leaseChurn: number;
  let leaseTtlText: string;
  let scaleOnly: boolean;
  try {
    flags = parseArgs({
      args: process.argv.slice(2),
      options: {
        duration: { type: "string" },
        rounds: { type: "string" },
        sustained: { type: "string" },
        "value-sizes": { type: "string" },
        "matrix-only": { type: "boolean" },
        "large-data": { type: "boolean" },
        "large-keys": { type: "string" },
        "large-value-bytes": { type: "string" },
        "large-only": { type: "boolean" },
        watch: { type: "boolean" },
        watchers: { type: "string" },
        "idle-watchers": { type: "string" },
        "lease-churn": { type: "string" },
        "lease-ttl": { type: "string" },
        "scale-only": { type: "boolean" },
        "kv-bin": { type: "string" },
        out: { type: "string" },
        "keep-data": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
    if (flags.help === true) {
      console.log(USAGE);
      return 0;
    }
    durationText = flags.duration ?? "10s";
    parseDurationMs("duration", durationText);
    rounds = flags.rounds === undefined ? 3 : parseWholeNumber("rounds", flags.rounds, 1, 100);
    watchers = flags.watchers === undefined ? 1_000 : parseWholeNumber("watchers", flags.watchers, 1, 10_000);
    if (flags.watchers !== undefined && flags.watch !== true) throw new BenchInputError("--watchers goes with --watch");
    idleWatchers = flags["idle-watchers"] === undefined ? 0 : parseWholeNumber("idle-watchers", flags["idle-watchers"], 1, 10_000);
    leaseChurn = flags["lease-churn"] === undefined ? 0 : parseWholeNumber("lease-churn", flags["lease-churn"], 1, 1_000_000);
    leaseTtlText = flags["lease-ttl"] ?? "10s";
    parseDurationMs("lease-ttl", leaseTtlText);
    if (flags["lease-ttl"] !== undefined && leaseChurn === 0) throw new BenchInputError("--lease-ttl goes with --lease-churn N");
    scaleOnly = flags["scale-only"] === true;
    if (scaleOnly && flags.watch !== true && idleWatchers === 0 && leaseChurn === 0) throw new BenchInputError("--scale-only needs --watch, --idle-watchers or --lease-churn");
    if (scaleOnly && flags["matrix-only"] === true) throw new BenchInputError("give --scale-only or --matrix-only, not both");
    sustainedText = flags["matrix-only"] === true || scaleOnly ? "0" : (flags.sustained ?? "60s");
    if (sustainedText !== "0") parseDurationMs("sustained", sustainedText);
    const sizes = (flags["value-sizes"] ?? "").split(",").filter((part) => part.trim() !== "").map((part) => parseWholeNumber("value-sizes", part.trim(), 1, 1 << 20));
    if (flags["matrix-only"] === true && sizes.length === 0) throw new BenchInputError("--matrix-only needs --value-sizes");
    const matrix = sizes.map((valueBytes) => ({ name: `writes, 64 clients, ${valueBytes} B values`, clients: 64, mix: "put=1", valueBytes, keys: MATRIX_KEYS }));
    workloads = scaleOnly ? [] : [...(flags["matrix-only"] === true ? [] : WORKLOADS), ...matrix];
    if (flags["large-data"] === true || flags["large-only"] === true) {
      large = {
        keys: flags["large-keys"] === undefined ? 2_000_000 : parseWholeNumber("large-keys", flags["large-keys"], 1, 100_000_000),
        valueBytes: flags["large-value-bytes"] === undefined ? 1024 : parseWholeNumber("large-value-bytes", flags["large-value-bytes"], 1, 1 << 20),
      };
    }
  } catch (error) {
    const message = error instanceof BenchInputError || error instanceof TypeError ? error.message : String(error);
    console.error(`bench:compare: ${message}\n${USAGE}`);
    return 2;
  }

  const loadBefore = loadavg();
  const dir = mkdtempSync(join(tmpdir(), "kv-bench-compare-"));
  mkdirSync(join(dir, "kv"), { recursive: true });
  let ok = false;
  /** Set when a node of a store was gone at the end of the runs (its data dir and log are kept). */
  let nodesGone = false;
  try {
    const kvBin = prepareKvBinary(flags["kv-bin"], dir);
    console.error(`data and logs in ${dir}; load average before start: ${loadBefore.map((l) => l.toFixed(2)).join(" ")}`);
    const largeRun = async (): Promise<string[]> => {
      if (large === undefined) return [];
      const busyBeforeMs = machineBusyMs();
      const startedMs = performance.now();
      const section = await runLargeData({
        kvBin,
        dir,
        ...large,
        onCleanup: (step) => cleanups.push(step),
        onPids: (pidsOf) => otherPids.push(pidsOf),
        freePortRange,
        progress: (line) => console.error(line),
      });
      const machineCores = (machineBusyMs() - busyBeforeMs) / Math.max(1, performance.now() - startedMs);
      return [
        ...section,
        "",
        `Machine: ${cpus().length} cores, load average before start ${loadBefore.map((l) => l.toFixed(2)).join(" ")}; ` +
          `both cores together were ${(machineCores * 100).toFixed(0)}% busy on average during the large-data run (kv, the loader and anything else on the machine).`,
      ];
    };
    if (flags["large-only"] === true) {
      const markdown = [`### kv ${packageJson.version}: large data set, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`, ...(await largeRun())].join("\n");
      console.log(markdown);
      if (flags.out !== undefined) writeFileSync(flags.out, `${markdown}\n`);
      ok = true;
      return 0;
    }
    const etcdBin = ensureEtcd();
    const etcdVersion = (Bun.spawnSync([etcdBin, "--version"]).stdout.toString().split("\n")[0] ?? "").replace("etcd Version: ", "").trim();
    const matrixOnly = flags["matrix-only"] === true;
    // With --matrix-only every value size gets fresh clusters of its own (below); these serve the rest.
    const stores = matrixOnly ? [] : [await startKv(kvBin, dir), await startEtcd(etcdBin, dir)];

    // The client's own ceiling in this run: kv bench against a do-nothing Bun.serve it starts.
    const noop: Store = { name: "noop", endpoints: () => [], pids: () => [] };
    const ceiling = scaleOnly ? undefined : await runOnce(kvBin, noop, { name: "ceiling", clients: 64, mix: "put=1" }, durationText);
    if (ceiling !== undefined) console.error(`client ceiling (noop server, 64 clients): ${fmt(ceiling.report.opsPerSec)} req/s`);

    // Warm up both (JIT, file growth, connection setup), not counted.
    for (const store of stores) await runOnce(kvBin, store, { name: "warm-up", clients: 16, mix: "put=1" }, "2s");

    const results = new Map<string, RunResult[]>(); // `${store}|${workload}` → rounds
    const rssAtCheckpoint = new Map<StoreName, number[]>();
    /** With --matrix-only, each value size runs on fresh clusters: their peak RSS per node after it. */
    const rssBySize = new Map<string, Map<StoreName, number[]>>();
    if (matrixOnly) {
      for (const workload of workloads) {
        const sizeDir = join(dir, `size-${workload.valueBytes ?? VALUE_BYTES}`);
        mkdirSync(join(sizeDir, "kv"), { recursive: true });
        const fresh = [await startKv(kvBin, sizeDir), await startEtcd(etcdBin, sizeDir)];
        for (const store of fresh) await runOnce(kvBin, store, { name: "warm-up", clients: 16, mix: "put=1" }, "2s");
        for (let round = 1; round <= rounds; round++) {
          for (const store of fresh) {
            const result = await runOnce(kvBin, store, workload, durationText);
            const key = `${store.name}|${workload.name}`;
            results.set(key, [...(results.get(key) ?? []), result]);
            console.error(`${runLine(round, rounds, workload, store, result)}  (fresh clusters)`);
          }
        }
        rssBySize.set(workload.name, new Map(fresh.map((store) => [store.name, store.pids().map(peakRssMb)])));
        for (const store of fresh) await store.stop?.();
      }
    }
    for (let round = 1; round <= rounds; round++) {
      for (const workload of matrixOnly ? [] : workloads) {
        for (const store of stores) {
          const result = await runOnce(kvBin, store, workload, durationText);
          const key = `${store.name}|${workload.name}`;
          results.set(key, [...(results.get(key) ?? []), result]);
          console.error(runLine(round, rounds, workload, store, result));
          if (round === 1 && workload.name === RSS_CHECKPOINT) rssAtCheckpoint.set(store.name, store.pids().map(peakRssMb));
        }
      }
    }
    const sustained = new Map<StoreName, RunResult>();
    if (sustainedText !== "0") {
      for (const store of stores) {
        const result = await runOnce(kvBin, store, SUSTAINED, sustainedText);
        sustained.set(store.name, result);
        const r = result.report;
        console.error(
          `sustained ${sustainedText}  ${store.name.padEnd(4)}  ${fmt(r.opsPerSec).padStart(7)} ops/s  errors ${r.errors}  leader changes ${r.leaderChanges ?? "-"}  ` +
            `other load ${result.foreignCores.toFixed(2)} cores`,
        );
      }
    }
    // The scale sections (issue 14): watchers following the writes, idle watchers, lease churn.
    const watchWorkload: Workload = { name: `writes, 64 clients, ${fmt(watchers)} watchers`, clients: 64, mix: "put=1", extraArgs: ["--watchers", String(watchers)] };
    const watchResults = new Map<StoreName, RunResult[]>();
    if (flags.watch === true) {
      for (let round = 1; round <= rounds; round++) {
        for (const store of stores) {
          const result = await runOnce(kvBin, store, watchWorkload, durationText);
          watchResults.set(store.name, [...(watchResults.get(store.name) ?? []), result]);
          const w = result.report.watch;
          console.error(
            `round ${round}/${rounds}  watch ${store.name.padEnd(4)}  ${fmt(result.report.opsPerSec)} writes/s  ${fmt(w?.eventsPerSec ?? Number.NaN)} events/s  ` +
              `p50 ${fmtMs(w?.latencyMs.p50 ?? Number.NaN)} ms  p99 ${fmtMs(w?.latencyMs.p99 ?? Number.NaN)} ms  lost ${w?.lost ?? "?"}  other load ${result.foreignCores.toFixed(2)} cores`,
          );
        }
      }
    }
    const idleResults = new Map<StoreName, IdleResult>();
    if (idleWatchers > 0) {
      const plain: Workload = { name: "writes, 64 clients", clients: 64, mix: "put=1" };
      const without = new Map<StoreName, RunResult>();
      for (const store of stores) without.set(store.name, await runOnce(kvBin, store, plain, durationText));
      for (const store of stores) {
        const result = await runIdle(kvBin, store, idleWatchers, durationText, without.get(store.name) as RunResult);
        idleResults.set(store.name, result);
        console.error(
          `idle ${fmt(idleWatchers)} ${store.name.padEnd(4)}  writes/s ${fmt(result.without.report.opsPerSec)} -> ${fmt(result.with.report.opsPerSec)}  ` +
            `leader RSS ${fmt(result.rssBeforeMb)} -> ${fmt(result.rssOpenMb)} MB  open in ${fmt(result.openMs)} ms`,
        );
      }
    }
    const churnResults = new Map<StoreName, LeaseChurnResult>();
    if (leaseChurn > 0) {
      for (const store of stores) {
        const result = await runLeaseChurn(kvBin, store, leaseChurn, leaseTtlText);
        churnResults.set(store.name, result);
        console.error(
          `lease churn ${fmt(leaseChurn)} ${store.name.padEnd(4)}  setup ${fmt(result.setupMs)} ms  refresh spread ${fmt(result.refreshSpreadMs)} ms  ` +
            `all gone ${result.goneAfterLastRefreshMs === null ? "no" : `${fmt(result.goneAfterLastRefreshMs)} ms`} after the last keepalive  leader changes ${result.leaderChanges}`,
        );
      }
    }
    const rssAtEnd = new Map<StoreName, number[]>(stores.map((store) => [store.name, store.pids().map(peakRssMb)]));
    // A node gone before the end died during the runs: its log is the only witness, so the data dir stays.
    const gone = stores.flatMap((store) => (rssAtEnd.get(store.name) ?? []).flatMap((rss, i) => (Number.isNaN(rss) ? [`${store.name} node ${i + 1}`] : [])));
    if (gone.length > 0) {
      nodesGone = true;
      console.error(`gone before the end of the runs: ${gone.join(", ")}; their logs are in ${dir}`);
    }

    // The report.
    const lines: string[] = [];
    const memoryGb = totalmem() / 1024 ** 3;
    const allRuns = [...results.values(), ...watchResults.values()].flat().concat([...idleResults.values()].flatMap((r) => [r.without, r.with]));
    const foreign = median(allRuns.map((r) => r.foreignCores));
    lines.push(`### kv ${packageJson.version} vs etcd ${etcdVersion}: ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`);
    lines.push("");
    lines.push(
      `Machine: ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${memoryGb.toFixed(1)} GB RAM; Bun ${Bun.version}; etcd ${etcdVersion}. ` +
        `Each run ${durationText}, ${rounds} round${rounds === 1 ? "" : "s"} of kv then etcd per workload (A B A B), ${VALUE_BYTES} B values over ${fmt(KEYS)} keys (the value-size matrix: its sizes over ${fmt(MATRIX_KEYS)} keys), ` +
        `both 3 nodes on loopback with fsync; client: \`kv bench\` (one process, on the same machine). Load average before start: ` +
        `${loadBefore.map((l) => l.toFixed(2)).join(" ")}; median CPU used by other processes during runs: ${foreign.toFixed(2)} cores` +
        `${foreign > 0.2 || loadBefore[0]! > 0.5 ? " — **the machine was not quiet**" : ""}.`,
    );
    lines.push("");
    const clientCpu = (name: StoreName) => median((results.get(`${name}|${RSS_CHECKPOINT}`) ?? []).map((r) => r.clientCpuMsPerOp));
    if (ceiling !== undefined) {
      lines.push(
        `Client ceiling in this run: \`kv bench --target noop\` (a do-nothing Bun.serve) answered ${fmt(ceiling.report.opsPerSec)} req/s at 64 clients. ` +
          `Client CPU per operation in the 64-client write runs (startup included): ${fmt(clientCpu("kv"), 3)} ms against kv, ${fmt(clientCpu("etcd"), 3)} ms against etcd.`,
      );
      lines.push("");
    }
    if (workloads.length > 0) {
      lines.push("Medians over rounds; ratios are the median of each round's kv/etcd ratio. CPU/op sums the three nodes' CPU time.");
      lines.push("");
      lines.push("| workload | kv ops/s | etcd ops/s | kv/etcd | kv MB/s | etcd MB/s | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms | p99 kv/etcd | kv CPU ms/op | etcd CPU ms/op | errors kv / etcd | leader changes kv / etcd |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for (const workload of workloads) {
      const mbPerS = (runs: RunResult[]) => (median(runs.map((r) => r.report.opsPerSec)) * (workload.valueBytes ?? VALUE_BYTES)) / 1e6;
      const a = results.get(`kv|${workload.name}`) ?? [];
      const b = results.get(`etcd|${workload.name}`) ?? [];
      const pick = (runs: RunResult[], f: (r: RunResult) => number) => median(runs.map(f));
      const ratio = (f: (r: RunResult) => number) => median(a.map((run, i) => (b[i] === undefined ? Number.NaN : f(run) / f(b[i] as RunResult))));
      const sum = (runs: RunResult[], f: (r: RunResult) => number) => runs.reduce((s, r) => s + f(r), 0);
      lines.push(
        `| ${workload.name} | ${fmt(pick(a, (r) => r.report.opsPerSec))} | ${fmt(pick(b, (r) => r.report.opsPerSec))} | ${fmtRatio(ratio((r) => r.report.opsPerSec))} ` +
          `| ${fmt(mbPerS(a), 1)} | ${fmt(mbPerS(b), 1)} ` +
          `| ${fmtMs(pick(a, (r) => r.report.latencyMs.p50))} | ${fmtMs(pick(b, (r) => r.report.latencyMs.p50))} ` +
          `| ${fmtMs(pick(a, (r) => r.report.latencyMs.p99))} | ${fmtMs(pick(b, (r) => r.report.latencyMs.p99))} | ${fmtRatio(ratio((r) => r.report.latencyMs.p99))} ` +
          `| ${fmt(pick(a, (r) => r.storeCpuMsPerOp), 3)} | ${fmt(pick(b, (r) => r.storeCpuMsPerOp), 3)} ` +
          `| ${sum(a, (r) => r.report.errors)} / ${sum(b, (r) => r.report.errors)} | ${sum(a, (r) => r.report.leaderChanges ?? 0)} / ${sum(b, (r) => r.report.leaderChanges ?? 0)} |`,
      );
    }
    if (sustained.size > 0) {
      lines.push("");
      lines.push(
        `Sustained full load: ${SUSTAINED.clients} clients writing for ${sustainedText} on each store after the rounds above ` +
          "(both cores saturated); a leader change here would be a spurious election under load.",
      );
      lines.push("");
      lines.push("| store | ops/s | p50 ms | p99 ms | max ms | errors | leader changes |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
      for (const [name, result] of sustained) {
        const r = result.report;
        lines.push(`| ${name} | ${fmt(r.opsPerSec)} | ${fmtMs(r.latencyMs.p50)} | ${fmtMs(r.latencyMs.p99)} | ${fmtMs(r.latencyMs.max)} | ${r.errors} | ${r.leaderChanges ?? "-"} |`);
      }
    }
    lines.push("");
    if (watchResults.size > 0) {
      lines.push("");
      lines.push(
        `Watchers following the writes: ${fmt(watchers)} streams on the writers' prefix, spread over the three nodes (kv: \`GET /watch\`, SSE; etcd: the gateway's \`POST /v3/watch\`, JSON lines), ` +
          `64 clients writing ${VALUE_BYTES} B values for ${durationText}; latency is from a put's acknowledgement to its event on a stream (0 when the event came first). ` +
          `Medians over ${rounds} round${rounds === 1 ? "" : "s"}; lost and misordered are summed. Targets (issue 14): every event delivered, events/s ≥ 2× etcd's, p99 ≤ etcd's.`,
      );
      lines.push("");
      lines.push("| store | writes/s | events delivered/s | events/s kv/etcd | ack→event p50 ms | ack→event p99 ms | events lost | misordered | streams resumed | other load (cores) |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
      const kvRuns = watchResults.get("kv") ?? [];
      const etcdRuns = watchResults.get("etcd") ?? [];
      for (const [name, runs] of watchResults) {
        const pick = (f: (r: RunResult) => number) => median(runs.map(f));
        const ratio = name === "kv" ? median(kvRuns.map((run, i) => (run.report.watch?.eventsPerSec ?? Number.NaN) / (etcdRuns[i]?.report.watch?.eventsPerSec ?? Number.NaN))) : Number.NaN;
        const sum = (f: (r: RunResult) => number) => runs.reduce((total, r) => total + f(r), 0);
        lines.push(
          `| ${name} | ${fmt(pick((r) => r.report.opsPerSec))} | ${fmt(pick((r) => r.report.watch?.eventsPerSec ?? Number.NaN))} | ${fmtRatio(ratio)} ` +
            `| ${fmtMs(pick((r) => r.report.watch?.latencyMs.p50 ?? Number.NaN))} | ${fmtMs(pick((r) => r.report.watch?.latencyMs.p99 ?? Number.NaN))} ` +
            `| ${sum((r) => r.report.watch?.lost ?? 0)} | ${sum((r) => r.report.watch?.misordered ?? 0)} | ${sum((r) => r.report.watch?.resumes ?? 0)} | ${pick((r) => r.foreignCores).toFixed(2)} |`,
        );
      }
    }
    if (idleResults.size > 0) {
      lines.push("");
      lines.push(
        `Idle watchers: ${fmt(idleWatchers)} watch streams on a prefix nobody writes, all on the leader, held by a second \`kv bench\` process (so their events, progress included, are read there, not by the writers). ` +
          `RSS is the leader's VmRSS just before they open and ${IDLE_SETTLE_MS / 1000} s after the last one opened (before the first write); writes/s are 64 clients for ${durationText}, ` +
          "without them, then with them (kv, etcd, kv, etcd). Targets (issue 14): at most 100 MB added, writes/s within 10% of the run without.",
      );
      lines.push("");
      lines.push("| store | idle watchers | opened in s | leader RSS before MB | with them MB | added MB | writes/s without | writes/s with | change |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
      for (const [name, r] of idleResults) {
        const change = r.with.report.opsPerSec / r.without.report.opsPerSec - 1;
        lines.push(
          `| ${name} | ${fmt(idleWatchers)} | ${fmt(r.openMs / 1000, 1)} | ${fmt(r.rssBeforeMb)} | ${fmt(r.rssOpenMb)} | ${fmt(r.rssOpenMb - r.rssBeforeMb)} ` +
            `| ${fmt(r.without.report.opsPerSec)} | ${fmt(r.with.report.opsPerSec)} | ${Number.isFinite(change) ? `${change >= 0 ? "+" : ""}${(change * 100).toFixed(0)}%` : "–"} |`,
        );
      }
    }
    if (churnResults.size > 0) {
      lines.push("");
      lines.push(
        `Lease churn: ${fmt(leaseChurn)} leases of ${leaseTtlText}, one key each, granted and put by 64 clients, then one keepalive each as fast as they go, so all run out within the keepalives' spread; ` +
          "\"all gone\" is from the last keepalive's answer until a count of the prefix on the leader says 0 (polled every 50 ms). Targets (issue 14): no leader change, every key gone within TTL + 1 s.",
      );
      lines.push("");
      lines.push("| store | leases ready | setup s | keepalive spread s | all gone after last keepalive s | target s | met | leader changes | expired before keepalive | errors |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |");
      for (const [name, r] of churnResults) {
        const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
        lines.push(
          `| ${name} | ${fmt(r.leasesReady)} | ${fmt(r.setupMs / 1000, 2)} | ${fmt(r.refreshSpreadMs / 1000, 2)} | ${r.goneAfterLastRefreshMs === null ? `not gone (${r.keysLeft} left)` : fmt(r.goneAfterLastRefreshMs / 1000, 2)} ` +
            `| ${fmt(r.targetMs / 1000, 1)} | ${r.met ? "yes" : "no"} | ${r.leaderChanges} | ${r.expiredEarly} | ${errors} |`,
        );
      }
    }
    if (rssBySize.size > 0) {
      lines.push("");
      lines.push("Each value size ran on fresh clusters (warmed up with 2 s of 16-client writes). Peak RSS per node (VmHWM, MB) after its runs:");
      lines.push("");
      lines.push("| workload | kv node 1 | node 2 | node 3 | etcd node 1 | node 2 | node 3 |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
      for (const [name, byStore] of rssBySize) {
        const row = (store: StoreName) => [0, 1, 2].map((i) => fmt(byStore.get(store)?.[i] ?? Number.NaN)).join(" | ");
        lines.push(`| ${name} | ${row("kv")} | ${row("etcd")} |`);
      }
    }
    lines.push("");
    if (stores.length > 0) {
      lines.push(`Peak RSS per node (VmHWM, MB), after the first 64-client write run and at the end of all runs${sustained.size > 0 ? " (the sustained run included)" : ""}:`);
      lines.push("");
      lines.push("| store | node 1 | node 2 | node 3 | at end: node 1 | node 2 | node 3 |");
      lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for (const store of stores) {
      const at = rssAtCheckpoint.get(store.name) ?? [];
      const end = rssAtEnd.get(store.name) ?? [];
      lines.push(`| ${store.name} | ${[0, 1, 2].map((i) => fmt(at[i] ?? Number.NaN)).join(" | ")} | ${[0, 1, 2].map((i) => fmt(end[i] ?? Number.NaN)).join(" | ")} |`);
    }
    if (large !== undefined) {
      // The large-data set runs on a cluster of its own: the stores above stop first.
      for (const pid of stores.flatMap((store) => store.pids())) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      lines.push(...(await largeRun()));
    }
    const markdown = lines.join("\n").replace(/\n{3,}/g, "\n\n"); // sections left out leave no runs of blank lines
    console.log(markdown);
    if (flags.out !== undefined) writeFileSync(flags.out, `${markdown}\n`);
    ok = true;
  } catch (error) {
    console.error(`bench:compare failed: ${error instanceof Error ? error.message : String(error)}`);
    console.error(`data and logs kept in ${dir}`);
  } finally {
    await cleanup();
    if (ok && flags["keep-data"] !== true && !nodesGone) rmSync(dir, { recursive: true, force: true });
    else if (ok) console.error(`data and logs kept in ${dir}`);
  }
  return ok ? 0 : 1;
}

process.exit(await main());
