/**
 * The storage's writer thread: a Worker started by ThreadedStorage (threaded-storage.ts). It opens
 * an ordinary SqliteStorage (with its checkpointer, itself on a worker of its own) and runs every
 * write the node's thread posts, strictly in the order posted, so a `sync` covers every write
 * before it and an apply commits after the save of the entries it applies.
 *
 * A write that meets a full disk stays first in the queue and is retried every `diskRetryMs` until
 * it succeeds (the node's thread hears of it, and refuses new writes meanwhile); any other failure
 * is fatal: the thread reports it and runs nothing more.
 *
 * It is a background thread (src/lib/background-thread.ts): named `kv-storage`, and at a lower CPU
 * priority than the node's loop, which must keep ticking while this one writes.
 */
import { isMainThread } from "node:worker_threads";
import { becomeBackgroundThread } from "../lib/background-thread.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { openSqliteStorage, type SqliteStorage } from "./sqlite-storage.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import type { Membership } from "../kv/membership.ts";
import { type FromStorageThread, serializeError, type StorageDone, type StorageRequest, type ToStorageThread, unpackEntries } from "./storage-thread-messages.ts";

/** The worker's global scope (Bun's types describe a Worker from outside). */
declare const self: Worker & { close(): void };

/** How often a write that met a full disk is tried again. */
const diskRetryMs = 100;
/**
 * The log tail of the thread's storage, besides the entries saved and not yet applied (kept until
 * applied: an apply names them and reads them here): none. The node's thread keeps the tail the
 * core and the followers read, and nothing on this thread reads an entry once applied (which the
 * pack ring relies on, src/storage/pack-ring.ts: entries kept here may be views into it). Even 2 MiB
 * of applied entries kept here cost this thread's collector dearly: at 16 KB values its heap was
 * collected ~12 times a second, a full collection each time, and the thread spent a fifth more CPU
 * per write (BENCHMARKS.md, seventeenth session).
 */
const logTailBytesMax = 0;

// Only as the Worker it is meant to run in: imported on the loop's thread, it must not rename or slow that.
if (!isMainThread) becomeBackgroundThread("kv-storage");

let storage: SqliteStorage | undefined;
/** The pack ring's memory (src/storage/pack-ring.ts), when the node's thread shares one. */
let ring: SharedArrayBuffer | undefined;
const queue: StorageRequest[] = [];
let retryTimer: ReturnType<typeof setTimeout> | undefined;
let blockedSeq: number | undefined;
let failed = false;
let closing = false;

function post(message: FromStorageThread): void {
  self.postMessage(message);
}

self.onmessage = (event: MessageEvent<ToStorageThread>) => {
  const message = event.data;
  switch (message.type) {
    case "open":
      ring = message.ring;
      try {
        storage = openSqliteStorage(message.dir, { ...message.options, logTailBytesMax, checkpoints: "worker", onCheckpoint: (report) => post({ type: "checkpoint", report }) });
        post({ type: "opened", state: storage.mirrorState() });
      } catch (error) {
        post({ type: "open-failed", error: serializeError(error) });
        self.close();
      }
      return;
    case "requests":
      if (failed || closing) return;
      for (const request of message.requests) queue.push(request);
      if (retryTimer === undefined) drain();
      return;
    case "limit-pages":
      post({ type: "limited", pages: storage?.limitPages(message.pages) ?? 0 });
      return;
    case "close":
      void close();
      return;
    default:
      message satisfies never;
  }
};

/**
 * Runs the queue in order until it is empty, a write meets a full disk (retried later), or one
 * fails; the answers of what ran go back in one message.
 */
function drain(): void {
  const dones: StorageDone[] = [];
  try {
    drainInto(dones);
  } finally {
    if (dones.length > 0) post({ type: "dones", dones });
  }
}

function drainInto(dones: StorageDone[]): void {
  retryTimer = undefined;
  while (queue.length > 0 && !failed && !closing) {
    const request = queue[0] as StorageRequest;
    const startedMs = performance.now();
    let reply: StorageDone | undefined;
    try {
      reply = run(request, startedMs);
    } catch (error) {
      if (isDiskFull(error)) {
        if (blockedSeq === undefined) post({ type: "disk-full", seq: request.seq, op: request.op, error: serializeError(error) });
        blockedSeq = request.seq;
        retryTimer = setTimeout(drain, diskRetryMs);
        return;
      }
      fail(request.seq, error);
      return;
    }
    queue.shift();
    if (blockedSeq !== undefined) {
      blockedSeq = undefined;
      post({ type: "disk-space" });
    }
    if (reply !== undefined) dones.push(reply);
  }
}

/** Runs one request; returns its answer (undefined for a sync: it answers once its fdatasync returned). */
function run(request: StorageRequest, startedMs: number): StorageDone | undefined {
  const opened = storage as SqliteStorage;
  const done = (extra: Partial<StorageDone> = {}): StorageDone => ({
    type: "done",
    seq: request.seq,
    durationMs: performance.now() - startedMs,
    ...extra,
  });
  switch (request.op) {
    case "save": {
      const logPlace = opened.saveAt(request.hardState, unpackEntries(request.entries, ring), request.sync);
      return done(logPlace === undefined ? {} : { logPlace });
    }
    case "apply": {
      // Entries below the log's first index were compacted, so applied before: skipped, as
      // applyEntries would answer for them.
      const from = Math.max(request.firstIndex, opened.firstIndex());
      const skipped: ApplyResult[] = [];
      for (let index = request.firstIndex; index < from && index <= request.lastIndex; index++) skipped.push({ kind: "skipped", index });
      const entries = from <= request.lastIndex ? opened.entries(from, request.lastIndex + 1, Number.MAX_SAFE_INTEGER) : [];
      const results = [...skipped, ...opened.applyEntries(entries)];
      return done({ results, applied: appliedNow(opened) });
    }
    case "compact":
      opened.compact(request.index);
      return done();
    case "install":
      opened.installStagedFile(request.path, request.staging, request.metadata, request.imageId, request.addresses);
      return done({ applied: appliedNow(opened) });
    case "bootstrap":
      opened.bootstrap(request.voters, request.addresses);
      return done();
    case "bootstrap-joined":
      opened.bootstrapJoined(request.configuration, request.changedIndex);
      return done();
    case "sync":
      // Runs on Bun's thread pool; the writes after it go on meanwhile (it covers those before).
      opened.sync().then(
        () => post(done()),
        (error: unknown) => fail(request.seq, error),
      );
      return undefined;
    default:
      return request satisfies never;
  }
}

/** The configuration last sent to the node's thread (see `StorageDone.applied`). */
let membershipSent: Membership | undefined;

/** The applied index, and the configuration if it changed since it was last sent. */
function appliedNow(opened: SqliteStorage): { index: number; membership?: Membership } {
  const membership = opened.membership();
  const last = membershipSent;
  const same =
    last !== undefined &&
    last.voters === membership.voters &&
    last.learners === membership.learners &&
    last.addresses === membership.addresses &&
    last.changedIndex === membership.changedIndex;
  if (same) return { index: opened.appliedIndex() };
  membershipSent = membership;
  return { index: opened.appliedIndex(), membership };
}

function fail(seq: number, error: unknown): void {
  if (failed) return;
  failed = true;
  queue.length = 0;
  if (retryTimer !== undefined) clearTimeout(retryTimer);
  post({ type: "fatal", seq, error: serializeError(error) });
}

/**
 * Closes the storage (a clean close checkpoints the WAL) once the requests before the close ran;
 * those stuck behind a full disk are dropped. Answers `closed` once no descriptor is held.
 */
async function close(): Promise<void> {
  if (closing) return;
  closing = true;
  if (retryTimer !== undefined) clearTimeout(retryTimer);
  queue.length = 0;
  try {
    storage?.close();
    await storage?.released();
  } finally {
    post({ type: "closed" });
    self.close();
  }
}
