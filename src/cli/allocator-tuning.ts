/**
 * Bun's allocator, mimalloc, hands freed pages back to the kernel 10 ms after they empty (its
 * `purge_delay`). Each hand-back is an madvise, and in a multi-threaded process each madvise is a
 * TLB shootdown: an interrupt to every other core running one of our threads, which is expensive
 * on the virtual machines kv runs on. A node under load allocates and frees a request's worth of
 * memory thousands of times a second, so it paid that again and again: with purging off, a 3-node
 * cluster on one 2-core machine did ~30% more writes/s at 64 clients and ~70% more linearizable
 * reads/s, for a few MB more peak RSS per node (see BENCHMARKS.md). Memory freed stays with the
 * process and is reused; the peak is what the busiest moment needed.
 *
 * mimalloc reads its options from the environment once, at process start, so a long-running
 * command re-executes itself in place (execve: same pid, so signals, pid files and `kill` keep
 * working) with `MIMALLOC_PURGE_DELAY=-1` unless that variable is already set. If anything about
 * that fails, the command simply runs as it is.
 */
import { FFIType, dlopen, ptr } from "bun:ffi";

/** The variable that turns purging off; set by us, or by an operator who wants another value. */
export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";

/** The command line that runs this very program again, compiled or from source. */
function selfCommand(): string[] {
  const compiled = Bun.main.startsWith("/$bunfs/") || Bun.main.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, ...process.execArgv, process.argv[1] as string];
}

/** NUL-terminated bytes of `text`, kept alive by the caller until execve. */
function cString(text: string): Buffer {
  return Buffer.from(`${text}\0`, "utf8");
}

/** A NULL-terminated array of pointers to `strings` (which must outlive the call). */
function pointerArray(strings: readonly Buffer[]): BigUint64Array {
  const pointers = new BigUint64Array(strings.length + 1);
  strings.forEach((bytes, i) => {
    pointers[i] = BigInt(ptr(bytes));
  });
  return pointers;
}

/**
 * Replaces this process with itself under `MIMALLOC_PURGE_DELAY=-1` (see the file comment), or
 * returns when the variable is already set, on platforms other than Linux, or if execve fails.
 */
export function reexecWithoutAllocatorPurging(args: readonly string[]): void {
  if (process.platform !== "linux" || process.env[PURGE_DELAY_VARIABLE] !== undefined) return;
  try {
    const libc = dlopen("libc.so.6", { execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    const argv = [...selfCommand(), ...args].map(cString);
    const environment = { ...process.env, [PURGE_DELAY_VARIABLE]: "-1" };
    const envp = Object.entries(environment)
      .filter((entry): entry is [string, string] => entry[1] !== undefined)
      .map(([name, value]) => cString(`${name}=${value}`));
    const path = argv[0] as Buffer;
    const argvPointers = pointerArray(argv);
    const envPointers = pointerArray(envp);
    // Returns only on failure; the buffers above are alive until then.
    libc.symbols.execve(ptr(path), ptr(argvPointers), ptr(envPointers));
    libc.close();
  } catch {
    // No libc to load, or no FFI: run as is, only a little slower.
  }
}
