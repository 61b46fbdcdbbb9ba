/**
 * WAL checkpoints off the node's thread.
 *
 * A checkpoint copies the newest version of every page in the WAL into the database file and
 * fsyncs both. Run by SQLite's autocheckpoint, it happens inside whichever commit crossed the
 * threshold, on the thread that committed: the node's loop, which then neither ticks nor sends
 * heartbeats. With 16 KB values that was 100-250 ms every second or so, past the election timeout
 * (the cause of the leader changes measured in BENCHMARKS.md's value-size matrix).
 *
 * Here a `Worker` holds a second connection to the same database and runs
 * `PRAGMA wal_checkpoint(PASSIVE)` when asked. In WAL mode a passive checkpoint and the node's
 * writes run at the same time: the checkpoint copies the frames committed before it started, and
 * commits meanwhile append after them. The node's connection keeps a high `wal_autocheckpoint` as
 * a backstop, reached only if the worker falls far behind.
 *
 * The WAL file only starts over from its beginning when a write transaction begins while every
 * frame in it has been checkpointed. Under steady writes that never happens by itself: the node
 * commits while each round runs, so the WAL grew until the backstop checkpointed it on the node's
 * thread (300-400 ms with 16 KB values). So once a round has copied everything it saw and the WAL
 * is long (`SqliteStorage`'s `walRestartFrames`), the storage checkpoints the few frames written
 * since on its own thread, between two commits: the next commit then starts the WAL over. Few: if
 * more than 1 MiB was written while the round ran, the worker runs another round first (a tail of
 * one 300 ms round under 16 KB writes took 100-250 ms on the node's thread, in 7 of 15 cases).
 * Doing the restart on the worker instead (`wal_checkpoint(RESTART)` or `TRUNCATE`, which hold the
 * write lock while they copy and fsync, so the node's commits wait in their busy handler) was
 * measured too, A B A B under 16 KB writes: more errors and leader changes than either.
 *
 * Durability does not change: every commit is still in the WAL until a checkpoint has copied it
 * into the database file and fsynced that file (SQLite syncs the WAL before copying, and the
 * database after), so `SqliteStorage.sync`, which fdatasyncs the WAL, still covers everything not
 * yet checkpointed.
 *
 * The worker's code is a string loaded from a Blob URL: it imports only `bun:sqlite`, `node:fs` and
 * `node:os`, so it runs the same under `bun` and inside the compiled executable, with no second
 * entry point to ship. It is a background thread (src/lib/background-thread.ts): named
 * `kv-checkpoint`, and at the priority of the storage's writer thread that starts it, or lowered
 * as that one lowers itself when the node's own thread starts it (`kv serve --storage-thread=false`).
 */
import { isMainThread } from "node:worker_threads";
import { backgroundNiceIncrement } from "../lib/background-thread.ts";

/** What one round of checkpoints did (see `CheckpointerOptions.onCheckpoint`). */
export interface CheckpointReport {
  /** Wall time of the round on the worker, in ms. */
  readonly durationMs: number;
  /** Frames in the WAL at the end of the round. */
  readonly walFrames: number;
  /** Of those, frames copied into the database file. */
  readonly checkpointedFrames: number;
  /** The message of the error the round ended with, if it failed (it is retried at the next request). */
  readonly error?: string;
  /** Where the round ran: on the worker, or the short one on the caller's thread that lets the WAL restart. */
  readonly thread: "worker" | "caller";
}

/** Options of `createCheckpointer`. */
export interface CheckpointerOptions {
  /** How long the worker's connection waits for a lock (the node's commits hold the WAL briefly). */
  readonly busyTimeoutMs: number;
  /** Called on the node's thread after each round, for metrics. */
  readonly onCheckpoint?: (report: CheckpointReport) => void;
}

/** Runs passive checkpoints of one database on a worker thread, one round at a time. */
export interface Checkpointer {
  /** Asks for a round; ignored while one runs (the writes since are taken by the next request). */
  request(): void;
  /** Whether a round is running. */
  running(): boolean;
  /**
   * Closes the worker's connection and ends the worker. The promise resolves once the worker has
   * ended (its connection's descriptors closed); callers that only stop may leave it. Idempotent.
   */
  close(): Promise<void>;
}

/** How long `close` waits for the worker to close its connection and end before terminating it. */
const workerCloseWaitMsMax = 5_000;

/** Rounds of checkpoints per request at most: a round that could not copy all (writes came meanwhile) goes again. */
const passesPerRoundMax = 4;

const workerSource = `
import { Database } from "bun:sqlite";
import { writeFileSync } from "node:fs";
import { getPriority, setPriority } from "node:os";
let db;
let started = false;
/** As becomeBackgroundThread in src/lib/background-thread.ts (this code cannot import it). */
function becomeBackground(niceIncrement) {
  try { writeFileSync("/proc/thread-self/comm", "kv-checkpoint"); } catch {}
  if (niceIncrement <= 0) return;
  try { setPriority(Math.min(19, getPriority() + niceIncrement)); } catch {}
}
self.onmessage = (event) => {
  const message = event.data;
  if (!started) {
    started = true;
    if (process.platform === "linux") becomeBackground(message.niceIncrement ?? 0);
  }
  if (message.type === "close") {
    try { db?.close(true); } catch {}
    db = undefined;
    self.close();
    return;
  }
  const startedMs = performance.now();
  try {
    if (db === undefined) {
      db = new Database(message.file, { strict: true });
      db.run("PRAGMA busy_timeout = " + message.busyTimeoutMs);
      db.run("PRAGMA synchronous = FULL");
    }
    let result = { busy: 0, log: 0, checkpointed: 0 };
    for (let pass = 0; pass < message.passesMax; pass++) {
      result = db.query("PRAGMA wal_checkpoint(PASSIVE)").get();
      if (result.log <= 0 || result.checkpointed >= result.log) break;
    }
    postMessage({ durationMs: performance.now() - startedMs, walFrames: result.log, checkpointedFrames: result.checkpointed, thread: "worker" });
  } catch (error) {
    postMessage({ durationMs: performance.now() - startedMs, walFrames: -1, checkpointedFrames: -1, error: String(error && error.message || error), thread: "worker" });
  }
};
`;

let workerUrl: string | undefined;

/**
 * Creates the checkpointer of the database `file`. The worker starts at the first request, so a
 * storage that never writes much never starts one.
 */
export function createCheckpointer(file: string, options: CheckpointerOptions): Checkpointer {
  let worker: Worker | undefined;
  let inFlight = false;
  let closed: Promise<void> | undefined;
  let workerEnded: Promise<void> | undefined;
  return {
    request() {
      if (closed !== undefined || inFlight) return;
      if (worker === undefined) {
        workerUrl ??= URL.createObjectURL(new Blob([workerSource], { type: "application/javascript" }));
        worker = new Worker(workerUrl);
        // The node's process must not stay alive for its checkpointer.
        worker.unref();
        const started = worker;
        workerEnded = new Promise<void>((resolve) => started.addEventListener("close", () => resolve()));
        worker.onmessage = (event: MessageEvent<CheckpointReport>) => {
          inFlight = false;
          if (closed === undefined) options.onCheckpoint?.(event.data);
        };
        worker.onerror = (event) => {
          inFlight = false;
          if (closed === undefined) options.onCheckpoint?.({ durationMs: 0, walFrames: -1, checkpointedFrames: -1, error: event.message, thread: "worker" });
        };
      }
      inFlight = true;
      worker.postMessage({
        type: "checkpoint",
        file,
        busyTimeoutMs: options.busyTimeoutMs,
        passesMax: passesPerRoundMax,
        // A thread starts at its creator's priority: only the node's own thread has to ask for less.
        niceIncrement: isMainThread ? backgroundNiceIncrement : 0,
      });
    },
    running() {
      return inFlight;
    },
    close() {
      closed ??= (async () => {
        if (worker === undefined || workerEnded === undefined) return;
        worker.postMessage({ type: "close" });
        // A round in progress finishes first; a worker that does not end in time is terminated.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const ended = await Promise.race([
          workerEnded.then(() => true),
          new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), workerCloseWaitMsMax))),
        ]);
        clearTimeout(timer);
        if (!ended) worker.terminate();
      })();
      return closed;
    },
  };
}
