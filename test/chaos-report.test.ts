// Proves the chaos HTML report escapes by construction (a `<script>` in any text it shows comes out as text, in elements and in attributes) and draws lock tenures as lanes on the timeline's clock: one lane per client, a bar per tenure labelled with its fence, and a red band wherever two clients believed they held the lock at once.
import { describe, expect, test } from "bun:test";
import { escapeHtml, renderReport, tenureOverlaps, type ReportInput, type ReportTenure } from "../src/chaos/report.tsx";
import { failedRunBanner } from "../src/chaos/random.ts";

const SCRIPT = "<script>alert(1)</script>";

function input(overrides: Partial<ReportInput> = {}): ReportInput {
  return {
    title: "kv chaos lock",
    endMs: 3_000,
    history: [],
    faults: [{ startMs: 1_000, endMs: 1_600, kind: "pause", label: "pause node 1 past its lease" }],
    verdict: { ok: true, keysChecked: 0 },
    ...overrides,
  };
}

describe("escaping", () => {
  test("a <script> in every text the report shows comes out as text: the page's own script is its only script element", () => {
    const html = renderReport(
      input({
        title: `title ${SCRIPT}`,
        subtitle: `subtitle ${SCRIPT}`,
        replayCommand: `kv chaos random --seed '${SCRIPT}'`,
        generatedAt: SCRIPT,
        detailNote: SCRIPT,
        history: [
          { id: 1, clientId: 1, kind: "put", key: `k${SCRIPT}`, value: SCRIPT, callMs: 0, returnMs: 900, outcome: "ok" },
          { id: 2, clientId: 1, kind: "get", key: `k${SCRIPT}`, output: SCRIPT, callMs: 1_000, returnMs: 2_500, outcome: "ok" },
        ],
        clientLabels: new Map([[1, SCRIPT]]),
        faults: [{ startMs: 100, endMs: 2_000, kind: SCRIPT, label: `label ${SCRIPT}` }],
        checks: [{ name: SCRIPT, ok: false, detail: SCRIPT }],
        banner: { ok: false, title: SCRIPT, text: SCRIPT },
        epochs: [{ index: 0, keys: SCRIPT, startMs: 0, endMs: 3_000, operations: 2, ok: 2, failed: 0, unknown: 0, faults: 1, verdict: "linearizable", checkMs: 1 }],
        streams: [{ label: SCRIPT, detail: `detail "${SCRIPT}"`, ok: false, segments: [{ node: 1, fromMs: 0, toMs: 3_000, start: "connect", end: SCRIPT, endedByWatcher: false, events: 3 }] }],
        tenures: [{ client: 1, fence: 7, acquiredMs: 0, releasedMs: 2_000 }],
      }),
    );
    expect(html.match(/<script/g)?.length).toBe(1);
    expect(html).not.toContain("<script>alert");
    expect(html).toContain("&lt;script>alert(1)&lt;/script>");
    expect(escapeHtml(`a "b" <c> & d`)).toBe("a &quot;b&quot; &lt;c> &amp; d");
  });
});

describe("lock tenures", () => {
  const tenures: ReportTenure[] = [
    { client: 1, fence: 101, acquiredMs: 50, releasedMs: 700 },
    // Client 2 takes the lock while client 1 still believes it holds it: 600-700 ms, two holders.
    { client: 2, fence: 140, acquiredMs: 600, releasedMs: 1_300 },
    // A hand-over at the same instant is not an overlap.
    { client: 3, fence: 170, acquiredMs: 1_300, releasedMs: 2_200 },
    { client: 1, fence: 205, acquiredMs: 2_100, releasedMs: 2_800 },
    // Still held when the run ended.
    { client: 2, fence: 240, acquiredMs: 2_850 },
  ];

  test("overlaps are the windows where two or more clients held the lock, with who held it", () => {
    const overlaps = tenureOverlaps(tenures, 3_000);
    expect(overlaps.map((o) => [o.fromMs, o.toMs, o.holders.map((t) => t.fence)])).toEqual([
      [600, 700, [101, 140]],
      [2_100, 2_200, [170, 205]],
    ]);
    expect(tenureOverlaps([{ client: 1, fence: 1, acquiredMs: 0, releasedMs: 10 }, { client: 2, fence: 2, acquiredMs: 10 }], 20)).toEqual([]);
    // Three at once is one window naming all three.
    const three = tenureOverlaps([{ client: 1, fence: 1, acquiredMs: 0, releasedMs: 30 }, { client: 2, fence: 2, acquiredMs: 10, releasedMs: 40 }, { client: 3, fence: 3, acquiredMs: 20, releasedMs: 50 }], 60);
    expect(three.map((o) => [o.fromMs, o.toMs, o.holders.map((t) => t.fence)])).toEqual([[10, 40, [1, 2, 3]]]);
  });

  test("one lane per client, a bar per tenure labelled with its fence, overlaps banded in red, an open tenure drawn to the end", () => {
    const html = renderReport(input({ tenures }));
    expect(html).toContain("<h2>Lock tenures</h2>");
    expect(html).toMatch(/<svg [^>]*class="chart tenures" data-tenures="5" data-overlaps="2"/);
    for (const client of [1, 2, 3]) expect(html).toContain(`<title>lock client ${client}</title>lock c${client}</text>`);
    for (const fence of [101, 140, 170, 205]) expect(html).toContain(`>fence ${fence}</text>`);
    expect(html.match(/class="overlap"/g)?.length).toBe(2);
    expect(html).toContain("0.60s–0.70s: two holders at once: client 1 (fence 101), client 2 (fence 140)");
    expect(html).toContain("client 2, fence 240: acquired at 2.85s, still held at the end");
    expect(html.match(/class="op open"/g)?.length).toBe(1);
    // The fault is shaded across the lanes too.
    expect(html.match(/pause node 1 past its lease<\/title><\/rect>/g)?.length).toBeGreaterThanOrEqual(3);
  });

  test("a run without tenures has no lock lanes", () => {
    expect(renderReport(input())).not.toContain("Lock tenures");
  });
});

describe("a random run's banner", () => {
  test("a run whose operations were linearizable while the bank's check failed is shown failed, with the check's evidence (found in a black-box review: a green 'Linearizable' over a run that exited 1)", () => {
    const checks = [
      { name: "Convergence", ok: true, detail: "every node applied index 9" },
      { name: "Bank transfers (multi-key transactions)", ok: false, detail: "VIOLATION in round 2: a stale read\n  t71: transfer a->b 5" },
    ];
    const html = renderReport(input({ verdict: { ok: true, keysChecked: 2 } as ReportInput["verdict"], checks, ...failedRunBanner(true, false, checks) }));
    expect(html).toContain('<div class="verdict bad" id="verdict">');
    expect(html).toContain("the operations were linearizable, but bank transfers (multi-key transactions): see below");
    expect(html).not.toContain("<strong>Linearizable</strong>");
    expect(html).toContain("  t71: transfer a-");
    // Undecided while another check failed: failed too (a code review: the yellow banner stayed).
    expect(failedRunBanner("unknown", false, checks).banner?.text).toBe("the linearizability check ran out of its budget (undecided), but bank transfers (multi-key transactions): see below");
    // Not linearizable: its own red banner stays.
    expect(failedRunBanner(false, false, checks)).toEqual({});
    // A run that passed every check keeps the linearizability banner.
    expect(failedRunBanner(true, true, checks)).toEqual({});
    expect(renderReport(input({ verdict: { ok: true, keysChecked: 2 } as ReportInput["verdict"] }))).toContain("<strong>Linearizable</strong>");
  });
});
