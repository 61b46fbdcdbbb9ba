// Proves the command codec round-trips every put and delete exactly and rejects malformed entry data with a CommandCodecError.
import { describe, expect, test } from "bun:test";
import { createPrng } from "../src/lib/prng.ts";
import { type Command, CommandCodecError, commandKeyBytesMax, decodeCommand, encodeCommand, isNoopData } from "../src/kv/command.ts";

function roundTrip(command: Command): Command {
  return decodeCommand(encodeCommand(command));
}

describe("command codec", () => {
  test("put and delete round-trip, including edge keys and values", () => {
    const keys = ["", "a", "key/with/slashes", "é😀中文", "\u0000nul\u0000", "\uFEFFbom-first", "x".repeat(127), "y".repeat(128), "z".repeat(commandKeyBytesMax)];
    const values = [new Uint8Array(0), new Uint8Array([0]), new Uint8Array([1, 2, 3, 255]), new Uint8Array(70_000).fill(7)];
    for (const key of keys) {
      expect(roundTrip({ op: "delete", key })).toEqual({ op: "delete", key });
      for (const value of values) {
        const decoded = roundTrip({ op: "put", key, value });
        expect(decoded.op).toBe("put");
        expect(decoded.op === "put" && decoded.key).toBe(key);
        expect(decoded.op === "put" && Array.from(decoded.value)).toEqual(Array.from(value));
      }
    }
  });

  test("random commands round-trip", () => {
    const prng = createPrng(42);
    for (let round = 0; round < 2000; round++) {
      const key = Array.from({ length: prng.intInclusive(0, 40) }, () => String.fromCodePoint(prng.pick([0x41, 0xe9, 0x4e2d, 0x1f600, prng.intInclusive(0x20, 0xd7ff)]))).join("");
      const value = Uint8Array.from({ length: prng.intInclusive(0, 300) }, () => prng.intInclusive(0, 255));
      const command: Command = prng.chance(0.5) ? { op: "put", key, value } : { op: "delete", key };
      const decoded = roundTrip(command);
      expect("key" in decoded ? decoded.key : undefined).toBe(key);
      expect(decoded.op).toBe(command.op);
      if (decoded.op === "put") expect(Array.from(decoded.value)).toEqual(Array.from(value));
    }
  });

  test("the encoding is compact: op byte, one-byte varint, key, value", () => {
    expect(encodeCommand({ op: "put", key: "ab", value: new Uint8Array([9]) })).toEqual(new Uint8Array([1, 2, 0x61, 0x62, 9]));
    expect(encodeCommand({ op: "delete", key: "ab" })).toEqual(new Uint8Array([2, 2, 0x61, 0x62]));
    expect(encodeCommand({ op: "delete", key: "k".repeat(200) }).byteLength).toBe(1 + 2 + 200);
  });

  test("a value decoded from a subarray is only the rest of that subarray", () => {
    const encoded = encodeCommand({ op: "put", key: "k", value: new Uint8Array([5, 6]) });
    const framed = new Uint8Array(encoded.byteLength + 4);
    framed.set(encoded, 2);
    const decoded = decodeCommand(framed.subarray(2, 2 + encoded.byteLength));
    expect(decoded.op === "put" && Array.from(decoded.value)).toEqual([5, 6]);
  });

  test("empty data is a no-op, not a command", () => {
    expect(isNoopData(new Uint8Array(0))).toBe(true);
    expect(isNoopData(encodeCommand({ op: "delete", key: "" }))).toBe(false);
    expect(() => decodeCommand(new Uint8Array(0))).toThrow(CommandCodecError);
  });

  test("garbage is rejected with a clear error", () => {
    const garbage: [string, number[], RegExp][] = [
      ["unknown op", [0x07, 1, 0x61], /unknown op byte 0x07/],
      ["op 0", [0x00], /unknown op byte 0x00/],
      ["missing key length", [0x01], /truncated key length/],
      ["truncated varint", [0x01, 0x80], /truncated key length/],
      ["non-minimal varint", [0x02, 0x81, 0x00, 0x61], /non-minimal/],
      ["overlong varint", [0x02, 0x80, 0x80, 0x80, 0x01], /longer than 3 bytes/],
      ["key over the limit", [0x02, 0x81, 0x80, 0x04], /exceeds/],
      ["key past the end", [0x01, 5, 0x61, 0x62], /runs past the end/],
      ["invalid UTF-8", [0x02, 2, 0xc3, 0x28], /not valid UTF-8/],
      ["trailing bytes after delete", [0x02, 1, 0x61, 0x00], /1 trailing bytes after a delete/],
    ];
    for (const [, bytes, message] of garbage) {
      expect(() => decodeCommand(new Uint8Array(bytes))).toThrow(message);
      expect(() => decodeCommand(new Uint8Array(bytes))).toThrow(CommandCodecError);
    }
  });

  test("random bytes either fail cleanly or decode to the canonical encoding", () => {
    const prng = createPrng(7);
    for (let round = 0; round < 5000; round++) {
      const bytes = Uint8Array.from({ length: prng.intInclusive(0, 12) }, () => prng.pick([0, 1, 2, 0x61, 0x80, 0xc3, prng.intInclusive(0, 255)]));
      let decoded: Command;
      try {
        decoded = decodeCommand(bytes);
      } catch (error: unknown) {
        expect(error).toBeInstanceOf(CommandCodecError);
        continue;
      }
      // Whatever decodes is canonical: encoding it again gives the same bytes.
      expect(encodeCommand(decoded)).toEqual(bytes);
    }
  });

  test("keys that cannot round-trip are refused at encode", () => {
    expect(() => encodeCommand({ op: "delete", key: "\uD800" })).toThrow(/lone UTF-16 surrogate/);
    expect(() => encodeCommand({ op: "delete", key: "x".repeat(commandKeyBytesMax + 1) })).toThrow(/exceeds/);
  });

  test("wrapped commands keep the bytes every release wrote: idempotency header, then lease header, then the plain command", () => {
    // Logs and images on disk hold these bytes: an encoding that changed would misread old data dirs.
    const value = new Uint8Array([1, 2, 3, 250]);
    const stamp = { atMs: 1_700_000_000_000, windowMs: 60_000, sessionsMax: 1_000 };
    const hex = (command: Command) => Buffer.from(encodeCommand(command)).toString("hex");
    expect(hex({ op: "put", key: "k", value, lease: 7, idempotencyKey: "id-1", stamp })).toBe("0680d095ffbc31e0d403e8070469642d310a0701016b010203fa");
    expect(hex({ op: "put", key: "k", value, lease: 300 })).toBe("0aac0201016b010203fa");
    expect(hex({ op: "put", key: "k", value, ifVersion: 5, idempotencyKey: "x" })).toBe("05017803016b05010203fa");
    expect(hex({ op: "delete", key: "gone", idempotencyKey: "d", stamp: { atMs: 1, windowMs: 2, sessionsMax: 3 } })).toBe("0601020301640204676f6e65");
  });
});

describe("large commands are written into buffers that are not zeroed first", () => {
  test("every byte is written: a large put, idempotent and on a lease, encodes to the same bytes each time and decodes back", () => {
    const value = new Uint8Array(300_000);
    for (let i = 0; i < value.length; i += 7) value[i] = i % 251;
    const commands = [
      { op: "put", key: "big", value },
      { op: "put", key: "big", value, ifVersion: 3 },
      { op: "put", key: "big", value, lease: 9 },
      { op: "put", key: "big", value, idempotencyKey: "k1", stamp: { atMs: 5, windowMs: 60_000, sessionsMax: 10 } },
    ] as const;
    for (const command of commands) {
      // Dirty the allocator's memory between encodings: a byte left unwritten would differ.
      for (let i = 0; i < 20; i++) Buffer.allocUnsafeSlow(400_000).fill(0xa5);
      const first = encodeCommand(command as never);
      for (let i = 0; i < 20; i++) Buffer.allocUnsafeSlow(400_000).fill(0x5a);
      const second = encodeCommand(command as never);
      expect(Buffer.from(first).equals(Buffer.from(second))).toBe(true);
      expect(first instanceof Buffer).toBe(false);
      const decoded = decodeCommand(first) as { value?: Uint8Array; op: string };
      const inner = (decoded as { command?: { value: Uint8Array } }).command?.value ?? decoded.value;
      expect(inner !== undefined && Buffer.from(inner).equals(Buffer.from(value))).toBe(true);
    }
  });
});
