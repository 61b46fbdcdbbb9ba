// Proves that a committed membership change is recorded in the same transaction as the applied index
// (sqlite and its in-memory twin alike), that a reopened storage returns the configuration as of the
// applied index, that --cluster is checked only until a change is applied, that snapshots carry the
// configuration and every member's address, and that the ConfChange codec is strict.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { CommandCodecError, decodeMembershipChange, encodeMembershipChange, type MembershipChange } from "../src/kv/command.ts";
import { StorageError } from "../src/storage/kv-storage.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";

const conf = (index: number, change: MembershipChange): Entry => ({ index, term: 1, type: EntryType.ConfChange, data: encodeMembershipChange(change) });
const addresses = [1, 2, 3].map((id) => ({ id, peerUrl: `http://127.0.0.1:500${id}` }));

describe("membership change codec", () => {
  test("round-trips every kind, with and without URLs", () => {
    for (const change of [
      { type: "add-learner", nodeId: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "http://127.0.0.1:8004" },
      { type: "add-learner", nodeId: 1_000_000, peerUrl: "https://h:1" },
      { type: "promote", nodeId: 4 },
      { type: "remove", nodeId: 200 },
    ] satisfies MembershipChange[]) {
      expect(decodeMembershipChange(encodeMembershipChange(change))).toEqual(change);
    }
  });
  test("refuses an add without a peer URL, bad ids, unknown types and trailing bytes", () => {
    expect(() => encodeMembershipChange({ type: "add-learner", nodeId: 4 })).toThrow(CommandCodecError);
    expect(() => encodeMembershipChange({ type: "remove", nodeId: 0 })).toThrow(CommandCodecError);
    const good = encodeMembershipChange({ type: "promote", nodeId: 4 });
    expect(() => decodeMembershipChange(new Uint8Array([...good, 0]))).toThrow(CommandCodecError);
    expect(() => decodeMembershipChange(new Uint8Array([0x10, 9, 4, 0, 0]))).toThrow(CommandCodecError);
    expect(() => decodeMembershipChange(new Uint8Array([0x10, 1, 4, 0, 0]))).toThrow(/peer URL/);
  });
});

describe.each(["sqlite", "memory"] as const)("%s storage", (kind) => {
  const dirs: string[] = [];
  const open = (dir?: string) => {
    if (kind === "memory") return createMemoryKvStorage();
    return openSqliteStorage(dir ?? (dirs[dirs.push(mkdtempSync(join(tmpdir(), "kv-membership-"))) - 1] as string));
  };

  test("each address records the index that added the member there: one removed and added again gets the later one, an add of a member not removed keeps its own; a reopen returns them", () => {
    const dir = kind === "sqlite" ? mkdtempSync(join(tmpdir(), "kv-membership-")) : undefined;
    const storage = open(dir);
    storage.bootstrap([1, 2, 3], addresses.map((address) => ({ ...address, addedIndex: 0 })));
    const entries = [
      conf(1, { type: "add-learner", nodeId: 4, peerUrl: "http://127.0.0.1:5004" }),
      conf(2, { type: "remove", nodeId: 2 }),
      conf(3, { type: "add-learner", nodeId: 2, peerUrl: "http://127.0.0.1:6002" }),
      conf(4, { type: "add-learner", nodeId: 4, peerUrl: "http://127.0.0.1:6004" }),
    ];
    storage.save({ term: 1, vote: 1, commit: 4 }, entries, true);
    storage.applyEntries(entries);
    const since = (of: { membership(): { addresses: readonly { id: number; addedIndex?: number }[] } }) =>
      Object.fromEntries(of.membership().addresses.map((address) => [address.id, address.addedIndex]));
    expect(since(storage)).toEqual({ 1: 0, 2: 3, 3: 0, 4: 1 });
    if (dir === undefined) return;
    storage.close();
    const reopened = openSqliteStorage(dir);
    expect(since(reopened)).toEqual({ 1: 0, 2: 3, 3: 0, 4: 1 });
    reopened.close();
  });

  test("applying a change records the configuration with the applied index; a reopen returns it", () => {
    const dir = kind === "sqlite" ? mkdtempSync(join(tmpdir(), "kv-membership-")) : undefined;
    try {
      const storage = open(dir);
      storage.bootstrap([1, 2, 3], addresses);
      const add = conf(1, { type: "add-learner", nodeId: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "http://127.0.0.1:8004" });
      const promote = conf(2, { type: "promote", nodeId: 4 });
      const remove = conf(3, { type: "remove", nodeId: 2 });
      storage.save({ term: 1, vote: 1, commit: 3 }, [add, promote, remove], true);
      expect(storage.membership().changedIndex).toBe(0);
      const results = storage.applyEntries([add]);
      expect(results[0]).toMatchObject({ kind: "conf-change", index: 1, change: { type: "add-learner", nodeId: 4 } });
      expect(storage.initialState()).toMatchObject({ voters: [1, 2, 3], learners: [4] });
      storage.applyEntries([promote, remove]);
      const expected = {
        voters: [1, 3, 4],
        learners: [],
        addresses: [addresses[0]!, addresses[2]!, { id: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "http://127.0.0.1:8004", addedIndex: 1 }],
        changedIndex: 3,
      };
      expect(storage.membership()).toEqual(expected);
      if (dir === undefined) return;
      storage.close();
      const reopened = openSqliteStorage(dir);
      expect(reopened.membership()).toEqual(expected);
      expect(reopened.initialState().voters).toEqual([1, 3, 4]);
      expect(reopened.entries(1, 4, 1 << 20).map((entry) => entry.type)).toEqual([1, 1, 1]);
      // --cluster naming the original three no longer matters: the recorded configuration wins.
      reopened.bootstrap([1, 2, 3], addresses);
      expect(reopened.membership().voters).toEqual([1, 3, 4]);
      reopened.close();
    } finally {
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    }
  });

  test("before any change, other voters in --cluster are refused", () => {
    const storage = open();
    storage.bootstrap([1, 2, 3]);
    expect(() => storage.bootstrap([1, 2, 4])).toThrow(StorageError);
    storage.close();
  });

  test("a joined server records the configuration it was given; images carry addresses; install records them", () => {
    const joined = open();
    joined.bootstrapJoined({ voters: [1, 2, 3], learners: [4], addresses: [...addresses, { id: 4, peerUrl: "http://x:4" }] }, 7);
    expect(joined.initialState()).toMatchObject({ voters: [1, 2, 3], learners: [4] });
    expect(joined.membership().changedIndex).toBe(7);

    const leader = open();
    leader.bootstrap([1, 2, 3], addresses);
    const add = conf(1, { type: "add-learner", nodeId: 5, peerUrl: "http://x:5" });
    leader.save({ term: 1, vote: 1, commit: 1 }, [add], true);
    leader.applyEntries([add]);
    const image = leader.openImage();
    expect(image.metadata).toMatchObject({ index: 1, voters: [1, 2, 3], learners: [5] });
    expect(image.addresses.map((a) => a.id)).toEqual([1, 2, 3, 5]);
    const follower = open();
    follower.bootstrap([1, 2, 3], addresses);
    follower.stageImageChunk("img", image.next(1 << 20), true);
    follower.installSnapshot(image.metadata, "img", image.addresses);
    image.close();
    expect(follower.membership()).toMatchObject({ voters: [1, 2, 3], learners: [5], changedIndex: 1 });
    expect(follower.membership().addresses.find((a) => a.id === 5)?.peerUrl).toBe("http://x:5");
    for (const storage of [joined, leader, follower]) storage.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
});
