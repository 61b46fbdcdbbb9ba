/**
 * The CLI's standard output. Lines go through `process.stdout`, whose write errors reach
 * `exitOnOutputError` (Bun's `console.log` drops them: `kv list > /dev/full` exited 0, and
 * `kv watch | head -1` never ended once `head` was gone; found in review).
 */

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
 * (a full disk, say) on standard error.
 */
export function exitOnOutputError(): void {
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(141);
    process.stderr.write(`kv: cannot write the output: ${error.message}\n`);
    process.exit(4);
  });
}
