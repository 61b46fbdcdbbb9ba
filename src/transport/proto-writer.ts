/**
 * Protobuf binary encoding in one buffer, sized first: the bytes `toBinary` (@bufbuild/protobuf)
 * writes, without its copies. `toBinary` writes each nested message into a writer of its own and
 * copies it into its parent when done, growing buffers by doubling on the way, so an entry's data
 * was copied four or five times on its way into a `SendRequest` (and once more to put the HTTP head
 * in front): at 256 KB values that was a fifth of a leader's CPU (BENCHMARKS.md). Here a first pass
 * measures every nested message, and a second writes each field once into a buffer of the exact
 * size, which may start with room for the caller (`headroomBytes`).
 *
 * Covers what the peer protocol uses (proto/kv/v1/raft.proto): implicit-presence scalars (uint32,
 * uint64, int32, bool, string, bytes), enums, messages, oneofs, packed repeated scalars and
 * repeated messages, written in field-number order as `toBinary` does. A schema with anything else
 * (maps, explicit presence, other scalar types) is encoded by `toBinary`; so is a message carrying
 * unknown fields. test/proto-writer.test.ts checks the bytes equal `toBinary`'s.
 */
import { ScalarType, toBinary } from "@bufbuild/protobuf";
import type { DescField, DescMessage, Message } from "@bufbuild/protobuf";
import { uninitializedBytes } from "../lib/bytes.ts";
import { varintByteLength as varintLength, writeVarint } from "../lib/varint.ts";

export { varintLength };

/** A message measured and ready to be written. */
export interface MeasuredMessage {
  /** Bytes the encoded message takes. */
  readonly bytes: number;
  /** Writes the message into `into` from `offset` (at least `bytes` must fit). */
  write(into: Uint8Array, offset: number): void;
}

const wireVarint = 0;
const wireLengthDelimited = 2;

interface FieldPlan {
  readonly localName: string;
  /** The oneof's local name when the field is one of its members. */
  readonly oneof: string | undefined;
  readonly kind: "scalar" | "message" | "packed" | "messages";
  readonly scalar: ScalarType;
  readonly message: DescMessage | undefined;
  /** The field's tag, as its varint bytes. */
  readonly tag: Uint8Array;
}

/** How to write a message: its fields by number, or undefined when `toBinary` must do it. */
const plans = new WeakMap<DescMessage, readonly FieldPlan[] | null>();

const supportedScalars = new Set([ScalarType.UINT32, ScalarType.UINT64, ScalarType.INT32, ScalarType.BOOL, ScalarType.STRING, ScalarType.BYTES]);

function planOf(desc: DescMessage): readonly FieldPlan[] | undefined {
  const known = plans.get(desc);
  if (known !== undefined) return known ?? undefined;
  plans.set(desc, null); // recursive schemas: refused while being planned, then planned below
  const fields: FieldPlan[] = [];
  for (const field of desc.fields.concat().sort((a, b) => a.number - b.number)) {
    const plan = fieldPlan(field);
    if (plan === undefined) return undefined;
    fields.push(plan);
  }
  for (const field of fields) if (field.message !== undefined && planOf(field.message) === undefined) return undefined;
  plans.set(desc, fields);
  return fields;
}

function fieldPlan(field: DescField): FieldPlan | undefined {
  const oneof = field.oneof?.localName;
  const base = { localName: field.localName, oneof, message: undefined, scalar: ScalarType.INT32 };
  const tagOf = (wire: number): Uint8Array => varintBytes(field.number * 8 + wire);
  switch (field.fieldKind) {
    case "scalar":
      if (!supportedScalars.has(field.scalar) || (oneof === undefined && field.presence !== IMPLICIT)) return undefined;
      return { ...base, kind: "scalar", scalar: field.scalar, tag: tagOf(isLengthDelimited(field.scalar) ? wireLengthDelimited : wireVarint) };
    case "enum":
      if (oneof === undefined && field.presence !== IMPLICIT) return undefined;
      return { ...base, kind: "scalar", scalar: ScalarType.INT32, tag: tagOf(wireVarint) };
    case "message":
      if (field.delimitedEncoding) return undefined;
      return { ...base, kind: "message", message: field.message, tag: tagOf(wireLengthDelimited) };
    case "list":
      if (field.listKind === "message") {
        if (field.delimitedEncoding) return undefined;
        return { ...base, kind: "messages", message: field.message, tag: tagOf(wireLengthDelimited) };
      }
      if (!field.packed) return undefined;
      if (field.listKind === "enum") return { ...base, kind: "packed", scalar: ScalarType.INT32, tag: tagOf(wireLengthDelimited) };
      if (isLengthDelimited(field.scalar) || !supportedScalars.has(field.scalar)) return undefined;
      return { ...base, kind: "packed", scalar: field.scalar, tag: tagOf(wireLengthDelimited) };
    default:
      return undefined;
  }
}

/** `FeatureSet.FieldPresence.IMPLICIT`: proto3 scalars without `optional`. */
const IMPLICIT = 2;

function isLengthDelimited(scalar: ScalarType): boolean {
  return scalar === ScalarType.STRING || scalar === ScalarType.BYTES;
}

/** Whether an implicit-presence scalar holds its default (and so is not written). */
function isDefault(scalar: ScalarType, value: unknown): boolean {
  switch (scalar) {
    case ScalarType.STRING:
      return value === "";
    case ScalarType.BYTES:
      return (value as Uint8Array).byteLength === 0;
    case ScalarType.BOOL:
      return value === false;
    default:
      return value === 0 || value === 0n || value === "0";
  }
}

/** What the measuring pass leaves for the writing pass, in the order the writing pass needs it. */
interface Measures {
  /** Sizes of nested messages and packed lists, in the order they are met. */
  readonly sizes: number[];
  /** UTF-8 bytes of the strings, in the order they are met. */
  readonly strings: Uint8Array[];
}

const utf8 = new TextEncoder();

/**
 * Measures `message` (of schema `desc`) for writing. Falls back to `toBinary` (its bytes copied
 * once more when written) for a schema this writer does not cover, or unknown fields.
 */
export function measureMessage<Desc extends DescMessage>(desc: Desc, message: Message): MeasuredMessage {
  const plan = planOf(desc);
  if (plan === undefined || hasUnknown(message)) {
    const bytes = toBinary(desc, message as never);
    return { bytes: bytes.byteLength, write: (into, offset) => into.set(bytes, offset) };
  }
  const measures: Measures = { sizes: [], strings: [] };
  const bytes = measureFields(plan, message as unknown as Record<string, unknown>, measures);
  return {
    bytes,
    write(into, offset) {
      const cursor = { at: offset, size: 0, string: 0 };
      writeFields(plan, message as unknown as Record<string, unknown>, measures, into, cursor);
      if (cursor.at !== offset + bytes) throw new Error(`proto-writer: wrote ${cursor.at - offset} bytes, measured ${bytes}`);
    },
  };
}

/** `toBinary`, through the measuring writer: one buffer, each field written once. */
export function encodeMessage<Desc extends DescMessage>(desc: Desc, message: Message): Uint8Array {
  const measured = measureMessage(desc, message);
  const bytes = uninitializedBytes(measured.bytes);
  measured.write(bytes, 0);
  return bytes;
}

function hasUnknown(message: Message): boolean {
  const unknown = (message as { $unknown?: unknown[] }).$unknown;
  return unknown !== undefined && unknown.length > 0;
}

/** The field's value to write, or undefined when it is not written. */
function valueOf(field: FieldPlan, message: Record<string, unknown>): unknown {
  if (field.oneof !== undefined) {
    const oneof = message[field.oneof] as { case: string | undefined; value?: unknown };
    return oneof.case === field.localName ? oneof.value : undefined;
  }
  const value = message[field.localName];
  switch (field.kind) {
    case "scalar":
      return isDefault(field.scalar, value) ? undefined : value;
    case "message":
      return value;
    default:
      return (value as unknown[]).length === 0 ? undefined : value;
  }
}

function measureFields(plan: readonly FieldPlan[], message: Record<string, unknown>, measures: Measures): number {
  let bytes = 0;
  for (const field of plan) {
    const value = valueOf(field, message);
    if (value === undefined) continue;
    switch (field.kind) {
      case "scalar":
        bytes += field.tag.byteLength + scalarBytes(field.scalar, value, measures);
        break;
      case "message":
        bytes += field.tag.byteLength + nestedBytes(field.message as DescMessage, value as Record<string, unknown>, measures);
        break;
      case "messages":
        for (const item of value as Record<string, unknown>[]) bytes += field.tag.byteLength + nestedBytes(field.message as DescMessage, item, measures);
        break;
      case "packed": {
        let payload = 0;
        for (const item of value as unknown[]) payload += scalarBytes(field.scalar, item, measures);
        measures.sizes.push(payload);
        bytes += field.tag.byteLength + varintLength(payload) + payload;
        break;
      }
    }
  }
  return bytes;
}

function nestedBytes(desc: DescMessage, message: Record<string, unknown>, measures: Measures): number {
  const slot = measures.sizes.length;
  measures.sizes.push(0);
  const size = measureFields(planOf(desc) as readonly FieldPlan[], message, measures);
  measures.sizes[slot] = size;
  return varintLength(size) + size;
}

function scalarBytes(scalar: ScalarType, value: unknown, measures: Measures): number {
  switch (scalar) {
    case ScalarType.STRING: {
      const bytes = utf8.encode(value as string);
      measures.strings.push(bytes);
      return varintLength(bytes.byteLength) + bytes.byteLength;
    }
    case ScalarType.BYTES: {
      const length = (value as Uint8Array).byteLength;
      return varintLength(length) + length;
    }
    case ScalarType.BOOL:
      return 1;
    case ScalarType.INT32:
      return (value as number) < 0 ? 10 : varintLength(value as number);
    case ScalarType.UINT32:
      return varintLength(uint32Number(value));
    default:
      return varintLength(uint64Number(value));
  }
}

interface Cursor {
  at: number;
  /** Next entry of `Measures.sizes` to use. */
  size: number;
  /** Next entry of `Measures.strings` to use. */
  string: number;
}

function writeFields(plan: readonly FieldPlan[], message: Record<string, unknown>, measures: Measures, into: Uint8Array, cursor: Cursor): void {
  for (const field of plan) {
    const value = valueOf(field, message);
    if (value === undefined) continue;
    switch (field.kind) {
      case "scalar":
        writeTag(field, into, cursor);
        writeScalar(field.scalar, value, measures, into, cursor);
        break;
      case "message":
        writeTag(field, into, cursor);
        writeNested(field.message as DescMessage, value as Record<string, unknown>, measures, into, cursor);
        break;
      case "messages":
        for (const item of value as Record<string, unknown>[]) {
          writeTag(field, into, cursor);
          writeNested(field.message as DescMessage, item, measures, into, cursor);
        }
        break;
      case "packed":
        writeTag(field, into, cursor);
        cursor.at = writeVarint(into, cursor.at, measures.sizes[cursor.size++] as number);
        for (const item of value as unknown[]) writeScalar(field.scalar, item, measures, into, cursor);
        break;
    }
  }
}

function writeTag(field: FieldPlan, into: Uint8Array, cursor: Cursor): void {
  into.set(field.tag, cursor.at);
  cursor.at += field.tag.byteLength;
}

function writeNested(desc: DescMessage, message: Record<string, unknown>, measures: Measures, into: Uint8Array, cursor: Cursor): void {
  cursor.at = writeVarint(into, cursor.at, measures.sizes[cursor.size++] as number);
  writeFields(planOf(desc) as readonly FieldPlan[], message, measures, into, cursor);
}

function writeScalar(scalar: ScalarType, value: unknown, measures: Measures, into: Uint8Array, cursor: Cursor): void {
  switch (scalar) {
    case ScalarType.STRING: {
      const bytes = measures.strings[cursor.string++] as Uint8Array;
      cursor.at = writeVarint(into, cursor.at, bytes.byteLength);
      into.set(bytes, cursor.at);
      cursor.at += bytes.byteLength;
      return;
    }
    case ScalarType.BYTES: {
      const bytes = value as Uint8Array;
      cursor.at = writeVarint(into, cursor.at, bytes.byteLength);
      into.set(bytes, cursor.at);
      cursor.at += bytes.byteLength;
      return;
    }
    case ScalarType.BOOL:
      into[cursor.at++] = value === true ? 1 : 0;
      return;
    case ScalarType.INT32:
      if ((value as number) < 0) {
        // Negative int32s are written sign-extended to 64 bits: ten bytes.
        let low = (value as number) >>> 0;
        for (let i = 0; i < 4; i++) {
          into[cursor.at++] = (low & 0x7f) | 0x80;
          low >>>= 7;
        }
        into[cursor.at++] = (low & 0x0f) | 0x70 | 0x80;
        for (let i = 0; i < 4; i++) into[cursor.at++] = 0xff;
        into[cursor.at++] = 0x01;
        return;
      }
      cursor.at = writeVarint(into, cursor.at, value as number);
      return;
    case ScalarType.UINT32:
      cursor.at = writeVarint(into, cursor.at, value as number);
      return;
    default:
      cursor.at = writeVarint(into, cursor.at, uint64Number(value));
  }
}

function uint32Number(value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new Error(`proto-writer: invalid uint32 ${String(value)}`);
  return value;
}

/** A uint64 field's value as a number; the peer protocol's never pass 2^53 (codec.ts asserts it). */
function uint64Number(value: unknown): number {
  const number = typeof value === "number" ? value : Number(value as bigint | string);
  if (!Number.isSafeInteger(number) || number < 0) throw new Error(`proto-writer: uint64 ${String(value)} is not a safe integer`);
  return number;
}

function varintBytes(value: number): Uint8Array {
  const bytes = new Uint8Array(varintLength(value));
  writeVarint(bytes, 0, value);
  return bytes;
}
