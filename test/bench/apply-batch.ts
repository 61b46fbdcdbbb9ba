/**
 * Micro-benchmark: process CPU per write of `SqliteStorage` saves and applies by how many entries
 * each holds, 100 B puts to random keys among `KEYS` (default 50,000), checkpoints on their worker.
 * Each configuration is `entries per save:entries per apply`; the default list alternates two of
 * them (A B A B). What BENCHMARKS.md's "Fewer apply commits" figures come from.
 *
 * Usage: [KEYS=50000] [TOTAL=100000] [CONFIGS=10:10,10:300,10:10,10:300,100:100,100:100] bun test/bench/apply-batch.ts
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeCommand } from "../../src/kv/command.ts";
import { createPrng } from "../../src/lib/prng.ts";
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";

const keys = Number(process.env.KEYS ?? 50_000);
const total = Number(process.env.TOTAL ?? 100_000);
const value = new Uint8Array(100).fill(0x61);

function run(entriesPerSave: number, entriesPerApply: number): void {
  const dir = mkdtempSync(join(tmpdir(), "kv-bench-apply-batch-"));
  const storage = openSqliteStorage(dir, { voters: [1] });
  const prng = createPrng(12345);
  let pending: Entry[] = [];
  const save = (count: number): void => {
    const first = storage.lastIndex() + 1;
    const entries: Entry[] = [];
    for (let index = first; index < first + count; index++) {
      entries.push({ index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `key-${prng.intInclusive(0, keys - 1)}`, value }) });
    }
    storage.save({ term: 1, vote: 1, commit: first + count - 1 }, entries, false);
    pending.push(...entries);
  };
  // Load the key space first, so every measured put lands among as many rows.
  for (let loaded = 0; loaded < keys; loaded += 1000) {
    save(1000);
    storage.applyEntries(pending);
    pending = [];
  }
  let saveMicros = 0;
  let applyMicros = 0;
  let written = 0;
  while (written < total) {
    let started = process.cpuUsage();
    save(entriesPerSave);
    let used = process.cpuUsage(started);
    saveMicros += used.user + used.system;
    written += entriesPerSave;
    if (pending.length >= entriesPerApply) {
      started = process.cpuUsage();
      storage.applyEntries(pending);
      pending = [];
      used = process.cpuUsage(started);
      applyMicros += used.user + used.system;
    }
    if (storage.appliedIndex() - storage.snapshot().index > 10_000) storage.compact(storage.appliedIndex() - 1_000);
  }
  console.log(
    `save ${String(entriesPerSave).padStart(4)}, apply ${String(entriesPerApply).padStart(5)}: ` +
      `save ${(saveMicros / written).toFixed(1)} µs/write, apply ${(applyMicros / written).toFixed(1)} µs/write, together ${((saveMicros + applyMicros) / written).toFixed(1)}`,
  );
  storage.close();
  rmSync(dir, { recursive: true, force: true });
}

if (import.meta.main) {
  const configs = (process.env.CONFIGS ?? "10:10,10:300,10:10,10:300,100:100,100:100").split(",").map((pair) => pair.split(":").map(Number));
  for (const [perSave, perApply] of configs) run(perSave as number, perApply as number);
}
