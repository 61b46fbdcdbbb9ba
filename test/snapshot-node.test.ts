// Proves the node loop's snapshot path over the in-memory twins (thesis §5.1): the leader compacts by its policy, streams its image in chunks to a follower that fell behind the compacted log, the follower installs it and serves every key; a transfer cut midway is retried; a disk that is full when the last chunk arrives delays the install instead of stopping the node; and an InstallSnapshot arriving without its image is ignored.
import { describe, expect, test } from "bun:test";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";
import type { SnapshotChunk } from "../src/transport/transport.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Three KvNodes with small snapshot settings and small chunks, over the in-memory twins. */
function createCluster(onChunk: (id: number, chunk: SnapshotChunk) => void = () => {}) {
  // Small chunks: an image of a few dozen keys takes many deliveries, so a cut can land midway.
  return createMemoryCluster({ chunkBytesMax: 64, onChunk, node: { requestTimeoutMs: 5_000, snapshotEntries: 20, snapshotCatchUpEntries: 5 } });
}

type Cluster = ReturnType<typeof createCluster>;

/** Writes `count` keys through the leader, keeping the cluster moving until each is acknowledged. */
async function writeKeys(cluster: Cluster, prefix: string, count: number): Promise<number> {
  let version = 0;
  for (let i = 0; i < count; i++) {
    let done = false;
    cluster
      .leader()!
      .put(`${prefix}-${i}`, enc(`${prefix}-value-${i}`))
      .then((result) => {
        version = result.version;
        done = true;
      });
    await cluster.until(() => done);
  }
  return version;
}

describe("snapshots in the node loop", () => {
  test("a follower cut off while the leader compacts catches up by a chunked snapshot and serves every key", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leaderId = cluster.leader()!.status().id;
    const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
    await writeKeys(cluster, "early", 3);
    cluster.network.cutBetween(leaderId, followerId);
    const other = [1, 2, 3].find((id) => id !== leaderId && id !== followerId)!;
    cluster.network.cutBetween(other, followerId);
    const behind = cluster.node(followerId).status().lastLogIndex;

    const lastVersion = await writeKeys(cluster, "k", 60);
    const leaderStatus = cluster.node(leaderId).status();
    expect(leaderStatus.snapshotIndex).toBeGreaterThan(behind);
    expect(leaderStatus.firstLogIndex).toBe(leaderStatus.snapshotIndex + 1);
    // Policy: compacted once 20 entries were applied past the last snapshot, keeping 5 behind the applied index.
    expect(leaderStatus.appliedIndex - leaderStatus.snapshotIndex).toBeLessThan(20);
    expect(leaderStatus.appliedIndex - leaderStatus.snapshotIndex).toBeGreaterThanOrEqual(5);

    cluster.network.heal();
    await cluster.until(() => cluster.node(followerId).status().appliedIndex >= lastVersion);
    const follower = cluster.node(followerId).status();
    expect(follower.snapshotIndex).toBeGreaterThan(behind);
    const storage = cluster.storages.get(followerId)!;
    for (let i = 0; i < 60; i++) expect(dec(storage.get(`k-${i}`)!.value)).toBe(`k-value-${i}`);
    for (let i = 0; i < 3; i++) expect(dec(storage.get(`early-${i}`)!.value)).toBe(`early-value-${i}`);
    const installs = cluster.events.filter((e) => e.id === followerId && e.event === "snapshot installed");
    expect(installs.length).toBe(1);
    const received = cluster.events.find((e) => e.id === followerId && e.event === "snapshot received")!;
    expect(received.fields.chunks as number).toBeGreaterThan(5);
    expect(cluster.fatal).toEqual([]);

    // The log goes on past the snapshot on the follower too.
    const after = await writeKeys(cluster, "after", 2);
    await cluster.until(() => cluster.node(followerId).status().appliedIndex >= after);
    expect(dec(storage.get("after-1")!.value)).toBe("after-value-1");
  });

  test("a due compaction deletes at most compactStepEntries entries at a time, and goes on until it reaches its target", async () => {
    const cluster = createMemoryCluster({ node: { requestTimeoutMs: 5_000, snapshotEntries: 40, snapshotCatchUpEntries: 2, compactStepEntries: 4 } });
    await cluster.until(() => cluster.leader() !== undefined);
    const leaderId = cluster.leader()!.status().id;
    const storage = cluster.storages.get(leaderId)!;
    const steps: number[] = [];
    const compact = storage.compact.bind(storage);
    storage.compact = (index: number) => {
      steps.push(index - storage.snapshot().index);
      compact(index);
    };
    await writeKeys(cluster as unknown as Cluster, "k", 60);
    await cluster.until(() => {
      const status = cluster.node(leaderId).status();
      return status.appliedIndex - status.snapshotIndex < 40 && steps.length >= 10;
    });
    // One compaction of ~38 entries was due: it went in steps of at most 4.
    expect(steps.length).toBeGreaterThanOrEqual(10);
    expect(Math.max(...steps)).toBeLessThanOrEqual(4);
  });

  test("a transfer cut midway fails, the leader is told, and a later transfer completes", async () => {
    let cutAtChunk: (() => void) | undefined;
    const cluster = createCluster((_id, chunk) => {
      if (chunk.seq === 3 && cutAtChunk !== undefined) {
        cutAtChunk();
        cutAtChunk = undefined;
      }
    });
    await cluster.until(() => cluster.leader() !== undefined);
    const leaderId = cluster.leader()!.status().id;
    const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
    const other = [1, 2, 3].find((id) => id !== leaderId && id !== followerId)!;
    const isolateFollower = () => {
      cluster.network.cutBetween(leaderId, followerId);
      cluster.network.cutBetween(other, followerId);
    };
    isolateFollower();
    const lastVersion = await writeKeys(cluster, "k", 60);

    // Heal, and cut the follower off again as its fourth chunk arrives: the transfer is under way.
    cutAtChunk = isolateFollower;
    cluster.network.heal();
    await cluster.until(() => cluster.events.some((e) => e.id === leaderId && e.event === "snapshot send failed"));
    expect(cluster.events.some((e) => e.id === followerId && e.event === "snapshot receive")).toBe(true);
    expect(cluster.events.some((e) => e.id === followerId && e.event === "snapshot installed")).toBe(false);
    expect(cluster.node(followerId).status().appliedIndex).toBeLessThan(lastVersion);

    cluster.network.heal();
    await cluster.until(() => cluster.node(followerId).status().appliedIndex >= lastVersion);
    expect(dec(cluster.storages.get(followerId)!.get("k-59")!.value)).toBe("k-value-59");
    expect(cluster.fatal).toEqual([]);
  });

  test("a disk full when the last chunk arrives: the follower keeps the staged image, stays up, and installs it once space returns (issue 13, finding 8)", async () => {
    let full = false;
    let fillOnLastChunk = false;
    const cluster = createCluster((_id, chunk) => {
      if (chunk.done && fillOnLastChunk) full = true;
    });
    await cluster.until(() => cluster.leader() !== undefined);
    const leaderId = cluster.leader()!.status().id;
    const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
    const other = [1, 2, 3].find((id) => id !== leaderId && id !== followerId)!;
    cluster.network.cutBetween(leaderId, followerId);
    cluster.network.cutBetween(other, followerId);
    const lastVersion = await writeKeys(cluster, "k", 60);

    // Every write of the follower's storage fails while `full`, as sqlite's SQLITE_FULL does; staging
    // the last chunk still fits, so the disk fills between staging the image and installing it.
    const storage = cluster.storages.get(followerId)!;
    const diskFull = () => Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
    for (const method of ["save", "installSnapshot", "applyEntries", "compact"] as const) {
      const original = (storage[method] as (...args: unknown[]) => unknown).bind(storage);
      (storage as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
        if (full) throw diskFull();
        return original(...args);
      };
    }
    fillOnLastChunk = true;
    cluster.network.heal();
    await cluster.until(() => full && cluster.events.some((e) => e.id === followerId && e.event === "disk full"));
    // Waiting out the full disk, for a while: the node does not stop, and installs nothing yet.
    for (let i = 0; i < 100; i++) {
      cluster.clock.advance(10);
      await cluster.settle();
    }
    expect(cluster.fatal).toEqual([]);
    expect(cluster.node(followerId).fatalError()).toBeUndefined();
    expect(cluster.node(followerId).status().appliedIndex).toBeLessThan(lastVersion);

    full = false;
    await cluster.until(() => cluster.node(followerId).status().appliedIndex >= lastVersion);
    expect(cluster.events.filter((e) => e.id === followerId && e.event === "snapshot installed").length).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 60; i++) expect(dec(storage.get(`k-${i}`)!.value)).toBe(`k-value-${i}`);
    expect(cluster.fatal).toEqual([]);
  });

  test("an InstallSnapshot that arrives as a plain message, without its image, is ignored", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!.status();
    const followerId = [1, 2, 3].find((id) => id !== leader.id)!;
    const before = cluster.node(followerId).status();
    cluster.node(followerId).receive([
      { type: "snapshot", from: leader.id, to: followerId, term: leader.term, snapshot: { index: 500, term: leader.term, voters: [1, 2, 3] }, imageId: "forged" },
    ]);
    await cluster.settle();
    expect(cluster.node(followerId).status().snapshotIndex).toBe(before.snapshotIndex);
    expect(cluster.node(followerId).status().commitIndex).toBeLessThan(500);
    expect(cluster.fatal).toEqual([]);
  });
});
