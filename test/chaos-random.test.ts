// Proves `kv chaos random` passes on a healthy kv under a seeded nemesis and catches a real anomaly (stale reads under partitions are reported as a linearizability violation with evidence), through the built executable, that a long run keeps testing to its end (keys rotate in epochs, each checked and dropped while the run goes on, and only faults that met operations count), and that its pure parts hold: a seed fixes the nemesis schedule, operations are classified as the checker needs, and the HTML report carries the verdict, the timeline and the evidence.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Outcome } from "../src/chaos/client.ts";
import { checkLinearizable, describeOperation, type Operation } from "../src/chaos/linearizability.ts";
import { describeFault, describePlannedFault, modeNeedsProxies, planSchedule, type PlannedFault } from "../src/chaos/nemesis.ts";
import { countOperations, EpochSummaries, type EpochSummary, formatDuration, OperationActivity, parseDurationMs, successLine, toOperation, type RandomResult } from "../src/chaos/random.ts";
import { escapeHtml, renderReport, type ReportInput } from "../src/chaos/report.tsx";
import { runKv } from "./helpers/kv-binary.ts";

/** Bounds a hung run; asserts nothing about speed. */
const SCENARIO_TIMEOUT_MS = 120_000;

const run = runKv;

/** What the epoch test reads from `--json` (only what it asserts on). */
type EpochRunResult = Pick<RandomResult, "epochs" | "workloadEndMs" | "operationsHeldMax" | "operations" | "throughput" | "faults" | "bank">;

const outDir = mkdtempSync(join(tmpdir(), "kv-random-test-"));
afterAll(() => rmSync(outDir, { recursive: true, force: true }));

/** A self-contained page fetches nothing: no external script, stylesheet, image or frame. */
function expectSelfContained(html: string): void {
  expect(html).not.toMatch(/<(script|link|img|iframe)\b[^>]*\b(src|href)=/i);
  expect(html).not.toMatch(/url\(\s*["']?https?:/i);
  expect(html).not.toContain("@import");
}

describe("kv chaos random, through the built executable", () => {
  test(
    "seed 7 for 8 s: the nemesis acts, the history is linearizable, the replicas converge, and --report writes the page",
    async () => {
      const reportFile = join(outDir, "seed-7.html");
      const { code, out } = await run(["chaos", "random", "--duration", "8s", "--seed", "7", "--report", reportFile]);
      if (code !== 0) console.error(out);
      expect(code).toBe(0);
      expect(out).toContain("=== Chaos Test: Random Faults Under a Checked Workload ===");
      expect(out).toContain("Seed: 7 (replay: kv chaos random --seed 7 --duration 8s)");
      // The schedule seed 7 draws for 8 s (see the schedule tests below), and its execution.
      expect(out).toContain("1.2s +2.6s isolate the leader");
      expect(out).toMatch(/\] nemesis: isolate node \d( \(the leader\))? from both peers/);
      expect(out).toMatch(/\] nemesis: healed: node \d reconnected/);
      expect(out).toContain("Faults injected: 1 (isolate 1)");
      expect(out).toContain("Final linearizable reads answered: 5 of 5");
      expect(out).toMatch(/Linearizability: ✅ linearizable \(\d+ keys in \d+ epochs?, checked in \d+ ms\)/);
      // Two bank clients by default: their transfers applied and their reads were judged.
      const bank = /Bank: ✅ (\d+) transfers by 2 clients \((\d+) applied, \d+ unknown\), (\d+) reads of several accounts, in \d+ rounds?: no money made or lost/.exec(out);
      expect(Number(bank?.[2])).toBeGreaterThan(10);
      expect(Number(bank?.[3])).toBeGreaterThan(10);
      expect(out).toMatch(/Convergence: ✅ all 3 nodes applied index \d+ and hold the same value for each of the 5 keys/);
      expect(out).toMatch(/✅ SUCCESS: \d+ operations in \d+ epochs? under 1 fault \(of 1 injected\) are linearizable/);
      expect(out).toContain("Replay this schedule: kv chaos random --seed 7 --duration 8s");
      expect(out).not.toContain("❌");

      const html = readFileSync(reportFile, "utf8");
      expect(html).toStartWith("<!doctype html>");
      expect(html).toContain('<div class="verdict ok" id="verdict"><strong>Linearizable</strong>');
      expect(html).toMatch(/<svg [^>]*class="chart timeline"/);
      expect(html).toMatch(/<svg [^>]*class="chart latency"/);
      expect(html).toMatch(/isolate node \d( \(the leader\))? from both peers/);
      expect(html).toContain("kv chaos random --seed 7 --duration 8s");
      expectSelfContained(html);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "a run longer than an epoch keeps testing to its end: fresh keys every --epoch-ops operations, each epoch checked and dropped while the run goes on, only faults that met operations counted",
    async () => {
      const jsonFile = join(outDir, "epochs.json");
      const reportFile = join(outDir, "epochs.html");
      // Before epochs, 400 was where a run stopped recording (its operation cap): clients went idle at
      // about 0.5 s while the nemesis went on, and its faults were still counted in the verdict.
      // Epochs of 300 make four in 8 s with room to spare beside a bank client (whose rounds are 60 turns).
      const epochOps = 300;
      const args = ["chaos", "random", "--duration", "8s", "--seed", "7", "--epoch-ops", String(epochOps), "--bank-clients", "1"];
      const { code, out } = await run([...args, "--json", jsonFile, "--report", reportFile]);
      if (code !== 0) console.error(out);
      expect(code).toBe(0);
      const { result } = JSON.parse(readFileSync(jsonFile, "utf8")) as { result: EpochRunResult };
      const { epochs } = result;

      // Epochs rotate: every one but the last holds exactly --epoch-ops client operations, on keys no
      // other epoch uses, and each is linearizable on its own.
      expect(epochs.length).toBeGreaterThanOrEqual(4);
      epochs.forEach((epoch, i) => {
        expect(epoch.index).toBe(i);
        expect(epoch.verdict).toBe("linearizable");
        expect(epoch.keys.length).toBe(5);
        if (i < epochs.length - 1) expect(epoch.clientOperations).toBe(epochOps);
      });
      expect(new Set(epochs.flatMap((e) => e.keys)).size).toBe(5 * epochs.length);
      expect(epochs[0]?.keys).toEqual(["k0", "k1", "k2", "k3", "k4"]);

      // Checked while the run goes on (all but the epoch in progress at the end, and perhaps the one
      // before it), and their histories dropped: memory holds a few epochs, never the whole run.
      const checkedDuringRun = epochs.filter((e) => e.checkedAtMs < result.workloadEndMs);
      expect(checkedDuringRun.length).toBeGreaterThanOrEqual(epochs.length - 2);
      expect(result.operationsHeldMax).toBeLessThanOrEqual(3 * epochOps + 100);
      expect(result.operations.total).toBeGreaterThan(4 * epochOps);
      expect(result.operations.total).toBe(epochs.reduce((n, e) => n + e.operations, 0));

      // Clients keep making operations to the end: the last epoch has some, and every whole second
      // from 5 s on (the one fault of seed 7 ends near 4 s) completed some.
      expect(epochs[epochs.length - 1]?.clientOperations ?? 0).toBeGreaterThan(0);
      const { bucketMs, completed } = result.throughput;
      expect(bucketMs).toBe(1_000);
      const lateBuckets = completed.slice(5, Math.floor(result.workloadEndMs / bucketMs));
      expect(lateBuckets.length).toBeGreaterThanOrEqual(2);
      for (const n of lateBuckets) expect(n).toBeGreaterThan(0);

      // The bank clients take fresh accounts every fifth of an epoch's operations; each round is
      // closed by a read of every account and checked while the run goes on.
      expect(result.bank.violation).toBeUndefined();
      expect(result.bank.unansweredClosingReads).toBe(0);
      expect(result.bank.rounds).toBeGreaterThanOrEqual(3);
      expect(result.bank.transfersApplied).toBeGreaterThan(0);
      // (By line: two such lines in a row share the newline between them.)
      expect(out.match(/^bank round \d+ checked: \d+ transfers \(\d+ applied\), \d+ reads, consistent$/gm)?.length).toBe(result.bank.rounds);

      // Faults count only when an operation was in flight during them: here the clients never stop,
      // so the one fault met operations, and the verdict says so.
      expect(result.faults.length).toBe(1);
      expect(result.faults.map((f) => f.metOperations)).toEqual([true]);
      expect(out).toContain(
        `✅ SUCCESS: ${result.operations.total} operations in ${epochs.length} epochs under 1 fault (of 1 injected) are linearizable`,
      );
      expect(out).toMatch(/\] epoch 0 checked: 3\d\d operations on k0\.\.k4, linearizable/);

      // The report details one epoch (the last) and lists every epoch in a table.
      const html = readFileSync(reportFile, "utf8");
      expect(html).toContain('<div class="verdict ok" id="verdict"><strong>Linearizable</strong>');
      expect(html).toContain(`Timeline and latency show epoch ${epochs.length - 1}`);
      expect(html.match(/<tr class="epoch /g)?.length).toBe(epochs.length);
      expectSelfContained(html);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "stale reads under partitions are caught: exit 1 with a linearizability violation and its evidence",
    async () => {
      const reportFile = join(outDir, "stale.html");
      const jsonFile = join(outDir, "stale.json");
      const args = ["chaos", "random", "--duration", "10s", "--seed", "7", "--read-consistency", "stale", "--nemesis", "partition"];
      const { code, out } = await run([...args, "--report", reportFile, "--json", jsonFile]);
      // On an anomaly the runner keeps the nodes' data and logs; the output above says all this test needs.
      const kept = /Node data and logs kept in (\S*kv-chaos-[^\s/]+)/.exec(out)?.[1];
      if (kept !== undefined) rmSync(kept, { recursive: true, force: true });
      if (code !== 1) console.error(out);
      expect(code).toBe(1);
      expect(out).toMatch(/\] nemesis: isolate node \d( \(the leader\))? from both peers/);
      expect(out).toMatch(/Linearizability: ❌ NOT linearizable on key k\d/);
      expect(out).toMatch(/Evidence: the smallest failing piece of the history \(\d+ operations\):/);
      // A stale read is a get in the evidence that returned a value already overwritten.
      expect(out).toMatch(/\n {4}client \d get\(k\d\) → ("c\d-w\d+"|null) \[\d+ms → \d+ms\] ok/);
      // The bank clients' listings are stale reads too: a listing misses a transfer that returned before it.
      expect(out).toMatch(/Bank: ❌ .* VIOLATION in round \d+: a read saw bank\/r\d+\/\d at version \d+, but (transfer t\d+, which|a read that) returned before it was called, .* a stale read/);
      expect(out).toContain("❌ FAILURE");
      expect(out).toContain("Replay this schedule: kv chaos random --seed 7 --duration 10s --read-consistency stale --nemesis partition");

      const result = JSON.parse(readFileSync(jsonFile, "utf8")) as {
        scenario: string;
        ok: boolean;
        result: { seed: number; linearizability: { verdict: { ok: unknown; key: string; evidence: Operation[] }; evidence: string[] } };
      };
      expect(result.scenario).toBe("random");
      expect(result.ok).toBe(false);
      expect(result.result.seed).toBe(7);
      const verdict = result.result.linearizability.verdict;
      expect(verdict.ok).toBe(false);
      // The evidence is exact and replays: checked on its own, it still fails.
      expect(checkLinearizable(verdict.evidence).ok).toBe(false);
      expect(result.result.linearizability.evidence).toEqual(verdict.evidence.map(describeOperation));

      const html = readFileSync(reportFile, "utf8");
      expect(html).toContain('<div class="verdict bad" id="verdict"><strong>Not linearizable</strong> on key');
      expect(html).toContain('<ol class="evidence-list" id="evidence">');
      for (const op of verdict.evidence) expect(html).toContain(escapeHtml(describeOperation(op)));
      expectSelfContained(html);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test("bad flags are usage errors (exit 2) and start nothing", async () => {
    const cases: [string[], string][] = [
      [["--read-consistency", "eventual"], "--read-consistency must be one of linearizable, lease, stale"],
      [["--nemesis", "flood"], "--nemesis must be one of all, partition, kill, pause"],
      [["--duration", "5 parsecs"], "--duration must be a duration"],
      [["--bank-clients", "-1"], "--bank-clients must be a whole number from 0 to 1000, got '-1'"],
      // Decimal digits only (Number() took these: found in review).
      [["--bank-clients", "1e1"], "--bank-clients must be a whole number from 0 to 1000, got '1e1'"],
      [["--bank-clients", "0x2"], "--bank-clients must be a whole number from 0 to 1000, got '0x2'"],
      [["--bank-clients", " 3"], "--bank-clients must be a whole number from 0 to 1000, got ' 3'"],
      [["--base-port", "5001"], "'random' needs the runner's TCP proxies"],
    ];
    for (const [flags, message] of cases) {
      const { code, out } = await run(["chaos", "random", ...flags]);
      expect(code).toBe(2);
      expect(out).toContain(message);
      expect(out).not.toContain("Starting 3-node cluster");
    }
  });
});

describe("nemesis schedule", () => {
  const plan = (seed: number, durationMs: number, mode: "all" | "partition" | "kill" | "pause" = "all") =>
    planSchedule({ seed, durationMs, nodeCount: 3, mode });

  test("a seed fixes the schedule; other seeds draw others", () => {
    expect(plan(42, 60_000)).toEqual(plan(42, 60_000));
    const lines = (schedule: PlannedFault[]) => schedule.map((planned) => describePlannedFault(planned)).join("\n");
    const distinct = new Set([1, 2, 3, 4, 5, 6].map((seed) => lines(plan(seed, 60_000))));
    expect(distinct.size).toBe(6);
  });

  test("a kill of the node a run spares is listed as the pause it runs as (found in a black-box review: the listing said kill)", () => {
    const kill = (target: 1 | 2 | "leader"): PlannedFault => ({ index: 0, startMs: 1_200, durationMs: 2_000, fault: { kind: "kill", target } });
    expect(describePlannedFault(kill(1), 1)).toBe("1.2s +2.0s pause node 1 (spared from kills)");
    expect(describePlannedFault(kill(2), 1)).toBe("1.2s +2.0s kill node 2");
    expect(describePlannedFault(kill(1))).toBe("1.2s +2.0s kill node 1");
    expect(describePlannedFault(kill("leader"), 1)).toBe("1.2s +2.0s kill the leader");
  });

  test("the schedule the executable tests rely on: seed 7 isolates the leader early, for long enough", () => {
    expect(plan(7, 8_000).map((planned) => describePlannedFault(planned))).toEqual(["1.2s +2.6s isolate the leader"]);
    // Under --nemesis partition for 10 s: two isolations of more than 2 s, far longer than an
    // election (at most 300 ms): the majority moves on while the cut-off node still serves reads.
    const partition = plan(7, 10_000, "partition");
    expect(partition.map((p) => describeFault(p.fault))).toEqual(["isolate the leader", "isolate the leader"]);
    for (const p of partition) expect(p.durationMs).toBeGreaterThan(2_000);
  });

  test("one fault at a time, each ending before the run does, after the cluster has served a while", () => {
    for (let seed = 0; seed < 50; seed++) {
      const schedule = plan(seed, 60_000);
      expect(schedule.length).toBeGreaterThan(5);
      expect(schedule[0]?.startMs).toBeGreaterThanOrEqual(1_000);
      schedule.forEach((p, i) => {
        expect(p.index).toBe(i);
        expect(p.startMs + p.durationMs).toBeLessThanOrEqual(60_000 - 500);
        const next = schedule[i + 1];
        if (next !== undefined) expect(next.startMs).toBeGreaterThanOrEqual(p.startMs + p.durationMs + 500);
      });
    }
  });

  test("a longer run keeps the shorter run's faults and adds more", () => {
    const short = plan(9, 20_000);
    const long = plan(9, 60_000);
    expect(long.slice(0, short.length)).toEqual(short);
    expect(long.length).toBeGreaterThan(short.length);
  });

  test("a mode draws only its kinds; cut links are distinct and real", () => {
    const kinds = (mode: "all" | "partition" | "kill" | "pause") =>
      new Set(Array.from({ length: 20 }, (_, seed) => plan(seed, 60_000, mode)).flat().map((p) => p.fault.kind));
    expect([...kinds("partition")].sort()).toEqual(["cut-links", "isolate"]);
    expect([...kinds("kill")]).toEqual(["kill"]);
    expect([...kinds("pause")]).toEqual(["pause"]);
    expect([...kinds("all")].sort()).toEqual(["cut-links", "isolate", "kill", "pause"]);
    for (let seed = 0; seed < 20; seed++) {
      for (const { fault } of plan(seed, 60_000, "partition")) {
        if (fault.kind !== "cut-links") continue;
        const names = fault.links.map(([from, to]) => `${from}>${to}`);
        expect(new Set(names).size).toBe(names.length);
        for (const [from, to] of fault.links) {
          expect(from).not.toBe(to);
          expect([from, to].every((id) => id >= 1 && id <= 3)).toBe(true);
        }
      }
    }
    expect(modeNeedsProxies("all")).toBe(true);
    expect(modeNeedsProxies("partition")).toBe(true);
    expect(modeNeedsProxies("kill")).toBe(false);
    expect(modeNeedsProxies("pause")).toBe(false);
  });

  test("faults read as sentences", () => {
    expect(describeFault({ kind: "kill", target: "leader" })).toBe("kill the leader");
    expect(describeFault({ kind: "pause", target: 2 })).toBe("pause node 2");
    expect(describeFault({ kind: "cut-links", links: [[1, 2], [3, 1]] })).toBe("cut links 1→2, 3→1");
    expect(describePlannedFault({ index: 0, startMs: 1_234, durationMs: 2_000, fault: { kind: "isolate", target: 3 } })).toBe(
      "1.2s +2.0s isolate node 3",
    );
  });
});

describe("operations as the checker sees them", () => {
  const bytes = (text: string) => new TextEncoder().encode(text);
  const call = (kind: "get" | "put" | "delete", value?: string) => ({ id: 9, clientId: 2, kind, key: "k1", value, callMs: 100, endMs: 140 });

  test("an answer is ok, a refusal fail, no answer unknown (with no return time)", () => {
    const putOk: Outcome = { kind: "ok", status: 200, body: bytes('{"key":"k1","version":12}'), version: 12 };
    expect(toOperation(call("put", "c2-w1"), putOk)).toEqual({ id: 9, clientId: 2, kind: "put", key: "k1", value: "c2-w1", callMs: 100, returnMs: 140, outcome: "ok", version: 12 });
    // A compare-and-set carries the version it named; refused (409), it is a refusal like any other.
    expect(toOperation({ ...call("put", "c2-w9"), ifVersion: 7 }, putOk)).toMatchObject({ ifVersion: 7, version: 12, outcome: "ok" });
    expect(toOperation({ ...call("put", "c2-w10"), ifVersion: 7 }, { kind: "fail", status: 409, error: "version_mismatch", location: undefined })).toMatchObject({ ifVersion: 7, outcome: "fail" });
    const refused: Outcome = { kind: "fail", status: 503, error: "no_leader", location: undefined };
    expect(toOperation(call("put", "c2-w2"), refused)).toMatchObject({ outcome: "fail", returnMs: 140 });
    const timedOut = toOperation(call("put", "c2-w3"), { kind: "unknown", reason: "timeout" });
    expect(timedOut.outcome).toBe("unknown");
    expect(timedOut.returnMs).toBeUndefined();
  });

  test("a get reads the value or absence; a delete says whether the key was there; each names the version answered", () => {
    expect(toOperation(call("get"), { kind: "ok", status: 200, body: bytes("c1-w7"), version: 3 })).toMatchObject({ output: "c1-w7", version: 3 });
    const absent = toOperation(call("get"), { kind: "ok", status: 404, body: new Uint8Array(0), version: undefined });
    expect(absent).toMatchObject({ output: null });
    expect("version" in absent).toBe(false);
    const deleted = toOperation(call("delete"), { kind: "ok", status: 200, body: bytes('{"deleted":true,"version":4}'), version: 4 });
    expect(deleted).toMatchObject({ outcome: "ok", deleted: true, version: 4 });
    expect("value" in deleted).toBe(false);
  });

  test("counts by kind and outcome", () => {
    const ops = [toOperation(call("get"), { kind: "unknown", reason: "x" }), toOperation(call("put", "v"), { kind: "fail", status: 307, error: "not_leader", location: undefined })];
    expect(countOperations(ops)).toEqual({ total: 2, byKind: { get: 1, put: 1, delete: 0 }, ok: 0, failed: 1, refusedCompareAndSets: 0, unknown: 1 });
    // A compare-and-set refused 409 with the key's version counts among the refused, and on its own.
    const refusal = toOperation({ id: 3, clientId: 1, kind: "put", key: "k1", value: "v", callMs: 1, endMs: 2, ifVersion: 4 }, { kind: "fail", status: 409, error: "version_mismatch", location: undefined, keyVersion: 6 });
    expect(countOperations([...ops, refusal])).toMatchObject({ failed: 2, refusedCompareAndSets: 1 });
  });

  test("a fault counts only when an operation was in flight during it", () => {
    const activity = new OperationActivity();
    // Nothing yet: a fault now met nothing.
    expect(activity.metBy({ startMs: 0, endMs: 50 })).toBe(false);
    activity.begin();
    activity.end(100);
    // The operation ended at 100: a window from 50 met it, one from 200 did not (nothing in flight since).
    expect(activity.metBy({ startMs: 50, endMs: 300 })).toBe(true);
    expect(activity.metBy({ startMs: 200, endMs: 300 })).toBe(false);
    // One in flight when the window closes met it, however late it began.
    activity.begin();
    expect(activity.metBy({ startMs: 400, endMs: 500 })).toBe(true);
    activity.end(520);
    expect(activity.metBy({ startMs: 600, endMs: 900 })).toBe(false);
    expect(successLine({ operations: 900, epochs: 3, faultsMet: 2, faultsInjected: 5 })).toBe(
      "✅ SUCCESS: 900 operations in 3 epochs under 2 faults (of 5 injected) are linearizable, and every replica converged!",
    );
    expect(successLine({ operations: 10, epochs: 1, faultsMet: 1, faultsInjected: 1 })).toBe(
      "✅ SUCCESS: 10 operations in 1 epoch under 1 fault (of 1 injected) are linearizable, and every replica converged!",
    );
  });

  test("durations read as the flag takes them", () => {
    expect(parseDurationMs("60s")).toBe(60_000);
    expect(parseDurationMs("60")).toBe(60_000);
    expect(parseDurationMs("500ms")).toBe(500);
    expect(parseDurationMs("2m")).toBe(120_000);
    expect(parseDurationMs("1h")).toBe(3_600_000);
    expect(parseDurationMs("1.5s")).toBe(1_500);
    expect(parseDurationMs("5x")).toBeUndefined();
    expect(parseDurationMs("")).toBeUndefined();
    expect(formatDuration(8_000)).toBe("8s");
    expect(formatDuration(1_500)).toBe("1500ms");
  });
});

describe("HTML report", () => {
  let nextId = 1;
  const op = (fields: Omit<Operation, "id">): Operation => ({ id: nextId++, ...fields });

  /** A stale read: client 2 reads the value client 1 overwrote before the read began. */
  const staleHistory: Operation[] = [
    op({ clientId: 1, kind: "put", key: "k0", value: "c1-w1", callMs: 0, returnMs: 10, outcome: "ok" }),
    op({ clientId: 1, kind: "put", key: "k0", value: "c1-w2", callMs: 20, returnMs: 30, outcome: "ok" }),
    op({ clientId: 2, kind: "get", key: "k0", output: "c1-w1", callMs: 40, returnMs: 45, outcome: "ok" }),
    op({ clientId: 2, kind: "put", key: "k1", value: "<script>alert(1)</script>", callMs: 50, outcome: "unknown" }),
    op({ clientId: 3, kind: "delete", key: "k1", callMs: 5, returnMs: 8, outcome: "fail" }),
  ];
  const base = (history: Operation[]): ReportInput => ({
    title: "kv chaos random, seed 1",
    subtitle: "test",
    replayCommand: "kv chaos random --seed 1 --duration 1s",
    endMs: 100,
    history,
    gaveUpMs: new Map([[4, 80]]),
    clientLabels: new Map([[0, "final"]]),
    faults: [{ startMs: 15, endMs: 60, kind: "isolate", label: "isolate node 2 (the leader) from both peers" }],
    verdict: checkLinearizable(history),
    checkMs: 1,
    checks: [{ name: "Convergence", ok: true, detail: "every node applied index 7" }],
  });

  test("a violation: the verdict, the timeline with the fault shaded, and the evidence listed and drawn", () => {
    const input = base(staleHistory);
    expect(input.verdict.ok).toBe(false);
    const html = renderReport(input);
    expect(html).toContain('<div class="verdict bad" id="verdict"><strong>Not linearizable</strong> on key <code>k0</code>');
    expect(html).toMatch(/<svg [^>]*class="chart timeline" data-ops="5"/);
    expect(html).toMatch(/<svg [^>]*class="chart evidence-chart"/);
    expect(html).toContain(">isolate node 2 (the leader) from both peers</text>");
    expect(html).toContain("✔ Convergence");
    const evidence = input.verdict.ok === false ? input.verdict.evidence : [];
    expect(evidence.map((e) => e.id)).toEqual([1, 2, 3]);
    for (const e of evidence) expect(html).toContain(`<code>#${e.id}</code> <code class="op-ok">${escapeHtml(describeOperation(e))}</code>`);
    // Each evidence operation is drawn with the highlight, on the timeline and in the evidence chart.
    expect(html.match(/class="op evidence"/g)?.length).toBe(2 * evidence.length);
    // Values are text, never markup.
    expect(html).not.toContain("<script>alert(1)</script>");
    expect(html).toContain(`put(k1, ${escapeHtml('"<script>alert(1)</script>"')})`);
    expect(html).toContain("&lt;script>alert(1)&lt;/script>");
    expectSelfContained(html);
    // Pure: the same input renders the same bytes.
    expect(renderReport(input)).toBe(html);
  });

  test("a linearizable history: a green verdict and no evidence section", () => {
    const history = staleHistory.filter((o) => o.id !== 3);
    const html = renderReport(base(history));
    expect(html).toContain('<div class="verdict ok" id="verdict"><strong>Linearizable</strong>: the 4 operations on 2 keys');
    expect(html).not.toContain('id="evidence"');
  });

  test("10 000 operations stay small: narrow operations are merged into strips", () => {
    const history: Operation[] = [];
    let id = 1;
    for (let client = 1; client <= 5; client++) {
      let t = 0;
      for (let i = 0; i < 2_000; i++) {
        const latencyMs = i % 500 === 0 ? 900 : 3 + (i % 7);
        history.push({ id: id++, clientId: client, kind: "put", key: `k${i % 5}`, value: `c${client}-w${i}`, callMs: t, returnMs: t + latencyMs, outcome: "ok" });
        t += latencyMs + 1;
      }
    }
    const endMs = Math.max(...history.map((o) => o.returnMs ?? 0));
    const html = renderReport({ ...base(history), endMs, gaveUpMs: new Map(), verdict: { ok: true, keysChecked: 5 } });
    // (Boolean checks: a failure should not print half a megabyte of HTML.)
    expect(html.length).toBeLessThan(500_000);
    expect(/class="chart timeline" data-ops="10000"/.test(html)).toBe(true);
    // The slow operations are drawn one by one, labelled with their kind; the rest merged into strips.
    expect(html.match(/class="op"/g)?.length).toBe(20);
    expect(html.match(/class="oplabel">put<\/text>/g)?.length).toBe(20);
    expect(html.match(/class="strip"/g)?.length ?? 0).toBeGreaterThan(0);
    expect(html.match(/<circle /g)?.length ?? 0).toBeLessThanOrEqual(2_500);
  });
});

test("an epoch's unanswered closing read is remembered after its summary is dropped, on a run long enough to drop summaries (found in a code review: it was forgotten, and the run passed)", () => {
  const summary = (index: number, unansweredReads: string[] = []): EpochSummary => ({
    index,
    keys: [],
    startMs: index,
    endMs: index + 1,
    operations: 0,
    clientOperations: 0,
    ok: 0,
    failed: 0,
    unknown: 0,
    unansweredReads,
    verdict: "linearizable",
    checkMs: 0,
    checkedAtMs: index,
    faults: 0,
  });
  const summaries = new EpochSummaries(3);
  summaries.add(summary(0, ["e0-k1"]));
  for (let index = 1; index <= 5; index++) summaries.add(summary(index, index === 5 ? ["e5-k0"] : []));
  expect(summaries.kept.map((kept) => kept.index)).toEqual([3, 4, 5]);
  expect(summaries.dropped).toBe(3);
  expect(summaries.unansweredClosingReads(6)).toEqual(["e0-k1", "e5-k0"]);
  // The last epoch's keys are the runner's final reads: not counted here.
  expect(summaries.unansweredClosingReads(5)).toEqual(["e0-k1"]);
});

test("a compare-and-set refused 409 carries the key's version its answer named into the history (before, the refusal was dropped unjudged)", async () => {
  const { classifyResponse } = await import("../src/chaos/client.ts");
  const body = new TextEncoder().encode('{"error":"version_mismatch","message":"\'k1\' is at version 9, not 7: nothing was written","version":9}');
  const outcome = classifyResponse("PUT", 409, () => null, body);
  expect(outcome).toMatchObject({ kind: "fail", status: 409, error: "version_mismatch", keyVersion: 9 });
  const call = { id: 4, clientId: 1, kind: "put" as const, key: "k1", value: "c1-w4", callMs: 10, endMs: 20, ifVersion: 7 };
  const refused = toOperation(call, outcome);
  expect(refused).toMatchObject({ outcome: "fail", ifVersion: 7, refusedAtVersion: 9, returnMs: 20 });
  // Judged as a read at version 9: stale once a write acknowledged at 12 returned before its call.
  const later = toOperation({ ...call, id: 3, value: "c1-w3", callMs: 0, endMs: 5, ifVersion: undefined }, { kind: "ok", status: 200, body: new Uint8Array(0), version: 12 });
  const first = toOperation({ ...call, id: 2, value: "c1-w2", callMs: 0, endMs: 1, ifVersion: undefined }, { kind: "ok", status: 200, body: new Uint8Array(0), version: 9 });
  expect(checkLinearizable([first, later, refused]).ok).toBe(false);
  // Another refusal, or one without a JSON version, carries none.
  expect(classifyResponse("PUT", 409, () => null, new TextEncoder().encode('{"error":"version_mismatch","message":"x"}'))).not.toHaveProperty("keyVersion");
  expect(classifyResponse("PUT", 404, () => null, new TextEncoder().encode('{"error":"lease_not_found","message":"x","version":3}'))).not.toHaveProperty("keyVersion");
});
