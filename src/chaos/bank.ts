/**
 * The bank workload (after Jepsen's "bank" test): transactions that move money between accounts,
 * and reads of several accounts at once, judged by what no correct store can show.
 *
 * Accounts are the keys `bank/0` … `bank/{n-1}`. An account never written is absent and holds
 * `BANK_INITIAL_BALANCE`; a transfer writes both of its accounts as `{balance}/t{transfer id}`, so a
 * value names the transfer that wrote it. A transfer first reads its two accounts, then sends one
 * transaction (`POST /txn`): if both accounts are still at the versions read, put the two new
 * balances; otherwise nothing. Money is never made or lost, whatever is acknowledged, refused or
 * lost in a timeout.
 *
 * What `findBankViolation` checks, over every answered read (a read-only transaction of some
 * accounts, or a listing of all of them) and the final state:
 *
 * - **total**: a read of every account sums to `n × BANK_INITIAL_BALANCE`, and no balance is negative
 *   (a compare ignored, or a transaction applied in part, breaks it);
 * - **writer**: a value read was written by a transfer that may have applied (not one refused, nor
 *   one answered "comparisons failed"), at the version its answer named, and every value one transfer
 *   wrote is read at that one version (a transaction is one entry, at one index);
 * - **atomic**: a read that saw one account as a transfer left it saw the transfer's other account at
 *   that version or later (no fractured read);
 * - **real-time**: a read called after a transfer, or a read, returned sees each account at a version
 *   at least as late as that transfer wrote it, or that read saw it (no stale read); and so does a
 *   transfer whose comparisons held (it found its accounts at the versions it named), so a transfer
 *   built on a state older than one acknowledged before it was called cannot succeed (a lost write
 *   the total would not show);
 * - **compare-and-set**: a transfer known to have applied found each account at the version it
 *   compared: no known write of the account lies between (see `findLostUpdate`).
 */
import type { OperationOutcome } from "./history.ts";

/** Where the accounts live, and what an account holds before any transfer wrote it. */
export const BANK_PREFIX = "bank/";
export const BANK_INITIAL_BALANCE = 100;

/** The accounts of a bank of `count`. */
export function bankAccounts(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${BANK_PREFIX}${i}`);
}

/** One account as a read saw it: its value (null: absent) and version (0: absent). */
export interface BankAccountSeen {
  readonly key: string;
  readonly value: string | null;
  readonly version: number;
}

/** One write a transfer asks for, applied only if its comparisons hold. */
export interface BankWrite {
  readonly key: string;
  readonly value: string;
}

/** One client call of the workload, as the client recorded it. Times as in history.ts. */
export interface BankOperation {
  /** Unique within the run; a transfer's id is the one its values name. */
  readonly id: number;
  readonly clientId: number;
  readonly kind: "transfer" | "read";
  readonly callMs: number;
  /** Undefined when the outcome is unknown. */
  readonly returnMs?: number;
  readonly outcome: OperationOutcome;
  /** A transfer's writes, and the versions its comparisons named (both accounts as read). */
  readonly writes?: readonly BankWrite[];
  readonly compared?: readonly { readonly key: string; readonly version: number }[];
  /** An ok transfer: whether its comparisons held (it wrote), and the version it applied at. */
  readonly succeeded?: boolean;
  readonly version?: number;
  /** An ok read: the accounts it read, and whether that was every account of the bank. */
  readonly seen?: readonly BankAccountSeen[];
  readonly full?: boolean;
}

/** The value a transfer writes into an account. */
export function bankValue(balance: number, transferId: number): string {
  return `${balance}/t${transferId}`;
}

/** The balance and the writing transfer of a value; undefined when it is no value of the workload. */
export function parseBankValue(value: string): { balance: number; transferId: number } | undefined {
  const match = /^(-?\d+)\/t(\d+)$/.exec(value);
  return match === null ? undefined : { balance: Number(match[1]), transferId: Number(match[2]) };
}

/** An account's balance as read (absent: the initial balance); undefined for a value of no transfer. */
export function balanceOf(seen: BankAccountSeen): number | undefined {
  return seen.value === null ? BANK_INITIAL_BALANCE : parseBankValue(seen.value)?.balance;
}

/**
 * The transaction of a transfer of `amount` from `from` to `to`, as read at `fromSeen` and `toSeen`:
 * the versions its comparisons name (both as read) and the writes of its success branch.
 */
export function planTransfer(
  transferId: number,
  fromSeen: BankAccountSeen,
  toSeen: BankAccountSeen,
  amount: number,
): { compared: { key: string; version: number }[]; writes: BankWrite[] } {
  const from = balanceOf(fromSeen) ?? 0;
  const to = balanceOf(toSeen) ?? 0;
  return {
    compared: [fromSeen, toSeen].map(({ key, version }) => ({ key, version })),
    writes: [
      { key: fromSeen.key, value: bankValue(from - amount, transferId) },
      { key: toSeen.key, value: bankValue(to + amount, transferId) },
    ],
  };
}

/** A broken rule of the file comment, with the operations that cannot all be right. */
export interface BankViolation {
  readonly reason: string;
  readonly evidence: readonly BankOperation[];
}

/** One line for a human: `client 2 transfer t17 [bank/0=80/t17, bank/1=120/t17] [3ms → 9ms] ok succeeded (version 40)`. */
export function describeBankOperation(op: BankOperation): string {
  const interval = `[${op.callMs}ms → ${op.returnMs === undefined ? "?" : `${op.returnMs}ms`}]`;
  if (op.kind === "transfer") {
    const writes = (op.writes ?? []).map((w) => `${w.key}=${w.value}`).join(", ");
    const verdict = op.outcome !== "ok" ? "" : op.succeeded === true ? ` succeeded (version ${op.version})` : " comparisons failed";
    return `client ${op.clientId} transfer t${op.id} [${writes}] ${interval} ${op.outcome}${verdict}`;
  }
  const seen = (op.seen ?? []).map((s) => `${s.key}=${s.value ?? "absent"}@${s.version}`).join(", ");
  return `client ${op.clientId} read${op.full === true ? " (all)" : ""} [${seen}] ${interval} ${op.outcome}`;
}

/**
 * The first broken rule of the file comment in `history` (every operation of the workload: reads
 * with their seen accounts, transfers with their writes), or undefined when none is. `finalState` is
 * every account as the converged cluster holds it, checked as a full read.
 */
export function findBankViolation(history: readonly BankOperation[], accountCount: number, finalState?: readonly BankAccountSeen[]): BankViolation | undefined {
  const transfers = new Map<number, BankOperation>();
  for (const op of history) if (op.kind === "transfer") transfers.set(op.id, op);
  const reads = history.filter((op) => op.kind === "read" && op.outcome === "ok" && op.seen !== undefined);
  const finalRead: BankOperation | undefined =
    finalState === undefined ? undefined : { id: -1, clientId: 0, kind: "read", callMs: Number.POSITIVE_INFINITY, returnMs: Number.POSITIVE_INFINITY, outcome: "ok", seen: finalState, full: true };
  const total = accountCount * BANK_INITIAL_BALANCE;

  // The version each transfer is known to have applied at: by its answer, or by a read of its values.
  const versionOf = new Map<number, { version: number; by: BankOperation }>();
  for (const op of transfers.values()) if (op.outcome === "ok" && op.succeeded === true && op.version !== undefined) versionOf.set(op.id, { version: op.version, by: op });
  const transferAt = new Map<number, number>();
  for (const [id, { version }] of versionOf) transferAt.set(version, id);

  for (const read of finalRead === undefined ? reads : [...reads, finalRead]) {
    const seen = read.seen as readonly BankAccountSeen[];
    if (read.full === true) {
      let sum = 0;
      for (const account of seen) sum += balanceOf(account) ?? Number.NaN;
      if (seen.length !== accountCount) return { reason: `a read of every account saw ${seen.length} of ${accountCount}`, evidence: [read] };
      if (sum !== total) return { reason: `a read of every account sums to ${sum}, not ${total}: money was made or lost`, evidence: [read] };
    }
    for (const account of seen) {
      if ((account.value === null) !== (account.version === 0)) return { reason: `${account.key} read as ${account.value ?? "absent"} at version ${account.version}`, evidence: [read] };
      if (account.value === null) continue;
      const parsed = parseBankValue(account.value);
      if (parsed === undefined) return { reason: `${account.key} holds ${JSON.stringify(account.value)}, which no transfer writes`, evidence: [read] };
      if (parsed.balance < 0) return { reason: `${account.key} holds a negative balance, ${parsed.balance}`, evidence: [read] };
      const writer = transfers.get(parsed.transferId);
      if (writer === undefined || !(writer.writes ?? []).some((w) => w.key === account.key && w.value === account.value)) {
        return { reason: `${account.key} holds ${account.value}, which transfer t${parsed.transferId} never wrote there`, evidence: writer === undefined ? [read] : [writer, read] };
      }
      if (writer.outcome === "fail" || (writer.outcome === "ok" && writer.succeeded !== true)) {
        const why = writer.outcome === "fail" ? "was refused" : "was answered that its comparisons failed";
        return { reason: `${account.key} holds ${account.value}, but transfer t${writer.id} ${why}`, evidence: [writer, read] };
      }
      const known = versionOf.get(writer.id);
      if (known !== undefined && known.version !== account.version) {
        return { reason: `transfer t${writer.id}'s write of ${account.key} was read at version ${account.version}, but it applied at ${known.version}`, evidence: [writer, known.by, read] };
      }
      const other = transferAt.get(account.version);
      if (other !== undefined && other !== writer.id) {
        return { reason: `version ${account.version} is both transfer t${other}'s and transfer t${writer.id}'s`, evidence: [transfers.get(other) as BankOperation, writer, read] };
      }
      versionOf.set(writer.id, { version: account.version, by: read });
      transferAt.set(account.version, writer.id);
    }
    // Atomic: every other account the writer of a seen value wrote is seen at that version or later.
    const seenByKey = new Map(seen.map((account) => [account.key, account]));
    for (const account of seen) {
      if (account.value === null) continue;
      const writer = transfers.get((parseBankValue(account.value) as { transferId: number }).transferId) as BankOperation;
      for (const write of writer.writes ?? []) {
        const partner = seenByKey.get(write.key);
        if (partner !== undefined && partner.version < account.version) {
          return {
            reason: `a read saw transfer t${writer.id} in ${account.key} (version ${account.version}) but not in ${write.key} (version ${partner.version}): the transaction was seen in part`,
            evidence: [writer, read],
          };
        }
      }
    }
  }

  // Real-time: sweep the reads by call time against the floors of what returned before.
  const floors: { atMs: number; key: string; version: number; by: BankOperation }[] = [];
  for (const op of transfers.values()) {
    if (op.outcome !== "ok" || op.succeeded !== true || op.version === undefined) continue;
    for (const write of op.writes ?? []) floors.push({ atMs: op.returnMs as number, key: write.key, version: op.version, by: op });
  }
  for (const read of reads) for (const account of read.seen as readonly BankAccountSeen[]) floors.push({ atMs: read.returnMs as number, key: account.key, version: account.version, by: read });
  floors.sort((a, b) => a.atMs - b.atMs);
  // What each read saw, and what each transfer whose comparisons held found, against those floors.
  const observers: { op: BankOperation; accounts: readonly { key: string; version: number }[] }[] = [];
  for (const read of reads) observers.push({ op: read, accounts: read.seen as readonly BankAccountSeen[] });
  if (finalRead !== undefined) observers.push({ op: finalRead, accounts: finalState as readonly BankAccountSeen[] });
  for (const op of transfers.values()) if (op.outcome === "ok" && op.succeeded === true && op.compared !== undefined) observers.push({ op, accounts: op.compared });
  observers.sort((a, b) => a.op.callMs - b.op.callMs);
  const floorOf = new Map<string, { version: number; by: BankOperation }>();
  let next = 0;
  for (const { op, accounts } of observers) {
    while (next < floors.length && (floors[next] as { atMs: number }).atMs < op.callMs) {
      const floor = floors[next++] as (typeof floors)[number];
      const before = floorOf.get(floor.key);
      if (before === undefined || floor.version > before.version) floorOf.set(floor.key, floor);
    }
    for (const account of accounts) {
      const floor = floorOf.get(account.key);
      if (floor !== undefined && account.version < floor.version) {
        const what = floor.by.kind === "transfer" ? `transfer t${floor.by.id}, which returned before it was called, wrote it at` : `a read that returned before it was called saw it at`;
        const who = op.kind === "read" ? `a read saw ${account.key}` : `transfer t${op.id} succeeded comparing ${account.key}`;
        return { reason: `${who} at version ${account.version}, but ${what} version ${floor.version}: a stale ${op.kind === "read" ? "read" : "comparison"}`, evidence: [floor.by, op] };
      }
    }
  }
  return findTransferBeforeItsTime(transfers, reads) ?? findLostUpdate(transfers, versionOf);
}

/**
 * Compare-and-set: a transfer known to have applied (acknowledged as succeeded, or read) at version
 * y found each account it compared at the version it named, x: x is below y, and no known write of
 * that account lies between x and y (none at all before y when x is 0: accounts are never deleted).
 * Two transfers that both applied comparing one account at one version are a lost update that the
 * total does not show, each writing absolute balances (found in a review).
 */
function findLostUpdate(transfers: ReadonlyMap<number, BankOperation>, versionOf: ReadonlyMap<number, { version: number; by: BankOperation }>): BankViolation | undefined {
  const writesOf = new Map<string, { version: number; transfer: BankOperation }[]>();
  for (const [id, { version }] of versionOf) {
    const transfer = transfers.get(id) as BankOperation;
    for (const write of transfer.writes ?? []) {
      const writes = writesOf.get(write.key);
      if (writes === undefined) writesOf.set(write.key, [{ version, transfer }]);
      else writes.push({ version, transfer });
    }
  }
  for (const [id, { version }] of versionOf) {
    const transfer = transfers.get(id) as BankOperation;
    for (const { key, version: expected } of transfer.compared ?? []) {
      const what = `transfer t${id} applied at version ${version} comparing ${key} at version ${expected}`;
      if (expected >= version) return { reason: `${what}, a version it could not yet have seen`, evidence: [transfer] };
      let before: { version: number; transfer: BankOperation } | undefined;
      for (const write of writesOf.get(key) ?? []) if (write.version < version && (before === undefined || write.version > before.version)) before = write;
      if (before !== undefined && before.version > expected) {
        const when = expected === 0 ? "before it (the account was never deleted)" : "in between";
        return { reason: `${what}, but transfer t${before.transfer.id} wrote it at version ${before.version} ${when}: a lost update`, evidence: [before.transfer, transfer] };
      }
    }
  }
  return undefined;
}

/**
 * Real-time across accounts: a transfer's entry commits after everything that returned before it
 * was called, whichever accounts each touched: after another transfer's entry, and after the
 * commit index a read was served at (at or past every version it saw). So a succeeded transfer
 * names a version above all of those. (The floors above are per account only: a transfer on
 * accounts 2 and 3 acknowledged at version 3 after one on 0 and 1 returned at 5 passed; found in review.)
 */
function findTransferBeforeItsTime(transfers: ReadonlyMap<number, BankOperation>, reads: readonly BankOperation[]): BankViolation | undefined {
  const committed = [...transfers.values()].filter((op) => op.outcome === "ok" && op.succeeded === true && op.version !== undefined);
  const points: { atMs: number; version: number; by: BankOperation }[] = committed.map((op) => ({ atMs: op.returnMs as number, version: op.version as number, by: op }));
  for (const read of reads) {
    const seen = read.seen as readonly BankAccountSeen[];
    if (seen.length > 0) points.push({ atMs: read.returnMs as number, version: Math.max(...seen.map((account) => account.version)), by: read });
  }
  points.sort((a, b) => a.atMs - b.atMs);
  committed.sort((a, b) => a.callMs - b.callMs);
  let next = 0;
  let highest: (typeof points)[number] | undefined;
  for (const transfer of committed) {
    while (next < points.length && (points[next] as (typeof points)[number]).atMs < transfer.callMs) {
      const point = points[next++] as (typeof points)[number];
      if (highest === undefined || point.version > highest.version) highest = point;
    }
    if (highest !== undefined && (transfer.version as number) <= highest.version) {
      const what = highest.by.kind === "transfer" ? `transfer t${highest.by.id}, which returned before it was called, applied at` : "a read that returned before it was called saw";
      return { reason: `transfer t${transfer.id} was acknowledged at version ${transfer.version}, but ${what} version ${highest.version}`, evidence: [highest.by, transfer] };
    }
  }
  return undefined;
}
