// Proves the peer port bounds what a call's body would decode to before decoding it (src/transport/wire-bounds.ts): a body of
// empty messages, of unknown fields, or of a packed list, each within the body limit, is refused by count; every call a peer
// sends passes, whatever its entries' sizes; bytes that do not parse are left to fromBinary's own refusal.
import { afterEach, describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { SendRequestSchema, SendSnapshotChunkRequestSchema, SnapshotMetadataSchema } from "../src/gen/kv/v1/raft_pb.ts";
import { EntryType, type Message } from "../src/raft/types.ts";
import { toSendRequest } from "../src/transport/codec.ts";
import { createConnectTransport } from "../src/transport/connect-transport.ts";
import { defaultWireBounds, wireBoundsProblem } from "../src/transport/wire-bounds.ts";

const bounds = { objectsMax: 1_000, fieldsMax: 5_000 };

/** An append of `count` entries, each of `dataBytes` bytes of data. */
function append(count: number, dataBytes: number): Message {
  const entries = Array.from({ length: count }, (_, i) => ({ index: i + 1, term: 1, type: EntryType.Normal, data: new Uint8Array(dataBytes).fill(7) }));
  return { type: "append", from: 1, to: 2, term: 1, prevLogIndex: 0, prevLogTerm: 0, entries, commit: 0 };
}

describe("wireBoundsProblem", () => {
  test("counts what decoding would build: messages, entries, list elements, unknown fields; not the bytes of values", () => {
    const body = (messages: Message[]) => toBinary(SendRequestSchema, toSendRequest(1, "http://127.0.0.1:1", messages));
    // One append of 998 entries: the append's RaftMessage, its AppendRequest and 998 entries, 1,000 objects.
    expect(wireBoundsProblem(SendRequestSchema, body([append(998, 10)]), bounds)).toBeUndefined();
    expect(wireBoundsProblem(SendRequestSchema, body([append(999, 10)]), bounds)).toBe("the body would decode to more than 1000 objects");
    // Large values cost no more than small ones: their bytes are jumped over.
    expect(wireBoundsProblem(SendRequestSchema, body([append(998, 5_000)]), bounds)).toBeUndefined();
    // Empty messages, two bytes each on the wire (the black-box review's bomb, small).
    const empties = new Uint8Array(2 * 1_001);
    for (let at = 0; at < empties.length; at += 2) empties[at] = 0x1a; // field 3 (messages), length 0
    expect(wireBoundsProblem(SendRequestSchema, empties, bounds)).toBe("the body would decode to more than 1000 objects");
    // Unknown fields, each kept as an object by fromBinary: varints of field 15.
    const unknown = new Uint8Array(2 * 1_001);
    for (let at = 0; at < unknown.length; at += 2) unknown[at] = 15 << 3;
    expect(wireBoundsProblem(SendRequestSchema, unknown, bounds)).toBe("the body would decode to more than 1000 objects");
    // A known scalar repeated is overwritten, not kept: only the field count bounds it.
    const repeatedFrom = new Uint8Array(2 * 5_001);
    for (let at = 0; at < repeatedFrom.length; at += 2) repeatedFrom[at] = 1 << 3;
    expect(wireBoundsProblem(SendRequestSchema, repeatedFrom.subarray(0, 2 * 4_000), bounds)).toBeUndefined();
    expect(wireBoundsProblem(SendRequestSchema, repeatedFrom, bounds)).toBe("the body holds more than 5000 fields");
    // A packed list: one element per varint.
    const chunk = (voters: number[]) =>
      toBinary(SendSnapshotChunkRequestSchema, create(SendSnapshotChunkRequestSchema, { from: 1, to: 2, metadata: create(SnapshotMetadataSchema, { index: 1n, term: 1n, voters }) }));
    expect(wireBoundsProblem(SendSnapshotChunkRequestSchema, chunk(Array.from({ length: 998 }, (_, i) => i + 300)), bounds)).toBeUndefined();
    expect(wireBoundsProblem(SendSnapshotChunkRequestSchema, chunk(Array.from({ length: 1_000 }, (_, i) => i + 300)), bounds)).toBe("the body would decode to more than 1000 objects");
    // Bytes that do not parse are refused: nothing a peer sends.
    expect(wireBoundsProblem(SendRequestSchema, new Uint8Array([0x1a, 0x05, 0x00]), bounds)).toBe("the body does not parse as kv.v1.SendRequest");
    expect(wireBoundsProblem(SendRequestSchema, new Uint8Array([0xff, 0xff, 0xff]), bounds)).toBe("the body does not parse as kv.v1.SendRequest");
  });

  test("a known field with a wire type not its own is refused: fromBinary reads it by the schema, and the walk would have skipped what it decodes (found in review)", () => {
    // SendRequest.from (a uint32) tagged length-delimited, around 1,001 empty messages: fromBinary reads the
    // length as `from`, then the "payload" as messages.
    const payload = new Uint8Array(2 * 1_001);
    for (let at = 0; at < payload.length; at += 2) payload[at] = 0x1a;
    const wrapped = new Uint8Array([(1 << 3) | 2, 0xd2, 0x0f, ...payload]);
    expect(fromBinary(SendRequestSchema, wrapped).messages.length).toBe(1_001);
    expect(wireBoundsProblem(SendRequestSchema, wrapped, bounds)).toBe("the body does not parse as kv.v1.SendRequest: field from (1) of kv.v1.SendRequest comes with wire type 2");
    // The same with a length past the end: the walk could not go on, fromBinary did.
    const pastEnd = new Uint8Array([(1 << 3) | 2, 0xff, 0xff, 0xff, 0xff, 0x0f, ...payload]);
    expect(fromBinary(SendRequestSchema, pastEnd).messages.length).toBe(1_001);
    expect(wireBoundsProblem(SendRequestSchema, pastEnd, bounds)).toContain("does not parse");
    // A message field as a varint; a list of scalars packed or not (both are protobuf).
    expect(wireBoundsProblem(SendRequestSchema, new Uint8Array([(3 << 3) | 0, 0x01]), bounds)).toContain("field messages (3) of kv.v1.SendRequest comes with wire type 0");
    const unpackedVoters = new Uint8Array([(6 << 3) | 2, 6, (1 << 3) | 0, 1, (3 << 3) | 0, 5, (3 << 3) | 0, 6]);
    expect(fromBinary(SendSnapshotChunkRequestSchema, unpackedVoters).metadata?.voters).toEqual([5, 6]);
    expect(wireBoundsProblem(SendSnapshotChunkRequestSchema, unpackedVoters, bounds)).toBeUndefined();
  });

  test("the default bounds take the largest calls a peer sends: 4 MiB of the smallest entries", () => {
    const messages = Array.from({ length: 4 }, () => append(45_000, 8));
    const bytes = toBinary(SendRequestSchema, toSendRequest(1, "http://127.0.0.1:1", messages));
    expect(bytes.byteLength).toBeGreaterThan(3 << 20);
    expect(wireBoundsProblem(SendRequestSchema, bytes, defaultWireBounds)).toBeUndefined();
  });
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

test("the peer port refuses a body of a million empty messages before decoding it (it was decoded whole: 2 GB and 14 s for 32 MiB)", async () => {
  const delivered: Message[] = [];
  const handle = createConnectTransport({
    selfId: 2,
    selfHttpUrl: "http://127.0.0.1:9002",
    peers: new Map([[1, "http://127.0.0.1:1"]]),
    listen: { hostname: "127.0.0.1", port: 0 },
    onMessages: (messages) => delivered.push(...messages),
    rpcTimeoutMs: 10_000,
  });
  cleanups.push(() => handle.transport.close());
  const body = new Uint8Array(2 << 20);
  for (let at = 0; at < body.length; at += 2) body[at] = 0x1a;
  const answer = await fetch(`http://127.0.0.1:${handle.port}/kv.v1.RaftService/Send`, {
    method: "POST",
    headers: { "content-type": "application/proto", "connect-protocol-version": "1" },
    body,
  });
  expect(answer.status).toBe(400);
  const refusal = (await answer.json()) as { code: string; message: string };
  expect(refusal.code).toBe("invalid_argument");
  expect(refusal.message).toContain(`more than ${defaultWireBounds.objectsMax} objects`);
  // The same in JSON goes through connect-es, which no wire bounds precede: bounded by size instead (256 KiB).
  const json = await fetch(`http://127.0.0.1:${handle.port}/kv.v1.RaftService/Send`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1" },
    body: `{"from":1,"messages":[${Array.from({ length: 100_000 }, () => "{}").join(",")}]}`,
  });
  expect(json.status).not.toBe(200);
  expect(((await json.json()) as { code: string }).code).toBe("resource_exhausted");
  expect(delivered).toEqual([]);
});
