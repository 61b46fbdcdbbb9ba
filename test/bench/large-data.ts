// The large-data run of `bun run bench:compare --large-data` (issue 12, "A 2 GB data set"): loads a
// fresh 3-node kv with KEYS values of VALUE_BYTES (default 2,000,000 x 1 KiB), then measures
//   (a) a restart of one follower (SIGTERM, spawn) until it answers a linearizable read again;
//   (b) a new member started with `--join`: until it has applied what the leader had committed,
//       how fast the image streamed (its "snapshot receive" / "snapshot received" log lines), and
//       whether the others changed leader meanwhile (their terms and leader, before and after);
//   (c) every node's data dir size afterwards, running and once all stopped.
// kv only: etcd has no counterpart of the figures measured here. Every process it starts is killed
// by pid through the caller's bookkeeping (compare.ts).
import { createWriteStream, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { ChaosCluster, pipeNodeOutput, type StatusView } from "../../src/chaos/cluster.ts";

/** What the large-data run needs from the runner that owns the processes. */
export interface LargeDataOptions {
  readonly kvBin: string;
  /** The run's temp dir: data in `<dir>/large/node-N`, logs beside. */
  readonly dir: string;
  readonly keys: number;
  readonly valueBytes: number;
  /** Registers a cleanup step (run on success, failure or Ctrl-C). */
  readonly onCleanup: (step: () => Promise<void>) => void;
  /** Registers pids to SIGKILL as a last resort. */
  readonly onPids: (pidsOf: () => number[]) => void;
  /** `count` consecutive free ports from a base, and as many from base + gap. */
  readonly freePortRange: (count: number, gap: number) => Promise<number>;
  /** Progress lines (stderr). */
  readonly progress: (line: string) => void;
}

/** The targets. */
const RESTART_TARGET_MS = 3_000;
const STREAM_TARGET_MB_PER_S = 50;
const DATA_DIR_RATIO_TARGET = 1.2;
/**
 * Puts per transaction while loading. Few, so that entries stay small (8 KiB with 1 KiB values)
 * and the log is compacted as often as with single puts (every 10,000 entries by default): with 128
 * per transaction a log of 11,000 entries held 1.4 GB, and a joining node caught up from the log
 * rather than from an image.
 */
const PUTS_PER_TXN = 8;
/** Transactions in flight while loading. */
const LOADERS = 32;
const REQUEST_TIMEOUT_MS = 30_000;
/** How long loading, the restart and the join may take at most. */
const LOAD_TIMEOUT_MS = 3 * 60 * 60_000;
const RESTART_TIMEOUT_MS = 120_000;
const JOIN_TIMEOUT_MS = 30 * 60_000;

const keyOf = (i: number) => `large/${String(i).padStart(9, "0")}`;
const valueOf = (i: number, bytes: number) => `${i} `.padEnd(bytes, "x").slice(0, bytes);

/** Bytes of every file in `dir` and below (the log's segments are in `kv.db-log/`). */
function dirBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const stat = statSync(join(dir, name));
    if (stat.isFile()) total += stat.size;
    else if (stat.isDirectory()) total += dirBytes(join(dir, name));
  }
  return total;
}

/** Polls `probe` until it answers true; fails after `timeoutMs`. */
async function until(what: string, probe: () => Promise<boolean>, timeoutMs: number, intervalMs = 20): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(intervalMs); // polling interval
  }
}

async function statusOf(httpUrl: string): Promise<StatusView | undefined> {
  try {
    const response = await fetch(`${httpUrl}/status`, { signal: AbortSignal.timeout(2_000) });
    return response.ok ? ((await response.json()) as StatusView) : undefined;
  } catch {
    return undefined;
  }
}

/** A linearizable read of key 0 on `httpUrl` answered 200 with the value loaded. */
async function serves(httpUrl: string, valueBytes: number): Promise<boolean> {
  const response = await fetch(`${httpUrl}/kv/${keyOf(0)}`, { signal: AbortSignal.timeout(2_000), redirect: "manual" });
  return response.status === 200 && (await response.text()) === valueOf(0, valueBytes);
}

/** Loads keys 0..keys-1 through POST /txn, PUTS_PER_TXN at a time, LOADERS in flight, at the leader. */
async function load(cluster: ChaosCluster, keys: number, valueBytes: number, progress: (line: string) => void): Promise<void> {
  const batches = Math.ceil(keys / PUTS_PER_TXN);
  let next = 0;
  let done = 0;
  let leaderUrl = cluster.node(await cluster.waitForLeader(undefined, 30_000)).httpUrl;
  const startedMs = performance.now();
  const deadline = startedMs + LOAD_TIMEOUT_MS;
  let reported = 0;
  const loader = async () => {
    for (let batch = next++; batch < batches; batch = next++) {
      const success = [];
      for (let i = batch * PUTS_PER_TXN; i < Math.min(keys, (batch + 1) * PUTS_PER_TXN); i++) success.push({ put: { key: keyOf(i), value: valueOf(i, valueBytes) } });
      const body = JSON.stringify({ success });
      // A batch is sent again until applied: its puts write the same values, so a repeat is harmless.
      for (;;) {
        if (performance.now() > deadline) throw new Error(`loading took over ${LOAD_TIMEOUT_MS} ms`);
        const url = leaderUrl;
        const answer = await fetch(`${url}/txn`, { method: "POST", body, headers: { "content-type": "application/json" }, redirect: "manual", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }).then(
          async (response) => ({ status: response.status, text: await response.text() }),
          (error: unknown) => ({ status: 0, text: String(error) }),
        );
        if (answer.status === 200) break;
        if (answer.status === 400 || answer.status === 413 || answer.status === 507) throw new Error(`loading: ${answer.status} ${answer.text.slice(0, 200)}`);
        if (leaderUrl === url) leaderUrl = cluster.node(await cluster.waitForLeader(undefined, 30_000)).httpUrl;
      }
      done++;
      if (done * 10 >= (reported + 1) * batches) {
        reported = Math.floor((done * 10) / batches);
        const elapsedS = (performance.now() - startedMs) / 1000;
        progress(`large data: loaded ${reported * 10}% (${Math.min(keys, done * PUTS_PER_TXN).toLocaleString("en-US")} keys) in ${elapsedS.toFixed(0)} s`);
      }
    }
  };
  await Promise.all(Array.from({ length: LOADERS }, loader));
}

/** Time (ms since the epoch) and fields of the JSON log lines of `event` in `file`, in order. */
function logEvents(file: string, event: string): { timeMs: number; fields: Record<string, unknown> }[] {
  const found: { timeMs: number; fields: Record<string, unknown> }[] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.includes(`"event":"${event}"`)) continue;
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      found.push({ timeMs: Date.parse(String(parsed.time)), fields: parsed });
    } catch {
      // not a JSON line
    }
  }
  return found;
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–");
const mb = (bytes: number) => fmt(bytes / 1e6, 1);
const verdict = (ok: boolean) => (ok ? "met" : "**missed**");

/** Runs the large-data measurements; returns the markdown section of the report. */
export async function runLargeData(options: LargeDataOptions): Promise<string[]> {
  const { kvBin, keys, valueBytes, progress } = options;
  const baseDir = join(options.dir, "large");
  // Peers on base..base+3, HTTP on base+3000..base+3003: the fourth pair is the joining node's.
  const basePort = await options.freePortRange(4, 3_000);
  // No quota: the default (2 GiB) is the size of the data set itself.
  const serveArgs = ["--quota-bytes", "0"];
  const cluster = new ChaosCluster({ size: 3, command: [kvBin], baseDir, basePort, serveArgs, startTimeoutMs: 120_000 });
  const joiner: { proc?: Subprocess } = {};
  options.onCleanup(() => cluster.stop());
  options.onPids(() => [...cluster.nodes.map((node) => node.pid), joiner.proc?.exitCode === null ? joiner.proc.pid : undefined].filter((pid): pid is number => pid !== undefined));
  await cluster.start();
  await cluster.waitForLeader(undefined, 30_000);

  progress(`large data: loading ${fmt(keys)} keys of ${fmt(valueBytes)} B (${mb(keys * valueBytes)} MB of values) through POST /txn`);
  const loadStartedMs = performance.now();
  await load(cluster, keys, valueBytes, progress);
  const loadMs = performance.now() - loadStartedMs;
  const leader = await cluster.waitForLeader(undefined, 30_000);
  const committed = (await cluster.status(leader, 5_000))?.commitIndex ?? 0;
  await cluster.waitForConvergence(committed, 600_000);
  const sizesLoaded = cluster.nodes.map((node) => dirBytes(node.dataDir));
  const termAfterLoad = (await cluster.status(leader, 5_000))?.term ?? Number.NaN;
  progress(`large data: loaded in ${(loadMs / 1000).toFixed(0)} s; data dirs ${sizesLoaded.map(mb).join(", ")} MB`);

  // (a) Restart a follower: SIGTERM, then spawn it again and time until a linearizable read answers.
  const follower = cluster.nodes.find((node) => node.id !== leader)!.id;
  const termsBefore = await Promise.all(cluster.nodes.map((node) => cluster.status(node.id, 5_000)));
  await cluster.terminate(follower, 60_000);
  const restartStartedMs = performance.now();
  await cluster.startNode(follower);
  const startedLineMs = performance.now() - restartStartedMs;
  await until(`node ${follower} to serve after its restart`, () => serves(cluster.node(follower).httpUrl, valueBytes), RESTART_TIMEOUT_MS);
  const restartMs = performance.now() - restartStartedMs;
  progress(`large data: node ${follower} restarted: "started" after ${fmt(startedLineMs)} ms, serving after ${fmt(restartMs)} ms`);

  // (b) A fourth node joins and catches up with the leader's commit index as it was when it started.
  const leaderNow = await cluster.waitForLeader(undefined, 30_000);
  const before = await Promise.all(cluster.nodes.map((node) => cluster.status(node.id, 5_000)));
  const target = before.find((s) => s?.id === leaderNow)?.commitIndex ?? 0;
  const joinDir = join(baseDir, "node-4");
  const joinLog = join(baseDir, "node-4.log");
  const clusterFlag = [1, 2, 3, 4].map((id) => `${id}=http://127.0.0.1:${basePort + id - 1}`).join(",");
  const args = [kvBin, "serve", "--id", "4", "--cluster", clusterFlag, "--listen-peer", `127.0.0.1:${basePort + 3}`, "--listen-http", `127.0.0.1:${basePort + 3003}`, "--data-dir", joinDir, "--join", cluster.nodes.map((node) => node.httpUrl).join(","), ...serveArgs];
  const joinStartedMs = performance.now();
  const proc = Bun.spawn(args, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  joiner.proc = proc;
  const log = createWriteStream(joinLog, { flags: "a" });
  options.onCleanup(async () => {
    if (proc.exitCode === null) proc.kill("SIGKILL");
    await proc.exited;
    log.end();
  });
  const started = await Promise.race([pipeNodeOutput(proc, log), proc.exited.then((code) => Promise.reject(new Error(`node 4 exited with ${code}; see ${joinLog}`)))]);
  await until(
    "node 4 to catch up",
    async () => {
      if (proc.exitCode !== null) throw new Error(`node 4 exited with ${proc.exitCode}; see ${joinLog}`);
      return ((await statusOf(started.httpUrl))?.appliedIndex ?? 0) >= target;
    },
    JOIN_TIMEOUT_MS,
    100,
  );
  const catchUpMs = performance.now() - joinStartedMs;
  const after = await Promise.all(cluster.nodes.map((node) => cluster.status(node.id, 5_000)));
  const leaderChanged = before.some((s, i) => s === undefined || after[i] === undefined || after[i]!.term !== s.term || after[i]!.leaderId !== s.leaderId);
  // The image installed, from its first chunk: a transfer cut short (its leader lost office) is not timed.
  const received = logEvents(joinLog, "snapshot received")[0];
  const imageId = received?.fields.imageId;
  const receive = logEvents(joinLog, "snapshot receive").find((event) => event.fields.imageId === imageId);
  const installed = logEvents(joinLog, "snapshot installed").find((event) => event.fields.imageId === imageId);
  const transfersStarted = logEvents(joinLog, "snapshot receive").length;
  const imageValueBytes = Number(received?.fields.valueBytes ?? Number.NaN);
  const imageRows = Number(received?.fields.rows ?? Number.NaN);
  // Keys as loaded are ASCII: their length is their size in bytes.
  const imageBytes = imageValueBytes + imageRows * keyOf(0).length;
  const streamMs = receive !== undefined && received !== undefined ? received.timeMs - receive.timeMs : Number.NaN;
  const installMs = received !== undefined && installed !== undefined ? installed.timeMs - received.timeMs : Number.NaN;
  const streamMbPerS = imageBytes / 1e6 / (streamMs / 1000);
  progress(
    `large data: node 4 caught up in ${fmt(catchUpMs)} ms; image ${mb(imageBytes)} MB streamed in ${fmt(streamMs)} ms (${fmt(streamMbPerS, 1)} MB/s), installed in ${fmt(installMs)} ms; leader changed: ${leaderChanged}`,
  );

  // (c) Data dir sizes: now (WALs as they are), and once every node has stopped (WALs checkpointed).
  // The install wrote the whole image into node 4's WAL: its checkpointer takes it in, and the WAL
  // starts over at its next commit (cut to journal_size_limit, 64 MiB). Not a failure if it does not.
  const walFile = join(joinDir, "kv.db-wal");
  await until("node 4's WAL to start over", async () => !existsSync(walFile) || statSync(walFile).size <= 64 * 1024 * 1024 + 65_536, 60_000, 200).catch(() =>
    progress("large data: node 4's WAL is still over 64 MiB after 60 s"),
  );
  const sizesRunning = [...cluster.nodes.map((node) => dirBytes(node.dataDir)), dirBytes(joinDir)];
  for (const node of cluster.nodes) await cluster.terminate(node.id, 60_000);
  proc.kill("SIGTERM");
  await proc.exited;
  const sizesStopped = [...cluster.nodes.map((node) => dirBytes(node.dataDir)), dirBytes(joinDir)];
  const ratio = (sizes: number[]) => (sizes[3] as number) / Math.max(...sizes.slice(0, 3));

  const lines: string[] = [];
  lines.push("");
  lines.push(
    `Large data set (kv only): ${fmt(keys)} keys of ${fmt(valueBytes)} B loaded into a fresh 3-node kv (\`--quota-bytes 0\`) through \`POST /txn\` ` +
      `(${PUTS_PER_TXN} puts each, ${LOADERS} in flight) in ${fmt(loadMs / 1000)} s; data dirs then ${sizesLoaded.map(mb).join(" / ")} MB; ` +
      `term ${termAfterLoad} after loading (it starts at 1: ${fmt(termAfterLoad - 1)} elections while loading, before the measures below).`,
  );
  lines.push("");
  lines.push("| measure | figure | target | |");
  lines.push("| --- | ---: | ---: | --- |");
  lines.push(`| restart of follower ${follower} (SIGTERM, spawn) until a linearizable read answers | ${fmt(restartMs)} ms ("started" after ${fmt(startedLineMs)} ms) | ≤ ${fmt(RESTART_TARGET_MS)} ms | ${verdict(restartMs <= RESTART_TARGET_MS)} |`);
  lines.push(`| \`--join\`: node 4 applied the leader's commit index (${fmt(target)}) | ${fmt(catchUpMs / 1000, 1)} s | | |`);
  lines.push(`| image streamed to node 4 (${mb(imageBytes)} MB of keys and values, first chunk to last staged) | ${fmt(streamMs / 1000, 1)} s: ${fmt(streamMbPerS, 1)} MB/s | ≥ ${STREAM_TARGET_MB_PER_S} MB/s | ${verdict(streamMbPerS >= STREAM_TARGET_MB_PER_S)} |`);
  lines.push(`| install of the staged image on node 4 | ${fmt(installMs / 1000, 1)} s | | |`);
  lines.push(`| transfers to node 4 begun (a new leader starts over) | ${transfersStarted} | | |`);
  lines.push(`| leader changes seen by nodes 1-3 during the join | ${leaderChanged ? "yes" : "0"} | 0 | ${verdict(!leaderChanged)} |`);
  lines.push(`| data dirs after the join, running (nodes 1, 2, 3, 4), MB | ${sizesRunning.map(mb).join(" / ")} (node 4: ${fmt(ratio(sizesRunning), 2)}×) | | |`);
  lines.push(`| data dirs once stopped (nodes 1, 2, 3, 4), MB | ${sizesStopped.map(mb).join(" / ")} (node 4: ${fmt(ratio(sizesStopped), 2)}× the largest other) | ≤ ${DATA_DIR_RATIO_TARGET}× | ${verdict(ratio(sizesStopped) <= DATA_DIR_RATIO_TARGET)} |`);
  const restartTermsChanged = termsBefore.some((s, i) => s === undefined || before[i] === undefined || before[i]!.term !== s.term);
  if (restartTermsChanged) lines.push("", `During the restart of node ${follower} the term changed (an election ran).`);
  return lines;
}
