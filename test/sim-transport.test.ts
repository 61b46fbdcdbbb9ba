// Proves the simulator's network keeps the reply semantics of the real transport
// (src/transport/connect-transport.ts, peer-sender.ts): replies ride the answer to the call that
// asked for them once the loop flushes, a call never flushed is answered after REPLY_WAIT_MS_MAX (and
// well before the caller's deadline, so a reply held for a slow fsync is not lost with the answer),
// an answer whose way back is cut is lost, a dead process answers nothing, and messages to a peer
// that cannot be reached wait in the sender's queue behind one probe call instead of vanishing.
import { expect, test } from "bun:test";
import { createPrng } from "../src/lib/prng.ts";
import type { Message, NodeId } from "../src/raft/types.ts";
import { SimNetwork } from "../src/sim/sim-transport.ts";
import { REPLY_WAIT_MS_MAX } from "../src/transport/connect-transport.ts";

/** A bare simulated clock: events in time order, promise continuations run between events. */
function createHost() {
  let nowMs = 0;
  let sequence = 0;
  const events: { atMs: number; sequence: number; fn: () => void }[] = [];
  return {
    nowMs: () => nowMs,
    at(delayMs: number, fn: () => void) {
      events.push({ atMs: nowMs + Math.max(0, delayMs), sequence: sequence++, fn });
    },
    running: () => true,
    async runFor(ms: number) {
      const untilMs = nowMs + ms;
      for (;;) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        events.sort((a, b) => a.atMs - b.atMs || a.sequence - b.sequence);
        const next = events[0];
        if (next === undefined || next.atMs > untilMs) break;
        events.shift();
        nowMs = next.atMs;
        next.fn();
      }
      nowMs = untilMs;
    },
  };
}

const heartbeat = (from: NodeId, to: NodeId, readContext: string): Message => ({ type: "heartbeat", from, to, term: 1, commit: 0, readContext });
const ack = (from: NodeId, to: NodeId, readContext: string): Message => ({ type: "heartbeat-response", from, to, term: 1, readContext });

/** Two nodes on one simulated network (1 ms links), recording what each received. */
function twoNodes(rpcTimeoutMs = 2_000) {
  const host = createHost();
  const network = new SimNetwork(createPrng(1), host, { rpcTimeoutMs });
  network.faults = { lossRate: 0, delayMsMin: 1, delayMsMax: 1 };
  const received = new Map<NodeId, string[]>([
    [1, []],
    [2, []],
  ]);
  const connect = (id: NodeId) =>
    network.connect(id, `http://node-${id}.sim.invalid`, (messages) => received.get(id)!.push(...messages.map((m) => ("readContext" in m ? m.readContext : m.type))), () => {});
  return { host, network, received, connect, t1: connect(1), t2: connect(2) };
}

test("a reply rides the answer to the call that asked for it once the loop flushes, not a call of its own", async () => {
  const { host, network, received, t1, t2 } = twoNodes();
  t1.send([heartbeat(1, 2, "ask")]);
  await host.runFor(5);
  expect(received.get(2)).toEqual(["ask"]);
  expect(t2.callsArrived()).toBe(1);
  const callsBefore = network.delivered;
  t2.send([ack(2, 1, "answer")]);
  await host.runFor(5);
  expect(received.get(1)).toEqual([]); // it waits in the call's answer until the loop is done
  t2.flush();
  await host.runFor(5);
  expect(received.get(1)).toEqual(["answer"]);
  expect(network.delivered).toBe(callsBefore); // no call of its own
  expect(network.repliesCarried).toBe(1);
});

test("flush(callsUpTo) answers only the calls the loop has stepped; later calls wait for their own replies", async () => {
  const { host, received, t1, t2 } = twoNodes();
  // One call answered first: a peer not yet known to answer gets one probe call at a time.
  t1.send([heartbeat(1, 2, "hello")]);
  await host.runFor(5);
  t2.flush();
  await host.runFor(5);
  t1.send([heartbeat(1, 2, "first")]);
  await host.runFor(5);
  t1.send([heartbeat(1, 2, "second")]);
  await host.runFor(5);
  expect(t2.callsArrived()).toBe(3);
  t2.send([ack(2, 1, "for-first")]); // into the oldest waiting call's answer
  t2.flush(2);
  await host.runFor(5);
  expect(received.get(1)).toEqual(["for-first"]);
  t2.send([ack(2, 1, "for-second")]);
  await host.runFor(5);
  expect(received.get(1)).toEqual(["for-first"]);
  t2.flush();
  await host.runFor(5);
  expect(received.get(1)).toEqual(["for-first", "for-second"]);
});

test("a call never flushed is answered after REPLY_WAIT_MS_MAX with what it has; later replies go as calls of their own", async () => {
  const { host, network, received, t1, t2 } = twoNodes();
  t1.send([heartbeat(1, 2, "ask")]);
  await host.runFor(5);
  t2.send([ack(2, 1, "held")]);
  await host.runFor(REPLY_WAIT_MS_MAX + 10);
  expect(received.get(1)).toEqual(["held"]);
  const callsBefore = network.delivered;
  t2.send([ack(2, 1, "alone")]);
  await host.runFor(5);
  expect(received.get(1)).toEqual(["held", "alone"]);
  expect(network.delivered).toBe(callsBefore + 1);
});

test("a reply held past the caller's deadline still arrives: the call is answered in time, and the reply goes as a call of its own", async () => {
  // The server's deadline with the default timing (peerRpcTimeoutMs: 200 ms), and a reply that
  // waits 300 ms for its fsync: the call must not be answered after its caller gave up on it.
  const { host, received, t1, t2 } = twoNodes(200);
  t1.send([heartbeat(1, 2, "ask")]);
  await host.runFor(300);
  t2.send([ack(2, 1, "after-slow-fsync")]);
  t2.flush();
  await host.runFor(300);
  expect(received.get(1)).toEqual(["after-slow-fsync"]);
});

test("an answer whose way back is cut is lost", async () => {
  const { host, network, received, t1, t2 } = twoNodes();
  network.cutLink(2, 1);
  t1.send([heartbeat(1, 2, "ask")]);
  await host.runFor(5);
  expect(received.get(2)).toEqual(["ask"]);
  t2.send([ack(2, 1, "answer")]);
  t2.flush();
  await host.runFor(300);
  expect(received.get(1)).toEqual([]);
});

test("a process that dies with a call waiting answers nothing; the caller's next call reaches its successor", async () => {
  const { host, network, received, connect, t1, t2 } = twoNodes();
  t1.send([heartbeat(1, 2, "ask")]);
  await host.runFor(5);
  t2.send([ack(2, 1, "never")]);
  network.disconnectProcess(2);
  await host.runFor(REPLY_WAIT_MS_MAX + 10);
  expect(received.get(1)).toEqual([]);
  connect(2);
  t1.send([heartbeat(1, 2, "again")]);
  await host.runFor(300);
  expect(received.get(2)).toEqual(["ask", "again"]);
});

test("messages to an unreachable peer wait in the sender's queue behind one probe call, and arrive together once it answers again", async () => {
  const { host, received, network, t1 } = twoNodes(200);
  network.cutLink(1, 2);
  t1.send([heartbeat(1, 2, "probe")]); // blackholed: the probe call ends at its deadline
  await host.runFor(20);
  t1.send([heartbeat(1, 2, "queued-1")]);
  t1.send([heartbeat(1, 2, "queued-2")]);
  await host.runFor(20);
  network.heal();
  await host.runFor(300);
  // The probe was lost with the cut link; what waited behind it went in the next call, in order.
  expect(received.get(2)).toEqual(["queued-1", "queued-2"]);
});

test("a message to a peer whose process is down is lost with its refused call, not delivered to its next incarnation", async () => {
  const { host, received, network, connect, t1 } = twoNodes();
  network.disconnectProcess(2);
  t1.send([heartbeat(1, 2, "refused")]);
  await host.runFor(20);
  connect(2);
  t1.send([heartbeat(1, 2, "after-restart")]);
  await host.runFor(300);
  expect(received.get(2)).toEqual(["after-restart"]);
});

test("an append never rides the answer to a peer's call: it goes on the sender's data lane, behind the appends before it", async () => {
  const { host, network, received, t1, t2 } = twoNodes();
  // Node 2 (a follower) calls node 1 (its leader) with a read-index; the call waits for node 1's loop.
  t2.send([{ type: "read-index", from: 2, to: 1, term: 1, readContext: "r1" }]);
  await host.runFor(5);
  expect(received.get(1)).toEqual(["r1"]);
  const callsBefore = network.delivered;
  // Node 1's turn answers it, and has an append for node 2: riding the answer it could overtake
  // appends still in flight on the data lane, be rejected, and send the leader back to probing.
  t1.send([{ type: "append", from: 1, to: 2, term: 1, prevLogIndex: 0, prevLogTerm: 0, entries: [], commit: 0 }, ack(1, 2, "r1-answer")]);
  t1.flush();
  await host.runFor(10);
  expect(received.get(2)).toContain("append");
  expect(received.get(2)).toContain("r1-answer");
  expect(network.repliesCarried).toBe(1); // the read-index answer rode the call
  expect(network.delivered).toBe(callsBefore + 1); // the append went as a call of its own
});
