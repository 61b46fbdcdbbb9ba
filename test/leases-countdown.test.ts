// Proves the leader's lease countdowns (src/node/leases.ts): leases come due at their TTL from the last start or keepalive, in batches bounded per command, per tick and in flight; a failed expiry is due again, an expiring lease takes no keepalive, a follower counts nothing, and an outcome from an earlier leadership is ignored.
import { describe, expect, test } from "bun:test";
import type { Clock } from "../src/lib/clock.ts";
import { decodeLeaseCommand } from "../src/kv/command.ts";
import { leaseRowKey } from "../src/kv/leases.ts";
import { LeaseCountdowns, type LeasesHost, NodeLeases } from "../src/node/leases.ts";
import type { KvStorage, ListedValue } from "../src/storage/kv-storage.ts";

/** A leader's `LeasesHost` over `storage`, its clock at `nowMs()`; `overrides` replace any part. */
function leaderHost(storage: KvStorage, nowMs: () => number, overrides: Partial<LeasesHost> = {}): LeasesHost {
  return {
    storage,
    clock: { nowMs, wallMs: nowMs, every: () => () => undefined } as unknown as Clock,
    ttlMsMin: 1,
    coreStatus: () => ({ role: "leader", term: 2 }),
    refuseUnlessRunning: () => undefined,
    refuseWhenFull: () => undefined,
    notLeader: () => new Error("not leader") as never,
    readBarrier: async () => undefined,
    requestTimeoutMs: 5_000,
    propose: async () => ({ kind: "noop", index: 0 }) as never,
    ...overrides,
  };
}

/** A state machine holding lease 1 (TTL 1 s) and nothing else, as the leases read it. */
function oneLeaseStorage(): KvStorage {
  const row = { key: leaseRowKey(1), value: new TextEncoder().encode(JSON.stringify({ ttlMs: 1_000 })), version: 1 };
  return {
    list: (prefix: string, after: string | undefined) => (row.key.startsWith(prefix) && (after === undefined || row.key > after) ? [row] : []),
    get: (key: string) => (key === row.key ? row : undefined),
  } as unknown as KvStorage;
}

describe("lease countdowns", () => {
  test("a lease is due at its TTL from the last start or keepalive; ended leases never come due", () => {
    const countdowns = new LeaseCountdowns();
    countdowns.becameLeader(1, 0, [
      { id: 1, ttlMs: 100 },
      { id: 2, ttlMs: 300 },
      { id: 3, ttlMs: 100 },
    ]);
    countdowns.granted(4, 50, 20);
    expect(countdowns.due(69)).toEqual([]);
    expect(countdowns.due(70)).toEqual([[4]]);
    expect(countdowns.keepAlive(1, 100, 90)).toBe(true); // now due at 190
    countdowns.ended([3]);
    countdowns.expirySettled(countdowns.generation());
    expect(countdowns.due(189)).toEqual([]);
    expect(countdowns.remainingMs(1, 150)).toBe(40);
    expect(countdowns.due(190)).toEqual([[1]]);
    expect(countdowns.remainingMs(1, 190)).toBe(0); // expiring
    expect(countdowns.keepAlive(1, 100, 191)).toBe(false);
    expect(countdowns.due(1_000)).toEqual([[2]]);
  });

  test("many leases due at once come in batches: ids per command, commands per tick, commands in flight; a failed batch is due again", () => {
    const countdowns = new LeaseCountdowns({ idsPerCommandMax: 3, commandsPerTickMax: 2, commandsInFlightMax: 3 });
    countdowns.becameLeader(1, 0, Array.from({ length: 20 }, (_, i) => ({ id: i + 1, ttlMs: 10 })));
    const generation = countdowns.generation();
    const first = countdowns.due(10);
    expect(first.map((batch) => batch.length)).toEqual([3, 3]);
    const second = countdowns.due(20);
    expect(second.map((batch) => batch.length)).toEqual([3]); // three in flight
    expect(countdowns.due(30)).toEqual([]);
    // The first batch applies; the second is refused: its leases are due again, none lost.
    countdowns.ended(first[0]!);
    countdowns.expirySettled(generation);
    countdowns.expiryFailed(generation, second[0]!, 40);
    const applied = [...first[0]!];
    let inFlight = [first[1]!];
    for (let now = 40; now < 200; now += 10) {
      // Each tick: what was in flight applies, and new batches are proposed.
      for (const batch of inFlight) {
        countdowns.ended(batch);
        countdowns.expirySettled(generation);
        applied.push(...batch);
      }
      inFlight = countdowns.due(now);
      expect(inFlight.length).toBeLessThanOrEqual(2);
      for (const batch of inFlight) expect(batch.length).toBeLessThanOrEqual(3);
    }
    expect(applied.sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });

  test("a follower counts nothing; stepping down drops every countdown and ignores outcomes of the old leadership", () => {
    const countdowns = new LeaseCountdowns();
    countdowns.granted(1, 10, 0);
    expect(countdowns.due(100)).toEqual([]);
    countdowns.becameLeader(2, 0, [{ id: 1, ttlMs: 10 }]);
    expect(countdowns.isLeadingIn(2)).toBe(true);
    expect(countdowns.isLeadingIn(3)).toBe(false);
    const old = countdowns.generation();
    expect(countdowns.due(10)).toEqual([[1]]);
    countdowns.stoppedLeading();
    countdowns.expiryFailed(old, [1], 20);
    expect(countdowns.size()).toBe(0);
    // Leading again: the lease restarts at its full TTL, whatever the old leadership proposed.
    countdowns.becameLeader(4, 100, [{ id: 1, ttlMs: 10 }]);
    countdowns.expiryFailed(old, [1], 100);
    expect(countdowns.due(109)).toEqual([]);
    expect(countdowns.due(110)).toEqual([[1]]);
  });

  test("a lease whose expiry failed or timed out takes no keepalive: its TTL ran out, and an expiry whose outcome is unknown may still apply", () => {
    const countdowns = new LeaseCountdowns();
    countdowns.becameLeader(1, 0, [{ id: 7, ttlMs: 1_000 }]);
    const generation = countdowns.generation();
    expect(countdowns.due(1_000)).toEqual([[7]]);
    // The proposal timed out (its entry may yet commit) or was refused: either way the lease is
    // due again, and a keepalive now would be answered 200 for a lease that may vanish next.
    countdowns.expiryFailed(generation, [7], 6_000);
    expect(countdowns.keepAlive(7, 1_000, 6_001)).toBe(false);
    expect(countdowns.remainingMs(7, 6_001)).toBe(0);
    expect(countdowns.due(6_001)).toEqual([[7]]);
    expect(countdowns.keepAlive(7, 1_000, 6_002)).toBe(false);
  });

  test("keepalives do not grow the heap without bound", () => {
    const countdowns = new LeaseCountdowns();
    countdowns.becameLeader(1, 0, [{ id: 1, ttlMs: 1_000 }]);
    for (let i = 1; i <= 100_000; i++) countdowns.keepAlive(1, 1_000, i);
    expect((countdowns as unknown as { heap: unknown[] }).heap.length).toBeLessThanOrEqual(2 + 1024 + 1);
    expect(countdowns.due(100_999)).toEqual([]);
    expect(countdowns.due(101_000)).toEqual([[1]]);
  });
});

describe("a new leader's lease countdowns", () => {
  /** A host over `count` leases of `ttlMs`, counting the lease rows its storage hands out. */
  function hostOf(count: number, ttlMs: number) {
    const encoder = new TextEncoder();
    const rows: ListedValue[] = Array.from({ length: count }, (_, i) => ({
      key: leaseRowKey(i + 1),
      value: encoder.encode(JSON.stringify({ ttlMs })),
      version: i + 1,
    })).sort((a, b) => (a.key < b.key ? -1 : 1));
    let nowMs = 0;
    const read = { rows: 0 };
    const expired: number[] = [];
    const storage = {
      list(prefix: string, after: string | undefined, limit: number): ListedValue[] {
        const page = rows.filter((row) => row.key.startsWith(prefix) && (after === undefined || row.key > after)).slice(0, limit);
        read.rows += page.length;
        return page;
      },
    } as unknown as KvStorage;
    const host = leaderHost(storage, () => nowMs, {
      propose: async (data) => {
        const command = decodeLeaseCommand(data);
        if (command.op === "lease-expire") expired.push(...command.ids);
        return { kind: "noop", index: 0 } as never;
      },
    });
    return { host, read, expired, advance: (ms: number) => (nowMs += ms) };
  }

  test("it reads the applied leases a page per tick, so a million leases do not hold the turn that elected it; each counts from the election", async () => {
    const { host, read, expired, advance } = hostOf(5_500, 1_000);
    const leases = new NodeLeases(host);
    leases.roleChanged("leader", 2);
    expect(read.rows).toBeLessThanOrEqual(1_000);
    let ticks = 0;
    while (read.rows < 5_500) {
      const before = read.rows;
      advance(10);
      leases.tick();
      ticks++;
      expect(read.rows - before).toBeLessThanOrEqual(1_000);
      expect(ticks).toBeLessThan(10);
    }
    expect(expired).toEqual([]);
    // Every lease comes due at 1,000 ms from the election, however late its page was read.
    advance(1_000 - 10 * ticks - 1);
    leases.tick();
    await Promise.resolve();
    expect(expired).toEqual([]);
    advance(1);
    for (let i = 0; i < 100 && expired.length < 5_500; i++) {
      leases.tick();
      await Bun.sleep(0); // the expiries proposed settle
    }
    expect(new Set(expired).size).toBe(5_500);
  });
});

test("a keepalive whose read barrier is answered in the turn that stops the node is settled, not left waiting for ticks that never come (found in review)", async () => {
  let nowMs = 0;
  let stopped = false;
  let releaseBarrier: () => void = () => undefined;
  const storage = oneLeaseStorage();
  const host = leaderHost(storage, () => nowMs, {
    refuseUnlessRunning: () => {
      if (stopped) throw new Error("the node is shutting down");
    },
    readBarrier: () => new Promise<void>((resolve) => (releaseBarrier = resolve)),
    propose: () => new Promise(() => undefined), // the expiry is proposed and never applies
  });
  const leases = new NodeLeases(host);
  leases.roleChanged("leader", 2);
  nowMs = 2_000;
  leases.tick(); // lease 1 ran out: its expiry is proposed
  let settled = "pending";
  leases.keepAlive(1).then(
    () => (settled = "ok"),
    (error: Error) => (settled = `rejected: ${error.message}`),
  );
  // One task of the node: a turn answers the read barrier, then the node stops (fail -> stop -> failAll -> leases.stopped()).
  releaseBarrier();
  stopped = true;
  leases.stopped();
  // No tick comes again; what is pending settles within a few turns of the event loop, or never.
  for (let turn = 0; turn < 100 && settled === "pending"; turn++) await new Promise((resolve) => setImmediate(resolve));
  expect(settled).toBe("rejected: the node is shutting down");
});

test("an expiry still queued when the leadership that counted it ends is refused unproposed, should the node lead again before the queue is proposed (found in a code review: a later leadership proposed an expiry of a lease the leader in between may have kept alive)", () => {
  const storage = oneLeaseStorage();
  let nowMs = 0;
  let term = 2;
  let role: "leader" | "follower" = "leader";
  const checks: (() => unknown)[] = [];
  const host = leaderHost(storage, () => nowMs, {
    coreStatus: () => ({ role, term }),
    // Queued and never proposed: the queue waits behind applies.
    propose: (data, check) => {
      expect(decodeLeaseCommand(data)).toEqual({ op: "lease-expire", ids: [1] });
      if (check !== undefined) checks.push(check);
      return new Promise(() => undefined);
    },
  });
  const leases = new NodeLeases(host);
  leases.roleChanged("leader", 2);
  nowMs = 1_000;
  leases.tick();
  expect(checks).toHaveLength(1);
  expect(checks[0]?.()).toBeUndefined(); // still this leadership: proposed as queued
  // Another leader in term 3, then this node again in term 4.
  role = "follower";
  term = 3;
  leases.tick();
  role = "leader";
  term = 4;
  leases.tick();
  expect(checks[0]?.()).toMatchObject({ code: "not_leader" });
});

test("a keepalive whose read barrier was asked in one leadership and answered in a later one of this node is refused not_leader (found in a code review: between the two, another leader may have committed the lease's expiry, which this node had not applied when it led again)", async () => {
  const storage = oneLeaseStorage();
  let term = 5;
  let role: "leader" | "follower" = "leader";
  let releaseBarrier: () => void = () => undefined;
  const host = leaderHost(storage, () => 0, {
    coreStatus: () => ({ role, term }),
    readBarrier: () => new Promise<void>((resolve) => (releaseBarrier = resolve)),
  });
  const leases = new NodeLeases(host);
  leases.roleChanged("leader", 5);
  let settled = "pending";
  leases.keepAlive(1).then(
    () => (settled = "ok"),
    (error: Error) => (settled = `rejected: ${error.message}`),
  );
  // The barrier waits (a slow apply); meanwhile term 6 is another node's, and this node leads term 7.
  role = "follower";
  term = 6;
  leases.roleChanged("follower", 6);
  role = "leader";
  term = 7;
  leases.roleChanged("leader", 7);
  releaseBarrier();
  for (let turn = 0; turn < 100 && settled === "pending"; turn++) await new Promise((resolve) => setImmediate(resolve));
  expect(settled).toBe("rejected: not leader");
});
