/**
 * The bank workload (src/chaos/bank.ts) in the simulator: clients move money between accounts with
 * multi-key transactions through the node API, and read several accounts at once (a read-only
 * transaction, or a listing), while the nemesis works; `check` judges what they were answered and
 * the converged state with `findBankViolation`.
 */
import { type BankAccountSeen, type BankOperation, BANK_PREFIX, describeBankOperation, findBankViolation, planTransfer } from "../chaos/bank.ts";
import type { ReadConsistency } from "../node/api.ts";
import { KvError } from "../lib/kv-error.ts";
import type { NodeId } from "../raft/types.ts";
import { isRefusal, type NodeSim, SimViolation } from "./node-sim.ts";

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** Tries of one transfer (the first and its retries with the same Idempotency-Key), and the wait before a retry. */
const transferAttemptsMax = 3;
const retryMs = 50;

/** Accounts a listing may return; far more than a bank has. */
const listLimit = 1_000;

export class SimBank {
  /** Answered operations, and transfers whose outcome stayed unknown, in the order they ended. */
  readonly history: BankOperation[] = [];
  /** Transfers called and not answered yet: unknown if the run ends first. */
  private readonly inflight = new Map<number, BankOperation>();
  private sequence = 0;

  constructor(
    private readonly sim: NodeSim,
    readonly accounts: readonly string[],
    /** When the run's clients stop: no retry starts after it. */
    private readonly runEndMs: number,
  ) {}

  /**
   * Reads `keys` at node `id` in one read-only transaction, or every account by a listing (`list`):
   * resolves with what was seen, or undefined when the read was not answered with one.
   * `consistency` is the listing's: a transaction of gets alone is always a linearizable read
   * (src/node/kv-node.ts readOnlyTxn), as `POST /txn` takes no consistency.
   */
  read(clientId: number, id: NodeId, keys: readonly string[] | "list", consistency: ReadConsistency): Promise<readonly BankAccountSeen[] | undefined> {
    const node = this.sim.servers.get(id)?.node;
    const opId = this.nextId();
    const callMs = this.sim.historyTime();
    if (node === undefined) return Promise.resolve(undefined);
    let call: Promise<BankAccountSeen[]>;
    try {
      if (keys === "list") {
        call = node.list(BANK_PREFIX, undefined, listLimit, consistency).then((rows) => {
          const byKey = new Map(rows.map((row) => [row.key, row]));
          return this.accounts.map((key) => {
            const row = byKey.get(key);
            return row === undefined ? { key, value: null, version: 0 } : { key, value: text.decode(row.value), version: row.version };
          });
        });
      } else {
        const request = { compare: [], success: keys.map((key) => ({ op: "get" as const, key })), failure: [] };
        call = node.txn(request).then((answer) =>
          answer.results.map((result) => {
            if (result.op !== "get") throw new SimViolation(`a read-only transaction answered a ${result.op}`);
            // Its version is the state it read (no entry of its own): no value it returns is newer.
            if (result.found && result.version > answer.version) {
              throw new SimViolation(`a read-only transaction answered version ${answer.version} with ${result.key} at version ${result.version}`);
            }
            return result.found ? { key: result.key, value: text.decode(result.value), version: result.version } : { key: result.key, value: null, version: 0 };
          }),
        );
      }
    } catch (error: unknown) {
      call = Promise.reject(error);
    }
    return call.then(
      (seen) => {
        const full = keys === "list" || seen.length === this.accounts.length;
        this.history.push({ id: opId, clientId, kind: "read", callMs, returnMs: this.sim.historyTime(), outcome: "ok", seen, full });
        return seen;
      },
      (error: unknown) => {
        // A violation found in the answer, or a bug: the run's next check throws it (a rejection
        // here would go unhandled, and the run on).
        if (!(error instanceof KvError)) this.sim.raise(error);
        return undefined; // a read that failed took no effect either way
      },
    );
  }

  /**
   * Moves `amount` from `from` to `to` at node `id`, as both were read: one transaction whose
   * comparisons are their versions, sent with an Idempotency-Key. An attempt whose outcome is unknown
   * (a timeout, a node stopped) is sent again with the same key, to whoever leads then, up to
   * `transferAttemptsMax` times: a retry of one that applied must get its first answer (the session),
   * not "comparisons failed" (the checker's writer rule catches that). Resolves once answered, or
   * given up as unknown (a refusal after an unknown attempt says nothing of that attempt).
   *
   * `byOperator`: each comparison is sent as "version below the one read + 1" (`op: "<"`), which
   * holds exactly when the version is the one read: an account is never deleted, so its version
   * never goes back.
   */
  transfer(clientId: number, id: NodeId, from: BankAccountSeen, to: BankAccountSeen, amount: number, byOperator = false): Promise<void> {
    const opId = this.nextId();
    const { compared, writes } = planTransfer(opId, from, to, amount);
    const called: BankOperation = { id: opId, clientId, kind: "transfer", callMs: this.sim.historyTime(), outcome: "unknown", writes, compared };
    const request = {
      compare: compared.map(({ key, version }) =>
        byOperator ? { key, target: "version" as const, version: version + 1, op: "<" as const } : { key, target: "version" as const, version },
      ),
      success: writes.map((write) => ({ op: "put" as const, key: write.key, value: utf8.encode(write.value) })),
      failure: [],
    };
    const idempotencyKey = `bank-${clientId}-${opId}`;
    this.inflight.set(opId, called);
    let unknownSoFar = false;
    const end = (op: BankOperation) => {
      this.inflight.delete(opId);
      this.history.push(op);
    };
    const attempt = (target: NodeId, attemptsLeft: number): Promise<void> => {
      const node = this.sim.servers.get(target)?.node;
      let call: ReturnType<NonNullable<typeof node>["txn"]>;
      try {
        call = node === undefined ? Promise.reject(new KvError("unavailable", "connection refused: nothing was sent", { leaderId: 0 })) : node.txn(request, { idempotencyKey });
      } catch (error: unknown) {
        call = Promise.reject(error);
      }
      return call.then(
        (answer) => end({ ...called, returnMs: this.sim.historyTime(), outcome: "ok", succeeded: answer.succeeded, version: answer.version }),
        (error: unknown) => {
          if (!(error instanceof KvError)) {
            this.sim.raise(error); // the run's next check throws it
            return end(called);
          }
          // A node that was not running got nothing (connection refused); a refusal code is certain too.
          const refused = node === undefined || isRefusal(error.code);
          if (!refused) unknownSoFar = true;
          if (attemptsLeft <= 1 || this.sim.nowMs >= this.runEndMs) return end(refused && !unknownSoFar ? { ...called, returnMs: this.sim.historyTime(), outcome: "fail" } : called);
          return new Promise<void>((resolve) => this.sim.at(retryMs, () => void attempt(this.sim.leader() ?? target, attemptsLeft - 1).then(resolve)));
        },
      );
    };
    return attempt(id, transferAttemptsMax);
  }

  /**
   * Judges every answer and `finalState` (every account as the converged cluster holds it); throws
   * a SimViolation naming the broken rule and its evidence.
   */
  check(finalState: readonly BankAccountSeen[]): void {
    const history = [...this.history, ...this.inflight.values()];
    const violation = findBankViolation(history, this.accounts.length, finalState);
    if (violation === undefined) return;
    throw new SimViolation(`bank: ${violation.reason}\n${violation.evidence.map((op) => `  ${describeBankOperation(op)}`).join("\n")}`);
  }

  /** The history for the run's digest, one record per operation. */
  digestText(): string {
    return this.history
      .map((op) => `${op.id}/${op.kind}/${op.outcome}/${op.callMs}/${op.returnMs ?? "?"}/${op.succeeded ?? ""}/${op.version ?? ""}/${(op.seen ?? []).map((s) => `${s.value}@${s.version}`).join(",")}`)
      .join(";");
  }

  /** Transfers sent and not yet answered. */
  inFlight(): number {
    return this.inflight.size;
  }

  private nextId(): number {
    return ++this.sequence;
  }
}
