import { readFileSync } from "node:fs";
import { constants } from "node:os";
import { defineCommand } from "citty";
import type { LockHandle } from "../client/index.ts";
import { ClientExit, connection, connectionArgs, exitFor } from "./client.ts";
import { parseTtl, UsageError } from "./usage-error.ts";
import { exitAfterOutput, printLine } from "./output.ts";
import { jsonValue } from "../lib/json-value.ts";

/**
 * `kv lock` and `kv elect`: a lock and an election for the caller's own processes, through the
 * client library (src/client/lock.ts: leases, create-only puts, each waiter watching only the key
 * just ahead of it). Exit codes: CMD's status under `kv lock -- CMD` (1 in place of a 0 when the
 * lock was lost while CMD ran); otherwise 0 after an
 * interruption (the lock released, the office resigned), 1 when the lock or office was lost while
 * held, 2 on a usage error or a refused request, 3 when the cluster could not be reached; a wait
 * interrupted by SIGINT/SIGTERM exits 130/143 without ever holding.
 */

const ttlArg = {
  ttl: { type: "string", description: "The TTL of the lease held while holding (the lock, or the office for kv elect): how long a holder that dies or stalls keeps the others waiting (default 10s)", valueHint: "DURATION" },
} as const;

const TTL_MS_DEFAULT = 10_000;

/**
 * SIGINT, SIGTERM and SIGHUP as one signal: aborts with the signal's name, handled by this process
 * (no default kill). SIGHUP is what a closed terminal or a dropped SSH session sends: by default it
 * killed `kv lock` and left CMD running, the lock held until its lease ran out (found in a black-box
 * review); now it goes on to CMD, and the lock is released once CMD exits, as for the others. Unless
 * this process started with SIGHUP ignored (`nohup`): a handler would undo that, and `nohup kv lease
 * keepalive ID &` would stop keeping its lease at logout (found in review).
 */
export function interruption(): { readonly signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const names = ignoredAtStart(SIGHUP_NUMBER) ? (["SIGINT", "SIGTERM"] as const) : (["SIGINT", "SIGTERM", "SIGHUP"] as const);
  const handlers = names.map((name) => [name, () => controller.abort(name)] as const);
  for (const [name, handler] of handlers) process.on(name, handler);
  return {
    signal: controller.signal,
    dispose() {
      for (const [name, handler] of handlers) process.off(name, handler);
    },
  };
}

const SIGHUP_NUMBER = 1;

/** Whether signal `number` was ignored when this process started (`SigIgn` in /proc/self/status; false where unknown). */
export function ignoredAtStart(number: number): boolean {
  try {
    const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    return mask !== undefined && ((BigInt(`0x${mask}`) >> BigInt(number - 1)) & 1n) === 1n;
  } catch {
    return false;
  }
}

/** The exit status of a process killed by `signal` (128 + its number), as shells report it. */
function signalStatus(signal: string): number {
  return 128 + ((constants.signals as Record<string, number>)[signal] ?? 15);
}

/** Resolves once `signal` aborts. */
export function abortedPromise(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/**
 * Waits for a lock or office, or exits 128+N when interrupted first. Interrupted as the wait ended
 * is interrupted too: what was taken is given back (`giveBack`) before exiting, never used.
 */
async function waitFor<T>(work: (signal: AbortSignal) => Promise<T>, interrupted: { readonly signal: AbortSignal }, giveBack: (held: T) => Promise<unknown>): Promise<T> {
  const settled = work(interrupted.signal).then(
    (held) => ({ held }),
    (error: unknown) => ({ error }),
  );
  const first = await Promise.race([settled, abortedPromise(interrupted.signal).then(() => undefined)]);
  if (first === undefined || interrupted.signal.aborted) {
    // Interrupted: a wait in the queue leaves it at once (the library gives the key back), but the
    // first requests (the grant, the put) retry until the client's timeout when no node answers,
    // and the signal waited for them (found in a black-box review: SIGINT took 19 s). A short grace
    // for what is under way to settle, and to give back what it took; a lease granted later
    // expires by itself, within one TTL.
    const late = await Promise.race([settled, new Promise<undefined>((resolve) => setTimeout(resolve, INTERRUPT_GRACE_MS).unref())]);
    if (late !== undefined && "held" in late) await withinGrace(giveBack(late.held)).catch(() => undefined);
    process.exit(signalStatus(String(interrupted.signal.reason)));
  }
  if ("error" in first) return exitFor(first.error);
  return first.held;
}

/** How long an interrupted command waits for requests under way, or for giving back what it took. */
const INTERRUPT_GRACE_MS = 1_000;

/** `promise`, or a rejection once `INTERRUPT_GRACE_MS` passed. */
function withinGrace<T>(promise: Promise<T>): Promise<T> {
  return Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer in time")), INTERRUPT_GRACE_MS).unref())]);
}

/** Says on stderr that the cluster raised `--ttl` to its minimum, as `kv lease grant` says it (found in a black-box walkthrough: silent). */
function sayRaised(askedMs: number, held: { readonly ttlMs: number }): void {
  if (held.ttlMs > askedMs) console.error(`kv: --ttl ${askedMs} ms was raised to ${held.ttlMs} ms, the cluster's shortest lease`);
}

/**
 * Releases a lock or resigns an office on the way out: when the cluster did not answer, says that it
 * stays held until its lease expires, and exits 3 (found in a black-box review: it waited out two
 * timeouts and exited 0 in silence, the lock still held). Returns when released.
 */
async function releaseOrSay(release: () => Promise<boolean>, what: string, held: Pick<LockHandle, "key">, ttlMs: number, exitCode?: number): Promise<void> {
  if (await release()) return;
  console.error(`kv: could not release ${what} (key ${held.key}): no node answered; it stays held until its lease expires, within ${ttlMs} ms`);
  await exitAfterOutput(exitCode ?? 3);
}

/**
 * A lock or office lost: exit 1 at once, saying so. Once the lease's keeper gave up, another holder
 * may take over as soon as the cluster expires the lease, which is no sooner than now; a process
 * still running then looks like a holder to whoever watches it. So nothing is released first: the
 * lease was revoked or expired (its key went with it), or the cluster did not answer, and a release
 * waited out the client's timeout twice (found in a black-box review: ten seconds after a waiter took
 * the lock); the cluster expires the lease itself.
 */
async function exitLost(message: string, held: Pick<LockHandle, "lost">, giveBack: () => Promise<boolean>): Promise<never> {
  await cleanUpAfterKeyChanged(held, giveBack);
  throw new ClientExit(1, message);
}

/**
 * A lock or office lost because another client deleted or wrote its key (`lock_key_changed`): the
 * cluster answers (its watch said so), and the library is giving the lease back and deleting a key
 * written over, which would otherwise stand in the queue for ever. Waited for within the grace, so
 * the exit does not cut it off (found in review). Any other loss releases nothing (see `exitLost`).
 */
async function cleanUpAfterKeyChanged(held: Pick<LockHandle, "lost">, giveBack: () => Promise<boolean>): Promise<void> {
  const reason = held.lost.reason as { code?: unknown } | undefined;
  if (reason?.code === "lock_key_changed") await withinGrace(giveBack()).catch(() => undefined);
}

function lostMessage(what: string, held: Pick<LockHandle, "key" | "lost">): string {
  const reason = held.lost.reason instanceof Error ? held.lost.reason.message : String(held.lost.reason);
  return `lost ${what} (key ${held.key}): ${reason}`;
}

export const lockCommand = defineCommand({
  meta: {
    name: "lock",
    description:
      "Wait for lock NAME, run CMD (after --) holding it with KV_LOCK_KEY and KV_LOCK_FENCE set, exit with its status; without CMD print the key and fence and hold until interrupted",
  },
  args: {
    name: { type: "positional", required: true, description: "The lock's name (its keys are NAME/<lease id>)" },
    ...ttlArg,
    wait: {
      type: "boolean",
      default: true,
      description: "Wait for the lock while another contender holds it",
      negativeDescription: "Do not wait: while another contender holds it (or waits before), exit 1 at once, running nothing (etcd's TryLock)",
    },
    ...connectionArgs,
  },
  async run({ args, rawArgs }) {
    const dashes = rawArgs.indexOf("--");
    const cmd = dashes < 0 ? [] : rawArgs.slice(dashes + 1);
    const positionals = (args._ as string[]).slice(0, (args._ as string[]).length - cmd.length);
    if (positionals.length !== 1) throw new UsageError(`kv lock takes one NAME, then -- CMD ARGS... (got ${positionals.length} words before --)`);
    if (dashes >= 0 && cmd.length === 0) throw new UsageError("nothing to run after --");
    const name = args.name;
    if (name === "") throw new UsageError("the lock's name must not be empty");
    const ttlMs = args.ttl === undefined ? TTL_MS_DEFAULT : parseTtl("--ttl", args.ttl);
    const conn = connection(args);
    const interrupted = interruption();
    const wait = args.wait !== false;
    const lock = await waitFor((signal) => conn.client.lock(name, { ttlMs, signal, wait }), interrupted, (held) => held.release());
    sayRaised(ttlMs, lock);

    if (cmd.length === 0) {
      printLine(conn.json ? JSON.stringify({ key: lock.key, fence: lock.fence, leaseId: lock.leaseId }) : `${lock.key}\t${lock.fence}`);
      await Promise.race([abortedPromise(interrupted.signal), abortedPromise(lock.lost)]);
      interrupted.dispose();
      // Lost: exit at once, releasing nothing (see `exitLost`).
      if (lock.lost.aborted && !interrupted.signal.aborted) await exitLost(lostMessage(`the lock ${name}`, lock), lock, () => lock.release());
      await releaseOrSay(() => lock.release(), `the lock ${name}`, lock, lock.ttlMs);
      return;
    }

    let child: ReturnType<typeof Bun.spawn>;
    try {
      child = Bun.spawn(cmd, {
        env: { ...process.env, KV_LOCK_KEY: lock.key, KV_LOCK_FENCE: String(lock.fence) },
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      });
    } catch (error) {
      await lock.release();
      interrupted.dispose();
      // As a shell answers a command it cannot find or run.
      console.error(`kv: cannot run '${cmd[0]}': ${error instanceof Error ? error.message : String(error)}`);
      process.exit(127);
    }
    // Our own SIGINT/SIGTERM go on to CMD; we release once it has exited.
    interrupted.signal.addEventListener("abort", () => child.kill(interrupted.signal.reason as NodeJS.Signals), { once: true });
    // A lost lock: another holder may already run. CMD is told to stop; its status is still ours.
    lock.lost.addEventListener(
      "abort",
      () => {
        console.error(`kv: ${lostMessage(`the lock ${name}`, lock)}; sending SIGTERM to ${cmd[0]}`);
        child.kill("SIGTERM");
      },
      { once: true },
    );
    const code = await child.exited;
    const status = child.signalCode === null || child.signalCode === undefined ? code : signalStatus(String(child.signalCode));
    // A lost lock is not released: its lease is gone, or the cluster did not answer (see `exitLost`).
    // CMD's status stands either way; a release that failed is said on stderr.
    if (!lock.lost.aborted) await releaseOrSay(() => lock.release(), `the lock ${name}`, lock, lock.ttlMs, status);
    else await cleanUpAfterKeyChanged(lock, () => lock.release());
    interrupted.dispose();
    // CMD may finish cleanly on the SIGTERM, or have ended just as the lock went: its work did not
    // all run under the lock, so a success is not ours to pass on (found in a black-box review:
    // `kv lock x -- job && mark_done` went on).
    if (lock.lost.aborted && status === 0) {
      console.error(`kv: ${cmd[0]} exited 0 after the lock was lost: exit 1`);
      process.exit(1);
    }
    process.exit(status);
  },
});

export const electCommand = defineCommand({
  meta: {
    name: "elect",
    description: "Campaign in election NAME with VALUE and hold office until interrupted; with --observe, print each new leader's value",
  },
  args: {
    name: { type: "positional", required: true, description: "The election's name (its keys are NAME/<lease id>)" },
    value: { type: "positional", required: false, description: "This candidate's value, which observers see while it leads" },
    observe: { type: "boolean", description: "Do not campaign: print each new leader's value (one a line) until interrupted" },
    ...ttlArg,
    ...connectionArgs,
  },
  async run({ args }) {
    const name = args.name;
    if (name === "") throw new UsageError("the election's name must not be empty");
    const conn = connection(args);
    const interrupted = interruption();
    if (args.observe === true) {
      if (args.value !== undefined) throw new UsageError("--observe takes no VALUE");
      // A listing or watch that retries while no node answers holds the loop below past the
      // interruption (found in a black-box review: 19 s): exit 0 after a short grace regardless.
      void abortedPromise(interrupted.signal).then(() => setTimeout(() => process.exit(0), INTERRUPT_GRACE_MS).unref());
      try {
        for await (const leader of conn.client.observe(name, { signal: interrupted.signal })) {
          // A value that is not UTF-8 as the other commands print one (it printed U+FFFD: found in review).
          const value = jsonValue(leader.bytes);
          printLine(conn.json ? JSON.stringify({ key: leader.key, value, version: leader.version }) : typeof value === "string" ? value : `base64:${value.base64}`);
        }
      } catch (error) {
        if (!interrupted.signal.aborted) exitFor(error);
      }
      interrupted.dispose();
      return;
    }
    const value = args.value;
    if (value === undefined) throw new UsageError("kv elect needs NAME and VALUE (or --observe)");
    const ttlMs = args.ttl === undefined ? TTL_MS_DEFAULT : parseTtl("--ttl", args.ttl);
    const office = await waitFor((signal) => conn.client.elect(name, value, { ttlMs, signal }), interrupted, (held) => held.resign());
    sayRaised(ttlMs, office);
    printLine(
      conn.json
        ? JSON.stringify({ elected: true, name, value, key: office.key, fence: office.fence, leaseId: office.leaseId })
        : `elected: ${name} = ${value} (key ${office.key}, fence ${office.fence})`,
    );
    await Promise.race([abortedPromise(interrupted.signal), abortedPromise(office.lost)]);
    interrupted.dispose();
    if (office.lost.aborted && !interrupted.signal.aborted) await exitLost(lostMessage(`office in ${name}`, office), office, () => office.resign());
    await releaseOrSay(() => office.resign(), `office in ${name}`, office, office.ttlMs);
  },
});
