// Proves the node loop's background fsync keeps every promise a message makes (thesis §10.2.1): a
// follower acknowledges only entries an fsync has covered, a leader counts its own copy toward
// commit only after its own fsync, and a node whose fsync fails stops instead of going on.
import { expect, test } from "bun:test";
import { StorageError } from "../src/storage/kv-storage.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";

const enc = (s: string) => new TextEncoder().encode(s);

/** A gate for one storage's `sync`: its fsyncs finish only when opened (or fail when broken). */
function gateSync(storage: { sync(): Promise<void> }) {
  let waiting: { resolve(): void; reject(error: Error): void }[] = [];
  let open = false;
  const original = storage.sync.bind(storage);
  storage.sync = () => (open ? original() : new Promise<void>((resolve, reject) => waiting.push({ resolve, reject })));
  return {
    /** fsyncs begun and not yet finished. */
    pending: () => waiting.length,
    open() {
      open = true;
      for (const each of waiting) each.resolve();
      waiting = [];
    },
    fail(error: Error) {
      for (const each of waiting) each.reject(error);
      waiting = [];
    },
  };
}

/**
 * A settled cluster with its third node cut off, the fsyncs of `gated` (its leader or the follower
 * it still reaches) held at a gate, and one write under way.
 */
async function writeWithGatedDisk(gated: "leader" | "follower") {
  const cluster = createMemoryCluster();
  // Settled: the first leader's cluster nonce applied, so only the test's writes are proposed after.
  await cluster.until(() => cluster.leader()?.clusterNonce() !== undefined);
  const leader = cluster.leader()!;
  await cluster.drive(leader.put("settle", enc("0")));
  const leaderId = leader.status().id;
  const [follower, cutOff] = [1, 2, 3].filter((id) => id !== leaderId) as [number, number];
  cluster.network.cutBetween(leaderId, cutOff);
  cluster.network.cutBetween(follower, cutOff);
  const gate = gateSync(cluster.storages.get(gated === "leader" ? leaderId : follower)!);
  const write = tracked(leader.put("k", enc("v")));
  return { cluster, leader, follower, gate, write };
}

/** Whether `promise` settled, without waiting for it. */
function tracked<T>(promise: Promise<T>) {
  const state = { settled: false, value: undefined as T | undefined };
  promise.then(
    (value) => Object.assign(state, { settled: true, value }),
    () => Object.assign(state, { settled: true }),
  );
  return state;
}

/** Moves the cluster on by `ticks` ticks of its clock. */
async function runTicks(cluster: ReturnType<typeof createMemoryCluster>, ticks: number) {
  for (let i = 0; i < ticks; i++) {
    cluster.clock.advance(10);
    await cluster.settle();
  }
}

/** The write stays uncommitted for as long as the gate holds, and is acknowledged once it opens. */
async function expectWriteWaitsForGate({ cluster, leader, gate, write }: Awaited<ReturnType<typeof writeWithGatedDisk>>) {
  await runTicks(cluster, 30);
  expect(gate.pending()).toBeGreaterThan(0);
  expect(write.settled).toBe(false);
  expect(leader.status().commitIndex).toBeLessThan(leader.status().lastLogIndex);
  gate.open();
  await cluster.until(() => write.settled);
  expect(write.value).toMatchObject({ version: leader.status().lastLogIndex });
  expect(cluster.fatal).toEqual([]);
}

test("a leader counts its own copy toward commit only once its own fsync returned", async () => {
  const gated = await writeWithGatedDisk("leader");
  const { cluster, leader, follower } = gated;
  // The follower has the entry and acknowledges it, but one copy of three is no majority.
  await cluster.until(() => cluster.node(follower).status().lastLogIndex >= leader.status().lastLogIndex);
  await expectWriteWaitsForGate(gated);
});

test("a follower acknowledges an entry only once its fsync covering it returned", async () => {
  const gated = await writeWithGatedDisk("follower");
  const { cluster, leader, follower } = gated;
  // Written on the follower, held back from the leader until its disk has it.
  await cluster.until(() => cluster.node(follower).status().lastLogIndex >= leader.status().lastLogIndex);
  await expectWriteWaitsForGate(gated);
});

test("a failed fsync stops the node: it never sends what the disk may have lost", async () => {
  const { cluster, leader, follower, gate, write } = await writeWithGatedDisk("follower");
  await cluster.until(() => gate.pending() > 0);
  gate.fail(Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" }));
  await cluster.settle();
  expect(cluster.node(follower).fatalError()?.message).toContain("fsync failed");
  expect(cluster.fatal.map((error) => error.message)).toEqual([expect.stringContaining("EIO")]);
  // The follower's ack never left: with the third node cut off, the write cannot commit (the
  // leader, hearing from no one, may step down and fail it as of unknown outcome).
  const index = leader.status().lastLogIndex;
  await runTicks(cluster, 30);
  expect(write.value).toBeUndefined();
  expect(leader.status().commitIndex).toBeLessThan(index);
});

test("a storage thread's own failure that a sync reports (an entry that does not decode, damage) stops the node as itself, not as a failed fsync (found in a black-box upgrade review: 'fsync failed (...)' for a newer release's entry)", async () => {
  const { cluster, follower, gate } = await writeWithGatedDisk("follower");
  await cluster.until(() => gate.pending() > 0);
  gate.fail(new StorageError("bad_command", "committed entry does not decode: decode: unknown op byte 0x0c in 44 bytes", "kv.db", 39829));
  await cluster.settle();
  const fatal = cluster.node(follower).fatalError();
  expect(fatal?.message).not.toContain("fsync failed");
  expect(fatal?.message).toContain("unknown op byte 0x0c");
});

/** Makes `storage`'s applies answer later, as a storage thread does: each waits until released. */
function deferApplies(storage: { applyEntries(entries: never): unknown }) {
  const waiting: { resolve(): void; reject(error: Error): void }[] = [];
  const original = (storage.applyEntries as (entries: unknown) => unknown).bind(storage);
  storage.applyEntries = ((entries: unknown) => {
    const results = original(entries);
    return new Promise((resolve, reject) => waiting.push({ resolve: () => resolve(results), reject }));
  }) as never;
  return waiting;
}

test("an apply answered with an error after the node stopped is not fatal (closing a storage fails what is pending); while running, the first error stops the node once", async () => {
  const cluster = createMemoryCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  const leaderId = leader.status().id;
  await cluster.drive(leader.put("settle", enc("0")));
  const applies = deferApplies(cluster.storages.get(leaderId)!);
  const write = tracked(leader.put("k", enc("v")));
  await cluster.until(() => applies.length > 0);
  cluster.stop(leaderId);
  for (const apply of applies) apply.reject(new Error("storage closed"));
  await cluster.settle();
  expect(cluster.fatal).toEqual([]);
  expect(write.settled).toBe(true);

  // On a running node, two failed applies: one fatal stop, reported once.
  await cluster.until(() => cluster.leader() !== undefined);
  const next = cluster.leader()!;
  const failing = deferApplies(cluster.storages.get(next.status().id)!);
  void next.put("a", enc("1")).catch(() => {});
  await cluster.until(() => failing.length > 0);
  void next.put("b", enc("2")).catch(() => {});
  await cluster.until(() => failing.length > 1);
  for (const apply of failing) apply.reject(new Error("disk I/O error"));
  await cluster.settle();
  expect(cluster.fatal.map((error) => error.message)).toEqual(["disk I/O error"]);
  expect(next.fatalError()?.message).toBe("disk I/O error");
});
