/**
 * A node's background threads (the storage's writer thread, src/storage/storage-thread.ts, and the
 * checkpointer it starts, src/storage/checkpointer.ts) run at a lower CPU priority than the loop's
 * thread, which ticks, sends heartbeats and serves clients.
 *
 * Why: on a machine with fewer cores than busy threads (three nodes and a benchmark client on two
 * cores), the kernel shares the cores evenly, and the loop's thread waited for a core while the
 * background threads had it. At 256 KB values a follower's turn that needed 8-19 ms of its thread's
 * CPU took 40-53 ms by the wall clock, and each node's loop was held past 100 ms 3-9 times in 20 s;
 * a loop held past the election timeout costs the cluster its leader. With the background threads
 * at nice +4 (in the kernel's fair scheduler, 0.4 of the loop's weight when both want a core) it
 * was 0-6 times, with as many writes/s (BENCHMARKS.md). They still get every core nobody else
 * wants, so an idle machine runs them as fast as before.
 *
 * Linux keeps the nice value per thread (setpriority(2), "BUGS"), and a thread starts with its
 * creator's: the checkpointer, started by the storage thread, inherits the storage thread's. Raising
 * a nice value needs no privilege. Elsewhere, or without FFI, nothing changes.
 */
import { FFIType, dlopen } from "bun:ffi";
import { writeFileSync } from "node:fs";

/** How much nicer than its creator a background thread makes itself. */
export const backgroundNiceIncrement = 4;

/**
 * Names the calling thread `name` (what `top -H` and /proc/PID/task/TID/comm show; 15 bytes at
 * most) and, when `niceIncrement` is above 0, lowers its priority by that much. Best effort: returns
 * whether the priority was lowered.
 */
export function becomeBackgroundThread(name: string, niceIncrement = backgroundNiceIncrement): boolean {
  if (process.platform !== "linux") return false;
  try {
    writeFileSync("/proc/thread-self/comm", name.slice(0, 15));
  } catch {
    // No /proc: the thread keeps the runtime's name.
  }
  if (niceIncrement <= 0) return false;
  try {
    const libc = dlopen("libc.so.6", { nice: { args: [FFIType.i32], returns: FFIType.i32 } });
    try {
      // nice(2) changes the calling thread's value on Linux; -1 may be a legitimate result, so the
      // caller who needs to know reads it back (/proc/thread-self/stat).
      libc.symbols.nice(niceIncrement);
      return true;
    } finally {
      libc.close();
    }
  } catch {
    return false;
  }
}
