/**
 * Converts between the Raft core's `Message` union and the generated protobuf types.
 * Encoding asserts its input (it comes from our own core); decoding does not trust it (it comes from the
 * network): `fromProto` and `fromSendRequest` check every field and throw `TransportDecodeError`
 * rather than hand the core a message that could trip one of its assertions.
 */
import { create } from "@bufbuild/protobuf";
import {
  EntrySchema,
  EntryType as ProtoEntryType,
  RaftMessageSchema,
  SendRequestSchema,
  SendResponseSchema,
} from "../gen/kv/v1/raft_pb.ts";
import type { Entry as ProtoEntry, RaftMessage, SendRequest, SendResponse } from "../gen/kv/v1/raft_pb.ts";
import { assert, unreachable } from "../lib/assert.ts";
import { EntryType } from "../raft/types.ts";
import type { Entry, Message, NodeId, SnapshotMetadata } from "../raft/types.ts";

/** A peer sent something that is not a valid Raft message: the call is refused, nothing is delivered. */
export class TransportDecodeError extends Error {
  override name = "TransportDecodeError";
}

/** Limits on what one incoming call may carry; anything beyond them is refused as absurd. */
export interface DecodeLimits {
  /** Messages in one SendRequest. */
  readonly messagesPerRequestMax: number;
  /** Entries in one AppendRequest. */
  readonly entriesPerMessageMax: number;
  /** Length of a read context, in UTF-16 code units. */
  readonly readContextLengthMax: number;
  /** Length of the sender's advertised HTTP URL, in UTF-16 code units. */
  readonly httpUrlLengthMax: number;
}

/**
 * Defaults sized well above what the core produces: a Ready holds at most a few hundred messages
 * per peer, and an append carries about 1 MiB of entries (`defaultRaftLimits.appendBytesMax`).
 */
export const defaultDecodeLimits: DecodeLimits = {
  messagesPerRequestMax: 8_192,
  entriesPerMessageMax: 65_536,
  readContextLengthMax: 1_024,
  httpUrlLengthMax: 2_048,
};

/** Node ids travel as uint32; 0 means "none" and is never a sender or receiver. */
const nodeIdMax = 0xffff_ffff;
/** More voters (or learners) than this in a snapshot is absurd (the storage's bound on voters too). */
export const snapshotMembersMax = 64;

/** A batch decoded from one SendRequest. */
export interface DecodedSendRequest {
  readonly from: NodeId;
  /** The sender's advertised client HTTP URL; "" when it did not say. */
  readonly fromHttpUrl: string;
  /** The level of log commands the sender applies (`SendRequest.command_level`): 1 when it did not say. */
  readonly commandLevel: number;
  readonly messages: Message[];
}

/** Encodes one message from our own core. */
export function toProto(message: Message): RaftMessage {
  const header = { from: message.from, to: message.to, term: u64(message.term) };
  switch (message.type) {
    case "vote":
    case "pre-vote":
      return create(RaftMessageSchema, {
        ...header,
        body: {
          case: "vote",
          value: {
            lastLogIndex: u64(message.lastLogIndex),
            lastLogTerm: u64(message.lastLogTerm),
            preVote: message.type === "pre-vote",
            transfer: message.transfer,
            round: u64(message.round ?? 0),
          },
        },
      });
    case "vote-response":
    case "pre-vote-response":
      return create(RaftMessageSchema, {
        ...header,
        body: { case: "voteResponse", value: { granted: message.granted, preVote: message.type === "pre-vote-response", round: u64(message.round ?? 0) } },
      });
    case "timeout-now":
      return create(RaftMessageSchema, { ...header, body: { case: "timeoutNow", value: {} } });
    case "snapshot":
      return create(RaftMessageSchema, {
        ...header,
        body: {
          case: "installSnapshot",
          value: {
            index: u64(message.snapshot.index),
            term: u64(message.snapshot.term),
            voters: [...message.snapshot.voters],
            learners: [...(message.snapshot.learners ?? [])],
            imageId: message.imageId,
          },
        },
      });
    case "append":
      return create(RaftMessageSchema, {
        ...header,
        body: {
          case: "append",
          value: {
            prevLogIndex: u64(message.prevLogIndex),
            prevLogTerm: u64(message.prevLogTerm),
            entries: message.entries.map(entryToProto),
            commit: u64(message.commit),
          },
        },
      });
    case "append-response":
      return create(RaftMessageSchema, {
        ...header,
        body: {
          case: "appendResponse",
          value: {
            success: message.success,
            index: u64(message.index),
            hintIndex: u64(message.hintIndex),
            hintTerm: u64(message.hintTerm),
          },
        },
      });
    case "heartbeat":
      return create(RaftMessageSchema, {
        ...header,
        body: { case: "heartbeat", value: { commit: u64(message.commit), readContext: message.readContext } },
      });
    case "heartbeat-response":
      return create(RaftMessageSchema, {
        ...header,
        body: { case: "heartbeatResponse", value: { readContext: message.readContext } },
      });
    case "read-index":
      return create(RaftMessageSchema, { ...header, body: { case: "readIndex", value: { readContext: message.readContext } } });
    case "read-index-response":
      return create(RaftMessageSchema, {
        ...header,
        body: {
          case: "readIndexResponse",
          value: { readContext: message.readContext, index: u64(message.index), rejected: message.rejected },
        },
      });
    default:
      return unreachable(message);
  }
}

function entryToProto(entry: Entry): ProtoEntry {
  return create(EntrySchema, {
    term: u64(entry.term),
    index: u64(entry.index),
    type: entryTypeToProto(entry.type),
    data: entry.data,
  });
}

/** Our own terms and indexes are non-negative safe integers; anything else is a bug in the core. */
function u64(value: number): bigint {
  assert(Number.isSafeInteger(value) && value >= 0, `not a uint64 below 2^53: ${value}`);
  return BigInt(value);
}

function entryTypeToProto(type: EntryType): ProtoEntryType {
  switch (type) {
    case EntryType.Normal:
      return ProtoEntryType.NORMAL;
    case EntryType.ConfChange:
      return ProtoEntryType.CONF_CHANGE;
    default:
      return unreachable(type);
  }
}

/**
 * Decodes and validates one message from a peer. Throws `TransportDecodeError` when the variant is
 * missing or unknown, a number is not a non-negative safe integer, a node id is 0 or out of range,
 * a string is too long, or an append's entries are not a well-formed log suffix.
 */
export function fromProto(proto: RaftMessage, limits: DecodeLimits = defaultDecodeLimits): Message {
  const from = nodeId(proto.from, "from");
  const to = nodeId(proto.to, "to");
  if (from === to) throw new TransportDecodeError(`message from node ${from} to itself`);
  const term = count(proto.term, "term");
  const header = { from, to, term };
  const body = proto.body;
  switch (body.case) {
    case "vote": {
      const lastLogIndex = count(body.value.lastLogIndex, "vote.lastLogIndex");
      const lastLogTerm = count(body.value.lastLogTerm, "vote.lastLogTerm");
      // Terms in a log never exceed the term of the server holding it (§5.3).
      if (lastLogTerm > term) throw new TransportDecodeError(`vote.lastLogTerm ${lastLogTerm} beyond term ${term}`);
      const type = flag(body.value.preVote, "vote.preVote") ? "pre-vote" : "vote";
      const round = count(body.value.round, "vote.round");
      return { type, ...header, lastLogIndex, lastLogTerm, transfer: flag(body.value.transfer, "vote.transfer"), ...(round === 0 ? {} : { round }) };
    }
    case "voteResponse": {
      const type = flag(body.value.preVote, "voteResponse.preVote") ? "pre-vote-response" : "vote-response";
      const round = count(body.value.round, "voteResponse.round");
      return { type, ...header, granted: flag(body.value.granted, "voteResponse.granted"), ...(round === 0 ? {} : { round }) };
    }
    case "timeoutNow":
      return { type: "timeout-now", ...header };
    case "installSnapshot": {
      const snapshot = snapshotMetadataFromFields(body.value, term, "installSnapshot");
      const imageId = text(body.value.imageId, "installSnapshot.imageId", limits.readContextLengthMax);
      return { type: "snapshot", ...header, snapshot, imageId };
    }
    case "append": {
      const prevLogIndex = count(body.value.prevLogIndex, "append.prevLogIndex");
      const prevLogTerm = count(body.value.prevLogTerm, "append.prevLogTerm");
      if (prevLogTerm > term) throw new TransportDecodeError(`append.prevLogTerm ${prevLogTerm} beyond term ${term}`);
      const entries = entriesFromProto(body.value.entries, prevLogIndex, prevLogTerm, term, limits);
      const commit = count(body.value.commit, "append.commit");
      return { type: "append", ...header, prevLogIndex, prevLogTerm, entries, commit };
    }
    case "appendResponse": {
      const success = flag(body.value.success, "appendResponse.success");
      const index = count(body.value.index, "appendResponse.index");
      const hintIndex = count(body.value.hintIndex, "appendResponse.hintIndex");
      const hintTerm = count(body.value.hintTerm, "appendResponse.hintTerm");
      if (hintTerm > term) throw new TransportDecodeError(`appendResponse.hintTerm ${hintTerm} beyond term ${term}`);
      return { type: "append-response", ...header, success, index, hintIndex, hintTerm };
    }
    case "heartbeat": {
      const commit = count(body.value.commit, "heartbeat.commit");
      const readContext = text(body.value.readContext, "heartbeat.readContext", limits.readContextLengthMax);
      return { type: "heartbeat", ...header, commit, readContext };
    }
    case "heartbeatResponse": {
      const readContext = text(body.value.readContext, "heartbeatResponse.readContext", limits.readContextLengthMax);
      return { type: "heartbeat-response", ...header, readContext };
    }
    case "readIndex": {
      const readContext = text(body.value.readContext, "readIndex.readContext", limits.readContextLengthMax);
      return { type: "read-index", ...header, readContext };
    }
    case "readIndexResponse": {
      const readContext = text(body.value.readContext, "readIndexResponse.readContext", limits.readContextLengthMax);
      const index = count(body.value.index, "readIndexResponse.index");
      const rejected = flag(body.value.rejected, "readIndexResponse.rejected");
      return { type: "read-index-response", ...header, readContext, index, rejected };
    }
    case undefined:
      throw new TransportDecodeError("message has no body (unknown or missing variant)");
    default:
      // Not reachable through fromBinary, which only sets known cases; a hand-built object might.
      throw new TransportDecodeError(`unknown message variant ${JSON.stringify((body as { case: unknown }).case)}`);
  }
}

/**
 * Where a snapshot stands, from the wire: index and term below 2^53 with term at most the sender's
 * `senderTerm`, 1 to 64 distinct voters, and at most 64 distinct learners that are not voters.
 */
export function snapshotMetadataFromFields(
  fields: { index: unknown; term: unknown; voters: readonly unknown[]; learners: readonly unknown[] },
  senderTerm: number,
  what: string,
): SnapshotMetadata {
  const index = count(fields.index, `${what}.index`);
  const term = count(fields.term, `${what}.term`);
  if (term > senderTerm) throw new TransportDecodeError(`${what}.term ${term} beyond term ${senderTerm}`);
  if (!Array.isArray(fields.voters) || !Array.isArray(fields.learners)) throw new TransportDecodeError(`${what} members are not lists`);
  if (fields.voters.length === 0 || fields.voters.length > snapshotMembersMax) {
    throw new TransportDecodeError(`${what} has ${fields.voters.length} voters, expected 1 to ${snapshotMembersMax}`);
  }
  if (fields.learners.length > snapshotMembersMax) throw new TransportDecodeError(`${what} has ${fields.learners.length} learners`);
  const voters = fields.voters.map((voter) => nodeId(voter, `${what}.voters`));
  const learners = fields.learners.map((learner) => nodeId(learner, `${what}.learners`));
  const members = new Set([...voters, ...learners]);
  if (members.size !== voters.length + learners.length) throw new TransportDecodeError(`${what} names a member twice`);
  return learners.length > 0 ? { index, term, voters, learners } : { index, term, voters };
}

/**
 * The entries of an append must continue the log right after prevLogIndex, one index each, with
 * terms that never decrease and never exceed the leader's term (Log Matching, §5.3). The core
 * asserts contiguity when it appends, so a malformed batch must stop here.
 */
function entriesFromProto(
  protos: readonly ProtoEntry[],
  prevLogIndex: number,
  prevLogTerm: number,
  term: number,
  limits: DecodeLimits,
): Entry[] {
  if (protos.length > limits.entriesPerMessageMax) {
    throw new TransportDecodeError(`append carries ${protos.length} entries, more than ${limits.entriesPerMessageMax}`);
  }
  const entries: Entry[] = [];
  let previousTerm = prevLogTerm;
  for (let i = 0; i < protos.length; i++) {
    const proto = protos[i] as ProtoEntry;
    const index = count(proto.index, "entry.index");
    const entryTerm = count(proto.term, "entry.term");
    if (index !== prevLogIndex + 1 + i) {
      throw new TransportDecodeError(`entry ${i} has index ${index}, expected ${prevLogIndex + 1 + i}`);
    }
    if (entryTerm === 0 || entryTerm < previousTerm || entryTerm > term) {
      throw new TransportDecodeError(`entry ${index} has term ${entryTerm}, outside [${Math.max(previousTerm, 1)}, ${term}]`);
    }
    previousTerm = entryTerm;
    if (!(proto.data instanceof Uint8Array)) throw new TransportDecodeError(`entry ${index} has no data bytes`);
    // No copy: a view into the request body, which lives as long as its entries do (until the turn
    // that saves them is over). What keeps a value longer copies it if it would keep the whole body
    // alive (the watch history copies small values and `keptValue`s large ones: src/kv/watch-history.ts).
    entries.push({ term: entryTerm, index, type: entryTypeFromProto(proto.type, index), data: proto.data });
  }
  if (!Number.isSafeInteger(prevLogIndex + protos.length)) throw new TransportDecodeError("append runs past 2^53");
  return entries;
}

function entryTypeFromProto(type: ProtoEntryType, index: number): EntryType {
  switch (type) {
    case ProtoEntryType.NORMAL:
      return EntryType.Normal;
    case ProtoEntryType.CONF_CHANGE:
      return EntryType.ConfChange;
    case ProtoEntryType.UNSPECIFIED:
      throw new TransportDecodeError(`entry ${index} has no type`);
    default:
      // Open enums decode unknown numbers as they are; a newer peer may send types we lack.
      throw new TransportDecodeError(`entry ${index} has unknown type ${String(type)}`);
  }
}

/** Encodes the batch of messages this server sends to one peer in one call. */
export function toSendRequest(from: NodeId, fromHttpUrl: string, messages: readonly Message[], commandLevel = 0): SendRequest {
  return create(SendRequestSchema, { from, fromHttpUrl, messages: messages.map(toProto), commandLevel });
}

/**
 * Decodes and validates a whole call: the sender's id and URL, and every message, each of which
 * must come from the sender. One bad message refuses the whole call.
 */
export function fromSendRequest(request: SendRequest, limits: DecodeLimits = defaultDecodeLimits): DecodedSendRequest {
  const from = nodeId(request.from, "request.from");
  const fromHttpUrl = httpUrl(request.fromHttpUrl, limits.httpUrlLengthMax);
  return { from, fromHttpUrl, commandLevel: statedCommandLevel(request.commandLevel), messages: messagesFrom(request.messages, from, "request", limits) };
}

/** Encodes the messages this server answers a peer's call with, (when given) its own client URL, and its command level. */
export function toSendResponse(messages: readonly Message[], selfHttpUrl?: string, commandLevel = 0): SendResponse {
  return create(SendResponseSchema, { messages: messages.map(toProto), ...(selfHttpUrl === undefined ? {} : { fromHttpUrl: selfHttpUrl }), commandLevel });
}

/**
 * A peer's command level as a call or an answer states it: the field is left out by releases before
 * 0.9.0 (and by anything that does not say), which apply level 1.
 */
export function statedCommandLevel(value: unknown): number {
  return typeof value === "number" && Number.isInteger(value) && value >= 1 ? value : 1;
}

/** The client URL an answer names (empty when the peer gave none); `TransportDecodeError` when it is not one. */
export function sendResponseHttpUrl(response: SendResponse, limits: DecodeLimits = defaultDecodeLimits): string {
  // An answer built without the field (an in-memory or older peer) names none.
  const value: unknown = response.fromHttpUrl;
  return value === undefined ? "" : httpUrl(value, limits.httpUrlLengthMax, "response.fromHttpUrl");
}

/**
 * Decodes and validates the answer to a call we made to node `peer`: every message must come from
 * `peer` and be addressed to `selfId`. One bad message refuses the whole answer.
 */
export function fromSendResponse(response: SendResponse, peer: NodeId, selfId: NodeId, limits: DecodeLimits = defaultDecodeLimits): Message[] {
  const messages = messagesFrom(response.messages, peer, "response", limits);
  for (const message of messages) {
    if (message.to !== selfId) throw new TransportDecodeError(`answer from node ${peer} carries a message to node ${message.to}, not to ${selfId}`);
  }
  return messages;
}

/** Decodes a call's or an answer's messages, each of which must come from `from`. */
function messagesFrom(protos: unknown, from: NodeId, what: "request" | "response", limits: DecodeLimits): Message[] {
  if (!Array.isArray(protos)) throw new TransportDecodeError(`${what}.messages is not a list`);
  if (protos.length > limits.messagesPerRequestMax) {
    throw new TransportDecodeError(`${what} carries ${protos.length} messages, more than ${limits.messagesPerRequestMax}`);
  }
  const messages: Message[] = [];
  for (const proto of protos as RaftMessage[]) {
    const message = fromProto(proto, limits);
    if (message.from !== from) throw new TransportDecodeError(`message from node ${message.from} in a ${what === "request" ? "call" : "answer"} from node ${from}`);
    messages.push(message);
  }
  return messages;
}

const safeIntegerMax = BigInt(Number.MAX_SAFE_INTEGER);

/** A term or index: uint64 on the wire, kept below 2^53 so that it is exact as a number. Throws `TransportDecodeError`. */
export function count(value: unknown, field: string): number {
  if (typeof value !== "bigint" || value < 0n || value > safeIntegerMax) {
    throw new TransportDecodeError(`${field} is ${describe(value)}, not a non-negative integer below 2^53`);
  }
  return Number(value);
}

/** A node id from the wire: uint32, never 0. Throws `TransportDecodeError`. */
export function nodeId(value: unknown, field: string): NodeId {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > nodeIdMax) {
    throw new TransportDecodeError(`${field} is ${describe(value)}, not a node id in [1, ${nodeIdMax}]`);
  }
  return value;
}

/** A boolean from the wire. Throws `TransportDecodeError`. */
export function flag(value: unknown, field: string): boolean {
  if (typeof value !== "boolean") throw new TransportDecodeError(`${field} is ${describe(value)}, not a boolean`);
  return value;
}

/** A string from the wire of at most `lengthMax` UTF-16 code units. Throws `TransportDecodeError`. */
export function text(value: unknown, field: string, lengthMax: number): string {
  if (typeof value !== "string") throw new TransportDecodeError(`${field} is ${describe(value)}, not a string`);
  if (value.length > lengthMax) throw new TransportDecodeError(`${field} is ${value.length} long, more than ${lengthMax}`);
  return value;
}

/** The sender's advertised URL: empty, or an absolute http(s) URL. */
function httpUrl(value: unknown, lengthMax: number, field = "request.fromHttpUrl"): string {
  const url = text(value, field, lengthMax);
  if (url === "") return url;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TransportDecodeError(`${field} ${JSON.stringify(url)} is not a URL`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TransportDecodeError(`${field} ${JSON.stringify(url)} is not an http(s) URL`);
  }
  return url;
}

function describe(value: unknown): string {
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value.slice(0, 64));
  return typeof value;
}
