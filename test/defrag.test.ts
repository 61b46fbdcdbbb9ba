// Proves `kv defrag --data-dir` (src/cli/defrag.ts, SqliteStorage.defragAndClose): a stopped node's
// database shrinks to its data, and everything in it (rows with their versions, the applied index,
// the log, the schema version) reads back the same; a data dir a node holds is refused with nothing
// changed; a copy left by an interrupted defrag is replaced; the built executable does it and says so.
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, chownSync, cpSync, existsSync, readFileSync, statSync, symlinkSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encodeCommand } from "../src/kv/command.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { runKv } from "./helpers/kv-binary.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

const tempDir = tempDirs("kv-defrag-");
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

/** A stopped node's data dir: 2,000 keys of 1 KB written, 1,900 of them deleted, all applied. */
function dataDirWithFreePages(): string {
  const dir = tempDir();
  const storage = openSqliteStorage(dir, { voters: [1], nodeId: 1 });
  const entries: Entry[] = [];
  let index = 0;
  for (let i = 0; i < 2000; i++) entries.push({ index: ++index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `k${String(i).padStart(4, "0")}`, value: bytes(`${i}`.padEnd(1000, "x")) }) });
  for (let i = 100; i < 2000; i++) entries.push({ index: ++index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "delete", key: `k${String(i).padStart(4, "0")}` }) });
  storage.save({ term: 1, vote: 1, commit: index }, entries, true);
  storage.applyEntries(entries);
  storage.close();
  return dir;
}

/** Everything a node reads back from its data dir: rows, applied index, log, schema version. */
function contents(dir: string) {
  const storage = openSqliteStorage(dir, { nodeId: 1 });
  try {
    return {
      rows: storage.list("", undefined, 10_000).map((row) => [row.key, new TextDecoder().decode(row.value), row.version]),
      applied: storage.appliedIndex(),
      hardState: storage.initialState().hardState,
      log: storage.entries(storage.firstIndex(), storage.lastIndex() + 1, Number.MAX_SAFE_INTEGER).map((entry) => [entry.index, entry.term, Buffer.from(entry.data).toString("hex")]),
      userVersion: new Database(join(dir, "kv.db"), { readonly: true }).query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version,
    };
  } finally {
    storage.close();
  }
}

describe("defrag", () => {
  test("the database shrinks to its data; rows, versions, the applied index, the log and the schema version read back the same", () => {
    const dir = dataDirWithFreePages();
    const before = contents(dir);
    expect(before.rows.length).toBe(100);
    const result = openSqliteStorage(dir, { checkpoints: "inline" }).defragAndClose();
    expect(result.freeBytesBefore).toBeGreaterThan(1_500_000);
    expect(result.bytesAfter).toBeLessThan(result.bytesBefore / 4);
    expect(statSync(join(dir, "kv.db")).size).toBe(result.bytesAfter);
    expect(existsSync(join(dir, "kv.db-defrag"))).toBe(false);
    expect(contents(dir)).toEqual(before);
  });

  test("a data dir a node holds is refused, nothing changed; a copy left by an interrupted defrag is replaced", async () => {
    const dir = dataDirWithFreePages();
    const file = join(dir, "kv.db");
    const held = openSqliteStorage(dir, { nodeId: 1 });
    try {
      const sizeBefore = statSync(file).size;
      const refused = await runKv(["defrag", "--data-dir", dir]);
      expect(refused.code).toBe(1);
      expect(refused.out).toContain("is in use by a running node or another kv defrag (stop the node first)");
      expect(statSync(file).size).toBe(sizeBefore);
      expect(existsSync(`${file}-defrag`)).toBe(false);
    } finally {
      held.close();
      await held.released();
    }
    writeFileSync(`${file}-defrag`, "left by a defrag that died");
    const before = contents(dir);
    const done = await runKv(["defrag", "--data-dir", dir, "--json"]);
    expect(done.code).toBe(0);
    const answer = JSON.parse(done.out) as { file: string; bytesBefore: number; bytesAfter: number; freeBytesBefore: number; durationMs: number };
    expect(answer.file).toBe(file);
    expect(answer.bytesAfter).toBe(statSync(file).size);
    expect(answer.bytesAfter).toBeLessThan(answer.bytesBefore);
    expect(existsSync(`${file}-defrag`)).toBe(false);
    expect(contents(dir)).toEqual(before);
  });

  test("sizes under a megabyte are said in kilobytes (found in a black-box walkthrough: a 40 KB database was '0.0 MB -> 0.0 MB')", async () => {
    const dir = dataDirWithFreePages();
    const done = await runKv(["defrag", "--data-dir", dir]);
    expect(done.code).toBe(0);
    expect(done.out).toMatch(/: \d+\.\d MB with its WAL -> \d+\.\d kB \(\d+\.\d MB of free pages before\)/);
    // Defragged again, the database is small before and after.
    expect((await runKv(["defrag", "--data-dir", dir])).out).toMatch(/: \d+\.\d kB with its WAL -> \d+\.\d kB \(\d+\.\d kB of free pages before\)/);
  });

  test("bytesBefore is the database and WAL as they were on disk before the run, not with what opening them wrote: a compact database defragged again reports its own size (found in a black-box review: 454,760 -> 442,368 twice)", async () => {
    const dir = dataDirWithFreePages();
    const file = join(dir, "kv.db");
    expect((await runKv(["defrag", "--data-dir", dir])).code).toBe(0);
    for (let run = 0; run < 2; run++) {
      const onDisk = statSync(file).size + (existsSync(`${file}-wal`) ? statSync(`${file}-wal`).size : 0);
      const again = await runKv(["defrag", "--data-dir", dir, "--json"]);
      expect(again.code).toBe(0);
      const answer = JSON.parse(again.out) as { bytesBefore: number; bytesAfter: number };
      expect([run, answer.bytesBefore]).toEqual([run, onDisk]);
      expect(answer.bytesAfter).toBe(statSync(file).size);
    }
  });

  test("a directory that is no data dir is refused with exit 1, and nothing is created there; an empty kv.db is no older release; an empty --data-dir is a usage error", async () => {
    const dir = tempDir();
    const refused = await runKv(["defrag", "--data-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain("does not exist (is");
    expect(existsSync(join(dir, "kv.db"))).toBe(false);
    writeFileSync(join(dir, "kv.db"), "");
    const empty = await runKv(["defrag", "--data-dir", dir]);
    expect(empty.code).toBe(1);
    expect(empty.out).toContain("empty or no database of kv's");
    expect(statSync(join(dir, "kv.db")).size).toBe(0);
    const usage = await runKv(["defrag", "--data-dir", ""]);
    expect(usage.code).toBe(2);
    expect(usage.out).toContain("--data-dir needs a directory");
  });

  test("the database keeps its owner and permissions (a node running as another user must still open it)", async () => {
    const dir = dataDirWithFreePages();
    const file = join(dir, "kv.db");
    chmodSync(file, 0o600);
    const { uid, gid } = statSync(file);
    const done = await runKv(["defrag", "--data-dir", dir]);
    expect(done.code).toBe(0);
    const after = statSync(file);
    expect([after.mode & 0o7777, after.uid, after.gid]).toEqual([0o600, uid, gid]);
  });

  test.skipIf(process.getuid?.() !== 0)("run as another user than the database's owner, it is refused (what it writes would be that user's, and the node could not open it)", async () => {
    const dir = dataDirWithFreePages();
    const file = join(dir, "kv.db");
    chownSync(file, 65534, 65534);
    const refused = await runKv(["defrag", "--data-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain("belongs to uid 65534; run kv defrag as that user");
    expect(statSync(file).uid).toBe(65534);
  });

  test("a data dir of an older release is refused as it is, not migrated (its node may still go back to it)", async () => {
    const dir = tempDir();
    cpSync(join(import.meta.dir, "fixtures", "v0.7.0", "node-1"), dir, { recursive: true });
    const before = readFileSync(join(dir, "kv.db"));
    const refused = await runKv(["defrag", "--data-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain("written by an older release of kv");
    expect(refused.out).not.toContain("    at ");
    expect(readFileSync(join(dir, "kv.db")).equals(before)).toBe(true);
    expect(new Database(join(dir, "kv.db"), { readonly: true }).query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(7);
  });

  test("a database that is a symbolic link is refused (the copy would replace the link, and leave the database behind)", async () => {
    const dir = dataDirWithFreePages();
    const elsewhere = tempDir();
    renameSync(join(dir, "kv.db"), join(elsewhere, "kv.db"));
    symlinkSync(join(elsewhere, "kv.db"), join(dir, "kv.db"));
    const refused = await runKv(["defrag", "--data-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain("is a symbolic link");
  });

  test("a damaged database is refused in one line, nothing changed; a copy an interrupted defrag left is removed when the node next opens", async () => {
    const dir = dataDirWithFreePages();
    const file = join(dir, "kv.db");
    const damaged = readFileSync(file);
    damaged.fill(0x5a, 4096 * 3, 4096 * 6);
    writeFileSync(file, damaged);
    const refused = await runKv(["defrag", "--data-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain(`cannot defragment ${file}, nothing changed: the database is damaged (integrity_check: *** in database main ***; Tree 4 page 4: `);
    expect(refused.out.trimEnd().split("\n")).toHaveLength(1);
    expect(refused.out).not.toContain("    at ");
    // Every byte as it was, the header's change counters too (found in a black-box review: the open
    // that met the damage had bumped them, where the check now refuses it before anything is written).
    expect(readFileSync(file).equals(damaged)).toBe(true);
    expect(existsSync(`${file}-defrag`)).toBe(false);

    // A row and its index entry that disagree (one bit of the row's key flipped, its page whole):
    // SQLite's quick_check passes it, and a node read such a key as absent; integrity_check refuses
    // it (found in a black-box review).
    const indexDamaged = dataDirWithFreePages();
    const indexFile = join(indexDamaged, "kv.db");
    const before = readFileSync(indexFile);
    const key = Buffer.from("k0042");
    const pageBytes = 4096;
    let at = before.indexOf(key);
    // The copy in a table's leaf page (type 13), not the index's (10) or a free page's.
    while (at !== -1 && before[Math.floor(at / pageBytes) * pageBytes] !== 13) at = before.indexOf(key, at + 1);
    expect(at).toBeGreaterThan(0);
    before.writeUInt8((before.readUInt8(at + key.length - 1) ^ 0x01) & 0xff, at + key.length - 1); // "k0042" reads "k0043" in the row
    writeFileSync(indexFile, before);
    const quick = new Database(indexFile, { readonly: true });
    expect(quick.query<{ quick_check: string }, []>("PRAGMA quick_check").get()?.quick_check).toBe("ok");
    quick.close();
    const refusedIndex = await runKv(["defrag", "--data-dir", indexDamaged]);
    expect(refusedIndex.code).toBe(1);
    expect(refusedIndex.out).toContain(`cannot defragment ${indexFile}, nothing changed: the database is damaged (integrity_check: `);
    expect(readFileSync(indexFile).equals(before)).toBe(true);

    const other = dataDirWithFreePages();
    const otherFile = join(other, "kv.db");
    writeFileSync(`${otherFile}-defrag`, "half a copy");
    writeFileSync(`${otherFile}-defrag-journal`, "its journal");
    openSqliteStorage(other, { nodeId: 1 }).close();
    expect([existsSync(`${otherFile}-defrag`), existsSync(`${otherFile}-defrag-journal`)]).toEqual([false, false]);
  });
});
