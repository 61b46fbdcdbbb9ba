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
 * Linux keeps the nice value per thread (setpriority(2), "BUGS": `os.setPriority` of pid 0 changes
 * the calling thread only), and a thread starts with its creator's: the checkpointer, started by the
 * storage thread, inherits the storage thread's. So does any of the runtime's own threads that a
 * background thread happens to start: its I/O pool ("Bun Pool") starts on first use, from either
 * thread. The JIT compiler's and the collector's helpers, which the loop's code needs, are started
 * by the loop's thread as it loads, before it opens the storage (test/storage-threaded.test.ts
 * checks the built executable's threads). Raising a nice value needs no privilege. Elsewhere
 * nothing changes.
 */
import { writeFileSync } from "node:fs";
import { getPriority, setPriority } from "node:os";

/** How much nicer than its creator a background thread makes itself. */
export const backgroundNiceIncrement = 4;

/** The largest nice value (the lowest priority). */
const niceMax = 19;

/**
 * Names the calling thread `name` (what `top -H` and /proc/PID/task/TID/comm show; 15 bytes at
 * most) and lowers its priority by `backgroundNiceIncrement`. Best effort, Linux only: on other
 * systems a priority belongs to the whole process, so nothing is changed.
 */
export function becomeBackgroundThread(name: string): void {
  if (process.platform !== "linux") return;
  try {
    writeFileSync("/proc/thread-self/comm", name.slice(0, 15));
  } catch {
    // No /proc: the thread keeps the runtime's name.
  }
  try {
    setPriority(Math.min(niceMax, getPriority() + backgroundNiceIncrement));
  } catch {
    // Refused (a sandbox): the thread runs at its creator's priority.
  }
}
