// Proves the node loop (KvNode) over the in-memory twins of storage, transport and clock: writes are
// acknowledged only once applied, followers redirect, reads are linearizable on any node, lost quorum
// times out, bounds refuse clearly, transfer hands over, and a storage failure stops the node.
import { describe, expect, test } from "bun:test";
import { ManualClock } from "../src/lib/clock.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { createPrng } from "../src/lib/prng.ts";
import { KvNode } from "../src/node/kv-node.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { MemoryNetwork } from "../src/transport/memory-transport.ts";

const tickMs = 10;
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Three KvNodes on a memory network, a manual clock and a hand-drained turn queue. */
function createCluster(opts: { pendingRequestsMax?: number; requestTimeoutMs?: number } = {}) {
  const clock = new ManualClock();
  const network = new MemoryNetwork();
  let turns: (() => void)[] = [];
  const peers = new Map([1, 2, 3].map((id) => [id, `mem://peer-${id}`] as [number, string]));
  const storages = new Map<number, MemoryKvStorage>();
  const fatal: Error[] = [];
  const nodes = new Map<number, KvNode>();
  for (const id of peers.keys()) {
    const storage = createMemoryKvStorage();
    storages.set(id, storage);
    const node = new KvNode({
      id,
      peers,
      httpUrl: `http://node-${id}`,
      storage,
      clock,
      prng: createPrng(id),
      tickMs,
      electionTicks: 10,
      heartbeatTicks: 2,
      requestTimeoutMs: opts.requestTimeoutMs ?? 1_000,
      pendingRequestsMax: opts.pendingRequestsMax ?? 1_000,
      inboxMessagesMax: 10_000,
      schedule: (turn) => turns.push(turn),
      onFatal: (error) => fatal.push(error),
    });
    nodes.set(id, node);
  }
  for (const [id, node] of nodes) node.start(network.connect(id, `http://node-${id}`, (messages) => node.receive(messages)));

  /** Runs scheduled turns and delivers messages until nothing is left, then lets promises settle. */
  const settle = async () => {
    for (let round = 0; round < 1_000; round++) {
      const due = turns;
      turns = [];
      for (const turn of due) turn();
      const delivered = network.deliver();
      if (due.length === 0 && delivered === 0) break;
    }
    await Promise.resolve();
    await Promise.resolve();
  };
  /** Advances time tick by tick, settling after each, until `condition` holds. */
  const until = async (condition: () => boolean, ticksMax = 500) => {
    for (let i = 0; i < ticksMax && !condition(); i++) {
      clock.advance(tickMs);
      await settle();
    }
    expect(condition()).toBe(true);
  };
  const leader = () => [...nodes.values()].find((n) => n.status().role === "leader");
  const node = (id: number) => nodes.get(id)!;
  return { clock, network, nodes, node, storages, fatal, settle, until, leader };
}

/** Starts a request and keeps the cluster moving until it settles. */
async function drive<T>(cluster: ReturnType<typeof createCluster>, promise: Promise<T>, ticksMax = 500): Promise<T> {
  let done = false;
  let value: T | undefined;
  let failure: unknown;
  promise.then(
    (v) => {
      done = true;
      value = v;
    },
    (e) => {
      done = true;
      failure = e;
    },
  );
  await cluster.until(() => done, ticksMax);
  if (failure !== undefined) throw failure;
  return value as T;
}

describe("KvNode over in-memory twins", () => {
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
