/**
 * The child process of the threaded storage's crash test (test/storage-threaded.test.ts): it opens
 * the threaded storage in a directory, applies whatever was committed but not applied, then posts
 * saves and applies of deterministic entries (those of save-loop-child.ts) without waiting for
 * them, and after every few batches awaits `sync()`, printing `synced <lastIndex>` once it resolved:
 * every entry up to there is then saved and applied. It runs until killed or `indexMax`.
 *
 * Usage: bun test/children/threaded-sync-child.ts <dir> <seed> <indexMax>
 */
import { createPrng } from "../../src/lib/prng.ts";
import { type Entry, EntryType } from "../../src/raft/types.ts";
import { openThreadedStorage } from "../../src/storage/threaded-storage.ts";
import { crashLoopEntryData } from "./save-loop-child.ts";

async function main(argv: readonly string[]): Promise<void> {
  const [dir, seedText, indexMaxText] = argv;
  if (dir === undefined || seedText === undefined || indexMaxText === undefined) {
    throw new Error("usage: threaded-sync-child.ts <dir> <seed> <indexMax>");
  }
  const prng = createPrng(Number(seedText));
  const indexMax = Number(indexMaxText);
  const storage = await openThreadedStorage(dir, { voters: [1] });
  let { hardState } = storage.initialState();
  await storage.applyEntries(storage.entries(storage.appliedIndex() + 1, hardState.commit + 1, Number.MAX_SAFE_INTEGER));

  while (storage.lastIndex() < indexMax) {
    const batches = prng.intInclusive(1, 5);
    for (let batch = 0; batch < batches && storage.lastIndex() < indexMax; batch++) {
      const term = hardState.term === 0 || prng.chance(0.05) ? hardState.term + 1 : hardState.term;
      const first = storage.lastIndex() + 1;
      const count = Math.min(prng.intInclusive(1, 20), indexMax - first + 1);
      const entries: Entry[] = [];
      for (let index = first; index < first + count; index++) entries.push({ index, term, type: EntryType.Normal, data: crashLoopEntryData(index) });
      hardState = { term, vote: 1, commit: first + count - 1 };
      storage.save(hardState, entries, false);
      void storage.applyEntries(entries);
    }
    const posted = storage.lastIndex();
    await storage.sync();
    process.stdout.write(`synced ${posted}\n`);
  }
  storage.close();
  await storage.released();
}

if (import.meta.main) await main(process.argv.slice(2));
