/**
 * The child process of the snapshot crash test (test/storage-snapshot-crash.test.ts): round after
 * round it stages a deterministic image in chunks, installs it, then saves and applies a few entries
 * after it, printing `staged <round>`, `installed <round>` and `applied <round>` as each step
 * returns, until it is killed. On start it resumes after whatever round its storage holds.
 *
 * Usage: bun test/children/snapshot-loop-child.ts <dir>
 */
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { encodeCommand } from "../../src/kv/command.ts";
import type { ImageRow } from "../../src/storage/kv-storage.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";

/** Rows in every round's image. */
export const snapshotLoopRows = 1_500;
/** Entries saved and applied after each install. */
export const snapshotLoopEntriesAfter = 5;
/** Bytes of keys and values per staged chunk. */
const chunkBytesMax = 32 * 1024;

/** The index round `round` installs at (round 0 first); its term is round + 1. */
export function snapshotLoopIndex(round: number): number {
  return 1_000 * (round + 1);
}

/** The round whose image sits at snapshot index `index`, or -1 for none. */
export function snapshotLoopRound(index: number): number {
  return index === 0 ? -1 : index / 1_000 - 1;
}

/** Row `i` of round `round`'s image: sizes and bytes differ per round, so a mix of two rounds shows. */
export function snapshotLoopRow(round: number, i: number): ImageRow {
  const value = new Uint8Array(20 + ((i * 37 + round * 11) % 300)).fill((round * 7 + i) & 0xff);
  return { key: `key-${String(i).padStart(5, "0")}`, value, version: snapshotLoopIndex(round) - (i % 100) };
}

/** Entry `offset` (1-based) after round `round`'s install: a put of a key no image has. */
export function snapshotLoopEntry(round: number, offset: number): Entry {
  const index = snapshotLoopIndex(round) + offset;
  return { index, term: round + 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `after-${offset}`, value: new Uint8Array([round & 0xff, offset]) }) };
}

function main(argv: readonly string[]): void {
  const [dir] = argv;
  if (dir === undefined) throw new Error("usage: snapshot-loop-child.ts <dir>");
  const storage = openSqliteStorage(dir, { voters: [1, 2, 3] });
  for (let round = snapshotLoopRound(storage.snapshot().index) + 1; round < 1_000_000; round++) {
    const index = snapshotLoopIndex(round);
    const imageId = `round-${round}`;
    let chunk: ImageRow[] = [];
    let chunkBytes = 0;
    let first = true;
    for (let i = 0; i < snapshotLoopRows; i++) {
      const row = snapshotLoopRow(round, i);
      chunk.push(row);
      chunkBytes += row.key.length + row.value.byteLength;
      if (chunkBytes >= chunkBytesMax || i === snapshotLoopRows - 1) {
        storage.stageImageChunk(imageId, chunk, first);
        first = false;
        chunk = [];
        chunkBytes = 0;
      }
    }
    process.stdout.write(`staged ${round}\n`);
    storage.installSnapshot({ index, term: round + 1, voters: [1, 2, 3] }, imageId);
    process.stdout.write(`installed ${round}\n`);
    const entries = Array.from({ length: snapshotLoopEntriesAfter }, (_, offset) => snapshotLoopEntry(round, offset + 1));
    storage.save({ term: round + 1, vote: 1, commit: index + snapshotLoopEntriesAfter }, entries, false);
    storage.applyEntries(entries);
    process.stdout.write(`applied ${round}\n`);
  }
  storage.close();
}

if (import.meta.main) main(process.argv.slice(2));
