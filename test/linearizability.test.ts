// Proves the linearizability checker rejects known-bad kv histories with the failing key and a small
// self-contained evidence, accepts known-good ones (concurrency, unknown and failed outcomes), agrees with
// a brute-force search on small random histories, accepts a 10 000-operation history from a truly
// linearizable simulated register, and rejects that history once one read is made stale.
import { describe, expect, test } from "bun:test";
import {
  checkLinearizable,
  describeOperation,
  type CheckResult,
  type Operation,
  type OperationOutcome,
} from "../src/chaos/linearizability.ts";
import { findVersionViolation } from "../src/chaos/version-check.ts";
import { createPrng, type Prng } from "../src/lib/prng.ts";

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

let nextId = 1;

function put(
  clientId: number,
  key: string,
  value: string,
  callMs: number,
  returnMs: number | undefined,
  outcome: OperationOutcome = "ok",
): Operation {
  return { id: nextId++, clientId, kind: "put", key, value, callMs, returnMs, outcome };
}

function get(
  clientId: number,
  key: string,
  output: string | null,
  callMs: number,
  returnMs: number | undefined,
  outcome: OperationOutcome = "ok",
): Operation {
  return {
    id: nextId++,
    clientId,
    kind: "get",
    key,
    callMs,
    returnMs,
    outcome,
    ...(outcome === "ok" ? { output } : {}),
  };
}

function del(
  clientId: number,
  key: string,
  callMs: number,
  returnMs: number | undefined,
  outcome: OperationOutcome = "ok",
  deleted?: boolean,
): Operation {
  return { id: nextId++, clientId, kind: "delete", key, callMs, returnMs, outcome, deleted };
}

function expectRejected(result: CheckResult): Extract<CheckResult, { ok: false }> {
  if (result.ok !== false) throw new Error(`expected a violation, got ${JSON.stringify(result)}`);
  return result;
}

const ids = (ops: readonly Operation[]): number[] => ops.map((op) => op.id).sort((a, b) => a - b);

describe("rejects known-bad histories", () => {
  test("two overlapping writes are placed in their versions' order (found in a code review: the search read values only, and passed these)", () => {
    // A put acknowledged at 6 and a delete at 5, overlapping: the log applied the delete first, so
    // the value stays; a later get of nothing lost an acknowledged write.
    const lost = [{ ...put(1, "k", "B", 0, 100), version: 6 }, { ...del(2, "k", 0, 100), version: 5 }, get(3, "k", null, 110, 120)];
    expect(findVersionViolation(lost)).toBeUndefined();
    expectRejected(checkLinearizable(lost));
    // The delete at 5 said it found the key, which no write had put there before 6.
    expectRejected(checkLinearizable([{ ...put(1, "k", "B", 0, 100), version: 6 }, { ...del(2, "k", 0, 100, "ok", true), version: 5 }]));
    // An unanswered put whose value a get named at version 4 comes before a put acknowledged at 7:
    // the key then holds the acknowledged put's value.
    const unanswered = put(1, "k", "A", 0, undefined, "unknown");
    expectRejected(checkLinearizable([unanswered, { ...put(2, "k", "C", 0, 100), version: 7 }, { ...get(3, "k", "A", 10, 20), version: 4 }, get(4, "k", "A", 110, 120)]));
    // In the versions' order, the same writes pass.
    expect(checkLinearizable([{ ...put(1, "k", "B", 0, 100), version: 6 }, { ...del(2, "k", 0, 100), version: 7 }, get(3, "k", null, 110, 120)]).ok).toBe(true);
    expect(checkLinearizable([{ ...put(1, "k", "B", 0, 100), version: 6 }, { ...del(2, "k", 0, 100), version: 5 }, get(3, "k", "B", 110, 120)]).ok).toBe(true);
  });

  test("stale read: a get returns an old value after a later put completed before the get began", () => {
    const v1 = put(1, "k", "v1", 0, 10);
    const v2 = put(1, "k", "v2", 20, 30);
    const stale = get(2, "k", "v1", 40, 50);
    const result = expectRejected(checkLinearizable([v1, v2, stale]));
    expect(result.key).toBe("k");
    expect(ids(result.evidence)).toEqual(ids([v1, v2, stale]));
    expect(result.reason).toContain('would overwrite "v1" while a get that read it is still unplaced');
  });

  test("lost write: a completed put is never visible, later gets return the value before it", () => {
    const v1 = put(1, "k", "v1", 0, 10);
    const v2 = put(2, "k", "v2", 20, 30);
    const history = [
      v1,
      get(3, "k", "v1", 15, 18),
      v2,
      get(3, "k", "v1", 40, 50),
      get(1, "k", "v1", 60, 70),
      get(2, "k", "v1", 80, 90),
    ];
    const result = expectRejected(checkLinearizable(history));
    expect(result.key).toBe("k");
    // The shrunk evidence is the two writes and one read that cannot follow them.
    expect(result.evidence).toHaveLength(3);
    expect(ids(result.evidence)).toContain(v1.id);
    expect(ids(result.evidence)).toContain(v2.id);
  });

  test("a value flips back: two sequential gets see v2 then v1", () => {
    const history = [
      put(1, "k", "v1", 0, 10),
      put(2, "k", "v2", 5, 40),
      get(3, "k", "v2", 15, 20),
      get(3, "k", "v1", 25, 30),
    ];
    expect(expectRejected(checkLinearizable(history)).evidence).toHaveLength(4);
  });

  test("a read of a never-written value", () => {
    const ghost = get(1, "k", "ghost", 20, 30);
    const result = expectRejected(checkLinearizable([put(1, "k", "v1", 0, 10), ghost]));
    expect(result.evidence).toEqual([ghost]);
    expect(result.reason).toContain("which no put wrote");
  });

  test("a read of a value only a failed put tried to write", () => {
    const refused = put(1, "k", "v1", 0, 10, "fail");
    const read = get(2, "k", "v1", 20, 30);
    const result = expectRejected(checkLinearizable([refused, read]));
    expect(result.evidence).toEqual([refused, read]);
    expect(result.reason).toContain("only a failed put");
  });

  test("a delete then a get seeing the deleted value", () => {
    const history = [put(1, "k", "v1", 0, 10), del(1, "k", 20, 30), get(2, "k", "v1", 40, 50)];
    expect(expectRejected(checkLinearizable(history)).evidence).toHaveLength(3);
  });

  test("a delete that reports the key present when nothing was written", () => {
    expectRejected(checkLinearizable([del(1, "k", 0, 10, "ok", true)]));
  });

  test("an unknown put cannot take effect before its call", () => {
    const history = [get(1, "k", "v1", 0, 10), put(2, "k", "v1", 20, undefined, "unknown")];
    expectRejected(checkLinearizable(history));
  });

  test("an unknown delete may happen once, not undo a later put", () => {
    const history = [
      put(1, "k", "v1", 0, 10),
      del(2, "k", 20, undefined, "unknown"),
      get(1, "k", "v1", 30, 40),
      get(1, "k", null, 50, 60),
      get(1, "k", "v1", 70, 80),
    ];
    expectRejected(checkLinearizable(history));
  });
});

describe("compare-and-set writes whose answer was lost apply only where their version could hold (found in a review: they explained lost writes)", () => {
  const versioned = (op: Operation, version: number): Operation => ({ ...op, version });
  const onlyIf = (op: Operation, ifVersion: number): Operation => ({ ...op, ifVersion });

  test("a compare-and-delete at a version the key had left cannot explain a lost acknowledged put", () => {
    const history = [
      versioned(put(1, "k", "a", 0, 1), 1),
      versioned(get(2, "k", "a", 1, 2), 1),
      versioned(put(1, "k", "b", 2, 3), 3),
      onlyIf(del(2, "k", 4, undefined, "unknown"), 1),
      get(3, "k", null, 5, 6),
    ];
    expectRejected(checkLinearizable(history));
    // Without the condition the delete may have applied last: linearizable.
    expect(checkLinearizable(history.map((op) => (op.kind === "delete" ? { ...op, ifVersion: undefined } : op))).ok).toBe(true);
    // At the version the key is at when it runs, it may have.
    expect(checkLinearizable(history.map((op) => (op.kind === "delete" ? { ...op, ifVersion: 3 } : op))).ok).toBe(true);
  });

  test("a compare-and-set put at a version the key had left, read later, is a violation", () => {
    const history = [versioned(put(1, "k", "a", 0, 1), 1), versioned(put(1, "k", "b", 2, 3), 3), onlyIf(put(2, "k", "c", 4, undefined, "unknown"), 1), get(3, "k", "c", 5, 6)];
    expectRejected(checkLinearizable(history));
  });

  test("a create (ifVersion 0) cannot explain a read of nothing after an acknowledged put, unless a delete may have come between", () => {
    const history = [versioned(put(1, "k", "a", 0, 1), 1), onlyIf(put(2, "k", "c", 2, undefined, "unknown"), 0), onlyIf(del(2, "k", 3, undefined, "unknown"), 0), get(3, "k", null, 5, 6)];
    expectRejected(checkLinearizable(history));
    const withDelete = [...history, del(4, "k", 2, undefined, "unknown")];
    expect(checkLinearizable(withDelete).ok).toBe(true);
  });

  test("a compare-and-set at a delete's version never applies", () => {
    const history = [versioned(put(1, "k", "a", 0, 1), 1), versioned(del(1, "k", 2, 3), 3), onlyIf(put(2, "k", "c", 4, undefined, "unknown"), 3), get(3, "k", "c", 5, 6)];
    expectRejected(checkLinearizable(history));
  });
});

describe("accepts known-good histories", () => {
  test("concurrent puts, with reads seeing either order", () => {
    const v1 = put(1, "k", "v1", 0, 50);
    const v2 = put(2, "k", "v2", 10, 60);
    expect(checkLinearizable([v1, v2, get(3, "k", "v1", 70, 80)]).ok).toBe(true);
    expect(checkLinearizable([v1, v2, get(3, "k", "v2", 70, 80)]).ok).toBe(true);
    // While both are in flight a reader may even see v2 and then v1.
    expect(checkLinearizable([v1, v2, get(3, "k", "v2", 20, 30), get(3, "k", "v1", 35, 45)]).ok).toBe(true);
  });

  test("operations that touch at one millisecond count as concurrent", () => {
    const history = [put(1, "k", "v1", 0, 10), get(2, "k", null, 10, 12)];
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("unknown-outcome puts that are seen later, or never", () => {
    const history = [
      put(1, "k", "v1", 0, 10),
      put(2, "k", "v2", 20, undefined, "unknown"),
      get(3, "k", "v1", 30, 40),
      get(3, "k", "v2", 100, 110),
      put(2, "k", "v3", 120, undefined, "unknown"),
      get(3, "k", "v2", 200, 210),
      get(1, "k", "v2", 300, 310),
    ];
    expect(checkLinearizable(history)).toEqual({ ok: true, keysChecked: 1 });
  });

  test("an unknown put that takes effect long after its call", () => {
    const history = [
      put(1, "k", "v1", 0, undefined, "unknown"),
      put(2, "k", "v2", 10, 20),
      get(3, "k", "v2", 30, 40),
      get(3, "k", "v2", 1000, 1010),
      get(3, "k", "v1", 5000, 5010),
      get(2, "k", "v1", 6000, 6010),
    ];
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("unknown gets and deletes constrain nothing", () => {
    const history = [
      put(1, "k", "v1", 0, 10),
      get(2, "k", null, 5, undefined, "unknown"),
      del(3, "k", 20, undefined, "unknown"),
      get(1, "k", "v1", 30, 40),
      get(1, "k", null, 50, 60),
      put(1, "k", "v2", 70, 80),
      get(2, "k", "v2", 90, 100),
    ];
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("failed operations are ignored", () => {
    const history = [
      put(1, "k", "v1", 0, 10),
      put(2, "k", "v2", 20, 30, "fail"),
      del(2, "k", 35, 38, "fail"),
      get(3, "k", "v1", 40, 50),
    ];
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("deletes, with and without the present/absent answer", () => {
    const history = [
      del(1, "k", 0, 5, "ok", false),
      put(1, "k", "v1", 10, 20),
      del(2, "k", 30, 40, "ok", true),
      get(3, "k", null, 50, 60),
      del(3, "k", 70, 80),
      get(1, "k", null, 90, 95),
    ];
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("an initial value is readable until overwritten", () => {
    const history = [get(1, "k", "seed", 0, 10), put(1, "k", "v1", 20, 30), get(1, "k", "v1", 40, 50)];
    expect(checkLinearizable(history, { initial: new Map([["k", "seed"]]) }).ok).toBe(true);
    expectRejected(checkLinearizable(history));
  });
});

test("a multi-key history where only one key is bad reports that key", () => {
  const history = [
    put(1, "a", "a1", 0, 10),
    put(2, "b", "b1", 0, 10),
    put(3, "c", "c1", 0, 10),
    get(1, "a", "a1", 20, 30),
    put(2, "b", "b2", 20, 30),
    get(3, "c", "c1", 20, 30),
    get(1, "b", "b1", 40, 50),
    get(2, "a", "a1", 40, 50),
  ];
  const result = expectRejected(checkLinearizable(history));
  expect(result.key).toBe("b");
  expect(result.evidence.every((op) => op.key === "b")).toBe(true);
});

test("describeOperation gives one line per operation", () => {
  const op: Operation = {
    id: 1,
    clientId: 3,
    kind: "put",
    key: "k1",
    value: "v17",
    callMs: 120,
    returnMs: 135,
    outcome: "ok",
  };
  expect(describeOperation(op)).toBe('client 3 put(k1, "v17") [120ms → 135ms] ok');
  const read: Operation = { ...op, kind: "get", value: undefined, output: null, returnMs: 140 };
  expect(describeOperation(read)).toBe("client 3 get(k1) → null [120ms → 140ms] ok");
  const lost: Operation = { ...op, returnMs: undefined, outcome: "unknown" };
  expect(describeOperation(lost)).toBe('client 3 put(k1, "v17") [120ms → ?] unknown');
  expect(describeOperation({ ...op, kind: "delete", value: undefined, deleted: true })).toBe(
    "client 3 delete(k1) → deleted [120ms → 135ms] ok",
  );
});

describe("budget", () => {
  // 24 puts in flight at once, then two reads no order explains: the search must try every subset.
  const pathological = (): Operation[] => [
    ...Array.from({ length: 24 }, (_, i) => put(i, "k", `v${i}`, 0, 100)),
    get(20, "k", "v0", 200, 210),
    get(20, "k", "v1", 300, 310),
  ];

  test("a step budget turns a pathological search into unknown", () => {
    expect(checkLinearizable(pathological(), { searchStepsMax: 10_000 })).toEqual({
      ok: "unknown",
      reason: "budget exceeded: the search took its 10,000 steps",
      key: "k",
    });
  });

  test("a time budget turns a pathological search into unknown", () => {
    let fakeNowMs = 0;
    const nowMs = (): number => fakeNowMs++; // Every look at the clock costs a millisecond.
    const result = checkLinearizable(pathological(), { timeBudgetMs: 100, nowMs });
    expect(result).toEqual({ ok: "unknown", reason: "budget exceeded: the search ran past its 100 ms", key: "k" });
  });

  test("a bad key that is cheap is still reported when another key runs out of budget", () => {
    const history = [...pathological(), put(1, "z", "z1", 0, 10), put(1, "z", "z2", 20, 30), get(2, "z", "z1", 40, 50)];
    expect(expectRejected(checkLinearizable(history, { searchStepsMax: 10_000 })).key).toBe("z");
  });
});

/**
 * A history from a register that really is linearizable: every operation takes effect at one instant
 * inside its interval (ok), never (fail, or half of the unknowns), or at any instant after its call,
 * possibly long after the client gave up (the other unknowns). The client free soonest calls next.
 */
interface SimulationOptions {
  readonly opsCount: number;
  readonly keysCount: number;
  readonly clientsCount: number;
  /** Chance that an operation's outcome is unknown; as many fail. */
  readonly unknownChance: number;
  /** An unknown operation that takes effect does so up to this long after its call. */
  readonly unknownEffectDelayMsMax: number;
}

function simulateRegisterHistory(prng: Prng, options: SimulationOptions): Operation[] {
  const { opsCount, keysCount, clientsCount, unknownChance, unknownEffectDelayMsMax } = options;
  const clientFreeMs = Array.from({ length: clientsCount }, () => prng.intInclusive(0, 5));
  const drafts: { op: Mutable<Operation>; effectMs: number | undefined }[] = [];
  for (let id = 1; id <= opsCount; id++) {
    let clientId = 0;
    for (let c = 1; c < clientsCount; c++) if ((clientFreeMs[c] ?? 0) < (clientFreeMs[clientId] ?? 0)) clientId = c;
    const callMs = clientFreeMs[clientId] ?? 0;
    const kindRoll = prng.next();
    const kind = kindRoll < 0.5 ? "get" : kindRoll < 0.85 ? "put" : "delete";
    const outcomeRoll = prng.next();
    const outcome: OperationOutcome =
      outcomeRoll < unknownChance ? "unknown" : outcomeRoll < 2 * unknownChance ? "fail" : "ok";
    const key = `k${prng.intInclusive(0, keysCount - 1)}`;
    const op: Mutable<Operation> = { id, clientId, kind, key, callMs, outcome };
    if (kind === "put") op.value = `v${id}`;
    let effectMs: number | undefined;
    switch (outcome) {
      case "ok":
        effectMs = callMs + prng.intInclusive(0, 15);
        op.returnMs = effectMs + prng.intInclusive(0, 15);
        clientFreeMs[clientId] = op.returnMs + prng.intInclusive(0, 3);
        break;
      case "fail":
        op.returnMs = callMs + prng.intInclusive(0, 5);
        clientFreeMs[clientId] = op.returnMs + prng.intInclusive(0, 3);
        break;
      case "unknown":
        effectMs = prng.chance(0.5) ? callMs + prng.intInclusive(0, unknownEffectDelayMsMax) : undefined;
        clientFreeMs[clientId] = callMs + 100 + prng.intInclusive(0, 3); // The client's timeout.
        break;
    }
    drafts.push({ op, effectMs });
  }

  // Apply every effect in effect-time order to the true registers; reads record what they saw.
  const register = new Map<string, string | null>();
  const effective = drafts.filter((draft) => draft.effectMs !== undefined);
  effective.sort((a, b) => (a.effectMs ?? 0) - (b.effectMs ?? 0) || a.op.id - b.op.id);
  for (const { op } of effective) {
    const before = register.get(op.key) ?? null;
    if (op.kind === "put") register.set(op.key, op.value ?? null);
    if (op.kind === "delete") {
      register.set(op.key, null);
      if (op.outcome === "ok" && prng.chance(0.5)) op.deleted = before !== null;
    }
    if (op.kind === "get" && op.outcome === "ok") op.output = before;
  }
  return drafts.map((draft) => draft.op);
}

/**
 * Replaces one ok get's output with a value that was certainly overwritten before the get began: put P
 * returned before write Q was called, and Q returned before the get was called.
 */
function mutateOneReadToStale(history: readonly Operation[], prng: Prng): { mutated: Operation[]; stale: Operation } {
  const okWrites = history.filter((op) => op.outcome === "ok" && op.kind !== "get");
  const gets = history.filter((op) => op.kind === "get" && op.outcome === "ok");
  const offset = prng.intInclusive(0, gets.length - 1);
  for (let i = 0; i < gets.length; i++) {
    const read = gets[(offset + i) % gets.length];
    if (read === undefined) continue;
    let latestWrite: Operation | undefined;
    for (const write of okWrites) {
      if (write.key !== read.key || (write.returnMs ?? Infinity) >= read.callMs) continue;
      if (latestWrite === undefined || write.callMs > latestWrite.callMs) latestWrite = write;
    }
    if (latestWrite === undefined) continue;
    const overwritten = okWrites.find(
      (write) =>
        write.key === read.key &&
        write.kind === "put" &&
        write.value !== read.output &&
        (write.returnMs ?? Infinity) < (latestWrite?.callMs ?? -Infinity),
    );
    if (overwritten === undefined) continue;
    const stale: Operation = { ...read, output: overwritten.value };
    return { mutated: history.map((op) => (op === read ? stale : op)), stale };
  }
  throw new Error("no read could be made stale");
}

describe("a 10 000-operation history from a simulated linearizable register", () => {
  const seed = 20_240_611;
  const history = simulateRegisterHistory(createPrng(seed), {
    opsCount: 10_000,
    keysCount: 10,
    clientsCount: 5,
    unknownChance: 0.03,
    unknownEffectDelayMsMax: 500,
  });

  test(`is accepted (seed=${seed})`, () => {
    const unknowns = history.filter((op) => op.outcome === "unknown").length;
    const startMs = performance.now();
    const result = checkLinearizable(history);
    const elapsedMs = performance.now() - startMs;
    console.log(
      `linearizability: ${history.length} ops (${unknowns} unknown) over 10 keys checked in ${elapsedMs.toFixed(1)}ms`,
    );
    expect(result).toEqual({ ok: true, keysChecked: 10 });
  }, 60_000);

  test(`is rejected with one read mutated to a stale value (seed=${seed})`, () => {
    const { mutated, stale } = mutateOneReadToStale(history, createPrng(seed + 1));
    const startMs = performance.now();
    const result = expectRejected(checkLinearizable(mutated));
    const elapsedMs = performance.now() - startMs;
    console.log(
      `linearizability: stale read found in ${elapsedMs.toFixed(1)}ms; ${result.reason}\n  ` +
        result.evidence.map(describeOperation).join("\n  "),
    );
    expect(result.key).toBe(stale.key);
    // Shrinking removes only what cannot make a linearizable history fail, so the bad read must remain.
    expect(result.evidence.map((op) => op.id)).toContain(stale.id);
  }, 60_000);
});

/**
 * The definition, searched naively: some order of all ok operations and some of the unknown writes
 * (each after its call), respecting real time (a return strictly before a call orders two operations)
 * and the log's order of writes whose versions are known (a version is the index of the write's
 * entry: named by its answer, or by a get of the value a put wrote), in which every get reads the
 * latest write and every checked delete finds what it reported.
 */
function linearizableByBruteForce(history: readonly Operation[], initial: string | null): boolean {
  const ops = history.filter((op) => op.outcome === "ok" || (op.outcome === "unknown" && op.kind !== "get"));
  // A compare-and-set applies only at its version: the key absent (0), holding the value an answer
  // gave for that version, never at a delete's; anywhere at a version no answer gave.
  const atVersion = new Map<number, string | null>();
  for (const op of ops) {
    if (op.outcome !== "ok" || op.version === undefined) continue;
    atVersion.set(op.version, op.kind === "put" ? (op.value ?? null) : op.kind === "get" ? (op.output ?? null) : null);
  }
  const conditionHolds = (op: Operation, state: string | null): boolean => {
    if (op.ifVersion === undefined) return true;
    if (op.ifVersion === 0) return state === null;
    if (!atVersion.has(op.ifVersion)) return true;
    const there = atVersion.get(op.ifVersion) ?? null;
    return there !== null && there === state;
  };
  const readVersion = new Map<string, number>();
  for (const op of ops) if (op.kind === "get" && typeof op.output === "string" && op.output !== initial && op.version !== undefined) readVersion.set(op.output, op.version);
  const knownVersion = (op: Operation): number | undefined =>
    op.kind === "get" ? undefined : op.outcome === "ok" && op.version !== undefined ? op.version : op.kind === "put" && op.value !== undefined ? readVersion.get(op.value) : undefined;
  const placed = ops.map(() => false);
  const returnMs = (op: Operation): number => (op.outcome === "ok" ? (op.returnMs ?? 0) : Infinity);
  // A write of a known version comes after every write of a lower known version.
  const versionBlocked = (op: Operation): boolean => {
    const version = knownVersion(op);
    return version !== undefined && ops.some((other, j) => placed[j] !== true && (knownVersion(other) ?? Infinity) < version);
  };
  const extend = (state: string | null): boolean => {
    if (ops.every((op, i) => placed[i] === true || op.outcome !== "ok")) return true;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i];
      if (op === undefined || placed[i] === true) continue;
      if (ops.some((other, j) => placed[j] !== true && returnMs(other) < op.callMs)) continue;
      if (versionBlocked(op)) continue;
      let after: string | null = null;
      if (op.kind !== "get" && !conditionHolds(op, state)) continue;
      if (op.kind === "put") after = op.value ?? null;
      if (op.kind === "get") {
        if (op.output !== state) continue;
        after = state;
      }
      if (op.kind === "delete" && op.outcome === "ok" && op.deleted !== undefined && op.deleted !== (state !== null)) {
        continue;
      }
      placed[i] = true;
      const found = extend(after);
      placed[i] = false;
      if (found) return true;
    }
    return false;
  };
  return extend(initial);
}

describe("cross-checks on small random histories", () => {
  test("agrees with a brute-force search on 3000 random single-key histories", () => {
    const verdicts = { linearizable: 0, violation: 0 };
    for (let seed = 1; seed <= 3000; seed++) {
      const prng = createPrng(seed);
      const opsCount = prng.intInclusive(1, 8);
      const initial = prng.chance(0.2) ? "init" : null;
      const readable = [null, "init", ...Array.from({ length: opsCount }, (_, i) => `v${i}`)];
      const history: Operation[] = Array.from({ length: opsCount }, (_, i): Operation => {
        const kindRoll = prng.next();
        const outcomeRoll = prng.next();
        const outcome: OperationOutcome = outcomeRoll < 0.6 ? "ok" : outcomeRoll < 0.8 ? "unknown" : "fail";
        const callMs = prng.intInclusive(0, 40);
        const returnMs = outcome === "unknown" ? undefined : callMs + prng.intInclusive(0, 15);
        const base = { id: i + 1, clientId: i, key: "k", callMs, returnMs, outcome };
        if (kindRoll < 0.4) {
          return { ...base, kind: "get", ...(outcome === "ok" ? { output: prng.pick(readable) } : {}) };
        }
        if (kindRoll < 0.8) return { ...base, kind: "put", value: `v${i}` };
        const deleted = outcome === "ok" && prng.chance(0.5) ? prng.chance(0.5) : undefined;
        return { ...base, kind: "delete", deleted };
      });
      const expected = linearizableByBruteForce(history, initial);
      const result = checkLinearizable(history, { initial: new Map([["k", initial]]) });
      if ((result.ok === true) !== expected) {
        throw new Error(`seed=${seed}: brute force says ${expected}, the checker ${JSON.stringify(result)}`);
      }
      if (result.ok === false) {
        verdicts.violation++;
        const evidence = result.evidence.filter((op) => op.outcome !== "fail");
        expect(linearizableByBruteForce(evidence, initial)).toBe(false);
      } else {
        verdicts.linearizable++;
      }
    }
    // Both verdicts must be common, or the comparison proves little.
    expect(verdicts.linearizable).toBeGreaterThan(500);
    expect(verdicts.violation).toBeGreaterThan(500);
  });

  test("agrees with a brute-force search on 3000 random single-key histories of compare-and-set writes", () => {
    const verdicts = { linearizable: 0, violation: 0 };
    for (let seed = 1; seed <= 3000; seed++) {
      const prng = createPrng(1_000_000 + seed);
      const opsCount = prng.intInclusive(2, 8);
      const readable = [null, ...Array.from({ length: opsCount }, (_, i) => `v${i}`)];
      // Acknowledged writes name versions in call order, as a log's indexes would (gets name none).
      const calls = Array.from({ length: opsCount }, () => prng.intInclusive(0, 40)).sort((a, b) => a - b);
      let version = 0;
      const history: Operation[] = calls.map((callMs, i): Operation => {
        const kindRoll = prng.next();
        const outcomeRoll = prng.next();
        const outcome: OperationOutcome = outcomeRoll < 0.55 ? "ok" : outcomeRoll < 0.85 ? "unknown" : "fail";
        const returnMs = outcome === "unknown" ? undefined : callMs + prng.intInclusive(0, 15);
        const base = { id: i + 1, clientId: i, key: "k", callMs, returnMs, outcome };
        if (kindRoll < 0.35) return { ...base, kind: "get", ...(outcome === "ok" ? { output: prng.pick(readable) } : {}) };
        const ifVersion = prng.chance(0.6) ? prng.intInclusive(0, opsCount) : undefined;
        const named = outcome === "ok" ? { version: ++version } : {};
        const condition = ifVersion === undefined ? {} : { ifVersion };
        if (kindRoll < 0.75) return { ...base, kind: "put", value: `v${i}`, ...named, ...condition };
        return { ...base, kind: "delete", ...named, ...condition };
      });
      const expected = findVersionViolation(history) === undefined && linearizableByBruteForce(history, null);
      const result = checkLinearizable(history);
      if ((result.ok === true) !== expected) {
        throw new Error(`seed=${seed}: brute force says ${expected}, the checker ${JSON.stringify(result)}`);
      }
      if (result.ok === true) {
        verdicts.linearizable++;
      } else {
        verdicts.violation++;
        // The evidence fails on its own, by brute force too (shrinking kept what it relies on).
        if (result.ok === false && findVersionViolation(result.evidence) === undefined) {
          expect(linearizableByBruteForce(result.evidence.filter((op) => op.outcome !== "fail"), null)).toBe(false);
        }
      }
    }
    expect(verdicts.linearizable).toBeGreaterThan(300);
    expect(verdicts.violation).toBeGreaterThan(300);
  });

  test("a simulated history is accepted, and with one answer mutated any rejection's evidence holds it", () => {
    let rejections = 0;
    for (let seed = 1; seed <= 3000; seed++) {
      const prng = createPrng(seed);
      const history = simulateRegisterHistory(prng, {
        opsCount: prng.intInclusive(3, 40),
        keysCount: prng.intInclusive(1, 2),
        clientsCount: prng.intInclusive(2, 4),
        unknownChance: 0.15,
        unknownEffectDelayMsMax: 100,
      });
      const accepted = checkLinearizable(history);
      if (accepted.ok !== true) {
        throw new Error(`seed=${seed}: rejected a linearizable history: ${JSON.stringify(accepted)}`);
      }

      const answered = history.filter(
        (op) => op.outcome === "ok" && (op.kind === "get" || (op.kind === "delete" && op.deleted !== undefined)),
      );
      if (answered.length === 0) continue;
      const target = prng.pick(answered);
      const written = history.filter((op) => op.kind === "put" && op.key === target.key && op.outcome !== "fail");
      const mutatedOp: Operation =
        target.kind === "get"
          ? { ...target, output: prng.pick([null, ...written.map((op) => op.value ?? null)]) }
          : { ...target, deleted: target.deleted !== true };
      const result = checkLinearizable(history.map((op) => (op === target ? mutatedOp : op)));
      if (result.ok !== false) continue; // Many mutations are still explainable by concurrency.
      rejections++;
      // Shrinking removes only what cannot make a linearizable history fail, so the mutation remains.
      if (!result.evidence.includes(mutatedOp)) throw new Error(`seed=${seed}: evidence lost the mutated operation`);
      expect(checkLinearizable(result.evidence).ok).toBe(false);
    }
    expect(rejections).toBeGreaterThan(1000);
  });
});

describe("a compare-and-set refused 409 read its key at the version its answer names (before, refusals were dropped: a node refusing against a stale version passed)", () => {
  const versioned = (op: Operation, version: number): Operation => ({ ...op, version });
  const refused = (op: Operation, ifVersion: number, atVersion: number): Operation => ({ ...op, outcome: "fail", ifVersion, refusedAtVersion: atVersion });

  test("a refusal that saw an older version than a write acknowledged before it began is a violation, and the evidence names the refusal", () => {
    const a = versioned(put(1, "k", "a", 0, 1), 1);
    const b = versioned(put(1, "k", "b", 2, 3), 3);
    const stale = refused(put(2, "k", "c", 4, 5), 3, 1);
    const result = expectRejected(checkLinearizable([a, b, stale]));
    expect(result.evidence).toContain(stale);
    expect(result.evidence.every((op) => op.kind !== "get")).toBe(true);
    // Overlapping the second put, the refusal may have come first.
    expect(checkLinearizable([a, b, refused(put(2, "k", "d", 2, 5), 3, 1)]).ok).toBe(true);
    // At the version the key is at, it is right.
    expect(checkLinearizable([a, b, refused(put(2, "k", "e", 4, 5), 1, 3)]).ok).toBe(true);
  });

  test("a refusal that found the key absent after an acknowledged put, with no delete between, is a violation", () => {
    const a = versioned(put(1, "k", "a", 0, 1), 1);
    const absent = refused(del(2, "k", 2, 3), 1, 0);
    expectRejected(checkLinearizable([a, absent]));
    expect(checkLinearizable([a, del(3, "k", 1, undefined, "unknown"), absent]).ok).toBe(true);
  });

  test("a refusal at the version it asked for, at a delete's version, or at another key's version is wrong on its own", () => {
    expect(expectRejected(checkLinearizable([versioned(put(1, "k", "a", 0, 1), 1), refused(put(2, "k", "b", 2, 3), 1, 1)])).reason).toContain("at the version it asked for");
    expect(expectRejected(checkLinearizable([versioned(put(1, "k", "a", 0, 1), 1), versioned(del(1, "k", 2, 3), 2), refused(put(2, "k", "b", 4, 5), 1, 2)])).reason).toContain("a delete");
    expect(expectRejected(checkLinearizable([versioned(put(1, "j", "a", 0, 1), 1), refused(put(2, "k", "b", 2, 3), 0, 1)])).reason).toContain("another key");
    // A version the history names for nothing says nothing.
    expect(checkLinearizable([versioned(put(1, "k", "a", 0, 1), 1), refused(put(2, "k", "b", 2, 3), 1, 7)]).ok).toBe(true);
  });

  test("describeOperation says what a refusal read", () => {
    expect(describeOperation({ ...refused(put(3, "k", "v", 1, 2), 4, 9), id: 5 })).toBe('client 3 put(k, "v", ifVersion 4) → refused: the key was at version 9 [1ms → 2ms] fail');
  });

  /**
   * A register with versions (a log index per write) driven by compare-and-set clients: each write
   * takes effect at an instant within its interval (an unknown one, maybe never), in that order; a
   * compare-and-set whose version the key is not at then is refused with the key's version.
   */
  function simulateVersionedRegister(prng: Prng, opsCount: number): Operation[] {
    const clients = prng.intInclusive(2, 4);
    const freeMs = Array.from({ length: clients }, () => prng.intInclusive(0, 5));
    const drafts: { op: Mutable<Operation>; effectMs: number | undefined }[] = [];
    for (let id = 1; id <= opsCount; id++) {
      const clientId = prng.intInclusive(0, clients - 1);
      const callMs = freeMs[clientId] ?? 0;
      const key = `k${prng.intInclusive(0, 1)}`;
      const roll = prng.next();
      const kind = roll < 0.4 ? "get" : roll < 0.85 ? "put" : "delete";
      const outcome: OperationOutcome = prng.chance(0.15) ? "unknown" : "ok";
      const op: Mutable<Operation> = { id, clientId, kind, key, callMs, outcome };
      if (kind === "put") op.value = `v${id}`;
      // A version the key may be at: absent, or one of the writes so far (most miss, and are refused).
      if (kind !== "get" && prng.chance(0.6)) op.ifVersion = prng.chance(0.3) ? 0 : prng.intInclusive(1, id);
      const effectMs = outcome === "unknown" && prng.chance(0.5) ? undefined : callMs + prng.intInclusive(0, 15);
      if (outcome === "ok") op.returnMs = (effectMs ?? callMs) + prng.intInclusive(0, 15);
      freeMs[clientId] = (op.returnMs ?? callMs + 100) + prng.intInclusive(0, 3);
      drafts.push({ op, effectMs });
    }
    const state = new Map<string, { value: string; version: number }>();
    let index = 0;
    const effective = drafts.filter((draft) => draft.effectMs !== undefined);
    effective.sort((x, y) => (x.effectMs ?? 0) - (y.effectMs ?? 0) || x.op.id - y.op.id);
    for (const { op } of effective) {
      const before = state.get(op.key);
      if (op.kind === "get") {
        op.output = before?.value ?? null;
        if (before !== undefined) op.version = before.version;
        continue;
      }
      index++;
      if (op.ifVersion !== undefined && op.ifVersion !== (before?.version ?? 0)) {
        // Refused where it applied; the client is answered 409 with the key's version.
        if (op.outcome === "ok") {
          op.outcome = "fail";
          op.refusedAtVersion = before?.version ?? 0;
        } else op.outcome = "fail";
        if (op.returnMs === undefined) op.returnMs = (op.callMs ?? 0) + 100;
        continue;
      }
      if (op.kind === "put") state.set(op.key, { value: op.value ?? "", version: index });
      else {
        state.delete(op.key);
        if (op.outcome === "ok") op.deleted = before !== undefined;
      }
      if (op.outcome === "ok") op.version = index;
    }
    return drafts.map((draft) => draft.op);
  }

  test("simulated compare-and-set histories are accepted, and a refusal's version made stale is found", () => {
    let mutated = 0;
    let rejected = 0;
    for (let seed = 1; seed <= 2000; seed++) {
      const prng = createPrng(7_000_000 + seed);
      const history = simulateVersionedRegister(prng, prng.intInclusive(4, 30));
      const accepted = checkLinearizable(history);
      if (accepted.ok !== true) throw new Error(`seed=${seed}: rejected a linearizable history: ${JSON.stringify(accepted)}`);
      const refusals = history.filter((op) => op.refusedAtVersion !== undefined);
      if (refusals.length === 0) continue;
      const target = prng.pick(refusals);
      // Another version the key was at in this history (or absent), not the one the refusal saw.
      const versions = [0, ...history.filter((op) => op.key === target.key && op.kind === "put" && op.version !== undefined).map((op) => op.version ?? 0)];
      const others = versions.filter((version) => version !== target.refusedAtVersion && version !== target.ifVersion);
      if (others.length === 0) continue;
      const wrong: Operation = { ...target, refusedAtVersion: prng.pick(others) };
      mutated++;
      const result = checkLinearizable(history.map((op) => (op === target ? wrong : op)));
      if (result.ok !== false) continue; // an older version may still fit the refusal's interval
      rejected++;
      expect(result.evidence).toContain(wrong);
    }
    expect(mutated).toBeGreaterThan(300);
    expect(rejected).toBeGreaterThan(mutated / 4);
  });
});
