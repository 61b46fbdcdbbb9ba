// Measures the command codec swap A B A B: the hand-written LEB128 codec (A, src/kv/command.ts)
// against the protobuf message kv.v1.Command through protobuf-es (B,
// test/bench/candidates/command-codec-protobuf.ts): encode + decode of the puts a node replicates
// (a plain 100 B put, the client library's idempotent, stamped put, and a 16 KiB put), after
// checking both sides decode to the same command.
// Usage: bun test/bench/command-codec-lib.ts [--rounds 2] [--scale 1]
import { deepStrictEqual } from "node:assert";
import { decodeCommand, encodeCommand, type PutCommand } from "../../src/kv/command.ts";
import { decodeCommandProtobuf, encodeCommandProtobuf } from "./candidates/command-codec-protobuf.ts";
import { runMicro, type MicroCase } from "./ab-micro.ts";

const puts: { label: string; command: PutCommand }[] = [
  { label: "put, 100 B value", command: { op: "put", key: "bench/00001234", value: new Uint8Array(100).fill(120) } },
  {
    label: "idempotent stamped put, 100 B value (what the client library sends)",
    command: {
      op: "put",
      key: "bench/00001234",
      value: new Uint8Array(100).fill(120),
      idempotencyKey: "0b6c2f8e-3f1a-4c43-9a57-2d1c1f0f9e11",
      stamp: { atMs: 1_796_000_000_000, windowMs: 300_000, sessionsMax: 100_000 },
    },
  },
  { label: "put, 16 KiB value, ifVersion", command: { op: "put", key: "bench/00001234", value: new Uint8Array(16 * 1024).fill(7), ifVersion: 123_456 } },
];

const plain = (command: PutCommand) => ({ ...command, value: [...command.value] });
for (const { command } of puts) {
  deepStrictEqual(plain(decodeCommand(encodeCommand(command)) as PutCommand), plain(command));
  deepStrictEqual(plain(decodeCommandProtobuf(encodeCommandProtobuf(command)) as PutCommand), plain(command));
}
console.log(`bytes per entry: ${puts.map(({ label, command }) => `${label}: LEB128 ${encodeCommand(command).byteLength}, protobuf ${encodeCommandProtobuf(command).byteLength}`).join("; ")}`);

const cases: MicroCase[] = puts.map(({ label, command }) => ({
  label: `encode + decode, ${label}`,
  operations: 500_000,
  a: {
    name: "LEB128",
    run: (operations: number) => {
      let last: unknown;
      for (let i = 0; i < operations; i++) last = decodeCommand(encodeCommand(command));
      return last;
    },
  },
  b: {
    name: "protobuf-es",
    run: (operations: number) => {
      let last: unknown;
      for (let i = 0; i < operations; i++) last = decodeCommandProtobuf(encodeCommandProtobuf(command));
      return last;
    },
  },
}));
await runMicro(cases);
