/** The versions clients were answered must agree with each other and with real time (src/chaos/version-check.ts), and the linearizability checker and the chaos epochs check them. */
import { describe, expect, test } from "bun:test";
import type { Operation } from "../src/chaos/history.ts";
import { checkLinearizable } from "../src/chaos/linearizability.ts";
import { checkEpoch } from "../src/chaos/random.ts";
import { findVersionViolation } from "../src/chaos/version-check.ts";

let nextId = 1;
const put = (key: string, value: string, callMs: number, returnMs: number, version?: number): Operation => ({
  id: nextId++,
  clientId: 1,
  kind: "put",
  key,
  value,
  callMs,
  returnMs,
  outcome: "ok",
  ...(version === undefined ? {} : { version }),
});
const get = (key: string, output: string | null, callMs: number, returnMs: number, version?: number): Operation => ({
  id: nextId++,
  clientId: 2,
  kind: "get",
  key,
  output,
  callMs,
  returnMs,
  outcome: "ok",
  ...(version === undefined ? {} : { version }),
});
const del = (key: string, callMs: number, returnMs: number, version: number): Operation => ({ id: nextId++, clientId: 3, kind: "delete", key, callMs, returnMs, outcome: "ok", deleted: true, version });

describe("findVersionViolation", () => {
  test("a history whose versions agree passes, concurrent writes in either order included", () => {
    const history = [
      put("a", "1", 0, 10, 5),
      put("b", "2", 5, 20, 4), // concurrent with a's put: either index order is fine
      get("a", "1", 30, 40, 5),
      del("a", 50, 60, 9),
      get("a", null, 70, 80),
      put("a", "3", 90, 100, 12),
    ];
    expect(findVersionViolation(history)).toBeUndefined();
    expect(checkLinearizable(history).ok).toBe(true);
  });

  test("two acknowledged writes naming one version", () => {
    const violation = findVersionViolation([put("a", "1", 0, 10, 5), put("b", "2", 20, 30, 5)]);
    expect(violation?.reason).toBe("two acknowledged writes name version 5");
    expect(violation?.evidence.map((op) => op.value)).toEqual(["1", "2"]);
  });

  test("a get naming another version than its value's put was acknowledged at", () => {
    const violation = findVersionViolation([put("a", "1", 0, 10, 5), get("a", "1", 20, 30, 6)]);
    expect(violation?.reason).toContain("but its put was acknowledged at version 5");
    expect(violation?.key).toBe("a");
  });

  test("two gets of one value naming different versions, its put unanswered", () => {
    const unanswered: Operation = { id: nextId++, clientId: 1, kind: "put", key: "a", value: "1", callMs: 0, outcome: "unknown" };
    const violation = findVersionViolation([unanswered, get("a", "1", 20, 30, 7), get("a", "1", 40, 50, 8)]);
    expect(violation?.reason).toBe('two gets read "1", one at version 7 and one at 8');
  });

  test("a write called after another returned, acknowledged at a smaller version, also across keys", () => {
    const violation = findVersionViolation([put("a", "1", 0, 10, 9), put("b", "2", 11, 20, 8)]);
    expect(violation?.reason).toBe("a put was acknowledged at version 8, but a write that returned before it was called was acknowledged at 9");
    // Touching intervals (a return and a call in the same ms) are concurrent: no order to break.
    expect(findVersionViolation([put("a", "1", 0, 10, 9), put("b", "2", 10, 20, 8)])).toBeUndefined();
  });

  test("a write called after a get returned must come after the version the get read", () => {
    // The put's answer never came: only the get tells of version 30.
    const unanswered: Operation = { id: nextId++, clientId: 1, kind: "put", key: "a", value: "1", callMs: 0, outcome: "unknown" };
    const history = [unanswered, get("a", "1", 20, 30, 30), del("b", 40, 50, 25)];
    expect(findVersionViolation(history)?.reason).toBe("a delete was acknowledged at version 25, but a get that returned before it was called read version 30");
    // A get of an absent key names no version: it orders nothing.
    expect(findVersionViolation([get("a", null, 0, 10), del("b", 20, 30, 1)])).toBeUndefined();
  });

  describe("found in review: histories whose values the search could order, against their versions", () => {
    const unknownPut = (key: string, value: string, callMs: number): Operation => ({ id: nextId++, clientId: 1, kind: "put", key, value, callMs, outcome: "unknown" });

    test("a lost acknowledged write: of two concurrent acknowledged puts, the final read finds the one at the lower version", () => {
      const history = [put("k", "c1", 0, 10, 7), put("k", "c2", 0, 10, 8), get("k", "c1", 100, 110, 7)];
      expect(findVersionViolation(history)?.reason).toBe('a get read "c1" at version 7, but a put of it that returned before it was called was acknowledged at 8: a stale read');
      const result = checkLinearizable(history);
      expect(result.ok).toBe(false);
    });

    test("a stale read after two concurrent acknowledged writes, a put's or a delete's, and after an unanswered put read since", () => {
      expect(findVersionViolation([put("k", "b", 0, 3, 6), put("k", "a", 0, 5, 7), get("k", "b", 10, 20, 6)])?.reason).toContain("a stale read");
      expect(findVersionViolation([put("k", "b", 0, 3, 6), del("k", 0, 5, 7), get("k", "b", 10, 20, 6)])?.reason).toContain("a stale read");
      // Versions going back between two reads, both puts unanswered.
      expect(findVersionViolation([unknownPut("k", "a", 0), unknownPut("k", "b", 1), get("k", "b", 10, 20, 9), get("k", "a", 30, 40, 7)])?.reason).toBe(
        'a get read "a" at version 7, but a get of it that returned before it was called read version 9: a stale read',
      );
    });

    test("one version naming two values, another key's write, or a delete", () => {
      expect(findVersionViolation([unknownPut("k", "a", 0), unknownPut("k", "b", 0), get("k", "a", 10, 20, 7), get("k", "b", 30, 40, 7)])?.reason).toBe(
        'version 7 names two changes: a get of k of "a" and a get of k of "b"',
      );
      expect(findVersionViolation([put("j", "x", 0, 5, 7), unknownPut("k", "a", 0), get("k", "a", 10, 20, 7)])?.reason).toBe('version 7 names two changes: a put to j of "x" and a get of k of "a"');
      expect(findVersionViolation([del("k", 0, 5, 7), unknownPut("k", "a", 0), get("k", "a", 10, 20, 7)])?.reason).toBe('version 7 names two changes: a delete of k and a get of k of "a"');
    });

    test("reading the newer write, or the older one while the newer is still running, passes", () => {
      expect(findVersionViolation([put("k", "b", 0, 3, 6), put("k", "a", 0, 5, 7), get("k", "a", 10, 20, 7)])).toBeUndefined();
      expect(findVersionViolation([put("k", "b", 0, 3, 6), put("k", "a", 0, 50, 7), get("k", "b", 10, 20, 6)])).toBeUndefined();
      // Re-reading the same version is no regression.
      expect(findVersionViolation([put("k", "b", 0, 3, 6), get("k", "b", 10, 20, 6), get("k", "b", 30, 40, 6)])).toBeUndefined();
    });
  });

  describe("compare-and-set", () => {
    const cas = (op: Operation, ifVersion: number): Operation => ({ ...op, ifVersion });

    test("one applied on the version it named passes; 0 after a delete too", () => {
      const history = [put("a", "1", 0, 10, 5), cas(put("a", "2", 20, 30, 8), 5), del("a", 40, 50, 9), cas(put("a", "3", 60, 70, 12), 0)];
      expect(findVersionViolation(history)).toBeUndefined();
    });

    test("one applied though the key was written in between", () => {
      const history = [put("a", "1", 0, 10, 5), put("a", "2", 20, 30, 7), cas(put("a", "3", 40, 50, 9), 5)];
      expect(findVersionViolation(history)?.reason).toBe("a put with ifVersion 5 was applied at version 9, but the key was written at version 7 in between");
    });

    test("a write known only because a get read it counts as in between", () => {
      const unanswered: Operation = { id: nextId++, clientId: 1, kind: "put", key: "a", value: "2", callMs: 15, outcome: "unknown" };
      const history = [put("a", "1", 0, 10, 5), unanswered, get("a", "2", 20, 30, 7), cas(del("a", 40, 50, 9), 5)];
      expect(findVersionViolation(history)?.reason).toContain("written at version 7 in between");
    });

    test("one on a version that is another key's, or a delete's", () => {
      expect(findVersionViolation([put("b", "1", 0, 10, 5), cas(put("a", "2", 20, 30, 8), 5)])?.reason).toBe("a put with ifVersion 5 was applied at version 8, but version 5 is a write of b");
      expect(findVersionViolation([put("a", "1", 0, 10, 4), del("a", 11, 15, 5), cas(put("a", "2", 20, 30, 8), 5)])?.reason).toContain("but version 5 deleted the key");
    });

    test("one on a version at or past its own", () => {
      expect(findVersionViolation([cas(put("a", "2", 20, 30, 8), 8)])?.reason).toContain("a version it could not yet have seen");
    });

    test("ifVersion 0 applied while the key's last write put a value, unless a delete of it went unanswered", () => {
      const history = [put("a", "1", 0, 10, 5), cas(put("a", "2", 20, 30, 8), 0)];
      expect(findVersionViolation(history)?.reason).toBe("a put with ifVersion 0 was applied at version 8, but the key's last write before it, at version 5, put a value there");
      const unansweredDelete: Operation = { id: nextId++, clientId: 3, kind: "delete", key: "a", callMs: 12, outcome: "unknown" };
      expect(findVersionViolation([...history, unansweredDelete])).toBeUndefined();
    });
  });

  test("the linearizability checker fails a history whose values are linearizable but whose versions are not", () => {
    const history = [put("a", "1", 0, 10, 5), get("a", "1", 20, 30, 4)];
    const result = checkLinearizable(history);
    expect(result.ok).toBe(false);
    if (result.ok === false) expect(result.reason).toContain("acknowledged at version 5");
  });

  test("a chaos epoch checks versions across its keys, which the per-key search never sees together", async () => {
    const history = [put("a", "1", 0, 10, 9), put("b", "2", 20, 30, 3)];
    expect(checkLinearizable(history.filter((op) => op.key === "a")).ok).toBe(true);
    expect(checkLinearizable(history.filter((op) => op.key === "b")).ok).toBe(true);
    const verdict = await checkEpoch(history, 5_000);
    expect(verdict.ok).toBe(false);
  });

  test("an epoch whose check runs out of time names the epoch's whole budget, not what was left of it for the key that ran out", async () => {
    // 24 puts in flight at once, then two reads no order explains: the search must try every subset.
    const history = [...Array.from({ length: 24 }, (_, i) => put("k", `v${i}`, 0, 100)), get("k", "v0", 200, 210), get("k", "v1", 300, 310)];
    const verdict = await checkEpoch(history, 20);
    expect(verdict).toEqual({ ok: "unknown", reason: "budget exceeded: the search ran past the epoch's 20 ms (--check-budget)", key: "k" });
  });
});
