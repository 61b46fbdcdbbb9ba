/**
 * Micro-benchmark: CPU per entry of saving the log, SQLite (`SqliteStorage.save`, no fsync, its
 * checkpoints on their worker) against the segment log (`SegmentLog.append`), 10 entries and a
 * hard state per save, fdatasynced every 5 saves as the node's background sync would, for values
 * of 100 B, 1 KB and 16 KB. Alternates the two (A B A B). Process CPU, all threads: the
 * checkpointer's copying counts. For comparing, not a target (BENCHMARKS.md).
 *
 * Usage: bun test/bench/log-append.ts [entries per run = 50000]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType, type HardState } from "../../src/raft/types.ts";
import { SegmentLog } from "../../src/storage/segment-log.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";

const entriesPerSave = 10;
const savesPerSync = 5;

interface LogUnderTest {
  save(hardState: HardState, entries: readonly Entry[]): void;
  compact(index: number): void;
  sync(): Promise<void>;
  close(): void;
}

function sqliteLog(dir: string): LogUnderTest {
  const storage = openSqliteStorage(dir, { voters: [1] });
  return {
    save: (hardState, entries) => storage.save(hardState, entries, false),
    // The node compacts only what it applied: apply nothing here, so keep the log as it grows.
    compact: () => {},
    sync: () => storage.sync(),
    close: () => storage.close(),
  };
}

function segmentLog(dir: string): LogUnderTest {
  const log = SegmentLog.open(dir);
  return {
    save: (hardState, entries) => log.append(entries, hardState),
    compact: (index) => log.compact(index),
    sync: () => log.sync(),
    close: () => log.close(),
  };
}

async function run(name: string, open: (dir: string) => LogUnderTest, valueBytes: number, total: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "kv-bench-log-append-"));
  const log = open(dir);
  const data = new Uint8Array(valueBytes).fill(0x61);
  const started = process.cpuUsage();
  const startedMs = performance.now();
  let index = 0;
  let saves = 0;
  while (index < total) {
    const entries: Entry[] = [];
    for (let n = 0; n < entriesPerSave; n++) entries.push({ index: ++index, term: 1, type: EntryType.Normal, data });
    log.save({ term: 1, vote: 1, commit: index - entriesPerSave }, entries);
    if (++saves % savesPerSync === 0) await log.sync();
    if (index % 10_000 === 0) log.compact(index - 1_000);
  }
  await log.sync();
  const cpu = process.cpuUsage(started);
  const wallMs = performance.now() - startedMs;
  log.close();
  rmSync(dir, { recursive: true, force: true });
  console.log(
    `${name.padEnd(8)} ${String(valueBytes).padStart(6)} B: ${((cpu.user + cpu.system) / total).toFixed(1).padStart(6)} µs CPU per entry (${(cpu.system / total).toFixed(1)} system), ${((wallMs * 1000) / total).toFixed(1)} µs wall`,
  );
}

if (import.meta.main) {
  const total = Number(process.argv[2] ?? 50_000);
  for (const valueBytes of [100, 1024, 16384]) {
    const count = valueBytes >= 16384 ? Math.min(total, 10_000) : total;
    for (let round = 0; round < 2; round++) {
      await run("sqlite", sqliteLog, valueBytes, count);
      await run("segments", segmentLog, valueBytes, count);
    }
  }
}
