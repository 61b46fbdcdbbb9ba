import { createHash } from "node:crypto";
import { assert, AssertionError, unreachable } from "../lib/assert.ts";
import { compareUtf8, prefixUpperBound } from "../lib/utf8-order.ts";
import { type Entry, EntryType } from "../raft/types.ts";
import { attachKey, detachKey, expireLeases, grantLease, leaseExists, revokeLease } from "./leases.ts";
import {
  type Command,
  CommandCodecError,
  DELETE_PREFIX_LEVEL,
  TXN_GETS_BOUNDED_LEVEL,
  decodeCommand,
  decodeLeaseCommand,
  decodeMembershipChange,
  encodeCommand,
  type IdempotencyStamp,
  isLeaseCommandData,
  isNoopData,
  leaseKeyPrefix,
  type MembershipChange,
  reservedPrefixOf,
  sessionKeyPrefix,
} from "./command.ts";
import {
  applyTxn,
  evaluateTxn,
  txnCommandLevel,
  type TxnAnswer,
  txnAnswerOfSession,
  type TxnRequest,
  txnSessionFields,
  type TxnSessionFields,
  txnSessionGetBytesMax,
} from "./txn.ts";

/** What `planApply` needs to know about the storage it plans for. */
export interface ApplyLogView {
  readonly appliedIndex: number;
  readonly commitIndex: number;
  readonly lastIndex: number;
  /** Term at `index` for 1 <= index <= lastIndex. */
  term(index: number): number;
  /**
   * The error to throw for a committed entry at `index` that does not decode (each storage throws
   * its own, naming its file: `StorageError` `bad_command`).
   */
  badCommand(message: string, index: number, cause: CommandCodecError): Error;
}

/**
 * The outcome of one entry handed to `KvStorage.applyEntries`, in the same order. `version` is the entry's
 * index. `noop` is a leader's empty entry; `skipped` an entry already applied before (its effect
 * is not reported again).
 */
export type ApplyResult =
  | { readonly kind: "put"; readonly index: number; readonly version: number }
  | { readonly kind: "delete"; readonly index: number; readonly deleted: boolean; readonly version: number }
  /**
   * A delete-prefix: `deleted` keys went, `more` says keys under the prefix are left (past its
   * limit); `deletedKeys` names them, in key order ([] when answered from its session, a retry).
   */
  | {
      readonly kind: "delete-prefix";
      readonly index: number;
      readonly version: number;
      readonly deleted: number;
      readonly more: boolean;
      readonly deletedKeys: readonly string[];
    }
  | { readonly kind: "noop"; readonly index: number }
  | { readonly kind: "skipped"; readonly index: number }
  /** A conditional put or delete whose expected version did not match: nothing changed. */
  | { readonly kind: "conflict"; readonly index: number; readonly version: number }
  /** An idempotent write whose idempotency key has a live session made by another request: nothing changed. */
  | { readonly kind: "reused"; readonly index: number }
  /** A membership change now in the recorded configuration: the driver hands it to the core. */
  | { readonly kind: "conf-change"; readonly index: number; readonly change: MembershipChange }
  /** A transaction (src/kv/txn.ts); `version` below `index` when answered from its session (a retry). */
  | ({ readonly kind: "txn"; readonly index: number } & TxnAnswer)
  /**
   * An idempotent transaction whose gets would return more than `txnSessionGetBytesMax` (`getBytes`),
   * too much for its session to keep: nothing changed, and no session was made.
   */
  | { readonly kind: "txn-too-large"; readonly index: number; readonly getBytes: number }
  /** A lease grant: `granted` false when `leasesMax` leases existed (nothing changed). The id is the index. */
  | { readonly kind: "lease-granted"; readonly index: number; readonly id: number; readonly ttlMs: number; readonly granted: boolean }
  /**
   * A put on a lease, a transaction whose branch taken puts on one (`id`: the first such lease
   * missing), or a revoke, naming a lease that does not exist (any more): nothing changed.
   */
  | { readonly kind: "lease-not-found"; readonly index: number; readonly id?: number }
  /** A revoked lease: its keys were deleted at `index`. */
  | { readonly kind: "lease-revoked"; readonly index: number; readonly id: number; readonly deletedKeys: readonly string[] }
  /** Expired leases (those of the command that still existed): their keys were deleted at `index`. */
  | { readonly kind: "lease-expired"; readonly index: number; readonly ids: readonly number[]; readonly deletedKeys: readonly string[] };

/** One step of an apply, decoded and checked; the storage executes it on its own tables. */
export type ApplyStep =
  | {
      readonly kind: "put";
      readonly index: number;
      readonly key: string;
      readonly value: Uint8Array;
      readonly ifVersion?: number;
      readonly session?: StepSession;
      /** Attach the key to this lease (absent: detach it from any). */
      readonly lease?: number;
    }
  | { readonly kind: "delete"; readonly index: number; readonly key: string; readonly ifVersion?: number; readonly session?: StepSession }
  | {
      readonly kind: "delete-prefix";
      readonly index: number;
      readonly prefix: string;
      readonly limit: number;
      readonly keyBytesMax: number;
      readonly session?: StepSession;
    }
  | {
      readonly kind: "txn";
      readonly index: number;
      readonly txn: TxnRequest;
      readonly session?: StepSession;
      /** Its gets may return at most `txnSessionGetBytesMax` (command.ts `TxnCommand.getsBounded`). */
      readonly getsBounded?: true;
    }
  | { readonly kind: "noop"; readonly index: number }
  | { readonly kind: "skipped"; readonly index: number }
  | { readonly kind: "conf-change"; readonly index: number; readonly change: MembershipChange }
  | { readonly kind: "lease-grant"; readonly index: number; readonly ttlMs: number }
  | { readonly kind: "lease-revoke"; readonly index: number; readonly id: number }
  | { readonly kind: "lease-expire"; readonly index: number; readonly ids: readonly number[] };

/** The client session an idempotent write names, as apply needs it. */
export interface StepSession {
  readonly idempotencyKey: string;
  /**
   * SHA-256 (hex) of the write's encoding without its idempotency key and stamp: its op, key,
   * ifVersion and value. A later write under the same idempotency key is a retry only if it has the
   * same fingerprint. SHA-256, not Bun.hash: it must be the same in every release and on every replica.
   */
  readonly fingerprint: string;
  /** Absent for a write in the 0.1.0 encoding. */
  readonly stamp?: IdempotencyStamp;
}

/**
 * Decodes and checks a batch of committed entries before anything is written, so a bad entry
 * aborts the whole batch and no storage is left half-applied. Shared by the sqlite storage and
 * its in-memory twin. Returns the steps, in order, and the applied index after them.
 *
 * Asserts (bugs in the driver): entries are contiguous and start at or below appliedIndex+1; every
 * entry is committed, in the persisted log, and has the term the log has at its index.
 * Throws `log.badCommand(...)` for data that does not decode (corruption or a proposer bug).
 */
export function planApply(log: ApplyLogView, entries: readonly Entry[]): { steps: ApplyStep[]; appliedIndex: number } {
  const steps: ApplyStep[] = [];
  let appliedIndex = log.appliedIndex;
  const first = entries[0];
  if (first === undefined) return { steps, appliedIndex };
  assert(first.index >= 1 && first.index <= appliedIndex + 1, `apply: entries start at ${first.index}, applied is ${appliedIndex}`);
  for (let position = 0; position < entries.length; position++) {
    const entry = entries[position] as Entry;
    assert(entry.index === first.index + position, `apply: entry ${entry.index} breaks contiguity`);
    // Invariant: applied <= commit <= lastIndex. Applying only what the local log durably holds
    // (it was saved, in an earlier transaction, before this apply) keeps it across a crash.
    assert(entry.index <= log.commitIndex, `apply: entry ${entry.index} beyond commit ${log.commitIndex}`);
    assert(entry.index <= log.lastIndex, `apply: entry ${entry.index} beyond last index ${log.lastIndex}`);
    assert(log.term(entry.index) === entry.term, `apply: entry ${entry.index} term ${entry.term} differs from the log's`);
    if (entry.index <= appliedIndex) {
      steps.push({ kind: "skipped", index: entry.index });
      continue;
    }
    steps.push(stepFor(log, entry));
    appliedIndex = entry.index;
  }
  return { steps, appliedIndex };
}

function stepFor(log: ApplyLogView, entry: Entry): ApplyStep {
  switch (entry.type) {
    case EntryType.Normal: {
      if (isNoopData(entry.data)) return { kind: "noop", index: entry.index };
      try {
        if (isLeaseCommandData(entry.data)) {
          const lease = decodeLeaseCommand(entry.data);
          switch (lease.op) {
            case "lease-grant":
              return { kind: "lease-grant", index: entry.index, ttlMs: lease.ttlMs };
            case "lease-revoke":
              return { kind: "lease-revoke", index: entry.index, id: lease.id };
            case "lease-expire":
              return { kind: "lease-expire", index: entry.index, ids: lease.ids };
            default:
              return unreachable(lease, "apply: unknown lease command");
          }
        }
        const command = decodeCommand(entry.data);
        if (command.op === "txn") {
          const { compare, success, failure } = command;
          const session = command.idempotencyKey === undefined ? {} : { session: stepSession(command, command.idempotencyKey) };
          return { kind: "txn", index: entry.index, txn: { compare, success, failure }, ...session, ...(command.getsBounded === true ? { getsBounded: true as const } : {}) };
        }
        if (command.op === "delete-prefix") {
          const session = command.idempotencyKey === undefined ? {} : { session: stepSession(command, command.idempotencyKey) };
          return { kind: "delete-prefix", index: entry.index, prefix: command.prefix, limit: command.limit, keyBytesMax: command.keyBytesMax, ...session };
        }
        const condition = {
          ...(command.ifVersion === undefined ? {} : { ifVersion: command.ifVersion }),
          ...(command.idempotencyKey === undefined ? {} : { session: stepSession(command, command.idempotencyKey) }),
        };
        return command.op === "put"
          ? { kind: "put", index: entry.index, key: command.key, value: command.value, ...condition, ...(command.lease === undefined ? {} : { lease: command.lease }) }
          : { kind: "delete", index: entry.index, key: command.key, ...condition };
      } catch (error: unknown) {
        if (!(error instanceof CommandCodecError)) throw error;
        // A newer release's command is the likely cause after a downgrade: said with the way back
        // (found in a black-box upgrade review: nothing named it).
        throw log.badCommand(
          `committed entry does not decode: ${error.message} (written by a newer release of kv? run the release the other members run on this node; a node downgraded before it applied everything stops here)`,
          entry.index,
          error,
        );
      }
    }
    case EntryType.ConfChange:
      // The key-value state is untouched; the recorded configuration changes with the applied index.
      try {
        return { kind: "conf-change", index: entry.index, change: decodeMembershipChange(entry.data) };
      } catch (error: unknown) {
        if (!(error instanceof CommandCodecError)) throw error;
        throw log.badCommand(`committed membership change does not decode: ${error.message}`, entry.index, error);
      }
    default:
      return unreachable(entry.type, "apply: unknown entry type");
  }
}

function stepSession(command: Command, idempotencyKey: string): StepSession {
  const { idempotencyKey: _, stamp, ...plain } = command;
  const fingerprint = createHash("sha256").update(encodeCommand(plain as Command)).digest("hex");
  return { idempotencyKey, fingerprint, ...(stamp === undefined ? {} : { stamp }) };
}

/**
 * Compare-and-set: a conditional put or delete whose expected version differs from the key's
 * current one (0 when absent) changes nothing and reports the current version. Every replica
 * reaches the same verdict: it depends only on the state machine.
 */
export function conditionFailure(step: ApplyStep, currentVersion: number): ApplyResult | undefined {
  if ((step.kind !== "put" && step.kind !== "delete") || step.ifVersion === undefined) return undefined;
  return step.ifVersion === currentVersion ? undefined : { kind: "conflict", index: step.index, version: currentVersion };
}

/**
 * How long a session made or matched by a write in the 0.1.0 encoding (no stamp) is remembered, in
 * log entries after the write that made it, exactly as 0.1.0 counted; it also bounds sessions that
 * 0.1.0 made (they carry no time). Stamped writes remember sessions by time instead.
 */
export const legacySessionWindowEntries = 100_000;

/**
 * The state machine's session clock, in the kv table under `sessionClockKey` (so it is replicated,
 * snapshotted and streamed in images with the sessions): `nowMs` is the latest stamp applied so far
 * (0 before any), so time never goes back whatever a new leader's clock says; `sessions` counts the
 * session rows, for the cap.
 */
interface SessionClock {
  nowMs: number;
  sessions: number;
}

/**
 * The session clock's key: the session prefix itself. No session has it (an idempotency key is at
 * least one byte), clients cannot write it and listings do not show it.
 */
export const sessionClockKey = sessionKeyPrefix;

/** A session as stored: the first answer, and (after 0.1.0) the request's fingerprint and time. */
interface SessionRecord extends Partial<TxnSessionFields> {
  readonly kind: "put" | "delete" | "conflict" | "txn";
  readonly version: number;
  readonly deleted?: boolean;
  /**
   * A delete-prefix's (kept as kind `delete`, which 0.8.0's sessions know: a 0.8.0 node that
   * installs an image holding one, or opens this data dir, goes on; its fingerprint matches none of
   * that release's requests): how many keys it deleted, and whether keys under the prefix were left.
   */
  readonly count?: number;
  readonly more?: boolean;
  /** `StepSession.fingerprint` of the first request; absent in sessions 0.1.0 made. */
  readonly fp?: string;
  /** The session clock when it was made; absent when made before any stamp (0.1.0 or a 0.1.0 leader). */
  readonly atMs?: number;
}

/** Session rows looked at per query when forgetting the oldest. */
const expiryPageRowsMax = 16;

/** One key of the kv table: its value and version (the index of the put that wrote it). */
export interface KvRow {
  readonly key: string;
  readonly value: Uint8Array;
  /** The index of the put that wrote the value. */
  readonly version: number;
}

/** The key-value table as a put or delete step sees it (each storage supplies its own). */
export interface KvTable {
  get(key: string): { value: Uint8Array; version: number } | undefined;
  put(key: string, value: Uint8Array, version: number): void;
  /** True when the key was there. */
  delete(key: string): boolean;
  /** Up to `limit` sessions (keys after `sessionKeyPrefix`, not the clock) with the lowest versions, oldest first. */
  oldestSessions(limit: number): KvRow[];
  /** Up to `limit` rows whose keys start with `prefix` and sort after `after` (UTF-8 byte order; `after` at least `prefix`), in key order. */
  range(prefix: string, after: string, limit: number): KvRow[];
  /**
   * Up to `limit` keys at or after `from` and before `end` (none: no bound), in UTF-8 byte order,
   * the state machine's own among them; their values are not read.
   */
  keysFrom(from: string, end: string | undefined, limit: number): string[];
}

/**
 * Executes one step of a plan on `table` (each storage runs its plan's steps through this, in
 * order, in one transaction): writes and lease commands change the table; the rest report only.
 */
export function executeStep(step: ApplyStep, table: KvTable): ApplyResult {
  switch (step.kind) {
    case "put":
    case "delete":
      return executeWrite(step, table);
    case "delete-prefix":
    case "txn":
      // A command of a level above 1 committed only once every member said it applies it: the
      // state machine keeps that as it applies one (see `commandLevelKey`). Replicated state: a
      // later release must never change an encoding's level, and a new kind of command above
      // level 1 must be noted here too, or replicas of two releases record different rows.
      noteCommandLevel(table, step.kind === "txn" ? Math.max(txnCommandLevel(step.txn), step.getsBounded === true ? TXN_GETS_BOUNDED_LEVEL : 1) : DELETE_PREFIX_LEVEL, step.index);
      return executeWrite(step, table);
    case "lease-grant":
      return grantLease(table, step.index, step.ttlMs);
    case "lease-revoke":
      return revokeLease(table, step.index, step.id);
    case "lease-expire":
      return expireLeases(table, step.index, step.ids);
    default:
      return resultFor(step, false);
  }
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/**
 * The highest level of commands this state machine has applied (src/kv/command.ts, `COMMAND_LEVEL`),
 * as decimal text; absent: 1. A leader proposes a command of a level above 1 only once every member
 * said it applies it (src/node/cluster-level.ts), so the level here is one the whole configuration
 * applied then: a leader that has not heard from a member since it started (one that is down) takes
 * it as that member's (found in a black-box review: a single member down held every such command
 * back, indefinitely). Under the lease prefix, as the cluster's nonce is: hidden from clients by
 * every release, and no lease row's shape (src/kv/leases.ts).
 */
export const commandLevelKey = `${leaseKeyPrefix}command-level`;

/** The level `commandLevelKey` holds in `row` (1 when absent). */
export function commandLevelOf(row: { readonly value: Uint8Array } | undefined): number {
  if (row === undefined) return 1;
  const level = Number(textDecoder.decode(row.value));
  assert(Number.isSafeInteger(level) && level >= 1, "command level row invalid");
  return level;
}

/** Raises the recorded command level to `level` at `index` (never lowers it). */
function noteCommandLevel(table: KvTable, level: number, index: number): void {
  if (level <= 1 || commandLevelOf(table.get(commandLevelKey)) >= level) return;
  table.put(commandLevelKey, textEncoder.encode(String(level)), index);
}

/** The session clock's time (`SessionClock.nowMs`) in its row as stored; 0 when there is none yet. */
export function sessionClockMsOf(row: { readonly value: Uint8Array } | undefined): number {
  return row === undefined ? 0 : parseSessionClock(row.value).nowMs;
}

function readSessionClock(table: KvTable): SessionClock {
  const row = table.get(sessionClockKey);
  return row === undefined ? { nowMs: 0, sessions: 0 } : parseSessionClock(row.value);
}

function parseSessionClock(value: Uint8Array): SessionClock {
  const clock = JSON.parse(textDecoder.decode(value)) as SessionClock;
  assert(Number.isSafeInteger(clock.nowMs) && Number.isSafeInteger(clock.sessions) && clock.sessions >= 0, "session clock row invalid");
  return { nowMs: clock.nowMs, sessions: clock.sessions };
}

function writeSessionClock(table: KvTable, clock: SessionClock, index: number): void {
  table.put(sessionClockKey, textEncoder.encode(JSON.stringify({ nowMs: clock.nowMs, sessions: clock.sessions })), index);
}

/**
 * For a state machine that holds sessions but no session clock (a data dir or an image of 0.1.0):
 * records the clock with the sessions counted and time not yet started (0), at `index`. The
 * sessions themselves stay as they are: they carry no time, and are remembered for
 * `legacySessionWindowEntries` after they were made, as 0.1.0 did. Nothing when there is a clock.
 */
export function startSessionClock(table: KvTable, sessionRows: number, index: number): void {
  if (table.get(sessionClockKey) !== undefined || sessionRows === 0) return;
  writeSessionClock(table, { nowMs: 0, sessions: sessionRows }, index);
}

/**
 * Executes a put or delete on `table`.
 *
 * An idempotent write (thesis §6.3) whose idempotency key has a live session is a retry when it is
 * the same request (same fingerprint: op, key, value, ifVersion) and answers what the first attempt
 * answered; another request under the same key gets `reused` (a write in the 0.1.0 encoding gets
 * the first answer, as there). Either way nothing changes. Otherwise
 * a conditional write whose expected version differs changes nothing and reports the current
 * version, and anything else applies. An idempotent write's answer is remembered under
 * `sessionKeyPrefix`, in the same table, so it is replicated, persisted and snapshotted with the data.
 *
 * Sessions are decided from the log alone, so every replica, whatever its batches, reaches the same
 * answer and state: a stamped write first moves the session clock to its stamp (never back), then
 * forgets sessions at least `windowMs` old by that clock, oldest first; after making a session it
 * drops the oldest beyond `sessionsMax`. A session is live for a stamped write while younger than
 * its window; for a write in the 0.1.0 encoding, and for sessions with no time (0.1.0's), while
 * made within the last `legacySessionWindowEntries` entries, as 0.1.0 decided.
 */
export function executeWrite(step: WriteStep, table: KvTable): ApplyResult {
  const session = step.session;
  if (session === undefined) return applyWrite(step, table);
  const clock = readSessionClock(table);
  const before = { ...clock };
  const stamp = session.stamp;
  if (stamp !== undefined) clock.nowMs = Math.max(clock.nowMs, stamp.atMs);
  forgetExpiredSessions(table, clock, step.index, stamp?.windowMs);
  const sessionKey = `${sessionKeyPrefix}${session.idempotencyKey}`;
  const stored = table.get(sessionKey);
  if (stored !== undefined) {
    const record = parseSession(stored.value);
    const live =
      stamp === undefined || record.atMs === undefined
        ? stored.version > step.index - legacySessionWindowEntries
        : clock.nowMs - record.atMs < stamp.windowMs;
    if (live) {
      if (clock.nowMs !== before.nowMs || clock.sessions !== before.sessions) writeSessionClock(table, clock, step.index);
      // A write in the 0.1.0 encoding gets the first answer whatever it asks, as 0.1.0 answered
      // it: only a 0.1.0 leader proposes one, and it answers its client from its own apply.
      return stamp === undefined || sameRequest(record, step, session) ? answerOf(record, step.index) : { kind: "reused", index: step.index };
    }
  }
  const result = applyWrite(step, table);
  if (result.kind === "txn-too-large" || result.kind === "lease-not-found") {
    // Nothing was written, so no session is made: a retry is decided afresh.
    if (clock.nowMs !== before.nowMs || clock.sessions !== before.sessions) writeSessionClock(table, clock, step.index);
    return result;
  }
  assert(
    result.kind === "put" || result.kind === "delete" || result.kind === "conflict" || result.kind === "txn" || result.kind === "delete-prefix",
    `write applied as ${result.kind}`,
  );
  // Time starts with the first stamp: until then (0.1.0 leaders only) sessions count in entries.
  const atMs = stamp !== undefined || clock.nowMs > 0 ? clock.nowMs : undefined;
  const record: SessionRecord = {
    kind: result.kind === "delete-prefix" ? "delete" : result.kind,
    version: result.version,
    ...(result.kind === "delete" ? { deleted: result.deleted } : {}),
    ...(result.kind === "delete-prefix" ? { count: result.deleted, more: result.more } : {}),
    ...(result.kind === "txn" ? txnSessionFields(result) : {}),
    fp: session.fingerprint,
    ...(atMs === undefined ? {} : { atMs }),
  };
  table.put(sessionKey, textEncoder.encode(JSON.stringify(record)), step.index);
  if (stored === undefined) clock.sessions++;
  if (stamp !== undefined) {
    while (clock.sessions > stamp.sessionsMax) {
      const oldest = table.oldestSessions(1)[0];
      assert(oldest !== undefined && oldest.key !== sessionKey, "session count above the sessions held");
      table.delete(oldest.key);
      clock.sessions--;
    }
  }
  writeSessionClock(table, clock, step.index);
  return result;
}

/**
 * Forgets sessions from the oldest on while they are expired at `index`: by time (`windowMs`, when
 * the write is stamped) or, for sessions with no time, by entries. Sessions are made with the
 * clock, which never goes back, and those with no time all precede the first stamp, so the
 * sessions in version order are expired up to some point and live after it.
 */
function forgetExpiredSessions(table: KvTable, clock: SessionClock, index: number, windowMs: number | undefined): void {
  for (;;) {
    const page = table.oldestSessions(expiryPageRowsMax);
    for (const row of page) {
      const record = parseSession(row.value);
      const expired =
        record.atMs === undefined ? row.version <= index - legacySessionWindowEntries : windowMs !== undefined && clock.nowMs - record.atMs >= windowMs;
      if (!expired) return;
      table.delete(row.key);
      clock.sessions--;
    }
    if (page.length < expiryPageRowsMax) return;
  }
}

function parseSession(value: Uint8Array): SessionRecord {
  const record = JSON.parse(textDecoder.decode(value)) as SessionRecord;
  assert(["put", "delete", "conflict", "txn"].includes(record.kind) && Number.isSafeInteger(record.version), "session row invalid");
  assert(record.count === undefined || (record.kind === "delete" && Number.isSafeInteger(record.count) && typeof record.more === "boolean"), "delete-prefix session row invalid");
  return record;
}

/**
 * Whether the applied state's session for an idempotency key (its row, `stored`) would still answer
 * a retry stamped at `atMs` under `windowMs`: with the first answer, or `reused` for another
 * request. Either way applying the retry changes nothing, so the leader proposes it past the
 * refusals it makes before proposing (the quota, a transaction's gets): a retry of a write that
 * crossed the quota gets its first answer, not `quota_exceeded`. Judged by the leader's clock where
 * apply uses the session clock (the latest stamp applied); should they disagree, apply decides the
 * retry as a new write, so at worst one write per such session passes the quota.
 */
export function sessionAnswersRetry(stored: { readonly value: Uint8Array } | undefined, atMs: number, windowMs: number): boolean {
  if (stored === undefined) return false;
  const record = parseSession(stored.value);
  return record.atMs !== undefined && atMs - record.atMs < windowMs;
}

/**
 * A retry is the same request as the session's first. A session 0.1.0 made has no fingerprint: any
 * request with the same op matches it (as 0.1.0 answered it; a conflict does not say its op), but
 * never a transaction (0.1.0 knew none).
 */
function sameRequest(record: SessionRecord, step: WriteStep, session: StepSession): boolean {
  if (record.fp !== undefined) return record.fp === session.fingerprint;
  return (step.kind === "put" || step.kind === "delete") && (record.kind === step.kind || record.kind === "conflict");
}

function answerOf(record: SessionRecord, index: number): ApplyResult {
  switch (record.kind) {
    case "put":
      return { kind: "put", index, version: record.version };
    case "delete":
      if (record.count !== undefined) return { kind: "delete-prefix", index, version: record.version, deleted: record.count, more: record.more === true, deletedKeys: [] };
      return { kind: "delete", index, deleted: record.deleted === true, version: record.version };
    case "conflict":
      return { kind: "conflict", index, version: record.version };
    case "txn":
      return { kind: "txn", index, ...txnAnswerOfSession(record, record.version) };
    default:
      return unreachable(record.kind, "session of an unknown kind");
  }
}

/** The steps `executeWrite` runs: those that may change the kv table as a client asked. */
export type WriteStep = Extract<ApplyStep, { kind: "put" | "delete" | "txn" | "delete-prefix" }>;

/** True for the steps `executeWrite` runs. */
export function isWriteStep(step: ApplyStep): step is WriteStep {
  return step.kind === "put" || step.kind === "delete" || step.kind === "txn" || step.kind === "delete-prefix";
}

/**
 * A delete-prefix with no session: deletes the first `limit` clients' keys under the prefix, in key
 * order, each detached from its lease (as a delete does); the state machine's own rows (sessions,
 * leases) are skipped, whatever the prefix. `more` when a client's key under it is left.
 */
function applyDeletePrefix(step: Extract<ApplyStep, { kind: "delete-prefix" }>, table: KvTable): ApplyResult {
  const deletedKeys: string[] = [];
  let keyBytes = 0;
  let more = false;
  for (const key of clientKeysUnder(table, step.prefix, step.limit + 1)) {
    // The first key always goes; then up to `limit` keys, stopping after the one that brings their
    // bytes to `keyBytesMax` (the entry carries both: every replica, of any release, stops alike).
    if (deletedKeys.length >= step.limit || keyBytes >= step.keyBytesMax) {
      more = true;
      break;
    }
    deletedKeys.push(key);
    keyBytes += Buffer.byteLength(key, "utf8");
  }
  for (const key of deletedKeys) {
    detachKey(table, key);
    const deleted = table.delete(key);
    assert(deleted, `delete-prefix: key ${JSON.stringify(key)} listed but not deleted`);
  }
  return { kind: "delete-prefix", index: step.index, version: step.index, deleted: deletedKeys.length, more, deletedKeys };
}

/** Keys read per page while looking for clients' keys under a prefix. */
const prefixKeysPageMax = 1_000;

/**
 * The keys under `prefix` that clients wrote (not the state machine's own), in key order, read
 * `pageMax` (at most `prefixKeysPageMax`) at a time as they are asked for.
 */
export function* clientKeysUnder(table: KvTable, prefix: string, pageMax: number): Generator<string, void, undefined> {
  const end = prefixUpperBound(prefix);
  const pageKeys = Math.max(1, Math.min(pageMax, prefixKeysPageMax));
  let from = prefix;
  for (;;) {
    const page = table.keysFrom(from, end, pageKeys);
    if (page.length === 0) return;
    for (const key of page) {
      if (!key.startsWith(prefix)) return;
      const reserved = reservedPrefixOf(key);
      if (reserved !== undefined) {
        // Past the state machine's rows at once: a page of them at a time would read every session.
        const past = prefixUpperBound(reserved) as string;
        if (end !== undefined && compareUtf8(past, end) >= 0) return;
        from = past;
        break;
      }
      yield key;
      from = `${key}\u0000`; // the first string after the key
    }
  }
}

/**
 * A write with no session.
 *
 * A transaction: if the branch it takes puts on a lease that does not exist, nothing of it
 * applies (`lease-not-found`, as etcd's Txn; the lease may have ended since the leader proposed
 * it); otherwise its puts attach their keys to their leases or detach them from any, and its
 * deletes detach them (as a plain put or delete does).
 *
 * Otherwise: a put on a lease that does not exist changes nothing (`lease-not-found`: it may have
 * expired since the leader proposed the put), then compare-and-set, then the put or delete, which
 * attaches the key to the put's lease or detaches it from any (see src/kv/leases.ts).
 */
function applyWrite(step: WriteStep, table: KvTable): ApplyResult {
  if (step.kind === "delete-prefix") return applyDeletePrefix(step, table);
  if (step.kind === "txn") {
    // Evaluated once: the comparisons, the gets and the leases, before anything is written. Gets
    // are bounded when a session keeps the answer, and when the leader bounded them (every replica
    // decides alike, from the entry and the state alone).
    const getBytesMax = step.session === undefined && step.getsBounded !== true ? Number.POSITIVE_INFINITY : txnSessionGetBytesMax;
    const evaluation = evaluateTxn(step.txn, step.index, table, (id) => leaseExists(table, id), getBytesMax);
    if (evaluation.getBytes > getBytesMax) return { kind: "txn-too-large", index: step.index, getBytes: evaluation.getBytes };
    if (evaluation.missingLease !== undefined) return { kind: "lease-not-found", index: step.index, id: evaluation.missingLease };
    const leases = { attach: (key: string, id: number, index: number) => attachKey(table, key, id, index), detach: (key: string) => detachKey(table, key) };
    return { kind: "txn", index: step.index, ...applyTxn(evaluation, step.index, table, leases) };
  }
  const lease = step.kind === "put" ? step.lease : undefined;
  if (lease !== undefined && !leaseExists(table, lease)) return { kind: "lease-not-found", index: step.index };
  const failure = step.ifVersion === undefined ? undefined : conditionFailure(step, table.get(step.key)?.version ?? 0);
  if (failure !== undefined) return failure;
  if (lease === undefined) detachKey(table, step.key);
  else attachKey(table, step.key, lease, step.index);
  if (step.kind === "put") {
    table.put(step.key, step.value, step.index);
    return resultFor(step, false);
  }
  return resultFor(step, table.delete(step.key));
}

export function resultFor(step: ApplyStep, deleted: boolean): ApplyResult {
  switch (step.kind) {
    case "put":
      return { kind: "put", index: step.index, version: step.index };
    case "delete":
      return { kind: "delete", index: step.index, deleted, version: step.index };
    case "noop":
      return { kind: "noop", index: step.index };
    case "skipped":
      return { kind: "skipped", index: step.index };
    case "conf-change":
      return { kind: "conf-change", index: step.index, change: step.change };
    case "delete-prefix":
    case "txn":
      // Storages run every write step through executeWrite (isWriteStep); an applied one comes as skipped.
      throw new AssertionError(`apply: a transaction at ${step.index} has no result without its table`);
    case "lease-grant":
    case "lease-revoke":
    case "lease-expire":
      // Lease steps change the table: `executeStep` runs them.
      throw new Error(`apply: a ${step.kind} step is executed, not reported (index ${step.index})`);
    default:
      return unreachable(step, "apply: unknown step");
  }
}
