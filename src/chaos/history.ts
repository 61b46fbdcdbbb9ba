/**
 * The history a chaos run records: every client operation, when it was called, when (if ever) it
 * returned, and what came back. The linearizability checker reads nothing else.
 * Times are milliseconds on one monotonic clock shared by all clients of a run.
 */
import { unreachable } from "../lib/assert.ts";

/** The three client operations of the kv API. */
export type OperationKind = "put" | "get" | "delete";

/**
 * What the client learned about an operation:
 * - `ok`: it took effect exactly once, at some instant between its call and its return;
 * - `fail`: it definitely did not take effect (a 307 or 503 `no_leader` refusal before proposing, or a
 *   503 `proposal_dropped`: proposed, but another leader's entry took its index);
 * - `unknown`: a timeout or a cut connection; it may take effect at any instant after its call, or never.
 */
export type OperationOutcome = "ok" | "fail" | "unknown";

/** One client operation on one key. */
export interface Operation {
  /** Unique within the history; evidence and reports name operations by it. */
  readonly id: number;
  readonly clientId: number;
  readonly kind: OperationKind;
  readonly key: string;
  /** The value a put writes. Every put of a run writes a value no other put writes. */
  readonly value?: string;
  readonly callMs: number;
  /** When the answer arrived; undefined when the outcome is unknown. */
  readonly returnMs?: number;
  readonly outcome: OperationOutcome;
  /** What an ok get read: the value, or null when the key was absent. */
  readonly output?: string | null;
  /** For an ok delete whose answer says so: whether the key was present. */
  readonly deleted?: boolean;
  /**
   * The version an ok answer named, when it named one: the index a put or delete was applied at,
   * or, for a get of a present key, the index of the write that wrote the value read
   * (src/chaos/version-check.ts checks them).
   */
  readonly version?: number;
  /** A put or delete sent as a compare-and-set: it applies only if the key's version is this (0: absent). */
  readonly ifVersion?: number;
  /**
   * For a compare-and-set refused `409 version_mismatch`: the version its answer said the key was at
   * (0: absent). The condition is judged where the write applies (src/kv/apply-plan.ts
   * `conditionFailure`), so a refusal reads the key as a get would: the checker judges it as one.
   */
  readonly refusedAtVersion?: number;
  /**
   * A delete sent as a delete by prefix (`DELETE /kv?prefix=` with the key as the prefix), where no
   * other key of the history starts with it: the same change as a delete of the key.
   */
  readonly byPrefix?: true;
}

/** One line for a human: `client 3 put(k1, "v17") [120ms → 135ms] ok (version 42)`. */
export function describeOperation(op: Operation): string {
  const returned = op.returnMs === undefined ? "?" : `${op.returnMs}ms`;
  const interval = `[${op.callMs}ms → ${returned}]`;
  let call: string;
  switch (op.kind) {
    case "put":
      call = `put(${op.key}, ${JSON.stringify(op.value)}${op.ifVersion === undefined ? "" : `, ifVersion ${op.ifVersion}`})`;
      break;
    case "get":
      call = op.output === undefined ? `get(${op.key})` : `get(${op.key}) → ${JSON.stringify(op.output)}`;
      break;
    case "delete":
      call = `${op.byPrefix === true ? "deletePrefix" : "delete"}(${op.key}${op.ifVersion === undefined ? "" : `, ifVersion ${op.ifVersion}`})`;
      if (op.deleted !== undefined) call += ` → ${op.deleted ? "deleted" : "was absent"}`;
      break;
    default:
      return unreachable(op.kind, "operation kind");
  }
  if (op.refusedAtVersion !== undefined) call += ` → refused: the key was at version ${op.refusedAtVersion}`;
  return `client ${op.clientId} ${call} ${interval} ${op.outcome}${op.version === undefined ? "" : ` (version ${op.version})`}`;
}

/**
 * Of the puts and deletes of a key a client has seen (read or written), the share it sends as a
 * compare-and-set on the version it saw (`?ifVersion=`, 0 when it saw the key absent): the clients
 * of `kv chaos random` and of the simulator. A refused one (409) changed nothing, and read the key
 * (`refusedAtVersion`); src/chaos/version-check.ts checks what the accepted ones imply.
 */
export const COMPARE_AND_SET_SHARE = 0.3;

/** The version one client last saw each key at (0: absent), from its own answers. */
export class SeenVersions {
  private readonly versions = new Map<string, number>();

  /**
   * The `ifVersion` for an operation of `kind` on `key`: for a write of a key seen, the version seen
   * when `chance(COMPARE_AND_SET_SHARE)` says so (drawn only then); otherwise none.
   */
  ifVersionFor(kind: OperationKind, key: string, chance: (p: number) => boolean): number | undefined {
    const known = this.versions.get(key);
    return kind !== "get" && known !== undefined && chance(COMPARE_AND_SET_SHARE) ? known : undefined;
  }

  /** Learns from one of the client's operations once it ended: what it saw, or forgets the key. */
  note(op: Operation): void {
    if (op.outcome !== "ok") this.versions.delete(op.key);
    else if ((op.kind === "get" && op.output === null) || op.kind === "delete") this.versions.set(op.key, 0);
    else if (op.version !== undefined) this.versions.set(op.key, op.version);
    else this.versions.delete(op.key);
  }
}
