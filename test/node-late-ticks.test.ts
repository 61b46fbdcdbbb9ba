// Proves a node's tick count never runs ahead of real time: a timer firing that comes late, after a
// turn already made up the tick it was for (KvNode.catchUpClock), counts nothing more, so a voter's
// promise to its leader (Raft.inLeaderLease) lasts its electionTicks - 1 ticks of real time, the bound
// the leader's lease (Raft.leaseTicks) is computed against. Found in a code review of the read path:
// a stall, then the setImmediate turn, then the late setInterval callback (what Bun does) counted
// the tick twice, and the voter granted a vote 81 ms after acknowledging its leader (its promise is
// 90 ms, the leader's lease 70). And the firing still moves the election timer when a turn made its
// tick up first: the fix of that stopped election timers while turns kept coming (found in review).
import { expect, test } from "bun:test";
import { COMMAND_LEVEL } from "../src/kv/command.ts";
import type { Clock } from "../src/lib/clock.ts";
import { createPrng } from "../src/lib/prng.ts";
import { KvNode } from "../src/node/kv-node.ts";
import type { Message } from "../src/raft/types.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { MemoryNetwork } from "../src/transport/memory-transport.ts";

const tickMs = 10;
const electionTicks = 10;

class StepClock implements Clock {
  now = 0;
  private readonly fns: (() => void)[] = [];
  nowMs(): number {
    return this.now;
  }
  wallMs(): number {
    return 1_700_000_000_000 + this.now;
  }
  every(_intervalMs: number, fn: () => void): () => void {
    this.fns.push(fn);
    return () => {};
  }
  fire(): void {
    for (const fn of this.fns) fn();
  }
}

/**
 * Node 1 (a KvNode on a clock stepped by hand, its turns run by `settle`) with nodes 2 and 3 as
 * bare transports whose messages from node 1 land in `toPeer`.
 */
function nodeOne() {
  const clock = new StepClock();
  const network = new MemoryNetwork();
  let turns: (() => void)[] = [];
  const peers = new Map([1, 2, 3].map((id) => [id, `mem://peer-${id}`] as [number, string]));
  const node = new KvNode({
    id: 1,
    peers,
    httpUrl: "http://node-1",
    storage: createMemoryKvStorage(),
    clock,
    prng: createPrng(7),
    tickMs,
    electionTicks,
    heartbeatTicks: 2,
    requestTimeoutMs: 1_000,
    pendingRequestsMax: 1_000,
    inboxMessagesMax: 10_000,
    schedule: (turn) => turns.push(turn),
  });
  const toPeer: Message[] = [];
  node.start(network.connect(1, "http://node-1", (messages) => node.receive(messages), undefined, COMMAND_LEVEL));
  const peer2 = network.connect(2, "http://node-2", (messages) => toPeer.push(...messages), undefined, COMMAND_LEVEL);
  const peer3 = network.connect(3, "http://node-3", (messages) => toPeer.push(...messages), undefined, COMMAND_LEVEL);
  const settle = async () => {
    for (let i = 0; i < 100; i++) {
      const due = turns;
      turns = [];
      for (const turn of due) turn();
      if (network.deliver() === 0 && due.length === 0) break;
    }
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  return { clock, node, toPeer, peer2, peer3, settle };
}

async function scenario(turnBeforeLateTimer: boolean): Promise<{ granted: boolean; msSinceHeartbeat: number }> {
  const { clock, node, toPeer, peer2, peer3, settle } = nodeOne();
  const heartbeat = async () => {
    peer2.send([{ type: "heartbeat", from: 2, to: 1, term: 1, commit: 0, readContext: "1" }]);
    await settle();
  };
  // Node 2 leads term 1; node 1 follows it, its clock ticking on time.
  for (let ms = 5; ms < 300; ms += 5) {
    clock.now = ms;
    if (ms % tickMs === 0) clock.fire();
    if (ms % 20 === 5) await heartbeat();
    await settle();
  }
  clock.now = 300;
  clock.fire();
  await settle();
  // The last heartbeat it hears, just before a tick boundary; it acknowledges it.
  clock.now = 309.9;
  await heartbeat();
  expect(toPeer.some((m) => m.type === "heartbeat-response")).toBe(true);
  // The process stalls 11 ms (a GC, a large message decoded): the firing due at 310 comes late, at 321.
  clock.now = 321;
  const anyTurn = async () => {
    // A message that changes nothing makes a turn run (as a peer's call arriving in the poll phase).
    peer3.send([{ type: "append-response", from: 3, to: 1, term: 1, success: true, index: 0, hintIndex: 0, hintTerm: 0 }]);
    await settle();
  };
  if (turnBeforeLateTimer) {
    await anyTurn(); // setImmediate's turn ran before the timers phase: catchUpClock counts tick 31 and 32
    clock.now = 321.1;
    clock.fire(); // ...then the late callback counts another
    await settle();
  } else {
    clock.fire();
    await settle();
    await anyTurn();
  }
  // The timer goes on every 10 ms from there (Bun reschedules from the late firing).
  for (let at = 331.1; at < 392; at += 10) {
    clock.now = at;
    clock.fire();
    await settle();
  }
  // Node 3 campaigns (cut off from node 2 since earlier): 81 ms after node 1 acknowledged node 2.
  clock.now = 391.2;
  toPeer.length = 0;
  peer3.send([{ type: "vote", from: 3, to: 1, term: 2, lastLogIndex: 10, lastLogTerm: 1, transfer: false }]);
  await settle();
  await settle();
  const answer = toPeer.find((m) => m.type === "vote-response");
  node.stop();
  return { granted: answer !== undefined && answer.type === "vote-response" && answer.granted, msSinceHeartbeat: 391.2 - 309.9 };
}

test("with the late timer firing before the turn, the voter keeps its promise for electionTicks - 1 ticks", async () => {
  const { granted, msSinceHeartbeat } = await scenario(false);
  expect(msSinceHeartbeat).toBeLessThan((electionTicks - 1) * tickMs);
  expect(granted).toBe(false);
});

test("a turn before a late timer firing must not shorten the voter's lease promise below electionTicks - 1 ticks", async () => {
  const { granted, msSinceHeartbeat } = await scenario(true);
  expect(msSinceHeartbeat).toBeLessThan((electionTicks - 1) * tickMs);
  expect(granted).toBe(false);
});

/**
 * A follower of a leader that goes silent, its timer firing 5 ms into each tick (Bun's interval
 * drifts there); with `turnsBetweenBoundaryAndFiring`, a message that changes nothing makes a turn
 * run 1 ms into each tick, before the firing. Whether it campaigns within `ms` of the silence.
 */
async function campaignsWithin(turnsBetweenBoundaryAndFiring: boolean, ms: number): Promise<boolean> {
  const { clock, node, toPeer, peer2, peer3, settle } = nodeOne();
  // Node 2 leads term 1; node 1 follows it.
  for (let ms = 5; ms < 300; ms += 5) {
    clock.now = ms;
    if (ms % tickMs === 0) clock.fire();
    if (ms % 20 === 5) {
      peer2.send([{ type: "heartbeat", from: 2, to: 1, term: 1, commit: 0, readContext: "1" }]);
    }
    await settle();
  }
  // Node 2 goes silent at 300. The timer fires 5 ms into each tick (Bun's interval drifts there);
  // something makes a turn run 1 ms into each tick (a message that changes nothing).
  toPeer.length = 0;
  for (let boundary = 300; boundary < 300 + ms; boundary += tickMs) {
    if (turnsBetweenBoundaryAndFiring) {
      clock.now = boundary + 1;
      peer3.send([{ type: "append-response", from: 3, to: 1, term: 1, success: true, index: 0, hintIndex: 0, hintTerm: 0 }]);
      await settle();
    }
    clock.now = boundary + 5;
    clock.fire();
    await settle();
    if (toPeer.some((m) => m.type === "pre-vote" || m.type === "vote")) break;
  }
  node.stop();
  return toPeer.some((m) => m.type === "pre-vote" || m.type === "vote");
}

test("with no other turns, a follower of a silent leader campaigns within 2 election timeouts", async () => {
  expect(await campaignsWithin(false, 2 * electionTicks * tickMs + 50)).toBe(true);
});

test("a follower of a silent leader campaigns when turns run between each tick's boundary and its timer's late firing: the firing still moves the election timer though the turn made its tick up (found in a review of the fix above: no tick reached the election timer, and the follower never campaigned)", async () => {
  // 4 election timeouts' worth of real time.
  expect(await campaignsWithin(true, 4 * electionTicks * tickMs)).toBe(true);
});
