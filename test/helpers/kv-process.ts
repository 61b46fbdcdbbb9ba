// Shared by the suites that test `kv serve` itself (flags and environment reaching the server,
// signals, exit codes, data dirs of earlier releases): one process of the built executable on
// OS-chosen ports, with its stderr kept in a log file. Suites that need a node but not a process run
// it in-process instead (server-cluster.ts).
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
