/**
 * Temporary files and directories a command leaves beside its target until it renames them into
 * place, named `PREFIX<pid>` or `PREFIX<pid>-<anything>`: a command killed (SIGKILL, a crash) leaves
 * its own behind. The next run of such a command removes those of processes that are gone (found
 * in a black-box review: `kv snapshot save` and `kv snapshot restore` killed midway left theirs for
 * good). Those of live processes (another run going on) are left alone.
 */
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";

/** Whether process `pid` is alive (or exists under another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === "EPERM";
  }
}

/** Removes the entries of `dir` named `prefix` + the pid of a process that is gone (+ `-...`); returns their names. */
export function removeStaleTemps(dir: string, prefix: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const match = /^([1-9][0-9]{0,9})(?:-.*)?$/.exec(name.slice(prefix.length));
    if (match === null) continue;
    const pid = Number(match[1]);
    // Our own pid names one a process before us left (callers clean up before making their own):
    // in a container every run is pid 1, and its leftovers stayed for good (found in review).
    if (pid !== process.pid && processAlive(pid)) continue;
    rmSync(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}
