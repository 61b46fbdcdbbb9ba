// Proves SqliteReads' batched key-value reads (src/storage/sqlite-reads.ts): gets and lists made in one task of the event loop share one read transaction, the next task (or endBatch, dataBytes) reads the newest commit, and a ThreadedStorage get after an awaited apply sees it.
import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { encodeCommand } from "../src/kv/command.ts";
import { EntryType } from "../src/raft/types.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { SqliteReads } from "../src/storage/sqlite-reads.ts";
import { openThreadedStorage } from "../src/storage/threaded-storage.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { tempDirs } from "./helpers/temp-dirs.ts";

const tempDir = tempDirs("kv-storage-reads-");

const text = (data: Uint8Array | undefined): string | undefined => (data === undefined ? undefined : new TextDecoder().decode(data));

/** A node's database made by the storage itself, closed, then a writer and a read-only reader on it. */
function writerAndReader(batchKvReads: boolean): { writer: Database; reader: Database; reads: SqliteReads; close: () => void } {
  const dir = tempDir();
  const storage = openSqliteStorage(dir);
  storage.bootstrap([1]);
  storage.close();
  const file = join(dir, "kv.db");
  const writer = new Database(file, { strict: true });
  writer.run("PRAGMA journal_mode = WAL");
  const reader = new Database(file, { readonly: true, strict: true });
  const reads = new SqliteReads(reader, file, { batchKvReads });
  return {
    writer,
    reader,
    reads,
    close: () => {
      reads.finalize();
      reader.close(true);
      writer.close(true);
    },
  };
}

function putRow(writer: Database, key: string, value: string, version: number): void {
  writer
    .query("INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version")
    .run(key, new TextEncoder().encode(value), version);
}

/** Resolves in a later task of the event loop (every microtask queued before has run). */
const nextTask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe("batched key-value reads", () => {
  test("gets and lists in one task read one snapshot; the next task reads the newest commit", async () => {
    const { writer, reads, close } = writerAndReader(true);
    try {
      putRow(writer, "a", "1", 1);
      expect(text(reads.get("a")?.value)).toBe("1");
      putRow(writer, "a", "2", 2);
      putRow(writer, "b", "x", 3);
      // Same task: the batch's snapshot, taken at the first get.
      expect(text(reads.get("a")?.value)).toBe("1");
      expect(reads.get("b")).toBeUndefined();
      expect(reads.list("", undefined, 10).map((item) => item.key)).toEqual(["a"]);
      await nextTask();
      expect(text(reads.get("a")?.value)).toBe("2");
      expect(reads.get("a")?.version).toBe(2);
      expect(reads.list("", undefined, 10).map((item) => item.key)).toEqual(["a", "b"]);
    } finally {
      close();
    }
  });

  test("endBatch and dataBytes end the batch: what follows reads the newest commit", async () => {
    const { writer, reads, close } = writerAndReader(true);
    try {
      putRow(writer, "a", "1", 1);
      expect(text(reads.get("a")?.value)).toBe("1");
      putRow(writer, "a", "2", 2);
      reads.endBatch();
      expect(text(reads.get("a")?.value)).toBe("2");

      putRow(writer, "a", "3", 3);
      // The batch begun by the get above is still open: dataBytes ends it.
      reads.dataBytes();
      expect(text(reads.get("a")?.value)).toBe("3");
    } finally {
      close();
    }
  });

  test("a batch whose transaction is gone (rolled back under it) ends without an error", async () => {
    const { writer, reader, reads, close } = writerAndReader(true);
    try {
      putRow(writer, "a", "1", 1);
      expect(text(reads.get("a")?.value)).toBe("1");
      reader.run("ROLLBACK"); // as SQLite does itself after some I/O errors in a read
      await nextTask(); // the batch's end ran: a COMMIT here would throw, from a microtask
      putRow(writer, "a", "2", 2);
      expect(text(reads.get("a")?.value)).toBe("2");
    } finally {
      close();
    }
  });

  test("the end queued for a batch that endBatch closed leaves a later batch of the same task open", async () => {
    const { writer, reads, close } = writerAndReader(true);
    try {
      putRow(writer, "a", "1", 1);
      expect(text(reads.get("a")?.value)).toBe("1"); // batch 1; its end is queued
      let seen: string | undefined;
      queueMicrotask(() => {
        seen = text(reads.get("a")?.value); // runs after batch 1's queued end, before batch 2's
      });
      reads.endBatch();
      expect(text(reads.get("a")?.value)).toBe("1"); // batch 2
      putRow(writer, "a", "2", 2);
      await nextTask();
      expect(seen).toBe("1"); // still batch 2's snapshot: batch 1's end did not close it
      expect(text(reads.get("a")?.value)).toBe("2");
    } finally {
      close();
    }
  });

  test("without batchKvReads every get reads the newest commit, in the same task too", async () => {
    const { writer, reads, close } = writerAndReader(false);
    try {
      putRow(writer, "a", "1", 1);
      expect(text(reads.get("a")?.value)).toBe("1");
      putRow(writer, "a", "2", 2);
      expect(text(reads.get("a")?.value)).toBe("2");
    } finally {
      close();
    }
  });

  test("a ThreadedStorage get after an awaited apply sees it, though a get earlier in the task began a batch", async () => {
    const dir = tempDir();
    const storage = await openThreadedStorage(dir);
    try {
      storage.bootstrap([1]);
      const put = (index: number, value: string) => ({
        index,
        term: 1,
        type: EntryType.Normal,
        data: encodeCommand({ op: "put", key: "k", value: new TextEncoder().encode(value) }),
      });
      storage.save({ term: 1, vote: 1, commit: 0 }, [put(1, "v1"), put(2, "v2")], false);
      storage.save({ term: 1, vote: 1, commit: 2 }, [], false);
      await storage.applyEntries([put(1, "v1")]);
      expect(text(storage.get("k")?.value)).toBe("v1");
      const applied = storage.applyEntries([put(2, "v2")]);
      expect(text(storage.get("k")?.value)).toBe("v1"); // begins a batch in this task
      await applied;
      expect(text(storage.get("k")?.value)).toBe("v2");
      expect(storage.get("k")?.version).toBe(2);
    } finally {
      storage.close();
      await storage.released();
    }
  });
});

describe("a listing's page bounded by bytes (found in a black-box review: 100 values of 1 MiB in one page held the leader's loop past its election timeout)", () => {
  test("SqliteReads and MemoryKvStorage stop after the row that brings the keys' and values' bytes to bytesMax, at least one row", async () => {
    const { writer, reads, close } = writerAndReader(false);
    const memory = createMemoryKvStorage();
    try {
      const big = "x".repeat(1000);
      for (let i = 0; i < 5; i++) putRow(writer, `p/${i}`, big, i + 1);
      memory.bootstrap([1]);
      memory.save({ term: 1, vote: 1, commit: 5 }, [0, 1, 2, 3, 4].map((i) => ({ index: i + 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `p/${i}`, value: new TextEncoder().encode(big) }) })), true);
      memory.applyEntries([0, 1, 2, 3, 4].map((i) => ({ index: i + 1, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "put", key: `p/${i}`, value: new TextEncoder().encode(big) }) })));
      for (const list of [reads.list.bind(reads), memory.list.bind(memory)]) {
        // Each row is 3 + 1000 bytes: the third brings 2,500 past.
        expect(list("p/", undefined, 100, 2_500).map((item) => item.key)).toEqual(["p/0", "p/1", "p/2"]);
        expect(list("p/", "p/2", 100, 2_500).map((item) => item.key)).toEqual(["p/3", "p/4"]);
        expect(list("p/", undefined, 100, 1).map((item) => item.key)).toEqual(["p/0"]);
        expect(list("p/", undefined, 2, 2_500).map((item) => item.key)).toEqual(["p/0", "p/1"]);
        expect(list("p/", undefined, 100).length).toBe(5);
      }
    } finally {
      close();
    }
  });
});
