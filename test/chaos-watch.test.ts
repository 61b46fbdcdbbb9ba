// Proves `kv chaos watch` runs as a user runs it (the built executable) and passes on a healthy kv: under a seeded nemesis, watchers on every node, resuming with Last-Event-ID, receive exactly the committed changes of their prefixes, every acknowledged write among them; --json carries the counts and --report draws a lane per watcher (escaping what it shows, marking a failed watcher); bad flags are usage errors.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { renderReport } from "../src/chaos/report.tsx";
import { Writers } from "../src/chaos/watch.ts";
import type { WatchResult } from "../src/chaos/watch.ts";
import { runKv } from "./helpers/kv-binary.ts";

/** Bounds a hung run; asserts nothing about speed. */
const SCENARIO_TIMEOUT_MS = 120_000;

const outDir = mkdtempSync(join(tmpdir(), "kv-chaos-watch-test-"));
afterAll(() => rmSync(outDir, { recursive: true, force: true }));

describe("kv chaos watch, through the built executable", () => {
  test(
    "seed 7 for 6 s: the leader isolated, every watcher exact, every acknowledged write among the changes; --json and --report written",
    async () => {
      const jsonFile = join(outDir, "watch.json");
      const reportFile = join(outDir, "watch.html");
      const { code, out } = await runKv(["chaos", "watch", "--duration", "6s", "--seed", "7", "--json", jsonFile, "--report", reportFile]);
      if (code !== 0) console.error(out);
      expect(code).toBe(0);
      expect(out).toContain("=== Chaos Test: Watchers Follow Their Prefixes Through Faults ===");
      expect(out).toContain("Seed: 7 (replay: kv chaos watch --seed 7 --duration 6s)");
      // The schedule seed 7 draws (the same planner as kv chaos random), and its execution.
      expect(out).toContain("1.2s +2.6s isolate the leader");
      expect(out).toMatch(/\] nemesis: isolate node \d( \(the leader\))? from both peers/);
      expect(out).toContain("12 of 12 watchers reached it");
      expect(out).toContain(
        "Problems: missing 0, duplicate 0, out_of_order 0, wrong_value 0, unexpected 0, not_caught_up 0, ack_missing 0, phantom 0, final_state 0, reference 0",
      );
      expect(out).toMatch(/✅ SUCCESS: 12 watchers received exactly the \d+ committed changes of their prefixes/);
      expect(out).not.toContain("❌");

      const body = JSON.parse(readFileSync(jsonFile, "utf8")) as { scenario: string; ok: boolean; result: WatchResult };
      expect(body.scenario).toBe("watch");
      expect(body.ok).toBe(true);
      const result = body.result;
      expect(result.ok).toBe(true);
      expect(result.seed).toBe(7);
      expect(result.prefixes).toEqual(["w/a/", "w/b/", "w/c/"]);
      expect(result.faults.length).toBe(1);
      expect(result.writes.acknowledged).toBeGreaterThan(0);
      // Every acknowledged write that changed something was found at its version in the reference.
      expect(result.acknowledgedChecked).toBeGreaterThan(0);
      expect(result.referenceEvents).toBeGreaterThanOrEqual(result.acknowledgedChecked);
      expect(result.eventsChecked).toBeGreaterThan(result.referenceEvents);
      expect(Object.values(result.problems).every((n) => n === 0)).toBe(true);
      expect(result.compacted.unexpected).toEqual([]);
      expect(result.watchers.length).toBe(12);
      for (const watcher of result.watchers) {
        expect(watcher.ok).toBe(true);
        expect(watcher.reached).toBeGreaterThanOrEqual(result.throughVersion);
      }
      // Watchers on every node, under every prefix; some roam (and so resume elsewhere), some start with no fromVersion.
      expect(new Set(result.watchers.map((w) => `${w.prefix}@${w.home}`)).size).toBe(9);
      expect(result.watchers.some((w) => w.start === "now")).toBe(true);
      expect(result.resumes).toBeGreaterThan(0);

      const html = readFileSync(reportFile, "utf8");
      expect(html).toContain('<div class="verdict ok" id="verdict"><strong>Watch streams exact</strong>');
      expect(html).toMatch(/<svg [^>]*class="chart streams" data-streams="12"/);
      expect(html).toContain("<title>watcher 1 on w/a/, from node 1, start: baseline</title>w1 w/a/</text>");
      expect(html).toMatch(/resume on node \d at/);
      expect(html).not.toMatch(/<(script|link|img|iframe)\b[^>]*\b(src|href)=/i);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test("bad flags are usage errors (exit 2) and start nothing", async () => {
    const long = await runKv(["chaos", "watch", "--duration", "11m"]);
    expect(long.code).toBe(2);
    expect(long.out).toContain("--duration must be at most 10m for watch");
    const proxies = await runKv(["chaos", "watch", "--base-port", "5001"]);
    expect(proxies.code).toBe(2);
    expect(proxies.out).toContain("'watch' needs the runner's TCP proxies");
    const watchers = await runKv(["chaos", "watch", "--watchers", "0"]);
    expect(watchers.code).toBe(2);
    const all = await runKv(["chaos", "all", "--help"]);
    expect(all.out).toContain("restart, membership, random, watch");
  });
});

test("a write whose outcome stays unknown is drawn up to when its writer gave up on it, not to the end of the run (found in a black-box review)", async () => {
  let nowMs = 100;
  let calls = 0;
  // The first write gets no answer (its writer gives up 1,500 ms on); the writers then stop.
  const client = {
    send: async () => {
      calls++;
      nowMs += 1_500;
      writers.stop().catch(() => undefined);
      return { outcome: { kind: "unknown", reason: "timeout" } };
    },
  } as unknown as ConstructorParameters<typeof Writers>[0];
  const writers = new Writers(client, ["w/a/k0"], 1, 1, () => nowMs);
  writers.start();
  await writers.stop();
  expect(calls).toBe(1);
  const [op] = writers.operations;
  expect(op?.outcome).toBe("unknown");
  expect(op?.returnMs).toBeUndefined();
  expect(writers.gaveUpMs.get(op?.id as number)).toBe(1_600);
});

describe("the watch lanes of the HTML report", () => {
  test("one lane per watcher with its streams, marks and tooltips, every text escaped; a failed watcher's label is marked", () => {
    const html = renderReport({
      title: "kv chaos watch",
      endMs: 3_000,
      history: [],
      faults: [{ startMs: 500, endMs: 1_500, kind: "kill", label: "kill node 2 with SIGKILL" }],
      verdict: { ok: true, keysChecked: 0 },
      banner: { ok: false, title: "Watch streams wrong", text: "see <below>" },
      streams: [
        {
          label: "w1 <a>",
          detail: 'watcher 1 on "<a>"',
          ok: true,
          segments: [
            { node: 2, fromMs: 0, toMs: 700, start: "connect", end: "cut: <reset>", endedByWatcher: false, events: 5 },
            { node: 3, fromMs: 720, toMs: 3_000, start: "resume", end: "done", endedByWatcher: true, events: 9 },
          ],
        },
        { label: "w2 b", detail: "watcher 2", ok: false, segments: [] },
      ],
    });
    expect(html).toContain('<div class="verdict bad" id="verdict"><strong>Watch streams wrong</strong>: see &lt;below></div>');
    expect(html).toMatch(/<svg [^>]*class="chart streams" data-streams="2"/);
    expect(html).toContain("<title>watcher 1 on &quot;&lt;a>&quot;</title>w1 &lt;a></text>");
    expect(html).toContain("ended at 0.70s: cut: &lt;reset>");
    expect(html).toContain("resume on node 3 at 0.72s");
    expect(html).toContain('class="rowlabel badlabel"><title>watcher 2</title>w2 b</text>');
    expect(html).not.toContain("<reset>");
  });
});
