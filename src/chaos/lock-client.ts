/**
 * One lock client of `kv chaos lock`, run as its own process (`kv chaos lock-client`, hidden) so it
 * can be paused with SIGSTOP, keepalives and all, as a real holder is paused by GC, swapping or a
 * stopped VM. It loops: take the lock, think for a while, read the protected counter, and write it
 * back incremented with a compare-and-set (`ifVersion`), carrying its fence in the value and writing
 * nothing when the counter already carries a larger fence. Like the paused process it models, it
 * does not consult `lost` before writing: the fence is what must keep the counter safe. Then it
 * releases the lock and goes round again.
 *
 * A pause the runner asks for (`pauser.requested()`, SIGUSR2 in the process) is taken at the end of
 * the next think time, before the read: the client reports `pausing` and stops itself, and the
 * runner resumes it. The runner, pausing holders with SIGSTOP from their reports, paused some after
 * their update (reports arrive late under load): two tenures then overlapped but no stale update was
 * tested, and a run could see none.
 *
 * It reports on standard output, one JSON object per line (see {@link LockClientEvent}), with wall
 * clock times (the runner and its clients share the machine's clock).
 */
import { createClient, KvClientError, UnknownOutcomeError, type KvClient } from "../client/index.ts";
import { createPrng } from "../lib/prng.ts";
import { parseCounterValue, type CounterWrite } from "./lock-check.ts";

export interface LockClientOptions {
  readonly endpoints: readonly string[];
  /** The lock's name. */
  readonly name: string;
  /** The protected counter's key. */
  readonly counterKey: string;
  readonly ttlMs: number;
  /** This client's number, 1.. (written into its updates). */
  readonly client: number;
  readonly seed: number;
  /** How long it holds the lock before updating the counter, drawn from [min, max]. */
  readonly holdMsMin: number;
  readonly holdMsMax: number;
  readonly requestTimeoutMs: number;
}

/** What a lock client reports, one per line. */
export type LockClientEvent =
  /** It took the lock at `atMs`; until `aliveUntilMs` its lease was known alive then (see `LockHandle.aliveUntilMs`). */
  | { readonly type: "acquired"; readonly fence: number; readonly key: string; readonly atMs: number; readonly aliveUntilMs?: number }
  /** It stops itself now (SIGSTOP), holding `fence`, its update not yet made. */
  | { readonly type: "pausing"; readonly fence: number; readonly atMs: number }
  /** It noticed its lease gone at `atMs`; until `aliveUntilMs` it had been known alive (see `LockHandle.aliveUntilMs`). */
  | { readonly type: "lost"; readonly fence: number; readonly atMs: number; readonly aliveUntilMs: number }
  | { readonly type: "write"; readonly write: CounterWrite }
  /**
   * It released the lock: the release began at `releaseStartMs` and returned at `atMs`. Until
   * `aliveUntilMs` (or the release, if sooner) its lease was known alive, so no other client could
   * hold the lock (see `LockHandle.aliveUntilMs`).
   */
  | { readonly type: "released"; readonly fence: number; readonly atMs: number; readonly releaseStartMs: number; readonly aliveUntilMs: number; readonly error?: string }
  | { readonly type: "error"; readonly stage: string; readonly message: string; readonly atMs: number }
  | { readonly type: "exit"; readonly atMs: number };

/** Pause after a failed attempt to take the lock, so a client does not spin while the cluster has no leader. */
const RETRY_BACKOFF_MS = 100;

function describe(error: unknown): string {
  if (error instanceof KvClientError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** How a client pauses itself when asked: `requested` is read (and cleared) once per tenure; `pause` returns once resumed. */
export interface LockClientPauser {
  requested(): boolean;
  pause(): void;
}

/** Runs the loop until `stop` aborts; reports through `emit` (which must be written before `pauser.pause` stops the process). */
export async function runLockClient(opts: LockClientOptions, emit: (event: LockClientEvent) => void, stop: AbortSignal, pauser?: LockClientPauser): Promise<void> {
  const kv = createClient({ endpoints: [...opts.endpoints], timeoutMs: opts.requestTimeoutMs });
  const prng = createPrng(opts.seed >>> 0);
  let n = 0;
  while (!stop.aborted) {
    let lock: Awaited<ReturnType<KvClient["lock"]>>;
    try {
      lock = await kv.lock(opts.name, { ttlMs: opts.ttlMs, signal: stop });
    } catch (error) {
      if (stop.aborted) break;
      emit({ type: "error", stage: "lock", message: describe(error), atMs: Date.now() });
      await Bun.sleep(RETRY_BACKOFF_MS); // retry pace after a refusal, not a wait for a condition
      continue;
    }
    const fence = lock.fence;
    const acquiredMs = Date.now();
    emit({ type: "acquired", fence, key: lock.key, atMs: acquiredMs, aliveUntilMs: acquiredMs + (lock.aliveUntilMs() - performance.now()) });
    // Wall-clock times, as every report (see aliveUntilMs at the release below).
    const onLost = () => {
      const atMs = Date.now();
      emit({ type: "lost", fence, atMs, aliveUntilMs: atMs + (lock.aliveUntilMs() - performance.now()) });
    };
    if (lock.lost.aborted) onLost();
    else lock.lost.addEventListener("abort", onLost, { once: true });

    await Bun.sleep(prng.intInclusive(opts.holdMsMin, opts.holdMsMax)); // the critical section's think time
    if (pauser?.requested() === true && !stop.aborted) {
      emit({ type: "pausing", fence, atMs: Date.now() });
      pauser.pause();
    }
    n++;
    emit({ type: "write", write: await updateCounter(kv, opts, fence, n) });

    let releaseError: string | undefined;
    const releaseStartMs = Date.now();
    // In wall-clock time, as every report (the runner and the other clients share this clock),
    // converted now: a step of the wall clock since this process started does not shift it.
    const aliveUntilMs = releaseStartMs + (lock.aliveUntilMs() - performance.now());
    try {
      if (!(await lock.release())) releaseError = "no node answered the release: the lock stays held until its lease expires";
    } catch (error) {
      releaseError = describe(error);
    }
    lock.lost.removeEventListener("abort", onLost);
    emit({ type: "released", fence, atMs: Date.now(), releaseStartMs, aliveUntilMs, ...(releaseError === undefined ? {} : { error: releaseError }) });
  }
  emit({ type: "exit", atMs: Date.now() });
}

/** Reads the counter and writes it back incremented, unless it carries a larger fence. */
async function updateCounter(kv: KvClient, opts: LockClientOptions, fence: number, n: number): Promise<CounterWrite> {
  const callMs = Date.now();
  const base = { client: opts.client, fence, callMs };
  let current: { version: number; text: string } | null;
  try {
    current = await kv.get(opts.counterKey);
  } catch {
    return { ...base, outcome: "refused", returnMs: Date.now() }; // the read failed: nothing was written
  }
  const counter = current === null ? undefined : parseCounterValue(current.text);
  if (current === null || counter === undefined) return { ...base, outcome: "refused", returnMs: Date.now() };
  if (counter.fence >= fence) return { ...base, outcome: "fenced", returnMs: Date.now() };
  const value = JSON.stringify({ count: counter.count + 1, fence, client: opts.client, n });
  try {
    const { version } = await kv.put(opts.counterKey, value, { ifVersion: current.version });
    return { ...base, value, outcome: "ok", version, returnMs: Date.now() };
  } catch (error) {
    if (error instanceof UnknownOutcomeError) return { ...base, value, outcome: "unknown", returnMs: Date.now() };
    if (error instanceof KvClientError && error.code === "version_mismatch") return { ...base, value, outcome: "conflict", returnMs: Date.now() };
    return { ...base, value, outcome: "refused", returnMs: Date.now() };
  }
}
