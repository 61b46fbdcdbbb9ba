// Proves how a leader's snapshot room retries a failed image transfer: the first failure in a term at
// once, later ones left to the core's own probe, and a new term's first failure at once again.
import { expect, test } from "bun:test";
import { SnapshotTransfer, type SnapshotHost } from "../src/node/snapshot-transfer.ts";
import type { SnapshotRequest } from "../src/raft/types.ts";
import type { KvStorage } from "../src/storage/kv-storage.ts";
import type { Transport } from "../src/transport/transport.ts";

/** A host that is running, in term 3, with every peer known and no disk trouble; `overrides` set the rest. */
function hostOf(overrides: Partial<SnapshotHost> & Pick<SnapshotHost, "id" | "storage">): SnapshotHost {
  return {
    transport: () => undefined,
    peerKnown: () => true,
    term: () => 3,
    stopped: () => false,
    blockedInstall: () => undefined,
    diskFull: () => false,
    transferFailed: () => {},
    install: () => {},
    waitsInInbox: () => false,
    fail: (error) => {
      throw error;
    },
    ...overrides,
  };
}

test("a failed transfer is retried at once only after the first failure of its term", async () => {
  let term = 3;
  const retried: number[] = [];
  let failed: () => void = () => {};
  const storage = { openImage: () => ({ metadata: { index: 5, term: 1, voters: [1, 2] }, close() {}, next: () => [] }) } as unknown as KvStorage;
  // Every transfer fails, as one to a follower whose disk refuses the image does.
  const transport = {
    sendSnapshot: async () => {
      throw new Error("staging failed: database or disk is full");
    },
  } as unknown as Transport;
  const host = hostOf({
    id: 1,
    storage,
    transport: () => transport,
    term: () => term,
    transferFailed: (to) => retried.push(to),
    // Logged once a transfer has ended, after its retry was decided.
    log: (event) => {
      if (event === "snapshot send failed") failed();
    },
  });
  const room = new SnapshotTransfer(host);
  const send = async (inTerm: number) => {
    const ended = new Promise<void>((resolve) => (failed = resolve));
    const request: SnapshotRequest = { type: "snapshot", from: 1, to: 2, term: inTerm, snapshot: { index: 5, term: 1, voters: [1, 2] }, imageId: "" };
    room.start(request);
    await ended;
    expect([...room.sending()]).toEqual([]);
  };
  await send(3);
  expect(retried).toEqual([2]);
  await send(3);
  await send(3);
  expect(retried).toEqual([2]); // left to the core's probe (100 heartbeats)
  // A new term: its first failure is retried at once (counted across terms, it waited 5 s).
  term = 4;
  await send(4);
  expect(retried).toEqual([2, 2]);
  // Each failed attempt is counted (kv_snapshots_send_failed_total); none was sent, received or installed.
  expect(room.stats()).toEqual({ sent: 0, sendFailed: 4, received: 0, installed: 0 });
});

test("an image left half staged by a sender that stopped is dropped once this node applies past it by the log (found by a code review)", () => {
  let applied = 50;
  let discarded = 0;
  const storage = {
    appliedIndex: () => applied,
    stageImageChunk: () => {},
    discardStagedImage: () => discarded++,
  } as unknown as KvStorage;
  const host = hostOf({ id: 2, storage });
  const room = new SnapshotTransfer(host);
  const metadata = { index: 100, term: 2, voters: [1, 2, 3] };
  room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "img", seq: 0, metadata, rows: [], done: false });
  room.settleStaged();
  expect(room.receivingIndex()).toBe(100);
  expect(discarded).toBe(0);
  // The sender stopped; a new leader's log brings this node past the image.
  applied = 100;
  room.settleStaged();
  expect(room.receivingIndex()).toBe(0);
  expect(discarded).toBe(1);
  // A late chunk of that image is refused: it is no longer staged.
  expect(() => room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "img", seq: 1, metadata: undefined, rows: [], done: true })).toThrow(/not staging/);
});

const bytes = (text: string) => new TextEncoder().encode(text);
const imageAt = (index: number) => ({ index, term: 3, voters: [1, 2, 3] });

test("a new image's first chunk is refused while a received image waits to be installed: staged over, its install stopped the node (found in review)", async () => {
  const { createMemoryKvStorage } = await import("../src/storage/memory-storage.ts");
  const storage = createMemoryKvStorage({ voters: [1, 2, 3] });
  const inbox: SnapshotRequest[] = [];
  // As KvNode: the install is a message pushed to the inbox, stepped by a turn that has not run.
  const room = new SnapshotTransfer(hostOf({ id: 2, storage, install: (message) => void inbox.push(message), waitsInInbox: (message) => inbox.includes(message) }));
  room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "A", seq: 0, metadata: imageAt(50), addresses: [{ id: 4, peerUrl: "http://n4" }], rows: [{ key: "a", value: bytes("1"), version: 50 }], done: true });
  room.settleStaged();
  expect(() => room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "B", seq: 0, metadata: imageAt(40), rows: [{ key: "b", value: bytes("2"), version: 40 }], done: false })).toThrow(/image A waits to be installed here/);
  expect(room.addressesFor("A")).toEqual([{ id: 4, peerUrl: "http://n4" }]);
  const waiting = inbox[0] as SnapshotRequest;
  storage.installSnapshot(waiting.snapshot, waiting.imageId);
  expect(new TextDecoder().decode(storage.get("a")?.value)).toBe("1");
});

test("once an install is done, the turn's settling does not drop an image staged after it (found in review)", async () => {
  const { createMemoryKvStorage } = await import("../src/storage/memory-storage.ts");
  const storage = createMemoryKvStorage({ voters: [1, 2, 3] });
  const room = new SnapshotTransfer(hostOf({ id: 2, storage, install: (message) => storage.installSnapshot(message.snapshot, message.imageId) }));
  room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "1.3.1", seq: 0, metadata: imageAt(50), rows: [{ key: "a", value: bytes("1"), version: 50 }], done: true });
  // The next image begins before the turn after the install settles.
  room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "1.3.2", seq: 0, metadata: imageAt(60), rows: [{ key: "a", value: bytes("1"), version: 50 }], done: false });
  room.settleStaged();
  room.receiveChunk({ from: 1, to: 2, term: 3, imageId: "1.3.2", seq: 1, metadata: undefined, rows: [{ key: "b", value: bytes("2"), version: 60 }], done: true });
});
