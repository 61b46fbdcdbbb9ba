/**
 * The child process of test/server-stop.test.ts: it starts and stops in-process servers (through
 * test/helpers/server-cluster.ts, as the in-process suites do) in `rounds` rounds of a `size`-node
 * cluster, writing 24 MiB through each so the WAL checkpointer's worker starts in every round
 * (src/storage/checkpointer.ts). Then it prints one JSON line with the file descriptors it held after
 * the first round and after the last, and the worker's checkpoints per round, and must exit on its
 * own: an unref'd timer (which keeps nothing alive) prints `still alive` and exits 3 if anything the
 * servers left behind (a timer, a socket, a worker) keeps
 * the process running `aliveAfterStopMsMax` past the last stop.
 *
 * Usage: bun test/children/server-stop-child.ts <dir> <rounds> <size> <aliveAfterStopMsMax>
 */
import { readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { createServerCluster } from "../helpers/server-cluster.ts";

const [dir = "", roundsText = "3", sizeText = "1", aliveText = "1500"] = process.argv.slice(2);
const rounds = Number(roundsText);
const size = Number(sizeText);

/** What this process's open file descriptors point at (sockets, database files, eventfds), sorted. */
function openFiles(): string[] {
  return readdirSync("/proc/self/fd")
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).replace(/\[\d+\]$/, "");
      } catch {
        return "gone"; // the descriptor readdir itself used
      }
    })
    .filter((target) => target !== "gone")
    .sort();
}

/** Rounds of the worker's checkpoints a server's /metrics counts. */
async function workerCheckpoints(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^kv_storage_checkpoint_duration_seconds_count\{thread="worker"\} (\d+)$/m.exec(text)?.[1] ?? 0);
}

// The first round starts what a process starts once and keeps (fetch's client thread, a descriptor
// the first worker takes): the descriptors are compared after it and after the last round.
let afterFirstRound: string[] = [];
const checkpointsPerRound: number[] = [];
for (let round = 0; round < rounds; round++) {
  const cluster = createServerCluster({ size, baseDir: join(dir, `round-${round}`), config: () => ({ logger: { log() {} } }) });
  try {
    await cluster.start();
    const leader = await cluster.waitForLeader();
    const url = cluster.node(leader).httpUrl;
    // 24 MiB of values into the table (the log is in segment files): past the 16 MiB of WAL pages that starts the worker.
    const value = new Uint8Array(1 << 20);
    for (let i = 0; i < 24; i++) {
      const response = await fetch(`${url}/kv/k${i}`, { method: "PUT", body: value });
      if (response.status !== 200) throw new Error(`PUT answered ${response.status}: ${await response.text()}`);
    }
    const deadline = performance.now() + 10_000;
    let checkpoints = 0;
    while ((checkpoints = await workerCheckpoints(url)) === 0 && performance.now() < deadline) await Bun.sleep(20); // polling interval until the worker reports
    checkpointsPerRound.push(checkpoints);
  } finally {
    await cluster.stop();
  }
  if (round === 0) afterFirstRound = openFiles();
}
console.log(JSON.stringify({ afterFirstRound, afterLastRound: openFiles(), checkpointsPerRound }));
setTimeout(() => {
  console.log("still alive");
  process.exit(3);
}, Number(aliveText)).unref();
