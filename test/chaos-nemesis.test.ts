// Proves the nemesis scenarios (`kv chaos partition`, `pause`, `crash`, `restart`) pass when run as a user runs them, through the built executable, and that the pure helpers they judge with (availability gaps, stale-read and deposed-write verdicts, raw requests on their own socket, the live display) say what they should.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sendRaw, type Outcome } from "../src/chaos/client.ts";
import { type ChaosCluster, ChaosClusterStopped } from "../src/chaos/cluster.ts";
import { createLiveDisplay, formatProgress, opsPerSecond, type LiveDisplay } from "../src/chaos/live-display.ts";
import { Nemesis } from "../src/chaos/nemesis.ts";
import { judgeResumedRead, judgeResumedWrite, summarize } from "../src/chaos/pause.ts";
import { availability, longestGap } from "../src/chaos/write-load.ts";
import { describeDefrag } from "../src/chaos/restart.ts";
import { runKv } from "./helpers/kv-binary.ts";

/** Generous: the machine has two cores shared with other suites. This bounds a hung run, it asserts nothing. */
const SCENARIO_TIMEOUT_MS = 120_000;

const run = runKv;

function expectSuccess(code: number, out: string): void {
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out).toContain("=== Results ===");
  expect(out).toContain("Missing keys: 0");
  expect(out).toContain("Wrong values: 0");
  expect(out).toMatch(/✅ SUCCESS/);
  expect(out).not.toContain("❌");
}

const jsonDir = mkdtempSync(join(tmpdir(), "kv-nemesis-test-"));
afterAll(() => rmSync(jsonDir, { recursive: true, force: true }));

describe("kv chaos, through the built executable", () => {
  test(
    "partition: the isolated leader acknowledges nothing and serves no stale read; the majority serves; all converge",
    async () => {
      const { code, out } = await run(["chaos", "partition", "--rounds", "2", "--keys", "8"]);
      expectSuccess(code, out);
      expect(out).toContain("=== Chaos Test: Leader Partitioned From Both Followers ===");
      expect(out.match(/\[Round \d\] Isolating leader Node \d/g)?.length).toBe(2);
      expect(out).toMatch(/Majority elected Node \d \(term \d+\)/);
      expect(out).toContain("Writes acknowledged by an isolated leader: 0");
      expect(out).toContain("Stale reads from an isolated leader: 0");
      expect(out).toContain("Isolated leader's writes that took effect: 0");
      expect(out).toMatch(/Converged on applied index: \d+/);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "pause: a leader resumed after SIGSTOP serves no stale read and acknowledges no write",
    async () => {
      const { code, out } = await run(["chaos", "pause", "--rounds", "2"]);
      expectSuccess(code, out);
      expect(out.match(/\[Round \d\] Resuming Node \d with SIGCONT/g)?.length).toBe(2);
      expect(out.match(/Lease reads of pause-\S+ on Node \d: /g)?.length).toBe(2); // lease reads probed at the instant it resumes
      expect(out).toContain("Stale reads from a resumed leader: 0");
      expect(out).toContain("Writes acknowledged by a deposed leader: 0");
      expect(out).toContain("Refused writes that took effect: 0");
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "crash: every node SIGKILLed at once during writes loses no acknowledged write (and --json writes the result)",
    async () => {
      const jsonFile = join(jsonDir, "crash.json");
      const { code, out } = await run(["chaos", "crash", "--keys", "150", "--json", jsonFile]);
      expectSuccess(code, out);
      expect(out).toMatch(/Killing all 3 nodes at the same instant \(SIGKILL to pids \d+, \d+, \d+\)/);
      expect(out).toMatch(/Leader elected after restart: Node \d/);
      const total = Number(/Total acknowledged writes: (\d+)/.exec(out)?.[1]);
      expect(total).toBeGreaterThanOrEqual(150);
      const result = JSON.parse(readFileSync(jsonFile, "utf8")) as {
        scenario: string;
        ok: boolean;
        result: { acknowledged: number; verification: { checked: number; missing: string[]; wrong: unknown[] } };
      };
      expect(result.scenario).toBe("crash");
      expect(result.ok).toBe(true);
      expect(result.result.acknowledged).toBe(total);
      expect(result.result.verification.checked).toBe(total);
      expect(result.result.verification.missing).toEqual([]);
      expect(result.result.verification.wrong).toEqual([]);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "restart: a rolling restart under load loses no acknowledged write and reports availability",
    async () => {
      const { code, out } = await run(["chaos", "restart", "--duration", "4"]);
      expectSuccess(code, out);
      expect(out.match(/Node \d exited with 0, was back in \d+ ms and caught up to index \d+/g)?.length).toBe(3);
      expect(out).toContain("Restarts: 3");
      const availabilityLine = /Availability: ([\d.]+)% of (\d+) write attempts acknowledged/.exec(out);
      expect(availabilityLine).not.toBeNull();
      expect(Number(availabilityLine?.[2])).toBeGreaterThan(0);
      expect(out).toMatch(/Longest gap with no acknowledged write: \d+ ms/);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test(
    "restart --defrag: kv defrag on each node's data dir while it is down, SIGKILLed as its copy is written on two of them, loses no acknowledged write and leaves no copy",
    async () => {
      // --duration with its unit, as every other scenario takes it (whole seconds alone before: found in a black-box review).
      const { code, out } = await run(["chaos", "restart", "--defrag", "--signal", "kill", "--duration", "4s"]);
      expectSuccess(code, out);
      expect(out.match(/Node \d's data dir while it was down: /g)?.length).toBe(3);
      // The third node's run always goes to its end; the second's too, after the one killed.
      expect(out.match(/defragmented: [\d.]+ MB -> [\d.]+ MB/g)?.length).toBeGreaterThanOrEqual(2);
    },
    SCENARIO_TIMEOUT_MS,
  );

  test("partition under --base-port is a usage error (exit 2): it needs the runner's proxies", async () => {
    const { code, out } = await run(["chaos", "partition", "--base-port", "5001"]);
    expect(code).toBe(2);
    expect(out).toContain("'partition' needs the runner's TCP proxies");
    expect(out).not.toContain("Starting 3-node cluster");
  });
});

describe("availability", () => {
  test("the longest gap counts the stretch before the first acknowledgement and after the last", () => {
    expect(longestGap([], 100, 600)).toEqual({ gapMs: 500, fromMs: 100, toMs: 600 });
    expect(longestGap([400, 150, 200], 100, 600)).toEqual({ gapMs: 200, fromMs: 200, toMs: 400 });
    expect(longestGap([110, 120], 100, 600)).toEqual({ gapMs: 480, fromMs: 120, toMs: 600 });
    expect(longestGap([350, 360], 100, 400)).toEqual({ gapMs: 250, fromMs: 100, toMs: 350 });
  });

  test("acknowledgements outside the window are clamped into it", () => {
    expect(longestGap([50, 700], 100, 600)).toEqual({ gapMs: 500, fromMs: 100, toMs: 600 });
  });

  test("the ratio is acknowledged over attempts, and gaps are reported relative to the start", () => {
    const a = availability(8, [1_100, 1_200, 1_900], 1_000, 2_000);
    expect(a).toEqual({ attempts: 8, acknowledged: 3, ratio: 3 / 8, longestGapMs: 700, longestGapFromMs: 200, longestGapToMs: 900 });
    expect(availability(0, [], 0, 10).ratio).toBe(1);
  });
});

const ok = (text: string): Outcome => ({ kind: "ok", status: 200, body: new TextEncoder().encode(text), version: 7 });
const absent: Outcome = { kind: "ok", status: 404, body: new Uint8Array(0), version: undefined };
const redirect: Outcome = { kind: "fail", status: 307, error: "not_leader", location: "http://127.0.0.1:1/kv/k" };
const noAnswer: Outcome = { kind: "unknown", reason: "timeout" };

describe("pause verdicts", () => {
  test("a resumed leader may answer the new value or not answer; the old value or absence is a stale read", () => {
    expect(judgeResumedRead(ok("new"), "old", "new")).toBeUndefined();
    expect(judgeResumedRead(redirect, "old", "new")).toBeUndefined();
    expect(judgeResumedRead(noAnswer, "old", "new")).toBeUndefined();
    expect(judgeResumedRead(ok("old"), "old", "new")).toStartWith("stale read");
    expect(judgeResumedRead(absent, "old", "new")).toStartWith("stale read");
    expect(judgeResumedRead(ok("other"), "old", "new")).toStartWith("wrong read");
  });

  test("a deposed leader's acknowledgement stands only if it leads again in a newer term", () => {
    expect(judgeResumedWrite(redirect, 3, { role: "follower", term: 4 })).toBeUndefined();
    expect(judgeResumedWrite(noAnswer, 3, undefined)).toBeUndefined();
    expect(judgeResumedWrite(ok("{}"), 3, { role: "leader", term: 5 })).toBeUndefined();
    expect(judgeResumedWrite(ok("{}"), 3, { role: "leader", term: 3 })).toContain("deposed leader (term 3) acknowledged");
    expect(judgeResumedWrite(ok("{}"), 3, { role: "follower", term: 4 })).toContain("follower in term 4");
    expect(judgeResumedWrite(ok("{}"), 3, undefined)).toContain("no status");
  });

  test("identical outcomes are counted in the summary", () => {
    expect(summarize(["a", "b", "a"])).toBe("2× a, 1× b");
  });
});

describe("raw HTTP requests put on their own socket (sendRaw over src/lib/http-connection.ts)", () => {
  /**
   * A fake node on an OS-picked port: each connection gets `answer` (raw bytes) once the whole
   * request arrived, then is closed; `undefined` answers nothing and keeps the socket open.
   */
  function fakeNode(answer: string | undefined) {
    const requests: string[] = [];
    const server = Bun.listen<{ received: string }>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(socket) {
          socket.data = { received: "" };
        },
        data(socket, chunk) {
          socket.data.received += new TextDecoder().decode(chunk);
          const headEnd = socket.data.received.indexOf("\r\n\r\n");
          if (headEnd < 0) return;
          const length = Number(/content-length: (\d+)/i.exec(socket.data.received)?.[1] ?? 0);
          if (socket.data.received.length < headEnd + 4 + length) return;
          requests.push(socket.data.received);
          if (answer !== undefined) {
            socket.write(answer);
            socket.end();
          }
        },
      },
    });
    return { url: `http://127.0.0.1:${server.port}`, requests, stop: () => server.stop(true) };
  }

  async function outcomeOf(answer: string | undefined, method: "GET" | "PUT", timeoutMs = 5_000): Promise<{ sent: boolean; outcome: Outcome; request: string | undefined }> {
    const node = fakeNode(answer);
    try {
      const raw = sendRaw(node.url, method, "/kv/k", method === "PUT" ? "v1" : undefined, timeoutMs);
      const [sent, outcome] = await Promise.all([raw.sent, raw.outcome]);
      return { sent, outcome, request: node.requests[0] };
    } finally {
      node.stop();
    }
  }

  test("a 200 with Content-Length is ok, with its version; the request was written whole", async () => {
    const { sent, outcome, request: written } = await outcomeOf("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Kv-Version: 12\r\n\r\nabc", "PUT");
    expect(sent).toBe(true);
    expect(outcome).toEqual({ kind: "ok", status: 200, body: new TextEncoder().encode("abc"), version: 12 });
    expect(written).toStartWith("PUT /kv/k HTTP/1.1\r\n");
    expect(written).toEndWith("\r\n\r\nv1");
  });

  test("a chunked 307 is a refusal with its Location", async () => {
    const body = '{"error":"not_leader"}';
    const text = `HTTP/1.1 307 Temporary Redirect\r\nLocation: http://x/kv/k\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    expect((await outcomeOf(text, "PUT")).outcome).toEqual({ kind: "fail", status: 307, error: "not_leader", location: "http://x/kv/k" });
  });

  test("a 503 timeout, a cut body, a closed connection, garbage and silence are unknown", async () => {
    const timeout = '{"error":"timeout"}';
    expect((await outcomeOf(`HTTP/1.1 503 x\r\nContent-Length: ${timeout.length}\r\n\r\n${timeout}`, "PUT")).outcome.kind).toBe("unknown");
    expect((await outcomeOf("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "GET")).outcome.kind).toBe("unknown");
    expect((await outcomeOf("", "GET")).outcome.kind).toBe("unknown");
    expect((await outcomeOf("SSH-2.0-OpenSSH\r\n\r\n", "GET")).outcome.kind).toBe("unknown");
    const silent = await outcomeOf(undefined, "GET", 200);
    expect(silent.sent).toBe(true);
    expect(silent.outcome).toEqual({ kind: "unknown", reason: "no answer within 200 ms" });
  });

  test("a refused connection is unknown and never counted as sent", async () => {
    const node = fakeNode(undefined);
    const url = node.url;
    node.stop(); // nothing listens there now
    const raw = sendRaw(url, "GET", "/kv/k", undefined, 5_000);
    expect(await raw.sent).toBe(false);
    expect((await raw.outcome).kind).toBe("unknown");
  });
});

describe("live display", () => {
  test("the progress line names elapsed time, rate, outcomes and the fault", () => {
    expect(formatProgress({ elapsedMs: 3_240, opsPerS: 411.6, ok: 1210, failed: 3, unknown: 1, fault: "node 2 paused" })).toBe(
      "3.2s | 412 ops/s | ok 1210 failed 3 unknown 1 | fault: node 2 paused",
    );
    expect(opsPerSecond([{ atMs: 0, ops: 0 }])).toBe(0);
    expect(opsPerSecond([{ atMs: 1_000, ops: 10 }, { atMs: 1_500, ops: 60 }])).toBe(100);
  });

  test("on a terminal the live line is redrawn in place and cleared around printed lines", () => {
    let written = "";
    let now = 0;
    const display = createLiveDisplay({ tty: true, write: (text) => (written += text), nowMs: () => now, refreshMs: 60_000 });
    display.track(() => ({ ok: 1, failed: 0, unknown: 0 }), "none");
    now = 500;
    display.setFault("node 1 isolated");
    display.print("[Round 1] step");
    display.untrack();
    display.print("done");
    expect(written).toBe(
      "\r\x1b[K0.0s | 0 ops/s | ok 1 failed 0 unknown 0 | fault: none" +
        "\r\x1b[K0.5s | 0 ops/s | ok 1 failed 0 unknown 0 | fault: node 1 isolated" +
        "\r\x1b[K[Round 1] step\n" +
        "\r\x1b[K0.5s | 0 ops/s | ok 1 failed 0 unknown 0 | fault: node 1 isolated" +
        "\r\x1b[K" +
        "done\n",
    );
  });

  test("off a terminal only plain lines are written", () => {
    let written = "";
    const display = createLiveDisplay({ tty: false, write: (text) => (written += text), nowMs: () => 0, plainIntervalMs: 60_000 });
    display.track(() => ({ ok: 0, failed: 0, unknown: 0 }));
    display.print("a line");
    display.setFault("x");
    display.untrack();
    expect(written).toBe("a line\n");
  });
});

test("longestGapSince measures the longest stretch without an acknowledgement inside a window", async () => {
  const { longestGapSince } = await import("../src/chaos/restart.ts");
  expect(longestGapSince([5, 10, 50, 55], 0, 60)).toBe(40);
  expect(longestGapSince([], 100, 130)).toBe(30);
  expect(longestGapSince([1, 200], 50, 100)).toBe(50); // acknowledgements outside the window do not count
});

test("a heal the cluster refuses because the run is ending (ChaosClusterStopped) does not go unhandled before the nemesis is stopped: Bun would exit 1 at once, the nodes still running (found in review)", async () => {
  let unhandled: unknown;
  const onUnhandled = (reason: unknown) => {
    unhandled = reason;
  };
  process.on("unhandledRejection", onUnhandled);
  try {
    const restarted = Promise.withResolvers<void>();
    const node = { id: 1, state: "running" as string };
    // A kill whose window closes at once: its heal starts node 1 again, which the stopped cluster refuses.
    const cluster = {
      nodes: [node],
      node: () => node,
      kill: async () => {
        node.state = "dead";
      },
      startNode: async () => {
        restarted.resolve();
        throw new ChaosClusterStopped();
      },
    } as unknown as ChaosCluster;
    const display = { print: () => {}, setFault: () => {} } as unknown as LiveDisplay;
    const nemesis = new Nemesis(cluster, { schedule: [{ index: 0, startMs: 0, durationMs: 0, fault: { kind: "kill", target: 1 } }], nowMs: () => 1_000, display });
    nemesis.start();
    await restarted.promise;
    // Turns of the event loop after the refusal: where an unhandled rejection is reported.
    for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(unhandled).toBeUndefined();
    await expect(nemesis.stop()).rejects.toBeInstanceOf(ChaosClusterStopped);
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
});

test("a restart's defrag says when the run meant to be SIGKILLed finished first, on whichever node (found in a black-box review: the second node's missed kill went unsaid)", () => {
  const missed = "the kv defrag meant to be SIGKILLed finished before it could be";
  expect(describeDefrag({ interruptMissed: true })).toContain(missed);
  expect(describeDefrag({ interruptMissed: true, finished: { bytesBefore: 100_000, bytesAfter: 90_000 } })).toBe(`${missed} (a small database: that fault did not happen); then defragmented: 0.1 MB -> 0.1 MB`);
  expect(describeDefrag({ interrupted: { killedAfterMs: 4, copyLeft: true } })).toBe("a kv defrag SIGKILLed 4 ms after it started, its copy on disk (left behind); then started on what it left");
  expect(describeDefrag({ finished: { bytesBefore: 2_000_000, bytesAfter: 1_000_000 } })).toBe("defragmented: 2.0 MB -> 1.0 MB");
});
