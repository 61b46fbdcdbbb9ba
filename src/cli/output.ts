/**
 * The CLI's standard output. Lines go through `process.stdout`, whose write errors reach
 * `exitOnOutputError` (Bun's `console.log` drops them: `kv list > /dev/full` exited 0, and
 * `kv watch | head -1` never ended once `head` was gone; found in review).
 */
import { UsageError } from "./usage-error.ts";

/** Writes `text` and a newline to standard output. */
export function printLine(text: string): void {
  process.stdout.write(`${text}\n`);
}

/** Writes raw bytes (a value as stored) to standard output. */
export function printBytes(bytes: Uint8Array): void {
  process.stdout.write(bytes);
}

/**
 * Exits once standard output cannot be written: 141 when its reader went away (EPIPE: the status
 * of a process SIGPIPE ended, as `git` or `etcdctl` end under `| head`), else 4 with the reason
 * (a full disk, say) on standard error. A command that owns processes (`kv chaos`) is told first
 * instead (`whenOutputLost`), and exits once it has stopped them.
 */
export function exitOnOutputError(): void {
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    // A line printed while `exitAfterOutput` waits: the status it exits with stands.
    if (exiting && error.code === "ERR_STREAM_WRITE_AFTER_END") return;
    // Told once: what the command prints while it stops its processes fails the same way.
    if (lostWith !== undefined) return;
    lostWith = error.code === "EPIPE" ? 141 : 4;
    if (lostWith === 4) process.stderr.write(`kv: cannot write the output: ${error.message}\n`);
    if (onLost !== undefined && !exiting) onLost(lostWith);
    else process.exit(lostWith);
  });
}

/** Set once `exitAfterOutput` began. */
let exiting = false;
/** The status standard output's loss calls for, once it was lost. */
let lostWith: number | undefined;
let onLost: ((code: number) => void) | undefined;

/**
 * Has `handler` called (once, with 141 or 4) instead of an exit when standard output is lost, for
 * a command that must stop the processes it started before it exits (found in a black-box review:
 * `kv chaos failover | head -1` exited 141 and left its three nodes running). It then exits through
 * `exitAfterOutput`.
 */
export function whenOutputLost(handler: (code: number) => void): void {
  onLost = handler;
}

/** Whether standard output was lost (its reader went away, or a write failed): say what is left on standard error. */
export function outputLost(): boolean {
  return lostWith !== undefined;
}

/**
 * Exits with `code` once what was printed has been handed to standard output's reader. Bun's
 * `process.exit` drops output still queued for a pipe: `kv txn | reader` whose failure branch got a
 * 1 MiB value printed 64 KiB of its answer, then exited 1 (found in review). Ending the stream waits
 * for the queue (its reader going away ends the wait too, through `exitOnOutputError`). Output
 * already lost is not waited for.
 */
export async function exitAfterOutput(code: number): Promise<never> {
  exiting = true;
  if (lostWith === undefined) {
    await new Promise<void>((resolve) => process.stdout.end(() => resolve()));
    // A write that failed (a full disk) reports it just after: `exitOnOutputError` exits 4 (or 141)
    // then, as it would have without the wait (found in review: exit `code`, no message).
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  process.exit(code);
}

/**
 * All of standard input, for a value or a transaction read from it; a usage error naming the
 * reason when it cannot be read (found in a black-box review: `kv put k < /tmp` printed a stack).
 */
export async function readStandardInput(): Promise<Uint8Array> {
  try {
    return new Uint8Array(await Bun.stdin.arrayBuffer());
  } catch (error) {
    throw new UsageError(`cannot read standard input: ${error instanceof Error ? error.message : String(error)}`);
  }
}
