/**
 * Micro-benchmark of the sqlite storage: saves per second with 1 and 100 entries of 100 B per
 * save, fsynced and not, and applies per second. Numbers on one machine, for comparing changes
 * A B A B in one run, not targets (as BENCHMARKS.md compares).
 *
 * Usage: bun test/bench/storage.ts [durationMs=2000]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { encodeCommand } from "../../src/kv/command.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";

const valueBytes = 100;

function main(durationMs: number): void {
  for (const [entriesPerSave, sync] of [[1, true], [100, true], [1, false], [100, false]] as const) {
    const dir = mkdtempSync(join(tmpdir(), "kv-bench-storage-"));
    const storage = openSqliteStorage(dir, { voters: [1] });
    try {
      const value = new Uint8Array(valueBytes).fill(0x61);
      let saves = 0;
      let applies = 0;
      const startMs = performance.now();
      let applyMs = 0;
      while (performance.now() - startMs < durationMs) {
        const first = storage.lastIndex() + 1;
        const entries: Entry[] = [];
        for (let index = first; index < first + entriesPerSave; index++) {
          entries.push({ index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `key-${index % 1000}`, value }) });
        }
        storage.save({ term: 1, vote: 1, commit: first + entriesPerSave - 1 }, entries, sync);
        saves++;
        const applyStartMs = performance.now();
        storage.applyEntries(entries);
        applyMs += performance.now() - applyStartMs;
        applies++;
      }
      const elapsedS = (performance.now() - startMs) / 1000;
      const saveS = elapsedS - applyMs / 1000;
      console.log(
        `entries/save=${String(entriesPerSave).padStart(3)} sync=${String(sync).padEnd(5)}  ` +
          `saves/s=${Math.round(saves / saveS)}  entries/s=${Math.round((saves * entriesPerSave) / saveS)}  ` +
          `applies/s=${Math.round(applies / (applyMs / 1000))}  (${saves} saves in ${elapsedS.toFixed(1)} s)`,
      );
    } finally {
      storage.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

if (import.meta.main) main(Number(process.argv[2] ?? 2000));
