// Proves the one-buffer protobuf writer (src/transport/proto-writer.ts) writes exactly the bytes @bufbuild/protobuf's toBinary writes, for every peer message kind, random batches, snapshot chunks and values from empty to large, and that it falls back to toBinary where it does not cover a schema.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandSchema } from "../src/gen/kv/v1/command_pb.ts";
import { SendRequestSchema, SendResponseSchema, SendSnapshotChunkRequestSchema } from "../src/gen/kv/v1/raft_pb.ts";
import { createPrng } from "../src/lib/prng.ts";
import { EntryType, type Message } from "../src/raft/types.ts";
import { toSendRequest, toSendResponse } from "../src/transport/codec.ts";
import { encodeMessage, measureMessage, varintLength } from "../src/transport/proto-writer.ts";
import { toSendSnapshotChunkRequest } from "../src/transport/snapshot-codec.ts";

type Prng = ReturnType<typeof createPrng>;

/** A number of about `bits` bits: small ones often, so zero (not written) and one-byte varints come up. */
function number(prng: Prng, bits: number): number {
  const pick = prng.intInclusive(0, 5);
  if (pick === 0) return 0;
  if (pick === 1) return prng.intInclusive(1, 127);
  if (pick === 2) return Number.MAX_SAFE_INTEGER - prng.intInclusive(0, 5);
  return prng.intInclusive(0, 2 ** Math.min(bits, 52) - 1);
}

function text(prng: Prng): string {
  const alphabet = ["", "a", "read-", "ü", "✓", "\u{1f600}", "7"];
  let out = "";
  for (let i = prng.intInclusive(0, 6); i > 0; i--) out += alphabet[prng.intInclusive(0, alphabet.length - 1)];
  return out;
}

function data(prng: Prng): Uint8Array {
  const sizes = [0, 1, 127, 128, 16_384, 300_000];
  const bytes = new Uint8Array(sizes[prng.intInclusive(0, sizes.length - 1)] as number);
  for (let i = 0; i < bytes.length; i += 997) bytes[i] = prng.intInclusive(0, 255);
  return bytes;
}

function randomMessage(prng: Prng, from: number, to: number): Message {
  const term = number(prng, 40);
  switch (prng.intInclusive(0, 9)) {
    case 0:
      return { type: prng.intInclusive(0, 1) === 0 ? "vote" : "pre-vote", from, to, term, lastLogIndex: number(prng, 40), lastLogTerm: number(prng, 20), transfer: prng.intInclusive(0, 1) === 1 };
    case 1:
      return { type: prng.intInclusive(0, 1) === 0 ? "vote-response" : "pre-vote-response", from, to, term, granted: prng.intInclusive(0, 1) === 1 };
    case 2: {
      const entries = Array.from({ length: prng.intInclusive(0, 4) }, (_, i) => ({
        term: number(prng, 20),
        index: Math.min(Number.MAX_SAFE_INTEGER, i + 1 + number(prng, 30)),
        type: prng.intInclusive(0, 1) === 0 ? EntryType.Normal : EntryType.ConfChange,
        data: data(prng),
      }));
      return { type: "append", from, to, term, prevLogIndex: number(prng, 40), prevLogTerm: number(prng, 20), entries, commit: number(prng, 40) };
    }
    case 3:
      return { type: "append-response", from, to, term, success: prng.intInclusive(0, 1) === 1, index: number(prng, 40), hintIndex: number(prng, 40), hintTerm: number(prng, 20) };
    case 4:
      return { type: "heartbeat", from, to, term, commit: number(prng, 40), readContext: text(prng) };
    case 5:
      return { type: "heartbeat-response", from, to, term, readContext: text(prng) };
    case 6:
      return { type: "read-index", from, to, term, readContext: text(prng) };
    case 7:
      return { type: "read-index-response", from, to, term, readContext: text(prng), index: number(prng, 40), rejected: prng.intInclusive(0, 1) === 1 };
    case 8: {
      const learners = prng.intInclusive(0, 1) === 0 ? {} : { learners: [prng.intInclusive(4, 0xffff_ffff)] };
      return { type: "snapshot", from, to, term, snapshot: { index: number(prng, 40), term: number(prng, 20), voters: [1, 2, 0xffff_ffff].slice(0, prng.intInclusive(1, 3)), ...learners }, imageId: text(prng) };
    }
    default:
      return { type: "timeout-now", from, to, term };
  }
}

describe("proto-writer", () => {
  test("writes toBinary's bytes for 500 random batches of every peer message kind", () => {
    const prng = createPrng(11);
    for (let round = 0; round < 500; round++) {
      const from = prng.intInclusive(1, 0xffff_ffff);
      const messages = Array.from({ length: prng.intInclusive(0, 6) }, () => randomMessage(prng, from, 2));
      const request = toSendRequest(from, prng.intInclusive(0, 1) === 0 ? "" : `http://127.0.0.1:${prng.intInclusive(1, 65_535)}`, messages);
      const expected = toBinary(SendRequestSchema, request);
      const written = encodeMessage(SendRequestSchema, request);
      expect(written.byteLength).toBe(expected.byteLength);
      expect(Buffer.from(written).equals(Buffer.from(expected))).toBe(true);
      const response = toSendResponse(messages.map((m) => ({ ...m, from: 2, to: from })));
      expect(Buffer.from(encodeMessage(SendResponseSchema, response)).equals(Buffer.from(toBinary(SendResponseSchema, response)))).toBe(true);
    }
  });

  test("writes toBinary's bytes for snapshot chunks, with and without metadata and addresses", () => {
    const prng = createPrng(5);
    for (let round = 0; round < 100; round++) {
      const rows = Array.from({ length: prng.intInclusive(0, 5) }, () => ({ key: text(prng) || "k", value: data(prng), version: number(prng, 40) }));
      const first = prng.intInclusive(0, 1) === 0;
      const chunk = toSendSnapshotChunkRequest({
        from: 1,
        to: 2,
        term: number(prng, 20),
        imageId: `image-${text(prng)}`,
        seq: first ? 0 : 1 + prng.intInclusive(0, 2 ** 31),
        metadata: first ? { index: number(prng, 40), term: number(prng, 20), voters: [1, 2, 3] } : undefined,
        addresses: first ? [{ id: 1, peerUrl: "http://127.0.0.1:1", httpUrl: "http://127.0.0.1:2" }, { id: 2, peerUrl: "http://[::1]:3" }] : [],
        rows,
        done: prng.intInclusive(0, 1) === 1,
      });
      expect(Buffer.from(encodeMessage(SendSnapshotChunkRequestSchema, chunk)).equals(Buffer.from(toBinary(SendSnapshotChunkRequestSchema, chunk)))).toBe(true);
    }
  });

  test("writes into the caller's buffer after its headroom, and the bytes decode to the same request", () => {
    const request = toSendRequest(3, "http://127.0.0.1:9", [
      { type: "append", from: 3, to: 1, term: 2, prevLogIndex: 4, prevLogTerm: 2, entries: [{ term: 2, index: 5, type: EntryType.Normal, data: new Uint8Array(70_000).fill(7) }], commit: 4 },
    ]);
    const measured = measureMessage(SendRequestSchema, request);
    const into = new Uint8Array(10 + measured.bytes).fill(0xee);
    measured.write(into, 10);
    expect([...into.subarray(0, 10)]).toEqual(Array(10).fill(0xee));
    const decoded = fromBinary(SendRequestSchema, into.subarray(10));
    const body = decoded.messages[0]?.body;
    expect(body?.case).toBe("append");
    expect(body?.case === "append" ? body.value.entries[0]?.data.byteLength : 0).toBe(70_000);
  });

  test("a schema it does not cover (optional fields, int64, ...) goes through toBinary: the same bytes", () => {
    const command = create(CommandSchema, {});
    expect(Buffer.from(encodeMessage(CommandSchema, command)).equals(Buffer.from(toBinary(CommandSchema, command)))).toBe(true);
  });

  test("refuses what toBinary refuses: a uint32 out of range", () => {
    const request = toSendRequest(1, "", []);
    const bad = { ...request, from: 2 ** 32 };
    expect(() => toBinary(SendRequestSchema, bad)).toThrow();
    expect(() => encodeMessage(SendRequestSchema, bad)).toThrow(/uint32/);
  });

  test("varint lengths at each boundary", () => {
    for (const [value, length] of [[0, 1], [127, 1], [128, 2], [16_383, 2], [16_384, 3], [2 ** 32, 5], [Number.MAX_SAFE_INTEGER, 8]] as const) {
      expect(varintLength(value)).toBe(length);
    }
  });
});
