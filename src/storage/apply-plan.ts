import { assert, unreachable } from "../lib/assert.ts";
import { type Entry, EntryType } from "../raft/types.ts";
import { CommandCodecError, decodeCommand, decodeMembershipChange, isNoopData, type MembershipChange, sessionKeyPrefix } from "./command.ts";
import { type ApplyResult, StorageError } from "./kv-storage.ts";

/** What `planApply` needs to know about the storage it plans for. */
export interface ApplyLogView {
  readonly file: string;
  readonly appliedIndex: number;
  readonly commitIndex: number;
  readonly lastIndex: number;
  /** Term at `index` for 1 <= index <= lastIndex. */
  term(index: number): number;
}

/** One step of an apply, decoded and checked; the storage executes it on its own tables. */
export type ApplyStep =
  | {
      readonly kind: "put";
      readonly index: number;
      readonly key: string;
      readonly value: Uint8Array;
      readonly ifVersion?: number;
      readonly idempotencyKey?: string;
    }
  | { readonly kind: "delete"; readonly index: number; readonly key: string; readonly ifVersion?: number; readonly idempotencyKey?: string }
  | { readonly kind: "noop"; readonly index: number }
  | { readonly kind: "skipped"; readonly index: number }
  | { readonly kind: "conf-change"; readonly index: number; readonly change: MembershipChange };

/**
 * Decodes and checks a batch of committed entries before anything is written, so a bad entry
 * aborts the whole batch and no storage is left half-applied. Shared by the sqlite storage and
 * its in-memory twin. Returns the steps, in order, and the applied index after them.
 *
 * Asserts (bugs in the driver): entries are contiguous and start at or below appliedIndex+1; every
 * entry is committed, in the persisted log, and has the term the log has at its index.
 * Throws `StorageError` `bad_command` for data that does not decode (corruption or a proposer bug).
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
    steps.push(stepFor(log.file, entry));
    appliedIndex = entry.index;
  }
  return { steps, appliedIndex };
}

function stepFor(file: string, entry: Entry): ApplyStep {
  switch (entry.type) {
    case EntryType.Normal: {
      if (isNoopData(entry.data)) return { kind: "noop", index: entry.index };
      try {
        const command = decodeCommand(entry.data);
        const condition = {
          ...(command.ifVersion === undefined ? {} : { ifVersion: command.ifVersion }),
          ...(command.idempotencyKey === undefined ? {} : { idempotencyKey: command.idempotencyKey }),
        };
        return command.op === "put"
          ? { kind: "put", index: entry.index, key: command.key, value: command.value, ...condition }
          : { kind: "delete", index: entry.index, key: command.key, ...condition };
      } catch (error: unknown) {
        if (!(error instanceof CommandCodecError)) throw error;
        throw new StorageError("bad_command", `committed entry does not decode: ${error.message}`, file, entry.index, {
          cause: error,
        });
      }
    }
    case EntryType.ConfChange:
      // The key-value state is untouched; the recorded configuration changes with the applied index.
      try {
        return { kind: "conf-change", index: entry.index, change: decodeMembershipChange(entry.data) };
      } catch (error: unknown) {
        if (!(error instanceof CommandCodecError)) throw error;
        throw new StorageError("bad_command", `committed membership change does not decode: ${error.message}`, file, entry.index, {
          cause: error,
        });
      }
    default:
      return unreachable(entry.type, "apply: unknown entry type");
  }
}

/** The result reported for a step, given whether a delete found its key. */
/**
 * Compare-and-set: a conditional put or delete whose expected version differs from the key's
 * current one (0 when absent) changes nothing and reports the current version. Every replica
 * reaches the same verdict: it depends only on the state machine.
 */
export function conditionFailure(step: ApplyStep, currentVersion: number): ApplyResult | undefined {
  if ((step.kind !== "put" && step.kind !== "delete") || step.ifVersion === undefined) return undefined;
  return step.ifVersion === currentVersion ? undefined : { kind: "conflict", index: step.index, version: currentVersion };
}

/** Sessions older than this many log entries are forgotten (deterministic: measured in indexes). */
export const sessionWindowEntries = 100_000;

/** The key-value table as a put or delete step sees it (each storage supplies its own). */
export interface KvTable {
  get(key: string): { value: Uint8Array; version: number } | undefined;
  put(key: string, value: Uint8Array, version: number): void;
  /** True when the key was there. */
  delete(key: string): boolean;
}

/**
 * Executes a put or delete on `table`: an idempotent retry (thesis §6.3: its idempotency key has a
 * session) changes nothing and answers what the first attempt answered; a conditional write whose
 * expected version differs changes nothing and reports the current version; otherwise it applies.
 * An idempotent write's answer is remembered under `sessionKeyPrefix`, in the same table, so it is
 * replicated, persisted and snapshotted with the data. Every replica reaches the same answer.
 */
export function executeWrite(step: Extract<ApplyStep, { kind: "put" | "delete" }>, table: KvTable): ApplyResult {
  const session = step.idempotencyKey === undefined ? undefined : `${sessionKeyPrefix}${step.idempotencyKey}`;
  if (session !== undefined) {
    const remembered = table.get(session);
    // Remembered for `sessionWindowEntries` entries after the write that made it, counted from
    // this step: replicas that applied in different batches (and so expired sessions at different
    // moments) still give the same answer, and reach the same state.
    if (remembered !== undefined && remembered.version > step.index - sessionWindowEntries) {
      return { ...(JSON.parse(new TextDecoder().decode(remembered.value)) as object), index: step.index } as ApplyResult;
    }
  }
  let result = step.ifVersion === undefined ? undefined : conditionFailure(step, table.get(step.key)?.version ?? 0);
  if (result === undefined) {
    if (step.kind === "put") {
      table.put(step.key, step.value, step.index);
      result = resultFor(step, false);
    } else {
      result = resultFor(step, table.delete(step.key));
    }
  }
  if (session !== undefined) {
    const { index: _, ...answer } = result as ApplyResult & { index: number };
    table.put(session, new TextEncoder().encode(JSON.stringify(answer)), step.index);
  }
  return result;
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
    default:
      return unreachable(step, "apply: unknown step");
  }
}
