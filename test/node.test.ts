// Proves the node loop (KvNode) over the in-memory twins of storage, transport and clock: writes are
// acknowledged only once applied, followers redirect, reads are linearizable on any node, lost quorum
// times out, bounds refuse clearly, transfer hands over, and a storage failure stops the node.
import { describe, expect, test } from "bun:test";
import { KvError } from "../src/lib/kv-error.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { createMemoryCluster, type MemoryCluster } from "./helpers/memory-cluster.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Three KvNodes over the in-memory twins (test/helpers/memory-cluster.ts). */
function createCluster(node: { pendingRequestsMax?: number; requestTimeoutMs?: number } = {}) {
  return createMemoryCluster({ node });
}

/** Starts nothing itself: keeps the cluster moving until `promise` settles. */
function drive<T>(cluster: MemoryCluster, promise: Promise<T>, ticksMax = 500): Promise<T> {
  return cluster.drive(promise, ticksMax);
}

describe("KvNode over in-memory twins", () => {
  test("the only voter leads as soon as it starts, without waiting out an election timeout", async () => {
    const cluster = createCluster();
    const alone = cluster.startNode(9, new Map([[9, "mem://peer-9"]]), createMemoryKvStorage());
    const startedAtMs = cluster.clock.nowMs();
    await cluster.settle(); // turns and deliveries only: the clock does not move
    expect(cluster.clock.nowMs()).toBe(startedAtMs);
    expect(alone.status().role).toBe("leader");
    const { version } = await drive(cluster, alone.put("k", enc("v")));
    expect(dec((await drive(cluster, alone.get("k", "linearizable")))!.value)).toBe("v");
    expect(version).toBeGreaterThan(0);
  });

  test("a write is acknowledged with its Raft index once applied, and every node applies it", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const { version } = await drive(cluster, leader.put("k", enc("v")));
    expect(version).toBeGreaterThan(0);
    expect(dec(cluster.storages.get(leader.status().id)!.get("k")!.value)).toBe("v");
    await cluster.until(() => [...cluster.storages.values()].every((s) => s.get("k")?.version === version));
    const deleted = await drive(cluster, leader.delete("k"));
    expect(deleted.deleted).toBe(true);
    expect((await drive(cluster, leader.delete("k"))).deleted).toBe(false);
  });

  test("a follower refuses a write with not_leader naming the leader and its URL; nothing is proposed", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leaderId = cluster.leader()!.status().id;
    const follower = [...cluster.nodes.values()].find((n) => n.status().role === "follower" && n.status().leaderId === leaderId)!;
    const lastIndex = follower.status().lastLogIndex;
    let error: unknown;
    try {
      await follower.put("k", enc("v"));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe("not_leader");
    expect((error as KvError).details).toEqual({ leaderId, leaderUrl: `http://node-${leaderId}` });
    await cluster.settle();
    expect(cluster.leader()!.status().lastLogIndex).toBe(lastIndex);
  });

  test("a lagging follower's linearizable read waits for a write acknowledged before it; its stale read does not", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const leaderId = leader.status().id;
    const [laggingId, otherId] = [1, 2, 3].filter((id) => id !== leaderId) as [number, number];
    await drive(cluster, leader.put("x", enc("1")));
    await cluster.until(() => cluster.storages.get(laggingId)!.get("x") !== undefined);
    // The write commits on the leader and the other follower while the lagging one hears nothing.
    cluster.network.cutBetween(leaderId, laggingId);
    await drive(cluster, leader.put("x", enc("2")));
    const lagging = cluster.node(laggingId);
    expect(dec((await lagging.get("x", "stale"))!.value)).toBe("1");
    cluster.network.heal();
    const read = await drive(cluster, lagging.get("x", "linearizable"));
    expect(dec(read!.value)).toBe("2");
    expect(otherId).not.toBe(laggingId);
  });

  test("writes without a quorum time out (outcome unknown), and reads fail rather than answer", async () => {
    const cluster = createCluster({ requestTimeoutMs: 200 });
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const id = leader.status().id;
    for (const other of [1, 2, 3]) if (other !== id) cluster.network.cutBetween(id, other);
    let writeError: unknown;
    try {
      await drive(cluster, leader.put("k", enc("v")));
    } catch (e) {
      writeError = e;
    }
    expect((writeError as KvError).code).toBe("timeout");
    let readError: unknown;
    try {
      await drive(cluster, leader.get("k", "linearizable"));
    } catch (e) {
      readError = e;
    }
    expect(["timeout", "no_leader", "not_leader"]).toContain((readError as KvError).code);
  });

  test("past pendingRequestsMax new requests are refused with overloaded", async () => {
    const cluster = createCluster({ pendingRequestsMax: 3 });
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const waiting = [leader.put("a", enc("1")), leader.put("b", enc("2")), leader.put("c", enc("3"))];
    let error: unknown;
    try {
      await leader.put("d", enc("4"));
    } catch (e) {
      error = e;
    }
    expect((error as KvError).code).toBe("overloaded");
    for (const w of waiting) await drive(cluster, w);
  });

  test("leadership transfer: the leader hands over to the most caught-up follower and steps down", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    await drive(cluster, leader.put("k", enc("v")));
    const { leaderId: next } = await drive(cluster, leader.transferLeadership(undefined, 1_000));
    expect(next).not.toBe(leader.status().id);
    await cluster.until(() => cluster.leader()?.status().id === next);
    expect(dec((await drive(cluster, cluster.node(next).get("k", "linearizable")))!.value)).toBe("v");
  });

  test("stop fails every waiting request with unavailable", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const write = leader.put("k", enc("v")).catch((e: unknown) => e);
    leader.stop();
    expect(((await write) as KvError).code).toBe("unavailable");
  });

  test("a storage failure stops the node and reports it once; a proposed write's outcome is unknown; then unavailable", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const storage = cluster.storages.get(leader.status().id)!;
    storage.save = () => {
      throw new Error("disk on fire");
    };
    const write = leader.put("k", enc("v")).catch((e: unknown) => e);
    await cluster.settle();
    expect(((await write) as KvError).code).toBe("timeout");
    expect(cluster.fatal.map((e) => e.message)).toEqual(["disk on fire"]);
    expect(() => leader.put("k", enc("v"))).toThrow("the node stopped: disk on fire");
  });
});

describe("lease reads through the node", () => {
  test("a lease read on the leader sees the last acknowledged write; on a follower it is a ReadIndex read", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    await drive(cluster, leader.put("k", enc("v1")));
    await drive(cluster, leader.put("k", enc("v2")));
    expect(dec((await drive(cluster, leader.get("k", "lease")))!.value)).toBe("v2");
    const follower = [...cluster.nodes.values()].find((n) => n !== leader)!;
    expect(dec((await drive(cluster, follower.get("k", "lease")))!.value)).toBe("v2");
  });
});

describe("compare-and-set through the node (the state machine decides, the same on every replica)", () => {
  test("put and delete with ifVersion apply only at the expected version; a mismatch reports the current one", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const { version } = await drive(cluster, leader.put("k", enc("v1"), { ifVersion: 0 }));
    const mismatch = await drive(cluster, leader.put("k", enc("v2"), { ifVersion: 0 }).catch((e: unknown) => e));
    expect((mismatch as KvError).code).toBe("version_mismatch");
    expect((mismatch as KvError).details.version).toBe(version);
    await drive(cluster, leader.put("k", enc("v2"), { ifVersion: version }));
    await cluster.until(() => [...cluster.storages.values()].every((s) => s.get("k") !== undefined && dec(s.get("k")!.value) === "v2"));
    const wrongDelete = await drive(cluster, leader.delete("k", { ifVersion: version }).catch((e: unknown) => e));
    expect((wrongDelete as KvError).code).toBe("version_mismatch");
    expect(dec(cluster.storages.get(leader.status().id)!.get("k")!.value)).toBe("v2");
  });
});

describe("exactly-once retries through the node (thesis §6.3)", () => {
  test("a write retried under its idempotency key, to the same leader or the next one, applies once", async () => {
    const cluster = createCluster();
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const { version } = await drive(cluster, leader.put("k", enc("once"), { idempotencyKey: "r1" }));
    expect((await drive(cluster, leader.put("k", enc("once"), { idempotencyKey: "r1" }))).version).toBe(version);
    await cluster.until(() => [...cluster.storages.values()].every((s) => s.get("k")?.version === version));
    const oldId = leader.status().id;
    cluster.stop(oldId);
    await cluster.until(() => cluster.leader() !== undefined && cluster.leader()!.status().id !== oldId, 2_000);
    const next = cluster.leader()!;
    expect((await drive(cluster, next.put("k", enc("once"), { idempotencyKey: "r1" }))).version).toBe(version);
    expect(dec((await drive(cluster, next.get("k", "linearizable")))!.value)).toBe("once");
    // A delete retried after it applied reports the first outcome (deleted: true), not "nothing there".
    const first = await drive(cluster, next.delete("k", { idempotencyKey: "d1" }));
    expect(first.deleted).toBe(true);
    expect(await drive(cluster, next.delete("k", { idempotencyKey: "d1" }))).toEqual(first);
  });
});

describe("a full disk (issue 6: an operating error, not a crash)", () => {
  test("the node refuses writes with insufficient_storage, stays up, the others carry on, and it recovers when space returns", async () => {
    const cluster = createCluster({ requestTimeoutMs: 300 });
    await cluster.until(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const id = leader.status().id;
    await drive(cluster, leader.put("before", enc("1")));
    const storage = cluster.storages.get(id)!;
    const save = storage.save.bind(storage);
    let full = true;
    storage.save = (...args) => {
      if (full) throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
      return save(...args);
    };
    const attempt = await drive(cluster, leader.put("during", enc("2")).catch((e: unknown) => e));
    expect(["insufficient_storage", "timeout"]).toContain((attempt as KvError).code);
    expect(() => leader.put("during", enc("3"))).toThrow("the disk is full");
    expect(leader.healthy()).toBe(false);
    expect(cluster.fatal).toEqual([]);
    // The frozen node stops heartbeating: the others elect a leader and keep serving.
    const otherLeader = () => [...cluster.nodes.values()].find((n) => n.status().id !== id && n.status().role === "leader");
    await cluster.until(() => otherLeader() !== undefined, 2_000);
    const next = otherLeader()!;
    await drive(cluster, next.put("while-full", enc("4")));
    // Space returns: the node resumes where it stopped, catches up and serves again.
    full = false;
    await cluster.until(() => leader.healthy() && storage.get("while-full") !== undefined, 2_000);
    expect(dec((await drive(cluster, leader.get("before", "linearizable")))!.value)).toBe("1");
    expect(cluster.fatal).toEqual([]);
  });
});
