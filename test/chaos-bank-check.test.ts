/** The bank workload's checker (src/chaos/bank.ts): what a correct store's answers never show, rule by rule. */
import { describe, expect, test } from "bun:test";
import { type BankAccountSeen, type BankOperation, bankValue, findBankViolation } from "../src/chaos/bank.ts";

const absent = (key: string): BankAccountSeen => ({ key, value: null, version: 0 });
const at = (key: string, balance: number, transferId: number, version: number): BankAccountSeen => ({ key, value: bankValue(balance, transferId), version });

/** A transfer `id` writing `a` and `b`; ok and succeeded at `version` unless said otherwise. */
function transfer(id: number, a: [string, number], b: [string, number], callMs: number, returnMs: number | undefined, answer: { version?: number; succeeded?: boolean; outcome?: BankOperation["outcome"] } = {}): BankOperation {
  const outcome = answer.outcome ?? (returnMs === undefined ? "unknown" : "ok");
  return {
    id,
    clientId: 1,
    kind: "transfer",
    callMs,
    ...(returnMs === undefined ? {} : { returnMs }),
    outcome,
    writes: [
      { key: a[0], value: bankValue(a[1], id) },
      { key: b[0], value: bankValue(b[1], id) },
    ],
    ...(outcome === "ok" ? { succeeded: answer.succeeded ?? true, ...(answer.succeeded === false ? {} : { version: answer.version }) } : {}),
  };
}

let readId = 1_000;
const read = (seen: BankAccountSeen[], callMs: number, returnMs: number, full = seen.length === 2): BankOperation => ({ id: readId++, clientId: 2, kind: "read", callMs, returnMs, outcome: "ok", seen, full });

// Two accounts of 100 each: t1 moves 30 from bank/0 to bank/1 at version 5, t2 10 back at version 9.
const t1 = transfer(1, ["bank/0", 70], ["bank/1", 130], 0, 10, { version: 5 });
const t2 = transfer(2, ["bank/0", 80], ["bank/1", 120], 20, 30, { version: 9 });

describe("findBankViolation", () => {
  test("a history a correct store could give passes: reads before, between and after, a concurrent one, an unknown transfer seen", () => {
    const t3 = transfer(3, ["bank/0", 0], ["bank/1", 200], 40, undefined); // unanswered, applied at 12
    const history = [
      read([absent("bank/0"), absent("bank/1")], 0, 2),
      t1,
      read([at("bank/0", 70, 1, 5), at("bank/1", 130, 1, 5)], 12, 14),
      read([at("bank/0", 70, 1, 5), at("bank/1", 130, 1, 5)], 15, 35), // concurrent with t2: before it is fine
      t2,
      read([at("bank/1", 120, 2, 9)], 31, 33, false),
      t3,
      read([at("bank/0", 0, 3, 12), at("bank/1", 200, 3, 12)], 50, 60),
    ];
    expect(findBankViolation(history, 2, [at("bank/0", 0, 3, 12), at("bank/1", 200, 3, 12)])).toBeUndefined();
  });

  test("total: a read of every account that does not sum to the bank's money", () => {
    const violation = findBankViolation([t1, read([at("bank/0", 70, 1, 5), absent("bank/1")], 12, 14)], 2);
    expect(violation?.reason).toBe("a read of every account sums to 170, not 200: money was made or lost");
  });

  test("total: the final state is checked as a read of every account", () => {
    const lost = transfer(3, ["bank/0", 70], ["bank/1", 100], 0, 10, { version: 5 });
    expect(findBankViolation([lost], 2, [at("bank/0", 70, 3, 5), at("bank/1", 100, 3, 5)])?.reason).toContain("sums to 170, not 200");
    expect(findBankViolation([lost], 2)).toBeUndefined();
  });

  test("total: a negative balance", () => {
    const overdrawn = transfer(3, ["bank/0", -10], ["bank/1", 210], 0, 10, { version: 5 });
    expect(findBankViolation([overdrawn, read([at("bank/0", -10, 3, 5), at("bank/1", 210, 3, 5)], 12, 14)], 2)?.reason).toBe("bank/0 holds a negative balance, -10");
  });

  test("writer: a value no transfer wrote, or wrote elsewhere", () => {
    expect(findBankViolation([read([{ key: "bank/0", value: "lots", version: 3 }], 0, 1, false)], 2)?.reason).toContain("which no transfer writes");
    expect(findBankViolation([t1, read([at("bank/0", 130, 1, 5)], 12, 14, false)], 2)?.reason).toBe("bank/0 holds 130/t1, which transfer t1 never wrote there");
  });

  test("writer: the write of a refused transfer, or of one whose comparisons failed", () => {
    const refused = transfer(3, ["bank/0", 70], ["bank/1", 130], 0, 10, { outcome: "fail" });
    expect(findBankViolation([refused, read([at("bank/0", 70, 3, 5)], 12, 14, false)], 2)?.reason).toBe("bank/0 holds 70/t3, but transfer t3 was refused");
    const failed = transfer(4, ["bank/0", 70], ["bank/1", 130], 0, 10, { succeeded: false });
    expect(findBankViolation([failed, read([at("bank/0", 70, 4, 5)], 12, 14, false)], 2)?.reason).toBe("bank/0 holds 70/t4, but transfer t4 was answered that its comparisons failed");
  });

  test("writer: read at another version than the transfer's answer named, or two reads disagreeing on an unanswered one's", () => {
    expect(findBankViolation([t1, read([at("bank/0", 70, 1, 6)], 12, 14, false)], 2)?.reason).toBe("transfer t1's write of bank/0 was read at version 6, but it applied at 5");
    const unknown = transfer(3, ["bank/0", 70], ["bank/1", 130], 0, undefined);
    const violation = findBankViolation([unknown, read([at("bank/0", 70, 3, 5)], 12, 14, false), read([at("bank/1", 130, 3, 7)], 16, 18, false)], 2);
    expect(violation?.reason).toBe("transfer t3's write of bank/1 was read at version 7, but it applied at 5");
  });

  test("writer: one version that is two transfers'", () => {
    const other = transfer(3, ["bank/0", 60], ["bank/1", 140], 0, undefined);
    expect(findBankViolation([t1, other, read([at("bank/0", 60, 3, 5)], 12, 14, false)], 2)?.reason).toBe("version 5 is both transfer t1's and transfer t3's");
  });

  test("atomic: a read that saw a transfer in one account and not in the other", () => {
    // Not a read of every account, so the total does not catch it first.
    const fractured = read([at("bank/0", 80, 2, 9), at("bank/1", 130, 1, 5)], 15, 35, false);
    const violation = findBankViolation([t1, t2, fractured], 2);
    expect(violation?.reason).toBe("a read saw transfer t2 in bank/0 (version 9) but not in bank/1 (version 5): the transaction was seen in part");
    expect(violation?.evidence).toEqual([t2, fractured]);
  });

  test("real-time: a read called after a transfer returned that misses it", () => {
    const stale = read([at("bank/0", 70, 1, 5), at("bank/1", 130, 1, 5)], 31, 40);
    const violation = findBankViolation([t1, t2, stale], 2);
    expect(violation?.reason).toBe("a read saw bank/0 at version 5, but transfer t2, which returned before it was called, wrote it at version 9: a stale read");
  });

  test("real-time: a read called after another read returned that sees an older state", () => {
    const unknown = transfer(3, ["bank/0", 70], ["bank/1", 130], 0, undefined);
    const newer = read([at("bank/0", 70, 3, 5)], 10, 12, false);
    const older = read([absent("bank/0")], 13, 15, false);
    expect(findBankViolation([unknown, newer, older], 2)?.reason).toBe("a read saw bank/0 at version 0, but a read that returned before it was called saw it at version 5: a stale read");
    // Concurrent reads may see either.
    expect(findBankViolation([unknown, newer, read([absent("bank/0")], 11, 15, false)], 2)).toBeUndefined();
  });

  test("real-time: a transfer that succeeded comparing a version older than a transfer acknowledged before it was called (a lost write the total hides)", () => {
    // t3 was built on the state before t1 (both accounts absent) and succeeded after t1 returned.
    const built = { ...transfer(3, ["bank/0", 50], ["bank/1", 150], 20, 30, { version: 9 }), compared: [{ key: "bank/0", version: 0 }, { key: "bank/1", version: 0 }] };
    const violation = findBankViolation([t1, built], 2);
    expect(violation?.reason).toBe("transfer t3 succeeded comparing bank/0 at version 0, but transfer t1, which returned before it was called, wrote it at version 5: a stale comparison");
    expect(violation?.evidence).toEqual([t1, built]);
    // Called while t1 was still out, it may have been applied first: at a version below t1's.
    expect(findBankViolation([t1, { ...built, callMs: 5, version: 4 }], 2)).toBeUndefined();
    // Comparisons that did not hold changed nothing.
    expect(findBankViolation([t1, { ...built, succeeded: false }], 2)).toBeUndefined();
  });

  test("compare-and-set: two transfers that applied comparing one account at one version are a lost update, though money is conserved (found in a review: it passed)", () => {
    const compared = (op: BankOperation, version: number): BankOperation => ({ ...op, compared: [{ key: "bank/0", version }, { key: "bank/1", version }] });
    // Concurrent, both built on the accounts absent, both acknowledged as succeeded.
    const first = compared(transfer(3, ["bank/0", 90], ["bank/1", 110], 0, 10, { version: 5 }), 0);
    const second = compared(transfer(4, ["bank/0", 80], ["bank/1", 120], 0, 10, { version: 6 }), 0);
    const final = [at("bank/0", 80, 4, 6), at("bank/1", 120, 4, 6)];
    expect(findBankViolation([first, second], 2, final)?.reason).toBe(
      "transfer t4 applied at version 6 comparing bank/0 at version 0, but transfer t3 wrote it at version 5 before it (the account was never deleted): a lost update",
    );
    // Both built on version 5, one applied at 8: the other's at 9 found 8, not 5. Learned from a read too.
    const base = compared(transfer(3, ["bank/0", 90], ["bank/1", 110], 0, 10, { version: 5 }), 0);
    const left = compared(transfer(5, ["bank/0", 70], ["bank/1", 130], 20, undefined), 5);
    const right = compared(transfer(6, ["bank/0", 85], ["bank/1", 115], 20, 30, { version: 9 }), 5);
    expect(findBankViolation([base, left, right, read([at("bank/0", 70, 5, 8), at("bank/1", 130, 5, 8)], 21, 22)], 2)?.reason).toBe(
      "transfer t6 applied at version 9 comparing bank/0 at version 5, but transfer t5 wrote it at version 8 in between: a lost update",
    );
    // One after the other, each on the one before: fine.
    const after = compared(transfer(4, ["bank/0", 80], ["bank/1", 120], 20, 30, { version: 6 }), 5);
    expect(findBankViolation([first, after], 2, final)).toBeUndefined();
  });

  test("real-time: a transfer acknowledged at a version at or below one that returned before it was called, on other accounts (found in review: floors were per account)", () => {
    const elsewhere = transfer(3, ["bank/2", 50], ["bank/3", 150], 20, 30, { version: 3 });
    const violation = findBankViolation([t1, elsewhere], 4);
    expect(violation?.reason).toBe("transfer t3 was acknowledged at version 3, but transfer t1, which returned before it was called, applied at version 5");
    expect(violation?.evidence).toEqual([t1, elsewhere]);
    // After a read of other accounts that saw t1 (applied, its answer not back yet) at version 5.
    const seen = read([at("bank/0", 70, 1, 5)], 6, 8, false);
    expect(findBankViolation([t1, seen, { ...elsewhere, callMs: 9, version: 4 }], 4)?.reason).toBe("transfer t3 was acknowledged at version 4, but a read that returned before it was called saw version 5");
    // Concurrent with t1, any order.
    expect(findBankViolation([t1, { ...elsewhere, callMs: 5 }], 4)).toBeUndefined();
  });

  test("real-time: the final state older than an acknowledged transfer", () => {
    expect(findBankViolation([t1, t2], 2, [at("bank/0", 70, 1, 5), at("bank/1", 130, 1, 5)])?.reason).toContain("transfer t2, which returned before it was called, wrote it at version 9");
  });
});
