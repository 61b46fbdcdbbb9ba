/**
 * NOT USED BY kv: the B side of test/bench/command-codec-lib.ts. Puts and deletes (with their
 * idempotency key, stamp, expected version and lease) as the protobuf message `kv.v1.Command`
 * (proto/kv/v1/command.proto) through protobuf-es `create`/`toBinary`/`fromBinary`, with the checks
 * src/kv/command.ts makes on the same fields, so both sides do the same work. Enough of a codec to
 * measure the write path; the log keeps the LEB128 codec (see BENCHMARKS.md, "Library swaps").
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandSchema, type Command as CommandMessage } from "../../../src/gen/kv/v1/command_pb.ts";
import { CommandCodecError, commandKeyBytesMax, idempotencyKeyBytesMax, type DeleteCommand, type PutCommand } from "../../../src/kv/command.ts";

const utf8Encoder = new TextEncoder();

function toU64(value: number, what: string): bigint {
  if (!Number.isSafeInteger(value) || value < 0) throw new CommandCodecError(`encode: ${what} ${value} is not a whole number below 2^53`);
  return BigInt(value);
}

function fromU64(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new CommandCodecError(`decode: ${what} ${value} is not below 2^53`);
  return Number(value);
}

function checkKey(key: string): void {
  if (!key.isWellFormed()) throw new CommandCodecError("encode: key holds a lone UTF-16 surrogate");
  // The same bound the LEB128 codec checks; UTF-8 length without encoding twice is not available here.
  if (key.length * 3 > commandKeyBytesMax && utf8Encoder.encode(key).byteLength > commandKeyBytesMax) throw new CommandCodecError("encode: key too long");
}

/** Encodes a put or delete as `kv.v1.Command`. */
export function encodeCommandProtobuf(command: PutCommand | DeleteCommand): Uint8Array {
  checkKey(command.key);
  const message = create(CommandSchema, {
    op:
      command.op === "put"
        ? {
            case: "put",
            value: {
              key: command.key,
              value: command.value,
              ...(command.ifVersion === undefined ? {} : { ifVersion: toU64(command.ifVersion, "ifVersion") }),
              ...(command.lease === undefined ? {} : { lease: toU64(command.lease, "lease id") }),
            },
          }
        : { case: "delete", value: { key: command.key, ...(command.ifVersion === undefined ? {} : { ifVersion: toU64(command.ifVersion, "ifVersion") }) } },
    idempotencyKey: command.idempotencyKey ?? "",
    ...(command.stamp === undefined
      ? {}
      : { stamp: { atMs: toU64(command.stamp.atMs, "stamp"), windowMs: toU64(command.stamp.windowMs, "window"), sessionsMax: toU64(command.stamp.sessionsMax, "sessions max") } }),
  });
  if (command.idempotencyKey !== undefined && (command.idempotencyKey.length === 0 || utf8Encoder.encode(command.idempotencyKey).byteLength > idempotencyKeyBytesMax)) {
    throw new CommandCodecError("encode: bad idempotency key");
  }
  return toBinary(CommandSchema, message);
}

/** Decodes what {@link encodeCommandProtobuf} wrote into the same command objects src/kv/command.ts returns. */
export function decodeCommandProtobuf(data: Uint8Array): PutCommand | DeleteCommand {
  let message: CommandMessage;
  try {
    message = fromBinary(CommandSchema, data);
  } catch (error) {
    throw new CommandCodecError(`decode: ${error instanceof Error ? error.message : String(error)}`);
  }
  const idempotency =
    message.idempotencyKey === ""
      ? {}
      : {
          idempotencyKey: message.idempotencyKey,
          ...(message.stamp === undefined
            ? {}
            : { stamp: { atMs: fromU64(message.stamp.atMs, "stamp"), windowMs: fromU64(message.stamp.windowMs, "window"), sessionsMax: fromU64(message.stamp.sessionsMax, "sessions max") } }),
        };
  const op = message.op;
  if (op.case === "put") {
    const put = op.value;
    if (put.key.length * 3 > commandKeyBytesMax && utf8Encoder.encode(put.key).byteLength > commandKeyBytesMax) throw new CommandCodecError("decode: key too long");
    return {
      op: "put",
      key: put.key,
      value: put.value,
      ...(put.ifVersion === undefined ? {} : { ifVersion: fromU64(put.ifVersion, "version") }),
      ...(put.lease === undefined ? {} : { lease: fromU64(put.lease, "lease id") }),
      ...idempotency,
    };
  }
  if (op.case === "delete") {
    const del = op.value;
    return { op: "delete", key: del.key, ...(del.ifVersion === undefined ? {} : { ifVersion: fromU64(del.ifVersion, "version") }), ...idempotency };
  }
  throw new CommandCodecError(`decode: not a put or delete (${String(op.case)})`);
}
