/**
 * The binary encoding of key-value commands carried in Raft entry data.
 *
 * Layout (no JSON, no base64; the op byte doubles as the format tag):
 * ```
 * put:    [0x01] [key length: unsigned LEB128, minimal] [key: UTF-8] [value: every remaining byte]
 * delete: [0x02] [key length: unsigned LEB128, minimal] [key: UTF-8]
 * put if version:    [0x03] [key length] [key] [expected version: LEB128, at most 8 bytes] [value]
 * delete if version: [0x04] [key length] [key] [expected version]
 * idempotent (0.1.0): [0x05] [idempotency key length] [idempotency key] [any of the four above]
 * idempotent, stamped: [0x06] [leader's wall clock, ms] [session window, ms] [sessions max]
 *                      [idempotency key length] [idempotency key] [any of the four above, 0x0a, or a transaction]
 * lease grant:  [0x07] [ttl, ms: LEB128, at most 8 bytes]      (the lease's id is the entry's index)
 * lease revoke: [0x08] [lease id: LEB128, at most 8 bytes]
 * lease expire: [0x09] [count: LEB128, 1..leaseExpireIdsMax] [lease id: LEB128] × count
 * put on lease: [0x0a] [lease id: LEB128, at most 8 bytes] [a put: 0x01 or 0x03, as above]
 * delete prefix (0.9.0): [0x0b] [prefix length] [prefix: UTF-8] [most keys deleted: LEB128, 1..deletePrefixKeysMax]
 *                        [most bytes of keys deleted: LEB128, at least 1, at most 8 bytes]
 * transaction: [0x10] [compare count] [compares] [success count] [ops] [failure count] [ops]  (see txn.ts)
 * transaction, gets bounded (0.11.0): [0x0c] [the body of 0x10]
 * ```
 * The three numbers of 0x06 are LEB128 (at most 8 bytes each). 0x0d-0x0f are free for later kv
 * commands. A command a release did not know (0x0b before 0.9.0) stops that release's apply rather
 * than being misread, so a leader proposes one only once every member said it applies it
 * (`COMMAND_LEVEL`, src/node/cluster-level.ts). A transaction or a delete-prefix is never wrapped in
 * 0x05 (0.1.0 knew neither). In a Normal entry 0x10 is a transaction; a ConfChange entry starts with the same byte as its tag (the entry's type
 * tells which decoder reads it). Op bytes never change meaning: a log or snapshot written by an
 * earlier release decodes and applies as it did there.
 * Empty entry data is a leader's no-op (thesis §6.4), never a command: `decodeCommand` rejects it,
 * callers test `isNoopData` first. A committed entry that does not decode is corruption or a bug,
 * so decoding is strict: unknown op, non-minimal or overlong varint, truncated or invalid UTF-8
 * key, and trailing bytes after a delete all throw a `CommandCodecError`.
 */
import { decodeTxnBody, encodeTxnBody, type TxnRequest } from "./txn.ts";
import { uninitializedBytes } from "../lib/bytes.ts";
import { varintByteLength, writeVarint } from "../lib/varint.ts";

/** Keys longer than this (in UTF-8 bytes) cannot be encoded; the HTTP layer should refuse them earlier. */
export const commandKeyBytesMax = 64 * 1024;

/** A 64 KiB key length needs 3 LEB128 bytes (21 bits); anything longer is garbage. */
const keyLengthVarintBytesMax = 3;

const opPut = 0x01;
const opDelete = 0x02;
/** Conditional forms (compare-and-set): the expected version follows the key as a LEB128 varint. */
const opPutIfVersion = 0x03;
const opDeleteIfVersion = 0x04;
/** Versions are Raft indexes: below 2^53, so at most 8 LEB128 bytes. */
const versionVarintBytesMax = 8;
/** An idempotent write (client session, thesis §6.3) as 0.1.0 wrote it: [0x05] [key length] [idempotency key] [inner command]. */
const opIdempotent = 0x05;
/** An idempotent write stamped by its leader (see `IdempotencyStamp`): [0x06] [stamp] [key length] [idempotency key] [inner command]. */
const opIdempotentStamped = 0x06;
/** A multi-key transaction (src/kv/txn.ts): [0x10] [body]. */
const opTxn = 0x10;
/** A transaction whose gets are bounded when it applies (`TxnCommand.getsBounded`; 0.11.0, `COMMAND_LEVEL` 3): [0x0c] [body]. */
const opTxnGetsBounded = 0x0c;
/** Leases (see src/kv/leases.ts): grant, revoke, expire, and a put that attaches its key to a lease. */
const opLeaseGrant = 0x07;
const opLeaseRevoke = 0x08;
const opLeaseExpire = 0x09;
const opPutOnLease = 0x0a;
/** Deletes the keys under a prefix, at most a given number of them (0.9.0; `COMMAND_LEVEL` 2). */
const opDeletePrefix = 0x0b;
/**
 * The most keys one delete-prefix entry deletes: its apply, its watch events and its answer are one
 * batch each, on the storage's thread and then on the loop's, which must keep ticking.
 */
export const deletePrefixKeysMax = 10_000;
/**
 * Keys one delete-prefix deletes when its request names no limit: a tenth of `deletePrefixKeysMax`,
 * so one entry's deletes stay well under what a watch stream may have waiting (10,000 changes, src/node/watch.ts),
 * where a node applying a batch of 10,000 at once ended its streams with slow_watcher (found in a
 * black-box review).
 */
export const deletePrefixKeysDefault = 1_000;
/** The bytes of keys a leader lets one delete-prefix entry delete (past the key that reaches them, the rest wait: `more`). */
export const deletePrefixKeyBytesMax = 4 * 1024 * 1024;
/**
 * The commands this release applies, as a level: 1 for every command of 0.1.0-0.8.0, 2 with
 * delete-prefix (0.9.0), 3 with transactions whose gets are bounded (0.11.0). A server tells its peers its level in every call and answer
 * (proto/kv/v1/raft.proto); a leader proposes a command of a higher level only once every member
 * said it is at that level or above (src/node/cluster-level.ts).
 */
export const COMMAND_LEVEL = 3;
/** The level a delete-prefix needs (a transaction's: txn.ts `txnCommandLevel`). */
export const DELETE_PREFIX_LEVEL = 2;
/** The level a transaction whose gets are bounded needs (`TxnCommand.getsBounded`). */
export const TXN_GETS_BOUNDED_LEVEL = 3;
/** The first release that applies each level above 1 (for the leader's refusal). */
export const COMMAND_LEVEL_RELEASES: Readonly<Record<number, string>> = { 2: "0.9.0", 3: "0.11.0" };
/** Most lease ids one expire command may carry (the leader proposes far fewer at a time). */
export const leaseExpireIdsMax = 10_000;
/** Where the state machine keeps leases and their keys: reserved like `sessionKeyPrefix` (see src/kv/leases.ts). */
export const leaseKeyPrefix = "\u0000lease/";
/** True for a key of the state machine's own (sessions, leases): clients can neither read, write nor list it. */
export function isReservedKey(key: string): boolean {
  return reservedPrefixOf(key) !== undefined;
}
/** The state machine's own prefix `key` starts with (see `isReservedKey`), if any. */
export function reservedPrefixOf(key: string): string | undefined {
  if (key.startsWith(sessionKeyPrefix)) return sessionKeyPrefix;
  if (key.startsWith(leaseKeyPrefix)) return leaseKeyPrefix;
  return undefined;
}
/** Milliseconds since the epoch and session limits are below 2^53: at most 8 LEB128 bytes each. */
const stampVarintBytesMax = 8;
/** The longest idempotency key, in UTF-8 bytes. */
export const idempotencyKeyBytesMax = 256;
/**
 * Where the state machine keeps each idempotent write's original answer: keys in the kv table under
 * this prefix (so they are replicated, snapshotted and streamed with the data). Client keys may not
 * start with it; listings never show it.
 */
export const sessionKeyPrefix = "\u0000session/";

/**
 * What the leader that proposed an idempotent write stamped on it (written by releases after 0.1.0),
 * so every replica decides the write's session the same way from the log alone: the state machine's
 * time moves to `atMs` (never back), sessions older than `windowMs` by it are forgotten, and beyond
 * `sessionsMax` sessions the oldest are dropped (see apply-plan.ts).
 */
export interface IdempotencyStamp {
  /** The leader's wall clock when it proposed the write, in ms since the epoch. */
  readonly atMs: number;
  /** How long a session is remembered, by the state machine's time (`kv serve --idempotency-window`). */
  readonly windowMs: number;
  /** How many sessions are kept at most (`kv serve --idempotency-sessions-max`); at least 1. */
  readonly sessionsMax: number;
}

/** Set `key` to `value`. */
export interface PutCommand {
  readonly op: "put";
  /** A retried write with the same key applies once and gets the first answer again. */
  readonly idempotencyKey?: string;
  /** With `idempotencyKey` only: absent in the 0.1.0 encoding. */
  readonly stamp?: IdempotencyStamp;
  readonly key: string;
  readonly value: Uint8Array;
  /** Apply only if the key's version is this (0: only if absent); otherwise nothing changes. */
  readonly ifVersion?: number;
  /**
   * Attach the key to this lease (its id); a put without one detaches the key from any lease. An
   * unknown lease at apply time writes nothing (see src/kv/leases.ts).
   */
  readonly lease?: number;
}

/** Remove `key` (a no-op on the data when absent, but still a versioned write). */
export interface DeleteCommand {
  readonly op: "delete";
  /** A retried write with the same key applies once and gets the first answer again. */
  readonly idempotencyKey?: string;
  /** With `idempotencyKey` only: absent in the 0.1.0 encoding. */
  readonly stamp?: IdempotencyStamp;
  readonly key: string;
  /** Apply only if the key's version is this (0: only if absent); otherwise nothing changes. */
  readonly ifVersion?: number;
}

/** Compare, then run one of two lists of operations, atomically at the entry's index (src/kv/txn.ts). */
export interface TxnCommand extends TxnRequest {
  readonly op: "txn";
  /** A retried transaction with the same key applies once and gets the first answer again. */
  readonly idempotencyKey?: string;
  /** With `idempotencyKey` only (always stamped: 0.1.0 knew no transactions). */
  readonly stamp?: IdempotencyStamp;
  /**
   * Its gets may return at most `txnSessionGetBytesMax` (src/kv/txn.ts) when it applies; past that,
   * nothing of it applies (`txn-too-large`), on every replica alike. Without it only an idempotent
   * transaction is held to that (its session keeps the answer); any other copied whatever its gets
   * found, on every replica, however much a value grew after the leader judged its size. Never
   * with `idempotencyKey` (op 0x0c is never wrapped).
   */
  readonly getsBounded?: boolean;
}

/**
 * Remove every key that starts with `prefix` (every key, for the empty prefix), at most `limit` of
 * them, in key order, all at the entry's index; the state machine's own keys are never touched.
 */
export interface DeletePrefixCommand {
  readonly op: "delete-prefix";
  /** A retried write with the same key applies once and gets the first answer again. */
  readonly idempotencyKey?: string;
  /** With `idempotencyKey` only (always stamped: 0.1.0 knew no such command). */
  readonly stamp?: IdempotencyStamp;
  readonly prefix: string;
  /** 1 to `deletePrefixKeysMax`. */
  readonly limit: number;
  /**
   * It stops after the key that brings the deleted keys' UTF-8 bytes to this (the first key always
   * goes): the leader's bound on what one apply hands the loop and its watchers. In the entry, so
   * every replica stops at the same key whatever its release.
   */
  readonly keyBytesMax: number;
}

/** A state-machine command: what a normal, non-empty Raft entry carries (or a `LeaseCommand`). */
export type Command = PutCommand | DeleteCommand | TxnCommand | DeletePrefixCommand;

/** A lease with a time to live; its id is the index of the entry that grants it. */
export interface LeaseGrantCommand {
  readonly op: "lease-grant";
  readonly ttlMs: number;
}

/** Ends a lease now: its keys are deleted at this entry's version. */
export interface LeaseRevokeCommand {
  readonly op: "lease-revoke";
  readonly id: number;
}

/** The leader saw these leases run out: each still there ends, its keys deleted at this entry's version. */
export interface LeaseExpireCommand {
  readonly op: "lease-expire";
  readonly ids: readonly number[];
}

/** The lease commands: entry data whose op byte is 0x07-0x09 (`isLeaseCommandData`). */
export type LeaseCommand = LeaseGrantCommand | LeaseRevokeCommand | LeaseExpireCommand;

/** True when entry data carries a `LeaseCommand` (decode it with `decodeLeaseCommand`, not `decodeCommand`). */
export function isLeaseCommandData(data: Uint8Array): boolean {
  const op = data[0];
  return op === opLeaseGrant || op === opLeaseRevoke || op === opLeaseExpire;
}

/** Lease ids are entry indexes and TTLs are milliseconds: both positive and below 2^53. */
function checkLeaseNumber(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new CommandCodecError(`${what} ${value} is not a positive whole number`);
}

/** Encodes a lease command; throws `CommandCodecError` for a number out of range or a bad id count. */
export function encodeLeaseCommand(command: LeaseCommand): Uint8Array {
  let numbers: number[];
  let op: number;
  switch (command.op) {
    case "lease-grant":
      checkLeaseNumber(command.ttlMs, "encode: ttl");
      [op, numbers] = [opLeaseGrant, [command.ttlMs]];
      break;
    case "lease-revoke":
      checkLeaseNumber(command.id, "encode: lease id");
      [op, numbers] = [opLeaseRevoke, [command.id]];
      break;
    case "lease-expire":
      if (command.ids.length < 1 || command.ids.length > leaseExpireIdsMax) {
        throw new CommandCodecError(`encode: an expire carries 1 to ${leaseExpireIdsMax} lease ids, not ${command.ids.length}`);
      }
      for (const id of command.ids) checkLeaseNumber(id, "encode: lease id");
      [op, numbers] = [opLeaseExpire, [command.ids.length, ...command.ids]];
      break;
    default:
      command satisfies never;
      throw new CommandCodecError(`encode: unknown lease op ${JSON.stringify((command as { op: unknown }).op)}`);
  }
  const out = new Uint8Array(1 + numbers.reduce((sum, value) => sum + varintByteLength(value), 0));
  out[0] = op;
  let offset = 1;
  for (const value of numbers) offset = writeVarint(out, offset, value);
  return out;
}

/** Decodes entry data that `isLeaseCommandData` accepts, strictly (as `decodeCommand`); throws `CommandCodecError`. */
export function decodeLeaseCommand(data: Uint8Array): LeaseCommand {
  const op = data[0];
  let offset = 1;
  const next = (what: string): number => {
    const read = readVarint(data, offset, versionVarintBytesMax, what);
    if (!Number.isSafeInteger(read.value) || read.value < 1) throw new CommandCodecError(`decode: ${what} ${read.value} is not a positive safe integer`);
    offset = read.next;
    return read.value;
  };
  let command: LeaseCommand;
  if (op === opLeaseGrant) command = { op: "lease-grant", ttlMs: next("ttl") };
  else if (op === opLeaseRevoke) command = { op: "lease-revoke", id: next("lease id") };
  else if (op === opLeaseExpire) {
    const count = next("lease id count");
    if (count > leaseExpireIdsMax) throw new CommandCodecError(`decode: ${count} lease ids exceed ${leaseExpireIdsMax}`);
    const ids: number[] = [];
    for (let i = 0; i < count; i++) ids.push(next("lease id"));
    command = { op: "lease-expire", ids };
  } else throw new CommandCodecError(`decode: op byte 0x${(op ?? 0).toString(16).padStart(2, "0")} is not a lease command`);
  if (offset !== data.byteLength) throw new CommandCodecError(`decode: ${data.byteLength - offset} trailing bytes after a lease command`);
  return command;
}

/** Thrown when a command cannot be encoded (invalid key) or entry data does not decode. */
export class CommandCodecError extends Error {
  override name = "CommandCodecError";
}

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 throws instead of becoming U+FFFD; ignoreBOM: a key starting with U+FEFF keeps it.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** True for a leader's no-op entry, which carries no command. */
export function isNoopData(data: Uint8Array): boolean {
  return data.byteLength === 0;
}

/**
 * Encodes a command into fresh bytes. Throws `CommandCodecError` when the key holds a lone
 * surrogate (it would not round-trip through UTF-8) or is longer than `commandKeyBytesMax`.
 */
export function encodeCommand(command: Command): Uint8Array {
  // The wrappers (idempotency, then lease) are short headers before the plain command: written
  // with it into one buffer, so a large value is copied once, not once per wrapper.
  const headers: Uint8Array[] = [];
  let plain: Command = command;
  if (command.stamp !== undefined && command.idempotencyKey === undefined) throw new CommandCodecError("encode: a stamp without an idempotency key");
  if (command.idempotencyKey !== undefined) {
    const idem = utf8Encoder.encode(command.idempotencyKey);
    if (idem.byteLength === 0 || idem.byteLength > idempotencyKeyBytesMax || !command.idempotencyKey.isWellFormed()) {
      throw new CommandCodecError(`encode: idempotency key must be 1 to ${idempotencyKeyBytesMax} bytes of UTF-8`);
    }
    const { idempotencyKey: _, stamp, ...rest } = command;
    if (command.op === "txn" && command.getsBounded === true) throw new CommandCodecError("encode: an idempotent transaction is bounded by its session, not by op 0x0c");
    if (stamp === undefined && (command.op === "txn" || command.op === "delete-prefix")) {
      throw new CommandCodecError(`encode: an idempotent ${command.op === "txn" ? "transaction" : "delete-prefix"} needs a stamp`);
    }
    const numbers = stamp === undefined ? [] : [stamp.atMs, stamp.windowMs, stamp.sessionsMax];
    if (stamp !== undefined && (!numbers.every((value) => Number.isSafeInteger(value) && value >= 0) || stamp.sessionsMax < 1)) {
      throw new CommandCodecError(`encode: stamp ${JSON.stringify(stamp)} is not three whole numbers (sessionsMax at least 1)`);
    }
    const numbersBytes = numbers.reduce((sum, value) => sum + varintByteLength(value), 0);
    const header = new Uint8Array(1 + numbersBytes + varintByteLength(idem.byteLength) + idem.byteLength);
    header[0] = stamp === undefined ? opIdempotent : opIdempotentStamped;
    let offset = 1;
    for (const value of numbers) offset = writeVarint(header, offset, value);
    offset = writeVarint(header, offset, idem.byteLength);
    header.set(idem, offset);
    headers.push(header);
    plain = rest as Command;
  }
  if (plain.op === "put" && plain.lease !== undefined) {
    const { lease, ...rest } = plain;
    checkLeaseNumber(lease, "encode: lease id");
    const header = new Uint8Array(1 + varintByteLength(lease));
    header[0] = opPutOnLease;
    writeVarint(header, 1, lease);
    headers.push(header);
    plain = rest;
  }
  return encodePlain(plain, headers);
}

/** `headers`, then a command with no wrapper (a transaction, a put, a delete or a delete-prefix), in one buffer. */
function encodePlain(command: Command, headers: readonly Uint8Array[]): Uint8Array {
  const headerBytes = headers.reduce((sum, header) => sum + header.byteLength, 0);
  const start = (out: Uint8Array): number => {
    let offset = 0;
    for (const header of headers) {
      out.set(header, offset);
      offset += header.byteLength;
    }
    return offset;
  };
  if (command.op === "delete-prefix") {
    const prefixBytes = keyBytesOf(command.prefix, "prefix");
    checkDeletePrefixLimit(command.limit, "encode");
    if (!Number.isSafeInteger(command.keyBytesMax) || command.keyBytesMax < 1) throw new CommandCodecError(`encode: key bytes max ${command.keyBytesMax} is not a positive whole number`);
    const out = new Uint8Array(
      headerBytes + 1 + varintByteLength(prefixBytes.byteLength) + prefixBytes.byteLength + varintByteLength(command.limit) + varintByteLength(command.keyBytesMax),
    );
    let offset = start(out);
    out[offset] = opDeletePrefix;
    offset = writeVarint(out, offset + 1, prefixBytes.byteLength);
    out.set(prefixBytes, offset);
    offset = writeVarint(out, offset + prefixBytes.byteLength, command.limit);
    writeVarint(out, offset, command.keyBytesMax);
    return out;
  }
  if (command.op === "txn") {
    const parts = encodeTxnBody(command);
    const out = uninitializedBytes(headerBytes + 1 + parts.reduce((sum, part) => sum + part.byteLength, 0));
    let offset = start(out);
    out[offset++] = command.getsBounded === true ? opTxnGetsBounded : opTxn;
    for (const part of parts) {
      out.set(part, offset);
      offset += part.byteLength;
    }
    return out;
  }
  const keyBytes = keyBytesOf(command.key, "key");
  const valueBytes = command.op === "put" ? command.value.byteLength : 0;
  const ifVersion = command.ifVersion;
  if (ifVersion !== undefined && !(Number.isSafeInteger(ifVersion) && ifVersion >= 0)) {
    throw new CommandCodecError(`encode: ifVersion ${ifVersion} is not a version`);
  }
  const versionBytes = ifVersion === undefined ? 0 : varintByteLength(ifVersion);
  const out = uninitializedBytes(headerBytes + 1 + varintByteLength(keyBytes.byteLength) + keyBytes.byteLength + versionBytes + valueBytes);
  let offset = start(out);
  switch (command.op) {
    case "put":
      out[offset] = ifVersion === undefined ? opPut : opPutIfVersion;
      break;
    case "delete":
      out[offset] = ifVersion === undefined ? opDelete : opDeleteIfVersion;
      break;
    default:
      command satisfies never;
      throw new CommandCodecError(`encode: unknown op ${JSON.stringify((command as { op: unknown }).op)}`);
  }
  offset = writeVarint(out, offset + 1, keyBytes.byteLength);
  out.set(keyBytes, offset);
  offset += keyBytes.byteLength;
  if (ifVersion !== undefined) offset = writeVarint(out, offset, ifVersion);
  if (command.op === "put") out.set(command.value, offset);
  return out;
}

/** A key's (or a prefix's) UTF-8 bytes; `CommandCodecError` for a lone surrogate or more than `commandKeyBytesMax` bytes. */
export function keyBytesOf(key: string, what: "key" | "prefix" = "key"): Uint8Array {
  if (!key.isWellFormed()) throw new CommandCodecError(`encode: ${what} holds a lone UTF-16 surrogate`);
  const bytes = utf8Encoder.encode(key);
  if (bytes.byteLength > commandKeyBytesMax) throw new CommandCodecError(`encode: ${what} of ${bytes.byteLength} bytes exceeds ${commandKeyBytesMax}`);
  return bytes;
}

function checkDeletePrefixLimit(limit: number, what: "encode" | "decode"): void {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > deletePrefixKeysMax) {
    throw new CommandCodecError(`${what}: a delete-prefix deletes 1 to ${deletePrefixKeysMax} keys, not ${limit}`);
  }
}

/**
 * Decodes entry data into a command. A put's `value` is a view into `data` (no copy): do not
 * mutate `data` afterwards. Throws `CommandCodecError` on empty data and on any malformed input.
 */
export function decodeCommand(data: Uint8Array): Command {
  if (data.byteLength === 0) throw new CommandCodecError("decode: empty data is a no-op entry, not a command");
  if (data[0] === opIdempotent || data[0] === opIdempotentStamped) {
    let offset = 1;
    let stamp: IdempotencyStamp | undefined;
    if (data[0] === opIdempotentStamped) {
      const numbers: number[] = [];
      for (const what of ["stamp time", "session window", "sessions max"]) {
        const number = readVarint(data, offset, stampVarintBytesMax, what);
        if (!Number.isSafeInteger(number.value)) throw new CommandCodecError(`decode: ${what} ${number.value} is not a safe integer`);
        numbers.push(number.value);
        offset = number.next;
      }
      const [atMs, windowMs, sessionsMax] = numbers as [number, number, number];
      if (sessionsMax < 1) throw new CommandCodecError("decode: sessions max of 0");
      stamp = { atMs, windowMs, sessionsMax };
    }
    const { value: length, next: start } = readVarint(data, offset, keyLengthVarintBytesMax, "idempotency key length");
    if (length === 0 || length > idempotencyKeyBytesMax || start + length > data.byteLength) {
      throw new CommandCodecError(`decode: idempotency key of ${length} bytes is out of range`);
    }
    let idempotencyKey: string;
    try {
      idempotencyKey = utf8Decoder.decode(data.subarray(start, start + length));
    } catch {
      throw new CommandCodecError("decode: idempotency key is not valid UTF-8");
    }
    const inner = data.subarray(start + length);
    if (inner[0] === opIdempotent || inner[0] === opIdempotentStamped) throw new CommandCodecError("decode: nested idempotent command");
    if (inner[0] === opTxn && stamp === undefined) throw new CommandCodecError("decode: a transaction in the 0.1.0 idempotent encoding");
    if (inner[0] === opTxnGetsBounded) throw new CommandCodecError("decode: a transaction with bounded gets in an idempotent encoding");
    if (inner[0] === opDeletePrefix && stamp === undefined) throw new CommandCodecError("decode: a delete-prefix in the 0.1.0 idempotent encoding");
    return { ...decodeCommand(inner), idempotencyKey, ...(stamp === undefined ? {} : { stamp }) };
  }
  if (data[0] === opPutOnLease) {
    const lease = readVarint(data, 1, versionVarintBytesMax, "lease id");
    if (!Number.isSafeInteger(lease.value) || lease.value < 1) throw new CommandCodecError(`decode: lease id ${lease.value} is not a positive safe integer`);
    const inner = data.subarray(lease.next);
    if (inner[0] !== opPut && inner[0] !== opPutIfVersion) throw new CommandCodecError("decode: a put on a lease must wrap a put");
    return { ...(decodeCommand(inner) as PutCommand), lease: lease.value };
  }
  const op = data[0] as number;
  if (op === opTxn) return { op: "txn", ...decodeTxnBody(data, 1) };
  if (op === opTxnGetsBounded) return { op: "txn", ...decodeTxnBody(data, 1), getsBounded: true };
  if (op !== opPut && op !== opDelete && op !== opPutIfVersion && op !== opDeleteIfVersion && op !== opDeletePrefix) {
    throw new CommandCodecError(`decode: unknown op byte 0x${op.toString(16).padStart(2, "0")} in ${data.byteLength} bytes`);
  }
  if (op === opDeletePrefix) return decodeDeletePrefix(data);
  const { value: keyLength, next: keyStart } = readVarint(data, 1);
  if (keyLength > commandKeyBytesMax) {
    throw new CommandCodecError(`decode: key length ${keyLength} exceeds ${commandKeyBytesMax}`);
  }
  const keyEnd = keyStart + keyLength;
  if (keyEnd > data.byteLength) {
    throw new CommandCodecError(`decode: key of ${keyLength} bytes runs past the end of ${data.byteLength} bytes`);
  }
  let key: string;
  try {
    key = utf8Decoder.decode(data.subarray(keyStart, keyEnd));
  } catch {
    throw new CommandCodecError("decode: key is not valid UTF-8");
  }
  let valueStart = keyEnd;
  let ifVersion: number | undefined;
  if (op === opPutIfVersion || op === opDeleteIfVersion) {
    const version = readVarint(data, keyEnd, versionVarintBytesMax, "version");
    if (!Number.isSafeInteger(version.value)) throw new CommandCodecError(`decode: version ${version.value} is not a safe integer`);
    ifVersion = version.value;
    valueStart = version.next;
  }
  if (op === opPut || op === opPutIfVersion) {
    const value = data.subarray(valueStart);
    return ifVersion === undefined ? { op: "put", key, value } : { op: "put", key, value, ifVersion };
  }
  if (valueStart !== data.byteLength) {
    throw new CommandCodecError(`decode: ${data.byteLength - valueStart} trailing bytes after a delete`);
  }
  return ifVersion === undefined ? { op: "delete", key } : { op: "delete", key, ifVersion };
}

/** A delete-prefix's body after its op byte: the prefix, the limit, the key bytes' bound, and nothing after. */
function decodeDeletePrefix(data: Uint8Array): DeletePrefixCommand {
  const { value: length, next: start } = readVarint(data, 1, keyLengthVarintBytesMax, "prefix length");
  if (length > commandKeyBytesMax) throw new CommandCodecError(`decode: prefix length ${length} exceeds ${commandKeyBytesMax}`);
  if (start + length > data.byteLength) throw new CommandCodecError(`decode: prefix of ${length} bytes runs past the end of ${data.byteLength} bytes`);
  let prefix: string;
  try {
    prefix = utf8Decoder.decode(data.subarray(start, start + length));
  } catch {
    throw new CommandCodecError("decode: prefix is not valid UTF-8");
  }
  const limit = readVarint(data, start + length, versionVarintBytesMax, "delete-prefix limit");
  checkDeletePrefixLimit(limit.value, "decode");
  const keyBytesMax = readVarint(data, limit.next, versionVarintBytesMax, "delete-prefix key bytes");
  if (!Number.isSafeInteger(keyBytesMax.value) || keyBytesMax.value < 1) throw new CommandCodecError(`decode: key bytes max ${keyBytesMax.value} is not a positive safe integer`);
  if (keyBytesMax.next !== data.byteLength) throw new CommandCodecError(`decode: ${data.byteLength - keyBytesMax.next} trailing bytes after a delete-prefix`);
  return { op: "delete-prefix", prefix, limit: limit.value, keyBytesMax: keyBytesMax.value };
}

export { varintByteLength, writeVarint };

/** Reads a minimal unsigned LEB128 of at most `keyLengthVarintBytesMax` bytes (key lengths; membership changes reuse it, so its errors say "key length"). */
export function readVarint(
  data: Uint8Array,
  offset: number,
  bytesMax = keyLengthVarintBytesMax,
  what = "key length",
): { value: number; next: number } {
  let value = 0;
  for (let byteCount = 0; byteCount < bytesMax; byteCount++) {
    const byte = data[offset + byteCount];
    if (byte === undefined) throw new CommandCodecError(`decode: truncated ${what}`);
    value += (byte & 0x7f) * 2 ** (7 * byteCount);
    if ((byte & 0x80) === 0) {
      if (byte === 0 && byteCount > 0) throw new CommandCodecError(`decode: non-minimal ${what}`);
      return { value, next: offset + byteCount + 1 };
    }
  }
  throw new CommandCodecError(`decode: ${what} longer than ${bytesMax} bytes`);
}

// ---- Membership changes --------------------------------------------------------------------

/**
 * A membership change as a ConfChange entry carries it (thesis §4.1): the core's `ConfChange` plus
 * the addresses the rest of the cluster needs to reach the member. `peerUrl` is required for
 * `add-learner` (every member learns it from the log); `httpUrl` is optional (for redirects).
 *
 * Layout (in ConfChange entries only, so its tag byte may equal a kv op byte: 0x10 is also a transaction's):
 * ```
 * [0x10] [type: 1 add-learner, 2 promote, 3 remove] [node id: LEB128, minimal, <= 3 bytes]
 * [peer URL length: LEB128] [peer URL: UTF-8] [http URL length: LEB128] [http URL: UTF-8]
 * ```
 * A length of 0 means absent. Nothing may follow the http URL.
 */
export interface MembershipChange {
  readonly type: "add-learner" | "promote" | "remove";
  readonly nodeId: number;
  readonly peerUrl?: string;
  readonly httpUrl?: string;
}

/** Largest node id a change may name (as `kv serve --id` allows). */
export const membershipNodeIdMax = 1_000_000;
/** Longest URL, in UTF-8 bytes, a change may carry. */
export const membershipUrlBytesMax = 2_048;

const confChangeTag = 0x10;
const changeTypes = ["add-learner", "promote", "remove"] as const;

/** Encodes a membership change; throws `CommandCodecError` for a bad id or URL, or an add without a peer URL. */
export function encodeMembershipChange(change: MembershipChange): Uint8Array {
  const typeByte = changeTypes.indexOf(change.type) + 1;
  if (typeByte === 0) throw new CommandCodecError(`encode: unknown membership change ${JSON.stringify(change.type)}`);
  if (!Number.isSafeInteger(change.nodeId) || change.nodeId < 1 || change.nodeId > membershipNodeIdMax) {
    throw new CommandCodecError(`encode: node id ${change.nodeId} is not 1..${membershipNodeIdMax}`);
  }
  if (change.type === "add-learner" && (change.peerUrl === undefined || change.peerUrl === "")) {
    throw new CommandCodecError("encode: add-learner needs the member's peer URL");
  }
  const urls = [change.peerUrl ?? "", change.httpUrl ?? ""].map((url) => {
    if (!url.isWellFormed()) throw new CommandCodecError("encode: URL holds a lone UTF-16 surrogate");
    const bytes = utf8Encoder.encode(url);
    if (bytes.byteLength > membershipUrlBytesMax) throw new CommandCodecError(`encode: URL of ${bytes.byteLength} bytes exceeds ${membershipUrlBytesMax}`);
    return bytes;
  }) as [Uint8Array, Uint8Array];
  const size =
    2 + varintByteLength(change.nodeId) + urls.reduce((sum, bytes) => sum + varintByteLength(bytes.byteLength) + bytes.byteLength, 0);
  const out = new Uint8Array(size);
  out[0] = confChangeTag;
  out[1] = typeByte;
  let offset = writeVarint(out, 2, change.nodeId);
  for (const bytes of urls) {
    offset = writeVarint(out, offset, bytes.byteLength);
    out.set(bytes, offset);
    offset += bytes.byteLength;
  }
  return out;
}

/** Decodes ConfChange entry data strictly (as `decodeCommand`); throws `CommandCodecError`. */
export function decodeMembershipChange(data: Uint8Array): MembershipChange {
  if (data[0] !== confChangeTag) throw new CommandCodecError(`decode: membership change without its tag byte (${data.byteLength} bytes)`);
  const type = changeTypes[(data[1] ?? 0) - 1];
  if (type === undefined) throw new CommandCodecError(`decode: unknown membership change type ${String(data[1])}`);
  const { value: nodeId, next } = readVarint(data, 2);
  if (nodeId < 1 || nodeId > membershipNodeIdMax) throw new CommandCodecError(`decode: node id ${nodeId} is not 1..${membershipNodeIdMax}`);
  let offset = next;
  const urls: string[] = [];
  for (let position = 0; position < 2; position++) {
    const { value: length, next: start } = readVarint(data, offset);
    if (length > membershipUrlBytesMax) throw new CommandCodecError(`decode: URL length ${length} exceeds ${membershipUrlBytesMax}`);
    if (start + length > data.byteLength) throw new CommandCodecError("decode: URL runs past the end of the data");
    try {
      urls.push(utf8Decoder.decode(data.subarray(start, start + length)));
    } catch {
      throw new CommandCodecError("decode: URL is not valid UTF-8");
    }
    offset = start + length;
  }
  if (offset !== data.byteLength) throw new CommandCodecError(`decode: ${data.byteLength - offset} trailing bytes after a membership change`);
  const [peerUrl, httpUrl] = urls as [string, string];
  if (type === "add-learner" && peerUrl === "") throw new CommandCodecError("decode: add-learner without a peer URL");
  return { type, nodeId, ...(peerUrl === "" ? {} : { peerUrl }), ...(httpUrl === "" ? {} : { httpUrl }) };
}
