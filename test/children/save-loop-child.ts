/**
 * The child process of the storage crash test (test/storage-crash.test.ts): it opens the storage
 * in a directory, first applies whatever was committed but not applied, then saves and applies
 * batches of deterministic entries in a loop, printing `saved <lastIndex>` on stdout after each
 * save returns, until it is killed or reaches `indexMax`.
 *
 * Usage: bun test/children/save-loop-child.ts <dir> <seed> <indexMax>
 */
import { createPrng } from "../../src/lib/prng.ts";
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { encodeCommand } from "../../src/kv/command.ts";
import { openSqliteStorage } from "../../src/storage/sqlite-storage.ts";

/** Distinct keys the loop writes, so later writes overwrite and delete earlier ones. */
export const crashLoopKeyCount = 50;

/**
 * The data of the entry at `index`, a pure function of the index so a checker can recompute it:
 * every 13th entry is a no-op, every 10th otherwise a delete, the rest puts of 0-299 bytes.
 */
export function crashLoopEntryData(index: number): Uint8Array {
  if (index % 13 === 0) return new Uint8Array(0);
  const key = crashLoopKey(index);
  if (index % 10 === 0) return encodeCommand({ op: "delete", key });
  return encodeCommand({ op: "put", key, value: crashLoopValue(index) });
}

/** The key the entry at `index` writes. */
export function crashLoopKey(index: number): string {
  return `key-${index % crashLoopKeyCount}`;
}

/** The value a put at `index` writes. */
export function crashLoopValue(index: number): Uint8Array {
  const value = new Uint8Array((index * 7) % 300);
  for (let offset = 0; offset < value.length; offset++) value[offset] = (index + offset) & 0xff;
  return value;
}

function main(argv: readonly string[]): void {
  const [dir, seedText, indexMaxText] = argv;
  if (dir === undefined || seedText === undefined || indexMaxText === undefined) {
    throw new Error("usage: save-loop-child.ts <dir> <seed> <indexMax>");
  }
  const prng = createPrng(Number(seedText));
  const indexMax = Number(indexMaxText);
  const storage = openSqliteStorage(dir, { voters: [1] });
  let { hardState } = storage.initialState();

  // A save the kill cut short can keep its entries and lose the hard state written after them in
  // the same write (a write to a file stops at a page when a fatal signal arrives): they are in the
  // log, not committed. Commit them now, as a leader would at its next commit index; before, the
  // next batch started after them and its apply found them skipped (a flaky failure of the test:
  // "apply: entries start at 1133, applied is 1131").
  if (storage.lastIndex() > hardState.commit) {
    hardState = { ...hardState, commit: storage.lastIndex() };
    storage.save(hardState, [], true);
  }
  // Recovery: apply what was committed before the crash (entries up to the applied index are skipped).
  const backlog = storage.entries(storage.appliedIndex() + 1, hardState.commit + 1, Number.MAX_SAFE_INTEGER);
  storage.applyEntries(backlog);

  while (storage.lastIndex() < indexMax) {
    // Now and then a new term, as after an election this node won.
    const term = hardState.term === 0 || prng.chance(0.05) ? hardState.term + 1 : hardState.term;
    const first = storage.lastIndex() + 1;
    const count = Math.min(prng.intInclusive(1, 20), indexMax - first + 1);
    const entries: Entry[] = [];
    for (let index = first; index < first + count; index++) {
      entries.push({ index, term, type: EntryType.Normal, data: crashLoopEntryData(index) });
    }
    hardState = { term, vote: 1, commit: first + count - 1 };
    // sync=false commits survive a process crash too (only power loss can take them): both must hold here.
    storage.save(hardState, entries, prng.chance(0.75));
    process.stdout.write(`saved ${storage.lastIndex()}\n`);
    storage.applyEntries(entries);
  }
  storage.close();
}

if (import.meta.main) main(process.argv.slice(2));
