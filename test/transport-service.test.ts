// Proves, in memory through connect-es's createRouterTransport (no sockets), that the peer service delivers valid calls whole and in order and refuses invalid ones with invalid_argument, and that a peer sender bounds its window and queue, coalesces while the window is full, drops the oldest at its limit, and logs only changes of reachability.
import { describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { RaftService } from "../src/gen/kv/v1/raft_pb.ts";
import type { SendRequest } from "../src/gen/kv/v1/raft_pb.ts";
import { toSendRequest } from "../src/transport/codec.ts";
import { callDeadlineMs, createPeerSender, deadlineMissesMax } from "../src/transport/peer-sender.ts";
import type { PeerSenderLimits } from "../src/transport/peer-sender.ts";
import { createRaftServiceRoutes } from "../src/transport/raft-service.ts";
import { EntryType } from "../src/raft/types.ts";
import type { Message, NodeId } from "../src/raft/types.ts";

interface Delivery {
  readonly messages: Message[];
  readonly from: NodeId;
  readonly fromHttpUrl: string;
}

function heartbeat(from: NodeId, to: NodeId, commit: number): Message {
  return { type: "heartbeat", from, to, term: 1, commit, readContext: "" };
}

/** An append carrying one entry: it goes on the sender's data lane. */
function append(from: NodeId, to: NodeId, index: number): Message {
  return { type: "append", from, to, term: 1, prevLogIndex: index - 1, prevLogTerm: index > 1 ? 1 : 0, entries: [{ index, term: 1, type: EntryType.Normal, data: new Uint8Array(8) }], commit: 0 };
}

function serviceClient(selfId: NodeId) {
  const deliveries: Delivery[] = [];
  const transport = createRouterTransport(
    createRaftServiceRoutes({ selfId, onMessages: (messages, from, fromHttpUrl) => deliveries.push({ messages, from, fromHttpUrl }) }),
  );
  return { client: createClient(RaftService, transport), deliveries };
}

async function connectCode(call: Promise<unknown>): Promise<Code> {
  try {
    await call;
  } catch (error: unknown) {
    return ConnectError.from(error).code;
  }
  throw new Error("expected the call to fail");
}

describe("RaftService", () => {
  test("delivers one call's messages together, in order, with the sender's id and URL", async () => {
    const { client, deliveries } = serviceClient(2);
    const messages: Message[] = [
      {
        type: "append",
        from: 1,
        to: 2,
        term: 3,
        prevLogIndex: 4,
        prevLogTerm: 2,
        entries: [{ term: 3, index: 5, type: EntryType.Normal, data: new Uint8Array([1, 2, 3]) }],
        commit: 4,
      },
      heartbeat(1, 2, 5),
      { type: "vote", from: 1, to: 2, term: 4, lastLogIndex: 5, lastLogTerm: 3, transfer: false },
    ];
    await client.send(toSendRequest(1, "http://127.0.0.1:8101", messages));
    expect(deliveries).toEqual([{ messages, from: 1, fromHttpUrl: "http://127.0.0.1:8101" }]);
  });

  test("refuses a call with an invalid message, delivering nothing", async () => {
    const { client, deliveries } = serviceClient(2);
    const request = toSendRequest(1, "", [heartbeat(1, 2, 0)]);
    const broken: SendRequest = { ...request, messages: [{ ...request.messages[0]!, body: { case: undefined } }] };
    expect(await connectCode(client.send(broken))).toBe(Code.InvalidArgument);
    expect(deliveries).toEqual([]);
  });

  test("refuses messages addressed to another node, or a call claiming to come from this node", async () => {
    const { client, deliveries } = serviceClient(2);
    expect(await connectCode(client.send(toSendRequest(1, "", [heartbeat(1, 2, 0), heartbeat(1, 3, 0)])))).toBe(
      Code.InvalidArgument,
    );
    expect(await connectCode(client.send(toSendRequest(2, "", [heartbeat(2, 1, 0)])))).toBe(Code.InvalidArgument);
    expect(deliveries).toEqual([]);
  });

  test("keeps serving after a refused call", async () => {
    const { client, deliveries } = serviceClient(2);
    expect(await connectCode(client.send(toSendRequest(0, "", [])))).toBe(Code.InvalidArgument);
    await client.send(toSendRequest(3, "", [heartbeat(3, 2, 1)]));
    expect(deliveries.map((delivery) => delivery.from)).toEqual([3]);
  });
});

/** A peer whose answers the test releases one at a time, recording the size of every call. */
function gatedPeer(answer: () => void = () => {}) {
  const callSizes: number[] = [];
  const gates: (() => void)[] = [];
  const transport = createRouterTransport((router) => {
    router.service(RaftService, {
      async send(request) {
        callSizes.push(request.messages.length);
        await new Promise<void>((resolve) => gates.push(resolve));
        answer();
        return {};
      },
    });
  });
  return { client: createClient(RaftService, transport), callSizes, gates };
}

/** Lets the oldest call the peer holds answer, once the peer has received it. */
async function releaseNext(peer: { gates: (() => void)[] }): Promise<void> {
  await until(() => peer.gates.length > 0, "the peer to hold a call");
  peer.gates.shift()!();
}

const roomyLimits: PeerSenderLimits = {
  inflightCallsMax: 2,
  queuedMessagesMax: 100,
  queuedBytesMax: 1 << 20,
  callMessagesMax: 100,
  callBytesMax: 1 << 20,
};

/** Resolves once `condition` holds, checking after each turn of the event loop; fails after `turnsMax`. */
async function until(condition: () => boolean, what: string, turnsMax = 10_000): Promise<void> {
  for (let turn = 0; turn < turnsMax; turn++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

describe("peer sender", () => {
  test("a reachable peer that misses a deadline between answers stays reachable; deadlineMissesMax misses in a row make it unreachable", async () => {
    let missing = 0;
    const client = {
      send() {
        if (missing > 0) {
          missing--;
          return Promise.reject(new ConnectError("the operation timed out", Code.DeadlineExceeded));
        }
        return Promise.resolve({ messages: [] });
      },
    } as unknown as Parameters<typeof createPeerSender>[0]["client"];
    const lines: string[] = [];
    const sender = createPeerSender({ peerId: 2, selfId: 1, selfHttpUrl: "", client, rpcTimeoutMs: 200, limits: roomyLimits, log: (line) => lines.push(line) });
    const call = async (calls: number) => {
      sender.enqueue([append(1, 2, calls)]);
      await until(() => sender.stats().deliveredCalls + sender.stats().failedCalls === calls && sender.stats().inflightCalls === 0, `call ${calls}`);
    };
    try {
      await call(1);
      expect(sender.stats().reachability).toBe("reachable");
      missing = 1; // one slow answer between good ones: a busy follower, not a dead one
      await call(2);
      await call(3);
      expect(sender.stats()).toMatchObject({ reachability: "reachable", failedCalls: 1 });
      missing = deadlineMissesMax;
      for (let i = 0; i < deadlineMissesMax; i++) await call(4 + i);
      expect(sender.stats().reachability).toBe("unreachable");
      expect(lines).toEqual(["peer 2: unreachable (the operation timed out)"]);
    } finally {
      await sender.close();
    }
  });

  test("a call's deadline grows with the bytes it carries: a 4 MiB append is not given a heartbeat's 200 ms", async () => {
    const deadlines: { messages: number; timeoutMs: number | undefined }[] = [];
    const client = {
      send(request: SendRequest, options?: { timeoutMs?: number }) {
        deadlines.push({ messages: request.messages.length, timeoutMs: options?.timeoutMs });
        return Promise.resolve({ messages: [] });
      },
    } as unknown as Parameters<typeof createPeerSender>[0]["client"];
    const sender = createPeerSender({ peerId: 2, selfId: 1, selfHttpUrl: "", client, rpcTimeoutMs: 200, limits: { ...roomyLimits, callBytesMax: 8 << 20, queuedBytesMax: 16 << 20 }, log: () => {} });
    try {
      sender.enqueue([heartbeat(1, 2, 1)]);
      await until(() => sender.stats().deliveredCalls === 1, "the heartbeat's call");
      const data = new Uint8Array(1 << 20);
      const entries = [1, 2, 3, 4].map((index) => ({ index, term: 1, type: EntryType.Normal, data }));
      sender.enqueue([{ type: "append", from: 1, to: 2, term: 1, prevLogIndex: 0, prevLogTerm: 0, entries, commit: 0 }]);
      await until(() => sender.stats().deliveredCalls === 2, "the append's call");
      expect(deadlines[0]).toEqual({ messages: 1, timeoutMs: 200 });
      expect(deadlines[1]?.timeoutMs).toBe(callDeadlineMs(200, 4 * (1 << 20) + 4 * 24 + 64));
      expect(deadlines[1]?.timeoutMs).toBeGreaterThanOrEqual(200 + 400);
    } finally {
      await sender.close();
    }
  });


  test("appends: probes with one call until the peer answers, then fills its window and coalesces the rest", async () => {
    const peer = gatedPeer();
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: peer.client,
      rpcTimeoutMs: 60_000,
      limits: roomyLimits,
      log: () => {},
    });
    try {
      sender.enqueue([append(1, 2, 1)]);
      sender.enqueue([append(1, 2, 2)]);
      await until(() => peer.callSizes.length === 1, "the probe call");
      expect(sender.stats()).toMatchObject({ reachability: "unknown", inflightCalls: 1, queuedMessages: 1 });

      await releaseNext(peer); // the probe succeeds: the window opens to 2
      await until(() => peer.callSizes.length === 2, "the queued message's call");
      sender.enqueue([append(1, 2, 3)]);
      sender.enqueue([append(1, 2, 4), append(1, 2, 5)]);
      sender.enqueue([append(1, 2, 6)]);
      await until(() => peer.callSizes.length === 3, "the second call in the window");
      expect(sender.stats()).toMatchObject({ reachability: "reachable", inflightCalls: 2, queuedMessages: 3 });

      await releaseNext(peer); // one slot frees: everything queued goes in one call
      await until(() => peer.callSizes.length === 4, "the coalesced call");
      expect(peer.callSizes).toEqual([1, 1, 1, 3]);
      for (const release of peer.gates.splice(0)) release();
      await until(() => sender.stats().inflightCalls === 0, "all calls to end");
      expect(sender.stats()).toMatchObject({ deliveredCalls: 4, deliveredMessages: 6, droppedMessages: 0, failedCalls: 0 });
    } finally {
      for (const release of peer.gates.splice(0)) release();
      await sender.close();
    }
  });

  test("heartbeats and other small messages go on a lane of their own: a full window of appends the peer holds does not delay them, and appends stay in order", async () => {
    const peer = gatedPeer();
    const sender = createPeerSender({ peerId: 2, selfId: 1, selfHttpUrl: "", client: peer.client, rpcTimeoutMs: 60_000, limits: roomyLimits, log: () => {} });
    try {
      sender.enqueue([append(1, 2, 1)]);
      await until(() => peer.callSizes.length === 1, "the probe call");
      await releaseNext(peer);
      await until(() => sender.stats().reachability === "reachable", "the peer to answer");
      // The peer holds two calls of appends (the whole window), as a follower busy with its disk would.
      sender.enqueue([append(1, 2, 2)]);
      sender.enqueue([append(1, 2, 3)]);
      sender.enqueue([append(1, 2, 4)]);
      await until(() => peer.callSizes.length === 3, "the window of appends");
      expect(sender.stats()).toMatchObject({ inflightCalls: 2, queuedMessages: 1 });
      // A heartbeat goes at once, in a call of its own, not behind the queued append.
      sender.enqueue([heartbeat(1, 2, 9)]);
      await until(() => peer.callSizes.length === 4, "the heartbeat's call");
      expect(sender.stats()).toMatchObject({ inflightCalls: 3, queuedMessages: 1 });
      // An append carrying only a commit index stays behind the appends before it: overtaking them
      // it would name an entry the follower does not have yet, and be rejected.
      sender.enqueue([{ type: "append", from: 1, to: 2, term: 1, prevLogIndex: 4, prevLogTerm: 1, entries: [], commit: 4 }]);
      await Promise.resolve();
      expect(sender.stats()).toMatchObject({ inflightCalls: 3, queuedMessages: 2 });
    } finally {
      for (const release of peer.gates.splice(0)) release();
      await sender.close();
    }
  });

  test("drops the oldest messages beyond its queue bounds and counts them", async () => {
    const peer = gatedPeer();
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: peer.client,
      rpcTimeoutMs: 60_000,
      limits: { ...roomyLimits, queuedMessagesMax: 3 },
      log: () => {},
    });
    try {
      for (let index = 1; index <= 10; index++) sender.enqueue([append(1, 2, index)]);
      // One probe in flight (index 1), the newest three queued (8, 9, 10), six dropped.
      expect(sender.stats()).toMatchObject({ inflightCalls: 1, queuedMessages: 3, droppedMessages: 6 });
      await releaseNext(peer);
      await until(() => peer.callSizes.length === 2, "the call with the survivors");
      expect(peer.callSizes).toEqual([1, 3]);
    } finally {
      for (const release of peer.gates.splice(0)) release();
      await sender.close();
    }
  });

  test("bounds the queue by bytes too, and splits calls at callBytesMax", async () => {
    const peer = gatedPeer();
    const append = (index: number): Message => ({
      type: "append",
      from: 1,
      to: 2,
      term: 1,
      prevLogIndex: index - 1,
      prevLogTerm: index === 1 ? 0 : 1,
      entries: [{ term: 1, index, type: EntryType.Normal, data: new Uint8Array(1000) }],
      commit: 0,
    });
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: peer.client,
      rpcTimeoutMs: 60_000,
      limits: { ...roomyLimits, queuedBytesMax: 5_000, callBytesMax: 2_500 },
      log: () => {},
    });
    try {
      for (let index = 1; index <= 8; index++) sender.enqueue([append(index)]);
      // Each append is ~1.1 kB: four fit in 5 kB; one went out as the probe, three were dropped.
      expect(sender.stats()).toMatchObject({ inflightCalls: 1, queuedMessages: 4, droppedMessages: 3 });
      await releaseNext(peer);
      await until(() => peer.callSizes.length === 3, "two byte-bounded calls");
      expect(peer.callSizes).toEqual([1, 2, 2]);
    } finally {
      for (const release of peer.gates.splice(0)) release();
      await sender.close();
    }
  });

  test("an unreachable peer whose reason changes kind is said again, each kind once while it stays unreachable; a reset hints at a refused certificate (found in a black-box review: an expired certificate showed only as the stale ECONNREFUSED of a restart)", async () => {
    // Refused and timed out in turn (each said once, not once a call), then the certificate, then a reset as the socket transport words it.
    const reasons = [
      "connection to 10.0.0.2:7001 lost (network:ECONNREFUSED)",
      "the operation timed out",
      "connection to 10.0.0.2:7001 lost (network:ECONNREFUSED)",
      "the operation timed out",
      "certificate has expired",
      "certificate has expired",
      "connection to 10.0.0.2:7001 lost (network:ECONNRESET)",
    ];
    let call = 0;
    const transport = createRouterTransport((router) => {
      router.service(RaftService, {
        send() {
          throw new ConnectError(reasons[Math.min(call++, reasons.length - 1)] as string, Code.Unavailable);
        },
      });
    });
    const lines: string[] = [];
    const sender = createPeerSender({ peerId: 2, selfId: 1, selfHttpUrl: "", client: createClient(RaftService, transport), rpcTimeoutMs: 60_000, limits: roomyLimits, log: (line) => lines.push(line) });
    try {
      for (let commit = 1; commit <= reasons.length + 1; commit++) {
        sender.enqueue([heartbeat(1, 2, commit)]);
        await until(() => sender.stats().inflightCalls === 0, "the call to fail");
      }
      expect(lines).toEqual([
        "peer 2: unreachable (connection to 10.0.0.2:7001 lost (network:ECONNREFUSED))",
        "peer 2: unreachable (the operation timed out)",
        "peer 2: unreachable (certificate has expired)",
        "peer 2: unreachable (connection to 10.0.0.2:7001 lost (network:ECONNRESET)); with TLS, a peer that refuses this node's certificate (expired, or not signed by its --peer-ca) closes the connection this way",
      ]);
    } finally {
      await sender.close();
    }
  });

  test("treats unavailable as unreachable, logs once per change, and never throws", async () => {
    let failing = true;
    const transport = createRouterTransport((router) => {
      router.service(RaftService, {
        send() {
          if (failing) throw new ConnectError("connection refused", Code.Unavailable);
          return {};
        },
      });
    });
    const lines: string[] = [];
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: createClient(RaftService, transport),
      rpcTimeoutMs: 60_000,
      limits: roomyLimits,
      log: (line) => lines.push(line),
    });
    try {
      for (let commit = 1; commit <= 5; commit++) {
        sender.enqueue([heartbeat(1, 2, commit)]);
        await until(() => sender.stats().inflightCalls === 0, "the call to fail");
      }
      expect(sender.stats()).toMatchObject({ reachability: "unreachable", failedCalls: 5, failedMessages: 5 });
      failing = false;
      for (let commit = 6; commit <= 8; commit++) {
        sender.enqueue([heartbeat(1, 2, commit)]);
        await until(() => sender.stats().inflightCalls === 0, "the call to succeed");
      }
      expect(sender.stats()).toMatchObject({ reachability: "reachable", deliveredCalls: 3 });
      expect(lines).toEqual(["peer 2: unreachable (connection refused)", "peer 2: reachable again"]);
    } finally {
      await sender.close();
    }
  });

  test("reports a peer that refuses our calls, once per distinct refusal", async () => {
    const transport = createRouterTransport(createRaftServiceRoutes({ selfId: 3, onMessages: () => {} }));
    const lines: string[] = [];
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: createClient(RaftService, transport),
      rpcTimeoutMs: 60_000,
      limits: roomyLimits,
      log: (line) => lines.push(line),
    });
    try {
      for (let commit = 1; commit <= 3; commit++) {
        sender.enqueue([heartbeat(1, 2, commit)]);
        await until(() => sender.stats().inflightCalls === 0, "the call to be refused");
      }
      expect(sender.stats().reachability).toBe("refusing");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("InvalidArgument");
    } finally {
      await sender.close();
    }
  });

  test("close cancels calls in flight and drops the queue", async () => {
    const peer = gatedPeer();
    const sender = createPeerSender({
      peerId: 2,
      selfId: 1,
      selfHttpUrl: "",
      client: peer.client,
      rpcTimeoutMs: 60_000,
      limits: roomyLimits,
      log: () => {},
    });
    sender.enqueue([append(1, 2, 1)]);
    sender.enqueue([append(1, 2, 2)]);
    await sender.close(); // resolves although the peer never answers
    expect(sender.stats()).toMatchObject({ inflightCalls: 0, queuedMessages: 0, failedCalls: 1, droppedMessages: 1 });
    sender.enqueue([append(1, 2, 3)]);
    expect(peer.callSizes).toHaveLength(1);
    for (const release of peer.gates.splice(0)) release();
  });
});

test("the service counts answers for a bounded number of callers: past the bound the counts start over, and a caller gets the URL once more (found in review: one entry per distinct id, for good)", async () => {
  const { callersCountedMax } = await import("../src/transport/raft-service.ts");
  const client = createClient(RaftService, createRouterTransport(createRaftServiceRoutes({ selfId: 1, selfHttpUrl: "http://127.0.0.1:8001", onMessages: () => {}, awaitReply: async () => [] })));
  const call = (from: NodeId) => client.send(toSendRequest(from, "", [heartbeat(from, 1, 0)]));
  expect((await call(2)).fromHttpUrl).toBe("http://127.0.0.1:8001");
  expect((await call(2)).fromHttpUrl).toBe("");
  for (let from = 3; from < 3 + callersCountedMax; from++) await call(from);
  // Counted anew: the URL rides caller 2's next answer again.
  expect((await call(2)).fromHttpUrl).toBe("http://127.0.0.1:8001");
});
