/**
 * Settings of the runtime that a node under load pays for dearly, and that can only be given
 * through the environment at process start:
 *
 * - `MIMALLOC_PURGE_DELAY=-1`. Bun's allocator, mimalloc, hands freed pages back to the kernel
 *   10 ms after they empty. Each hand-back is an madvise, and in a multi-threaded process each
 *   madvise is a TLB shootdown: an interrupt to every other core running one of our threads,
 *   expensive on the virtual machines kv runs on. A node allocates and frees a request's worth of
 *   memory thousands of times a second. With purging off, a 3-node cluster on one 2-core machine
 *   did ~30% more writes/s at 64 clients and ~70% more linearizable reads/s, for a few MB more
 *   peak RSS per node: freed memory stays with the process and is reused.
 * - `BUN_JSC_useFTLJIT=0`. JavaScriptCore's top tier (FTL) kept recompiling the node's hot paths:
 *   its JIT threads used 0.4 s of CPU per 5 s of load even after warm-up (0.07-0.1 s without it),
 *   and without FTL a warmed-up cluster did 4-20% more writes/s; single-client latency fell too.
 *   The DFG tier below it stays on (turning that off too was slower).
 * - `BUN_JSC_forceRAMSize=268435456` (256 MiB). JavaScriptCore grows its heap by a factor that
 *   depends on the heap's size against the machine's RAM: against 24 GiB every heap is "small",
 *   so it doubles after each collection, and a node writing 16 KB values (32 MB/s of values, each
 *   copied a few times) peaked at 380-470 MB of RSS while holding about 55 MB live. Sized against
 *   256 MiB, a heap past 64 MB grows by 1.5 and one past 128 MB by 1.24. Measured A B A B
 *   (BENCHMARKS.md): peak RSS at 16 KB 255-298 MB, at 256 KB 497-657 MB (720-967 without), with
 *   as many writes/s; at 100 B 4,754 and 5,169 writes/s against 4,320 and 4,795 without. It only
 *   sizes the heap: nothing is refused for lack of memory. (Its collections are not free: at 256 KB
 *   values the loop's GC pauses reach 35-58 ms, BENCHMARKS.md; 128 MiB was no better there.)
 *
 * Left at JavaScriptCore's default: the growth of a heap under 64 MB after a collection (2). Set
 * to 1.3 (`BUN_JSC_smallHeapGrowthFactor`) it cut peak RSS at 16 KB values by 35-55 MB per node,
 * but cost 12% of the writes/s at 100 B and 17% more CPU per write (BENCHMARKS.md, twenty-sixth
 * session).
 *
 * And one of Bun's own flags, given through `BUN_OPTIONS` (added to an operator's own flags there):
 *
 * - `--max-http-header-size=131072` (128 KiB; Bun's default is 16 KiB). Keys travel in the request
 *   line, percent-encoded: a key of 16,384 bytes (the most reads take, and `--key-bytes-max` allows)
 *   can take 49,152 characters, and a listing's page names two (`prefix` and `after`). Past Bun's
 *   limit the client got Bun's own bare `431` with no body, never reaching the route: with the
 *   default 4096-byte keys, the next page after a long key under a long prefix could not be asked
 *   for, and keys within a raised limit could not be written. With 128 KiB every key within the
 *   limits reaches its route, and an oversized one gets the documented `413 too_large` JSON.
 *
 * So a long-running command re-executes itself in place (execve: same pid, so signals, pid files
 * and `kill` keep working) with whichever of these variables is not already set; an operator's own
 * values are kept. If anything about that fails, the command simply runs as it is.
 */
import { FFIType, dlopen, ptr } from "bun:ffi";
import { selfCommand } from "../lib/self-command.ts";

/** The settings, each applied only when the environment does not already have the variable. */
export const RUNTIME_TUNING: Readonly<Record<string, string>> = {
  MIMALLOC_PURGE_DELAY: "-1",
  BUN_JSC_useFTLJIT: "0",
  BUN_JSC_forceRAMSize: String(256 * 1024 * 1024),
};

/** Bun's own flags, each added to `BUN_OPTIONS` unless a flag of that name is there already. */
export const BUN_FLAGS: readonly string[] = ["--max-http-header-size=131072"];

/** `BUN_OPTIONS` with each of {@link BUN_FLAGS} it lacks (by name) added, or undefined when it lacks none. */
export function bunOptionsWithFlags(current: string | undefined): string | undefined {
  const named = new Set((current ?? "").split(/\s+/).map((word) => word.split("=")[0]));
  const missing = BUN_FLAGS.filter((flag) => !named.has(flag.split("=")[0]));
  if (missing.length === 0) return undefined;
  // Appended to the operator's words as they are (quoted ones keep their spaces).
  return current === undefined || current.trim() === "" ? missing.join(" ") : `${current} ${missing.join(" ")}`;
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
 * Replaces this process with itself under {@link RUNTIME_TUNING} (see the file comment), or returns
 * when every variable and flag is already set, on platforms other than Linux, or if execve fails.
 */
export function reexecWithRuntimeTuning(args: readonly string[]): void {
  const missing = Object.entries(RUNTIME_TUNING).filter(([name]) => process.env[name] === undefined);
  const bunOptions = bunOptionsWithFlags(process.env.BUN_OPTIONS);
  if (bunOptions !== undefined) missing.push(["BUN_OPTIONS", bunOptions]);
  if (process.platform !== "linux" || missing.length === 0) return;
  try {
    const libc = dlopen("libc.so.6", { execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    const argv = [...selfCommand(), ...args].map(cString);
    const environment = { ...process.env, ...Object.fromEntries(missing) };
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
    // No libc to load, or no FFI: run as is, only slower.
  }
}
