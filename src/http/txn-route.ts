/**
 * `POST /txn`: a multi-key transaction as JSON (etcd's Txn), applied atomically at one version (one
 * of gets alone is a linearizable read of one state, no entry: KvNode.txn).
 *
 * Request: `{"compare": [...], "success": [...], "failure": [...]}` (each list optional, empty by default):
 * - a comparison is `{"key", "version": N}` (0: the key is absent), `{"key", "value": V}` or
 *   `{"key", "exists": false|true}`; a version or value comparison may name `"op"`: `"="` (the
 *   default), `"!="`, `"<"` or `">"` (values byte by byte; an absent key fails every value
 *   comparison, as etcd's; any but `=` needs every member on 0.9.0, else 409 upgrade_required);
 * - an operation is `{"put": {"key", "value"[, "lease"]}}`, `{"delete": {"key"}}` or `{"get": {"key"}}`;
 *   `lease` (a decimal string or a JSON number) attaches the key to the lease when the branch runs.
 * A value is a string (its UTF-8 bytes) or `{"base64": "..."}` for any bytes. Answer:
 * `{"succeeded", "version", "results"}`, one result per operation of the branch taken, shaped like
 * it: `{"put": {"key", "version"}}`, `{"delete": {"key", "deleted"}}`, `{"get": {"key", "found",
 * "value", "version"}}` (value and version only when found; a value that is not UTF-8 comes as
 * `{"base64": ...}`, as in listings).
 *
 * Limits, with nothing applied: at most `txnOperationsMax` (128) comparisons and operations in all,
 * a key written twice in one branch, a reserved key, malformed JSON or an unknown field are 400; a
 * body over `txnBodyBytesMax`, a key over `keyBytesMax` or a value over `valueBytesMax` are 413.
 * Gets that would return more than 4 MiB in either branch (by the values' sizes when it arrives)
 * are a 413 before it is proposed (KvNode.txn). `Idempotency-Key` works as for PUT and DELETE (its
 * session keeps the gets' values; more than 4 MiB when it applies is a 413 decided there, nothing
 * changed). A follower answers 307 to the leader, except to one of gets alone, which it serves as a
 * linearizable read (as it serves GET).
 * A lease that does not exist when the transaction applies, named in the branch taken, is 404
 * `lease_not_found` with nothing of the transaction applied.
 */
import { type TxnAnswer, type TxnCompare, type TxnCompareOp, type TxnOp, txnOperationsMax, type TxnOpResult, type TxnRequest } from "../kv/txn.ts";
import { unreachable } from "../lib/assert.ts";
import { KvError } from "../lib/kv-error.ts";
import type { KvNodeApi } from "../node/api.ts";
import { jsonResponse } from "./http-error.ts";
import { jsonObject, type JsonShapeLimits, parseJsonBody } from "./json-body.ts";
import { rawTarget } from "./raw-target.ts";
import { admitWriteBody, type BodyAdmission } from "./body-admission.ts";
import { readBodyBytesMax } from "./read-body.ts";
import { idempotencyKeyOf } from "./idempotency-key.ts";
import { refuseConditionalHeaders } from "./preconditions.ts";
import { jsonValue } from "../lib/json-value.ts";
import { KEY_BYTES_MAX_LIMIT, refuseKeyOverLimit } from "./kv-key.ts";

/** The limits a transaction's request is held to. */
export interface TxnRouteLimits {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly bodyReadTimeoutMs?: number;
  /** Where a large body waits its turn to be read (src/http/body-admission.ts); without it, none waits. */
  readonly admission?: BodyAdmission;
}

/** The largest body `POST /txn` reads: one value at the limit (even as base64) and 1 MiB for the rest. */
export function txnBodyBytesMax(valueBytesMax: number): number {
  return Math.ceil((valueBytesMax * 4) / 3) + 1024 * 1024;
}

const utf8Encoder = new TextEncoder();
/** A lease id as text: what `parseLeaseId` (lease-routes.ts) takes. */
const leaseIdPattern = /^[1-9][0-9]{0,15}$/;

/**
 * Whether `text` is standard, padded base64: whole groups of four of A-Z, a-z, 0-9, + and /, the
 * last ending in = or == at most. A loop, not a regular expression: the pattern this replaces took
 * 190 ms on the leader's loop for a 1 MiB value (its time grew faster than its input), past the
 * election timeout, so each such transaction lost the leadership (found in a black-box review).
 */
export function isPaddedBase64(text: string): boolean {
  if (text.length % 4 !== 0) return false;
  let end = text.length;
  if (end > 0 && text.charCodeAt(end - 1) === 0x3d) end -= text.charCodeAt(end - 2) === 0x3d ? 2 : 1;
  for (let at = 0; at < end; at++) {
    const code = text.charCodeAt(at);
    const letterOrDigit = (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a) || (code >= 0x30 && code <= 0x39);
    if (!letterOrDigit && code !== 0x2b && code !== 0x2f) return false;
  }
  return true;
}

/** The route's handler: parses, checks, hands the transaction to the node, renders its answer. */
export function createTxnRoute(node: KvNodeApi, limits: TxnRouteLimits): (request: Request) => Promise<Response> {
  return async (request) => {
    if (request.method !== "POST") throw new KvError("method_not_allowed", `${request.method} is not allowed on /txn`);
    const [parameter] = new URLSearchParams(rawTarget(request.url).search).keys();
    if (parameter !== undefined) throw new KvError("bad_request", `unknown query parameter '${parameter}': /txn takes none`);
    refuseConditionalHeaders(request);
    const idempotencyKey = idempotencyKeyOf(request);
    const bodyBytesMax = txnBodyBytesMax(limits.valueBytesMax);
    // As for a PUT (app.ts): a large body is redirected unread by a follower, else read when its turn comes.
    const release = await admitWriteBody(limits.admission, request, bodyBytesMax, () => node.refuseWriteUnlessLeader());
    try {
      const body = await readBodyBytesMax(request, bodyBytesMax, limits.bodyReadTimeoutMs, "the transaction's body");
      const txnRequest = parseTxnBody(body, limits);
      const txn = node.txn?.bind(node);
      if (txn === undefined) throw new KvError("not_found", "this node does not serve transactions");
      const answer = await txn(txnRequest, idempotencyKey === undefined ? {} : { idempotencyKey });
      return jsonResponse(txnAnswerJson(answer), 200);
    } finally {
      release?.();
    }
  };
}

/** The answer as JSON: each result keyed by its operation, values as text or `{"base64"}`. */
export function txnAnswerJson(answer: TxnAnswer) {
  return { succeeded: answer.succeeded, version: answer.version, results: answer.results.map(resultJson) };
}

function resultJson(result: TxnOpResult) {
  switch (result.op) {
    case "get":
      return {
        get: result.found ? { key: result.key, found: true, value: jsonValue(result.value), version: result.version } : { key: result.key, found: false },
      };
    case "put":
      return { put: { key: result.key, version: result.version } };
    case "delete":
      return { delete: { key: result.key, deleted: result.deleted } };
    default:
      return unreachable(result, "unknown transaction result");
  }
}

/**
 * The deepest valid body is 5 levels (the body, a branch, an operation, its put, a `{"base64"}`
 * value) and an operation is at most about 8 values (its objects and commas), so these leave
 * room and still refuse, before parsing, the shapes that held the loop (see `parseJsonBody`).
 */
const txnJsonShape: JsonShapeLimits = { depthMax: 8, valuesMax: 16 * txnOperationsMax };

function bad(message: string): KvError {
  return new KvError("bad_request", message);
}

/** Parses and checks a `POST /txn` body; throws `bad_request` or `too_large` (see the file comment). */
export function parseTxnBody(bytes: Uint8Array, limits: TxnRouteLimits): TxnRequest {
  const body = parseJsonBody(bytes, "the body", txnJsonShape, 'the body must be JSON: {"compare": [...], "success": [...], "failure": [...]}');
  const fields = jsonObject(body, "the body", ["compare", "success", "failure"]);
  const lists = (["compare", "success", "failure"] as const).map((name) => {
    const list = fields[name] ?? [];
    if (!Array.isArray(list)) throw bad(`'${name}' must be a list`);
    return list as unknown[];
  }) as [unknown[], unknown[], unknown[]];
  const count = lists[0].length + lists[1].length + lists[2].length;
  if (count > txnOperationsMax) throw bad(`a transaction holds at most ${txnOperationsMax} comparisons and operations in all, not ${count}`);
  const [compare, success, failure] = lists;
  return {
    compare: compare.map((item, i) => parseCompare(item, `compare[${i}]`, limits)),
    success: success.map((item, i) => parseOp(item, `success[${i}]`, limits)),
    failure: failure.map((item, i) => parseOp(item, `failure[${i}]`, limits)),
  };
}

/** A key the transaction names: held to `keyBytesMax` when it writes it, else to `KEY_BYTES_MAX_LIMIT` (see there). */
function parseKey(value: unknown, what: string, keyBytesMax: number): string {
  if (typeof value !== "string" || value === "") throw bad(`${what}.key must be a non-empty string`);
  if (!value.isWellFormed()) throw bad(`${what}.key holds a lone UTF-16 surrogate: it is not UTF-8`);
  refuseKeyOverLimit(value, keyBytesMax, `${what}.key`);
  return value;
}

function parseValue(value: unknown, what: string, limits: TxnRouteLimits): Uint8Array {
  let bytes: Uint8Array;
  if (typeof value === "string") {
    if (!value.isWellFormed()) throw bad(`${what} holds a lone UTF-16 surrogate: send bytes that are not UTF-8 as {"base64": "..."}`);
    bytes = utf8Encoder.encode(value);
  } else if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const { base64 } = jsonObject(value, what, ["base64"]);
    if (typeof base64 !== "string" || !isPaddedBase64(base64)) throw bad(`${what}.base64 must be a string of standard, padded base64`);
    bytes = new Uint8Array(Buffer.from(base64, "base64"));
  } else {
    throw bad(`${what} must be a string or {"base64": "..."}`);
  }
  if (bytes.byteLength > limits.valueBytesMax) throw new KvError("too_large", `${what} is ${bytes.byteLength} bytes; the limit is ${limits.valueBytesMax}`);
  return bytes;
}

/** A lease id in a put: a decimal string (as `?lease=ID` and the lease routes take it) or a JSON number, positive and below 2^53. */
function parseTxnLease(value: unknown, what: string): number {
  const id = typeof value === "string" && leaseIdPattern.test(value) ? Number(value) : value;
  if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 1) {
    throw bad(`${what} must be a lease id: a positive whole number below 2^53, as a decimal string or a JSON number, got ${JSON.stringify(value)?.slice(0, 32)}`);
  }
  return id;
}

const compareOps: readonly TxnCompareOp[] = ["=", "!=", "<", ">"];

function parseCompare(item: unknown, what: string, limits: TxnRouteLimits): TxnCompare {
  const fields = jsonObject(item, what, ["key", "version", "value", "exists", "op"]);
  const key = parseKey(fields.key, what, KEY_BYTES_MAX_LIMIT);
  const targets = (["version", "value", "exists"] as const).filter((name) => fields[name] !== undefined);
  if (targets.length !== 1) throw bad(`${what} needs exactly one of 'version', 'value' and 'exists'`);
  const { version, value, exists, op: opField } = fields;
  if (opField !== undefined && !compareOps.includes(opField as TxnCompareOp)) throw bad(`${what}.op must be one of "=", "!=", "<" and ">"`);
  const op = opField === undefined || opField === "=" ? {} : { op: opField as TxnCompareOp };
  switch (targets[0]) {
    case "version":
      if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 0) throw bad(`${what}.version must be a version number (0: absent)`);
      return { key, target: "version", version, ...op };
    case "value":
      return { key, target: "value", value: parseValue(value, `${what}.value`, limits), ...op };
    default:
      if (opField !== undefined) throw bad(`${what}.op compares a version or a value, not 'exists'`);
      if (typeof exists !== "boolean") throw bad(`${what}.exists must be true or false`);
      return { key, target: "exists", exists };
  }
}

function parseOp(item: unknown, what: string, limits: TxnRouteLimits): TxnOp {
  const fields = jsonObject(item, what, ["put", "delete", "get"]);
  const names = Object.keys(fields);
  if (names.length !== 1) throw bad(`${what} must be one of {"put": {...}}, {"delete": {...}} and {"get": {...}}`);
  if (fields.put !== undefined) {
    const put = jsonObject(fields.put, `${what}.put`, ["key", "value", "lease"]);
    if (put.value === undefined) throw bad(`${what}.put needs a 'value'`);
    const key = parseKey(put.key, `${what}.put`, limits.keyBytesMax);
    const value = parseValue(put.value, `${what}.put.value`, limits);
    return put.lease === undefined ? { op: "put", key, value } : { op: "put", key, value, lease: parseTxnLease(put.lease, `${what}.put.lease`) };
  }
  if (fields.delete !== undefined) return { op: "delete", key: parseKey(jsonObject(fields.delete, `${what}.delete`, ["key"]).key, `${what}.delete`, KEY_BYTES_MAX_LIMIT) };
  return { op: "get", key: parseKey(jsonObject(fields.get, `${what}.get`, ["key"]).key, `${what}.get`, KEY_BYTES_MAX_LIMIT) };
}
