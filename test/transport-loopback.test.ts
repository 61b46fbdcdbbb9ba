// Proves over real loopback sockets on OS-chosen ports that two Connect transports exchange Raft messages (a receiver's replies riding the answer to the call that asked) and learn each other's HTTP URLs, that a dead or silent peer never delays delivery to a live one, and that malformed or oversized requests get a Connect error while the server keeps serving.
import { afterEach, describe, expect, test } from "bun:test";
import { fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { SendRequestSchema, SendResponseSchema } from "../src/gen/kv/v1/raft_pb.ts";
import { defaultDecodeLimits, fromSendResponse, toSendRequest } from "../src/transport/codec.ts";
import { createConnectTransport } from "../src/transport/connect-transport.ts";
import type { ConnectTransportHandle, ConnectTransportLimits } from "../src/transport/connect-transport.ts";
import { EntryType } from "../src/raft/types.ts";
import type { Message, NodeId } from "../src/raft/types.ts";

const hostname = "127.0.0.1";
const peerUrl = (port: number) => `http://${hostname}:${port}`;

/** Everything to close after each test, whatever happened in it. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Delivery {
  readonly messages: Message[];
  readonly from: NodeId;
  readonly fromHttpUrl: string;
}

/** A node's inbox: resolves waiters as soon as a matching delivery arrives; no polling, no sleeping. */
function createInbox() {
  const deliveries: Delivery[] = [];
  let waiters: { condition: () => boolean; resolve: () => void }[] = [];
  return {
    deliveries,
    onMessages(messages: Message[], from: NodeId, fromHttpUrl: string): void {
      deliveries.push({ messages, from, fromHttpUrl });
      const ready = waiters.filter((waiter) => waiter.condition());
      waiters = waiters.filter((waiter) => !waiter.condition());
      for (const waiter of ready) waiter.resolve();
    },
    /** Resolves once `condition` holds over the deliveries so far. */
    until(condition: () => boolean): Promise<void> {
      if (condition()) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ condition, resolve }));
    },
    messages(): Message[] {
      return deliveries.flatMap((delivery) => delivery.messages);
    },
  };
}

function startNode(
  selfId: NodeId,
  peers: Map<NodeId, string>,
  options: { rpcTimeoutMs?: number; limits?: Partial<ConnectTransportLimits>; log?: (line: string) => void; commandLevel?: number } = {},
) {
  const inbox = createInbox();
  const node = createConnectTransport({
    selfId,
    selfHttpUrl: `http://${hostname}:${9000 + selfId}`,
    peers,
    listen: { hostname, port: 0 },
    onMessages: inbox.onMessages,
    rpcTimeoutMs: options.rpcTimeoutMs ?? 30_000,
    ...(options.limits === undefined ? {} : { limits: options.limits }),
    ...(options.commandLevel === undefined ? {} : { commandLevel: options.commandLevel }),
    log: options.log ?? (() => {}),
  });
  cleanups.push(() => node.transport.close());
  return { ...node, inbox, peers };
}

/** Two nodes on OS-chosen ports that know each other: each URL is known only once both listen. */
function startPair(options: Parameters<typeof startNode>[2] = {}) {
  const a = startNode(1, new Map(), options);
  const b = startNode(2, new Map([[1, peerUrl(a.port)]]), options);
  a.peers.set(2, peerUrl(b.port));
  return { a, b };
}

/** A port where nothing listens: connections are refused. */
async function deadPort(): Promise<number> {
  const server = Bun.serve({ hostname, port: 0, fetch: () => new Response() });
  const port = server.port;
  await server.stop(true);
  if (port === undefined) throw new Error("no port");
  return port;
}

/** A peer that accepts connections and never answers: calls hang until their deadline. */
function silentPort(): number {
  const listener = Bun.listen({ hostname, port: 0, socket: { data() {} } });
  cleanups.push(() => listener.stop(true));
  return listener.port;
}

function heartbeat(from: NodeId, to: NodeId, commit: number): Message {
  return { type: "heartbeat", from, to, term: 2, commit, readContext: `read-${commit}` };
}

/** Resolves once `condition` holds, checking after each turn of the event loop; fails after `turnsMax`. */
async function until(condition: () => boolean, what: string, turnsMax = 100_000): Promise<void> {
  for (let turn = 0; turn < turnsMax; turn++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

describe("connect transport over loopback", () => {
  test("a peer whose address changed (removed, then added again elsewhere) is called at its new address", async () => {
    const a = startNode(1, new Map());
    const first = startNode(2, new Map([[1, peerUrl(a.port)]]));
    a.peers.set(2, peerUrl(first.port));
    a.transport.send([heartbeat(1, 2, 1)]);
    await first.inbox.until(() => first.inbox.messages().length === 1);
    // Node 2 comes back on another port; the address book (the node's peer directory) says so.
    const second = startNode(2, new Map([[1, peerUrl(a.port)]]));
    a.peers.set(2, peerUrl(second.port));
    a.transport.send([heartbeat(1, 2, 2)]);
    // Before, the sender made for the old address kept calling it.
    await second.inbox.until(() => second.inbox.messages().length === 1);
    expect(second.inbox.messages()).toEqual([heartbeat(1, 2, 2)]);
    expect(first.inbox.messages()).toEqual([heartbeat(1, 2, 1)]);
  });

  test("resetPeer drops what was queued or on its way for a peer: a new process of its id at the same address gets only what was sent after (found by the simulator: an old process's heartbeats told a new one it had lost data)", async () => {
    const a = startNode(1, new Map());
    // Node 2's old process accepts calls and never answers: a's calls to it hang, and what follows queues.
    const silent = Bun.listen({ hostname, port: 0, socket: { data() {} } });
    const port = silent.port;
    a.peers.set(2, peerUrl(port));
    for (let commit = 1; commit <= 20; commit++) a.transport.send([heartbeat(1, 2, commit)]);
    await until(() => (a.stats().find((peer) => peer.peerId === 2)?.queuedMessages ?? 0) > 0, "messages queued behind the hanging calls");
    // Its id is added again (applied here): what was meant for the old process is dropped.
    a.transport.resetPeer(2);
    silent.stop(true);
    const received: Message[] = [];
    const second = createConnectTransport({ selfId: 2, selfHttpUrl: `http://${hostname}:9002`, peers: new Map([[1, peerUrl(a.port)]]), listen: { hostname, port }, onMessages: (messages) => received.push(...messages), rpcTimeoutMs: 30_000, log: () => {} });
    cleanups.push(() => second.transport.close());
    a.transport.send([heartbeat(1, 2, 99)]);
    await until(() => received.length > 0, "the new process got a message");
    second.transport.flush();
    // Nothing else is on its way: the queue was dropped and the hanging calls were aborted.
    await until(() => (a.stats().find((peer) => peer.peerId === 2)?.inflightCalls ?? 1) === 0, "no call in flight");
    expect(received).toEqual([heartbeat(1, 2, 99)]);
  });

  test("delivers one send's messages for a peer in two calls, appends apart from the rest, each in order, both ways", async () => {
    const { a, b } = startPair();
    const toB: Message[] = [
      { type: "vote", from: 1, to: 2, term: 3, lastLogIndex: 7, lastLogTerm: 2, transfer: false },
      {
        type: "append",
        from: 1,
        to: 2,
        term: 3,
        prevLogIndex: 7,
        prevLogTerm: 2,
        entries: [
          { term: 3, index: 8, type: EntryType.Normal, data: new TextEncoder().encode("put k v") },
          { term: 3, index: 9, type: EntryType.Normal, data: new Uint8Array(70_000).fill(7) },
        ],
        commit: 7,
      },
      ...Array.from({ length: 200 }, (_, i) => heartbeat(1, 2, i)),
    ];
    a.transport.send(toB);
    // Appends carrying entries go on a lane of their own (src/transport/peer-sender.ts): two calls,
    // each in order.
    await b.inbox.until(() => b.inbox.deliveries.length === 2);
    // Two sockets: either call may arrive first.
    const byLane = [...b.inbox.deliveries].sort((x, y) => Number(x.messages[0]?.type === "append") - Number(y.messages[0]?.type === "append"));
    expect(byLane).toEqual([
      { messages: toB.filter((m) => m.type !== "append"), from: 1, fromHttpUrl: "http://127.0.0.1:9001" },
      { messages: toB.filter((m) => m.type === "append"), from: 1, fromHttpUrl: "http://127.0.0.1:9001" },
    ]);

    const toA: Message[] = [{ type: "vote-response", from: 2, to: 1, term: 3, granted: true }];
    b.transport.send(toA);
    b.transport.flush(); // as the node loop does at the end of its turn: a's call is answered now
    await a.inbox.until(() => a.inbox.deliveries.length === 1);
    expect(a.inbox.messages()).toEqual(toA);
  });

  test("a call's answer carries what the receiver's loop sends the caller before it flushes: no call of its own", async () => {
    const { a, b } = startPair();
    a.transport.send([heartbeat(1, 2, 5)]);
    await b.inbox.until(() => b.inbox.deliveries.length === 1);
    // The receiver's loop answers in its turn, then flushes, as KvNode does at the end of a turn.
    const answer: Message = { type: "heartbeat-response", from: 2, to: 1, term: 2, readContext: "read-5" };
    b.transport.send([answer]);
    b.transport.flush();
    await a.inbox.until(() => a.inbox.deliveries.length === 1);
    expect(a.inbox.deliveries).toEqual([{ messages: [answer], from: 2, fromHttpUrl: "" }]);
    expect(b.stats()).toEqual([]); // b never called a
    expect(a.serverStats().requestsByStatus.size).toBe(0);
    // With no call of a's waiting, b's next message travels in a call of its own.
    b.transport.send([answer]);
    await a.inbox.until(() => a.inbox.deliveries.length === 2);
    expect(a.inbox.deliveries[1]).toEqual({ messages: [answer], from: 2, fromHttpUrl: "http://127.0.0.1:9002" });
  });

  test("learns a peer's HTTP URL from its calls", async () => {
    const { a, b } = startPair();
    expect(a.transport.peerHttpUrl(2)).toBeUndefined();
    b.transport.send([heartbeat(2, 1, 1)]);
    await a.inbox.until(() => a.inbox.deliveries.length === 1);
    expect(a.transport.peerHttpUrl(2)).toBe("http://127.0.0.1:9002");
    expect(a.transport.peerHttpUrl(3)).toBeUndefined();
    // Its id added again (a new process): the old one's URL is forgotten, until the new one says its own.
    a.transport.resetPeer(2);
    expect(a.transport.peerHttpUrl(2)).toBeUndefined();
  });

  test("learns a peer's HTTP URL from the answers to its own calls too: a follower that never calls is known (found in review: /members showed null for it)", async () => {
    const { a, b } = startPair();
    a.transport.send([heartbeat(1, 2, 1)]);
    await b.inbox.until(() => b.inbox.deliveries.length === 1);
    expect(b.transport.peerHttpUrl(1)).toBe("http://127.0.0.1:9001");
    // b never calls a; a hears b's URL in b's answer, sent when b's loop flushes (here with nothing in it).
    b.transport.flush();
    await until(() => a.transport.peerHttpUrl(2) !== undefined, "a to hear b's URL in b's answer");
    expect(a.transport.peerHttpUrl(2)).toBe("http://127.0.0.1:9002");
    expect(b.stats()).toEqual([]);
  });

  test("learns the command level a peer applies from its calls and from the answers to ours (1 when it does not say); forgotten when told, until it says again", async () => {
    const a = startNode(1, new Map(), { commandLevel: 2 });
    const b = startNode(2, new Map([[1, peerUrl(a.port)]]), { commandLevel: 3 });
    a.peers.set(2, peerUrl(b.port));
    const silent = startNode(3, new Map([[1, peerUrl(a.port)]]));
    expect(a.transport.peerCommandLevel(2)).toBeUndefined();
    // An answer: b's level, in the answer to a's call.
    a.transport.send([heartbeat(1, 2, 1)]);
    await b.inbox.until(() => b.inbox.deliveries.length === 1);
    expect(b.transport.peerCommandLevel(1)).toBe(2);
    b.transport.flush();
    await until(() => a.transport.peerCommandLevel(2) !== undefined, "a to hear b's level in b's answer");
    expect(a.transport.peerCommandLevel(2)).toBe(3);
    a.transport.forgetPeerCommandLevel(2);
    expect(a.transport.peerCommandLevel(2)).toBeUndefined();
    // A call: b's level again; a node that says nothing (a release before 0.9.0) applies level 1.
    b.transport.send([heartbeat(2, 1, 1)]);
    silent.transport.send([heartbeat(3, 1, 1)]);
    await a.inbox.until(() => a.inbox.deliveries.length === 2);
    expect([a.transport.peerCommandLevel(2), a.transport.peerCommandLevel(3)]).toEqual([3, 1]);
  });

  test("a dead peer and a silent peer do not delay delivery to a live peer", async () => {
    const a = startNode(1, new Map(), { rpcTimeoutMs: 60_000 });
    const b = startNode(2, new Map([[1, peerUrl(a.port)]]));
    a.peers.set(2, peerUrl(b.port));
    a.peers.set(3, peerUrl(await deadPort()));
    a.peers.set(4, peerUrl(silentPort()));

    // Dead and silent peers first in every batch: if they held up the others, B would wait a minute.
    for (let round = 1; round <= 20; round++) {
      a.transport.send([heartbeat(1, 3, round), heartbeat(1, 4, round), heartbeat(1, 2, round)]);
    }
    await b.inbox.until(() => b.inbox.messages().length === 20);
    expect(b.inbox.messages().map((message) => (message.type === "heartbeat" ? message.commit : -1)).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 20 }, (_, i) => i + 1),
    );

    await until(() => a.stats().find((stats) => stats.peerId === 3)?.reachability === "unreachable", "peer 3 unreachable");
    const silent = a.stats().find((stats) => stats.peerId === 4);
    // One probe call hangs on the silent peer; the rest wait, coalesced, in its bounded queue.
    expect(silent).toMatchObject({ reachability: "unknown", inflightCalls: 1, queuedMessages: 19 });
    // Closing cancels the hanging call instead of waiting out its deadline.
    await a.transport.close();
    expect(a.stats().find((stats) => stats.peerId === 4)).toMatchObject({ inflightCalls: 0, queuedMessages: 0 });
  });

  test("an unreachable peer is logged once however many calls fail (recovery: see transport-service.test.ts)", async () => {
    const lines: string[] = [];
    const a = startNode(1, new Map(), { log: (line) => lines.push(line) });
    const port = await deadPort();
    a.peers.set(2, peerUrl(port));
    for (let round = 1; round <= 5; round++) {
      a.transport.send([heartbeat(1, 2, round)]);
      await until(() => a.stats()[0]?.inflightCalls === 0, "the call to fail");
    }
    expect(a.stats()[0]).toMatchObject({ reachability: "unreachable", failedCalls: 5 });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toStartWith("peer 2: unreachable");
  });

  test("malformed protobuf bytes get invalid_argument, and the server keeps serving", async () => {
    const { a, b } = startPair();
    const sendUrl = `${peerUrl(a.port)}/kv.v1.RaftService/Send`;
    const garbage = await fetch(sendUrl, {
      method: "POST",
      headers: { "content-type": "application/proto", "connect-protocol-version": "1" },
      body: new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a, 0x80]),
    });
    expect(garbage.status).toBe(400);
    expect(((await garbage.json()) as { code: string }).code).toBe("invalid_argument");

    // Well-formed protobuf that is not a valid Raft message: node id 0 (field 1, varint 0).
    const invalid = await fetch(sendUrl, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array([0x08, 0x00, 0x1a, 0x02, 0x08, 0x00]),
    });
    expect(invalid.status).toBe(400);
    expect(((await invalid.json()) as { code: string }).code).toBe("invalid_argument");

    const elsewhere = await fetch(`${peerUrl(a.port)}/kv.v1.KvService/Get`, { method: "POST" });
    expect(elsewhere.status).toBe(404);
    await elsewhere.arrayBuffer();

    expect(a.inbox.deliveries).toEqual([]);
    b.transport.send([heartbeat(2, 1, 1)]);
    await a.inbox.until(() => a.inbox.deliveries.length === 1);
    expect(a.inbox.messages()).toEqual([heartbeat(2, 1, 1)]);
  });

  // Plain binary calls are served straight to the implementation (peer-server.ts); any other
  // Connect call goes through connect-es's own handler. Both must give the same answers.
  test("a binary call and the same call in JSON, compressed or with a bad timeout get the same answer", async () => {
    const { a } = startPair();
    const sendUrl = `${peerUrl(a.port)}/kv.v1.RaftService/Send`;
    const toA: Message[] = [heartbeat(2, 1, 3), { type: "vote-response", from: 2, to: 1, term: 3, granted: true }];
    const reply: Message = { type: "heartbeat-response", from: 1, to: 2, term: 2, readContext: "read-3" };
    const request = toSendRequest(2, "http://127.0.0.1:9002", toA);
    const forms = {
      binary: { "content-type": "application/proto", body: toBinary(SendRequestSchema, request) },
      json: { "content-type": "application/json", body: new TextEncoder().encode(JSON.stringify(toJson(SendRequestSchema, request))) },
    };
    const answers: { status: number; type: string | null; body: unknown }[] = [];
    for (const [format, { "content-type": type, body }] of Object.entries(forms)) {
      const delivered = a.inbox.deliveries.length;
      const pending = fetch(sendUrl, { method: "POST", headers: { "content-type": type, "connect-protocol-version": "1" }, body });
      await a.inbox.until(() => a.inbox.deliveries.length === delivered + 1);
      expect(a.inbox.deliveries[delivered]).toEqual({ messages: toA, from: 2, fromHttpUrl: "http://127.0.0.1:9002" });
      a.transport.send([reply]);
      a.transport.flush();
      const response = await pending;
      const bytes = new Uint8Array(await response.arrayBuffer());
      const decoded = format === "binary" ? fromBinary(SendResponseSchema, bytes) : fromJson(SendResponseSchema, JSON.parse(new TextDecoder().decode(bytes)));
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toBe(type);
      answers.push({ status: response.status, type, body: fromSendResponse(decoded, 1, 2, defaultDecodeLimits) });
    }
    expect(answers.map((answer) => answer.body)).toEqual([[reply], [reply]]);

    // Refusals: the implementation's error (a message for another node) and a body that does not
    // parse, binary and JSON, then calls the direct path leaves to connect-es (compressed, a
    // malformed timeout): each a JSON Connect error with the same code, nothing delivered.
    const delivered = a.inbox.deliveries.length;
    const elsewhere = toSendRequest(2, "", [{ ...heartbeat(2, 7, 1) }]);
    const refusals: [Record<string, string>, Uint8Array<ArrayBuffer>, string][] = [
      [{ "content-type": "application/proto" }, toBinary(SendRequestSchema, elsewhere), "invalid_argument"],
      [{ "content-type": "application/json" }, new TextEncoder().encode(JSON.stringify(toJson(SendRequestSchema, elsewhere))), "invalid_argument"],
      [{ "content-type": "application/proto" }, new Uint8Array([0xff, 0xff, 0xff]), "invalid_argument"],
      [{ "content-type": "application/json" }, new TextEncoder().encode("{"), "invalid_argument"],
      [{ "content-type": "application/proto", "content-encoding": "br" }, forms.binary.body, "unimplemented"],
      [{ "content-type": "application/proto", "connect-timeout-ms": "soon" }, forms.binary.body, "invalid_argument"],
    ];
    for (const [headers, body, code] of refusals) {
      const response = await fetch(sendUrl, { method: "POST", headers: { ...headers, "connect-protocol-version": "1" }, body });
      expect({ headers, status: response.status, type: response.headers.get("content-type") }).toEqual({
        headers,
        status: code === "unimplemented" ? 501 : 400,
        type: "application/json",
      });
      expect({ headers, code: ((await response.json()) as { code: string }).code }).toEqual({ headers, code });
    }
    expect(a.inbox.deliveries.length).toBe(delivered);
  });

  test("a request above the peer's body limit is refused without harm to later calls", async () => {
    const limits = { requestBytesMax: 16_384, callBytesMax: 16_384 };
    const { a, b } = startPair({ limits });
    const oversized: Message = {
      type: "append",
      from: 1,
      to: 2,
      term: 1,
      prevLogIndex: 0,
      prevLogTerm: 0,
      entries: [{ term: 1, index: 1, type: EntryType.Normal, data: new Uint8Array(100_000) }],
      commit: 0,
    };
    a.transport.send([oversized]);
    await until(() => a.stats()[0]?.failedCalls === 1, "the oversized call to fail");
    expect(a.stats()[0]?.reachability).not.toBe("reachable");

    a.transport.send([heartbeat(1, 2, 1)]);
    await b.inbox.until(() => b.inbox.deliveries.length === 1);
    expect(b.inbox.messages()).toEqual([heartbeat(1, 2, 1)]);
  });
});
