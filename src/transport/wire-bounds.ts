/**
 * What decoding a protobuf body may allocate, bounded on the wire before it is decoded.
 *
 * The codec's limits (messages per request, entries per append, rows per chunk: codec.ts,
 * snapshot-codec.ts) are checked on the decoded request, after `fromBinary` has built every object
 * it holds. An empty message costs two bytes on the wire and a few hundred in memory, so a 32 MiB
 * body of them (within the body limit) took a node from 108 MB to 2.1 GB and held its loop 14 s:
 * leadership lost, and a few such calls at once would run it out of memory (found in a black-box
 * review). `wireBoundsProblem` walks the body's fields first, reading tags and lengths only (the
 * bytes of a value or a key are jumped over, so a call of large entries costs a few steps per
 * entry), and says when it would build more objects, or read more fields, than any call a peer
 * sends.
 *
 * Counted as objects: every occurrence of a message-typed field (an element of a list of messages,
 * or a singular one), every element of a list of scalars, and every field the schema does not
 * know (`fromBinary` keeps each as an object of its own). A group (wire types 3 and 4, which no
 * message here uses) counts as an unknown field, its contents as unknown fields too.
 *
 * A known field must come with its own wire type (a list of scalars, packed or not), and the body
 * must parse to its end: `fromBinary` reads a known field by its kind in the schema whatever its
 * wire type, so a scalar field sent as length-delimited hid a body of empty messages from a walk
 * that trusted the wire type, and a length past the end stopped the walk where `fromBinary` went on
 * (found in the review of this file). Neither is anything a peer sends: both are refused.
 */
import { type DescField, type DescMessage, ScalarType } from "@bufbuild/protobuf";

/** Bounds of one body (see the file comment). */
export interface WireBounds {
  /** Objects decoding may build: messages, list elements, unknown fields. */
  readonly objectsMax: number;
  /** Fields read, at every depth. */
  readonly fieldsMax: number;
}

/**
 * Far above what a peer's call holds: at most 1,024 messages and 4 MiB of entries, unless one
 * append is larger (connect-transport.ts), so about 170,000 entries of the smallest writes
 * (deletes of one-byte keys, ~25 bytes each); an image's chunk holds at most 131,072 rows.
 * 262,144 decoded entries are about 75 MB for the moment the call is read.
 */
export const defaultWireBounds: WireBounds = { objectsMax: 262_144, fieldsMax: 2_097_152 };

/** Each message type's fields, indexed by number (field numbers here are small), built once. */
const fieldsByNumber = new WeakMap<DescMessage, (DescField | undefined)[]>();

function fieldsOf(desc: DescMessage): (DescField | undefined)[] {
  let fields = fieldsByNumber.get(desc);
  if (fields === undefined) {
    fields = [];
    for (const field of desc.fields) fields[field.number] = field;
    fieldsByNumber.set(desc, fields);
  }
  return fields;
}

/** Where the walk stands: counts so far, against the bounds. */
interface Walk {
  objects: number;
  fields: number;
  readonly bounds: WireBounds;
}

/** Thrown inside the walk when a bound is passed (caught in `wireBoundsProblem`). */
class OverBounds extends Error {}
/** Thrown inside the walk when the bytes do not parse, or a known field has another wire type. */
class Unparsable extends Error {}

/**
 * Undefined when decoding `bytes` as `desc` stays within `bounds`; otherwise what it would pass, or
 * that the body does not parse as one (see the file comment).
 */
export function wireBoundsProblem(desc: DescMessage, bytes: Uint8Array, bounds: WireBounds = defaultWireBounds): string | undefined {
  const walk: Walk = { objects: 0, fields: 0, bounds };
  try {
    walkMessage(desc, bytes, 0, bytes.byteLength, walk);
    return undefined;
  } catch (error) {
    if (error instanceof Unparsable) return `the body does not parse as ${desc.typeName}${error.message === "" ? "" : `: ${error.message}`}`;
    if (error instanceof OverBounds) return error.message;
    throw error;
  }
}

function addObjects(walk: Walk, count: number): void {
  walk.objects += count;
  if (walk.objects > walk.bounds.objectsMax) throw new OverBounds(`the body would decode to more than ${walk.bounds.objectsMax} objects`);
}

/** Reads a varint at `at`; returns [value (exact below 2^53), next offset]. */
function varint(bytes: Uint8Array, at: number, end: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let read = 0; read < 10; read++) {
    if (at >= end) throw new Unparsable();
    const byte = bytes[at++] as number;
    value += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [value, at];
    scale *= 128;
  }
  throw new Unparsable();
}

function walkMessage(desc: DescMessage, bytes: Uint8Array, start: number, end: number, walk: Walk): void {
  const fields = fieldsOf(desc);
  let at = start;
  while (at < end) {
    let tag = bytes[at] as number;
    if (tag < 0x80) at++;
    else [tag, at] = varint(bytes, at, end);
    walk.fields++;
    if (walk.fields > walk.bounds.fieldsMax) throw new OverBounds(`the body holds more than ${walk.bounds.fieldsMax} fields`);
    const wireType = tag % 8;
    const field = fields[Math.floor(tag / 8)];
    if (field !== undefined && !wireTypeFits(field, wireType)) {
      throw new Unparsable(`field ${field.name} (${field.number}) of ${desc.typeName} comes with wire type ${wireType}`);
    }
    if (wireType === 0) {
      if (at < end && (bytes[at] as number) < 0x80) at++;
      else at = varint(bytes, at, end)[1];
    } else if (wireType === 1 || wireType === 5) {
      at += wireType === 1 ? 8 : 4;
      if (at > end) throw new Unparsable();
    } else if (wireType === 2) {
      let length = at < end ? (bytes[at] as number) : 0x80;
      let payload = at + 1;
      if (length >= 0x80) [length, payload] = varint(bytes, at, end);
      if (payload + length > end) throw new Unparsable();
      at = payload + length;
      if (field === undefined) {
        addObjects(walk, 1);
      } else if (field.fieldKind === "message" || (field.fieldKind === "list" && field.listKind === "message")) {
        addObjects(walk, 1);
        walkMessage(field.message, bytes, payload, at, walk);
      } else if (field.fieldKind === "list") {
        addObjects(walk, listElements(field, bytes, payload, at));
      }
      continue;
    } else if (wireType !== 3 && wireType !== 4) {
      throw new Unparsable();
    }
    // A scalar (or a group's bounds): an object when it is a list's element or unknown.
    if (field === undefined || field.fieldKind === "list") addObjects(walk, 1);
  }
}

/** The wire type a scalar of type `scalar` is written with (alone, not packed). */
function scalarWireType(scalar: ScalarType): number {
  switch (scalar) {
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 1;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 5;
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return 2;
    default:
      return 0;
  }
}

/** Whether `wireType` is one `fromBinary` reads `field` from as the schema means it. */
function wireTypeFits(field: DescField, wireType: number): boolean {
  switch (field.fieldKind) {
    case "message":
    case "map":
      return wireType === 2;
    case "enum":
      return wireType === 0;
    case "scalar":
      return wireType === scalarWireType(field.scalar);
    case "list":
      // Packed (length-delimited) or one element per field.
      if (field.listKind === "message") return wireType === 2;
      return wireType === 2 || wireType === (field.listKind === "enum" ? 0 : scalarWireType(field.scalar));
  }
}

/**
 * Elements of a list of scalars in one length-delimited field `bytes[start, end)`: one string or
 * bytes value, or a packed run of them, an element per varint (its last byte) or per 4 or 8 bytes.
 */
function listElements(field: DescField & { fieldKind: "list" }, bytes: Uint8Array, start: number, end: number): number {
  const wireType = field.listKind === "scalar" ? scalarWireType(field.scalar) : 0;
  if (wireType === 2) return 1;
  if (wireType === 1) return Math.ceil((end - start) / 8);
  if (wireType === 5) return Math.ceil((end - start) / 4);
  let count = 0;
  for (let at = start; at < end; at++) if (((bytes[at] as number) & 0x80) === 0) count++;
  return count;
}
