// `bun test/bench/restart.ts [--keys 1000000] [--kv-bin dist/kv] [--runs 3]`: issue #5's target
// "a node restarts with 1 million keys and is serving in ≤ 3 s".
//
// Fills the data dir of a single-node cluster (node 1, voters [1]) with N keys through the storage
// API the node itself uses (SqliteStorage bootstrap, save, applyEntries, compact): the very rows a
// node that led term 1 would have written, its no-op at index 1 and one put per key after it, with
// the log compacted as KvNode.maybeCompact does. Then, --runs times, spawns `kv serve` on that dir
// and measures from spawn: its "started" line, the first linearizable GET of a populated key
// answering 200 with the right value and version, and a PUT answering 200; then its peak RSS
// (VmHWM) and how long SIGTERM takes to stop it. Prints a markdown table with the medians. Exits 1
// when a read returned a wrong value or a run failed. Kills every process it started (by pid) on
// success, failure or Ctrl-C.
import { createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { BenchInputError, parseWholeNumber } from "../../src/bench/bench-options.ts";
import { pipeNodeOutput } from "../../src/chaos/cluster.ts";
import { defaultSnapshotPolicy } from "../../src/node/kv-node.ts";
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { encodeCommand } from "../../src/kv/command.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";
import { kvCommand } from "../helpers/kv-binary.ts";

const USAGE = `usage: bun test/bench/restart.ts [--keys 1000000] [--kv-bin dist/kv] [--runs 3] [--keep-data]
  --keys       keys in the data dir before the first restart (default 1000000)
  --kv-bin     the kv executable (default dist/kv, built if missing)
  --runs       restarts measured; figures are also given as medians (default 3)
  --keep-data  keep the temp dir (data dir and node logs)`;

const PEER_URL = "http://127.0.0.1:0";
/** Term of every populated entry: node 1 elected itself in term 1 at its first start. */
const TERM = 1;
/** Commands per save and applyEntries call. */
const BATCH = 10_000;
const VALUE_BYTES = 100;
/** How long one restart may take, from spawn to a PUT answered. */
const RUN_TIMEOUT_MS = 60_000;
const TARGET_MS = 3_000;

const keyOf = (i: number) => `restart/${String(i).padStart(8, "0")}`;
const valueOf = (i: number) => `value ${i} `.padEnd(VALUE_BYTES, "x");
/** Key i is put by the entry at index i + 2 (the no-op is index 1), which is its version. */
const versionOf = (i: number) => i + 2;

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every child is killed by pid, whatever happens.

const children = new Set<Subprocess>();
function killChildren(): void {
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping every process started...`);
    killChildren();
    process.exit(signal === "SIGINT" ? 130 : 143);
  });
}

/** Writes what node 1 of `--cluster 1=PEER_URL` would hold after leading term 1 and applying `keys` puts. */
async function populate(dataDir: string, keys: number): Promise<void> {
  const storage = openSqliteStorage(dataDir);
  try {
    storage.bootstrap([1], [{ id: 1, peerUrl: PEER_URL }]); // as KvNode's constructor does at first start
    const lastIndex = keys + 1;
    const encoder = new TextEncoder();
    for (let first = 1; first <= lastIndex; first += BATCH) {
      const last = Math.min(first + BATCH - 1, lastIndex);
      const entries: Entry[] = [];
      for (let index = first; index <= last; index++) {
        const data = index === 1 ? new Uint8Array(0) : encodeCommand({ op: "put", key: keyOf(index - 2), value: encoder.encode(valueOf(index - 2)) });
        entries.push({ index, term: TERM, type: EntryType.Normal, data });
      }
      // A single voter commits what it saves: the hard state (voted for itself in term 1) commits the batch.
      storage.save({ term: TERM, vote: 1, commit: last }, entries, last === lastIndex);
      storage.applyEntries(entries);
      // As KvNode.maybeCompact after every apply, so the log keeps a few thousand entries, not N
      // (its segments go at the sync after a compaction).
      const applied = storage.appliedIndex();
      if (applied - storage.snapshot().index >= defaultSnapshotPolicy.snapshotEntries) {
        storage.compact(applied - defaultSnapshotPolicy.snapshotCatchUpEntries);
        await storage.sync();
      }
      if (first % 100_000 === 1) await Bun.sleep(0); // let Ctrl-C through
    }
  } finally {
    storage.close(); // checkpoints the WAL into kv.db
  }
}

/** One restart: times in ms from spawn (shutdown: from SIGTERM), and what reads got wrong, if anything. */
type RunResult = Record<"startedMs" | "getMs" | "putMs" | "rssMb" | "shutdownMs", number> & { readonly wrong: string[] };

/** Resolves with `promise`, or rejects when `proc` exits first or `deadline` passes. */
async function within<T>(promise: Promise<T>, proc: Subprocess, what: string, deadline: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      proc.exited.then((code) => Promise.reject(new Error(`kv serve exited with code ${code} before ${what}`))),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no ${what} within ${RUN_TIMEOUT_MS} ms`)), Math.max(0, deadline - performance.now()));
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Repeats the request until it is answered 200 or 404 (before a leader is elected it may fail or wait). */
async function firstAnswer(url: string, init: RequestInit, deadline: number): Promise<Response> {
  for (;;) {
    try {
      const response = await fetch(url, { ...init, signal: AbortSignal.timeout(Math.max(1, deadline - performance.now())) });
      if (response.status === 200 || response.status === 404) return response;
      await response.arrayBuffer();
    } catch (error) {
      if (performance.now() >= deadline) throw error;
    }
    if (performance.now() >= deadline) throw new Error(`${init.method ?? "GET"} ${url} not answered 200 within ${RUN_TIMEOUT_MS} ms`);
    await Bun.sleep(5); // retry interval while the node elects itself
  }
}

/** A linearizable GET of key `i`; returns what is wrong with the answer ([] when right). */
async function checkKey(httpUrl: string, i: number, deadline: number): Promise<string[]> {
  const response = await firstAnswer(`${httpUrl}/kv/${encodeURIComponent(keyOf(i))}`, {}, deadline);
  const [body, version] = [await response.text(), response.headers.get("x-kv-version")];
  if (response.status !== 200) return [`${keyOf(i)}: status ${response.status}`];
  if (body === valueOf(i) && version === String(versionOf(i))) return [];
  return [`${keyOf(i)}: version ${version} value ${JSON.stringify(body.slice(0, 40))}, expected version ${versionOf(i)} value ${JSON.stringify(valueOf(i).slice(0, 40))}`];
}

/** Peak resident set (VmHWM) of a running process in MB. */
const peakRssMb = (pid: number) => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;

async function restartOnce(kvBin: string, dataDir: string, logFile: string, keys: number, run: number): Promise<RunResult> {
  const t0 = performance.now();
  const deadline = t0 + RUN_TIMEOUT_MS;
  const args = ["serve", "--id", "1", "--cluster", `1=${PEER_URL}`, "--listen-http", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"];
  const proc = Bun.spawn([kvBin, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  children.add(proc);
  const log = createWriteStream(logFile, { flags: "a" });
  try {
    const { httpUrl } = await within(pipeNodeOutput(proc, log), proc, `its "started" line`, deadline);
    const startedMs = performance.now() - t0;
    const key = Math.floor(Math.random() * keys);
    const wrong = await within(checkKey(httpUrl, key, deadline), proc, "a GET answered", deadline);
    const getMs = performance.now() - t0;
    const put = await within(firstAnswer(`${httpUrl}/kv/restart-bench-run-${run}`, { method: "PUT", body: "x" }, deadline), proc, "a PUT answered", deadline);
    if (put.status !== 200) throw new Error(`PUT answered ${put.status}: ${await put.text()}`);
    const putMs = performance.now() - t0;
    const rssMb = peakRssMb(proc.pid);
    // Not timed: the first and the last key written are right too.
    for (const i of new Set([0, keys - 1])) wrong.push(...(await within(checkKey(httpUrl, i, deadline), proc, "a GET answered", deadline)));
    const stopping = performance.now();
    process.kill(proc.pid, "SIGTERM");
    const code = await proc.exited;
    const shutdownMs = performance.now() - stopping;
    if (code !== 0) throw new Error(`kv serve exited with code ${code} after SIGTERM`);
    return { startedMs, getMs, putMs, rssMb, shutdownMs, wrong };
  } finally {
    killChildren();
    await proc.exited;
    children.delete(proc);
    await new Promise<void>((resolve) => log.end(resolve));
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–");

async function main(): Promise<number> {
  let flags: { keys?: string; "kv-bin"?: string; runs?: string; "keep-data"?: boolean; help?: boolean };
  let keys: number;
  let runs: number;
  try {
    flags = parseArgs({
      args: process.argv.slice(2),
      options: { keys: { type: "string" }, "kv-bin": { type: "string" }, runs: { type: "string" }, "keep-data": { type: "boolean" }, help: { type: "boolean", short: "h" } },
      strict: true,
    }).values;
    if (flags.help === true) {
      console.log(USAGE);
      return 0;
    }
    keys = flags.keys === undefined ? 1_000_000 : parseWholeNumber("keys", flags.keys, 1, 100_000_000);
    runs = flags.runs === undefined ? 3 : parseWholeNumber("runs", flags.runs, 1, 100);
  } catch (error) {
    const message = error instanceof BenchInputError || error instanceof TypeError ? error.message : String(error);
    console.error(`restart bench: ${message}\n${USAGE}`);
    return 2;
  }
  const kvBin = flags["kv-bin"] ?? (kvCommand()[0] as string);
  const loadBefore = loadavg();
  const dir = mkdtempSync(join(tmpdir(), "kv-bench-restart-"));
  const dataDir = join(dir, "node-1");
  let ok = false;
  try {
    console.error(`populating ${fmt(keys)} keys in ${dataDir} ...`);
    const populateStart = performance.now();
    await populate(dataDir, keys);
    const populateS = (performance.now() - populateStart) / 1000;
    const dbMb = statSync(join(dataDir, "kv.db")).size / 1024 ** 2;
    console.error(`populated in ${fmt(populateS, 1)} s; kv.db ${fmt(dbMb, 1)} MB`);
    const results: RunResult[] = [];
    for (let run = 1; run <= runs; run++) {
      const result = await restartOnce(kvBin, dataDir, join(dir, "node-1.log"), keys, run);
      results.push(result);
      console.error(`run ${run}/${runs}: started ${fmt(result.startedMs)} ms, GET ${fmt(result.getMs)} ms, PUT ${fmt(result.putMs)} ms, shutdown ${fmt(result.shutdownMs)} ms`);
      for (const line of result.wrong) console.error(`  WRONG READ ${line}`);
    }

    const lines = [
      `### kv restart with ${fmt(keys)} keys: ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
      "",
      `Single-node cluster; ${fmt(keys)} keys of ${VALUE_BYTES} B values; kv.db ${fmt(dbMb, 1)} MB; populated through the storage API in ${fmt(populateS, 1)} s. ` +
        `${cpus().length} cores, Bun ${Bun.version}, load average before start ${loadBefore.map((l) => l.toFixed(2)).join(" ")}. ` +
        `Times in ms from spawning \`kv serve\`; peak RSS (VmHWM) read after the PUT.`,
      "",
      "| run | \"started\" line | first linearizable GET 200 | first PUT 200 | peak RSS MB | shutdown (SIGTERM to exit) |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
    ];
    const row = (name: string, pick: (f: (r: RunResult) => number) => number) =>
      `| ${name} | ${fmt(pick((r) => r.startedMs))} | ${fmt(pick((r) => r.getMs))} | ${fmt(pick((r) => r.putMs))} | ${fmt(pick((r) => r.rssMb))} | ${fmt(pick((r) => r.shutdownMs))} |`;
    results.forEach((result, i) => lines.push(row(String(i + 1), (f) => f(result))));
    lines.push(row("median", (f) => median(results.map(f))));
    const servingMs = median(results.map((r) => r.getMs));
    lines.push("", `Target (serving in ≤ ${TARGET_MS / 1000} s, median first GET): ${servingMs <= TARGET_MS ? "met" : "**not met**"} (${fmt(servingMs / 1000, 2)} s).`);
    console.log(lines.join("\n"));
    const wrong = results.flatMap((r) => r.wrong);
    if (wrong.length > 0) console.error(`${wrong.length} wrong reads: see above`);
    ok = wrong.length === 0;
  } catch (error) {
    console.error(`restart bench failed: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    killChildren();
    if (!ok || flags["keep-data"] === true) console.error(`data and logs kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  return ok ? 0 : 1;
}

process.exit(await main());
