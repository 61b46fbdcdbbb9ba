// Proves snapshot chunks round-trip through the wire format and that decoding refuses every malformed field, that the peer service stages chunks through the node's handler (refusals become failed_precondition, bad input invalid_argument), and that the Connect transport streams a real image in bounded chunks, in order, into another storage that installs it.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { RaftService, SendSnapshotChunkRequestSchema } from "../src/gen/kv/v1/raft_pb.ts";
import type { SendSnapshotChunkRequest } from "../src/gen/kv/v1/raft_pb.ts";
import { TransportDecodeError, fromProto, toProto } from "../src/transport/codec.ts";
import { createConnectTransport } from "../src/transport/connect-transport.ts";
import { createRaftServiceRoutes } from "../src/transport/raft-service.ts";
import { fromSendSnapshotChunkRequest, toSendSnapshotChunkRequest } from "../src/transport/snapshot-codec.ts";
import { chunksOf } from "../src/transport/snapshot-sender.ts";
import { SnapshotChunkRefusedError, type SnapshotChunk } from "../src/transport/transport.ts";
import { type Entry, EntryType, type Message, type SnapshotMetadata } from "../src/raft/types.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

function chunk(overrides: Partial<SnapshotChunk> = {}): SnapshotChunk {
  return {
    from: 1,
    to: 2,
    term: 5,
    imageId: "1.5.1",
    seq: 0,
    metadata: { index: 40, term: 4, voters: [1, 2, 3] },
    rows: [
      { key: "a", value: bytes("one"), version: 3 },
      { key: "b", value: new Uint8Array(0), version: 40 },
    ],
    done: false,
    ...overrides,
  };
}

/** Encodes through the wire bytes and back, as a peer would receive it. */
function throughWire(request: SendSnapshotChunkRequest): SendSnapshotChunkRequest {
  return fromBinary(SendSnapshotChunkRequestSchema, toBinary(SendSnapshotChunkRequestSchema, request));
}

/** A valid encoded chunk with `mutate` applied to it: what a broken or hostile peer might send. */
function tampered(mutate: (request: SendSnapshotChunkRequest) => void, base: SnapshotChunk = chunk()): SendSnapshotChunkRequest {
  const request = throughWire(toSendSnapshotChunkRequest(base));
  mutate(request);
  return request;
}

describe("snapshot chunk codec", () => {
  test("first, middle and last chunks round-trip", () => {
    const first = chunk();
    expect(fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(first)))).toEqual(first);
    const middle = chunk({ seq: 7, metadata: undefined });
    expect(fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(middle)))).toEqual(middle);
    const last = chunk({ seq: 8, metadata: undefined, rows: [], done: true });
    expect(fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(last)))).toEqual(last);
    const withLearners = chunk({ metadata: { index: 9, term: 2, voters: [1, 2, 3], learners: [4, 5] }, rows: [] });
    expect(fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(withLearners)))).toEqual(withLearners);
  });

  test("the first chunk carries members' addresses, with the index that added each when known; one past the image's index is refused", () => {
    const addresses = [
      { id: 1, peerUrl: "http://a:1", addedIndex: 0 },
      { id: 2, peerUrl: "http://b:2", httpUrl: "http://b:8" },
      { id: 4, peerUrl: "http://d:4", addedIndex: 31 },
    ];
    const first = chunk({ addresses });
    expect(fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(first)))).toEqual(first);
    const past = chunk({ addresses: [{ id: 4, peerUrl: "http://d:4", addedIndex: 41 }] });
    expect(() => fromSendSnapshotChunkRequest(throughWire(toSendSnapshotChunkRequest(past)))).toThrow(/added at index 41, past the image's index 40/);
  });

  test("InstallSnapshot carries learners", () => {
    const message: Message = { type: "snapshot", from: 1, to: 2, term: 3, snapshot: { index: 9, term: 2, voters: [1, 2], learners: [3] }, imageId: "x" };
    expect(fromProto(toProto(message))).toEqual(message);
  });

  const refusals: [string, (request: SendSnapshotChunkRequest) => void][] = [
    ["from 0", (r) => (r.from = 0)],
    ["to itself", (r) => (r.to = 1)],
    ["term 0", (r) => (r.term = 0n)],
    ["a term past 2^53", (r) => (r.term = 2n ** 60n)],
    ["an empty image id", (r) => (r.imageId = "")],
    ["an image id of 129 characters", (r) => (r.imageId = "x".repeat(129))],
    ["a first chunk without metadata", (r) => (r.metadata = undefined)],
    ["a later chunk with metadata", (r) => (r.seq = 1)],
    ["metadata at index 0", (r) => (r.metadata!.index = 0n)],
    ["a snapshot term past the sender's", (r) => (r.metadata!.term = 6n)],
    ["no voters", (r) => (r.metadata!.voters = [])],
    ["65 voters", (r) => (r.metadata!.voters = Array.from({ length: 65 }, (_, i) => i + 1))],
    ["a voter twice", (r) => (r.metadata!.voters = [1, 2, 2])],
    ["a learner who votes", (r) => (r.metadata!.learners = [3])],
    ["voter 0", (r) => (r.metadata!.voters = [0, 1])],
    ["an empty key", (r) => (r.rows[0]!.key = "")],
    ["version 0", (r) => (r.rows[0]!.version = 0n)],
    ["a version past the image's index", (r) => (r.rows[0]!.version = 41n)],
    ["more rows than the limit", (r) => (r.rows = Array.from({ length: 131_073 }, () => r.rows[0]!))],
  ];
  test.each(refusals)("refuses %s", (_what, mutate) => {
    expect(() => fromSendSnapshotChunkRequest(tampered(mutate))).toThrow(TransportDecodeError);
  });

  test("a key over the length limit is refused", () => {
    const request = tampered((r) => (r.rows[0]!.key = "k".repeat(70_000)));
    expect(() => fromSendSnapshotChunkRequest(request)).toThrow(/row.key/);
  });

  test("chunksOf reads ahead one chunk, marks the last done, and sends an empty image as one chunk", () => {
    const storage = createMemoryKvStorage({ voters: [1] });
    const entries: Entry[] = Array.from({ length: 10 }, (_, i) => ({
      index: i + 1,
      term: 1,
      type: EntryType.Normal,
      data: encodeCommand({ op: "put", key: `k${i}`, value: new Uint8Array(100) }),
    }));
    storage.save({ term: 1, vote: 1, commit: 10 }, entries, true);
    storage.applyEntries(entries);
    const chunks = [...chunksOf(1, 2, storage.openImage(), { imageId: "i", term: 1 }, 250)];
    expect(chunks.map((c) => [c.seq, c.rows.length, c.done, c.metadata?.index])).toEqual([
      [0, 2, false, 10],
      [1, 2, false, undefined],
      [2, 2, false, undefined],
      [3, 2, false, undefined],
      [4, 2, true, undefined],
    ]);
    const empty = createMemoryKvStorage({ voters: [1] });
    empty.save({ term: 1, vote: 1, commit: 1 }, [{ index: 1, term: 1, type: EntryType.Normal, data: new Uint8Array(0) }], true);
    empty.applyEntries([{ index: 1, term: 1, type: EntryType.Normal, data: new Uint8Array(0) }]);
    const only = [...chunksOf(1, 2, empty.openImage(), { imageId: "e", term: 1 }, 250)];
    expect(only.map((c) => [c.seq, c.rows.length, c.done, c.metadata?.index])).toEqual([[0, 0, true, 1]]);
  });
});

async function connectCode(call: Promise<unknown>): Promise<Code> {
  try {
    await call;
  } catch (error: unknown) {
    return ConnectError.from(error).code;
  }
  throw new Error("expected the call to fail");
}

describe("RaftService.SendSnapshotChunk", () => {
  test("hands valid chunks to the handler and maps its refusals and bad input to codes", async () => {
    const received: SnapshotChunk[] = [];
    const routes = createRaftServiceRoutes({
      selfId: 2,
      onMessages: () => {},
      onSnapshotChunk: (c) => {
        if (c.imageId === "refuse-me") throw new SnapshotChunkRefusedError("not staging that image");
        received.push(c);
      },
    });
    const client = createClient(RaftService, createRouterTransport(routes));
    await client.sendSnapshotChunk(toSendSnapshotChunkRequest(chunk()));
    expect(received).toEqual([chunk()]);
    expect(await connectCode(client.sendSnapshotChunk(toSendSnapshotChunkRequest(chunk({ imageId: "refuse-me" }))))).toBe(Code.FailedPrecondition);
    expect(await connectCode(client.sendSnapshotChunk(tampered((r) => (r.seq = 1))))).toBe(Code.InvalidArgument);
    expect(await connectCode(client.sendSnapshotChunk(toSendSnapshotChunkRequest(chunk({ to: 3 }))))).toBe(Code.InvalidArgument);
    expect(await connectCode(client.sendSnapshotChunk(create(SendSnapshotChunkRequestSchema, {})))).toBe(Code.InvalidArgument);
    expect(received.length).toBe(1);
  });

  test("a server without a snapshot handler answers unimplemented", async () => {
    const client = createClient(RaftService, createRouterTransport(createRaftServiceRoutes({ selfId: 2, onMessages: () => {} })));
    expect(await connectCode(client.sendSnapshotChunk(toSendSnapshotChunkRequest(chunk())))).toBe(Code.Unimplemented);
  });
});

describe("snapshot transfer over loopback", () => {
  test("an image streams in bounded chunks, in order, into a storage that installs it; a refused chunk fails the transfer", async () => {
    const source = createMemoryKvStorage({ voters: [1, 2] });
    const entries: Entry[] = Array.from({ length: 200 }, (_, i) => ({
      index: i + 1,
      term: 2,
      type: EntryType.Normal,
      data: encodeCommand({ op: "put", key: `key-${i}`, value: new Uint8Array(5_000).fill(i & 0xff) }),
    }));
    source.save({ term: 2, vote: 1, commit: 200 }, entries, true);
    source.applyEntries(entries);

    const target = createMemoryKvStorage({ voters: [1, 2] });
    const seqs: number[] = [];
    let refuse = false;
    let stagedMetadata: SnapshotMetadata | undefined;
    const b = createConnectTransport({
      selfId: 2,
      selfHttpUrl: "",
      peers: new Map([[1, "http://127.0.0.1:1"]]), // chunks from a node that is not a peer are refused
      listen: { hostname: "127.0.0.1", port: 0 },
      onMessages: () => {},
      rpcTimeoutMs: 2_000,
      onSnapshotChunk(c) {
        if (refuse && c.seq === 3) throw new SnapshotChunkRefusedError("refused for the test");
        seqs.push(c.seq);
        if (c.seq === 0) stagedMetadata = c.metadata;
        target.stageImageChunk(c.imageId, c.rows, c.seq === 0);
        if (c.done) target.installSnapshot(stagedMetadata!, c.imageId);
      },
    });
    const a = createConnectTransport({
      selfId: 1,
      selfHttpUrl: "",
      peers: new Map([[2, `http://127.0.0.1:${b.port}`]]),
      listen: { hostname: "127.0.0.1", port: 0 },
      onMessages: () => {},
      rpcTimeoutMs: 2_000,
      limits: { snapshotChunkBytesMax: 100_000 },
    });
    try {
      // One image: ~1 MB in chunks of ~100 KB.
      const image = source.openImage();
      const metadata = image.metadata;
      await a.transport.sendSnapshot(2, image, { imageId: "1.2.1", term: 2 });
      image.close();
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i));
      expect(seqs.length).toBeGreaterThanOrEqual(10);
      expect(target.appliedIndex()).toBe(metadata.index);
      for (let i = 0; i < 200; i += 37) expect(target.get(`key-${i}`)).toEqual(source.get(`key-${i}`));

      refuse = true;
      seqs.length = 0;
      const second = source.openImage();
      let failure: unknown;
      await a.transport.sendSnapshot(2, second, { imageId: "1.2.2", term: 2 }).catch((error: unknown) => (failure = error));
      second.close();
      expect(ConnectError.from(failure).code).toBe(Code.FailedPrecondition);
      expect(seqs).toEqual([0, 1, 2]);
    } finally {
      await a.transport.close();
      await b.transport.close();
    }
  });
});
