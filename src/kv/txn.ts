/**
 * Multi-key transactions (`POST /txn`, etcd's Txn): a list of comparisons and two lists of
 * operations. One Raft entry carries the whole transaction (op byte 0x10, see command.ts); every
 * replica evaluates the comparisons against its state machine when it applies the entry, then runs
 * the `success` operations if all of them hold and the `failure` operations otherwise, in order, all
 * at the entry's index. The verdict depends only on the state machine and the entry, so every
 * replica reaches the same one.
 *
 * Body layout after the 0x10 op byte (every number an unsigned LEB128, minimal):
 * ```
 * [compare count] compare... [success count] op... [failure count] op...
 * compare: [target: 1 version, 2 value, 3 exists, 4 absent, 5 version by operator, 6 value by operator] [key length] [key: UTF-8]
 *          version: [version, at most 8 bytes] | value: [value length, at most 4 bytes] [value] | exists, absent: nothing
 *          by operator (0.9.0): [operator: 1 !=, 2 <, 3 >] then as version or value
 * op:      [kind: 1 put, 2 delete, 3 get, 4 put on a lease] [key length] [key: UTF-8]
 *          put: [value length, at most 4 bytes] [value] | delete, get: nothing
 *          put on a lease: [lease id, at most 8 bytes] [value length, at most 4 bytes] [value]
 * ```
 * Each count is at most `txnOperationsMax`, and so is their sum; nothing may follow the last op.
 *
 * Kind 4 came after 0.3.0, whose decoder knew kinds 1-3 and refuses any other with a
 * `CommandCodecError` (see `txnOpKindsOf030`; test/txn-apply.test.ts proves it), which stops its
 * apply loudly instead of misreading the entry. A put without a lease is still kind 1, so a
 * transaction without leases is encoded byte for byte as 0.3.0 wrote it, and every entry 0.3.0 wrote
 * (test/fixtures/v0.3.0) decodes as it did there. A new kind inside the body, rather than a new op
 * byte for the whole entry, keeps the idempotent wrapper (0x06) and every caller of op 0x10 as they
 * are. Leases in transactions need every node upgraded first: a 0.3.0 follower stops at such an entry.
 *
 * Comparisons by operator (targets 5 and 6) came with 0.9.0, whose elders refuse an unknown target
 * the same way: a leader proposes a transaction holding one only once every member said it applies
 * `COMMAND_LEVEL` 2 (`txnCommandLevel`, src/node/cluster-level.ts). A comparison for equality is
 * still written as targets 1 and 2, as every release wrote it.
 */
import { assert, unreachable } from "../lib/assert.ts";
import { KvError } from "../lib/kv-error.ts";
import type { KvTable } from "./apply-plan.ts";
import { CommandCodecError, commandKeyBytesMax, isReservedKey, keyBytesOf, readVarint, varintByteLength, writeVarint } from "./command.ts";

/** Comparisons and operations a transaction may hold, all lists together. */
export const txnOperationsMax = 128;

/** A value's length in the txn encoding takes at most 4 LEB128 bytes: values below 256 MiB. */
const valueLengthVarintBytesMax = 4;
/** Versions and lease ids are Raft indexes: below 2^53, so at most 8 LEB128 bytes. */
const versionVarintBytesMax = 8;

/**
 * How a comparison compares (etcd's `Compare.result`): the key's version or value against the one
 * given. Absent, `=`.
 */
export type TxnCompareOp = "=" | "!=" | "<" | ">";

/** A condition on one key, evaluated against the state before any operation of the transaction. */
export type TxnCompare =
  /** The key's version (0: the key is absent) is this, or stands to it as `op` says. */
  | { readonly key: string; readonly target: "version"; readonly version: number; readonly op?: TxnCompareOp }
  /**
   * The key is present and holds exactly these bytes, or bytes that stand to them as `op` says
   * (byte by byte, a shorter prefix first, as etcd compares): an absent key fails every value comparison, as etcd's.
   */
  | { readonly key: string; readonly target: "value"; readonly value: Uint8Array; readonly op?: TxnCompareOp }
  /** The key is present (`exists: true`) or absent (`exists: false`). */
  | { readonly key: string; readonly target: "exists"; readonly exists: boolean };

/** One operation of a branch; they run in order, a get seeing the writes before it. */
export type TxnOp =
  /** `lease`: attach the key to this lease (its id) when the branch runs; a put without one detaches the key from any. */
  | { readonly op: "put"; readonly key: string; readonly value: Uint8Array; readonly lease?: number }
  | { readonly op: "delete"; readonly key: string }
  | { readonly op: "get"; readonly key: string };

/** A transaction as a client sends it (without its idempotency key). */
export interface TxnRequest {
  readonly compare: readonly TxnCompare[];
  readonly success: readonly TxnOp[];
  readonly failure: readonly TxnOp[];
}

/** What one operation did, in the order of the branch taken. */
export type TxnOpResult =
  | { readonly op: "get"; readonly key: string; readonly found: true; readonly value: Uint8Array; readonly version: number }
  | { readonly op: "get"; readonly key: string; readonly found: false }
  | { readonly op: "put"; readonly key: string; readonly version: number }
  | { readonly op: "delete"; readonly key: string; readonly deleted: boolean };

/** A transaction's answer: which branch ran, at which version (the entry's index), and what each of its operations did. */
export interface TxnAnswer {
  readonly succeeded: boolean;
  readonly version: number;
  readonly results: readonly TxnOpResult[];
}

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const compareTargets = ["version", "value", "exists", "absent", "version-op", "value-op"] as const;
/** How many comparison targets releases before 0.9.0 knew (version, value, exists, absent). */
export const txnCompareTargetsOf080 = 4;
/** Operators by tag (tag = position + 1); `=` has none: it is written as the plain targets. */
const compareOps = ["!=", "<", ">"] as const;

/** The level of log commands a transaction needs (src/kv/command.ts `COMMAND_LEVEL`): 2 with a comparison by operator, else 1. */
export function txnCommandLevel(txn: TxnRequest): number {
  return txn.compare.some((compare) => (compare.target === "version" || compare.target === "value") && compare.op !== undefined && compare.op !== "=") ? 2 : 1;
}
/** Operation kinds by tag (tag = position + 1); "put-on-lease" is a put with its `lease`. */
const opKinds = ["put", "delete", "get", "put-on-lease"] as const;

/** How many operation kinds 0.3.0's decoder knew (put, delete, get): `decodeTxnBody` given it refuses kind 4 as 0.3.0 did. */
export const txnOpKindsOf030 = 3;

/** Every key a transaction names, in order (with repeats). */
export function txnKeys(txn: TxnRequest): string[] {
  return [...txn.compare, ...txn.success, ...txn.failure].map((item) => item.key);
}

/** Whether either branch of `txn` puts or deletes: one that does neither is a read (KvNode.txn serves it without an entry). */
export function txnWrites(txn: TxnRequest): boolean {
  return [...txn.success, ...txn.failure].some((op) => op.op !== "get");
}

/** True when either branch gets a key. */
export function txnGets(txn: TxnRequest): boolean {
  return [...txn.success, ...txn.failure].some((op) => op.op === "get");
}

/** True when either branch may put: a put is refused past the quota. */
export function txnPuts(txn: TxnRequest): boolean {
  return [...txn.success, ...txn.failure].some((op) => op.op === "put");
}

/**
 * Checks what the codec and the watch history need of a transaction, as `bad_request`: at most
 * `txnOperationsMax` comparisons and operations, no key under the session prefix, and no key
 * written (put or delete) twice in one branch (a watcher would see two changes to it at one version).
 */
export function checkTxnRequest(txn: TxnRequest): void {
  const count = txn.compare.length + txn.success.length + txn.failure.length;
  if (count > txnOperationsMax) {
    throw new KvError("bad_request", `a transaction holds at most ${txnOperationsMax} comparisons and operations in all, not ${count}`);
  }
  for (const key of txnKeys(txn)) {
    if (key === "" || !key.isWellFormed()) throw new KvError("bad_request", "a key in a transaction must be a non-empty string of UTF-8 (no lone surrogate)");
    if (isReservedKey(key)) throw new KvError("bad_request", "keys starting with NUL + 'session/' or NUL + 'lease/' are reserved");
  }
  for (const [name, branch] of [["success", txn.success], ["failure", txn.failure]] as const) {
    const written = new Set<string>();
    for (const op of branch) {
      if (op.op === "put" && op.lease !== undefined && !(Number.isSafeInteger(op.lease) && op.lease >= 1)) {
        throw new KvError("bad_request", `a lease id is a positive whole number, got ${op.lease} in '${name}'`);
      }
      if (op.op === "get") continue;
      if (written.has(op.key)) throw new KvError("bad_request", `'${name}' writes the key ${JSON.stringify(op.key)} more than once`);
      written.add(op.key);
    }
  }
}

// ---- Codec (called by command.ts for op byte 0x10) ------------------------------------------

function checkValueLength(value: Uint8Array): void {
  if (value.byteLength >= 2 ** (7 * valueLengthVarintBytesMax)) throw new CommandCodecError(`encode: value of ${value.byteLength} bytes is too long for a transaction`);
}

/** The transaction's body as `encodeCommand` writes it after the op byte. */
export function encodeTxnBody(txn: TxnRequest): Uint8Array[] {
  const count = txn.compare.length + txn.success.length + txn.failure.length;
  if (count > txnOperationsMax) throw new CommandCodecError(`encode: ${count} comparisons and operations exceed ${txnOperationsMax}`);
  const parts: Uint8Array[] = [];
  const number = (value: number) => {
    const out = new Uint8Array(varintByteLength(value));
    writeVarint(out, 0, value);
    parts.push(out);
  };
  const keyed = (tag: number, key: string) => {
    parts.push(Uint8Array.of(tag));
    const bytes = keyBytesOf(key);
    number(bytes.byteLength);
    parts.push(bytes);
  };
  // A comparison for equality keeps its plain target; by another operator, its target then the operator's tag.
  const operated = (plainTag: number, opTag: number, key: string, op: TxnCompareOp | undefined) => {
    const operator = compareOpTag(op);
    keyed(operator === 0 ? plainTag : opTag, key);
    if (operator !== 0) parts.push(Uint8Array.of(operator));
  };
  number(txn.compare.length);
  for (const compare of txn.compare) {
    switch (compare.target) {
      case "version":
        if (!Number.isSafeInteger(compare.version) || compare.version < 0) throw new CommandCodecError(`encode: version ${compare.version} is not a version`);
        operated(1, 5, compare.key, compare.op);
        number(compare.version);
        break;
      case "value":
        checkValueLength(compare.value);
        operated(2, 6, compare.key, compare.op);
        number(compare.value.byteLength);
        parts.push(compare.value);
        break;
      case "exists":
        keyed(compare.exists ? 3 : 4, compare.key);
        break;
      default:
        unreachable(compare, "encode: unknown comparison");
    }
  }
  for (const branch of [txn.success, txn.failure]) {
    number(branch.length);
    for (const op of branch) {
      const onLease = op.op === "put" && op.lease !== undefined;
      keyed(opKinds.indexOf(onLease ? "put-on-lease" : op.op) + 1, op.key);
      if (op.op === "put") {
        if (op.lease !== undefined) {
          if (!Number.isSafeInteger(op.lease) || op.lease < 1) throw new CommandCodecError(`encode: lease id ${op.lease} is not a positive whole number`);
          number(op.lease);
        }
        checkValueLength(op.value);
        number(op.value.byteLength);
        parts.push(op.value);
      }
    }
  }
  return parts;
}

/** A comparison's operator tag: 0 for `=` (written as the plain targets), else its position in `compareOps` + 1. */
function compareOpTag(op: TxnCompareOp | undefined): number {
  if (op === undefined || op === "=") return 0;
  const tag = compareOps.indexOf(op) + 1;
  if (tag === 0) throw new CommandCodecError(`encode: unknown comparison operator ${JSON.stringify(op)}`);
  return tag;
}

/**
 * Decodes a transaction's body starting at `offset` (just after the op byte) to the end of `data`,
 * strictly: a bad tag, a count past the limit, a non-minimal or overlong varint, a truncated key or
 * value, invalid UTF-8, a lease id of 0 and trailing bytes all throw `CommandCodecError`. Values are
 * views into `data`. `opKindsKnown` is for tests only: `txnOpKindsOf030` decodes as 0.3.0 did.
 */
export function decodeTxnBody(data: Uint8Array, offset: number, opKindsKnown: number = opKinds.length, compareTargetsKnown: number = compareTargets.length): TxnRequest {
  assert(opKindsKnown >= txnOpKindsOf030 && opKindsKnown <= opKinds.length, `decode: ${opKindsKnown} operation kinds known`);
  assert(compareTargetsKnown >= txnCompareTargetsOf080 && compareTargetsKnown <= compareTargets.length, `decode: ${compareTargetsKnown} comparison targets known`);
  let position = offset;
  let total = 0;
  const count = (what: string): number => {
    const { value, next } = readVarint(data, position, 2, `${what} count`);
    total += value;
    if (total > txnOperationsMax) throw new CommandCodecError(`decode: more than ${txnOperationsMax} comparisons and operations`);
    position = next;
    return value;
  };
  const key = (): string => {
    const { value: length, next } = readVarint(data, position);
    if (length > commandKeyBytesMax || next + length > data.byteLength) throw new CommandCodecError(`decode: key of ${length} bytes runs past the end of ${data.byteLength} bytes`);
    position = next + length;
    try {
      return utf8Decoder.decode(data.subarray(next, position));
    } catch {
      throw new CommandCodecError("decode: key is not valid UTF-8");
    }
  };
  const value = (): Uint8Array => {
    const { value: length, next } = readVarint(data, position, valueLengthVarintBytesMax, "value length");
    if (next + length > data.byteLength) throw new CommandCodecError(`decode: value of ${length} bytes runs past the end of ${data.byteLength} bytes`);
    position = next + length;
    return data.subarray(next, position);
  };
  const tag = (what: string, max: number): number => {
    const byte = data[position];
    if (byte === undefined) throw new CommandCodecError(`decode: truncated ${what}`);
    if (byte < 1 || byte > max) throw new CommandCodecError(`decode: unknown ${what} 0x${byte.toString(16).padStart(2, "0")}`);
    position++;
    return byte;
  };
  const compare: TxnCompare[] = [];
  for (let i = count("compare"); i > 0; i--) {
    const target = compareTargets[tag("comparison", compareTargetsKnown) - 1] as (typeof compareTargets)[number];
    const k = key();
    switch (target) {
      case "version":
      case "version-op": {
        const op = target === "version-op" ? (compareOps[tag("comparison operator", compareOps.length) - 1] as TxnCompareOp) : undefined;
        const version = readVarint(data, position, versionVarintBytesMax, "version");
        if (!Number.isSafeInteger(version.value)) throw new CommandCodecError(`decode: version ${version.value} is not a safe integer`);
        position = version.next;
        compare.push({ key: k, target: "version", version: version.value, ...(op === undefined ? {} : { op }) });
        break;
      }
      case "value":
      case "value-op": {
        const op = target === "value-op" ? (compareOps[tag("comparison operator", compareOps.length) - 1] as TxnCompareOp) : undefined;
        compare.push({ key: k, target: "value", value: value(), ...(op === undefined ? {} : { op }) });
        break;
      }
      case "exists":
      case "absent":
        compare.push({ key: k, target: "exists", exists: target === "exists" });
        break;
      default:
        unreachable(target, "decode: comparison");
    }
  }
  const branches: TxnOp[][] = [];
  for (const name of ["success", "failure"]) {
    const ops: TxnOp[] = [];
    for (let i = count(name); i > 0; i--) {
      const kind = opKinds[tag("operation", opKindsKnown) - 1] as (typeof opKinds)[number];
      const k = key();
      switch (kind) {
        case "put":
          ops.push({ op: kind, key: k, value: value() });
          break;
        case "put-on-lease": {
          const lease = readVarint(data, position, versionVarintBytesMax, "lease id");
          if (!Number.isSafeInteger(lease.value) || lease.value < 1) throw new CommandCodecError(`decode: lease id ${lease.value} is not a positive safe integer`);
          position = lease.next;
          ops.push({ op: "put", key: k, value: value(), lease: lease.value });
          break;
        }
        case "delete":
        case "get":
          ops.push({ op: kind, key: k });
          break;
        default:
          unreachable(kind, "decode: operation");
      }
    }
    branches.push(ops);
  }
  if (position !== data.byteLength) throw new CommandCodecError(`decode: ${data.byteLength - position} trailing bytes after a transaction`);
  const [success, failure] = branches as [TxnOp[], TxnOp[]];
  return { compare, success, failure };
}

// ---- Apply ----------------------------------------------------------------------------------

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

/** Whether `order` (negative, zero or positive: the stored against the given) satisfies `op`. */
function satisfies(order: number, op: TxnCompareOp | undefined): boolean {
  switch (op) {
    case undefined:
    case "=":
      return order === 0;
    case "!=":
      return order !== 0;
    case "<":
      return order < 0;
    case ">":
      return order > 0;
    default:
      return unreachable(op, "apply: unknown comparison operator");
  }
}

function holds(compare: TxnCompare, table: Pick<KvTable, "get">): boolean {
  const stored = table.get(compare.key);
  switch (compare.target) {
    case "version":
      return satisfies(Math.sign((stored?.version ?? 0) - compare.version), compare.op);
    case "value":
      if (stored === undefined) return false;
      if (compare.op === undefined || compare.op === "=") return sameBytes(stored.value, compare.value);
      return satisfies(Buffer.compare(Buffer.from(stored.value.buffer, stored.value.byteOffset, stored.value.byteLength), compare.value), compare.op);
    case "exists":
      return (stored !== undefined) === compare.exists;
    default:
      return unreachable(compare, "apply: unknown comparison");
  }
}

/** Whether every comparison of `txn` holds on `table` (so its `success` branch runs). */
export function txnSucceeds(txn: TxnRequest, table: Pick<KvTable, "get">): boolean {
  return txn.compare.every((compare) => holds(compare, table));
}

/** What a get of a transaction answers. */
type TxnGetResult = Extract<TxnOpResult, { op: "get" }>;

/**
 * A transaction looked at once, before it changes anything: the branch it takes, what its gets
 * return, and whether it may apply. `applyTxn` then only writes.
 */
export interface TxnEvaluation {
  readonly succeeded: boolean;
  /** The branch taken. */
  readonly ops: readonly TxnOp[];
  /** Bytes of values the branch's gets return in all. */
  readonly getBytes: number;
  /**
   * The gets' answers, in the branch's order (each sees the puts and deletes before it); undefined
   * when `getBytes` is over the `getBytesMax` asked for (they were not copied: it will not apply).
   */
  readonly getResults: readonly TxnGetResult[] | undefined;
  /** The first lease the branch puts on that does not exist: such a transaction applies nothing (as etcd's Txn). */
  readonly missingLease: number | undefined;
}

/**
 * Evaluates `txn` at `index` on `table` without changing it: its comparisons once, against the
 * state before it, then its branch's gets (a get sees the puts and deletes before it in the branch:
 * a put's value at `index`, or nothing) and leases (`leaseExists`). With `getBytesMax`, the gets'
 * values are copied only while their total stays within it (an idempotent transaction's session
 * keeps them; past the bound it is refused, and only the total is counted). Deterministic: it reads
 * only the table and the request.
 */
export function evaluateTxn(txn: TxnRequest, index: number, table: Pick<KvTable, "get">, leaseExists: (id: number) => boolean, getBytesMax = Number.POSITIVE_INFINITY): TxnEvaluation {
  const succeeded = txnSucceeds(txn, table);
  const ops = succeeded ? txn.success : txn.failure;
  const written = new Map<string, Uint8Array | undefined>(); // key -> its value in the branch so far; undefined: deleted
  const getResults: TxnGetResult[] = [];
  let getBytes = 0;
  let missingLease: number | undefined;
  for (const op of ops) {
    switch (op.op) {
      case "put":
        written.set(op.key, op.value);
        if (op.lease !== undefined && missingLease === undefined && !leaseExists(op.lease)) missingLease = op.lease;
        break;
      case "delete":
        written.set(op.key, undefined);
        break;
      case "get": {
        const inBranch = written.has(op.key);
        const stored = inBranch ? undefined : table.get(op.key);
        const value = inBranch ? written.get(op.key) : stored?.value;
        getBytes += value?.byteLength ?? 0;
        if (getBytes > getBytesMax) break; // refused: nothing more to copy
        // A copy: the table's bytes may be a view the storage reuses.
        if (value === undefined) getResults.push({ op: "get", key: op.key, found: false });
        else getResults.push({ op: "get", key: op.key, found: true, value: value.slice(), version: stored === undefined ? index : stored.version });
        break;
      }
      default:
        unreachable(op, "apply: unknown transaction operation");
    }
  }
  return { succeeded, ops, getBytes, getResults: getBytes > getBytesMax ? undefined : getResults, missingLease };
}

/** What a transaction's writes do to lease attachments (src/kv/leases.ts), before each write to the table. */
export interface TxnLeaseHooks {
  /** A put on lease `id` (which exists): attach `key` to it at `index`. */
  attach(key: string, id: number, index: number): void;
  /** A put without a lease, or a delete: detach `key` from any lease. */
  detach(key: string): void;
}

/**
 * Runs a transaction at `index` on `table`, as `evaluateTxn` found it at the same index on the same
 * table (which nothing changed since): the branch's writes in order, telling `leases` of each first,
 * and the gets' answers as evaluated. The caller has made sure it may apply (every lease exists,
 * the gets were copied). Deterministic: it reads only the table and the request.
 */
export function applyTxn(evaluation: TxnEvaluation, index: number, table: KvTable, leases: TxnLeaseHooks): TxnAnswer {
  const getResults = evaluation.getResults;
  assert(getResults !== undefined && evaluation.missingLease === undefined, "apply: a transaction applied that may not apply");
  let gets = 0;
  const results: TxnOpResult[] = [];
  for (const op of evaluation.ops) {
    switch (op.op) {
      case "get":
        results.push(getResults[gets++] as TxnGetResult);
        break;
      case "put":
        if (op.lease === undefined) leases.detach(op.key);
        else leases.attach(op.key, op.lease, index);
        table.put(op.key, op.value, index);
        results.push({ op: "put", key: op.key, version: index });
        break;
      case "delete":
        leases.detach(op.key);
        results.push({ op: "delete", key: op.key, deleted: table.delete(op.key) });
        break;
      default:
        unreachable(op, "apply: unknown transaction operation");
    }
  }
  assert(gets === getResults.length, `apply: ${getResults.length} gets evaluated, ${gets} answered`);
  return { succeeded: evaluation.succeeded, version: index, results };
}

/**
 * Bytes of values an idempotent transaction's gets may return in all: its session keeps them (they
 * are its first answer), and a session is one row of the kv table, which snapshots carry whole.
 */
export const txnSessionGetBytesMax = 4 * 1024 * 1024;

/** The ops of the branch `answer` took, paired with their results (for the watch history). */
export function takenOps(txn: TxnRequest, answer: TxnAnswer): { op: TxnOp; result: TxnOpResult }[] {
  const ops = answer.succeeded ? txn.success : txn.failure;
  assert(ops.length === answer.results.length, `txn: ${answer.results.length} results for ${ops.length} operations`);
  return ops.map((op, i) => ({ op, result: answer.results[i] as TxnOpResult }));
}

// ---- Sessions: an idempotent transaction's answer, as kept in its session row --------------

/** A result as stored in a session (JSON): values as base64. */
type StoredOpResult =
  | { readonly op: "get"; readonly key: string; readonly found: true; readonly value: string; readonly version: number }
  | { readonly op: "get"; readonly key: string; readonly found: false }
  | { readonly op: "put"; readonly key: string; readonly version: number }
  | { readonly op: "delete"; readonly key: string; readonly deleted: boolean };

/** The fields a session row keeps for a transaction besides its kind and version. */
export interface TxnSessionFields {
  readonly succeeded: boolean;
  readonly results: readonly StoredOpResult[];
}

/** What a session keeps of a transaction's answer (get values included, so a retry gets them again). */
export function txnSessionFields(answer: TxnAnswer): TxnSessionFields {
  return {
    succeeded: answer.succeeded,
    results: answer.results.map((result) =>
      result.op === "get" && result.found ? { ...result, value: Buffer.from(result.value).toString("base64") } : result,
    ),
  };
}

/** The answer a session kept, for a retry. */
export function txnAnswerOfSession(fields: Partial<TxnSessionFields>, version: number): TxnAnswer {
  assert(typeof fields.succeeded === "boolean" && Array.isArray(fields.results), "transaction session row invalid");
  return {
    succeeded: fields.succeeded,
    version,
    results: fields.results.map((result) =>
      result.op === "get" && result.found ? { ...result, value: new Uint8Array(Buffer.from(result.value, "base64")) } : result,
    ),
  };
}
